//! The orders sample: the outbox toolkit end to end.
//!
//! `cargo run -p sample-app` runs the demo on the embedded default (an
//! SQLite file and the in-process queue; no server needed).

mod admin;
mod api;
mod db;
mod demo;
mod domain;
mod handlers;
mod lambda;
mod messages;
mod orders;
mod probe;
mod table;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outbox_runtime::{
    SqliteStore,
    transport::sqs::{SqsReceiver, SqsTransport},
};
use sqlx::postgres::PgPoolOptions;

use crate::db::{AnyStore, DbArgs, with_store};
use crate::demo::WorkTiming;

#[derive(Debug, Parser)]
#[command(about = "The orders sample of the outbox toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and submit orders and watch the outbox deliver their messages
    /// (the default).
    Demo(DemoArgs),
    /// Write the JSON Schemas of the envelope and of every message into
    /// `schemas/`, or with `--check`, fail if the checked-in ones drifted
    /// from the code or changed incompatibly without a version bump.
    Schemas {
        /// Compare instead of writing.
        #[arg(long)]
        check: bool,
        /// The directory.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas"))]
        dir: std::path::PathBuf,
    },
    /// Show the outbox: undelivered, published and dead rows, dead letters,
    /// and the groups waiting longest.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create orders with their outbox messages and do nothing else (a
    /// producer for fault-injection runs).
    Enqueue {
        /// How many orders.
        #[arg(long)]
        orders: usize,
        /// Submit each order too (a second message, and a confirmation).
        #[arg(long)]
        submit: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Relay and handle until nothing is pending, then exit (a consumer
    /// for fault-injection runs: kill it at any point and run it again).
    Work {
        #[command(flatten)]
        db: DbArgs,
        /// How long a relayed, unconfirmed message waits before it is
        /// relayed again (after a crash).
        #[arg(long, default_value_t = millis(WorkTiming::default().relayed_for))]
        relayed_for_ms: u64,
        /// The delay before a failed handler's first retry (it doubles).
        #[arg(long, default_value_t = millis(WorkTiming::default().retry_initial))]
        retry_initial_ms: u64,
    },
    /// Serve the HTTP API on a local port, with a relay and workers on the
    /// in-process queue behind it (the Lambda function `api` serves the same
    /// router).
    #[command(mut_arg("database_url", |url| url.required(false).default_value("sqlite://orders.db")))]
    Serve {
        #[command(flatten)]
        db: DbArgs,
        /// Where to listen (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: std::net::SocketAddr,
    },
    /// Inspect outbox rows; requeue or purge the ones the relay gave up on.
    Outbox {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: admin::OutboxCommand,
    },
    /// List, show, replay, purge or import (from the SQS DLQ) the messages a
    /// consumer gave up on.
    DeadLetters {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: admin::DeadLetterCommand,
    },
    /// Print the dispatch table this binary was built with.
    Table {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
#[command(mut_arg("database_url", |url| url.required(false).help(
    "The database: `sqlite://FILE` or `postgres://...`. Default: a fresh \
     SQLite file in the temporary directory, removed afterwards",
)))]
struct DemoArgs {
    /// How many orders to create and submit.
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    #[command(flatten)]
    db: Option<DbArgs>,
    /// Worker tasks consuming the queue.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Use an SQS-compatible endpoint (such as a local moto server) instead
    /// of the in-process queue: the demo creates a FIFO queue there, runs
    /// through it, and deletes it. Region and credentials come from the
    /// standard AWS variables (region defaults to us-east-1; without
    /// credentials, placeholders are used, as local servers accept any).
    #[arg(long)]
    sqs_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return lambda::run().await;
    }
    // No command: `demo`, with its defaults.
    let command = match Cli::parse().command {
        Some(command) => command,
        None => Cli::parse_from(["sample-app", "demo"])
            .command
            .expect("`demo` is a command"),
    };
    match command {
        Command::Demo(args) => demo(args).await,
        Command::Status { db, json } => {
            with_store!(db.open().await?, |store| status(&store, json).await)
        }
        Command::Enqueue { orders, submit, db } => with_store!(db.open().await?, |store| {
            demo::enqueue(&store, orders, submit).await
        }),
        Command::Work {
            db,
            relayed_for_ms,
            retry_initial_ms,
        } => {
            let timing = WorkTiming {
                relayed_for: Duration::from_millis(relayed_for_ms),
                retry_initial: Duration::from_millis(retry_initial_ms),
            };
            let metrics = with_store!(db.open().await?, |store| demo::work(store, timing).await)?;
            println!("{}", serde_json::to_string(&metrics)?);
            Ok(())
        }
        Command::Schemas { check, dir } => table::schemas(check, &dir),
        Command::Serve { db, addr } => {
            with_store!(db.open().await?, |store| serve(store, addr).await)
        }
        Command::Outbox { db, command } => with_store!(db.open().await?, |store| {
            admin::outbox(&store, command).await
        }),
        Command::DeadLetters { db, command } => {
            let table = table::checked_table()?;
            with_store!(db.open().await?, |store| {
                admin::dead_letters(&store, &table, command).await
            })
        }
        Command::Table { json } => table::print(json),
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let summary = match &args.db {
        Some(db) => {
            let store = db
                .open_with(PgPoolOptions::new().max_connections(16))
                .await?;
            match &store {
                AnyStore::Sqlite(_) => print!("store: SQLite ({}); ", db.database_url),
                AnyStore::Pg(_) => print!("store: PostgreSQL; "),
            }
            with_store!(store, |store| demo_on(store, &args).await)?
        }
        None => {
            let dir = std::env::temp_dir().join(format!("outbox-sample-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let url = format!("sqlite://{}", dir.join("orders.db").display());
            print!("store: SQLite ({url}, removed afterwards); ");
            let result = async { demo_on(SqliteStore::open(&url).await?, &args).await }.await;
            let _ = std::fs::remove_dir_all(&dir);
            result?
        }
    };
    summary.print();
    anyhow::ensure!(
        summary.is_clean(),
        "the demo lost or duplicated messages: {summary:?}"
    );
    Ok(())
}

/// `serve`: the HTTP API on `addr`, with a relay and workers behind it, until
/// Ctrl-C or SIGTERM.
async fn serve<S: db::AppDb>(store: S, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let table = table::checked_table()?;
    store.migrate().await?;
    store.migrate_app().await?;
    let (background, waker, _metrics) =
        demo::local_stack(store.clone(), table, demo::WorkTiming::default());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let app = api::router(store, Arc::new(waker));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    background.stop().await;
    served?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn status<S: outbox_runtime::Store>(store: &S, json: bool) -> anyhow::Result<()> {
    store.migrate().await?;
    let stats = store.stats().await?;
    let groups = store.group_stats(20).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "outbox": stats, "groups": groups })
        );
        return Ok(());
    }
    let age = |a: Option<std::time::Duration>| {
        a.map_or_else(|| "-".to_owned(), |a| format!("{:.1}s", a.as_secs_f64()))
    };
    println!(
        "undelivered: {}   oldest: {}   published: {}   dead rows: {}   dead letters: {}",
        stats.pending,
        age(stats.oldest_pending_age),
        stats.published,
        stats.dead,
        stats.dead_letters
    );
    if !groups.is_empty() {
        println!(
            "\n{:<32} {:>11} {:>10} {:>5}",
            "group", "undelivered", "oldest", "dead"
        );
        for g in &groups {
            println!(
                "{:<32} {:>11} {:>10} {:>5}",
                g.group,
                g.pending,
                age(g.oldest_pending_age),
                g.dead
            );
        }
    }
    Ok(())
}

/// A duration in whole milliseconds, for the command line.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Logs to stderr, filtered by `RUST_LOG` (`warn` by default; targets and
/// levels, such as `warn,outbox_runtime=info`).
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let warn = Targets::new().with_default(LevelFilter::WARN);
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => directives.parse::<Targets>().unwrap_or_else(|err| {
            eprintln!("RUST_LOG={directives:?} is not a filter ({err}); logging warnings only");
            warn
        }),
        Err(_) => warn,
    };
    // `fmt()` alone caps events at INFO; `filter` decides instead.
    tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(std::io::stderr)
        .finish()
        .with(filter)
        .init();
}

/// The demo on `store`, with the in-process queue or an SQS endpoint.
async fn demo_on<S: db::AppDb>(store: S, args: &DemoArgs) -> anyhow::Result<demo::Summary> {
    let Some(endpoint) = &args.sqs_endpoint else {
        println!("queue: in-process");
        return demo::run(store, args.orders, args.workers).await;
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(outbox_runtime::aws::http_client())
        .endpoint_url(endpoint);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    // A local stand-in needs no real credentials; without any configured,
    // use placeholders rather than searching the machine for them.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && std::env::var_os("AWS_PROFILE").is_none()
    {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "local",
            "local",
            None,
            None,
            "sample-app",
        ));
    }
    let sqs = aws_sdk_sqs::Client::new(&loader.load().await);
    let name = format!("outbox-demo-{}.fifo", std::process::id());
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot create queue {name} at {endpoint}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(err)
            )
        })?
        .queue_url
        .ok_or_else(|| anyhow::anyhow!("{endpoint} returned no queue URL"))?;
    println!("queue: SQS ({queue_url}, deleted afterwards)");
    let result = demo::run_on(
        store,
        Arc::new(SqsTransport::new(sqs.clone(), &queue_url)),
        Arc::new(SqsReceiver::new(sqs.clone(), &queue_url)),
        args.orders,
        args.workers,
    )
    .await;
    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
    result
}

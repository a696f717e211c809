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

use clap::{Parser, Subcommand};
use outbox_runtime::{
    PgStore, SqliteStore,
    transport::sqs::{SqsReceiver, SqsTransport},
};

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
        /// The database (`sqlite://FILE` or `postgres://...`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
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
        /// The database (`sqlite://FILE` or `postgres://...`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Relay and handle until nothing is pending, then exit (a consumer
    /// for fault-injection runs: kill it at any point and run it again).
    Work {
        /// The database (`sqlite://FILE` or `postgres://...`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// How long a relayed, unconfirmed message waits before it is
        /// relayed again (after a crash).
        #[arg(long, default_value_t = 60_000)]
        relayed_for_ms: u64,
        /// The delay before a failed handler's first retry (it doubles).
        #[arg(long, default_value_t = 1_000)]
        retry_initial_ms: u64,
    },
    /// Serve the HTTP API on a local port, with a relay and workers on the
    /// in-process queue behind it (the Lambda function `api` serves the same
    /// router).
    Serve {
        /// The database (`sqlite://FILE` or `postgres://...`).
        #[arg(long, env = "DATABASE_URL", default_value = "sqlite://orders.db")]
        database_url: String,
        /// Where to listen (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: std::net::SocketAddr,
    },
    /// Inspect outbox rows; requeue or purge the ones the relay gave up on.
    Outbox {
        /// The database (`sqlite://FILE` or `postgres://...`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[command(subcommand)]
        command: admin::OutboxCommand,
    },
    /// List, show, replay, purge or import (from the SQS DLQ) the messages a
    /// consumer gave up on.
    DeadLetters {
        /// The database (`sqlite://FILE` or `postgres://...`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
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
struct DemoArgs {
    /// How many orders to create and submit.
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    /// The database: `sqlite://FILE` or `postgres://...`. Default: a fresh
    /// SQLite file in the temporary directory, removed afterwards.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
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
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Demo(DemoArgs {
        orders: 1000,
        database_url: std::env::var("DATABASE_URL").ok(),
        workers: 4,
        sqs_endpoint: None,
    })) {
        Command::Demo(args) => demo(args).await,
        Command::Status { database_url, json } => match open(&database_url).await? {
            AnyStore::Sqlite(store) => status(&store, json).await,
            AnyStore::Pg(store) => status(&store, json).await,
        },
        Command::Enqueue {
            orders,
            submit,
            database_url,
        } => match open(&database_url).await? {
            AnyStore::Sqlite(store) => demo::enqueue(&store, orders, submit).await,
            AnyStore::Pg(store) => demo::enqueue(&store, orders, submit).await,
        },
        Command::Work {
            database_url,
            relayed_for_ms,
            retry_initial_ms,
        } => {
            let timing = demo::WorkTiming {
                relayed_for: std::time::Duration::from_millis(relayed_for_ms),
                retry_initial: std::time::Duration::from_millis(retry_initial_ms),
            };
            let metrics = match open(&database_url).await? {
                AnyStore::Sqlite(store) => demo::work(store, timing).await?,
                AnyStore::Pg(store) => demo::work(store, timing).await?,
            };
            println!("{}", serde_json::to_string(&metrics)?);
            Ok(())
        }
        Command::Schemas { check, dir } => table::schemas(check, &dir),
        Command::Serve { database_url, addr } => match open(&database_url).await? {
            AnyStore::Sqlite(store) => serve(store, addr).await,
            AnyStore::Pg(store) => serve(store, addr).await,
        },
        Command::Outbox {
            database_url,
            command,
        } => match open(&database_url).await? {
            AnyStore::Sqlite(store) => admin::outbox(&store, command).await,
            AnyStore::Pg(store) => admin::outbox(&store, command).await,
        },
        Command::DeadLetters {
            database_url,
            command,
        } => {
            let table = table::checked_table()?;
            match open(&database_url).await? {
                AnyStore::Sqlite(store) => admin::dead_letters(&store, &table, command).await,
                AnyStore::Pg(store) => admin::dead_letters(&store, &table, command).await,
            }
        }
        Command::Table { json } => table::print(json),
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let summary = match args.database_url.as_deref() {
        Some(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => {
            print!("store: PostgreSQL; ");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            demo_on(PgStore::new(pool), &args).await?
        }
        Some(url) if url.starts_with("sqlite:") => {
            print!("store: SQLite ({url}); ");
            demo_on(SqliteStore::open(url).await?, &args).await?
        }
        Some(url) => anyhow::bail!(
            "unsupported database URL `{url}`: use sqlite://FILE or postgres://USER@HOST:PORT/DATABASE"
        ),
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

enum AnyStore {
    Sqlite(SqliteStore),
    Pg(PgStore),
}

async fn open(url: &str) -> anyhow::Result<AnyStore> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(AnyStore::Pg(PgStore::new(
            sqlx::PgPool::connect(url).await?,
        )))
    } else if url.starts_with("sqlite:") {
        Ok(AnyStore::Sqlite(SqliteStore::open(url).await?))
    } else {
        anyhow::bail!(
            "unsupported database URL `{url}`: use sqlite://FILE or postgres://USER@HOST:PORT/DATABASE"
        )
    }
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

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
mod pipeline;
mod probe;
mod serve;
mod sqs;
mod status;
mod table;

use clap::{Parser, Subcommand};

use crate::db::{DbArgs, with_store};

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
    Demo(demo::DemoArgs),
    /// Write the JSON Schemas of the envelope and of every message, and the
    /// AsyncAPI document, into `schemas/`, or with `--check`, fail if the
    /// checked-in ones drifted from the code, changed incompatibly without
    /// a version bump, or a version's messages would reach no handler.
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
    Work(pipeline::WorkArgs),
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
        #[arg(long, conflicts_with = "graph")]
        json: bool,
        /// Print the message flow as a Mermaid flowchart.
        #[arg(long)]
        graph: bool,
    },
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
        Command::Demo(args) => demo::run(args).await,
        Command::Schemas { check, dir } => table::schemas(check, &dir),
        Command::Table { json, graph } => table::print(json, graph),
        Command::Status { db, json } => {
            with_store!(db.open().await?, |store| status::show(&store, json).await)
        }
        Command::Enqueue { orders, submit, db } => with_store!(db.open().await?, |store| {
            pipeline::enqueue(&store, orders, submit).await
        }),
        Command::Work(args) => {
            let timing = args.timing();
            let metrics = with_store!(args.db.open().await?, |store| {
                pipeline::work(store, timing).await
            })?;
            println!("{}", serde_json::to_string(&metrics)?);
            Ok(())
        }
        Command::Serve { db, addr } => {
            with_store!(db.open().await?, |store| serve::serve(store, addr).await)
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

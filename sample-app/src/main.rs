//! The orders sample: the outbox toolkit end to end.
//!
//! `cargo run -p sample-app` runs the demo on the embedded default (an
//! SQLite file and the in-process queue; no server needed).

mod db;
mod demo;
mod domain;
mod handlers;
mod lambda;
mod messages;
mod orders;
mod probe;

use clap::{Parser, Subcommand};
use outbox_runtime::{PgStore, SqliteStore};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        return lambda::run().await;
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Demo(DemoArgs {
        orders: 1000,
        database_url: std::env::var("DATABASE_URL").ok(),
        workers: 4,
    })) {
        Command::Demo(args) => demo(args).await,
        Command::Table { json } => {
            let table = lambda::checked_table()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&table.describe())?);
            } else {
                print!("{table}");
            }
            Ok(())
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let summary = match args.database_url.as_deref() {
        Some(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => {
            println!("store: PostgreSQL; queue: in-process");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            demo::run(PgStore::new(pool), args.orders, args.workers).await?
        }
        Some(url) if url.starts_with("sqlite:") => {
            println!("store: SQLite ({url}); queue: in-process");
            demo::run(SqliteStore::open(url).await?, args.orders, args.workers).await?
        }
        Some(url) => anyhow::bail!(
            "unsupported database URL `{url}`: use sqlite://FILE or postgres://USER@HOST:PORT/DATABASE"
        ),
        None => {
            let dir = std::env::temp_dir().join(format!("outbox-sample-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let url = format!("sqlite://{}", dir.join("orders.db").display());
            println!("store: SQLite ({url}, removed afterwards); queue: in-process");
            let result = async {
                demo::run(SqliteStore::open(&url).await?, args.orders, args.workers).await
            }
            .await;
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

//! `sample-app demo`: orders through the whole outbox, on one machine.
//!
//! Creates and submits N orders, each in its own app transaction that also
//! writes the outbox row and is followed by a pump; a relay and workers in
//! the same process deliver the messages through the in-process queue to the
//! handlers; a summary reports what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use outbox_runtime::{
    Dispatcher, InProcessQueue, SqliteStore,
    consume::WorkerConfig,
    local::Pipeline,
    metrics::MetricsSnapshot,
    transport::{Receiver, Transport},
};
use sqlx::postgres::PgPoolOptions;

use crate::db::{AnyStore, AppDb, DbArgs, Table, with_store};
use crate::domain::CustomerId;
use crate::probe::Probe;
use crate::sqs::TempQueue;

/// What the demo did.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) orders: usize,
    pub(crate) messages: u64,
    pub(crate) metrics: MetricsSnapshot,
    /// Status history rows this run added.
    pub(crate) history_rows: i64,
    /// Notifications this run added.
    pub(crate) notifications: i64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Option<(Duration, Duration)>,
}

impl Summary {
    /// Whether every message was handled exactly once and nothing was lost.
    pub(crate) fn is_clean(&self) -> bool {
        self.metrics.handled == self.messages
            && self.metrics.dead_lettered == 0
            && self.history_rows == 2 * self.orders as i64
            && self.notifications == self.orders as i64
    }

    pub(crate) fn print(&self) {
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        println!("orders:       {} created and submitted", self.orders);
        println!(
            "messages:     {} published, {} handled, {} duplicates suppressed, {} dead letters",
            self.messages,
            self.metrics.handled,
            self.metrics.duplicates_suppressed,
            self.metrics.dead_lettered
        );
        println!(
            "app tables:   {} status history rows, {} notifications",
            self.history_rows, self.notifications
        );
        println!(
            "throughput:   {:.0} messages/s ({:.2} s)",
            self.metrics.handled as f64 / secs,
            secs
        );
        if let Some((p50, p99)) = self.latency {
            println!(
                "latency:      enqueue to handler p50 {:.1} ms, p99 {:.1} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
    }
}

/// `sample-app demo`.
#[derive(Debug, clap::Args)]
// The shared `--database-url`, optional here.
#[command(mut_arg("database_url", |url| url.required(false).help(
    "The database: `sqlite://FILE` or `postgres://...`. Default: a fresh \
     SQLite file in the temporary directory, removed afterwards",
)))]
pub(crate) struct DemoArgs {
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

/// Runs the demo on the store and queue `args` name, prints its summary,
/// and fails if a message was lost or duplicated.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let summary = match &args.db {
        Some(db) => {
            // Room for the producer, the relay and every worker at once.
            let store = db
                .open_with(PgPoolOptions::new().max_connections(16))
                .await?;
            match &store {
                AnyStore::Sqlite(_) => print!("store: SQLite ({}); ", db.database_url),
                AnyStore::Pg(_) => print!("store: PostgreSQL; "),
            }
            with_store!(store, |store| run_with_queue(store, &args).await)?
        }
        None => {
            let dir = std::env::temp_dir().join(format!("outbox-sample-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let url = format!("sqlite://{}", dir.join("orders.db").display());
            print!("store: SQLite ({url}, removed afterwards); ");
            let result =
                async { run_with_queue(SqliteStore::open(&url).await?, &args).await }.await;
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

/// The demo on `store`, with the in-process queue or an SQS endpoint.
async fn run_with_queue<S: AppDb>(store: S, args: &DemoArgs) -> anyhow::Result<Summary> {
    let Some(endpoint) = &args.sqs_endpoint else {
        println!("queue: in-process");
        let queue = Arc::new(InProcessQueue::new());
        return run_on(store, Arc::clone(&queue), queue, args.orders, args.workers).await;
    };
    let queue = TempQueue::create(endpoint).await?;
    println!("queue: SQS ({}, deleted afterwards)", queue.url());
    let result = run_on(
        store,
        Arc::new(queue.transport()),
        Arc::new(queue.receiver()),
        args.orders,
        args.workers,
    )
    .await;
    queue.delete().await;
    result
}

/// Runs the demo on `store`, publishing through `transport` and consuming
/// from `receiver` (one queue, seen from both sides).
async fn run_on<S: AppDb, T: Transport, R: Receiver>(
    store: S,
    transport: Arc<T>,
    receiver: Arc<R>,
    orders: usize,
    workers: usize,
) -> anyhow::Result<Summary> {
    store.migrate().await?;
    store.migrate_app().await?;
    let before = store.stats().await?;
    let history_before = store.count(Table::History).await?;
    let notifications_before = store.count(Table::Notifications).await?;

    let dispatcher = Arc::new(Dispatcher::from_registry()?.with_state(Probe::default()));
    let running = Pipeline::new(store.clone(), Arc::clone(&dispatcher))
        .with_workers(workers)
        .with_worker_config(WorkerConfig {
            wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        })
        .start_on(transport, receiver);
    let (waker, metrics) = (running.waker().clone(), Arc::clone(running.metrics()));

    let started = Instant::now();
    let mut ids = Vec::with_capacity(orders);
    for i in 0..orders {
        ids.push(crate::orders::create(&store, &waker, &CustomerId::numbered(i % 50)).await?);
    }
    for &order_id in &ids {
        crate::orders::submit(&store, &waker, order_id).await?;
    }

    // Each order: two status changes, then the confirmation they cascade into.
    let expected = 3 * orders as u64;
    let progress = progress_bar(expected);
    let mut last_change = (0, Instant::now());
    loop {
        let now = metrics.snapshot();
        let done = now.handled + now.dead_lettered;
        progress.set_position(done.min(expected));
        if done >= expected {
            break;
        }
        if done != last_change.0 {
            last_change = (done, Instant::now());
        } else if last_change.1.elapsed() > Duration::from_secs(60) {
            progress.abandon();
            anyhow::bail!("no progress for 60 s at {done} of {expected} messages: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    progress.finish();

    running.shutdown().await;

    let after = store.stats().await?;
    let probe = dispatcher
        .state()
        .get::<Probe>()
        .ok_or_else(|| anyhow::anyhow!("probe missing"))?;
    Ok(Summary {
        orders,
        messages: after.published.saturating_sub(before.published),
        metrics: metrics.snapshot(),
        history_rows: store.count(Table::History).await? - history_before,
        notifications: store.count(Table::Notifications).await? - notifications_before,
        elapsed,
        latency: probe.percentiles(),
    })
}

/// A bar of `total` messages on stderr, drawn only when stderr is a terminal.
fn progress_bar(total: u64) -> ProgressBar {
    let style = ProgressStyle::with_template("handling [{bar:40}] {pos}/{len}")
        .expect("a valid template")
        .progress_chars("#.");
    ProgressBar::new(total).with_style(style)
}

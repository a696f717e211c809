//! The outbox pipeline in this process: the runtime's `local::Pipeline`
//! with the sample's timing (what `serve` and `work` run), and the producer
//! (`enqueue`) and consumer (`work`) of fault-injection runs.

use std::sync::Arc;
use std::time::Duration;

use outbox_runtime::{
    Dispatcher, Store,
    backoff::Backoff,
    consume::{ConsumerConfig, WorkerConfig},
    dispatch::DispatchTable,
    local::{Pipeline, Running},
    metrics::MetricsSnapshot,
    pump::{Pump, PumpFuture},
    relay::RelayConfig,
};

use crate::db::{AppDb, DbArgs};
use crate::domain::CustomerId;
use crate::table::checked_table;

/// Creates `orders` orders, each committed with its `created` message, and
/// with `submit`, submits each (a second transaction and message).
pub(crate) async fn enqueue<S: AppDb>(
    store: &S,
    orders: usize,
    submit: bool,
) -> anyhow::Result<()> {
    store.migrate().await?;
    store.migrate_app().await?;
    for i in 0..orders {
        let id = crate::orders::create(store, &NoPump, &CustomerId::numbered(i % 20)).await?;
        if submit {
            crate::orders::submit(store, &NoPump, id).await?;
        }
    }
    Ok(())
}

/// `sample-app work`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// How long a relayed, unconfirmed message waits before it is
    /// relayed again (after a crash).
    #[arg(long, default_value_t = millis(WorkTiming::default().relayed_for))]
    relayed_for_ms: u64,
    /// The delay before a failed handler's first retry (it doubles).
    #[arg(long, default_value_t = millis(WorkTiming::default().retry_initial))]
    retry_initial_ms: u64,
}

impl WorkArgs {
    /// The timing these arguments ask for.
    pub(crate) fn timing(&self) -> WorkTiming {
        WorkTiming {
            relayed_for: Duration::from_millis(self.relayed_for_ms),
            retry_initial: Duration::from_millis(self.retry_initial_ms),
        }
    }
}

/// A duration in whole milliseconds, for the command line.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Timing of the relay and workers of [`local_pipeline`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkTiming {
    /// How long a relayed, unconfirmed message waits before it is relayed
    /// again (after a crash).
    pub(crate) relayed_for: Duration,
    /// The first retry delay of a failed handler.
    pub(crate) retry_initial: Duration,
}

/// The runtime's defaults.
impl Default for WorkTiming {
    fn default() -> Self {
        WorkTiming {
            relayed_for: RelayConfig::default().relayed_for,
            retry_initial: ConsumerConfig::default().retry_backoff.initial,
        }
    }
}

/// Relays and handles with the in-process queue until nothing is pending,
/// or until Ctrl-C or SIGTERM, then shuts down cleanly (rows relayed and
/// not handled are pending again for the next process).
pub(crate) async fn work<S: AppDb>(
    store: S,
    timing: WorkTiming,
) -> anyhow::Result<MetricsSnapshot> {
    store.migrate().await?;
    store.migrate_app().await?;
    let table = checked_table()?;
    let stop = crate::serve::shutdown_signal()?;
    let running = local_pipeline(store, table, timing);
    running.waker().wake();
    let idle = tokio::select! {
        idle = running.wait_idle(Duration::MAX) => idle,
        () = stop => {
            tracing::info!("signalled: stopping");
            Ok(())
        }
    };
    let metrics = Arc::clone(running.metrics());
    let report = running.shutdown().await;
    tracing::info!(?report, "stopped");
    idle?;
    Ok(metrics.snapshot())
}

/// A relay and two workers on an in-process queue, running in the
/// background; its waker is the pump for the app's transactions.
pub(crate) fn local_pipeline<S: Store>(
    store: S,
    table: DispatchTable,
    timing: WorkTiming,
) -> Running<S> {
    Pipeline::new(store, Dispatcher::new(table))
        .with_relay_config(RelayConfig {
            relayed_for: timing.relayed_for,
            sweep_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        })
        .with_consumer_config(ConsumerConfig {
            retry_backoff: Backoff {
                initial: timing.retry_initial,
                ..Backoff::default()
            },
            ..ConsumerConfig::default()
        })
        .with_worker_config(WorkerConfig {
            wait: Duration::from_millis(100),
            retention: None,
            ..WorkerConfig::default()
        })
        .start()
}

/// No pump: for producing rows that another process will relay.
struct NoPump;

impl Pump for NoPump {
    fn pump(&self) -> PumpFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

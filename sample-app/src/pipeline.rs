//! The outbox pipeline in this process: a relay and workers on the
//! in-process queue as background tasks (what `serve` and `work` run), and
//! the producer (`enqueue`) and consumer (`work`) of fault-injection runs.

use std::sync::Arc;
use std::time::Duration;

use outbox_runtime::{
    Dispatcher, InProcessQueue, Relay, Store, Worker,
    backoff::Backoff,
    consume::{Consumer, ConsumerConfig, WorkerConfig},
    dispatch::DispatchTable,
    metrics::{Metrics, MetricsSnapshot},
    pump::{Pump, PumpFuture, RelayWaker},
    relay::RelayConfig,
    transport::{Receiver, Transport},
};
use tokio::sync::watch;

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

/// Timing of the relay and workers of [`local_stack`].
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

/// Relays and handles with the in-process queue until nothing is pending.
pub(crate) async fn work<S: AppDb>(
    store: S,
    timing: WorkTiming,
) -> anyhow::Result<MetricsSnapshot> {
    store.migrate().await?;
    store.migrate_app().await?;
    let table = checked_table()?;
    let (background, _waker, metrics) = local_stack(store.clone(), table, timing);
    while store.stats().await?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    background.stop().await;
    Ok(metrics.snapshot())
}

/// A relay and two workers on an in-process queue, running in the
/// background; the waker is the pump for the app's transactions.
pub(crate) fn local_stack<S: Store>(
    store: S,
    table: DispatchTable,
    timing: WorkTiming,
) -> (Background, RelayWaker, Arc<Metrics>) {
    let queue = Arc::new(InProcessQueue::new());
    let metrics = Arc::new(Metrics::default());
    let waker = RelayWaker::new();
    let dispatcher = Arc::new(Dispatcher::new(table));
    let relay = Relay::new(store.clone(), Arc::clone(&queue))
        .with_config(RelayConfig {
            relayed_for: timing.relayed_for,
            sweep_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        })
        .with_metrics(Arc::clone(&metrics));
    let worker = Worker::new(
        Consumer::new(store.clone(), dispatcher)
            .with_config(ConsumerConfig {
                retry_backoff: Backoff {
                    initial: timing.retry_initial,
                    ..Backoff::default()
                },
                ..ConsumerConfig::default()
            })
            .with_metrics(Arc::clone(&metrics))
            .with_pump(Arc::new(waker.clone())),
        queue,
    )
    .with_config(WorkerConfig {
        wait: Duration::from_millis(100),
        retention: None,
        ..WorkerConfig::default()
    });
    let background = Background::spawn(relay, waker.clone(), worker, 2);
    (background, waker, metrics)
}

/// A relay and workers running as tasks until stopped.
pub(crate) struct Background {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Background {
    /// Runs `relay` and `workers` copies of `worker`.
    pub(crate) fn spawn<S: Store, T: Transport, R: Receiver>(
        relay: Relay<S, T>,
        waker: RelayWaker,
        worker: Worker<S, R>,
        workers: usize,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let relay_shutdown = shutdown();
        tasks.spawn(async move { relay.run(waker, relay_shutdown).await });
        for _ in 0..workers.max(1) {
            let worker = worker.clone();
            let shutdown = shutdown();
            tasks.spawn(async move { worker.run(shutdown).await });
        }
        Background { stop, tasks }
    }

    /// Stops every task after its current batch.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// No pump: for producing rows that another process will relay.
struct NoPump;

impl Pump for NoPump {
    fn pump(&self) -> PumpFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

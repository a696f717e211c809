//! A relay and workers delivering through the in-process queue in the
//! background until stopped: what the latency and peer scenarios run.

use std::sync::Arc;
use std::time::Duration;

use outbox_runtime::consume::Consumer;
use outbox_runtime::{
    Dispatcher, InProcessQueue, PgStore, Relay, Worker, consume::WorkerConfig, metrics::Metrics,
    pump::RelayWaker,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub(crate) struct Running {
    /// Wakes the relay (`commit_and_pump`, or to start a drain).
    pub(crate) waker: RelayWaker,
    /// The workers' counters.
    pub(crate) metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Starts a relay from `store` into a new in-process queue, and
    /// `workers` workers handling its messages with `dispatcher` in batches
    /// of up to `batch_size` (no retention: a benchmark measures delivery
    /// only).
    pub(crate) fn start(
        store: &PgStore,
        dispatcher: Dispatcher,
        workers: usize,
        batch_size: usize,
    ) -> Self {
        let queue = Arc::new(InProcessQueue::new());
        let relay = Relay::new(store.clone(), Arc::clone(&queue));
        let waker = RelayWaker::new();
        // The pump wakes the relay when a batch's confirmations free its
        // groups (the in-process queue is not durable: a group's next rows
        // wait for them); without it the relay would find them on its sweep.
        let worker = Worker::new(
            Consumer::new(store.clone(), Arc::new(dispatcher)).with_pump(Arc::new(waker.clone())),
            queue,
        )
        .with_config(WorkerConfig {
            batch_size,
            wait: Duration::from_millis(100),
            retention: None,
            ..WorkerConfig::default()
        });
        let (stop, stopped) = watch::channel(false);
        let shutdown = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let mut tasks = JoinSet::new();
        {
            let (waker, shutdown) = (waker.clone(), shutdown());
            tasks.spawn(async move { relay.run(waker, shutdown).await });
        }
        for _ in 0..workers {
            let (worker, shutdown) = (worker.clone(), shutdown());
            tasks.spawn(async move { worker.run(shutdown).await });
        }
        Running {
            waker,
            metrics: Arc::clone(worker.metrics()),
            stop,
            tasks,
        }
    }

    /// Stops them all and waits until they have.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

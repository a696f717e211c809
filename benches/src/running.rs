//! A relay and workers delivering through the in-process queue in the
//! background until stopped: what the latency and peer scenarios run.

use outbox_runtime::{InProcessQueue, PgStore, Relay, RelayWaker, Worker};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub(crate) struct Running {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Starts `relay` (woken by `waker`) and `workers` copies of `worker`.
    pub(crate) fn start(
        relay: Relay<PgStore, InProcessQueue>,
        waker: &RelayWaker,
        worker: &Worker<PgStore, InProcessQueue>,
        workers: usize,
    ) -> Self {
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
        Running { stop, tasks }
    }

    /// Stops them all and waits until they have.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

//! The whole pipeline in one process: [`Pipeline`] starts a [`Relay`] and
//! [`Worker`]s on an [`InProcessQueue`] (or a queue you give it) as tokio
//! tasks, with the pump wired, and returns a [`Running`] handle to wait
//! until the outbox is idle and to shut down cleanly.
//!
//! The [crate-level example](crate) runs the whole pipeline with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::consume::{Consumer, ConsumerConfig, Worker, WorkerConfig};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::pump::RelayWaker;
use crate::relay::{Relay, RelayConfig};
use crate::store::{OutboxStats, Store, StoreError};
use crate::transport::InProcessConfig;
use crate::transport::{InProcessQueue, Receiver, Transport};

/// What to start: a relay and workers, their settings, and the queue
/// between them. Every setting has a default; [`start`](Pipeline::start)
/// spawns the tasks.
pub struct Pipeline<S> {
    store: S,
    dispatcher: Arc<Dispatcher>,
    workers: usize,
    relay: RelayConfig,
    consumer: ConsumerConfig,
    worker: WorkerConfig,
    queue: InProcessConfig,
    metrics: Arc<Metrics>,
    shutdown_timeout: Duration,
    /// Stops every worker where it is, and starts it again (a test's
    /// crash: `testing::Faults::kill_workers_during`).
    kill: Option<Arc<tokio::sync::Notify>>,
}

impl<S> std::fmt::Debug for Pipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("workers", &self.workers)
            .field("relay", &self.relay)
            .field("consumer", &self.consumer)
            .field("worker", &self.worker)
            .field("queue", &self.queue)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Pipeline<S> {
    /// A pipeline from `store` to the handlers of `dispatcher`, with the
    /// defaults: two workers, [`RelayConfig::default`],
    /// [`ConsumerConfig::default`], [`WorkerConfig::default`] (retention
    /// included), [`InProcessConfig::default`], a new [`Metrics`], and a
    /// shutdown timeout of 30 s.
    pub fn new(store: S, dispatcher: impl Into<Arc<Dispatcher>>) -> Self {
        Pipeline {
            store,
            dispatcher: dispatcher.into(),
            workers: 2,
            relay: RelayConfig::default(),
            consumer: ConsumerConfig::default(),
            worker: WorkerConfig::default(),
            queue: InProcessConfig::default(),
            metrics: Arc::default(),
            shutdown_timeout: Duration::from_secs(30),
            kill: None,
        }
    }

    /// Workers stopped where they are and started again whenever `kill`
    /// is notified.
    #[cfg(feature = "testing")]
    pub(crate) fn with_kill_switch(mut self, kill: Arc<tokio::sync::Notify>) -> Self {
        self.kill = Some(kill);
        self
    }

    /// How many workers handle messages at once (at least one). Default: 2.
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// The relay's settings.
    #[must_use]
    pub fn with_relay_config(mut self, config: RelayConfig) -> Self {
        self.relay = config;
        self
    }

    /// The consumer's settings (attempts, retry delays, transactions).
    #[must_use]
    pub fn with_consumer_config(mut self, config: ConsumerConfig) -> Self {
        self.consumer = config;
        self
    }

    /// The workers' loop settings (batch size, retention, heartbeat).
    #[must_use]
    pub fn with_worker_config(mut self, config: WorkerConfig) -> Self {
        self.worker = config;
        self
    }

    /// The in-process queue's settings (ignored by
    /// [`start_on`](Self::start_on)).
    #[must_use]
    pub fn with_queue_config(mut self, config: InProcessConfig) -> Self {
        self.queue = config;
        self
    }

    /// Counters to share with other code (the default is a new one, read
    /// through [`Running::metrics`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// How long [`Running::shutdown`] waits for the relay and the workers
    /// to finish their batches before it stops them where they are: a
    /// worker's transaction rolls back (its messages are delivered again);
    /// a relay stopped between publishing and settling leaves its claim to
    /// run out ([`RelayConfig::lease`]), and one stopped just after
    /// settling leaves its rows relayed until
    /// [`RelayConfig::relayed_for`]. Default: 30 s.
    #[must_use]
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Starts the relay and the workers on a new [`InProcessQueue`], as
    /// tasks of the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Running<S> {
        let queue = Arc::new(InProcessQueue::with_config(self.queue));
        self.start_on(Arc::clone(&queue), queue)
    }

    /// Starts the relay publishing through `transport` and the workers
    /// receiving from `receiver` (one queue seen from both sides, such as
    /// `SqsTransport` and `SqsReceiver`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start_on<T: Transport, R: Receiver>(
        self,
        transport: Arc<T>,
        receiver: Arc<R>,
    ) -> Running<S, T> {
        let waker = RelayWaker::new();
        let relay = Relay::new(self.store.clone(), transport)
            .with_config(self.relay)
            .with_metrics(Arc::clone(&self.metrics));
        // The pump wakes the relay when a batch's confirmations free its
        // groups (a group's next rows wait for them on a non-durable
        // queue) and when handlers publish.
        let worker = Worker::new(
            Consumer::new(self.store.clone(), self.dispatcher)
                .with_config(self.consumer)
                .with_metrics(Arc::clone(&self.metrics))
                .with_pump(Arc::new(waker.clone())),
            receiver,
        )
        .with_config(self.worker);
        let (stop, stopped) = watch::channel(false);
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = JoinSet::new();
        {
            let (relay, waker, shutdown) = (relay.clone(), waker.clone(), shutdown());
            tasks.spawn(async move { relay.run(waker, shutdown).await });
        }
        for _ in 0..self.workers {
            let (worker, shutdown, kill) = (worker.clone(), shutdown.clone(), self.kill.clone());
            tasks.spawn(async move {
                let Some(kill) = kill else {
                    return worker.run(shutdown()).await;
                };
                loop {
                    let killed = kill.notified();
                    tokio::pin!(killed);
                    // Registered before the worker runs, so a kill from
                    // inside its batch is not missed.
                    killed.as_mut().enable();
                    tokio::select! {
                        () = worker.run(shutdown()) => return,
                        () = killed => tracing::info!("worker killed mid-batch by a test fault; starting again"),
                    }
                }
            });
        }
        Running {
            store: self.store,
            relay,
            waker,
            metrics: self.metrics,
            stop,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}

/// A started [`Pipeline`]. Dropping it stops the tasks where they are;
/// [`shutdown`](Self::shutdown) stops them cleanly.
pub struct Running<S, T = InProcessQueue> {
    store: S,
    relay: Relay<S, T>,
    waker: RelayWaker,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
}

impl<S, T> std::fmt::Debug for Running<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("tasks", &self.tasks.len())
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

/// What [`Running::shutdown`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether the relay or workers were still busy when the shutdown
    /// timeout ran out, and were stopped mid-batch (nothing is lost; see
    /// [`Pipeline::with_shutdown_timeout`]).
    pub timed_out: bool,
    /// Rows the relay had handed to the in-process queue and no worker
    /// handled, made pending again so that the next process relays them at
    /// once.
    pub released: u64,
    /// Relay or worker tasks that had panicked (each logged).
    pub panicked: usize,
}

/// [`Running::wait_idle`] gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdleError {
    /// Rows were still undelivered when the timeout ran out.
    #[error(
        "the outbox is not idle after {waited:?}: {} rows undelivered, the oldest {:?} old",
        stats.pending,
        stats.oldest_pending_age.unwrap_or_default()
    )]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// The outbox's state at the end.
        stats: OutboxStats,
    },
    /// The store could not say.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often [`Running::wait_idle`] reads the outbox's state.
const IDLE_POLL: Duration = Duration::from_millis(5);

impl<S: Store, T: Transport> Running<S, T> {
    /// The pump of the app's transactions: give it to
    /// [`commit_and_pump`](crate::commit_and_pump), or call
    /// [`RelayWaker::wake`] to start a drain.
    pub fn waker(&self) -> &RelayWaker {
        &self.waker
    }

    /// The counters of the relay and the workers.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Waits until the outbox has no undelivered row: every message was
    /// handled (or dead-lettered), including the messages handlers published
    /// on the way. On the in-process queue, a row stays undelivered until a
    /// worker's transaction handles it, so idle means done. On a durable
    /// queue ([`start_on`](Pipeline::start_on) with SQS), a row is delivered
    /// once published: messages may still wait in the queue.
    ///
    /// It reads the store ([`Store::has_undelivered`]) every 5 ms. The
    /// counters of [`metrics`](Self::metrics) are updated just after the
    /// commits they count, so they may lag by a batch when this returns:
    /// read them after [`shutdown`](Self::shutdown) for final numbers.
    ///
    /// # Errors
    ///
    /// [`IdleError::Timeout`] with the outbox's state when `timeout` runs
    /// out first; [`IdleError::Store`] when the store cannot be read.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<(), IdleError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.store.has_undelivered().await {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                // A lost connection is worth waiting out; a closed pool
                // is not coming back.
                Err(StoreError::Database(sqlx::Error::PoolClosed)) => {
                    return Err(StoreError::Database(sqlx::Error::PoolClosed).into());
                }
                Err(err) if err.is_transient() => {
                    tracing::debug!(error = %err, "waiting for the outbox to be idle");
                }
                Err(err) => return Err(err.into()),
            }
            if started.elapsed() >= timeout {
                return Err(IdleError::Timeout {
                    waited: started.elapsed(),
                    stats: self.store.stats().await?,
                });
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
    }

    /// Stops cleanly: the relay settles the batch it is publishing and
    /// claims no more, each worker finishes the batch in its hands (all
    /// within the shutdown timeout; past it they are stopped where they
    /// are, see [`Pipeline::with_shutdown_timeout`]), and then the rows relayed
    /// to the in-process queue that no worker handled are made pending
    /// again, so that the next process relays them at once instead of
    /// waiting out [`RelayConfig::relayed_for`].
    pub async fn shutdown(mut self) -> ShutdownReport {
        let _ = self.stop.send(true);
        let mut report = ShutdownReport::default();
        let mut panicked = 0;
        let joined = tokio::time::timeout(self.shutdown_timeout, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Err(err) = joined
                    && err.is_panic()
                {
                    panicked += 1;
                    tracing::error!(error = %err, "a relay or worker task panicked");
                }
            }
        })
        .await;
        report.panicked = panicked;
        if joined.is_err() {
            report.timed_out = true;
            tracing::warn!(
                timeout = ?self.shutdown_timeout,
                tasks = self.tasks.len(),
                "the relay or workers still busy at shutdown: stopped mid-batch (their transactions roll back)"
            );
            self.tasks.shutdown().await;
        }
        match self.relay.release_relayed().await {
            Ok(released) => report.released = released,
            Err(err) => tracing::warn!(
                error = %err,
                "could not release relayed rows: they are relayed again after relayed_for"
            ),
        }
        report
    }
}

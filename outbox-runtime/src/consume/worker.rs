//! The [`Worker`]: the long-poll consumer loop. Receives batches from a
//! [`Receiver`], hands them to a [`Consumer`], acknowledges or releases each
//! message by its outcome, and runs retention on a timer.

use std::sync::Arc;
use std::time::Duration;

use crate::consume::{Consumer, DeliveryOutcome};
use crate::metrics::Metrics;
use crate::store::{RetentionPolicy, Store};
use crate::transport::{Delivery, Receipt, Receiver, TransportError};

/// Settings of a [`Worker`].
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Messages handled together, at most (in one database transaction, up
    /// to [`ConsumerConfig::runs_per_transaction`](crate::consume::ConsumerConfig::runs_per_transaction) handler runs). A batch is
    /// what one receive returns; on a queue that returns fewer per call
    /// (SQS: 10), the worker receives again, without waiting, while each
    /// call returns a full page, for up to `linger`. So a lightly loaded
    /// queue is handled as messages arrive, and a busy one in large
    /// batches. Default: 50 (BENCHMARKS.md, scenarios 4 and 8, measure it
    /// against 10). Larger batches share a transaction's fixed statements
    /// among more messages, at the cost of latency under load: on an
    /// in-process queue a batch's groups wait for its commit. When a
    /// message fails, the later messages of its group in the batch are
    /// released at once, not run, and delivered again after it (no attempt
    /// counted): the larger the batch, the more such deliveries a failing
    /// group causes.
    pub batch_size: usize,
    /// How long a worker keeps receiving full pages into one batch before it
    /// handles them. Applies only to a queue that returns fewer messages per
    /// receive than `batch_size` ([`Receiver::max_receive`]: SQS, 10); an
    /// [`InProcessQueue`](crate::InProcessQueue) has no page limit, so one
    /// receive fills the batch. Default: 10 ms.
    pub linger: Duration,
    /// How long one receive call waits for messages (SQS long polling: up to
    /// 20 s, in whole seconds). Default: 1 s.
    pub wait: Duration,
    /// Retention, run by [`Worker::run`] every `interval` between batches;
    /// `None` to run it elsewhere (a scheduled job, [`Store::cleanup`]).
    /// Default: on, [`RetentionPolicy::default`] every 60 s, which deletes
    /// published outbox rows 24 hours after they were published, and inbox
    /// rows and handlers' failed-attempt counts after 15 days. It never
    /// deletes undelivered rows, dead rows or dead letters.
    pub retention: Option<(RetentionPolicy, Duration)>,
    /// At each stats check, warn (and count in `stuck_alerts`) when the
    /// oldest undelivered row is older than this: something is stuck.
    /// Default: 300 s.
    pub stuck_after: Option<Duration>,
    /// How often [`Worker::run`] reads the outbox's stats between batches:
    /// it sets the `outbox_pending` and `outbox_oldest_pending_seconds`
    /// gauges ([`metrics`](crate::metrics)) and checks `stuck_after`.
    /// Each worker reads them; on PostgreSQL `stats` counts the archive
    /// too, so keep it long. `None` for never. Default: 60 s.
    pub stats_interval: Option<Duration>,
    /// While a batch is being handled, extend its messages' visibility every
    /// this often (by twice as much), so slow handlers do not see their
    /// messages delivered again. Set it below the queue's visibility timeout.
    /// Default: 10 s.
    pub heartbeat: Option<Duration>,
    /// How long a worker whose consumer has a relay ([`Consumer::with_relay`]) drains the
    /// outbox on one pump message before it goes back to receiving (it
    /// publishes one batch at least). When the budget runs out first, the
    /// worker pumps again (if its consumer has one, [`Consumer::with_pump`]), so
    /// the drain goes on after a later receive, its own or another
    /// worker's, and messages are handled meanwhile: under producers faster
    /// than the queue takes messages, a drain until the outbox is empty
    /// would never end. No effect on a worker without a relay (an
    /// in-process pipeline runs its [`Relay`](crate::Relay) on its own).
    /// Default: 1 s.
    pub drain_budget: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 50,
            linger: Duration::from_millis(10),
            wait: Duration::from_secs(1),
            retention: Some((RetentionPolicy::default(), Duration::from_secs(60))),
            heartbeat: Some(Duration::from_secs(10)),
            stuck_after: Some(Duration::from_secs(300)),
            stats_interval: Some(Duration::from_secs(60)),
            drain_budget: Duration::from_secs(1),
        }
    }
}

/// What one [`Worker::run_once`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages received.
    pub received: usize,
    /// Messages acknowledged: handled, already handled, or dead-lettered.
    pub acked: usize,
    /// Messages released for a retry (failed, or behind a failure in their group).
    pub released: usize,
    /// Messages dead-lettered (poison, or a handler out of attempts).
    pub dead_lettered: usize,
}

/// Receives envelopes from a [`Receiver`] and runs them through a
/// [`Consumer`]. Run several workers for concurrency: clones of one worker
/// share its receiver, dispatcher, store and metrics, and each clone's
/// [`run`](Worker::run) is a worker of its own; the transport guarantees
/// one group is in one worker's hands at a time.
pub struct Worker<S, R> {
    consumer: Consumer<S>,
    receiver: Arc<R>,
    config: WorkerConfig,
}

impl<S: Clone, R> Clone for Worker<S, R> {
    fn clone(&self) -> Self {
        Worker {
            consumer: self.consumer.clone(),
            receiver: Arc::clone(&self.receiver),
            config: self.config,
        }
    }
}

impl<S, R> std::fmt::Debug for Worker<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<S: Store, R: Receiver> Worker<S, R> {
    /// A worker that receives from `receiver` and hands each batch to
    /// `consumer`, with the default [`WorkerConfig`].
    pub fn new(mut consumer: Consumer<S>, receiver: Arc<R>) -> Self {
        consumer.messaging_system = receiver.messaging_system();
        Worker {
            consumer,
            receiver,
            config: WorkerConfig::default(),
        }
    }

    /// Replaces the loop's settings.
    #[must_use]
    pub fn with_config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// The consumer that handles its batches.
    pub fn consumer(&self) -> &Consumer<S> {
        &self.consumer
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.consumer.metrics()
    }

    /// Receives one batch (waiting up to `wait` for its first message) and
    /// handles it.
    pub async fn run_once(&self) -> Result<BatchReport, TransportError> {
        let first = self.receive_first().await?;
        let deliveries = self.fill(first).await;
        self.handle_and_acknowledge(deliveries).await
    }

    /// The largest page one receive asks for.
    fn page(&self) -> usize {
        self.receiver
            .max_receive()
            .clamp(1, self.config.batch_size.max(1))
    }

    /// The first receive of a batch: waits up to `wait`.
    async fn receive_first(&self) -> Result<Vec<Delivery>, TransportError> {
        self.receiver.receive(self.page(), self.config.wait).await
    }

    /// Fills a batch: receives more, without waiting, while each receive
    /// returns a full page and the batch is neither full nor older than
    /// `linger`.
    async fn fill(&self, mut deliveries: Vec<Delivery>) -> Vec<Delivery> {
        let size = self.config.batch_size.max(1);
        let page = self.page();
        let started = tokio::time::Instant::now();
        // Whether the last receive returned all it was asked for.
        let mut full = deliveries.len() == page;
        while full && deliveries.len() < size && started.elapsed() < self.config.linger {
            let want = page.min(size - deliveries.len());
            let more = match self.receiver.receive(want, Duration::ZERO).await {
                Ok(more) => more,
                // What was received is handled; the next batch meets the
                // error again.
                Err(err) => {
                    tracing::debug!(error = %err, "receive failed while filling a batch");
                    break;
                }
            };
            full = more.len() == want;
            deliveries.extend(more);
        }
        deliveries
    }

    /// Handles batches until `shutdown` resolves, running retention on its
    /// timer between batches. Shutdown ends a wait for the first message, or
    /// the pause after a transport error, at once; a batch being filled or
    /// handled is finished first, and no batch is taken after it. Transport
    /// errors are logged and retried after a pause.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_cleanup = tokio::time::Instant::now();
        let mut last_stats: Option<tokio::time::Instant> = None;
        loop {
            // Shutdown stops a wait for the first message, never a batch
            // being filled or handled; once resolved, it wins over messages
            // that are waiting.
            let received = tokio::select! {
                biased;
                () = &mut shutdown => return,
                received = self.receive_first() => received,
            };
            let handled = match received {
                Ok(first) => {
                    let deliveries = self.fill(first).await;
                    self.handle_and_acknowledge(deliveries).await
                }
                Err(err) => Err(err),
            };
            if let Err(err) = handled {
                tracing::warn!(error = %err, "transport failed; pausing");
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            if let Some((policy, every)) = &self.config.retention
                && last_cleanup.elapsed() >= *every
            {
                last_cleanup = tokio::time::Instant::now();
                match self.consumer_store().cleanup(policy).await {
                    Ok(report) => tracing::debug!(?report, "retention ran"),
                    Err(err) => tracing::warn!(error = %err, "retention failed"),
                }
            }
            if let Some(every) = self.config.stats_interval
                && last_stats.is_none_or(|at| at.elapsed() >= every)
            {
                last_stats = Some(tokio::time::Instant::now());
                self.check_stuck().await;
            }
        }
    }

    /// Handles received deliveries and acknowledges or releases each. On a
    /// non-durable queue, the messages done with are confirmed in the
    /// transaction that handled them.
    pub async fn handle_and_acknowledge(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<BatchReport, TransportError> {
        let outcomes = self.handle_with_heartbeat(&deliveries).await;
        let mut report = BatchReport {
            received: deliveries.len(),
            ..BatchReport::default()
        };
        let mut acks: Vec<Receipt> = Vec::with_capacity(deliveries.len());
        let mut releases: Vec<(Receipt, Duration)> = Vec::new();
        for (delivery, outcome) in deliveries.into_iter().zip(outcomes) {
            let delay = match outcome {
                DeliveryOutcome::Done => None,
                DeliveryOutcome::DeadLettered => {
                    report.dead_lettered += 1;
                    None
                }
                DeliveryOutcome::Retry(delay) => Some(delay),
                DeliveryOutcome::HeldBack => Some(Duration::ZERO),
            };
            match delay {
                None => acks.push(delivery.receipt),
                Some(delay) => releases.push((delivery.receipt, delay)),
            }
        }
        report.acked = acks.len();
        report.released = releases.len();
        if !releases.is_empty() {
            self.receiver.release_all(&releases).await?;
        }
        if !acks.is_empty() {
            self.receiver.ack(&acks).await?;
        }
        Ok(report)
    }

    async fn handle_with_heartbeat(&self, deliveries: &[Delivery]) -> Vec<DeliveryOutcome> {
        let handling = self.consumer.handle_deliveries(
            deliveries,
            None,
            Some(self.config.drain_budget),
            !self.receiver.durable(),
        );
        let Some(every) = self.config.heartbeat.filter(|_| !deliveries.is_empty()) else {
            return handling.await;
        };
        tokio::pin!(handling);
        let receipts: Vec<Receipt> = deliveries.iter().map(|d| d.receipt.clone()).collect();
        loop {
            tokio::select! {
                outcomes = &mut handling => return outcomes,
                () = tokio::time::sleep(every) => {
                    if let Err(err) = self.receiver.extend(&receipts, every * 2).await {
                        tracing::warn!(error = %err, "could not extend visibility; messages may be delivered again (the inbox keeps handlers from running twice)");
                    }
                }
            }
        }
    }

    /// Reads the outbox's stats into the `outbox_pending` gauges, and warns
    /// when the oldest undelivered row is older than `stuck_after`. Returns
    /// whether it is.
    pub async fn check_stuck(&self) -> bool {
        let stats = self.consumer_store().stats().await;
        if let Ok(stats) = &stats {
            crate::metrics::pending(
                <S::Database as sqlx::Database>::NAME,
                stats.pending,
                stats.oldest_pending_age,
            );
        }
        let Some(limit) = self.config.stuck_after else {
            return false;
        };
        match stats {
            Ok(stats) if stats.oldest_pending_age.is_some_and(|age| age > limit) => {
                self.consumer.metrics().add_stuck_alerts(1);
                let groups = self
                    .consumer_store()
                    .group_stats(5)
                    .await
                    .unwrap_or_default();
                tracing::warn!(
                    pending = stats.pending,
                    oldest_secs = stats.oldest_pending_age.map(|a| a.as_secs()),
                    groups = ?groups.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(),
                    "outbox messages are stuck: the oldest undelivered one is older than {limit:?}"
                );
                true
            }
            Ok(_) => false,
            Err(err) => {
                tracing::warn!(error = %err, "could not check for stuck messages");
                false
            }
        }
    }

    fn consumer_store(&self) -> &S {
        self.consumer.store()
    }
}

//! The [`Worker`]: receives envelopes from a transport and runs their
//! handlers, each in a store transaction with the inbox.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::backoff::Backoff;
use crate::context::HandlerContext;
use crate::dispatch::{Dispatcher, invoke};
use crate::envelope::Envelope;
use crate::handler::HandlerError;
use crate::metrics::Metrics;
use crate::pump::Pump;
use crate::registry::HandlerRegistration;
use crate::store::{DeadLetter, RetentionPolicy, Store, StoreError};
use crate::transport::{Delivery, Receipt, Receiver, TransportError};

/// Settings of a [`Worker`].
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Messages received per call (SQS: at most 10).
    pub batch_size: usize,
    /// How long one receive call waits for messages (SQS long polling: up to 20 s).
    pub wait: Duration,
    /// Attempts per handler when it sets no `max_attempts`.
    pub default_max_attempts: u32,
    /// Delay before a failed message is delivered again.
    pub retry_backoff: Backoff,
    /// Retention, run by [`Worker::run`] every `interval`; `None` to run it
    /// elsewhere (a scheduled job, [`Store::cleanup`]).
    pub retention: Option<(RetentionPolicy, Duration)>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 10,
            wait: Duration::from_secs(1),
            default_max_attempts: 5,
            retry_backoff: Backoff::default(),
            retention: Some((RetentionPolicy::default(), Duration::from_secs(60))),
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

/// What became of one delivery.
enum Outcome {
    /// Done with it: acknowledge.
    Done,
    /// Done with it, some of it in dead letters: acknowledge.
    DeadLettered,
    /// Try again after this delay.
    Retry(Duration),
}

/// What became of one handler on one message.
enum HandlerRun {
    Committed,
    AlreadyHandled,
    Failed(HandlerError),
}

/// Receives envelopes from a [`Receiver`] and runs their handlers through a
/// [`Dispatcher`], each handler in its own store transaction:
///
/// 1. skip the handler if the inbox says it already committed this message;
/// 2. run it with the transaction in its [`HandlerContext`];
/// 3. on success, insert the inbox row and the messages it published, and
///    commit: effects, inbox and cascades together or not at all.
///
/// A message is acknowledged once every handler committed (or was already
/// done, or was dead-lettered). A failure releases it for redelivery after a
/// backoff, and releases the later messages of its group in the batch
/// unhandled, so the group keeps its order. Poison (not an envelope, unknown
/// type, unsupported version, undecodable payload) goes to dead letters and
/// is acknowledged: it never blocks its group.
///
/// Run several workers for concurrency; the transport guarantees one group is
/// in one worker's hands at a time.
pub struct Worker<S, R> {
    store: S,
    receiver: Arc<R>,
    dispatcher: Arc<Dispatcher>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    pump: Option<Arc<dyn Pump>>,
}

impl<S: Clone, R> Clone for Worker<S, R> {
    fn clone(&self) -> Self {
        Worker {
            store: self.store.clone(),
            receiver: Arc::clone(&self.receiver),
            dispatcher: Arc::clone(&self.dispatcher),
            config: self.config,
            metrics: Arc::clone(&self.metrics),
            pump: self.pump.clone(),
        }
    }
}

impl<S, R> std::fmt::Debug for Worker<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Store, R: Receiver> Worker<S, R> {
    /// A worker with the default settings.
    pub fn new(store: S, receiver: Arc<R>, dispatcher: Arc<Dispatcher>) -> Self {
        Worker {
            store,
            receiver,
            dispatcher,
            config: WorkerConfig::default(),
            metrics: Arc::default(),
            pump: None,
        }
    }

    /// Replaces the settings.
    #[must_use]
    pub fn with_config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Shares counters with other parts (the relay, a dashboard).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Pumps the relay after a handler commits messages it published.
    #[must_use]
    pub fn with_pump(mut self, pump: Arc<dyn Pump>) -> Self {
        self.pump = Some(pump);
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Receives one batch (waiting up to `wait`) and handles it.
    pub async fn run_once(&self) -> Result<BatchReport, TransportError> {
        let deliveries = self
            .receiver
            .receive(self.config.batch_size, self.config.wait)
            .await?;
        self.handle_batch(deliveries).await
    }

    /// Handles batches until `shutdown` resolves, running retention on its
    /// timer between batches. Shutdown is checked between batches: a batch
    /// being handled is finished first. Transport errors are logged and
    /// retried after a pause.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_cleanup = tokio::time::Instant::now();
        loop {
            let received = tokio::select! {
                () = &mut shutdown => return,
                received = self.receiver.receive(self.config.batch_size, self.config.wait) => received,
            };
            let handled = match received {
                Ok(deliveries) => self.handle_batch(deliveries).await,
                Err(err) => Err(err),
            };
            if let Err(err) = handled {
                tracing::warn!(error = %err, "transport failed; pausing");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Some((policy, every)) = &self.config.retention
                && last_cleanup.elapsed() >= *every
            {
                last_cleanup = tokio::time::Instant::now();
                match self.store.cleanup(policy).await {
                    Ok(report) => tracing::debug!(?report, "retention ran"),
                    Err(err) => tracing::warn!(error = %err, "retention failed"),
                }
            }
        }
    }

    /// Handles received deliveries, in order per group.
    pub async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<BatchReport, TransportError> {
        let mut report = BatchReport {
            received: deliveries.len(),
            ..BatchReport::default()
        };
        let mut acks: Vec<Receipt> = Vec::with_capacity(deliveries.len());
        let mut stopped: HashSet<String> = HashSet::new();
        for delivery in deliveries {
            if stopped.contains(&delivery.group) {
                // Behind a failure in its group: back in line, unhandled.
                self.receiver
                    .release(&delivery.receipt, Duration::ZERO)
                    .await?;
                report.released += 1;
                continue;
            }
            match self.handle(&delivery).await {
                Outcome::Done => acks.push(delivery.receipt),
                Outcome::DeadLettered => {
                    report.dead_lettered += 1;
                    acks.push(delivery.receipt);
                }
                Outcome::Retry(delay) => {
                    self.receiver.release(&delivery.receipt, delay).await?;
                    report.released += 1;
                    stopped.insert(delivery.group);
                }
            }
        }
        report.acked = acks.len();
        if !acks.is_empty() {
            self.receiver.ack(&acks).await?;
        }
        Ok(report)
    }

    async fn handle(&self, delivery: &Delivery) -> Outcome {
        let envelope = match Envelope::from_json(&delivery.body) {
            Ok(envelope) => envelope,
            Err(err) => {
                return self.poison(delivery, None, err.to_string()).await;
            }
        };
        let span = tracing::info_span!(
            "outbox.consume",
            message.id = %envelope.id,
            message.type = %envelope.message_type,
            message.group = %envelope.group,
            attempt = delivery.receive_count,
        );
        self.handle_envelope(delivery, &envelope)
            .instrument(span)
            .await
    }

    async fn handle_envelope(&self, delivery: &Delivery, envelope: &Envelope) -> Outcome {
        let entry = match self.dispatcher.route(envelope) {
            Ok(entry) => entry,
            Err(err) => return self.poison(delivery, Some(envelope), err.to_string()).await,
        };
        let mut retry = false;
        let mut dead = false;
        for &handler in entry.handlers() {
            match self
                .run_handler(handler, envelope, delivery.receive_count)
                .await
            {
                Ok(HandlerRun::Committed) => self.metrics.add_handled(1),
                Ok(HandlerRun::AlreadyHandled) => self.metrics.add_duplicates_suppressed(1),
                Ok(HandlerRun::Failed(err)) if err.is_permanent() => {
                    return self.poison(delivery, Some(envelope), err.to_string()).await;
                }
                Ok(HandlerRun::Failed(err)) => {
                    self.metrics.add_handler_failures(1);
                    let max = handler
                        .max_attempts
                        .unwrap_or(self.config.default_max_attempts);
                    if delivery.receive_count >= max {
                        match self.give_up(handler, delivery, envelope, &err).await {
                            Ok(()) => dead = true,
                            Err(store) => {
                                tracing::warn!(error = %store, "could not dead-letter; will retry");
                                retry = true;
                            }
                        }
                    } else {
                        retry = true;
                    }
                }
                Err(err) => {
                    tracing::warn!(handler = handler.name, error = %err, "store failed while handling; will retry");
                    retry = true;
                }
            }
        }
        if retry {
            Outcome::Retry(self.config.retry_backoff.delay(delivery.receive_count))
        } else if dead {
            Outcome::DeadLettered
        } else {
            Outcome::Done
        }
    }

    /// Runs one handler in its own transaction, with the inbox.
    async fn run_handler(
        &self,
        handler: &'static HandlerRegistration,
        envelope: &Envelope,
        attempt: u32,
    ) -> Result<HandlerRun, StoreError> {
        let mut tx = self.store.begin().await?;
        if self
            .store
            .inbox_contains(&mut tx, envelope.id, handler.name)
            .await?
        {
            tx.rollback().await?;
            return Ok(HandlerRun::AlreadyHandled);
        }
        let (result, published) = {
            let mut ctx = HandlerContext::new(envelope, self.dispatcher.state())
                .for_handler(handler.name, attempt)
                .with_transaction(&mut tx);
            let result = invoke(handler, envelope, &mut ctx).await;
            (result, ctx.take_published())
        };
        if let Err(err) = result {
            tx.rollback().await?;
            return Ok(HandlerRun::Failed(err));
        }
        if let Err(err) = self
            .store
            .inbox_insert(&mut tx, envelope.id, handler.name)
            .await
        {
            // Another worker committed this handler for this message since we
            // looked: its effects stand, ours roll back.
            tx.rollback().await?;
            return if err.is_unique_violation() {
                Ok(HandlerRun::AlreadyHandled)
            } else {
                Err(err)
            };
        }
        self.store.enqueue_all(&mut tx, &published).await?;
        tx.commit().await?;
        if !published.is_empty()
            && let Some(pump) = &self.pump
            && let Err(err) = pump.pump().await
        {
            tracing::warn!(error = %err, "pump after cascade failed");
        }
        Ok(HandlerRun::Committed)
    }

    /// A handler ran out of attempts: keep the message in dead letters and
    /// mark the handler done, so redeliveries caused by other handlers do not
    /// run it again. Replaying the dead letter clears the mark.
    async fn give_up(
        &self,
        handler: &'static HandlerRegistration,
        delivery: &Delivery,
        envelope: &Envelope,
        err: &HandlerError,
    ) -> Result<(), StoreError> {
        tracing::error!(handler = handler.name, error = %err, "handler out of attempts; dead-lettered");
        self.store
            .dead_letter(&DeadLetter {
                message_id: Some(envelope.id),
                handler: Some(handler.name.to_owned()),
                message_type: Some(envelope.message_type.clone()),
                group: Some(envelope.group.clone()),
                body: delivery.body.clone(),
                error: err.to_string(),
                attempts: delivery.receive_count,
            })
            .await?;
        let mut tx = self.store.begin().await?;
        self.store
            .inbox_insert(&mut tx, envelope.id, handler.name)
            .await?;
        tx.commit().await?;
        self.metrics.add_dead_lettered(1);
        Ok(())
    }

    /// The message can never be handled: keep it in dead letters and
    /// acknowledge it. If even that fails, retry it later rather than lose it.
    async fn poison(
        &self,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        error: String,
    ) -> Outcome {
        tracing::error!(%error, group = %delivery.group, "poison message dead-lettered");
        let entry = DeadLetter {
            message_id: envelope.map(|e| e.id),
            handler: None,
            message_type: envelope.map(|e| e.message_type.clone()),
            group: Some(delivery.group.clone()),
            body: delivery.body.clone(),
            error,
            attempts: delivery.receive_count,
        };
        match self.store.dead_letter(&entry).await {
            Ok(()) => {
                self.metrics.add_dead_lettered(1);
                Outcome::DeadLettered
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not dead-letter a poison message; will retry");
                Outcome::Retry(self.config.retry_backoff.delay(delivery.receive_count))
            }
        }
    }
}

//! The [`Consumer`]: what happens to one received message, shared by the
//! long-poll [`Worker`](crate::Worker) and the Lambda consumer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::context::HandlerContext;
use crate::dispatch::{Dispatcher, invoke};
use crate::envelope::{Envelope, ONLY_HANDLER_HEADER};
use crate::handler::HandlerError;
use crate::metrics::Metrics;
use crate::pump::{Drain, Pump, is_pump};
use crate::registry::HandlerRegistration;
use crate::store::{DeadLetter, Store, StoreError};
use crate::transport::Delivery;

/// Settings of a [`Consumer`].
#[derive(Clone, Copy, Debug)]
pub struct ConsumerConfig {
    /// Attempts per handler when it sets no `max_attempts`: failed runs
    /// before it gives up (so 5 means the fifth failure dead-letters it).
    /// Default: 5.
    pub default_max_attempts: u32,
    /// Delay before a failed message is delivered again, by the handler's
    /// attempt. Default: [`Backoff::default`] (1 s, doubling, at most 300 s,
    /// jittered).
    pub retry_backoff: Backoff,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            default_max_attempts: 5,
            retry_backoff: Backoff::default(),
        }
    }
}

/// What to do with one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done with it: acknowledge (delete) it.
    Done,
    /// Done with it, part or all of it in dead letters: acknowledge it.
    DeadLettered,
    /// Deliver it again after this delay.
    Retry(Duration),
    /// Not run, because an earlier message of its group failed in this
    /// batch: deliver it again, after that one.
    HeldBack,
}

impl Outcome {
    /// Whether the delivery should be acknowledged.
    pub fn is_done(self) -> bool {
        matches!(self, Outcome::Done | Outcome::DeadLettered)
    }
}

/// The deadline of a pump's drain: the batch's, or half the time left when
/// other records wait behind the pump in the batch, so they are handled in
/// the same invocation.
fn pump_deadline(now: Instant, deadline: Option<Instant>, waiting: usize) -> Option<Instant> {
    match deadline {
        Some(deadline) if waiting > 0 => Some(now + deadline.saturating_duration_since(now) / 2),
        other => other,
    }
}

/// Whether a handler's failure is the store's: a transient database error
/// (deadlock, serialization failure, lost connection) anywhere in its
/// chain of causes.
fn is_store_trouble(error: &HandlerError) -> bool {
    let HandlerError::Failed(error) = error else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = cause {
        if crate::store::is_transient_cause(error) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// What became of one handler on one message.
enum HandlerRun {
    Committed,
    AlreadyHandled,
    /// The run failed; it was the handler's `attempt`-th run of the message.
    Failed {
        error: HandlerError,
        attempt: u32,
    },
}

/// Runs received messages through a [`Dispatcher`] with a [`Store`]:
///
/// 1. a pump message makes it drain the outbox (when it has a relay);
/// 2. an envelope's handlers each run in their own store transaction, under
///    the message's [original id](Envelope::original_id): the handler is
///    skipped if the inbox says it already committed (or gave up on) this
///    message; otherwise it runs with the transaction in its
///    [`HandlerContext`], and on success the inbox row and the messages it
///    published are written and committed with its own writes;
/// 3. a failed run is counted in the store, per message and handler:
///    [`HandlerContext::attempt`] is 1 + the handler's failed runs, and a
///    delivery that does not run the handler (held back behind its group,
///    an outage) counts nothing, nor does a run whose transaction the
///    database aborted (a transient database error among its error's
///    causes: deadlock, serialization failure, lost connection);
/// 4. poison (not an envelope, unknown type, unsupported version,
///    undecodable payload) and handlers out of attempts go to dead letters,
///    and the delivery is acknowledged: they never block their group. A
///    handler's give-up commits its dead letter and its inbox row together.
pub struct Consumer<S> {
    store: S,
    dispatcher: Arc<Dispatcher>,
    config: ConsumerConfig,
    metrics: Arc<Metrics>,
    pump: Option<Arc<dyn Pump>>,
    relay: Option<Arc<dyn Drain>>,
}

impl<S: Clone> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Consumer {
            store: self.store.clone(),
            dispatcher: Arc::clone(&self.dispatcher),
            config: self.config,
            metrics: Arc::clone(&self.metrics),
            pump: self.pump.clone(),
            relay: self.relay.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("relay", &self.relay.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Consumer<S> {
    /// A consumer with the default settings.
    pub fn new(store: S, dispatcher: Arc<Dispatcher>) -> Self {
        Consumer {
            store,
            dispatcher,
            config: ConsumerConfig::default(),
            metrics: Arc::default(),
            pump: None,
            relay: None,
        }
    }

    /// Replaces the settings.
    #[must_use]
    pub fn with_config(mut self, config: ConsumerConfig) -> Self {
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

    /// Drains the outbox with `relay` when a pump message arrives.
    #[must_use]
    pub fn with_relay(mut self, relay: Arc<dyn Drain>) -> Self {
        self.relay = Some(relay);
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Pumps the relay, if this consumer has a pump: after confirming
    /// messages on a non-durable queue, the groups they held are free.
    pub(crate) async fn wake_relay(&self) {
        if let Some(pump) = &self.pump
            && let Err(err) = pump.pump().await
        {
            tracing::warn!(error = %err, "pump failed");
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Handles a received batch in order: a failure holds back the later
    /// messages of its group (they are not run, and come back after it);
    /// other groups go on. Returns one outcome per delivery, in order.
    pub async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<Outcome> {
        self.handle_batch_until(deliveries, None).await
    }

    /// Like [`handle_batch`](Self::handle_batch), with a deadline for pump
    /// messages (a Lambda's remaining time).
    pub async fn handle_batch_until(
        &self,
        deliveries: &[Delivery],
        deadline: Option<Instant>,
    ) -> Vec<Outcome> {
        let mut stopped: HashSet<&str> = HashSet::new();
        let mut outcomes = Vec::with_capacity(deliveries.len());
        for (at, delivery) in deliveries.iter().enumerate() {
            if stopped.contains(delivery.group.as_str()) {
                outcomes.push(Outcome::HeldBack);
                continue;
            }
            let outcome = if is_pump(&delivery.body) {
                let waiting = deliveries[at + 1..]
                    .iter()
                    .filter(|d| !is_pump(&d.body))
                    .count();
                self.on_pump(pump_deadline(Instant::now(), deadline, waiting))
                    .await
            } else {
                self.handle_envelope_body(delivery).await
            };
            if !outcome.is_done() {
                stopped.insert(&delivery.group);
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Drains the outbox on a pump, until done or `deadline`. Without a relay
    /// the pump is acknowledged and ignored.
    pub async fn on_pump(&self, deadline: Option<Instant>) -> Outcome {
        let Some(relay) = &self.relay else {
            tracing::debug!("pump received, but this consumer has no relay; ignored");
            return Outcome::Done;
        };
        match relay.drain_before(deadline).await {
            Ok(report) => {
                if !report.complete {
                    // Out of time with rows left: ask for another drain.
                    if let Some(pump) = &self.pump
                        && let Err(err) = pump.pump().await
                    {
                        tracing::warn!(error = %err, "could not re-pump; the sweep will drain the rest");
                    }
                }
                Outcome::Done
            }
            Err(err) => {
                tracing::warn!(error = %err, "drain on pump failed; the pump will be retried");
                Outcome::Retry(self.config.retry_backoff.delay(1))
            }
        }
    }

    /// Handles one delivery: decodes it, runs every handler of its type,
    /// each in its own transaction with the inbox, and says what to do with
    /// the delivery.
    pub async fn handle(&self, delivery: &Delivery) -> Outcome {
        self.handle_until(delivery, None).await
    }

    async fn handle_until(&self, delivery: &Delivery, deadline: Option<Instant>) -> Outcome {
        if is_pump(&delivery.body) {
            return self.on_pump(deadline).await;
        }
        self.handle_envelope_body(delivery).await
    }

    /// Handles a delivery that is not a pump: an envelope, or poison.
    async fn handle_envelope_body(&self, delivery: &Delivery) -> Outcome {
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
            receive_count = delivery.receive_count,
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
        // A replayed dead letter runs only the handler that gave up.
        let only = envelope.headers.extra.get(ONLY_HANDLER_HEADER);
        if let Some(only) = only
            && !entry.handlers().iter().any(|h| h.name == only.as_str())
        {
            let error = format!(
                "the replay is for handler `{only}`, which does not handle {} v{} in this build",
                envelope.message_type, envelope.version
            );
            return self.poison(delivery, Some(envelope), error).await;
        }
        let identity = envelope.original_id();
        // The delay before the message comes back: the longest any failed
        // handler asks for.
        let mut retry: Option<Duration> = None;
        let mut dead = false;
        let handlers = entry
            .handlers()
            .iter()
            .filter(|h| only.is_none_or(|only| h.name == only.as_str()));
        for &handler in handlers {
            let delay = match self.run_handler(handler, envelope, identity).await {
                Ok(HandlerRun::Committed) => {
                    self.metrics.add_handled(1);
                    continue;
                }
                Ok(HandlerRun::AlreadyHandled) => {
                    self.metrics.add_duplicates_suppressed(1);
                    continue;
                }
                Ok(HandlerRun::Failed { error, .. }) if is_store_trouble(&error) => {
                    // The database aborted the handler's transaction
                    // (deadlock, lost connection): no attempt is counted.
                    self.metrics.add_handler_failures(1);
                    tracing::warn!(handler = handler.name, %error, "the store failed the handler's transaction; will retry");
                    self.config.retry_backoff.delay(delivery.receive_count)
                }
                Ok(HandlerRun::Failed { error, attempt }) => {
                    self.metrics.add_handler_failures(1);
                    let max = handler
                        .max_attempts
                        .unwrap_or(self.config.default_max_attempts);
                    // A permanent error (the payload does not decode, the
                    // handler says so) will not heal by retrying: dead-letter
                    // it for this handler now; the others still run.
                    if error.is_permanent() || attempt >= max {
                        match self
                            .give_up(handler, delivery, envelope, identity, &error, attempt)
                            .await
                        {
                            Ok(true) => {
                                dead = true;
                                continue;
                            }
                            Ok(false) => {
                                self.metrics.add_duplicates_suppressed(1);
                                continue;
                            }
                            Err(store) => {
                                tracing::warn!(handler = handler.name, error = %store, "could not dead-letter; will retry");
                                self.config.retry_backoff.delay(attempt)
                            }
                        }
                    } else {
                        if let Err(store) = self
                            .store
                            .record_handler_failure(identity, handler.name, &error.to_string())
                            .await
                        {
                            // The run is not counted: the handler gets one
                            // more attempt than it would have.
                            tracing::warn!(handler = handler.name, error = %store, "could not count a failed attempt");
                        }
                        self.config.retry_backoff.delay(attempt)
                    }
                }
                Err(err) => {
                    // The store is down: no attempt is counted, and the
                    // delay grows with the deliveries.
                    tracing::warn!(handler = handler.name, error = %err, "store failed while handling; will retry");
                    self.config.retry_backoff.delay(delivery.receive_count)
                }
            };
            retry = Some(retry.map_or(delay, |longest| longest.max(delay)));
        }
        match retry {
            Some(delay) => Outcome::Retry(delay),
            None if dead => Outcome::DeadLettered,
            None => Outcome::Done,
        }
    }

    /// Runs one handler in its own transaction, with the inbox and the
    /// handler's attempt count, under the message's original id.
    async fn run_handler(
        &self,
        handler: &'static HandlerRegistration,
        envelope: &Envelope,
        identity: uuid::Uuid,
    ) -> Result<HandlerRun, StoreError> {
        let mut tx = self.store.begin().await?;
        let state = self
            .store
            .handler_state(&mut tx, identity, handler.name)
            .await?;
        if state.handled {
            tx.rollback().await?;
            return Ok(HandlerRun::AlreadyHandled);
        }
        let attempt = state.failures.saturating_add(1);
        let (result, published) = {
            let mut ctx = HandlerContext::new(envelope, self.dispatcher.state())
                .for_handler(handler.name, attempt)
                .with_max_message_bytes(self.store.max_message_bytes())
                .with_transaction(&mut tx);
            let result = invoke(handler, envelope, &mut ctx).await;
            (result, ctx.take_published())
        };
        if let Err(error) = result {
            tx.rollback().await?;
            return Ok(HandlerRun::Failed { error, attempt });
        }
        if let Err(err) = self
            .store
            .inbox_insert(&mut tx, identity, handler.name)
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
        if let Err(err) = self.store.enqueue_all(&mut tx, &published).await {
            tx.rollback().await?;
            return match err {
                // A message it published cannot be stored: the handler's
                // failure, not the store's.
                StoreError::Encode(encode) => Ok(HandlerRun::Failed {
                    error: HandlerError::Failed(Box::new(encode)),
                    attempt,
                }),
                other => Err(other),
            };
        }
        tx.commit().await?;
        if !published.is_empty()
            && let Some(pump) = &self.pump
            && let Err(err) = pump.pump().await
        {
            tracing::warn!(error = %err, "pump after cascade failed");
        }
        Ok(HandlerRun::Committed)
    }

    /// A handler ran out of attempts or failed permanently: in one
    /// transaction, keep the message in dead letters and mark the handler
    /// done in the inbox, so redeliveries caused by other handlers do not
    /// run it again. Returns `false`, keeping no dead letter, when another
    /// run of the handler committed the message meanwhile. A replay of the
    /// dead letter runs the handler again (see [`crate::admin`]).
    async fn give_up(
        &self,
        handler: &'static HandlerRegistration,
        delivery: &Delivery,
        envelope: &Envelope,
        identity: uuid::Uuid,
        err: &HandlerError,
        attempt: u32,
    ) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        if let Err(insert) = self
            .store
            .inbox_insert(&mut tx, identity, handler.name)
            .await
        {
            tx.rollback().await?;
            return if insert.is_unique_violation() {
                tracing::info!(
                    handler = handler.name,
                    "another run committed the handler; nothing to give up"
                );
                Ok(false)
            } else {
                Err(insert)
            };
        }
        let entry = DeadLetter {
            message_id: Some(identity),
            handler: Some(handler.name.to_owned()),
            message_type: Some(envelope.message_type.clone()),
            group: Some(envelope.group.clone()),
            body: delivery.body.clone(),
            error: err.to_string(),
            attempts: attempt,
        };
        self.store.dead_letter(&mut tx, &entry).await?;
        tx.commit().await?;
        tracing::error!(handler = handler.name, error = %err, attempt, permanent = err.is_permanent(), "handler gave up; dead-lettered");
        self.metrics.add_dead_lettered(1);
        Ok(true)
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
            message_id: envelope.map(Envelope::original_id),
            handler: None,
            message_type: envelope.map(|e| e.message_type.clone()),
            group: Some(delivery.group.clone()),
            body: delivery.body.clone(),
            error,
            attempts: delivery.receive_count,
        };
        let kept = async {
            let mut tx = self.store.begin().await?;
            self.store.dead_letter(&mut tx, &entry).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        match kept.await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pump_leaves_half_the_time_to_the_records_behind_it() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(10);
        assert_eq!(
            pump_deadline(now, Some(deadline), 3),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(pump_deadline(now, Some(deadline), 0), Some(deadline));
        assert_eq!(
            pump_deadline(now, None, 3),
            None,
            "a worker has no deadline"
        );
    }
}

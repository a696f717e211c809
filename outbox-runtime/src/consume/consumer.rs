//! The [`Consumer`]: what happens to one received message, shared by the
//! long-poll [`Worker`](crate::Worker) and the Lambda consumer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::dispatch::{Dispatcher, continue_trace, in_span, run_handler, span_if_wanted};
use crate::envelope::{Envelope, ONLY_HANDLER_HEADER, RELEASE_HEADER};
use crate::handler::HandlerContext;
use crate::handler::HandlerError;
use crate::metrics::Metrics;
use crate::pump::{Pump, is_pump};
use crate::registry::HandlerRegistration;
use crate::relay::OutboxDrain;
use crate::store::holds;
use crate::store::{
    DeadLetter, GroupHold, HeldLetter, HoldRelease, Store, StoreError, StoreTransaction,
};
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
    /// Handler runs per database transaction, at most: a received batch is
    /// handled in transactions of up to this many runs (a message with more
    /// handlers gets a transaction of its own). Default: 50, below the 64
    /// subtransactions (savepoints, see [`Savepoints`]) PostgreSQL tracks
    /// per session before every snapshot in the database gets slower. On SQLite
    /// the transaction holds the database's write lock throughout: lower it
    /// when handlers are slow. 0 behaves as 1.
    pub runs_per_transaction: usize,
    /// When a handler run gets a savepoint of its own. Default:
    /// [`Savepoints::OnFailure`].
    pub savepoints: Savepoints,
}

/// When a [`Consumer`] sets a savepoint per handler run, so that a failed
/// run rolls back alone and the other runs of its transaction commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Savepoints {
    /// A transaction's runs go first under one savepoint. If every run
    /// succeeds, that is all: two statements per transaction instead of two
    /// per run. If one fails (or the database aborted the transaction under
    /// one that returned `Ok`), the transaction rolls back to that savepoint
    /// and its runs go again, each in a savepoint of its own. The failed
    /// run is not run again when the transaction was still sound after it:
    /// its error is what the second pass records (also when the second pass
    /// holds its message back, behind a run of its group that failed only
    /// there). So a failure costs the
    /// runs before it in the transaction a second run; their effects,
    /// rolled back with the first pass, commit once. A handler whose
    /// effects lie outside the database (an email, an HTTP call) may
    /// repeat them; choose [`EveryRun`](Self::EveryRun) for those.
    #[default]
    OnFailure,
    /// A savepoint around every run: each run happens once per delivery
    /// (unless the whole transaction fails), at two more statements per run.
    EveryRun,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            default_max_attempts: 5,
            retry_backoff: Backoff::default(),
            runs_per_transaction: 50,
            savepoints: Savepoints::OnFailure,
        }
    }
}

/// What to do with one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryOutcome {
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

impl DeliveryOutcome {
    /// Whether the delivery should be acknowledged.
    pub fn is_done(self) -> bool {
        matches!(self, DeliveryOutcome::Done | DeliveryOutcome::DeadLettered)
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

/// A received envelope (or poison), ready to handle.
struct Prepared<'a> {
    /// Its place in the received batch.
    at: usize,
    delivery: &'a Delivery,
    work: Work<'a>,
}

enum Work<'a> {
    /// Not an envelope, or one this binary cannot route: dead letters.
    Poison {
        envelope: Option<Envelope>,
        error: String,
    },
    Message {
        /// Upcast to the version whose handlers run, when its own has none.
        envelope: Envelope,
        /// The id it is handled under ([`Envelope::original_id`]).
        identity: Uuid,
        /// The logical queue of the version delivered.
        queue: &'static str,
        /// The type delivered, when an upcast renamed it.
        received_type: Option<String>,
        handlers: &'a [&'static HandlerRegistration],
        /// A replayed dead letter runs only the handler that gave up.
        only: Option<String>,
    },
}

impl Prepared<'_> {
    /// The dead letter of `handler`'s give-up on this message, with the
    /// body and type as delivered.
    fn letter(&self, handler: &str, error: String, attempts: u32) -> DeadLetter {
        let (message_id, message_type, group) = match &self.work {
            Work::Message {
                envelope,
                identity,
                received_type,
                ..
            } => (
                Some(*identity),
                Some(
                    received_type
                        .clone()
                        .unwrap_or_else(|| envelope.message_type.clone()),
                ),
                envelope.group.clone(),
            ),
            Work::Poison { envelope, .. } => (
                envelope.as_ref().map(Envelope::original_id),
                envelope.as_ref().map(|e| e.message_type.clone()),
                self.delivery.group.clone(),
            ),
        };
        DeadLetter {
            message_id,
            handler: Some(handler.to_owned()),
            message_type,
            group: Some(group),
            body: self.delivery.body.clone(),
            error,
            attempts,
        }
    }

    /// The handlers to run.
    fn handlers(&self) -> impl Iterator<Item = &'static HandlerRegistration> + '_ {
        let (handlers, only) = match &self.work {
            Work::Message { handlers, only, .. } => (*handlers, only.as_deref()),
            Work::Poison { .. } => (&[][..], None),
        };
        handlers
            .iter()
            .copied()
            .filter(move |h| only.is_none_or(|only| h.name == only))
    }
}

/// The number of prepared messages, from the front, that one transaction
/// handles: up to `runs` handler runs, and at least one message.
fn chunk_len(batch: &[Prepared<'_>], runs: usize) -> usize {
    let mut total = 0;
    for (len, item) in batch.iter().enumerate() {
        total += item.handlers().count().max(1);
        if total > runs {
            return len.max(1);
        }
    }
    batch.len()
}

/// Where one handler run (a message id and a handler) stands in a
/// transaction.
#[derive(Clone, Copy)]
enum Run {
    /// The inbox had it before this transaction: skip it.
    Handled,
    /// Its inbox row is reserved in this transaction; not run yet.
    Reserved { failures: u32 },
    /// Ran and succeeded in this transaction.
    Committed,
    /// Out of attempts: dead-lettered in this transaction, on the delivery
    /// at this place in the batch. Its reservation commits with the dead
    /// letter, unless the handler holds its group: then the group's hold
    /// keeps it from running, and the release's replay runs it.
    GaveUp { at: usize, reserved: bool },
    /// Kept behind its group's hold: dead-lettered in this transaction, not
    /// run; its reservation is given back, so the release's replay runs it.
    Kept,
    /// Ran and failed; deliver again after this delay.
    Failed(Duration),
}

/// What a transaction did, applied to the metrics once it committed.
#[derive(Default)]
struct Tally {
    handled: u64,
    duplicates: u64,
    failures: u64,
    dead_lettered: u64,
    published: bool,
}

/// The holds on the groups of a transaction's messages, by holding handler
/// and group (`#[handler(on_dead_letter = "hold_group")]`).
type Holds = HashMap<(&'static str, String), GroupHold>;

/// `hold`'s running release, if `envelope` is one of its replays: only
/// those run the holding handler while its group is held.
fn release_of(envelope: &Envelope, hold: &GroupHold) -> Option<HoldRelease> {
    let release = hold.release?;
    let id = envelope.headers.extra.get(RELEASE_HEADER)?;
    (Uuid::parse_str(id).ok()? == release.id).then_some(release)
}

/// A run that failed in a transaction's first pass.
struct FailedRun {
    /// The message's place in the batch.
    at: usize,
    key: (Uuid, &'static str),
    error: HandlerError,
}

/// One pass over a transaction's runs: where each run stands, what it did,
/// and the outcome of each message reached.
struct Pass {
    /// The outcome of each message, by its place in the batch.
    done: Vec<(usize, DeliveryOutcome)>,
    runs: HashMap<(Uuid, &'static str), Run>,
    /// The holds as this pass left them.
    holds: Holds,
    tally: Tally,
    /// In a pass under one shared savepoint: the failed run that ended it.
    failed: Option<FailedRun>,
    /// In the pass after it: that run, when the transaction was still sound
    /// after it. It happened, so it counts when this pass comes to its
    /// message, run or held back (a message before it in its group may fail
    /// only in this pass), and is not run again.
    first_failure: Option<FailedRun>,
}

impl Pass {
    fn new(runs: HashMap<(Uuid, &'static str), Run>, holds: Holds) -> Self {
        Pass {
            done: Vec::new(),
            runs,
            holds,
            tally: Tally::default(),
            failed: None,
            first_failure: None,
        }
    }
}

/// The outcome of a message held back: delivered again at once, or after
/// the longest retry delay of its runs that failed in this transaction.
fn held_back(item: &Prepared<'_>, runs: &HashMap<(Uuid, &'static str), Run>) -> DeliveryOutcome {
    let Work::Message { identity, .. } = &item.work else {
        return DeliveryOutcome::HeldBack;
    };
    item.handlers()
        .filter_map(|handler| match runs.get(&(*identity, handler.name)) {
            Some(Run::Failed(delay)) => Some(*delay),
            _ => None,
        })
        .max()
        .map_or(DeliveryOutcome::HeldBack, DeliveryOutcome::Retry)
}

/// Whether `item` is held back: behind a failure of its group earlier in
/// the batch, or in a transaction that started `late` (after a Lambda
/// invocation's deadline). Not run, no attempt counted.
fn is_held(item: &Prepared<'_>, stopped: &HashSet<&str>, late: bool) -> bool {
    late || stopped.contains(item.delivery.group.as_str())
}

/// Runs received messages through a [`Dispatcher`] with a [`Store`]:
///
/// 1. a received batch's envelopes are handled in one store transaction
///    (see [`handle_batch`](Self::handle_batch)), each handler under the
///    message's [original id](Envelope::original_id): one statement
///    reserves the inbox rows of the batch's runs, a second reads their
///    attempts;
///    a handler the inbox says already committed (or gave up on) the
///    message is skipped; the others run with the transaction in their
///    [`HandlerContext`], and the messages a handler publishes are written
///    with its run; a failed run is rolled back alone (through savepoints,
///    see [`Savepoints`]); one commit makes the batch's runs durable;
/// 2. a failed run is counted in the store, per message and handler:
///    [`HandlerContext::attempt`] is 1 + the handler's failed runs, and a
///    delivery that does not run the handler (held back behind its group,
///    an outage) counts nothing, nor does a run the database aborted (a
///    transient database error among its error's causes: deadlock,
///    serialization failure, lost connection);
/// 3. poison (not an envelope, unknown type, unsupported version,
///    undecodable payload) and handlers out of attempts go to dead letters,
///    and the delivery is acknowledged: they do not block their group. A
///    handler's give-up commits its dead letter and its inbox row together.
///    A handler declared `on_dead_letter = "hold_group"` commits its dead
///    letter and a hold on the group instead: its later deliveries of the
///    group are kept as dead letters, in order, until a release
///    ([`crate::admin::release_group`]) replays them;
/// 4. a pump message makes it drain the outbox (when it has a relay), after
///    the batch's envelopes.
pub struct Consumer<S> {
    store: S,
    dispatcher: Arc<Dispatcher>,
    config: ConsumerConfig,
    metrics: Arc<Metrics>,
    pump: Option<Arc<dyn Pump>>,
    relay: Option<Arc<dyn OutboxDrain>>,
    /// The queue's OpenTelemetry `messaging.system`, for the spans: set by
    /// the loop that receives (`Worker`, `lambda::run`).
    pub(crate) messaging_system: &'static str,
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
            messaging_system: self.messaging_system,
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
            messaging_system: "unknown",
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

    /// Pumps the relay after a batch commits: when its handlers published
    /// messages, and when it confirmed messages of a non-durable queue.
    #[must_use]
    pub fn with_pump(mut self, pump: Arc<dyn Pump>) -> Self {
        self.pump = Some(pump);
        self
    }

    /// Drains the outbox with `relay` when a pump message arrives.
    #[must_use]
    pub fn with_relay(mut self, relay: Arc<dyn OutboxDrain>) -> Self {
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
    ///
    /// The envelopes are handled in one database transaction (or several,
    /// of at most [`ConsumerConfig::runs_per_transaction`] handler runs
    /// each): one statement reserves the inbox rows, a second reads the
    /// attempts, a failing run rolls back alone (through savepoints, as
    /// [`ConsumerConfig::savepoints`] says), and one commit makes every run
    /// durable. When the transaction itself fails, its messages are handled
    /// again one per transaction. A handler may so run more than once for
    /// one delivery; its effects commit once. Handlers of a transaction share it: a
    /// `SET LOCAL` or a deferred constraint of one applies to the others.
    /// Pump messages are handled after the envelopes.
    pub async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<DeliveryOutcome> {
        self.handle_deliveries(deliveries, None, None, false).await
    }

    /// Like [`handle_batch`](Self::handle_batch), with a deadline (a
    /// Lambda's remaining time): messages of the batch's later transactions
    /// not started by then are held back (not run, no attempt counted; the
    /// first transaction always runs), and pumps drain until it.
    pub async fn handle_batch_until(
        &self,
        deliveries: &[Delivery],
        deadline: Option<Instant>,
    ) -> Vec<DeliveryOutcome> {
        self.handle_deliveries(deliveries, deadline, None, false)
            .await
    }

    /// Handles one delivery: [`handle_batch`](Self::handle_batch) with a
    /// batch of one.
    pub async fn handle(&self, delivery: &Delivery) -> DeliveryOutcome {
        self.handle_deliveries(std::slice::from_ref(delivery), None, None, false)
            .await
            .pop()
            .unwrap_or(DeliveryOutcome::Done)
    }

    /// The batch loop: `deadline` holds back messages of later
    /// transactions; a pump drains until `deadline` and for at most
    /// `drain_for` from its start. With `confirm` (a non-durable queue), the
    /// outbox rows of the messages done with are marked published in the
    /// transaction that handled them.
    pub(crate) async fn handle_deliveries(
        &self,
        deliveries: &[Delivery],
        deadline: Option<Instant>,
        drain_for: Option<Duration>,
        confirm: bool,
    ) -> Vec<DeliveryOutcome> {
        let mut outcomes = vec![DeliveryOutcome::Done; deliveries.len()];
        let waited = ::metrics::histogram!(crate::metrics::PUBLISH_TO_HANDLE_SECONDS);
        // First deliveries only: a redelivery's wait includes its retry
        // delay or visibility timeout.
        for sent_at in deliveries
            .iter()
            .filter(|d| d.receive_count <= 1 && !is_pump(&d.body))
            .filter_map(|d| d.sent_at)
        {
            waited.record(crate::metrics::seconds_since(sent_at));
        }
        let mut pumps = Vec::new();
        let mut batch = Vec::with_capacity(deliveries.len());
        for (at, delivery) in deliveries.iter().enumerate() {
            if is_pump(&delivery.body) {
                pumps.push(at);
            } else {
                batch.push(self.prepare(at, delivery));
            }
        }
        let mut stopped: HashSet<&str> = HashSet::new();
        let mut rest = &batch[..];
        // The first transaction runs whatever the deadline says, so every
        // call makes progress (a Lambda deadline already past).
        let mut until = None;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest, self.config.runs_per_transaction));
            self.handle_chunk(chunk, &mut stopped, &mut outcomes, until, confirm)
                .await;
            until = deadline;
            rest = tail;
        }
        for at in pumps {
            let group = deliveries[at].group.as_str();
            outcomes[at] = if stopped.contains(group) {
                DeliveryOutcome::HeldBack
            } else {
                // A budget too large to add is no limit.
                let budget = drain_for.and_then(|budget| Instant::now().checked_add(budget));
                let until = match (deadline, budget) {
                    (Some(deadline), Some(budget)) => Some(deadline.min(budget)),
                    (deadline, budget) => deadline.or(budget),
                };
                self.on_pump(until).await
            };
            if !outcomes[at].is_done() {
                stopped.insert(group);
            }
        }
        outcomes
    }

    /// Parses and routes a delivery.
    fn prepare<'a>(&'a self, at: usize, delivery: &'a Delivery) -> Prepared<'a> {
        let poison = |envelope, error| Prepared {
            at,
            delivery,
            work: Work::Poison { envelope, error },
        };
        let mut envelope = match Envelope::from_json(&delivery.body) {
            Ok(envelope) => envelope,
            Err(err) => return poison(None, err.to_string()),
        };
        let entry = match self.dispatcher.route(&envelope) {
            Ok(entry) => entry,
            Err(err) => return poison(Some(envelope), err.to_string()),
        };
        let queue = entry.registration().queue.unwrap_or("default");
        let (handlers, received_type) = match self.dispatcher.upcast(entry, &mut envelope) {
            Ok(target) => {
                let renamed = (target.registration().name != entry.registration().name)
                    .then(|| entry.registration().name.to_owned());
                (target.handlers(), renamed)
            }
            Err(err) => return poison(Some(envelope), err.to_string()),
        };
        let only = envelope.headers.extra.get(ONLY_HANDLER_HEADER).cloned();
        if let Some(only) = &only
            && !handlers.iter().any(|h| h.name == only.as_str())
        {
            let error = format!(
                "the replay is for handler `{only}`, which does not handle {} v{} in this build",
                envelope.message_type, envelope.version
            );
            return poison(Some(envelope), error);
        }
        Prepared {
            at,
            delivery,
            work: Work::Message {
                identity: envelope.original_id(),
                queue,
                received_type,
                envelope,
                handlers,
                only,
            },
        }
    }

    /// Handles `chunk` in one transaction; if the transaction fails, each of
    /// its messages in a transaction of its own, and a message whose own
    /// transaction fails is retried, its run counting no attempt.
    async fn handle_chunk<'a>(
        &self,
        chunk: &[Prepared<'a>],
        stopped: &mut HashSet<&'a str>,
        outcomes: &mut [DeliveryOutcome],
        deadline: Option<Instant>,
        confirm: bool,
    ) {
        let mut tried = stopped.clone();
        let err = match self.transaction(chunk, &mut tried, deadline, confirm).await {
            Ok(done) => {
                for (at, outcome) in done {
                    outcomes[at] = outcome;
                }
                *stopped = tried;
                return;
            }
            Err(err) => err,
        };
        if let [item] = chunk {
            outcomes[item.at] = self.store_failed(item, &err, stopped);
            return;
        }
        tracing::warn!(error = %err, messages = chunk.len(), "the batch's transaction failed; handling its messages one by one");
        for item in chunk {
            let one = std::slice::from_ref(item);
            let mut tried = stopped.clone();
            outcomes[item.at] = match self.transaction(one, &mut tried, deadline, confirm).await {
                Ok(mut done) => {
                    *stopped = tried;
                    done.pop()
                        .map_or(DeliveryOutcome::Done, |(_, outcome)| outcome)
                }
                Err(err) => self.store_failed(item, &err, stopped),
            };
        }
    }

    /// A message's own transaction failed: the store is down, or refused
    /// it. No attempt is counted; it comes back after a delay that grows
    /// with its deliveries, and holds back its group.
    fn store_failed<'a>(
        &self,
        item: &Prepared<'a>,
        err: &StoreError,
        stopped: &mut HashSet<&'a str>,
    ) -> DeliveryOutcome {
        tracing::warn!(error = %err, group = %item.delivery.group, "store failed while handling; will retry");
        stopped.insert(&item.delivery.group);
        DeliveryOutcome::Retry(self.config.retry_backoff.delay(item.delivery.receive_count))
    }

    /// One transaction over `chunk`: reserves the inbox rows of its runs,
    /// runs the handlers (see [`Savepoints`]), gives back the reservations
    /// of runs that did not succeed, confirms (`confirm`), commits. Returns
    /// the outcome of each message, by its place in the batch.
    async fn transaction<'a>(
        &self,
        chunk: &[Prepared<'a>],
        stopped: &mut HashSet<&'a str>,
        deadline: Option<Instant>,
        confirm: bool,
    ) -> Result<Vec<(usize, DeliveryOutcome)>, StoreError> {
        let late = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if chunk.iter().all(|item| is_held(item, stopped, late)) {
            return Ok(chunk
                .iter()
                .map(|item| (item.at, DeliveryOutcome::HeldBack))
                .collect());
        }
        let mut keys: Vec<(Uuid, &'static str)> = Vec::new();
        for item in chunk.iter().filter(|item| !is_held(item, stopped, late)) {
            if let Work::Message { identity, .. } = &item.work {
                for handler in item.handlers() {
                    let key = (*identity, handler.name);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        let mut tx = self.store.begin().await?;
        // The holds first: a release locks its hold, then writes inbox rows.
        let holds = self.read_holds(&mut tx, chunk, stopped, late).await?;
        let states = self.store.inbox_reserve(&mut tx, &keys).await?;
        let runs: HashMap<(Uuid, &'static str), Run> = keys
            .iter()
            .zip(states)
            .map(|(key, state)| {
                let run = if state.handled {
                    Run::Handled
                } else {
                    Run::Reserved {
                        failures: state.failures,
                    }
                };
                (*key, run)
            })
            .collect();
        let mut second = Pass::new(runs, holds);
        if self.config.savepoints == Savepoints::OnFailure {
            let mut tried = stopped.clone();
            self.store.begin_run(&mut tx).await?;
            let first = Pass::new(second.runs.clone(), second.holds.clone());
            match self
                .pass(&mut tx, chunk, &mut tried, late, first, true)
                .await
            {
                Ok(mut first) => match first.failed.take() {
                    None => match self.store.end_run(&mut tx, true).await {
                        Ok(()) => {
                            *stopped = tried;
                            return self.finish(tx, chunk, &keys, first, confirm).await;
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, "a run left the transaction aborted; running the runs again, each in a savepoint");
                            self.store.end_run(&mut tx, false).await?;
                        }
                    },
                    Some(failed) => {
                        // PostgreSQL refuses every statement, a savepoint
                        // too, once a statement failed in the transaction:
                        // then the failure may be an earlier run's, and the
                        // run goes again.
                        let sound = self.store.begin_run(&mut tx).await.is_ok();
                        if sound {
                            self.store.end_run(&mut tx, false).await?;
                        }
                        self.store.end_run(&mut tx, false).await?;
                        tracing::debug!(
                            handler = failed.key.1,
                            sound,
                            "a run failed; running the runs again, each in a savepoint"
                        );
                        second.first_failure = sound.then_some(failed);
                    }
                },
                // A statement failed after a run that ignored its own failed
                // statement (PostgreSQL had aborted the transaction), or the
                // store is down: the second pass tells which.
                Err(err) => {
                    tracing::debug!(error = %err, "a statement failed under the runs; running them again, each in a savepoint");
                    self.store.end_run(&mut tx, false).await?;
                }
            }
        }
        let second = self
            .pass(&mut tx, chunk, stopped, late, second, false)
            .await?;
        self.finish(tx, chunk, &keys, second, confirm).await
    }

    /// Counts `failed`, the run that ended the first pass, on `item`, its
    /// message (see [`Pass::first_failure`]).
    async fn count_first_failure(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        item: &Prepared<'_>,
        failed: FailedRun,
        held: bool,
        pass: &mut Pass,
    ) -> Result<(), StoreError> {
        let handler = item.handlers().find(|h| h.name == failed.key.1);
        let (Some(handler), Some(Run::Reserved { failures })) =
            (handler, pass.runs.get(&failed.key).copied())
        else {
            return Ok(());
        };
        let attempt = failures.saturating_add(1);
        self.count_failure(tx, item, handler, attempt, failed.error, held, pass)
            .await?;
        Ok(())
    }

    /// Runs the messages of `chunk` in `tx`, from the run states in `pass`:
    /// under the one savepoint set before the pass (`shared`; the first
    /// failed run ends the pass) or each run in a savepoint of its own.
    async fn pass<'a>(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        chunk: &[Prepared<'a>],
        stopped: &mut HashSet<&'a str>,
        late: bool,
        mut pass: Pass,
        shared: bool,
    ) -> Result<Pass, StoreError> {
        pass.done.reserve(chunk.len());
        for item in chunk {
            if let Some(failed) = pass.first_failure.take_if(|failed| failed.at == item.at) {
                let held = is_held(item, stopped, late);
                self.count_first_failure(tx, item, failed, held, &mut pass)
                    .await?;
            }
            let outcome = if is_held(item, stopped, late) {
                held_back(item, &pass.runs)
            } else {
                match &item.work {
                    Work::Poison { envelope, error } => {
                        self.poison(tx, item, envelope.as_ref(), error, &mut pass)
                            .await?;
                        pass.tally.dead_lettered += 1;
                        DeliveryOutcome::DeadLettered
                    }
                    Work::Message {
                        envelope, queue, ..
                    } => {
                        let span = span_if_wanted!(
                            INFO,
                            "outbox.consume",
                            otel.name = %format_args!("process {}", envelope.message_type),
                            otel.kind = "consumer",
                            messaging.system = self.messaging_system,
                            messaging.operation.type = "process",
                            messaging.destination.name = *queue,
                            messaging.message.id = %envelope.id,
                            message.type = %envelope.message_type,
                            message.group = %envelope.group,
                            receive_count = item.delivery.receive_count,
                        );
                        continue_trace(&span, envelope);
                        let run = self.run_message(tx, item, &mut pass, shared);
                        in_span(span, run).await?
                    }
                }
            };
            if pass.failed.is_some() {
                break;
            }
            if !outcome.is_done() {
                stopped.insert(&item.delivery.group);
            }
            pass.done.push((item.at, outcome));
        }
        Ok(pass)
    }

    /// Ends the transaction of `pass`: gives back the reservations of runs
    /// that did not succeed, confirms (`confirm`), commits, counts.
    async fn finish(
        &self,
        mut tx: StoreTransaction<S::Database>,
        chunk: &[Prepared<'_>],
        keys: &[(Uuid, &'static str)],
        pass: Pass,
        confirm: bool,
    ) -> Result<Vec<(usize, DeliveryOutcome)>, StoreError> {
        let Pass {
            done, runs, tally, ..
        } = pass;
        let unrun: Vec<(Uuid, &str)> = keys
            .iter()
            .filter(|key| {
                matches!(
                    runs[*key],
                    Run::Reserved { .. }
                        | Run::Failed(_)
                        | Run::Kept
                        | Run::GaveUp {
                            reserved: false,
                            ..
                        }
                )
            })
            .copied()
            .collect();
        self.store.inbox_unreserve(&mut tx, &unrun).await?;
        let confirmed: Vec<Uuid> = if confirm {
            chunk
                .iter()
                .zip(&done)
                .filter(|(_, (_, outcome))| outcome.is_done())
                .filter_map(|(item, _)| item.delivery.message_id)
                .collect()
        } else {
            Vec::new()
        };
        self.store.confirm(&mut tx, &confirmed).await?;
        tx.commit().await?;
        for (item, (_, outcome)) in chunk.iter().zip(&done) {
            if let (Work::Poison { error, .. }, DeliveryOutcome::DeadLettered) =
                (&item.work, outcome)
            {
                tracing::error!(%error, group = %item.delivery.group, "poison message dead-lettered");
            }
        }
        self.metrics.add_handled(tally.handled);
        self.metrics.add_duplicates_suppressed(tally.duplicates);
        self.metrics.add_handler_failures(tally.failures);
        self.metrics.add_dead_lettered(tally.dead_lettered);
        if tally.published || !confirmed.is_empty() {
            // Cascades to publish, or groups the confirmations freed.
            self.wake_relay().await;
        }
        Ok(done)
    }

    /// Runs a message's handlers in `tx` (each in a savepoint of its own
    /// unless `shared`) and says what to do with its delivery. In a shared
    /// pass, a failed run ends the message (and the pass) at once: it is
    /// kept in `pass.failed`.
    async fn run_message(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        item: &Prepared<'_>,
        pass: &mut Pass,
        shared: bool,
    ) -> Result<DeliveryOutcome, StoreError> {
        let Work::Message {
            envelope, identity, ..
        } = &item.work
        else {
            return Ok(DeliveryOutcome::Done);
        };
        // The delay before the message comes back: the longest any failed
        // handler asks for.
        let mut retry: Option<Duration> = None;
        let mut dead = false;
        for handler in item.handlers() {
            let key = (*identity, handler.name);
            // A held group's messages wait for the holding handler, as
            // dead letters, except the replays of its running release; the
            // release's last replay ends it, run now or handled before.
            let hold = handler
                .holds_group
                .then(|| pass.holds.get(&(handler.name, envelope.group.clone())))
                .flatten()
                .map(|hold| (hold.held_at, release_of(envelope, hold)));
            let released = hold.is_some_and(|(_, release)| release.is_some());
            let ends_release =
                hold.is_some_and(|(_, release)| release.is_some_and(|r| r.last == *identity));
            let failures = match pass.runs[&key] {
                Run::Reserved { failures } => failures,
                // This delivery's handler gave up (its failure in the first
                // pass, counted just before).
                Run::GaveUp { at, .. } if at == item.at => {
                    dead = true;
                    continue;
                }
                Run::GaveUp { .. } | Run::Kept => {
                    pass.tally.duplicates += 1;
                    continue;
                }
                Run::Handled | Run::Committed => {
                    pass.tally.duplicates += 1;
                    if released {
                        self.released_handled(
                            tx,
                            handler.name,
                            envelope,
                            *identity,
                            ends_release,
                            pass,
                        )
                        .await?;
                    }
                    continue;
                }
                Run::Failed(delay) => {
                    // Failed in the first pass, or on a copy of the message
                    // earlier in this batch.
                    retry = Some(retry.map_or(delay, |longest| longest.max(delay)));
                    continue;
                }
            };
            if released
                && self
                    .store
                    .first_letter(tx, handler.name, &envelope.group)
                    .await?
                    != Some(*identity)
            {
                // A replay of the release out of turn: the replay of an older
                // letter was lost (its outbox row went dead, or the queue
                // gave up on it). The release waits: releasing the group
                // again replays from the oldest.
                tracing::warn!(handler = handler.name, group = %envelope.group, "a release's replay came before an older one, which was lost; release the group again");
                pass.tally.duplicates += 1;
                continue;
            }
            if let Some((held_at, None)) = hold {
                // The group's running release, if any, replays it already
                // when it has its letter.
                let running = handler
                    .holds_group
                    .then(|| pass.holds.get(&(handler.name, envelope.group.clone())))
                    .flatten()
                    .and_then(|hold| hold.release)
                    .map(|release| release.id);
                let error = format!(
                    "kept: `{}` gave up on an earlier message of group `{}` at {}; release the group to run it (admin::release_group)",
                    handler.name,
                    envelope.group,
                    held_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
                let entry = item.letter(handler.name, error, failures);
                if !self
                    .store
                    .keep_letter(tx, &entry, HeldLetter::NotRun { running })
                    .await?
                {
                    // A copy of a message kept already, or that the running
                    // release replays.
                    pass.tally.duplicates += 1;
                    continue;
                }
                tracing::info!(handler = handler.name, group = %envelope.group, "message kept behind its group's hold");
                pass.runs.insert(key, Run::Kept);
                pass.tally.dead_lettered += 1;
                dead = true;
                continue;
            }
            let attempt = failures.saturating_add(1);
            let error = match self
                .run_handler(tx, envelope, handler, attempt, !shared)
                .await?
            {
                Ok(published) => {
                    pass.runs.insert(key, Run::Committed);
                    pass.tally.handled += 1;
                    pass.tally.published |= published;
                    if released {
                        self.released_handled(
                            tx,
                            handler.name,
                            envelope,
                            *identity,
                            ends_release,
                            pass,
                        )
                        .await?;
                    }
                    continue;
                }
                Err(error) => error,
            };
            if shared {
                pass.failed = Some(FailedRun {
                    at: item.at,
                    key,
                    error,
                });
                return Ok(DeliveryOutcome::HeldBack);
            }
            self.store.end_run(tx, false).await?;
            match self
                .count_failure(tx, item, handler, attempt, error, false, pass)
                .await?
            {
                Some(delay) => retry = Some(retry.map_or(delay, |longest| longest.max(delay))),
                None => dead = true,
            }
        }
        Ok(match retry {
            Some(delay) => DeliveryOutcome::Retry(delay),
            None if dead => DeliveryOutcome::DeadLettered,
            None => DeliveryOutcome::Done,
        })
    }

    /// Counts a failed run of `handler` on `item` in `tx`: a transient store
    /// error counts no attempt; out of attempts (or a permanent error), the
    /// handler gives up (dead letter, committed with its inbox row, or for
    /// a handler that holds its group with the group's hold);
    /// otherwise its failure is stored. A handler that holds its group does
    /// not give up on a message `held` back in this pass behind an earlier
    /// one (that one would be kept behind it): the failure is stored, and
    /// the next run's failure gives up. Returns the delay before the message
    /// comes back, or `None` when the handler gave up.
    #[allow(clippy::too_many_arguments)]
    async fn count_failure(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        item: &Prepared<'_>,
        handler: &'static HandlerRegistration,
        attempt: u32,
        error: HandlerError,
        held: bool,
        pass: &mut Pass,
    ) -> Result<Option<Duration>, StoreError> {
        // Not a message: no handler ran, nothing to count.
        let Work::Message {
            envelope, identity, ..
        } = &item.work
        else {
            return Ok(Some(Duration::ZERO));
        };
        let key = (*identity, handler.name);
        pass.tally.failures += 1;
        let max = handler
            .max_attempts
            .unwrap_or(self.config.default_max_attempts);
        let delay = if is_store_trouble(&error) {
            // The database aborted the run (deadlock, lost lock): no
            // attempt is counted.
            tracing::warn!(handler = handler.name, %error, "the store failed the handler's run; will retry");
            self.config.retry_backoff.delay(item.delivery.receive_count)
        } else if (error.is_permanent() || attempt >= max) && !(held && handler.holds_group) {
            // Out of attempts, or an error retrying cannot heal (the
            // payload does not decode, the handler says so): the dead
            // letter commits with the reserved inbox row, so other
            // handlers' redeliveries do not run it again. A replay of
            // the dead letter does (see `crate::admin`). A handler that
            // holds its group keeps no inbox row: the hold keeps its
            // redeliveries from running, and the release's replay runs.
            let entry = item.letter(handler.name, error.to_string(), attempt);
            if handler.holds_group {
                self.store
                    .keep_letter(tx, &entry, HeldLetter::GaveUp)
                    .await?;
            } else {
                self.store.dead_letter(tx, &entry).await?;
            }
            tracing::error!(handler = handler.name, %error, attempt, permanent = error.is_permanent(), "handler gave up; dead-lettered");
            if handler.holds_group {
                self.hold_group(tx, handler.name, &envelope.group, pass)
                    .await?;
            }
            pass.runs.insert(
                key,
                Run::GaveUp {
                    at: item.at,
                    reserved: !handler.holds_group,
                },
            );
            pass.tally.dead_lettered += 1;
            return Ok(None);
        } else {
            self.store
                .record_handler_failure(tx, *identity, handler.name, &error.to_string())
                .await?;
            self.config.retry_backoff.delay(attempt)
        };
        pass.runs.insert(key, Run::Failed(delay));
        Ok(Some(delay))
    }

    /// Holds `group` for `handler`, which gave up on a message of it, in
    /// `tx`: its later messages wait as dead letters until a release. A
    /// replay of a running release that gave up ends that release: the
    /// release's later replays wait too.
    async fn hold_group(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        handler: &'static str,
        group: &str,
        pass: &mut Pass,
    ) -> Result<(), StoreError> {
        let hold = pass
            .holds
            .entry((handler, group.to_owned()))
            .or_insert_with(|| GroupHold {
                handler: handler.to_owned(),
                group: group.to_owned(),
                held_at: chrono::Utc::now(),
                release: None,
            });
        hold.release = None;
        self.store.put_group_hold(tx, hold).await?;
        tracing::error!(handler, group, "group held until an operator releases it");
        Ok(())
    }

    /// A replay of the running release of `envelope`'s group for `handler`
    /// was handled (now, or before), in `tx`: deletes its dead letter, and
    /// after the release's `last` replay, releases what was kept meanwhile
    /// the same way, or ends the hold.
    async fn released_handled(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        handler: &'static str,
        envelope: &Envelope,
        identity: Uuid,
        last: bool,
        pass: &mut Pass,
    ) -> Result<(), StoreError> {
        self.store
            .settle_letter(tx, handler, &envelope.group, identity)
            .await?;
        if last {
            self.release_step(tx, handler, &envelope.group, pass)
                .await?;
        }
        Ok(())
    }

    /// The last replay of `group`'s release for `handler` was handled, in
    /// `tx`: releases what was kept meanwhile the same way, or ends the
    /// hold.
    async fn release_step(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        handler: &'static str,
        group: &str,
        pass: &mut Pass,
    ) -> Result<(), StoreError> {
        let key = (handler, group.to_owned());
        let Some(hold) = pass.holds.get_mut(&key) else {
            return Ok(());
        };
        let release = holds::release(
            &self.store,
            tx,
            self.dispatcher.table(),
            hold.clone(),
            false,
        )
        .await?;
        if release.replays.is_empty() {
            tracing::info!(handler, group, "group released");
        } else {
            tracing::info!(
                handler,
                group,
                replays = release.replays.len(),
                "messages kept during the release are released"
            );
            pass.tally.published = true;
        }
        match release.hold {
            Some(next) => *hold = next,
            None => {
                pass.holds.remove(&key);
            }
        }
        Ok(())
    }

    /// The holds on the groups of `chunk`'s messages that it runs, for
    /// their handlers that hold groups, read and locked in `tx`. None is
    /// read when no such handler runs.
    async fn read_holds(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        chunk: &[Prepared<'_>],
        stopped: &HashSet<&str>,
        late: bool,
    ) -> Result<Holds, StoreError> {
        let mut keys: Vec<(&'static str, &str)> = Vec::new();
        for item in chunk.iter().filter(|item| !is_held(item, stopped, late)) {
            if let Work::Message { envelope, .. } = &item.work {
                for handler in item.handlers().filter(|h| h.holds_group) {
                    let key = (handler.name, envelope.group.as_str());
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        if keys.is_empty() {
            return Ok(Holds::new());
        }
        let holds = self.store.group_holds(tx, &keys).await?;
        Ok(keys
            .iter()
            .filter_map(|(handler, group)| {
                let hold = holds
                    .iter()
                    .find(|hold| hold.handler == *handler && hold.group == *group)?;
                Some(((*handler, group.to_string()), hold.clone()))
            })
            .collect())
    }

    /// Runs `handler` on `envelope` in `tx` and stores the messages it
    /// published; with `savepoint`, in a savepoint of its own, released
    /// when the run succeeded (on failure the caller rolls back to it).
    /// Says whether the run published anything.
    async fn run_handler(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        envelope: &Envelope,
        handler: &'static HandlerRegistration,
        attempt: u32,
        savepoint: bool,
    ) -> Result<Result<bool, HandlerError>, StoreError> {
        if savepoint {
            self.store.begin_run(tx).await?;
        }
        let (result, published) = {
            let mut ctx = HandlerContext::new(envelope, self.dispatcher.state())
                .for_handler(handler.name, attempt)
                .with_max_message_bytes(self.store.max_message_bytes())
                .with_transaction(tx);
            let started = std::time::Instant::now();
            #[cfg(feature = "testing")]
            let result = match self.dispatcher.injected(handler.name, envelope, attempt) {
                crate::dispatch::Injected::Run => run_handler(handler, envelope, &mut ctx).await,
                crate::dispatch::Injected::Fail(error) => Err(HandlerError::Failed(error.into())),
                crate::dispatch::Injected::Hang => std::future::pending().await,
            };
            #[cfg(not(feature = "testing"))]
            let result = run_handler(handler, envelope, &mut ctx).await;
            crate::metrics::handler_ran(handler.name, started.elapsed());
            (result, ctx.take_published())
        };
        if let Err(error) = result {
            return Ok(Err(error));
        }
        match self.store.enqueue_all(tx, &published).await {
            Ok(()) => {}
            // A message it published cannot be stored: the handler's
            // failure, not the store's.
            Err(StoreError::Encode(encode)) => {
                return Ok(Err(HandlerError::Failed(Box::new(encode))));
            }
            Err(other) => return Ok(Err(HandlerError::Failed(Box::new(other)))),
        }
        if savepoint && let Err(err) = self.store.end_run(tx, true).await {
            // The database aborted the transaction under the run
            // (PostgreSQL): a statement failed and the handler did not
            // return the error.
            return Ok(Err(HandlerError::Failed(
                format!("the handler returned Ok, but a statement of its run failed: {err}").into(),
            )));
        }
        Ok(Ok(!published.is_empty()))
    }

    /// Drains the outbox on a pump, until done or `deadline`. Without a relay
    /// the pump is acknowledged and ignored.
    pub async fn on_pump(&self, deadline: Option<Instant>) -> DeliveryOutcome {
        let Some(relay) = &self.relay else {
            tracing::debug!("pump received, but this consumer has no relay; ignored");
            return DeliveryOutcome::Done;
        };
        match relay.drain_before(deadline).await {
            Ok(report) => {
                tracing::debug!(?report, "pump drained the outbox");
                if !report.complete {
                    // Out of time with rows left: ask for another drain.
                    if let Some(pump) = &self.pump
                        && let Err(err) = pump.pump().await
                    {
                        tracing::warn!(error = %err, "could not re-pump; the sweep will drain the rest");
                    }
                }
                DeliveryOutcome::Done
            }
            Err(err) => {
                tracing::warn!(error = %err, "drain on pump failed; the pump will be retried");
                DeliveryOutcome::Retry(self.config.retry_backoff.delay(1))
            }
        }
    }

    /// The message can never be handled: keep it in dead letters, in `tx`,
    /// and acknowledge it. A replay of a held group's running release is
    /// the holding handler's give-up: its dead letter is that handler's, and
    /// the group is held again.
    async fn poison(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        item: &Prepared<'_>,
        envelope: Option<&Envelope>,
        error: &str,
        pass: &mut Pass,
    ) -> Result<(), StoreError> {
        let delivery = item.delivery;
        let hold = match envelope {
            Some(envelope) => self.release_of(tx, envelope, pass).await?,
            None => None,
        };
        let Some(mut hold) = hold else {
            let entry = DeadLetter {
                message_id: envelope.map(Envelope::original_id),
                handler: None,
                message_type: envelope.map(|e| e.message_type.clone()),
                group: Some(delivery.group.clone()),
                body: delivery.body.clone(),
                error: error.to_owned(),
                attempts: delivery.receive_count,
            };
            return self.store.dead_letter(tx, &entry).await;
        };
        let mut entry = item.letter(&hold.handler, error.to_owned(), delivery.receive_count);
        if let Some(envelope) = envelope {
            entry.group = Some(envelope.group.clone());
        }
        self.store
            .keep_letter(tx, &entry, HeldLetter::GaveUp)
            .await?;
        hold.release = None;
        self.store.put_group_hold(tx, &hold).await?;
        tracing::error!(handler = %hold.handler, group = %hold.group, "a replay of the group's release is poison; group held again");
        if let Some((_, kept)) = pass
            .holds
            .iter_mut()
            .find(|((handler, group), _)| *handler == hold.handler && *group == hold.group)
        {
            *kept = hold;
        }
        Ok(())
    }

    /// The hold whose running release `envelope` is a replay of, if any.
    async fn release_of(
        &self,
        tx: &mut StoreTransaction<S::Database>,
        envelope: &Envelope,
        pass: &Pass,
    ) -> Result<Option<GroupHold>, StoreError> {
        let headers = &envelope.headers.extra;
        let (Some(handler), true) = (
            headers.get(ONLY_HANDLER_HEADER),
            headers.contains_key(RELEASE_HEADER),
        ) else {
            return Ok(None);
        };
        let kept = pass
            .holds
            .iter()
            .find(|((h, group), _)| h == handler && *group == envelope.group)
            .map(|(_, hold)| hold.clone());
        let hold = match kept {
            Some(hold) => Some(hold),
            None => self
                .store
                .group_holds(tx, &[(handler.as_str(), envelope.group.as_str())])
                .await?
                .pop(),
        };
        Ok(hold.filter(|hold| release_of(envelope, hold).is_some()))
    }
}

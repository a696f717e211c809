//! A test harness (feature `testing`): your handlers, run by the real
//! relay, in-process queue and consumer on a temporary SQLite database.
//! [`send`](TestHarness::send) messages, [`settle`](TestHarness::settle)
//! until nothing is pending or in flight (no sleeps), and read what was
//! published, handled and dead-lettered. [`Faults`] fails handler attempts,
//! loses deliveries and kills workers mid-batch.
//!
//! ```standalone_crate
//! use outbox_runtime::{handler, testing::TestHarness, HandlerContext, OutboxMessage};
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
//! #[outbox(name = "orders.placed", group = order_id)]
//! struct OrderPlaced { order_id: i64 }
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
//! #[outbox(name = "orders.confirmed", group = order_id)]
//! struct OrderConfirmed { order_id: i64 }
//!
//! #[handler(name = "orders.confirm")]
//! async fn confirm(msg: OrderPlaced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
//!     ctx.publish(&OrderConfirmed { order_id: msg.order_id })?;
//!     Ok(())
//! }
//!
//! #[handler(name = "orders.notify")]
//! async fn notify(_msg: OrderConfirmed) -> anyhow::Result<()> {
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let harness = TestHarness::start().await?;
//!     // The first two attempts of `orders.confirm` fail; the third succeeds.
//!     harness.faults().fail_first_attempts::<OrderPlaced>(2);
//!     harness.send(&OrderPlaced { order_id: 7 }).await?;
//!
//!     let settled = harness.settle().await?;
//!     assert_eq!(settled.handled::<OrderConfirmed>(), [OrderConfirmed { order_id: 7 }]);
//!     assert_eq!(settled.handled_by("orders.confirm").len(), 1);
//!     assert!(settled.dead_letters().is_empty());
//!     harness.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! The harness runs on SQLite whatever your production store is: handlers
//! that write through `ctx.db::<sqlx::Sqlite>()` see its database
//! ([`TestHarness::store`] for the tables they need). Its settings differ
//! from the runtime's defaults where a test would wait: a failed handler is
//! retried after 1 ms (doubling, at most 10 ms), and a lost delivery comes
//! back after the queue's visibility timeout of 200 ms.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::consume::{ConsumerConfig, WorkerConfig};
use crate::dispatch::{Dispatcher, Injected, RunHook, TableError};
use crate::envelope::{Envelope, OutgoingEnvelope};
use crate::local::{IdleError, Pipeline, Running};
use crate::message::{EncodeError, OutboxMessage};
use crate::pump::commit_and_pump;
use crate::relay::RelayConfig;
use crate::store::{
    AdminStore, Columns, GroupStats, OutboxStats, SqliteStore, Store, StoreError, StoredDeadLetter,
    claimed_from_row,
};
use crate::transport::{
    Delivery, InProcessConfig, InProcessQueue, Receipt, Receiver, TransportError,
};

/// How long [`TestHarness::settle`] waits.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The in-process queue's visibility timeout in the harness: how long a
/// lost delivery or a killed batch waits before it is delivered again.
const VISIBILITY_TIMEOUT: Duration = Duration::from_millis(200);

/// A pipeline on a temporary SQLite database, for tests. See the
/// [module documentation](self).
pub struct TestHarness {
    running: Running<SqliteStore>,
    faults: Faults,
    _dir: TempDir,
}

impl std::fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHarness")
            .field("database", &self._dir.0)
            .finish_non_exhaustive()
    }
}

/// The harness could not start, send or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The registered messages and handlers do not form a valid table.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The temporary database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The temporary directory could not be made.
    #[error("cannot create the harness's temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Messages were still pending or in flight when the timeout ran out.
    #[error(transparent)]
    NotSettled(#[from] Box<NotSettled>),
}

impl From<sqlx::Error> for HarnessError {
    fn from(err: sqlx::Error) -> Self {
        HarnessError::Store(StoreError::Database(err))
    }
}

/// What was stuck when [`TestHarness::settle`] gave up.
#[derive(Debug)]
#[non_exhaustive]
pub struct NotSettled {
    /// How long it waited.
    pub waited: Duration,
    /// The outbox: rows undelivered and the oldest one's age.
    pub stats: OutboxStats,
    /// The groups with undelivered rows, waiting longest first.
    pub groups: Vec<GroupStats>,
    /// Handlers that failed on a message and have not yet handled it.
    pub failing: Vec<FailingRun>,
}

/// A handler that failed on a message and has not yet handled it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailingRun {
    /// The message's id.
    pub message_id: Uuid,
    /// The handler's name.
    pub handler: String,
    /// Its failed attempts so far.
    pub failures: u32,
    /// The last failure's error.
    pub last_error: Option<String>,
}

impl std::fmt::Display for NotSettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not settled after {:?}: {} messages undelivered",
            self.waited, self.stats.pending
        )?;
        for group in &self.groups {
            write!(
                f,
                "; group `{}`: {} waiting, the oldest {:?} old",
                group.group,
                group.pending,
                group.oldest_pending_age.unwrap_or_default()
            )?;
        }
        for run in &self.failing {
            write!(
                f,
                "; handler `{}` failed {} times on {}: {}",
                run.handler,
                run.failures,
                run.message_id,
                run.last_error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for NotSettled {}

impl TestHarness {
    /// A harness over every message and handler linked into the test
    /// binary ([`Dispatcher::from_registry`]), with two workers.
    ///
    /// # Errors
    ///
    /// The dispatch table is invalid, or the temporary database failed.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(Dispatcher::from_registry()?).await
    }

    /// A harness over `dispatcher`: give it the state your handlers read
    /// ([`Dispatcher::with_state`]).
    ///
    /// # Errors
    ///
    /// The temporary database failed.
    pub async fn start_with(dispatcher: Dispatcher) -> Result<Self, HarnessError> {
        let dir = TempDir::new()?;
        let url = format!("sqlite://{}", dir.0.join("outbox.db").display());
        let store = SqliteStore::open(&url).await?;
        let faults = Faults::default();
        let plan = Arc::clone(&faults.plan);
        let dispatcher =
            dispatcher.with_hook(RunHook(Arc::new(move |handler, envelope, attempt| {
                plan.on_run(handler, envelope, attempt)
            })));
        let queue = Arc::new(InProcessQueue::with_config(InProcessConfig {
            visibility_timeout: VISIBILITY_TIMEOUT,
            ..InProcessConfig::default()
        }));
        let receiver = Arc::new(FaultyReceiver {
            queue: Arc::clone(&queue),
            plan: Arc::clone(&faults.plan),
        });
        let quick = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(10),
            multiplier: 2.0,
            jitter: false,
        };
        let running = Pipeline::new(store, dispatcher)
            .with_relay_config(RelayConfig {
                backoff: quick,
                sweep_interval: Duration::from_millis(50),
                ..RelayConfig::default()
            })
            .with_consumer_config(ConsumerConfig {
                retry_backoff: quick,
                ..ConsumerConfig::default()
            })
            .with_worker_config(WorkerConfig {
                wait: Duration::from_millis(50),
                heartbeat: Some(VISIBILITY_TIMEOUT / 4),
                retention: None,
                stuck_after: None,
                ..WorkerConfig::default()
            })
            .with_kill_switch(Arc::clone(&faults.plan.kill))
            .start_on(queue, receiver);
        Ok(TestHarness {
            running,
            faults,
            _dir: dir,
        })
    }

    /// The store: create your handlers' tables in its pool, or write
    /// outbox rows in your own transactions.
    pub fn store(&self) -> &SqliteStore {
        self.running.store()
    }

    /// The relay's pump: give it to code that commits with
    /// [`crate::commit_and_pump`], as the app's own
    /// functions do. ([`send`](Self::send) pumps by itself.)
    pub fn waker(&self) -> &crate::pump::RelayWaker {
        self.running.waker()
    }

    /// The faults to inject from now on.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Commits `message` to the outbox in a transaction of its own, and
    /// pumps the relay. Returns its envelope.
    ///
    /// For a delayed message, enqueue it yourself in a transaction on
    /// [`store`](Self::store) (`StoreExt::enqueue_after`) and commit: the
    /// harness's relay sweeps every 50 ms, so it is published within about
    /// that after its time, and [`settle`](Self::settle) waits for it.
    ///
    /// # Errors
    ///
    /// The message could not be encoded or stored.
    pub async fn send<M: OutboxMessage>(&self, message: &M) -> Result<Envelope, HarnessError> {
        Ok(self
            .send_all(std::slice::from_ref(message))
            .await?
            .remove(0))
    }

    /// Commits `messages` to the outbox in one transaction, in order, and
    /// pumps the relay. Returns their envelopes.
    ///
    /// # Errors
    ///
    /// A message could not be encoded or stored (then none is).
    pub async fn send_all<M: OutboxMessage>(
        &self,
        messages: &[M],
    ) -> Result<Vec<Envelope>, HarnessError> {
        let outgoing = messages
            .iter()
            .map(OutgoingEnvelope::new)
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.store();
        let mut tx = store.begin().await?;
        store.enqueue_all(&mut tx, &outgoing).await?;
        commit_and_pump(tx, self.waker()).await?;
        Ok(outgoing.into_iter().map(|o| o.envelope).collect())
    }

    /// [`settle_within`](Self::settle_within) the
    /// [`DEFAULT_SETTLE_TIMEOUT`] of 10 s.
    ///
    /// # Errors
    ///
    /// See [`settle_within`](Self::settle_within).
    pub async fn settle(&self) -> Result<Settled, HarnessError> {
        self.settle_within(DEFAULT_SETTLE_TIMEOUT).await
    }

    /// Waits until no message is pending or in flight (every message sent,
    /// and every message handlers published, handled or dead-lettered; a
    /// message kept behind a held group counts as dead-lettered, and the
    /// replays of a release are messages like any other), then reads what
    /// was published and handled since the harness started, and the dead
    /// letters there are now.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NotSettled`] when `timeout` runs out first, saying
    /// which groups wait and which handlers fail; or the database failed.
    pub async fn settle_within(&self, timeout: Duration) -> Result<Settled, HarnessError> {
        match self.running.wait_idle(timeout).await {
            Ok(()) => self.settled().await,
            Err(IdleError::Timeout { waited, stats }) => Err(Box::new(NotSettled {
                waited,
                stats,
                groups: self.store().group_stats(10).await?,
                failing: self.failing().await?,
            })
            .into()),
            Err(IdleError::Store(err)) => Err(err.into()),
        }
    }

    /// Stops the relay and the workers, then removes the database.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }

    /// Everything published, handled and dead-lettered so far.
    async fn settled(&self) -> Result<Settled, HarnessError> {
        let rows = sqlx::query(
            "SELECT seq, id, message_type, version, group_key, payload, headers, created_at,
                    queue, attempts
             FROM outbox WHERE status = 'published' ORDER BY seq",
        )
        .fetch_all(self.store().pool())
        .await?;
        let published = rows
            .iter()
            .map(|row| claimed_from_row(row, Uuid::nil()).map(|claimed| claimed.envelope))
            .collect::<Result<Vec<_>, _>>()?;
        // A handler that gave up keeps its inbox row (so a redelivery does
        // not run it again) and has a dead letter.
        let handled = sqlx::query(
            "SELECT i.message_id, i.handler FROM outbox_inbox i
             WHERE NOT EXISTS (
                 SELECT 1 FROM outbox_dead_letters d
                 WHERE d.message_id = i.message_id AND d.handler = i.handler)
             ORDER BY i.handled_at",
        )
        .fetch_all(self.store().pool())
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.uuid(0, "message_id")?,
                row.try_get::<String, _>("handler")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let mut dead_letters = self.store().dead_letters(u32::MAX).await?;
        dead_letters.reverse();
        Ok(Settled {
            published,
            handled,
            dead_letters,
        })
    }

    async fn failing(&self) -> Result<Vec<FailingRun>, StoreError> {
        sqlx::query(
            "SELECT a.message_id, a.handler, a.failures, a.last_error FROM outbox_attempts a
             WHERE NOT EXISTS (SELECT 1 FROM outbox_inbox i
                               WHERE i.message_id = a.message_id AND i.handler = a.handler)",
        )
        .fetch_all(self.store().pool())
        .await?
        .iter()
        .map(|row| {
            Ok(FailingRun {
                message_id: row.uuid(0, "message_id")?,
                handler: row.text("handler")?,
                failures: u32::try_from(row.int("failures")?).unwrap_or(u32::MAX),
                last_error: row.opt_text("last_error")?,
            })
        })
        .collect()
    }
}

/// What the pipeline did since the harness started, read from its
/// database once it settled.
///
/// Envelopes are read as they were stored, at the version enqueued: a v1
/// message that reached a v2 handler through an upcast
/// (`#[outbox(upcast_from = ...)]`) is in `handled::<V1>()` and in the v2
/// handler's `handled_by`, as a v1 envelope; a dead letter keeps the body
/// as delivered, so `dead_lettered::<V1>()` holds it too.
#[derive(Clone, Debug)]
pub struct Settled {
    published: Vec<Envelope>,
    /// (message id, handler) of each committed handler run.
    handled: Vec<(Uuid, String)>,
    dead_letters: Vec<StoredDeadLetter>,
}

impl Settled {
    /// Every message the relay published, sent or published by handlers,
    /// in outbox order.
    pub fn envelopes(&self) -> &[Envelope] {
        &self.published
    }

    /// The published messages of type `M` (its name and version), in
    /// outbox order.
    pub fn published<M: OutboxMessage>(&self) -> Vec<M> {
        self.published
            .iter()
            .filter(|envelope| is::<M>(envelope))
            .filter_map(|envelope| M::decode(&envelope.payload).ok())
            .collect()
    }

    /// The messages of type `M` that at least one handler handled (its
    /// transaction committed), each once, in outbox order.
    pub fn handled<M: OutboxMessage>(&self) -> Vec<M> {
        let handled: std::collections::HashSet<Uuid> =
            self.handled.iter().map(|(id, _)| *id).collect();
        self.published
            .iter()
            .filter(|envelope| is::<M>(envelope) && handled.contains(&envelope.id))
            .filter_map(|envelope| M::decode(&envelope.payload).ok())
            .collect()
    }

    /// The envelopes `handler` handled (by its `#[handler(name = ...)]`,
    /// or its path from the crate's name, `my_crate::module::function`),
    /// each once (the inbox holds
    /// one row per message and handler), in the order of the inbox's
    /// `handled_at` (milliseconds; a batch's runs share one).
    pub fn handled_by(&self, handler: &str) -> Vec<&Envelope> {
        self.handled
            .iter()
            .filter(|(_, name)| name == handler)
            .filter_map(|(id, _)| self.published.iter().find(|e| e.id == *id))
            .collect()
    }

    /// Every dead letter, oldest first: handlers out of attempts and
    /// poison messages.
    pub fn dead_letters(&self) -> &[StoredDeadLetter] {
        &self.dead_letters
    }

    /// The dead-lettered messages of type `M` (one per handler that gave
    /// up), oldest first.
    pub fn dead_lettered<M: OutboxMessage>(&self) -> Vec<M> {
        self.dead_letters
            .iter()
            .filter_map(|dead| Envelope::from_json(&dead.letter.body).ok())
            .filter(is::<M>)
            .filter_map(|envelope| M::decode(&envelope.payload).ok())
            .collect()
    }
}

fn is<M: OutboxMessage>(envelope: &Envelope) -> bool {
    envelope.message_type == M::NAME && envelope.version == M::VERSION
}

/// Faults injected into a [`TestHarness`]'s pipeline. Each call adds a
/// rule, which applies from then on to every message it matches, whether
/// sent before or after it, until [`clear`](Self::clear).
#[derive(Debug, Default)]
pub struct Faults {
    plan: Arc<Plan>,
}

impl Faults {
    /// Every handler of `M` fails its first `attempts` attempts on each
    /// message, as if it returned an error: each failure counts against its
    /// `max_attempts`, so `attempts` at or above it dead-letters the
    /// message.
    pub fn fail_first_attempts<M: OutboxMessage>(&self, attempts: u32) -> &Self {
        self.add(Rule::Fail {
            message: Kind::of::<M>(),
            handler: None,
            attempts,
        })
    }

    /// The handler named `handler` fails its first `attempts` attempts on
    /// each message it handles.
    pub fn fail_handler_first_attempts(&self, handler: &str, attempts: u32) -> &Self {
        self.add(Rule::Fail {
            message: Kind::ANY,
            handler: Some(handler.to_owned()),
            attempts,
        })
    }

    /// The next delivery of an `M` is lost: received, never handled nor
    /// acknowledged. The queue delivers it again after its visibility
    /// timeout.
    pub fn drop_next_delivery<M: OutboxMessage>(&self) -> &Self {
        self.add(Rule::Drop {
            message: Kind::of::<M>(),
            done: false,
        })
    }

    /// The next time a handler of `M` runs, every worker is stopped where
    /// it is, as a crash would stop it: the batch's transaction rolls back,
    /// nothing is acknowledged, and the workers start again. The queue
    /// delivers the batch again after its visibility timeout; the killed
    /// run counts no attempt.
    pub fn kill_workers_during<M: OutboxMessage>(&self) -> &Self {
        self.add(Rule::Kill {
            message: Kind::of::<M>(),
            done: false,
        })
    }

    /// Removes every fault added so far.
    pub fn clear(&self) -> &Self {
        self.plan.lock().clear();
        self
    }

    /// How many faults were injected so far: failed runs, lost deliveries
    /// and kills, each counted once.
    pub fn injected(&self) -> u64 {
        self.plan
            .injected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, rule: Rule) -> &Self {
        self.plan.lock().push(rule);
        self
    }
}

/// A message type by name and version, or any.
#[derive(Clone, Copy, Debug)]
struct Kind(Option<(&'static str, u32)>);

impl Kind {
    fn of<M: OutboxMessage>() -> Self {
        Kind(Some((M::NAME, M::VERSION)))
    }

    const ANY: Kind = Kind(None);

    fn matches(self, envelope: &Envelope) -> bool {
        self.0.is_none_or(|(name, version)| {
            envelope.message_type == name && envelope.version == version
        })
    }
}

#[derive(Debug)]
enum Rule {
    Fail {
        message: Kind,
        handler: Option<String>,
        attempts: u32,
    },
    Drop {
        message: Kind,
        done: bool,
    },
    Kill {
        message: Kind,
        done: bool,
    },
}

/// The rules, shared by the dispatcher's hook and the receiver.
#[derive(Debug, Default)]
struct Plan {
    rules: Mutex<Vec<Rule>>,
    kill: Arc<Notify>,
    injected: std::sync::atomic::AtomicU64,
}

impl Plan {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_run(&self, handler_name: &str, envelope: &Envelope, attempt: u32) -> Injected {
        let injected = self.decide(handler_name, envelope, attempt);
        if !matches!(injected, Injected::Run) {
            self.count();
        }
        injected
    }

    fn count(&self) {
        self.injected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn decide(&self, handler_name: &str, envelope: &Envelope, attempt: u32) -> Injected {
        let mut rules = self.lock();
        for rule in rules.iter_mut() {
            match rule {
                Rule::Kill { message, done } if !*done && message.matches(envelope) => {
                    *done = true;
                    self.kill.notify_waiters();
                    return Injected::Hang;
                }
                Rule::Fail {
                    message,
                    handler,
                    attempts,
                } if message.matches(envelope)
                    && handler.as_deref().is_none_or(|h| h == handler_name)
                    && attempt <= *attempts =>
                {
                    return Injected::Fail(format!(
                        "injected failure: attempt {attempt} of the first {attempts} fails"
                    ));
                }
                _ => {}
            }
        }
        Injected::Run
    }

    /// Whether to lose this delivery.
    fn drops(&self, delivery: &Delivery) -> bool {
        let Ok(envelope) = Envelope::from_json(&delivery.body) else {
            return false;
        };
        let mut rules = self.lock();
        for rule in rules.iter_mut() {
            if let Rule::Drop { message, done } = rule
                && !*done
                && message.matches(&envelope)
            {
                *done = true;
                self.count();
                return true;
            }
        }
        false
    }
}

/// The in-process queue, losing the deliveries the plan says.
struct FaultyReceiver {
    queue: Arc<InProcessQueue>,
    plan: Arc<Plan>,
}

impl Receiver for FaultyReceiver {
    fn durable(&self) -> bool {
        self.queue.durable()
    }

    fn max_receive(&self) -> usize {
        self.queue.max_receive()
    }

    fn messaging_system(&self) -> &'static str {
        self.queue.messaging_system()
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let mut deliveries = self.queue.receive(max, wait).await?;
        // A lost delivery takes the later ones of its group in this receive
        // with it, as a lost batch would: none is handled before it.
        let mut lost: Vec<String> = Vec::new();
        deliveries.retain(|delivery| {
            if lost.contains(&delivery.group) || self.plan.drops(delivery) {
                lost.push(delivery.group.clone());
                return false;
            }
            true
        });
        Ok(deliveries)
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), TransportError> {
        self.queue.ack(receipts).await
    }

    async fn extend(&self, receipts: &[Receipt], by: Duration) -> Result<(), TransportError> {
        self.queue.extend(receipts, by).await
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), TransportError> {
        self.queue.release(receipt, delay).await
    }

    async fn release_all(&self, entries: &[(Receipt, Duration)]) -> Result<(), TransportError> {
        self.queue.release_all(entries).await
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, HarnessError> {
        let path = std::env::temp_dir().join(format!("outbox-harness-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&path).map_err(HarnessError::TempDir)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

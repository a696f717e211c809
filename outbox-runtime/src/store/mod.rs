//! The outbox store: the tables the app writes in its own transaction, the
//! relay claims from, and the consumer records handled messages in.
//!
//! Two traits, each implemented once per database behind a cargo feature
//! (`PgStore` with `postgres` for production, `SqliteStore` with
//! `sqlite` for the embedded default): [`Store`], what the app, the relay
//! and the consumer need, and [`AdminStore`], what operators ask. A backend
//! gives each method its SQL and says how it reads its column types; what
//! is the same on every database (retention's batches, a replay's
//! transaction, turning rows into values) is written once, here.
//! Both create their tables with embedded migrations tracked in their own
//! table (`_outbox_migrations`), so they never collide with the app's own
//! `sqlx` migrations:
//!
//! | table | rows |
//! |---|---|
//! | `outbox` | one per message: `seq` (order), `id`, type, version, group, queue, payload, headers, created-at; on SQLite also the relay's state (status `pending` / `relayed` / `published` / `dead`, attempts, last error, backoff, lease) |
//! | `outbox_groups` | PostgreSQL: one per group with undelivered rows: the relay's state (lease, the first row's backoff, attempts and last error, rows relayed and unconfirmed) |
//! | `outbox_archive` | PostgreSQL: delivered (`published`) and `dead` rows, moved out of `outbox` |
//! | `outbox_inbox` | one per (message id, handler) that committed or gave up: the idempotency record |
//! | `outbox_attempts` | one per (message id, handler) that failed: its failed runs and last error |
//! | `outbox_dead_letters` | one per message a consumer gave up on: poison, a handler out of attempts, or imported from a queue's DLQ |
//!
//! On PostgreSQL, an `outbox` row is written once and deleted once: a relay
//! claims and leases groups, not rows, so neither the claim nor a publish
//! updates the rows the producers' inserts and the claim's reads pay for.
//! On SQLite, which has one writer at a time, rows keep their state.
//!
//! A row the relay cannot publish becomes `dead`, with its last error; a
//! message a consumer cannot handle goes to `outbox_dead_letters` with the
//! envelope as received. Both are kept until an operator replays or purges
//! them. [`AdminStore::rows`] lists rows of every status on both stores.
//!
//! How claims keep per-group order and how attempts are counted is on
//! [`Store`].

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::{Envelope, OutgoingEnvelope};

mod admin;
pub(crate) mod holds;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use admin::{AdminStore, HeldGroup};
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// A message claimed by a relay, to be published.
#[derive(Clone, Debug)]
pub struct ClaimedMessage {
    /// Its position in the outbox; order within a group follows it.
    pub seq: i64,
    /// The envelope to publish.
    pub envelope: Envelope,
    /// Its logical queue (`None`: the default queue).
    pub queue: Option<String>,
    /// How many publish attempts failed before this one (outages of the
    /// whole transport do not count).
    pub attempts: u32,
    /// The claim's lease token: the relay's writes about this row must
    /// carry it, and are ignored once another claim took the row.
    pub lease: Uuid,
}

/// A failed publish attempt, recorded by [`Store::settle`].
#[derive(Clone, Debug)]
pub struct PublishFailure {
    /// The row.
    pub seq: i64,
    /// What went wrong, stored as the row's last error.
    pub error: String,
    /// How long from now (the database's clock) to wait before trying
    /// again; `None` dead-letters the row (status `dead`).
    pub retry_after: Option<Duration>,
    /// Whether it uses up one of the row's attempts: `false` when the whole
    /// transport was down, which says nothing about the row.
    pub counts: bool,
}

/// What became of a claim's rows, for [`Store::settle`].
#[derive(Clone, Copy, Debug)]
pub struct Settlement<'a> {
    /// The claim's rows, as [`Store::claim`] returned them: those neither
    /// published nor failed are released.
    pub claimed: &'a [ClaimedMessage],
    /// The rows the transport took.
    pub published: &'a [i64],
    /// `None` when the transport is durable: published rows are done.
    /// `Some(within)` when it dies with the process (see
    /// [`Transport::durable`](crate::transport::Transport::durable)): published rows are
    /// `relayed`, holding their groups until a consumer confirms them
    /// ([`Store::confirm`]); those unconfirmed after `within` are published
    /// again.
    pub confirm_within: Option<Duration>,
    /// Failed attempts.
    pub failures: &'a [PublishFailure],
}

/// A message a consumer gave up on: what [`Store::dead_letter`] keeps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The id the message is handled under, when the body was an envelope
    /// ([`Envelope::original_id`]: for a replay, the replayed message's).
    pub message_id: Option<Uuid>,
    /// The handler that gave up, or `None` when the message itself is poison.
    pub handler: Option<String>,
    /// The message type, when known.
    pub message_type: Option<String>,
    /// The message group, when known.
    pub group: Option<String>,
    /// The body as received: for an envelope, its JSON
    /// ([`Envelope::from_json`] reads it back).
    pub body: String,
    /// Why.
    pub error: String,
    /// The handler's failed runs (for poison: how many times it was received).
    pub attempts: u32,
}

/// What the store knows of one handler and one message, read before a run
/// ([`Store::inbox_reserve`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandlerState {
    /// The handler committed the message (or gave up on it): skip it.
    pub handled: bool,
    /// The handler's failed runs of the message so far.
    pub failures: u32,
}

/// A dead letter as kept in `outbox_dead_letters`, read back by an operator
/// (see [`crate::admin`]). As JSON, the letter's fields sit beside `id` and
/// `dead_at`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredDeadLetter {
    /// Its id in `outbox_dead_letters`: what replay and purge take.
    pub id: i64,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// The message and why it was given up on.
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// Where an outbox row is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Waiting for the relay (or for its backoff).
    Pending,
    /// Handed to a non-durable queue, awaiting the consumer's confirmation.
    Relayed,
    /// On the queue (durable) or handled (non-durable).
    Published,
    /// The relay gave up on it; kept with its last error until replayed or purged.
    Dead,
}

impl RowStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RowStatus; 4] = [
        RowStatus::Pending,
        RowStatus::Relayed,
        RowStatus::Published,
        RowStatus::Dead,
    ];

    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Pending => "pending",
            RowStatus::Relayed => "relayed",
            RowStatus::Published => "published",
            RowStatus::Dead => "dead",
        }
    }
}

impl std::fmt::Display for RowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RowStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RowStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`: use pending, relayed, published or dead"))
    }
}

/// An outbox row as an operator sees it: everything but the payload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OutboxRow {
    /// Its position in the outbox.
    pub seq: i64,
    /// The message id.
    pub id: Uuid,
    /// The message type.
    pub message_type: String,
    /// Its version.
    pub version: u32,
    /// The message group.
    pub group: String,
    /// The logical queue (`None`: the default one).
    pub queue: Option<String>,
    /// Where it is.
    pub status: RowStatus,
    /// Failed publish attempts.
    pub attempts: u32,
    /// The last publish error.
    pub last_error: Option<String>,
    /// When the app wrote it.
    pub created_at: DateTime<Utc>,
    /// When it was published, if it was.
    pub published_at: Option<DateTime<Utc>>,
}

/// What retention deletes: one table's expired rows
/// ([`Store::delete_expired`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// Published outbox rows, by when they were published
    /// ([`RetentionPolicy::published_for`]).
    Published,
    /// Inbox rows, by when they were handled ([`RetentionPolicy::inbox_for`]).
    Inbox,
    /// Handlers' failed-attempt counts, by their last update
    /// ([`RetentionPolicy::inbox_for`]).
    Attempts,
}

/// What a retention pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Published outbox rows deleted.
    pub published_deleted: u64,
    /// Inbox rows deleted.
    pub inbox_deleted: u64,
    /// Handler attempt counts deleted.
    pub attempts_deleted: u64,
}

/// Retention: how long handled data is kept, and how much one statement
/// deletes (bounded, so no statement holds long locks). The default keeps
/// published rows 24 hours and inbox and attempt rows 15 days, and deletes
/// 1,000 rows per statement.
#[derive(Clone, Copy, Debug)]
pub struct RetentionPolicy {
    /// Published outbox rows older than this (by when they were published)
    /// are deleted. Default: 24 hours.
    pub published_for: Duration,
    /// Inbox rows older than this (by `handled_at`) are deleted, and so are
    /// handlers' failed-attempt counts not updated for as long. Keep it
    /// longer than any redelivery can take (SQS keeps messages up to 14 days).
    /// Default: 15 days.
    pub inbox_for: Duration,
    /// Rows deleted per statement. Default: 1,000.
    pub batch_size: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            published_for: Duration::from_secs(24 * 3600),
            inbox_for: Duration::from_secs(15 * 24 * 3600),
            batch_size: 1000,
        }
    }
}

/// The state of the outbox, for dashboards and stuck-message alarms.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct OutboxStats {
    /// Rows not yet delivered: waiting to be published, or relayed to a
    /// non-durable queue and not yet confirmed.
    pub pending: u64,
    /// Age of the oldest pending row that is due: from its `created_at`,
    /// or for a delayed message from its time. A delayed message not yet
    /// due is not counted (so it raises no stuck alert); the rows waiting
    /// behind it in its group are.
    pub oldest_pending_age: Option<Duration>,
    /// Published rows not yet deleted by retention.
    pub published: u64,
    /// Rows the relay gave up on.
    pub dead: u64,
    /// Messages consumers gave up on.
    pub dead_letters: u64,
}

/// A store failure. Transient ones (connection lost, lock timeout) are worth
/// retrying; see [`StoreError::is_transient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an error.
    #[error("outbox store: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations failed.
    #[error("outbox store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A message cannot be stored as it is (too large for the transport).
    /// Nothing was written.
    #[error(transparent)]
    Encode(#[from] crate::message::EncodeError),
    /// A row holds data that is not a valid envelope (edited by hand, or
    /// written by an incompatible version).
    #[error("outbox row {seq} is corrupt: {reason}")]
    CorruptRow {
        /// The row.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A dead letter of a held group is not an envelope (edited by hand),
    /// so its group cannot be released. Nothing was changed.
    #[error(
        "dead letter {id} of a held group is not an envelope ({reason}); purge it, then release the group"
    )]
    CorruptDeadLetter {
        /// The dead letter.
        id: i64,
        /// Why its body is not an envelope.
        reason: String,
    },
}

impl StoreError {
    /// Whether the operation may succeed if retried (I/O, pool, lock errors).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(err) => is_transient(err),
            StoreError::Migrate(_)
            | StoreError::Encode(_)
            | StoreError::CorruptRow { .. }
            | StoreError::CorruptDeadLetter { .. } => false,
        }
    }
}

impl StoreError {
    /// Whether a unique constraint refused the write (for the inbox: another
    /// consumer committed the same handler for the same message first).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(err) => err
                .as_database_error()
                .is_some_and(|db| db.is_unique_violation()),
            StoreError::Migrate(_)
            | StoreError::Encode(_)
            | StoreError::CorruptRow { .. }
            | StoreError::CorruptDeadLetter { .. } => false,
        }
    }
}

/// Whether a database error may go away by retrying: the connection or pool
/// failed, or the database aborted the transaction (deadlock, serialization
/// failure, shutdown; SQLite busy or locked).
pub(crate) fn is_transient(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    ) || err
        .as_database_error()
        .is_some_and(|db| is_transient_code(db.code().as_deref()))
}

/// Whether one link of an error's chain of causes is a transient database
/// error: a `sqlx::Error` or [`StoreError`] (as a handler's `?` keeps it
/// in a `Box<dyn Error>`), or the database's own error (`sqlx::Error`'s
/// source), which is all a boxed `anyhow::Error` shows of it.
pub(crate) fn is_transient_cause(cause: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(err) = cause.downcast_ref::<sqlx::Error>() {
        return is_transient(err);
    }
    if let Some(err) = cause.downcast_ref::<StoreError>() {
        return err.is_transient();
    }
    // What `sqlx::Error::Database` gives as its source.
    if let Some(err) = cause.downcast_ref::<Box<dyn sqlx::error::DatabaseError>>() {
        return is_transient_code(err.code().as_deref());
    }
    false
}

/// SQLSTATE classes worth a retry: connection exceptions (08), serialization
/// failures and deadlocks (40), operator intervention (57: admin shutdown,
/// `pg_terminate_backend`); SQLite's busy and locked.
fn is_transient_code(code: Option<&str>) -> bool {
    match code {
        Some(code) => {
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("57")
                || code == "5"
                || code == "6"
        }
        None => false,
    }
}

/// The savepoint of a handler run: set before the run, released after a
/// run that succeeded (which fails if the database aborted the transaction
/// under a handler that did not return the error), rolled back to and
/// released after one that failed.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const BEGIN_RUN_SQL: &str = "SAVEPOINT outbox_run";
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const KEEP_RUN_SQL: &str = "RELEASE SAVEPOINT outbox_run";
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const UNDO_RUN_SQL: &str =
    "ROLLBACK TO SAVEPOINT outbox_run; RELEASE SAVEPOINT outbox_run";

/// Each key's state, from the keys a reservation inserted (the others were
/// in the inbox already) and the failed runs stored for the keys.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn reserved_states<K: Eq + std::hash::Hash>(
    keys: impl IntoIterator<Item = K>,
    reserved: impl IntoIterator<Item = K>,
    failures: impl IntoIterator<Item = (K, i64)>,
) -> Vec<HandlerState> {
    let reserved: std::collections::HashSet<K> = reserved.into_iter().collect();
    let failures: std::collections::HashMap<K, i64> = failures.into_iter().collect();
    keys.into_iter()
        .map(|key| HandlerState {
            handled: !reserved.contains(&key),
            failures: failures
                .get(&key)
                .map_or(0, |n| u32::try_from(*n).unwrap_or(0)),
        })
        .collect()
}

/// The store's transaction type for a database.
pub type StoreTransaction<DB> = sqlx::Transaction<'static, DB>;

/// An outbox store on one database. Implemented by
/// `PgStore` and `SqliteStore`.
///
/// App code uses [`StoreExt::enqueue`] or [`enqueue_all`](Self::enqueue_all)
/// inside its own transaction; the
/// relay, the consumer and retention use the rest.
///
/// # Claiming, ordering and concurrency
///
/// Order within a group is commit order. On PostgreSQL, enqueueing takes a
/// transaction-scoped advisory lock per group (`pg_advisory_xact_lock(
/// 1869968482, hashtext(group))`), so producers of one group commit one after
/// the other and a group's `seq` order is its commit order; producers of
/// different groups never wait for each other. SQLite has one writer at a
/// time, so its `seq` order is commit order already.
///
/// What the lock asks of an app on PostgreSQL:
///
/// - Enqueue just before commit: the lock is held until then, and other
///   producers of the group wait for it. Messages that use the default
///   group (one per message type) serialize every producer of that type.
/// - Enqueue a transaction's messages in one [`Store::enqueue_all`] call:
///   it locks their groups in a fixed order. Two transactions that enqueue
///   the same groups in opposite orders, one call each, deadlock;
///   PostgreSQL aborts one of them (SQLSTATE `40P01`,
///   [`StoreError::is_transient`]), and the app retries it, as for any
///   deadlock, after a short random delay (retried at once, it can meet
///   the same order again).
///
/// A group is held by at most one claim at a time. A claim takes a group
/// only while no live claim leases it (the lease ran out, or was given back
/// by [`Store::settle`]) and no row of it is `relayed` to a queue and
/// unconfirmed, and takes its rows from the first, in sequence order. So no
/// two relays publish one group at once, a group whose first row failed
/// (and waits out its backoff) is not overtaken by its later rows, and a
/// group whose rows sit unconfirmed in one process's in-process queue is not
/// published by another. A relay that dies loses its lease when it expires;
/// its rows are claimed again (at-least-once; the SQS deduplication id and
/// the inbox absorb the repeat). On PostgreSQL the lease is the group's row
/// in `outbox_groups`, locked by the claim with `FOR UPDATE SKIP LOCKED`,
/// and a batch of `limit` rows first leases `limit / 10` groups (rounded
/// up), oldest first, taking up to a publish chunk (10 rows) from each, or
/// `limit` / groups when fewer are claimable; only when the groups found
/// hold fewer rows does it lease more, as many as the missing rows need at
/// the rows per group it found. So a batch of deep groups holds few of
/// them, and concurrent relays find the others. On SQLite the lease is on
/// the rows.
///
/// On a transport that dies with the process (the in-process queue), a
/// published row is `relayed` until a consumer confirms it; a `relayed` row
/// whose confirmation deadline passed (the process died) is claimed again,
/// so a crash loses nothing.
///
/// # Handler attempts
///
/// `outbox_attempts` counts each handler's failed runs of each message,
/// keyed like the inbox: a delivery that did not run the handler (held back
/// behind its group, or an outage of the store or the queue) does not
/// count. A consumer reads the counts with the inbox reservation before a
/// batch's runs ([`Store::inbox_reserve`]) and writes one after each failed
/// run ([`Store::record_handler_failure`]).
pub trait Store: Clone + Send + Sync + 'static {
    /// The sqlx database.
    type Database: sqlx::Database;

    /// Creates or updates the outbox tables (idempotent; safe to run from
    /// several processes at once).
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The largest envelope, as JSON, that [`enqueue_all`](Self::enqueue_all)
    /// accepts: what the transport takes
    /// ([`DEFAULT_MAX_MESSAGE_BYTES`](crate::envelope::DEFAULT_MAX_MESSAGE_BYTES), SQS's
    /// default, unless the store was built with another limit). A claim
    /// loads at most `batch_size` times this.
    fn max_message_bytes(&self) -> usize;

    /// Inserts messages into the outbox on `conn`: the app's open
    /// transaction. Does not commit and does not talk to any queue. All
    /// messages go in one statement, in order. A message larger than
    /// [`max_message_bytes`](Self::max_message_bytes) fails the call with
    /// [`StoreError::Encode`] before anything is written.
    fn enqueue_all<'c>(
        &'c self,
        conn: &'c mut <Self::Database as sqlx::Database>::Connection,
        messages: &'c [OutgoingEnvelope],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c;

    /// Claims up to `limit` pending rows for publishing, leased for `lease`,
    /// each group's in sequence order, at most one relay per group (see the
    /// trait's docs).
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<ClaimedMessage>, StoreError>> + Send;

    /// Settles a claim in one transaction: the rows the transport took are
    /// published (or, with [`Settlement::confirm_within`], relayed), failed
    /// attempts are recorded (attempts + 1 where the failure counts, last
    /// error, backoff or dead), and every other claimed row is released.
    /// Nothing is written once another claim took the rows' groups (this
    /// claim's lease ran out).
    fn settle<'a>(
        &'a self,
        settlement: Settlement<'a>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;

    /// Moves to `confirm_within` from now the confirmation deadline of the rows
    /// still `relayed` under the claims `leases`: the relay that handed them
    /// to its queue is alive, so they are not published again while a
    /// consumer lags. Returns the leases that still hold relayed rows.
    fn renew_relayed(
        &self,
        leases: &[Uuid],
        confirm_within: Duration,
    ) -> impl Future<Output = Result<Vec<Uuid>, StoreError>> + Send;

    /// Makes the rows still `relayed` under the claims `leases` pending
    /// again, claimable at once: their relay has stopped and no consumer
    /// will confirm them. Returns how many rows it released.
    fn release_relayed(
        &self,
        leases: &[Uuid],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Marks the rows of handled messages published, by message id, in
    /// `tx`: how a worker on a non-durable transport confirms delivery (see
    /// [`Transport::durable`](crate::transport::Transport::durable)), in the transaction
    /// that handled them. Rows already published are left alone.
    fn confirm<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        ids: &'t [Uuid],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Begins a transaction for writing on the store's database: a
    /// consumer's batch of handler runs, a replay, or the app's own
    /// transaction (on SQLite `BEGIN IMMEDIATE`: it takes the write lock at
    /// once, so it never has to upgrade a read lock).
    fn begin(
        &self,
    ) -> impl Future<Output = Result<StoreTransaction<Self::Database>, StoreError>> + Send;

    /// Reserves the inbox rows of handler runs in `tx`, in one statement,
    /// then reads each run's failed attempts: a key (message id, handler)
    /// already in the inbox is `handled` (skip the run); for the others the
    /// row is inserted now, so a concurrent run of the same key waits for
    /// this transaction and then finds it handled (or, if this transaction
    /// gives the row back, reserves it and reads the attempts it counted). Returns one state per key, in
    /// order; `keys` holds no key twice. A reserved run that does not commit
    /// (it failed, or was not run) must be given back with
    /// [`inbox_unreserve`](Self::inbox_unreserve) before commit.
    fn inbox_reserve<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        keys: &'t [(Uuid, &'t str)],
    ) -> impl Future<Output = Result<Vec<HandlerState>, StoreError>> + Send + 't;

    /// Deletes reserved inbox rows of runs that did not commit, in one
    /// statement.
    fn inbox_unreserve<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        keys: &'t [(Uuid, &'t str)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Starts a handler run in `tx`: sets a savepoint (`outbox_run`).
    fn begin_run<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Ends the run begun last: `keep` releases its savepoint, keeping what
    /// it wrote (an error here means the database aborted the transaction
    /// under the run: undo it); otherwise rolls `tx` back to the savepoint,
    /// undoing the run's writes alone, and releases it.
    fn end_run<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        keep: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Counts one failed run of `handler` on `message_id`, with its error, in
    /// `tx` (after the run was rolled back to its savepoint).
    fn record_handler_failure<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        message_id: Uuid,
        handler: &'t str,
        error: &'t str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Keeps a message a consumer gave up on, in `tx`: a handler's give-up
    /// commits it with that handler's inbox row.
    fn dead_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        entry: &'t DeadLetter,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// The holds among `keys` (handler, group), read in `tx` and locked
    /// until it ends (on SQLite the transaction holds the write lock).
    fn group_holds<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        keys: &'t [(&'t str, &'t str)],
    ) -> impl Future<Output = Result<Vec<GroupHold>, StoreError>> + Send + 't;

    /// Writes `hold` in `tx`: inserts it, or updates its release (its
    /// `held_at` stays the first give-up's).
    fn put_group_hold<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        hold: &'t GroupHold,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Deletes the hold of `handler` on `group` in `tx`.
    fn delete_group_hold<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        handler: &'t str,
        group: &'t str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Keeps, in `tx`, a holding handler's dead letter of a held group
    /// (see [`HeldLetter`]): the letter of the same handler, group and
    /// message, if there is one, is held again in its place (its error,
    /// attempts and time updated, out of its release), or `entry` is
    /// inserted. So a held group's letters stay in the group's order across
    /// releases. `false` when nothing changed.
    fn keep_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        entry: &'t DeadLetter,
        why: HeldLetter,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 't;

    /// Marks, in `tx`, the dead letters of `handler` in `group` (held, or
    /// left by an earlier release whose replay has not come back) as
    /// replayed by `release`, deletes the handler's failed
    /// attempts and inbox rows of their messages (a replay starts a fresh
    /// count, and runs), and returns them, oldest first. With `skip_first`, the oldest is deleted
    /// instead and its message marked handled by `handler` (an inbox row),
    /// so no copy of it runs; it is still returned, first.
    fn release_letters<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        handler: &'t str,
        group: &'t str,
        release: Uuid,
        skip_first: bool,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send + 't;

    /// The message id of the oldest dead letter of `handler` in `group`, in
    /// `tx`: the next a release of the group may run.
    fn first_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        handler: &'t str,
        group: &'t str,
    ) -> impl Future<Output = Result<Option<Uuid>, StoreError>> + Send + 't;

    /// Deletes, in `tx`, the dead letters of `handler` in `group` for
    /// `message_id` that a release replays: its replay was handled.
    fn settle_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        handler: &'t str,
        group: &'t str,
        message_id: Uuid,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// Deletes up to `batch` rows of one kind from before `before`, in one
    /// statement; returns how many it deleted. [`cleanup`](Self::cleanup)
    /// calls it with one `before` per kind until a batch comes back short.
    fn delete_expired(
        &self,
        kind: Expired,
        before: DateTime<Utc>,
        batch: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Mends what an older producer may have left behind, before each
    /// [`cleanup`](Self::cleanup). On PostgreSQL: restores the
    /// `outbox_groups` row of any group whose rows lack one, and lowers a
    /// group's head to rows below it, logging a warning. Default: nothing.
    fn repair(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Retention: [`repair`](Self::repair), then deletes published rows,
    /// and inbox and attempt rows, older than the policy's ages when the
    /// pass started, in batches of `policy.batch_size` until none is left.
    fn cleanup(
        &self,
        policy: &RetentionPolicy,
    ) -> impl Future<Output = Result<CleanupReport, StoreError>> + Send {
        let policy = *policy;
        let started = Utc::now();
        async move {
            self.repair().await?;
            let all = |kind, age: Duration| async move {
                let before = chrono::TimeDelta::from_std(age)
                    .ok()
                    .and_then(|age| started.checked_sub_signed(age))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                let batch = policy.batch_size.max(1);
                let mut total = 0;
                loop {
                    let deleted = self.delete_expired(kind, before, batch).await?;
                    total += deleted;
                    if deleted < u64::from(batch) {
                        return Ok::<_, StoreError>(total);
                    }
                }
            };
            Ok(CleanupReport {
                published_deleted: all(Expired::Published, policy.published_for).await?,
                inbox_deleted: all(Expired::Inbox, policy.inbox_for).await?,
                attempts_deleted: all(Expired::Attempts, policy.inbox_for).await?,
            })
        }
    }

    /// Counts for dashboards and alarms.
    fn stats(&self) -> impl Future<Output = Result<OutboxStats, StoreError>> + Send;

    /// Whether any row is undelivered (`stats().pending > 0`), cheaply:
    /// what `local::Running::wait_idle` polls. The default reads
    /// [`stats`](Self::stats); the stores ask for one row.
    fn has_undelivered(&self) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async { Ok(self.stats().await?.pending > 0) }
    }

    /// Per message group: rows not yet delivered, the oldest one's age, and
    /// dead rows; the `limit` groups waiting longest first. Where a stuck
    /// group shows.
    fn group_stats(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<GroupStats>, StoreError>> + Send;
}

/// A group held for one handler (`#[handler(on_dead_letter = "hold_group")]`):
/// the handler gave up on a message of the group, and its later messages of
/// the group are kept as dead letters, in order, until an operator
/// releases the group ([`crate::admin::release_group`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupHold {
    /// The handler that gave up.
    pub handler: String,
    /// The group held.
    pub group: String,
    /// When the handler gave up.
    pub held_at: DateTime<Utc>,
    /// The release running, if one is. Only its replays run; other
    /// messages of the group are still kept.
    pub release: Option<HoldRelease>,
}

/// Why [`Store::keep_letter`] keeps a held group's dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldLetter {
    /// The handler gave up on the message (or its replay is poison): its
    /// letter is held again, whatever its state.
    GaveUp,
    /// The message was not run: its letter is held again only when an
    /// earlier release left it behind; a letter already held, or replayed by
    /// `running` (the group's running release: that replay is on its way),
    /// stays as it is.
    NotRun {
        /// The group's running release, if one runs.
        running: Option<Uuid>,
    },
}

/// A release of a held group, running until its last replay is handled;
/// then the messages kept meanwhile are released the same way, or the hold
/// ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HoldRelease {
    /// The id its replays carry ([`RELEASE_HEADER`](crate::envelope::RELEASE_HEADER)).
    pub id: Uuid,
    /// The id its last replay is handled under ([`Envelope::original_id`]).
    pub last: Uuid,
}

/// One message group's state, from [`Store::group_stats`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GroupStats {
    /// The group.
    pub group: String,
    /// Rows not yet delivered.
    pub pending: u64,
    /// Age of its oldest undelivered row that is due, as
    /// [`OutboxStats::oldest_pending_age`] counts it.
    pub oldest_pending_age: Option<Duration>,
    /// Rows the relay gave up on.
    pub dead: u64,
}

/// Enqueue helpers for single messages, on every store.
pub trait StoreExt: Store {
    /// Inserts one message into the outbox in the app's transaction and
    /// returns its envelope (for its id). Does not commit.
    fn enqueue<'c, M: crate::message::OutboxMessage>(
        &'c self,
        conn: &'c mut <Self::Database as sqlx::Database>::Connection,
        message: &M,
    ) -> impl Future<Output = Result<Envelope, EnqueueError>> + Send + 'c {
        // Encoded before the future, so the message need not be `Sync`.
        enqueue_one(self, conn, OutgoingEnvelope::new(message))
    }

    /// Inserts one message that is not published before `when` (compared
    /// with the database's clock), like [`enqueue`](Self::enqueue).
    ///
    /// A delayed message keeps its place in its group: the messages after
    /// it in the group wait for it, so the group's order stays the commit
    /// order. Give a message that must not hold others back a group of its
    /// own. It is published by the first drain of the relay after `when`:
    /// a pump, or the relay's sweep (`RelayConfig::sweep_interval`; on
    /// Lambda, the scheduled pump). Pumping at its commit
    /// (`commit_and_pump`) does not publish it sooner; a plain commit will
    /// do.
    ///
    /// `when` is a `chrono::DateTime<Utc>` or a `std::time::SystemTime`
    /// ([`NotBefore`](crate::envelope::NotBefore)).
    fn enqueue_at<'c, M: crate::message::OutboxMessage>(
        &'c self,
        conn: &'c mut <Self::Database as sqlx::Database>::Connection,
        message: &M,
        when: impl crate::envelope::NotBefore,
    ) -> impl Future<Output = Result<Envelope, EnqueueError>> + Send + 'c {
        let when = when.to_utc();
        let outgoing = OutgoingEnvelope::new(message).map(|o| o.with_not_before(when));
        enqueue_one(self, conn, outgoing)
    }

    /// Inserts one message that is not published before `delay` from now
    /// (this process's clock), like [`enqueue_at`](Self::enqueue_at).
    fn enqueue_after<'c, M: crate::message::OutboxMessage>(
        &'c self,
        conn: &'c mut <Self::Database as sqlx::Database>::Connection,
        message: &M,
        delay: Duration,
    ) -> impl Future<Output = Result<Envelope, EnqueueError>> + Send + 'c {
        let outgoing = OutgoingEnvelope::new(message).map(|o| o.with_delay(delay));
        enqueue_one(self, conn, outgoing)
    }
}

/// Inserts one encoded message; the envelope, or why nothing was written.
async fn enqueue_one<S: Store>(
    store: &S,
    conn: &mut <S::Database as sqlx::Database>::Connection,
    outgoing: Result<OutgoingEnvelope, crate::message::EncodeError>,
) -> Result<Envelope, EnqueueError> {
    let outgoing = outgoing?;
    match store
        .enqueue_all(conn, std::slice::from_ref(&outgoing))
        .await
    {
        Ok(()) => Ok(outgoing.envelope),
        Err(StoreError::Encode(too_large)) => Err(EnqueueError::Encode(too_large)),
        Err(other) => Err(EnqueueError::Store(other)),
    }
}

impl<S: Store> StoreExt for S {}

/// A message could not be enqueued. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The message cannot become an envelope, or its envelope is too large
    /// for the transport ([`EncodeError::TooLarge`](crate::message::EncodeError::TooLarge)).
    #[error(transparent)]
    Encode(#[from] crate::message::EncodeError),
    /// The insert failed; the app's transaction should be rolled back.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The embedded migrations, tracked in their own table so they never collide
/// with the app's own sqlx migrations (`_sqlx_migrations`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn own_migrator(embedded: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate::Migrator::with_migrations(embedded.iter().cloned().collect());
    migrator.dangerous_set_table_name("_outbox_migrations");
    migrator
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod row;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use row::{
    Columns, DEAD_LETTER_SELECT, GROUP_HOLD_COLUMNS, check_sizes, claimed_from_row, group_hold,
    group_stats, headers_json, millis, outbox_row, outbox_stats, sort_out, stored_dead_letter,
};

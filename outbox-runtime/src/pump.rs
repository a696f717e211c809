//! [`Pump`]: how the app primes the relay after a commit.
//!
//! The app commits its transaction, then pumps. Never before: a relay woken
//! before the commit finds nothing, and the rows wait for the next sweep. A
//! lost pump delays delivery until the relay's sweep; it never loses a
//! message, because the rows are already committed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;

/// The body of a pump message: what the app (after its commit) and the
/// scheduled sweep send to wake the relay. A consumer that receives it drains
/// the outbox instead of dispatching.
pub const PUMP_BODY: &str = r#"{"outbox_pump":1}"#;

/// The message group pump messages use, so that one relay drains at a time.
pub const PUMP_GROUP: &str = "__outbox_pump";

/// Whether a received body is a pump message: [`PUMP_BODY`], or a scheduled
/// pump, `{"outbox_pump":1,"at":"2026-11-28T09:00:00Z"}`. A schedule (an
/// EventBridge rule) cannot set a deduplication id, so the FIFO queue uses
/// content-based deduplication and the time makes each pump distinct.
///
/// ```
/// use outbox_runtime::is_pump;
/// assert!(is_pump(r#"{"outbox_pump":1}"#));
/// assert!(is_pump(r#"{"outbox_pump":1,"at":"2026-11-28T09:00:00Z"}"#));
/// assert!(!is_pump(r#"{"outbox_pump":1,"type":"orders.placed"}"#));
/// ```
pub fn is_pump(body: &str) -> bool {
    let body = body.trim();
    body == PUMP_BODY || (body.starts_with(r#"{"outbox_pump""#) && is_scheduled_pump(body))
}

fn is_scheduled_pump(body: &str) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Scheduled {
        outbox_pump: u8,
        #[allow(dead_code)] // present, any time
        at: String,
    }
    serde_json::from_str::<Scheduled>(body).is_ok_and(|pump| pump.outbox_pump == 1)
}

/// The future a [`Drain`] returns.
pub type DrainFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<crate::relay::DrainReport, crate::relay::RelayError>>
            + Send
            + 'a,
    >,
>;

/// Something that drains the outbox on a pump: a [`Relay`](crate::Relay),
/// type-erased so consumers need not know its store and transport types.
pub trait Drain: Send + Sync {
    /// Drains until no row can be claimed or `deadline` passes.
    fn drain_before(&self, deadline: Option<tokio::time::Instant>) -> DrainFuture<'_>;
}

/// The future a [`Pump`] returns.
pub type PumpFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>>;

/// Wakes a relay. In-process: a [`RelayWaker`]; on AWS: a pump message to the
/// relay's FIFO queue.
pub trait Pump: Send + Sync {
    /// Asks a relay to drain the outbox soon.
    fn pump(&self) -> PumpFuture<'_>;
}

/// A pump could not be sent. The committed rows are safe; the sweep will
/// deliver them.
#[derive(Debug, thiserror::Error)]
#[error("pump not sent (the sweep will deliver the messages): {0}")]
pub struct PumpError(pub String);

/// Wakes an in-process [`Relay`](crate::Relay). Cheap to clone.
#[derive(Clone, Default)]
pub struct RelayWaker {
    notify: Arc<Notify>,
}

impl RelayWaker {
    /// A new waker; give it to the relay with
    /// [`Relay::run`](crate::Relay::run) and to the app.
    pub fn new() -> Self {
        RelayWaker::default()
    }

    /// Wakes the relay (coalesced: several wakes before it looks count once;
    /// a wake while it drains makes it drain again).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl fmt::Debug for RelayWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayWaker")
    }
}

impl Pump for RelayWaker {
    fn pump(&self) -> PumpFuture<'_> {
        self.wake();
        Box::pin(async { Ok(()) })
    }
}

/// Commits the app's transaction, then pumps the relay. A failed commit is
/// returned (nothing was written, nothing is pumped); a failed pump is only
/// logged, since the committed messages are safe and the sweep delivers them.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn example(pool: sqlx::SqlitePool, store: outbox_runtime::SqliteStore, waker: outbox_runtime::RelayWaker) -> anyhow::Result<()> {
/// # use outbox_runtime::{OutboxMessage, StoreExt};
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// # struct OrderPlaced { order_id: i64 }
/// let mut tx = pool.begin().await?;
/// store.enqueue(&mut tx, &OrderPlaced { order_id: 7 }).await?;
/// outbox_runtime::commit_and_pump(tx, &waker).await?;
/// # Ok(()) }
/// ```
pub async fn commit_and_pump<DB: sqlx::Database>(
    tx: sqlx::Transaction<'_, DB>,
    pump: &dyn Pump,
) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    if let Err(err) = pump.pump().await {
        tracing::warn!(error = %err, "pump failed after commit");
    }
    Ok(())
}

//! Transports: how the relay publishes envelopes and how a consumer receives
//! them. Shaped after SQS FIFO, the production transport: batches of at most
//! [`Transport::max_batch`] entries with a result per entry, a message group
//! and a deduplication id per message, receipts to acknowledge or release.
//!
//! [`InProcessQueue`] implements both sides in memory
//! with the same semantics: the embedded default and the tests' transport.

use std::future::Future;
use std::time::Duration;

use crate::envelope::Envelope;

mod in_process;
#[cfg(feature = "sqs")]
pub mod sqs;

pub use in_process::{InProcessConfig, InProcessQueue, InProcessStats};

/// One message to publish.
#[derive(Clone, Debug)]
pub struct PublishEntry<'a> {
    /// The envelope; its `group` is the message group and its `id` the
    /// deduplication id.
    pub envelope: &'a Envelope,
    /// The logical queue (`None`: the default).
    pub queue: Option<&'a str>,
    /// The body to send: the envelope's JSON.
    pub body: String,
}

/// Why one entry of a batch was not published.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct EntryError {
    /// What the transport said.
    pub message: String,
    /// What the relay does with the row.
    pub kind: EntryErrorKind,
}

/// What an [`EntryError`] means for its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryErrorKind {
    /// Retrying cannot help (too large, malformed): the row is dead-lettered
    /// at once instead of blocking its group.
    Permanent,
    /// Worth retrying; the attempt counts against the row's attempts.
    Retry,
    /// The entry's queue could not be reached (while others in the same
    /// publish could): retried, using up none of the row's attempts.
    Unavailable,
    /// Not sent, because an earlier entry of its group in the same publish
    /// failed: the row is left as it was, to go after that one.
    HeldBack,
}

impl EntryError {
    /// Retrying cannot help: the row is dead-lettered at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(message, EntryErrorKind::Permanent)
    }

    /// Worth retrying; the attempt counts against the row's attempts.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::new(message, EntryErrorKind::Retry)
    }

    /// The entry's queue is unavailable: retried, and the attempt does not
    /// count.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(message, EntryErrorKind::Unavailable)
    }

    /// Not sent behind a failure of its group in the same publish.
    pub fn held_back() -> Self {
        Self::new(
            "not sent: an earlier message of its group in this publish failed",
            EntryErrorKind::HeldBack,
        )
    }

    fn new(message: impl Into<String>, kind: EntryErrorKind) -> Self {
        EntryError {
            message: message.into(),
            kind,
        }
    }
}

/// The sending side of a transport, used by the relay.
///
/// Contract, so that group order holds: entries are sent in the given order,
/// and an entry is never accepted after an earlier entry of the same group
/// in the same call failed (the transport reports it
/// [`EntryErrorKind::HeldBack`]).
pub trait Transport: Send + Sync + 'static {
    /// The most entries one [`publish`](Self::publish) call takes (10 for SQS).
    fn max_batch(&self) -> usize;

    /// Whether a published message survives the death of this process.
    ///
    /// SQS is durable: the relay marks rows published as soon as SQS has
    /// them. An in-process queue is not: the relay marks its rows `relayed`
    /// (they hold their groups) and the worker confirms each one once it is
    /// handled or dead-lettered ([`Store::confirm`](crate::store::Store::confirm)),
    /// so a crash loses nothing: rows still unconfirmed when their deadline
    /// passes ([`RelayConfig::relayed_for`](crate::relay::RelayConfig::relayed_for))
    /// are published again, and the inbox absorbs any repeat.
    fn durable(&self) -> bool {
        true
    }

    /// The OpenTelemetry `messaging.system` of the queue, for the relay's
    /// spans. Default: `"unknown"`.
    fn messaging_system(&self) -> &'static str {
        "unknown"
    }

    /// Publishes a batch of at most [`max_batch`](Self::max_batch) entries.
    ///
    /// `Ok` carries one result per entry, in order. `Err` means the whole
    /// call failed and nothing is known to be published (the queue is down).
    fn publish(
        &self,
        entries: &[PublishEntry<'_>],
    ) -> impl Future<Output = Result<Vec<Result<(), EntryError>>, TransportError>> + Send;
}

/// A message received from a transport.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The body as sent: an envelope's JSON, or anything a stranger sent.
    pub body: String,
    /// The message group, as the transport reports it.
    pub group: String,
    /// How many times this message was received, this time included.
    pub receive_count: u32,
    /// The handle to acknowledge or release it with.
    pub receipt: Receipt,
    /// The envelope id, when the transport knows it without parsing the
    /// body (the in-process queue does; it is used to confirm delivery).
    pub message_id: Option<uuid::Uuid>,
    /// When the queue accepted the message, when it says (SQS's
    /// `SentTimestamp`; the in-process queue's clock): the start of the
    /// publish-to-handler latency.
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A time in milliseconds since the epoch, as SQS writes `SentTimestamp`.
#[cfg(feature = "sqs")]
pub(crate) fn millis_timestamp(ms: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)
}

/// An opaque handle to acknowledge or release one delivery.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// The receiving side of a transport, used by the worker.
///
/// Contract (SQS FIFO's): while a delivered message of a group is neither
/// acknowledged nor released, and its visibility timeout has not passed, no
/// later message of that group is delivered.
pub trait Receiver: Send + Sync + 'static {
    /// Whether this queue survives the death of this process; see
    /// [`Transport::durable`]. A worker on a non-durable queue confirms
    /// handled messages in the store.
    fn durable(&self) -> bool {
        true
    }

    /// The OpenTelemetry `messaging.system` of the queue, for the
    /// consumer's spans. Default: `"unknown"`.
    fn messaging_system(&self) -> &'static str {
        "unknown"
    }

    /// The most messages one [`receive`](Self::receive) returns (SQS: 10).
    /// Default: no limit (the in-process queue's: a receive returns up to
    /// the `max` it is asked for).
    fn max_receive(&self) -> usize {
        usize::MAX
    }

    /// Receives up to `max` messages, waiting up to `wait` for the first.
    fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, TransportError>> + Send;

    /// Acknowledges handled messages: they are deleted.
    fn ack(&self, receipts: &[Receipt]) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Keeps received messages invisible for another `by`, for handlers that
    /// take longer than the queue's visibility timeout. Receipts no longer
    /// valid are skipped. The default does nothing.
    fn extend(
        &self,
        receipts: &[Receipt],
        by: Duration,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let _ = (receipts, by);
        async { Ok(()) }
    }

    /// Makes a message visible again after `delay` (for a retry).
    fn release(
        &self,
        receipt: &Receipt,
        delay: Duration,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Makes messages visible again, each after its own delay. The default
    /// calls [`release`](Self::release) for each; SQS sends ten per request
    /// (`ChangeMessageVisibilityBatch`).
    fn release_all(
        &self,
        entries: &[(Receipt, Duration)],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        async move {
            for (receipt, delay) in entries {
                self.release(receipt, *delay).await?;
            }
            Ok(())
        }
    }
}

/// A transport call failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The queue cannot be reached or refused the call; retry later.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// A receipt is no longer valid: the message was redelivered since.
    #[error("receipt {0:?} is no longer valid (the message was delivered again)")]
    StaleReceipt(Receipt),
    /// No queue is configured for a message's logical queue.
    #[error("no queue is configured for logical queue `{0}`")]
    UnknownQueue(String),
}

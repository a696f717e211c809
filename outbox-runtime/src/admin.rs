//! Operator actions on what the outbox gave up on: the dead letters a
//! consumer kept (`outbox_dead_letters`) and the rows the relay could not
//! publish (status `dead`). The sample app's `dead-letters` commands run
//! these; any app can expose them the same way.
//!
//! # Replay
//!
//! A dead letter is replayed as a **new** message: a fresh id (a FIFO queue
//! drops a repeated deduplication id for five minutes), the same type,
//! version, group and payload, the original id as causation id, the same
//! correlation id, and two headers:
//! [`REPLAY_OF_HEADER`](crate::envelope::REPLAY_OF_HEADER) (the original
//! id) and, when one handler gave up,
//! [`ONLY_HANDLER_HEADER`](crate::envelope::ONLY_HANDLER_HEADER) (its name).
//!
//! The consumer handles a replay under the original id
//! ([`Envelope::original_id`]): that is its inbox key, so a handler that
//! committed the original never runs again for it, whether the dead letter
//! was one handler's give-up or a whole message found poison. In one
//! transaction the replay enqueues the new row, deletes the dead letter, and
//! clears what the give-up recorded for that handler (its inbox row and its
//! failed attempts), so the handler runs again with a fresh count of
//! attempts. Replaying twice cannot enqueue twice.
//!
//! # Held groups
//!
//! A handler declared `#[handler(on_dead_letter = "hold_group")]` holds
//! its group when it gives up: its later messages of the group are kept as
//! dead letters, in order, until [`release_group`] replays them (listed by
//! [`AdminStore::held_groups`]). A
//! held group's dead letters are not replayed or purged one by one.
//!
//! A row the relay gave up on is requeued: back to `pending`, due now,
//! attempts reset, last error cleared. It keeps its id; on SQLite also its
//! `seq`, on PostgreSQL it gets a new one, after its group's pending rows.
//!
//! ```no_run
//! # async fn example(store: outbox_runtime::PgStore) -> Result<(), outbox_runtime::admin::AdminError> {
//! use outbox_runtime::admin;
//! use outbox_runtime::dispatch::DispatchTable;
//! use outbox_runtime::store::AdminStore;
//!
//! let table = DispatchTable::from_registry().expect("a complete table");
//! for dead in store.dead_letters(100).await? {
//!     println!("{} {:?}: {}", dead.id, dead.letter.handler, dead.letter.error);
//! }
//! let replayed = admin::replay_dead_letter(&store, &table, 42).await?;
//! println!("dead letter 42 is message {} again", replayed.replay_id);
//! # Ok(()) }
//! ```

use uuid::Uuid;

use crate::dispatch::DispatchTable;
use crate::envelope::{Envelope, OutgoingEnvelope};
use crate::store::holds;
use crate::store::{AdminStore, DeadLetter, Store, StoreError, StoredDeadLetter};
use crate::transport::{Receiver, TransportError};

/// An operator action could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No dead letter has this id.
    #[error("dead letter {0} does not exist (replayed or purged already?)")]
    NoSuchDeadLetter(i64),
    /// The dead letter's body is not an envelope, so there is nothing to replay.
    #[error(
        "dead letter {id} cannot be replayed: its body is not an envelope ({reason}); inspect it, then purge it"
    )]
    NotReplayable {
        /// The dead letter.
        id: i64,
        /// Why its body is not an envelope.
        reason: String,
    },
    /// No outbox row with this sequence number is dead.
    #[error("outbox row {0} is not dead (or does not exist)")]
    NotDead(i64),
    /// The dead letter is kept by a group's hold: replaying or purging it
    /// alone would break its group's order.
    #[error(
        "dead letter {id} is kept by the hold of handler `{handler}` on group `{group}`; release the group instead (admin::release_group), so its messages run in order"
    )]
    Held {
        /// The dead letter.
        id: i64,
        /// The holding handler.
        handler: String,
        /// The group held.
        group: String,
    },
    /// The group is not held for this handler.
    #[error("group `{group}` is not held for handler `{handler}`")]
    NotHeld {
        /// The handler.
        handler: String,
        /// The group.
        group: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] TransportError),
}

/// A dead letter that is a message again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// The dead letter, now deleted.
    pub dead_letter: i64,
    /// The message it held.
    pub original_id: Uuid,
    /// The new message, pending in the outbox.
    pub replay_id: Uuid,
    /// The only handler the new message runs, when one handler gave up.
    pub handler: Option<String>,
}

/// The message that replays `letter`: see the module docs. The queue is the
/// one the table gives its type (the default queue for a type this build
/// does not know).
pub fn replay_message(
    letter: &StoredDeadLetter,
    table: &DispatchTable,
) -> Result<OutgoingEnvelope, AdminError> {
    let original =
        Envelope::from_json(&letter.letter.body).map_err(|err| AdminError::NotReplayable {
            id: letter.id,
            reason: err.to_string(),
        })?;
    let envelope = original.replay(letter.letter.handler.as_deref());
    let queue = table
        .message(&envelope.message_type, envelope.version)
        .and_then(|entry| entry.registration().queue);
    Ok(OutgoingEnvelope {
        envelope,
        queue,
        not_before: None,
    })
}

/// Replays dead letter `id`: enqueues its message again (see the module
/// docs) and deletes it, in one transaction. Pump or wake the relay after.
pub async fn replay_dead_letter<S: AdminStore>(
    store: &S,
    table: &DispatchTable,
    id: i64,
) -> Result<Replayed, AdminError> {
    let letter = store
        .dead_letter_by_id(id)
        .await?
        .ok_or(AdminError::NoSuchDeadLetter(id))?;
    refuse_held(store, &letter).await?;
    let replay = replay_message(&letter, table)?;
    if !store.replay_dead_letter(id, &replay).await? {
        return Err(AdminError::NoSuchDeadLetter(id));
    }
    tracing::info!(dead_letter = id, replay_id = %replay.envelope.id, "dead letter replayed");
    let original_id = replay.envelope.original_id();
    Ok(Replayed {
        dead_letter: id,
        original_id,
        replay_id: replay.envelope.id,
        handler: letter.letter.handler,
    })
}

/// Moves what a queue gave up on (an SQS queue's dead-letter queue, after
/// `maxReceiveCount` receives: a long database outage on Lambda ends there)
/// into the toolkit's dead letters, where it is listed and replayed like
/// any other. Each message becomes a whole-message dead letter (handler
/// `None`, id [`Envelope::original_id`], or none when the body is not an
/// envelope), then is deleted from `dlq`. Returns how many were moved.
///
/// A replay is handled under the original id, so handlers that committed
/// the message before it went to the DLQ do not run again. At least once:
/// a message whose delete fails is imported again next time, and its
/// second replay finds every handler done.
///
/// ```no_run
/// # #[cfg(feature = "sqs")]
/// # async fn example(store: outbox_runtime::PgStore, sqs: aws_sdk_sqs::Client) -> Result<(), outbox_runtime::admin::AdminError> {
/// let dlq = outbox_runtime::transport::sqs::SqsReceiver::new(sqs, "https://sqs.eu-west-1.amazonaws.com/123456789012/orders-dlq.fifo");
/// let moved = outbox_runtime::admin::import_dead_letter_queue(&store, &dlq).await?;
/// println!("{moved} messages are dead letters now; replay them with admin::replay_dead_letter");
/// # Ok(()) }
/// ```
pub async fn import_dead_letter_queue<S: Store, R: Receiver>(
    store: &S,
    dlq: &R,
) -> Result<u64, AdminError> {
    let mut moved = 0;
    loop {
        // Long polling (1 s): a short poll of SQS may miss messages.
        let deliveries = dlq.receive(10, std::time::Duration::from_secs(1)).await?;
        if deliveries.is_empty() {
            return Ok(moved);
        }
        let mut tx = store.begin().await?;
        for delivery in &deliveries {
            let envelope = Envelope::from_json(&delivery.body).ok();
            let entry = DeadLetter {
                message_id: envelope.as_ref().map(Envelope::original_id),
                handler: None,
                message_type: envelope.as_ref().map(|e| e.message_type.clone()),
                group: Some(delivery.group.clone()),
                body: delivery.body.clone(),
                error: format!(
                    "the queue gave up on it after {} receives (moved to its dead-letter queue)",
                    delivery.receive_count
                ),
                attempts: delivery.receive_count,
            };
            store.dead_letter(&mut tx, &entry).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        let receipts: Vec<_> = deliveries.into_iter().map(|d| d.receipt).collect();
        dlq.ack(&receipts).await?;
        moved += receipts.len() as u64;
        tracing::info!(moved, "queue dead letters imported");
    }
}

/// Deletes dead letter `id` for good.
pub async fn purge_dead_letter<S: AdminStore>(store: &S, id: i64) -> Result<(), AdminError> {
    let letter = store
        .dead_letter_by_id(id)
        .await?
        .ok_or(AdminError::NoSuchDeadLetter(id))?;
    // One that is not an envelope cannot be replayed: a held group's release
    // stops at it until it is purged.
    if Envelope::from_json(&letter.letter.body).is_ok() {
        refuse_held(store, &letter).await?;
    }
    if store.purge_dead_letter(id).await? {
        tracing::info!(dead_letter = id, "dead letter purged");
        Ok(())
    } else {
        Err(AdminError::NoSuchDeadLetter(id))
    }
}

/// Refuses to act on `letter` alone when a group's hold keeps it.
async fn refuse_held<S: Store>(store: &S, letter: &StoredDeadLetter) -> Result<(), AdminError> {
    let (Some(handler), Some(group)) = (&letter.letter.handler, &letter.letter.group) else {
        return Ok(());
    };
    let mut tx = store.begin().await?;
    let held = !store
        .group_holds(&mut tx, &[(handler.as_str(), group.as_str())])
        .await?
        .is_empty();
    tx.rollback().await.map_err(StoreError::from)?;
    if held {
        return Err(AdminError::Held {
            id: letter.id,
            handler: handler.clone(),
            group: group.clone(),
        });
    }
    Ok(())
}

/// How [`release_group`] resumes a held group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Runs the message the handler gave up on again, then the messages
    /// kept behind it: for a fixed handler.
    Replay,
    /// Drops the message the handler gave up on (its dead letter is
    /// deleted and the message is marked handled by the holding handler),
    /// then runs the messages kept
    /// behind it.
    Skip,
}

/// A held group released: see [`release_group`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupReleased {
    /// The holding handler.
    pub handler: String,
    /// The group.
    pub group: String,
    /// The dead letter of the message the handler gave up on, deleted
    /// without a replay ([`Resume::Skip`]).
    pub skipped: Option<i64>,
    /// The dead letters replayed, oldest first; each replay runs only the
    /// holding handler.
    pub replays: Vec<Replayed>,
}

/// Releases `group`, held for `handler` (`#[handler(on_dead_letter =
/// "hold_group")]`), in one transaction: its dead letters for that handler,
/// oldest first (the give-up, then the messages kept behind it), are
/// replayed for that handler, or with [`Resume::Skip`] all but the oldest.
/// The replays carry the release's id ([`RELEASE_HEADER`](crate::envelope::RELEASE_HEADER)).
/// Until the last is handled the group stays held: the handler runs the
/// replays, in order, and keeps the group's other messages; those are
/// then released the same way, and the hold ends. If a replay gives up
/// again, the group is held again from it. The replays are outbox rows:
/// pump the relay after (a `local::Pipeline`'s or
/// `testing::TestHarness`'s `waker().wake()`), or its sweep publishes them.
///
/// Releasing a group whose release runs starts it over from the oldest
/// letter: the first release's replays still on their way change nothing.
/// That is the way out when a replay is lost (its outbox row went dead, or
/// the queue moved it to its dead-letter queue): the release waits for it
/// (the group shows its release running), and nothing after it runs.
/// When `handler` no longer holds its group in this build (or is gone),
/// the letters are replayed and the hold ends at once.
///
/// A held group's dead letters cannot be replayed or purged one by one
/// ([`AdminError::Held`]), except one that is not an envelope, which can
/// only be purged.
///
/// ```no_run
/// # async fn example(store: outbox_runtime::PgStore) -> Result<(), outbox_runtime::admin::AdminError> {
/// use outbox_runtime::admin::{self, Resume};
/// use outbox_runtime::dispatch::DispatchTable;
/// use outbox_runtime::store::AdminStore;
///
/// let table = DispatchTable::from_registry().expect("a complete table");
/// for held in store.held_groups(100).await? {
///     println!("{} {}: {} kept", held.hold.handler, held.hold.group, held.dead_letters);
/// }
/// let released = admin::release_group(&store, &table, "billing::charge", "customer-7", Resume::Replay).await?;
/// println!("{} messages run again, in order", released.replays.len());
/// # Ok(()) }
/// ```
pub async fn release_group<S: AdminStore>(
    store: &S,
    table: &DispatchTable,
    handler: &str,
    group: &str,
    resume: Resume,
) -> Result<GroupReleased, AdminError> {
    let mut tx = store.begin().await?;
    let hold = store
        .group_holds(&mut tx, &[(handler, group)])
        .await?
        .pop()
        .ok_or_else(|| AdminError::NotHeld {
            handler: handler.to_owned(),
            group: group.to_owned(),
        })?;
    let holding = table
        .entries()
        .iter()
        .flat_map(|entry| entry.handlers())
        .any(|h| h.name == handler && h.holds_group);
    let release = holds::release(store, &mut tx, table, hold, resume == Resume::Skip).await?;
    if !holding && release.hold.is_some() {
        store.delete_group_hold(&mut tx, handler, group).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(
        handler,
        group,
        replays = release.replays.len(),
        skipped = ?release.skipped,
        "group released"
    );
    Ok(GroupReleased {
        handler: handler.to_owned(),
        group: group.to_owned(),
        skipped: release.skipped,
        replays: release
            .replays
            .into_iter()
            .map(|released| Replayed {
                dead_letter: released.dead_letter,
                original_id: released.original_id,
                replay_id: released.replay_id,
                handler: Some(handler.to_owned()),
            })
            .collect(),
    })
}

/// Puts dead outbox row `seq` back to pending (attempts reset).
pub async fn requeue_dead_row<S: AdminStore>(store: &S, seq: i64) -> Result<(), AdminError> {
    if store.requeue_dead_row(seq).await? {
        tracing::info!(seq, "dead outbox row requeued");
        Ok(())
    } else {
        Err(AdminError::NotDead(seq))
    }
}

/// Deletes dead outbox row `seq` for good.
pub async fn purge_dead_row<S: AdminStore>(store: &S, seq: i64) -> Result<(), AdminError> {
    if store.purge_dead_row(seq).await? {
        tracing::info!(seq, "dead outbox row purged");
        Ok(())
    } else {
        Err(AdminError::NotDead(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ONLY_HANDLER_HEADER, REPLAY_OF_HEADER};

    fn letter(body: &str, handler: Option<&str>) -> StoredDeadLetter {
        StoredDeadLetter {
            id: 7,
            dead_at: chrono::Utc::now(),
            letter: DeadLetter {
                message_id: None,
                handler: handler.map(str::to_owned),
                message_type: None,
                group: None,
                body: body.to_owned(),
                error: "boom".into(),
                attempts: 5,
            },
        }
    }

    fn table() -> DispatchTable {
        DispatchTable::from_registrations(std::iter::empty(), std::iter::empty()).unwrap()
    }

    #[test]
    fn a_replay_is_a_new_message_caused_by_the_original_for_the_handler_that_gave_up() {
        let original = Envelope {
            id: Uuid::now_v7(),
            message_type: "orders.placed".into(),
            version: 2,
            group: "customer-1".into(),
            payload: serde_json::value::to_raw_value(&serde_json::json!({"n": 1})).unwrap(),
            created_at: chrono::Utc::now(),
            headers: crate::envelope::Headers::default(),
        };
        let replay =
            replay_message(&letter(&original.to_json(), Some("notify")), &table()).unwrap();
        let e = &replay.envelope;
        assert_ne!(e.id, original.id);
        assert_eq!(
            (e.message_type.as_str(), e.version, e.group.as_str()),
            ("orders.placed", 2, "customer-1")
        );
        assert_eq!(e.payload.get(), original.payload.get());
        assert_eq!(e.headers.causation_id, Some(original.id));
        assert_eq!(e.headers.correlation_id, Some(original.id));
        assert_eq!(e.headers.extra[REPLAY_OF_HEADER], original.id.to_string());
        assert_eq!(e.headers.extra[ONLY_HANDLER_HEADER], "notify");
        assert_eq!(replay.queue, None);

        let all = replay_message(&letter(&original.to_json(), None), &table()).unwrap();
        assert!(!all.envelope.headers.extra.contains_key(ONLY_HANDLER_HEADER));
    }

    #[test]
    fn a_body_that_is_not_an_envelope_cannot_be_replayed() {
        let err = replay_message(&letter("{not json", None), &table()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("dead letter 7 cannot be replayed: its body is not an envelope (malformed envelope at"),
            "{err}"
        );
    }
}

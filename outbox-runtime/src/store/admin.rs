//! [`AdminStore`]: what operators ask of a store, beside the pipeline's
//! primitives in [`Store`].

use std::future::Future;

use uuid::Uuid;

use super::{
    GroupHold, OutboxRow, RowStatus, Store, StoreError, StoreTransaction, StoredDeadLetter,
};
use crate::envelope::OutgoingEnvelope;

/// Operator queries and actions on a store: rows and dead letters listed,
/// dead letters replayed or purged, dead rows requeued or purged.
/// Implemented by both stores; the functions of [`crate::admin`] build on
/// it. Each method is the backend's SQL, except
/// [`replay_dead_letter`](Self::replay_dead_letter), written once over
/// [`remove_dead_letter`](Self::remove_dead_letter) and
/// [`Store::enqueue_all`].
pub trait AdminStore: Store {
    /// The newest `limit` outbox rows, of one status or of any, newest first.
    fn rows(
        &self,
        status: Option<RowStatus>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, StoreError>> + Send;

    /// The newest `limit` dead letters, newest first.
    fn dead_letters(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, StoreError>> + Send;

    /// One dead letter.
    fn dead_letter_by_id(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<StoredDeadLetter>, StoreError>> + Send;

    /// Deletes, in `tx`, dead letter `id` and what its give-up recorded
    /// under `message_id`: the inbox row of the handler that gave up and its
    /// failed attempts (for a poison message, every handler's failed
    /// attempts). `false`, deleting nothing, if there is no such dead letter.
    fn remove_dead_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        id: i64,
        message_id: Uuid,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 't;

    /// In one transaction: deletes dead letter `id` with what its give-up
    /// recorded under the replay's original id
    /// ([`remove_dead_letter`](Self::remove_dead_letter)), and enqueues
    /// `replay`.
    /// Returns `false`, enqueuing nothing, when the dead letter is gone (an
    /// operator replayed or purged it meanwhile). See
    /// [`admin::replay_dead_letter`](crate::admin::replay_dead_letter).
    fn replay_dead_letter<'a>(
        &'a self,
        id: i64,
        replay: &'a OutgoingEnvelope,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        async move {
            let mut tx = self.begin().await?;
            let original = replay.envelope.original_id();
            if !self.remove_dead_letter(&mut tx, id, original).await? {
                tx.rollback().await?;
                return Ok(false);
            }
            self.enqueue_all(&mut tx, std::slice::from_ref(replay))
                .await?;
            tx.commit().await?;
            Ok(true)
        }
    }

    /// Deletes dead letter `id`; `false` if there was none.
    fn purge_dead_letter(&self, id: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Puts a `dead` outbox row back to `pending`, due now, with its
    /// attempts reset and its last error cleared; `false` if row `seq` is not
    /// dead. On SQLite it keeps its `seq` (its group's next rows wait for
    /// it); on PostgreSQL it is enqueued again under a new `seq`, after its
    /// group's pending rows.
    fn requeue_dead_row(&self, seq: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The held groups (`#[handler(on_dead_letter = "hold_group")]`), the
    /// oldest hold first, at most `limit`.
    fn held_groups(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<HeldGroup>, StoreError>> + Send;

    /// Deletes a `dead` outbox row; `false` if row `seq` is not dead.
    fn purge_dead_row(&self, seq: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A held group, listed by [`AdminStore::held_groups`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeldGroup {
    /// The hold.
    #[serde(flatten)]
    pub hold: GroupHold,
    /// Its dead letters: the message the handler gave up on and those kept
    /// behind it.
    pub dead_letters: u64,
}

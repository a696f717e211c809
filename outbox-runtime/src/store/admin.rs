//! [`AdminStore`]: what operators ask of a store, beside the pipeline's
//! primitives in [`Store`].

use std::future::Future;

use uuid::Uuid;

use super::{OutboxRow, RowStatus, Store, StoreError, StoreTransaction, StoredDeadLetter};
use crate::envelope::OutgoingEnvelope;

/// Operator queries and actions on a store: rows and dead letters listed,
/// dead letters replayed or purged, dead rows requeued or purged.
/// Implemented by both stores; the functions of [`crate::admin`] build on
/// it. Each method is one statement of the backend's SQL, except
/// [`replay_dead_letter`](Self::replay_dead_letter), written once over two
/// of them.
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

    /// Deletes dead letter `id` in `tx` and returns the handler that gave up
    /// (`Some(None)` for a poison message), or `None` if there was none.
    fn take_dead_letter<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        id: i64,
    ) -> impl Future<Output = Result<Option<Option<String>>, StoreError>> + Send + 't;

    /// Clears, in `tx`, what a give-up recorded under `message_id`: the inbox
    /// row of `handler` and its failed attempts (with no handler, a poison
    /// message: the failed attempts of every handler).
    fn forget_give_up<'t>(
        &'t self,
        tx: &'t mut StoreTransaction<Self::Database>,
        message_id: Uuid,
        handler: Option<&'t str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 't;

    /// In one transaction: deletes dead letter `id`, clears what the give-up
    /// recorded under the replay's original id
    /// ([`forget_give_up`](Self::forget_give_up)), and enqueues `replay`.
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
            let Some(handler) = self.take_dead_letter(&mut tx, id).await? else {
                tx.rollback().await?;
                return Ok(false);
            };
            let original = replay.envelope.original_id();
            self.forget_give_up(&mut tx, original, handler.as_deref())
                .await?;
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

    /// Deletes a `dead` outbox row; `false` if row `seq` is not dead.
    fn purge_dead_row(&self, seq: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

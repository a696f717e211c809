//! Releasing a held group (`#[handler(on_dead_letter = "hold_group")]`),
//! written once over [`Store`]: the operator's release
//! ([`crate::admin::release_group`]) and the consumer's next step of one.

use uuid::Uuid;

use super::{GroupHold, HoldRelease, Store, StoreError, StoreTransaction};
use crate::dispatch::DispatchTable;
use crate::envelope::{Envelope, OutgoingEnvelope, RELEASE_HEADER};

/// One dead letter of a held group, enqueued again by a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Released {
    /// The dead letter, now deleted.
    pub(crate) dead_letter: i64,
    /// The message it held (its inbox key).
    pub(crate) original_id: Uuid,
    /// The replay, pending in the outbox.
    pub(crate) replay_id: Uuid,
}

/// What one release step did.
#[derive(Debug)]
pub(crate) struct Release {
    /// The oldest dead letter, deleted without a replay (`skip_first`).
    pub(crate) skipped: Option<i64>,
    /// The replays enqueued, oldest first.
    pub(crate) replays: Vec<Released>,
    /// The hold as it is now; `None` when it ended (nothing was kept).
    pub(crate) hold: Option<GroupHold>,
}

/// In `tx`, whose hold row `hold` is locked: marks the group's held dead
/// letters for the holding handler as released ([`Store::release_letters`])
/// and enqueues a replay of each for that handler, oldest first, carrying
/// a new release id ([`RELEASE_HEADER`]); the hold then waits for the last
/// of them. With no dead letter to replay, the hold ends. With
/// `skip_first`, the oldest letter is deleted without a replay and its
/// message stays handled.
pub(crate) async fn release<S: Store>(
    store: &S,
    tx: &mut StoreTransaction<S::Database>,
    table: &DispatchTable,
    mut hold: GroupHold,
    skip_first: bool,
) -> Result<Release, StoreError> {
    let release = Uuid::now_v7();
    let letters = store
        .release_letters(tx, &hold.handler, &hold.group, release, skip_first)
        .await?;
    let skipped = skip_first
        .then(|| letters.first().map(|letter| letter.id))
        .flatten();
    let mut replays = Vec::with_capacity(letters.len());
    let mut released = Vec::with_capacity(letters.len());
    for letter in letters.iter().skip(usize::from(skipped.is_some())) {
        let original = Envelope::from_json(&letter.letter.body).map_err(|err| {
            StoreError::CorruptDeadLetter {
                id: letter.id,
                reason: err.to_string(),
            }
        })?;
        let mut envelope = original.replay(Some(&hold.handler));
        envelope
            .headers
            .extra
            .insert(RELEASE_HEADER.to_owned(), release.to_string());
        released.push(Released {
            dead_letter: letter.id,
            original_id: original.original_id(),
            replay_id: envelope.id,
        });
        let queue = table
            .message(&envelope.message_type, envelope.version)
            .and_then(|entry| entry.registration().queue);
        replays.push(OutgoingEnvelope {
            envelope,
            queue,
            not_before: None,
        });
    }
    if replays.is_empty() {
        store
            .delete_group_hold(tx, &hold.handler, &hold.group)
            .await?;
        return Ok(Release {
            skipped,
            replays: released,
            hold: None,
        });
    }
    store.enqueue_all(tx, &replays).await?;
    hold.release = released.last().map(|last| HoldRelease {
        id: release,
        last: last.original_id,
    });
    store.put_group_hold(tx, &hold).await?;
    Ok(Release {
        skipped,
        replays: released,
        hold: Some(hold),
    })
}

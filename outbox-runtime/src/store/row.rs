//! What both stores share to turn rows into values and back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ClaimedMessage, DeadLetter, GroupHold, GroupStats, HoldRelease, OutboxRow, OutboxStats,
    PublishFailure, RowStatus, StoreError, StoredDeadLetter,
};
use crate::envelope::Envelope;

/// How a backend reads its column types, the one way the stores' rows
/// differ: SQLite keeps ids as text and times as milliseconds, PostgreSQL
/// has `uuid`, `timestamptz` and integers of several widths. The rows
/// themselves are decoded once, below. `key` names the row in an error.
pub(crate) trait Columns {
    /// An integer column of any width, or `NULL`.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    /// A text column, or `NULL`.
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    /// A UUID column, or `NULL`.
    fn opt_uuid(&self, key: i64, column: &str) -> Result<Option<Uuid>, StoreError>;
    /// A time column, or `NULL`.
    fn opt_time(&self, key: i64, column: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// An integer column that is never `NULL`.
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.opt_int(column)?.ok_or_else(|| null(column))
    }

    /// A text column that is never `NULL`.
    fn text(&self, column: &str) -> Result<String, StoreError> {
        self.opt_text(column)?.ok_or_else(|| null(column))
    }

    /// A UUID column that is never `NULL`.
    fn uuid(&self, key: i64, column: &str) -> Result<Uuid, StoreError> {
        self.opt_uuid(key, column)?.ok_or_else(|| null(column))
    }

    /// A time column that is never `NULL`.
    fn time(&self, key: i64, column: &str) -> Result<DateTime<Utc>, StoreError> {
        self.opt_time(key, column)?.ok_or_else(|| null(column))
    }

    /// A count column (`NULL` and negative read as 0).
    fn count(&self, column: &str) -> Result<u64, StoreError> {
        Ok(self
            .opt_int(column)?
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// An age in milliseconds, or `NULL` (negative reads as 0).
    fn age(&self, column: &str) -> Result<Option<Duration>, StoreError> {
        Ok(self
            .opt_int(column)?
            .map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())))
    }
}

fn null(column: &str) -> StoreError {
    StoreError::Database(sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: "unexpected NULL".into(),
    })
}

/// The columns of a dead letter, in `SELECT` order, for [`stored_dead_letter`].
pub(crate) const DEAD_LETTER_SELECT: &str = "SELECT id, message_id, handler, message_type, group_key, body, error, attempts, dead_at FROM outbox_dead_letters";

/// A claimed row (`seq`, `id`, `message_type`, `version`, `group_key`,
/// `payload`, `headers`, `created_at`, `queue`, `attempts`) under `lease`.
pub(crate) fn claimed_from_row(
    row: &impl Columns,
    lease: Uuid,
) -> Result<ClaimedMessage, StoreError> {
    let seq = row.int("seq")?;
    Ok(ClaimedMessage {
        seq,
        envelope: envelope_from_row(
            seq,
            row.uuid(seq, "id")?,
            row.text("message_type")?,
            row.int("version")?,
            row.text("group_key")?,
            row.text("payload")?,
            &row.text("headers")?,
            row.time(seq, "created_at")?,
        )?,
        queue: row.opt_text("queue")?,
        attempts: attempts_from(seq, row.int("attempts")?)?,
        lease,
    })
}

/// A row of [`AdminStore::rows`](super::AdminStore::rows).
pub(crate) fn outbox_row(row: &impl Columns) -> Result<OutboxRow, StoreError> {
    let seq = row.int("seq")?;
    Ok(OutboxRow {
        seq,
        id: row.uuid(seq, "id")?,
        message_type: row.text("message_type")?,
        version: u32_column(seq, "version", row.int("version")?)?,
        group: row.text("group_key")?,
        queue: row.opt_text("queue")?,
        status: status_from(seq, &row.text("status")?)?,
        attempts: attempts_from(seq, row.int("attempts")?)?,
        last_error: row.opt_text("last_error")?,
        created_at: row.time(seq, "created_at")?,
        published_at: row.opt_time(seq, "published_at")?,
    })
}

/// A row of [`DEAD_LETTER_SELECT`].
pub(crate) fn stored_dead_letter(row: &impl Columns) -> Result<StoredDeadLetter, StoreError> {
    let id = row.int("id")?;
    Ok(StoredDeadLetter {
        id,
        dead_at: row.time(id, "dead_at")?,
        letter: DeadLetter {
            message_id: row.opt_uuid(id, "message_id")?,
            handler: row.opt_text("handler")?,
            message_type: row.opt_text("message_type")?,
            group: row.opt_text("group_key")?,
            body: row.text("body")?,
            error: row.text("error")?,
            attempts: u32::try_from(row.int("attempts")?).unwrap_or(0),
        },
    })
}

/// The columns [`group_hold`] reads.
pub(crate) const GROUP_HOLD_COLUMNS: &str = "handler, group_key, held_at, release_id, release_last";

/// A row of `outbox_group_holds` ([`GROUP_HOLD_COLUMNS`]).
pub(crate) fn group_hold(row: &impl Columns) -> Result<GroupHold, StoreError> {
    Ok(GroupHold {
        handler: row.text("handler")?,
        group: row.text("group_key")?,
        held_at: row.time(0, "held_at")?,
        release: match (
            row.opt_uuid(0, "release_id")?,
            row.opt_uuid(0, "release_last")?,
        ) {
            (Some(id), Some(last)) => Some(HoldRelease { id, last }),
            _ => None,
        },
    })
}

/// A row of counts (`pending`, `published`, `dead`, `dead_letters`) and the
/// oldest pending row's age (`oldest_ms`).
pub(crate) fn outbox_stats(row: &impl Columns) -> Result<OutboxStats, StoreError> {
    Ok(OutboxStats {
        pending: row.count("pending")?,
        oldest_pending_age: row.age("oldest_ms")?,
        published: row.count("published")?,
        dead: row.count("dead")?,
        dead_letters: row.count("dead_letters")?,
    })
}

/// A row of `group_key`, `pending`, `oldest_ms` and `dead`.
pub(crate) fn group_stats(row: &impl Columns) -> Result<GroupStats, StoreError> {
    Ok(GroupStats {
        group: row.text("group_key")?,
        pending: row.count("pending")?,
        oldest_pending_age: row.age("oldest_ms")?,
        dead: row.count("dead")?,
    })
}

/// Splits claimed rows into those that decode, in sequence order, and the
/// corrupt ones (edited by hand, or written by an incompatible version) as
/// failures that dead-letter them at once with the reason, so that they
/// neither stop the relay nor block their groups.
pub(crate) fn sort_out(
    rows: impl Iterator<Item = Result<ClaimedMessage, StoreError>>,
) -> Result<(Vec<ClaimedMessage>, Vec<PublishFailure>), StoreError> {
    let mut claimed = Vec::new();
    let mut corrupt = Vec::new();
    for row in rows {
        match row {
            Ok(message) => claimed.push(message),
            Err(StoreError::CorruptRow { seq, reason }) => {
                tracing::error!(seq, %reason, "corrupt outbox row dead-lettered");
                corrupt.push(PublishFailure {
                    seq,
                    error: format!("corrupt row: {reason}"),
                    retry_after: None,
                    counts: true,
                });
            }
            Err(other) => return Err(other),
        }
    }
    claimed.sort_unstable_by_key(|m| m.seq);
    Ok((claimed, corrupt))
}

/// Rebuilds an envelope from a row's columns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn envelope_from_row(
    seq: i64,
    id: Uuid,
    message_type: String,
    version: i64,
    group: String,
    payload: String,
    headers: &str,
    created_at: DateTime<Utc>,
) -> Result<Envelope, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptRow { seq, reason };
    let version = u32::try_from(version)
        .map_err(|_| corrupt(format!("version {version} is out of range")))?;
    let payload = serde_json::value::RawValue::from_string(payload)
        .map_err(|err| corrupt(format!("payload is not JSON: {err}")))?;
    let headers =
        serde_json::from_str(headers).map_err(|err| corrupt(format!("headers: {err}")))?;
    Ok(Envelope {
        id,
        message_type,
        version,
        group,
        payload,
        created_at,
        headers,
    })
}

pub(crate) fn status_from(seq: i64, status: &str) -> Result<RowStatus, StoreError> {
    status
        .parse()
        .map_err(|reason| StoreError::CorruptRow { seq, reason })
}

pub(crate) fn headers_json(envelope: &Envelope) -> String {
    serde_json::to_string(&envelope.headers).unwrap_or_else(|_| String::from("{}"))
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn attempts_from(seq: i64, attempts: i64) -> Result<u32, StoreError> {
    u32_column(seq, "attempts", attempts)
}

pub(crate) fn u32_column(seq: i64, column: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::CorruptRow {
        seq,
        reason: format!("{column} {value} is out of range"),
    })
}

/// Fails on the first message larger than `limit` as an envelope, before
/// anything is written.
pub(crate) fn check_sizes(
    messages: &[crate::envelope::OutgoingEnvelope],
    limit: usize,
) -> Result<(), StoreError> {
    for outgoing in messages {
        outgoing.envelope.check_size(limit)?;
    }
    Ok(())
}

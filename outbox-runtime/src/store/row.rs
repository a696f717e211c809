//! What both stores share to turn rows into values and back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ClaimedMessage, PublishFailure, RowStatus, StoreError};
use crate::envelope::Envelope;

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

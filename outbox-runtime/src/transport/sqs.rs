//! SQS FIFO: [`SqsTransport`] (the relay's publisher), [`SqsReceiver`] (the
//! long-poll worker's receiver) and [`SqsPump`] (the app's pump), on
//! `aws-sdk-sqs`.
//!
//! Endpoint, region and credentials come from the standard AWS configuration
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), so a local SQS-compatible server
//! works with no code change.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use uuid::Uuid;

use super::{
    Delivery, EntryError, EntryErrorKind, PublishEntry, Receipt, Receiver, Transport,
    TransportError,
};
use crate::pump::{Coalescer, PUMP_BODY, PUMP_GROUP, Pump, PumpFuture, SendPump};

/// The largest message body SQS accepts by default (256 KiB). Raise it with
/// [`SqsTransport::with_max_body_bytes`] for queues configured larger.
pub const SQS_MAX_BODY_BYTES: usize = 256 * 1024;

/// Entries per `SendMessageBatch` call, an SQS limit.
const SQS_BATCH: usize = 10;

/// SQS's OpenTelemetry `messaging.system`.
pub(crate) const SQS_SYSTEM: &str = "aws_sqs";

/// The bodies of one `SendMessageBatch` call together, an SQS limit (1 MiB).
pub const SQS_MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How a failed `SendMessageBatch` call counts for its entries. A call SQS
/// refused (its shape, a queue that does not exist, no permission: any
/// client error but throttling) will be refused again, so it uses up the
/// rows' attempts and they end dead instead of waiting for ever; anything
/// else (no answer, a server error, throttling) is the queue being
/// unavailable, which uses none.
fn call_failure<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> EntryErrorKind {
    let SdkError::ServiceError(service) = err else {
        return EntryErrorKind::Unavailable;
    };
    let status = service.raw().status().as_u16();
    let throttled = status == 429 || err.code().is_some_and(|code| code.contains("Throttl"));
    if (400..500).contains(&status) && !throttled {
        EntryErrorKind::Retry
    } else {
        EntryErrorKind::Unavailable
    }
}

/// Publishes envelopes to SQS FIFO queues with `SendMessageBatch`:
/// `MessageGroupId` is the envelope's group, `MessageDeduplicationId` its
/// id, the body its JSON.
///
/// Bodies over the size limit fail permanently before anything is sent (the
/// relay dead-letters the row instead of retrying it forever). Calls hold at
/// most 10 entries and [`SQS_MAX_BATCH_BYTES`] of bodies. An entry that SQS
/// refuses fails, and so do the later entries of its group in the same
/// publish; other groups go on. A call that fails fails its own entries
/// (and its queue's later calls are not made): refused by SQS, they count
/// against their rows; unanswered, they wait for their queue. What other
/// calls sent is reported sent. When nothing was sent because every queue
/// was unreachable, the whole publish fails
/// ([`TransportError::Unavailable`]).
#[derive(Clone)]
pub struct SqsTransport {
    client: Client,
    default_queue: String,
    queues: HashMap<String, String>,
    max_body_bytes: usize,
}

impl SqsTransport {
    /// A transport that sends to `default_queue_url` (a `.fifo` queue).
    pub fn new(client: Client, default_queue_url: impl Into<String>) -> Self {
        SqsTransport {
            client,
            default_queue: default_queue_url.into(),
            queues: HashMap::new(),
            max_body_bytes: SQS_MAX_BODY_BYTES,
        }
    }

    /// Sends messages of logical queue `name` (`#[outbox(queue = "name")]`)
    /// to `queue_url`.
    #[must_use]
    pub fn with_queue(mut self, name: impl Into<String>, queue_url: impl Into<String>) -> Self {
        self.queues.insert(name.into(), queue_url.into());
        self
    }

    /// Sets the body size limit (SQS allows raising it per queue).
    #[must_use]
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The SQS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn queue_url(&self, queue: Option<&str>) -> Result<&str, String> {
        match queue {
            None => Ok(&self.default_queue),
            Some(name) => self.queues.get(name).map(String::as_str).ok_or_else(|| {
                format!(
                    "no queue URL for logical queue `{name}`; set OUTBOX_QUEUE_URL_{}",
                    env_suffix(name)
                )
            }),
        }
    }
}

impl fmt::Debug for SqsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsTransport")
            .field("default_queue", &self.default_queue)
            .field("queues", &self.queues)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// `billing-events` → `BILLING_EVENTS`, for environment variable names.
pub(crate) fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn sdk_error(err: impl std::error::Error) -> String {
    DisplayErrorContext(err).to_string()
}

impl Transport for SqsTransport {
    fn messaging_system(&self) -> &'static str {
        SQS_SYSTEM
    }

    fn max_batch(&self) -> usize {
        SQS_BATCH
    }

    async fn publish(
        &self,
        entries: &[PublishEntry<'_>],
    ) -> Result<Vec<Result<(), EntryError>>, TransportError> {
        let mut results: Vec<Option<Result<(), EntryError>>> = vec![None; entries.len()];
        let mut failed_groups: HashSet<&str> = HashSet::new();

        // Checks that need no network: size and destination.
        let mut by_queue: Vec<(&str, Vec<usize>)> = Vec::new();
        for (at, entry) in entries.iter().enumerate() {
            let group = entry.envelope.group.as_str();
            let check = if entry.body.len() > self.max_body_bytes {
                Err(EntryError::permanent(format!(
                    "message body is {} bytes; SQS accepts at most {} (store large payloads elsewhere and send a reference)",
                    entry.body.len(),
                    self.max_body_bytes
                )))
            } else {
                self.queue_url(entry.queue).map_err(EntryError::retry)
            };
            match check {
                Ok(url) => match by_queue.iter_mut().find(|(u, _)| *u == url) {
                    Some((_, list)) => list.push(at),
                    None => by_queue.push((url, vec![at])),
                },
                Err(err) => {
                    failed_groups.insert(group);
                    results[at] = Some(Err(err));
                }
            }
        }

        let mut unreachable: Option<String> = None;
        for (url, indexes) in by_queue {
            // Set when a call to this queue found it unreachable: its later
            // entries are not sent in this publish.
            let mut queue_down: Option<String> = None;
            for chunk in chunks(&indexes, |at| entries[at].body.len()) {
                let mut batch = Vec::with_capacity(chunk.len());
                let mut sent = Vec::with_capacity(chunk.len());
                for &at in chunk {
                    let entry = &entries[at];
                    let group = entry.envelope.group.as_str();
                    if failed_groups.contains(group) {
                        results[at] = Some(Err(EntryError::held_back()));
                        continue;
                    }
                    if let Some(message) = &queue_down {
                        failed_groups.insert(group);
                        results[at] = Some(Err(EntryError::unavailable(message.clone())));
                        continue;
                    }
                    let request = SendMessageBatchRequestEntry::builder()
                        .id(at.to_string())
                        .message_body(entry.body.as_str())
                        .message_group_id(group)
                        .message_deduplication_id(entry.envelope.id.to_string())
                        .build()
                        .map_err(|err| TransportError::Unavailable(sdk_error(err)))?;
                    batch.push(request);
                    sent.push(at);
                }
                if batch.is_empty() {
                    continue;
                }
                let response = match self
                    .client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(batch))
                    .send()
                    .await
                {
                    Ok(response) => response,
                    Err(err) => {
                        let kind = call_failure(&err);
                        let message = format!("SQS call failed: {}", sdk_error(err));
                        tracing::warn!(queue = url, %message, ?kind, "a SendMessageBatch call failed");
                        for &at in &sent {
                            failed_groups.insert(entries[at].envelope.group.as_str());
                            results[at] = Some(Err(if kind == EntryErrorKind::Unavailable {
                                EntryError::unavailable(message.clone())
                            } else {
                                EntryError::retry(message.clone())
                            }));
                        }
                        if kind == EntryErrorKind::Unavailable {
                            unreachable.get_or_insert_with(|| message.clone());
                            queue_down = Some(message);
                        }
                        continue;
                    }
                };
                for ok in response.successful() {
                    if let Ok(at) = ok.id().parse::<usize>() {
                        results[at] = Some(Ok(()));
                    }
                }
                for failed in response.failed() {
                    let Ok(at) = failed.id().parse::<usize>() else {
                        continue;
                    };
                    failed_groups.insert(entries[at].envelope.group.as_str());
                    let message = format!(
                        "SQS refused the message: {}: {}",
                        failed.code(),
                        failed.message().unwrap_or("no message")
                    );
                    results[at] = Some(Err(if failed.sender_fault() {
                        EntryError::permanent(message)
                    } else {
                        EntryError::retry(message)
                    }));
                }
                // SQS could accept a later entry of a group whose earlier
                // entry it refused. Order is then already broken at the
                // queue; say so loudly.
                for &at in &sent {
                    let group = entries[at].envelope.group.as_str();
                    if failed_groups.contains(group) && matches!(results[at], Some(Ok(()))) {
                        let earlier_failed = sent.iter().take_while(|&&s| s != at).any(|&s| {
                            entries[s].envelope.group == group && matches!(results[s], Some(Err(_)))
                        });
                        if earlier_failed {
                            tracing::error!(
                                group,
                                message.id = %entries[at].envelope.id,
                                "SQS accepted a message after refusing an earlier one of its group; the group may be delivered out of order"
                            );
                        }
                    }
                }
            }
        }

        let results: Vec<Result<(), EntryError>> = results.into_iter().map(no_result).collect();
        // Nothing sent and nothing refused: every queue was unreachable.
        if let Some(message) = unreachable
            && results.iter().all(|r| {
                r.as_ref().is_err_and(|e| {
                    matches!(
                        e.kind,
                        EntryErrorKind::Unavailable | EntryErrorKind::HeldBack
                    )
                })
            })
        {
            return Err(TransportError::Unavailable(message));
        }
        Ok(results)
    }
}

/// An entry SQS said nothing about: retried.
fn no_result(result: Option<Result<(), EntryError>>) -> Result<(), EntryError> {
    result.unwrap_or_else(|| Err(EntryError::retry("SQS returned no result for this entry")))
}

/// Splits `indexes` into `SendMessageBatch` calls: at most [`SQS_BATCH`]
/// entries and [`SQS_MAX_BATCH_BYTES`] of bodies each, in order. A body
/// larger than the limit (a queue configured for larger messages) goes
/// alone.
fn chunks(indexes: &[usize], size: impl Fn(usize) -> usize) -> Vec<&[usize]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &at) in indexes.iter().enumerate() {
        let body = size(at);
        if i > start && (i - start == SQS_BATCH || bytes + body > SQS_MAX_BATCH_BYTES) {
            chunks.push(&indexes[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += body;
    }
    if start < indexes.len() {
        chunks.push(&indexes[start..]);
    }
    chunks
}

/// Receives from an SQS FIFO queue with long polling, for the
/// [`Worker`](crate::Worker) outside Lambda (containers, local development).
#[derive(Clone)]
pub struct SqsReceiver {
    client: Client,
    queue_url: String,
}

impl SqsReceiver {
    /// A receiver for `queue_url`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        SqsReceiver {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// Extends how long a received message stays invisible, for a handler
    /// that needs longer than the queue's visibility timeout.
    pub async fn extend_visibility(
        &self,
        receipt: &Receipt,
        by: Duration,
    ) -> Result<(), TransportError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(visibility_seconds(by))
            .send()
            .await
            .map_err(|err| TransportError::Unavailable(sdk_error(err)))?;
        Ok(())
    }
}

impl SqsReceiver {
    /// Sets each received message's visibility to its own duration from now
    /// (`ChangeMessageVisibilityBatch`, ten at a time). An entry SQS refuses
    /// (its receipt went stale) is logged and skipped.
    pub(crate) async fn change_visibility(
        &self,
        entries: &[(&Receipt, Duration)],
    ) -> Result<(), TransportError> {
        for chunk in entries.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (receipt, by))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&receipt.0)
                        .visibility_timeout(visibility_seconds(*by))
                        .build()
                        .map_err(|err| TransportError::Unavailable(sdk_error(err)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let response = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| TransportError::Unavailable(sdk_error(err)))?;
            for failed in response.failed() {
                tracing::warn!(code = failed.code(), message = ?failed.message(), "visibility not changed");
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SqsReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsReceiver")
            .field("queue_url", &self.queue_url)
            .finish_non_exhaustive()
    }
}

/// SQS visibility timeouts are whole seconds from 0 to 12 hours.
fn visibility_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds.min(43_200)).unwrap_or(43_200)
}

impl Receiver for SqsReceiver {
    fn messaging_system(&self) -> &'static str {
        SQS_SYSTEM
    }

    fn max_receive(&self) -> usize {
        SQS_BATCH
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let max = i32::try_from(max.clamp(1, SQS_BATCH)).unwrap_or(10);
        let wait = i32::try_from(wait.as_secs().min(20)).unwrap_or(20);
        let response = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|err| TransportError::Unavailable(sdk_error(err)))?;
        let mut deliveries = Vec::new();
        for message in response.messages() {
            let Some(receipt) = message.receipt_handle() else {
                continue;
            };
            let attribute = |name: &MessageSystemAttributeName| {
                message
                    .attributes()
                    .and_then(|a| a.get(name))
                    .map(String::as_str)
            };
            deliveries.push(Delivery {
                body: message.body().unwrap_or_default().to_owned(),
                group: attribute(&MessageSystemAttributeName::MessageGroupId)
                    .unwrap_or_default()
                    .to_owned(),
                receive_count: attribute(&MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                receipt: Receipt(receipt.to_owned()),
                message_id: None,
                sent_at: attribute(&MessageSystemAttributeName::SentTimestamp)
                    .and_then(crate::transport::millis_timestamp),
            });
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipts: &[Receipt]) -> Result<(), TransportError> {
        for chunk in receipts.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&receipt.0)
                        .build()
                        .map_err(|err| TransportError::Unavailable(sdk_error(err)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let response = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| TransportError::Unavailable(sdk_error(err)))?;
            for failed in response.failed() {
                // The message comes back after its visibility timeout; the
                // inbox keeps its handlers from running twice.
                tracing::warn!(code = failed.code(), message = ?failed.message(), "delete failed");
            }
        }
        Ok(())
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), TransportError> {
        self.extend_visibility(receipt, delay).await
    }

    async fn extend(&self, receipts: &[Receipt], by: Duration) -> Result<(), TransportError> {
        let entries: Vec<(&Receipt, Duration)> = receipts.iter().map(|r| (r, by)).collect();
        self.change_visibility(&entries).await
    }

    async fn release_all(&self, entries: &[(Receipt, Duration)]) -> Result<(), TransportError> {
        let entries: Vec<(&Receipt, Duration)> = entries.iter().map(|(r, d)| (r, *d)).collect();
        self.change_visibility(&entries).await
    }
}

/// Sends pump messages to the relay's FIFO queue (group
/// [`PUMP_GROUP`]): after the app's commit, from the
/// scheduled sweep, and by a Lambda that ran out of time.
///
/// Pumps are coalesced: [`pump`](Pump::pump) returns once a pump message
/// sent after it was called is on the queue (so the drain it starts sees
/// the caller's commit), and at most one is sent per
/// [`interval`](Self::with_interval) (default: [`DEFAULT_PUMP_INTERVAL`],
/// 10 ms), one at a time, shared by the pump's clones. So a steady stream
/// of commits costs at most 100 pump messages a second, and a caller waits
/// at most the interval plus two `SendMessage` calls. Every pump message
/// has its own deduplication id, so SQS never drops one as a duplicate of
/// an earlier pump that found the outbox empty.
#[derive(Clone)]
pub struct SqsPump {
    queue_url: String,
    send: SendPump,
    coalescer: Coalescer,
}

/// The least time between two pump messages of one [`SqsPump`].
pub const DEFAULT_PUMP_INTERVAL: Duration = Duration::from_millis(10);

impl SqsPump {
    /// A pump to `queue_url`.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        let queue_url = queue_url.into();
        let url = queue_url.clone();
        let send: SendPump = Arc::new(move || {
            let (client, url) = (client.clone(), url.clone());
            Box::pin(async move {
                client
                    .send_message()
                    .queue_url(url)
                    .message_body(PUMP_BODY)
                    .message_group_id(PUMP_GROUP)
                    .message_deduplication_id(Uuid::now_v7().to_string())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(sdk_error)
            })
        });
        SqsPump {
            queue_url,
            send,
            coalescer: Coalescer::new(DEFAULT_PUMP_INTERVAL),
        }
    }

    /// Sends at most one pump message per `interval` (zero: one per call
    /// while none is being sent, still one at a time).
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.coalescer = Coalescer::new(interval);
        self
    }
}

impl fmt::Debug for SqsPump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsPump")
            .field("queue_url", &self.queue_url)
            .finish_non_exhaustive()
    }
}

impl Pump for SqsPump {
    fn pump(&self) -> PumpFuture<'_> {
        Box::pin(self.coalescer.pump(&self.send))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up_to_whole_seconds_within_the_sqs_range() {
        assert_eq!(visibility_seconds(Duration::ZERO), 0);
        assert_eq!(visibility_seconds(Duration::from_millis(1)), 1);
        assert_eq!(visibility_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_seconds(Duration::from_secs(100_000)), 43_200);
    }

    #[test]
    fn calls_hold_at_most_ten_entries_and_a_mebibyte_of_bodies() {
        let indexes: Vec<usize> = (0..25).collect();
        let lens: Vec<usize> = chunks(&indexes, |_| 10).iter().map(|c| c.len()).collect();
        assert_eq!(lens, [10, 10, 5]);
        let big = 300 * 1024;
        let lens: Vec<usize> = chunks(&indexes[..7], |_| big)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(lens, [3, 3, 1], "three bodies of 300 KiB per call");
        let huge = chunks(&indexes[..2], |_| 2 * SQS_MAX_BATCH_BYTES);
        assert_eq!(huge, [&[0][..], &[1][..]], "an oversized body goes alone");
        assert!(chunks(&[], |_| 1).is_empty());
    }

    #[test]
    fn logical_queue_names_become_env_suffixes() {
        assert_eq!(env_suffix("billing-events.v2"), "BILLING_EVENTS_V2");
    }
}

//! The Lambda consumer: `lambda_runtime` with SQS events, reporting partial
//! batch failures.
//!
//! A function on an SQS FIFO event source (with `ReportBatchItemFailures`)
//! calls [`run`] from `main`. Each invocation carries a batch of records in
//! queue order; the [`Consumer`] handles them: pump records drain the outbox
//! (bounded by the invocation's remaining time, re-pumping if it runs out;
//! [`NO_DEADLINE_BUDGET`] when the runtime gives no deadline), envelopes
//! are dispatched with the inbox. The response lists the records to retry:
//! those that failed, and, because the queue is FIFO, the later records of
//! their groups, which are not run. Poison records are dead-lettered in the
//! store and acknowledged.
//!
//! What the consumer reads of a record: `body`; `messageId` (the id a batch
//! item failure names); the attributes `MessageGroupId` (the group: a
//! failure holds back the later records of its group) and
//! `ApproximateReceiveCount` (for the retry delay of an outage), and
//! `SentTimestamp` (for the time from publishing to handling); with
//! [`run_with_backoff`], `receiptHandle` and `eventSourceARN`. A record
//! without `MessageGroupId` comes from a standard queue, which keeps no
//! order: it is handled, with a warning, in one group with the batch's other
//! such records, so a failure holds back every later one. Use FIFO queues.
//!
//! [`event_source`] plays the event source mapping on your machine: a
//! function under `cargo lambda watch`, fed from a real or local queue.
//!
//! With the environment variable `OUTBOX_EMF_NAMESPACE` set (off unless
//! set), [`run`] installs a [`metrics`](crate::metrics) recorder that writes
//! the toolkit's metrics to stdout after each invocation in CloudWatch's
//! Embedded Metric Format, under that namespace: CloudWatch turns the log
//! lines into metrics, with no agent and no API call. Each line carries
//! the invocation's `RequestId`.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn example() -> Result<(), lambda_runtime::Error> {
//! use std::sync::Arc;
//! use outbox_runtime::{Dispatcher, SqliteStore, consume::Consumer};
//!
//! let store = SqliteStore::open("sqlite:///tmp/outbox.db").await?;
//! let dispatcher = Arc::new(Dispatcher::from_registry()?);
//! outbox_runtime::lambda::run(Consumer::new(store, dispatcher)).await
//! # }
//! ```

pub mod event_source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{LambdaEvent, service_fn};
use tokio::time::Instant;

use crate::consume::{Consumer, DeliveryOutcome};
use crate::store::Store;
use crate::transport::sqs::SqsReceiver;
use crate::transport::{Delivery, Receipt};

/// The environment variable that turns on CloudWatch Embedded Metric Format
/// lines, and names their namespace.
pub const EMF_NAMESPACE_ENV: &str = "OUTBOX_EMF_NAMESPACE";

/// The EMF recorder, when [`EMF_NAMESPACE_ENV`] asks for one.
fn emf_from_env() -> Option<&'static metrics_cloudwatch_embedded::Collector> {
    let namespace = std::env::var(EMF_NAMESPACE_ENV)
        .ok()
        .filter(|namespace| !namespace.is_empty())?;
    match metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(namespace)
        .init()
    {
        Ok(collector) => {
            crate::metrics::describe();
            Some(collector)
        }
        Err(err) => {
            tracing::warn!(error = %err, "{EMF_NAMESPACE_ENV} is set, but EMF metrics could not be installed (another metrics recorder is)");
            None
        }
    }
}

/// How long an invocation works when the runtime gives no deadline: one
/// more than 15 minutes (Lambda's longest timeout) in the past, such as
/// cargo-lambda's emulator sends. Lambda itself always gives the function's
/// timeout; a deadline just past leaves no time (each batch's first
/// transaction runs, the rest is held back).
pub const NO_DEADLINE_BUDGET: Duration = Duration::from_secs(10);

/// Lambda's longest function timeout.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Time kept back from the invocation's deadline for answering the runtime:
/// a tenth of the time left, at most two seconds.
fn safety_margin(remaining: Duration) -> Duration {
    (remaining / 10).min(Duration::from_secs(2))
}

/// Serves SQS events with `consumer` until the Lambda runtime stops the
/// process. Records to retry come back after the queue's visibility
/// timeout; [`run_with_backoff`] makes them wait out their retry delay.
pub async fn run<S: Store>(consumer: Consumer<S>) -> Result<(), lambda_runtime::Error> {
    serve(consumer, None).await
}

/// Like [`run`], and each record to retry is made invisible for its retry
/// delay with `ChangeMessageVisibility` ([`RetryVisibility`]): a failing
/// handler's backoff, or for an outage of the store a delay that grows
/// with the record's receive count. So receives grow slowly during an
/// outage, instead of one per visibility timeout until `maxReceiveCount`
/// sends the message to the queue's DLQ.
pub async fn run_with_backoff<S: Store>(
    consumer: Consumer<S>,
    sqs: aws_sdk_sqs::Client,
) -> Result<(), lambda_runtime::Error> {
    serve(consumer, Some(RetryVisibility::new(sqs))).await
}

async fn serve<S: Store>(
    mut consumer: Consumer<S>,
    visibility: Option<RetryVisibility>,
) -> Result<(), lambda_runtime::Error> {
    consumer.messaging_system = crate::transport::sqs::SQS_SYSTEM;
    let emf = emf_from_env();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let consumer = consumer.clone();
        let visibility = visibility.clone();
        async move {
            let request_id = event.context.request_id.clone();
            let response = handle_event_with(&consumer, event, visibility.as_ref()).await;
            if let Some(emf) = emf
                && let Err(err) = emf
                    .set_property("RequestId", request_id)
                    .flush(std::io::stdout().lock())
            {
                tracing::warn!(error = %err, "could not write the EMF metrics");
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    }))
    .await
}

/// Handles one invocation: the records in order, and the partial batch
/// response naming those to retry.
pub async fn handle_event<S: Store>(
    consumer: &Consumer<S>,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    handle_event_with(consumer, event, None).await
}

async fn handle_event_with<S: Store>(
    consumer: &Consumer<S>,
    event: LambdaEvent<SqsEvent>,
    visibility: Option<&RetryVisibility>,
) -> SqsBatchResponse {
    let remaining = match event.context.deadline().duration_since(SystemTime::now()) {
        Ok(remaining) => remaining,
        // Long before any invocation could have started: no deadline given.
        Err(past) if past.duration() > LONGEST_TIMEOUT => {
            tracing::debug!(
                budget_ms = NO_DEADLINE_BUDGET.as_millis(),
                "the invocation has no deadline; using the fallback budget"
            );
            NO_DEADLINE_BUDGET
        }
        Err(_) => Duration::ZERO,
    };
    let remaining = remaining.saturating_sub(safety_margin(remaining));
    let deadline = Instant::now() + remaining;
    tracing::debug!(
        records = event.payload.records.len(),
        remaining_ms = remaining.as_millis(),
        "invocation"
    );
    handle_records_with(consumer, event.payload.records, Some(deadline), visibility).await
}

/// Handles records (the body of [`handle_event`], without the Lambda context).
pub async fn handle_records<S: Store>(
    consumer: &Consumer<S>,
    records: Vec<SqsMessage>,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    handle_records_with(consumer, records, deadline, None).await
}

/// [`handle_records`], then, with `visibility`, each record to retry made
/// invisible for its retry delay (see [`run_with_backoff`]).
pub async fn handle_records_with<S: Store>(
    consumer: &Consumer<S>,
    records: Vec<SqsMessage>,
    deadline: Option<Instant>,
    visibility: Option<&RetryVisibility>,
) -> SqsBatchResponse {
    let arns: Vec<Option<String>> = records.iter().map(|r| r.event_source_arn.clone()).collect();
    let ungrouped = records
        .iter()
        .filter(|r| !r.attributes.contains_key("MessageGroupId"))
        .count();
    if ungrouped > 0 {
        tracing::warn!(
            ungrouped,
            records = records.len(),
            "records without a MessageGroupId: the event source is not a FIFO queue, which keeps no order; they are handled as one group, in batch order (a failure holds back every later one)"
        );
    }
    let (ids, deliveries): (Vec<Option<String>>, Vec<Delivery>) =
        records.into_iter().map(delivery).unzip();
    let outcomes = consumer.handle_batch_until(&deliveries, deadline).await;
    if let Some(visibility) = visibility {
        visibility.apply(&arns, &deliveries, &outcomes).await;
    }
    let mut response = SqsBatchResponse::default();
    for (id, outcome) in ids.into_iter().zip(outcomes) {
        if outcome.is_done() {
            continue;
        }
        match id {
            Some(id) => {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
            None => {
                tracing::error!("a record to retry has no messageId; SQS will count it as handled")
            }
        }
    }
    response
}

/// Makes records to retry invisible for their retry delay, with
/// `ChangeMessageVisibility` on their queue (found from the record's
/// `eventSourceARN`, its URL cached). A record held back behind a failure
/// in its group waits one second longer than that failure, so the group
/// comes back in order. A failure to change visibility is logged: the
/// record then comes back after the queue's visibility timeout.
#[derive(Clone, Debug)]
pub struct RetryVisibility {
    sqs: aws_sdk_sqs::Client,
    urls: Arc<Mutex<HashMap<String, String>>>,
}

impl RetryVisibility {
    /// Changes visibility through `sqs`.
    pub fn new(sqs: aws_sdk_sqs::Client) -> Self {
        RetryVisibility {
            sqs,
            urls: Arc::default(),
        }
    }

    async fn apply(
        &self,
        arns: &[Option<String>],
        deliveries: &[Delivery],
        outcomes: &[DeliveryOutcome],
    ) {
        let mut group_delay: HashMap<&str, Duration> = HashMap::new();
        let mut by_queue: HashMap<&str, Vec<(&Receipt, Duration)>> = HashMap::new();
        for ((arn, delivery), outcome) in arns.iter().zip(deliveries).zip(outcomes) {
            let delay = match outcome {
                DeliveryOutcome::Retry(delay) => {
                    group_delay.entry(&delivery.group).or_insert(*delay);
                    *delay
                }
                DeliveryOutcome::HeldBack => {
                    group_delay
                        .get(delivery.group.as_str())
                        .copied()
                        .unwrap_or_default()
                        + Duration::from_secs(1)
                }
                _ => continue,
            };
            match arn {
                Some(arn) => by_queue
                    .entry(arn)
                    .or_default()
                    .push((&delivery.receipt, delay)),
                None => tracing::warn!(
                    "a record to retry has no eventSourceARN; its visibility is left alone"
                ),
            }
        }
        for (arn, records) in by_queue {
            if let Err(err) = self.change(arn, &records).await {
                tracing::warn!(%arn, error = %err, "could not delay records to retry; they come back after the queue's visibility timeout");
            }
        }
    }

    async fn change(&self, arn: &str, records: &[(&Receipt, Duration)]) -> Result<(), String> {
        let url = self.queue_url(arn).await?;
        SqsReceiver::new(self.sqs.clone(), url)
            .change_visibility(records)
            .await
            .map_err(|err| err.to_string())
    }

    /// The URL of the queue `arn` names (`arn:aws:sqs:REGION:ACCOUNT:NAME`).
    async fn queue_url(&self, arn: &str) -> Result<String, String> {
        if let Some(url) = self
            .urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(arn)
        {
            return Ok(url.clone());
        }
        let mut parts = arn.rsplitn(3, ':');
        let (Some(name), Some(account)) = (parts.next(), parts.next()) else {
            return Err(format!("{arn} is not a queue ARN"));
        };
        let url = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|err| aws_sdk_sqs::error::DisplayErrorContext(err).to_string())?
            .queue_url
            .ok_or_else(|| format!("no URL for {arn}"))?;
        self.urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(arn.to_owned(), url.clone());
        Ok(url)
    }
}

/// A record as a delivery: its group is the `MessageGroupId` attribute (the
/// empty group without one), its receive count `ApproximateReceiveCount`.
/// A record without a body is delivered as an empty body, which the
/// consumer dead-letters as poison.
fn delivery(record: SqsMessage) -> (Option<String>, Delivery) {
    let group = record
        .attributes
        .get("MessageGroupId")
        .cloned()
        .unwrap_or_default();
    let receive_count = record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let sent_at = record
        .attributes
        .get("SentTimestamp")
        .and_then(|ms| crate::transport::millis_timestamp(ms));
    let delivery = Delivery {
        body: record.body.unwrap_or_default(),
        group,
        receive_count,
        receipt: Receipt(record.receipt_handle.unwrap_or_default()),
        message_id: None,
        sent_at,
    };
    (record.message_id, delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_leaves_most_of_a_short_invocation_to_the_work() {
        assert_eq!(
            safety_margin(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(900)),
            Duration::from_secs(2)
        );
        assert_eq!(safety_margin(Duration::ZERO), Duration::ZERO);
    }
}

//! The Lambda consumer: `lambda_runtime` with SQS events, reporting partial
//! batch failures.
//!
//! A function on an SQS FIFO event source (with `ReportBatchItemFailures`)
//! calls [`run`] from `main`. Each invocation carries a batch of records in
//! queue order; the [`Consumer`] handles them: pump records drain the outbox
//! (bounded by the invocation's remaining time, re-pumping if it runs out),
//! envelopes are dispatched with the inbox. The response lists the records
//! to retry: those that failed, and, because the queue is FIFO, the later
//! records of their groups, which are not run. Poison records are
//! dead-lettered in the store and acknowledged.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn example() -> Result<(), lambda_runtime::Error> {
//! use std::sync::Arc;
//! use outbox_runtime::{Consumer, Dispatcher, SqliteStore};
//!
//! let store = SqliteStore::open("sqlite:///tmp/outbox.db").await?;
//! let dispatcher = Arc::new(Dispatcher::from_registry()?);
//! outbox_runtime::lambda::run(Consumer::new(store, dispatcher)).await
//! # }
//! ```

use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{LambdaEvent, service_fn};
use tokio::time::Instant;

use crate::consumer::Consumer;
use crate::store::Store;
use crate::transport::{Delivery, Receipt};

/// Time kept back from the invocation's deadline for answering the runtime:
/// a tenth of the time left, at most two seconds.
fn safety_margin(remaining: Duration) -> Duration {
    (remaining / 10).min(Duration::from_secs(2))
}

/// Serves SQS events with `consumer` until the Lambda runtime stops the process.
pub async fn run<S: Store>(consumer: Consumer<S>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let consumer = consumer.clone();
        async move { Ok::<_, std::convert::Infallible>(handle_event(&consumer, event).await) }
    }))
    .await
}

/// Handles one invocation: the records in order, and the partial batch
/// response naming those to retry.
pub async fn handle_event<S: Store>(
    consumer: &Consumer<S>,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let remaining = event
        .context
        .deadline()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let remaining = remaining.saturating_sub(safety_margin(remaining));
    let deadline = Instant::now() + remaining;
    tracing::debug!(
        records = event.payload.records.len(),
        remaining_ms = remaining.as_millis(),
        "invocation"
    );
    handle_records(consumer, event.payload.records, Some(deadline)).await
}

/// Handles records (the body of [`handle_event`], without the Lambda context).
pub async fn handle_records<S: Store>(
    consumer: &Consumer<S>,
    records: Vec<SqsMessage>,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let (ids, deliveries): (Vec<Option<String>>, Vec<Delivery>) =
        records.into_iter().map(delivery).unzip();
    let outcomes = consumer.handle_batch_until(&deliveries, deadline).await;
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

/// A record as a delivery. A record without a body is delivered as an empty
/// body, which the consumer dead-letters as poison.
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
    let delivery = Delivery {
        body: record.body.unwrap_or_default(),
        group,
        receive_count,
        receipt: Receipt(record.receipt_handle.unwrap_or_default()),
        message_id: None,
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

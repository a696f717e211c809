//! The SQS event source mapping, played locally: what Lambda does between a
//! queue and a function, for running a function on your machine (under
//! cargo-lambda's runtime emulator, or in-process) against a real or local
//! SQS queue.
//!
//! One [`EventSourceMapping::play_once`] receives up to the batch size of
//! messages (long-polling up to a second), makes them an [`SqsEvent`] with
//! the records Lambda sends (body, ids, every system attribute,
//! `eventSourceARN`, `awsRegion`; message attributes are not passed), invokes
//! the function, and deletes what succeeded: with `ReportBatchItemFailures`
//! every record the response does not name, without it the whole batch. An
//! invocation that fails deletes nothing; the batch comes back after the
//! queue's visibility timeout, and the queue's redrive policy counts the
//! receives, as on AWS.
//!
//! Not played: Lambda's concurrency (one batch at a time here), its
//! scaling, and batching windows.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_runtime::lambda::event_source::{EventSourceMapping, LocalFunction};
//!
//! let sdk = outbox_runtime::aws::sdk_config().await;
//! let sqs = aws_sdk_sqs::Client::new(&sdk);
//! let url = "http://127.0.0.1:4599/123456789012/orders.fifo";
//! let mapping = EventSourceMapping::for_queue(sqs, url).await?.batch_size(10);
//! // The consumer function, started under `cargo lambda watch` on port 9000.
//! let function = LocalFunction::emulator(9000);
//! // Play until your own condition holds (here: 100 rounds). A round that
//! // receives nothing does not mean the queue is empty: a FIFO group whose
//! // records wait out their visibility timeout is invisible meanwhile.
//! for _ in 0..100 {
//!     let played = mapping.play_once(|event| function.invoke_sqs(event)).await?;
//!     println!("{} received, {} to retry", played.received, played.retried.len());
//! }
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};

/// The largest batch one receive returns (`ReceiveMessage`'s limit, and
/// Lambda's batch limit on a FIFO queue).
pub const MAX_BATCH: i32 = 10;

/// The event source mapping from one SQS queue to one function.
#[derive(Clone, Debug)]
pub struct EventSourceMapping {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    batch_size: i32,
    report_batch_item_failures: bool,
    wait: Duration,
}

/// What one [`EventSourceMapping::play_once`] did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Played {
    /// The messages received and handed to the function. 0 when none
    /// arrived within the wait time, which on a FIFO queue also happens
    /// while every waiting group has a record in flight.
    pub received: usize,
    /// The messages left on the queue for a retry: the batch item failures
    /// the function reported. They come back after the queue's visibility
    /// timeout (or sooner, if their visibility is changed).
    pub retried: Vec<Message>,
}

/// Playing the event source mapping failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlayError {
    /// The batch size is not 1 to [`MAX_BATCH`].
    #[error("batch size {0} is not 1 to 10 (the most one SQS receive returns)")]
    BatchSize(i32),
    /// An SQS call failed (the action and the error).
    #[error("SQS {action} on {queue}: {error}")]
    Sqs {
        /// The action (`ReceiveMessage`, `DeleteMessageBatch`, ...).
        action: &'static str,
        /// The queue's URL.
        queue: String,
        /// The error, with its context.
        error: String,
    },
    /// The function's invocation failed; nothing of the batch was deleted.
    #[error("the invocation failed: {0}")]
    Invoke(Box<dyn std::error::Error + Send + Sync>),
    /// The function's response named a record that was not in the batch.
    /// Lambda then fails the whole batch: nothing was deleted.
    #[error(
        "the function reported batch item failure {0:?}, which is not a record of the batch; nothing was deleted"
    )]
    UnknownItem(String),
    /// A received message has no receipt handle, so it cannot be deleted.
    #[error("SQS returned message {0:?} without a receipt handle")]
    NoReceipt(String),
}

impl EventSourceMapping {
    /// The mapping from the queue at `queue_url`, whose ARN is `queue_arn`
    /// (the records' `eventSourceARN`), as a SAM template's SQS event with
    /// `BatchSize: 10` and `ReportBatchItemFailures` sets it up.
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        queue_arn: impl Into<String>,
    ) -> Self {
        EventSourceMapping {
            sqs,
            queue_url: queue_url.into(),
            queue_arn: queue_arn.into(),
            batch_size: MAX_BATCH,
            report_batch_item_failures: true,
            wait: Duration::from_secs(1),
        }
    }

    /// [`new`](Self::new), with the queue's ARN read from the queue.
    pub async fn for_queue(
        sqs: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
    ) -> Result<Self, PlayError> {
        let queue_url = queue_url.into();
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|err| sqs_error("GetQueueAttributes", &queue_url, err))?
            .attributes
            .and_then(|mut attributes| attributes.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| PlayError::Sqs {
                action: "GetQueueAttributes",
                queue: queue_url.clone(),
                error: "no QueueArn in the answer".into(),
            })?;
        Ok(Self::new(sqs, queue_url, arn))
    }

    /// Up to `size` messages per invocation (default 10; 1 to [`MAX_BATCH`],
    /// checked when played).
    pub fn batch_size(mut self, size: i32) -> Self {
        self.batch_size = size;
        self
    }

    /// Whether the function reports batch item failures (default: yes). Off,
    /// a successful invocation deletes the whole batch, whatever the
    /// response says, as Lambda does.
    pub fn report_batch_item_failures(mut self, on: bool) -> Self {
        self.report_batch_item_failures = on;
        self
    }

    /// How long a receive waits for messages (default 1 s), in whole seconds
    /// rounded up, at most 20 s. Zero is a short poll, which on SQS can
    /// answer empty while messages wait.
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The records Lambda would send for `messages` (received with every
    /// system attribute).
    pub fn event(&self, messages: &[Message]) -> SqsEvent {
        let region = self.sqs.config().region().map(ToString::to_string);
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|message| {
                let mut record = SqsMessage::default();
                record.message_id = message.message_id.clone();
                record.receipt_handle = message.receipt_handle.clone();
                record.body = message.body.clone();
                record.md5_of_body = message.md5_of_body.clone();
                record.attributes = message
                    .attributes
                    .iter()
                    .flatten()
                    .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                    .collect();
                record.event_source = Some("aws:sqs".into());
                record.event_source_arn = Some(self.queue_arn.clone());
                record.aws_region = region.clone();
                record
            })
            .collect();
        event
    }

    /// One round: receive a batch, invoke the function with it through
    /// `invoke`, delete what succeeded. Returns at once, with `received` 0,
    /// when no message arrived within the wait time.
    pub async fn play_once<F, Fut, E>(&self, invoke: F) -> Result<Played, PlayError>
    where
        F: FnOnce(SqsEvent) -> Fut,
        Fut: Future<Output = Result<SqsBatchResponse, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(PlayError::BatchSize(self.batch_size));
        }
        let messages = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch_size)
            .wait_time_seconds(self.wait.as_secs_f64().ceil().min(20.0) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|err| sqs_error("ReceiveMessage", &self.queue_url, err))?
            .messages
            .unwrap_or_default();
        if messages.is_empty() {
            return Ok(Played::default());
        }
        if let Some(message) = messages.iter().find(|m| m.receipt_handle.is_none()) {
            return Err(PlayError::NoReceipt(
                message.message_id.clone().unwrap_or_default(),
            ));
        }
        let response = invoke(self.event(&messages))
            .await
            .map_err(|err| PlayError::Invoke(err.into()))?;
        let failed: Vec<String> = if self.report_batch_item_failures {
            response
                .batch_item_failures
                .into_iter()
                .map(|failure| failure.item_identifier)
                .collect()
        } else {
            Vec::new()
        };
        if let Some(unknown) = failed
            .iter()
            .find(|id| !messages.iter().any(|m| m.message_id() == Some(id.as_str())))
        {
            return Err(PlayError::UnknownItem(unknown.clone()));
        }
        let (retried, done): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| failed.iter().any(|id| m.message_id() == Some(id.as_str())));
        self.delete(&done).await?;
        Ok(Played {
            received: retried.len() + done.len(),
            retried,
        })
    }

    async fn delete(&self, messages: &[Message]) -> Result<(), PlayError> {
        if messages.is_empty() {
            return Ok(());
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle.clone())
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let answer = self
            .sqs
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| sqs_error("DeleteMessageBatch", &self.queue_url, err))?;
        match answer.failed.first() {
            Some(failed) => Err(PlayError::Sqs {
                action: "DeleteMessageBatch",
                queue: self.queue_url.clone(),
                error: format!(
                    "{} of {} not deleted: {} {}",
                    answer.failed.len(),
                    messages.len(),
                    failed.code,
                    failed.message.as_deref().unwrap_or_default()
                ),
            }),
            None => Ok(()),
        }
    }
}

fn sqs_error<E, R>(
    action: &'static str,
    queue: &str,
    err: aws_sdk_sqs::error::SdkError<E, R>,
) -> PlayError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    PlayError::Sqs {
        action,
        queue: queue.to_owned(),
        error: DisplayErrorContext(err).to_string(),
    }
}

/// A function served by a local Lambda runtime emulator (`cargo lambda
/// watch`), invoked over plain, unsigned HTTP at the emulator's invocation
/// URL: for a local emulator, not for AWS.
#[derive(Clone, Debug)]
pub struct LocalFunction {
    url: String,
    timeout: Duration,
    /// One client for every invocation: its connections are reused.
    client: HttpClient,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// Invoking a [`LocalFunction`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The emulator could not be reached, or the exchange broke off.
    #[error("invoking {url}: {reason}")]
    Unreachable {
        /// The invocation URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the [`LocalFunction::timeout`]. The emulator keeps
    /// the invocation queued until a function takes it.
    #[error("invoking {url}: no answer in {after:?}")]
    Timeout {
        /// The invocation URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The event could not be serialized.
    #[error("the event cannot be serialized: {0}")]
    Event(serde_json::Error),
    /// The function failed: the emulator answered with an error status (an
    /// error the handler returned, or an event the runtime could not
    /// deserialize), or with an `X-Amz-Function-Error` header.
    #[error("the function failed (HTTP {status}): {body}")]
    Function {
        /// The HTTP status.
        status: u16,
        /// The error the function returned.
        body: String,
    },
    /// The response is not the JSON the caller expects.
    #[error("the function's response is not the expected JSON: {error}: {body}")]
    Response {
        /// The parse error.
        error: serde_json::Error,
        /// The response.
        body: String,
    },
}

impl LocalFunction {
    /// The function behind the invocation URL `url`, such as
    /// `http://127.0.0.1:9000/2015-03-31/functions/NAME/invocations`.
    pub fn new(url: impl Into<String>) -> Self {
        LocalFunction {
            url: url.into(),
            timeout: Duration::from_secs(30),
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }

    /// The function started by hand against `cargo lambda watch
    /// --only-lambda-apis -A 127.0.0.1 -P PORT` (the emulator serves a
    /// function it did not start under the name `_`).
    pub fn emulator(port: u16) -> Self {
        Self::new(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
    }

    /// How long an invocation may take (default 30 s, the sample template's
    /// function timeout). The emulator waits for a function forever, even
    /// one that is not running.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Invokes the function with `event`; returns its response, read as `R`.
    pub async fn invoke<T, R>(&self, event: T) -> Result<R, InvokeError>
    where
        T: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        let text = self.invoke_text(&event).await?;
        serde_json::from_str(&text).map_err(|error| InvokeError::Response { error, body: text })
    }

    /// Invokes an SQS consumer with `event`; returns its partial batch
    /// response, read as Lambda reads it: an empty or `null` response, or an
    /// object without `batchItemFailures` (or with `null`), reports no
    /// failure; a response that is not a partial batch response is an error.
    pub async fn invoke_sqs(&self, event: SqsEvent) -> Result<SqsBatchResponse, InvokeError> {
        let text = self.invoke_text(&event).await?;
        batch_response(&text).map_err(|error| InvokeError::Response { error, body: text })
    }

    async fn invoke_text<T: serde::Serialize>(&self, event: &T) -> Result<String, InvokeError> {
        let body = serde_json::to_vec(event).map_err(InvokeError::Event)?;
        let (status, function_error, text) = tokio::time::timeout(self.timeout, self.post(body))
            .await
            .map_err(|_| InvokeError::Timeout {
                url: self.url.clone(),
                after: self.timeout,
            })??;
        if status != 200 || function_error {
            return Err(InvokeError::Function { status, body: text });
        }
        Ok(text)
    }

    async fn post(&self, body: Vec<u8>) -> Result<(u16, bool, String), InvokeError> {
        use http_body_util::{BodyExt as _, Full};

        let request = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|err| self.unreachable(err.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| self.unreachable(err.to_string()))?;
        let status = response.status().as_u16();
        let function_error = response.headers().contains_key("x-amz-function-error");
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| self.unreachable(err.to_string()))?
            .to_bytes();
        Ok((
            status,
            function_error,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    fn unreachable(&self, reason: String) -> InvokeError {
        InvokeError::Unreachable {
            url: self.url.clone(),
            reason,
        }
    }
}

/// A partial batch response as Lambda reads it: an empty or `null`
/// response, or an object without `batchItemFailures` (or with `null`),
/// reports no failure. Anything else that is not a partial batch response
/// is an error.
fn batch_response(text: &str) -> Result<SqsBatchResponse, serde_json::Error> {
    let value: serde_json::Value = match text.trim() {
        "" => return Ok(SqsBatchResponse::default()),
        trimmed => serde_json::from_str(trimmed)?,
    };
    match &value {
        serde_json::Value::Null => Ok(SqsBatchResponse::default()),
        serde_json::Value::Object(fields)
            if fields
                .get("batchItemFailures")
                .is_none_or(serde_json::Value::is_null) =>
        {
            Ok(SqsBatchResponse::default())
        }
        _ => serde_json::from_value(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_without_failures_reports_none_as_lambda_reads_it() {
        for empty in [
            "",
            "null",
            "{}",
            r#"{"batchItemFailures": null}"#,
            r#"{"batchItemFailures": []}"#,
        ] {
            let response = batch_response(empty).unwrap();
            assert!(response.batch_item_failures.is_empty(), "{empty:?}");
        }
        let response =
            batch_response(r#"{"batchItemFailures": [{"itemIdentifier": "m-1"}]}"#).unwrap();
        assert_eq!(response.batch_item_failures[0].item_identifier, "m-1");
        assert!(batch_response("not json").is_err());
        for not_a_response in ["\"ok\"", "[]", "42"] {
            assert!(batch_response(not_a_response).is_err(), "{not_a_response}");
        }
        assert!(batch_response(r#"{"batchItemFailures": "m-1"}"#).is_err());
    }
}

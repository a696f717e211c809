//! The AWS path through real clients: `aws-sdk-sqs` against the local
//! SQS-compatible server that `scripts/test` starts (moto), PostgreSQL from
//! `#[sqlx::test]`, and the Lambda consumer's record handling.
//!
//! Each test makes its own queues (unique names), so tests share one server.
//! One test binary, by concern:
//!
//! - [`transport`]: the SQS transport, receiver and worker (batches, groups,
//!   deduplication, per-entry failures, heartbeats);
//! - [`lambda`]: the Lambda consumer's record handling, played against the
//!   queue as the SQS event source mapping would (and its pump);
//! - [`config`]: the database URL from the environment or Secrets Manager;
//! - [`faults`]: the fault scenarios (`scripts/fault-tests.filter` selects
//!   every test under a module named `faults`): a server that goes down,
//!   batches past a request's limit, a failing queue, held-back records,
//!   retry delays and the queue's DLQ.
//!
//! What they share is here: the message and its handler, queues, the
//! effects table.

mod config;
mod faults;
mod lambda;
#[path = "../support/mod.rs"]
mod support;
mod transport;

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use outbox_runtime::{
    Envelope, HandlerContext, OutboxMessage, backoff::Backoff, handler, transport::PublishEntry,
};
use sqlx::PgPool;

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "sqs.step", group = group)]
struct Step {
    group: String,
    n: i64,
    /// Fail the first `fail_first` attempts.
    #[serde(default)]
    fail_first: u32,
}

#[handler(name = "sqs.step.record")]
async fn record(msg: Step, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    anyhow::ensure!(
        ctx.attempt() > msg.fail_first,
        "step {} fails attempt {}",
        msg.n,
        ctx.attempt()
    );
    let id = ctx.message_id().to_string();
    sqlx::query("INSERT INTO effects (message_id, grp, n) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(&msg.group)
        .bind(msg.n)
        .execute(ctx.db::<sqlx::Postgres>()?)
        .await?;
    Ok(())
}

fn step(group: &str, n: i64) -> Step {
    Step {
        group: group.into(),
        n,
        fail_first: 0,
    }
}

async fn client() -> Client {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run scripts/test, which starts the local SQS server (moto) and sets it"
    );
    Client::new(&outbox_runtime::aws::sdk_config().await)
}

/// A FIFO queue with a short visibility timeout and, optionally, a FIFO DLQ
/// after `max_receives`. Returns (queue URL, DLQ URL).
async fn fifo_queue(client: &Client, max_receives: Option<u32>) -> (String, Option<String>) {
    let name = format!("t-{}", uuid::Uuid::now_v7().simple());
    let dlq = match max_receives {
        None => None,
        Some(_) => {
            let url = client
                .create_queue()
                .queue_name(format!("{name}-dlq.fifo"))
                .attributes(QueueAttributeName::FifoQueue, "true")
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap();
            let arn = client
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap()
                .remove(&QueueAttributeName::QueueArn)
                .unwrap();
            Some((url, arn))
        }
    };
    let mut create = client
        .create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "1");
    if let (Some((_, arn)), Some(max)) = (&dlq, max_receives) {
        create = create.attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max}"}}"#),
        );
    }
    let url = create.send().await.unwrap().queue_url.unwrap();
    (url, dlq.map(|(url, _)| url))
}

async fn effects_table(pool: &PgPool) {
    sqlx::query("CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL, grp TEXT NOT NULL, n BIGINT NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

async fn effects(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT grp, n FROM effects ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn entries(envelopes: &[Envelope]) -> Vec<PublishEntry<'_>> {
    envelopes
        .iter()
        .map(|e| PublishEntry {
            envelope: e,
            queue: None,
            body: e.to_json(),
        })
        .collect()
}

fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(10),
        multiplier: 1.0,
        jitter: false,
    }
}

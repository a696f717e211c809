//! The sample on AWS Lambda. `main` runs this when the Lambda runtime API is
//! present (`AWS_LAMBDA_RUNTIME_API`); `SAMPLE_APP_ROLE` picks the function.
//!
//! The consumer function sits on the FIFO queue's event source: it drains
//! the outbox on pump messages and dispatches envelopes to the handlers. The
//! api function serves the HTTP API ([`crate::api`]) behind a function URL
//! through `lambda_http`; its transactions pump the queue after commit.
//! Configuration comes from the environment (`outbox_runtime::aws`).

use std::sync::Arc;

use outbox_runtime::aws::{self, QueueConfig};
use outbox_runtime::{Dispatcher, PgStore, Relay, Store, consume::Consumer, pump::Pump};

use crate::db::AppDb;
use crate::table::checked_table;

/// Runs the function `SAMPLE_APP_ROLE` names (default: `consumer`).
pub(crate) async fn run() -> anyhow::Result<()> {
    match std::env::var("SAMPLE_APP_ROLE")
        .as_deref()
        .unwrap_or("consumer")
    {
        "consumer" => consumer().await,
        "api" => api().await,
        other => anyhow::bail!("unknown SAMPLE_APP_ROLE `{other}`: use `consumer` or `api`"),
    }
}

/// What both functions start with: the queues, an SQS client and the
/// migrated store.
async fn connect() -> anyhow::Result<(QueueConfig, aws_sdk_sqs::Client, PgStore)> {
    let sdk = aws::sdk_config().await;
    let queues = QueueConfig::from_env()?;
    let database_url = aws::database_url(&sdk).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&database_url)
        .await?;
    let store = PgStore::new(pool);
    store.migrate().await?;
    store.migrate_app().await?;
    Ok((queues, aws_sdk_sqs::Client::new(&sdk), store))
}

async fn api() -> anyhow::Result<()> {
    checked_table()?;
    let (queues, sqs, store) = connect().await?;
    let pump: Arc<dyn Pump> = Arc::new(queues.pump(sqs));
    lambda_http::run(crate::api::router(store, pump))
        .await
        .map_err(|err| anyhow::anyhow!("lambda runtime: {err}"))
}

async fn consumer() -> anyhow::Result<()> {
    let table = checked_table()?;
    let (queues, sqs, store) = connect().await?;

    let relay = Relay::new(store.clone(), Arc::new(queues.transport(sqs.clone())));
    let consumer = Consumer::new(store, Arc::new(Dispatcher::new(table)))
        .with_relay(Arc::new(relay))
        .with_pump(Arc::new(queues.pump(sqs.clone())));
    outbox_runtime::lambda::run_with_backoff(consumer, sqs)
        .await
        .map_err(|err| anyhow::anyhow!("lambda runtime: {err}"))
}

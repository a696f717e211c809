//! Scenario 7: SQS requests per delivered message. The production path on
//! the local SQS server (`AWS_ENDPOINT_URL`, which `scripts/bench` starts):
//! producers commit one message per transaction at a steady rate and pump
//! after each commit; workers receive from the FIFO queue, drain the relay
//! when a pump arrives, and handle the messages. Every request the SDK
//! sends is counted by operation (an interceptor reads `X-Amz-Target`),
//! retries included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::BoxError;
use aws_sdk_sqs::types::QueueAttributeName;
use outbox_runtime::consume::Consumer;
use outbox_runtime::{
    Dispatcher, PgStore, Relay, Store, StoreExt, Worker, commit_and_pump,
    consume::WorkerConfig,
    transport::sqs::{SqsPump, SqsReceiver, SqsTransport},
};
use tokio::sync::watch;

use crate::Sizes;
use crate::db::Scratch;
use crate::messages::M0;
use crate::report::{Section, count};

/// Requests sent, by operation.
#[derive(Debug, Default)]
struct Requests(Mutex<BTreeMap<String, u64>>);

impl Requests {
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug, Clone)]
struct CountRequests(Arc<Requests>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .map_or("unknown", |target| {
                target.strip_prefix("AmazonSQS.").unwrap_or(target)
            })
            .to_owned();
        *self
            .0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_default() += 1;
        Ok(())
    }
}

pub(crate) async fn run(sizes: Sizes, server: &str) -> anyhow::Result<Section> {
    anyhow::ensure!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "scenario 7 needs the local SQS server: run it through scripts/bench, which starts it \
         and sets AWS_ENDPOINT_URL"
    );
    let scratch = Scratch::create(server, "sqs").await?;
    let pool = scratch.pool(16).await?;
    let store = PgStore::new(pool.clone());
    store.migrate().await?;

    let requests = Arc::new(Requests::default());
    let sdk = outbox_runtime::aws::sdk_config().await;
    let client = Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .interceptor(CountRequests(Arc::clone(&requests)))
            .build(),
    );

    let mut section = Section::new(
        "7. SQS requests per delivered message",
        "The production path against the local SQS server: producers commit one message per \
         transaction at a steady rate on PostgreSQL and pump after each commit (`SqsPump`, \
         coalesced); 2 workers (`SqsReceiver`) receive, drain the relay when a pump arrives, and \
         handle. Every SDK request counted by operation, retries included, over the whole run \
         (idle long polls too), divided by the messages handled.",
        &[
            "rate (msg/s)",
            "handled",
            "send",
            "pump sends",
            "receive",
            "delete",
            "visibility",
            "requests per message",
        ],
    );
    // The local server's own cost, which bounds the rates worth running.
    let probe_batches = if sizes.quick { 5 } else { 50 };
    let (empty, deep) = server_cost(&client, probe_batches).await?;
    let server = format!(
        "The local server (moto) took {:.0} ms for a `SendMessageBatch` of 10 to an empty FIFO \
         queue and {:.0} ms with {} messages queued (measured before the rate): its FIFO \
         actions take longer the deeper the queue, so the rate is 100 messages/s, where its \
         backlog stays small (higher rates: see Analysis).",
        empty.as_secs_f64() * 1e3,
        deep.as_secs_f64() * 1e3,
        (probe_batches - 1) * 10,
    );
    let (secs, rates): (f64, &[u32]) = if sizes.quick {
        (1.0, &[50])
    } else {
        (10.0, &[100])
    };
    let mut worst = 0.0_f64;
    let mut failures = Vec::new();
    for &rate in rates {
        eprintln!("sqs: {rate} messages/s for {secs} s");
        let name = format!("bench-{}.fifo", uuid::Uuid::now_v7().simple());
        let url = client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .send()
            .await?
            .queue_url
            .ok_or_else(|| anyhow::anyhow!("no queue URL"))?;
        requests.take();
        let (handled, counted) = match steady(
            &store,
            &client,
            &url,
            &requests,
            rate,
            Duration::from_secs_f64(secs),
        )
        .await
        {
            Ok(result) => result,
            // Recorded, not hidden: the report shows the failed rate, and the
            // run goes on to the other scenarios.
            Err(err) => {
                eprintln!("sqs: {rate} messages/s failed: {err:#}");
                failures.push(format!("at {rate} messages/s: {err:#}"));
                // One line, no `|`: it goes into a table cell.
                let cell = format!("failed: {err:#}").replace(['|', '\n'], " ");
                let mut row = vec![rate.to_string(), cell];
                row.extend(std::iter::repeat_n("—".to_owned(), 6));
                section.row(row);
                break;
            }
        };
        let get = |op: &str| counted.get(op).copied().unwrap_or(0);
        let total: u64 = counted.values().sum();
        let per = total as f64 / handled.max(1) as f64;
        worst = worst.max(per);
        section.row(vec![
            rate.to_string(),
            count(handled as f64),
            get("SendMessageBatch").to_string(),
            get("SendMessage").to_string(),
            get("ReceiveMessage").to_string(),
            (get("DeleteMessageBatch") + get("DeleteMessage")).to_string(),
            (get("ChangeMessageVisibilityBatch") + get("ChangeMessageVisibility")).to_string(),
            format!("{per:.2}"),
        ]);
    }
    section.verdict = if failures.is_empty() {
        format!(
            "At most {worst:.2} requests per delivered message at these rates; the goal is 0.5 \
             or fewer at steady load. {server}"
        )
    } else {
        format!(
            "{} The goal is 0.5 or fewer at steady load. **Failed** {} (see Analysis); the \
             higher rates were not run. {server}",
            if worst > 0.0 {
                format!(
                    "At most {worst:.2} requests per delivered message at the rates that completed."
                )
            } else {
                "No rate completed.".to_owned()
            },
            failures.join("; ")
        )
    };
    pool.close().await;
    scratch.drop_db().await?;
    Ok(section)
}

/// Sends `batches` batches of 10 messages (100 groups) to a new FIFO queue
/// and returns how long the first and the last took.
async fn server_cost(client: &Client, batches: usize) -> anyhow::Result<(Duration, Duration)> {
    let url = client
        .create_queue()
        .queue_name(format!("probe-{}.fifo", uuid::Uuid::now_v7().simple()))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await?
        .queue_url
        .ok_or_else(|| anyhow::anyhow!("no queue URL"))?;
    let took = send_batches(client, &url, batches).await;
    let deleted = client.delete_queue().queue_url(&url).send().await;
    let took = took?;
    deleted?;
    Ok((took[0], took[took.len() - 1]))
}

/// Sends `batches` batches of 10 messages to `url`; returns how long each
/// took.
async fn send_batches(client: &Client, url: &str, batches: usize) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(batches);
    for batch in 0..batches.max(1) {
        let mut send = client.send_message_batch().queue_url(url);
        for i in 0..10 {
            send = send.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body("x".repeat(400))
                    .message_group_id(format!("customer-{}", (batch * 10 + i) % 100))
                    .message_deduplication_id(uuid::Uuid::now_v7().to_string())
                    .build()?,
            );
        }
        let started = Instant::now();
        send.send().await?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// Commits `rate` messages a second for `length`, in 100 groups, and waits
/// until all are handled; returns how many were, and the requests counted.
async fn steady(
    store: &PgStore,
    client: &Client,
    url: &str,
    requests: &Requests,
    rate: u32,
    length: Duration,
) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let transport = Arc::new(SqsTransport::new(client.clone(), url));
    let pump = SqsPump::new(client.clone(), url);
    let relay = Relay::new(store.clone(), transport);
    let worker = Worker::new(
        Consumer::new(store.clone(), Arc::new(Dispatcher::from_registry()?))
            .with_relay(Arc::new(relay))
            .with_pump(Arc::new(pump.clone())),
        Arc::new(SqsReceiver::new(client.clone(), url)),
    )
    .with_config(WorkerConfig {
        wait: Duration::from_secs(1),
        retention: None,
        ..WorkerConfig::default()
    });
    let (stop, stopped) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (worker, mut stopped) = (worker.clone(), stopped.clone());
        workers.spawn(async move {
            worker
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
    }

    let n = (f64::from(rate) * length.as_secs_f64()) as u64;
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let started = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for i in 0..n {
        let at = started + every.mul_f64(i as f64);
        let (store, pump) = (store.clone(), pump.clone());
        producers.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut tx = store.begin().await?;
            store
                .enqueue(
                    &mut tx,
                    &M0 {
                        order_id: i as i64,
                        customer: format!("customer-{}", i % 100),
                        amount_cents: 1999,
                        note: "gift wrap".into(),
                    },
                )
                .await?;
            commit_and_pump(tx, &pump).await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = producers.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while worker.metrics().snapshot().handled < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {n} handled after 2 minutes",
            worker.metrics().snapshot().handled
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handled = worker.metrics().snapshot().handled;
    let counted = requests.take();
    let _ = stop.send(true);
    while workers.join_next().await.is_some() {}
    Ok((handled, counted))
}

//! The AWS path through real clients: `aws-sdk-sqs` against the local
//! SQS-compatible server that `scripts/test` starts (moto), PostgreSQL from
//! `#[sqlx::test]`, and the Lambda consumer's record handling.
//!
//! Each test makes its own queues (unique names), so tests share one server.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use outbox_runtime::{
    Dispatcher, Envelope, HandlerContext, OutboxMessage, PgStore, Relay, Store, Worker,
    backoff::Backoff,
    consume::{Consumer, ConsumerConfig, WorkerConfig},
    envelope::OutgoingEnvelope,
    handler,
    pump::is_pump,
    relay::RelayConfig,
    transport::sqs::{SqsPump, SqsReceiver, SqsTransport},
    transport::{EntryErrorKind, PublishEntry, Receiver, Transport, TransportError},
};
use sqlx::PgPool;

#[path = "support/mod.rs"]
mod support;

use support::fault_report;
use support::process::{Process, free_port, wait_for_port_async};

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

#[tokio::test]
async fn batches_carry_groups_and_dedup_ids_and_keep_order() {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let transport = SqsTransport::new(client.clone(), &url);
    let envelopes: Vec<Envelope> = (0..12)
        .map(|i| Envelope::from_message(&step(if i % 2 == 0 { "even" } else { "odd" }, i)).unwrap())
        .collect();
    // Twelve entries are more than one SendMessageBatch: the relay chunks by
    // `max_batch`, as it would.
    assert_eq!(transport.max_batch(), 10);
    for chunk in envelopes.chunks(10) {
        let results = transport.publish(&entries(chunk)).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    // The same ids again, as a relay that lost its lease would: deduplicated.
    transport.publish(&entries(&envelopes[..2])).await.unwrap();

    let receiver = SqsReceiver::new(client.clone(), &url);
    let mut seen: Vec<(String, i64, u32)> = Vec::new();
    while seen.len() < 12 {
        let batch = receiver.receive(10, Duration::from_secs(1)).await.unwrap();
        assert!(!batch.is_empty(), "messages missing after {seen:?}");
        for d in &batch {
            let envelope = Envelope::from_json(&d.body).unwrap();
            assert_eq!(
                d.group, envelope.group,
                "MessageGroupId is the envelope's group"
            );
            seen.push((
                d.group.clone(),
                Step::decode(&envelope.payload).unwrap().n,
                d.receive_count,
            ));
        }
        let receipts: Vec<_> = batch.into_iter().map(|d| d.receipt).collect();
        receiver.ack(&receipts).await.unwrap();
    }
    assert!(
        receiver
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "duplicates were dropped"
    );
    let evens: Vec<i64> = seen.iter().filter(|s| s.0 == "even").map(|s| s.1).collect();
    let odds: Vec<i64> = seen.iter().filter(|s| s.0 == "odd").map(|s| s.1).collect();
    assert_eq!(evens, [0, 2, 4, 6, 8, 10]);
    assert_eq!(odds, [1, 3, 5, 7, 9, 11]);
    assert!(seen.iter().all(|s| s.2 == 1));
}

#[tokio::test]
async fn oversized_and_unroutable_entries_fail_with_their_group_only() {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let transport = SqsTransport::new(client.clone(), &url).with_max_body_bytes(400);
    let envelopes = [
        Envelope::from_message(&step("big", 1)).unwrap(),
        Envelope::from_message(&step("big", 2)).unwrap(),
        Envelope::from_message(&step("small", 1)).unwrap(),
    ];
    let mut list = entries(&envelopes);
    list[0].body = format!("{:width$}", list[0].body, width = 500);
    let mut routed = entries(&envelopes[2..]);
    routed[0].queue = Some("billing-events");

    let results = transport.publish(&list).await.unwrap();
    let first = results[0].as_ref().unwrap_err();
    assert_eq!(first.kind, EntryErrorKind::Permanent);
    assert!(
        first
            .message
            .starts_with("message body is 500 bytes; SQS accepts at most 400"),
        "{first}"
    );
    assert!(
        results[1]
            .as_ref()
            .is_err_and(|e| e.kind == EntryErrorKind::HeldBack),
        "held back behind its group's failure"
    );
    assert!(results[2].is_ok());

    let results = transport.publish(&routed).await.unwrap();
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.kind, EntryErrorKind::Retry);
    assert_eq!(
        err.message,
        "no queue URL for logical queue `billing-events`; set OUTBOX_QUEUE_URL_BILLING_EVENTS"
    );
}

/// Ten bodies of 200 KiB each: every one fits SQS's limit for a message,
/// together they pass its limit for one `SendMessageBatch` request (1 MiB,
/// which the local server enforces as AWS does).
#[tokio::test]
async fn a_batch_larger_than_one_request_allows_is_sent_in_several() {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let transport = SqsTransport::new(client.clone(), &url);
    let envelopes: Vec<Envelope> = (0..10)
        .map(|n| {
            let mut envelope = Envelope::from_message(&step("big", n)).unwrap();
            envelope.payload = serde_json::value::RawValue::from_string(format!(
                r#"{{"group":"big","n":{n},"pad":"{}"}}"#,
                "x".repeat(200 * 1024)
            ))
            .unwrap();
            envelope
        })
        .collect();
    let results = transport.publish(&entries(&envelopes)).await.unwrap();
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().filter_map(|r| r.as_ref().err()).next()
    );
}

/// Messages for two queues, one of which does not exist, in either order:
/// what SQS accepted for the good queue is reported accepted, whatever
/// happened to the other call, and the refused entry counts against its
/// row (a queue that does not exist will not appear by retrying; the row
/// ends dead instead of waiting for ever).
#[tokio::test]
async fn what_one_queue_accepted_is_kept_when_another_queue_fails() {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let missing = url.replace(".fifo", "-missing.fifo");
    let transport = SqsTransport::new(client.clone(), &url).with_queue("missing", &missing);
    for missing_first in [false, true] {
        let envelopes = [
            Envelope::from_message(&step("a", 1)).unwrap(),
            Envelope::from_message(&step("b", 1)).unwrap(),
        ];
        let mut list = entries(&envelopes);
        let (good, bad) = if missing_first { (1, 0) } else { (0, 1) };
        list[bad].queue = Some("missing");
        let results = transport
            .publish(&list)
            .await
            .expect("one queue's call succeeded");
        assert!(results[good].is_ok(), "{:?}", results[good]);
        let err = results[bad].as_ref().unwrap_err();
        assert_eq!(err.kind, EntryErrorKind::Retry, "{err}");
    }
}

#[tokio::test]
async fn a_queue_that_is_down_is_a_transport_error() {
    let sdk = outbox_runtime::aws::sdk_config().await;
    let config = aws_sdk_sqs::config::Builder::from(&sdk)
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let down = Client::from_conf(config);
    let transport = SqsTransport::new(down.clone(), "http://127.0.0.1:9/123456789012/gone.fifo");
    let envelope = Envelope::from_message(&step("g", 1)).unwrap();
    let err = transport
        .publish(&entries(std::slice::from_ref(&envelope)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unavailable(_)), "{err}");
    let receiver = SqsReceiver::new(down, "http://127.0.0.1:9/123456789012/gone.fifo");
    assert!(receiver.receive(1, Duration::ZERO).await.is_err());
}

#[sqlx::test(migrations = false)]
async fn relay_and_long_poll_worker_deliver_exactly_once_in_group_order(pool: PgPool) {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;

    let mut flaky = step("a", 0);
    flaky.fail_first = 1;
    let mut messages = vec![flaky];
    messages.extend((1..5).map(|n| step("a", n)));
    messages.extend((0..5).map(|n| step("b", n)));
    let mut tx = pool.begin().await.unwrap();
    let outgoing: Vec<OutgoingEnvelope> = messages
        .iter()
        .map(|m| OutgoingEnvelope::new(m).unwrap())
        .collect();
    store.enqueue_all(&mut tx, &outgoing).await.unwrap();
    tx.commit().await.unwrap();

    let relay = Relay::new(
        store.clone(),
        Arc::new(SqsTransport::new(client.clone(), &url)),
    );
    let report = relay.drain().await.unwrap();
    assert_eq!(report.published, 10);

    let dispatcher = Arc::new(Dispatcher::from_registry().unwrap());
    let worker = Worker::new(
        Consumer::new(store.clone(), dispatcher).with_config(ConsumerConfig {
            retry_backoff: fast(),
            ..ConsumerConfig::default()
        }),
        Arc::new(SqsReceiver::new(client.clone(), &url)),
    )
    .with_config(WorkerConfig {
        wait: Duration::from_secs(1),
        retention: None,
        ..WorkerConfig::default()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while effects(&pool).await.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {:?}",
            effects(&pool).await
        );
        worker.run_once().await.unwrap();
    }
    let got = effects(&pool).await;
    let per = |g: &str| {
        got.iter()
            .filter(|e| e.0 == g)
            .map(|e| e.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        per("a"),
        [0, 1, 2, 3, 4],
        "a's retry held its later messages back"
    );
    assert_eq!(per("b"), [0, 1, 2, 3, 4]);
    assert_eq!(worker.metrics().snapshot().handler_failures, 1);
}

/// Plays the SQS event source mapping against `handle_records`: receive up
/// to 10, hand them over as Lambda records, delete the successes, leave the
/// failures to the visibility timeout and the redrive policy.
async fn deliver_as_lambda(
    client: &Client,
    url: &str,
    consumer: &Consumer<PgStore>,
) -> (usize, Vec<String>) {
    deliver_as_lambda_with(client, url, consumer, None, false).await
}

/// [`deliver_as_lambda`], with the records' visibility changed to their
/// retry delays when `visibility` is given, or, with `release_now`, the
/// failed records made visible again at once, in order (moto may break a
/// group's order when its messages time out together; see TOOLING.md).
async fn deliver_as_lambda_with(
    client: &Client,
    url: &str,
    consumer: &Consumer<PgStore>,
    visibility: Option<&outbox_runtime::lambda::RetryVisibility>,
    release_now: bool,
) -> (usize, Vec<String>) {
    let arn = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    let received = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap();
    let messages = received.messages.unwrap_or_default();
    let records: Vec<aws_lambda_events::event::sqs::SqsMessage> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, serde_json::Value> = m
                .attributes()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::from_value(serde_json::json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
            }))
            .unwrap()
        })
        .collect();
    let response =
        outbox_runtime::lambda::handle_records_with(consumer, records, None, visibility).await;
    let failed: Vec<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    for m in &messages {
        let to_retry = failed.iter().any(|f| Some(f.as_str()) == m.message_id());
        if !to_retry {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        } else if release_now {
            client
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        }
    }
    (messages.len(), failed)
}

/// On Lambda, attempts are the handler's own failed runs too: the record
/// held back behind its group's failing head is received (and counted by
/// SQS) three times, but its handler's first run is attempt 1.
#[sqlx::test(migrations = false)]
async fn on_lambda_a_held_back_record_uses_no_attempts(pool: PgPool) {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    let mut head = step("g", 0);
    head.fail_first = 2;
    let mut next = step("g", 1);
    next.fail_first = 1;
    let envelopes = [
        Envelope::from_message(&head).unwrap(),
        Envelope::from_message(&next).unwrap(),
    ];
    SqsTransport::new(client.clone(), &url)
        .publish(&entries(&envelopes))
        .await
        .unwrap();
    let consumer = Consumer::new(
        store.clone(),
        Arc::new(Dispatcher::from_registry().unwrap()),
    )
    .with_config(ConsumerConfig {
        retry_backoff: fast(),
        ..ConsumerConfig::default()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while effects(&pool).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not handled in time"
        );
        deliver_as_lambda_with(&client, &url, &consumer, None, true).await;
    }
    assert_eq!(
        effects(&pool).await,
        [("g".to_owned(), 0), ("g".to_owned(), 1)]
    );
    let failures: Vec<(String, i32)> = sqlx::query_as(
        "SELECT message_id::text, failures FROM outbox_attempts ORDER BY failures DESC",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        failures,
        [
            (envelopes[0].id.to_string(), 2),
            (envelopes[1].id.to_string(), 1)
        ],
        "each handler's failed runs, not the record's receives"
    );
}

/// A record to retry waits out its retry delay (here 3 s) before SQS
/// delivers it again, instead of the queue's visibility timeout (1 s): the
/// same failure on a queue delivered without `RetryVisibility` is back
/// after the timeout, which shows the test can tell the two apart.
#[sqlx::test(migrations = false)]
async fn with_backoff_a_record_to_retry_waits_out_its_delay(pool: PgPool) {
    let client = client().await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    let consumer = Consumer::new(
        store.clone(),
        Arc::new(Dispatcher::from_registry().unwrap()),
    )
    .with_config(ConsumerConfig {
        retry_backoff: Backoff {
            initial: Duration::from_secs(3),
            max: Duration::from_secs(3),
            multiplier: 1.0,
            jitter: false,
        },
        ..ConsumerConfig::default()
    });
    let visibility = outbox_runtime::lambda::RetryVisibility::new(client.clone());
    let mut back_after = Vec::new();
    for with_backoff in [true, false] {
        let (url, _) = fifo_queue(&client, None).await;
        let mut failing = step(if with_backoff { "slow" } else { "fast" }, 0);
        failing.fail_first = 1;
        let envelope = Envelope::from_message(&failing).unwrap();
        SqsTransport::new(client.clone(), &url)
            .publish(&entries(std::slice::from_ref(&envelope)))
            .await
            .unwrap();
        let (_, failed) = deliver_as_lambda_with(
            &client,
            &url,
            &consumer,
            with_backoff.then_some(&visibility),
            false,
        )
        .await;
        assert_eq!(failed.len(), 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let back = client
            .receive_message()
            .queue_url(&url)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        back_after.push(!back.is_empty());
    }
    assert_eq!(
        back_after,
        [false, true],
        "after 1.5 s: invisible with backoff, visible again without"
    );
}

#[sqlx::test(migrations = false)]
async fn lambda_reports_a_failed_group_and_the_sqs_dlq_takes_it_after_max_receives(pool: PgPool) {
    let client = client().await;
    let (url, dlq) = fifo_queue(&client, Some(2)).await;
    let dlq = dlq.unwrap();
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;

    // Group "stuck" fails every attempt (its handler allows up to 5, more
    // than the queue's maxReceiveCount of 2); group "fine" flows.
    let mut stuck = step("stuck", 0);
    stuck.fail_first = 99;
    let envelopes = [
        Envelope::from_message(&stuck).unwrap(),
        Envelope::from_message(&step("stuck", 1)).unwrap(),
        Envelope::from_message(&step("fine", 0)).unwrap(),
        Envelope::from_message(&step("fine", 1)).unwrap(),
    ];
    SqsTransport::new(client.clone(), &url)
        .publish(&entries(&envelopes))
        .await
        .unwrap();

    let consumer = Consumer::new(
        store.clone(),
        Arc::new(Dispatcher::from_registry().unwrap()),
    );
    let (received, failed) = deliver_as_lambda(&client, &url, &consumer).await;
    assert_eq!(received, 4);
    assert_eq!(
        failed.len(),
        2,
        "the failing record and the later record of its group"
    );
    assert_eq!(
        effects(&pool).await,
        [("fine".to_owned(), 0), ("fine".to_owned(), 1)]
    );

    // After the visibility timeout the group comes back and fails again;
    // past maxReceiveCount SQS moves the failing message to the DLQ, and the
    // group moves on. Messages held back behind a failure count receives
    // too (as on AWS), so they may follow it into the DLQ: either way each
    // message ends up handled or in the DLQ, and none runs before "stuck" 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut in_dlq: Vec<i64> = Vec::new();
    loop {
        let moved = client
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        for m in &moved {
            let envelope = Envelope::from_json(m.body().unwrap()).unwrap();
            in_dlq.push(Step::decode(&envelope.payload).unwrap().n);
            client
                .delete_message()
                .queue_url(&dlq)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        let handled_stuck = effects(&pool)
            .await
            .iter()
            .filter(|e| e.0 == "stuck")
            .count();
        if in_dlq.contains(&0) && in_dlq.len() + handled_stuck == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: dlq {in_dlq:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        deliver_as_lambda(&client, &url, &consumer).await;
    }
    let got = effects(&pool).await;
    assert!(
        !got.contains(&("stuck".to_owned(), 0)),
        "the failing message never committed"
    );
    assert_eq!(got[..2], [("fine".to_owned(), 0), ("fine".to_owned(), 1)]);
}

/// What the queue gave up on (its DLQ, after `maxReceiveCount` receives:
/// a long database outage on Lambda ends there) comes back into the
/// toolkit's dead letters, to be listed and replayed like any other; the
/// DLQ is emptied.
#[sqlx::test(migrations = false)]
async fn messages_in_the_queues_dlq_are_imported_as_dead_letters(pool: PgPool) {
    let client = client().await;
    let (_, dlq) = fifo_queue(&client, Some(3)).await;
    let dlq = dlq.unwrap();
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    let envelope = Envelope::from_message(&step("outage", 7)).unwrap();
    for (body, group, dedup) in [
        (envelope.to_json(), "outage", envelope.id.to_string()),
        (
            "not an envelope".to_owned(),
            "strange",
            "strange-1".to_owned(),
        ),
    ] {
        client
            .send_message()
            .queue_url(&dlq)
            .message_body(body)
            .message_group_id(group)
            .message_deduplication_id(dedup)
            .send()
            .await
            .unwrap();
    }

    let receiver = SqsReceiver::new(client.clone(), &dlq);
    let imported = outbox_runtime::admin::import_dead_letter_queue(&store, &receiver)
        .await
        .unwrap();
    assert_eq!(imported, 2);
    assert!(
        receiver
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "the DLQ is empty"
    );
    let mut letters = store.dead_letters(10).await.unwrap();
    letters.sort_by_key(|l| l.id);
    let ours = &letters[0];
    assert_eq!(ours.message_id, Some(envelope.id));
    assert_eq!(ours.handler, None, "every handler, under the original id");
    assert_eq!(ours.group.as_deref(), Some("outage"));
    assert_eq!(ours.message_type.as_deref(), Some("sqs.step"));
    assert_eq!(ours.body, envelope.to_json());
    assert!(ours.error.contains("dead-letter queue"), "{}", ours.error);
    assert_eq!(letters[1].message_id, None);
    assert_eq!(letters[1].body, "not an envelope");

    let table = outbox_runtime::dispatch::DispatchTable::from_registry().unwrap();
    let replayed = outbox_runtime::admin::replay_dead_letter(&store, &table, ours.id)
        .await
        .unwrap();
    assert_eq!(replayed.original_id, envelope.id);
}

#[sqlx::test(migrations = false)]
async fn poison_records_are_dead_lettered_and_acknowledged(pool: PgPool) {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    let carrier = Envelope::from_message(&step("p", 0)).unwrap();
    let mut unknown = Envelope::from_message(&step("q", 0)).unwrap();
    unknown.message_type = "nobody.handles.this".into();
    let mut list = entries(std::slice::from_ref(&carrier));
    list[0].body = "{\"not\": \"an envelope\"}".into();
    let transport = SqsTransport::new(client.clone(), &url);
    transport.publish(&list).await.unwrap();
    transport
        .publish(&entries(std::slice::from_ref(&unknown)))
        .await
        .unwrap();

    let consumer = Consumer::new(
        store.clone(),
        Arc::new(Dispatcher::from_registry().unwrap()),
    );
    let (received, failed) = deliver_as_lambda(&client, &url, &consumer).await;
    assert_eq!(
        (received, failed.len()),
        (2, 0),
        "poison is acknowledged, never retried"
    );
    let dead: Vec<(String,)> = sqlx::query_as("SELECT error FROM outbox_dead_letters ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead[0]
            .0
            .starts_with("malformed envelope at `.`: missing field `id`"),
        "{dead:?}"
    );
    assert_eq!(dead[1].0, "unknown message type `nobody.handles.this`");
}

#[sqlx::test(migrations = false)]
async fn a_pump_makes_the_consumer_drain_the_outbox(pool: PgPool) {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    let transport = Arc::new(SqsTransport::new(client.clone(), &url));
    let pump = SqsPump::new(client.clone(), &url);
    let relay = Relay::new(store.clone(), Arc::clone(&transport)).with_config(RelayConfig {
        backoff: fast(),
        ..RelayConfig::default()
    });
    let consumer = Consumer::new(
        store.clone(),
        Arc::new(Dispatcher::from_registry().unwrap()),
    )
    .with_relay(Arc::new(relay))
    .with_pump(Arc::new(pump.clone()));

    // A rolled-back transaction sends no pump and leaves nothing.
    let mut tx = pool.begin().await.unwrap();
    outbox_runtime::StoreExt::enqueue(&store, &mut tx, &step("g", 0))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        deliver_as_lambda(&client, &url, &consumer).await.0,
        0,
        "no pump after a rollback"
    );

    // A committed one: commit, then pump.
    let mut tx = pool.begin().await.unwrap();
    outbox_runtime::StoreExt::enqueue(&store, &mut tx, &step("g", 1))
        .await
        .unwrap();
    outbox_runtime::commit_and_pump(tx, &pump).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while effects(&pool).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        deliver_as_lambda(&client, &url, &consumer).await;
    }
    assert_eq!(effects(&pool).await, [("g".to_owned(), 1)]);
    assert_eq!(store.stats().await.unwrap().pending, 0);

    // A lost pump: the row waits until the sweep's pump arrives.
    let mut tx = pool.begin().await.unwrap();
    outbox_runtime::StoreExt::enqueue(&store, &mut tx, &step("g", 2))
        .await
        .unwrap();
    tx.commit().await.unwrap(); // ... and the pump is lost in transit.
    deliver_as_lambda(&client, &url, &consumer).await;
    assert_eq!(
        store.stats().await.unwrap().pending,
        1,
        "nothing drains without a pump"
    );
    outbox_runtime::pump::Pump::pump(&pump).await.unwrap(); // the sweep
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while effects(&pool).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep did not recover the row"
        );
        deliver_as_lambda(&client, &url, &consumer).await;
    }
    assert!(is_pump(outbox_runtime::pump::PUMP_BODY));
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "sqs.slow", group = "slow")]
struct Slow {
    millis: u64,
}

#[handler(name = "sqs.slow.sleep")]
async fn sleep_a_while(msg: Slow) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(msg.millis)).await;
    Ok(())
}

/// Handles one slow message (2.5 s, on a queue whose visibility timeout is
/// 1 s) while another receiver polls the queue; returns what it saw.
async fn poll_while_a_slow_handler_runs(heartbeat: Option<Duration>, pool: PgPool) -> usize {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let store = PgStore::new(pool);
    store.migrate().await.unwrap();
    let envelope = Envelope::from_message(&Slow { millis: 2500 }).unwrap();
    SqsTransport::new(client.clone(), &url)
        .publish(&entries(std::slice::from_ref(&envelope)))
        .await
        .unwrap();

    let worker = Worker::new(
        Consumer::new(store, Arc::new(Dispatcher::from_registry().unwrap())),
        Arc::new(SqsReceiver::new(client.clone(), &url)),
    )
    .with_config(WorkerConfig {
        wait: Duration::from_secs(1),
        retention: None,
        heartbeat,
        ..WorkerConfig::default()
    });
    let other = SqsReceiver::new(client.clone(), &url);
    let (report, seen) = tokio::join!(worker.run_once(), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        other.receive(10, Duration::from_millis(900)).await.unwrap()
    });
    assert_eq!(report.unwrap().received, 1);
    seen.len()
}

#[sqlx::test(migrations = false)]
async fn a_heartbeat_keeps_a_slow_message_invisible(pool: PgPool) {
    assert_eq!(
        poll_while_a_slow_handler_runs(Some(Duration::from_millis(300)), pool).await,
        0
    );
}

#[sqlx::test(migrations = false)]
async fn without_a_heartbeat_a_slow_message_is_delivered_again(pool: PgPool) {
    assert_eq!(
        poll_while_a_slow_handler_runs(None, pool).await,
        1,
        "the control: the visibility timeout ran out"
    );
}

#[tokio::test]
async fn the_database_url_comes_from_the_environment_or_a_secrets_manager_secret() {
    let _ = client().await; // asserts the local server is configured
    let sdk = outbox_runtime::aws::sdk_config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = secrets
        .create_secret()
        .name(format!("db-{}", uuid::Uuid::now_v7().simple()))
        .secret_string(r#"{"username":"app","password":"s3cr/t!","host":"db.internal","port":5432,"dbname":"orders","engine":"postgres"}"#)
        .send()
        .await
        .unwrap();
    let arn = secret.arn().unwrap().to_owned();

    let from_secret = outbox_runtime::aws::database_url_from(
        |name| (name == "DATABASE_SECRET_ARN").then(|| arn.clone()),
        &sdk,
    )
    .await
    .unwrap();
    assert_eq!(
        from_secret,
        "postgres://app:s3cr%2Ft%21@db.internal:5432/orders?sslmode=require"
    );

    let direct = outbox_runtime::aws::database_url_from(
        |name| (name == "DATABASE_URL").then(|| "postgres://x@y/z".to_owned()),
        &sdk,
    )
    .await
    .unwrap();
    assert_eq!(direct, "postgres://x@y/z", "DATABASE_URL wins");

    let none = outbox_runtime::aws::database_url_from(|_| None, &sdk)
        .await
        .unwrap_err();
    assert_eq!(
        none.to_string(),
        "set DATABASE_URL, or DATABASE_SECRET_ARN to read the credentials from Secrets Manager"
    );
    let missing = outbox_runtime::aws::database_url_from(
        |name| {
            (name == "DATABASE_SECRET_ARN")
                .then(|| "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope".to_owned())
        },
        &sdk,
    )
    .await
    .unwrap_err();
    assert!(
        missing.to_string().starts_with(
            "database secret arn:aws:secretsmanager:us-east-1:123456789012:secret:nope: "
        ),
        "{missing}"
    );
}

/// A moto server of this test's own, to stop and start again.
#[derive(Debug)]
struct OwnMoto {
    python: String,
    port: u16,
    /// Killed when dropped.
    child: Option<Process>,
}

impl OwnMoto {
    async fn start() -> Self {
        let python = std::env::var("OUTBOX_PYTHON").expect(
            "OUTBOX_PYTHON is not set: run scripts/test, which installs moto in .venv and sets it",
        );
        let mut moto = OwnMoto {
            python,
            port: free_port(),
            child: None,
        };
        moto.restart().await;
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = std::process::Command::new(&self.python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto starts");
        self.child = Some(Process(child));
        wait_for_port_async(self.port, "moto").await;
    }

    fn stop(&mut self) {
        self.child = None;
    }
}

/// The queue's server is stopped while the relay runs: rows stay pending,
/// their backoff grows (no busy loop), nothing is dead-lettered; when the
/// server is back (a fresh one, with the queue created again), delivery
/// resumes and every message is handled once, in group order.
#[sqlx::test(migrations = false)]
async fn a_queue_that_goes_down_holds_rows_without_a_busy_loop_and_delivery_resumes(pool: PgPool) {
    let mut moto = OwnMoto::start().await;
    let sdk = outbox_runtime::aws::sdk_config().await;
    let client = Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .endpoint_url(moto.endpoint())
            .build(),
    );
    let name = format!("down-{}.fifo", uuid::Uuid::now_v7().simple());
    let create = |client: Client, name: String| async move {
        client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::VisibilityTimeout, "5")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    };
    let url = create(client.clone(), name.clone()).await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    const GROUPS: i64 = 10;
    const PER_GROUP: i64 = 20;
    let total = (GROUPS * PER_GROUP) as u64;
    let outgoing: Vec<OutgoingEnvelope> = (0..PER_GROUP)
        .flat_map(|n| (0..GROUPS).map(move |g| step(&format!("g{g}"), n)))
        .map(|m| OutgoingEnvelope::new(&m).unwrap())
        .collect();
    let mut tx = pool.begin().await.unwrap();
    store.enqueue_all(&mut tx, &outgoing).await.unwrap();
    tx.commit().await.unwrap();

    moto.stop();
    let relay = Relay::new(
        store.clone(),
        Arc::new(SqsTransport::new(client.clone(), &url)),
    )
    .with_config(RelayConfig {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: false,
        },
        sweep_interval: Duration::from_millis(20),
        max_attempts: 3,
        ..RelayConfig::default()
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn({
        let relay = relay.clone();
        let mut stopped = stopped.clone();
        async move {
            relay
                .run(outbox_runtime::pump::RelayWaker::new(), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        }
    });

    // Down for three seconds: 150 sweeps.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = store.stats().await.unwrap();
    let failures = relay.metrics().snapshot().publish_failures;
    assert_eq!(stats.pending, total, "every row still pending: {stats:?}");
    assert_eq!(
        stats.dead, 0,
        "an outage dead-letters nothing, whatever max_attempts says"
    );
    // A retry loop without backoff would fail a chunk of 10 rows every
    // sweep: 1,500 failures in three seconds. With backoff each group head
    // is tried about eight times (20 ms doubling to 500 ms).
    assert!(
        (1..=300).contains(&failures),
        "{failures} failed publish attempts in 3 s: a busy loop"
    );

    // The server is back (empty: moto keeps nothing), with the queue.
    moto.restart().await;
    assert_eq!(create(client.clone(), name).await, url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.stats().await.unwrap().pending > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    running.await.unwrap();

    let worker = Worker::new(
        Consumer::new(
            store.clone(),
            Arc::new(Dispatcher::from_registry().unwrap()),
        ),
        Arc::new(SqsReceiver::new(client.clone(), &url)),
    )
    .with_config(WorkerConfig {
        wait: Duration::from_millis(200),
        retention: None,
        ..WorkerConfig::default()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (effects(&pool).await.len() as u64) < total {
        assert!(tokio::time::Instant::now() < deadline, "not all handled");
        worker.run_once().await.unwrap();
    }
    let got = effects(&pool).await;
    assert_eq!(got.len() as u64, total, "each handled once");
    for g in 0..GROUPS {
        let group = format!("g{g}");
        let ns: Vec<i64> = got.iter().filter(|e| e.0 == group).map(|e| e.1).collect();
        assert_eq!(
            ns,
            (0..PER_GROUP).collect::<Vec<_>>(),
            "{group} out of order"
        );
    }
    fault_report::report(&fault_report::FaultRecord {
        scenario: "the queue is down",
        injection: "the SQS server (moto) stopped for 3 s under a running relay, then started again",
        runs: 1,
        sent: total,
        handled: got.len() as u64,
        lost: total - got.len() as u64,
        duplicate_effects: 0,
        duplicates_suppressed: Some(worker.metrics().snapshot().duplicates_suppressed),
        order_violations: None,
        stuck_groups: None,
        attempt_mismatches: None,
        harness_problems: None,
    });
    println!("{failures} failed publish attempts while down");
}

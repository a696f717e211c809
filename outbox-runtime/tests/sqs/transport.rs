//! The SQS transport, receiver and worker against the local server.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use outbox_runtime::{
    Dispatcher, Envelope, OutboxMessage, PgStore, Relay, Store, Worker,
    consume::{Consumer, ConsumerConfig, WorkerConfig},
    envelope::OutgoingEnvelope,
    handler,
    transport::sqs::{SqsReceiver, SqsTransport},
    transport::{EntryErrorKind, Receiver, Transport, TransportError},
};
use sqlx::PgPool;

use crate::{Step, client, effects, effects_table, entries, fast, fifo_queue, step};

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

//! The fault scenarios of the AWS path: `scripts/fault-tests.filter`
//! selects every test under a module named `faults`, so a test belongs to
//! the fault suite by being here, whatever its name.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use outbox_runtime::{
    Dispatcher, Envelope, PgStore, Relay, Store, Worker,
    backoff::Backoff,
    consume::{Consumer, ConsumerConfig, WorkerConfig},
    envelope::OutgoingEnvelope,
    relay::RelayConfig,
    store::AdminStore,
    transport::sqs::{SqsReceiver, SqsTransport},
    transport::{EntryErrorKind, Receiver, Transport},
};
use sqlx::PgPool;

use crate::lambda::deliver_as_lambda_with;
use crate::support::fault_report;
use crate::support::process::{Process, free_port, wait_for_port_async};
use crate::{client, effects, effects_table, entries, fast, fifo_queue, step};

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
    assert_eq!(ours.letter.message_id, Some(envelope.id));
    assert_eq!(
        ours.letter.handler, None,
        "every handler, under the original id"
    );
    assert_eq!(ours.letter.group.as_deref(), Some("outage"));
    assert_eq!(ours.letter.message_type.as_deref(), Some("sqs.step"));
    assert_eq!(ours.letter.body, envelope.to_json());
    assert!(
        ours.letter.error.contains("dead-letter queue"),
        "{}",
        ours.letter.error
    );
    assert_eq!(letters[1].letter.message_id, None);
    assert_eq!(letters[1].letter.body, "not an envelope");

    let table = outbox_runtime::dispatch::DispatchTable::from_registry().unwrap();
    let replayed = outbox_runtime::admin::replay_dead_letter(&store, &table, ours.id)
        .await
        .unwrap();
    assert_eq!(replayed.original_id, envelope.id);
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
        early_runs: None,
        harness_problems: None,
    });
    println!("{failures} failed publish attempts while down");
}

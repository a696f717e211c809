//! The Lambda consumer's record handling, with this module playing the SQS
//! event source mapping against the local server.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use outbox_runtime::lambda::event_source::EventSourceMapping;
use outbox_runtime::{
    Dispatcher, Envelope, OutboxMessage, PgStore, Relay, Store,
    consume::Consumer,
    pump::is_pump,
    relay::RelayConfig,
    transport::Transport,
    transport::sqs::{SqsPump, SqsTransport},
};
use sqlx::PgPool;

use crate::{Step, client, effects, effects_table, entries, fast, fifo_queue, step};

/// Plays the SQS event source mapping (the toolkit's player) against
/// `handle_records`: receive up to 10, hand them over as Lambda records,
/// delete the successes, leave the failures to the visibility timeout and
/// the redrive policy.
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
pub(crate) async fn deliver_as_lambda_with(
    client: &Client,
    url: &str,
    consumer: &Consumer<PgStore>,
    visibility: Option<&outbox_runtime::lambda::RetryVisibility>,
    release_now: bool,
) -> (usize, Vec<String>) {
    let mapping = EventSourceMapping::for_queue(client.clone(), url)
        .await
        .unwrap();
    let played = mapping
        .play_once(|event| async move {
            Ok::<_, std::convert::Infallible>(
                outbox_runtime::lambda::handle_records_with(
                    consumer,
                    event.records,
                    None,
                    visibility,
                )
                .await,
            )
        })
        .await
        .unwrap();
    if release_now {
        for m in &played.retried {
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
    let failed = played
        .retried
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    (played.received, failed)
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

/// A consumer that drains its outbox (PostgreSQL) on a pump, through a
/// new FIFO queue of the local server, as the Lambda consumer is wired.
struct PumpedConsumer {
    client: Client,
    url: String,
    store: PgStore,
    pump: SqsPump,
    consumer: Consumer<PgStore>,
}

async fn pumped_consumer(pool: &PgPool) -> PumpedConsumer {
    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await;
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(pool).await;
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
    PumpedConsumer {
        client,
        url,
        store,
        pump,
        consumer,
    }
}

#[sqlx::test(migrations = false)]
async fn a_pump_makes_the_consumer_drain_the_outbox(pool: PgPool) {
    let PumpedConsumer {
        client,
        url,
        store,
        pump,
        consumer,
    } = pumped_consumer(&pool).await;

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

/// On Lambda a delayed message is published by the first pump after its
/// time: the pump of its commit finds it not due and drains nothing; the
/// scheduled pump after its time publishes it, and it is handled.
#[sqlx::test(migrations = false)]
async fn a_delayed_message_is_published_by_the_first_pump_after_its_time(pool: PgPool) {
    let PumpedConsumer {
        client,
        url,
        store,
        pump,
        consumer,
    } = pumped_consumer(&pool).await;

    let delay = Duration::from_secs(5);
    let mut tx = pool.begin().await.unwrap();
    outbox_runtime::StoreExt::enqueue_after(&store, &mut tx, &step("later", 0), delay)
        .await
        .unwrap();
    let due = tokio::time::Instant::now() + delay;
    outbox_runtime::commit_and_pump(tx, &pump).await.unwrap();

    // The commit's pump arrives before the message is due.
    let (received, _) = deliver_as_lambda(&client, &url, &consumer).await;
    assert_eq!(received, 1, "the commit's pump");
    assert!(
        tokio::time::Instant::now() < due,
        "checked too late to mean anything"
    );
    assert_eq!(
        store.stats().await.unwrap().pending,
        1,
        "not due: held in the outbox"
    );
    assert!(effects(&pool).await.is_empty());

    tokio::time::sleep_until(due).await;
    outbox_runtime::pump::Pump::pump(&pump).await.unwrap(); // the schedule's pump
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while effects(&pool).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        deliver_as_lambda(&client, &url, &consumer).await;
    }
    assert_eq!(effects(&pool).await, [("later".to_owned(), 0)]);
}

/// Records as Lambda sends them, from `envelopes`, each in the group
/// `group` gives it (`None`: no `MessageGroupId` attribute, as from a
/// standard queue).
fn records_of(
    envelopes: &[Envelope],
    group: impl Fn(&Envelope) -> Option<String>,
) -> Vec<aws_lambda_events::event::sqs::SqsMessage> {
    entries(envelopes)
        .into_iter()
        .zip(envelopes)
        .enumerate()
        .map(|(i, (entry, envelope))| {
            let mut attributes = serde_json::json!({ "ApproximateReceiveCount": "1" });
            if let Some(group) = group(envelope) {
                attributes["MessageGroupId"] = group.into();
            }
            serde_json::from_value(serde_json::json!({
                "messageId": format!("m-{i}"),
                "receiptHandle": format!("r-{i}"),
                "body": entry.body,
                "attributes": attributes,
                "eventSource": "aws:sqs",
            }))
            .expect("an SQS record")
        })
        .collect()
}

#[sqlx::test(migrations = false)]
async fn records_without_a_group_are_one_group_so_a_failure_holds_back_the_later_ones(
    pool: PgPool,
) {
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    let mut failing = step("a", 0);
    failing.fail_first = 99;
    let envelopes = [
        Envelope::from_message(&failing).unwrap(),
        Envelope::from_message(&step("b", 0)).unwrap(),
    ];
    let consumer = Consumer::new(store, Arc::new(Dispatcher::from_registry().unwrap()));
    let failed = |response: aws_lambda_events::event::sqs::SqsBatchResponse| -> Vec<String> {
        response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    };

    // From a standard queue (no group): the records are one group, so the
    // later record waits behind the failure; nothing runs out of order.
    let response =
        outbox_runtime::lambda::handle_records(&consumer, records_of(&envelopes, |_| None), None)
            .await;
    assert_eq!(failed(response), ["m-0", "m-1"]);
    assert_eq!(effects(&pool).await, []);

    // From a FIFO queue: the groups are apart, the failure stops only its own.
    let response = outbox_runtime::lambda::handle_records(
        &consumer,
        records_of(&envelopes, |e| Some(e.group.clone())),
        None,
    )
    .await;
    assert_eq!(failed(response), ["m-0"]);
    assert_eq!(effects(&pool).await, [("b".to_owned(), 0)]);
}

#[sqlx::test(migrations = false)]
async fn an_invocation_without_a_deadline_works_for_the_fallback_budget(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    effects_table(&pool).await;
    let envelopes: Vec<Envelope> = (0..10)
        .map(|n| Envelope::from_message(&step(&format!("g{n}"), 0)).unwrap())
        .collect();
    // One run per transaction: ten transactions for the batch.
    let consumer = Consumer::new(store, Arc::new(Dispatcher::from_registry().unwrap()))
        .with_config(outbox_runtime::consume::ConsumerConfig {
            runs_per_transaction: 1,
            ..Default::default()
        });
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    event.records = records_of(&envelopes, |e| Some(e.group.clone()));
    // No deadline (0, as in a default context; cargo-lambda's emulator sends
    // one ten minutes after 1970): the invocation works for
    // NO_DEADLINE_BUDGET instead of holding back all but the first
    // transaction.
    let context = lambda_runtime::Context::default();
    assert_eq!(context.deadline, 0);
    let response = outbox_runtime::lambda::handle_event(
        &consumer,
        lambda_runtime::LambdaEvent::new(event, context),
    )
    .await;
    assert_eq!(response.batch_item_failures.len(), 0, "{response:?}");
    assert_eq!(effects(&pool).await.len(), 10);

    // A real deadline past is not "none": the first transaction runs, the
    // rest is held back for the next invocation.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Just past, and 14 minutes past (within Lambda's longest timeout): no
    // time left. 16 minutes past: no deadline given, the fallback budget.
    let mut handled = 10;
    for (past_ms, held) in [(1, 2), (14 * 60 * 1000, 2), (16 * 60 * 1000, 0)] {
        let envelopes: Vec<Envelope> = (0..3)
            .map(|n| Envelope::from_message(&step(&format!("late{past_ms}-{n}"), 0)).unwrap())
            .collect();
        let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
        event.records = records_of(&envelopes, |e| Some(e.group.clone()));
        let mut context = lambda_runtime::Context::default();
        context.deadline = now_ms - past_ms;
        let response = outbox_runtime::lambda::handle_event(
            &consumer,
            lambda_runtime::LambdaEvent::new(event, context),
        )
        .await;
        assert_eq!(
            response.batch_item_failures.len(),
            held,
            "deadline {past_ms} ms past: {response:?}"
        );
        handled += 3 - held;
        assert_eq!(effects(&pool).await.len(), handled);
    }
}

/// A partial batch response naming `ids` as failed.
fn failure(ids: &[&str]) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    let mut response = aws_lambda_events::event::sqs::SqsBatchResponse::default();
    for id in ids {
        let mut failure = aws_lambda_events::event::sqs::BatchItemFailure::default();
        failure.item_identifier = (*id).to_owned();
        response.batch_item_failures.push(failure);
    }
    response
}

/// Messages on the queue, visible or in flight.
async fn on_queue(client: &Client, url: &str) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attributes = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| attributes[a].parse::<usize>().unwrap())
    .sum()
}

#[tokio::test]
async fn the_event_source_player_deletes_what_lambda_would() {
    use outbox_runtime::lambda::event_source::PlayError;
    type Response = Result<aws_lambda_events::event::sqs::SqsBatchResponse, std::io::Error>;

    let client = client().await;
    let (url, _) = fifo_queue(&client, None).await; // visibility timeout 1 s
    let envelopes: Vec<Envelope> = (0..3)
        .map(|n| Envelope::from_message(&step(&format!("p{n}"), 0)).unwrap())
        .collect();
    SqsTransport::new(client.clone(), &url)
        .publish(&entries(&envelopes))
        .await
        .unwrap();
    let mapping = EventSourceMapping::for_queue(client.clone(), &url)
        .await
        .unwrap();
    let back = || tokio::time::sleep(Duration::from_millis(1100));

    // Out of bounds: refused before anything is received.
    let err = mapping
        .clone()
        .batch_size(11)
        .play_once(|_| async { Response::Ok(Default::default()) })
        .await
        .unwrap_err();
    assert!(matches!(err, PlayError::BatchSize(11)), "{err}");

    // The event: the records Lambda sends.
    let arn = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let region = client.config().region().map(ToString::to_string);
    let bodies: Vec<String> = entries(&envelopes).into_iter().map(|e| e.body).collect();
    let mut ids = Vec::new();
    let err = mapping
        .play_once(|event| {
            for record in &event.records {
                assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
                assert_eq!(record.event_source_arn.as_ref(), Some(&arn));
                assert_eq!(record.aws_region, region);
                assert!(bodies.contains(record.body.as_ref().unwrap()), "{record:?}");
                assert!(record.receipt_handle.is_some());
                for attribute in ["MessageGroupId", "ApproximateReceiveCount", "SentTimestamp"] {
                    assert!(
                        record.attributes.contains_key(attribute),
                        "{attribute}: {record:?}"
                    );
                }
                ids.push(record.message_id.clone().unwrap());
            }
            async { Response::Err(std::io::Error::other("the function failed")) }
        })
        .await
        .unwrap_err();
    // A failed invocation deletes nothing.
    assert!(matches!(err, PlayError::Invoke(_)), "{err}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(on_queue(&client, &url).await, 3);
    back().await;

    // A failure the batch does not hold: nothing deleted.
    let err = mapping
        .play_once(|_| async { Response::Ok(failure(&["not-a-record"])) })
        .await
        .unwrap_err();
    assert!(matches!(err, PlayError::UnknownItem(_)), "{err}");
    assert_eq!(on_queue(&client, &url).await, 3);
    back().await;

    // Batch item failures: the named record stays, the others are deleted.
    let mut first = None;
    let played = mapping
        .play_once(|event| {
            first = event.records[0].message_id.clone();
            let id = first.clone().unwrap();
            async move { Response::Ok(failure(&[&id])) }
        })
        .await
        .unwrap();
    assert_eq!(played.received, 3);
    assert_eq!(played.retried.len(), 1);
    assert_eq!(played.retried[0].message_id, first);
    assert_eq!(on_queue(&client, &url).await, 1);
    back().await;

    // Without ReportBatchItemFailures a successful invocation deletes the
    // batch, whatever the response names.
    let played = mapping
        .clone()
        .report_batch_item_failures(false)
        .play_once(|event| {
            let id = event.records[0].message_id.clone().unwrap();
            async move { Response::Ok(failure(&[&id])) }
        })
        .await
        .unwrap();
    assert_eq!((played.received, played.retried.len()), (1, 0));
    assert_eq!(on_queue(&client, &url).await, 0);
}

//! The public test harness (`outbox_runtime::testing`): what it settles,
//! what it reports, and each fault it injects.

use std::sync::Mutex;
use std::time::Duration;

use outbox_runtime::testing::{HarnessError, TestHarness};
use outbox_runtime::{HandlerContext, OutboxMessage, handler};
use uuid::Uuid;

#[derive(
    Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "harness.placed", group = order)]
struct Placed {
    order: i64,
}

#[derive(
    Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "harness.confirmed", group = order)]
struct Confirmed {
    order: i64,
}

#[derive(
    Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "harness.doomed", group = "doomed")]
struct Doomed {
    n: i64,
}

/// Retried long after a test's timeout.
#[derive(
    Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "harness.stubborn", group = "stubborn")]
struct Stubborn {
    n: i64,
}

/// Every run of `harness.confirm`: (message id, attempt).
static CONFIRM_RUNS: Mutex<Vec<(Uuid, u32)>> = Mutex::new(Vec::new());

/// Records its run, writes an effect and publishes `Confirmed`, all in the
/// run's transaction.
#[handler(name = "harness.confirm")]
async fn confirm(msg: Placed, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    CONFIRM_RUNS
        .lock()
        .expect("not poisoned")
        .push((ctx.message_id(), ctx.attempt()));
    sqlx::query("INSERT INTO effects (order_id) VALUES (?1)")
        .bind(msg.order)
        .execute(ctx.db::<sqlx::Sqlite>()?)
        .await?;
    ctx.publish(&Confirmed { order: msg.order })?;
    Ok(())
}

#[handler(name = "harness.notify")]
async fn notify(_msg: Confirmed) -> anyhow::Result<()> {
    Ok(())
}

#[handler(name = "harness.stubborn", max_attempts = 1000)]
async fn stubborn(_msg: Stubborn) -> anyhow::Result<()> {
    Ok(())
}

#[handler(name = "harness.always_fails", max_attempts = 3)]
async fn always_fails(msg: Doomed) -> anyhow::Result<()> {
    anyhow::bail!("doomed {}", msg.n)
}

async fn harness() -> TestHarness {
    let harness = TestHarness::start().await.expect("harness starts");
    sqlx::query("CREATE TABLE effects (order_id INTEGER NOT NULL)")
        .execute(harness.store().pool())
        .await
        .expect("app table");
    harness
}

async fn effects(harness: &TestHarness, order: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE order_id = ?1")
        .bind(order)
        .fetch_one(harness.store().pool())
        .await
        .expect("count")
}

fn runs_of(id: Uuid) -> Vec<u32> {
    CONFIRM_RUNS
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|(run, _)| *run == id)
        .map(|(_, attempt)| *attempt)
        .collect()
}

#[tokio::test]
async fn a_cascade_settles_and_is_read_back_typed() {
    let harness = harness().await;
    let sent = harness
        .send_all(&[Placed { order: 1 }, Placed { order: 2 }])
        .await
        .expect("sent");
    let settled = harness.settle().await.expect("settles");
    assert_eq!(
        settled.handled::<Placed>(),
        [Placed { order: 1 }, Placed { order: 2 }]
    );
    assert_eq!(
        settled.handled::<Confirmed>(),
        [Confirmed { order: 1 }, Confirmed { order: 2 }]
    );
    assert_eq!(settled.published::<Confirmed>().len(), 2);
    assert_eq!(
        settled.envelopes().len(),
        4,
        "two sent, two published by the handler"
    );
    let confirmed: Vec<Uuid> = settled
        .handled_by("harness.confirm")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(confirmed, [sent[0].id, sent[1].id]);
    assert_eq!(settled.handled_by("harness.notify").len(), 2);
    assert!(settled.dead_letters().is_empty());
    assert_eq!(effects(&harness, 1).await, 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn a_handler_that_always_fails_is_dead_lettered_after_its_attempts() {
    let harness = harness().await;
    harness.send(&Doomed { n: 1 }).await.expect("sent");
    let settled = harness.settle().await.expect("settles");
    assert!(settled.handled::<Doomed>().is_empty());
    assert_eq!(settled.dead_lettered::<Doomed>(), [Doomed { n: 1 }]);
    let dead = &settled.dead_letters()[0].letter;
    assert_eq!(dead.handler.as_deref(), Some("harness.always_fails"));
    assert_eq!(dead.attempts, 3);
    assert!(dead.error.contains("doomed 1"), "{}", dead.error);
    harness.shutdown().await;
}

#[tokio::test]
async fn injected_failures_count_as_attempts() {
    let harness = harness().await;
    harness.faults().fail_first_attempts::<Placed>(2);
    let sent = harness.send(&Placed { order: 3 }).await.expect("sent");
    let settled = harness.settle().await.expect("settles");
    assert_eq!(settled.handled::<Placed>(), [Placed { order: 3 }]);
    assert_eq!(
        runs_of(sent.id),
        [3],
        "the handler ran once, at its third attempt"
    );
    assert_eq!(effects(&harness, 3).await, 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn a_handler_failed_by_name_past_its_attempts_is_dead_lettered() {
    let harness = harness().await;
    harness
        .faults()
        .fail_handler_first_attempts("harness.notify", 10);
    harness.send(&Placed { order: 4 }).await.expect("sent");
    let settled = harness.settle().await.expect("settles");
    assert_eq!(settled.handled::<Placed>(), [Placed { order: 4 }]);
    assert!(settled.handled_by("harness.notify").is_empty());
    assert_eq!(
        settled.dead_lettered::<Confirmed>(),
        [Confirmed { order: 4 }]
    );
    assert!(
        settled.dead_letters()[0]
            .letter
            .error
            .contains("injected failure"),
        "{:?}",
        settled.dead_letters()
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_lost_delivery_is_delivered_again_and_handled_once() {
    let harness = harness().await;
    harness.faults().drop_next_delivery::<Placed>();
    let sent = harness.send(&Placed { order: 5 }).await.expect("sent");
    // Lost: in flight until the queue's visibility timeout (200 ms).
    let err = harness
        .settle_within(Duration::from_millis(100))
        .await
        .expect_err("the lost delivery is still in flight");
    assert!(matches!(err, HarnessError::NotSettled(_)), "{err}");
    assert!(err.to_string().contains("1 messages undelivered"), "{err}");
    let settled = harness.settle().await.expect("settles");
    assert_eq!(settled.handled::<Placed>(), [Placed { order: 5 }]);
    assert_eq!(runs_of(sent.id), [1]);
    assert_eq!(effects(&harness, 5).await, 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn workers_killed_mid_batch_lose_nothing_and_count_no_attempt() {
    let harness = harness().await;
    harness.faults().kill_workers_during::<Placed>();
    let sent = harness
        .send_all(&[Placed { order: 6 }, Placed { order: 7 }])
        .await
        .expect("sent");
    let settled = harness.settle().await.expect("settles");
    assert_eq!(
        settled.handled::<Placed>(),
        [Placed { order: 6 }, Placed { order: 7 }]
    );
    assert_eq!(
        settled.handled::<Confirmed>(),
        [Confirmed { order: 6 }, Confirmed { order: 7 }]
    );
    // The killed run never reached the handler; the runs after it are
    // each message's first attempt.
    assert_eq!(runs_of(sent[0].id), [1]);
    assert_eq!(runs_of(sent[1].id), [1]);
    assert_eq!(effects(&harness, 6).await, 1);
    assert_eq!(effects(&harness, 7).await, 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn a_harness_that_cannot_settle_says_what_is_stuck() {
    let harness = harness().await;
    harness.faults().fail_first_attempts::<Stubborn>(u32::MAX);
    harness.send(&Stubborn { n: 8 }).await.expect("sent");
    let err = harness
        .settle_within(Duration::from_millis(300))
        .await
        .expect_err("a handler failing for 1,000 attempts does not settle in 300 ms");
    let HarnessError::NotSettled(report) = &err else {
        panic!("{err}");
    };
    assert_eq!(report.stats.pending, 1);
    assert_eq!(report.groups.len(), 1, "{report}");
    let text = err.to_string();
    assert!(text.contains("group `stubborn`"), "{text}");
    assert!(text.contains("handler `harness.stubborn` failed"), "{text}");
    assert!(text.contains("injected failure"), "{text}");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_lost_delivery_keeps_its_group_in_order() {
    let harness = harness().await;
    harness.faults().drop_next_delivery::<Placed>();
    // One group (the order), two messages: the first is lost.
    let sent = harness
        .send_all(&[Placed { order: 9 }, Placed { order: 9 }])
        .await
        .expect("sent");
    harness.settle().await.expect("settles");
    assert_eq!(harness.faults().injected(), 1);
    let order: Vec<Uuid> = CONFIRM_RUNS
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| sent.iter().any(|e| e.id == *id))
        .collect();
    assert_eq!(
        order,
        [sent[0].id, sent[1].id],
        "handled in group order, once each"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn cleared_faults_inject_nothing() {
    let harness = harness().await;
    harness.faults().fail_first_attempts::<Placed>(3).clear();
    let sent = harness.send(&Placed { order: 10 }).await.expect("sent");
    harness.settle().await.expect("settles");
    assert_eq!(runs_of(sent.id), [1]);
    assert_eq!(harness.faults().injected(), 0);
    harness.shutdown().await;
}

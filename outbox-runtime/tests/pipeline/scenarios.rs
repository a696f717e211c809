//! The scenarios, written once for any store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outbox_runtime::{
    Dispatcher, Envelope, Relay, StoreExt,
    backoff::Backoff,
    consume::{Consumer, ConsumerConfig, DeliveryOutcome, Savepoints},
    envelope::OutgoingEnvelope,
    relay::RelayConfig,
    store::{RetentionPolicy, Settlement},
    transport::{Delivery, InProcessConfig, PublishEntry, Receipt, Transport},
};

use crate::db::{HandlerRows, TestDb};
use crate::{
    Announced, BROKEN, CONTEST, CONTEST_RUNS, Contested, Doomed, FIXED, Flaky, Harness, Ledger,
    ReservedV1, ReservedV2, ReservedV3, Step,
};

fn step(group: &str, n: i64) -> Step {
    Step {
        group: group.into(),
        n,
        fail_first: 0,
        cascade: false,
        pad: String::new(),
        panic_first: 0,
        fail_run: None,
    }
}

/// Commits one app transaction holding an order row and the given steps.
async fn commit_steps<S: TestDb>(store: &S, order: i64, steps: &[Step]) {
    let mut tx = store.begin().await.expect("begin");
    store.insert_order(&mut tx, order).await;
    let outgoing: Vec<OutgoingEnvelope> = steps
        .iter()
        .map(|s| OutgoingEnvelope::new(s).expect("encodes"))
        .collect();
    store
        .enqueue_all(&mut tx, &outgoing)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
}

/// Commits `per_group` app transactions, the `i`th holding step `i` of
/// each of `groups` groups (`g0`, `g1`, ...). Returns how many steps.
async fn commit_rounds<S: TestDb>(store: &S, groups: i64, per_group: i64) -> usize {
    for i in 0..per_group {
        let steps: Vec<Step> = (0..groups).map(|g| step(&format!("g{g}"), i)).collect();
        commit_steps(store, i, &steps).await;
    }
    (groups * per_group) as usize
}

/// Asserts that the `step` effects are `total` messages, each handled
/// once, every group's steps `0..per_group` in order. Returns the ids.
fn assert_once_in_order(
    effects: &[crate::db::Effect],
    total: usize,
    per_group: i64,
) -> HashSet<&str> {
    let ids: HashSet<_> = effects.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids.len(), total, "messages lost");
    assert_eq!(effects.len(), total, "a handler's effect committed twice");
    for (group, ns) in by_group(effects, "step") {
        assert_eq!(
            ns,
            (0..per_group).collect::<Vec<_>>(),
            "group {group} out of order"
        );
    }
    ids
}

/// Commits one app transaction holding `message` alone; its envelope.
async fn commit_message<S: TestDb, M: outbox_runtime::OutboxMessage>(
    store: &S,
    message: &M,
) -> Envelope {
    let mut tx = store.begin().await.expect("begin");
    let envelope = store.enqueue(&mut tx, message).await.expect("enqueue");
    tx.commit().await.expect("commit");
    envelope
}

/// Effects per group, in commit order: (n, message id).
fn by_group(effects: &[crate::db::Effect], kind: &str) -> BTreeMap<String, Vec<i64>> {
    let mut groups: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in effects.iter().filter(|e| e.kind == kind) {
        groups.entry(e.group.clone()).or_default().push(e.n);
    }
    groups
}

pub(crate) async fn rolled_back_transaction_leaves_nothing<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let mut tx = h.store.begin().await.expect("begin");
    h.store.insert_order(&mut tx, 1).await;
    h.store
        .enqueue(&mut tx, &step("g", 1))
        .await
        .expect("enqueue");
    // Enqueue does not commit: another connection sees nothing yet.
    assert_eq!(h.store.stats().await.expect("stats").pending, 0);
    tx.rollback().await.expect("rollback");

    assert_eq!(h.store.orders().await, 0);
    assert!(h.store.outbox_rows().await.is_empty());
    h.settle(Duration::from_secs(10)).await;
    assert!(h.store.effects().await.is_empty());
    assert_eq!(h.queue.stats().sent, 0, "nothing reached the queue");
}

pub(crate) async fn committed_message_is_handled_exactly_once<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    commit_steps(&h.store, 1, &[step("g", 1)]).await;
    assert_eq!(h.store.orders().await, 1);
    assert_eq!(h.store.stats().await.expect("stats").pending, 1);

    h.settle(Duration::from_secs(10)).await;
    let effects = h.store.effects().await;
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert_eq!(
        (
            effects[0].kind.as_str(),
            effects[0].group.as_str(),
            effects[0].n
        ),
        ("step", "g", 1)
    );
    assert_eq!(h.store.inbox_count().await, 1);
    let rows = h.store.outbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "published");
    assert_eq!(h.queue.stats().sent, 1);
    assert_eq!(h.metrics.snapshot().handled, 1);
}

pub(crate) async fn redelivery_is_suppressed_by_the_inbox<S: TestDb>(store: S) {
    // A queue that forgets deduplication ids at once, like SQS after 5
    // minutes: only the inbox stands between a repeat and a second effect.
    let h = Harness::with_queue(
        store,
        InProcessConfig {
            dedup_window: Duration::ZERO,
            ..InProcessConfig::default()
        },
    )
    .await;
    commit_steps(&h.store, 1, &[step("g", 1)]).await;

    // A relay claims and publishes, then dies before marking the row.
    let claimed = h
        .store
        .claim(10, Duration::from_millis(1))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let body = claimed[0].envelope.to_json();
    let entry = PublishEntry {
        envelope: &claimed[0].envelope,
        queue: None,
        body,
    };
    h.queue
        .publish(&[entry])
        .await
        .expect("publish")
        .remove(0)
        .expect("accepted");
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Its lease runs out; a healthy relay publishes the row again.
    let report = h.relay.drain().await.expect("drain");
    assert_eq!(report.published, 1);
    assert_eq!(h.queue.stats().sent, 2, "the message is in the queue twice");

    h.settle(Duration::from_secs(10)).await;
    assert_eq!(
        h.store.effects().await.len(),
        1,
        "one effect despite two deliveries"
    );
    assert_eq!(h.metrics.snapshot().duplicates_suppressed, 1);
    assert_eq!(h.queue.stats().acked, 2);
}

pub(crate) async fn cascade_commits_with_the_inbox_row<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let mut cascading = step("g", 7);
    cascading.cascade = true;
    commit_steps(&h.store, 1, &[cascading]).await;

    // First attempt: the handler writes, publishes a follow-up, then fails.
    h.relay.drain().await.expect("drain");
    let report = h.worker.run_once().await.expect("worker");
    assert_eq!(report.released, 1);
    assert!(
        h.store.effects().await.is_empty(),
        "the failed attempt's write rolled back"
    );
    assert_eq!(
        h.store.outbox_rows().await.len(),
        1,
        "its follow-up rolled back too"
    );
    assert_eq!(
        h.store.inbox_count().await,
        0,
        "and it is not marked handled"
    );

    // Second attempt commits all three together; the follow-up then flows.
    h.settle(Duration::from_secs(10)).await;
    let effects = h.store.effects().await;
    let kinds: Vec<_> = effects.iter().map(|e| (e.kind.as_str(), e.n)).collect();
    assert_eq!(kinds, [("step", 7), ("followup", 7)]);
    assert_eq!(h.store.inbox_count().await, 2);
    let rows = h.store.outbox_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == "published"), "{rows:?}");
}

pub(crate) async fn publish_failures_back_off_and_an_outage_uses_no_attempts<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    commit_steps(&h.store, 1, &[step("g", 1)]).await;
    let relay = Relay::new(h.store.clone(), Arc::clone(&h.queue)).with_config(RelayConfig {
        backoff: Backoff {
            initial: Duration::from_millis(300),
            max: Duration::from_millis(300),
            multiplier: 1.0,
            jitter: false,
        },
        max_attempts: 2,
        ..RelayConfig::default()
    });

    h.queue.set_available(false);
    let report = relay.drain().await.expect("drain");
    assert!(report.transport_down.is_some(), "{report:?}");
    assert_eq!((report.published, report.retried, report.dead), (0, 1, 0));
    let row = &h.store.outbox_rows().await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("pending", 0),
        "an outage uses none of the row's attempts"
    );
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("switched off")),
        "{row:?}"
    );
    assert!(row.available_in_future, "the retry waits out its backoff");

    // Back up, but the row is still backing off: nothing to claim, no busy loop.
    h.queue.set_available(true);
    let report = relay.drain().await.expect("drain");
    assert_eq!(report.batches, 0);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let report = relay.drain().await.expect("drain");
    assert_eq!(report.published, 1);
    h.settle(Duration::from_secs(10)).await;
    assert_eq!(h.store.outbox_rows().await[0].status, "published");

    // A queue that stays down never dead-letters rows, whatever the attempt count.
    commit_steps(&h.store, 2, &[step("g", 2)]).await;
    h.queue.set_available(false);
    let quick = Relay::new(h.store.clone(), Arc::clone(&h.queue)).with_config(RelayConfig {
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            multiplier: 1.0,
            jitter: false,
        },
        max_attempts: 2,
        ..RelayConfig::default()
    });
    for _ in 0..4 {
        quick.drain().await.expect("drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let row = &h.store.outbox_rows().await[1];
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));
}

pub(crate) async fn oversized_message_is_dead_lettered_without_blocking_other_groups<S: TestDb>(
    store: S,
) {
    let h = Harness::with_queue(
        store,
        InProcessConfig {
            max_body_bytes: 1024,
            ..InProcessConfig::default()
        },
    )
    .await;
    let mut huge = step("g1", 1);
    huge.pad = "x".repeat(2000);
    commit_steps(&h.store, 1, &[huge, step("g1", 2), step("g2", 1)]).await;
    let groups = h.store.group_stats(10).await.expect("group stats");
    let pending: Vec<_> = groups
        .iter()
        .map(|g| (g.group.as_str(), g.pending, g.dead))
        .collect();
    assert_eq!(pending, [("g1", 2, 0), ("g2", 1, 0)], "oldest first");
    assert!(groups[0].oldest_pending_age.is_some());

    // The first drain: the huge row fails for good; the row behind it in
    // its group was not sent, so it uses up no attempt.
    h.relay.drain().await.expect("drain");
    let rows = h.store.outbox_rows().await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.status.as_str(), r.attempts))
            .collect::<Vec<_>>()[..2],
        [("dead", 1), ("relayed", 0)],
        "{rows:?}"
    );

    h.settle(Duration::from_secs(10)).await;
    let groups = h.store.group_stats(10).await.expect("group stats");
    let after: Vec<_> = groups
        .iter()
        .map(|g| (g.group.as_str(), g.pending, g.dead))
        .collect();
    assert_eq!(
        after,
        [("g1", 0, 1)],
        "only the group with a dead row is listed"
    );
    assert_eq!(groups[0].oldest_pending_age, None);
    let rows = h.store.outbox_rows().await;
    let statuses: Vec<_> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["dead", "published", "published"]);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("the limit is 1024")),
        "{rows:?}"
    );
    assert_eq!(h.store.stats().await.expect("stats").dead, 1);
    let handled = by_group(&h.store.effects().await, "step");
    assert_eq!(handled["g1"], [2], "the group moves on past its dead row");
    assert_eq!(handled["g2"], [1]);
}

pub(crate) async fn failing_handler_stops_its_group_only<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let mut flaky = step("g1", 1);
    flaky.fail_first = 2;
    commit_steps(&h.store, 1, &[flaky, step("g1", 2), step("g2", 1)]).await;

    h.relay.drain().await.expect("drain");
    let report = h.worker.run_once().await.expect("worker");
    assert_eq!(report.received, 3);
    assert_eq!(report.acked, 1, "g2 is handled");
    assert_eq!(
        report.released, 2,
        "g1's failure holds its later message back"
    );
    assert_eq!(by_group(&h.store.effects().await, "step").get("g1"), None);

    h.settle(Duration::from_secs(10)).await;
    let handled = by_group(&h.store.effects().await, "step");
    assert_eq!(handled["g1"], [1, 2], "order kept through the retries");
    assert_eq!(handled["g2"], [1]);
    assert_eq!(h.metrics.snapshot().handler_failures, 2);
}

pub(crate) async fn exhausted_handler_is_dead_lettered<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let mut tx = h.store.begin().await.expect("begin");
    h.store
        .enqueue(&mut tx, &Doomed { group: "d".into() })
        .await
        .expect("enqueue");
    h.store
        .enqueue(&mut tx, &step("g", 1))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    h.settle(Duration::from_secs(10)).await;
    let dead = h.store.dead_letter_errors().await;
    assert_eq!(
        dead,
        [(
            Some("doomed.fail".to_owned()),
            "handler failed: d is doomed".to_owned()
        )]
    );
    assert_eq!(h.store.stats().await.expect("stats").dead_letters, 1);
    assert_eq!(h.store.effects().await.len(), 1, "the other group flowed");
    assert_eq!(
        h.queue.stats().queued,
        0,
        "the doomed message was acknowledged, not retried forever"
    );
}

pub(crate) async fn poison_is_dead_lettered_and_acknowledged<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let carrier = |group: &str| Envelope::from_message(&step(group, 0)).expect("envelope");
    let (p1, p2, p3, p4, ok) = (
        carrier("p1"),
        carrier("p2"),
        carrier("p3"),
        carrier("p4"),
        carrier("p1"),
    );
    let mut unknown = p2.clone();
    unknown.message_type = "test.unknown".into();
    let mut future = p3.clone();
    future.version = 9;
    let undecodable = p4.to_json().replace(r#""n":0"#, r#""n":"zero""#);
    let entries = [
        (&p1, "not json".to_owned()),
        (&p2, unknown.to_json()),
        (&p3, future.to_json()),
        (&p4, undecodable),
        (&ok, ok.to_json()),
    ];
    let entries: Vec<_> = entries
        .iter()
        .map(|(envelope, body)| PublishEntry {
            envelope,
            queue: None,
            body: body.clone(),
        })
        .collect();
    h.queue.publish(&entries).await.expect("publish");

    h.settle(Duration::from_secs(10)).await;
    let errors: Vec<String> = h
        .store
        .dead_letter_errors()
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].starts_with("malformed envelope at `.`: expected ident"),
        "{errors:?}"
    );
    assert_eq!(errors[1], "unknown message type `test.unknown`");
    assert_eq!(
        errors[2],
        "unsupported version 9 of message `test.step` (this binary handles v1)"
    );
    assert!(
        errors[3].starts_with("payload of `test.step` v1 does not decode at `n`"),
        "{errors:?}"
    );
    assert_eq!(
        by_group(&h.store.effects().await, "step")["p1"],
        [0],
        "the good message behind poison was handled"
    );
    assert_eq!(h.queue.stats().queued, 0);
}

pub(crate) async fn two_relays_and_two_workers_publish_once_in_group_order<S: TestDb>(store: S) {
    concurrent_relays_and_workers(store, 2).await;
}

pub(crate) async fn four_relays_and_four_workers_publish_once_in_group_order<S: TestDb>(store: S) {
    concurrent_relays_and_workers(store, 4).await;
}

/// `n` relays and `n` workers at once on 1,000 messages in 20 groups: each
/// row published once (the queue's deduplication never has to step in),
/// each message handled once, every group in order.
async fn concurrent_relays_and_workers<S: TestDb>(store: S, n: usize) {
    let h = Harness::new(store).await;
    const GROUPS: i64 = 20;
    const PER_GROUP: i64 = 50;
    let total = commit_rounds(&h.store, GROUPS, PER_GROUP).await;

    let relays: Vec<_> = (0..n)
        .map(|_| {
            let relay = h.relay.clone();
            let queue = Arc::clone(&h.queue);
            tokio::spawn(async move {
                let mut published = 0;
                while queue.stats().sent < total as u64 {
                    published += relay.drain().await.expect("relay").published;
                    tokio::task::yield_now().await;
                }
                published
            })
        })
        .collect();
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let worker = h.worker.clone();
            let metrics = Arc::clone(&h.metrics);
            tokio::spawn(async move {
                while metrics.snapshot().handled < total as u64 {
                    worker.run_once().await.expect("worker");
                }
            })
        })
        .collect();
    let published = tokio::time::timeout(Duration::from_secs(120), async {
        let mut published = Vec::new();
        for relay in relays {
            published.push(relay.await.expect("relay task"));
        }
        for worker in workers {
            worker.await.expect("worker task");
        }
        published
    })
    .await
    .expect("delivered in time");
    let published: u64 = published.iter().sum();
    assert_eq!(
        published, total as u64,
        "every row published once between the relays: {published:?}"
    );
    let stats = h.queue.stats();
    assert_eq!(
        (stats.sent, stats.duplicates_dropped),
        (total as u64, 0),
        "no double publish"
    );

    let effects = h.store.effects().await;
    let ids = assert_once_in_order(&effects, total, PER_GROUP);
    crate::fault_report::report(&crate::fault_report::FaultRecord {
        scenario: if n == 2 {
            "two relays and two workers at once"
        } else {
            "four relays and four workers at once"
        },
        injection: &format!(
            "{n} relays draining and {n} workers consuming one outbox concurrently ({})",
            S::KIND
        ),
        runs: 1,
        sent: total as u64,
        handled: ids.len() as u64,
        lost: (total - ids.len()) as u64,
        duplicate_effects: (effects.len() - ids.len()) as u64,
        duplicates_suppressed: Some(h.metrics.snapshot().duplicates_suppressed),
        order_violations: None,
        stuck_groups: None,
        attempt_mismatches: None,
        early_runs: None,
        harness_problems: None,
    });
}

pub(crate) async fn a_panicking_handler_fails_that_message_only<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let steps: Vec<Step> = (0..100)
        .map(|i| Step {
            // The first message of each group: a later one would be held
            // back behind it and first run in its second delivery.
            panic_first: u32::from(i < 5),
            ..step(&format!("g{}", i % 5), i / 5)
        })
        .collect();
    commit_steps(&h.store, 1, &steps).await;
    h.settle(Duration::from_secs(30)).await;

    let effects = h.store.effects().await;
    let ids = assert_once_in_order(&effects, 100, 20);
    let metrics = h.metrics.snapshot();
    assert_eq!(metrics.handler_failures, 5, "each panic counted once");
    assert_eq!(metrics.dead_lettered, 0);
    crate::fault_report::report(&crate::fault_report::FaultRecord {
        scenario: "a handler panics",
        injection: &format!(
            "the first message of each of 5 groups (100 messages) panics in its first attempt ({})",
            S::KIND
        ),
        runs: 5,
        sent: 100,
        handled: ids.len() as u64,
        lost: 100 - ids.len() as u64,
        duplicate_effects: (effects.len() - ids.len()) as u64,
        duplicates_suppressed: Some(metrics.duplicates_suppressed),
        order_violations: None,
        stuck_groups: None,
        attempt_mismatches: None,
        early_runs: None,
        harness_problems: None,
    });
}

/// PostgreSQL kills every connection of the relay and the workers, again and
/// again, while they deliver 1,000 messages; they reconnect and retry, and
/// every message is handled exactly once, in group order.
pub(crate) async fn connections_killed_mid_batch_lose_nothing(pool: sqlx::PgPool) {
    let store = outbox_runtime::PgStore::new(pool.clone());
    let h = Harness::new(store).await;
    const GROUPS: i64 = 20;
    const PER_GROUP: i64 = 50;
    let total = commit_rounds(&h.store, GROUPS, PER_GROUP).await;

    // The killer has a connection of its own, outside the pool.
    let options = pool.connect_options();
    let mut killer = sqlx::ConnectOptions::connect(options.as_ref())
        .await
        .expect("killer connects");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let waker = outbox_runtime::pump::RelayWaker::new();
    let relay = tokio::spawn({
        let relay = h.relay.clone();
        let waker = waker.clone();
        let shutdown = shutdown();
        async move { relay.run(waker, shutdown).await }
    });
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let worker = h.worker.clone();
            let shutdown = shutdown();
            tokio::spawn(async move { worker.run(shutdown).await })
        })
        .collect();

    let mut kills = 0_u64;
    let mut killed_connections = 0_i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let handled = h.store.effects().await.len();
        if handled >= total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {handled} of {total} handled"
        );
        // Kill every 20 ms while at most three quarters are handled, then
        // let it finish.
        let killing = handled < total * 3 / 4;
        if killing {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut killer)
            .await
            .expect("terminates");
            if n > 0 {
                kills += 1;
                killed_connections += n;
            }
            waker.wake();
        }
        tokio::time::sleep(Duration::from_millis(if killing { 20 } else { 100 })).await;
    }
    let _ = stop.send(true);
    relay.await.expect("relay task");
    for worker in workers {
        worker.await.expect("worker task");
    }
    assert!(kills >= 5, "the test killed connections only {kills} times");

    let effects = h.store.effects().await;
    let ids = assert_once_in_order(&effects, total, PER_GROUP);
    // Every handler succeeds when it gets to run: a run cut short by a
    // killed connection is the store's outage, which uses no attempt.
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_attempts")
        .fetch_one(&mut killer)
        .await
        .expect("attempts are readable");
    assert_eq!(counted, 0, "killed connections used up handler attempts");
    println!("{kills} kills terminated {killed_connections} connections");
    crate::fault_report::report(&crate::fault_report::FaultRecord {
        scenario: "database connections killed mid-batch",
        injection: "pg_terminate_backend on every connection of the relay and two workers, every 20 ms until 3/4 are handled (PostgreSQL)",
        runs: kills,
        sent: total as u64,
        handled: ids.len() as u64,
        lost: (total - ids.len()) as u64,
        duplicate_effects: (effects.len() - ids.len()) as u64,
        duplicates_suppressed: Some(h.metrics.snapshot().duplicates_suppressed),
        order_violations: None,
        stuck_groups: None,
        attempt_mismatches: None,
        early_runs: None,
        harness_problems: None,
    });
}

pub(crate) async fn retention_deletes_only_what_it_should<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let steps: Vec<Step> = (0..6).map(|n| step("g", n)).collect();
    commit_steps(&h.store, 1, &steps).await;
    h.settle(Duration::from_secs(10)).await;
    commit_steps(&h.store, 2, &[step("later", 0)]).await; // stays pending
    h.store
        .insert_inbox(&uuid::Uuid::now_v7().to_string(), "other.handler")
        .await;
    let mut tx = h.store.begin().await.expect("begin");
    for _ in 0..3 {
        h.store
            .record_handler_failure(&mut tx, uuid::Uuid::now_v7(), "other.handler", "boom")
            .await
            .expect("a failed run counted");
    }
    tx.commit().await.expect("commit");

    h.store.age_published(4, 48).await;
    h.store
        .age_handler_rows(HandlerRows::Inbox, 3, 24 * 20)
        .await;
    h.store
        .age_handler_rows(HandlerRows::Attempts, 2, 24 * 20)
        .await;
    let report = h
        .store
        .cleanup(&RetentionPolicy {
            published_for: Duration::from_secs(24 * 3600),
            inbox_for: Duration::from_secs(15 * 24 * 3600),
            batch_size: 2,
        })
        .await
        .expect("cleanup");
    assert_eq!(
        (
            report.published_deleted,
            report.inbox_deleted,
            report.attempts_deleted
        ),
        (4, 3, 2)
    );
    assert_eq!(h.store.count_rows(HandlerRows::Attempts).await, 1);
    let statuses: Vec<_> = h
        .store
        .outbox_rows()
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, ["published", "published", "pending"]);
    assert_eq!(h.store.inbox_count().await, 4);

    let again = h
        .store
        .cleanup(&RetentionPolicy::default())
        .await
        .expect("cleanup");
    assert_eq!(
        (
            again.published_deleted,
            again.inbox_deleted,
            again.attempts_deleted
        ),
        (0, 0, 0),
        "idempotent"
    );
}

pub(crate) async fn ten_thousand_messages_in_fifty_groups<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    const GROUPS: i64 = 50;
    const TOTAL: i64 = 10_000;
    for chunk in 0..(TOTAL / 500) {
        let steps: Vec<Step> = (chunk * 500..(chunk + 1) * 500)
            .map(|i| step(&format!("g{}", i % GROUPS), i / GROUPS))
            .collect();
        commit_steps(&h.store, chunk, &steps).await;
    }
    assert_eq!(h.store.stats().await.expect("stats").pending, TOTAL as u64);

    let second_worker = h.worker.clone();
    let run = async {
        let relay = async {
            while h.store.stats().await.expect("stats").pending > 0 {
                if h.relay.drain().await.expect("relay").batches == 0 {
                    // Everything claimable is out; wait for confirmations.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let consume = |worker: outbox_runtime::Worker<S, outbox_runtime::InProcessQueue>| {
            let h = &h;
            async move {
                while h.store.stats().await.expect("stats").pending > 0
                    || h.queue.stats().queued > 0
                {
                    worker.run_once().await.expect("worker");
                }
            }
        };
        tokio::join!(relay, consume(h.worker.clone()), consume(second_worker));
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("drained in time");

    let effects = h.store.effects().await;
    assert_eq!(effects.len(), TOTAL as usize);
    let ids: HashSet<_> = effects.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        TOTAL as usize,
        "every message handled exactly once"
    );
    let groups = by_group(&effects, "step");
    assert_eq!(groups.len(), GROUPS as usize);
    for (group, ns) in groups {
        assert_eq!(
            ns,
            (0..TOTAL / GROUPS).collect::<Vec<_>>(),
            "group {group} out of order"
        );
    }
    let metrics = h.metrics.snapshot();
    assert_eq!(
        (metrics.published, metrics.handled),
        (TOTAL as u64, TOTAL as u64)
    );
}

pub(crate) async fn corrupt_row_is_dead_lettered_without_stopping_the_relay<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    commit_steps(&h.store, 1, &[step("g1", 1), step("g1", 2), step("g2", 1)]).await;
    h.store.corrupt_first_pending_row().await;

    h.settle(Duration::from_secs(10)).await;
    let rows = h.store.outbox_rows().await;
    let statuses: Vec<_> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["dead", "published", "published"]);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("corrupt row: ")),
        "{rows:?}"
    );
    let handled = by_group(&h.store.effects().await, "step");
    assert_eq!(
        (handled["g1"].as_slice(), handled["g2"].as_slice()),
        (&[2][..], &[1][..])
    );
}

pub(crate) async fn a_drain_past_its_deadline_still_publishes_a_batch<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    // Five groups: a batch of 50 takes ten rows of each.
    let steps: Vec<Step> = (0..120).map(|n| step(&format!("g{}", n % 5), n)).collect();
    commit_steps(&h.store, 1, &steps).await;
    let past = tokio::time::Instant::now();
    let report = h.relay.drain_until(Some(past)).await.expect("drain");
    assert_eq!(report.batches, 1, "one batch, then the deadline stops it");
    assert_eq!(report.published, 50);
    assert!(!report.complete);
    let report = h.relay.drain_until(None).await.expect("drain");
    assert!(report.complete);
    assert_eq!(
        report.published, 0,
        "every group waits until the queue's consumer confirms its first batch"
    );
    h.settle(Duration::from_secs(10)).await;
    assert_eq!(h.store.effects().await.len(), 120);
}

pub(crate) async fn stuck_messages_are_reported<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let watcher = h
        .worker
        .clone()
        .with_config(outbox_runtime::consume::WorkerConfig {
            stuck_after: Some(Duration::from_millis(20)),
            ..outbox_runtime::consume::WorkerConfig::default()
        });
    assert!(!watcher.check_stuck().await, "an empty outbox is not stuck");
    commit_steps(&h.store, 1, &[step("g", 1)]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        watcher.check_stuck().await,
        "a row waiting longer than stuck_after is reported"
    );
    assert_eq!(h.metrics.snapshot().stuck_alerts, 1);
    h.settle(Duration::from_secs(10)).await;
    assert!(!watcher.check_stuck().await);
}

pub(crate) async fn replayed_dead_letter_runs_only_the_handler_that_gave_up<S: TestDb>(store: S) {
    use outbox_runtime::admin::{self, AdminError};

    let h = Harness::new(store).await;
    let group = format!("flaky-{}", uuid::Uuid::now_v7().simple());
    let original = commit_message(
        &h.store,
        &Flaky {
            group: group.clone(),
        },
    )
    .await;
    h.settle(Duration::from_secs(10)).await;

    let kinds = |effects: Vec<crate::db::Effect>| {
        let mut kinds: Vec<String> = effects.into_iter().map(|e| e.kind).collect();
        kinds.sort();
        kinds
    };
    assert_eq!(kinds(h.store.effects().await), ["audit"]);
    let letters = h.store.dead_letters(10).await.expect("dead letters");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.letter.message_id, Some(original.id));
    assert_eq!(letter.letter.handler.as_deref(), Some("flaky.charge"));
    assert_eq!(letter.letter.message_type.as_deref(), Some("test.flaky"));
    assert_eq!(letter.letter.attempts, 2);
    assert!(
        letter.letter.error.contains("hits the bug"),
        "{}",
        letter.letter.error
    );
    assert_eq!(
        h.store
            .dead_letter_by_id(letter.id)
            .await
            .expect("by id")
            .as_ref(),
        Some(letter)
    );

    // The fix is deployed; the operator replays.
    FIXED.lock().expect("not poisoned").push(group.clone());
    let table = outbox_runtime::dispatch::DispatchTable::from_registry().expect("table");
    let replayed = admin::replay_dead_letter(&h.store, &table, letter.id)
        .await
        .expect("replayed");
    assert_eq!(replayed.original_id, original.id);
    assert_ne!(replayed.replay_id, original.id);
    assert_eq!(replayed.handler.as_deref(), Some("flaky.charge"));
    let pending = h
        .store
        .rows(Some(outbox_runtime::store::RowStatus::Pending), 10)
        .await
        .expect("rows");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, replayed.replay_id);
    assert_eq!(pending[0].group, group);
    let again = admin::replay_dead_letter(&h.store, &table, letter.id).await;
    assert!(
        matches!(again, Err(AdminError::NoSuchDeadLetter(id)) if id == letter.id),
        "a second replay enqueues nothing: {again:?}"
    );

    h.settle(Duration::from_secs(10)).await;
    assert_eq!(
        kinds(h.store.effects().await),
        ["audit", "charge"],
        "the audit handler did not run twice"
    );
    assert!(
        h.store
            .dead_letters(10)
            .await
            .expect("dead letters")
            .is_empty()
    );
    let rows = h.store.outbox_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == "published"), "{rows:?}");
}

pub(crate) async fn requeued_dead_row_is_published_after_the_fix<S: TestDb>(store: S) {
    use outbox_runtime::admin::{self, AdminError};
    use outbox_runtime::store::RowStatus;

    // A queue whose limit is too small for the message: the relay gives up.
    let small = InProcessConfig {
        max_body_bytes: 1024,
        ..InProcessConfig::default()
    };
    let h = Harness::with_queue(store.clone(), small).await;
    let mut big = step("big", 1);
    big.pad = "x".repeat(2000);
    commit_steps(&h.store, 1, &[big]).await;
    h.settle(Duration::from_secs(10)).await;
    let dead = h.store.rows(Some(RowStatus::Dead), 10).await.expect("rows");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].attempts >= 1);
    assert!(dead[0].last_error.is_some());
    assert!(matches!(
        admin::requeue_dead_row(&h.store, dead[0].seq + 1000).await,
        Err(AdminError::NotDead(_))
    ));

    // The fix: a queue that takes it. The row goes back, attempts reset.
    drop(h);
    let fixed = Harness::new(store).await;
    admin::requeue_dead_row(&fixed.store, dead[0].seq)
        .await
        .expect("requeued");
    let row = fixed.store.rows(None, 1).await.expect("rows").remove(0);
    assert_eq!(
        (row.status, row.attempts, row.last_error.as_deref()),
        (RowStatus::Pending, 0, None)
    );
    fixed.settle(Duration::from_secs(10)).await;
    assert_eq!(fixed.store.effects().await.len(), 1);
    let row = fixed.store.rows(None, 1).await.expect("rows").remove(0);
    assert_eq!(row.status, RowStatus::Published);
    assert!(row.published_at.is_some());
    assert!(matches!(
        admin::purge_dead_row(&fixed.store, row.seq).await,
        Err(AdminError::NotDead(_))
    ));
}

/// Two processes on one database, each with its own in-process queue: the
/// first has relayed the group's head and not yet confirmed it when the
/// second claims. The group is the first one's until it confirms.
pub(crate) async fn relayed_rows_hold_their_group<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    commit_steps(&h.store, 1, &[step("g", 0)]).await;
    commit_steps(&h.store, 2, &[step("g", 1)]).await;
    let lease = Duration::from_secs(60);
    let ns = |claimed: &[outbox_runtime::store::ClaimedMessage]| -> Vec<i64> {
        claimed
            .iter()
            .map(|m| {
                serde_json::from_str::<Step>(m.envelope.payload.get())
                    .expect("a step")
                    .n
            })
            .collect()
    };

    let first = h.store.claim(1, lease).await.expect("claims");
    assert_eq!(ns(&first), [0]);
    h.store
        .settle(Settlement {
            claimed: &first,
            published: &[first[0].seq],
            confirm_within: Some(lease),
            failures: &[],
        })
        .await
        .expect("relayed");
    let second = h.store.claim(10, lease).await.expect("claims");
    assert_eq!(
        ns(&second),
        [] as [i64; 0],
        "claimed while the group's head is relayed and unconfirmed"
    );

    let mut tx = h.store.begin().await.expect("begins");
    h.store
        .confirm(&mut tx, &[first[0].envelope.id])
        .await
        .expect("confirms");
    tx.commit().await.expect("commits");
    let third = h.store.claim(10, lease).await.expect("claims");
    assert_eq!(ns(&third), [1], "the group is free once confirmed");
}

/// A message held back behind its group's failing head is not run, so its
/// handler's attempts are untouched: `ctx.attempt()` counts the handler's
/// own failed runs of that message, and a message is dead-lettered only
/// after `max_attempts` of them (5 for `step.record`).
pub(crate) async fn held_back_deliveries_use_up_no_attempts<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let steps: Vec<Step> = (0..5)
        .map(|n| Step {
            // The head needs all five attempts; the next message fails once.
            fail_first: match n {
                0 => 4,
                1 => 1,
                _ => 0,
            },
            ..step("g", n)
        })
        .collect();
    commit_steps(&h.store, 1, &steps).await;
    h.settle(Duration::from_secs(20)).await;

    assert_eq!(h.store.dead_letter_errors().await, [], "nothing gave up");
    assert_eq!(
        by_group(&h.store.effects().await, "step")["g"],
        [0, 1, 2, 3, 4]
    );
    // Every delivery ran the handler or was held back behind the head.
    let held_back = h.queue.stats().delivered - crate::runs().len() as u64;
    assert!(
        held_back >= 4 * 4,
        "the four later messages were held back behind each of the head's four failures: {held_back} held back"
    );
    let mut failed: std::collections::HashMap<uuid::Uuid, u32> = Default::default();
    for run in crate::runs() {
        let before = failed.entry(run.message_id).or_default();
        assert_eq!(
            run.attempt,
            *before + 1,
            "step {} ran with attempt {} after {} failed runs",
            run.n,
            run.attempt,
            before
        );
        if !run.ok {
            *before += 1;
        }
    }
}

/// A message that an older build found poison (say, its version was
/// unknown there) after a newer build had committed its handlers: the
/// replay is handled under the original message's id, so those handlers
/// do not run again.
pub(crate) async fn replaying_a_poison_dead_letter_skips_the_handlers_that_committed<S: TestDb>(
    store: S,
) {
    use outbox_runtime::admin;

    let h = Harness::new(store).await;
    let group = format!("poisoned-{}", uuid::Uuid::now_v7().simple());
    FIXED.lock().expect("not poisoned").push(group.clone());
    let original = commit_message(
        &h.store,
        &Flaky {
            group: group.clone(),
        },
    )
    .await;
    h.settle(Duration::from_secs(10)).await;
    assert_eq!(h.store.effects().await.len(), 2, "audit and charge");

    let mut tx = h.store.begin().await.expect("begin");
    h.store
        .dead_letter(
            &mut tx,
            &outbox_runtime::store::DeadLetter {
                message_id: Some(original.id),
                handler: None,
                message_type: Some(original.message_type.clone()),
                group: Some(group.clone()),
                body: original.to_json(),
                error: "unsupported version".into(),
                attempts: 1,
            },
        )
        .await
        .expect("dead-lettered");
    tx.commit().await.expect("commit");
    let letter = h
        .store
        .dead_letters(1)
        .await
        .expect("dead letters")
        .remove(0);
    let table = outbox_runtime::dispatch::DispatchTable::from_registry().expect("table");
    admin::replay_dead_letter(&h.store, &table, letter.id)
        .await
        .expect("replayed");
    let suppressed = h.metrics.snapshot().duplicates_suppressed;
    h.settle(Duration::from_secs(10)).await;

    let mut kinds: Vec<String> = h
        .store
        .effects()
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["audit", "charge"], "no handler ran twice");
    assert_eq!(
        h.metrics.snapshot().duplicates_suppressed - suppressed,
        2,
        "the replay ran, and both handlers found it done"
    );
    assert_eq!(h.store.dead_letter_errors().await, [], "not poison again");
}

/// Two deliveries of one message at once (a visibility timeout ran out
/// mid-run): the second waits on the first's inbox reservation instead of
/// running the handler, and once the first gives up (its dead letter and
/// inbox row in one commit) it finds the handler done. One run, one dead
/// letter.
pub(crate) async fn a_second_delivery_waits_for_the_first_and_does_not_run_the_handler(
    pool: sqlx::PgPool,
) {
    let h = Harness::new(outbox_runtime::PgStore::new(pool)).await;
    let envelope = Envelope::from_message(&Contested { group: "c".into() }).expect("encodes");
    let first = consumer(&h, 50);
    let second = consumer(&h, 50);
    let copy = delivery(&envelope);
    let copy_again = copy.clone();
    let (racing_tx, racing) = tokio::sync::oneshot::channel();
    // The first run's hook: start the second delivery, which must wait.
    *CONTEST.lock().expect("not poisoned") = Some(Box::pin(async move {
        let task = tokio::spawn(async move { second.handle(&copy_again).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Checked outside: a panic here would be the handler's.
        let _ = racing_tx.send((task.is_finished(), task));
    }));
    let outcome = first.handle(&copy).await;
    assert_eq!(outcome, DeliveryOutcome::DeadLettered, "max_attempts is 1");
    let (finished_early, task) = racing.await.expect("the hook ran");
    assert!(
        !finished_early,
        "the second delivery did not wait for the first's reservation"
    );
    let outcome = task.await.expect("the second delivery ran");
    assert_eq!(
        outcome,
        DeliveryOutcome::Done,
        "the second delivery found the handler done"
    );
    assert_eq!(
        h.store.dead_letter_errors().await.len(),
        1,
        "one give-up, one dead letter"
    );
    assert_eq!(h.store.inbox_count().await, 1);
    assert_eq!(
        CONTEST_RUNS.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second delivery ran the handler"
    );
}

/// A handler that ignores a failed statement and returns Ok, last in its
/// batch: PostgreSQL has aborted the transaction, and its COMMIT would
/// roll back without an error. The consumer finds out when it releases the
/// run's savepoint: the run failed (counted), the message comes back, and
/// its next run commits once; the batch's other message is not lost.
pub(crate) async fn a_run_whose_statement_failed_is_not_done_though_the_handler_returned_ok(
    pool: sqlx::PgPool,
) {
    let h = Harness::new(outbox_runtime::PgStore::new(pool)).await;
    let consumer = consumer_with(&h, 50, Savepoints::EveryRun);
    let batch = a_step_then_a_swallowed_error();

    let outcomes = consumer.handle_batch(&batch).await;
    assert!(
        matches!(
            outcomes[..],
            [DeliveryOutcome::Done, DeliveryOutcome::Retry(_)]
        ),
        "{outcomes:?}"
    );
    assert_eq!(by_group(&h.store.effects().await, "step")["a"], [0]);
    assert_eq!(h.store.inbox_count().await, 1);

    assert_eq!(
        consumer.handle_batch(&batch[1..]).await,
        [DeliveryOutcome::Done]
    );
    assert_eq!(
        by_group(&h.store.effects().await, "swallowed")["s"],
        [2],
        "the second run's effect, once"
    );
}

/// A step in group a, then a `Swallowed` in group s, as a queue delivers
/// them.
fn a_step_then_a_swallowed_error() -> Vec<Delivery> {
    [
        Envelope::from_message(&step("a", 0)).expect("encodes"),
        Envelope::from_message(&crate::Swallowed { group: "s".into() }).expect("encodes"),
    ]
    .iter()
    .map(delivery)
    .collect()
}

/// The same handler with savepoints only on failure (the default): the
/// transaction's first pass ends in an aborted transaction, found when its
/// one savepoint is released; the pass rolls back and the runs go again
/// with a savepoint each. The second run of the swallowing handler
/// succeeds, so both messages are done in one delivery, and the aborted
/// run's effect is not kept.
pub(crate) async fn an_aborted_first_pass_is_found_and_run_again(pool: sqlx::PgPool) {
    let h = Harness::new(outbox_runtime::PgStore::new(pool)).await;
    let consumer = consumer(&h, 50);
    let batch = a_step_then_a_swallowed_error();

    let outcomes = consumer.handle_batch(&batch).await;
    assert_eq!(outcomes, [DeliveryOutcome::Done, DeliveryOutcome::Done]);
    let effects = h.store.effects().await;
    assert_eq!(by_group(&effects, "step")["a"], [0]);
    assert_eq!(
        by_group(&effects, "swallowed")["s"],
        [2],
        "the aborted run's effect was kept, or the second run's lost"
    );
    assert_eq!(h.store.inbox_count().await, 2);
    assert_eq!(run_attempts(), [(0, 1, true), (0, 1, true)]);
}

/// Two deliveries of one message at once, the first failing: the second
/// waits on the first's reservation, and once the first gave it back with
/// its failure counted, runs the handler as its second attempt (the count
/// is read after the wait, not from before it).
pub(crate) async fn a_delivery_that_waited_for_another_counts_that_ones_failure(
    pool: sqlx::PgPool,
) {
    let h = Harness::new(outbox_runtime::PgStore::new(pool)).await;
    let envelope =
        Envelope::from_message(&crate::Recounted { group: "r".into() }).expect("encodes");
    let (first, second) = (consumer(&h, 50), consumer(&h, 50));
    let copy = delivery(&envelope);
    let copy_again = copy.clone();
    let (racing_tx, racing) = tokio::sync::oneshot::channel();
    // The first run's hook: start the second delivery, which must wait.
    *crate::RECOUNT.lock().expect("not poisoned") = Some(Box::pin(async move {
        let task = tokio::spawn(async move { second.handle(&copy_again).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Checked outside: a panic here would be the handler's.
        let _ = racing_tx.send((task.is_finished(), task));
    }));
    let outcome = first.handle(&copy).await;
    assert!(matches!(outcome, DeliveryOutcome::Retry(_)), "{outcome:?}");
    let (finished_early, task) = racing.await.expect("the hook ran");
    assert!(!finished_early, "the second delivery did not wait");
    let outcome = task.await.expect("the second delivery ran");
    assert!(matches!(outcome, DeliveryOutcome::Retry(_)), "{outcome:?}");
    assert_eq!(
        *crate::RECOUNTED.lock().expect("not poisoned"),
        [1, 2],
        "the second delivery's run did not count the first's failure"
    );
}

/// A deadline already past (a Lambda out of time): the batch's first
/// transaction still runs,
/// so every invocation makes progress; the later ones are held back, not
/// run and not counted.
pub(crate) async fn a_past_deadline_holds_back_all_but_the_first_transaction<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let consumer = consumer(&h, 1);
    let batch = deliveries(&[step("a", 0), step("b", 1), step("c", 2)]);
    let past = tokio::time::Instant::now() - Duration::from_secs(1);

    let outcomes = consumer.handle_batch_until(&batch, Some(past)).await;
    assert_eq!(
        outcomes,
        [
            DeliveryOutcome::Done,
            DeliveryOutcome::HeldBack,
            DeliveryOutcome::HeldBack
        ]
    );
    assert_eq!(run_attempts(), [(0, 1, true)], "a held-back message ran");
    assert_eq!(h.store.inbox_count().await, 1);
}

/// A consumer over the harness's store, with the harness's fast retries
/// and at most `runs` handler runs per transaction.
fn consumer<S: TestDb>(h: &Harness<S>, runs: usize) -> Consumer<S> {
    consumer_with(h, runs, Savepoints::default())
}

/// [`consumer`], setting its savepoints as `savepoints` says.
fn consumer_with<S: TestDb>(h: &Harness<S>, runs: usize, savepoints: Savepoints) -> Consumer<S> {
    let dispatcher = Arc::new(Dispatcher::from_registry().expect("dispatch table"));
    Consumer::new(h.store.clone(), dispatcher).with_config(ConsumerConfig {
        retry_backoff: crate::fast_backoff(),
        runs_per_transaction: runs,
        savepoints,
        ..ConsumerConfig::default()
    })
}

/// `envelope` as a queue delivers it.
fn delivery(envelope: &Envelope) -> Delivery {
    Delivery {
        body: envelope.to_json(),
        group: envelope.group.clone(),
        receive_count: 1,
        receipt: Receipt(envelope.id.to_string()),
        message_id: Some(envelope.id),
        sent_at: None,
    }
}

/// The steps as a queue delivers them, in order.
fn deliveries(steps: &[Step]) -> Vec<Delivery> {
    steps
        .iter()
        .map(|s| delivery(&Envelope::from_message(s).expect("encodes")))
        .collect()
}

/// The `step.record` runs so far: (step, `ctx.attempt()`, succeeded).
fn run_attempts() -> Vec<(i64, u32, bool)> {
    crate::runs()
        .iter()
        .map(|r| (r.n, r.attempt, r.ok))
        .collect()
}

/// A batch whose middle message's handler fails after writing its effect
/// and publishing a cascade, with a savepoint around every run: its
/// savepoint rolls back both, and the other messages' runs, before and
/// after it in the same transaction, commit; each handler runs once.
pub(crate) async fn one_failing_handler_in_a_batch_rolls_back_alone<S: TestDb>(store: S) {
    a_failing_run_in_a_batch(
        store,
        Savepoints::EveryRun,
        &[(0, 1, true), (1, 1, false), (2, 1, true), (1, 2, true)],
    )
    .await;
}

/// The same batch with savepoints only on failure (the default): the
/// failed run ends the transaction's first pass, which rolls back (the
/// first message's effect too), and the runs go again with a savepoint
/// each, the failed run's error kept instead of running it again; so the
/// first message's handler runs twice, its effect commits once, and the
/// failure counts once.
pub(crate) async fn a_failing_run_sends_its_batch_through_savepoints<S: TestDb>(store: S) {
    a_failing_run_in_a_batch(
        store,
        Savepoints::OnFailure,
        &[
            (0, 1, true),
            (1, 1, false),
            (0, 1, true),
            (2, 1, true),
            (1, 2, true),
        ],
    )
    .await;
}

/// Two messages of one group, the second failing its first run: the first
/// pass stops there. In the second pass the first message fails (its
/// second run, scripted), so the second is held back and not reached; its
/// first-pass failure happened all the same and counts, so its next run is
/// its second attempt.
pub(crate) async fn a_failure_the_second_pass_does_not_reach_still_counts<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let consumer = consumer(&h, 50);
    let first = Step {
        fail_run: Some(2),
        ..step("g", 0)
    };
    let second = Step {
        fail_first: 1,
        ..step("g", 1)
    };
    let batch = deliveries(&[first, second]);

    let outcomes = consumer.handle_batch(&batch).await;
    assert!(
        matches!(
            outcomes[..],
            [DeliveryOutcome::Retry(_), DeliveryOutcome::Retry(_)]
        ),
        "{outcomes:?}"
    );
    assert_eq!(
        run_attempts(),
        [(0, 1, true), (1, 1, false), (0, 1, false)],
        "the first pass: 0 then 1, which fails; the second: 0, which fails"
    );
    assert_eq!(
        consumer.handle_batch(&batch).await,
        [DeliveryOutcome::Done, DeliveryOutcome::Done]
    );
    assert_eq!(
        run_attempts()[3..],
        [(0, 2, true), (1, 2, true)],
        "a failed run went uncounted"
    );
    assert_eq!(by_group(&h.store.effects().await, "step")["g"], [0, 1]);
}

/// Handles a batch of three whose middle run fails after writing its effect
/// and publishing a cascade, then that message again; `attempts` are the
/// `step.record` runs expected.
async fn a_failing_run_in_a_batch<S: TestDb>(
    store: S,
    savepoints: Savepoints,
    attempts: &[(i64, u32, bool)],
) {
    let h = Harness::new(store).await;
    let consumer = consumer_with(&h, 50, savepoints);
    let failing = Step {
        cascade: true,
        ..step("b", 1)
    };
    let batch = deliveries(&[step("a", 0), failing, step("c", 2)]);

    let outcomes = consumer.handle_batch(&batch).await;
    assert!(
        matches!(
            outcomes[..],
            [
                DeliveryOutcome::Done,
                DeliveryOutcome::Retry(_),
                DeliveryOutcome::Done
            ]
        ),
        "{outcomes:?}"
    );
    let groups = by_group(&h.store.effects().await, "step");
    assert_eq!(
        groups.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "c"],
        "the failed run's effect was not rolled back, or a neighbour's was"
    );
    assert!(
        h.store.outbox_rows().await.is_empty(),
        "the failed run's cascade was not rolled back"
    );
    assert_eq!(h.store.inbox_count().await, 2);

    let again = consumer.handle_batch(&batch[1..2]).await;
    assert_eq!(again, [DeliveryOutcome::Done]);
    assert_eq!(by_group(&h.store.effects().await, "step")["b"], [1]);
    assert_eq!(h.store.outbox_rows().await.len(), 1, "the cascade, once");
    assert_eq!(run_attempts(), attempts);
    assert_eq!(
        by_group(&h.store.effects().await, "step")
            .values()
            .flatten()
            .count(),
        3,
        "an effect committed twice"
    );
}

/// A batch holding several messages of one group whose first fails: the
/// later ones are held back, not run, their attempts untouched, while
/// another group in the batch goes on; the batch is split into
/// transactions of two runs, so the hold crosses a transaction.
pub(crate) async fn a_failing_head_holds_back_its_group_across_the_batch<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let consumer = consumer(&h, 2);
    let head = Step {
        fail_first: 1,
        ..step("g", 0)
    };
    let batch = deliveries(&[head, step("g", 1), step("h", 9), step("g", 2)]);

    let outcomes = consumer.handle_batch(&batch).await;
    assert!(
        matches!(
            outcomes[..],
            [
                DeliveryOutcome::Retry(_),
                DeliveryOutcome::HeldBack,
                DeliveryOutcome::Done,
                DeliveryOutcome::HeldBack
            ]
        ),
        "{outcomes:?}"
    );
    let groups = by_group(&h.store.effects().await, "step");
    assert_eq!(groups.get("g"), None, "a held-back message ran");
    assert_eq!(groups["h"], [9]);
    assert_eq!(
        h.store.inbox_count().await,
        1,
        "held-back runs left inbox rows"
    );

    let g: Vec<Delivery> = [0, 1, 3].iter().map(|&i| batch[i].clone()).collect();
    let outcomes = consumer.handle_batch(&g).await;
    assert_eq!(
        outcomes,
        [
            DeliveryOutcome::Done,
            DeliveryOutcome::Done,
            DeliveryOutcome::Done
        ]
    );
    assert_eq!(by_group(&h.store.effects().await, "step")["g"], [0, 1, 2]);
    let attempts = run_attempts();
    assert_eq!(
        attempts,
        [
            (0, 1, false),
            (9, 1, true),
            (0, 2, true),
            (1, 1, true),
            (2, 1, true)
        ],
        "held-back messages ran, or their attempts counted"
    );
}

/// A relay whose lease ran out while it was publishing (a long pause, a
/// slow queue) reports on rows another relay has claimed since: while the
/// row is pending under the other relay's lease, the stale relay's writes
/// (failed for good, released, published) change nothing, and the other
/// relay's work goes on.
pub(crate) async fn a_relay_whose_lease_ran_out_cannot_overwrite_the_rows(store: impl TestDb) {
    let h = Harness::new(store).await;
    commit_steps(&h.store, 1, &[step("g", 0)]).await;
    let slow = h
        .store
        .claim(10, Duration::from_millis(50))
        .await
        .expect("claims");
    assert_eq!(slow.len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = h
        .store
        .claim(10, Duration::from_secs(60))
        .await
        .expect("claims again once the lease ran out");
    assert_eq!(fast.len(), 1);

    // The slow relay's publish failed for good; it says so, too late, and
    // then that it published the row after all.
    h.store
        .settle(Settlement {
            claimed: &slow,
            published: &[],
            confirm_within: None,
            failures: &[outbox_runtime::store::PublishFailure {
                seq: slow[0].seq,
                error: "the queue refused it".into(),
                retry_after: None,
                counts: true,
            }],
        })
        .await
        .expect("settled");
    h.store
        .settle(Settlement {
            claimed: &slow,
            published: &[slow[0].seq],
            confirm_within: None,
            failures: &[],
        })
        .await
        .expect("settled");
    let row = &h.store.outbox_rows().await[0];
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_error.as_deref()),
        ("pending", 0, None),
        "a stale lease wrote over the row: {row:?}"
    );
    assert!(
        h.store
            .claim(10, Duration::from_secs(60))
            .await
            .expect("claims")
            .is_empty(),
        "the other relay's lease still holds the row"
    );
    h.store
        .settle(Settlement {
            claimed: &fast,
            published: &[fast[0].seq],
            confirm_within: None,
            failures: &[],
        })
        .await
        .expect("published");
    assert_eq!(h.store.outbox_rows().await[0].status, "published");
}

/// A message larger than the transport takes (256 KiB as an envelope, by
/// default: SQS's) is refused at enqueue with an error that says so, and
/// nothing is written; the app's transaction goes on.
pub(crate) async fn a_message_too_large_for_the_transport_is_refused_at_enqueue<S: TestDb>(
    store: S,
) {
    let h = Harness::new(store).await;
    let mut big = step("g", 1);
    big.pad = "x".repeat(300 * 1024);
    let mut tx = h.store.begin().await.expect("begin");
    h.store.insert_order(&mut tx, 1).await;
    let err = h
        .store
        .enqueue(&mut tx, &big)
        .await
        .expect_err("a 300 KiB message is refused");
    let text = err.to_string();
    assert!(
        text.contains("test.step") && text.contains("262144"),
        "the error names the message and the limit: {text}"
    );
    let outgoing = OutgoingEnvelope::new(&big).expect("encodes");
    assert!(
        h.store
            .enqueue_all(&mut tx, std::slice::from_ref(&outgoing))
            .await
            .is_err(),
        "enqueue_all refuses it too"
    );
    h.store
        .enqueue(&mut tx, &step("g", 2))
        .await
        .expect("a small one goes in");
    tx.commit().await.expect("the transaction still commits");
    assert_eq!(h.store.orders().await, 1);
    assert_eq!(
        h.store.outbox_rows().await.len(),
        1,
        "only the small message"
    );
}

/// A relay that is alive keeps the rows it handed to its in-process queue:
/// their confirmation deadline (`relayed_for`) is renewed while they wait
/// for a slow consumer, so they are not published again behind its back.
/// Only a relay that died lets them go back to pending.
pub(crate) async fn a_live_relay_keeps_its_relayed_rows_while_consumers_lag<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let steps: Vec<Step> = (0..6).map(|n| step(&format!("g{}", n % 3), n)).collect();
    commit_steps(&h.store, 1, &steps).await;
    let relay = h.relay.clone().with_config(RelayConfig {
        relayed_for: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(20),
        backoff: crate::fast_backoff(),
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
    // No consumer for three times `relayed_for`.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let _ = stop.send(true);
    running.await.expect("relay task");
    let stats = h.queue.stats();
    assert_eq!(
        (stats.sent, stats.duplicates_dropped),
        (6, 0),
        "each row handed over once, none again while its relay lives"
    );
    assert!(
        h.store
            .outbox_rows()
            .await
            .iter()
            .all(|r| r.status == "relayed"),
        "{:?}",
        h.store.outbox_rows().await
    );
    h.settle(Duration::from_secs(10)).await;
    assert_eq!(h.store.effects().await.len(), 6);
}

/// An in-process queue at capacity: the relay's rows wait, pending and
/// using up none of their attempts, and go once the workers make room.
pub(crate) async fn a_full_queue_makes_the_relay_wait_without_using_attempts<S: TestDb>(store: S) {
    let h = Harness::with_queue(
        store,
        InProcessConfig {
            capacity: 5,
            ..InProcessConfig::default()
        },
    )
    .await;
    let steps: Vec<Step> = (0..12).map(|n| step(&format!("g{n}"), n)).collect();
    commit_steps(&h.store, 1, &steps).await;
    let report = h.relay.drain().await.expect("drain");
    assert_eq!(report.published, 5);
    assert_eq!(h.queue.stats().queued, 5);
    let rows = h.store.outbox_rows().await;
    assert!(
        rows.iter()
            .filter(|r| r.status == "pending")
            .all(|r| r.attempts == 0),
        "{rows:?}"
    );
    h.settle(Duration::from_secs(20)).await;
    assert_eq!(h.store.effects().await.len(), 12);
}

/// PostgreSQL: the database aborts the handler's transaction to break a
/// deadlock (SQLSTATE 40P01) in its first two runs (with the default
/// savepoints, the first pass's and the run in its own savepoint). That is
/// the store's trouble, not the handler's: the runs use no attempt (its
/// `max_attempts` is 1), and the retry commits.
pub(crate) async fn a_deadlock_in_the_handlers_transaction_uses_no_attempt(pool: sqlx::PgPool) {
    let h = Harness::new(outbox_runtime::PgStore::new(pool)).await;
    commit_message(&h.store, &crate::Deadlocked { group: "d".into() }).await;
    h.settle(Duration::from_secs(10)).await;
    assert_eq!(
        h.store.dead_letter_errors().await,
        [],
        "no attempt was used"
    );
    assert_eq!(h.store.effects().await.len(), 1, "the retry committed");
}

/// A relay that never finishes on its own, as under producers faster than
/// the queue takes messages: it drains until the deadline it is given (and
/// records it), and without one it never returns.
#[derive(Default)]
struct Endless {
    deadlines: std::sync::Mutex<Vec<Option<tokio::time::Instant>>>,
}

impl outbox_runtime::relay::OutboxDrain for Endless {
    fn drain_before(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> outbox_runtime::relay::DrainFuture<'_> {
        self.deadlines.lock().expect("not poisoned").push(deadline);
        Box::pin(async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending::<()>().await,
            }
            Ok(outbox_runtime::relay::DrainReport::default())
        })
    }
}

/// Counts pumps.
#[derive(Default)]
struct Pumps(std::sync::atomic::AtomicUsize);

impl outbox_runtime::pump::Pump for Pumps {
    fn pump(&self) -> outbox_runtime::pump::PumpFuture<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// A new in-process queue holding one pump message (its id from `n`).
async fn queue_with_a_pump(n: i64) -> Arc<outbox_runtime::InProcessQueue> {
    let queue = Arc::new(outbox_runtime::InProcessQueue::new());
    let mut carrier = Envelope::from_message(&step("p", n)).expect("envelope");
    carrier.group = outbox_runtime::pump::PUMP_GROUP.to_owned();
    queue
        .publish(&[PublishEntry {
            envelope: &carrier,
            queue: None,
            body: outbox_runtime::pump::PUMP_BODY.to_owned(),
        }])
        .await
        .expect("the pump is queued");
    queue
}

/// A worker that receives a pump message drains the outbox for its drain
/// budget, not until the outbox is empty: a relay that cannot catch up
/// would keep it from ever receiving again. With rows left, it pumps again
/// so the drain goes on after the next receive, and acknowledges the pump.
pub(crate) async fn a_worker_drains_on_a_pump_for_its_budget_then_pumps_again<S: TestDb>(store: S) {
    store.migrate().await.expect("migrations run");
    let queue = queue_with_a_pump(0).await;
    let relay = Arc::new(Endless::default());
    let pumps = Arc::new(Pumps::default());
    let dispatcher = Arc::new(Dispatcher::from_registry().expect("dispatch table"));
    let worker = outbox_runtime::Worker::new(
        Consumer::new(store, dispatcher)
            .with_relay(Arc::clone(&relay) as Arc<dyn outbox_runtime::relay::OutboxDrain>)
            .with_pump(Arc::clone(&pumps) as Arc<dyn outbox_runtime::pump::Pump>),
        queue,
    );

    let started = tokio::time::Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(10), worker.run_once())
        .await
        .expect("the worker drained until the outbox was empty, which it never is")
        .expect("the batch is handled");
    assert_eq!(report.acked, 1, "the pump is acknowledged");
    let deadlines = relay.deadlines.lock().expect("not poisoned").clone();
    let [Some(deadline)] = deadlines[..] else {
        panic!("one drain with a deadline expected, got {deadlines:?}");
    };
    let budget = outbox_runtime::consume::WorkerConfig::default().drain_budget;
    assert!(
        deadline >= started + budget && deadline <= tokio::time::Instant::now(),
        "the drain's deadline is not the worker's budget"
    );
    assert_eq!(
        pumps.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the unfinished drain did not pump again"
    );
}

/// A worker whose shutdown has resolved takes no further batch, though
/// messages wait: checked 20 times, since a `select!` that picked its branch
/// at random would take the batch about half the time.
pub(crate) async fn a_stopped_worker_takes_no_further_batch<S: TestDb>(store: S) {
    store.migrate().await.expect("migrations run");
    let dispatcher = Arc::new(Dispatcher::from_registry().expect("dispatch table"));
    for round in 0..20 {
        let queue = queue_with_a_pump(round).await;
        let worker = outbox_runtime::Worker::new(
            Consumer::new(store.clone(), Arc::clone(&dispatcher)),
            Arc::clone(&queue),
        );
        tokio::time::timeout(Duration::from_secs(10), worker.run(std::future::ready(())))
            .await
            .expect("a stopped worker returns");
        assert_eq!(
            queue.stats().delivered,
            0,
            "round {round}: the worker took a batch after its shutdown"
        );
    }
}

/// A process shut down in the middle of a drain loses nothing, and the
/// next process handles the rest at once: the rows its relay had handed to
/// the in-process queue and no worker handled are pending again, not held
/// for `relayed_for` (60 s by default, above this test's 20 s limit).
pub(crate) async fn a_shutdown_mid_drain_loses_nothing_and_the_next_process_handles_the_rest_at_once<
    S: TestDb,
>(
    store: S,
) {
    use outbox_runtime::consume::WorkerConfig;
    use outbox_runtime::local::Pipeline;

    let h = Harness::new(store).await;
    const GROUPS: i64 = 10;
    const PER_GROUP: i64 = 40;
    let total = commit_rounds(&h.store, GROUPS, PER_GROUP).await;
    let dispatcher = Arc::new(Dispatcher::from_registry().expect("dispatch table"));
    let pipeline = || {
        Pipeline::new(h.store.clone(), Arc::clone(&dispatcher))
            .with_workers(1)
            .with_worker_config(WorkerConfig {
                batch_size: 10,
                wait: Duration::from_millis(50),
                retention: None,
                ..WorkerConfig::default()
            })
    };

    let first = pipeline().start();
    first.waker().wake();
    tokio::time::timeout(Duration::from_secs(30), async {
        while first.metrics().snapshot().handled < 10 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the first process handles some messages");
    let report = first.shutdown().await;
    let handled_first = h.store.effects().await.len();
    assert!(
        handled_first < total,
        "the shutdown came before the end of the drain"
    );
    assert!(!report.timed_out, "{report:?}");
    assert!(
        report.released > 0,
        "relayed rows were handed back: {report:?}"
    );
    assert_eq!(
        h.store.stats().await.expect("stats").pending,
        (total - handled_first) as u64,
        "nothing lost, nothing handled after the shutdown"
    );

    let second = pipeline().start();
    second.waker().wake();
    second
        .wait_idle(Duration::from_secs(20))
        .await
        .expect("the next process handles the rest without waiting out relayed_for");
    second.shutdown().await;

    let effects = h.store.effects().await;
    let ids = assert_once_in_order(&effects, total, PER_GROUP);
    crate::fault_report::report(&crate::fault_report::FaultRecord {
        scenario: "a shutdown in the middle of a drain, then the next process",
        injection: &format!(
            "Running::shutdown after the first 10 of {total} messages, then a new pipeline ({})",
            S::KIND
        ),
        runs: 1,
        sent: total as u64,
        handled: ids.len() as u64,
        lost: (total - ids.len()) as u64,
        duplicate_effects: (effects.len() - ids.len()) as u64,
        duplicates_suppressed: None,
        order_violations: Some(0),
        stuck_groups: None,
        attempt_mismatches: None,
        early_runs: None,
        harness_problems: None,
    });
}

/// A transport that holds every publish until the test opens its gate.
struct Gated {
    queue: InProcessQueueHandle,
    gate: tokio::sync::Semaphore,
    entered: tokio::sync::Notify,
}

type InProcessQueueHandle = Arc<outbox_runtime::InProcessQueue>;

impl Transport for Gated {
    fn max_batch(&self) -> usize {
        self.queue.max_batch()
    }

    fn durable(&self) -> bool {
        false
    }

    async fn publish(
        &self,
        entries: &[PublishEntry<'_>],
    ) -> Result<
        Vec<Result<(), outbox_runtime::transport::EntryError>>,
        outbox_runtime::transport::TransportError,
    > {
        self.entered.notify_one();
        let _open = self.gate.acquire().await.expect("gate open");
        self.queue.publish(entries).await
    }
}

/// A relay whose shutdown comes while it publishes a batch settles that
/// batch and claims no other, though more rows wait.
pub(crate) async fn a_relay_told_to_stop_finishes_its_batch_and_claims_no_more<S: TestDb>(
    store: S,
) {
    let h = Harness::new(store).await;
    // More groups than a batch takes, so that either store's next claim
    // would find rows.
    commit_rounds(&h.store, 20, 5).await;
    let gated = Arc::new(Gated {
        queue: Arc::clone(&h.queue),
        gate: tokio::sync::Semaphore::new(0),
        entered: tokio::sync::Notify::new(),
    });
    let relay = Relay::new(h.store.clone(), Arc::clone(&gated)).with_config(RelayConfig {
        batch_size: 10,
        ..RelayConfig::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let waker = outbox_runtime::RelayWaker::new();
    let running = tokio::spawn(async move {
        relay
            .run(waker, async {
                let _ = stopped.await;
            })
            .await;
    });
    // The first batch is being published: stop, then let it through.
    gated.entered.notified().await;
    stop.send(()).expect("the relay runs");
    gated.gate.add_permits(1_000);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the relay returns")
        .expect("no panic");
    assert_eq!(h.queue.stats().sent, 10, "one batch published, no more");
    assert_eq!(
        h.store.stats().await.expect("stats").pending,
        100,
        "the batch's rows relayed and unconfirmed, the others untouched"
    );
    assert!(
        h.store
            .outbox_rows()
            .await
            .iter()
            .filter(|r| r.status == "relayed")
            .count()
            == 10,
        "the batch settled"
    );
}

/// A relay whose shutdown has come before it starts claims nothing, though
/// rows wait.
pub(crate) async fn a_relay_stopped_before_it_starts_claims_nothing<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    commit_steps(&h.store, 0, &[step("g", 0), step("h", 0)]).await;
    let relay = Relay::new(h.store.clone(), Arc::clone(&h.queue));
    tokio::time::timeout(
        Duration::from_secs(10),
        relay.run(outbox_runtime::RelayWaker::new(), std::future::ready(())),
    )
    .await
    .expect("the relay returns");
    assert_eq!(h.queue.stats().sent, 0, "nothing published after the stop");
    assert!(
        h.store
            .outbox_rows()
            .await
            .iter()
            .all(|r| r.status == "pending"),
        "nothing claimed"
    );
}

/// Messages of versions 1, 2 and 3 enqueued in one group, as producers of
/// three deploys would have; this build handles only v3: each old one
/// reaches v3's handler converted, in the group's order.
pub(crate) async fn old_versions_are_upcast_to_the_handled_one_in_group_order<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let group = || String::from("r");
    let mut tx = h.store.begin().await.expect("begin");
    let v1 = |n: i64, sku: &str| ReservedV1 {
        group: group(),
        n,
        sku: sku.into(),
    };
    h.store
        .enqueue(&mut tx, &v1(0, "a"))
        .await
        .expect("enqueue");
    let v2 = ReservedV2 {
        group: group(),
        n: 1,
        skus: vec!["b".into(), "c".into()],
    };
    h.store.enqueue(&mut tx, &v2).await.expect("enqueue");
    let v3 = ReservedV3 {
        group: group(),
        n: 2,
        lines: vec![("d".into(), 4)],
    };
    h.store.enqueue(&mut tx, &v3).await.expect("enqueue");
    h.store
        .enqueue(&mut tx, &v1(3, "e"))
        .await
        .expect("enqueue");
    // One whose conversion panics: poison, dead-lettered as delivered.
    let poison = h
        .store
        .enqueue(&mut tx, &v1(4, "panic"))
        .await
        .expect("enqueue");
    h.store
        .enqueue(&mut tx, &v1(5, "f"))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    h.settle(Duration::from_secs(10)).await;
    let effects: Vec<(String, i64)> = h
        .store
        .effects()
        .await
        .into_iter()
        .map(|e| (e.kind, e.n))
        .collect();
    assert_eq!(
        effects,
        [
            ("reserved:v3:ax1".to_owned(), 0),
            ("reserved:v3:bx1,cx1".to_owned(), 1),
            ("reserved:v3:dx4".to_owned(), 2),
            ("reserved:v3:ex1".to_owned(), 3),
            ("reserved:v3:fx1".to_owned(), 5),
        ],
        "each version handled once by v3's handler, converted, in order"
    );
    assert_eq!(
        h.store.dead_letter_errors().await,
        [(
            None,
            "cannot upcast test.reserved v1 to test.reserved v2: the conversion panicked: sku panic cannot be converted".to_owned()
        )]
    );
    let dead = h.store.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead[0].letter.message_id, Some(poison.id));
    assert_eq!(
        dead[0].letter.message_type.as_deref(),
        Some("test.reserved")
    );
    assert!(
        dead[0].letter.body.contains(r#""version":1"#),
        "the body as delivered"
    );
}

/// A handler that declares `publishes = [Followup]` and publishes a
/// `Doomed` too (ignoring the error) fails its run: dead-lettered at once
/// (the same code fails the same way), its writes and its declared
/// publish rolled back; the same handler without the stray publish works.
pub(crate) async fn an_undeclared_publish_fails_the_run_and_publishes_nothing<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let announced = |group: &str, stray: bool| Announced {
        group: group.into(),
        n: 1,
        stray,
    };
    commit_message(&h.store, &announced("stray", true)).await;
    commit_message(&h.store, &announced("fine", false)).await;

    h.settle(Duration::from_secs(10)).await;
    let effects: Vec<(String, String)> = h
        .store
        .effects()
        .await
        .into_iter()
        .map(|e| (e.kind, e.group))
        .collect();
    assert_eq!(
        effects,
        [
            ("announced".to_owned(), "fine".to_owned()),
            ("followup".to_owned(), "fine".to_owned()),
        ],
        "the stray run committed nothing and published nothing"
    );
    let dead = h.store.dead_letter_errors().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0.as_deref(), Some("announced.publish"));
    assert_eq!(
        dead[0].1,
        "handler `announced.publish` published `test.doomed` v1 (`pipeline::Doomed`), which its \
         `#[handler(publishes = [...])]` does not list (it lists `pipeline::Followup`); add the \
         type to `publishes`"
    );
}

/// Commits, in one transaction, group `g`'s steps 0 (at once), 1 (not
/// before `delay`) and 2 (at once), and group `h`'s step 0 (at once).
async fn commit_with_a_delayed_step<S: TestDb>(store: &S, delay: Duration) -> tokio::time::Instant {
    let mut tx = store.begin().await.expect("begin");
    store
        .enqueue(&mut tx, &step("g", 0))
        .await
        .expect("enqueue");
    store
        .enqueue_after(&mut tx, &step("g", 1), delay)
        .await
        .expect("enqueue");
    store
        .enqueue(&mut tx, &step("g", 2))
        .await
        .expect("enqueue");
    store
        .enqueue(&mut tx, &step("h", 0))
        .await
        .expect("enqueue");
    let due = tokio::time::Instant::now() + delay;
    tx.commit().await.expect("commit");
    due
}

/// A delayed message is not published before its time, and the message
/// after it in its group waits for it (the group's order is its commit
/// order); other groups and the messages before it flow. Once due, the
/// group is handled in order.
pub(crate) async fn a_delayed_message_waits_for_its_time_and_holds_its_group<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let due = commit_with_a_delayed_step(&h.store, Duration::from_secs(3)).await;
    // Relay and consume for a while, well before the delayed step is due.
    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    while tokio::time::Instant::now() < until {
        h.relay.drain().await.expect("relay drains");
        h.worker.run_once().await.expect("worker runs");
    }
    let early = by_group(&h.store.effects().await, "step");
    assert!(
        tokio::time::Instant::now() < due,
        "the check ran too late to mean anything"
    );
    assert_eq!(early["g"], [0], "step 1 is not due; step 2 waits for it");
    assert_eq!(early["h"], [0], "another group flows");
    assert_eq!(h.store.stats().await.expect("stats").pending, 2);

    tokio::time::sleep_until(due).await;
    h.settle(Duration::from_secs(10)).await;
    let effects = by_group(&h.store.effects().await, "step");
    assert_eq!(effects["g"], [0, 1, 2], "in commit order once due");
    assert_eq!(effects["h"], [0]);
}

/// One drain of the relay after a delayed message's time publishes it.
pub(crate) async fn a_due_message_is_published_by_the_next_drain<S: TestDb>(store: S) {
    let h = Harness::new(store).await;
    let when = chrono::Utc::now() + chrono::Duration::seconds(3);
    let mut tx = h.store.begin().await.expect("begin");
    h.store
        .enqueue_at(&mut tx, &step("later", 0), when)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let before = h.relay.drain().await.expect("relay drains");
    assert!(
        chrono::Utc::now() < when,
        "the check ran too late to mean anything"
    );
    assert_eq!(before.published, 0, "not due: {before:?}");
    assert!(before.complete);
    let stats = h.store.stats().await.expect("stats");
    assert_eq!(
        (stats.pending, stats.oldest_pending_age),
        (1, None),
        "a message not yet due is pending but ages from its time"
    );
    assert_eq!(
        h.store.group_stats(10).await.expect("group stats")[0].oldest_pending_age,
        None
    );
    let wait = (when - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let age = h.store.stats().await.expect("stats").oldest_pending_age;
    assert!(
        age.is_some_and(|age| age < Duration::from_millis(500)),
        "due: it ages from its time, not its creation: {age:?}"
    );
    let after = h.relay.drain().await.expect("relay drains");
    assert_eq!(after.published, 1, "due: {after:?}");
    h.settle(Duration::from_secs(10)).await;
    assert_eq!(by_group(&h.store.effects().await, "step")["later"], [0]);
}

/// Commits `ns` of `group`'s ledger, one app transaction each.
async fn commit_ledger<S: TestDb>(store: &S, group: &str, ns: impl IntoIterator<Item = i64>) {
    for n in ns {
        commit_message(
            store,
            &Ledger {
                group: group.into(),
                n,
            },
        )
        .await;
    }
}

/// The ledger's dead letters for `ledger.post` in `group`: (id, n, error),
/// oldest first.
/// A harness in which `ledger.post` holds `group`: messages 1 to 4
/// committed, 2 failing for good, settled (2 given up, 3 and 4 kept).
async fn held_ledger<S: TestDb>(store: S, group: &str) -> Harness<S> {
    let h = Harness::new(store).await;
    BROKEN.lock().expect("not poisoned").push((group.into(), 2));
    commit_ledger(&h.store, group, 1..=4).await;
    h.settle(Duration::from_secs(20)).await;
    h
}

async fn held_letters<S: TestDb>(store: &S, group: &str) -> Vec<(i64, i64, String)> {
    let mut letters: Vec<(i64, i64, String)> = store
        .dead_letters(1000)
        .await
        .expect("dead letters")
        .into_iter()
        .filter(|d| {
            d.letter.handler.as_deref() == Some("ledger.post")
                && d.letter.group.as_deref() == Some(group)
        })
        .map(|d| {
            let ledger: Ledger = serde_json::from_str(
                Envelope::from_json(&d.letter.body)
                    .expect("an envelope")
                    .payload
                    .get(),
            )
            .expect("a ledger entry");
            (d.id, ledger.n, d.letter.error)
        })
        .collect();
    letters.sort();
    letters
}

pub(crate) async fn a_held_group_stays_held_across_a_restart_and_resumes_in_order<S: TestDb>(
    store: S,
) {
    use outbox_runtime::admin::{self, AdminError, Resume};

    let h = Harness::new(store.clone()).await;
    let (held, other) = ("held", "other");
    BROKEN.lock().expect("not poisoned").push((held.into(), 2));
    commit_ledger(&h.store, held, 1..=5).await;
    commit_ledger(&h.store, other, 1..=3).await;
    h.settle(Duration::from_secs(20)).await;

    // `ledger.post` gave up on 2: 3 to 5 wait behind it, as dead letters;
    // the other group and the other handler went on.
    let effects = h.store.effects().await;
    let post = by_group(&effects, "post");
    assert_eq!(post[held], [1]);
    assert_eq!(post[other], [1, 2, 3]);
    assert_eq!(by_group(&effects, "audit")[held], [1, 2, 3, 4, 5]);
    let letters = held_letters(&h.store, held).await;
    let ns: Vec<i64> = letters.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(ns, [2, 3, 4, 5]);
    assert!(letters[0].2.contains("hits the bug"), "{}", letters[0].2);
    assert!(
        letters[1]
            .2
            .starts_with("kept: `ledger.post` gave up on an earlier message of group `held`"),
        "{}",
        letters[1].2
    );
    let holds = h.store.held_groups(10).await.expect("held groups");
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(
        (holds[0].hold.handler.as_str(), holds[0].hold.group.as_str()),
        ("ledger.post", held)
    );
    assert_eq!((holds[0].hold.release, holds[0].dead_letters), (None, 4));
    drop(h);

    // A restart: the hold is in the database, so 6 waits too.
    let h = Harness::new(store).await;
    BROKEN.lock().expect("not poisoned").push((held.into(), 2));
    commit_ledger(&h.store, held, [6]).await;
    h.settle(Duration::from_secs(20)).await;
    let effects = h.store.effects().await;
    assert_eq!(by_group(&effects, "post")[held], [1]);
    assert_eq!(by_group(&effects, "audit")[held], [1, 2, 3, 4, 5, 6]);
    let letters = held_letters(&h.store, held).await;
    assert_eq!(letters.len(), 5);

    // One letter alone cannot be replayed or purged: it would run out of
    // order.
    let table = outbox_runtime::dispatch::DispatchTable::from_registry().expect("table");
    let kept = letters[1].0;
    let replay = admin::replay_dead_letter(&h.store, &table, kept).await;
    assert!(
        matches!(replay, Err(AdminError::Held { id, .. }) if id == kept),
        "{replay:?}"
    );
    let purge = admin::purge_dead_letter(&h.store, kept).await;
    assert!(
        matches!(purge, Err(AdminError::Held { id, .. }) if id == kept),
        "{purge:?}"
    );
    let not_held =
        admin::release_group(&h.store, &table, "ledger.post", other, Resume::Replay).await;
    assert!(
        matches!(not_held, Err(AdminError::NotHeld { .. })),
        "{not_held:?}"
    );

    // 7 is on the queue, not consumed yet, when the operator releases the
    // group (the fix deployed): it arrives before the replays, and waits
    // for them. 8 is committed after the release.
    commit_ledger(&h.store, held, [7]).await;
    h.relay.drain().await.expect("relay drains");
    BROKEN.lock().expect("not poisoned").clear();
    let released = admin::release_group(&h.store, &table, "ledger.post", held, Resume::Replay)
        .await
        .expect("released");
    assert_eq!(released.skipped, None);
    let replayed: Vec<i64> = released.replays.iter().map(|r| r.dead_letter).collect();
    assert_eq!(
        replayed,
        letters.iter().map(|(id, _, _)| *id).collect::<Vec<_>>()
    );
    // Released again while the release runs: it starts over, and the first
    // release's replays change nothing.
    let again = admin::release_group(&h.store, &table, "ledger.post", held, Resume::Replay)
        .await
        .expect("released again");
    assert_eq!(again.replays.len(), 5);
    commit_ledger(&h.store, held, [8]).await;
    h.settle(Duration::from_secs(20)).await;

    let effects = h.store.effects().await;
    assert_eq!(by_group(&effects, "post")[held], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(by_group(&effects, "post")[other], [1, 2, 3]);
    assert_eq!(by_group(&effects, "audit")[held], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(held_letters(&h.store, held).await, []);
    assert_eq!(h.store.held_groups(10).await.expect("held groups"), []);
    assert!(
        h.store
            .dead_letters(10)
            .await
            .expect("dead letters")
            .is_empty()
    );
}

pub(crate) async fn a_release_whose_replay_gives_up_holds_the_group_again<S: TestDb>(store: S) {
    use outbox_runtime::admin::{self, Resume};

    let group = "held";
    let h = held_ledger(store, group).await;
    assert_eq!(held_letters(&h.store, group).await.len(), 3);

    // Released before the fix: 2 gives up again, and 3 and 4 wait again.
    let table = outbox_runtime::dispatch::DispatchTable::from_registry().expect("table");
    admin::release_group(&h.store, &table, "ledger.post", group, Resume::Replay)
        .await
        .expect("released");
    h.settle(Duration::from_secs(20)).await;
    assert_eq!(by_group(&h.store.effects().await, "post")[group], [1]);
    let letters = held_letters(&h.store, group).await;
    let ns: Vec<i64> = letters.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(ns, [2, 3, 4]);
    let gave_up = h
        .store
        .dead_letter_by_id(letters[0].0)
        .await
        .expect("dead letter")
        .expect("the give-up");
    assert!(gave_up.letter.error.contains("hits the bug"), "{gave_up:?}");
    assert_eq!(
        gave_up.letter.attempts, 2,
        "the replay ran its two attempts"
    );
    let holds = h.store.held_groups(10).await.expect("held groups");
    assert_eq!((holds.len(), holds[0].hold.release), (1, None), "{holds:?}");

    // A copy of 2 (a redelivery) while the group is held changes nothing:
    // its letter keeps the give-up's error and place.
    let skipped = Envelope::from_json(&gave_up.letter.body).expect("an envelope");
    let outcome = consumer(&h, 50).handle(&delivery(&skipped)).await;
    assert_eq!(outcome, DeliveryOutcome::Done);
    let again = h
        .store
        .dead_letter_by_id(letters[0].0)
        .await
        .expect("dead letter")
        .expect("still there");
    assert_eq!(
        (again.letter.error.as_str(), again.letter.attempts),
        (gave_up.letter.error.as_str(), 2)
    );
    assert_eq!(held_letters(&h.store, group).await, letters);

    // Skipped: 2 is dropped (and stays handled), 3 and 4 run in order.
    let released = admin::release_group(&h.store, &table, "ledger.post", group, Resume::Skip)
        .await
        .expect("released");
    assert_eq!(released.skipped, Some(letters[0].0));
    assert_eq!(released.replays.len(), 2);
    h.settle(Duration::from_secs(20)).await;
    assert_eq!(by_group(&h.store.effects().await, "post")[group], [1, 3, 4]);
    assert_eq!(h.store.held_groups(10).await.expect("held groups"), []);
    // A late copy of 2 finds it handled.
    let outcome = consumer(&h, 50).handle(&delivery(&skipped)).await;
    assert_eq!(outcome, DeliveryOutcome::Done);
    assert_eq!(by_group(&h.store.effects().await, "post")[group], [1, 3, 4]);
    assert!(
        h.store
            .dead_letters(10)
            .await
            .expect("dead letters")
            .is_empty()
    );
}

pub(crate) async fn a_late_copy_of_a_kept_message_during_a_release_does_not_stick_the_group<
    S: TestDb,
>(
    store: S,
) {
    use outbox_runtime::admin::{self, Resume};

    let group = "held";
    let h = held_ledger(store, group).await;
    let letters = held_letters(&h.store, group).await;
    assert_eq!(letters.iter().map(|l| l.1).collect::<Vec<_>>(), [2, 3, 4]);
    let kept = h
        .store
        .dead_letter_by_id(letters[1].0)
        .await
        .expect("dead letter")
        .expect("kept");
    let kept = Envelope::from_json(&kept.letter.body).expect("an envelope");

    // The fix; the release. A late copy of 3 (the queue delivers at least
    // once) arrives before the replays: the release replays 3 already, so
    // the copy is acknowledged and nothing changes.
    BROKEN.lock().expect("not poisoned").clear();
    let table = outbox_runtime::dispatch::DispatchTable::from_registry().expect("table");
    admin::release_group(&h.store, &table, "ledger.post", group, Resume::Replay)
        .await
        .expect("released");
    let outcome = consumer(&h, 50).handle(&delivery(&kept)).await;
    assert_eq!(outcome, DeliveryOutcome::Done);
    h.settle(Duration::from_secs(20)).await;

    assert_eq!(
        by_group(&h.store.effects().await, "post")[group],
        [1, 2, 3, 4]
    );
    assert_eq!(h.store.held_groups(10).await.expect("held groups"), []);
    assert!(
        h.store
            .dead_letters(10)
            .await
            .expect("dead letters")
            .is_empty()
    );
}

pub(crate) async fn a_release_runs_its_replays_only_in_turn<S: TestDb>(store: S) {
    use outbox_runtime::admin::{self, Resume};
    use outbox_runtime::envelope::RELEASE_HEADER;

    let group = "held";
    let h = held_ledger(store, group).await;
    let letters = held_letters(&h.store, group).await;
    assert_eq!(letters.iter().map(|l| l.1).collect::<Vec<_>>(), [2, 3, 4]);
    BROKEN.lock().expect("not poisoned").clear();
    let table = outbox_runtime::dispatch::DispatchTable::from_registry().expect("table");
    admin::release_group(&h.store, &table, "ledger.post", group, Resume::Replay)
        .await
        .expect("released");

    // 3's replay arrives before 2's (as if 2's were lost): it does not run.
    let release = h.store.held_groups(10).await.expect("held groups")[0]
        .hold
        .release
        .expect("a release runs");
    let third = h
        .store
        .dead_letter_by_id(letters[1].0)
        .await
        .expect("dead letter")
        .expect("kept");
    let mut early = Envelope::from_json(&third.letter.body)
        .expect("an envelope")
        .replay(Some("ledger.post"));
    early
        .headers
        .extra
        .insert(RELEASE_HEADER.to_owned(), release.id.to_string());
    let outcome = consumer(&h, 50).handle(&delivery(&early)).await;
    assert_eq!(outcome, DeliveryOutcome::Done);
    assert_eq!(by_group(&h.store.effects().await, "post")[group], [1]);
    assert_eq!(held_letters(&h.store, group).await.len(), 3);

    h.settle(Duration::from_secs(20)).await;
    assert_eq!(
        by_group(&h.store.effects().await, "post")[group],
        [1, 2, 3, 4]
    );
    assert_eq!(h.store.held_groups(10).await.expect("held groups"), []);
}

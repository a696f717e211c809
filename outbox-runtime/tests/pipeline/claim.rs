//! PostgreSQL's claim statement under the conditions that shaped it: a
//! window of rows that are all behind held or waiting heads (the skip scan
//! must find the other groups), and a row leased by another relay while the
//! claim waited for it (the claim must not lease it again).

use std::time::Duration;

use outbox_runtime::{Outgoing, PgStore, Store};

use sqlx::PgPool;

use crate::Step;

/// One `Step` per `(group, n)`, as outgoing messages.
fn steps<'a>(steps: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<Outgoing> {
    steps
        .into_iter()
        .map(|(group, n)| {
            Outgoing::new(&Step {
                group: group.to_owned(),
                n,
                fail_first: 0,
                cascade: false,
                pad: String::new(),
                panic_first: 0,
            })
            .expect("encodes")
        })
        .collect()
}

/// A migrated store holding one `Step` per `(group, n)`, enqueued in that
/// order in one transaction.
async fn store_with<'a>(pool: &PgPool, rows: impl IntoIterator<Item = (&'a str, i64)>) -> PgStore {
    let store = PgStore::new(pool.clone());
    store.migrate().await.expect("migrations run");
    open_with(&store, rows)
        .await
        .commit()
        .await
        .expect("commits");
    store
}

/// (group, n) of what a claim returned, in claim order.
fn claimed(messages: &[outbox_runtime::ClaimedMessage]) -> Vec<(String, i64)> {
    messages
        .iter()
        .map(|m| {
            let step: Step = serde_json::from_str(m.envelope.payload.get()).expect("a step");
            (step.group, step.n)
        })
        .collect()
}

const LEASE: Duration = Duration::from_secs(60);

#[sqlx::test(migrations = false)]
async fn a_group_waiting_out_a_backoff_does_not_hide_the_groups_behind_its_backlog(pool: PgPool) {
    // 300 rows of one group, then one row in each of five others. The first
    // row's publish failed: it waits out a backoff, and so does its group.
    let stuck = (0..300).map(|n| ("stuck", n));
    let others = ["a", "b", "c", "d", "e"].map(|group| (group, 0));
    let store = store_with(&pool, stuck.chain(others)).await;
    sqlx::query(
        "UPDATE outbox SET available_at = now() + interval '1 hour'
         WHERE seq = (SELECT min(seq) FROM outbox)",
    )
    .execute(&pool)
    .await
    .expect("the head waits");

    // A window of 64 rows (10 wanted) holds only the stuck group's rows.
    assert_eq!(PgStore::claim_window(10), 64);
    let got = claimed(&store.claim(10, LEASE).await.expect("claims"));
    assert_eq!(
        got,
        ["a", "b", "c", "d", "e"]
            .map(|g| (g.to_owned(), 0))
            .to_vec(),
        "every other group's head, in sequence order, and nothing of the stuck group"
    );
}

#[sqlx::test(migrations = false)]
async fn a_free_group_is_found_behind_the_rows_of_groups_another_relay_holds(pool: PgPool) {
    // Three groups of 200 rows each, interleaved, then one more group.
    let interleaved = (0..200).flat_map(|n| ["x", "y", "z"].map(|group| (group, n)));
    let store = store_with(&pool, interleaved.chain([("late", 0), ("late", 1)])).await;

    // One relay takes a batch: the heads of x, y and z and what follows.
    let first = claimed(&store.claim(3, LEASE).await.expect("claims"));
    assert_eq!(
        first,
        [("x", 0), ("y", 0), ("z", 0)]
            .map(|(g, n)| (g.to_owned(), n))
            .to_vec()
    );
    // Another relay finds only the group nobody holds; x, y and z's 597
    // waiting rows are behind heads that are leased.
    let second = claimed(&store.claim(3, LEASE).await.expect("claims"));
    assert_eq!(
        second,
        [("late", 0), ("late", 1)]
            .map(|(g, n)| (g.to_owned(), n))
            .to_vec()
    );
    assert!(store.claim(3, LEASE).await.expect("claims").is_empty());
}

#[sqlx::test(migrations = false)]
async fn a_row_leased_while_the_claim_waited_for_it_is_not_claimed_again(pool: PgPool) {
    // One group of three rows. Another session leases rows 2 and 3 and
    // holds their row locks; the claim locks the head, picks 1 to 3 from
    // its snapshot and waits for 2 and 3. When the other session commits,
    // the claim must see the leases on the rows' newest versions and leave
    // them out: taking them would publish them twice (this was a bug: two
    // relays on 100,000 rows published 128,685 messages).
    let store = store_with(&pool, (0..3).map(|n| ("g", n))).await;
    let mut other = pool.begin().await.expect("begins");
    sqlx::query(
        "UPDATE outbox SET lease_until = now() + interval '1 hour'
         WHERE seq > (SELECT min(seq) FROM outbox)",
    )
    .execute(&mut *other)
    .await
    .expect("leases rows 2 and 3");

    let claiming = tokio::spawn({
        let store = store.clone();
        async move { store.claim(10, LEASE).await }
    });
    // Wait until the claim is blocked on the other session's row locks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("reads pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim never waited for the leased rows' locks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.commit().await.expect("commits the leases");

    let got = claimed(&claiming.await.expect("joins").expect("claims"));
    assert_eq!(got, vec![("g".to_owned(), 0)], "only the head");
}

/// Enqueues one `Step` per `(group, n)` in a transaction of its own and
/// leaves it open.
async fn open_with<'a>(
    store: &PgStore,
    rows: impl IntoIterator<Item = (&'a str, i64)>,
) -> outbox_runtime::Tx<sqlx::Postgres> {
    let mut tx = store.begin().await.expect("begins");
    store
        .enqueue_all(&mut tx, &steps(rows))
        .await
        .expect("enqueues");
    tx
}

/// Two producers of one group overlap (two requests for one customer): T1
/// enqueues g/1 and stays open while T2 enqueues g/2. T2 waits for T1 (the
/// group's enqueue lock), so the group's rows are in commit order; a relay
/// claiming meanwhile finds nothing of the group. Without the lock T2
/// commits first, R1 claims g/2, and a claim after T1 and T3 commit would
/// take g/1 and g/3 while R1 holds g/2: the hold rule refuses that too.
#[sqlx::test(migrations = false)]
async fn overlapping_producers_of_a_group_are_published_in_commit_order(pool: PgPool) {
    let store = store_with(&pool, []).await;
    let t1 = open_with(&store, [("g", 1)]).await;
    let t2 = tokio::spawn({
        let store = store.clone();
        async move {
            let tx = open_with(&store, [("g", 2)]).await;
            tx.commit().await.expect("T2 commits");
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !t2.is_finished(),
        "T2 enqueued into g while T1, which enqueued into g first, is open"
    );
    let r1 = store.claim(10, LEASE).await.expect("R1 claims");
    assert_eq!(claimed(&r1), [], "nothing of g is committed yet");
    t1.commit().await.expect("T1 commits");
    t2.await.expect("T2 ran");
    open_with(&store, [("g", 3)])
        .await
        .commit()
        .await
        .expect("T3 commits");
    let r2 = store.claim(10, LEASE).await.expect("R2 claims");
    assert_eq!(
        claimed(&r2),
        [1, 2, 3].map(|n| ("g".to_owned(), n)).to_vec(),
        "the group in commit order"
    );
}

/// The hold rule on its own (a row that arrives below a leased one, as a
/// requeued dead row does): while R1 holds g/2, a claim takes nothing of g,
/// not the g/1 that now precedes it.
#[sqlx::test(migrations = false)]
async fn a_group_with_a_leased_row_is_not_claimed_again(pool: PgPool) {
    let store = store_with(&pool, [("g", 1), ("g", 2)]).await;
    sqlx::query("UPDATE outbox SET status = 'dead' WHERE seq = (SELECT min(seq) FROM outbox)")
        .execute(&pool)
        .await
        .expect("g/1 is dead");
    let r1 = store.claim(10, LEASE).await.expect("R1 claims");
    assert_eq!(claimed(&r1), [("g".to_owned(), 2)]);
    let dead = store
        .rows(Some(outbox_runtime::RowStatus::Dead), 1)
        .await
        .expect("rows");
    outbox_runtime::admin::requeue_dead_row(&store, dead[0].seq)
        .await
        .expect("requeued");
    let r2 = store.claim(10, LEASE).await.expect("R2 claims");
    assert_eq!(claimed(&r2), [], "R1 still holds g");
}

/// A relayed row whose deadline has passed still holds its group until
/// the claim's recovery makes it pending: the claim statement run alone
/// (without `RECOVER_SQL`, as when the deadline passes between the two)
/// takes nothing of the group.
#[sqlx::test(migrations = false)]
async fn a_relayed_row_past_its_deadline_holds_its_group_until_recovered(pool: PgPool) {
    let store = store_with(&pool, [("g", 1), ("g", 2)]).await;
    sqlx::query(
        "UPDATE outbox SET status = 'relayed', lease_until = now() - interval '1 second'
         WHERE seq = (SELECT min(seq) FROM outbox)",
    )
    .execute(&pool)
    .await
    .expect("g/1 relayed, past its deadline");
    let rows = sqlx::query(PgStore::CLAIM_SQL)
        .bind(10_i64)
        .bind(60_000_i64)
        .bind(PgStore::claim_window(10))
        .bind(uuid::Uuid::now_v7())
        .fetch_all(&pool)
        .await
        .expect("claims");
    assert_eq!(rows.len(), 0, "g/2 was claimed past g/1");
    let recovered = store.claim(10, LEASE).await.expect("claims");
    assert_eq!(
        claimed(&recovered),
        [1, 2].map(|n| ("g".to_owned(), n)).to_vec()
    );
}

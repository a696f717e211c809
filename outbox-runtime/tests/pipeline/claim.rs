//! PostgreSQL's claims of groups (`outbox_groups`): the shape of a batch
//! (a chunk from each of few groups, as many groups as it takes to fill
//! it), and the conditions that could break a claim: groups behind a long
//! backlog of held or waiting groups, a group another claim is leasing,
//! overlapping producers, relayed rows, a producer racing the drop of its group's emptied row, and the
//! migration from the schema that kept every row's state on the row.

use std::time::Duration;

use outbox_runtime::{
    PgStore, Store,
    envelope::OutgoingEnvelope,
    store::{AdminStore, ClaimedMessage, PublishFailure, RowStatus, Settlement},
};

use sqlx::PgPool;

use crate::Step;

/// One `Step` per `(group, n)`, as outgoing messages.
fn steps<'a>(steps: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<OutgoingEnvelope> {
    steps
        .into_iter()
        .map(|(group, n)| {
            OutgoingEnvelope::new(&Step {
                group: group.to_owned(),
                n,
                fail_first: 0,
                cascade: false,
                pad: String::new(),
                panic_first: 0,
                fail_run: None,
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
fn claimed(messages: &[outbox_runtime::store::ClaimedMessage]) -> Vec<(String, i64)> {
    messages
        .iter()
        .map(|m| {
            let step: Step = serde_json::from_str(m.envelope.payload.get()).expect("a step");
            (step.group, step.n)
        })
        .collect()
}

/// Settles a claim whose first row the queue took (`confirm_within`:
/// `None` for a durable queue, else how long a non-durable one has to
/// confirm it); the other rows are released.
async fn publish_first(
    store: &PgStore,
    claim: &[ClaimedMessage],
    confirm_within: Option<Duration>,
) {
    store
        .settle(Settlement {
            claimed: claim,
            published: &[claim[0].seq],
            confirm_within,
            failures: &[],
        })
        .await
        .expect("settles");
}

/// How many groups have a row in `outbox_groups`.
async fn group_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_groups")
        .fetch_one(pool)
        .await
        .expect("counts")
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
        "UPDATE outbox_groups SET available_at = now() + interval '1 hour'
         WHERE group_key = 'stuck'",
    )
    .execute(&pool)
    .await
    .expect("the head waits");

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

    // One relay takes a batch of 30: a chunk of 10 from each of x, y and z.
    let first = claimed(&store.claim(30, LEASE).await.expect("claims"));
    assert_eq!(
        sorted(first),
        ["x", "y", "z"]
            .iter()
            .flat_map(|g| (0..10).map(|n| (g.to_string(), n)))
            .collect::<Vec<_>>()
    );
    // Another relay finds only the group nobody holds; x, y and z's 570
    // waiting rows are behind heads that are leased.
    let second = claimed(&store.claim(30, LEASE).await.expect("claims"));
    assert_eq!(
        second,
        [("late", 0), ("late", 1)]
            .map(|(g, n)| (g.to_owned(), n))
            .to_vec()
    );
    assert!(store.claim(30, LEASE).await.expect("claims").is_empty());
}

/// (group, n) pairs in group order, each group's in sequence.
fn sorted(mut pairs: Vec<(String, i64)>) -> Vec<(String, i64)> {
    pairs.sort();
    pairs
}

/// `("g00", n)`, `("g01", n)`, … for `groups` groups and `n` in `0..rows`,
/// interleaved: the groups' first rows come first, in group order.
fn deep_groups(groups: usize, rows: i64) -> Vec<(String, i64)> {
    (0..rows)
        .flat_map(|n| (0..groups).map(move |g| (format!("g{g:02}"), n)))
        .collect()
}

/// A migrated store holding [`deep_groups`].
async fn store_with_deep_groups(pool: &PgPool, groups: usize, rows: i64) -> PgStore {
    let rows = deep_groups(groups, rows);
    store_with(pool, rows.iter().map(|(g, n)| (g.as_str(), *n))).await
}

#[sqlx::test(migrations = false)]
async fn a_batch_takes_a_chunk_from_each_of_few_groups_and_leaves_the_rest_to_other_relays(
    pool: PgPool,
) {
    // 20 groups of 30 rows. A batch of 100 leases the 10 oldest groups and
    // takes 10 rows of each (one SendMessageBatch per group), not one row of
    // each of 100 groups: a second relay finds the other 10 groups free.
    let store = store_with_deep_groups(&pool, 20, 30).await;
    let first = claimed(&store.claim(100, LEASE).await.expect("claims"));
    let expected = |groups: std::ops::Range<usize>| -> Vec<(String, i64)> {
        groups
            .flat_map(|g| (0..10).map(move |n| (format!("g{g:02}"), n)))
            .collect()
    };
    assert_eq!(sorted(first), expected(0..10));
    let second = claimed(&store.claim(100, LEASE).await.expect("claims"));
    assert_eq!(sorted(second), expected(10..20));
    assert!(store.claim(100, LEASE).await.expect("claims").is_empty());
}

#[sqlx::test(migrations = false)]
async fn a_batch_of_one_row_groups_is_filled_from_as_many_groups_as_it_needs(pool: PgPool) {
    // 150 groups of one row each: the groups asked for first (10) hold a
    // row each, so the claim asks again for one group per missing row.
    let store = store_with_deep_groups(&pool, 150, 1).await;
    let first = claimed(&store.claim(100, LEASE).await.expect("claims"));
    assert_eq!(
        sorted(first),
        (0..100)
            .map(|g| (format!("g{g:02}"), 0))
            .collect::<Vec<_>>()
    );
    let second = claimed(&store.claim(100, LEASE).await.expect("claims"));
    assert_eq!(
        sorted(second),
        (100..150)
            .map(|g| (format!("g{g:02}"), 0))
            .collect::<Vec<_>>()
    );
}

#[sqlx::test(migrations = false)]
async fn a_round_that_found_only_emptied_groups_asks_for_as_few_groups_again(pool: PgPool) {
    // Ten group rows whose rows went another way (a consumer confirmed them)
    // come first, then 20 deep groups. The first round finds only the ten
    // empty groups (and drops them); the next still asks for ten groups,
    // not one per missing row.
    let store = store_with_deep_groups(&pool, 20, 30).await;
    sqlx::query(
        "INSERT INTO outbox_groups (group_key, head_seq)
         SELECT 'emptied' || n, n - 100 FROM generate_series(1, 10) AS n",
    )
    .execute(&pool)
    .await
    .expect("adds emptied groups");
    let got = claimed(&store.claim(100, LEASE).await.expect("claims"));
    assert_eq!(
        sorted(got),
        (0..10)
            .flat_map(|g| (0..10).map(move |n| (format!("g{g:02}"), n)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        group_rows(&pool).await,
        20,
        "the emptied groups are dropped"
    );
}

#[sqlx::test(migrations = false)]
async fn a_row_below_its_groups_head_is_claimed_after_cleanup(pool: PgPool) {
    // A producer outside the group's lock (an older version, an enqueue
    // outside a transaction) can commit a row after its group's head moved
    // past it. Claims read a group from its head, so cleanup moves the head
    // back to the row.
    let store = store_with(&pool, [("g", 0), ("g", 1)]).await;
    sqlx::query("UPDATE outbox_groups SET head_seq = head_seq + 1")
        .execute(&pool)
        .await
        .expect("moves the head past g/0");
    store
        .cleanup(&outbox_runtime::store::RetentionPolicy::default())
        .await
        .expect("cleans up");
    let got = claimed(&store.claim(10, LEASE).await.expect("claims"));
    assert_eq!(got, [("g".to_owned(), 0), ("g".to_owned(), 1)]);
}

#[sqlx::test(migrations = false)]
async fn a_batch_of_one_deep_group_takes_its_rows_in_order(pool: PgPool) {
    let store = store_with_deep_groups(&pool, 1, 300).await;
    let first = claimed(&store.claim(100, LEASE).await.expect("claims"));
    assert_eq!(
        first,
        (0..100).map(|n| ("g00".to_owned(), n)).collect::<Vec<_>>()
    );
}

/// Enqueues one `Step` per `(group, n)` in a transaction of its own and
/// leaves it open.
async fn open_with<'a>(
    store: &PgStore,
    rows: impl IntoIterator<Item = (&'a str, i64)>,
) -> outbox_runtime::store::StoreTransaction<sqlx::Postgres> {
    let mut tx = store.begin().await.expect("begins");
    store
        .enqueue_all(&mut tx, &steps(rows))
        .await
        .expect("enqueues");
    tx
}

/// A migrated store whose only group, `g`, has a group row and no rows.
async fn store_with_an_empty_group(pool: &PgPool) -> PgStore {
    let store = store_with(pool, []).await;
    sqlx::query("INSERT INTO outbox_groups (group_key, head_seq) VALUES ('g', 1)")
        .execute(pool)
        .await
        .expect("a group without rows");
    store
}

/// A producer that enqueues `(group, n)` and commits, in a task of its own
/// (it may wait for the group's lock).
fn commit_in_background(
    store: &PgStore,
    group: &'static str,
    n: i64,
) -> tokio::task::JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move {
        let tx = open_with(&store, [(group, n)]).await;
        tx.commit().await.expect("the producer commits");
    })
}

/// A relay drops the row of an empty group (its clean-up) while a producer
/// of that group waits for the group's lock: once the producer has the
/// lock it sees the row gone and adds it again, so its message is claimed.
/// A producer that looked for the group row in a snapshot from before the
/// lock would see the dropped row and leave its message out of every claim.
#[sqlx::test(migrations = false)]
async fn a_group_dropped_while_its_producer_waits_is_added_again(pool: PgPool) {
    let store = store_with_an_empty_group(&pool).await;
    let groups = vec!["g".to_owned()];
    let mut relay = pool.begin().await.expect("begins");
    let idle: Vec<String> = sqlx::query_scalar(PgStore::LOCK_IDLE_GROUPS_SQL)
        .bind(&groups)
        .fetch_all(&mut *relay)
        .await
        .expect("locks the idle group");
    assert_eq!(idle, groups);
    let producer = commit_in_background(&store, "g", 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!producer.is_finished(), "the producer did not wait");
    let dropped = sqlx::query(PgStore::DROP_EMPTY_GROUPS_SQL)
        .bind(&groups)
        .execute(&mut *relay)
        .await
        .expect("drops the empty group");
    assert_eq!(dropped.rows_affected(), 1);
    relay.commit().await.expect("the relay commits");
    producer.await.expect("the producer ran");
    let claim = store.claim(10, LEASE).await.expect("claims");
    assert_eq!(
        claimed(&claim),
        [("g".to_owned(), 2)],
        "the message has no group row"
    );
}

fn dead(seq: i64) -> PublishFailure {
    PublishFailure {
        seq,
        error: "refused".into(),
        retry_after: None,
        counts: true,
    }
}

/// The claims' fault scenarios: `scripts/fault-tests.filter` selects every
/// test under a module named `faults`.
mod faults {
    use super::*;

    #[sqlx::test(migrations = false)]
    async fn a_claim_whose_lease_ran_out_between_its_rounds_takes_each_row_once(pool: PgPool) {
        // A zero lease has run out by the second round; that round must still
        // not take the first round's group again.
        let store = store_with_deep_groups(&pool, 2, 1).await;
        let got = claimed(&store.claim(10, Duration::ZERO).await.expect("claims"));
        assert_eq!(sorted(got), [("g00".to_owned(), 0), ("g01".to_owned(), 0)]);
    }

    #[sqlx::test(migrations = false)]
    async fn a_group_another_claim_is_leasing_is_skipped_and_not_claimed_after(pool: PgPool) {
        // Another session leases group g and holds its row's lock, as a claim
        // does while it runs. The claim skips the locked group rather than wait,
        // and once the other session commits, the group is leased: still not
        // claimable (taking it would publish its rows twice).
        let store = store_with(&pool, (0..3).map(|n| ("g", n)).chain([("h", 0)])).await;
        let mut other = pool.begin().await.expect("begins");
        sqlx::query(
            "UPDATE outbox_groups SET lease_until = now() + interval '1 hour',
                                      lease_token = gen_random_uuid()
             WHERE group_key = 'g'",
        )
        .execute(&mut *other)
        .await
        .expect("leases g");

        let got = tokio::time::timeout(Duration::from_secs(10), store.claim(10, LEASE))
            .await
            .expect("the claim does not wait for the locked group")
            .expect("claims");
        assert_eq!(claimed(&got), vec![("h".to_owned(), 0)]);
        other.commit().await.expect("commits the lease");
        assert!(store.claim(10, LEASE).await.expect("claims").is_empty());
    }

    /// Two producers of one group overlap (two requests for one customer): T1
    /// enqueues g/1 and stays open while T2 enqueues g/2. T2 waits for T1 (the
    /// group's enqueue lock) before its row gets a `seq`, so the group's rows
    /// are in commit order; a relay claiming meanwhile finds nothing of the
    /// group. Without the lock T2 commits first, R1 claims g/2, and a claim
    /// after T1 and T3 commit would take g/1 and g/3 while R1 holds g/2: the
    /// hold rule refuses that too.
    #[sqlx::test(migrations = false)]
    async fn overlapping_producers_of_a_group_are_published_in_commit_order(pool: PgPool) {
        let store = store_with(&pool, []).await;
        let t1 = open_with(&store, [("g", 1)]).await;
        let t2 = commit_in_background(&store, "g", 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !t2.is_finished(),
            "T2 enqueued into g while T1, which enqueued into g first, is open"
        );
        let handed_out: Option<i64> = sqlx::query_scalar(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('outbox', 'seq')::regclass)",
        )
        .fetch_one(&pool)
        .await
        .expect("reads the sequence");
        assert_eq!(
            handed_out,
            Some(1),
            "T2 took a seq before it had the group's lock: a later producer could commit a smaller seq"
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
        let r0 = store.claim(1, LEASE).await.expect("claims g/1");
        store
            .settle(Settlement {
                claimed: &r0[..1],
                published: &[],
                confirm_within: None,
                failures: &[dead(r0[0].seq)],
            })
            .await
            .expect("g/1 is dead");
        let r1 = store.claim(10, LEASE).await.expect("R1 claims");
        assert_eq!(claimed(&r1), [("g".to_owned(), 2)]);
        let dead = store
            .rows(Some(outbox_runtime::store::RowStatus::Dead), 1)
            .await
            .expect("rows");
        outbox_runtime::admin::requeue_dead_row(&store, dead[0].seq)
            .await
            .expect("requeued");
        let r2 = store.claim(10, LEASE).await.expect("R2 claims");
        assert_eq!(claimed(&r2), [], "R1 still holds g");
    }

    /// Hands g/1 to a non-durable queue: the group is held until it is
    /// confirmed, or until its confirmation deadline passes (the process that
    /// held it died); then the group is claimed again from g/1.
    #[sqlx::test(migrations = false)]
    async fn a_relayed_row_holds_its_group_until_confirmed_or_past_its_deadline(pool: PgPool) {
        let store = store_with(&pool, [("g", 1), ("g", 2)]).await;
        let first = store.claim(1, LEASE).await.expect("claims");
        publish_first(&store, &first, Some(LEASE)).await;
        assert_eq!(claimed(&first), [("g".to_owned(), 1)]);
        assert_eq!(claimed(&store.claim(10, LEASE).await.expect("claims")), []);

        sqlx::query("UPDATE outbox_groups SET relayed_until = now() - interval '1 second'")
            .execute(&pool)
            .await
            .expect("past the deadline");
        let again = store.claim(10, LEASE).await.expect("claims");
        assert_eq!(
            claimed(&again),
            [1, 2].map(|n| ("g".to_owned(), n)).to_vec(),
            "the unconfirmed row first"
        );
        publish_first(&store, &again, Some(LEASE)).await;
        assert_eq!(claimed(&store.claim(10, LEASE).await.expect("claims")), []);

        let mut tx = store.begin().await.expect("begins");
        store
            .confirm(&mut tx, &[again[0].envelope.id])
            .await
            .expect("confirms");
        tx.commit().await.expect("commits");
        assert_eq!(
            claimed(&store.claim(10, LEASE).await.expect("claims")),
            [("g".to_owned(), 2)],
            "the group is free once its relayed row is confirmed"
        );
    }

    /// A settlement that empties a group drops the group's row, unless a
    /// producer is enqueueing into the group at that moment: its row, committed
    /// after the settlement, must still be claimed.
    #[sqlx::test(migrations = false)]
    async fn a_producer_racing_the_drop_of_its_emptied_group_keeps_its_row(pool: PgPool) {
        let store = store_with(&pool, [("g", 1)]).await;
        let got = store.claim(10, LEASE).await.expect("claims");
        let producer = open_with(&store, [("g", 2)]).await;
        publish_first(&store, &got, None).await;
        producer.commit().await.expect("the producer commits");
        let got = store.claim(10, LEASE).await.expect("claims");
        assert_eq!(claimed(&got), [("g".to_owned(), 2)]);

        // Settled with no producer around, the emptied group's row goes.
        publish_first(&store, &got, None).await;
        assert_eq!(group_rows(&pool).await, 0);
    }

    /// A group's row whose rows went another way (confirmed by a consumer, or
    /// its producer rolled back) is dropped by the next claim that finds it.
    #[sqlx::test(migrations = false)]
    async fn a_claim_drops_the_row_of_a_group_without_rows(pool: PgPool) {
        let store = store_with_an_empty_group(&pool).await;
        assert!(store.claim(10, LEASE).await.expect("claims").is_empty());
        assert_eq!(group_rows(&pool).await, 0);
    }

    /// A database migrated by the previous version, with rows in every state,
    /// migrated to this one: pending rows keep their order, attempts, last
    /// error and backoff (on the group's first row); a relayed row is pending
    /// again; published and dead rows are in the archive; admin reads see them
    /// all.
    #[sqlx::test(migrations = false)]
    async fn rows_of_every_state_survive_the_migration_to_groups_and_archive(pool: PgPool) {
        let mut previous =
            sqlx::migrate::Migrator::new(std::path::Path::new("migrations/postgres"))
                .await
                .expect("reads the migrations");
        let before: Vec<_> = previous.iter().filter(|m| m.version < 3).cloned().collect();
        assert_eq!(before.len(), 2);
        previous = sqlx::migrate::Migrator::with_migrations(before);
        previous.dangerous_set_table_name("_outbox_migrations");
        previous.run(&pool).await.expect("the previous schema");
        sqlx::raw_sql(
            r#"INSERT INTO outbox (id, message_type, version, group_key, payload, created_at,
                                   status, attempts, last_error, available_at, published_at, lease_until)
               VALUES
               (gen_random_uuid(), 'test.step', 1, 'done', '{"group":"done","n":0,"fail_first":0,"cascade":false,"pad":"","panic_first":0}', now(),
                'published', 0, NULL, now(), now(), NULL),
               (gen_random_uuid(), 'test.step', 1, 'gone', '{"group":"gone","n":0,"fail_first":0,"cascade":false,"pad":"","panic_first":0}', now(),
                'dead', 3, 'refused', now(), NULL, NULL),
               (gen_random_uuid(), 'test.step', 1, 'a', '{"group":"a","n":0,"fail_first":0,"cascade":false,"pad":"","panic_first":0}', now(),
                'pending', 2, 'throttled', now() + interval '1 hour', NULL, NULL),
               (gen_random_uuid(), 'test.step', 1, 'a', '{"group":"a","n":1,"fail_first":0,"cascade":false,"pad":"","panic_first":0}', now(),
                'pending', 0, NULL, now(), NULL, NULL),
               (gen_random_uuid(), 'test.step', 1, 'b', '{"group":"b","n":0,"fail_first":0,"cascade":false,"pad":"","panic_first":0}', now(),
                'relayed', 0, NULL, now(), NULL, now() + interval '1 hour'),
               (gen_random_uuid(), 'test.step', 1, 'b', '{"group":"b","n":1,"fail_first":0,"cascade":false,"pad":"","panic_first":0}', now(),
                'pending', 0, NULL, now(), NULL, NULL)"#,
        )
        .execute(&pool)
        .await
        .expect("rows of every state");

        let store = PgStore::new(pool.clone());
        store.migrate().await.expect("migrates");

        let statuses: Vec<(String, RowStatus, u32, Option<String>)> = store
            .rows(None, 10)
            .await
            .expect("rows")
            .into_iter()
            .rev()
            .map(|r| (r.group, r.status, r.attempts, r.last_error))
            .collect();
        assert_eq!(
            statuses,
            [
                ("done", RowStatus::Published, 0, None),
                ("gone", RowStatus::Dead, 3, Some("refused")),
                ("a", RowStatus::Pending, 2, Some("throttled")),
                ("a", RowStatus::Pending, 0, None),
                ("b", RowStatus::Pending, 0, None),
                ("b", RowStatus::Pending, 0, None),
            ]
            .map(|(g, s, a, e)| (g.to_owned(), s, a, e.map(str::to_owned)))
            .to_vec()
        );
        // Group a waits out its first row's backoff; b is claimed from its
        // relayed row, which counts as pending again.
        let got = store.claim(10, LEASE).await.expect("claims");
        assert_eq!(claimed(&got), [("b".to_owned(), 0), ("b".to_owned(), 1)]);
        sqlx::query("UPDATE outbox_groups SET available_at = now() WHERE group_key = 'a'")
            .execute(&pool)
            .await
            .expect("a's backoff is over");
        let got = store.claim(10, LEASE).await.expect("claims");
        assert_eq!(
            got.iter().map(|m| m.attempts).collect::<Vec<_>>(),
            [2, 0],
            "the failed row's attempts"
        );
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.pending, stats.published, stats.dead), (4, 1, 1));
        // Retention still trims the archive; the dead row stays.
        sqlx::query("UPDATE outbox_archive SET archived_at = now() - interval '2 days'")
            .execute(&pool)
            .await
            .expect("ages the archive");
        let report = store
            .cleanup(&outbox_runtime::store::RetentionPolicy::default())
            .await
            .expect("cleans up");
        assert_eq!(report.published_deleted, 1);
        assert_eq!(store.stats().await.expect("stats").dead, 1);
    }
}

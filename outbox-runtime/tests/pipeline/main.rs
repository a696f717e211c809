//! The data path end to end, on both stores: app transaction → outbox rows →
//! relay → in-process queue → worker → dispatcher → handler (→ outbox, for
//! cascades). Every scenario runs against the real PostgreSQL (a fresh
//! database per test, from `#[sqlx::test]`) and against an SQLite file.

mod claim;
mod db;
mod scenarios;
#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use outbox_runtime::consume::Consumer;
use outbox_runtime::{
    Dispatcher, HandlerContext, InProcessQueue, OutboxMessage, Relay, Worker,
    backoff::Backoff,
    consume::{ConsumerConfig, WorkerConfig},
    handler,
    metrics::Metrics,
    relay::RelayConfig,
    transport::InProcessConfig,
};

use crate::db::TestDb;
use crate::support::fault_report;

/// One step of a group's work. The handler records it as an effect in its
/// transaction; the fields script failures and cascades.
#[derive(
    Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "test.step", group = group)]
pub(crate) struct Step {
    pub(crate) group: String,
    pub(crate) n: i64,
    /// Fail the first `fail_first` attempts.
    #[serde(default)]
    pub(crate) fail_first: u32,
    /// Publish a `Followup`, then fail on the first attempt anyway: the
    /// cascade must roll back with the handler.
    #[serde(default)]
    pub(crate) cascade: bool,
    /// Makes the body as large as a test needs.
    #[serde(default)]
    pub(crate) pad: String,
    /// Panic in the first `panic_first` attempts.
    #[serde(default)]
    pub(crate) panic_first: u32,
    /// Fail this run only (counted like `fail_first`).
    #[serde(default)]
    pub(crate) fail_run: Option<u32>,
}

/// Published by the `Step` handler (a cascade).
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.followup", group = group)]
pub(crate) struct Followup {
    pub(crate) group: String,
    pub(crate) n: i64,
}

/// Always fails; gives up after two attempts.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.doomed", group = group)]
pub(crate) struct Doomed {
    pub(crate) group: String,
}

/// One run of a `step.record` handler: the attempt the context reported,
/// and whether it succeeded. Kept outside the handler's transaction, so
/// failed runs are seen too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) message_id: uuid::Uuid,
    pub(crate) n: i64,
    pub(crate) attempt: u32,
    pub(crate) ok: bool,
}

/// Every `step.record` run since the current [`Harness`] started.
pub(crate) static RUNS: std::sync::Mutex<Vec<Run>> = std::sync::Mutex::new(Vec::new());

/// The runs of `step.record` so far.
pub(crate) fn runs() -> Vec<Run> {
    RUNS.lock().expect("not poisoned").clone()
}

/// Scripts a `Step`'s failures by the handler's real runs of the message
/// (counted here, not by `ctx.attempt()`, which is what tests check).
#[handler(name = "step.record")]
async fn record_step(msg: Step, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let (id, attempt) = (ctx.message_id(), ctx.attempt());
    let run = 1 + RUNS
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|r| r.message_id == id)
        .count() as u32;
    let log = |ok: bool| {
        RUNS.lock().expect("not poisoned").push(Run {
            message_id: id,
            n: msg.n,
            attempt,
            ok,
        });
    };
    if run <= msg.panic_first {
        log(false);
        panic!("step {} panics in run {run}", msg.n);
    }
    let result = async {
        db::record_effect(ctx, "step", &msg.group, msg.n).await?;
        if msg.cascade {
            ctx.publish(&Followup {
                group: msg.group.clone(),
                n: msg.n,
            })?;
            anyhow::ensure!(run > 1, "cascading step fails its first run");
        }
        anyhow::ensure!(msg.fail_run != Some(run), "step {} fails run {run}", msg.n);
        anyhow::ensure!(
            run > msg.fail_first,
            "step {} fails run {run} of its first {}",
            msg.n,
            msg.fail_first
        );
        Ok(())
    }
    .await;
    log(result.is_ok());
    result
}

#[handler(name = "followup.record")]
async fn record_followup(msg: Followup, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    db::record_effect(ctx, "followup", &msg.group, msg.n).await
}

#[handler(name = "doomed.fail", max_attempts = 2)]
async fn always_fail(msg: Doomed) -> anyhow::Result<()> {
    anyhow::bail!("{} is doomed", msg.group)
}

/// Has two handlers: one that always works and one that fails until its
/// group is in [`FIXED`] (a bug fixed and deployed).
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.flaky", group = group)]
pub(crate) struct Flaky {
    pub(crate) group: String,
}

/// Groups whose `flaky.charge` handler is fixed.
pub(crate) static FIXED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[handler(name = "flaky.audit")]
async fn audit_flaky(msg: Flaky, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    db::record_effect(ctx, "audit", &msg.group, 0).await
}

#[handler(name = "flaky.charge", max_attempts = 2)]
async fn charge_flaky(msg: Flaky, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let fixed = FIXED.lock().expect("not poisoned").contains(&msg.group);
    anyhow::ensure!(fixed, "charging {} hits the bug", msg.group);
    db::record_effect(ctx, "charge", &msg.group, 0).await
}

/// A message whose handler runs [`CONTEST`]'s hook, then fails (and gives
/// up: `max_attempts` is 1). The hook starts a second delivery of the same
/// message while the first run holds its inbox reservation.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.contested", group = group)]
pub(crate) struct Contested {
    pub(crate) group: String,
}

/// A future a test sets for a handler to run mid-run, once.
pub(crate) type Hook =
    std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>;

/// Takes `hook` and runs it, if a test set it.
async fn run_hook(hook: &Hook) {
    let hook = hook.lock().expect("not poisoned").take();
    if let Some(hook) = hook {
        hook.await;
    }
}

/// What `contested.fail` runs before it fails.
pub(crate) static CONTEST: Hook = std::sync::Mutex::new(None);

/// Runs of `contested.fail`.
pub(crate) static CONTEST_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[handler(name = "contested.fail", max_attempts = 1)]
async fn fail_contested(msg: Contested) -> anyhow::Result<()> {
    CONTEST_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    run_hook(&CONTEST).await;
    anyhow::bail!("{} fails", msg.group)
}

/// A message whose handler's first two runs hit a deadlock in its own
/// transaction (PostgreSQL raises SQLSTATE 40P01), then works. Its
/// `max_attempts` is 1: only a run the handler itself got wrong may count.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.deadlocked", group = group)]
pub(crate) struct Deadlocked {
    pub(crate) group: String,
}

/// Runs of `deadlocked.once`.
pub(crate) static DEADLOCKED_RUNS: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(0);

#[handler(name = "deadlocked.once", max_attempts = 1)]
async fn deadlock_once(msg: Deadlocked, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let run = DEADLOCKED_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if run <= 2 {
        sqlx::query(
            "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$",
        )
        .execute(ctx.db::<sqlx::Postgres>()?)
        .await?;
    }
    db::record_effect(ctx, "deadlocked", &msg.group, i64::from(run)).await
}

/// Like [`Contested`], with three attempts: its handler records each
/// run's `ctx.attempt()` in [`RECOUNTED`], runs [`RECOUNT`]'s hook (once),
/// and fails.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.recounted", group = group)]
pub(crate) struct Recounted {
    pub(crate) group: String,
}

/// What `recounted.fail` runs before its first failure.
pub(crate) static RECOUNT: Hook = std::sync::Mutex::new(None);

/// The attempt of each run of `recounted.fail`, in run order.
pub(crate) static RECOUNTED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

#[handler(name = "recounted.fail", max_attempts = 3)]
async fn fail_recounted(msg: Recounted, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    RECOUNTED.lock().expect("not poisoned").push(ctx.attempt());
    run_hook(&RECOUNT).await;
    anyhow::bail!("{} fails", msg.group)
}

/// A message whose handler's first run hits a database error and returns
/// Ok anyway (it ignores the error), which on PostgreSQL leaves the
/// transaction aborted; later runs work.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.swallowed", group = group)]
pub(crate) struct Swallowed {
    pub(crate) group: String,
}

/// Runs of `swallowed.once`.
pub(crate) static SWALLOWED_RUNS: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(0);

#[handler(name = "swallowed.once")]
async fn swallow_once(msg: Swallowed, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let run = SWALLOWED_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    db::record_effect(ctx, "swallowed", &msg.group, i64::from(run)).await?;
    if run == 1 {
        let ignored = sqlx::query("SELECT 1 / 0")
            .execute(ctx.db::<sqlx::Postgres>()?)
            .await;
        assert!(ignored.is_err(), "division by zero fails");
    }
    Ok(())
}

/// Version 1 of `test.reserved`. This build has no handler for it: a
/// deploy replaced it with [`ReservedV3`], through [`ReservedV2`].
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.reserved", group = group)]
pub(crate) struct ReservedV1 {
    pub(crate) group: String,
    pub(crate) n: i64,
    pub(crate) sku: String,
}

/// Version 2: a list of SKUs. No handler either.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.reserved", version = 2, group = group, upcast_from = ReservedV1)]
pub(crate) struct ReservedV2 {
    pub(crate) group: String,
    pub(crate) n: i64,
    pub(crate) skus: Vec<String>,
}

impl From<ReservedV1> for ReservedV2 {
    fn from(v1: ReservedV1) -> Self {
        assert!(v1.sku != "panic", "sku {} cannot be converted", v1.sku);
        ReservedV2 {
            group: v1.group,
            n: v1.n,
            skus: vec![v1.sku],
        }
    }
}

/// Version 3: lines with quantities. The version this build handles.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.reserved", version = 3, group = group, upcast_from = ReservedV2)]
pub(crate) struct ReservedV3 {
    pub(crate) group: String,
    pub(crate) n: i64,
    pub(crate) lines: Vec<(String, u32)>,
}

impl From<ReservedV2> for ReservedV3 {
    fn from(v2: ReservedV2) -> Self {
        ReservedV3 {
            group: v2.group,
            n: v2.n,
            lines: v2.skus.into_iter().map(|sku| (sku, 1)).collect(),
        }
    }
}

/// Records `reserved:<version seen>:<sku>x<qty>,...` as the effect's kind.
#[handler(name = "reserved.record")]
async fn record_reserved(msg: ReservedV3, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let lines: Vec<String> = msg
        .lines
        .iter()
        .map(|(sku, qty)| format!("{sku}x{qty}"))
        .collect();
    let kind = format!("reserved:v{}:{}", ctx.envelope().version, lines.join(","));
    db::record_effect(ctx, &kind, &msg.group, msg.n).await
}

/// Its handler declares it publishes [`Followup`]; with `stray` it also
/// publishes a [`Doomed`], ignoring the error.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.announced", group = group)]
pub(crate) struct Announced {
    pub(crate) group: String,
    pub(crate) n: i64,
    pub(crate) stray: bool,
}

#[handler(name = "announced.publish", publishes = [Followup])]
async fn publish_announced(msg: Announced, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    ctx.publish(&Followup {
        group: msg.group.clone(),
        n: msg.n,
    })?;
    if msg.stray {
        let _ignored = ctx.publish(&Doomed {
            group: msg.group.clone(),
        });
    }
    db::record_effect(ctx, "announced", &msg.group, msg.n).await
}

/// A ledger entry: `ledger.post` holds its group when it gives up (it
/// fails while `(group, n)` is in [`BROKEN`]); `ledger.audit` moves on.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
#[outbox(name = "test.ledger", group = group)]
pub(crate) struct Ledger {
    pub(crate) group: String,
    pub(crate) n: i64,
}

/// The entries `ledger.post` fails on (a bug until removed).
pub(crate) static BROKEN: std::sync::Mutex<Vec<(String, i64)>> = std::sync::Mutex::new(Vec::new());

#[handler(name = "ledger.post", max_attempts = 2, on_dead_letter = "hold_group")]
async fn post_ledger(msg: Ledger, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    let broken = BROKEN
        .lock()
        .expect("not poisoned")
        .contains(&(msg.group.clone(), msg.n));
    anyhow::ensure!(!broken, "posting {} {} hits the bug", msg.group, msg.n);
    db::record_effect(ctx, "post", &msg.group, msg.n).await
}

#[handler(name = "ledger.audit")]
async fn audit_ledger(msg: Ledger, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    db::record_effect(ctx, "audit", &msg.group, msg.n).await
}

/// Taken by every [`Harness`] for its life: the handlers' statics are
/// shared by the tests of this binary, so under `cargo test` (threads in one
/// process, unlike nextest's process per test) harnesses run one at a time,
/// each from fresh statics.
static ONE_HARNESS_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Empties what the handlers record and forgets their hooks.
fn reset_statics() {
    use std::sync::atomic::Ordering::SeqCst;
    RUNS.lock().expect("not poisoned").clear();
    FIXED.lock().expect("not poisoned").clear();
    BROKEN.lock().expect("not poisoned").clear();
    RECOUNTED.lock().expect("not poisoned").clear();
    *CONTEST.lock().expect("not poisoned") = None;
    *RECOUNT.lock().expect("not poisoned") = None;
    for counter in [&CONTEST_RUNS, &DEADLOCKED_RUNS, &SWALLOWED_RUNS] {
        counter.store(0, SeqCst);
    }
}

/// A store, a queue, a relay and a worker wired together with fast retries.
pub(crate) struct Harness<S: TestDb> {
    _alone: tokio::sync::MutexGuard<'static, ()>,
    pub(crate) store: S,
    pub(crate) queue: Arc<InProcessQueue>,
    pub(crate) relay: Relay<S, InProcessQueue>,
    pub(crate) worker: Worker<S, InProcessQueue>,
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        multiplier: 2.0,
        jitter: false,
    }
}

impl<S: TestDb> Harness<S> {
    pub(crate) async fn new(store: S) -> Self {
        Self::with_queue(store, InProcessConfig::default()).await
    }

    pub(crate) async fn with_queue(store: S, queue: InProcessConfig) -> Self {
        let alone = tokio::time::timeout(Duration::from_secs(600), ONE_HARNESS_AT_A_TIME.lock())
            .await
            .expect("another Harness of this test is still alive: drop it first");
        reset_statics();
        store.migrate().await.expect("migrations run");
        store.create_app_tables().await;
        let queue = Arc::new(InProcessQueue::with_config(queue));
        let metrics = Arc::new(Metrics::default());
        let dispatcher = Arc::new(Dispatcher::from_registry().expect("dispatch table"));
        let relay = Relay::new(store.clone(), Arc::clone(&queue))
            .with_config(RelayConfig {
                batch_size: 50,
                backoff: fast_backoff(),
                max_attempts: 3,
                ..RelayConfig::default()
            })
            .with_metrics(Arc::clone(&metrics));
        let worker = Worker::new(
            Consumer::new(store.clone(), dispatcher)
                .with_config(ConsumerConfig {
                    retry_backoff: fast_backoff(),
                    ..ConsumerConfig::default()
                })
                .with_metrics(Arc::clone(&metrics)),
            Arc::clone(&queue),
        )
        .with_config(WorkerConfig {
            wait: Duration::from_millis(50),
            retention: None,
            ..WorkerConfig::default()
        });
        Harness {
            _alone: alone,
            store,
            queue,
            relay,
            worker,
            metrics,
        }
    }

    /// Relays and consumes until the outbox has nothing pending and the
    /// queue is empty, or fails after `limit`.
    pub(crate) async fn settle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.relay.drain().await.expect("relay drains");
            self.worker.run_once().await.expect("worker runs");
            let stats = self.store.stats().await.expect("stats");
            if stats.pending == 0 && self.queue.stats().queued == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled after {limit:?}: {stats:?}, queue {:?}",
                self.queue.stats()
            );
        }
    }
}

/// PostgreSQL only: a first pass its database aborted.
mod postgres_only {
    #[sqlx::test(migrations = false)]
    async fn an_aborted_first_pass_is_found_and_run_again(pool: sqlx::PgPool) {
        crate::scenarios::an_aborted_first_pass_is_found_and_run_again(pool).await;
    }
}

/// The worker's pump handling, which needs no particular store.
mod pumps {
    #[tokio::test]
    async fn a_worker_drains_on_a_pump_for_its_budget_then_pumps_again() {
        let (store, _dir) = crate::db::sqlite_store().await;
        crate::scenarios::a_worker_drains_on_a_pump_for_its_budget_then_pumps_again(store).await;
    }
}

mod shutdown {
    #[tokio::test]
    async fn a_stopped_worker_takes_no_further_batch() {
        let (store, _dir) = crate::db::sqlite_store().await;
        crate::scenarios::a_stopped_worker_takes_no_further_batch(store).await;
    }
}

/// Runs each scenario on both stores.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $scenario(pool: sqlx::PgPool) {
                    crate::scenarios::$scenario(outbox_runtime::PgStore::new(pool)).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (store, _dir) = crate::db::sqlite_store().await;
                    crate::scenarios::$scenario(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    rolled_back_transaction_leaves_nothing,
    committed_message_is_handled_exactly_once,
    redelivery_is_suppressed_by_the_inbox,
    cascade_commits_with_the_inbox_row,
    corrupt_row_is_dead_lettered_without_stopping_the_relay,
    failing_handler_stops_its_group_only,
    exhausted_handler_is_dead_lettered,
    poison_is_dead_lettered_and_acknowledged,
    retention_deletes_only_what_it_should,
    ten_thousand_messages_in_fifty_groups,
    a_drain_past_its_deadline_still_publishes_a_batch,
    stuck_messages_are_reported,
    replayed_dead_letter_runs_only_the_handler_that_gave_up,
    requeued_dead_row_is_published_after_the_fix,
    a_failing_run_sends_its_batch_through_savepoints,
    a_failure_the_second_pass_does_not_reach_still_counts,
    old_versions_are_upcast_to_the_handled_one_in_group_order,
    an_undeclared_publish_fails_the_run_and_publishes_nothing,
    a_delayed_message_waits_for_its_time_and_holds_its_group,
    a_due_message_is_published_by_the_next_drain,
    a_held_group_stays_held_across_a_restart_and_resumes_in_order,
);

/// The fault scenarios: `scripts/fault-tests.filter` selects every test
/// under a module named `faults`, so a test is in the fault suite by being
/// here, whatever its name.
mod faults {
    on_both_stores!(
        publish_failures_back_off_and_an_outage_uses_no_attempts,
        oversized_message_is_dead_lettered_without_blocking_other_groups,
        two_relays_and_two_workers_publish_once_in_group_order,
        four_relays_and_four_workers_publish_once_in_group_order,
        a_panicking_handler_fails_that_message_only,
        relayed_rows_hold_their_group,
        held_back_deliveries_use_up_no_attempts,
        replaying_a_poison_dead_letter_skips_the_handlers_that_committed,
        a_relay_whose_lease_ran_out_cannot_overwrite_the_rows,
        a_message_too_large_for_the_transport_is_refused_at_enqueue,
        a_live_relay_keeps_its_relayed_rows_while_consumers_lag,
        a_full_queue_makes_the_relay_wait_without_using_attempts,
        one_failing_handler_in_a_batch_rolls_back_alone,
        a_failing_head_holds_back_its_group_across_the_batch,
        a_past_deadline_holds_back_all_but_the_first_transaction,
        a_shutdown_mid_drain_loses_nothing_and_the_next_process_handles_the_rest_at_once,
        a_late_copy_of_a_kept_message_during_a_release_does_not_stick_the_group,
        a_release_whose_replay_gives_up_holds_the_group_again,
        a_release_runs_its_replays_only_in_turn,
    );

    /// PostgreSQL only: connections killed under a running relay and
    /// worker, deadlocks and failed statements in a handler's transaction,
    /// deliveries that wait for one another.
    mod postgres_only {
        #[sqlx::test(migrations = false)]
        async fn connections_killed_mid_batch_lose_nothing(pool: sqlx::PgPool) {
            crate::scenarios::connections_killed_mid_batch_lose_nothing(pool).await;
        }

        #[sqlx::test(migrations = false)]
        async fn a_deadlock_in_the_handlers_transaction_uses_no_attempt(pool: sqlx::PgPool) {
            crate::scenarios::a_deadlock_in_the_handlers_transaction_uses_no_attempt(pool).await;
        }

        #[sqlx::test(migrations = false)]
        async fn a_run_whose_statement_failed_is_not_done_though_the_handler_returned_ok(
            pool: sqlx::PgPool,
        ) {
            crate::scenarios::a_run_whose_statement_failed_is_not_done_though_the_handler_returned_ok(
                pool,
            )
            .await;
        }

        #[sqlx::test(migrations = false)]
        async fn a_delivery_that_waited_for_another_counts_that_ones_failure(pool: sqlx::PgPool) {
            crate::scenarios::a_delivery_that_waited_for_another_counts_that_ones_failure(pool)
                .await;
        }

        #[sqlx::test(migrations = false)]
        async fn a_second_delivery_waits_for_the_first_and_does_not_run_the_handler(
            pool: sqlx::PgPool,
        ) {
            crate::scenarios::a_second_delivery_waits_for_the_first_and_does_not_run_the_handler(
                pool,
            )
            .await;
        }
    }
}

/// A relay told to stop.
mod stopping {
    on_both_stores!(
        a_relay_told_to_stop_finishes_its_batch_and_claims_no_more,
        a_relay_stopped_before_it_starts_claims_nothing,
    );
}

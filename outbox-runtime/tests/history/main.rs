//! The history checker: random, seeded schedules run the real pipeline
//! (producers, the store, relays, in-process queues or the local SQS
//! server, workers) concurrently
//! under random faults, record everything that happens, and check the whole
//! history once the schedule has settled.
//!
//! Each schedule is derived from its seed ([`plan`]), driven by [`run`] on
//! a store from a [`site`] (PostgreSQL or SQLite), and judged by [`check`].
//! What is recorded:
//!
//! - in the database, in the same transactions as the library's own writes:
//!   every producer commit (`history_commits`, ordered by a per-group clock;
//!   see [`db`]) and every handler effect (`history_effects`, ordered by a
//!   per-(group, handler) clock);
//! - in memory ([`record`]): every handler run (its message, `ctx.attempt()`,
//!   when it started and how it ended) and every dead letter the operator
//!   replayed.
//!
//! Environment:
//!
//! - `OUTBOX_HISTORY_SCHEDULES`: schedules per store, seeds `1..=N`
//!   (default 12; `scripts/reliability` runs 1,000).
//! - `OUTBOX_HISTORY_SQS_SCHEDULES`: schedules on PostgreSQL with one node
//!   on one FIFO queue of the local SQS server (default 12;
//!   `scripts/reliability` runs 200). Those plans have one worker, no
//!   faults and no failing handlers: see `Plan::on_sqs` for what the local
//!   server cannot play.
//! - `OUTBOX_HISTORY_SEED=N`: runs seed `N` only, and prints what each
//!   failed check saw (a replay of a failure).
//!
//! A failing schedule prints one line with its seed and the command that
//! replays it; the test fails after running every schedule.

mod check;
mod db;
mod plan;
mod record;
mod run;
mod site;
#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_runtime::{HandlerContext, OutboxMessage, handler};
use uuid::Uuid;

use crate::check::Findings;
use crate::record::{Recorder, RunOutcome};
use crate::site::Site;
use crate::support::fault_report;

/// Attempts per handler before it gives up: the `max_attempts` of both
/// handlers below (the attribute takes a literal, so it is written twice).
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// Schedules per store when `OUTBOX_HISTORY_SCHEDULES` is not set.
const DEFAULT_SCHEDULES: u64 = 12;

/// Schedules on the local SQS server when `OUTBOX_HISTORY_SQS_SCHEDULES`
/// is not set.
#[cfg(feature = "sqs")]
const DEFAULT_SQS_SCHEDULES: u64 = 12;

/// The one message type of the checker. Its handlers follow the script it
/// carries, so a schedule decides every failure up front.
#[derive(
    Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage,
)]
#[outbox(name = "history.event", group = group)]
pub(crate) struct Event {
    /// Unique per message, made by the producer. The checker's identity of a
    /// message: the envelope id changes when a dead letter is replayed.
    pub(crate) key: Uuid,
    pub(crate) group: String,
    /// What `history.apply` does with it.
    pub(crate) apply: Script,
    /// What `history.audit` does with it.
    pub(crate) audit: Script,
    /// What `history.ledger` does with it.
    pub(crate) ledger: Script,
}

impl Event {
    fn script(&self, handler: HandlerName) -> Script {
        match handler {
            HandlerName::Apply => self.apply,
            HandlerName::Audit => self.audit,
            HandlerName::Ledger => self.ledger,
        }
    }
}

/// How one handler behaves on one message. Runs are counted per (key,
/// handler) by the checker's run log ([`Recorder`]), from 1, across
/// replays, and never by `ctx.attempt()`, which is under test.
#[derive(
    Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub(crate) struct Script {
    /// Fail runs `1..=fail_first` (after writing the effect, which must roll back).
    pub(crate) fail_first: u32,
    /// Panic in this run (after writing the effect, which must roll back).
    pub(crate) panic_on: Option<u32>,
    /// Sleep this long in the handler's transaction first.
    pub(crate) slow_ms: u32,
    /// Fail every run until the schedule's final phase fixes the handler:
    /// it gives up, is replayed, gives up again, ...
    pub(crate) doomed: bool,
}

/// The three handlers of [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum HandlerName {
    /// `history.apply`: the ordered one; fails and panics as scripted, never doomed.
    Apply,
    /// `history.audit`: sometimes doomed, to exercise give-up and replay.
    Audit,
    /// `history.ledger`: holds its group when it gives up
    /// (`on_dead_letter = "hold_group"`), so it is ordered without
    /// exception; sometimes doomed, to exercise holds and releases.
    Ledger,
}

impl HandlerName {
    pub(crate) const ALL: [HandlerName; 3] =
        [HandlerName::Apply, HandlerName::Audit, HandlerName::Ledger];

    /// Its registered name: the inbox key and the dead letter's `handler`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HandlerName::Apply => "history.apply",
            HandlerName::Audit => "history.audit",
            HandlerName::Ledger => "history.ledger",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }
}

impl std::fmt::Display for HandlerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[handler(name = "history.apply", max_attempts = 3)]
async fn apply(event: Event, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    scripted(HandlerName::Apply, &event, ctx).await
}

#[handler(name = "history.audit", max_attempts = 3)]
async fn audit(event: Event, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    scripted(HandlerName::Audit, &event, ctx).await
}

#[handler(
    name = "history.ledger",
    max_attempts = 3,
    on_dead_letter = "hold_group"
)]
async fn ledger(event: Event, ctx: &mut HandlerContext<'_>) -> anyhow::Result<()> {
    scripted(HandlerName::Ledger, &event, ctx).await
}

/// One handler run: logged when it starts, its effect written in the
/// handler's transaction, then the script decides whether it fails or
/// panics (rolling the effect back); the outcome is logged before returning.
/// A run whose future is dropped (its task killed) has no outcome.
async fn scripted(
    handler: HandlerName,
    event: &Event,
    ctx: &mut HandlerContext<'_>,
) -> anyhow::Result<()> {
    let recorder = Arc::clone(ctx.state::<Arc<Recorder>>()?);
    let script = event.script(handler);
    let run = recorder.start(event.key, handler, ctx.message_id(), ctx.attempt());
    if script.slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(script.slow_ms))).await;
    }
    let result = match db::record_effect(ctx, event, handler).await {
        Ok(()) if script.doomed && !recorder.is_fixed() => {
            Err(anyhow::anyhow!("{handler} is doomed for {}", event.key))
        }
        Ok(()) if run.number <= script.fail_first => Err(anyhow::anyhow!(
            "{handler} fails run {} of {} as scripted",
            run.number,
            event.key
        )),
        other => other,
    };
    if script.panic_on == Some(run.number) {
        recorder.finish(run.index, RunOutcome::Panicked);
        panic!(
            "{handler}, run {} of {}: {SCRIPTED_PANIC}",
            run.number, event.key
        );
    }
    let outcome = if result.is_ok() {
        RunOutcome::Ok
    } else {
        RunOutcome::Failed
    };
    recorder.finish(run.index, outcome);
    result
}

/// The seeds to run: `OUTBOX_HISTORY_SEED` alone, or
/// `1..=OUTBOX_HISTORY_SCHEDULES` (`OUTBOX_HISTORY_SQS_SCHEDULES` on SQS).
fn seeds(via: Via) -> (Vec<u64>, bool) {
    let parse = |name: &str| {
        std::env::var(name).ok().map(|value| {
            value
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|err| panic!("{name}={value:?} is not a number: {err}"))
        })
    };
    if let Some(seed) = parse("OUTBOX_HISTORY_SEED") {
        return (vec![seed], true);
    }
    let schedules = match via {
        Via::InProcess => parse("OUTBOX_HISTORY_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES),
        #[cfg(feature = "sqs")]
        Via::Sqs => parse("OUTBOX_HISTORY_SQS_SCHEDULES").unwrap_or(DEFAULT_SQS_SCHEDULES),
    };
    ((1..=schedules).collect(), false)
}

/// Keeps the scripted panics (dozens per schedule, each with a backtrace
/// under `RUST_BACKTRACE`) out of the output; every other panic is printed
/// as usual.
fn quiet_scripted_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info
                .payload_as_str()
                .is_some_and(|message| message.ends_with(SCRIPTED_PANIC))
            {
                default(info);
            }
        }));
    });
}

/// How a scripted panic's message ends.
const SCRIPTED_PANIC: &str = "panics as scripted";

/// How the schedules' messages travel.
#[derive(Clone, Copy, Debug)]
enum Via {
    InProcess,
    #[cfg(feature = "sqs")]
    Sqs,
}

/// Runs every seed on one store, prints a line per failing schedule, reports
/// the totals, and fails if any schedule failed.
async fn suite<T: Site>(mut site: T, via: Via) {
    quiet_scripted_panics();
    let (seeds, replay) = seeds(via);
    let label = match via {
        Via::InProcess => T::KIND.to_owned(),
        #[cfg(feature = "sqs")]
        Via::Sqs => format!("{}, SQS", T::KIND),
    };
    #[cfg(feature = "sqs")]
    let sqs = match via {
        Via::Sqs => {
            assert!(
                std::env::var_os("AWS_ENDPOINT_URL").is_some(),
                "AWS_ENDPOINT_URL is not set: run scripts/test, which starts the local SQS server (moto) and sets it"
            );
            Some(aws_sdk_sqs::Client::new(
                &outbox_runtime::aws::sdk_config().await,
            ))
        }
        Via::InProcess => None,
    };
    let started = Instant::now();
    let mut total = Findings::default();
    let mut failed = Vec::new();
    let mut slowest = Duration::ZERO;
    for &seed in &seeds {
        let (plan, queues) = match via {
            Via::InProcess => (plan::Plan::from_seed(seed), run::Queues::InProcess),
            #[cfg(feature = "sqs")]
            Via::Sqs => (
                plan::Plan::from_seed(seed).on_sqs(),
                run::Queues::Sqs(
                    run::SqsQueue::create(sqs.clone().expect("a client for SQS schedules")).await,
                ),
            ),
        };
        let store = site.fresh().await;
        let schedule_started = Instant::now();
        let recorded = run::run(&store, &plan, &queues).await;
        let history = db::History::read(&store).await;
        let findings = check::check(&plan, &history, &recorded);
        site.release(store).await;
        let took = schedule_started.elapsed();
        slowest = slowest.max(took);
        if findings.failed() {
            let line = format!(
                "history: seed {seed} on {} failed: {}; replay with OUTBOX_HISTORY_SEED={seed} cargo nextest run -p outbox-runtime --all-features --test history",
                label,
                findings.summary()
            );
            println!("{line}");
            // The evidence prints at once: a replay may not meet the same
            // timing again.
            for example in &findings.examples {
                println!("    {example}");
            }
            failed.push(seed);
        }
        if replay {
            println!(
                "history: seed {seed} on {}: {} messages, {} runs, {} faults ({}), {took:.2?}",
                label,
                findings.sent,
                recorded.runs.len(),
                plan.faults.len(),
                if recorded.killed {
                    "tasks killed"
                } else {
                    "no task killed"
                },
            );
        }
        total.add(&findings);
    }
    site.close().await;
    let elapsed = started.elapsed();
    println!(
        "history: {} schedules on {} in {elapsed:.1?} ({:.2?} per schedule, slowest {slowest:.2?}): {} messages, {} handled, {} failed",
        seeds.len(),
        label,
        elapsed / u32::try_from(seeds.len().max(1)).unwrap_or(u32::MAX),
        total.sent,
        total.handled,
        failed.len(),
    );
    fault_report::report(&fault_report::FaultRecord {
        scenario: "random histories, checked",
        injection: &match via {
            Via::InProcess => format!(
                "seeded random schedules: 2-4 producers interleave 20-60 messages in 2-5 groups (one in eight delayed by up to 250 ms) while relays, workers and whole nodes are killed, queues go down, handlers fail, panic and give up, dead letters are replayed and held groups released; every handler run and effect is recorded and checked ({label})"
            ),
            #[cfg(feature = "sqs")]
            Via::Sqs => format!(
                "seeded random schedules: 2-4 producers interleave 20-60 messages in 2-5 groups (one in eight delayed by up to 250 ms) while 1-2 relays and one worker share one FIFO queue of the local SQS server; no faults, handlers succeed (some slowly); every handler run and effect is recorded and checked ({label})"
            ),
        },
        runs: seeds.len() as u64,
        sent: total.sent,
        handled: total.handled,
        lost: total.lost,
        duplicate_effects: total.duplicate_effects,
        duplicates_suppressed: Some(total.duplicates_suppressed),
        order_violations: Some(total.order_violations),
        stuck_groups: Some(total.stuck_groups),
        attempt_mismatches: Some(total.attempt_mismatches + total.dead_letter_mismatches),
        early_runs: Some(total.early_runs),
        harness_problems: Some(total.trouble),
    });
    assert!(
        failed.is_empty(),
        "{} of {} schedules on {} failed (seeds {failed:?}); each printed a line above saying what failed and how to replay it",
        failed.len(),
        seeds.len(),
        label,
    );
}

/// Runs `future` on a multi-threaded runtime of its own (two workers, the
/// machine's size), so relays, workers and producers really run in
/// parallel: `#[sqlx::test]` runs its body on a current-thread runtime.
fn on_multi_thread_runtime<F: Future<Output = ()> + Send + 'static>(future: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(future);
}

#[sqlx::test(migrations = false)]
async fn postgres_histories_hold(pool: sqlx::PgPool) {
    let options = (*pool.connect_options()).clone();
    let suite = async move { suite(site::PgSite::new(options).await, Via::InProcess).await };
    if let Err(err) = tokio::task::spawn_blocking(move || on_multi_thread_runtime(suite)).await {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
        panic!("the suite did not finish: {err}");
    }
}

#[test]
fn sqlite_histories_hold() {
    on_multi_thread_runtime(async { suite(site::SqliteSite::new(), Via::InProcess).await });
}

/// PostgreSQL, with one node on one SQS FIFO queue of the local server
/// (see `Plan::on_sqs` for what those plans leave out, and why).
#[cfg(feature = "sqs")]
#[sqlx::test(migrations = false)]
async fn postgres_histories_hold_on_sqs(pool: sqlx::PgPool) {
    let options = (*pool.connect_options()).clone();
    let suite = async move { suite(site::PgSite::new(options).await, Via::Sqs).await };
    if let Err(err) = tokio::task::spawn_blocking(move || on_multi_thread_runtime(suite)).await {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
        panic!("the suite did not finish: {err}");
    }
}

//! The checks, run on a schedule's whole history once it has settled (or
//! the settle bound passed). Each counts its violations; a schedule fails
//! when any count is not zero.
//!
//! The words used below:
//!
//! - A message is *committed* when its key is in `history_commits`.
//! - A group's *commit order* is its committed keys sorted by `(n, idx)`
//!   (see [`crate::db`]).
//! - An *effect* is a row of `history_effects`: a handler's transaction that
//!   committed. Effects of one (group, handler) sorted by `n` are in the
//!   order they committed.
//! - A *run* is one call of a handler, from the run log; it *failed* when
//!   it returned an error or panicked.
//! - A *life* of a (key, handler) runs from the message's commit, or from a
//!   replay of its dead letter, to the next give-up of that (key, handler)
//!   (a message kept behind its group's hold is not one). A run belongs to
//!   the life in which it started.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use crate::db::History;
use crate::plan::Plan;
use crate::record::Run;
use crate::run::Recorded;
use crate::{HandlerName, MAX_ATTEMPTS};

/// Examples kept per check, for the replay's details.
const EXAMPLES_PER_CHECK: usize = 8;

/// What the checks found in one schedule (or, summed, in many).
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Messages committed.
    pub(crate) sent: u64,
    /// Committed messages with an effect of every handler.
    pub(crate) handled: u64,
    /// **Lost**: committed messages missing the effect of a handler.
    pub(crate) lost: u64,
    /// **Phantom**: effects of messages that were never committed (rolled
    /// back).
    pub(crate) phantoms: u64,
    /// **Duplicate effects**: effects beyond the first of one (key, handler).
    pub(crate) duplicate_effects: u64,
    /// **Order violations**: per (group, handler), the effects sorted by
    /// the handler clock must follow the group's commit order; each
    /// adjacent pair that is inverted counts once. For the handlers that
    /// move on, keys dead-lettered for that handler are left out (a dead
    /// letter lets its group move on, and its replay comes later by
    /// design); the ledger holds its group, so none is.
    pub(crate) order_violations: u64,
    /// Of the order violations, those whose two messages' outbox rows are
    /// already in the inverted order (`seq`): the library's insert order
    /// differs from the commit order. The others were relayed or handled
    /// out of order. A hint, not a check.
    pub(crate) order_violations_in_outbox: u64,
    /// **Stuck groups**: groups with rows still pending or relayed, or with
    /// dead letters, when the settle bound passed (at least one when the
    /// schedule did not settle).
    pub(crate) stuck_groups: u64,
    /// **Attempt mismatches**: runs whose `ctx.attempt()` is not 1 + the
    /// failed runs of the same (key, handler) that ended before it started,
    /// in the same life. When a task was killed, a failed run may go
    /// unrecorded by the library, so there it must only not exceed it.
    pub(crate) attempt_mismatches: u64,
    /// **Dead letters out of line**: a handler's give-up must come after
    /// `max_attempts` failed runs of that life: at least that many, and
    /// exactly that many when no task was killed.
    pub(crate) dead_letter_mismatches: u64,
    /// Dead letters that are not a give-up of one of our handlers on one of
    /// our messages (poison): none is expected.
    pub(crate) poison: u64,
    /// **Early runs**: runs of a delayed message that started before the
    /// time it was enqueued for (`enqueue_at`, `enqueue_after`).
    pub(crate) early_runs: u64,
    /// Problems outside the checks: a producer transaction failed, a task
    /// panicked.
    pub(crate) trouble: u64,
    /// Redeliveries the inbox absorbed (not a failure).
    pub(crate) duplicates_suppressed: u64,
    /// What was seen, a few lines per failed check.
    pub(crate) examples: Vec<String>,
}

impl Findings {
    pub(crate) fn failed(&self) -> bool {
        self.counts().iter().any(|&(n, _, _)| n > 0)
    }

    /// Each failure count with its names (singular, plural).
    fn counts(&self) -> [(u64, &'static str, &'static str); 10] {
        [
            (self.lost, "lost message", "lost messages"),
            (self.phantoms, "phantom effect", "phantom effects"),
            (
                self.duplicate_effects,
                "duplicate effect",
                "duplicate effects",
            ),
            (self.order_violations, "order violation", "order violations"),
            (self.stuck_groups, "stuck group", "stuck groups"),
            (
                self.attempt_mismatches,
                "attempt mismatch",
                "attempt mismatches",
            ),
            (
                self.dead_letter_mismatches,
                "dead letter out of line",
                "dead letters out of line",
            ),
            (self.poison, "poison dead letter", "poison dead letters"),
            (self.early_runs, "early run", "early runs"),
            (self.trouble, "harness problem", "harness problems"),
        ]
    }

    /// The failed checks with their counts, for the one-line report.
    pub(crate) fn summary(&self) -> String {
        let failed: Vec<String> = self
            .counts()
            .into_iter()
            .filter(|&(n, _, _)| n > 0)
            .map(|(n, one, many)| {
                let mut part = format!("{n} {}", if n == 1 { one } else { many });
                if one == "order violation" {
                    part.push_str(&format!(
                        " ({} already in the outbox's order)",
                        self.order_violations_in_outbox
                    ));
                }
                part
            })
            .collect();
        format!("{} (of {} messages)", failed.join(", "), self.sent)
    }

    /// Adds another schedule's counts (not its examples).
    pub(crate) fn add(&mut self, other: &Findings) {
        self.sent += other.sent;
        self.handled += other.handled;
        self.lost += other.lost;
        self.phantoms += other.phantoms;
        self.duplicate_effects += other.duplicate_effects;
        self.order_violations += other.order_violations;
        self.order_violations_in_outbox += other.order_violations_in_outbox;
        self.stuck_groups += other.stuck_groups;
        self.attempt_mismatches += other.attempt_mismatches;
        self.dead_letter_mismatches += other.dead_letter_mismatches;
        self.poison += other.poison;
        self.early_runs += other.early_runs;
        self.trouble += other.trouble;
        self.duplicates_suppressed += other.duplicates_suppressed;
    }
}

/// Collects a check's examples, up to [`EXAMPLES_PER_CHECK`].
struct Examples<'a> {
    out: &'a mut Vec<String>,
    kept: usize,
}

impl<'a> Examples<'a> {
    fn new(out: &'a mut Vec<String>) -> Self {
        Examples { out, kept: 0 }
    }

    fn push(&mut self, example: impl FnOnce() -> String) {
        if self.kept < EXAMPLES_PER_CHECK {
            self.out.push(example());
        }
        self.kept += 1;
    }
}

/// A key or message id, short enough to read in a report: its last eight
/// hex digits (random in both; a UUID v7 starts with the time).
fn short(id: Uuid) -> String {
    let hex = id.simple().to_string();
    hex[hex.len() - 8..].to_owned()
}

/// Runs every check on one schedule.
pub(crate) fn check(plan: &Plan, history: &History, recorded: &Recorded) -> Findings {
    let mut findings = Findings {
        duplicates_suppressed: recorded.duplicates_suppressed,
        ..Findings::default()
    };
    let orders = commit_orders(history);
    let committed: HashMap<Uuid, &str> = history
        .commits
        .iter()
        .map(|c| (c.key, c.group.as_str()))
        .collect();
    findings.sent = committed.len() as u64;

    lost_phantoms_duplicates(history, recorded, &committed, &mut findings);
    early(recorded, &mut findings);
    order(&orders, history, recorded, &mut findings);
    stuck(recorded, &mut findings);
    attempts(recorded, &mut findings);
    poison(recorded, &mut findings);

    findings.trouble = recorded.trouble.len() as u64;
    findings.examples.extend(
        recorded
            .trouble
            .iter()
            .take(EXAMPLES_PER_CHECK)
            .map(|t| format!("harness: {t}")),
    );
    if findings.failed() {
        findings.examples.insert(
            0,
            format!(
                "plan of seed {}: {} groups, {} producers, {} nodes, {:?} of chaos, faults {:?}",
                plan.seed,
                plan.groups.len(),
                plan.producers.len(),
                plan.nodes.len(),
                plan.chaos,
                plan.faults.iter().map(|f| f.kind).collect::<Vec<_>>()
            ),
        );
    }
    findings
}

/// Each group's commit order: its keys sorted by `(n, idx)`.
fn commit_orders(history: &History) -> BTreeMap<&str, Vec<Uuid>> {
    let mut rows: BTreeMap<&str, Vec<(i64, i64, Uuid)>> = BTreeMap::new();
    for c in &history.commits {
        rows.entry(c.group.as_str())
            .or_default()
            .push((c.n, c.idx, c.key));
    }
    rows.into_iter()
        .map(|(group, mut keys)| {
            keys.sort_unstable();
            (group, keys.into_iter().map(|(_, _, key)| key).collect())
        })
        .collect()
}

/// Checks 1 and 2: every committed message has an effect of each handler;
/// no effect belongs to a message that was not committed; no (key, handler)
/// has two effects.
fn lost_phantoms_duplicates(
    history: &History,
    recorded: &Recorded,
    committed: &HashMap<Uuid, &str>,
    findings: &mut Findings,
) {
    let mut effects: HashMap<(Uuid, &str), u64> = HashMap::new();
    for e in &history.effects {
        *effects.entry((e.key, e.handler.as_str())).or_default() += 1;
    }

    let mut lost = Examples::new(&mut findings.examples);
    let mut keys: Vec<(&Uuid, &&str)> = committed.iter().collect();
    keys.sort();
    for (&key, group) in keys {
        let missing: Vec<&str> = HandlerName::ALL
            .iter()
            .map(|h| h.name())
            .filter(|h| !effects.contains_key(&(key, *h)))
            .collect();
        if missing.is_empty() {
            findings.handled += 1;
        } else {
            findings.lost += 1;
            lost.push(|| {
                format!(
                    "lost: {} (group {group}) has no effect of {}",
                    short(key),
                    missing.join(", ")
                )
            });
        }
    }

    let mut phantoms = Examples::new(&mut findings.examples);
    for e in history
        .effects
        .iter()
        .filter(|e| !committed.contains_key(&e.key))
    {
        findings.phantoms += 1;
        phantoms.push(|| {
            let why = if recorded.rolled_back.contains(&e.key) {
                "rolled back"
            } else {
                "never enqueued"
            };
            format!(
                "phantom: {} has an effect of {} in group {}, but was {why}",
                short(e.key),
                e.handler,
                e.group
            )
        });
    }

    let mut duplicates = Examples::new(&mut findings.examples);
    let mut counted: Vec<_> = effects.iter().filter(|&(_, &n)| n > 1).collect();
    counted.sort();
    for (&(key, handler), &n) in counted {
        findings.duplicate_effects += n - 1;
        duplicates.push(|| {
            format!(
                "duplicate: {handler} took effect {n} times for {}; {}",
                short(key),
                story(recorded, key, handler)
            )
        });
    }
}

/// What happened to one (key, handler), in logical time: its runs (message,
/// `ctx.attempt()`, outcome) and the dead letters seen.
fn story(recorded: &Recorded, key: Uuid, handler: &str) -> String {
    let mut events: Vec<(u64, String)> = recorded
        .runs
        .iter()
        .filter(|r| r.key == key && r.handler.name() == handler)
        .map(|r| {
            let how = r
                .ended
                .map_or_else(|| "killed".to_owned(), |(_, how)| format!("{how:?}"));
            let message = recorded
                .dead_letters
                .iter()
                .find(|d| d.replay_id == Some(r.message_id))
                .map_or_else(
                    || format!("message {}", short(r.message_id)),
                    |d| {
                        format!(
                            "message {} (replay of dead letter {})",
                            short(r.message_id),
                            d.id
                        )
                    },
                );
            (
                r.started,
                format!(
                    "run {} of {message} with attempt {}: {how}",
                    r.number, r.attempt
                ),
            )
        })
        .collect();
    events.extend(
        recorded
            .dead_letters
            .iter()
            .filter(|d| d.key == Some(key) && d.handler.is_some_and(|h| h.name() == handler))
            .map(|d| {
                let replay = d
                    .replay_id
                    .map_or_else(String::new, |id| format!(", replayed as {}", short(id)));
                (d.seen, format!("dead letter {} seen{replay}", d.id))
            }),
    );
    events.sort();
    events
        .into_iter()
        .map(|(_, event)| event)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check 3: per (group, handler), effects follow the commit order, except
/// for keys dead-lettered for a handler that lets its group move on.
fn order(
    orders: &BTreeMap<&str, Vec<Uuid>>,
    history: &History,
    recorded: &Recorded,
    findings: &mut Findings,
) {
    let dead_lettered: HashSet<(Uuid, HandlerName)> = recorded
        .dead_letters
        .iter()
        .filter_map(|d| Some((d.key?, d.handler?)))
        .collect();
    let mut examples = Examples::new(&mut findings.examples);
    for (&group, keys) in orders {
        for handler in HandlerName::ALL {
            // The commit position of each key that must keep its place.
            let position: HashMap<Uuid, usize> = keys
                .iter()
                .filter(|&&key| {
                    handler == HandlerName::Ledger || !dead_lettered.contains(&(key, handler))
                })
                .enumerate()
                .map(|(at, &key)| (key, at))
                .collect();
            let mut effects: Vec<(i64, Uuid)> = history
                .effects
                .iter()
                .filter(|e| e.group == group && e.handler == handler.name())
                .map(|e| (e.n, e.key))
                .collect();
            effects.sort_unstable();
            // Each key's first effect (a duplicate is counted elsewhere).
            let mut seen = HashSet::new();
            let handled: Vec<(Uuid, usize)> = effects
                .into_iter()
                .filter(|&(_, key)| seen.insert(key))
                .filter_map(|(_, key)| Some((key, *position.get(&key)?)))
                .collect();
            for pair in handled.windows(2) {
                let [(before, was), (after, is)] = [pair[0], pair[1]];
                if was > is {
                    findings.order_violations += 1;
                    let in_outbox = matches!(
                        (history.outbox_seq.get(&before), history.outbox_seq.get(&after)),
                        (Some(b), Some(a)) if b < a
                    );
                    findings.order_violations_in_outbox += u64::from(in_outbox);
                    examples.push(|| {
                        format!(
                            "order: group {group}, {handler}: {} (commit #{}) took effect before {} (commit #{}); {}",
                            short(before),
                            was + 1,
                            short(after),
                            is + 1,
                            if in_outbox {
                                "their outbox rows are in that order too"
                            } else {
                                "their outbox rows are in commit order"
                            }
                        ) + &format!("; before: {}; after: {}", story(recorded, before, handler.name()), story(recorded, after, handler.name()))
                    });
                }
            }
        }
    }
}

/// Check 4: the schedule settled; if not, which groups are stuck.
fn stuck(recorded: &Recorded, findings: &mut Findings) {
    if let Some(unsettled) = &recorded.unsettled {
        findings.stuck_groups = unsettled.groups.len().max(1) as u64;
        findings.examples.push(format!(
            "stuck: not settled; groups {:?}; {}",
            unsettled.groups, unsettled.state
        ));
    }
}

/// Every dead letter is a give-up of one of our handlers on one of our
/// messages: nothing here is poison.
fn poison(recorded: &Recorded, findings: &mut Findings) {
    let mut examples = Examples::new(&mut findings.examples);
    for d in recorded
        .dead_letters
        .iter()
        .filter(|d| d.key.is_none() || d.handler.is_none())
    {
        findings.poison += 1;
        examples.push(|| {
            format!(
                "poison: dead letter {} (group {:?}) is no give-up of ours",
                d.id, d.group
            )
        });
    }
}

/// Check 5: `ctx.attempt()` counts the handler's own failed runs, and a
/// give-up comes after `max_attempts` of them. A message kept behind its
/// group's hold is not a give-up: it was not run, its attempts stand, and
/// its life goes on in its replay.
fn attempts(recorded: &Recorded, findings: &mut Findings) {
    // When each (key, handler)'s lives end: its dead letters, as seen.
    let mut ends: HashMap<(Uuid, HandlerName), Vec<u64>> = HashMap::new();
    for d in recorded.dead_letters.iter().filter(|d| !d.kept) {
        if let (Some(key), Some(handler)) = (d.key, d.handler) {
            ends.entry((key, handler)).or_default().push(d.seen);
        }
    }
    let life = |key: Uuid, handler: HandlerName, at: u64| {
        ends.get(&(key, handler))
            .map_or(0, |ends| ends.iter().filter(|&&end| end < at).count())
    };
    let mut runs: HashMap<(Uuid, HandlerName), Vec<&Run>> = HashMap::new();
    for run in &recorded.runs {
        runs.entry((run.key, run.handler)).or_default().push(run);
    }
    // Failed runs of (key, handler) in the life of `at` that ended before `at`.
    let failed_before = |key: Uuid, handler: HandlerName, at: u64| {
        let this_life = life(key, handler, at);
        runs.get(&(key, handler)).map_or(0, |runs| {
            runs.iter()
                .filter(|r| life(key, handler, r.started) == this_life)
                .filter(|r| {
                    r.ended
                        .is_some_and(|(end, how)| end < at && how.is_failure())
                })
                .count() as u32
        })
    };

    // Runs of (key, handler) in the life of `at` that started before it and
    // never ended (killed): shown next to a mismatch, as a possible cause.
    let unfinished_before = |key: Uuid, handler: HandlerName, at: u64| {
        let this_life = life(key, handler, at);
        runs.get(&(key, handler)).map_or(0, |runs| {
            runs.iter()
                .filter(|r| life(key, handler, r.started) == this_life)
                .filter(|r| r.started < at && r.ended.is_none())
                .count()
        })
    };

    let mut examples = Examples::new(&mut findings.examples);
    let mut ordered: Vec<&Run> = recorded.runs.iter().collect();
    ordered.sort_by_key(|r| r.started);
    for run in ordered.into_iter().filter(|r| r.ended.is_some()) {
        let expected = 1 + failed_before(run.key, run.handler, run.started);
        let wrong = if recorded.killed {
            run.attempt == 0 || run.attempt > expected
        } else {
            run.attempt != expected
        };
        if wrong {
            findings.attempt_mismatches += 1;
            examples.push(|| {
                let unfinished = unfinished_before(run.key, run.handler, run.started);
                format!(
                    "attempt: {} run {} of {} (message {}) had ctx.attempt() = {}, expected {}{} ({} failed and {unfinished} killed runs before it in its life)",
                    run.handler,
                    run.number,
                    short(run.key),
                    short(run.message_id),
                    run.attempt,
                    if recorded.killed { "at most " } else { "" },
                    expected,
                    expected - 1,
                )
            });
        }
    }

    let mut examples = Examples::new(&mut findings.examples);
    for d in recorded.dead_letters.iter().filter(|d| !d.kept) {
        let (Some(key), Some(handler)) = (d.key, d.handler) else {
            continue;
        };
        let failed = failed_before(key, handler, d.seen);
        let wrong = if recorded.killed {
            failed < MAX_ATTEMPTS
        } else {
            failed != MAX_ATTEMPTS
        };
        if wrong {
            findings.dead_letter_mismatches += 1;
            examples.push(|| {
                format!(
                    "dead letter: {handler} gave up on {} after {failed} failed runs of its life, max_attempts is {MAX_ATTEMPTS}",
                    short(key)
                )
            });
        }
    }
}

/// Check 7: no run of a delayed message starts before its time. The time
/// is the producer's clock and the claim compares with the database's: the
/// same machine's here. SQLite keeps times in milliseconds, so a run may
/// start up to 1 ms early there; 2 ms are allowed.
fn early(recorded: &Recorded, findings: &mut Findings) {
    let mut examples = Examples::new(&mut findings.examples);
    for run in &recorded.runs {
        let Some(&due) = recorded.due.get(&run.key) else {
            continue;
        };
        if run.wall + chrono::Duration::milliseconds(2) < due {
            findings.early_runs += 1;
            examples.push(|| {
                format!(
                    "early: {} ran {} ms before its time",
                    short(run.key),
                    (due - run.wall).num_milliseconds()
                )
            });
        }
    }
}

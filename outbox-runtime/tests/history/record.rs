//! The in-memory half of the history: every handler run and every dead
//! letter the operator saw, stamped with one logical clock, so the checker
//! knows which run ended before which other run started, and which runs
//! belong to which life of a (message, handler) (a replay starts a new one).
//!
//! One [`Recorder`] per schedule, reached by the handlers through the
//! dispatcher's state, so schedules (and the two stores' tests, when they
//! share a process) never see each other's runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use outbox_runtime::{Envelope, store::StoredDeadLetter};
use uuid::Uuid;

use crate::{Event, HandlerName};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// The handler returned `Ok` (its transaction may still fail to commit).
    Ok,
    /// The handler returned an error.
    Failed,
    /// The handler panicked.
    Panicked,
}

impl RunOutcome {
    /// A failed run: one the library must count as an attempt.
    pub(crate) fn is_failure(self) -> bool {
        matches!(self, RunOutcome::Failed | RunOutcome::Panicked)
    }
}

/// One run of a handler on a message.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub(crate) key: Uuid,
    pub(crate) handler: HandlerName,
    /// The envelope's id (a replay has a new one).
    pub(crate) message_id: Uuid,
    /// `ctx.attempt()`, as the library said.
    pub(crate) attempt: u32,
    /// Which run of this (key, handler) it is, from 1, across replays.
    pub(crate) number: u32,
    /// Logical time it started.
    pub(crate) started: u64,
    /// Wall time it started, for the delayed messages' check.
    pub(crate) wall: chrono::DateTime<chrono::Utc>,
    /// Logical time it ended and how; `None` if its future was dropped.
    pub(crate) ended: Option<(u64, RunOutcome)>,
}

/// A dead letter, as the operator found it before replaying it.
#[derive(Clone, Debug)]
pub(crate) struct SeenDeadLetter {
    pub(crate) id: i64,
    /// When it was written. A held group's letter is held again in its
    /// place (same id, a new time) when its replay gives up or is kept.
    pub(crate) dead_at: chrono::DateTime<chrono::Utc>,
    /// The message's key, when the body is an [`Event`] envelope.
    pub(crate) key: Option<Uuid>,
    pub(crate) group: Option<String>,
    /// The handler that gave up, when it is one of ours (`None`: poison).
    pub(crate) handler: Option<HandlerName>,
    /// Kept behind its group's hold (not run), not given up on.
    pub(crate) kept: bool,
    /// Logical time it was seen: it was written before, and everything of
    /// its (key, handler) that starts later belongs to the replay's life.
    pub(crate) seen: u64,
    /// The message that replays it, once replayed.
    pub(crate) replay_id: Option<Uuid>,
}

/// What a handler gets back from [`Recorder::start`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunTicket {
    /// Where the run is in the log, for [`Recorder::finish`].
    pub(crate) index: usize,
    /// Which run of its (key, handler) it is, from 1.
    pub(crate) number: u32,
}

/// The run log of one schedule.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    log: Mutex<Log>,
    fixed: AtomicBool,
}

#[derive(Debug, Default)]
struct Log {
    clock: u64,
    runs: Vec<Run>,
    dead_letters: Vec<SeenDeadLetter>,
}

impl Log {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

impl Recorder {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // Nothing panics while holding it (handlers panic after `finish`).
        self.log
            .lock()
            .expect("the run log is never locked across a panic")
    }

    /// Logs the start of a run and numbers it.
    pub(crate) fn start(
        &self,
        key: Uuid,
        handler: HandlerName,
        message_id: Uuid,
        attempt: u32,
    ) -> RunTicket {
        let mut log = self.log();
        let started = log.tick();
        let earlier = log
            .runs
            .iter()
            .filter(|r| r.key == key && r.handler == handler)
            .count();
        let number = u32::try_from(earlier + 1).expect("fewer than 2^32 runs");
        log.runs.push(Run {
            key,
            handler,
            message_id,
            attempt,
            number,
            wall: chrono::Utc::now(),
            started,
            ended: None,
        });
        RunTicket {
            index: log.runs.len() - 1,
            number,
        }
    }

    /// Logs how a run ended.
    pub(crate) fn finish(&self, index: usize, outcome: RunOutcome) {
        let mut log = self.log();
        let ended = log.tick();
        log.runs[index].ended = Some((ended, outcome));
    }

    /// Logs a dead letter the operator found (once per dead letter and time
    /// written, however often it is listed). Returns whether it is one of our handlers' give-ups,
    /// which the operator replays.
    pub(crate) fn saw_dead_letter(&self, letter: &StoredDeadLetter) -> bool {
        let event = Envelope::from_json(&letter.letter.body)
            .ok()
            .and_then(|envelope| serde_json::from_str::<Event>(envelope.payload.get()).ok());
        let handler = letter
            .letter
            .handler
            .as_deref()
            .and_then(HandlerName::from_name);
        let mut log = self.log();
        if log
            .dead_letters
            .iter()
            .any(|d| d.id == letter.id && d.dead_at == letter.dead_at)
        {
            return handler.is_some() && event.is_some();
        }
        let seen = log.tick();
        log.dead_letters.push(SeenDeadLetter {
            id: letter.id,
            dead_at: letter.dead_at,
            key: event.as_ref().map(|e| e.key),
            group: event.map(|e| e.group),
            handler,
            kept: letter.letter.error.starts_with("kept:"),
            seen,
            replay_id: None,
        });
        handler.is_some() && log.dead_letters.last().is_some_and(|d| d.key.is_some())
    }

    /// Logs the message that replays dead letter `id`.
    pub(crate) fn replayed(&self, id: i64, replay_id: Uuid) {
        let mut log = self.log();
        if let Some(letter) = log.dead_letters.iter_mut().rev().find(|d| d.id == id) {
            letter.replay_id = Some(replay_id);
        }
    }

    /// The schedule's final phase: doomed handlers work from now on.
    pub(crate) fn fix(&self) {
        self.fixed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_fixed(&self) -> bool {
        self.fixed.load(Ordering::SeqCst)
    }

    /// Everything logged so far.
    pub(crate) fn snapshot(&self) -> (Vec<Run>, Vec<SeenDeadLetter>) {
        let log = self.log();
        (log.runs.clone(), log.dead_letters.clone())
    }
}

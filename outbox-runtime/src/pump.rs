//! [`Pump`]: how the app primes the relay after a commit.
//!
//! The app commits its transaction, then pumps. Never before: a relay woken
//! before the commit finds nothing, and the rows wait for the next sweep. A
//! lost pump delays delivery until the relay's sweep; it never loses a
//! message, because the rows are already committed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;

/// The body of a pump message: what the app (after its commit) and the
/// scheduled sweep send to wake the relay. A consumer that receives it drains
/// the outbox instead of dispatching.
pub const PUMP_BODY: &str = r#"{"outbox_pump":1}"#;

/// The message group pump messages use, so that one relay drains at a time.
pub const PUMP_GROUP: &str = "__outbox_pump";

/// Whether a received body is a pump message: [`PUMP_BODY`], or a scheduled
/// pump, `{"outbox_pump":1,"at":"2026-11-28T09:00:00Z"}`. A schedule (an
/// EventBridge rule) cannot set a deduplication id, so the FIFO queue uses
/// content-based deduplication and the time makes each pump distinct.
///
/// ```
/// use outbox_runtime::pump::is_pump;
/// assert!(is_pump(r#"{"outbox_pump":1}"#));
/// assert!(is_pump(r#"{"outbox_pump":1,"at":"2026-11-28T09:00:00Z"}"#));
/// assert!(!is_pump(r#"{"outbox_pump":1,"type":"orders.placed"}"#));
/// ```
pub fn is_pump(body: &str) -> bool {
    let body = body.trim();
    body == PUMP_BODY || (body.starts_with(r#"{"outbox_pump""#) && is_scheduled_pump(body))
}

fn is_scheduled_pump(body: &str) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Scheduled {
        outbox_pump: u8,
        #[allow(dead_code)] // present, any time
        at: String,
    }
    serde_json::from_str::<Scheduled>(body).is_ok_and(|pump| pump.outbox_pump == 1)
}

/// The future a [`Pump`] returns.
pub type PumpFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>>;

/// Wakes a relay. In-process: a [`RelayWaker`]; on AWS: a pump message to the
/// relay's FIFO queue.
pub trait Pump: Send + Sync {
    /// Asks a relay to drain the outbox soon.
    fn pump(&self) -> PumpFuture<'_>;
}

/// A pump could not be sent. The committed rows are safe; the sweep will
/// deliver them.
#[derive(Debug, thiserror::Error)]
#[error("pump not sent (the sweep will deliver the messages): {0}")]
pub struct PumpError(pub String);

/// Wakes an in-process [`Relay`](crate::Relay). Cheap to clone.
#[derive(Clone, Default)]
pub struct RelayWaker {
    notify: Arc<Notify>,
}

impl RelayWaker {
    /// A new waker; give it to the relay with
    /// [`Relay::run`](crate::Relay::run) and to the app.
    pub fn new() -> Self {
        RelayWaker::default()
    }

    /// Wakes the relay (coalesced: several wakes before it looks count once;
    /// a wake while it drains makes it drain again).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl fmt::Debug for RelayWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayWaker")
    }
}

impl Pump for RelayWaker {
    fn pump(&self) -> PumpFuture<'_> {
        self.wake();
        Box::pin(async { Ok(()) })
    }
}

/// Commits the app's transaction, then pumps the relay. A failed commit is
/// returned as the `sqlx::Error` it is (nothing was written, nothing is
/// pumped); a failed pump is only logged, since the committed messages are
/// safe and the sweep delivers them.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn example(store: outbox_runtime::SqliteStore, waker: outbox_runtime::pump::RelayWaker) -> anyhow::Result<()> {
/// # use outbox_runtime::{OutboxMessage, Store, StoreExt};
/// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, OutboxMessage)]
/// # struct OrderPlaced { order_id: i64 }
/// let mut tx = store.begin().await?;
/// store.enqueue(&mut tx, &OrderPlaced { order_id: 7 }).await?;
/// outbox_runtime::commit_and_pump(tx, &waker).await?;
/// # Ok(()) }
/// ```
pub async fn commit_and_pump<DB: sqlx::Database>(
    tx: sqlx::Transaction<'_, DB>,
    pump: &dyn Pump,
) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    if let Err(err) = pump.pump().await {
        tracing::warn!(error = %err, "pump failed after commit");
    }
    Ok(())
}

/// Pump coalescing, for pumps that send messages (`SqsPump`).
#[cfg(feature = "sqs")]
pub(crate) use coalescer::{Coalescer, SendPump};

#[cfg(feature = "sqs")]
mod coalescer {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::PumpError;

    /// Sends pumps for many callers with few messages: a caller waits for a
    /// send that starts after it called (so the relay it wakes sees the
    /// caller's commit), and sends start at most once per `interval`, one at a
    /// time. Under steady load one send covers every commit of an interval; a
    /// caller waits at most `interval` plus two sends.
    #[derive(Clone)]
    pub(crate) struct Coalescer {
        inner: Arc<CoalescerInner>,
    }

    struct CoalescerInner {
        interval: Duration,
        state: Mutex<CoalescerState>,
        /// The last finished send: its number, and its error if it failed.
        done: watch::Sender<(u64, Option<String>)>,
    }

    #[derive(Default)]
    struct CoalescerState {
        /// Sends started so far; the number of the latest.
        started: u64,
        /// The highest send number a caller waits for.
        wanted: u64,
        /// Whether the sending task runs.
        running: bool,
        last_start: Option<Instant>,
    }

    /// The longest interval a [`Coalescer`] waits between sends.
    const MAX_PUMP_INTERVAL: Duration = Duration::from_secs(60);

    /// One pump send.
    pub(crate) type SendPump =
        Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

    impl Coalescer {
        pub(crate) fn new(interval: Duration) -> Self {
            Coalescer {
                inner: Arc::new(CoalescerInner {
                    interval,
                    state: Mutex::default(),
                    done: watch::Sender::new((0, None)),
                }),
            }
        }

        /// Waits for a send that started after this call; its result.
        pub(crate) async fn pump(&self, send: &SendPump) -> Result<(), PumpError> {
            let mut done = self.inner.done.subscribe();
            let (need, spawn) = {
                let mut state = self.inner.lock();
                let need = state.started + 1;
                state.wanted = state.wanted.max(need);
                let spawn = !state.running;
                state.running = true;
                (need, spawn)
            };
            if spawn {
                // A task of its own, so a caller that gives up waiting does not
                // strand the others.
                tokio::spawn(Arc::clone(&self.inner).run(Arc::clone(send)));
            }
            let result = done
                .wait_for(|(number, _)| *number >= need)
                .await
                .map_err(|_| PumpError("the pump is gone".into()))?;
            match &result.1 {
                Some(err) => Err(PumpError(err.clone())),
                None => Ok(()),
            }
        }
    }

    impl CoalescerInner {
        fn lock(&self) -> std::sync::MutexGuard<'_, CoalescerState> {
            self.state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        async fn run(self: Arc<Self>, send: SendPump) {
            // If the task ends early (a panicking send, its runtime shutting
            // down), the callers waiting get an error and the next pump starts
            // a new task.
            struct Ended(Arc<CoalescerInner>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    let mut state = self.0.lock();
                    if state.running {
                        state.running = false;
                        state.started = state.wanted;
                        let number = state.started;
                        drop(state);
                        self.0
                            .done
                            .send_replace((number, Some("the pump's sending task ended".into())));
                    }
                }
            }
            let _ended = Ended(Arc::clone(&self));
            loop {
                let last_start = self.lock().last_start;
                if let Some(last) = last_start {
                    tokio::time::sleep_until(last + self.interval.min(MAX_PUMP_INTERVAL)).await;
                }
                let number = {
                    let mut state = self.lock();
                    if state.wanted <= state.started {
                        state.running = false;
                        return;
                    }
                    state.started += 1;
                    state.last_start = Some(Instant::now());
                    state.started
                };
                let result = send().await;
                self.done.send_replace((number, result.err()));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A send that records when it started and takes `took`.
        fn recording_send(took: Duration, fail: bool) -> (SendPump, Arc<Mutex<Vec<Instant>>>) {
            let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
            let seen = Arc::clone(&starts);
            let send: SendPump = Arc::new(move || {
                let seen = Arc::clone(&seen);
                Box::pin(async move {
                    seen.lock().expect("not poisoned").push(Instant::now());
                    tokio::time::sleep(took).await;
                    if fail {
                        Err("queue down".into())
                    } else {
                        Ok(())
                    }
                })
            });
            (send, starts)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_caller_waits_for_a_send_that_started_after_it_called() {
            let (send, starts) = recording_send(Duration::from_millis(3), false);
            let coalescer = Arc::new(Coalescer::new(Duration::from_millis(10)));
            let callers: Vec<_> = (0..200u64)
                .map(|n| {
                    let (coalescer, send) = (Arc::clone(&coalescer), Arc::clone(&send));
                    tokio::spawn(async move {
                        // Arrivals spread over 100 ms, several per send.
                        tokio::time::sleep(Duration::from_micros(n * 500)).await;
                        let called = Instant::now();
                        coalescer.pump(&send).await.expect("sent");
                        (called, Instant::now())
                    })
                })
                .collect();
            let mut calls = Vec::new();
            for caller in callers {
                calls.push(caller.await.expect("caller ran"));
            }
            let starts = starts.lock().expect("not poisoned").clone();
            for (called, returned) in calls {
                assert!(
                    starts.iter().any(|&s| s >= called && s <= returned),
                    "a caller returned without a send that started after it called"
                );
            }
            // 100 ms of arrivals at one send per 10 ms at most.
            assert!(
                (2..=14).contains(&starts.len()),
                "{} sends for 200 callers",
                starts.len()
            );
            for pair in starts.windows(2) {
                assert!(pair[1] - pair[0] >= Duration::from_millis(10));
            }
        }

        #[tokio::test]
        async fn a_failed_send_fails_the_callers_it_covered() {
            let (send, starts) = recording_send(Duration::ZERO, true);
            let coalescer = Coalescer::new(Duration::ZERO);
            let err = coalescer.pump(&send).await.expect_err("the send failed");
            assert_eq!(err.0, "queue down");
            assert_eq!(starts.lock().expect("not poisoned").len(), 1);
        }
    }
}

//! What the relay and the consumers count and time, in two views of one
//! source: [`Metrics`], counters readable at any time, and the
//! [`metrics`](https://docs.rs/metrics) facade (counters, gauges and
//! histograms under the names below), which a recorder you install
//! exports: Prometheus (`metrics-exporter-prometheus`), CloudWatch's
//! Embedded Metric Format (on Lambda, `lambda::run` with
//! `OUTBOX_EMF_NAMESPACE` set), or anything else the facade supports. With no recorder installed an update
//! costs little: a check of the global recorder (and, for the per-handler
//! histogram, building its label).
//!
//! | name | kind | what |
//! |---|---|---|
//! | `outbox_published_total` | counter | rows the relay published |
//! | `outbox_publish_failures_total` | counter | failed publish attempts |
//! | `outbox_relay_dead_total` | counter | rows the relay dead-lettered |
//! | `outbox_handled_total` | counter | handler runs that committed |
//! | `outbox_handler_failures_total` | counter | handler runs that failed |
//! | `outbox_duplicates_suppressed_total` | counter | redeliveries of handled messages, not run again |
//! | `outbox_dead_lettered_total` | counter | messages consumers dead-lettered |
//! | `outbox_stuck_alerts_total` | counter | checks that found the oldest undelivered row older than `stuck_after` |
//! | `outbox_pending` | gauge, label `store` (`PostgreSQL`, `SQLite`) | undelivered rows, at a worker's last stats check (`WorkerConfig::stats_interval`) |
//! | `outbox_oldest_pending_seconds` | gauge, label `store` | the oldest undelivered row's age, then |
//! | `outbox_commit_to_publish_seconds` | histogram | from a message's envelope being made (`Envelope::from_message`, at enqueue) to its publish: the time in the outbox |
//! | `outbox_publish_to_handle_seconds` | histogram | from the queue accepting a message to a consumer starting on it, first deliveries only |
//! | `outbox_handler_duration_seconds` | histogram, label `handler` | one handler run |
//!
//! Database-side numbers can also be read directly with
//! [`Store::stats`](crate::store::Store::stats).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Rows the relay published.
pub const PUBLISHED: &str = "outbox_published_total";
/// Failed publish attempts (each retried or dead-lettered).
pub const PUBLISH_FAILURES: &str = "outbox_publish_failures_total";
/// Rows the relay dead-lettered.
pub const RELAY_DEAD: &str = "outbox_relay_dead_total";
/// Handler runs that committed.
pub const HANDLED: &str = "outbox_handled_total";
/// Handler runs that failed.
pub const HANDLER_FAILURES: &str = "outbox_handler_failures_total";
/// Redelivered messages whose handlers had already committed.
pub const DUPLICATES_SUPPRESSED: &str = "outbox_duplicates_suppressed_total";
/// Messages consumers dead-lettered.
pub const DEAD_LETTERED: &str = "outbox_dead_lettered_total";
/// Stats checks that found a stuck row.
pub const STUCK_ALERTS: &str = "outbox_stuck_alerts_total";
/// Undelivered rows (gauge, label `store`).
pub const PENDING: &str = "outbox_pending";
/// The oldest undelivered row's age in seconds (gauge, label `store`).
pub const OLDEST_PENDING_SECONDS: &str = "outbox_oldest_pending_seconds";
/// Enqueue to publish, in seconds (histogram).
pub const COMMIT_TO_PUBLISH_SECONDS: &str = "outbox_commit_to_publish_seconds";
/// Publish to a consumer starting on the message, in seconds (histogram).
pub const PUBLISH_TO_HANDLE_SECONDS: &str = "outbox_publish_to_handle_seconds";
/// One handler run, in seconds (histogram, label `handler`).
pub const HANDLER_DURATION_SECONDS: &str = "outbox_handler_duration_seconds";

/// Gives each metric its description and unit, for exporters that show
/// them (Prometheus's `# HELP`). Call it once, after installing the
/// recorder.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PUBLISHED, "Outbox rows the relay published");
    describe_counter!(PUBLISH_FAILURES, "Failed publish attempts");
    describe_counter!(RELAY_DEAD, "Outbox rows the relay dead-lettered");
    describe_counter!(HANDLED, "Handler runs that committed");
    describe_counter!(HANDLER_FAILURES, "Handler runs that failed");
    describe_counter!(
        DUPLICATES_SUPPRESSED,
        "Redelivered messages whose handlers had already committed"
    );
    describe_counter!(DEAD_LETTERED, "Messages consumers dead-lettered");
    describe_counter!(STUCK_ALERTS, "Checks that found a stuck outbox row");
    describe_gauge!(PENDING, "Undelivered outbox rows");
    describe_gauge!(
        OLDEST_PENDING_SECONDS,
        Unit::Seconds,
        "Age of the oldest undelivered outbox row"
    );
    describe_histogram!(
        COMMIT_TO_PUBLISH_SECONDS,
        Unit::Seconds,
        "From a message's enqueue to its publish"
    );
    describe_histogram!(
        PUBLISH_TO_HANDLE_SECONDS,
        Unit::Seconds,
        "From the queue accepting a message to a consumer starting on it"
    );
    describe_histogram!(HANDLER_DURATION_SECONDS, Unit::Seconds, "One handler run");
}

/// Counters shared by a relay and its workers: make one with
/// `Arc::new(Metrics::default())` and give it to each
/// ([`Relay::with_metrics`](crate::Relay::with_metrics),
/// [`Consumer::with_metrics`](crate::Consumer::with_metrics),
/// [`Pipeline::with_metrics`](crate::local::Pipeline::with_metrics), which
/// gives one to its relay and workers); read them with
/// [`snapshot`](Metrics::snapshot). Every update also goes to the
/// facade under the names of this module. Updates are relaxed atomics.
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    publish_failures: AtomicU64,
    relay_dead: AtomicU64,
    handled: AtomicU64,
    handler_failures: AtomicU64,
    duplicates_suppressed: AtomicU64,
    dead_lettered: AtomicU64,
    stuck_alerts: AtomicU64,
}

/// A reading of [`Metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Rows the relay published.
    pub published: u64,
    /// Failed publish attempts (each retried or dead-lettered).
    pub publish_failures: u64,
    /// Rows the relay dead-lettered.
    pub relay_dead: u64,
    /// Handler runs that committed.
    pub handled: u64,
    /// Handler runs that failed (retried or dead-lettered).
    pub handler_failures: u64,
    /// Redelivered messages whose handler had already committed: not run again.
    pub duplicates_suppressed: u64,
    /// Messages a consumer dead-lettered (poison, out of attempts, or kept
    /// behind a held group).
    pub dead_lettered: u64,
    /// Checks that found the oldest undelivered row older than the
    /// worker's `stuck_after`.
    pub stuck_alerts: u64,
}

macro_rules! counters {
    ($($field:ident => $add:ident, $name:ident;)*) => {
        impl Metrics {
            $(
                pub(crate) fn $add(&self, n: u64) {
                    if n > 0 {
                        self.$field.fetch_add(n, Ordering::Relaxed);
                        ::metrics::counter!($name).increment(n);
                    }
                }
            )*

            /// The current values.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    published => add_published, PUBLISHED;
    publish_failures => add_publish_failures, PUBLISH_FAILURES;
    relay_dead => add_relay_dead, RELAY_DEAD;
    handled => add_handled, HANDLED;
    handler_failures => add_handler_failures, HANDLER_FAILURES;
    duplicates_suppressed => add_duplicates_suppressed, DUPLICATES_SUPPRESSED;
    dead_lettered => add_dead_lettered, DEAD_LETTERED;
    stuck_alerts => add_stuck_alerts, STUCK_ALERTS;
}

/// The time since `then`, in seconds; 0 when `then` is in the future (a
/// clock ahead of this one).
pub(crate) fn seconds_since(then: chrono::DateTime<chrono::Utc>) -> f64 {
    (chrono::Utc::now() - then)
        .to_std()
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// Records one handler run's duration.
pub(crate) fn handler_ran(handler: &'static str, took: Duration) {
    ::metrics::histogram!(HANDLER_DURATION_SECONDS, "handler" => handler)
        .record(took.as_secs_f64());
}

/// Sets the gauges of one store's undelivered rows.
pub(crate) fn pending(store: &'static str, pending: u64, oldest: Option<Duration>) {
    #[allow(clippy::cast_precision_loss)]
    ::metrics::gauge!(PENDING, "store" => store).set(pending as f64);
    ::metrics::gauge!(OLDEST_PENDING_SECONDS, "store" => store)
        .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
}

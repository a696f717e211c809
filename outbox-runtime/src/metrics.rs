//! [`Metrics`]: counters of the relay and the consumers, readable at any
//! time. Database-side numbers (pending count, oldest pending age) come from
//! [`Store::stats`](crate::store::Store::stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by a relay and its workers: make one with
/// `Arc::new(Metrics::default())` and give it to each (`with_metrics`);
/// read them with [`snapshot`](Metrics::snapshot). Updates are relaxed
/// atomics.
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
    /// Messages a consumer dead-lettered (poison, or out of attempts).
    pub dead_lettered: u64,
    /// Checks that found the oldest undelivered row older than the
    /// worker's `stuck_after`.
    pub stuck_alerts: u64,
}

macro_rules! counters {
    ($($field:ident => $add:ident),* $(,)?) => {
        impl Metrics {
            $(
                pub(crate) fn $add(&self, n: u64) {
                    self.$field.fetch_add(n, Ordering::Relaxed);
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
    published => add_published,
    publish_failures => add_publish_failures,
    relay_dead => add_relay_dead,
    handled => add_handled,
    handler_failures => add_handler_failures,
    duplicates_suppressed => add_duplicates_suppressed,
    dead_lettered => add_dead_lettered,
    stuck_alerts => add_stuck_alerts,
}

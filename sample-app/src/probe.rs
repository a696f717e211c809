//! Latency observations for the demo's summary.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Enqueue-to-handler latencies, recorded by handlers when the demo runs.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    latencies: Mutex<Vec<Duration>>,
}

impl Probe {
    pub(crate) fn observe(&self, created_at: DateTime<Utc>) {
        let age = (Utc::now() - created_at).to_std().unwrap_or_default();
        if let Ok(mut latencies) = self.latencies.lock() {
            latencies.push(age);
        }
    }

    /// The p50 and p99 latencies, if any were observed.
    pub(crate) fn percentiles(&self) -> Option<(Duration, Duration)> {
        let mut latencies = self.latencies.lock().ok()?.clone();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        Some((at(0.50), at(0.99)))
    }
}

//! [`Backoff`]: how long to wait before the next attempt. Written here, not
//! taken from a crate: one formula that the relay and the consumer share, and
//! a plain `Copy` value their configs can hold.

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` (from 1) waits a random
/// time up to `min(max, initial * multiplier^(n-1))`, so retries of many
/// messages that failed together spread out instead of hammering the
/// dependency in lockstep.
///
/// ```
/// use std::time::Duration;
/// use outbox_runtime::backoff::Backoff;
///
/// let backoff = Backoff { jitter: false, ..Backoff::default() };
/// assert_eq!(backoff.delay(1), Duration::from_secs(1));
/// assert_eq!(backoff.delay(3), Duration::from_secs(4));
/// assert_eq!(backoff.delay(50), Duration::from_secs(300));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay ceiling of the first retry. Default: 1 s.
    pub initial: Duration,
    /// The largest delay. Default: 300 s.
    pub max: Duration,
    /// How much the ceiling grows per attempt. Default: 2.
    pub multiplier: f64,
    /// Whether to pick a random delay up to the ceiling (full jitter).
    /// Default: true.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before retrying after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let ceiling = ceiling.min(self.max.as_secs_f64());
        let seconds = if self.jitter {
            ceiling * fastrand::f64()
        } else {
            ceiling
        };
        Duration::try_from_secs_f64(seconds).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_delays_stay_under_the_ceiling() {
        let backoff = Backoff::default();
        for attempt in 1..20 {
            let ceiling = Backoff {
                jitter: false,
                ..backoff
            }
            .delay(attempt);
            for _ in 0..100 {
                assert!(backoff.delay(attempt) <= ceiling);
            }
        }
        assert_eq!(
            Backoff {
                jitter: false,
                ..backoff
            }
            .delay(0),
            Duration::from_secs(1)
        );
    }
}

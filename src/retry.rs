//! The retry policy: the single home of the `backoff` crate.
//!
//! Exponential with jitter, the first retry quick, the interval capped; a participant's
//! `Retry-After` replaces the computed delay (bounded by [`MAX_RETRY_AFTER`]).

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;

/// The longest `Retry-After` honoured: a participant asking for more is asked again sooner,
/// so a typo in its header cannot stall a reservation for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How retries are spaced.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first retry's delay (before jitter).
    pub initial: Duration,
    /// The largest delay between two attempts.
    pub max_interval: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A fresh schedule for one participant call.
    #[must_use]
    pub fn schedule(&self) -> Schedule {
        Schedule(ExponentialBackoff {
            current_interval: self.initial,
            initial_interval: self.initial,
            randomization_factor: 0.5,
            multiplier: 2.0,
            max_interval: self.max_interval,
            // Confirm retries never stop by themselves; callers stop at their own deadlines.
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        })
    }
}

/// The delays of successive retries of one call.
#[derive(Debug)]
pub struct Schedule(ExponentialBackoff);

impl Schedule {
    /// The delay before the next attempt: the participant's `Retry-After` when it gave one,
    /// the next exponential step otherwise.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        // The crate caps the interval before it adds the jitter (up to half as much again):
        // the cap is what operators plan on, so it holds for the delay itself.
        let computed = self
            .0
            .next_backoff()
            .unwrap_or(self.0.max_interval)
            .min(self.0.max_interval);
        retry_after.map_or(computed, |d| d.min(MAX_RETRY_AFTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_from_a_quick_first_retry_up_to_the_cap() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
        };
        let mut schedule = policy.schedule();
        let delays: Vec<_> = (0..12).map(|_| schedule.next_delay(None)).collect();
        assert!(delays[0] <= Duration::from_millis(150), "{delays:?}");
        assert!(delays[4] > delays[0], "{delays:?}");
        assert!(delays[11] >= Duration::from_secs(1), "{delays:?}");
    }

    #[test]
    fn the_cap_holds_with_the_jitter() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_secs(30),
        };
        let mut schedule = policy.schedule();
        // Past the tenth retry every draw is at the cap, jittered by up to half of it either
        // way: among 300 draws about half would exceed it without the bound.
        let delays: Vec<_> = (0..300).map(|_| schedule.next_delay(None)).collect();
        let longest = delays.iter().max().unwrap();
        assert!(*longest <= Duration::from_secs(30), "{longest:?}");
        assert_eq!(*longest, Duration::from_secs(30), "the cap is reached");
    }

    #[test]
    fn retry_after_replaces_the_computed_delay_within_its_bound() {
        let mut schedule = RetryPolicy::default().schedule();
        assert_eq!(
            schedule.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            schedule.next_delay(Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }
}

//! The limits a coordinator is configured with: what a new reservation is checked against and
//! how long finished ones are kept. Plain values, set once by the configuration.

use std::time::Duration;

/// The limits a new reservation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_participants: usize,
    /// The per-call timeout; also the safety margin before a link's expiry.
    pub participant_timeout: Duration,
    /// The longest `Prefer: wait` honoured.
    pub max_wait: Duration,
    /// How long a finished reservation stays readable (then 410).
    pub retention: Duration,
    /// How long a confirmed transaction stays at `/transactions/{id}`.
    pub transaction_retention: Duration,
}

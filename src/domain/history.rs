//! A reservation's history: what happened to it (created, state changes, every participant
//! call), bounded to [`HISTORY_LIMIT`] entries, oldest dropped first and counted.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Reason, Reservation, State};

/// Most entries a reservation's history keeps; the oldest go first (and are counted).
pub const HISTORY_LIMIT: usize = 100;

/// One thing that happened to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub what: Happening,
}

/// Which call a participant received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerb {
    /// `POST` of a coordinator-driven try.
    Try,
    /// The same try again, after its answer was lost, to learn the link to cancel.
    TryAgain,
    /// `PUT` of the link.
    Confirm,
    /// `DELETE` of the link.
    Cancel,
}

impl CallVerb {
    pub const ALL: [CallVerb; 4] = [
        CallVerb::Try,
        CallVerb::TryAgain,
        CallVerb::Confirm,
        CallVerb::Cancel,
    ];

    /// How the history shows it, in the API and in the log (unchanged since the log's
    /// format 1).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallVerb::Try => "try",
            CallVerb::TryAgain => "try (again, to learn the link)",
            CallVerb::Confirm => "confirm",
            CallVerb::Cancel => "cancel",
        }
    }
}

impl std::fmt::Display for CallVerb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator did to a reservation (through the API or the dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    Confirm,
    Cancel,
    /// A reconciled conflict forgotten.
    Forget,
    /// A participant waiting in backoff called again at once.
    RetryNow,
}

impl OperatorAction {
    pub const ALL: [OperatorAction; 4] = [
        OperatorAction::Confirm,
        OperatorAction::Cancel,
        OperatorAction::Forget,
        OperatorAction::RetryNow,
    ];

    /// The name used in `/events` and the log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Confirm => "confirm",
            OperatorAction::Cancel => "cancel",
            OperatorAction::Forget => "forget",
            OperatorAction::RetryNow => "retry_now",
        }
    }
}

/// What a history entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    Created {
        state: State,
    },
    Changed {
        from: State,
        to: State,
        reason: Option<Reason>,
    },
    /// One participant call: its verb, its result (the state it settled in, or the error),
    /// how long it took, and when it is retried.
    Called {
        participant: usize,
        verb: CallVerb,
        result: String,
        took_ms: u64,
        retry_at: Option<DateTime<Utc>>,
    },
    /// An operator acted: who (the token's name), what, and on which participant.
    Acted {
        by: String,
        action: OperatorAction,
        participant: Option<usize>,
    },
}

impl Reservation {
    /// Adds to the history, dropping the oldest entry beyond [`HISTORY_LIMIT`].
    pub fn note(&mut self, at: DateTime<Utc>, what: Happening) {
        self.history.push(HistoryEntry { at, what });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
            self.history_dropped += excess as u64;
        }
    }

    /// Records one participant call in the history.
    pub fn note_call(
        &mut self,
        at: DateTime<Utc>,
        participant: usize,
        verb: CallVerb,
        result: String,
        took: Duration,
    ) {
        let retry_at = self
            .participants()
            .get(participant)
            .and_then(|p| p.next_attempt_at);
        self.note(
            at,
            Happening::Called {
                participant,
                verb,
                result,
                took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                retry_at,
            },
        );
    }
}

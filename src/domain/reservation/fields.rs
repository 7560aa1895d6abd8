//! A reservation's fields: read through getters; set only where the domain's rules allow
//! (attributes given at creation, the store's bookkeeping); a stored reservation restored
//! only when it keeps the rules.

use chrono::{DateTime, Utc};

use super::{Callback, Reservation};
use crate::domain::{
    HistoryEntry, Participant, Reason, ReservationId, State, Status, TraceContext,
};

/// What a reservation is made of, as a log stores it: every field, for [`Reservation::restore`].
#[derive(Debug)]
pub struct StoredReservation {
    pub id: ReservationId,
    pub state: State,
    pub reason: Option<Reason>,
    pub created_at: DateTime<Utc>,
    pub timeout_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub participants: Vec<Participant>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub trace: Option<TraceContext>,
    pub history: Vec<HistoryEntry>,
    pub history_dropped: u64,
    pub callback: Option<Callback>,
    pub revision: u64,
    pub owner: Option<uuid::Uuid>,
}

/// The fields of a reservation: read through these; changed only through the methods that
/// keep its rules (events, participants' answers, the history).
impl Reservation {
    #[must_use]
    pub fn id(&self) -> ReservationId {
        self.id
    }

    #[must_use]
    pub fn state(&self) -> State {
        self.status.state()
    }

    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        self.status.reason()
    }

    /// The state with its reason, as one value.
    #[must_use]
    pub fn status(&self) -> Status {
        self.status
    }

    #[must_use]
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    #[must_use]
    pub fn timeout_at(&self) -> DateTime<Utc> {
        self.timeout_at
    }

    #[must_use]
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    #[must_use]
    pub fn decided_at(&self) -> Option<DateTime<Utc>> {
        self.decided_at
    }

    #[must_use]
    pub fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.finished_at
    }

    #[must_use]
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    #[must_use]
    pub fn metadata(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.metadata
    }

    #[must_use]
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    #[must_use]
    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
    }

    #[must_use]
    pub fn history(&self) -> &[HistoryEntry] {
        &self.history
    }

    #[must_use]
    pub fn history_dropped(&self) -> u64 {
        self.history_dropped
    }

    #[must_use]
    pub fn callback(&self) -> Option<&Callback> {
        self.callback.as_ref()
    }

    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    #[must_use]
    pub fn owner(&self) -> Option<uuid::Uuid> {
        self.owner
    }

    /// One participant, to record its answer (its own rules apply: see
    /// [`Participant::record_attempt`]).
    pub fn participant_mut(&mut self, index: usize) -> &mut Participant {
        &mut self.participants[index]
    }

    /// The client's metadata, to change it.
    pub fn metadata_mut(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        &mut self.metadata
    }

    /// The trace every participant call carries.
    pub fn set_trace(&mut self, trace: TraceContext) {
        self.trace = Some(trace);
    }

    /// Where the final representation goes once the reservation is terminal.
    pub fn set_callback(&mut self, callback: Callback) {
        self.callback = Some(callback);
    }

    /// The client's `Idempotency-Key`, released with the record.
    pub fn set_idempotency_key(&mut self, key: String) {
        self.idempotency_key = Some(key);
    }

    /// The store's bookkeeping: the revision the record was written at (0: not stored).
    pub fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    /// The store's bookkeeping: the instance working on it (shared stores).
    pub fn set_owner(&mut self, owner: Option<uuid::Uuid>) {
        self.owner = owner;
    }

    /// One delivery of the completion callback: `delivered` once it answered 2xx.
    pub fn note_callback(&mut self, now: DateTime<Utc>, delivered: bool, error: Option<String>) {
        if let Some(c) = &mut self.callback {
            c.attempts += 1;
            c.last_error = error;
            if delivered {
                c.delivered_at = Some(now);
            }
        }
    }

    /// A reservation as a log stored it.
    ///
    /// # Errors
    /// A sentence when the record breaks a rule no reservation can break: a reason exactly
    /// in the cancelling and cancelled states (its participants were checked as they were
    /// restored: see `Participant::restore`).
    pub fn restore(stored: StoredReservation) -> Result<Self, String> {
        let Some(status) = Status::of(stored.state, stored.reason) else {
            let cancelled = matches!(stored.state, State::Cancelling | State::Cancelled);
            return Err(format!(
                "a {} reservation {} a reason",
                stored.state,
                if cancelled { "without" } else { "with" }
            ));
        };
        Ok(Self {
            id: stored.id,
            status,
            created_at: stored.created_at,
            timeout_at: stored.timeout_at,
            expires_at: stored.expires_at,
            decided_at: stored.decided_at,
            finished_at: stored.finished_at,
            participants: stored.participants,
            metadata: stored.metadata,
            idempotency_key: stored.idempotency_key,
            trace: stored.trace,
            history: stored.history,
            history_dropped: stored.history_dropped,
            callback: stored.callback,
            revision: stored.revision,
            owner: stored.owner,
        })
    }
}

//! A hold as the kit records it: pure data and its transitions, no I/O.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};

/// Where a hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case", rename = "HoldState")]
pub enum HoldState {
    /// Reserved, waiting for confirm or cancel, until `expires`.
    Held,
    /// Confirmed: final.
    Confirmed,
    /// Cancelled by a `DELETE`: released.
    Cancelled,
    /// Nobody confirmed in time: released by the kit.
    Expired,
}

impl HoldState {
    /// Whether the hold can no longer change.
    #[must_use]
    pub fn is_settled(self) -> bool {
        !matches!(self, Self::Held)
    }
}

/// One hold as the kit keeps it (and as a [`HoldStore`](crate::HoldStore) stores it). The
/// record is versioned so that a store written today can be read by a later kit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// The record's format; 1 today.
    pub version: u32,
    pub id: String,
    /// The try's `Idempotency-Key`.
    pub idempotency_key: String,
    /// The try's body, as received (a repeat must send the same).
    pub request: serde_json::Value,
    /// The service's [`Resource::Hold`](crate::Resource::Hold), as JSON.
    pub hold: serde_json::Value,
    pub state: HoldState,
    pub created: DateTime<Utc>,
    /// When the hold expires unless confirmed.
    pub expires: DateTime<Utc>,
    /// When it was confirmed, cancelled or expired.
    pub settled: Option<DateTime<Utc>>,
    /// `TCC-Reservation`, when sent.
    pub reservation: Option<String>,
    /// `TCC-Deadline`, when sent.
    pub deadline: Option<DateTime<Utc>>,
}

/// The current record format.
pub const RECORD_VERSION: u32 = 1;

impl HoldRecord {
    /// Settles the hold at `now`.
    pub(crate) fn settle(&mut self, state: HoldState, now: DateTime<Utc>) {
        debug_assert!(state.is_settled() && !self.state.is_settled());
        self.state = state;
        self.settled = Some(now);
    }

    pub(crate) fn view(&self) -> HoldView {
        HoldView {
            id: self.id.clone(),
            state: self.state,
            idempotency_key: self.idempotency_key.clone(),
            request: self.request.clone(),
            created: self.created,
            expires: self.expires,
            settled: self.settled,
            reservation: self.reservation.clone(),
            deadline: self.deadline,
        }
    }
}

/// A hold, as `GET /holds/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
#[oai(rename = "Hold")]
pub struct HoldView {
    pub id: String,
    pub state: HoldState,
    /// The `Idempotency-Key` of the try that made it.
    pub idempotency_key: String,
    /// The try's body.
    pub request: serde_json::Value,
    pub created: DateTime<Utc>,
    /// When it expires (or expired) unless confirmed.
    pub expires: DateTime<Utc>,
    /// When it was confirmed, cancelled or expired.
    pub settled: Option<DateTime<Utc>>,
    /// The coordinator's reservation (`TCC-Reservation`), when the try named one.
    pub reservation: Option<String>,
    /// The reservation's deadline (`TCC-Deadline`), when the try carried one.
    pub deadline: Option<DateTime<Utc>>,
}

//! What a service implements to become a participant: one [`Resource`], three calls.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::hold::HoldState;

/// The thing a service holds tentatively: stock, money, seats.
///
/// The kit calls [`reserve`](Resource::reserve) at most once per `Idempotency-Key` in a
/// running process (a repeated or concurrent try with the same key waits for the first and
/// gets its hold), and [`confirm`](Resource::confirm) or [`release`](Resource::release) once per
/// hold, never both. After a crash between your call returning and the kit writing down what
/// it did, the kit calls `confirm` or `release` again for the same hold when asked again: make
/// those two idempotent for one hold (the hold's [`TryContext::hold_id`] is a stable key for
/// that).
pub trait Resource: Send + Sync + 'static {
    /// What a try asks for: the JSON body of `POST /holds`, parsed with serde. A body that
    /// does not parse is answered `422` with the offending field, and `reserve` is not called.
    type Request: DeserializeOwned + Send;
    /// What the service needs to remember of a hold to confirm or release it later. The kit
    /// stores it with the hold (as JSON), so it survives a restart with a durable store.
    type Hold: Serialize + DeserializeOwned + Send + Sync;

    /// Holds what `request` asks for, or refuses (`409`, the coordinator cancels everyone
    /// else) or says it cannot decide now (`503`, the coordinator tries again).
    ///
    /// # Errors
    /// A [`Refusal`] when nothing was held.
    fn reserve(
        &self,
        request: Self::Request,
        context: &TryContext,
    ) -> impl Future<Output = Result<Self::Hold, Refusal>> + Send;

    /// Makes a hold final (sold, charged, booked).
    ///
    /// # Errors
    /// [`Unavailable`] when it cannot be done now; the kit answers `503` and the coordinator
    /// asks again.
    fn confirm(&self, hold: &Self::Hold) -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// Gives back what a hold held: on cancel, and on expiry.
    ///
    /// # Errors
    /// [`Unavailable`] when it cannot be done now; on expiry the kit tries again a second
    /// later, on cancel it answers `503` and the coordinator asks again.
    fn release(&self, hold: &Self::Hold) -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// Called once at start, before any other call and before holds expire, with every hold
    /// the store kept and its state: a service that keeps its own state in memory (stock
    /// levels, balances) rebuilds it here from the holds. By default, nothing.
    fn restore(&self, holds: Vec<(HoldState, Self::Hold)>) {
        let _ = holds;
    }
}

/// What the kit knows of a try when it asks the service to reserve.
#[derive(Debug, Clone)]
pub struct TryContext {
    pub(crate) hold_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) reservation: Option<String>,
    pub(crate) deadline: Option<DateTime<Utc>>,
    pub(crate) expires: DateTime<Utc>,
}

impl TryContext {
    /// The id the hold will have (its link ends with it).
    #[must_use]
    pub fn hold_id(&self) -> &str {
        &self.hold_id
    }

    /// The try's `Idempotency-Key` (`{reservation id}/{participant index}` from the coordinator).
    #[must_use]
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// The coordinator's URL of the reservation (`TCC-Reservation`), when it sent one.
    #[must_use]
    pub fn reservation(&self) -> Option<&str> {
        self.reservation.as_deref()
    }

    /// The reservation's deadline (`TCC-Deadline`), when the coordinator sent one.
    #[must_use]
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }

    /// When the hold will expire if nobody confirms it.
    #[must_use]
    pub fn expires(&self) -> DateTime<Utc> {
        self.expires
    }
}

/// Why nothing was held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request cannot be held (not enough stock, card declined): `409`, and the
    /// coordinator cancels the whole reservation.
    Refused(String),
    /// Not now (a dependency is down): `503`, and the coordinator tries again.
    Unavailable(String),
}

impl Refusal {
    /// A refusal with the reason the coordinator shows in the reservation's `last_error`.
    pub fn refused(reason: impl Into<String>) -> Self {
        Self::Refused(reason.into())
    }
}

impl From<Unavailable> for Refusal {
    fn from(e: Unavailable) -> Self {
        Self::Unavailable(e.0)
    }
}

/// A confirm or release that cannot be done now; the reason is answered with `503`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

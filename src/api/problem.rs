//! `application/problem+json` (RFC 9457): the body of every 4xx and 5xx.

use poem::http::StatusCode;
use poem_openapi::Object;

use super::views::{ParticipantStateView, ParticipantView};
use crate::domain::{Reservation, ReservationId, State};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error, as RFC 9457 describes it.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Problem")]
pub struct Problem {
    /// Identifies the kind of problem: `urn:tcc-coordinator:problem:{kind}`, where kind is
    /// one of invalid-json, invalid-request, too-large, not-found, conflict, gone,
    /// method-not-allowed, unauthorized, forbidden, unavailable.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this request, and what to do about it.
    pub detail: String,
    /// The JSON path of the offending request field, when one field is to blame.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

impl Problem {
    #[must_use]
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:tcc-coordinator:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "The request body is not valid JSON",
            detail,
        )
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = format!("`{field}` {}", detail.into());
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "The request is well-formed JSON but a field is invalid",
            detail,
        )
        .with_field(field)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "The request body is too large",
            format!("the body exceeds the limit of {limit} bytes (--max-body-bytes)"),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such resource",
            detail,
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "conflict",
            "The reservation's state does not allow this",
            detail,
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The coordinator cannot serve this now",
            detail,
        )
    }
}

/// The 410 of a reservation: a problem that also says how the reservation ended.
#[derive(Debug, Clone, Object)]
#[oai(rename = "GoneProblem")]
pub struct GoneProblem {
    #[oai(flatten)]
    pub problem: Problem,
    /// The reservation's id.
    pub id: String,
    /// The reservation's state: `cancelled`; `cancelling` while an expired reservation's
    /// participants are still being released; `forgotten` after an operator resolved a
    /// conflict; any terminal state once `--retention` has passed. Absent once the record
    /// itself was dropped.
    pub state: Option<super::views::StateView>,
    /// Why it was cancelled.
    pub reason: Option<super::views::ReasonView>,
    /// The deadline it had.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the cancel was decided (and logged).
    pub decided_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Each participant and how it ended.
    pub participants: Vec<ParticipantView>,
}

impl GoneProblem {
    /// The 410 of a reservation whose record was dropped when its retention ended.
    #[must_use]
    pub fn purged(id: ReservationId) -> Self {
        Self {
            problem: Problem::new(
                StatusCode::GONE,
                "gone",
                "The reservation is no longer kept",
                format!("reservation {id} ended longer ago than the coordinator's --retention"),
            ),
            id: id.to_string(),
            state: None,
            reason: None,
            expires_at: None,
            decided_at: None,
            participants: Vec::new(),
        }
    }

    #[must_use]
    pub fn of(r: &Reservation) -> Self {
        let participants: Vec<ParticipantView> =
            r.participants().iter().map(ParticipantView::from).collect();
        // A failed try says which participant refused and why: that is what to act on.
        let refused = participants
            .iter()
            .find(|p| matches!(p.state, ParticipantStateView::TryFailed))
            .and_then(|p| Some(format!(": {}: {}", p.name, p.last_error.as_deref()?)))
            .unwrap_or_default();
        let why = r
            .reason()
            .map(|x| format!(" ({}{refused})", x.as_str()))
            .unwrap_or_default();
        let retained = "The reservation ended longer ago than the coordinator keeps it";
        let (title, detail) = match r.state() {
            State::Confirmed | State::Conflict => (
                retained,
                format!(
                    "reservation {} ended {} and its retention has passed",
                    r.id(),
                    r.state()
                ),
            ),
            State::Forgotten => (
                "The reservation is forgotten",
                format!(
                    "reservation {} ended in conflict and an operator resolved it by hand",
                    r.id()
                ),
            ),
            _ => (
                "The reservation is cancelled",
                format!(
                    "reservation {} is {}{why}; it can no longer be confirmed",
                    r.id(),
                    r.state()
                ),
            ),
        };
        Self {
            problem: Problem::new(StatusCode::GONE, "gone", title, detail),
            id: r.id().to_string(),
            state: Some(r.state().into()),
            reason: r.reason().map(Into::into),
            expires_at: Some(r.expires_at()),
            decided_at: r.decided_at(),
            participants,
        }
    }
}

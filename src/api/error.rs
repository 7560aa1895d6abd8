//! Mapping from the layers below to HTTP problems: the only place statuses are chosen for
//! errors. Internal failures are logged once here and never leak their details.

use poem::http::StatusCode;
use poem_openapi::error::ParseParamError;

use super::body::BodyError;
use super::problem::{GoneProblem, Problem};
use crate::coordinator::{CoordinatorError, Field, ParticipantPart};
use crate::domain::Refusal;

/// An error answer, before it is fitted into an operation's response type.
#[derive(Debug)]
pub enum ApiError {
    Problem(Problem),
    Gone(Box<GoneProblem>),
}

impl ApiError {
    /// The problem for an error poem-openapi met before the handler ran (bad body, path).
    pub fn from_request_error(error: &poem::Error) -> Self {
        if let Some(body) = error.downcast_ref::<BodyError>() {
            return Self::Problem(match body {
                BodyError::TooLarge { limit } => Problem::too_large(*limit),
                BodyError::TooSlow(timeout) => Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "too-slow",
                    "The request body arrived too slowly",
                    format!(
                        "the body did not arrive within {} (--read-timeout); nothing was stored",
                        humantime::format_duration(*timeout)
                    ),
                ),
                BodyError::Malformed(detail) => Problem::malformed(detail.clone()),
                BodyError::Invalid { field, message } => {
                    Problem::invalid(field.clone(), message.clone())
                }
            });
        }
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request cannot be read",
            error.to_string(),
        );
        Self::Problem(match error.downcast_ref::<ParseParamError>() {
            Some(param) => problem.with_field(param.name),
            None => problem,
        })
    }
}

/// How a request names a field the coordinator refused: the JSON path in a reservation's
/// body (`participants[1].link.expires`), in a join's body (`link.uri`), or a header's name.
#[must_use]
pub fn json_path(field: Field) -> String {
    match field {
        Field::Timeout => "timeout_ms".into(),
        Field::Participants => "participants".into(),
        Field::Callback => "callback".into(),
        Field::IdempotencyKey => "Idempotency-Key".into(),
        Field::Participant { index, part } => {
            let part = match part {
                ParticipantPart::LinkUri => "link.uri",
                ParticipantPart::LinkExpires => "link.expires",
                ParticipantPart::TryUrl => "try.url",
            };
            match index {
                Some(i) => format!("participants[{i}].{part}"),
                None => part.to_owned(),
            }
        }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> Self {
        match error {
            CoordinatorError::Invalid { field, message } => {
                Self::Problem(Problem::invalid(json_path(field), message))
            }
            CoordinatorError::Purged(id) => Self::Gone(Box::new(GoneProblem::purged(id))),
            CoordinatorError::NotFound(id) => Self::Problem(Problem::not_found(format!(
                "no reservation has the id {id}"
            ))),
            CoordinatorError::Refused {
                refusal: Refusal::Gone,
                reservation,
            } => Self::Gone(Box::new(GoneProblem::of(&reservation))),
            CoordinatorError::Refused {
                refusal: Refusal::Conflict,
                reservation,
            } => Self::Problem(Problem::conflict(format!(
                "reservation {} is {}{}; {}",
                reservation.id(),
                reservation.state(),
                reservation
                    .reason()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                match reservation.state() {
                    crate::domain::State::Trying => "wait until it is reserved",
                    crate::domain::State::Reserved =>
                        "only a reservation in conflict can be forgotten",
                    crate::domain::State::Conflict => "an operator must resolve it, then forget it",
                    _ => "the decision was already taken",
                }
            ))),
            e @ CoordinatorError::NoParticipant { .. } => {
                Self::Problem(Problem::not_found(e.to_string()))
            }
            e @ CoordinatorError::NotWaiting { .. } => {
                Self::Problem(Problem::conflict(e.to_string()))
            }
            CoordinatorError::Recovering => Self::Problem(Problem::unavailable(
                "the coordinator is still reading its log back after a start (see /health/ready); \
                 nothing was stored: retry after the delay in Retry-After",
            )),
            CoordinatorError::Busy(waiting) => {
                tracing::warn!(waiting, "the transaction log is saturated: answering 503");
                Self::Problem(Problem::unavailable(
                    "the transaction log cannot keep up right now (--max-log-queue); nothing was \
                     stored: retry after the delay in Retry-After",
                ))
            }
            CoordinatorError::Unavailable(error) => {
                tracing::warn!(%error, "the database cannot be reached: answering 503");
                Self::Problem(Problem::unavailable(
                    "the database cannot be reached right now; the request may not have been \
                     stored: retry after the delay in Retry-After (retrying is safe)",
                ))
            }
            CoordinatorError::Disk(error) => {
                tracing::warn!(%error, "the log's disk cannot take writes: answering 503");
                Self::Problem(Problem::unavailable(format!(
                    "{error}; nothing was stored: retry after the delay in Retry-After (reads are \
                     still served)"
                )))
            }
            CoordinatorError::SlowLog(waited) => {
                tracing::warn!(
                    ?waited,
                    "the log's disk is slow: answering 503 while the write goes on"
                );
                Self::Problem(Problem::unavailable(format!(
                    "the disk holding the log did not make this write durable within {} ms \
                     (--store-timeout); it goes on and may be kept: retry after the delay in \
                     Retry-After (a decision or a create with the same Idempotency-Key is safe to \
                     repeat)",
                    waited.as_millis()
                )))
            }
            CoordinatorError::Log(error) => {
                tracing::error!(%error, "the transaction log failed");
                Self::Problem(Problem::unavailable(
                    "the transaction log cannot be read or written right now; retry later",
                ))
            }
        }
    }
}

/// Fits [`ApiError`] into an operation's response enum: `status => Variant` for problems, and
/// `gone => Variant` for the reservation's 410. A status the operation does not declare
/// becomes its `Unavailable` (503) after logging: it would be a bug.
macro_rules! problem_response {
    ($ty:ident { $($status:literal => $variant:ident),* $(,)? } gone_with_preference => $gone:ident) => {
        $crate::api::error::problem_response!(@impl $ty { $($status => $variant),* } |gone| $ty::$gone(Json(*gone), None));
    };
    ($ty:ident { $($status:literal => $variant:ident),* $(,)? } gone => $gone:ident) => {
        $crate::api::error::problem_response!(@impl $ty { $($status => $variant),* } |gone| $ty::$gone(Json(*gone)));
    };
    ($ty:ident { $($status:literal => $variant:ident),* $(,)? }) => {
        $crate::api::error::problem_response!(@impl $ty { $($status => $variant),* } |gone| {
            let gone: Box<$crate::api::problem::GoneProblem> = gone;
            $ty::from($crate::api::error::ApiError::Problem(gone.problem))
        });
    };
    (@impl $ty:ident { $($status:literal => $variant:ident),* } |$g:ident| $make_gone:expr) => {
        impl From<$crate::api::error::ApiError> for $ty {
            fn from(error: $crate::api::error::ApiError) -> Self {
                use poem_openapi::payload::Json;
                #[allow(unused_imports)]
                use $crate::api::error::ApiError as E;
                let problem = match error {
                    E::Gone($g) => return $make_gone,
                    E::Problem(problem) => problem,
                };
                match problem.status {
                    $($status => $ty::$variant(Json(problem)),)*
                    _ => {
                        tracing::error!(status = problem.status, detail = %problem.detail,
                            "an operation met an error it does not declare");
                        $ty::Unavailable(Json($crate::api::problem::Problem::unavailable(
                            "the coordinator met an unexpected error; retry later",
                        )))
                    }
                }
            }
        }
    };
}
pub(crate) use problem_response;

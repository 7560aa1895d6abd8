//! `/coordinator/confirm` and `/coordinator/cancel`: the synchronous API of Atomikos "TCC for
//! REST", on the same engine and log as `/reservations`.
//!
//! Each call creates a reservation over the given links that is decided at once; confirm
//! then holds the answer until every participant has answered (at most `--max-wait`).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::body::JsonBody;
use super::error::{problem_response, ApiError};
use super::problem::Problem;
use super::views::ParticipantStateView;
use super::ApiTags;
use crate::coordinator::{Coordinator, CoordinatorError, Field};
use crate::domain::{
    Event, NewParticipant, ParticipantLink, ParticipantSource, ParticipantUrl, Reason, Reservation,
    State,
};

/// The Atomikos request body (`application/tcc+json` or `application/json`).
#[derive(Debug, Object, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[oai(rename = "ParticipantLinks", rename_all = "camelCase")]
pub struct ParticipantLinksBody {
    /// The participant links to confirm or cancel together.
    pub participant_links: Vec<AtomikosLink>,
}

/// A participant link as Atomikos writes it.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "AtomikosLink")]
pub struct AtomikosLink {
    /// Absolute http(s) URI: `PUT` confirms, `DELETE` cancels.
    pub uri: String,
    /// When the participant cancels on its own.
    pub expires: DateTime<Utc>,
}

/// How one link ended, in a 409 report.
#[derive(Debug, Clone, Object)]
#[oai(rename = "AtomikosLinkReport")]
pub struct LinkReport {
    pub uri: String,
    pub expires: DateTime<Utc>,
    pub state: ParticipantStateView,
    /// What the participant answered last, when it failed.
    pub last_error: Option<String>,
}

/// The 409 of a mixed outcome: which links confirmed and which did not.
#[derive(Debug, Clone, Object)]
#[oai(rename = "AtomikosConflict", rename_all = "camelCase")]
pub struct ConflictReport {
    #[oai(flatten)]
    pub problem: Problem,
    /// The reservation that holds these links, for operators (`POST .../forget` once
    /// resolved).
    pub reservation: String,
    pub participant_links: Vec<LinkReport>,
}

/// The Atomikos-compatible operations.
pub struct AtomikosApi;

#[derive(ApiResponse)]
#[oai(bad_request_handler = "confirm_bad_request")]
pub enum AtomikosConfirmResponse {
    /// Every participant confirmed.
    #[oai(status = 204)]
    Confirmed,
    /// Still confirming after `--max-wait` (a participant keeps failing); follow `Location`.
    #[oai(status = 202)]
    Accepted(#[oai(header = "Location")] String),
    /// Nothing was confirmed: the links had expired (or were about to), or every participant
    /// answered that its reservation is gone. Everything is cancelled.
    #[oai(status = 404, content_type = "application/problem+json")]
    Expired(Json<Problem>),
    /// Mixed outcome: some links confirmed, others did not; the body reports each.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<ConflictReport>),
    /// The body is not JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The body did not arrive within `--read-timeout`.
    #[oai(status = 408, content_type = "application/problem+json")]
    TooSlow(Json<Problem>),
    /// The body is larger than `--max-body-bytes`.
    #[oai(status = 413, content_type = "application/problem+json")]
    TooLarge(Json<Problem>),
    /// A field is invalid; `field` names it. Nothing was stored.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The transaction log is unavailable; nothing was decided.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(AtomikosConfirmResponse {
    400 => BadRequest, 408 => TooSlow, 413 => TooLarge, 422 => Invalid, 503 => Unavailable
});

fn confirm_bad_request(error: poem::Error) -> AtomikosConfirmResponse {
    ApiError::from_request_error(&error).into()
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "cancel_bad_request")]
pub enum AtomikosCancelResponse {
    /// The cancel is logged and every link has answered its first `DELETE` (or
    /// `--max-wait` passed); a link that failed is retried until it expires.
    #[oai(status = 204)]
    Cancelled,
    /// The body is not JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The body did not arrive within `--read-timeout`.
    #[oai(status = 408, content_type = "application/problem+json")]
    TooSlow(Json<Problem>),
    /// The body is larger than `--max-body-bytes`.
    #[oai(status = 413, content_type = "application/problem+json")]
    TooLarge(Json<Problem>),
    /// A field is invalid; `field` names it. Nothing was stored.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The transaction log is unavailable; nothing was decided.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(AtomikosCancelResponse {
    400 => BadRequest, 408 => TooSlow, 413 => TooLarge, 422 => Invalid, 503 => Unavailable
});

fn cancel_bad_request(error: poem::Error) -> AtomikosCancelResponse {
    ApiError::from_request_error(&error).into()
}

/// Parses the links; on error, the JSON path of the offending one.
fn links(body: ParticipantLinksBody) -> Result<Vec<NewParticipant>, ApiError> {
    body.participant_links
        .into_iter()
        .enumerate()
        .map(|(i, link)| {
            let uri = ParticipantUrl::parse(&link.uri)
                .map_err(|e| ApiError::Problem(Problem::invalid(link_path(i), e.to_string())))?;
            Ok(NewParticipant {
                name: uri.authority(),
                source: ParticipantSource::Link(ParticipantLink {
                    uri,
                    expires: link.expires,
                }),
            })
        })
        .collect()
}

fn conflict_report(r: &Reservation) -> ConflictReport {
    ConflictReport {
        problem: Problem::conflict(format!(
            "some participants confirmed and others did not; reservation {} holds the details",
            r.id()
        )),
        reservation: format!("/reservations/{}", r.id()),
        participant_links: r
            .participants()
            .iter()
            .filter_map(|p| {
                p.link().map(|l| LinkReport {
                    uri: l.uri.to_string(),
                    expires: l.expires,
                    state: p.state().into(),
                    last_error: p.last_error().map(str::to_owned),
                })
            })
            .collect(),
    }
}

#[OpenApi(tag = "ApiTags::Atomikos")]
impl AtomikosApi {
    /// Confirm links (Atomikos-compatible)
    ///
    /// Confirms every link and answers when all have answered: 204 all confirmed; 404
    /// nothing confirmed and everything cancelled; 409 a mixed outcome, with a report per
    /// link. The links are kept as a reservation like any other.
    #[oai(path = "/coordinator/confirm", method = "put")]
    async fn confirm(
        &self,
        coordinator: Data<&Coordinator>,
        body: JsonBody<ParticipantLinksBody>,
        /// W3C Trace Context, carried by every participant call.
        #[oai(name = "traceparent")]
        traceparent: Header<Option<String>>,
    ) -> AtomikosConfirmResponse {
        let result = async {
            let links = links(body.value)?;
            let r = coordinator
                .create_decided(links, Event::Confirm, super::trace_of(&traceparent))
                .await
                .map_err(refused_link)?;
            let limit = coordinator.limits().max_wait;
            let (r, _) = coordinator
                .wait_until(
                    r.id(),
                    |r| r.state().is_terminal() || r.state() == State::Cancelling,
                    limit,
                )
                .await?;
            Ok::<_, ApiError>(r)
        }
        .await;
        match result {
            Ok(r) => match (r.state(), r.reason()) {
                (State::Confirmed, _) => AtomikosConfirmResponse::Confirmed,
                (State::Conflict, _) => {
                    AtomikosConfirmResponse::Conflict(Json(conflict_report(&r)))
                }
                (State::Cancelling | State::Cancelled, reason) => {
                    AtomikosConfirmResponse::Expired(Json(Problem::new(
                        poem::http::StatusCode::NOT_FOUND,
                        "expired",
                        "Nothing was confirmed",
                        format!(
                            "{}; every participant is cancelled (reservation {})",
                            match reason {
                                Some(Reason::ParticipantsExpired) => {
                                    "every participant answered that it was gone"
                                }
                                _ => "the links expire too soon to be confirmed",
                            },
                            r.id()
                        ),
                    )))
                }
                _ => AtomikosConfirmResponse::Accepted(format!("/reservations/{}", r.id())),
            },
            Err(e) => e.into(),
        }
    }

    /// Cancel links (Atomikos-compatible)
    ///
    /// Logs the cancel, sends every link `DELETE`, and answers 204 once each has answered
    /// its first `DELETE` (or `--max-wait` has passed), as Atomikos's own coordinator does:
    /// a client that reads a participant right after the 204 finds it cancelled. A
    /// participant that failed is retried in the background until its link expires.
    #[oai(path = "/coordinator/cancel", method = "put")]
    async fn cancel(
        &self,
        coordinator: Data<&Coordinator>,
        body: JsonBody<ParticipantLinksBody>,
        /// W3C Trace Context, carried by every participant call.
        #[oai(name = "traceparent")]
        traceparent: Header<Option<String>>,
    ) -> AtomikosCancelResponse {
        let result = async {
            let links = links(body.value)?;
            let r = coordinator
                .create_decided(links, Event::Cancel, super::trace_of(&traceparent))
                .await
                .map_err(refused_link)?;
            let limit = coordinator.limits().max_wait;
            coordinator
                .wait_until(r.id(), every_link_answered_once, limit)
                .await?;
            Ok::<_, ApiError>(())
        }
        .await;
        match result {
            Ok(()) => AtomikosCancelResponse::Cancelled,
            Err(e) => e.into(),
        }
    }
}

/// Every participant has answered a call of the phase at least once (or needs none).
fn every_link_answered_once(r: &Reservation) -> bool {
    r.state().is_terminal()
        || r.participants()
            .iter()
            .all(|p| p.attempts() > 0 || p.state().is_settled())
}

/// A link the coordinator refused, named by its JSON path in an Atomikos request
/// (`participantLinks[{i}].uri`); any other error as for every operation.
fn refused_link(error: CoordinatorError) -> ApiError {
    match error {
        CoordinatorError::Invalid {
            field: Field::Participant { index: Some(i), .. },
            message,
        } => ApiError::Problem(Problem::invalid(link_path(i), message)),
        other => other.into(),
    }
}

/// The JSON path of the `i`th link's URL in an Atomikos request.
fn link_path(i: usize) -> String {
    format!("participantLinks[{i}].uri")
}

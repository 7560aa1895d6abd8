//! The answers of the `/reservations` operations: one `ApiResponse` enum per operation, with
//! its real status codes and typed headers (they make the OpenAPI document).

// A response is built once and moved once into poem; boxing its large variant buys nothing.
#![allow(clippy::large_enum_variant)]

use poem_openapi::payload::Json;
use poem_openapi::ApiResponse;

use crate::api::error::{problem_response, ApiError};
use crate::api::problem::{GoneProblem, Problem};
use crate::api::view_json::ViewJson;
use crate::api::views::{HistoryView, ReservationPage, ReservationView, RetriedOnHost};

#[derive(ApiResponse)]
#[oai(bad_request_handler = "create_bad_request")]
pub enum CreateResponse {
    /// The reservation is in the log. Follow `Location`; tries, if any, run now.
    #[oai(status = 202)]
    Accepted(
        ViewJson<ReservationView>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
    /// With `Prefer: wait`: every try answered and the reservation is `reserved`.
    #[oai(status = 200)]
    Settled(
        ViewJson<ReservationView>,
        #[oai(header = "Location")] String,
        #[oai(header = "Preference-Applied")] String,
    ),
    /// With `Prefer: wait`: a try failed and every participant is cancelled.
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(
        Json<GoneProblem>,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
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
    /// The transaction log is unavailable. Nothing was stored.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(CreateResponse { 400 => BadRequest, 408 => TooSlow, 413 => TooLarge, 422 => Invalid, 503 => Unavailable } gone_with_preference => Gone);

fn create_bad_request(error: poem::Error) -> CreateResponse {
    ApiError::from_request_error(&error).into()
}

#[derive(ApiResponse)]
pub enum GetResponse {
    /// The reservation is undecided, being worked on, or in conflict. `Retry-After` says
    /// when to look again while the coordinator is working.
    #[oai(status = 200)]
    Ok(
        ViewJson<ReservationView>,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
    /// Every participant confirmed: the transaction is at `Location`.
    #[oai(status = 303)]
    SeeOther(#[oai(header = "Location")] String),
    /// No reservation has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The reservation was cancelled; the body says why and how each participant ended.
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<GoneProblem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(GetResponse { 404 => NotFound, 503 => Unavailable } gone => Gone);

#[derive(ApiResponse)]
pub enum HistoryResponse {
    /// The reservation's history: state changes and every participant call.
    #[oai(status = 200)]
    Ok(Json<HistoryView>),
    /// No reservation has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The reservation's retention ended: its history went with it.
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<GoneProblem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(HistoryResponse { 404 => NotFound, 503 => Unavailable } gone => Gone);

#[derive(ApiResponse)]
pub enum ConfirmResponse {
    /// Confirming has started or is under way; follow `Location`.
    #[oai(status = 202)]
    Accepted(
        ViewJson<ReservationView>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
    /// Confirmed (already, or within `Prefer: wait`): the transaction is at `Location`.
    #[oai(status = 303)]
    SeeOther(
        #[oai(header = "Location")] String,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
    /// With `Prefer: wait`: confirming ended in `conflict`.
    #[oai(status = 200)]
    Settled(
        ViewJson<ReservationView>,
        #[oai(header = "Preference-Applied")] String,
    ),
    /// No reservation has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Still `trying`, cancelling at the client's request or after a failed try, or in
    /// `conflict`.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// Cancelled, or past its deadline: nothing was confirmed and no participant was called.
    /// With `Prefer: wait`, also when every participant answered that it was gone.
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(
        Json<GoneProblem>,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
    /// The transaction log is unavailable; nothing was decided.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(ConfirmResponse { 404 => NotFound, 409 => Conflict, 503 => Unavailable } gone_with_preference => Gone);

#[derive(ApiResponse)]
pub enum CancelResponse {
    /// Cancelling has started or is under way; follow `Location`.
    #[oai(status = 202)]
    Accepted(
        ViewJson<ReservationView>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
    /// No reservation has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Confirming, confirmed or in conflict: too late to cancel.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// Cancelled (already, or within `Prefer: wait`).
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(
        Json<GoneProblem>,
        #[oai(header = "Preference-Applied")] Option<String>,
    ),
    /// The transaction log is unavailable; nothing was decided.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(CancelResponse { 404 => NotFound, 409 => Conflict, 503 => Unavailable } gone_with_preference => Gone);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "join_bad_request")]
pub enum JoinResponse {
    /// The participant joined (or its link was already there).
    #[oai(status = 202)]
    Accepted(
        ViewJson<ReservationView>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
    /// The body is not JSON.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No reservation has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The reservation is already decided.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The reservation is cancelled or past its deadline.
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<GoneProblem>),
    /// The body did not arrive within `--read-timeout`.
    #[oai(status = 408, content_type = "application/problem+json")]
    TooSlow(Json<Problem>),
    /// The body is larger than `--max-body-bytes`.
    #[oai(status = 413, content_type = "application/problem+json")]
    TooLarge(Json<Problem>),
    /// A field is invalid; `field` names it. Nothing was stored.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(JoinResponse {
    400 => BadRequest, 404 => NotFound, 409 => Conflict, 408 => TooSlow, 413 => TooLarge, 422 => Invalid, 503 => Unavailable
} gone => Gone);

fn join_bad_request(error: poem::Error) -> JoinResponse {
    ApiError::from_request_error(&error).into()
}

#[derive(ApiResponse)]
pub enum ForgetResponse {
    /// Forgotten: the reservation answers 410 from now on. Repeating it answers 204 again.
    #[oai(status = 204)]
    Forgotten,
    /// No reservation has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// Only a reservation in `conflict` can be forgotten.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(ForgetResponse { 404 => NotFound, 409 => Conflict, 503 => Unavailable });

#[derive(ApiResponse)]
pub enum RetryResponse {
    /// The participant is being called again now; follow `Location` (or wait on it with
    /// `Prefer: wait`). Repeating it while the participant still waits or is being called
    /// answers 202 again.
    #[oai(status = 202)]
    Accepted(
        ViewJson<ReservationView>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
    /// No reservation has this id, or it has no participant at this index.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The participant does not wait to be called again: it settled, was never called, or
    /// its reservation is not confirming, cancelling or trying.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The reservation's retention ended.
    #[oai(status = 410, content_type = "application/problem+json")]
    Gone(Json<GoneProblem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(RetryResponse { 404 => NotFound, 409 => Conflict, 503 => Unavailable } gone => Gone);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "list_bad_request")]
pub enum ListResponse {
    /// A page of reservations, newest first; `next` links the following page.
    #[oai(status = 200)]
    Ok(Json<ReservationPage>),
    /// An unknown `state`, a `limit` outside 1..=1000, or an `after` that is not an id.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(ListResponse { 400 => BadRequest, 503 => Unavailable });

fn list_bad_request(error: poem::Error) -> ListResponse {
    ApiError::from_request_error(&error).into()
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "retry_host_bad_request")]
pub enum RetryHostResponse {
    /// Every participant on the host that waited is being called again now (the list may be
    /// empty).
    #[oai(status = 200)]
    Ok(Json<RetriedOnHost>),
    /// No `participant_host`, or an empty one.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(RetryHostResponse { 400 => BadRequest, 503 => Unavailable });

fn retry_host_bad_request(error: poem::Error) -> RetryHostResponse {
    ApiError::from_request_error(&error).into()
}

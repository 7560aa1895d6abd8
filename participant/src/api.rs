//! The participant contract over HTTP (poem-openapi): try, confirm, cancel, read a hold.
//! Only the mapping of the desk's answers to statuses lives here.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::desk::{CancelAnswer, ConfirmAnswer, Desk, TryAnswer, TryCall};
use crate::hold::{HoldState, HoldView};

/// Seconds a coordinator waits before asking again after a `503`.
const RETRY_AFTER_SECS: u64 = 1;

/// An error, as RFC 9457 describes it.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Problem")]
pub struct Problem {
    /// `urn:tcc-participant:problem:{kind}`.
    #[oai(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, in words.
    pub detail: String,
    /// The JSON path of the offending field, when one field is to blame.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

impl Problem {
    pub(crate) fn new(status: u16, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:tcc-participant:problem:{kind}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            field: None,
        }
    }

    fn unavailable(detail: String) -> Json<Self> {
        Json(Self::new(503, "unavailable", "Not now; ask again", detail))
    }
}

/// A participant link: confirm with `PUT uri`, cancel with `DELETE uri`.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ParticipantLink")]
pub struct LinkBody {
    /// Absolute URI of the hold.
    pub uri: String,
    /// When the hold expires unless confirmed (RFC 3339).
    pub expires: DateTime<Utc>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "try_bad_request")]
pub(crate) enum TryResponse {
    /// Held. The link is in `Location` and in the body.
    #[oai(status = 201)]
    Held(Json<LinkBody>, #[oai(header = "Location")] String),
    /// Held earlier under the same `Idempotency-Key` and the same body.
    #[oai(status = 200)]
    HeldBefore(Json<LinkBody>, #[oai(header = "Location")] String),
    /// A header is missing or malformed (`Idempotency-Key`, `TCC-Deadline`).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// Refused: nothing is held. The coordinator cancels the rest of the reservation.
    #[oai(status = 409, content_type = "application/problem+json")]
    Refused(Json<Problem>),
    /// The body does not describe a valid request (`field` names what is wrong), or the
    /// `Idempotency-Key` was used before with another body. Nothing is held.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// Not now: nothing is held; the coordinator tries again with the same key.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

fn try_bad_request(error: poem::Error) -> TryResponse {
    TryResponse::BadRequest(Json(Problem::new(
        400,
        "bad-request",
        "The try cannot be read",
        error.to_string(),
    )))
}

#[derive(ApiResponse)]
pub(crate) enum ConfirmResponse {
    /// Confirmed (also for a repeated confirm).
    #[oai(status = 204)]
    Confirmed,
    /// No such hold, or it expired or was cancelled: nothing was confirmed.
    #[oai(status = 404, content_type = "application/problem+json")]
    Gone(Json<Problem>),
    /// Not now: the hold is still held; ask again.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

#[derive(ApiResponse)]
pub(crate) enum CancelResponse {
    /// Cancelled (also for a repeated cancel, and for a hold that expired).
    #[oai(status = 204)]
    Cancelled,
    /// No such hold: counts as cancelled.
    #[oai(status = 404, content_type = "application/problem+json")]
    Unknown(Json<Problem>),
    /// The hold was confirmed: it stays confirmed.
    #[oai(status = 409, content_type = "application/problem+json")]
    Confirmed(Json<Problem>),
    /// Not now: the hold is still held; ask again.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u64),
}

#[derive(ApiResponse)]
pub(crate) enum ReadResponse {
    /// The hold.
    #[oai(status = 200)]
    Found(Json<HoldView>),
    /// No such hold (or it was forgotten after its retention).
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
}

/// The participant operations of `openapi/participant.yaml`, served for one resource.
pub(crate) struct ParticipantApi {
    pub desk: Arc<dyn Desk>,
    pub public_url: Option<String>,
}

impl ParticipantApi {
    /// The link of hold `id`: `{public url or http://{Host}}{path of the try}/{id}`.
    fn link(&self, req: &Request, id: &str) -> String {
        let path = req.original_uri().path().trim_end_matches('/');
        let path = path.strip_suffix(&format!("/{id}")).unwrap_or(path);
        match &self.public_url {
            Some(base) => format!("{}{path}/{id}", base.trim_end_matches('/')),
            None => {
                let host = req
                    .header("host")
                    .map_or_else(|| "127.0.0.1".to_owned(), str::to_owned);
                format!("http://{host}{path}/{id}")
            }
        }
    }
}

fn not_found(id: &str, state: Option<HoldState>) -> Json<Problem> {
    let detail = match state {
        None => format!("there is no hold {id}"),
        Some(HoldState::Expired) => format!("hold {id} expired before it was confirmed"),
        Some(_) => format!("hold {id} was cancelled"),
    };
    Json(Problem::new(404, "not-found", "No such hold", detail))
}

#[OpenApi]
impl ParticipantApi {
    /// Try: hold what the body asks for
    ///
    /// Holds the change and answers with a participant link. A try repeated with the same
    /// `Idempotency-Key` and body gets the same hold (`200`), also while the first is still
    /// running; the same key with another body is `422`. The hold expires after the service's
    /// hold time, and never later than `TCC-Deadline` plus the service's margin.
    #[oai(path = "/holds", method = "post", operation_id = "try")]
    async fn try_hold(
        &self,
        req: &Request,
        /// Makes the try repeatable: `{reservation id}/{participant index}` from the coordinator.
        #[oai(name = "Idempotency-Key")]
        key: Header<String>,
        /// The coordinator URL of the reservation this try belongs to.
        #[oai(name = "TCC-Reservation")]
        reservation: Header<Option<String>>,
        /// The reservation's deadline (RFC 3339): the hold never outlives it by more than the
        /// service's margin.
        #[oai(name = "TCC-Deadline")]
        deadline: Header<Option<DateTime<Utc>>>,
        /// W3C trace context.
        #[oai(name = "traceparent")]
        _traceparent: Header<Option<String>>,
        /// What to hold (the resource's request).
        body: Json<serde_json::Value>,
    ) -> TryResponse {
        let call = TryCall {
            key: key.0,
            body: body.0,
            reservation: reservation.0,
            deadline: deadline.0,
        };
        match self.desk.try_hold(call).await {
            TryAnswer::Held(hold) => {
                let uri = self.link(req, &hold.id);
                TryResponse::Held(Json(LinkBody { uri: uri.clone(), expires: hold.expires }), uri)
            }
            TryAnswer::HeldBefore(hold) => {
                let uri = self.link(req, &hold.id);
                TryResponse::HeldBefore(
                    Json(LinkBody { uri: uri.clone(), expires: hold.expires }),
                    uri,
                )
            }
            TryAnswer::KeyReused(hold) => TryResponse::Invalid(Json(Problem {
                field: Some("Idempotency-Key".into()),
                ..Problem::new(
                    422,
                    "key-reused",
                    "Idempotency-Key reused with another body",
                    format!(
                        "this Idempotency-Key made hold {} with another body; send the same body or a new key",
                        hold.id
                    ),
                )
            })),
            TryAnswer::Invalid { field, detail } => TryResponse::Invalid(Json(Problem {
                field: Some(field),
                ..Problem::new(422, "invalid-request", "The request is not valid", detail)
            })),
            TryAnswer::Refused(reason) => TryResponse::Refused(Json(Problem::new(
                409,
                "refused",
                "Refused: nothing is held",
                reason,
            ))),
            TryAnswer::Unavailable(reason) => {
                TryResponse::Unavailable(Problem::unavailable(reason), RETRY_AFTER_SECS)
            }
        }
    }

    /// Confirm a hold
    ///
    /// Makes the hold final. Idempotent: `204` again for a confirmed hold. After the hold
    /// expired or was cancelled: `404`, and nothing changes.
    #[oai(path = "/holds/:id", method = "put", operation_id = "confirm")]
    async fn confirm(&self, id: Path<String>) -> ConfirmResponse {
        match self.desk.confirm(&id.0).await {
            ConfirmAnswer::Confirmed => ConfirmResponse::Confirmed,
            ConfirmAnswer::Gone(state) => ConfirmResponse::Gone(not_found(&id.0, state)),
            ConfirmAnswer::Unavailable(reason) => {
                ConfirmResponse::Unavailable(Problem::unavailable(reason), RETRY_AFTER_SECS)
            }
        }
    }

    /// Cancel a hold
    ///
    /// Releases the hold. Idempotent: `204` again for a cancelled or expired hold. After the
    /// hold was confirmed: `409`, and it stays confirmed.
    #[oai(path = "/holds/:id", method = "delete", operation_id = "cancel")]
    async fn cancel(&self, id: Path<String>) -> CancelResponse {
        match self.desk.cancel(&id.0).await {
            CancelAnswer::Cancelled => CancelResponse::Cancelled,
            CancelAnswer::Unknown => CancelResponse::Unknown(not_found(&id.0, None)),
            CancelAnswer::AlreadyConfirmed => CancelResponse::Confirmed(Json(Problem::new(
                409,
                "confirmed",
                "Already confirmed",
                format!("hold {} was confirmed and stays so", id.0),
            ))),
            CancelAnswer::Unavailable(reason) => {
                CancelResponse::Unavailable(Problem::unavailable(reason), RETRY_AFTER_SECS)
            }
        }
    }

    /// Read a hold
    ///
    /// The hold's state, expiry, and the try that made it.
    #[oai(path = "/holds/:id", method = "get", operation_id = "read")]
    async fn read(&self, id: Path<String>) -> ReadResponse {
        match self.desk.read(&id.0).await {
            Some(hold) => ReadResponse::Found(Json(hold)),
            None => ReadResponse::NotFound(not_found(&id.0, None)),
        }
    }
}

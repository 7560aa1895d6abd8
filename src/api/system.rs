//! `/transactions` (the definitive records) and `/health` (liveness and readiness).

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, OpenApi};

use super::access::{Identity, Role};
use super::error::{problem_response, ApiError};
use super::problem::Problem;
use super::views::TransactionView;
use super::ApiTags;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::domain::ReservationId;

/// The transaction records.
pub struct TransactionsApi;

#[derive(ApiResponse)]
pub enum TransactionResponse {
    /// The confirmed transaction.
    #[oai(status = 200)]
    Ok(Json<TransactionView>),
    /// No confirmed transaction has this id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The transaction log is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}
problem_response!(TransactionResponse { 404 => NotFound, 503 => Unavailable });

#[OpenApi(tag = "ApiTags::Transactions")]
impl TransactionsApi {
    /// Read a confirmed transaction
    ///
    /// The definitive record once every participant confirmed: participants, confirmation
    /// times and metadata. 404 for anything not confirmed.
    #[oai(path = "/transactions/:id", method = "get")]
    async fn get(&self, coordinator: Data<&Coordinator>, id: Path<String>) -> TransactionResponse {
        let not_found = || {
            ApiError::Problem(Problem::not_found(format!(
                "no confirmed transaction has the id `{}`",
                id.0
            )))
        };
        let found = match id.parse::<ReservationId>() {
            Err(_) => Err(not_found()),
            Ok(id) => match coordinator.transaction(id).await {
                Ok(r) => Ok(r),
                Err(CoordinatorError::NotFound(_)) => Err(not_found()),
                Err(e) => Err(e.into()),
            },
        };
        match found {
            Ok(r) => TransactionResponse::Ok(Json(TransactionView::of(&r))),
            Err(e) => e.into(),
        }
    }
}

/// Health checks for orchestrators.
pub struct HealthApi;

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The log is open and every reservation found at start has been resumed.
    #[oai(status = 200)]
    Ready(PlainText<&'static str>),
    /// Still recovering after a start, or writes cannot succeed now (the detail says why).
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process serves HTTP
    #[oai(path = "/health/live", method = "get")]
    async fn live(&self) -> PlainText<&'static str> {
        PlainText("live")
    }

    /// Readiness: the log is open, recovery has finished, and writes can succeed (the database answers; the log's disk has room, answers in time, and has not failed)
    #[oai(path = "/health/ready", method = "get")]
    async fn ready(&self, coordinator: Data<&Coordinator>) -> ReadyResponse {
        let refusal = coordinator
            .is_ready()
            .then(|| coordinator.write_refusal())
            .flatten();
        if let Some(refusal) = refusal {
            ReadyResponse::Unavailable(Json(Problem::unavailable(format!(
                "client writes are refused until this changes: {refusal}"
            ))))
        } else if coordinator.is_ready() {
            ReadyResponse::Ready(PlainText("ready"))
        } else {
            ReadyResponse::Unavailable(Json(Problem::unavailable(
                "recovering: resuming the reservations found in the log",
            )))
        }
    }
}

/// Who a token is.
pub struct AccessApi;

/// The token a request was made with: its name and what it may do.
#[derive(Debug, poem_openapi::Object)]
#[oai(rename = "Identity")]
pub struct IdentityView {
    /// The token's name (from `--api-tokens-file`; `api-token` for an `--api-token`;
    /// `anonymous` on a coordinator without tokens, which lets everyone do everything).
    pub name: String,
    /// `viewer`, `client` or `operator`.
    pub role: String,
    /// Whether the token may create, join, confirm and cancel reservations.
    pub may_decide: bool,
    /// Whether the token may forget conflicts and retry participants now.
    pub may_operate: bool,
}

#[OpenApi(tag = "ApiTags::Access")]
impl AccessApi {
    /// Who this token is
    ///
    /// The name and role of the bearer token the request carries, and what the role allows
    /// (the dashboard shows only the actions a token may take).
    #[oai(path = "/whoami", method = "get")]
    async fn whoami(&self, identity: Data<&Identity>) -> Json<IdentityView> {
        Json(IdentityView {
            name: identity.name.to_string(),
            role: identity.role.as_str().to_owned(),
            may_decide: identity.role >= Role::Client,
            may_operate: identity.role >= Role::Operator,
        })
    }
}

/// `GET /metrics`: the coordinator's metrics, in OpenMetrics when the scraper's `Accept` asks
/// for it (Prometheus does), else in Prometheus's classic text format (curl, older agents).
/// Outside the OpenAPI document: it is for scrapers, not API clients.
pub(crate) fn metrics(req: &poem::Request, stuck_after: std::time::Duration) -> poem::Response {
    use poem::IntoResponse;
    let Some(coordinator) = req.data::<Coordinator>() else {
        return poem::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let metrics = coordinator.metrics();
    metrics
        .stuck
        .set(i64::try_from(coordinator.stuck(stuck_after)).unwrap_or(i64::MAX));
    let accept = req.header(poem::http::header::ACCEPT);
    let exposition = crate::telemetry::Exposition::negotiate(accept);
    metrics
        .render_as(exposition)
        .with_content_type(exposition.content_type())
        .with_header(poem::http::header::VARY, "Accept")
        .into_response()
}

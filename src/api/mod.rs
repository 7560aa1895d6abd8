//! The HTTP shape: routes, request and response types, problem+json errors.
//!
//! Handlers parse input into domain types, call the coordinator, and map its answers to
//! status codes. No business rule lives here.

pub mod access;
mod atomikos;
mod body;
mod error;
mod guard;
mod problem;
mod requests;
mod reservations;
mod spec;
mod system;
mod view_json;
mod views;

use poem::endpoint::{make_sync, BoxEndpoint};
use poem::http::StatusCode;
use poem::web::Html;
use poem::{EndpointExt, IntoResponse, Response, Route};
use poem_openapi::{OpenApiService, Tags};

pub use body::{BodyLimit, ReadTimeout};

/// `--stuck-after`, for the operations that list stuck reservations.
#[derive(Debug, Clone, Copy)]
pub struct StuckAfter(pub std::time::Duration);
pub use problem::{Problem, PROBLEM_JSON};

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::coordinator::Coordinator;

#[derive(Tags)]
enum ApiTags {
    /// Reservations: create, read, confirm, cancel, join.
    Reservations,
    /// Definitive records of confirmed transactions.
    Transactions,
    /// Liveness and readiness for orchestrators.
    Health,
    /// The synchronous API of Atomikos "TCC for REST", for existing clients.
    Atomikos,
    /// Who the request's token is and what it may do.
    Access,
}

const DESCRIPTION: &str = "\
A try/confirm/cancel (TCC) coordinator for REST services.

Each participant service *tries* a change and hands back a participant link that confirms \
with `PUT` and cancels with `DELETE` and expires on its own. Create a reservation over those \
links (or let the coordinator perform the tries), then confirm or cancel it. The coordinator \
logs every decision before it calls a participant, retries with exponential backoff, resumes \
after a crash, and cancels every participant when the reservation's deadline passes.

Every error is `application/problem+json` (RFC 9457); when one field is to blame, `field` \
names it by its JSON path. The participant side of the protocol is in `openapi/participant.yaml`.

**Authentication and roles.** When the coordinator runs with tokens (`--api-token`, \
`--api-tokens-file`), every endpoint except `/health/*`, `/docs` and `/openapi.*` answers \
`401` (with `WWW-Authenticate: Bearer`) unless the request carries `Authorization: Bearer \
<token>` with one of them. Each token has a role: `viewer` reads, `client` also creates, \
joins, confirms and cancels, `operator` also forgets conflicts and retries participants now \
(an `--api-token` is an operator). A token whose role is short of what an operation needs \
gets `403` naming the role (`required_role`); each operation states its role in \
`x-required-role`. `GET /whoami` tells a token its name and role.

**Overload.** When more requests are in flight than `--max-in-flight`, or the transaction log \
cannot keep up, or a restarted coordinator is still reading its log back, writes are answered \
`503` with `Retry-After` and nothing is stored.

Prometheus metrics are at `/metrics` (outside this document).";

type Apis = (
    reservations::ReservationsApi,
    system::TransactionsApi,
    atomikos::AtomikosApi,
    system::HealthApi,
    system::AccessApi,
);

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            reservations::ReservationsApi,
            system::TransactionsApi,
            atomikos::AtomikosApi,
            system::HealthApi,
            system::AccessApi,
        ),
        "tcc-coordinator",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
}

pub use spec::SpecLimits;

/// The OpenAPI document of the coordinator with the default limits, as YAML
/// (`openapi/coordinator.yaml`).
#[must_use]
pub fn openapi_yaml() -> String {
    let doc = spec::refine(&service().spec(), SpecLimits::default());
    serde_yaml::to_string(&doc).expect("a JSON document converts to YAML")
}

/// The dashboard: one page, no build step, nothing fetched from elsewhere. It reads the
/// API and `/metrics` like any client (with the token it is given, when one is needed).
const DASHBOARD: &str = include_str!("ui.html");

/// The caller's span of a request's `traceparent` header (an invalid one is ignored, as W3C
/// says).
fn trace_of(
    header: &poem_openapi::param::Header<Option<String>>,
) -> Option<crate::domain::SpanParent> {
    header
        .0
        .as_deref()
        .and_then(crate::domain::SpanParent::from_traceparent)
}

/// What a completion callback receives: the reservation's representation, as `GET` shows it.
pub(crate) fn callback_body(call_timeout: std::time::Duration) -> crate::coordinator::Render {
    use poem_openapi::types::ToJSON;
    Arc::new(move |r, now| {
        views::ReservationView::of(r, now, call_timeout)
            .to_json_string()
            .into_bytes()
    })
}

/// What the routes are built with besides the coordinator.
pub(crate) struct RouteOptions {
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub read_timeout: std::time::Duration,
    /// Who may do what (shared with whoever reloads the tokens file).
    pub tokens: access::Tokens,
    pub stuck_after: std::time::Duration,
    pub spec: SpecLimits,
}

/// Every route: the API, `/openapi.json`, `/openapi.yaml` and Swagger UI at `/docs`, behind
/// the token check and the in-flight cap.
pub(crate) fn routes(coordinator: Coordinator, options: &RouteOptions) -> BoxEndpoint<'static> {
    let api = service();
    let raw = api.spec();
    let doc = spec::refine(&raw, options.spec);
    let allowed = spec::AllowedMethods::of(&doc);
    let json = serde_json::to_string_pretty(&doc).expect("a JSON value serialises");
    let yaml = serde_yaml::to_string(&doc).expect("a JSON document converts to YAML");
    // Swagger UI embeds the document: give it the refined one.
    let docs = api.swagger_ui_html().replace(&raw, &json);
    let docs_slash = docs.clone();
    let stuck_after = options.stuck_after;
    let routes = Route::new()
        .at(
            "/openapi.json",
            make_sync(move |_| json.clone().with_content_type("application/json")),
        )
        .at(
            "/openapi.yaml",
            make_sync(move |_| yaml.clone().with_content_type("application/yaml")),
        )
        // With or without the trailing slash, as people type it.
        .at("/docs", make_sync(move |_| Html(docs.clone())))
        .at("/docs/", make_sync(move |_| Html(docs_slash.clone())))
        .at("/ui", make_sync(|_| Html(DASHBOARD)))
        .at(
            "/metrics",
            poem::get(poem::endpoint::make(move |req: poem::Request| async move {
                system::metrics(&req, stuck_after)
            })),
        )
        .nest("/", api);
    guard::Gate {
        inner: routes,
        slots: Arc::new(Semaphore::new(options.max_in_flight)),
        tokens: options.tokens.clone(),
        allowed,
        coordinator,
        body_limit: options.max_body_bytes,
        read_timeout: options.read_timeout,
        stuck_after: options.stuck_after,
    }
    .boxed()
}

/// A problem as a poem response, for the answers given outside the operations.
fn problem_response(problem: &Problem) -> Response {
    let mut body = serde_json::json!({
        "type": problem.kind,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    });
    if let Some(field) = &problem.field {
        body["field"] = field.clone().into();
    }
    poem::web::Json(body)
        .with_status(
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .with_content_type(PROBLEM_JSON)
        .into_response()
}

/// problem+json for the errors poem raises outside the API's own responses (unknown path,
/// wrong method).
fn problem_for(error: &poem::Error) -> Response {
    let status = error.status();
    let problem = match status {
        StatusCode::NOT_FOUND => Problem::not_found("no resource at this path; see /docs"),
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(
            status,
            "method-not-allowed",
            "Method not allowed",
            "this path does not accept that method; see /docs",
        ),
        s if s.is_server_error() => {
            tracing::error!(%error, "request failed");
            Problem::new(
                status,
                "internal",
                "Internal error",
                "the coordinator failed to answer; retry later",
            )
        }
        _ => Problem::new(
            status,
            "bad-request",
            "The request cannot be served",
            error.to_string(),
        ),
    };
    problem_response(&problem)
}

//! What every request passes before it reaches an operation: the request's log span, the cap
//! on requests in flight, the bearer token check, the data operations read, problem+json for
//! what poem answers itself, `Allow` on a 405.

use std::sync::Arc;

use poem::http::{header, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response, Result};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::problem::Problem;
use super::{BodyLimit, ReadTimeout};
use crate::coordinator::Coordinator;

/// Every request's way in, as one endpoint: one future holding one request, where poem's
/// middleware chain nests a future (and a copy of the request's place) per layer. In order:
/// the request's span (poem's `Tracing` span and events, same target and fields), the cap on
/// requests in flight, the token check, the data the operations read, the route, then
/// problem+json for poem's own errors, `Allow` on a 405 and `Retry-After` on a 503.
pub struct Gate<E> {
    pub inner: E,
    pub slots: Arc<Semaphore>,
    pub tokens: super::access::Tokens,
    pub allowed: super::spec::AllowedMethods,
    pub coordinator: Coordinator,
    pub body_limit: usize,
    pub read_timeout: std::time::Duration,
    pub stuck_after: std::time::Duration,
}

/// The target of poem's `Tracing` middleware: `RUST_LOG=poem=info` shows each request.
const REQUEST_LOG: &str = "poem::middleware::tracing_mw";

impl<E: Endpoint> Endpoint for Gate<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let span = tracing::info_span!(
            target: REQUEST_LOG,
            "request",
            remote_addr = %req.remote_addr(),
            version = ?req.version(),
            method = %req.method(),
            uri = %req.original_uri(),
        );
        if span.is_disabled() {
            return Ok(self.pass(req).await);
        }
        async move {
            let started = std::time::Instant::now();
            let response = self.pass(req).await;
            tracing::info!(target: REQUEST_LOG, status = %response.status(),
                duration = ?started.elapsed(), "response");
            Ok(response)
        }
        .instrument(span)
        .await
    }
}

impl<E: Endpoint> Gate<E> {
    async fn pass(&self, mut req: Request) -> Response {
        let health = req.uri().path().starts_with("/health/");
        // Health probes always pass: an orchestrator must see a busy coordinator as alive.
        let _slot = if health {
            None
        } else if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            Some(slot)
        } else {
            tracing::warn!("too many requests in flight (--max-in-flight): answering 503");
            return overloaded(
                "too many requests are in flight (--max-in-flight); retry after the delay in Retry-After",
            );
        };
        let identity = match self.tokens.check(&req) {
            Ok(identity) => identity,
            Err(refused) => return *refused,
        };
        let extensions = req.extensions_mut();
        extensions.insert(identity);
        extensions.insert(self.coordinator.clone());
        extensions.insert(BodyLimit(self.body_limit));
        extensions.insert(ReadTimeout(self.read_timeout));
        extensions.insert(super::StuckAfter(self.stuck_after));
        let uri = req.uri().clone();
        let mut response = match self.inner.call(req).await {
            Ok(answer) => answer.into_response(),
            Err(error) => super::problem_for(&error),
        };
        match response.status() {
            // RFC 9110: a 405 names the methods the path accepts.
            StatusCode::METHOD_NOT_ALLOWED => {
                if let Some(value) = self
                    .allowed
                    .for_path(uri.path())
                    .and_then(|m| header::HeaderValue::from_str(m).ok())
                {
                    response.headers_mut().insert(header::ALLOW, value);
                }
            }
            // Every 503 is temporary: say when to come back.
            StatusCode::SERVICE_UNAVAILABLE
                if !health && !response.headers().contains_key(header::RETRY_AFTER) =>
            {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, OVERLOAD_RETRY_AFTER_SECS.into());
            }
            _ => {}
        }
        response
    }
}

/// Seconds a client is asked to wait when the coordinator is saturated.
pub const OVERLOAD_RETRY_AFTER_SECS: u32 = 1;

/// The 503 of an overloaded coordinator.
pub fn overloaded(detail: &str) -> Response {
    super::problem_response(&Problem::unavailable(detail))
        .with_header(header::RETRY_AFTER, OVERLOAD_RETRY_AFTER_SECS.to_string())
        .into_response()
}

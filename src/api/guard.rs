//! What every request passes before it reaches an operation: the request's log span, the cap
//! on requests in flight, the bearer token check, the data operations read, problem+json for
//! what poem answers itself, `Allow` on a 405.

use std::sync::Arc;

use poem::http::{header, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::problem::Problem;
use super::{BodyLimit, ReadTimeout};
use crate::config::ApiToken;
use crate::coordinator::Coordinator;

/// Every request's way in, as one endpoint: one future holding one request, where poem's
/// middleware chain nests a future (and a copy of the request's place) per layer. In order:
/// the request's span (poem's `Tracing` span and events, same target and fields), the cap on
/// requests in flight, the token check, the data the operations read, the route, then
/// problem+json for poem's own errors, `Allow` on a 405 and `Retry-After` on a 503.
pub struct Gate<E> {
    pub inner: E,
    pub slots: Arc<Semaphore>,
    pub tokens: Tokens,
    pub allowed: super::spec::AllowedMethods,
    pub coordinator: Coordinator,
    pub body_limit: usize,
    pub read_timeout: std::time::Duration,
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
        if let Some(refused) = self.tokens.refusal(&req) {
            return refused;
        }
        let extensions = req.extensions_mut();
        extensions.insert(self.coordinator.clone());
        extensions.insert(BodyLimit(self.body_limit));
        extensions.insert(ReadTimeout(self.read_timeout));
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

/// Paths served without a token: probes for orchestrators, the documentation (no data; a
/// browser cannot send a bearer token when it opens `/docs`), and the metrics unless they are
/// protected.
fn is_public(path: &str, protect_metrics: bool) -> bool {
    (path == "/metrics" && !protect_metrics)
        || path.starts_with("/health/")
        || path == "/docs"
        || path == "/ui"
        || path.starts_with("/docs/")
        || path == "/openapi.json"
        || path == "/openapi.yaml"
}

/// The tokens a request may present, kept as SHA-256 digests: comparing digests of equal
/// length in constant time reveals neither a token's bytes nor its length.
#[derive(Clone)]
pub struct Tokens {
    digests: Arc<Vec<[u8; 32]>>,
    protect_metrics: bool,
}

impl Tokens {
    pub fn new(tokens: &[ApiToken], protect_metrics: bool) -> Self {
        Self {
            digests: Arc::new(
                tokens
                    .iter()
                    .map(|t| Sha256::digest(t.expose().as_bytes()).into())
                    .collect(),
            ),
            protect_metrics,
        }
    }

    /// Whether `presented` is one of the tokens. Every token is compared, matched or not.
    fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, t| found | t.ct_eq(&digest))
            .into()
    }
}

impl Tokens {
    /// The 401 for a request without one of the tokens (unless its path is public); `None`
    /// lets it through, as with no tokens configured.
    fn refusal(&self, req: &Request) -> Option<Response> {
        if self.digests.is_empty() || is_public(req.uri().path(), self.protect_metrics) {
            return None;
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let (challenge, detail) = match presented {
            Some(token) if self.accepts(token) => return None,
            Some(_) => (
                r#"Bearer realm="tcc-coordinator", error="invalid_token""#,
                "the bearer token is not one of the coordinator's --api-token values",
            ),
            None => (
                r#"Bearer realm="tcc-coordinator""#,
                "send `Authorization: Bearer <token>` with one of the coordinator's --api-token values",
            ),
        };
        let problem = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid bearer token is required",
            detail,
        );
        Some(
            super::problem_response(&problem)
                .with_header(header::WWW_AUTHENTICATE, challenge)
                .into_response(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_token_is_accepted() {
        let tokens = Tokens::new(
            &[ApiToken::new("first-token"), ApiToken::new("second")],
            false,
        );
        assert!(tokens.accepts("first-token"));
        assert!(tokens.accepts("second"));
        assert!(!tokens.accepts("first-toke"));
        assert!(!tokens.accepts(""));
        assert!(!tokens.accepts("second "));
    }

    #[test]
    fn health_and_documentation_are_public_and_nothing_else() {
        for path in [
            "/health/live",
            "/health/ready",
            "/docs",
            "/docs/",
            "/openapi.json",
        ] {
            assert!(is_public(path, true), "{path}");
        }
        for path in [
            "/reservations",
            "/transactions/x",
            "/healthz",
            "/docsx",
            "/",
        ] {
            assert!(!is_public(path, false), "{path}");
        }
        assert!(is_public("/metrics", false));
        assert!(!is_public("/metrics", true));
    }
}

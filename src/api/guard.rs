//! What every request passes before it reaches an operation: the bearer token check and the
//! cap on requests in flight.

use std::sync::Arc;

use poem::http::{header, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::problem::Problem;
use crate::config::ApiToken;

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

/// Answers 401 to a request without one of `tokens` (unless its path is public); with no
/// tokens configured, lets everything through.
pub async fn authenticate<E: Endpoint>(next: E, req: Request, tokens: Tokens) -> Result<Response> {
    if tokens.digests.is_empty() || is_public(req.uri().path(), tokens.protect_metrics) {
        return Ok(next.call(req).await?.into_response());
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
        Some(token) if tokens.accepts(token) => return Ok(next.call(req).await?.into_response()),
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
    Ok(super::problem_response(&problem)
        .with_header(header::WWW_AUTHENTICATE, challenge)
        .into_response())
}

/// Adds `Allow` to a 405: the methods the path accepts (RFC 9110).
pub async fn allow_on_405<E: Endpoint>(
    next: E,
    req: Request,
    allowed: super::spec::AllowedMethods,
) -> Result<Response> {
    let path = req.uri().path().to_owned();
    let mut response = next.call(req).await?.into_response();
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(value) = allowed
            .for_path(&path)
            .and_then(|m| header::HeaderValue::from_str(m).ok())
        {
            response.headers_mut().insert(header::ALLOW, value);
        }
    }
    Ok(response)
}

/// Seconds a client is asked to wait when the coordinator is saturated.
pub const OVERLOAD_RETRY_AFTER_SECS: u32 = 1;

/// Answers 503 with `Retry-After` when `slots` are all taken, instead of queueing without
/// bound, and adds `Retry-After` to every other 503. Health probes always pass: an
/// orchestrator must see a busy coordinator as alive.
pub async fn limit_in_flight<E: Endpoint>(
    next: E,
    req: Request,
    slots: Arc<Semaphore>,
) -> Result<Response> {
    if req.uri().path().starts_with("/health/") {
        return Ok(next.call(req).await?.into_response());
    }
    let with_retry_after = |mut response: Response| {
        // Every 503 is temporary: say when to come back.
        if response.status() == StatusCode::SERVICE_UNAVAILABLE
            && !response.headers().contains_key(header::RETRY_AFTER)
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, OVERLOAD_RETRY_AFTER_SECS.into());
        }
        response
    };
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        tracing::warn!("too many requests in flight (--max-in-flight): answering 503");
        return Ok(overloaded(
            "too many requests are in flight (--max-in-flight); retry after the delay in Retry-After",
        ));
    };
    Ok(with_retry_after(next.call(req).await?.into_response()))
}

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

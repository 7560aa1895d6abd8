//! The participant calls over HTTP (reqwest): no redirects, no proxy, a per-call timeout, a
//! bounded number in flight, `traceparent` on every call; each answer classified.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER,
};
use reqwest::{Response, StatusCode};

use super::{
    CallPolicy, CancelOutcome, ConfirmOutcome, Outcome, Participants, PolicyError, RetryHint,
    TryOutcome, MAX_CALLS_IN_FLIGHT, TCC_JSON,
};
use crate::domain::{ParticipantLink, ParticipantUrl, TryRequest};
use crate::telemetry::Metrics;

impl Participants for ParticipantClient {
    fn try_reserve<'a>(
        &'a self,
        request: &'a TryRequest,
        reservation_url: &'a str,
        idempotency_key: &'a str,
        expires_if_unsaid: DateTime<Utc>,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, TryOutcome> {
        Box::pin(ParticipantClient::try_reserve(
            self,
            request,
            reservation_url,
            idempotency_key,
            expires_if_unsaid,
            traceparent,
        ))
    }

    fn confirm<'a>(
        &'a self,
        uri: &'a ParticipantUrl,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, ConfirmOutcome> {
        Box::pin(ParticipantClient::confirm(self, uri, traceparent))
    }

    fn cancel<'a>(
        &'a self,
        uri: &'a ParticipantUrl,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, CancelOutcome> {
        Box::pin(ParticipantClient::cancel(self, uri, traceparent))
    }

    fn callback<'a>(
        &'a self,
        url: &'a ParticipantUrl,
        body: Vec<u8>,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), RetryHint>> {
        Box::pin(ParticipantClient::callback(self, url, body, traceparent))
    }

    fn check<'a>(&'a self, url: &'a ParticipantUrl) -> BoxFuture<'a, Result<(), PolicyError>> {
        Box::pin(self.policy.check(url))
    }
}

/// The HTTP client for participants.
#[derive(Clone)]
pub struct ParticipantClient {
    http: reqwest::Client,
    policy: CallPolicy,
    metrics: Metrics,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The client could not be built (TLS roots, for example).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the participant HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

impl ParticipantClient {
    /// A client whose every call ends within `call_timeout` and goes only where `policy`
    /// allows.
    ///
    /// # Errors
    /// [`ClientError`] when reqwest cannot be set up.
    ///
    /// https participants are verified against the system's certificate authorities plus
    /// `extra_roots`.
    pub fn new(
        call_timeout: Duration,
        policy: CallPolicy,
        extra_roots: Vec<reqwest::Certificate>,
        metrics: Metrics,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .tls_certs_merge(extra_roots)
            .dns_resolver(policy.resolver())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(call_timeout)
            .connect_timeout(call_timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(30))
            // As many as may be in flight: with fewer, a storm of calls to one host closed a
            // connection at each answer and opened another for the next call (connect,
            // shutdown and close were a twentieth of a timeout storm's CPU, and the
            // participant paid for the accepts).
            .pool_max_idle_per_host(MAX_CALLS_IN_FLIGHT)
            .user_agent(concat!("tcc-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            policy,
            metrics,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT)),
        })
    }

    /// Runs one call, counting it in the metrics by verb and outcome, with its duration.
    async fn measured<T: Outcome>(
        &self,
        verb: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = std::time::Instant::now();
        let outcome = call.await;
        self.metrics
            .called(verb, outcome.label(), started.elapsed());
        outcome
    }

    /// Sends a request to `url` once a slot among [`MAX_CALLS_IN_FLIGHT`] is free, if the
    /// policy allows it.
    async fn send(
        &self,
        url: &ParticipantUrl,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, RetryHint> {
        self.policy
            .check_before_call(url)
            .map_err(|e| refused_by_policy(&e))?;
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        request.send().await.map_err(|e| network_error(&e))
    }

    /// `POST`s a try, with the reservation's deadline in `TCC-Deadline`; the deadline is also
    /// the link's expiry when the participant gives none.
    pub async fn try_reserve(
        &self,
        request: &TryRequest,
        reservation_url: &str,
        idempotency_key: &str,
        expires_if_unsaid: DateTime<Utc>,
        traceparent: Option<&str>,
    ) -> TryOutcome {
        self.measured(
            "try",
            self.try_once(
                request,
                reservation_url,
                idempotency_key,
                expires_if_unsaid,
                traceparent,
            ),
        )
        .await
    }

    async fn try_once(
        &self,
        request: &TryRequest,
        reservation_url: &str,
        idempotency_key: &str,
        deadline: DateTime<Utc>,
        traceparent: Option<&str>,
    ) -> TryOutcome {
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let sent = self
            .send(
                &request.url,
                with_traceparent(self.http.post(request.url.as_url().clone()), traceparent)
                    .headers(headers)
                    .header("TCC-Reservation", reservation_url)
                    .header("Idempotency-Key", idempotency_key)
                    .header(
                        "TCC-Deadline",
                        deadline.to_rfc3339_opts(SecondsFormat::Millis, true),
                    )
                    .json(&request.body),
            )
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(hint) => return TryOutcome::Retry(hint),
        };
        let status = response.status();
        match status.as_u16() {
            200 | 201 => match read_link(&request.url, response, deadline).await {
                Ok(link) => match self.policy.check(&link.uri).await {
                    Ok(()) => TryOutcome::Reserved(link),
                    // The participant holds something the coordinator will not call: its
                    // link expires on its own.
                    Err(e) => TryOutcome::Refused(format!(
                        "the try answered with a link the coordinator will not call: {e}"
                    )),
                },
                Err(error) => TryOutcome::Retry(RetryHint {
                    error,
                    retry_after: None,
                }),
            },
            202 => TryOutcome::Retry(RetryHint {
                error: "still trying (202)".into(),
                retry_after: retry_after(&response),
            }),
            408 | 429 | 500..=599 => TryOutcome::Retry(hint(response).await),
            400..=499 => TryOutcome::Refused(refusal(response).await),
            _ => TryOutcome::Retry(RetryHint {
                error: format!("unexpected answer {} to the try", describe(status)),
                retry_after: retry_after(&response),
            }),
        }
    }

    /// `PUT`s a confirmation.
    pub async fn confirm(&self, uri: &ParticipantUrl, traceparent: Option<&str>) -> ConfirmOutcome {
        self.measured("confirm", self.confirm_once(uri, traceparent))
            .await
    }

    async fn confirm_once(
        &self,
        uri: &ParticipantUrl,
        traceparent: Option<&str>,
    ) -> ConfirmOutcome {
        let sent = self
            .send(
                uri,
                with_traceparent(self.http.put(uri.as_url().clone()), traceparent)
                    .header(CONTENT_TYPE, tcc_json())
                    .header(ACCEPT, tcc_json()),
            )
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(hint) => return ConfirmOutcome::Retry(hint),
        };
        let status = response.status();
        match status.as_u16() {
            200 | 204 => ConfirmOutcome::Confirmed,
            404 | 410 => ConfirmOutcome::Gone(describe(status)),
            202 => ConfirmOutcome::Retry(RetryHint {
                error: "still confirming (202)".into(),
                retry_after: retry_after(&response),
            }),
            408 | 429 => ConfirmOutcome::Retry(hint(response).await),
            400..=499 => ConfirmOutcome::Refused(refusal(response).await),
            _ => ConfirmOutcome::Retry(hint(response).await),
        }
    }

    /// `DELETE`s the link to cancel.
    pub async fn cancel(&self, uri: &ParticipantUrl, traceparent: Option<&str>) -> CancelOutcome {
        self.measured("cancel", self.cancel_once(uri, traceparent))
            .await
    }

    async fn cancel_once(&self, uri: &ParticipantUrl, traceparent: Option<&str>) -> CancelOutcome {
        let sent = self
            .send(
                uri,
                with_traceparent(self.http.delete(uri.as_url().clone()), traceparent)
                    .header(ACCEPT, tcc_json()),
            )
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(hint) => return CancelOutcome::Retry(hint),
        };
        match response.status().as_u16() {
            200 | 204 | 404 | 410 => CancelOutcome::Cancelled,
            405 => CancelOutcome::ExpiresOnItsOwn,
            202 => CancelOutcome::Retry(RetryHint {
                error: "still cancelling (202)".into(),
                retry_after: retry_after(&response),
            }),
            _ => CancelOutcome::Retry(hint(response).await),
        }
    }
}

impl ParticipantClient {
    /// `POST`s a completion callback: `Ok` once it answers 2xx.
    ///
    /// # Errors
    /// Why it must be tried again: any other answer, or a network error.
    pub async fn callback(
        &self,
        url: &ParticipantUrl,
        body: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<(), RetryHint> {
        let post = async {
            let sent = self
                .send(
                    url,
                    with_traceparent(self.http.post(url.as_url().clone()), traceparent)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body),
                )
                .await;
            match sent {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(hint(response).await),
                Err(hint) => Err(hint),
            }
        };
        self.measured("callback", post).await
    }
}

/// Adds the `traceparent` header of one outgoing call (the call's own span in the
/// reservation's trace), when there is one: set in place, no map built per call.
fn with_traceparent(
    request: reqwest::RequestBuilder,
    traceparent: Option<&str>,
) -> reqwest::RequestBuilder {
    match traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        Some(value) => request.header(HeaderName::from_static("traceparent"), value),
        None => request,
    }
}

/// `application/tcc+json`, checked once.
fn tcc_json() -> HeaderValue {
    HeaderValue::from_static(TCC_JSON)
}

fn describe(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The most of a failed answer's body read for its reason.
const REASON_BYTES: usize = 4096;
/// The most of a reason kept (the reservation shows it as `last_error`).
const REASON_CHARS: usize = 200;

/// A refusal or failure as the reservation shows it: the status, and the participant's reason when its
/// body gives one (a problem+json `detail`, or `title`, `message`, `error`, `reason`; or the
/// first line of a text body), bounded.
async fn refusal(mut response: Response) -> String {
    let status = describe(response.status());
    let mut body = Vec::new();
    while body.len() < REASON_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(REASON_BYTES);
    match reason_in(&body) {
        Some(reason) => format!("{status}: {reason}"),
        None => status,
    }
}

fn reason_in(body: &[u8]) -> Option<String> {
    let clip = |text: &str| {
        let text = text.trim();
        match text.char_indices().nth(REASON_CHARS) {
            Some((end, _)) => format!("{}…", &text[..end]),
            None => text.to_owned(),
        }
    };
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) {
        return ["detail", "title", "message", "error", "reason"]
            .iter()
            .find_map(|key| fields.get(*key)?.as_str().filter(|v| !v.trim().is_empty()))
            .map(clip);
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|line| !line.is_empty())?;
    // An HTML error page's first line says nothing.
    (!line.starts_with('<')).then(|| clip(line))
}

/// A failed answer to retry: its status and, as for a refusal, the participant's reason
/// when its body gives one (bounded); and its `Retry-After`.
async fn hint(response: Response) -> RetryHint {
    let retry_after = retry_after(&response);
    RetryHint {
        error: refusal(response).await,
        retry_after,
    }
}

fn refused_by_policy(error: &PolicyError) -> RetryHint {
    RetryHint {
        error: format!("refused by the outgoing call policy: {error}"),
        retry_after: None,
    }
}

/// A rustls error inside `error`: tokio-rustls and hyper wrap it in `io::Error`s, whose
/// `source()` skips the error they wrap, so each one is opened by hand.
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = e.downcast_ref::<std::io::Error>().and_then(|io| {
            io.get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static))
        });
    }
    None
}

fn network_error(error: &reqwest::Error) -> RetryHint {
    // The resolver's refusal travels inside reqwest's error.
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(policy) = inner.downcast_ref::<PolicyError>() {
            return refused_by_policy(policy);
        }
        if let Some(tls) = find_tls_error(inner) {
            return RetryHint {
                error: format!("TLS handshake failed: {tls}"),
                retry_after: None,
            };
        }
        source = inner.source();
    }
    let kind = if error.is_timeout() {
        "no answer within the participant timeout"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the connection failed"
    };
    RetryHint {
        error: kind.to_owned(),
        retry_after: None,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

#[derive(serde::Deserialize)]
struct LinkBody {
    uri: Option<String>,
    expires: Option<DateTime<Utc>>,
}

/// The link of a successful try: `Location`, or a body `{"uri", "expires"}`.
async fn read_link(
    try_url: &ParticipantUrl,
    response: Response,
    expires_if_unsaid: DateTime<Utc>,
) -> Result<ParticipantLink, String> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Option<LinkBody> = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (body_uri, expires) = body.map_or((None, None), |b| (b.uri, b.expires));
    let uri = body_uri
        .or(location)
        .ok_or("the try answered without a link (no Location header and no `uri` in the body)")?;
    let uri = try_url
        .join(&uri)
        .map_err(|e| format!("the try answered with an unusable link `{uri}`: {e}"))?;
    Ok(ParticipantLink {
        uri,
        expires: expires.unwrap_or(expires_if_unsaid),
    })
}

//! The checker's HTTP side: the three calls of the contract, each sent as the coordinator
//! sends it, asked again on the answers the coordinator asks again on, and kept whole so
//! that a broken rule can show what was sent and what came back.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::Options;

/// How much of an answer's body a report shows.
const BODY_SHOWN: usize = 1024;
/// The longest pause between two attempts of one call.
const MOST_BETWEEN: Duration = Duration::from_secs(1);
/// The media type the coordinator sends confirms and cancels with.
const TCC_JSON: &str = "application/tcc+json";

/// One call as it was sent, and its last answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: Method,
    pub url: String,
    /// The request's headers, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// The last answer, or why there was none.
    pub answer: Result<Answer, String>,
    /// How many times it was sent (more than once after 202, 408, 429, 5xx or no answer).
    pub attempts: u32,
}

/// An answer: its status, headers and (the start of) its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Exchange {
    /// The final status, if an answer came.
    pub fn status(&self) -> Option<StatusCode> {
        self.answer.as_ref().ok().map(|a| a.status)
    }

    /// A header of the answer.
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        let answer = self.answer.as_ref().ok()?;
        answer.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The status in words, or why no answer came: for sentences.
    pub fn outcome(&self) -> String {
        match &self.answer {
            Ok(answer) => answer.status.to_string(),
            Err(e) => format!("no answer ({e})"),
        }
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "> {} {}", self.method, self.url)?;
        for (name, value) in &self.headers {
            writeln!(f, "> {name}: {value}")?;
        }
        if let Some(body) = &self.body {
            writeln!(f, ">\n> {body}")?;
        }
        if self.attempts > 1 {
            writeln!(f, "  (sent {} times; the last answer:)", self.attempts)?;
        }
        match &self.answer {
            Ok(answer) => {
                writeln!(f, "< {}", answer.status)?;
                for (name, value) in &answer.headers {
                    writeln!(f, "< {name}: {}", value.to_str().unwrap_or("(not text)"))?;
                }
                if !answer.body.is_empty() {
                    writeln!(f, "<\n< {}", answer.body)?;
                }
                Ok(())
            }
            Err(e) => writeln!(f, "< no answer: {e}"),
        }
    }
}

/// `Retry-After` in seconds, when an answer gives it.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Whether the coordinator asks again after this answer (not a final one).
pub fn asks_again(status: StatusCode) -> bool {
    status == StatusCode::ACCEPTED
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Sends the contract's calls to one participant.
pub struct Caller {
    http: reqwest::Client,
    headers: Vec<(HeaderName, HeaderValue)>,
    patience: Duration,
}

impl Caller {
    pub fn new(options: &Options) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Self {
            http,
            headers: options.headers.clone(),
            patience: options.patience,
        })
    }

    /// `POST try_url` as the coordinator sends a try: the key, the reservation, the deadline,
    /// the caller's headers, the body as JSON.
    pub async fn try_hold(
        &self,
        try_url: &Url,
        key: &str,
        body: &serde_json::Value,
        deadline: DateTime<Utc>,
    ) -> Exchange {
        let reservation = format!(
            "http://tcc-participant-check.invalid/reservations/{}",
            key.split('/').next().unwrap_or(key)
        );
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Accept".to_owned(), "application/json".to_owned()),
            ("Idempotency-Key".to_owned(), key.to_owned()),
            ("TCC-Reservation".to_owned(), reservation),
            (
                "TCC-Deadline".to_owned(),
                deadline.to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
        ];
        for (name, value) in &self.headers {
            let value = value.to_str().unwrap_or_default().to_owned();
            headers.push((name.as_str().to_owned(), value));
        }
        self.send(Method::POST, try_url, headers, Some(body.to_string()))
            .await
    }

    /// `PUT link`: confirm.
    pub async fn confirm(&self, link: &Url) -> Exchange {
        self.send(Method::PUT, link, decision_headers(), None).await
    }

    /// `DELETE link`: cancel.
    pub async fn cancel(&self, link: &Url) -> Exchange {
        self.send(Method::DELETE, link, decision_headers(), None)
            .await
    }

    /// Sends until a final answer or until the patience is spent (the `backoff` crate: 50 ms
    /// doubling with jitter, at most a second apart, or as `Retry-After` says up to a second).
    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: Vec<(String, String)>,
        body: Option<String>,
    ) -> Exchange {
        let policy = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(50))
            .with_max_interval(MOST_BETWEEN)
            .with_max_elapsed_time(Some(self.patience))
            .build();
        let attempts = AtomicU32::new(0);
        let (method_ref, headers_ref, body_ref) = (&method, &headers, body.as_deref());
        let answer = backoff::future::retry(policy, || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let answer = self.send_once(method_ref, url, headers_ref, body_ref).await;
            match &answer {
                Ok(final_answer) if !asks_again(final_answer.status) => Ok(answer),
                Ok(again) => {
                    let retry_after = retry_after(&again.headers).map(|d| d.min(MOST_BETWEEN));
                    Err(backoff::Error::Transient {
                        err: answer,
                        retry_after,
                    })
                }
                Err(_) => Err(backoff::Error::transient(answer)),
            }
        })
        .await
        .unwrap_or_else(|last| last);
        Exchange {
            method,
            url: url.to_string(),
            headers,
            body,
            answer,
            attempts: attempts.into_inner(),
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(String, String)],
        body: Option<&str>,
    ) -> Result<Answer, String> {
        let mut request = self.http.request(method.clone(), url.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| describe(&e))?;
        let mut body = String::from_utf8_lossy(&bytes).into_owned();
        if body.len() > BODY_SHOWN {
            let mut end = BODY_SHOWN;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
            body.push_str(" (cut)");
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

fn decision_headers() -> Vec<(String, String)> {
    vec![
        ("Content-Type".to_owned(), TCC_JSON.to_owned()),
        ("Accept".to_owned(), TCC_JSON.to_owned()),
    ]
}

/// A transport error with its causes, in one line.
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A participant link read from a try's answer the way the coordinator reads it: the body's
/// `uri`, else `Location`, relative to the try URL.
#[derive(Debug, Clone)]
pub struct Link {
    pub url: Url,
    pub location: Option<String>,
    pub body_uri: Option<String>,
    /// The body's `expires`, as written.
    pub expires: Option<String>,
}

impl Link {
    /// Reads the link of a try's answer; `Err` says why there is none.
    pub fn of(try_url: &Url, exchange: &Exchange) -> Result<Self, String> {
        let answer = match &exchange.answer {
            Ok(answer) if answer.status.is_success() => answer,
            Ok(answer) => return Err(format!("the try answered {}", answer.status)),
            Err(e) => return Err(format!("the try got no answer ({e})")),
        };
        let location = exchange.header(&LOCATION).map(str::to_owned);
        let body: Option<serde_json::Value> = serde_json::from_str(&answer.body).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let body_uri = field("uri");
        let expires = field("expires");
        let written = body_uri
            .clone()
            .or_else(|| location.clone())
            .ok_or("the answer has no link: no `uri` in a JSON body and no `Location` header")?;
        let url = try_url
            .join(&written)
            .map_err(|e| format!("the link `{written}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("the link `{url}` is not http(s)"));
        }
        Ok(Self {
            url,
            location,
            body_uri,
            expires,
        })
    }
}

/// The content type of an answer without its parameters, lower case.
pub fn media_type(exchange: &Exchange) -> Option<String> {
    exchange.header(&CONTENT_TYPE).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

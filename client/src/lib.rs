//! A typed client for tcc-coordinator, for the services that start and decide reservations.
//!
//! - [`Client::create`] sends an `Idempotency-Key` of its own making and, when the
//!   coordinator cannot be reached or answers 503, sends the same request with the same key
//!   again (for up to 5 s): a create is made once however often it is sent. [`Client::create_with_key`]
//!   takes a key you keep (say, your order id) to make your own retries safe too.
//! - [`Client::wait`] sets `Prefer: wait=N`: creates answer once every try answered, confirms
//!   and cancels once every participant did (or after N seconds).
//! - A confirmed reservation's `303 See Other` is followed to its transaction: every call
//!   that may end a reservation answers an [`Outcome`].
//! - Problem answers (`application/problem+json`) are [`Error::Problem`], typed ([`Problem`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use tcc_client::{Client, NewParticipant, NewReservation, Outcome};
//!
//! # async fn run() -> Result<(), tcc_client::Error> {
//! let coordinator = Client::new("http://127.0.0.1:8080")?.wait(Duration::from_secs(5));
//! let reservation = coordinator
//!     .create(&NewReservation::new().participant(
//!         NewParticipant::try_at("http://127.0.0.1:8081/holds", serde_json::json!({"sku": "apple", "quantity": 2}))
//!             .named("stock"),
//!     ))
//!     .await?
//!     .open()
//!     .expect("a reservation that has not ended");
//! match coordinator.confirm(&reservation.id).await? {
//!     Outcome::Confirmed(transaction) => println!("confirmed at {:?}", transaction.confirmed_at),
//!     Outcome::Open(reservation) => println!("still {:?}", reservation.state),
//!     Outcome::Cancelled(gone) => println!("cancelled: {:?}", gone.reason),
//! }
//! # Ok(()) }
//! ```

mod types;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

pub use types::{
    Callback, Link, NewParticipant, NewReservation, Participant, ParticipantLink, ParticipantState,
    Problem, Reason, Reservation, ReservationLinks, State, Transaction, TransactionParticipant,
    TryRequest,
};

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator answered with a problem (400, 404, 409, 422, 503, ...).
    #[error("the coordinator answered {0}")]
    Problem(Box<Problem>),
    /// No answer: the coordinator could not be reached, or the call timed out.
    #[error("no answer from the coordinator: {0}")]
    Http(#[from] reqwest::Error),
    /// An answer this client does not understand.
    #[error("an unexpected answer from the coordinator: {status}: {body}")]
    Unexpected { status: StatusCode, body: String },
    /// The base URL or the token cannot be used, or a Location cannot be followed.
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// The problem the coordinator answered, if it answered one.
    #[must_use]
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Problem(problem) => Some(problem),
            _ => None,
        }
    }
}

/// Where a reservation stands after a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not ended: trying, reserved, confirming, cancelling, or in conflict.
    Open(Box<Reservation>),
    /// Every participant confirmed: the transaction (the `303` followed).
    Confirmed(Box<Transaction>),
    /// Cancelled (`410`): why, and how each participant ended.
    Cancelled(Box<Problem>),
}

impl Outcome {
    /// The reservation, when it has not ended.
    #[must_use]
    pub fn open(self) -> Option<Reservation> {
        match self {
            Outcome::Open(reservation) => Some(*reservation),
            _ => None,
        }
    }

    /// The transaction, when every participant confirmed.
    #[must_use]
    pub fn confirmed(self) -> Option<Transaction> {
        match self {
            Outcome::Confirmed(transaction) => Some(*transaction),
            _ => None,
        }
    }
}

/// How long a call is sent again when the coordinator cannot be reached or answers 503.
const RETRYING: Duration = Duration::from_secs(5);

/// A coordinator's API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<HeaderValue>,
    wait: Option<Duration>,
}

impl Client {
    /// A client of the coordinator at `base` (e.g. `http://127.0.0.1:8080`). Calls time out
    /// after 30 s and never follow redirects (a confirm's 303 is followed by this client).
    ///
    /// # Errors
    /// When `base` is not an http(s) URL.
    pub fn new(base: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;
        Self::with_http(base, http)
    }

    /// As [`Client::new`], with an HTTP client of your own (TLS roots, timeouts); it must not
    /// follow redirects.
    ///
    /// # Errors
    /// When `base` is not an http(s) URL.
    pub fn with_http(base: &str, http: reqwest::Client) -> Result<Self, Error> {
        let mut base =
            Url::parse(base).map_err(|e| Error::Setup(format!("`{base}` is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Setup(format!("`{base}` is not an http(s) URL")));
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            http,
            base,
            token: None,
            wait: None,
        })
    }

    /// Sends `Authorization: Bearer {token}` (a `client` token of `--api-tokens-file`).
    ///
    /// # Errors
    /// When the token cannot be a header value.
    pub fn bearer(mut self, token: &str) -> Result<Self, Error> {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::Setup("the token is not a valid header value".into()))?;
        self.token = Some(value);
        Ok(self)
    }

    /// Sends `Prefer: wait=N` (whole seconds) with creates, confirms and cancels.
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Creates a reservation under a new `Idempotency-Key`; safe to retry inside (see
    /// [`Client::create_with_key`]).
    ///
    /// # Errors
    /// A problem (422 naming the field, 503 after the retries, ...) or no answer.
    pub async fn create(&self, reservation: &NewReservation) -> Result<Outcome, Error> {
        self.create_with_key(&uuid::Uuid::new_v4().to_string(), reservation)
            .await
    }

    /// Creates a reservation under `key`: the same key and body give the reservation the
    /// first call made, however often they are sent; another body with that key is 422.
    ///
    /// # Errors
    /// A problem (422 naming the field, 503 after the retries, ...) or no answer.
    pub async fn create_with_key(
        &self,
        key: &str,
        reservation: &NewReservation,
    ) -> Result<Outcome, Error> {
        let url = self.url("reservations")?;
        let response = self
            .send(|| {
                self.request(Method::POST, url.clone())
                    .header("Idempotency-Key", key)
                    .json(reservation)
            })
            .await?;
        self.outcome(response).await
    }

    /// Where a reservation stands: open, confirmed (its transaction) or cancelled.
    ///
    /// # Errors
    /// `not-found` for an unknown id, or no answer.
    pub async fn reservation(&self, id: &str) -> Result<Outcome, Error> {
        let url = self.url(&format!("reservations/{id}"))?;
        let response = self.send(|| self.request(Method::GET, url.clone())).await?;
        self.outcome(response).await
    }

    /// Confirms: every participant gets `PUT`. With [`Client::wait`], answers once they all
    /// answered: [`Outcome::Confirmed`], or [`Outcome::Open`] in `conflict` or still `confirming`.
    ///
    /// # Errors
    /// `conflict` (409: cancelling or cancelled), `gone` past its deadline, `not-found`, ...
    pub async fn confirm(&self, id: &str) -> Result<Outcome, Error> {
        self.decide(id, "confirm").await
    }

    /// Cancels: every participant gets `DELETE`. With [`Client::wait`], answers
    /// [`Outcome::Cancelled`] once they all answered.
    ///
    /// # Errors
    /// `conflict` (409: confirming or confirmed), `not-found`, ...
    pub async fn cancel(&self, id: &str) -> Result<Outcome, Error> {
        self.decide(id, "cancel").await
    }

    /// Adds a participant to a reservation that is still `trying` or `reserved`.
    ///
    /// # Errors
    /// `conflict` once decided, `gone` once cancelled, `invalid-request` naming the field, ...
    pub async fn join(&self, id: &str, participant: &NewParticipant) -> Result<Reservation, Error> {
        let url = self.url(&format!("reservations/{id}/participants"))?;
        let response = self
            .send(|| self.request(Method::POST, url.clone()).json(participant))
            .await?;
        if response.status() == StatusCode::ACCEPTED {
            return read(response).await;
        }
        Err(failure(response).await)
    }

    /// A confirmed transaction's record.
    ///
    /// # Errors
    /// `not-found` when no transaction has this id (or it was dropped after its retention).
    pub async fn transaction(&self, id: &str) -> Result<Transaction, Error> {
        let url = self.url(&format!("transactions/{id}"))?;
        self.transaction_at(url).await
    }

    async fn decide(&self, id: &str, verb: &str) -> Result<Outcome, Error> {
        let url = self.url(&format!("reservations/{id}/{verb}"))?;
        let response = self
            .send(|| self.request(Method::POST, url.clone()))
            .await?;
        self.outcome(response).await
    }

    async fn transaction_at(&self, url: Url) -> Result<Transaction, Error> {
        let response = self.send(|| self.request(Method::GET, url.clone())).await?;
        if response.status() == StatusCode::OK {
            return read(response).await;
        }
        Err(failure(response).await)
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(path)
            .map_err(|e| Error::Setup(format!("`{path}` cannot be joined to {}: {e}", self.base)))
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            headers.insert(AUTHORIZATION, token.clone());
        }
        if let Some(wait) = self.wait {
            if method == Method::POST {
                let prefer = format!("wait={}", wait.as_secs().max(1));
                headers.insert("Prefer", HeaderValue::from_str(&prefer).expect("digits"));
            }
        }
        self.http.request(method, url).headers(headers)
    }

    /// Sends what `request` builds; again (the `backoff` crate: 100 ms doubling with jitter,
    /// for up to 5 s, sooner when a 503's `Retry-After` says so) when no answer came or the
    /// coordinator answered 503: every call here is safe to repeat.
    async fn send(&self, request: impl Fn() -> RequestBuilder) -> Result<Response, Error> {
        let policy = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(100))
            .with_max_elapsed_time(Some(RETRYING))
            .build();
        let sent = backoff::future::retry(policy, || async {
            match request().send().await {
                Ok(busy) if busy.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let retry_after = busy
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                        .map(|secs| Duration::from_secs(secs).min(RETRYING));
                    Err(backoff::Error::Transient {
                        err: Ok(busy),
                        retry_after,
                    })
                }
                Ok(answer) => Ok(answer),
                Err(e) if e.is_connect() || e.is_timeout() => {
                    Err(backoff::Error::transient(Err(e)))
                }
                Err(e) => Err(backoff::Error::permanent(Err(e))),
            }
        })
        .await;
        // The last 503 is an answer like any other; no answer at all is the error.
        Ok(sent.or_else(|last| last)?)
    }

    /// Reads an answer that says where a reservation stands.
    async fn outcome(&self, response: Response) -> Result<Outcome, Error> {
        match response.status() {
            StatusCode::OK | StatusCode::ACCEPTED => {
                Ok(Outcome::Open(Box::new(read(response).await?)))
            }
            StatusCode::SEE_OTHER => {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Unexpected {
                        status: StatusCode::SEE_OTHER,
                        body: "a 303 without Location".into(),
                    })?;
                let url = response
                    .url()
                    .join(location)
                    .map_err(|e| Error::Setup(format!("the 303's Location `{location}`: {e}")))?;
                Ok(Outcome::Confirmed(Box::new(
                    self.transaction_at(url).await?,
                )))
            }
            StatusCode::GONE if is_problem(&response) => {
                Ok(Outcome::Cancelled(Box::new(read(response).await?)))
            }
            _ => Err(failure(response).await),
        }
    }
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"))
}

async fn read<T: DeserializeOwned>(response: Response) -> Result<T, Error> {
    let status = response.status();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Unexpected {
        status,
        body: format!("{e}: {}", String::from_utf8_lossy(&bytes)),
    })
}

/// A problem answer as [`Error::Problem`]; anything else as [`Error::Unexpected`].
async fn failure(response: Response) -> Error {
    let status = response.status();
    let problem = is_problem(&response);
    match response.bytes().await {
        Ok(bytes) if problem => match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Error::Problem(Box::new(problem)),
            Err(_) => Error::Unexpected {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            },
        },
        Ok(bytes) => Error::Unexpected {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        },
        Err(e) => Error::Http(e),
    }
}

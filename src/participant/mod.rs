//! One call per participant verb (try, confirm, cancel), each answer classified.
//!
//! A participant saying "no" is an `Ok` outcome here, not an error: the coordinator decides
//! what it means. The coordinator sees the [`Participants`] seam; `http` makes the calls
//! (never following redirects, never through a proxy, each with a timeout); `policy` says
//! which hosts may be called. Retrying is the caller's business (see `retry`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use crate::domain::{ParticipantLink, ParticipantUrl, TryRequest};

mod http;
mod policy;

pub use http::{ClientError, ParticipantClient};
pub use policy::{AllowRule, AllowRuleError, CallPolicy, NameResolver, PolicyError};

/// The media type of the TCC participant protocol.
pub const TCC_JSON: &str = "application/tcc+json";

/// Why the next attempt is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryHint {
    /// What went wrong, for `last_error` and logs.
    pub error: String,
    /// The participant's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

/// The answer to a try (`POST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryOutcome {
    /// 200/201 with a link.
    Reserved(ParticipantLink),
    /// A 4xx other than 408/429: the participant will not hold the change.
    Refused(String),
    /// 5xx, 408, 429, a network error, or an answer without a usable link.
    Retry(RetryHint),
}

/// The answer to a confirm (`PUT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// 200/204.
    Confirmed,
    /// 404/410: the participant's reservation is gone.
    Gone(String),
    /// 409 or another 4xx.
    Refused(String),
    /// 202 (still working), 5xx, 408, 429, a network error, or anything unexpected.
    Retry(RetryHint),
}

/// The answer to a cancel (`DELETE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// 200/204/404/410.
    Cancelled,
    /// 405: the participant does not cancel explicitly; its link expires on its own.
    ExpiresOnItsOwn,
    /// 202, 5xx, a network error, or anything unexpected.
    Retry(RetryHint),
}

/// How an answer is counted in the metrics and shown on its span.
pub trait Outcome {
    /// `ok`, `refused`, `gone`, `retry`, ...
    fn label(&self) -> &'static str;
    /// What went wrong, when something did.
    fn error(&self) -> Option<&str>;
}

impl Outcome for TryOutcome {
    fn label(&self) -> &'static str {
        match self {
            TryOutcome::Reserved(_) => "ok",
            TryOutcome::Refused(_) => "refused",
            TryOutcome::Retry(_) => "retry",
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            TryOutcome::Reserved(_) => None,
            TryOutcome::Refused(e) => Some(e),
            TryOutcome::Retry(hint) => Some(&hint.error),
        }
    }
}

impl Outcome for ConfirmOutcome {
    fn label(&self) -> &'static str {
        match self {
            ConfirmOutcome::Confirmed => "ok",
            ConfirmOutcome::Gone(_) => "gone",
            ConfirmOutcome::Refused(_) => "refused",
            ConfirmOutcome::Retry(_) => "retry",
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            ConfirmOutcome::Confirmed => None,
            ConfirmOutcome::Gone(e) | ConfirmOutcome::Refused(e) => Some(e),
            ConfirmOutcome::Retry(hint) => Some(&hint.error),
        }
    }
}

impl Outcome for CancelOutcome {
    fn label(&self) -> &'static str {
        match self {
            CancelOutcome::Cancelled => "ok",
            CancelOutcome::ExpiresOnItsOwn => "expires_on_its_own",
            CancelOutcome::Retry(_) => "retry",
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            CancelOutcome::Cancelled | CancelOutcome::ExpiresOnItsOwn => None,
            CancelOutcome::Retry(hint) => Some(&hint.error),
        }
    }
}

/// A completion callback's delivery.
impl Outcome for Result<(), RetryHint> {
    fn label(&self) -> &'static str {
        if self.is_ok() {
            "ok"
        } else {
            "retry"
        }
    }

    fn error(&self) -> Option<&str> {
        self.as_ref().err().map(|hint| hint.error.as_str())
    }
}

/// Most participant calls in flight at once, across all reservations. A storm of expiring
/// reservations would otherwise open a connection per participant at the same instant,
/// starving the decisions the coordinator must log first (and flooding the participants).
pub const MAX_CALLS_IN_FLIGHT: usize = 256;

/// The calls the coordinator makes to participants, behind one seam: [`ParticipantClient`]
/// over HTTP in the service, scripted fakes in the coordinator's own unit tests.
pub trait Participants: Send + Sync + 'static {
    /// `POST`s a try (see [`ParticipantClient::try_reserve`]).
    fn try_reserve<'a>(
        &'a self,
        request: &'a TryRequest,
        reservation_url: &'a str,
        idempotency_key: &'a str,
        expires_if_unsaid: DateTime<Utc>,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, TryOutcome>;

    /// `PUT`s a confirmation.
    fn confirm<'a>(
        &'a self,
        uri: &'a ParticipantUrl,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, ConfirmOutcome>;

    /// `DELETE`s the link.
    fn cancel<'a>(
        &'a self,
        uri: &'a ParticipantUrl,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, CancelOutcome>;

    /// `POST`s a completion callback: `Ok` once it answers 2xx.
    fn callback<'a>(
        &'a self,
        url: &'a ParticipantUrl,
        body: Vec<u8>,
        traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), RetryHint>>;

    /// Whether the coordinator may call `url` at all (the outgoing call policy).
    fn check<'a>(&'a self, url: &'a ParticipantUrl) -> BoxFuture<'a, Result<(), PolicyError>>;
}

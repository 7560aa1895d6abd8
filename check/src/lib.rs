//! Checks a live participant service against tcc-coordinator's participant contract
//! (`openapi/participant.yaml`), whatever it is written in: each rule of the contract is
//! tried with the calls a coordinator makes, and a broken rule is reported with the request
//! and the answer that broke it. It cancels every hold it made that it did not settle.
//!
//! ```no_run
//! # async fn run() -> Result<(), String> {
//! let options = tcc_participant_check::Options::new(
//!     "http://127.0.0.1:8081/holds".parse().unwrap(),
//!     serde_json::json!({"sku": "apple", "quantity": 1}),
//! );
//! let report = tcc_participant_check::check(options).await?;
//! println!("{report}");
//! assert!(report.passed(), "broken: {:?}", report.broken());
//! # Ok(()) }
//! ```
//!
//! The `tcc-participant-check` program runs it from a shell (`--help`).

mod call;
mod report;
mod rules;

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

pub use call::{Answer, Exchange};
pub use report::{Report, RuleResult, Verdict};
pub use rules::{check, Rule};

/// What to check and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where tries go (`POST`).
    pub try_url: Url,
    /// A body the service holds: every try sends it (one hold per try).
    pub body: serde_json::Value,
    /// Another body for the reused-key rule; by default the sample body with one member more.
    pub other_body: Option<serde_json::Value>,
    /// Headers every try carries (a coordinator sends a reservation's `try.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long one attempt of a call may take (the coordinator's per-call timeout).
    pub timeout: Duration,
    /// How long one call may go on being asked again after 202, 408, 429, 5xx or no answer.
    pub patience: Duration,
    /// How many holds the race rule makes and races a confirm and a cancel on.
    pub races: usize,
    /// How many tries the repeat rule sends at once with one key.
    pub concurrent_repeats: usize,
    /// The opt-in expiry rule, when the service declares its margin.
    pub expiry: Option<Expiry>,
}

/// The expiry rule's settings.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// How long the service keeps a hold past `TCC-Deadline` at most.
    pub margin: Duration,
    /// The deadline the rule's try carries, from now.
    pub deadline_in: Duration,
}

impl Options {
    /// The defaults: 5 s per call, 10 s of asking again, 20 races, 8 repeats at once, no
    /// expiry rule.
    #[must_use]
    pub fn new(try_url: Url, body: serde_json::Value) -> Self {
        Self {
            try_url,
            body,
            other_body: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            patience: Duration::from_secs(10),
            races: 20,
            concurrent_repeats: 8,
            expiry: None,
        }
    }
}

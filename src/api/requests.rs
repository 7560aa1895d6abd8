//! The JSON shapes of requests, parsed into domain types here, at the edge: nothing deeper
//! takes a raw string for a URL, an id or a duration.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::Deserialize;

use crate::coordinator::CreateReservation;
use crate::domain::{
    NewParticipant, ParticipantLink, ParticipantSource, ParticipantUrl, TryRequest,
};

/// A new reservation over a set of participants.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "NewReservation")]
pub struct CreateReservationBody {
    /// Milliseconds until the reservation is cancelled if nobody confirms it (default: the
    /// coordinator's `--default-timeout`, at most `--max-timeout`). Participant links that
    /// expire sooner move the deadline earlier.
    pub timeout_ms: Option<u64>,
    /// The participants; more may join later. The same link twice is one participant.
    #[oai(default)]
    #[serde(default)]
    pub participants: Vec<ParticipantBody>,
    /// Free-form data kept with the reservation and its transaction record.
    #[oai(default)]
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// An http(s) URL that receives `POST` with the final representation once the
    /// reservation is confirmed, cancelled or in conflict; retried with backoff until it
    /// answers 2xx.
    pub callback: Option<String>,
}

/// One participant: give exactly one of `link` (you already tried) or `try` (the coordinator
/// tries for you).
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "NewParticipant")]
pub struct ParticipantBody {
    /// A name for people and logs, e.g. `payments`; the link's host when omitted.
    pub name: Option<String>,
    /// A participant link you obtained by trying yourself.
    pub link: Option<LinkBody>,
    /// A try for the coordinator to perform.
    #[oai(rename = "try")]
    #[serde(rename = "try")]
    pub try_request: Option<TryBody>,
}

/// A participant link: confirm with `PUT uri`, cancel with `DELETE uri`.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "ParticipantLink")]
pub struct LinkBody {
    /// Absolute http(s) URI of the participant's reservation.
    pub uri: String,
    /// When the participant cancels on its own (RFC 3339).
    pub expires: DateTime<Utc>,
}

/// A try the coordinator performs: `POST url` with `body`, `headers`, plus
/// `TCC-Reservation` (the reservation's URL), `TCC-Deadline` (its deadline, RFC 3339: a hold
/// need not outlive it by more than the coordinator's call timeout) and `Idempotency-Key`.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(rename = "TryRequest")]
pub struct TryBody {
    /// Absolute http(s) URL to `POST` the try to.
    pub url: String,
    /// JSON body sent with the try.
    pub body: Option<serde_json::Value>,
    /// Headers sent with the try (e.g. `Authorization`); never shown back.
    #[oai(default)]
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl CreateReservationBody {
    /// Parses into the domain request; on error, the JSON path of the offending field.
    pub fn into_domain(self) -> Result<CreateReservation, (String, String)> {
        let participants = self
            .participants
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.into_domain(&format!("participants[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CreateReservation {
            timeout: self.timeout_ms.map(Duration::from_millis),
            participants,
            metadata: self.metadata.into_iter().collect(),
            trace: None,
            callback: self
                .callback
                .map(|text| {
                    ParticipantUrl::parse(&text).map_err(|e| ("callback".to_owned(), e.to_string()))
                })
                .transpose()?,
        })
    }
}

impl ParticipantBody {
    /// Parses into a domain participant; `at` is this participant's JSON path for errors.
    pub fn into_domain(self, at: &str) -> Result<NewParticipant, (String, String)> {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let url = |name: String, text: &str| {
            ParticipantUrl::parse(text).map_err(|e| (name, e.to_string()))
        };
        let source = match (self.link, self.try_request) {
            (Some(link), None) => ParticipantSource::Link(ParticipantLink {
                uri: url(field("link.uri"), &link.uri)?,
                expires: link.expires,
            }),
            (None, Some(t)) => ParticipantSource::Try(TryRequest {
                url: url(field("try.url"), &t.url)?,
                body: t.body.unwrap_or(serde_json::Value::Null),
                headers: t.headers.into_iter().collect(),
            }),
            _ => {
                let name = if at.is_empty() {
                    "body".to_owned()
                } else {
                    at.to_owned()
                };
                return Err((name, "must have exactly one of `link` or `try`".into()));
            }
        };
        let name = self.name.unwrap_or_else(|| match &source {
            ParticipantSource::Link(l) => l.uri.authority(),
            ParticipantSource::Try(t) => t.url.authority(),
        });
        Ok(NewParticipant { name, source })
    }
}

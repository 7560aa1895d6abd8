//! The coordinator's JSON shapes, as `openapi/coordinator.yaml` describes them (a test in the
//! coordinator's suite fills every schema and checks that these types read and write each
//! property back unchanged).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A new reservation over a set of participants (`NewReservation`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewReservation {
    /// Milliseconds until it is cancelled unless confirmed (default: the coordinator's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub participants: Vec<NewParticipant>,
    /// Free-form data kept with the reservation and its transaction.
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    pub metadata: Map<String, Value>,
    /// An http(s) URL that gets `POST` with the final representation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
}

impl NewReservation {
    /// An empty reservation (participants may join later).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a participant.
    #[must_use]
    pub fn participant(mut self, participant: NewParticipant) -> Self {
        self.participants.push(participant);
        self
    }

    /// Cancelled unless confirmed within `timeout` (whole milliseconds).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Keeps `value` under `key` in the reservation's metadata.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Calls `url` with the final representation once it is settled.
    #[must_use]
    pub fn callback(mut self, url: impl Into<String>) -> Self {
        self.callback = Some(url.into());
        self
    }
}

/// One participant: a link you got by trying yourself, or a try for the coordinator to make
/// (`NewParticipant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewParticipant {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<ParticipantLink>,
    #[serde(rename = "try", skip_serializing_if = "Option::is_none")]
    pub try_request: Option<TryRequest>,
}

impl NewParticipant {
    /// A participant the coordinator tries: `POST url` with `body`.
    #[must_use]
    pub fn try_at(url: impl Into<String>, body: impl Into<Value>) -> Self {
        Self {
            name: None,
            link: None,
            try_request: Some(TryRequest {
                url: url.into(),
                body: Some(body.into()),
                headers: BTreeMap::new(),
            }),
        }
    }

    /// A participant you tried yourself: its link and when it expires.
    #[must_use]
    pub fn link(uri: impl Into<String>, expires: DateTime<Utc>) -> Self {
        Self {
            name: None,
            link: Some(ParticipantLink {
                uri: uri.into(),
                expires,
            }),
            try_request: None,
        }
    }

    /// A name for people and logs.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A header the coordinator's try carries (e.g. `Authorization`); never shown back.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(try_request) = &mut self.try_request {
            try_request.headers.insert(name.into(), value.into());
        }
        self
    }
}

/// A try the coordinator performs (`TryRequest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TryRequest {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub headers: BTreeMap<String, String>,
}

/// A participant link: confirm with `PUT uri`, cancel with `DELETE uri` (`ParticipantLink`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantLink {
    pub uri: String,
    pub expires: DateTime<Utc>,
}

/// A reservation as it stands (`Reservation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<DateTime<Utc>>,
    /// What is being done, in words.
    pub activity: String,
    pub participants: Vec<Participant>,
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
    #[serde(rename = "_links")]
    pub links: ReservationLinks,
}

/// One participant of a reservation (`Participant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_url: Option<String>,
    pub state: ParticipantState,
    /// Calls made in the current phase.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A completion callback and its delivery (`Callback`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    pub url: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The transitions allowed now (`ReservationLinks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationLinks {
    #[serde(rename = "self")]
    pub this: Link,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Link>,
}

/// A hypermedia link (`Link`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// The definitive record of a confirmed transaction (`Transaction`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub state: State,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<DateTime<Utc>>,
    pub participants: Vec<TransactionParticipant>,
    pub metadata: Map<String, Value>,
}

/// One confirmed participant of a transaction (`TransactionParticipant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionParticipant {
    pub name: String,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// A reservation's state (`State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    Trying,
    Reserved,
    Confirming,
    Confirmed,
    Cancelling,
    Cancelled,
    Conflict,
    Forgotten,
}

/// Where one participant stands (`ParticipantState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ParticipantState {
    Trying,
    Reserved,
    Confirmed,
    Cancelled,
    TryFailed,
    Gone,
    Refused,
    Expired,
    Abandoned,
}

/// Why a reservation is cancelling or cancelled (`Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    Client,
    Expired,
    TryFailed,
    ParticipantsExpired,
    TooCloseToExpiry,
    Operator,
}

/// An error the coordinator answered, as RFC 9457 describes it (`Problem`); a cancelled
/// reservation's 410 also says how it ended (`GoneProblem`: `id`, `state`, `reason`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:tcc-coordinator:problem:{kind}`; [`Problem::kind`] gives the kind.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The JSON path of the request field to blame, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `forbidden`: the role the request needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_role: Option<String>,
    /// With a 410: the reservation's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// With a 410: each participant and how it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Participant>,
}

impl Problem {
    /// The kind: `invalid-request`, `not-found`, `conflict`, `gone`, `unavailable`, ...
    #[must_use]
    pub fn kind(&self) -> &str {
        self.type_uri
            .strip_prefix("urn:tcc-coordinator:problem:")
            .unwrap_or(&self.type_uri)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

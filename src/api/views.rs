//! The JSON shapes the API answers with: representations built from domain types. (Requests
//! and their parsing into domain types are in `requests`.)

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use serde::{Serialize, Serializer};

use crate::domain::{Happening, Participant, ParticipantState, Reason, Reservation, State};

// ---- representations --------------------------------------------------------------------
//
// The reservation's views also derive `Serialize`, for `ViewJson` (written without a
// `serde_json::Value` tree); their serde output must stay equal to their `ToJSON` output,
// which `the_reservation_serialises_as_its_document_says` checks. Instants are written as
// poem-openapi writes them (`to_rfc3339`).

#[allow(clippy::ref_option)] // serde's serialize_with passes a reference
fn rfc3339_or_null<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&at.to_rfc3339()),
        None => s.serialize_none(),
    }
}

fn rfc3339<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339())
}

/// A reservation's state.
#[derive(Debug, Clone, Copy, Enum, Serialize)]
#[serde(rename_all = "snake_case")]
#[oai(rename = "State", rename_all = "snake_case")]
pub enum StateView {
    Trying,
    Reserved,
    Confirming,
    Confirmed,
    Cancelling,
    Cancelled,
    Conflict,
    Forgotten,
}

impl From<State> for StateView {
    fn from(s: State) -> Self {
        match s {
            State::Trying => Self::Trying,
            State::Reserved => Self::Reserved,
            State::Confirming => Self::Confirming,
            State::Confirmed => Self::Confirmed,
            State::Cancelling => Self::Cancelling,
            State::Cancelled => Self::Cancelled,
            State::Conflict => Self::Conflict,
            State::Forgotten => Self::Forgotten,
        }
    }
}

impl From<StateView> for State {
    fn from(s: StateView) -> Self {
        match s {
            StateView::Trying => Self::Trying,
            StateView::Reserved => Self::Reserved,
            StateView::Confirming => Self::Confirming,
            StateView::Confirmed => Self::Confirmed,
            StateView::Cancelling => Self::Cancelling,
            StateView::Cancelled => Self::Cancelled,
            StateView::Conflict => Self::Conflict,
            StateView::Forgotten => Self::Forgotten,
        }
    }
}

/// Why a reservation is cancelling or cancelled.
#[derive(Debug, Clone, Copy, Enum, Serialize)]
#[serde(rename_all = "snake_case")]
#[oai(rename = "Reason", rename_all = "snake_case")]
pub enum ReasonView {
    Client,
    Expired,
    TryFailed,
    ParticipantsExpired,
    TooCloseToExpiry,
    Operator,
}

impl From<Reason> for ReasonView {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Client => Self::Client,
            Reason::Expired => Self::Expired,
            Reason::TryFailed => Self::TryFailed,
            Reason::ParticipantsExpired => Self::ParticipantsExpired,
            Reason::TooCloseToExpiry => Self::TooCloseToExpiry,
            Reason::Operator => Self::Operator,
        }
    }
}

/// Where one participant stands.
#[derive(Debug, Clone, Copy, Enum, Serialize)]
#[serde(rename_all = "snake_case")]
#[oai(rename = "ParticipantState", rename_all = "snake_case")]
pub enum ParticipantStateView {
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

impl From<ParticipantState> for ParticipantStateView {
    fn from(s: ParticipantState) -> Self {
        match s {
            ParticipantState::Trying => Self::Trying,
            ParticipantState::Reserved => Self::Reserved,
            ParticipantState::Confirmed => Self::Confirmed,
            ParticipantState::Cancelled => Self::Cancelled,
            ParticipantState::TryFailed => Self::TryFailed,
            ParticipantState::Gone => Self::Gone,
            ParticipantState::Refused => Self::Refused,
            ParticipantState::Expired => Self::Expired,
            ParticipantState::Abandoned => Self::Abandoned,
        }
    }
}

/// One participant of a reservation. Headers given for its try are never shown.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Participant")]
pub struct ParticipantView {
    pub name: String,
    /// The participant link, once known.
    pub uri: Option<String>,
    /// When the participant link expires.
    #[serde(serialize_with = "rfc3339_or_null")]
    pub expires: Option<DateTime<Utc>>,
    /// The URL the coordinator tries, for coordinator-driven participants.
    pub try_url: Option<String>,
    pub state: ParticipantStateView,
    /// Calls made to this participant in the current phase (try, confirm or cancel).
    pub attempts: u32,
    /// The last failed call's outcome, while it matters.
    pub last_error: Option<String>,
    /// When the next retry is due.
    #[serde(serialize_with = "rfc3339_or_null")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<&Participant> for ParticipantView {
    fn from(p: &Participant) -> Self {
        Self {
            name: p.name().to_owned(),
            uri: p.link().map(|l| l.uri.to_string()),
            expires: p.link().map(|l| l.expires),
            try_url: p.try_request().map(|t| t.url.to_string()),
            state: p.state().into(),
            attempts: p.attempts(),
            last_error: p.last_error().map(str::to_owned),
            next_attempt_at: p.next_attempt_at(),
        }
    }
}

/// A hypermedia link.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Link")]
pub struct LinkView {
    pub href: String,
    /// The HTTP method to use, when it is not `GET`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl LinkView {
    fn get(href: String) -> Self {
        Self { href, method: None }
    }

    fn post(href: String) -> Self {
        Self {
            href,
            method: Some("POST".into()),
        }
    }
}

/// The transitions allowed in the current state, and nothing else.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "ReservationLinks")]
pub struct ReservationLinks {
    #[oai(rename = "self")]
    #[serde(rename = "self")]
    pub self_: LinkView,
    /// Present while `reserved`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<LinkView>,
    /// Present while `trying` or `reserved`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<LinkView>,
    /// Join one more participant; present while `trying` or `reserved`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participants: Option<LinkView>,
    /// The definitive record, once `confirmed`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<LinkView>,
}

/// A reservation: participants held together until confirmed or cancelled.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Reservation")]
pub struct ReservationView {
    pub id: String,
    pub state: StateView,
    /// Why it is cancelling or cancelled.
    pub reason: Option<ReasonView>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// The deadline: not confirmed by then, it is cancelled.
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    /// When confirm or cancel was decided (and logged).
    #[serde(serialize_with = "rfc3339_or_null")]
    pub decided_at: Option<DateTime<Utc>>,
    /// When the work under way should be done (while `trying`, `confirming`, `cancelling`).
    #[serde(serialize_with = "rfc3339_or_null")]
    pub eta: Option<DateTime<Utc>>,
    /// What is being done, in words.
    pub activity: String,
    pub participants: Vec<ParticipantView>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The completion callback and its delivery, when one was given.
    pub callback: Option<CallbackView>,
    #[oai(rename = "_links")]
    #[serde(rename = "_links")]
    pub links: ReservationLinks,
}

impl ReservationView {
    #[must_use]
    pub fn of(r: &Reservation, now: DateTime<Utc>, call_timeout: Duration) -> Self {
        let base = format!("/reservations/{}", r.id());
        let undecided = matches!(r.state(), State::Trying | State::Reserved);
        Self {
            id: r.id().to_string(),
            state: r.state().into(),
            reason: r.reason().map(Into::into),
            created_at: r.created_at(),
            expires_at: r.expires_at(),
            decided_at: r.decided_at(),
            eta: r.eta(now, call_timeout),
            activity: r.activity(now),
            participants: r.participants().iter().map(ParticipantView::from).collect(),
            metadata: r.metadata().clone().into_iter().collect(),
            callback: r.callback().as_ref().map(|c| CallbackView {
                url: c.url.to_string(),
                attempts: c.attempts,
                last_error: c.last_error.clone(),
                delivered_at: c.delivered_at,
            }),
            links: ReservationLinks {
                confirm: (r.state() == State::Reserved)
                    .then(|| LinkView::post(format!("{base}/confirm"))),
                cancel: undecided.then(|| LinkView::post(format!("{base}/cancel"))),
                participants: undecided.then(|| LinkView::post(format!("{base}/participants"))),
                transaction: (r.state() == State::Confirmed)
                    .then(|| LinkView::get(format!("/transactions/{}", r.id()))),
                self_: LinkView::get(base),
            },
        }
    }
}

/// A completion callback and how its delivery stands.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(rename = "Callback")]
pub struct CallbackView {
    pub url: String,
    /// `POST`s made so far.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it was acknowledged (2xx); absent while pending.
    #[serde(serialize_with = "rfc3339_or_null")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// One confirmed participant of a transaction.
#[derive(Debug, Clone, Object)]
#[oai(rename = "TransactionParticipant")]
pub struct TransactionParticipantView {
    pub name: String,
    pub uri: String,
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// The definitive record of a confirmed transaction.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Transaction")]
pub struct TransactionView {
    pub id: String,
    /// Always `confirmed`.
    pub state: StateView,
    pub created_at: DateTime<Utc>,
    /// When the client decided to confirm.
    pub decided_at: Option<DateTime<Utc>>,
    /// When the last participant confirmed.
    pub confirmed_at: Option<DateTime<Utc>>,
    pub participants: Vec<TransactionParticipantView>,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl TransactionView {
    #[must_use]
    pub fn of(r: &Reservation) -> Self {
        Self {
            id: r.id().to_string(),
            state: r.state().into(),
            created_at: r.created_at(),
            decided_at: r.decided_at(),
            confirmed_at: r.finished_at(),
            participants: r
                .participants()
                .iter()
                .map(|p| TransactionParticipantView {
                    name: p.name().to_owned(),
                    uri: p
                        .link()
                        .as_ref()
                        .map(|l| l.uri.to_string())
                        .unwrap_or_default(),
                    confirmed_at: p.settled_at(),
                })
                .collect(),
            metadata: r.metadata().clone().into_iter().collect(),
        }
    }
}

/// A page of reservations, newest first.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ReservationPage")]
pub struct ReservationPage {
    pub items: Vec<ReservationView>,
    /// The next page, or null on the last one.
    pub next: Option<String>,
    /// With `counts=true`: how many match in each state.
    #[oai(skip_serializing_if_is_none)]
    pub counts: Option<StateCounts>,
}

/// The participants a host-wide "retry now" called again.
#[derive(Debug, Clone, Object)]
#[oai(rename = "RetriedOnHost")]
pub struct RetriedOnHost {
    pub retried: Vec<RetriedParticipant>,
}

/// One participant called again at once.
#[derive(Debug, Clone, Object)]
#[oai(rename = "RetriedParticipant")]
pub struct RetriedParticipant {
    pub reservation_id: String,
    /// Its place in the reservation's `participants`.
    pub participant: u64,
    pub name: String,
}

/// How many reservations match a listing's filters (the state aside), in each state.
#[derive(Debug, Clone, Object)]
#[oai(rename = "StateCounts")]
pub struct StateCounts {
    /// By state name; a state nothing is in is absent.
    pub counts: BTreeMap<String, u64>,
    /// False when more than 10,000 reservations match: the counts are of the newest 10,000.
    pub complete: bool,
}

// ---- history ------------------------------------------------------------------------------

/// One thing that happened to a reservation.
#[derive(Debug, Object)]
#[oai(rename = "HistoryEntry")]
pub struct HistoryEntryView {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `created`, `changed` (a state change), `called` (a participant call) or `acted` (an
    /// operator's action).
    pub kind: String,
    /// `created`: the first state; `changed`: the new state.
    pub state: Option<StateView>,
    /// `changed`: the state left.
    pub from: Option<StateView>,
    /// `changed` to cancelling or cancelled: why.
    pub reason: Option<ReasonView>,
    /// `called`, and `acted` on one participant: the participant's index in `participants`.
    pub participant: Option<u64>,
    /// `called`, and `acted` on one participant: the participant's name.
    pub participant_name: Option<String>,
    /// `called`: `try`, `confirm` or `cancel`.
    pub verb: Option<String>,
    /// `called`: the state the participant settled in, or what went wrong.
    pub result: Option<String>,
    /// `called`: milliseconds from sending the call to its answer or failure.
    pub took_ms: Option<u64>,
    /// `called` and failed: when the call is made again.
    pub retry_at: Option<DateTime<Utc>>,
    /// `acted`: the name of the operator's token.
    pub by: Option<String>,
    /// `acted`: `confirm`, `cancel`, `forget` or `retry_now`.
    pub action: Option<String>,
}

/// A reservation's history, oldest first.
#[derive(Debug, Object)]
#[oai(rename = "ReservationHistory")]
pub struct HistoryView {
    pub id: String,
    pub state: StateView,
    /// Why it is cancelling or cancelled.
    pub reason: Option<ReasonView>,
    pub created_at: DateTime<Utc>,
    /// The deadline: not confirmed by then, it is cancelled.
    pub expires_at: DateTime<Utc>,
    /// When confirm or cancel was decided (and logged).
    pub decided_at: Option<DateTime<Utc>>,
    /// The client's metadata, as given at creation.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The participants, by index (see `participant` in the entries).
    pub participants: Vec<ParticipantView>,
    /// The entries, at most the latest 100.
    pub events: Vec<HistoryEntryView>,
    /// How many older entries were dropped to keep the history bounded.
    pub dropped: u64,
}

impl From<&Reservation> for HistoryView {
    fn from(r: &Reservation) -> Self {
        let events = r
            .history()
            .iter()
            .map(|h| {
                let mut v = HistoryEntryView {
                    at: h.at,
                    kind: String::new(),
                    state: None,
                    from: None,
                    reason: None,
                    participant: None,
                    participant_name: None,
                    verb: None,
                    result: None,
                    took_ms: None,
                    retry_at: None,
                    by: None,
                    action: None,
                };
                let name_of = |i: usize| r.participants().get(i).map(|p| p.name().to_owned());
                match &h.what {
                    Happening::Created { state } => {
                        v.kind = "created".into();
                        v.state = Some((*state).into());
                    }
                    Happening::Changed { from, to, reason } => {
                        v.kind = "changed".into();
                        v.from = Some((*from).into());
                        v.state = Some((*to).into());
                        v.reason = reason.map(Into::into);
                    }
                    Happening::Called {
                        participant,
                        verb,
                        result,
                        took_ms,
                        retry_at,
                    } => {
                        v.kind = "called".into();
                        v.participant = Some(*participant as u64);
                        v.participant_name = name_of(*participant);
                        v.verb = Some(verb.as_str().to_owned());
                        v.result = Some(result.clone());
                        v.took_ms = Some(*took_ms);
                        v.retry_at = *retry_at;
                    }
                    Happening::Acted {
                        by,
                        action,
                        participant,
                    } => {
                        v.kind = "acted".into();
                        v.by = Some(by.clone());
                        v.action = Some(action.as_str().to_owned());
                        v.participant = participant.map(|i| i as u64);
                        v.participant_name = participant.and_then(name_of);
                    }
                }
                v
            })
            .collect();
        Self {
            id: r.id().to_string(),
            state: r.state().into(),
            reason: r.reason().map(Into::into),
            created_at: r.created_at(),
            expires_at: r.expires_at(),
            decided_at: r.decided_at(),
            metadata: r.metadata().clone().into_iter().collect(),
            participants: r.participants().iter().map(ParticipantView::from).collect(),
            events,
            dropped: r.history_dropped(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use poem_openapi::types::ToJSON;
    use serde_json::json;

    use super::ReservationView;
    use crate::domain::{
        Callback, Event, NewParticipant, ParticipantLink, ParticipantSource, ParticipantUrl,
        Reservation, ReservationId, TryRequest,
    };

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + secs * 1000 + 688).unwrap()
    }

    fn reservation(participants: Vec<NewParticipant>) -> Reservation {
        let metadata = json!({"order": "A-17", "lines": [1, {"sku": "é\"\n"}], "none": null});
        Reservation::new(
            ReservationId::new(),
            at(0),
            Duration::from_secs(30),
            participants,
            metadata.as_object().unwrap().clone(),
            Duration::from_secs(5),
        )
    }

    fn link(n: u32) -> NewParticipant {
        NewParticipant {
            name: format!("p{n}"),
            source: ParticipantSource::Link(ParticipantLink {
                uri: ParticipantUrl::parse(&format!("http://stock/holds/{n}")).unwrap(),
                expires: at(600),
            }),
        }
    }

    fn tried() -> NewParticipant {
        NewParticipant {
            name: "tried".into(),
            source: ParticipantSource::Try(TryRequest {
                url: ParticipantUrl::parse("http://stock/holds").unwrap(),
                body: serde_json::Value::Null,
                headers: vec![],
            }),
        }
    }

    #[test]
    fn the_reservation_serialises_as_its_document_says() {
        let reserved = reservation(vec![link(1), link(2)]);
        let mut trying = reservation(vec![link(1), tried()]);
        trying.set_callback(Callback {
            url: ParticipantUrl::parse("http://orders/done").unwrap(),
            attempts: 2,
            last_error: Some("503 Service Unavailable".into()),
            delivered_at: None,
        });
        let mut confirming = reservation(vec![link(1)]);
        confirming.apply(Event::Confirm, at(1)).unwrap();
        let mut cancelling = reservation(vec![link(1)]);
        cancelling.apply(Event::Cancel, at(2)).unwrap();
        let mut expired = reservation(vec![link(1)]);
        expired.apply(Event::Expire, at(31)).unwrap();
        expired.set_callback(Callback {
            url: ParticipantUrl::parse("http://orders/done").unwrap(),
            attempts: 1,
            last_error: None,
            delivered_at: Some(at(32)),
        });

        for r in [reserved, trying, confirming, cancelling, expired] {
            let view = ReservationView::of(&r, at(3), Duration::from_secs(5));
            let direct = serde_json::to_string(&view).unwrap();
            let documented = serde_json::to_string(&view.to_json().unwrap()).unwrap();
            assert_eq!(direct, documented, "{:?}", r.state());
        }
    }
}

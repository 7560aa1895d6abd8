//! A participant of a reservation: how it enters (a link, or a try the coordinator makes),
//! where it stands, and its state machine: [`participant_transition`] is the only place its
//! state changes, tested over every (state, event) pair.

use chrono::{DateTime, Utc};

use super::{ParticipantLink, ParticipantUrl};

/// A try the coordinator performs itself: `POST url` with `body` and `headers`.
#[derive(Clone, PartialEq)]
pub struct TryRequest {
    pub url: ParticipantUrl,
    pub body: serde_json::Value,
    /// Sent with the try only; never shown in a representation, never logged.
    pub headers: Vec<(String, String)>,
}

/// Header names only: their values are often credentials.
impl std::fmt::Debug for TryRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TryRequest")
            .field("url", &self.url)
            .field("body", &self.body)
            .field("headers", &names)
            .finish()
    }
}

/// How a participant enters a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum ParticipantSource {
    /// The client already tried and holds the link.
    Link(ParticipantLink),
    /// The coordinator tries.
    Try(TryRequest),
}

/// A participant as the client describes it, parsed and checked at the API edge.
#[derive(Debug, Clone, PartialEq)]
pub struct NewParticipant {
    pub name: String,
    pub source: ParticipantSource,
}

/// Where one participant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantState {
    /// Its try has not answered yet.
    Trying,
    /// It holds a link and waits for confirm or cancel.
    Reserved,
    /// It answered 2xx to `PUT`.
    Confirmed,
    /// It answered to `DELETE` that the change is cancelled (or was already gone).
    Cancelled,
    /// It refused the try with a 4xx.
    TryFailed,
    /// It answered 404/410 to `PUT`: its reservation had already expired.
    Gone,
    /// It refused `PUT` with 409 or another 4xx.
    Refused,
    /// Cancelling kept failing until the link's own `expires` passed: the participant has
    /// cancelled by itself.
    Expired,
    /// The reservation was cancelled before its try produced a link: nothing to cancel.
    Abandoned,
}

impl ParticipantState {
    pub const ALL: [ParticipantState; 9] = [
        ParticipantState::Trying,
        ParticipantState::Reserved,
        ParticipantState::Confirmed,
        ParticipantState::Cancelled,
        ParticipantState::TryFailed,
        ParticipantState::Gone,
        ParticipantState::Refused,
        ParticipantState::Expired,
        ParticipantState::Abandoned,
    ];

    /// Nothing more will be sent to this participant.
    #[must_use]
    pub fn is_settled(self) -> bool {
        !matches!(self, ParticipantState::Trying | ParticipantState::Reserved)
    }

    /// The snake-case name used in the API and the log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantState::Trying => "trying",
            ParticipantState::Reserved => "reserved",
            ParticipantState::Confirmed => "confirmed",
            ParticipantState::Cancelled => "cancelled",
            ParticipantState::TryFailed => "try_failed",
            ParticipantState::Gone => "gone",
            ParticipantState::Refused => "refused",
            ParticipantState::Expired => "expired",
            ParticipantState::Abandoned => "abandoned",
        }
    }
}

/// A try, shared by every copy of its reservation, with its body's JSON text once a record
/// needed it.
#[derive(Debug)]
pub struct SharedTry {
    request: TryRequest,
    body_json: std::sync::OnceLock<String>,
}

impl SharedTry {
    fn new(request: TryRequest) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            request,
            body_json: std::sync::OnceLock::new(),
        })
    }

    fn body_json(&self) -> &str {
        self.body_json.get_or_init(|| self.request.body.to_string())
    }
}

impl std::ops::Deref for SharedTry {
    type Target = TryRequest;

    fn deref(&self) -> &TryRequest {
        &self.request
    }
}

impl PartialEq for SharedTry {
    fn eq(&self, other: &Self) -> bool {
        self.request == other.request
    }
}

/// One participant of a reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    pub(super) name: String,
    /// Shared, not copied, by every copy of the reservation (a try's body may be large).
    pub(super) try_request: Option<std::sync::Arc<SharedTry>>,
    /// Where it stands, with the link it holds.
    stage: Stage,
    /// Calls made in the current phase (try, confirm or cancel).
    pub(super) attempts: u32,
    pub(super) last_error: Option<String>,
    /// When the next retry is due, while one is scheduled.
    pub(super) next_attempt_at: Option<DateTime<Utc>>,
    /// When the participant reached its current settled state.
    pub(super) settled_at: Option<DateTime<Utc>>,
}

/// Where a participant stands, with what it holds: a reserved participant has its link by
/// type, one still trying has none.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Its try has not answered yet.
    Trying,
    /// It holds this link and waits for confirm or cancel.
    Reserved(ParticipantLink),
    /// Settled in this state (never trying or reserved), with the link it held, if any.
    Settled(ParticipantState, Option<ParticipantLink>),
}

/// What a participant is made of, as a log stores it: every field, for
/// [`Participant::restore`].
#[derive(Debug)]
pub struct StoredParticipant {
    pub name: String,
    pub try_request: Option<TryRequest>,
    pub link: Option<ParticipantLink>,
    pub state: ParticipantState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub settled_at: Option<DateTime<Utc>>,
}

impl Participant {
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The try the coordinator makes, for a participant that joined as one.
    #[must_use]
    pub fn try_request(&self) -> Option<&TryRequest> {
        self.try_request.as_deref().map(|t| &t.request)
    }

    /// The try, shared (for a call that outlives a borrow of the reservation).
    #[must_use]
    pub fn shared_try_request(&self) -> Option<std::sync::Arc<SharedTry>> {
        self.try_request.clone()
    }

    /// The JSON text of the try's body, written once for every record of the reservation.
    #[must_use]
    pub fn try_body_json(&self) -> Option<&str> {
        self.try_request.as_deref().map(SharedTry::body_json)
    }

    /// The link: always there once reserved.
    #[must_use]
    pub fn link(&self) -> Option<&ParticipantLink> {
        match &self.stage {
            Stage::Trying => None,
            Stage::Reserved(link) => Some(link),
            Stage::Settled(_, link) => link.as_ref(),
        }
    }

    #[must_use]
    pub fn state(&self) -> ParticipantState {
        match self.stage {
            Stage::Trying => ParticipantState::Trying,
            Stage::Reserved(_) => ParticipantState::Reserved,
            Stage::Settled(state, _) => state,
        }
    }

    /// Calls made in the current phase (try, confirm or cancel).
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    #[must_use]
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the next retry is due, while one is scheduled.
    #[must_use]
    pub fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.next_attempt_at
    }

    /// When the participant reached its current settled state.
    #[must_use]
    pub fn settled_at(&self) -> Option<DateTime<Utc>> {
        self.settled_at
    }

    /// A participant as a log stored it.
    ///
    /// # Errors
    /// A sentence when it is reserved without a link.
    pub fn restore(stored: StoredParticipant) -> Result<Self, String> {
        let stage = match (stored.state, stored.link) {
            (ParticipantState::Trying, _) => Stage::Trying,
            (ParticipantState::Reserved, Some(link)) => Stage::Reserved(link),
            (ParticipantState::Reserved, None) => {
                return Err(format!(
                    "participant {} is reserved without a link",
                    stored.name
                ))
            }
            (state, link) => Stage::Settled(state, link),
        };
        Ok(Self {
            name: stored.name,
            try_request: stored.try_request.map(SharedTry::new),
            stage,
            attempts: stored.attempts,
            last_error: stored.last_error,
            next_attempt_at: stored.next_attempt_at,
            settled_at: stored.settled_at,
        })
    }

    pub(super) fn from_new(new: NewParticipant) -> Self {
        let (try_request, stage) = match new.source {
            ParticipantSource::Link(link) => (None, Stage::Reserved(link)),
            ParticipantSource::Try(t) => (Some(SharedTry::new(t)), Stage::Trying),
        };
        Self {
            name: new.name,
            try_request,
            stage,
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            settled_at: None,
        }
    }

    /// Records the outcome of one call: what it answered (or `None`: no answer that settles
    /// anything, it is retried), the error text of a failed attempt, and when the next
    /// attempt is due. The state changes only as [`participant_transition`] allows: a late
    /// answer for a participant already settled changes nothing but the counts. Returns
    /// whether the state changed.
    pub fn record_attempt(
        &mut self,
        now: DateTime<Utc>,
        outcome: Option<ParticipantEvent>,
        error: Option<String>,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> bool {
        self.attempts += 1;
        self.last_error = error;
        self.next_attempt_at = next_attempt_at;
        outcome.is_some_and(|event| self.apply(event, now))
    }

    /// Records a try answered with `link`: the participant holds it from now on. The only
    /// way into `reserved` for a participant that was tried: a reserved participant always
    /// has its link. Returns whether the state changed.
    pub fn record_link(&mut self, now: DateTime<Utc>, link: ParticipantLink) -> bool {
        self.record_attempt(now, None, None, None);
        if participant_transition(self.state(), ParticipantEvent::Reserved).is_none() {
            return false;
        }
        self.stage = Stage::Reserved(link);
        true
    }

    /// Applies `event` through [`participant_transition`]; returns whether the state changed.
    /// Nothing becomes `reserved` without a link.
    pub fn apply(&mut self, event: ParticipantEvent, now: DateTime<Utc>) -> bool {
        let Some(state) = participant_transition(self.state(), event) else {
            return false;
        };
        self.stage = match (state, &self.stage) {
            // Only `record_link` reserves: it brings the link.
            (ParticipantState::Reserved, _) => return false,
            (_, Stage::Reserved(link)) => Stage::Settled(state, Some(link.clone())),
            _ => Stage::Settled(state, None),
        };
        self.next_attempt_at = None;
        if state.is_settled() {
            self.settled_at = Some(now);
        }
        true
    }

    /// Whether it waits to be called again: unsettled, and its last call failed.
    #[must_use]
    pub fn waits_for_retry(&self) -> bool {
        !self.state().is_settled() && self.attempts > 0
    }

    /// Calls it again at once instead of at `next_attempt_at` (an operator asked).
    pub fn retry_now(&mut self) {
        self.next_attempt_at = None;
    }

    /// Starts a new phase (confirm or cancel): attempts count from zero again.
    pub fn start_phase(&mut self) {
        self.attempts = 0;
        self.next_attempt_at = None;
    }
}

/// What a participant's answer means (or the coordinator's giving up on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantEvent {
    /// Its try answered with a link.
    Reserved,
    /// Its try was refused (a 4xx).
    TryRefused,
    /// Its try's answer was never learned and the coordinator gave up: whatever it holds
    /// expires on its own.
    Abandoned,
    /// `PUT` answered 200/204.
    Confirmed,
    /// `PUT` answered 404/410.
    Gone,
    /// `PUT` answered 409 or another 4xx.
    Refused,
    /// `DELETE` answered that the change is cancelled (or gone, or 405).
    Cancelled,
    /// Cancelling kept failing until the link's own expiry.
    Expired,
}

impl ParticipantEvent {
    /// How the history records the answer: the name of the state it settles in.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantEvent::Reserved => "reserved",
            ParticipantEvent::TryRefused => "try_failed",
            ParticipantEvent::Abandoned => "abandoned",
            ParticipantEvent::Confirmed => "confirmed",
            ParticipantEvent::Gone => "gone",
            ParticipantEvent::Refused => "refused",
            ParticipantEvent::Cancelled => "cancelled",
            ParticipantEvent::Expired => "expired",
        }
    }

    pub const ALL: [ParticipantEvent; 8] = [
        ParticipantEvent::Reserved,
        ParticipantEvent::TryRefused,
        ParticipantEvent::Abandoned,
        ParticipantEvent::Confirmed,
        ParticipantEvent::Gone,
        ParticipantEvent::Refused,
        ParticipantEvent::Cancelled,
        ParticipantEvent::Expired,
    ];
}

/// The participant's state machine: where `event` takes a participant in state `from`, or
/// `None` when it does not apply (a settled participant stays as it is). A try's answers move
/// only a participant still trying; confirm and cancel answers only one holding a link.
#[must_use]
pub fn participant_transition(
    from: ParticipantState,
    event: ParticipantEvent,
) -> Option<ParticipantState> {
    use ParticipantEvent as E;
    use ParticipantState as S;
    match (from, event) {
        (S::Trying, E::Reserved) => Some(S::Reserved),
        (S::Trying, E::TryRefused) => Some(S::TryFailed),
        (S::Trying, E::Abandoned) => Some(S::Abandoned),
        (S::Reserved, E::Confirmed) => Some(S::Confirmed),
        (S::Reserved, E::Gone) => Some(S::Gone),
        (S::Reserved, E::Refused) => Some(S::Refused),
        (S::Reserved, E::Cancelled) => Some(S::Cancelled),
        (S::Reserved, E::Expired) => Some(S::Expired),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every move a participant may make; any other (state, event) pair changes nothing.
    const MOVES: [(ParticipantState, ParticipantEvent, ParticipantState); 8] = {
        use ParticipantEvent as E;
        use ParticipantState as S;
        [
            (S::Trying, E::Reserved, S::Reserved),
            (S::Trying, E::TryRefused, S::TryFailed),
            (S::Trying, E::Abandoned, S::Abandoned),
            (S::Reserved, E::Confirmed, S::Confirmed),
            (S::Reserved, E::Gone, S::Gone),
            (S::Reserved, E::Refused, S::Refused),
            (S::Reserved, E::Cancelled, S::Cancelled),
            (S::Reserved, E::Expired, S::Expired),
        ]
    };

    #[test]
    fn every_state_and_event_pair_follows_the_table() {
        for from in ParticipantState::ALL {
            for event in ParticipantEvent::ALL {
                let expected = MOVES
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                assert_eq!(
                    participant_transition(from, event),
                    expected,
                    "{from:?} + {event:?}"
                );
                if let Some(to) = expected {
                    assert!(!from.is_settled(), "a settled participant never moves");
                    assert_ne!(to, ParticipantState::Trying, "nothing goes back to trying");
                    assert_eq!(to.as_str(), event.as_str(), "the history names the state");
                }
            }
        }
    }

    #[test]
    fn a_participant_is_reserved_only_with_its_link() {
        let at = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        let mut p = Participant::from_new(NewParticipant {
            name: "payments".into(),
            source: ParticipantSource::Try(TryRequest {
                url: ParticipantUrl::parse("http://pay/holds").unwrap(),
                body: serde_json::Value::Null,
                headers: Vec::new(),
            }),
        });
        assert!(
            !p.apply(ParticipantEvent::Reserved, at),
            "no link, no reservation"
        );
        assert_eq!(p.state(), ParticipantState::Trying);

        let link = ParticipantLink {
            uri: ParticipantUrl::parse("http://pay/holds/1").unwrap(),
            expires: at + chrono::Duration::minutes(1),
        };
        assert!(p.record_link(at, link.clone()));
        assert_eq!(
            (p.state(), p.link()),
            (ParticipantState::Reserved, Some(&link))
        );
    }

    #[test]
    fn a_late_answer_for_a_settled_participant_changes_only_the_counts() {
        let at = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
        let mut p = Participant {
            name: "stock".into(),
            try_request: None,
            stage: Stage::Settled(ParticipantState::Cancelled, None),
            attempts: 1,
            last_error: None,
            next_attempt_at: None,
            settled_at: Some(at),
        };
        let later = at + chrono::Duration::seconds(1);
        assert!(!p.record_attempt(later, Some(ParticipantEvent::Confirmed), None, None));
        assert_eq!(
            (p.state(), p.settled_at, p.attempts),
            (ParticipantState::Cancelled, Some(at), 2)
        );
    }
}

//! A reservation and its participants, with the rules that need no I/O: deduplication,
//! deadlines, events, and the human-readable `activity` line.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::participant::{NewParticipant, Participant, ParticipantSource, ParticipantState};
use super::{transition, Event, ParticipantUrl, Reason, Refusal, State};
use crate::domain::ReservationId;

/// The reservation's deadline: the earlier of `timeout_at` and the earliest link expiry minus
/// `margin` (a confirmation must be able to land before every link expires).
#[must_use]
pub fn deadline_for<'a>(
    timeout_at: DateTime<Utc>,
    link_expiries: impl IntoIterator<Item = &'a DateTime<Utc>>,
    margin: Duration,
) -> DateTime<Utc> {
    let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
    link_expiries
        .into_iter()
        .filter_map(|e| e.checked_sub_signed(margin))
        .fold(timeout_at, DateTime::min)
}

/// A reservation: a set of participants to confirm or cancel together.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: ReservationId,
    pub state: State,
    pub reason: Option<Reason>,
    pub created_at: DateTime<Utc>,
    /// `created_at + timeout_ms`.
    pub timeout_at: DateTime<Utc>,
    /// The deadline: `timeout_at`, moved earlier by link expiries (see [`deadline_for`]).
    pub expires_at: DateTime<Utc>,
    /// When the decision (confirm or cancel) was taken.
    pub decided_at: Option<DateTime<Utc>>,
    /// When a terminal state was reached.
    pub finished_at: Option<DateTime<Utc>>,
    pub participants: Vec<Participant>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's `Idempotency-Key` on create, kept so it is released with the record.
    pub idempotency_key: Option<String>,
    /// The trace the reservation belongs to: every participant call carries it.
    pub trace: Option<super::TraceContext>,
    /// What happened to it, oldest first, at most [`HISTORY_LIMIT`] entries.
    pub history: Vec<HistoryEntry>,
    /// Entries dropped from the front of `history` to keep it bounded.
    pub history_dropped: u64,
    /// Where the final representation is `POST`ed once the reservation is terminal.
    pub callback: Option<Callback>,
    /// How many times the record was written: the store writes a change only over the
    /// revision it was read at (a conditional update), and counts it up when it does.
    /// 0 for a reservation not yet stored.
    pub revision: u64,
    /// With a store shared by several coordinators: the instance working on it (see
    /// `store`). `None` with the embedded log, where the one process owns everything.
    pub owner: Option<uuid::Uuid>,
}

/// A completion callback and how its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub url: ParticipantUrl,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Callback {
    #[must_use]
    pub fn new(url: ParticipantUrl) -> Self {
        Self {
            url,
            attempts: 0,
            last_error: None,
            delivered_at: None,
        }
    }
}

/// Most entries a reservation's history keeps; the oldest go first (and are counted).
pub const HISTORY_LIMIT: usize = 100;

/// One thing that happened to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub what: Happening,
}

/// Which call a participant received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerb {
    /// `POST` of a coordinator-driven try.
    Try,
    /// The same try again, after its answer was lost, to learn the link to cancel.
    TryAgain,
    /// `PUT` of the link.
    Confirm,
    /// `DELETE` of the link.
    Cancel,
}

impl CallVerb {
    pub const ALL: [CallVerb; 4] = [
        CallVerb::Try,
        CallVerb::TryAgain,
        CallVerb::Confirm,
        CallVerb::Cancel,
    ];

    /// How the history shows it, in the API and in the log (unchanged since the log's
    /// format 1).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallVerb::Try => "try",
            CallVerb::TryAgain => "try (again, to learn the link)",
            CallVerb::Confirm => "confirm",
            CallVerb::Cancel => "cancel",
        }
    }
}

impl std::fmt::Display for CallVerb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a history entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    Created {
        state: State,
    },
    Changed {
        from: State,
        to: State,
        reason: Option<Reason>,
    },
    /// One participant call: its verb, its result (the state it settled in, or the error),
    /// how long it took, and when it is retried.
    Called {
        participant: usize,
        verb: CallVerb,
        result: String,
        took_ms: u64,
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Reservation {
    /// A new reservation: `reserved` when every participant is a link, `trying` otherwise.
    /// The same link given twice is one participant.
    #[must_use]
    pub fn new(
        id: ReservationId,
        now: DateTime<Utc>,
        timeout: Duration,
        participants: Vec<NewParticipant>,
        metadata: serde_json::Map<String, serde_json::Value>,
        margin: Duration,
    ) -> Self {
        let timeout_at = now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let mut reservation = Self {
            id,
            state: State::Reserved,
            reason: None,
            created_at: now,
            timeout_at,
            expires_at: timeout_at,
            decided_at: None,
            finished_at: None,
            participants: Vec::with_capacity(participants.len()),
            metadata,
            idempotency_key: None,
            trace: None,
            history: Vec::new(),
            history_dropped: 0,
            revision: 0,
            owner: None,
            callback: None,
        };
        for p in participants {
            reservation.add_participant(p);
        }
        if reservation.has_pending_tries() {
            reservation.state = State::Trying;
        }
        reservation.refresh_deadline(margin);
        reservation.note(
            now,
            Happening::Created {
                state: reservation.state,
            },
        );
        reservation
    }

    /// Whether a completion callback is due: the reservation is terminal and its callback
    /// has not been acknowledged yet.
    #[must_use]
    pub fn callback_due(&self) -> bool {
        self.state.is_terminal()
            && self.state != State::Forgotten
            && self
                .callback
                .as_ref()
                .is_some_and(|c| c.delivered_at.is_none())
    }

    /// Adds to the history, dropping the oldest entry beyond [`HISTORY_LIMIT`].
    pub fn note(&mut self, at: DateTime<Utc>, what: Happening) {
        self.history.push(HistoryEntry { at, what });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
            self.history_dropped += excess as u64;
        }
    }

    /// Records one participant call in the history.
    pub fn note_call(
        &mut self,
        at: DateTime<Utc>,
        participant: usize,
        verb: CallVerb,
        result: String,
        took: Duration,
    ) {
        let retry_at = self
            .participants
            .get(participant)
            .and_then(|p| p.next_attempt_at);
        self.note(
            at,
            Happening::Called {
                participant,
                verb,
                result,
                took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                retry_at,
            },
        );
    }

    /// Joins one more participant. Returns `Ok(false)` when the same link is already there.
    ///
    /// # Errors
    /// [`Refusal`] once the reservation is decided.
    pub fn join(&mut self, participant: NewParticipant, margin: Duration) -> Result<bool, Refusal> {
        let event = match participant.source {
            ParticipantSource::Link(_) => Event::JoinLink,
            ParticipantSource::Try(_) => Event::JoinTry,
        };
        let next = transition(self.state, self.reason, event)?;
        if !self.add_participant(participant) {
            return Ok(false);
        }
        if let Some((state, reason)) = next {
            self.state = state;
            self.reason = reason;
        }
        self.refresh_deadline(margin);
        Ok(true)
    }

    fn add_participant(&mut self, new: NewParticipant) -> bool {
        if let ParticipantSource::Link(link) = &new.source {
            if self
                .participants
                .iter()
                .any(|p| p.link.as_ref().is_some_and(|l| l.uri == link.uri))
            {
                return false;
            }
        }
        self.participants.push(Participant::from_new(new));
        true
    }

    /// Moves the deadline earlier when a link expires sooner than the timeout allows.
    pub fn refresh_deadline(&mut self, margin: Duration) {
        let expiries = self
            .participants
            .iter()
            .filter(|p| p.state == ParticipantState::Reserved)
            .filter_map(|p| p.link.as_ref().map(|l| &l.expires));
        self.expires_at = deadline_for(self.timeout_at, expiries, margin).min(self.expires_at);
    }

    /// The deadline passed: a confirmation may no longer start.
    #[must_use]
    pub fn is_past_deadline(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    /// Cancels the reservation when its deadline has passed with nothing decided (reason
    /// `expired`, or `too_close_to_expiry` when a link's expiry set the deadline). Returns
    /// whether it did.
    pub fn expire_if_due(&mut self, now: DateTime<Utc>) -> bool {
        matches!(self.state, State::Trying | State::Reserved)
            && self.is_past_deadline(now)
            && self.apply(self.deadline_event(), now) == Ok(true)
    }

    /// The event that cancels this reservation at its deadline: `TooCloseToExpiry` when a
    /// link's expiry set the deadline (and the reservation is reserved), `Expire` otherwise.
    #[must_use]
    pub fn deadline_event(&self) -> Event {
        if self.expires_at < self.timeout_at && self.state == State::Reserved {
            Event::TooCloseToExpiry
        } else {
            Event::Expire
        }
    }

    /// When the record may be dropped from the log: `retention` after it ended, or
    /// `transaction_retention` for a confirmed one if that is longer (its transaction record
    /// lives on). Never while unfinished, nor for a conflict (kept until forgotten).
    #[must_use]
    pub fn purge_at(
        &self,
        retention: Duration,
        transaction_retention: Duration,
    ) -> Option<DateTime<Utc>> {
        let keep = match self.state {
            State::Confirmed => retention.max(transaction_retention),
            State::Cancelled | State::Forgotten => retention,
            _ => return None,
        };
        let finished = self.finished_at?;
        Some(finished + chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX))
    }

    /// The reservation ended more than `retention` ago: it answers 410 whatever its state.
    #[must_use]
    pub fn is_past_retention(&self, now: DateTime<Utc>, retention: Duration) -> bool {
        self.state != State::Conflict
            && self.finished_at.is_some_and(|finished| {
                finished + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
                    <= now
            })
    }

    /// Applies an event through the state machine. Returns whether the state changed.
    ///
    /// # Errors
    /// [`Refusal`] from [`transition`]; the reservation is left as it was.
    pub fn apply(&mut self, event: Event, now: DateTime<Utc>) -> Result<bool, Refusal> {
        let Some((state, reason)) = transition(self.state, self.reason, event)? else {
            return Ok(false);
        };
        if matches!(state, State::Confirming | State::Cancelling) {
            self.decided_at = Some(now);
            for p in &mut self.participants {
                p.start_phase();
            }
        }
        if state.is_terminal() {
            self.finished_at = Some(now);
            self.decided_at.get_or_insert(now);
        }
        let from = self.state;
        self.state = state;
        self.reason = reason;
        self.note(
            now,
            Happening::Changed {
                from,
                to: state,
                reason,
            },
        );
        Ok(true)
    }

    /// Ends the current phase once every participant is settled: `confirming` becomes
    /// `confirmed` (all confirmed), `cancelled` with `participants_expired` (all gone) or
    /// `conflict` (anything else); `cancelling` becomes `cancelled`. Returns whether it did.
    pub fn finish_phase(&mut self, now: DateTime<Utc>) -> bool {
        if self.unsettled().next().is_some() {
            return false;
        }
        let event = match self.state {
            State::Confirming => {
                let all = |s| self.participants.iter().all(|p| p.state == s);
                if all(ParticipantState::Confirmed) {
                    Event::AllConfirmed
                } else if all(ParticipantState::Gone) {
                    Event::AllGone
                } else {
                    Event::MixedOutcome
                }
            }
            State::Cancelling => Event::AllCancelled,
            _ => return false,
        };
        self.apply(event, now) == Ok(true)
    }

    /// Some participant's try has not answered yet.
    #[must_use]
    pub fn has_pending_tries(&self) -> bool {
        self.participants
            .iter()
            .any(|p| p.state == ParticipantState::Trying)
    }

    /// The participants still waiting for a call in the current phase.
    pub fn unsettled(&self) -> impl Iterator<Item = (usize, &Participant)> {
        self.participants
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.state.is_settled())
    }

    fn count(&self, state: ParticipantState) -> usize {
        self.participants
            .iter()
            .filter(|p| p.state == state)
            .count()
    }

    /// When the work under way is expected to settle, while the coordinator is working.
    #[must_use]
    pub fn eta(&self, now: DateTime<Utc>, call_timeout: Duration) -> Option<DateTime<Utc>> {
        if !self.state.is_in_progress() {
            return None;
        }
        let call = now + chrono::Duration::from_std(call_timeout).unwrap_or_default();
        let eta = self
            .unsettled()
            .filter_map(|(_, p)| p.next_attempt_at)
            .map(|at| at + chrono::Duration::from_std(call_timeout).unwrap_or_default())
            .fold(call, DateTime::max);
        Some(if self.state == State::Trying {
            eta.min(self.expires_at.max(now))
        } else {
            eta
        })
    }

    /// How long a client should wait before asking again, while the coordinator is working:
    /// a second while calls are in flight, until just after the last scheduled retry
    /// otherwise.
    #[must_use]
    pub fn poll_after(&self, now: DateTime<Utc>) -> Option<Duration> {
        if !self.state.is_in_progress() {
            return None;
        }
        let until_last_retry = self
            .unsettled()
            .filter_map(|(_, p)| p.next_attempt_at)
            .map(|at| (at - now).to_std().unwrap_or_default())
            .max()
            .unwrap_or_default();
        Some(until_last_retry + Duration::from_secs(1))
    }

    /// One line saying what is being done, for people reading `GET`.
    #[must_use]
    pub fn activity(&self, now: DateTime<Utc>) -> String {
        use ParticipantState as P;
        let n = self.participants.len();
        let reason = self.reason.map(|r| format!(" ({r})")).unwrap_or_default();
        let mut line = match self.state {
            State::Trying => format!(
                "trying: {} of {} reserved",
                n - self.count(P::Trying),
                participants(n)
            ),
            State::Reserved => format!(
                "reserved: {} holding; waiting for confirm or cancel until {}",
                participants(n),
                self.expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            State::Confirming => {
                format!(
                    "confirming: {} of {n} participants confirmed",
                    self.count(P::Confirmed)
                )
            }
            State::Confirmed => format!("confirmed: {} confirmed", participants(n)),
            State::Cancelling => format!(
                "cancelling{reason}: {} of {n} participants settled",
                self.participants
                    .iter()
                    .filter(|p| p.state.is_settled())
                    .count()
            ),
            State::Cancelled => format!("cancelled{reason}: every participant is released"),
            State::Conflict => format!(
                "conflict: {} confirmed, {} gone, {} refused; reconcile by hand",
                self.count(P::Confirmed),
                self.count(P::Gone),
                self.count(P::Refused)
            ),
            State::Forgotten => "forgotten: an operator resolved the conflict by hand".to_owned(),
        };
        if self.state.is_in_progress() {
            for (_, p) in self.unsettled() {
                if let (Some(error), Some(at)) = (&p.last_error, p.next_attempt_at) {
                    let wait = (at - now).num_milliseconds().max(0);
                    #[allow(clippy::cast_precision_loss)] // a few seconds, shown to one decimal
                    let secs = wait as f64 / 1000.0;
                    line.push_str(&format!(
                        "; {} retry {} in {secs:.1} s after {error}",
                        p.name,
                        p.attempts + 1
                    ));
                }
            }
        }
        line
    }
}

fn participants(n: usize) -> String {
    if n == 1 {
        "1 participant".to_owned()
    } else {
        format!("{n} participants")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ParticipantEvent, ParticipantLink, TryRequest};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn link(uri: &str, expires: DateTime<Utc>) -> NewParticipant {
        NewParticipant {
            name: uri.to_owned(),
            source: ParticipantSource::Link(ParticipantLink {
                uri: ParticipantUrl::parse(uri).unwrap(),
                expires,
            }),
        }
    }

    fn try_(url: &str) -> NewParticipant {
        NewParticipant {
            name: url.to_owned(),
            source: ParticipantSource::Try(TryRequest {
                url: ParticipantUrl::parse(url).unwrap(),
                body: serde_json::Value::Null,
                headers: vec![],
            }),
        }
    }

    const MARGIN: Duration = Duration::from_secs(5);

    /// A reservation created at `at(0)` with a 30 s timeout.
    fn reservation(participants: Vec<NewParticipant>) -> Reservation {
        Reservation::new(
            ReservationId::new(),
            at(0),
            Duration::from_secs(30),
            participants,
            serde_json::Map::new(),
            MARGIN,
        )
    }

    #[test]
    fn the_deadline_is_the_timeout_when_links_live_longer() {
        let r = reservation(vec![link("http://a/1", at(600))]);
        assert_eq!(r.expires_at, at(30));
        assert_eq!(r.state, State::Reserved);
    }

    #[test]
    fn an_early_link_expiry_moves_the_deadline_earlier_by_the_margin() {
        let r = reservation(vec![
            link("http://a/1", at(20)),
            link("http://b/1", at(600)),
        ]);
        assert_eq!(r.expires_at, at(15));
        assert_eq!(r.deadline_event(), Event::TooCloseToExpiry);
    }

    #[test]
    fn a_join_only_moves_the_deadline_earlier() {
        let mut r = reservation(vec![]);
        r.join(link("http://a/1", at(900)), MARGIN).unwrap();
        assert_eq!(r.expires_at, at(30));
        r.join(link("http://b/1", at(10)), MARGIN).unwrap();
        assert_eq!(r.expires_at, at(5));
    }

    #[test]
    fn the_same_link_twice_is_one_participant() {
        let r = reservation(vec![link("http://a/1", at(60)), link("http://a/1", at(60))]);
        assert_eq!(r.participants.len(), 1);
    }

    #[test]
    fn a_try_makes_the_reservation_trying_and_a_joined_try_takes_it_back_there() {
        let r = reservation(vec![link("http://a/1", at(60)), try_("http://b/holds")]);
        assert_eq!(r.state, State::Trying);

        let mut r2 = reservation(vec![]);
        assert_eq!(r2.state, State::Reserved);
        r2.join(try_("http://b/holds"), MARGIN).unwrap();
        assert_eq!(r2.state, State::Trying);
    }

    #[test]
    fn a_decision_restarts_attempt_counts_and_a_terminal_state_records_its_time() {
        let mut r = reservation(vec![link("http://a/1", at(60))]);
        r.participants[0].attempts = 3;
        assert_eq!(r.apply(Event::Confirm, at(1)), Ok(true));
        assert_eq!(r.participants[0].attempts, 0);
        assert_eq!(r.decided_at, Some(at(1)));
        assert_eq!(r.apply(Event::Confirm, at(2)), Ok(false));
        assert_eq!(r.apply(Event::Cancel, at(2)), Err(Refusal::Conflict));
        assert_eq!(r.apply(Event::AllConfirmed, at(3)), Ok(true));
        assert_eq!(r.finished_at, Some(at(3)));
    }

    #[test]
    fn a_finished_reservation_is_kept_for_its_retention_and_a_conflict_until_forgotten() {
        let hour = Duration::from_secs(3600);
        let mut r = reservation(vec![link("http://a/1", at(600))]);
        assert_eq!(r.purge_at(hour, 2 * hour), None);
        r.apply(Event::Confirm, at(1)).unwrap();
        r.apply(Event::AllConfirmed, at(2)).unwrap();
        assert_eq!(r.purge_at(hour, 2 * hour), Some(at(2 + 7200)));
        assert!(!r.is_past_retention(at(2 + 3599), hour));
        assert!(r.is_past_retention(at(2 + 3600), hour));

        let mut conflict = r.clone();
        conflict.state = State::Conflict;
        assert_eq!(conflict.purge_at(hour, hour), None);
        assert!(!conflict.is_past_retention(at(1_000_000), hour));
    }

    #[test]
    fn only_an_undecided_reservation_past_its_deadline_expires() {
        let mut r = reservation(vec![link("http://a/1", at(600))]);
        assert!(!r.expire_if_due(at(29)));
        assert!(r.expire_if_due(at(30)));
        assert_eq!(
            (r.state, r.reason),
            (State::Cancelling, Some(Reason::Expired))
        );
        assert!(!r.expire_if_due(at(31)), "once decided, nothing more");

        let mut confirming = reservation(vec![link("http://a/1", at(600))]);
        confirming.apply(Event::Confirm, at(1)).unwrap();
        assert!(!confirming.expire_if_due(at(100)));
        assert_eq!(confirming.state, State::Confirming);
    }

    #[test]
    fn a_phase_finishes_only_once_every_participant_is_settled() {
        let mut r = reservation(vec![
            link("http://a/1", at(600)),
            link("http://b/1", at(600)),
        ]);
        r.apply(Event::Confirm, at(1)).unwrap();
        r.participants[0].apply(ParticipantEvent::Confirmed, at(2));
        assert!(!r.finish_phase(at(2)));
        r.participants[1].apply(ParticipantEvent::Gone, at(3));
        assert!(r.finish_phase(at(3)));
        assert_eq!(r.state, State::Conflict);

        let mut gone = reservation(vec![link("http://a/1", at(600))]);
        gone.apply(Event::Confirm, at(1)).unwrap();
        gone.participants[0].apply(ParticipantEvent::Gone, at(2));
        assert!(gone.finish_phase(at(2)));
        assert_eq!(
            (gone.state, gone.reason),
            (State::Cancelled, Some(Reason::ParticipantsExpired))
        );
    }

    #[test]
    fn the_eta_of_a_trying_reservation_never_passes_its_deadline() {
        let r = Reservation::new(
            ReservationId::new(),
            at(0),
            Duration::from_secs(2),
            vec![try_("http://b/holds")],
            serde_json::Map::new(),
            MARGIN,
        );
        assert_eq!(r.eta(at(0), Duration::from_secs(5)), Some(at(2)));
        assert_eq!(r.activity(at(0)), "trying: 0 of 1 participant reserved");
        assert_eq!(r.poll_after(at(0)), Some(Duration::from_secs(1)));
    }

    #[test]
    fn the_history_keeps_the_latest_entries_and_counts_the_dropped() {
        let mut r = reservation(vec![link("http://a/1", at(60))]);
        assert_eq!(r.history.len(), 1, "created");
        for n in 0..150 {
            r.note_call(
                at(n),
                0,
                CallVerb::Confirm,
                format!("attempt {n}"),
                Duration::ZERO,
            );
        }
        assert_eq!(r.history.len(), HISTORY_LIMIT);
        assert_eq!(r.history_dropped, 51);
        assert!(matches!(
            &r.history.last().unwrap().what,
            Happening::Called { result, .. } if result == "attempt 149"
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn events() -> impl Strategy<Value = Vec<Event>> {
            prop::collection::vec(prop::sample::select(Event::ALL.to_vec()), 0..48)
        }

        proptest! {
            #[test]
            fn random_event_sequences_keep_every_invariant(events in events()) {
                let mut r = reservation(vec![link("http://a/1", at(60)), try_("http://b/holds")]);
                let mut confirmed_once = false;
                let mut cancelled_once = false;
                for (i, event) in events.into_iter().enumerate() {
                    let before = r.clone();
                    let result = r.apply(event, at(i64::try_from(i).unwrap()));

                    if result.is_err() {
                        prop_assert_eq!(&r, &before, "a refused event changes nothing");
                    }
                    if before.state.is_terminal() && r.state != before.state {
                        prop_assert!(
                            before.state == State::Conflict && r.state == State::Forgotten,
                            "{} left for {}", before.state, r.state
                        );
                    }
                    confirmed_once |= r.state == State::Confirming;
                    cancelled_once |= r.state == State::Cancelling;
                    prop_assert!(
                        !(confirmed_once && cancelled_once),
                        "both confirming and cancelling were decided"
                    );
                    prop_assert_eq!(
                        r.reason.is_some(),
                        matches!(r.state, State::Cancelling | State::Cancelled),
                        "a reason exactly while cancelling or cancelled: {:?}", r
                    );
                    prop_assert_eq!(r.finished_at.is_some(), r.state.is_terminal());
                    prop_assert_eq!(
                        r.decided_at.is_some(),
                        !matches!(r.state, State::Trying | State::Reserved)
                    );
                }
            }
        }
    }
}

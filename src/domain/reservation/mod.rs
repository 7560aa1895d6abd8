//! A reservation and its participants, with the rules that need no I/O: deduplication,
//! deadlines, events, and the human-readable `activity` line.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::history::{Happening, HistoryEntry};
use super::participant::{NewParticipant, Participant, ParticipantSource, ParticipantState};
use super::{transition, Event, ParticipantUrl, Reason, Refusal, State, Status};
use crate::domain::ReservationId;

mod fields;
#[cfg(test)]
mod tests;

pub use fields::StoredReservation;

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
    pub(super) id: ReservationId,
    /// The state, with its reason when cancelling or cancelled.
    pub(super) status: Status,
    pub(super) created_at: DateTime<Utc>,
    /// `created_at + timeout_ms`.
    pub(super) timeout_at: DateTime<Utc>,
    /// The deadline: `timeout_at`, moved earlier by link expiries (see [`deadline_for`]).
    pub(super) expires_at: DateTime<Utc>,
    /// When the decision (confirm or cancel) was taken.
    pub(super) decided_at: Option<DateTime<Utc>>,
    /// When a terminal state was reached.
    pub(super) finished_at: Option<DateTime<Utc>>,
    pub(super) participants: Vec<Participant>,
    pub(super) metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's `Idempotency-Key` on create, kept so it is released with the record.
    pub(super) idempotency_key: Option<String>,
    /// The trace the reservation belongs to: every participant call carries it.
    pub(super) trace: Option<super::TraceContext>,
    /// What happened to it, oldest first, at most [`HISTORY_LIMIT`] entries.
    pub(super) history: Vec<HistoryEntry>,
    /// Entries dropped from the front of `history` to keep it bounded.
    pub(super) history_dropped: u64,
    /// Where the final representation is `POST`ed once the reservation is terminal.
    pub(super) callback: Option<Callback>,
    /// How many times the record was written: the store writes a change only over the
    /// revision it was read at (a conditional update), and counts it up when it does.
    /// 0 for a reservation not yet stored.
    pub(super) revision: u64,
    /// With a store shared by several coordinators: the instance working on it (see
    /// `store`). `None` with the embedded log, where the one process owns everything.
    pub(super) owner: Option<uuid::Uuid>,
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
            status: Status::Reserved,
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
            reservation.status = Status::Trying;
        }
        reservation.refresh_deadline(margin);
        reservation.note(
            now,
            Happening::Created {
                state: reservation.status.state(),
            },
        );
        reservation
    }

    /// Whether a completion callback is due: the reservation is terminal and its callback
    /// has not been acknowledged yet.
    #[must_use]
    pub fn callback_due(&self) -> bool {
        self.status.state().is_terminal()
            && self.status.state() != State::Forgotten
            && self
                .callback
                .as_ref()
                .is_some_and(|c| c.delivered_at.is_none())
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
        let next = transition(self.status.state(), self.status.reason(), event)?;
        if !self.add_participant(participant) {
            return Ok(false);
        }
        if let Some((state, reason)) = next {
            self.status = status_of(state, reason);
        }
        self.refresh_deadline(margin);
        Ok(true)
    }

    fn add_participant(&mut self, new: NewParticipant) -> bool {
        if let ParticipantSource::Link(link) = &new.source {
            if self
                .participants
                .iter()
                .any(|p| p.link().is_some_and(|l| l.uri == link.uri))
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
            .filter(|p| p.state() == ParticipantState::Reserved)
            .filter_map(|p| p.link().map(|l| &l.expires));
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
        matches!(self.status.state(), State::Trying | State::Reserved)
            && self.is_past_deadline(now)
            && self.apply(self.deadline_event(), now) == Ok(true)
    }

    /// The event that cancels this reservation at its deadline: `TooCloseToExpiry` when a
    /// link's expiry set the deadline (and the reservation is reserved), `Expire` otherwise.
    #[must_use]
    pub fn deadline_event(&self) -> Event {
        if self.expires_at < self.timeout_at && self.status.state() == State::Reserved {
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
        let keep = match self.status.state() {
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
        self.status.state() != State::Conflict
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
        let Some((state, reason)) = transition(self.status.state(), self.status.reason(), event)?
        else {
            return Ok(false);
        };
        if matches!(state, State::Confirming | State::Cancelling) {
            self.decided_at = Some(now);
            // A participant settled already (a refused try) keeps the count of its calls.
            for p in self
                .participants
                .iter_mut()
                .filter(|p| !p.state().is_settled())
            {
                p.start_phase();
            }
        }
        if state.is_terminal() {
            self.finished_at = Some(now);
            self.decided_at.get_or_insert(now);
        }
        let from = self.status.state();
        self.status = status_of(state, reason);
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
        let event = match self.status.state() {
            State::Confirming => {
                let all = |s| self.participants.iter().all(|p| p.state() == s);
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
            .any(|p| p.state() == ParticipantState::Trying)
    }

    /// The participants still waiting for a call in the current phase.
    pub fn unsettled(&self) -> impl Iterator<Item = (usize, &Participant)> {
        self.participants
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.state().is_settled())
    }

    fn count(&self, state: ParticipantState) -> usize {
        self.participants
            .iter()
            .filter(|p| p.state() == state)
            .count()
    }

    /// When the work under way is expected to settle, while the coordinator is working.
    #[must_use]
    pub fn eta(&self, now: DateTime<Utc>, call_timeout: Duration) -> Option<DateTime<Utc>> {
        if !self.status.state().is_in_progress() {
            return None;
        }
        let call = now + chrono::Duration::from_std(call_timeout).unwrap_or_default();
        let eta = self
            .unsettled()
            .filter_map(|(_, p)| p.next_attempt_at)
            .map(|at| at + chrono::Duration::from_std(call_timeout).unwrap_or_default())
            .fold(call, DateTime::max);
        Some(if self.status.state() == State::Trying {
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
        if !self.status.state().is_in_progress() {
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
        let reason = self
            .status
            .reason()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let mut line = match self.status.state() {
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
                    .filter(|p| p.state().is_settled())
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
        if self.status.state().is_in_progress() {
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

/// The status a transition leads to: the table pairs a reason with exactly the cancelling
/// and cancelled states (`domain::state`'s tests hold it to that).
fn status_of(state: State, reason: Option<Reason>) -> Status {
    Status::of(state, reason)
        .expect("the transition table pairs a reason with exactly the cancelling states")
}

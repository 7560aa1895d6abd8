//! The one state machine: every change of a reservation's state goes through [`transition`].

use std::fmt;

/// Where a reservation stands, with what its state carries: the reason is part of the
/// cancelling and cancelled states, and of no other, so no reservation can hold one without
/// the other. [`State`] names the state alone (for labels, columns and the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Trying,
    Reserved,
    Confirming,
    Confirmed,
    Cancelling(Reason),
    Cancelled(Reason),
    Conflict,
    Forgotten,
}

impl Status {
    #[must_use]
    pub fn state(self) -> State {
        match self {
            Status::Trying => State::Trying,
            Status::Reserved => State::Reserved,
            Status::Confirming => State::Confirming,
            Status::Confirmed => State::Confirmed,
            Status::Cancelling(_) => State::Cancelling,
            Status::Cancelled(_) => State::Cancelled,
            Status::Conflict => State::Conflict,
            Status::Forgotten => State::Forgotten,
        }
    }

    /// Why it is cancelling or cancelled; `None` in any other state.
    #[must_use]
    pub fn reason(self) -> Option<Reason> {
        match self {
            Status::Cancelling(reason) | Status::Cancelled(reason) => Some(reason),
            _ => None,
        }
    }

    /// The status of `state` with `reason`, or `None` when the two do not go together (a
    /// reason outside cancelling and cancelled, or none inside).
    #[must_use]
    pub fn of(state: State, reason: Option<Reason>) -> Option<Self> {
        Some(match (state, reason) {
            (State::Cancelling, Some(reason)) => Status::Cancelling(reason),
            (State::Cancelled, Some(reason)) => Status::Cancelled(reason),
            (State::Cancelling | State::Cancelled, None) | (_, Some(_)) => return None,
            (State::Trying, None) => Status::Trying,
            (State::Reserved, None) => Status::Reserved,
            (State::Confirming, None) => Status::Confirming,
            (State::Confirmed, None) => Status::Confirmed,
            (State::Conflict, None) => Status::Conflict,
            (State::Forgotten, None) => Status::Forgotten,
        })
    }
}

/// Where a reservation stands. `Confirmed`, `Cancelled` and `Conflict` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Coordinator-driven tries are still being answered.
    Trying,
    /// Every participant holds its change; waiting for the client's decision.
    Reserved,
    /// Confirm was decided and logged; participants are being confirmed.
    Confirming,
    /// Every participant confirmed.
    Confirmed,
    /// Cancel was decided (by the client, the deadline or a failed try); participants are
    /// being cancelled.
    Cancelling,
    /// Every participant is cancelled (or expired on its own).
    Cancelled,
    /// Confirming ended with some participants confirmed and others gone or refusing: an
    /// operator must reconcile by hand.
    Conflict,
    /// An operator reconciled a conflict by hand and told the coordinator to forget it.
    Forgotten,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Trying,
        State::Reserved,
        State::Confirming,
        State::Confirmed,
        State::Cancelling,
        State::Cancelled,
        State::Conflict,
        State::Forgotten,
    ];

    /// No event leaves a terminal state (but an operator's forget leaves a conflict).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Confirmed | State::Cancelled | State::Conflict | State::Forgotten
        )
    }

    /// The coordinator is working on it (calling participants) right now.
    #[must_use]
    pub fn is_in_progress(self) -> bool {
        matches!(self, State::Trying | State::Confirming | State::Cancelling)
    }

    /// The lowercase name used in the API and the log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Trying => "trying",
            State::Reserved => "reserved",
            State::Confirming => "confirming",
            State::Confirmed => "confirmed",
            State::Cancelling => "cancelling",
            State::Cancelled => "cancelled",
            State::Conflict => "conflict",
            State::Forgotten => "forgotten",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reservation is cancelling or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The client asked for it.
    Client,
    /// The deadline passed before a decision.
    Expired,
    /// A participant refused its try (4xx).
    TryFailed,
    /// Every participant answered that its reservation was already gone.
    ParticipantsExpired,
    /// A confirmation could no longer land before a participant link expires.
    TooCloseToExpiry,
    /// An operator asked for it (a token with the operator role: the dashboard, a runbook).
    Operator,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Client,
        Reason::Expired,
        Reason::TryFailed,
        Reason::ParticipantsExpired,
        Reason::TooCloseToExpiry,
        Reason::Operator,
    ];

    /// The snake-case name used in the API and the log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Client => "client",
            Reason::Expired => "expired",
            Reason::TryFailed => "try_failed",
            Reason::ParticipantsExpired => "participants_expired",
            Reason::TooCloseToExpiry => "too_close_to_expiry",
            Reason::Operator => "operator",
        }
    }

    /// A cancellation forced by time: a confirm arriving now learns the reservation is gone
    /// (410), not that it lost a race (409).
    #[must_use]
    pub fn is_time_based(self) -> bool {
        matches!(
            self,
            Reason::Expired | Reason::ParticipantsExpired | Reason::TooCloseToExpiry
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A participant with a link joins.
    JoinLink,
    /// A participant the coordinator must try joins.
    JoinTry,
    /// Every try has answered with a link.
    AllTriesAnswered,
    /// A participant refused its try.
    TryFailed,
    /// The client asks to confirm.
    Confirm,
    /// The client asks to cancel.
    Cancel,
    /// An operator asks to cancel: as `Cancel`, with the reason `operator`.
    OperatorCancel,
    /// The deadline passed.
    Expire,
    /// A confirm arrived too close to a participant link's expiry to land everywhere.
    TooCloseToExpiry,
    /// Every participant confirmed.
    AllConfirmed,
    /// Every participant answered that its reservation is gone.
    AllGone,
    /// Some participants confirmed, others are gone or refused.
    MixedOutcome,
    /// Every participant is cancelled.
    AllCancelled,
    /// An operator resolved a conflict by hand.
    Forget,
}

impl Event {
    pub const ALL: [Event; 14] = [
        Event::JoinLink,
        Event::JoinTry,
        Event::AllTriesAnswered,
        Event::TryFailed,
        Event::Confirm,
        Event::Cancel,
        Event::OperatorCancel,
        Event::Expire,
        Event::TooCloseToExpiry,
        Event::AllConfirmed,
        Event::AllGone,
        Event::MixedOutcome,
        Event::AllCancelled,
        Event::Forget,
    ];
}

/// Why an event cannot apply in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The reservation is cancelled, or being cancelled because time ran out: HTTP 410.
    Gone,
    /// The event contradicts the current state (a decision was already taken the other
    /// way, or it is too early): HTTP 409.
    Conflict,
}

/// The result of applying an event: the new state and reason (`None` when nothing changes,
/// as when a confirm repeats).
pub type Transition = Option<(State, Option<Reason>)>;

/// The only place a reservation's state changes.
///
/// Returns `Ok(Some(next))` when the event moves the reservation, `Ok(None)` when the event is
/// a harmless repeat (confirm while confirming, cancel while cancelling, expire once
/// decided), and `Err` when it must be refused. Terminal states are never left and confirming
/// never turns into cancelling.
///
/// # Errors
/// [`Refusal::Gone`] when the reservation is or is becoming cancelled for reasons of time;
/// [`Refusal::Conflict`] when the event contradicts the state.
pub fn transition(
    state: State,
    reason: Option<Reason>,
    event: Event,
) -> Result<Transition, Refusal> {
    use Event as E;
    use State as S;

    let cancelled_gone = |r: Option<Reason>| match r {
        Some(r) if r.is_time_based() => Refusal::Gone,
        _ => Refusal::Conflict,
    };

    match (state, event) {
        (S::Trying | S::Reserved, E::JoinLink) | (S::Trying, E::JoinTry) => Ok(None),
        (S::Reserved, E::JoinTry) => Ok(Some((S::Trying, None))),
        (S::Cancelling | S::Cancelled | S::Forgotten, E::JoinLink | E::JoinTry) => {
            Err(Refusal::Gone)
        }
        (_, E::JoinLink | E::JoinTry) => Err(Refusal::Conflict),

        (S::Trying, E::AllTriesAnswered) => Ok(Some((S::Reserved, None))),
        (S::Trying, E::TryFailed) => Ok(Some((S::Cancelling, Some(Reason::TryFailed)))),
        // A late try answer after the reservation was decided changes nothing.
        (_, E::AllTriesAnswered | E::TryFailed) => Ok(None),

        (S::Reserved, E::Confirm) => Ok(Some((S::Confirming, None))),
        (S::Confirming | S::Confirmed, E::Confirm) => Ok(None),
        (S::Cancelled | S::Forgotten, E::Confirm) => Err(Refusal::Gone),
        (S::Cancelling, E::Confirm) => Err(cancelled_gone(reason)),
        (S::Trying | S::Conflict, E::Confirm) => Err(Refusal::Conflict),

        (S::Trying | S::Reserved, E::Cancel) => Ok(Some((S::Cancelling, Some(Reason::Client)))),
        (S::Trying | S::Reserved, E::OperatorCancel) => {
            Ok(Some((S::Cancelling, Some(Reason::Operator))))
        }
        (S::Cancelling, E::Cancel | E::OperatorCancel) => Ok(None),
        (S::Cancelled | S::Forgotten, E::Cancel | E::OperatorCancel) => Err(Refusal::Gone),
        (S::Confirming | S::Confirmed | S::Conflict, E::Cancel | E::OperatorCancel) => {
            Err(Refusal::Conflict)
        }

        (S::Trying | S::Reserved, E::Expire) => Ok(Some((S::Cancelling, Some(Reason::Expired)))),
        (_, E::Expire) => Ok(None),

        (S::Reserved, E::TooCloseToExpiry) => {
            Ok(Some((S::Cancelling, Some(Reason::TooCloseToExpiry))))
        }
        (_, E::TooCloseToExpiry) => Err(Refusal::Conflict),

        (S::Confirming, E::AllConfirmed) => Ok(Some((S::Confirmed, None))),
        (S::Confirming, E::AllGone) => Ok(Some((S::Cancelled, Some(Reason::ParticipantsExpired)))),
        (S::Confirming, E::MixedOutcome) => Ok(Some((S::Conflict, None))),
        (_, E::AllConfirmed | E::AllGone | E::MixedOutcome) => Err(Refusal::Conflict),

        (S::Cancelling, E::AllCancelled) => Ok(Some((S::Cancelled, reason))),
        (_, E::AllCancelled) => Err(Refusal::Conflict),

        (S::Conflict, E::Forget) => Ok(Some((S::Forgotten, None))),
        (S::Forgotten, E::Forget) => Ok(None),
        (_, E::Forget) => Err(Refusal::Conflict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_goes_with_exactly_the_cancelling_and_cancelled_states() {
        let reasons = Reason::ALL.map(Some);
        for state in State::ALL {
            for reason in reasons.iter().copied().chain([None]) {
                let cancelled = matches!(state, State::Cancelling | State::Cancelled);
                let status = Status::of(state, reason);
                assert_eq!(
                    status.is_some(),
                    cancelled == reason.is_some(),
                    "{state} {reason:?}"
                );
                if let Some(status) = status {
                    assert_eq!((status.state(), status.reason()), (state, reason));
                }
            }
        }
    }

    use Event as E;
    use State as S;

    /// The whole table: every (state, event) pair and what it must give.
    fn expected(state: State, event: Event) -> Result<Transition, Refusal> {
        let cancel = |r| Ok(Some((S::Cancelling, Some(r))));
        match (state, event) {
            (S::Trying, E::JoinLink | E::JoinTry) | (S::Reserved, E::JoinLink) => Ok(None),
            (S::Reserved, E::JoinTry) => Ok(Some((S::Trying, None))),
            (S::Cancelling | S::Cancelled | S::Forgotten, E::JoinLink | E::JoinTry) => {
                Err(Refusal::Gone)
            }
            (S::Trying, E::AllTriesAnswered) => Ok(Some((S::Reserved, None))),
            (S::Trying, E::TryFailed) => cancel(Reason::TryFailed),
            (S::Reserved, E::Confirm) => Ok(Some((S::Confirming, None))),
            (S::Confirming | S::Confirmed, E::Confirm) => Ok(None),
            (S::Cancelled | S::Forgotten, E::Confirm | E::Cancel | E::OperatorCancel) => {
                Err(Refusal::Gone)
            }
            (S::Trying | S::Reserved, E::Cancel) => cancel(Reason::Client),
            (S::Trying | S::Reserved, E::OperatorCancel) => cancel(Reason::Operator),
            (S::Cancelling, E::Cancel | E::OperatorCancel) => Ok(None),
            (S::Trying | S::Reserved, E::Expire) => cancel(Reason::Expired),
            (S::Reserved, E::TooCloseToExpiry) => cancel(Reason::TooCloseToExpiry),
            (S::Confirming, E::AllConfirmed) => Ok(Some((S::Confirmed, None))),
            (S::Confirming, E::AllGone) => {
                Ok(Some((S::Cancelled, Some(Reason::ParticipantsExpired))))
            }
            (S::Confirming, E::MixedOutcome) => Ok(Some((S::Conflict, None))),
            (S::Cancelling, E::AllCancelled) => Ok(Some((S::Cancelled, Some(Reason::Client)))),
            (S::Conflict, E::Forget) => Ok(Some((S::Forgotten, None))),
            (S::Forgotten, E::Forget) => Ok(None),
            (_, E::AllTriesAnswered | E::TryFailed | E::Expire) => Ok(None),
            // Cancelling at the client's request: a confirm lost the race.
            _ => Err(Refusal::Conflict),
        }
    }

    #[test]
    fn every_state_and_event_pair_follows_the_table() {
        for state in S::ALL {
            for event in E::ALL {
                let reason = (state == S::Cancelling).then_some(Reason::Client);
                assert_eq!(
                    transition(state, reason, event),
                    expected(state, event),
                    "{state} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_are_never_left_but_by_an_operator_forgetting_a_conflict() {
        for state in S::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in E::ALL {
                match transition(state, None, event) {
                    Ok(Some((S::Forgotten, _))) if state == S::Conflict && event == E::Forget => {}
                    Ok(Some((next, _))) => panic!("{state} left for {next} on {event:?}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn confirming_never_turns_into_cancelling() {
        for event in E::ALL {
            if let Ok(Some((next, _))) = transition(S::Confirming, None, event) {
                assert_ne!(next, S::Cancelling, "{event:?}");
            }
        }
    }

    #[test]
    fn a_confirm_during_an_expiry_cancel_is_gone_but_during_a_client_cancel_conflicts() {
        assert_eq!(
            transition(S::Cancelling, Some(Reason::Expired), E::Confirm),
            Err(Refusal::Gone)
        );
        assert_eq!(
            transition(S::Cancelling, Some(Reason::Client), E::Confirm),
            Err(Refusal::Conflict)
        );
        assert_eq!(
            transition(S::Cancelling, Some(Reason::TryFailed), E::Confirm),
            Err(Refusal::Conflict)
        );
    }

    #[test]
    fn a_finished_cancel_keeps_its_reason() {
        assert_eq!(
            transition(S::Cancelling, Some(Reason::Expired), E::AllCancelled),
            Ok(Some((S::Cancelled, Some(Reason::Expired))))
        );
    }
}

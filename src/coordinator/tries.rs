//! The try phase: `POST` each coordinator-driven try (its `Idempotency-Key` is
//! `{id}/{index}`), record each answer, and learn the link of a try whose answer was lost
//! before it is cancelled.

use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, CoordinatorError};
use crate::domain::{
    CallVerb, Event, ParticipantEvent, ParticipantState, Reservation, State, TryRequest,
};
use crate::participant::TryOutcome;

/// Calls made to learn the link of a try whose answer was lost (a crash, a timeout) before
/// cancelling it: enough to ride out a blip, few enough not to hold up the cancel.
pub(super) const LINK_RECOVERY_CALLS: u32 = 3;

impl Coordinator {
    pub(super) async fn run_tries(
        &self,
        r: &Reservation,
        wake: &CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let tries = r
            .unsettled()
            .filter(|(_, p)| p.state() == ParticipantState::Trying)
            .filter_map(|(i, p)| p.try_request().cloned().map(|t| (i, t)));
        let results = join_all(tries.map(|(i, t)| self.try_one(r, i, t, wake))).await;
        results.into_iter().collect::<Result<(), _>>()?;
        let (after, ()) = self
            .update(r.id(), |r, now| {
                if r.state() == State::Trying && !r.has_pending_tries() {
                    let _ = r.apply(Event::AllTriesAnswered, now);
                }
            })
            .await?;
        if after.state() == State::Trying {
            // Tries gave up at the deadline: wait for the timer's cancel (or a join) to wake us.
            tokio::select! {
                () = wake.cancelled() => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    pub(super) async fn try_one(
        &self,
        r: &Reservation,
        index: usize,
        request: TryRequest,
        wake: &CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let margin = self.inner.limits.participant_timeout;
        let mut schedule = self.inner.retry.schedule();
        loop {
            if wake.is_cancelled()
                || self.inner.shutdown.is_cancelled()
                || r.is_past_deadline(self.now())
            {
                return Ok(());
            }
            let (outcome, took) = self.try_call(r, index, &request).await;
            match outcome {
                TryOutcome::Reserved(link) => {
                    return self
                        .record(r.id(), index, |r, i, now| {
                            let p = &mut r.participant_mut(i);
                            if p.state() == ParticipantState::Trying {
                                p.record_link(now, link.clone());
                                r.note_call(now, i, CallVerb::Try, "reserved".into(), took);
                                r.refresh_deadline(margin);
                                // The last try to answer makes it reserved in the same write.
                                if r.state() == State::Trying && !r.has_pending_tries() {
                                    let _ = r.apply(Event::AllTriesAnswered, now);
                                }
                            }
                        })
                        .await;
                }
                TryOutcome::Refused(error) => {
                    tracing::warn!(reservation_id = %r.id(), participant = %r.participants()[index].name(),
                        %error, "try refused: cancelling the reservation");
                    return self
                        .record(r.id(), index, |r, i, now| {
                            let message = format!("try refused: {error}");
                            r.participant_mut(i).record_attempt(
                                now,
                                Some(ParticipantEvent::TryRefused),
                                Some(message.clone()),
                                None,
                            );
                            r.note_call(now, i, CallVerb::Try, message, took);
                            let _ = r.apply(Event::TryFailed, now);
                        })
                        .await;
                }
                TryOutcome::Retry(hint) => {
                    self.count_retry(CallVerb::Try);
                    let delay = schedule.next_delay(hint.retry_after);
                    let now = self.now();
                    let next = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    let give_up = next >= r.expires_at();
                    tracing::debug!(reservation_id = %r.id(), participant = %r.participants()[index].name(),
                        error = %hint.error, ?delay, "try failed; retrying");
                    self.record(r.id(), index, |r, i, now| {
                        r.participant_mut(i).record_attempt(
                            now,
                            None,
                            Some(hint.error.clone()),
                            (!give_up).then_some(next),
                        );
                        r.note_call(now, i, CallVerb::Try, hint.error.clone(), took);
                    })
                    .await?;
                    if give_up || !self.pause(delay, Some(wake)).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One try of participant `index` (its `Idempotency-Key` is `{id}/{index}`), and how long
    /// it took.
    pub(super) async fn try_call(
        &self,
        r: &Reservation,
        index: usize,
        request: &TryRequest,
    ) -> (TryOutcome, Duration) {
        let reservation_url = format!("{}/reservations/{}", self.inner.public_url, r.id());
        let key = format!("{}/{index}", r.id());
        let started = std::time::Instant::now();
        let outcome = self
            .inner
            .client
            .try_reserve(
                request,
                &reservation_url,
                &key,
                r.timeout_at(),
                r.trace().as_ref(),
            )
            .await;
        (outcome, started.elapsed())
    }

    /// Repeats a try (same `Idempotency-Key`) whose answer was lost, to learn the link of
    /// what the participant may hold. Gives up after [`LINK_RECOVERY_CALLS`]: the
    /// participant's own expiry then releases whatever it holds.
    pub(super) async fn recover_link(
        &self,
        r: &Reservation,
        index: usize,
        request: TryRequest,
    ) -> Result<(), CoordinatorError> {
        let mut schedule = self.inner.retry.schedule();
        let mut last_error = String::from("the try never answered");
        for call in 1..=LINK_RECOVERY_CALLS {
            let (outcome, took) = self.try_call(r, index, &request).await;
            let (link, settled, error) = match outcome {
                TryOutcome::Reserved(link) => (Some(link), Some(ParticipantEvent::Reserved), None),
                TryOutcome::Refused(e) => (
                    None,
                    Some(ParticipantEvent::Abandoned),
                    Some(format!("try refused: {e}; nothing to cancel")),
                ),
                TryOutcome::Retry(hint) if call == LINK_RECOVERY_CALLS => {
                    last_error = hint.error;
                    break;
                }
                TryOutcome::Retry(hint) => (None, None, Some(hint.error)),
            };
            let done = settled.is_some();
            self.record(r.id(), index, |r, i, now| {
                let p = &mut r.participant_mut(i);
                if p.state() == ParticipantState::Trying {
                    let result = error.clone().unwrap_or_else(|| "reserved".into());
                    match &link {
                        Some(link) => p.record_link(now, link.clone()),
                        None => p.record_attempt(now, settled, error.clone(), None),
                    };
                    r.note_call(now, i, CallVerb::TryAgain, result, took);
                }
            })
            .await?;
            if done || !self.pause(schedule.next_delay(None), None).await {
                return Ok(());
            }
        }
        self.record(r.id(), index, |r, i, now| {
            let p = &mut r.participant_mut(i);
            if p.state() == ParticipantState::Trying {
                let error = format!("{last_error}; whatever it holds expires on its own");
                p.record_attempt(now, Some(ParticipantEvent::Abandoned), Some(error), None);
            }
        })
        .await
    }
}

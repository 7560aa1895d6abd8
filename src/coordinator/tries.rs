//! The try phase: `POST` each coordinator-driven try (its `Idempotency-Key` is
//! `{id}/{index}`), record each answer, and learn the link of a try whose answer was lost
//! before it is cancelled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::drivers::Slot;
use super::{Coordinator, CoordinatorError};
use crate::domain::{
    CallVerb, Event, ParticipantEvent, ParticipantState, Reservation, SharedTry, SpanParent, State,
    TryRequest,
};
use crate::participant::TryOutcome;
use crate::retry::Schedule;
use crate::telemetry::ActiveSpan;

/// Calls made to learn the link of a try whose answer was lost (a crash, a timeout) before
/// cancelling it: enough to ride out a blip, few enough not to hold up the cancel.
pub(super) const LINK_RECOVERY_CALLS: u32 = 3;

impl Coordinator {
    /// Calls every pending try at once and records all the first answers in one write
    /// (which also makes the reservation reserved, or cancelling, when they settle it); then
    /// retries, each on its own schedule, the tries that need it.
    pub(super) async fn run_tries(
        &self,
        r: &Reservation,
        wake: &CancellationToken,
        phase: Option<SpanParent>,
        slot: &mut Slot<'_>,
    ) -> Result<(), CoordinatorError> {
        let tries: Vec<(usize, Arc<SharedTry>)> = r
            .unsettled()
            .filter(|(_, p)| p.state() == ParticipantState::Trying)
            .filter_map(|(i, p)| p.shared_try_request().map(|t| (i, t)))
            .collect();
        if !tries.is_empty() && !self.stop_trying(r, wake) {
            let mut schedules: Vec<Schedule> =
                tries.iter().map(|_| self.inner.retry.schedule()).collect();
            let calls = tries.iter().map(|(i, t)| self.try_call(r, *i, t, phase));
            let answers: Vec<TryAnswer> = join_all(calls)
                .await
                .into_iter()
                .zip(&tries)
                .zip(schedules.iter_mut())
                .map(|(((outcome, took), (i, _)), schedule)| {
                    self.answer(r, *i, outcome, took, schedule)
                })
                .collect();
            let margin = self.inner.limits.participant_timeout;
            self.update(r.id(), |r, now| {
                for answer in &answers {
                    answer.record(r, now, margin);
                }
            })
            .await?;
            slot.release();
            let retries = answers.iter().zip(tries).zip(schedules).filter_map(
                |((answer, (i, request)), schedule)| {
                    let delay = answer.retry_in?;
                    Some(self.retry_try(r, i, request, schedule, delay, wake, phase))
                },
            );
            join_all(retries)
                .await
                .into_iter()
                .collect::<Result<(), _>>()?;
        }
        let (after, ()) = self
            .update(r.id(), |r, now| {
                if r.state() == State::Trying && !r.has_pending_tries() {
                    let _ = r.apply(Event::AllTriesAnswered, now);
                }
            })
            .await?;
        slot.release();
        if after.state() == State::Trying {
            // Tries gave up at the deadline: wait for the timer's cancel (or a join) to wake us.
            tokio::select! {
                () = wake.cancelled() => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    /// Whether to stop calling tries: woken (the state changed), stopping, or past the
    /// deadline.
    fn stop_trying(&self, r: &Reservation, wake: &CancellationToken) -> bool {
        wake.is_cancelled() || self.inner.shutdown.is_cancelled() || r.is_past_deadline(self.now())
    }

    /// Calls one try again after `delay`, until it is answered for good, gives up at the
    /// deadline, or the driver is woken or stopped.
    #[allow(clippy::too_many_arguments)]
    async fn retry_try(
        &self,
        r: &Reservation,
        index: usize,
        request: Arc<SharedTry>,
        mut schedule: Schedule,
        mut delay: Duration,
        wake: &CancellationToken,
        phase: Option<SpanParent>,
    ) -> Result<(), CoordinatorError> {
        let margin = self.inner.limits.participant_timeout;
        loop {
            if !self.pause(delay, Some(wake)).await || self.stop_trying(r, wake) {
                return Ok(());
            }
            let (outcome, took) = self.try_call(r, index, &request, phase).await;
            let answer = self.answer(r, index, outcome, took, &mut schedule);
            self.record(r.id(), index, |r, _, now| answer.record(r, now, margin))
                .await?;
            match answer.retry_in {
                Some(next) => delay = next,
                None => return Ok(()),
            }
        }
    }

    /// A try's answer, ready to record: when to call again (and whether to at all).
    fn answer(
        &self,
        r: &Reservation,
        index: usize,
        outcome: TryOutcome,
        took: Duration,
        schedule: &mut Schedule,
    ) -> TryAnswer {
        let name = r.participants()[index].name();
        let (mut next, mut retry_in) = (None, None);
        match &outcome {
            TryOutcome::Reserved(_) => {}
            TryOutcome::Refused(error) => {
                tracing::warn!(reservation_id = %r.id(), participant = %name, %error,
                    "try refused: cancelling the reservation");
            }
            TryOutcome::Retry(hint) => {
                self.count_retry(CallVerb::Try);
                let delay = schedule.next_delay(hint.retry_after);
                let at = self.now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::debug!(reservation_id = %r.id(), participant = %name,
                    error = %hint.error, ?delay, "try failed; retrying");
                // A try that would be called again after the deadline gives up.
                if at < r.expires_at() {
                    (next, retry_in) = (Some(at), Some(delay));
                }
            }
        }
        TryAnswer {
            index,
            outcome,
            took,
            next,
            retry_in,
        }
    }

    /// One try of participant `index` (its `Idempotency-Key` is `{id}/{index}`), and how long
    /// it took.
    pub(super) async fn try_call(
        &self,
        r: &Reservation,
        index: usize,
        request: &TryRequest,
        phase: Option<SpanParent>,
    ) -> (TryOutcome, Duration) {
        let reservation_url = format!("{}/reservations/{}", self.inner.public_url, r.id());
        let key = format!("{}/{index}", r.id());
        let span = self.call_span(phase, Some(CallVerb::Try), Some(index), &request.url);
        let traceparent = span.as_ref().map(ActiveSpan::traceparent);
        let started = std::time::Instant::now();
        let call = self.inner.client.try_reserve(
            request,
            &reservation_url,
            &key,
            r.timeout_at(),
            traceparent.as_deref(),
        );
        let outcome = self.calling(span, call).await;
        (outcome, started.elapsed())
    }

    /// Repeats a try (same `Idempotency-Key`) whose answer was lost, to learn the link of
    /// what the participant may hold. Gives up after [`LINK_RECOVERY_CALLS`]: the
    /// participant's own expiry then releases whatever it holds.
    pub(super) async fn recover_link(
        &self,
        r: &Reservation,
        index: usize,
        request: Arc<SharedTry>,
        phase: Option<SpanParent>,
    ) -> Result<(), CoordinatorError> {
        let mut schedule = self.inner.retry.schedule();
        let mut last_error = String::from("the try never answered");
        for call in 1..=LINK_RECOVERY_CALLS {
            let (outcome, took) = self.try_call(r, index, &request, phase).await;
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

/// The answer of one try call, ready to record.
pub(super) struct TryAnswer {
    index: usize,
    outcome: TryOutcome,
    took: Duration,
    /// When the try is called again, if it is.
    next: Option<chrono::DateTime<chrono::Utc>>,
    retry_in: Option<Duration>,
}

impl TryAnswer {
    /// Records the answer on its participant and in the history: a link (the last try to
    /// answer makes the reservation reserved), a refusal (which cancels it), or a failure
    /// to retry.
    fn record(&self, r: &mut Reservation, now: chrono::DateTime<chrono::Utc>, margin: Duration) {
        let i = self.index;
        match &self.outcome {
            TryOutcome::Reserved(link) => {
                let p = &mut r.participant_mut(i);
                if p.state() == ParticipantState::Trying {
                    p.record_link(now, link.clone());
                    r.note_call(now, i, CallVerb::Try, "reserved".into(), self.took);
                    r.refresh_deadline(margin);
                    if r.state() == State::Trying && !r.has_pending_tries() {
                        let _ = r.apply(Event::AllTriesAnswered, now);
                    }
                }
            }
            TryOutcome::Refused(error) => {
                let message = format!("try refused: {error}");
                r.participant_mut(i).record_attempt(
                    now,
                    Some(ParticipantEvent::TryRefused),
                    Some(message.clone()),
                    None,
                );
                r.note_call(now, i, CallVerb::Try, message, self.took);
                let _ = r.apply(Event::TryFailed, now);
            }
            TryOutcome::Retry(hint) => {
                r.participant_mut(i)
                    .record_attempt(now, None, Some(hint.error.clone()), self.next);
                r.note_call(now, i, CallVerb::Try, hint.error.clone(), self.took);
            }
        }
    }
}

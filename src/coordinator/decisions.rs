//! The confirm and cancel phases: call every participant at once, record the first answers
//! together, then retry each on its own schedule until it settles.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::drivers::Slot;
use super::spans::end_call;
use super::{Coordinator, CoordinatorError};
use crate::domain::{
    CallVerb, ParticipantEvent, ParticipantState, Reservation, ReservationId, SpanParent,
};
use crate::participant::{CancelOutcome, ConfirmOutcome, Outcome};
use crate::retry::Schedule;
use crate::telemetry::ActiveSpan;
use crate::telemetry::VerbLabels;

impl Coordinator {
    pub(super) async fn run_confirms(
        &self,
        r: &Reservation,
        phase: Option<SpanParent>,
        slot: &mut Slot<'_>,
    ) -> Result<(), CoordinatorError> {
        let targets = r
            .unsettled()
            .filter_map(|(i, p)| {
                let link = p.link()?;
                Some((i, p.name().to_owned(), Call::Confirm(link.uri.clone())))
            })
            .collect();
        self.fan_out(r.id(), phase, targets, slot).await
    }

    pub(super) async fn run_cancels(
        &self,
        r: &Reservation,
        phase: Option<SpanParent>,
        slot: &mut Slot<'_>,
    ) -> Result<(), CoordinatorError> {
        // A try whose answer never arrived (a timeout, a crash) may hold a change: ask again
        // with the same Idempotency-Key to learn its link, so it can be cancelled.
        let unanswered: Vec<_> = r
            .unsettled()
            .filter(|(_, p)| p.state() == ParticipantState::Trying)
            .filter_map(|(i, p)| p.shared_try_request().map(|t| (i, t)))
            .collect();
        let reloaded;
        let r: &Reservation = if unanswered.is_empty() {
            r
        } else {
            let calls = unanswered
                .into_iter()
                .map(|(i, t)| self.recover_link(r, i, t, phase));
            join_all(calls)
                .await
                .into_iter()
                .collect::<Result<(), _>>()?;
            reloaded = self.current(r.id()).await?;
            &reloaded
        };
        let targets = r
            .unsettled()
            .filter_map(|(i, p)| {
                p.link()
                    .cloned()
                    .map(|l| (i, p.name().to_owned(), Call::Cancel(l)))
            })
            .collect();
        self.fan_out(r.id(), phase, targets, slot).await
    }

    pub(super) fn count_retry(&self, verb: CallVerb) {
        self.inner
            .metrics
            .retries
            .get_or_create(&VerbLabels {
                verb: verb.as_str(),
            })
            .inc();
    }

    /// One confirm or cancel call, its answer classified into what to record.
    pub(super) async fn call(
        &self,
        index: usize,
        target: &Call,
        phase: Option<SpanParent>,
        schedule: &mut Schedule,
    ) -> Attempt {
        let url = match target {
            Call::Confirm(uri) => uri,
            Call::Cancel(link) => &link.uri,
        };
        let span = self.call_span(phase, Some(target.verb()), Some(index), url);
        let traceparent = span.as_ref().map(ActiveSpan::traceparent);
        let traceparent = traceparent.as_deref();
        let started = std::time::Instant::now();
        let mut attempt = match target {
            Call::Confirm(uri) => match self
                .calling(span, self.inner.client.confirm(uri, traceparent))
                .await
            {
                ConfirmOutcome::Confirmed => Attempt::settled(ParticipantEvent::Confirmed, None),
                ConfirmOutcome::Gone(e) => {
                    Attempt::settled(ParticipantEvent::Gone, Some(format!("confirm: {e}")))
                }
                ConfirmOutcome::Refused(e) => Attempt::settled(
                    ParticipantEvent::Refused,
                    Some(format!("confirm refused: {e}")),
                ),
                ConfirmOutcome::Retry(hint) => Attempt {
                    settled: None,
                    delay: Some(schedule.next_delay(hint.retry_after)),
                    error: Some(hint.error),
                    verb: CallVerb::Confirm,
                    took: Duration::ZERO,
                },
            },
            Call::Cancel(link) => match self
                .calling(span, self.inner.client.cancel(&link.uri, traceparent))
                .await
            {
                CancelOutcome::Cancelled => Attempt::settled(ParticipantEvent::Cancelled, None),
                CancelOutcome::ExpiresOnItsOwn => Attempt::settled(
                    ParticipantEvent::Cancelled,
                    Some("cancel: 405, the participant lets the link expire on its own".into()),
                ),
                CancelOutcome::Retry(hint) => {
                    let delay = schedule.next_delay(hint.retry_after);
                    if self.now() + chrono::Duration::from_std(delay).unwrap_or_default()
                        >= link.expires
                    {
                        // The participant cancels by itself once its link expires.
                        Attempt::settled(ParticipantEvent::Expired, Some(hint.error))
                    } else {
                        Attempt {
                            settled: None,
                            delay: Some(delay),
                            error: Some(hint.error),
                            verb: CallVerb::Confirm,
                            took: Duration::ZERO,
                        }
                    }
                }
            },
        };
        attempt.verb = target.verb();
        attempt.took = started.elapsed();
        attempt
    }

    /// Awaits a participant call and ends its span with the answer.
    pub(super) async fn calling<T: Outcome>(
        &self,
        span: Option<ActiveSpan>,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let outcome = call.await;
        end_call(span, &outcome);
        outcome
    }

    /// Calls every target at once and records all the first answers in one write (which
    /// also ends the phase when they settle it); then retries, each on its own schedule,
    /// the participants that need it, recording every later answer as it comes. Stops at
    /// shutdown (the phase resumes at the next start), and when an operator asks to retry
    /// now (the driver then runs the phase again at once, calling every participant still
    /// unsettled).
    pub(super) async fn fan_out(
        &self,
        id: ReservationId,
        phase: Option<SpanParent>,
        targets: Vec<(usize, String, Call)>,
        slot: &mut Slot<'_>,
    ) -> Result<(), CoordinatorError> {
        let mut schedules: Vec<Schedule> = targets
            .iter()
            .map(|_| self.inner.retry.schedule())
            .collect();
        let first = join_all(
            targets
                .iter()
                .zip(schedules.iter_mut())
                .map(|((i, _, target), schedule)| self.call(*i, target, phase, schedule)),
        )
        .await;
        self.update(id, |r, now| {
            for ((i, _, _), attempt) in targets.iter().zip(&first) {
                attempt.record(r, *i, now);
            }
            r.finish_phase(now);
        })
        .await?;
        slot.release();
        // Fired by an operator's "retry now": every retry below stops waiting. Registered
        // only while some participant waits.
        let waits = first.iter().any(|attempt| attempt.delay.is_some());
        let wake = if waits {
            let mut signals = self.inner.retry_now.lock().expect("retry signals lock");
            signals.entry(id).or_default().clone()
        } else {
            CancellationToken::new()
        };
        let wake = &wake;
        let retries = targets.iter().zip(schedules).zip(first).filter_map(
            |(((i, name, target), schedule), attempt)| {
                attempt.delay.map(|delay| {
                    attempt.log_retry(id, target.verb(), name);
                    self.count_retry(target.verb());
                    self.retry_one(id, phase, *i, name, target, schedule, delay, wake)
                })
            },
        );
        let retried = join_all(retries).await;
        if waits {
            let mut signals = self.inner.retry_now.lock().expect("retry signals lock");
            signals.remove(&id);
        }
        // The phase ended with the write that recorded its last answer (the first one's when
        // there was nothing to call), or it is left for the driver's next round (stopping,
        // or an operator's retry now).
        retried.into_iter().collect::<Result<(), _>>()
    }

    /// Calls one participant again after `delay`, until it settles, the coordinator stops
    /// or an operator asks to retry now (`wake`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn retry_one(
        &self,
        id: ReservationId,
        phase: Option<SpanParent>,
        index: usize,
        name: &str,
        target: &Call,
        mut schedule: Schedule,
        mut delay: Duration,
        wake: &CancellationToken,
    ) -> Result<(), CoordinatorError> {
        loop {
            if !self.pause(delay, Some(wake)).await {
                return Ok(());
            }
            let attempt = self.call(index, target, phase, &mut schedule).await;
            let next = attempt.delay;
            if next.is_some() {
                attempt.log_retry(id, target.verb(), name);
                self.count_retry(target.verb());
            }
            self.record(id, index, |r, i, now| {
                attempt.record(r, i, now);
                // The last answer ends the phase in the same write.
                r.finish_phase(now);
            })
            .await?;
            match next {
                Some(d) => delay = d,
                None => return Ok(()),
            }
        }
    }
}

/// A call the confirm or cancel phase makes to one participant.
pub(super) enum Call {
    Confirm(crate::domain::ParticipantUrl),
    Cancel(crate::domain::ParticipantLink),
}

impl Call {
    fn verb(&self) -> CallVerb {
        match self {
            Call::Confirm(_) => CallVerb::Confirm,
            Call::Cancel(_) => CallVerb::Cancel,
        }
    }
}

/// The outcome of one participant call, ready to record.
pub(super) struct Attempt {
    /// What the answer settles, or `None` to retry.
    settled: Option<ParticipantEvent>,
    error: Option<String>,
    /// When to call again, if at all.
    delay: Option<Duration>,
    verb: CallVerb,
    took: Duration,
}

impl Attempt {
    fn settled(event: ParticipantEvent, error: Option<String>) -> Self {
        Self {
            settled: Some(event),
            error,
            delay: None,
            verb: CallVerb::Confirm,
            took: Duration::ZERO,
        }
    }

    /// Records the answer on participant `i` and in the reservation's history.
    fn record(&self, r: &mut Reservation, i: usize, now: DateTime<Utc>) {
        let next = self
            .delay
            .map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
        r.participant_mut(i)
            .record_attempt(now, self.settled, self.error.clone(), next);
        let result = match (&self.error, self.settled) {
            (Some(error), _) => error.clone(),
            (None, Some(event)) => event.as_str().to_owned(),
            (None, None) => String::new(),
        };
        r.note_call(now, i, self.verb, result, self.took);
    }

    fn log_retry(&self, id: ReservationId, verb: CallVerb, name: &str) {
        if let (Some(error), Some(delay)) = (&self.error, self.delay) {
            tracing::warn!(reservation_id = %id, participant = name, verb = verb.as_str(), %error, ?delay,
                "participant call failed; retrying");
        }
    }
}

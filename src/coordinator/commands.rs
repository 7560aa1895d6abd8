//! The commands clients give: create (with its `Idempotency-Key` replay), confirm, cancel,
//! forget, join, and the Atomikos-style create-and-decide. Each goes through the unit of work
//! and returns the reservation as saved.

use std::sync::Arc;
use std::time::SystemTime;

use super::spans::decided_by_client;
use super::{
    check_link_expiry, invalid, too_many, Coordinator, CoordinatorError, CreateReservation, Field,
    IdempotencyKey,
};
use crate::domain::{
    Callback, Event, Happening, NewParticipant, OperatorAction, ParticipantSource, Refusal,
    Reservation, ReservationId, SpanParent, State,
};
use crate::store::{Admission, KeyEntry, Ownership};

impl Coordinator {
    /// Creates a reservation; returns once it is durable in the log. Tries, if any, start
    /// right after.
    ///
    /// # Errors
    /// [`CoordinatorError::Invalid`] naming the offending field; [`CoordinatorError::Log`].
    pub async fn create(
        &self,
        request: CreateReservation,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Reservation, CoordinatorError> {
        if let Some(key) = &idempotency {
            // Boxed: only keyed creates carry these futures.
            if let Some(existing) = Box::pin(self.inner.store.idempotency_key(&key.key)).await? {
                return Box::pin(self.replay(key, existing)).await;
            }
        }
        self.client_write(move |this, admitted| async move {
            this.create_admitted(request, idempotency, admitted).await
        })
        .await
    }

    async fn create_admitted(
        &self,
        request: CreateReservation,
        idempotency: Option<IdempotencyKey>,
        _admitted: Admission,
    ) -> Result<Reservation, CoordinatorError> {
        let started = SystemTime::now();
        let limits = &self.inner.limits;
        let timeout = request.timeout.unwrap_or(limits.default_timeout);
        if timeout.is_zero() || timeout > limits.max_timeout {
            return Err(invalid(
                Field::Timeout,
                format!(
                    "must be between 1 and {} (the configured maximum)",
                    limits.max_timeout.as_millis()
                ),
            ));
        }
        self.check_participant_count(request.participants.len())?;
        let now = self.now();
        if let Some(url) = &request.callback {
            self.check_url(url, Field::Callback).await?;
        }
        for (i, p) in request.participants.iter().enumerate() {
            check_link_expiry(p, now, Some(i))?;
            self.check_policy(p, Some(i)).await?;
        }
        let mut reservation = Reservation::new(
            ReservationId::new(),
            now,
            timeout,
            request.participants,
            request.metadata,
            limits.participant_timeout,
        );
        let caller = request.trace;
        reservation.set_trace(caller.map_or_else(|| self.inner.traces.new_trace(), |c| c.trace));
        if let Some(url) = request.callback {
            reservation.set_callback(Callback::new(url));
        }
        if let Some(key) = &idempotency {
            reservation.set_idempotency_key(key.key.clone());
        }
        let entry = idempotency.as_ref().map(|key| KeyEntry {
            key: &key.key,
            fingerprint: key.fingerprint,
        });
        if let Some(existing) = self.inner.store.create(&mut reservation, entry).await? {
            // Another request with the same key won the race.
            let key = idempotency
                .as_ref()
                .expect("only a keyed create can find its key taken");
            return self.replay(key, existing).await;
        }
        let reservation = Arc::new(reservation);
        self.remember(&reservation);
        self.inner.metrics.entered(reservation.state());
        tracing::info!(reservation_id = %reservation.id(), state = %reservation.state(),
            participants = reservation.participants().len(), "reservation created");
        self.create_span(&reservation, caller, started);
        self.arm_deadline(&reservation);
        if reservation.state().is_in_progress() {
            self.ensure_driven(reservation.id());
        }
        Ok(Arc::unwrap_or_clone(reservation))
    }

    /// The answer to a repeated create: the original reservation when the body is the same.
    pub(super) async fn replay(
        &self,
        key: &IdempotencyKey,
        (id, fingerprint): (ReservationId, [u8; 32]),
    ) -> Result<Reservation, CoordinatorError> {
        if fingerprint != key.fingerprint {
            return Err(invalid(
                Field::IdempotencyKey,
                format!(
                    "was first used with another request body (reservation {id}); \
                     use a new key for a new reservation"
                ),
            ));
        }
        self.get(id).await
    }

    /// Decides to confirm (`confirm: true`) or to cancel, as a request asks: a client's, or
    /// an operator's (`operator`: the name of the operator's token), whose decision is
    /// recorded with its name and the time, and whose cancel has the reason `operator`.
    /// Idempotent: repeating it changes nothing and calls nobody again. A confirm past the
    /// deadline cancels instead and the answer is `Gone`. `caller` is the request's
    /// `traceparent`: the decision's span hangs under it when it is of the reservation's
    /// trace.
    ///
    /// # Errors
    /// [`CoordinatorError::Refused`] with `Gone` or `Conflict`; `NotFound`; `Store`.
    pub async fn decide_as(
        &self,
        id: ReservationId,
        confirm: bool,
        caller: Option<SpanParent>,
        operator: Option<&str>,
    ) -> Result<Reservation, CoordinatorError> {
        let (event, acted) = match (confirm, operator) {
            (true, None) => (Event::Confirm, None),
            (false, None) => (Event::Cancel, None),
            (true, Some(by)) => (Event::Confirm, Some((by.into(), OperatorAction::Confirm))),
            (false, Some(by)) => (
                Event::OperatorCancel,
                Some((by.into(), OperatorAction::Cancel)),
            ),
        };
        self.decide(id, event, caller, acted).await
    }

    pub(super) async fn decide(
        &self,
        id: ReservationId,
        event: Event,
        caller: Option<SpanParent>,
        operator: Option<(Arc<str>, OperatorAction)>,
    ) -> Result<Reservation, CoordinatorError> {
        self.client_write(move |this, admitted| async move {
            this.decide_admitted(id, event, caller, operator, admitted)
                .await
        })
        .await
    }

    async fn decide_admitted(
        &self,
        id: ReservationId,
        event: Event,
        caller: Option<SpanParent>,
        operator: Option<(Arc<str>, OperatorAction)>,
        _admitted: Admission,
    ) -> Result<Reservation, CoordinatorError> {
        let started = SystemTime::now();
        let (reservation, (outcome, decided)) = self
            .update_as(id, Ownership::Take, |r, now| {
                let undecided = r.decided_at().is_none();
                let outcome = if r.expire_if_due(now) && event == Event::Confirm {
                    Err(Refusal::Gone)
                } else {
                    r.apply(event, now)
                };
                // An operator's action that changed something is on the record, with who.
                if let (Ok(true), Some((by, action))) = (&outcome, &operator) {
                    r.note(
                        now,
                        Happening::Acted {
                            by: by.to_string(),
                            action: *action,
                            participant: None,
                        },
                    );
                }
                (outcome, undecided && r.decided_at().is_some())
            })
            .await?;
        if let (Ok(true), Some((by, action))) = (&outcome, &operator) {
            tracing::info!(reservation_id = %id, operator = %by, action = action.as_str(),
                "an operator acted on the reservation");
        }
        if decided && decided_by_client(&reservation) {
            // The others (a confirm that came past the deadline) are the unit of work's.
            self.decision_span(&reservation, caller, started);
        }
        match outcome {
            Ok(_) => Ok(Arc::unwrap_or_clone(reservation)),
            Err(refusal) => Err(CoordinatorError::Refused {
                refusal,
                reservation: Box::new(Arc::unwrap_or_clone(reservation)),
            }),
        }
    }

    /// A reservation over links that is decided as it is created (`Event::Confirm` or
    /// `Event::Cancel`), in one durable write: the Atomikos-style synchronous API. Links
    /// that expire too soon to be confirmed turn a confirm into a cancel
    /// (`too_close_to_expiry`), as for any reservation.
    ///
    /// # Errors
    /// `Invalid` (too many participants); `Store`.
    pub async fn create_decided(
        &self,
        links: Vec<NewParticipant>,
        event: Event,
        caller: Option<SpanParent>,
    ) -> Result<Reservation, CoordinatorError> {
        self.check_participant_count(links.len())?;
        self.client_write(move |this, admitted| async move {
            this.create_decided_admitted(links, event, caller, admitted)
                .await
        })
        .await
    }

    async fn create_decided_admitted(
        &self,
        links: Vec<NewParticipant>,
        event: Event,
        caller: Option<SpanParent>,
        _admitted: Admission,
    ) -> Result<Reservation, CoordinatorError> {
        let started = SystemTime::now();
        for (i, p) in links.iter().enumerate() {
            self.check_policy(p, Some(i)).await?;
        }
        let limits = &self.inner.limits;
        let now = self.now();
        let mut reservation = Reservation::new(
            ReservationId::new(),
            now,
            limits.default_timeout,
            links,
            serde_json::Map::new(),
            limits.participant_timeout,
        );
        reservation.set_trace(caller.map_or_else(|| self.inner.traces.new_trace(), |c| c.trace));
        let event = if reservation.is_past_deadline(now) {
            reservation.deadline_event()
        } else {
            event
        };
        if let Err(refusal) = reservation.apply(event, now) {
            // Only links were given, so the reservation is `reserved` and both apply.
            return Err(CoordinatorError::Refused {
                refusal,
                reservation: Box::new(reservation),
            });
        }
        self.inner.store.create(&mut reservation, None).await?;
        let reservation = Arc::new(reservation);
        self.remember(&reservation);
        self.inner.metrics.entered(reservation.state());
        tracing::info!(reservation_id = %reservation.id(), state = %reservation.state(),
            participants = reservation.participants().len(), "reservation created decided");
        self.create_span(&reservation, caller, started);
        self.decision_span(&reservation, None, started);
        self.ensure_driven(reservation.id());
        Ok(Arc::unwrap_or_clone(reservation))
    }

    /// An operator has reconciled a conflict by hand: the reservation is forgotten and answers
    /// 410 from now on. Idempotent.
    ///
    /// # Errors
    /// [`CoordinatorError::Refused`] (`Conflict`) for any state but `conflict`; `NotFound`;
    /// `Store`.
    /// `operator` is the name of the operator's token, kept in the history.
    pub async fn forget(
        &self,
        id: ReservationId,
        operator: &str,
    ) -> Result<Reservation, CoordinatorError> {
        self.decide(
            id,
            Event::Forget,
            None,
            Some((operator.into(), OperatorAction::Forget)),
        )
        .await
    }

    /// Calls a participant waiting in backoff again at once (after an operator fixed it):
    /// wakes the reservation's driver, which calls every participant of it that waits. The
    /// cleared `next_attempt_at` is logged, and taking the work over makes this instance
    /// the one that calls. Idempotent while the participant still waits or is being called.
    ///
    /// # Errors
    /// `NoParticipant`; `NotWaiting`; `NotFound`; `Store`.
    pub async fn retry_now(
        &self,
        id: ReservationId,
        index: usize,
        operator: &str,
    ) -> Result<Reservation, CoordinatorError> {
        let operator: Arc<str> = operator.into();
        self.client_write(move |this, admitted| async move {
            this.retry_now_admitted(id, index, &operator, admitted)
                .await
        })
        .await
    }

    async fn retry_now_admitted(
        &self,
        id: ReservationId,
        index: usize,
        operator: &str,
        _admitted: Admission,
    ) -> Result<Reservation, CoordinatorError> {
        let (reservation, outcome) = self
            .update_as(id, Ownership::Take, |r, now| {
                let state = r.state();
                let Some(p) = r.participants().get(index) else {
                    return Err(CoordinatorError::NoParticipant { id, index });
                };
                let why = if !state.is_in_progress() {
                    Some(format!("is not being called: the reservation is {state}"))
                } else if p.state().is_settled() {
                    Some(format!("has settled ({})", p.state().as_str()))
                } else if !p.waits_for_retry() {
                    Some("has not failed a call yet".to_owned())
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(CoordinatorError::NotWaiting { id, index, why });
                }
                r.participant_mut(index).retry_now();
                r.note(
                    now,
                    Happening::Acted {
                        by: operator.to_owned(),
                        action: OperatorAction::RetryNow,
                        participant: Some(index),
                    },
                );
                Ok(())
            })
            .await?;
        outcome?;
        tracing::info!(reservation_id = %id, participant = index, operator,
            "retry requested: calling it again now");
        let waiting = self
            .inner
            .retry_now
            .lock()
            .expect("retry signals lock")
            .remove(&id);
        if let Some(waiting) = waiting {
            waiting.cancel();
        }
        // Starts a driver where none runs (the work was another instance's), and wakes the
        // tries' retries.
        self.ensure_driven(id);
        Ok(Arc::unwrap_or_clone(reservation))
    }

    /// Calls again at once every participant on `host` (see [`crate::store::is_on_host`])
    /// that waits in backoff (on a shared database, in every instance's reservations: this
    /// one takes them over): after an operator fixed that host. Returns each retried as its
    /// reservation, index and name.
    ///
    /// # Errors
    /// `Store` (the first reservation whose retry could not be logged; those before it are
    /// retried).
    pub async fn retry_now_on_host(
        &self,
        host: &str,
        operator: &str,
    ) -> Result<Vec<(ReservationId, usize, String)>, CoordinatorError> {
        let query = crate::store::ListQuery {
            participant_host: Some(host.to_owned()),
            ..crate::store::ListQuery::newest(crate::store::MAX_SCAN)
        };
        let in_progress = [State::Trying, State::Confirming, State::Cancelling];
        let waiting: Vec<(ReservationId, usize)> = self
            .in_progress(&query, &in_progress)
            .await?
            .iter()
            .flat_map(|r| {
                r.participants()
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.waits_for_retry() && crate::store::is_on_host(p, host))
                    .map(|(i, _)| (r.id(), i))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut retried = Vec::with_capacity(waiting.len());
        for (id, index) in waiting {
            match self.retry_now(id, index, operator).await {
                Ok(r) => {
                    let name = r.participants().get(index).map(|p| p.name().to_owned());
                    retried.push((id, index, name.unwrap_or_default()));
                }
                // Settled or decided meanwhile: nothing to retry.
                Err(
                    CoordinatorError::NotWaiting { .. }
                    | CoordinatorError::NotFound(_)
                    | CoordinatorError::Purged(_),
                ) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(retried)
    }

    /// Adds a participant while the reservation is `trying` or `reserved`. A link already
    /// present is not added twice.
    ///
    /// # Errors
    /// `Invalid` (too many participants, an expired link); `Refused`; `NotFound`; `Store`.
    pub async fn join(
        &self,
        id: ReservationId,
        participant: NewParticipant,
    ) -> Result<Reservation, CoordinatorError> {
        self.client_write(move |this, admitted| async move {
            this.join_admitted(id, participant, admitted).await
        })
        .await
    }

    async fn join_admitted(
        &self,
        id: ReservationId,
        participant: NewParticipant,
        _admitted: Admission,
    ) -> Result<Reservation, CoordinatorError> {
        let margin = self.inner.limits.participant_timeout;
        let now = self.now();
        check_link_expiry(&participant, now, None)?;
        self.check_policy(&participant, None).await?;
        let is_try = matches!(participant.source, ParticipantSource::Try(_));
        let max = self.inner.limits.max_participants;
        let (reservation, outcome) = self
            .update_as(id, Ownership::Take, |r, now| {
                if r.expire_if_due(now) {
                    return Err(CoordinatorError::Refused {
                        refusal: Refusal::Gone,
                        reservation: Box::new(r.clone()),
                    });
                }
                if r.participants().len() >= max {
                    return Err(too_many(max));
                }
                r.join(participant.clone(), margin)
                    .map_err(|refusal| CoordinatorError::Refused {
                        refusal,
                        reservation: Box::new(r.clone()),
                    })
            })
            .await?;
        outcome?;
        if is_try && reservation.state() == State::Trying {
            self.ensure_driven(id);
        }
        Ok(Arc::unwrap_or_clone(reservation))
    }
}

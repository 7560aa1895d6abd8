//! The use cases: create, join, confirm, cancel, expire, and driving participants.
//!
//! Every change follows one order: lock the reservation, load it from the log, apply an
//! event through the state machine, save it (durable), and only then call participants or
//! answer. Each reservation has at most one driver task at a time, which runs the current
//! phase (tries, confirms or cancels) and re-reads the log when a phase ends or when it is
//! woken because the state changed under it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{
    Callback, Event, NewParticipant, ParticipantSource, ParticipantState, ParticipantUrl, Refusal,
    Reservation, ReservationId, State, TraceContext, TryRequest,
};
use crate::participant::{CancelOutcome, ConfirmOutcome, ParticipantClient, TryOutcome};
use crate::retry::{RetryPolicy, Schedule};
use crate::store::{KeyEntry, Ownership, Store, StoreError};
use crate::telemetry::{Metrics, VerbLabels};
use tracing::Instrument;

/// Reads the current time. Injected so tests and recovery agree on "now".
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Lock stripes: reservations hashing to the same stripe serialise their updates. An update
/// holds its stripe across a flush, so with hundreds of reservations in flight the stripes
/// must be many for unrelated ones not to wait for each other's flushes (64 Ki stripes:
/// about 2.5 MiB).
const LOCK_STRIPES: usize = 1 << 16;

/// Calls made to learn the link of a try whose answer was lost (a crash, a timeout) before
/// cancelling it: enough to ride out a blip, few enough not to hold up the cancel.
const LINK_RECOVERY_CALLS: u32 = 3;

/// How often a client waiting for a change (`Prefer: wait`) re-reads a reservation kept in a
/// shared store, where another instance may change it.
const SHARED_POLL: Duration = Duration::from_millis(100);

/// How many times an update is re-applied after a concurrent change before giving up (with
/// one process, never more than once; with several, only under a storm on one reservation).
const MAX_CONFLICTS: u32 = 16;

/// How long a driver waits before re-reading the log after the log failed.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The limits a new reservation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_participants: usize,
    /// The per-call timeout; also the safety margin before a link's expiry.
    pub participant_timeout: Duration,
    /// The longest `Prefer: wait` honoured.
    pub max_wait: Duration,
    /// How long a finished reservation stays readable (then 410).
    pub retention: Duration,
    /// How long a confirmed transaction stays at `/transactions/{id}`.
    pub transaction_retention: Duration,
}

/// A request to create a reservation, parsed at the API edge.
#[derive(Debug, Clone)]
pub struct CreateReservation {
    /// `None`: the configured default.
    pub timeout: Option<Duration>,
    pub participants: Vec<NewParticipant>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's `traceparent`, when it sent a valid one.
    pub trace: Option<TraceContext>,
    /// Where to `POST` the final representation.
    pub callback: Option<ParticipantUrl>,
}

/// Writes the representation a completion callback receives (the API's JSON, injected by
/// the composition root so that this layer does not know the API's shapes).
pub type Render = Arc<dyn Fn(&Reservation, DateTime<Utc>) -> Vec<u8> + Send + Sync>;

/// A client's `Idempotency-Key` and the fingerprint of the body it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the canonical request body: the same key with another body is refused.
    pub fingerprint: [u8; 32],
}

/// Why a use case did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The request is well formed but breaks a rule; `field` is its JSON path.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no reservation with id {0}")]
    NotFound(ReservationId),
    /// The reservation's retention ended and its record was dropped.
    #[error("reservation {0} is no longer kept")]
    Purged(ReservationId),
    /// The state machine refused the event; the reservation as it now stands.
    #[error("the reservation is {}", .reservation.state)]
    Refused {
        refusal: Refusal,
        reservation: Box<Reservation>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log is still being read back after a start: no writes until it is.
    #[error("recovery has not finished")]
    Recovering,
}

/// What is due at a timer's instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// The reservation's deadline: cancel it if still undecided.
    Deadline,
    /// The end of its retention: drop the record.
    Purge,
}

/// Arms timers (see `timers`).
pub type DeadlineSender = crate::timers::TimerQueue;

/// The coordinator. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    client: ParticipantClient,
    retry: RetryPolicy,
    limits: Limits,
    clock: Clock,
    public_url: String,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// The live driver of each reservation and the token that wakes it.
    drivers: Mutex<HashMap<ReservationId, CancellationToken>>,
    /// The reservations being worked on (trying, confirming, cancelling), as last saved:
    /// their drivers and waiters read them many times, and decoding a record each time
    /// was a tenth of the CPU under load. Written under the reservation's lock, after the
    /// log; never holds a reservation that is only waiting (those can be millions).
    working: Mutex<HashMap<ReservationId, Arc<Reservation>>>,
    /// Clients holding an answer (`Prefer: wait`) until a reservation's state changes.
    watchers: Mutex<HashMap<ReservationId, watch::Sender<Option<Arc<Reservation>>>>>,
    deadlines: DeadlineSender,
    metrics: Metrics,
    render: Render,
    tasks: TaskTracker,
    /// The runtime drivers run on (the one the coordinator was built on).
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    ready: AtomicBool,
}

/// Everything the coordinator is built from.
pub struct Parts {
    pub store: Store,
    pub client: ParticipantClient,
    pub retry: RetryPolicy,
    pub limits: Limits,
    pub clock: Clock,
    /// The coordinator's own base URL, sent to participants in `TCC-Reservation`.
    pub public_url: String,
    pub deadlines: DeadlineSender,
    pub metrics: Metrics,
    pub render: Render,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Coordinator {
    /// # Panics
    /// Outside a tokio runtime: drivers run on the runtime the coordinator is built on.
    #[must_use]
    pub fn new(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: parts.store,
                client: parts.client,
                retry: parts.retry,
                limits: parts.limits,
                clock: parts.clock,
                public_url: parts.public_url.trim_end_matches('/').to_owned(),
                locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                drivers: Mutex::new(HashMap::new()),
                watchers: Mutex::new(HashMap::new()),
                working: Mutex::new(HashMap::new()),
                deadlines: parts.deadlines,
                metrics: parts.metrics,
                render: parts.render,
                tasks: parts.tasks,
                runtime: tokio::runtime::Handle::current(),
                shutdown: parts.shutdown,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// The current time, from the injected clock.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        (self.inner.clock)()
    }

    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Admits a client's write: refused while recovery reads the log back (so that recovery
    /// sees the log as the previous run left it, and counts it exactly), and when the log is
    /// saturated.
    fn admit(&self) -> Result<crate::store::Admission, CoordinatorError> {
        if !self.is_ready() {
            return Err(CoordinatorError::Recovering);
        }
        Ok(self.inner.store.admit()?)
    }

    /// This coordinator's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Reservations confirming or cancelling since longer than `threshold` (their decision is
    /// that old and some participant has not answered for good).
    #[must_use]
    pub fn stuck(&self, threshold: std::time::Duration) -> usize {
        let since = self.now() - chrono::Duration::from_std(threshold).unwrap_or_default();
        self.inner
            .working
            .lock()
            .expect("working lock")
            .values()
            .filter(|r| {
                matches!(r.state, State::Confirming | State::Cancelling)
                    && r.decided_at.is_some_and(|at| at <= since)
            })
            .count()
    }

    /// The runtime that must run the store's calls, when the store talks to a database over
    /// the network (its connections live on the main runtime); `None` for the embedded log,
    /// callable from any thread.
    pub(crate) fn io_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.inner
            .store
            .is_shared()
            .then(|| self.inner.runtime.clone())
    }

    /// Whether the store answered its last call (a shared database may be out of reach).
    #[must_use]
    pub fn store_reachable(&self) -> bool {
        self.inner.store.is_reachable()
    }

    /// Recovery has finished: the coordinator serves with every reservation resumed.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    pub(crate) fn mark_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// Creates a reservation; returns once it is durable in the log. Tries, if any, start
    /// right after.
    ///
    /// # Errors
    /// [`CoordinatorError::Invalid`] naming the offending field; [`CoordinatorError::Store`].
    pub async fn create(
        &self,
        request: CreateReservation,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Reservation, CoordinatorError> {
        if let Some(key) = &idempotency {
            if let Some(existing) = self.inner.store.idempotency_key(&key.key).await? {
                return self.replay(key, existing).await;
            }
        }
        let _admitted = self.admit()?;
        let limits = &self.inner.limits;
        let timeout = request.timeout.unwrap_or(limits.default_timeout);
        if timeout.is_zero() || timeout > limits.max_timeout {
            return Err(invalid(
                "timeout_ms",
                format!(
                    "must be between 1 and {} (the configured maximum)",
                    limits.max_timeout.as_millis()
                ),
            ));
        }
        self.check_participant_count(request.participants.len())?;
        let now = self.now();
        if let Some(url) = &request.callback {
            self.check_url(url, "callback").await?;
        }
        for (i, p) in request.participants.iter().enumerate() {
            check_link_expiry(p, now, &format!("participants[{i}]"))?;
            self.check_policy(p, &source_field(p, &format!("participants[{i}]")))
                .await?;
        }
        let mut reservation = Reservation::new(
            ReservationId::new(),
            now,
            timeout,
            request.participants,
            request.metadata,
            limits.participant_timeout,
        );
        reservation.trace = Some(request.trace.unwrap_or_else(new_trace));
        reservation.callback = request.callback.map(Callback::new);
        if let Some(key) = &idempotency {
            reservation.idempotency_key = Some(key.key.clone());
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
        self.remember(&reservation);
        self.inner.metrics.entered(reservation.state);
        tracing::info!(reservation_id = %reservation.id, state = %reservation.state,
            participants = reservation.participants.len(), "reservation created");
        self.arm_deadline(&reservation);
        if reservation.state.is_in_progress() {
            self.ensure_driven(reservation.id);
        }
        Ok(reservation)
    }

    /// Waits up to `limit` (capped by `--max-wait`) until `settled` holds for the
    /// reservation; returns it as it then stands, and whether `settled` held.
    ///
    /// # Errors
    /// `NotFound`; `Store`.
    pub async fn wait_until(
        &self,
        id: ReservationId,
        settled: impl Fn(&Reservation) -> bool,
        limit: Duration,
    ) -> Result<(Reservation, bool), CoordinatorError> {
        let deadline = tokio::time::Instant::now() + limit.min(self.inner.limits.max_wait);
        let mut changes = self
            .inner
            .watchers
            .lock()
            .expect("watchers lock")
            .entry(id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        // Read once; then each change made here arrives with the reservation as it was
        // saved. With a shared store, changes made by other instances are read every
        // SHARED_POLL.
        let shared = self.inner.store.is_shared();
        let result = match self.get(id).await {
            Err(e) => Err(e),
            Ok(mut reservation) => loop {
                if settled(&reservation) {
                    break Ok((reservation, true));
                }
                let until = if shared {
                    deadline.min(tokio::time::Instant::now() + SHARED_POLL)
                } else {
                    deadline
                };
                match tokio::time::timeout_at(until, changes.changed()).await {
                    Ok(Ok(())) => {
                        if let Some(changed) = changes.borrow_and_update().clone() {
                            reservation = Reservation::clone(&changed);
                        }
                    }
                    Err(_) if shared && until < deadline => match self.get(id).await {
                        Ok(read) => reservation = read,
                        Err(e) => break Err(e),
                    },
                    _ => break Ok((reservation, false)),
                }
            },
        };
        drop(changes);
        let mut watchers = self.inner.watchers.lock().expect("watchers lock");
        if watchers.get(&id).is_some_and(|w| w.receiver_count() == 0) {
            watchers.remove(&id);
        }
        result
    }

    /// The answer to a repeated create: the original reservation when the body is the same.
    async fn replay(
        &self,
        key: &IdempotencyKey,
        (id, fingerprint): (ReservationId, [u8; 32]),
    ) -> Result<Reservation, CoordinatorError> {
        if fingerprint != key.fingerprint {
            return Err(invalid(
                "Idempotency-Key",
                format!(
                    "was first used with another request body (reservation {id}); \
                     use a new key for a new reservation"
                ),
            ));
        }
        self.get(id).await
    }

    /// Reads a reservation.
    ///
    /// # Errors
    /// [`CoordinatorError::NotFound`]; [`CoordinatorError::Store`].
    pub async fn get(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        // A shared store's records change under our feet: what clients read comes from it.
        if !self.inner.store.is_shared() {
            if let Some(r) = self.inner.working.lock().expect("working lock").get(&id) {
                return Ok(Reservation::clone(r));
            }
        }
        self.read(id).await
    }

    /// The reservation as this instance last saved it while working on it, else as read.
    /// With a shared store the copy may be stale; that is harmless where it is used (to
    /// change it, or to drive it): every write is conditional on the revision, and a stale
    /// copy's write fails, drops the copy and reads again.
    async fn current(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        if let Some(r) = self.inner.working.lock().expect("working lock").get(&id) {
            return Ok(Reservation::clone(r));
        }
        self.read(id).await
    }

    /// Reads a reservation from the store.
    async fn read(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        let retention = self.inner.limits.retention;
        match self.inner.store.load(id).await? {
            Some(r) if r.is_past_retention(self.now(), retention) => {
                Err(CoordinatorError::Refused {
                    refusal: Refusal::Gone,
                    reservation: Box::new(r),
                })
            }
            Some(r) => Ok(r),
            // Ids carry their creation time: one older than the retention was most likely
            // purged (an id never issued answers the same; nothing tells the two apart).
            None if id.created_at().is_some_and(|t| {
                t + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
                    <= self.now()
            }) =>
            {
                Err(CoordinatorError::Purged(id))
            }
            None => Err(CoordinatorError::NotFound(id)),
        }
    }

    /// A confirmed transaction, while `--transaction-retention` keeps it.
    ///
    /// # Errors
    /// `NotFound` for anything else; `Store`.
    pub async fn transaction(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        let retention = self.inner.limits.transaction_retention;
        match self.inner.store.load(id).await? {
            Some(r)
                if r.state == State::Confirmed && !r.is_past_retention(self.now(), retention) =>
            {
                Ok(r)
            }
            _ => Err(CoordinatorError::NotFound(id)),
        }
    }

    /// Drops the record of a reservation whose retention has ended. Called by the timers.
    ///
    /// # Errors
    /// `Store`.
    pub async fn purge(&self, id: ReservationId) -> Result<(), CoordinatorError> {
        let limits = self.inner.limits;
        let _guard = self.lock_for(id).lock().await;
        let Some(r) = self.inner.store.load(id).await? else {
            return Ok(());
        };
        if r.purge_at(limits.retention, limits.transaction_retention)
            .is_some_and(|at| at <= self.now())
        {
            // Not flushed here: a purge lost in a crash is simply done again at recovery.
            self.inner.store.remove(&r).await?;
            self.inner.metrics.left(r.state);
            tracing::debug!(reservation_id = %id, "retention ended: record purged");
        }
        Ok(())
    }

    /// Up to `limit` reservations, newest first, optionally only those in `state` and only
    /// those older than `before`; and whether there are more.
    ///
    /// # Errors
    /// [`CoordinatorError::Store`].
    pub async fn list(
        &self,
        state: Option<State>,
        before: Option<ReservationId>,
        limit: usize,
    ) -> Result<(Vec<Reservation>, bool), CoordinatorError> {
        Ok(self.inner.store.newest_first(before, limit, state).await?)
    }

    /// Decides to confirm. Idempotent: repeating it changes nothing and calls nobody again.
    /// Past the deadline the reservation is cancelled instead and the answer is `Gone`.
    ///
    /// # Errors
    /// [`CoordinatorError::Refused`] with `Gone` or `Conflict`; `NotFound`; `Store`.
    pub async fn confirm(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        self.decide(id, Event::Confirm).await
    }

    /// Decides to cancel. Idempotent.
    ///
    /// # Errors
    /// As [`Coordinator::confirm`].
    pub async fn cancel(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        self.decide(id, Event::Cancel).await
    }

    async fn decide(
        &self,
        id: ReservationId,
        event: Event,
    ) -> Result<Reservation, CoordinatorError> {
        let _admitted = self.admit()?;
        let (reservation, outcome) = self
            .update_as(id, Ownership::Take, |r, now| {
                if r.expire_if_due(now) && event == Event::Confirm {
                    return Err(Refusal::Gone);
                }
                r.apply(event, now)
            })
            .await?;
        match outcome {
            Ok(_) => Ok(reservation),
            Err(refusal) => Err(CoordinatorError::Refused {
                refusal,
                reservation: Box::new(reservation),
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
        field_of: impl Fn(usize) -> String,
        trace: Option<TraceContext>,
    ) -> Result<Reservation, CoordinatorError> {
        self.check_participant_count(links.len())?;
        let _admitted = self.admit()?;
        for (i, p) in links.iter().enumerate() {
            self.check_policy(p, &field_of(i)).await?;
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
        reservation.trace = Some(trace.unwrap_or_else(new_trace));
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
        self.remember(&reservation);
        self.inner.metrics.entered(reservation.state);
        tracing::info!(reservation_id = %reservation.id, state = %reservation.state,
            participants = reservation.participants.len(), "reservation created decided");
        self.ensure_driven(reservation.id);
        Ok(reservation)
    }

    /// An operator has reconciled a conflict by hand: the reservation is forgotten and answers
    /// 410 from now on. Idempotent.
    ///
    /// # Errors
    /// [`CoordinatorError::Refused`] (`Conflict`) for any state but `conflict`; `NotFound`;
    /// `Store`.
    pub async fn forget(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        self.decide(id, Event::Forget).await
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
        let _admitted = self.admit()?;
        let margin = self.inner.limits.participant_timeout;
        let now = self.now();
        check_link_expiry(&participant, now, "")?;
        self.check_policy(&participant, &source_field(&participant, ""))
            .await?;
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
                if r.participants.len() >= max {
                    return Err(too_many("participants", max));
                }
                r.join(participant.clone(), margin)
                    .map_err(|refusal| CoordinatorError::Refused {
                        refusal,
                        reservation: Box::new(r.clone()),
                    })
            })
            .await?;
        outcome?;
        if is_try && reservation.state == State::Trying {
            self.ensure_driven(id);
        }
        Ok(reservation)
    }

    /// Cancels every reservation of `ids` whose deadline has passed with nothing decided.
    /// Called by the timers with all the deadlines due at once; harmless for the others.
    /// The decisions share one flush, and no participant is called before it.
    ///
    /// # Errors
    /// `Store`; nothing after the failure is expired (the timers' entries are gone, but
    /// recovery re-arms every deadline at the next start).
    pub async fn expire(&self, ids: &[ReservationId]) -> Result<usize, CoordinatorError> {
        let mut expired = Vec::new();
        // First the reservations nobody else is updating, then, waiting, the others: one
        // busy stripe must not hold up the whole batch.
        let mut busy = Vec::new();
        for &id in ids {
            match self.lock_for(id).try_lock() {
                Ok(_guard) => expired.extend(self.expire_locked(id).await?),
                Err(_) => busy.push(id),
            }
        }
        for id in busy {
            let _guard = self.lock_for(id).lock().await;
            expired.extend(self.expire_locked(id).await?);
        }
        if expired.is_empty() {
            return Ok(0);
        }
        self.inner.store.wait_durable().await?;
        for (before, after) in &expired {
            let metrics = &self.inner.metrics;
            metrics.deadlines_fired.inc();
            let late = after.decided_at.unwrap_or(after.expires_at) - after.expires_at;
            metrics
                .deadline_lateness_seconds
                .observe(late.to_std().unwrap_or_default().as_secs_f64());
            tracing::info!(reservation_id = %after.id, reason = ?after.reason,
                "deadline passed: cancelling every participant");
            self.saved(before, after);
        }
        Ok(expired.len())
    }

    /// Applies the deadline to one reservation whose lock the caller holds, writing without
    /// waiting for the flush. Returns the states before and after when it expired.
    ///
    /// # Errors
    /// `Store` when the log cannot be read or written: the deadline is still due, and the
    /// caller arms it again (a deadline that falls while the database is away fires once it
    /// is back).
    async fn expire_locked(
        &self,
        id: ReservationId,
    ) -> Result<Option<(Reservation, Reservation)>, CoordinatorError> {
        let mut conflicts = 0;
        loop {
            let before = match self.current(id).await {
                Ok(r) => r,
                // Purged, or past its retention: nothing to expire.
                Err(
                    CoordinatorError::NotFound(_)
                    | CoordinatorError::Purged(_)
                    | CoordinatorError::Refused { .. },
                ) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut after = before.clone();
            if !after.expire_if_due(self.now()) {
                return Ok(None);
            }
            match self.inner.store.write(&mut after, Ownership::Take).await {
                Ok(()) => return Ok(Some((before, after))),
                // Another instance changed it meanwhile (decided it, joined a participant,
                // recorded an outcome): read it again and see whether it is still due.
                Err(StoreError::Conflict(_)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    self.inner.working.lock().expect("working lock").remove(&id);
                }
                Err(StoreError::Conflict(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What recovery keeps of a record read back from the log: enough to re-arm its timers
    /// and restart its driver, small enough to hold for millions.
    pub(crate) fn resumption(&self, reservation: &Reservation) -> Resumption {
        let limits = &self.inner.limits;
        Resumption {
            id: reservation.id,
            state: reservation.state,
            expires_at: reservation.expires_at,
            purge_at: reservation.purge_at(limits.retention, limits.transaction_retention),
            callback_due: reservation.callback_due(),
        }
    }

    /// Resumes a reservation read back from the log at start: arms its deadline or its
    /// purge, and restarts its driver.
    pub(crate) fn resume(&self, r: &Resumption) {
        let shared = self.inner.store.is_shared();
        if !shared {
            // A shared store's counts come from the database.
            self.inner.metrics.entered(r.state);
        }
        if matches!(r.state, State::Trying | State::Reserved) {
            self.inner.deadlines.arm(r.expires_at, r.id, Due::Deadline);
        }
        if let (Some(at), false) = (r.purge_at, shared) {
            self.inner.deadlines.arm(at, r.id, Due::Purge);
        }
        if r.state.is_in_progress() || r.callback_due {
            self.ensure_driven(r.id);
        }
    }

    /// Resumes a reservation taken over from an instance whose lease lapsed (shared stores).
    pub(crate) fn take_over(&self, reservation: &Reservation) {
        self.resume(&self.resumption(reservation));
    }

    /// Refuses a participant the coordinator must not call (the outgoing call policy);
    /// `field` names its URL in the request.
    async fn check_policy(&self, p: &NewParticipant, field: &str) -> Result<(), CoordinatorError> {
        let url = match &p.source {
            ParticipantSource::Link(link) => &link.uri,
            ParticipantSource::Try(t) => &t.url,
        };
        self.check_url(url, field).await
    }

    /// Refuses a URL the coordinator must not call; `field` names it in the request.
    async fn check_url(&self, url: &ParticipantUrl, field: &str) -> Result<(), CoordinatorError> {
        self.inner
            .client
            .policy()
            .check(url)
            .await
            .map_err(|e| invalid(field, format!("({url}) is refused: {e}")))
    }

    fn check_participant_count(&self, count: usize) -> Result<(), CoordinatorError> {
        let max = self.inner.limits.max_participants;
        if count > max {
            return Err(too_many("participants", max));
        }
        Ok(())
    }

    fn arm_deadline(&self, reservation: &Reservation) {
        if matches!(reservation.state, State::Trying | State::Reserved) {
            // A deadline armed after the timers stopped (at shutdown) is re-armed by
            // recovery at the next start.
            self.inner
                .deadlines
                .arm(reservation.expires_at, reservation.id, Due::Deadline);
        }
    }

    fn arm_purge(&self, reservation: &Reservation) {
        if self.inner.store.is_shared() {
            return; // the retention sweep deletes in batches (see `cluster`)
        }
        let limits = &self.inner.limits;
        if let Some(at) = reservation.purge_at(limits.retention, limits.transaction_retention) {
            self.inner.deadlines.arm(at, reservation.id, Due::Purge);
        }
    }

    /// Load, change, save (if changed), under the reservation's lock. Re-arms the deadline
    /// when it moved, and wakes the driver when the state changed to one that needs work.
    ///
    /// The save is conditional on the revision read: when another instance sharing the store
    /// changed the reservation in between, it is read again and `change` applied to what it
    /// now is, exactly as if the two requests had come to one instance one after the other.
    async fn update<T>(
        &self,
        id: ReservationId,
        change: impl FnMut(&mut Reservation, DateTime<Utc>) -> T,
    ) -> Result<(Reservation, T), CoordinatorError> {
        self.update_as(id, Ownership::Keep, change).await
    }

    /// [`Coordinator::update`], taking the reservation's work over when `ownership` says so
    /// (a client's request: this instance starts the work it asked for).
    async fn update_as<T>(
        &self,
        id: ReservationId,
        ownership: Ownership,
        mut change: impl FnMut(&mut Reservation, DateTime<Utc>) -> T,
    ) -> Result<(Reservation, T), CoordinatorError> {
        let _guard = self.lock_for(id).lock().await;
        let mut conflicts = 0;
        loop {
            let before = self.current(id).await?;
            let mut after = before.clone();
            let out = change(&mut after, self.now());
            if after == before {
                if after.state.is_in_progress() && self.inner.store.is_shared() {
                    // A repeated request for work whose first write may have committed without
                    // an answer (a lost database connection): make sure someone drives it.
                    // (Only with a shared store, where what is read is committed; the embedded
                    // log can show a deadline's decision before its flush, and nothing may
                    // call a participant before that.)
                    self.ensure_driven(id);
                }
                return Ok((after, out));
            }
            match self.inner.store.replace(&mut after, ownership).await {
                Ok(()) => {
                    self.saved(&before, &after);
                    return Ok((after, out));
                }
                Err(StoreError::Conflict(_)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    // A copy kept here is stale now.
                    self.inner.working.lock().expect("working lock").remove(&id);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What follows a durable save: the in-memory copy, waiters, the driver, the timers.
    fn saved(&self, before: &Reservation, after: &Reservation) {
        let id = after.id;
        self.remember(after);
        if after.state != before.state {
            self.inner.metrics.moved(before.state, after.state);
            tracing::debug!(reservation_id = %id, from = %before.state, to = %after.state,
                reason = ?after.reason, "state changed");
            if let Some(watcher) = self.inner.watchers.lock().expect("watchers lock").get(&id) {
                watcher.send_replace(Some(Arc::new(after.clone())));
            }
            if after.state.is_in_progress() || after.callback_due() {
                self.ensure_driven(id);
            }
            self.arm_purge(after);
        }
        // With a shared store, a client's request (a join, a repeated decision) can make this
        // instance the owner of a reservation another instance worked on: from now on its
        // deadline and its driver are this instance's, whatever becomes of the other.
        let taken_over = after.owner != before.owner && self.inner.store.owns(after);
        if taken_over && (after.state.is_in_progress() || after.callback_due()) {
            self.ensure_driven(id);
        }
        if after.expires_at != before.expires_at || after.state != before.state || taken_over {
            self.arm_deadline(after);
        }
    }

    /// Keeps a reservation being worked on in memory, and forgets it once it is not.
    /// A copy never replaces a newer one: a batch of deadlines is remembered after its flush,
    /// when a driver may already have saved a later revision.
    fn remember(&self, r: &Reservation) {
        let mut working = self.inner.working.lock().expect("working lock");
        if working
            .get(&r.id)
            .is_some_and(|kept| kept.revision > r.revision)
        {
            return;
        }
        if r.state.is_in_progress() {
            working.insert(r.id, Arc::new(r.clone()));
        } else {
            working.remove(&r.id);
        }
    }

    fn lock_for(&self, id: ReservationId) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        &self.inner.locks[stripe]
    }

    /// Starts the reservation's driver, or wakes it when it runs already.
    fn ensure_driven(&self, id: ReservationId) {
        let mut drivers = self.inner.drivers.lock().expect("drivers lock");
        if let Some(wake) = drivers.get(&id) {
            wake.cancel();
            return;
        }
        let wake = CancellationToken::new();
        drivers.insert(id, wake.clone());
        drop(drivers);
        let this = self.clone();
        // On the main runtime, also when the deadline thread expires a reservation.
        self.inner.tasks.spawn_on(
            async move { this.drive(id, wake).await },
            &self.inner.runtime,
        );
    }

    /// The driver: runs phases until the reservation needs nothing more from participants.
    async fn drive(&self, id: ReservationId, mut wake: CancellationToken) {
        loop {
            if self.inner.shutdown.is_cancelled() {
                self.inner.drivers.lock().expect("drivers lock").remove(&id);
                return;
            }
            let phase = match self.current(id).await {
                Ok(r) if !self.inner.store.owns(&r) => {
                    // Another instance sharing the store works on it now.
                    self.inner.drivers.lock().expect("drivers lock").remove(&id);
                    self.inner.working.lock().expect("working lock").remove(&id);
                    return;
                }
                Ok(r) => match r.state {
                    State::Trying => self.run_tries(&r, &wake).instrument(span(&r)).await,
                    State::Confirming => self.run_confirms(&r).instrument(span(&r)).await,
                    State::Cancelling => self.run_cancels(&r).instrument(span(&r)).await,
                    _ if r.callback_due() => self.deliver_callback(&r).instrument(span(&r)).await,
                    _ => {
                        let mut drivers = self.inner.drivers.lock().expect("drivers lock");
                        if !wake.is_cancelled() {
                            drivers.remove(&id);
                            return;
                        }
                        Ok(())
                    }
                },
                Err(CoordinatorError::NotFound(_) | CoordinatorError::Purged(_)) => {
                    // Its retention ended (a callback that was never acknowledged): nothing
                    // is left to do.
                    self.inner.drivers.lock().expect("drivers lock").remove(&id);
                    return;
                }
                Err(error) => Err(error),
            };
            if let Err(error) = phase {
                tracing::error!(reservation_id = %id, %error, "driving the reservation failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(STORE_RETRY_DELAY) => {}
                    () = self.inner.shutdown.cancelled() => {}
                }
            }
            if wake.is_cancelled() {
                wake = CancellationToken::new();
                self.inner
                    .drivers
                    .lock()
                    .expect("drivers lock")
                    .insert(id, wake.clone());
            }
        }
    }

    /// Records one participant's outcome under the reservation's lock; durable before anyone
    /// can read it, so an outcome once shown is never called for again after a crash.
    async fn record(
        &self,
        id: ReservationId,
        index: usize,
        mut change: impl FnMut(&mut Reservation, usize, DateTime<Utc>),
    ) -> Result<(), CoordinatorError> {
        self.update(id, |r, now| change(r, index, now)).await?;
        Ok(())
    }

    /// Sleeps until `delay` passes, `wake` fires or the coordinator stops. Returns whether
    /// the caller should try again.
    async fn pause(&self, delay: Duration, wake: Option<&CancellationToken>) -> bool {
        let woken = async {
            match wake {
                Some(w) => w.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = woken => false,
            () = self.inner.shutdown.cancelled() => false,
        }
    }

    // ---- tries -------------------------------------------------------------------------

    async fn run_tries(
        &self,
        r: &Reservation,
        wake: &CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let tries = r
            .unsettled()
            .filter(|(_, p)| p.state == ParticipantState::Trying)
            .filter_map(|(i, p)| p.try_request.clone().map(|t| (i, t)));
        let results = join_all(tries.map(|(i, t)| self.try_one(r, i, t, wake))).await;
        results.into_iter().collect::<Result<(), _>>()?;
        let (after, ()) = self
            .update(r.id, |r, now| {
                if r.state == State::Trying && !r.has_pending_tries() {
                    let _ = r.apply(Event::AllTriesAnswered, now);
                }
            })
            .await?;
        if after.state == State::Trying {
            // Tries gave up at the deadline: wait for the timer's cancel (or a join) to wake us.
            tokio::select! {
                () = wake.cancelled() => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    async fn try_one(
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
                        .record(r.id, index, |r, i, now| {
                            let p = &mut r.participants[i];
                            if p.state == ParticipantState::Trying {
                                p.link = Some(link.clone());
                                p.record_attempt(now, Some(ParticipantState::Reserved), None, None);
                                r.note_call(now, i, "try", "reserved".into(), took);
                                r.refresh_deadline(margin);
                                // The last try to answer makes it reserved in the same write.
                                if r.state == State::Trying && !r.has_pending_tries() {
                                    let _ = r.apply(Event::AllTriesAnswered, now);
                                }
                            }
                        })
                        .await;
                }
                TryOutcome::Refused(error) => {
                    tracing::warn!(reservation_id = %r.id, participant = %r.participants[index].name,
                        %error, "try refused: cancelling the reservation");
                    return self
                        .record(r.id, index, |r, i, now| {
                            let message = format!("try refused: {error}");
                            r.participants[i].record_attempt(
                                now,
                                Some(ParticipantState::TryFailed),
                                Some(message.clone()),
                                None,
                            );
                            r.note_call(now, i, "try", message, took);
                            let _ = r.apply(Event::TryFailed, now);
                        })
                        .await;
                }
                TryOutcome::Retry(hint) => {
                    self.inner
                        .metrics
                        .retries
                        .get_or_create(&VerbLabels { verb: "try" })
                        .inc();
                    let delay = schedule.next_delay(hint.retry_after);
                    let now = self.now();
                    let next = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    let give_up = next >= r.expires_at;
                    tracing::debug!(reservation_id = %r.id, participant = %r.participants[index].name,
                        error = %hint.error, ?delay, "try failed; retrying");
                    self.record(r.id, index, |r, i, now| {
                        r.participants[i].record_attempt(
                            now,
                            None,
                            Some(hint.error.clone()),
                            (!give_up).then_some(next),
                        );
                        r.note_call(now, i, "try", hint.error.clone(), took);
                    })
                    .await?;
                    if give_up || !self.pause(delay, Some(wake)).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    // ---- completion callback -----------------------------------------------------------

    /// `POST`s the final representation to the callback until it answers 2xx (or the
    /// coordinator stops: recovery resumes it at the next start).
    async fn deliver_callback(&self, r: &Reservation) -> Result<(), CoordinatorError> {
        let Some(callback) = &r.callback else {
            return Ok(());
        };
        let body = (self.inner.render)(r, self.now());
        let mut schedule = self.inner.retry.schedule();
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Ok(());
            }
            let outcome = self
                .inner
                .client
                .callback(&callback.url, body.clone(), r.trace.as_ref())
                .await;
            let (delivered, error, delay) = match outcome {
                Ok(()) => (true, None, None),
                Err(hint) => {
                    let delay = schedule.next_delay(hint.retry_after);
                    tracing::warn!(reservation_id = %r.id, url = %callback.url, error = %hint.error,
                        ?delay, "completion callback failed; retrying");
                    (false, Some(hint.error), Some(delay))
                }
            };
            self.update(r.id, |r, now| {
                if let Some(c) = &mut r.callback {
                    c.attempts += 1;
                    c.last_error.clone_from(&error);
                    if delivered {
                        c.delivered_at = Some(now);
                    }
                }
            })
            .await?;
            match delay {
                Some(delay) if self.pause(delay, None).await => {}
                _ => return Ok(()),
            }
        }
    }

    // ---- confirms ----------------------------------------------------------------------

    async fn run_confirms(&self, r: &Reservation) -> Result<(), CoordinatorError> {
        let targets = r
            .unsettled()
            .filter_map(|(i, p)| {
                let link = p.link.as_ref()?;
                Some((i, p.name.clone(), Call::Confirm(link.uri.clone())))
            })
            .collect();
        self.fan_out(r.id, r.trace, targets).await
    }

    // ---- cancels -----------------------------------------------------------------------

    async fn run_cancels(&self, r: &Reservation) -> Result<(), CoordinatorError> {
        // A try whose answer never arrived (a timeout, a crash) may hold a change: ask again
        // with the same Idempotency-Key to learn its link, so it can be cancelled.
        let unanswered: Vec<_> = r
            .unsettled()
            .filter(|(_, p)| p.state == ParticipantState::Trying)
            .filter_map(|(i, p)| p.try_request.clone().map(|t| (i, t)))
            .collect();
        let reloaded;
        let r = if unanswered.is_empty() {
            r
        } else {
            let calls = unanswered
                .into_iter()
                .map(|(i, t)| self.recover_link(r, i, t));
            join_all(calls)
                .await
                .into_iter()
                .collect::<Result<(), _>>()?;
            reloaded = self.current(r.id).await?;
            &reloaded
        };
        let targets = r
            .unsettled()
            .filter_map(|(i, p)| p.link.clone().map(|l| (i, p.name.clone(), Call::Cancel(l))))
            .collect();
        self.fan_out(r.id, r.trace, targets).await
    }

    /// One try of participant `index` (its `Idempotency-Key` is `{id}/{index}`), and how long
    /// it took.
    async fn try_call(
        &self,
        r: &Reservation,
        index: usize,
        request: &TryRequest,
    ) -> (TryOutcome, Duration) {
        let reservation_url = format!("{}/reservations/{}", self.inner.public_url, r.id);
        let key = format!("{}/{index}", r.id);
        let started = std::time::Instant::now();
        let outcome = self
            .inner
            .client
            .try_reserve(
                request,
                &reservation_url,
                &key,
                r.timeout_at,
                r.trace.as_ref(),
            )
            .await;
        (outcome, started.elapsed())
    }

    /// Repeats a try (same `Idempotency-Key`) whose answer was lost, to learn the link of
    /// what the participant may hold. Gives up after [`LINK_RECOVERY_CALLS`]: the
    /// participant's own expiry then releases whatever it holds.
    async fn recover_link(
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
                TryOutcome::Reserved(link) => (Some(link), Some(ParticipantState::Reserved), None),
                TryOutcome::Refused(e) => (
                    None,
                    Some(ParticipantState::Abandoned),
                    Some(format!("try refused: {e}; nothing to cancel")),
                ),
                TryOutcome::Retry(hint) if call == LINK_RECOVERY_CALLS => {
                    last_error = hint.error;
                    break;
                }
                TryOutcome::Retry(hint) => (None, None, Some(hint.error)),
            };
            let done = settled.is_some();
            self.record(r.id, index, |r, i, now| {
                let p = &mut r.participants[i];
                if p.state == ParticipantState::Trying {
                    if link.is_some() {
                        p.link.clone_from(&link);
                    }
                    let result = error.clone().unwrap_or_else(|| "reserved".into());
                    p.record_attempt(now, settled, error.clone(), None);
                    r.note_call(now, i, "try (again, to learn the link)", result, took);
                }
            })
            .await?;
            if done || !self.pause(schedule.next_delay(None), None).await {
                return Ok(());
            }
        }
        self.record(r.id, index, |r, i, now| {
            let p = &mut r.participants[i];
            if p.state == ParticipantState::Trying {
                let error = format!("{last_error}; whatever it holds expires on its own");
                p.record_attempt(now, Some(ParticipantState::Abandoned), Some(error), None);
            }
        })
        .await
    }

    fn count_retry(&self, verb: &'static str) {
        self.inner
            .metrics
            .retries
            .get_or_create(&VerbLabels { verb })
            .inc();
    }

    /// One confirm or cancel call, its answer classified into what to record.
    async fn call(
        &self,
        target: &Call,
        trace: Option<TraceContext>,
        schedule: &mut Schedule,
    ) -> Attempt {
        let trace = trace.as_ref();
        let started = std::time::Instant::now();
        let mut attempt = match target {
            Call::Confirm(uri) => match self.inner.client.confirm(uri, trace).await {
                ConfirmOutcome::Confirmed => Attempt::settled(ParticipantState::Confirmed, None),
                ConfirmOutcome::Gone(e) => {
                    Attempt::settled(ParticipantState::Gone, Some(format!("confirm: {e}")))
                }
                ConfirmOutcome::Refused(e) => Attempt::settled(
                    ParticipantState::Refused,
                    Some(format!("confirm refused: {e}")),
                ),
                ConfirmOutcome::Retry(hint) => Attempt {
                    settled: None,
                    delay: Some(schedule.next_delay(hint.retry_after)),
                    error: Some(hint.error),
                    verb: "",
                    took: Duration::ZERO,
                },
            },
            Call::Cancel(link) => match self.inner.client.cancel(&link.uri, trace).await {
                CancelOutcome::Cancelled => Attempt::settled(ParticipantState::Cancelled, None),
                CancelOutcome::ExpiresOnItsOwn => Attempt::settled(
                    ParticipantState::Cancelled,
                    Some("cancel: 405, the participant lets the link expire on its own".into()),
                ),
                CancelOutcome::Retry(hint) => {
                    let delay = schedule.next_delay(hint.retry_after);
                    if self.now() + chrono::Duration::from_std(delay).unwrap_or_default()
                        >= link.expires
                    {
                        // The participant cancels by itself once its link expires.
                        Attempt::settled(ParticipantState::Expired, Some(hint.error))
                    } else {
                        Attempt {
                            settled: None,
                            delay: Some(delay),
                            error: Some(hint.error),
                            verb: "",
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

    /// Calls every target at once and records all the first answers in one write (which
    /// also ends the phase when they settle it); then retries, each on its own schedule,
    /// the participants that need it, recording every later answer as it comes. Stops at
    /// shutdown; the phase resumes at the next start.
    async fn fan_out(
        &self,
        id: ReservationId,
        trace: Option<TraceContext>,
        targets: Vec<(usize, String, Call)>,
    ) -> Result<(), CoordinatorError> {
        let mut schedules: Vec<Schedule> = targets
            .iter()
            .map(|_| self.inner.retry.schedule())
            .collect();
        let first = join_all(
            targets
                .iter()
                .zip(schedules.iter_mut())
                .map(|((_, _, target), schedule)| self.call(target, trace, schedule)),
        )
        .await;
        self.update(id, |r, now| {
            for ((i, _, _), attempt) in targets.iter().zip(&first) {
                attempt.record(r, *i, now);
            }
            r.finish_phase(now);
        })
        .await?;
        let retries = targets.iter().zip(schedules).zip(first).filter_map(
            |(((i, name, target), schedule), attempt)| {
                attempt.delay.map(|delay| {
                    attempt.log_retry(id, target.verb(), name);
                    self.count_retry(target.verb());
                    self.retry_one(id, trace, *i, name, target, schedule, delay)
                })
            },
        );
        join_all(retries)
            .await
            .into_iter()
            .collect::<Result<(), _>>()?;
        if self.inner.shutdown.is_cancelled() {
            return Ok(());
        }
        // Nothing left to call (no participants, or all settled before): end the phase.
        self.update(id, |r, now| r.finish_phase(now)).await?;
        Ok(())
    }

    /// Calls one participant again after `delay`, until it settles or the coordinator stops.
    #[allow(clippy::too_many_arguments)]
    async fn retry_one(
        &self,
        id: ReservationId,
        trace: Option<TraceContext>,
        index: usize,
        name: &str,
        target: &Call,
        mut schedule: Schedule,
        mut delay: Duration,
    ) -> Result<(), CoordinatorError> {
        loop {
            if !self.pause(delay, None).await {
                return Ok(());
            }
            let attempt = self.call(target, trace, &mut schedule).await;
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

/// A reservation as recovery remembers it (see [`Coordinator::resumption`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resumption {
    id: ReservationId,
    state: State,
    expires_at: DateTime<Utc>,
    purge_at: Option<DateTime<Utc>>,
    callback_due: bool,
}

impl Resumption {
    pub(crate) fn is_unfinished(&self) -> bool {
        !self.state.is_terminal()
    }
}

/// A call the confirm or cancel phase makes to one participant.
enum Call {
    Confirm(crate::domain::ParticipantUrl),
    Cancel(crate::domain::ParticipantLink),
}

impl Call {
    fn verb(&self) -> &'static str {
        match self {
            Call::Confirm(_) => "confirm",
            Call::Cancel(_) => "cancel",
        }
    }
}

/// The outcome of one participant call, ready to record.
struct Attempt {
    /// The participant's new settled state, or `None` to retry.
    settled: Option<ParticipantState>,
    error: Option<String>,
    /// When to call again, if at all.
    delay: Option<Duration>,
    verb: &'static str,
    took: Duration,
}

impl Attempt {
    fn settled(state: ParticipantState, error: Option<String>) -> Self {
        Self {
            settled: Some(state),
            error,
            delay: None,
            verb: "",
            took: Duration::ZERO,
        }
    }

    /// Records the answer on participant `i` and in the reservation's history.
    fn record(&self, r: &mut Reservation, i: usize, now: DateTime<Utc>) {
        let next = self
            .delay
            .map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
        r.participants[i].record_attempt(now, self.settled, self.error.clone(), next);
        let result = match (&self.error, self.settled) {
            (Some(error), _) => error.clone(),
            (None, Some(state)) => state.as_str().to_owned(),
            (None, None) => String::new(),
        };
        r.note_call(now, i, self.verb, result, self.took);
    }

    fn log_retry(&self, id: ReservationId, verb: &'static str, name: &str) {
        if let (Some(error), Some(delay)) = (&self.error, self.delay) {
            tracing::warn!(reservation_id = %id, participant = name, verb, %error, ?delay,
                "participant call failed; retrying");
        }
    }
}

/// A trace of the coordinator's own, for a client that sent no `traceparent`.
fn new_trace() -> TraceContext {
    TraceContext::new(uuid::Uuid::new_v4().into_bytes())
        .unwrap_or_else(|| TraceContext::new([1; 16]).expect("a non-zero trace id"))
}

/// The span of a reservation's participant calls: its id and its trace.
fn span(r: &Reservation) -> tracing::Span {
    tracing::info_span!("reservation", reservation_id = %r.id,
        trace_id = r.trace.map(|t| t.trace_id()).unwrap_or_default())
}

fn invalid(field: &str, message: impl Into<String>) -> CoordinatorError {
    CoordinatorError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn too_many(field: &str, max: usize) -> CoordinatorError {
    invalid(
        field,
        format!("at most {max} participants per reservation (the configured maximum)"),
    )
}

/// The JSON path of a participant's URL under `at` (`participants[0]` → `participants[0].link.uri`).
fn source_field(p: &NewParticipant, at: &str) -> String {
    let dot = if at.is_empty() { "" } else { "." };
    match &p.source {
        ParticipantSource::Link(_) => format!("{at}{dot}link.uri"),
        ParticipantSource::Try(_) => format!("{at}{dot}try.url"),
    }
}

fn check_link_expiry(
    p: &NewParticipant,
    now: DateTime<Utc>,
    at: &str,
) -> Result<(), CoordinatorError> {
    let dot = if at.is_empty() { "" } else { "." };
    match &p.source {
        ParticipantSource::Link(link) if link.expires <= now => Err(invalid(
            &format!("{at}{dot}link.expires"),
            "is in the past: the participant has already cancelled this link",
        )),
        _ => Ok(()),
    }
}

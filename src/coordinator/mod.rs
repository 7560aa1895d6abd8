//! The use cases, a room per job. Every change follows one order: lock the reservation,
//! load it, apply an event through the state machine, save it (durable), and only then call
//! participants or answer. Each reservation has at most one driver task at a time, which runs
//! the current phase and re-reads the log when a phase ends or when it is woken because the
//! state changed under it.
//!
//! | room | owns |
//! |---|---|
//! | `mod.rs` | the [`Coordinator`] and what it is built from; its limits and errors |
//! | `admission` | whether a client's write is taken now, and whether what it asks is allowed |
//! | `commands` | create (and its `Idempotency-Key` replay), confirm, cancel, forget, join |
//! | `queries` | reads, the listing, and waiting for a change (`Prefer: wait`) |
//! | `unit_of_work` | the only writer: lock, load, apply, save, remember, and what follows a save |
//! | `drivers` | one driver per reservation: started, woken, stopped |
//! | `tries` | the try phase, and learning the link of a try whose answer was lost |
//! | `decisions` | the confirm and cancel phases: fan out, record, retry |
//! | `callbacks` | completion callbacks |
//! | `deadlines` | what the timers ask for: expiring undecided reservations, purging old ones |
//! | `resumption` | recovery at start, and taking over another instance's work |
//! | `topology` | every behaviour that differs between an embedded and a shared log |

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{
    Limits, NewParticipant, ParticipantUrl, Refusal, Reservation, ReservationId, SpanParent, State,
};
use crate::participant::Participants;
use crate::retry::RetryPolicy;
use crate::store::{Store, StoreError};
use crate::telemetry::{Metrics, Traces};

mod admission;
mod callbacks;
mod commands;
mod deadlines;
mod decisions;
mod drivers;
pub use drivers::PHASES_AT_ONCE;
mod queries;
mod resumption;
mod spans;
mod topology;
mod tries;
mod unit_of_work;

#[cfg(test)]
mod tests;

pub use topology::Topology;

pub(crate) use resumption::recover;
pub use resumption::RecoveryError;

use admission::{check_link_expiry, invalid, too_many};
use unit_of_work::{LOCK_STRIPES, MAX_CONFLICTS};

/// Reads the current time. Injected so tests and recovery agree on "now".
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A request to create a reservation, parsed at the API edge.
#[derive(Debug, Clone)]
pub struct CreateReservation {
    /// `None`: the configured default.
    pub timeout: Option<Duration>,
    pub participants: Vec<NewParticipant>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's `traceparent`, when it sent a valid one: the reservation's trace, and
    /// the span its create hangs under.
    pub trace: Option<SpanParent>,
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

/// Where in a request a problem lies, as the coordinator names it; the API spells it (a JSON
/// path in the body, a header's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The reservation's timeout.
    Timeout,
    /// The participants, as a list (their number).
    Participants,
    /// One participant: `index` is its place in the request's list, `None` for the one
    /// participant a join names.
    Participant {
        index: Option<usize>,
        part: ParticipantPart,
    },
    /// The completion callback's URL.
    Callback,
    /// The `Idempotency-Key` the request came with.
    IdempotencyKey,
}

/// Which part of a participant a [`Field`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantPart {
    LinkUri,
    LinkExpires,
    TryUrl,
}

/// Why a use case did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The request is well formed but breaks a rule; `field` says where.
    #[error("{field:?}: {message}")]
    Invalid { field: Field, message: String },
    #[error("no reservation with id {0}")]
    NotFound(ReservationId),
    /// The reservation's retention ended and its record was dropped.
    #[error("reservation {0} is no longer kept")]
    Purged(ReservationId),
    /// The state machine refused the event; the reservation as it now stands.
    #[error("the reservation is {}", .reservation.state())]
    Refused {
        refusal: Refusal,
        reservation: Box<Reservation>,
    },
    /// The reservation has no participant at this index.
    #[error("reservation {id} has no participant {index}")]
    NoParticipant { id: ReservationId, index: usize },
    /// The participant does not wait to be called again (settled, never called yet, or its
    /// reservation is not being worked on).
    #[error("participant {index} of reservation {id} {why}")]
    NotWaiting {
        id: ReservationId,
        index: usize,
        why: String,
    },
    /// The log is still being read back after a start: no writes until it is.
    #[error("recovery has not finished")]
    Recovering,
    /// Too many client writes wait for the log (`--max-log-queue`): nothing was stored; ask
    /// again shortly.
    #[error("the transaction log has {0} writes waiting for the disk")]
    Busy(usize),
    /// The store cannot be reached (a shared database away): the write may or may not have
    /// happened, and repeating it is safe.
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    /// The embedded log's disk cannot take writes now (below `--disk-reserve`, or a flush
    /// overdue); reads are served.
    #[error("{0}")]
    Disk(String),
    /// The write was not durable within `--store-timeout` (a slow disk): it goes on, and may
    /// or may not be kept; repeating it is safe where the request is idempotent.
    #[error("the log did not make the write durable within {0:?}")]
    SlowLog(Duration),
    /// The log failed to read or write.
    #[error("{0}")]
    Log(String),
}

/// What the store's failures mean to the coordinator's callers; the store's own types stop
/// here.
impl From<StoreError> for CoordinatorError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Overloaded(waiting) => CoordinatorError::Busy(waiting),
            StoreError::Unavailable(detail) => CoordinatorError::Unavailable(detail),
            e
            @ (StoreError::DiskFull { .. } | StoreError::SlowDisk(_) | StoreError::NoSpace(_)) => {
                CoordinatorError::Disk(e.to_string())
            }
            other => CoordinatorError::Log(other.to_string()),
        }
    }
}

/// Arms timers (see `timers`).
pub type DeadlineSender = crate::timers::TimerQueue;

/// The coordinator. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

/// A map keyed by reservation id, with a fast hash: the ids are made here (UUIDv7), never
/// chosen by a client, so no one can flood a map with colliding keys.
type IdMap<V> = std::collections::HashMap<ReservationId, V, rustc_hash::FxBuildHasher>;

struct Inner {
    store: Store,
    client: Arc<dyn Participants>,
    /// The spans of reservations, exported when a collector is configured.
    traces: Traces,
    retry: RetryPolicy,
    limits: Limits,
    clock: Clock,
    public_url: String,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// The live driver of each reservation and the token that wakes it.
    drivers: Mutex<IdMap<CancellationToken>>,
    /// Places for drivers making their first round of calls (see `drivers::Slot`).
    phases: tokio::sync::Semaphore,
    /// The reservations being worked on (trying, confirming, cancelling), as last saved:
    /// their drivers and waiters read them many times, and decoding a record each time
    /// was a tenth of the CPU under load. Written under the reservation's lock, after the
    /// log; never holds a reservation that is only waiting (those can be millions).
    working: Mutex<IdMap<Arc<Reservation>>>,
    /// With a shared store, reserved reservations this instance saved, as it saved them: the
    /// first guess of an update (a decision, a deadline), so that deciding reads nothing. A
    /// hint may be stale (another instance decided meanwhile); only a write, conditional on
    /// the revision, is ever made from one, and a hint that changes nothing is read again.
    hints: Mutex<IdMap<Arc<Reservation>>>,
    /// The reservations whose deadline timer is armed here, and whether they were decided
    /// since. Every timer fires, decided or not; one that finds its reservation decided
    /// skips it instead of reading the log (a read per transaction, a deadline later).
    armed: Mutex<IdMap<bool>>,
    /// For each reservation whose confirm or cancel phase waits to retry participants, what
    /// an operator's "retry now" fires to end the wait.
    retry_now: Mutex<IdMap<CancellationToken>>,
    /// Clients holding an answer (`Prefer: wait`) until a reservation's state changes.
    watchers: Mutex<IdMap<watch::Sender<Option<Arc<Reservation>>>>>,
    deadlines: DeadlineSender,
    metrics: Metrics,
    render: Render,
    tasks: TaskTracker,
    /// The runtime drivers run on (the one the coordinator was built on).
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    topology: Topology,
    /// Recovery has finished; writes that arrive before wait on it (see `admission`).
    ready: watch::Sender<bool>,
}

/// Everything the coordinator is built from.
pub struct Parts {
    pub store: Store,
    /// The participant calls (HTTP in the service).
    pub client: Arc<dyn Participants>,
    /// The spans of reservations (see [`Traces`]).
    pub traces: Traces,
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
    /// Embedded or shared log: decided once, by the composition root.
    pub topology: Topology,
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
                traces: parts.traces,
                retry: parts.retry,
                limits: parts.limits,
                clock: parts.clock,
                public_url: parts.public_url.trim_end_matches('/').to_owned(),
                locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                drivers: Mutex::new(IdMap::default()),
                phases: tokio::sync::Semaphore::new(drivers::PHASES_AT_ONCE),
                watchers: Mutex::new(IdMap::default()),
                retry_now: Mutex::new(IdMap::default()),
                working: Mutex::new(IdMap::default()),
                hints: Mutex::new(IdMap::default()),
                armed: Mutex::new(IdMap::default()),
                deadlines: parts.deadlines,
                metrics: parts.metrics,
                render: parts.render,
                tasks: parts.tasks,
                runtime: tokio::runtime::Handle::current(),
                shutdown: parts.shutdown,
                topology: parts.topology,
                ready: watch::Sender::new(false),
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
                matches!(r.state(), State::Confirming | State::Cancelling)
                    && r.decided_at().is_some_and(|at| at <= since)
            })
            .count()
    }

    /// The runtime that must run the store's calls, when the store talks to a database over
    /// the network (its connections live on the main runtime); `None` for the embedded log,
    /// callable from any thread.
    pub(crate) fn io_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.inner
            .topology
            .store_needs_main_runtime()
            .then(|| self.inner.runtime.clone())
    }

    /// Why a client's write would be refused now by the log (the database away, the disk
    /// full, slow or failed), if it would.
    #[must_use]
    pub fn write_refusal(&self) -> Option<String> {
        self.inner.store.write_refusal().map(|e| e.to_string())
    }

    /// Recovery has finished: the coordinator serves with every reservation resumed.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    pub(crate) fn mark_ready(&self) {
        self.inner.ready.send_replace(true);
    }

    /// Waits at most `limit` for recovery to finish; whether it has.
    pub(super) async fn wait_ready(&self, limit: Duration) -> bool {
        let mut ready = self.inner.ready.subscribe();
        let waited = tokio::time::timeout(limit, ready.wait_for(|r| *r)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

//! The transaction log, behind one interface with two implementations:
//!
//! - [`embedded`] (the default): sled in a local data directory, for one process. The only
//!   module that imports sled.
//! - [`postgres`] (`--store postgres://…`): tables in a PostgreSQL database shared by several
//!   coordinator processes. The only module that imports tokio-postgres.
//!
//! The coordinator sees only [`Store`]. Every write is conditional: it replaces a record only
//! if the record still has the revision it was read at ([`Reservation::revision`]), and fails
//! with [`StoreError::Conflict`] otherwise; the coordinator then reads again and re-applies its
//! change. Within one process that never happens (changes to a reservation are serialised);
//! across processes it is what makes two coordinators unable to both decide a reservation.
//!
//! A write returns once it is durable: after the group flush for sled, after the transaction
//! commits for PostgreSQL.

mod embedded;
mod listing;

mod postgres;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::{Reservation, ReservationId, State};
pub use embedded::{EmbeddedOptions, SyncMode};
pub use listing::{is_on_host, ListQuery, MAX_SCAN};
pub use postgres::PostgresOptions;

/// The log cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the data directory {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("the transaction log failed: {0}")]
    Log(String),
    #[error("the transaction log could not be made durable: {0}")]
    Flush(String),
    #[error("a blocking task on the log stopped: {0}")]
    Blocking(String),
    #[error("record {key} in the log is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the transaction log has {0} writes waiting for the disk; refusing more for now")]
    Overloaded(usize),
    /// The disk holding the log has less free space than `--disk-reserve`.
    #[error("the disk holding the log has {available} bytes free, below the reserve of {reserve} (--disk-reserve)")]
    DiskFull { available: u64, reserve: u64 },
    /// The disk holding the log had no room for a write that was not made (nothing stored;
    /// the log goes on).
    #[error("the disk holding the log is full: {0}")]
    NoSpace(String),
    /// A flush of the log has been running this long (longer than `--store-timeout`).
    #[error("the disk holding the log has not finished a flush for {0:?}")]
    SlowDisk(std::time::Duration),
    /// The record changed since it was read (another writer, maybe another process): read it
    /// again and re-apply the change.
    #[error("reservation {0} changed while it was being updated")]
    Conflict(ReservationId),
    /// The database cannot be reached right now; nothing can be said about the write but
    /// that it may not have happened (a retry is safe: writes are conditional).
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    /// The database answered with an error.
    #[error("the database refused an operation: {0}")]
    Database(String),
    /// The database could not be prepared at start (connection, schema).
    #[error("{0}")]
    Setup(String),
}

/// A client write admitted to the log (see [`Store::admit`]); hold it until the write is
/// durable.
#[must_use = "the admission counts only while it is held"]
pub struct Admission(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// A client's `Idempotency-Key`, stored with the reservation it created.
#[derive(Debug, Clone, Copy)]
pub struct KeyEntry<'a> {
    pub key: &'a str,
    /// SHA-256 of the canonical request body.
    pub fingerprint: [u8; 32],
}

/// Whether a write makes the writer the reservation's owner (shared stores; the embedded
/// log's one process owns everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// A client's request or a deadline changed it: the instance that did starts its work.
    Take,
    /// A participant's outcome was recorded: whoever owns it goes on owning it.
    Keep,
}

/// What one [`Store::purge_due`] did.
#[derive(Debug, Default)]
pub struct Purged {
    /// Entries looked at (records dropped, with the shared store).
    pub scanned: usize,
    /// The reservations dropped and the state each was in (the embedded log's; the shared
    /// store counts its states from the database).
    pub removed: Vec<(ReservationId, State)>,
}

/// How long finished reservations are kept: what the retention sweep needs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub retention: std::time::Duration,
    pub transaction_retention: std::time::Duration,
}

/// The transaction log. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// With the embedded log: how long a client's write waits for the disk.
    write_timeout: Option<std::time::Duration>,
    /// Client writes admitted and not yet durable, at most `max_waiting`.
    admitted: Arc<tokio::sync::Semaphore>,
    max_waiting: usize,
}

#[derive(Clone)]
enum Backend {
    Embedded(embedded::SledLog),
    Postgres(postgres::PgLog),
}

impl Store {
    /// Opens (or creates) the embedded log in `dir` and starts its flusher thread. Blocking:
    /// call it from `spawn_blocking` or before the runtime is busy.
    ///
    /// At most `max_waiting` client writes may wait for the disk at once ([`Store::admit`]).
    ///
    /// # Errors
    /// [`StoreError::Open`] when the directory cannot be used (permissions, another process
    /// holds it, an unreadable log).
    pub fn open(
        dir: &Path,
        options: &EmbeddedOptions,
        max_waiting: usize,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, StoreError> {
        let log = embedded::SledLog::open(dir, options, metrics)?;
        let mut store = Self::with(Backend::Embedded(log), max_waiting);
        store.write_timeout = Some(options.write_timeout);
        Ok(store)
    }

    /// Connects to PostgreSQL, creates or migrates the schema, and registers this process as
    /// a coordinator instance with a lease.
    ///
    /// # Errors
    /// [`StoreError::Setup`], one sentence naming the database (never its password).
    pub async fn connect(options: PostgresOptions, max_waiting: usize) -> Result<Self, StoreError> {
        let log = postgres::PgLog::connect(options).await?;
        Ok(Self::with(Backend::Postgres(log), max_waiting))
    }

    fn with(backend: Backend, max_waiting: usize) -> Self {
        Self {
            backend,
            write_timeout: None,
            admitted: Arc::new(tokio::sync::Semaphore::new(max_waiting)),
            max_waiting,
        }
    }

    /// Whether the store answered its last call (always true for the embedded log).
    #[must_use]
    pub fn is_reachable(&self) -> bool {
        match &self.backend {
            Backend::Embedded(_) => true,
            Backend::Postgres(log) => log.is_reachable(),
        }
    }

    /// Admits one client write, or refuses it when `max_waiting` are already waiting to be
    /// durable: a saturated log answers "later" instead of queueing without bound. Writes
    /// that finish work already decided (participant outcomes, deadlines) need no admission.
    ///
    /// # Errors
    /// [`StoreError::Overloaded`], or [`StoreError::Unavailable`] while the database is out
    /// of reach; nothing has been written then.
    /// Why a write cannot succeed now, if it cannot: the database cannot be reached; the
    /// embedded log failed, its disk is below its reserve, or a flush is overdue.
    #[must_use]
    pub fn write_refusal(&self) -> Option<StoreError> {
        match &self.backend {
            Backend::Embedded(log) => log
                .health()
                .refusal(self.write_timeout.unwrap_or(std::time::Duration::MAX)),
            Backend::Postgres(log) => (!log.is_reachable())
                .then(|| StoreError::Unavailable("the last calls to the database failed".into())),
        }
    }

    /// How long a client's write may wait for the log before it is answered (the write goes
    /// on): `--store-timeout` with the embedded log; `None` with PostgreSQL, whose every
    /// statement is bounded already.
    #[must_use]
    pub fn client_wait(&self) -> Option<std::time::Duration> {
        self.write_timeout
    }

    /// With the embedded log: resolves once the log has failed for good (a flush failed);
    /// the process must then stop and be restarted.
    #[must_use]
    pub fn failure(&self) -> Option<tokio::sync::watch::Receiver<Option<Arc<str>>>> {
        match &self.backend {
            Backend::Embedded(log) => Some(log.health().failed()),
            Backend::Postgres(_) => None,
        }
    }

    pub fn admit(&self) -> Result<Admission, StoreError> {
        if let Some(refusal) = self.write_refusal() {
            return Err(refusal);
        }
        self.admitted
            .clone()
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| StoreError::Overloaded(self.max_waiting))
    }

    /// Writes a new reservation (with its `Idempotency-Key`, atomically, when given) and
    /// returns once it is durable, with `reservation.revision` set. When the key is already
    /// taken, writes nothing and returns what it maps to.
    ///
    /// # Errors
    /// [`StoreError`]; the caller must not act on the reservation then.
    pub async fn create(
        &self,
        reservation: &mut Reservation,
        key: Option<KeyEntry<'_>>,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        match &self.backend {
            Backend::Embedded(log) => log.create(reservation, key.as_ref()).await,
            Backend::Postgres(log) => log.create(reservation, key.as_ref()).await,
        }
    }

    /// Replaces the reservation if its record still has `reservation.revision`, counting the
    /// revision up; returns once the change is durable.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the record changed (or was purged) since it was read;
    /// other [`StoreError`]s when the write failed. The caller must not act on it then.
    pub async fn replace(
        &self,
        reservation: &mut Reservation,
        ownership: Ownership,
    ) -> Result<(), StoreError> {
        self.write(reservation, ownership).await?;
        self.wait_durable().await
    }

    /// As [`Store::replace`], but may return before the change is durable: callers write
    /// several, then call [`Store::wait_durable`] once before anything acts on them.
    ///
    /// # Errors
    /// As [`Store::replace`].
    pub async fn write(
        &self,
        reservation: &mut Reservation,
        ownership: Ownership,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(log) => log.write(reservation),
            Backend::Postgres(log) => log.write(reservation, ownership).await,
        }
    }

    /// Whether this process owns the reservation's work, as last read or written.
    #[must_use]
    pub fn owns(&self, reservation: &Reservation) -> bool {
        match &self.backend {
            Backend::Embedded(_) => true,
            Backend::Postgres(log) => log.owns(reservation),
        }
    }

    /// Returns once everything written before the call is durable.
    ///
    /// # Errors
    /// [`StoreError::Flush`] when the flush fails.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(log) => log.wait_durable().await,
            // Each write is its own committed transaction.
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Reads one reservation.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails or the record cannot be decoded.
    pub async fn load(&self, id: ReservationId) -> Result<Option<Reservation>, StoreError> {
        match &self.backend {
            Backend::Embedded(log) => log.load(id),
            Backend::Postgres(log) => log.load(id).await,
        }
    }

    /// What an `Idempotency-Key` maps to: the reservation and the fingerprint of the body it
    /// was created with.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails or the entry is unreadable.
    pub async fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        match &self.backend {
            Backend::Embedded(log) => log.idempotency_key(key),
            Backend::Postgres(log) => log.idempotency_key(key).await,
        }
    }

    /// A page of reservations, newest first, as `query` filters them; and the cursor of the
    /// next page (`None`: nothing older matches). See [`ListQuery`].
    ///
    /// # Errors
    /// [`StoreError`] when the store fails or a record cannot be decoded.
    pub async fn newest_first(
        &self,
        query: ListQuery,
    ) -> Result<(Vec<Reservation>, Option<ReservationId>), StoreError> {
        match &self.backend {
            Backend::Embedded(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.newest_first(&query))
                    .await
                    .map_err(|e| StoreError::Blocking(e.to_string()))?
            }
            Backend::Postgres(log) => log.newest_first(&query).await,
        }
    }

    /// Every reservation in the embedded log, oldest first, for recovery at start (a full
    /// scan; blocking; it also restores the log's retention index where a crash lost an
    /// entry). A shared store is not scanned: its reservations are taken over
    /// through leases ([`Store::claim_orphans`]).
    pub fn local_records(&self) -> Box<dyn Iterator<Item = Result<Reservation, StoreError>> + '_> {
        match &self.backend {
            Backend::Embedded(log) => Box::new(log.all()),
            Backend::Postgres(_) => Box::new(std::iter::empty()),
        }
    }

    /// Group commits run since the log was opened: the embedded log's flushes, PostgreSQL's
    /// transactions of reservation writes.
    #[must_use]
    pub fn flushes(&self) -> u64 {
        match &self.backend {
            Backend::Embedded(log) => log.flushes(),
            Backend::Postgres(log) => log.commits(),
        }
    }

    // ---- shared stores: leases, takeover, retention ------------------------------------

    /// Renews this process's lease (a no-op for the embedded log).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(log) => log.heartbeat().await,
        }
    }

    /// Takes over up to `limit` unfinished reservations whose owner's lease has lapsed; they
    /// are this process's to finish from now on.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn claim_orphans(&self, limit: usize) -> Result<Vec<Reservation>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(log) => log.claim_orphans(limit).await,
        }
    }

    /// Whether a call failed to reach the database since the last look (and forgets it): a
    /// write may then have committed without its answer, and what should have followed it
    /// (a driver, a deadline) may not have started. Always false for the embedded log.
    #[must_use]
    pub fn take_interrupted(&self) -> bool {
        match &self.backend {
            Backend::Embedded(_) => false,
            Backend::Postgres(log) => log.take_interrupted(),
        }
    }

    /// Up to `limit` unfinished reservations this process owns, with ids after `after`
    /// (oldest first): what it resumes once the database is back after an interruption.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn owned_active(
        &self,
        after: Option<ReservationId>,
        limit: usize,
    ) -> Result<Vec<Reservation>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(log) => log.owned_active(after, limit).await,
        }
    }

    /// Deletes up to `limit` reservations whose retention ended before `now`. Bounded so
    /// that no statement holds many locks for long; the caller asks again while
    /// [`Purged::scanned`] reaches `limit`.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails.
    pub async fn purge_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Purged, StoreError> {
        match &self.backend {
            Backend::Embedded(log) => {
                // Up to `limit` reads and removals: on a blocking thread, not a runtime worker.
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.purge_due(now, limit))
                    .await
                    .map_err(|e| StoreError::Blocking(e.to_string()))?
            }
            Backend::Postgres(log) => Ok(Purged {
                scanned: log.purge_due(now, limit).await?,
                removed: Vec::new(),
            }),
        }
    }

    /// How many reservations are in each state, across every process.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails.
    pub async fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Postgres(log) => log.count_by_state().await,
        }
    }

    /// Ends this process's lease at once (at shutdown), so that others take over its
    /// unfinished reservations without waiting for it to lapse.
    /// Closes the log once nothing else uses it: the embedded log's files are released when
    /// this returns (bounded by `limit`; a disk that no longer answers is left behind).
    pub async fn close(self, limit: std::time::Duration) {
        if let Backend::Embedded(log) = self.backend {
            let closing = tokio::task::spawn_blocking(move || log.close());
            if tokio::time::timeout(limit, closing).await.is_err() {
                tracing::warn!("the transaction log did not close in time");
            }
        }
    }

    pub async fn release(&self) {
        if let Backend::Postgres(log) = &self.backend {
            log.release().await;
        }
    }
}

/// For the benchmark and the chaos soak: a URL for a new, empty schema of its own in the
/// database `TCC_TEST_POSTGRES` names, or `None` when the variable is unset.
///
/// # Panics
/// When the database cannot be reached or the schema cannot be created.
#[doc(hidden)]
pub async fn scratch_database_from_env() -> Option<String> {
    let url = std::env::var("TCC_TEST_POSTGRES").ok()?;
    Some(postgres::scratch_schema(&url).await)
}

/// For tests: a new, empty schema in the database `url` names (a multi-host URL too), and
/// the URL that uses it.
///
/// # Panics
/// When the database cannot be reached.
#[doc(hidden)]
pub async fn scratch_database(url: &str) -> String {
    postgres::scratch_schema(url).await
}

/// For the PostgreSQL tests, which are `#[ignore = "needs TCC_TEST_POSTGRES"]`: a new, empty
/// schema in the database `TCC_TEST_POSTGRES` names. Run them with `--include-ignored` where
/// one is given (`.ci/postgres.sh` starts one; see README); without it, they fail, never pass
/// by doing nothing.
///
/// # Panics
/// When `TCC_TEST_POSTGRES` is unset, or its database cannot be reached.
#[doc(hidden)]
pub async fn required_scratch_database() -> String {
    scratch_database_from_env().await.expect(
        "this test needs PostgreSQL: set TCC_TEST_POSTGRES=postgres://… (README's test command \
         starts a throwaway cluster and runs every test against it)",
    )
}

#[cfg(test)]
mod suite;

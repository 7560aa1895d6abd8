//! The shared log: tables in a PostgreSQL database, for several coordinator processes.
//!
//! # Schema (created and migrated at start; `tcc_schema` holds its version)
//!
//! - `tcc_reservations`: one row per reservation: `id` (the UUIDv7, so ids sort by creation
//!   time), `version` (the revision: every write is `… WHERE id = $1 AND version = $2`),
//!   `state`, `owner` (the instance that works on it), `active` (not finished, or a callback
//!   still to deliver: what a takeover looks for), `purge_at` (when retention ends),
//!   `idempotency_key` (unique) with the body's `fingerprint`, and `record`: the same
//!   versioned record bytes as the embedded log (see `record`).
//! - `tcc_instances`: one row per coordinator process: its id, a name for operators, and
//!   `lease_until`, renewed by [`PgLog::heartbeat`].
//!
//! # Ownership
//!
//! Every write makes the writer the reservation's owner. An instance whose lease lapses (it
//! died, or lost the database for longer than the lease) loses its reservations to the first
//! live instance that claims them ([`PgLog::claim_orphans`]: `UPDATE … WHERE id IN (SELECT …
//! FOR UPDATE SKIP LOCKED) RETURNING`); a claim counts the version up, so a late write by
//! the old owner fails its condition. Lease times are the database's clock (`now()`), so
//! instances need not agree on theirs. No advisory locks, no LISTEN/NOTIFY: plain SQL that
//! PostgreSQL-compatible distributed databases also run. Every statement is retried on
//! serialization failures and deadlocks (SQLSTATE 40001, 40P01).
//!
//! # Durability
//!
//! A write returns after its commit. The writes waiting at one moment are committed
//! together, in one transaction (see `batch`); each keeps its own outcome.
//!
//! # Rooms
//!
//! This file: the statements the store runs. `batch`: the group commit of reservation
//! writes. `connection`: setting up (connect, migrate,
//! register; a database out of reach is waited for, a refusal stops the start), TLS, and how
//! the driver's errors read. `schema`: the migrations, and scratch schemas for tests.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

mod batch;
mod connection;
mod failover;
mod schema;

use super::listing::{Next, Page};
use super::{record, KeyEntry, ListQuery, Ownership, Retention, StoreError};
use crate::domain::{Reservation, ReservationId, State};
use batch::{Write, Written};
use connection::db_error;
pub(super) use schema::scratch_schema;

/// How to reach the database and how this instance takes part.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database?…` (libpq's URL form).
    pub url: String,
    /// Connections this process keeps open at most.
    pub connections: usize,
    /// How long this instance's lease lasts without a heartbeat.
    pub lease: Duration,
    /// When finished reservations become purgeable.
    pub retention: Retention,
    /// How operators recognise this instance in `tcc_instances` (its public URL).
    pub instance_name: String,
    /// More certificate authorities (PEM) trusted for the database's certificate, besides
    /// the system's; used with `sslmode=require`.
    pub ca: Option<std::path::PathBuf>,
    /// How long one statement (or a batch's transaction) may go unanswered before its
    /// connection is dropped and the caller told the database is unavailable; also how long
    /// a statement waits for a free connection.
    pub statement_timeout: Duration,
}

/// How long connecting to one host may take as a whole (TCP, TLS, authentication, the
/// read-write check), unless the URL's `connect_timeout` says otherwise. Short, because a
/// primary that fails over is found by trying again: a standby promoted in its place is
/// connected to on the next attempt.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const INSERT: &str = "INSERT INTO tcc_reservations \
    (id, version, state, owner, active, purge_at, record, idempotency_key, fingerprint) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (idempotency_key) DO NOTHING";
const UPDATE: &str = "UPDATE tcc_reservations \
    SET version = $3, state = $4, owner = CASE WHEN $9 THEN $5 ELSE owner END, active = $6, \
        purge_at = $7, record = $8 \
    WHERE id = $1 AND version = $2 RETURNING owner";
const CLAIM: &str = "UPDATE tcc_reservations SET owner = $1, version = version + 1 \
    WHERE id IN (SELECT r.id FROM tcc_reservations r \
        WHERE r.active AND r.owner IS DISTINCT FROM $1 \
        AND NOT EXISTS (SELECT 1 FROM tcc_instances i WHERE i.id = r.owner AND i.lease_until > now()) \
        ORDER BY r.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
    RETURNING id, version, record, owner";
const LOAD_MANY: &str =
    "SELECT id, version, record, owner FROM tcc_reservations WHERE id = ANY($1)";
const OWNED: &str = "SELECT id, version, record, owner FROM tcc_reservations \
    WHERE active AND owner = $1 AND id > $2 ORDER BY id LIMIT $3";
const LIST: &str = "SELECT id, version, record, owner FROM tcc_reservations \
    WHERE ($1::uuid IS NULL OR id < $1) AND ($2::text IS NULL OR state = $2) \
    ORDER BY id DESC LIMIT $3";
/// Rows fetched at once while a listing filters by host or text. Two in the unit tests, so
/// that the store suite's listings cross chunks.
#[cfg(not(test))]
const LIST_CHUNK: usize = 500;
#[cfg(test)]
const LIST_CHUNK: usize = 2;
const PURGE: &str = "DELETE FROM tcc_reservations WHERE id IN (SELECT id FROM tcc_reservations \
    WHERE purge_at <= $1 ORDER BY purge_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// The PostgreSQL log. Cheap to clone.
#[derive(Clone)]
pub(super) struct PgLog {
    pool: Pool,
    /// This process in `tcc_instances`.
    instance: Uuid,
    options: Arc<PostgresOptions>,
    /// `user@host:port/database`, for messages (never the password).
    target: Arc<str>,
    /// Whether the last call reached the database.
    reachable: Arc<AtomicBool>,
    /// The schema is ready and this instance registered: until then every call answers
    /// `Unavailable` without querying (the tables may not exist yet).
    set_up: Arc<AtomicBool>,
    /// A call failed to reach the database since [`PgLog::take_interrupted`] last looked: a
    /// write may have committed without its answer, so its follow-up work may not have run.
    interrupted: Arc<AtomicBool>,
    /// When a statement last found the database gone: older pooled connections are not used.
    failures: failover::Failures,
    /// How long connecting to one host may take (the URL's `connect_timeout`, or
    /// [`CONNECT_TIMEOUT`]).
    connect_timeout: Duration,
    /// The group commit every reservation write goes through (`None` in the log the
    /// batching tasks themselves run their statements with).
    writer: Option<batch::Writer>,
    /// Point reads, gathered the same way (`None` likewise).
    reader: Option<batch::Reader>,
}

impl PgLog {
    pub(super) fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub(super) fn take_interrupted(&self) -> bool {
        self.interrupted.swap(false, Ordering::Relaxed)
    }

    /// Up to `limit` unfinished reservations this instance owns, with ids after `after`.
    pub(super) async fn owned_active(
        &self,
        after: Option<ReservationId>,
        limit: usize,
    ) -> Result<Vec<Reservation>, StoreError> {
        let (instance, limit) = (self.instance, i64::try_from(limit).unwrap_or(i64::MAX));
        let after = after.map_or(Uuid::nil(), |id| *id.as_uuid());
        let rows = self
            .run(move |c| async move {
                let statement = c.prepare_cached(OWNED).await?;
                c.query(&statement, &[&instance, &after, &limit]).await
            })
            .await?;
        rows.iter().map(decode).collect()
    }

    fn lease_seconds(&self) -> f64 {
        self.options.lease.as_secs_f64()
    }

    /// Runs `op` on a pooled connection, again on serialization failures and deadlocks, and
    /// turns its errors into [`StoreError`]s (connection trouble: `Unavailable`).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Object) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        if !self.set_up.load(Ordering::Acquire) {
            self.interrupted.store(true, Ordering::Relaxed);
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL at {} has not been reached since this instance started",
                self.target
            )));
        }
        let policy = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(5))
            .with_max_interval(Duration::from_millis(500))
            .with_max_elapsed_time(Some(Duration::from_secs(10)))
            .build();
        let (pool, op, limit) = (&self.pool, &op, self.options.statement_timeout);
        let result = backoff::future::retry(policy, || async move {
            let client = pool
                .get()
                .await
                .map_err(|e| backoff::Error::permanent(self.pool_error(e)))?;
            // The connection goes with the future: on a timeout it is dropped unanswered and
            // returns to the pool, which no longer hands it out (`Failures`).
            let Ok(outcome) = tokio::time::timeout(limit, op(client)).await else {
                self.failures.mark();
                return Err(backoff::Error::permanent(StoreError::Unavailable(format!(
                    "PostgreSQL at {} did not answer within {} (--store-timeout): a server gone \
                     silent (a partition, a hung host, a primary that failed over); its \
                     connections are dropped",
                    self.target,
                    humantime::format_duration(limit)
                ))));
            };
            outcome.map_err(|e| {
                let code = e.code();
                if code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                    || code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                {
                    return backoff::Error::transient(db_error(e));
                }
                if failover::server_is_gone(&e) {
                    // A closed connection, a server shutting down or turned read-only: the
                    // others made before now may lead to the same server.
                    self.failures.mark();
                }
                backoff::Error::permanent(db_error(e))
            })
        })
        .await;
        let reached = !matches!(result, Err(StoreError::Unavailable(_)));
        self.reachable.store(reached, Ordering::Relaxed);
        if !reached {
            self.interrupted.store(true, Ordering::Relaxed);
        }
        result
    }

    pub(super) async fn create(
        &self,
        reservation: &mut Reservation,
        key: Option<&KeyEntry<'_>>,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        reservation.set_revision(1);
        let row = Row::of(reservation, &self.options.retention);
        let inserted = self
            .submit(Write::Insert {
                id: *reservation.id().as_uuid(),
                row,
                owner: self.instance,
                key: key.map(|k| k.key.to_owned()),
                fingerprint: key.map(|k| k.fingerprint.to_vec()),
            })
            .await;
        match inserted {
            Ok(Written::Inserted(1)) => {
                reservation.set_owner(Some(self.instance));
                Ok(None)
            }
            Ok(_) => {
                reservation.set_revision(0);
                let key = key.map_or("", |k| k.key);
                self.idempotency_key(key)
                    .await?
                    .map(Some)
                    .ok_or(StoreError::Conflict(reservation.id()))
            }
            Err(e) => {
                reservation.set_revision(0);
                Err(e)
            }
        }
    }

    pub(super) async fn write(
        &self,
        reservation: &mut Reservation,
        ownership: Ownership,
    ) -> Result<(), StoreError> {
        let expected = version(reservation.revision())?;
        reservation.set_revision(reservation.revision() + 1);
        let row = Row::of(reservation, &self.options.retention);
        let updated = self
            .submit(Write::Update {
                id: *reservation.id().as_uuid(),
                expected,
                row,
                owner: self.instance,
                take: ownership == Ownership::Take,
            })
            .await;
        match updated {
            Ok(Written::Updated(Some(owner))) => {
                reservation.set_owner(owner);
                Ok(())
            }
            Ok(_) => {
                reservation.set_revision(reservation.revision() - 1);
                Err(StoreError::Conflict(reservation.id()))
            }
            Err(e) => {
                reservation.set_revision(reservation.revision() - 1);
                Err(e)
            }
        }
    }

    /// Writes a row: through the group commit, or alone in the writer's own log.
    async fn submit(&self, write: Write) -> Result<Written, StoreError> {
        match &self.writer {
            Some(writer) => self.bounded(writer.write(write)).await,
            None => batch::alone(self, &write).await,
        }
    }

    /// Waits for a gathered job at most as long as its batch may take (connecting, then a
    /// statement, twice over for the batch before it): no request waits on a queue behind a
    /// silent server. A job given up on before its batch starts is left out of it; one
    /// already sent may commit without its answer, as any write whose connection is lost.
    async fn bounded<T>(
        &self,
        job: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = (self.connect_timeout + self.options.statement_timeout) * 2;
        tokio::time::timeout(limit, job).await.unwrap_or_else(|_| {
            self.interrupted.store(true, Ordering::Relaxed);
            Err(StoreError::Unavailable(format!(
                "PostgreSQL at {} did not answer within {}",
                self.target,
                humantime::format_duration(limit)
            )))
        })
    }

    /// Transactions the group commit has committed since the start.
    pub(super) fn commits(&self) -> u64 {
        self.writer.as_ref().map_or(0, batch::Writer::commits)
    }

    pub(super) fn owns(&self, reservation: &Reservation) -> bool {
        reservation.owner() == Some(self.instance)
    }

    pub(super) async fn load(&self, id: ReservationId) -> Result<Option<Reservation>, StoreError> {
        match &self.reader {
            Some(reader) => self.bounded(reader.load(*id.as_uuid())).await,
            None => batch::load_alone(self, *id.as_uuid()).await,
        }
    }

    pub(super) async fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        let row = self
            .run(move |c| async move {
                let statement = c
                    .prepare_cached(
                        "SELECT id, fingerprint FROM tcc_reservations WHERE idempotency_key = $1",
                    )
                    .await?;
                c.query_opt(&statement, &[&key]).await
            })
            .await?;
        row.map(|row| {
            let id: Uuid = row.get(0);
            let fingerprint: Vec<u8> = row.get(1);
            let fingerprint = fingerprint.try_into().map_err(|_| StoreError::Corrupt {
                key: format!("idempotency key {key:?}"),
                detail: "the fingerprint is not 32 bytes".into(),
            })?;
            Ok((ReservationId::from_bytes(id.into_bytes()), fingerprint))
        })
        .transpose()
    }

    /// A listing page. The state is filtered by the query; host and text filters by
    /// [`Page`], over chunks of rows fetched newest first.
    pub(super) async fn newest_first(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<Reservation>, Option<ReservationId>), StoreError> {
        let chunk = if query.filters_content() {
            LIST_CHUNK
        } else {
            // The page and one more, to know whether a next page has anything.
            query.limit.saturating_add(1)
        };
        let fetch = i64::try_from(chunk).unwrap_or(i64::MAX);
        let state = query.state.map(State::as_str);
        let mut cursor = query.start_before().map(|id| *id.as_uuid());
        let mut page = Page::new(query);
        loop {
            let rows = self
                .run(move |c| async move {
                    let statement = c.prepare_cached(LIST).await?;
                    c.query(&statement, &[&cursor, &state, &fetch]).await
                })
                .await?;
            let complete = rows.len() < chunk;
            for row in &rows {
                let r = decode(row)?;
                cursor = Some(*r.id().as_uuid());
                match page.offer(r) {
                    Next::More => {}
                    Next::Done(next) => return Ok(page.finish(Some(next))),
                    Next::End => return Ok(page.finish(None)),
                }
            }
            if complete {
                return Ok(page.finish(None));
            }
        }
    }

    pub(super) async fn heartbeat(&self) -> Result<(), StoreError> {
        if !self.set_up.load(Ordering::Acquire) {
            self.set_up().await?;
        }
        let (instance, name, lease) = (
            self.instance,
            &self.options.instance_name,
            self.lease_seconds(),
        );
        self.run(move |c| async move {
            let renewed = c
                .execute(
                    "UPDATE tcc_instances SET lease_until = now() + make_interval(secs => $2) \
                     WHERE id = $1",
                    &[&instance, &lease],
                )
                .await?;
            if renewed == 0 {
                // An operator deleted the row: register again.
                c.execute(
                    "INSERT INTO tcc_instances (id, name, lease_until) \
                     VALUES ($1, $2, now() + make_interval(secs => $3)) ON CONFLICT (id) DO NOTHING",
                    &[&instance, name, &lease],
                )
                .await?;
            }
            // Instances dead for a day are only noise for operators.
            c.execute(
                "DELETE FROM tcc_instances WHERE lease_until < now() - interval '1 day'",
                &[],
            )
            .await
        })
        .await?;
        Ok(())
    }

    pub(super) async fn claim_orphans(&self, limit: usize) -> Result<Vec<Reservation>, StoreError> {
        let (instance, limit) = (self.instance, i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self
            .run(move |c| async move {
                let statement = c.prepare_cached(CLAIM).await?;
                c.query(&statement, &[&instance, &limit]).await
            })
            .await?;
        rows.iter().map(decode).collect()
    }

    pub(super) async fn purge_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let deleted = self
            .run(move |c| async move {
                let statement = c.prepare_cached(PURGE).await?;
                c.execute(&statement, &[&now, &limit]).await
            })
            .await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    pub(super) async fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        let rows = self
            .run(|c| async move {
                c.query(
                    "SELECT state, count(*) FROM tcc_reservations GROUP BY state",
                    &[],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let name: &str = row.get(0);
                let count: i64 = row.get(1);
                let state = State::ALL.into_iter().find(|s| s.as_str() == name)?;
                Some((state, u64::try_from(count).unwrap_or(0)))
            })
            .collect())
    }

    pub(super) async fn release(&self) {
        let instance = self.instance;
        let released = self
            .run(move |c| async move {
                c.execute(
                    "UPDATE tcc_instances SET lease_until = now() WHERE id = $1",
                    &[&instance],
                )
                .await
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, "could not end this instance's lease; others take over its reservations when it lapses");
        }
    }
}

/// The columns written for a reservation.
struct Row {
    version: i64,
    state: &'static str,
    active: bool,
    purge_at: Option<DateTime<Utc>>,
    record: Vec<u8>,
}

impl Row {
    fn of(r: &Reservation, retention: &Retention) -> Self {
        Self {
            version: i64::try_from(r.revision()).unwrap_or(i64::MAX),
            state: r.state().as_str(),
            active: !r.state().is_terminal() || r.callback_due(),
            purge_at: r.purge_at(retention.retention, retention.transaction_retention),
            record: record::encode(r, record::Format::Json),
        }
    }
}

fn version(revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .map_err(|_| StoreError::Database(format!("revision {revision} is out of range")))
}

/// Decodes a row of `id, version, record, owner` (what `LOAD`, `LIST` and `CLAIM` return);
/// the row's version is the revision (a claim counts it up
/// without rewriting the record).
fn decode(row: &tokio_postgres::Row) -> Result<Reservation, StoreError> {
    let id: Uuid = row.get(0);
    let version: i64 = row.get(1);
    let mut reservation = record::decode(ReservationId::from_bytes(id.into_bytes()), row.get(2))?;
    reservation.set_revision(u64::try_from(version).unwrap_or(0));
    reservation.set_owner(row.get(3));
    Ok(reservation)
}

//! Group commit, and reads gathered the same way: the writes waiting at one moment go to
//! the database together, pipelined on one connection inside one transaction, and the point
//! reads waiting at one moment are one `SELECT … WHERE id = ANY($1)`. A busy coordinator so
//! commits once for many reservations instead of once per write: PostgreSQL already shares
//! WAL flushes between concurrent commits, but every statement and every commit still costs
//! the server its bookkeeping and the coordinator a round trip.
//!
//! A write alone (an idle coordinator) runs as one statement without `BEGIN`/`COMMIT`, as
//! before. Each write keeps its own outcome: a conditional `UPDATE` that matched no row is
//! that write's conflict, not the batch's. Statements run in the order of their ids, so that
//! two instances' batches lock rows in the same order; a deadlock or serialization failure
//! retries the whole batch (as [`PgLog::run`] does for any statement), and any other error
//! runs the batch's writes again one by one, so one write the database refuses fails alone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::{GenericClient, Statement};
use uuid::Uuid;

use super::{decode, PgLog, Row, StoreError, INSERT, LOAD_MANY, UPDATE};
use crate::domain::Reservation;

/// Most writes committed together, and most ids read by one statement.
const MOST_PER_BATCH: usize = 256;

/// Most batches of each kind sent at once, each on its own connection (capped by the pool's
/// size): while they are out, the work that arrives waits together for the next.
const BATCHES_IN_FLIGHT: usize = 4;

/// Gathers the jobs that wait at one moment into batches and runs them, a few at once.
struct Gatherer<J>(mpsc::UnboundedSender<J>);

impl<J> Clone for Gatherer<J> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<J: Send + 'static> Gatherer<J> {
    /// Starts the task on the current runtime; it ends when the last clone is dropped.
    fn start<F, Fut>(connections: usize, run: F) -> Self
    where
        F: Fn(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<J>();
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT.min(connections).max(1)));
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MOST_PER_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let running = run(batch);
                tokio::spawn(async move {
                    running.await;
                    drop(slot);
                });
            }
        });
        Self(jobs)
    }

    /// Queues a job and waits for the answer it carries the sender of.
    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> J) -> Result<T, StoreError> {
        let stopped = || StoreError::Log("the database's batching task has stopped".into());
        let (done, answer) = oneshot::channel();
        self.0.send(job(done)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

/// Point reads, gathered.
#[derive(Clone)]
pub(super) struct Reader(Gatherer<ReadJob>);

struct ReadJob {
    id: Uuid,
    done: oneshot::Sender<Result<Option<Reservation>, StoreError>>,
}

impl Reader {
    /// `log` runs the statements (and must not read through this reader itself).
    pub(super) fn start(log: PgLog, connections: usize) -> Self {
        Self(Gatherer::start(connections, move |batch| {
            let log = log.clone();
            async move { read_all(&log, batch).await }
        }))
    }

    /// Reads one reservation, together with whatever else is being read.
    pub(super) async fn load(&self, id: Uuid) -> Result<Option<Reservation>, StoreError> {
        self.0.ask(|done| ReadJob { id, done }).await?
    }
}

/// Reads one reservation as a statement of its own.
pub(super) async fn load_alone(log: &PgLog, id: Uuid) -> Result<Option<Reservation>, StoreError> {
    rows_of(log, &[id]).await?.first().map(decode).transpose()
}

async fn rows_of(log: &PgLog, ids: &[Uuid]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    log.run(move |c| async move {
        let statement = c.prepare_cached(LOAD_MANY).await?;
        c.query(&statement, &[&ids]).await
    })
    .await
}

async fn read_all(log: &PgLog, mut batch: Vec<ReadJob>) {
    // Readers that gave up waiting (`PgLog::bounded`, a dropped request) are not read for.
    batch.retain(|job| !job.done.is_closed());
    if batch.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = batch.iter().map(|job| job.id).collect();
    match rows_of(log, &ids).await {
        Ok(rows) => {
            let by_id: HashMap<Uuid, &tokio_postgres::Row> =
                rows.iter().map(|row| (row.get(0), row)).collect();
            for job in batch {
                let read = by_id.get(&job.id).map(|row| decode(row)).transpose();
                // The reader may have stopped waiting (its request was dropped).
                let _ = job.done.send(read);
            }
        }
        Err(error) => {
            for job in batch {
                let _ = job.done.send(Err(again(&error)));
            }
        }
    }
}

/// The same failure, told to another of a batch's jobs.
fn again(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(text) => StoreError::Unavailable(text.clone()),
        StoreError::Database(text) => StoreError::Database(text.clone()),
        other => StoreError::Log(other.to_string()),
    }
}

/// One write of a reservation's row.
pub(super) enum Write {
    Insert {
        id: Uuid,
        row: Row,
        owner: Uuid,
        key: Option<String>,
        fingerprint: Option<Vec<u8>>,
    },
    Update {
        id: Uuid,
        expected: i64,
        row: Row,
        owner: Uuid,
        take: bool,
    },
}

impl Write {
    fn id(&self) -> Uuid {
        match self {
            Write::Insert { id, .. } | Write::Update { id, .. } => *id,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy)]
pub(super) enum Written {
    /// Rows inserted: none when the idempotency key was taken already.
    Inserted(u64),
    /// The reservation's owner after the update, or `None` when its version had moved on.
    Updated(Option<Option<Uuid>>),
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<Written, StoreError>>,
}

/// Writes, gathered: the group commit.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: Gatherer<Job>,
    /// Transactions committed (a batch, or a write alone).
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// `log` runs the statements (and must not write through this writer itself).
    pub(super) fn start(log: PgLog, connections: usize) -> Self {
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let jobs = Gatherer::start(connections, move |batch| {
            let (log, counted) = (log.clone(), counted.clone());
            async move {
                let committed = commit(&log, batch).await;
                counted.fetch_add(committed, Ordering::Relaxed);
            }
        });
        Self { jobs, commits }
    }

    /// Transactions committed since the start.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Writes, together with whatever else is being written, and returns once committed.
    pub(super) async fn write(&self, write: Write) -> Result<Written, StoreError> {
        self.jobs.ask(|done| Job { write, done }).await?
    }
}

/// Commits a batch and tells each write its outcome; returns the transactions committed.
async fn commit(log: &PgLog, mut batch: Vec<Job>) -> u64 {
    // Writers that gave up waiting (`PgLog::bounded`, a dropped request) are not written
    // for: they were told the database is unavailable.
    batch.retain(|job| !job.done.is_closed());
    if batch.is_empty() {
        return 0;
    }
    batch.sort_by_key(|job| job.write.id());
    let writes: Vec<&Write> = batch.iter().map(|job| &job.write).collect();
    let mut committed = 1;
    let outcomes: Vec<_> = match together(log, &writes).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        // The database is away: nothing is known of any of them.
        Err(error @ StoreError::Unavailable(_)) => {
            writes.iter().map(|_| Err(again(&error))).collect()
        }
        Err(error) if writes.len() == 1 => vec![Err(error)],
        // One of them was refused: find which, each in a transaction of its own.
        Err(_) => {
            let alone = join_all(writes.iter().map(|w| alone(log, w))).await;
            committed = alone.iter().filter(|w| w.is_ok()).count() as u64;
            alone
        }
    };
    if outcomes.iter().all(Result::is_err) {
        committed = 0;
    }
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        // The writer may have stopped waiting (its request was dropped): nothing to tell.
        let _ = job.done.send(outcome);
    }
    committed
}

/// Runs one write as a statement of its own.
pub(super) async fn alone(log: &PgLog, write: &Write) -> Result<Written, StoreError> {
    Ok(together(log, &[write]).await?.remove(0))
}

/// Runs `writes` in one transaction (one alone: as a single statement).
async fn together(log: &PgLog, writes: &[&Write]) -> Result<Vec<Written>, StoreError> {
    log.run(|mut c| async move {
        let insert = c.prepare_cached(INSERT).await?;
        let update = c.prepare_cached(UPDATE).await?;
        if let [write] = writes {
            return Ok(vec![apply(&**c, &insert, &update, write).await?]);
        }
        let transaction = c.transaction().await?;
        let client: &tokio_postgres::Transaction<'_> = &transaction;
        // Every statement is sent before any answer is awaited: one round trip for all.
        let written = join_all(writes.iter().map(|w| apply(client, &insert, &update, w)))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        transaction.commit().await?;
        Ok(written)
    })
    .await
}

async fn apply<C: GenericClient + Sync>(
    client: &C,
    insert: &Statement,
    update: &Statement,
    write: &Write,
) -> Result<Written, tokio_postgres::Error> {
    match write {
        Write::Insert {
            id,
            row,
            owner,
            key,
            fingerprint,
        } => {
            let inserted = client
                .execute(
                    insert,
                    &[
                        id,
                        &row.version,
                        &row.state,
                        owner,
                        &row.active,
                        &row.purge_at,
                        &row.record,
                        key,
                        fingerprint,
                    ],
                )
                .await?;
            Ok(Written::Inserted(inserted))
        }
        Write::Update {
            id,
            expected,
            row,
            owner,
            take,
        } => {
            let updated = client
                .query_opt(
                    update,
                    &[
                        id,
                        expected,
                        &row.version,
                        &row.state,
                        owner,
                        &row.active,
                        &row.purge_at,
                        &row.record,
                        take,
                    ],
                )
                .await?;
            Ok(Written::Updated(updated.map(|r| r.get(0))))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{PostgresOptions, Retention};

    async fn log() -> PgLog {
        let url = crate::store::required_scratch_database().await;
        PgLog::connect(PostgresOptions {
            url,
            connections: 2,
            lease: Duration::from_secs(10),
            retention: Retention {
                retention: Duration::from_secs(60),
                transaction_retention: Duration::from_secs(60),
            },
            instance_name: "batch test".into(),
            ca: None,
            statement_timeout: Duration::from_secs(2),
        })
        .await
        .unwrap()
    }

    fn insert(log: &PgLog, key: &str) -> (Job, oneshot::Receiver<Result<Written, StoreError>>) {
        let r = crate::domain::Reservation::new(
            crate::domain::ReservationId::new(),
            chrono::Utc::now(),
            Duration::from_secs(30),
            vec![],
            serde_json::Map::new(),
            Duration::from_secs(5),
        );
        let (done, outcome) = oneshot::channel();
        let write = Write::Insert {
            id: *r.id().as_uuid(),
            row: Row::of(&r, &log.options.retention),
            owner: log.instance,
            key: Some(key.to_owned()),
            fingerprint: Some(vec![0; 32]),
        };
        (Job { write, done }, outcome)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs TCC_TEST_POSTGRES"]
    async fn a_write_the_database_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
        let log = log().await;
        let (mut batch, mut outcomes) = (Vec::new(), Vec::new());
        for n in 0..10 {
            // PostgreSQL's text cannot hold a NUL: that insert is refused.
            let key = if n == 4 {
                "bad\0key".to_owned()
            } else {
                format!("key-{n}-{}", Uuid::new_v4())
            };
            let (job, outcome) = insert(&log, &key);
            batch.push(job);
            outcomes.push(outcome);
        }
        commit(&log, batch).await;
        for (n, outcome) in outcomes.into_iter().enumerate() {
            let outcome = outcome.await.unwrap();
            if n == 4 {
                assert!(
                    matches!(outcome, Err(StoreError::Database(_))),
                    "{outcome:?}"
                );
            } else {
                assert!(
                    matches!(outcome, Ok(Written::Inserted(1))),
                    "write {n}: {outcome:?}"
                );
            }
        }
    }
}

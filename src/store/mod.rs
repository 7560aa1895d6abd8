//! The transaction log: the only module that imports sled.
//!
//! # Layout (format version 1)
//!
//! One sled `Db` per process, in the data directory, with these trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `reservations` | the id's 16 bytes (UUIDv7, big-endian, so keys sort by creation time) | `[1]` followed by the JSON of a [`record::ReservationV1`] |
//! | `idempotency` | the client's `Idempotency-Key`, UTF-8 | `[1]`, the reservation id (16 bytes), the SHA-256 of the canonical request body (32 bytes) |
//!
//! The first byte of every value is the record's format version; a reader refuses versions it
//! does not know instead of guessing. Records are separate structs from the domain's, so the
//! domain can change without rewriting the log.
//!
//! # Durability
//!
//! [`Store::save`] returns only after the write is flushed by the [`GroupCommit`] task, which
//! flushes once for every writer waiting at that moment. What a flush survives depends on
//! [`SyncMode`]. This module never calls sled's `flush_async` (it deadlocks with 7 or more in
//! flight, spacejam/sled#1308).

mod group_commit;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::domain::{Reservation, ReservationId};
pub use group_commit::{GroupCommit, SyncMode};

/// The log cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the data directory {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the transaction log failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("the transaction log could not be made durable: {0}")]
    Flush(String),
    #[error("a blocking task on the log stopped: {0}")]
    Blocking(String),
    #[error("record {key} in the log is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the transaction log has {0} writes waiting for the disk; refusing more for now")]
    Overloaded(usize),
}

/// A client write admitted to the log (see [`Store::admit`]); hold it until the write is
/// durable.
#[must_use = "the admission counts only while it is held"]
pub struct Admission(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// The transaction log.
#[derive(Clone)]
pub struct Store {
    reservations: sled::Tree,
    idempotency: sled::Tree,
    commit: GroupCommit,
    /// Client writes admitted and not yet durable, at most `max_waiting`.
    admitted: Arc<tokio::sync::Semaphore>,
    max_waiting: usize,
}

impl Store {
    /// Opens (or creates) the log in `dir` and starts its flusher thread. Blocking: call it
    /// from `spawn_blocking` or before the runtime is busy.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the directory cannot be used (permissions, another process
    /// holds it, an unreadable log).
    ///
    /// At most `max_waiting` client writes may wait for the disk at once ([`Store::admit`]).
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        sync: SyncMode,
        max_waiting: usize,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(|e| open_error(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(open_error)?;
        let reservations = db.open_tree("reservations").map_err(open_error)?;
        let idempotency = db.open_tree("idempotency").map_err(open_error)?;
        let commit = GroupCommit::start(db.clone(), dir.join("db"), sync, metrics)
            .map_err(|e| open_error(sled::Error::Io(e)))?;
        Ok(Self {
            reservations,
            idempotency,
            commit,
            admitted: Arc::new(tokio::sync::Semaphore::new(max_waiting)),
            max_waiting,
        })
    }

    /// Admits one client write, or refuses it when `max_waiting` are already waiting for the
    /// disk: a saturated log answers "later" instead of queueing without bound. Writes that
    /// finish work already decided (participant outcomes, deadlines) need no admission.
    ///
    /// # Errors
    /// [`StoreError::Overloaded`]; nothing has been written then.
    pub fn admit(&self) -> Result<Admission, StoreError> {
        self.admitted
            .clone()
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| StoreError::Overloaded(self.max_waiting))
    }

    /// Writes the reservation and returns once it is durable (group-committed flush).
    ///
    /// # Errors
    /// [`StoreError`] when the write or the flush fails; the caller must not act on it then.
    pub async fn save(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let value = record::encode(reservation);
        self.reservations.insert(reservation.id.to_bytes(), value)?;
        self.commit.wait_durable().await
    }

    /// Writes a new reservation created under an `Idempotency-Key` together with the key's
    /// entry (atomically: both or neither), and returns once both are durable. When the key
    /// is already taken, writes nothing and returns what it maps to.
    ///
    /// # Errors
    /// [`StoreError`] when the write or the flush fails.
    pub async fn save_new_with_key(
        &self,
        reservation: &Reservation,
        key: &str,
        fingerprint: [u8; 32],
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;

        let value = record::encode(reservation);
        let mut entry = Vec::with_capacity(49);
        entry.push(VERSION_1);
        entry.extend_from_slice(&reservation.id.to_bytes());
        entry.extend_from_slice(&fingerprint);
        let taken = (&self.reservations, &self.idempotency)
            .transaction(|(reservations, keys)| {
                if let Some(existing) = keys.get(key.as_bytes())? {
                    return Ok(Some(existing));
                }
                keys.insert(key.as_bytes(), entry.as_slice())?;
                reservations.insert(&reservation.id.to_bytes(), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(None)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(()) => StoreError::Blocking("transaction aborted".into()),
            })?;
        if let Some(existing) = taken {
            return decode_key_entry(key, &existing).map(Some);
        }
        self.commit.wait_durable().await?;
        Ok(None)
    }

    /// What an `Idempotency-Key` maps to: the reservation and the fingerprint of the body it
    /// was created with.
    ///
    /// # Errors
    /// [`StoreError`] when sled fails or the entry is unreadable.
    pub fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        self.idempotency
            .get(key.as_bytes())?
            .map(|v| decode_key_entry(key, &v))
            .transpose()
    }

    /// Drops a reservation and its `Idempotency-Key` entry, atomically. Not flushed: the
    /// next group flush (or sled's own, within 500 ms) makes it durable.
    ///
    /// # Errors
    /// [`StoreError`] when sled fails.
    pub fn remove(&self, reservation: &Reservation) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;

        let key = reservation.idempotency_key.as_deref();
        (&self.reservations, &self.idempotency)
            .transaction(|(reservations, keys)| {
                reservations.remove(&reservation.id.to_bytes())?;
                if let Some(key) = key {
                    keys.remove(key.as_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(()) => StoreError::Blocking("transaction aborted".into()),
            })
    }

    /// Group-committed flushes run since the log was opened.
    #[must_use]
    pub fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    /// Writes the reservation without waiting: callers batch several, then call
    /// [`Store::wait_durable`] once before anything acts on them.
    ///
    /// # Errors
    /// [`StoreError`] when the write fails.
    pub fn put(&self, reservation: &Reservation) -> Result<(), StoreError> {
        self.reservations
            .insert(reservation.id.to_bytes(), record::encode(reservation))?;
        Ok(())
    }

    /// Returns once everything written before the call is durable (a group flush).
    ///
    /// # Errors
    /// [`StoreError::Flush`] when the flush fails.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        self.commit.wait_durable().await
    }

    /// Reads one reservation.
    ///
    /// # Errors
    /// [`StoreError`] when sled fails or the record cannot be decoded.
    pub fn load(&self, id: ReservationId) -> Result<Option<Reservation>, StoreError> {
        self.reservations
            .get(id.to_bytes())?
            .map(|bytes| record::decode(id, &bytes))
            .transpose()
    }

    /// Every reservation in the log, oldest first: for recovery at start only (a full scan).
    pub fn all(&self) -> impl Iterator<Item = Result<Reservation, StoreError>> + '_ {
        self.reservations.iter().map(|entry| {
            let (key, value) = entry?;
            record::decode(id_of(&key)?, &value)
        })
    }

    /// Up to `limit` reservations matching `keep`, newest first, strictly older than
    /// `before` when given; and whether more match beyond them. Scans from `before`
    /// backwards until `limit + 1` match.
    ///
    /// # Errors
    /// [`StoreError`] when sled fails or a record cannot be decoded.
    pub fn newest_first(
        &self,
        before: Option<ReservationId>,
        limit: usize,
        keep: impl Fn(&Reservation) -> bool,
    ) -> Result<(Vec<Reservation>, bool), StoreError> {
        let entries = match before {
            Some(id) => self.reservations.range(..id.to_bytes()),
            None => self.reservations.iter(),
        };
        let mut page = Vec::with_capacity(limit.min(1024));
        for entry in entries.rev() {
            let (key, value) = entry?;
            let reservation = record::decode(id_of(&key)?, &value)?;
            if keep(&reservation) {
                if page.len() == limit {
                    return Ok((page, true));
                }
                page.push(reservation);
            }
        }
        Ok((page, false))
    }
}

const VERSION_1: u8 = 1;

fn decode_key_entry(key: &str, value: &[u8]) -> Result<(ReservationId, [u8; 32]), StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: format!("idempotency key {key:?}"),
        detail: "not a version 1 entry of 49 bytes".into(),
    };
    match value {
        [VERSION_1, rest @ ..] if rest.len() == 48 => {
            let id: [u8; 16] = rest[..16].try_into().map_err(|_| corrupt())?;
            let fingerprint: [u8; 32] = rest[16..].try_into().map_err(|_| corrupt())?;
            Ok((ReservationId::from_bytes(id), fingerprint))
        }
        _ => Err(corrupt()),
    }
}

fn id_of(key: &[u8]) -> Result<ReservationId, StoreError> {
    let bytes: [u8; 16] = key.try_into().map_err(|_| StoreError::Corrupt {
        key: format!("{key:?}"),
        detail: "a key is not 16 bytes".into(),
    })?;
    Ok(ReservationId::from_bytes(bytes))
}

/// Creates the data directory readable by its owner only (0700): the log holds the headers
/// clients give for participants, credentials among them. An existing directory open to
/// others is left as it is, with a warning.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if dir.exists() {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"),
                    "the data directory is open to other users, and the log holds participant \
                     credentials: chmod 700 it");
            }
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Reservation;

    fn reservation() -> Reservation {
        Reservation::new(
            ReservationId::new(),
            // The log keeps milliseconds.
            chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap(),
            Duration::from_secs(30),
            vec![],
            serde_json::Map::new(),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn client_writes_past_the_queue_limit_are_refused_until_one_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(dir.path(), 8 << 20, SyncMode::Flush, 2, &Default::default()).unwrap();
        let first = store.admit().unwrap();
        let _second = store.admit().unwrap();
        assert!(matches!(store.admit(), Err(StoreError::Overloaded(2))));
        drop(first);
        assert!(store.admit().is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested").join("data");
        Store::open(&data, 8 << 20, SyncMode::Flush, 1, &Default::default()).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_saves_share_flushes_and_are_all_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            8 << 20,
            SyncMode::Fdatasync,
            1024,
            &Default::default(),
        )
        .unwrap();

        let saves = (0..200).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let r = reservation();
                store.save(&r).await.unwrap();
                r
            })
        });
        let saved = futures_util::future::join_all(saves).await;

        for r in saved {
            let r = r.unwrap();
            assert_eq!(store.load(r.id).unwrap(), Some(r));
        }
        let flushes = store.flushes();
        assert!(
            (1..200).contains(&flushes),
            "{flushes} flushes for 200 saves"
        );
    }
}

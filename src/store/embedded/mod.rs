//! The embedded log: sled 0.34.7 in one data directory, for one process.
//!
//! # Layout
//!
//! One sled `Db` per process, in the data directory, with these trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `reservations` | the id's 16 bytes (UUIDv7, big-endian, so keys sort by creation time) | a record (see `record`): `[3]`, the revision (8 bytes), the postcard of a `ReservationV1` (older records: `[2]` and JSON) |
//! | `idempotency` | the client's `Idempotency-Key`, UTF-8 | `[1]`, the reservation id (16 bytes), the SHA-256 of the canonical request body (32 bytes) |
//!
//! The first byte of every value is the record's format version; a reader refuses versions it
//! does not know instead of guessing.
//!
//! # Durability
//!
//! Writes return once the [`GroupCommit`] thread has flushed them, once for every writer
//! waiting at that moment. What a flush survives depends on [`SyncMode`]. This module never
//! calls sled's `flush_async` (it deadlocks with 7 or more in flight, spacejam/sled#1308).
//!
//! # Conditional writes
//!
//! A write replaces a record only if the record still has the revision the writer read
//! (compared in the header, then swapped with sled's compare-and-swap), like the PostgreSQL
//! store's `WHERE version = $n`.

use std::path::Path;

mod group_commit;

use super::listing::{Next, Page};
use super::{record, KeyEntry, ListQuery, StoreError};
use crate::domain::{Reservation, ReservationId};
use group_commit::GroupCommit;
pub use group_commit::SyncMode;

/// The sled log.
#[derive(Clone)]
pub(super) struct SledLog {
    reservations: sled::Tree,
    idempotency: sled::Tree,
    commit: GroupCommit,
}

impl SledLog {
    /// Opens (or creates) the log in `dir` and starts its flusher thread. Blocking.
    pub(super) fn open(
        dir: &Path,
        cache_bytes: u64,
        sync: SyncMode,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, StoreError> {
        let open_error = |source: sled::Error| StoreError::Open {
            path: dir.to_owned(),
            detail: source.to_string(),
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
        })
    }

    pub(super) async fn create(
        &self,
        reservation: &mut Reservation,
        key: Option<&KeyEntry<'_>>,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;

        let id = reservation.id().to_bytes();
        reservation.set_revision(1);
        let value = record::encode(reservation, record::Format::Binary);
        let Some(key) = key else {
            if let Err(error) =
                self.reservations
                    .compare_and_swap(id, None::<&[u8]>, Some(value))?
            {
                reservation.set_revision(0);
                drop(error);
                return Err(StoreError::Conflict(reservation.id()));
            }
            return self.commit.wait_durable().await.map(|()| None);
        };
        let mut entry = Vec::with_capacity(49);
        entry.push(VERSION_1);
        entry.extend_from_slice(&id);
        entry.extend_from_slice(&key.fingerprint);
        let taken = (&self.reservations, &self.idempotency)
            .transaction(|(reservations, keys)| {
                if let Some(existing) = keys.get(key.key.as_bytes())? {
                    return Ok(Some(existing));
                }
                keys.insert(key.key.as_bytes(), entry.as_slice())?;
                reservations.insert(&id, value.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(None)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::from(e),
                TransactionError::Abort(()) => StoreError::Blocking("transaction aborted".into()),
            })?;
        if let Some(existing) = taken {
            reservation.set_revision(0);
            return decode_key_entry(key.key, &existing).map(Some);
        }
        self.commit.wait_durable().await?;
        Ok(None)
    }

    /// Replaces the record if it still has `reservation.revision`; not flushed.
    pub(super) fn write(&self, reservation: &mut Reservation) -> Result<(), StoreError> {
        let id = reservation.id();
        let key = id.to_bytes();
        let current = self.reservations.get(key)?;
        let stored = match &current {
            Some(bytes) => record::revision_of(bytes).ok_or_else(|| StoreError::Corrupt {
                key: id.to_string(),
                detail: "unknown record version".into(),
            })?,
            None => return Err(StoreError::Conflict(id)),
        };
        if stored != reservation.revision() {
            return Err(StoreError::Conflict(id));
        }
        reservation.set_revision(reservation.revision() + 1);
        let value = record::encode(reservation, record::Format::Binary);
        match self
            .reservations
            .compare_and_swap(key, current, Some(value))?
        {
            Ok(()) => Ok(()),
            Err(_) => {
                reservation.set_revision(reservation.revision() - 1);
                Err(StoreError::Conflict(id))
            }
        }
    }

    pub(super) async fn wait_durable(&self) -> Result<(), StoreError> {
        self.commit.wait_durable().await
    }

    pub(super) fn idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<(ReservationId, [u8; 32])>, StoreError> {
        self.idempotency
            .get(key.as_bytes())?
            .map(|v| decode_key_entry(key, &v))
            .transpose()
    }

    /// Drops a reservation and its `Idempotency-Key` entry, atomically. Not flushed: the
    /// next group flush (or sled's own, within 500 ms) makes it durable, and a purge lost in
    /// a crash is done again after recovery.
    pub(super) fn remove(&self, reservation: &Reservation) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;

        let key = reservation.idempotency_key();
        (&self.reservations, &self.idempotency)
            .transaction(|(reservations, keys)| {
                reservations.remove(&reservation.id().to_bytes())?;
                if let Some(key) = key {
                    keys.remove(key.as_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::from(e),
                TransactionError::Abort(()) => StoreError::Blocking("transaction aborted".into()),
            })
    }

    pub(super) fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    pub(super) fn load(&self, id: ReservationId) -> Result<Option<Reservation>, StoreError> {
        self.reservations
            .get(id.to_bytes())?
            .map(|bytes| record::decode(id, &bytes))
            .transpose()
    }

    pub(super) fn all(&self) -> impl Iterator<Item = Result<Reservation, StoreError>> + '_ {
        self.reservations.iter().map(|entry| {
            let (key, value) = entry?;
            record::decode(id_of(&key)?, &value)
        })
    }

    /// Scans from `before` backwards until `limit + 1` match. Blocking (a scan).
    pub(super) fn newest_first(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<Reservation>, Option<ReservationId>), StoreError> {
        let entries = match query.before {
            Some(id) => self.reservations.range(..id.to_bytes()),
            None => self.reservations.iter(),
        };
        let mut page = Page::new(query);
        for entry in entries.rev() {
            let (key, value) = entry?;
            if let Next::Done(next) = page.offer(record::decode(id_of(&key)?, &value)?) {
                return Ok(page.finish(Some(next)));
            }
        }
        Ok(page.finish(None))
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

/// sled's errors stop here: the rest of the coordinator sees a sentence.
impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Log(error.to_string())
    }
}

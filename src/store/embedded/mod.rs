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
//! | `purges` | when the record's retention ends (milliseconds since 1970, sign bit flipped, big-endian, so keys sort by time: 8 bytes), then its id (16 bytes) | empty |
//!
//! `purges` is an index of finished reservations by the end of their retention, kept on disk
//! so that memory does not grow with every transaction kept (a day of them by default): the
//! retention sweep reads its first keys. An entry is a hint, checked against the record
//! before anything is dropped; recovery adds any entry a crash lost.
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
mod spill;

use super::listing::{Next, Page};
use super::{record, KeyEntry, ListQuery, Purged, Retention, StoreError};
use crate::domain::{Reservation, ReservationId};
use chrono::{DateTime, Utc};
use group_commit::{sync_dir, GroupCommit, LogFiles};
pub use group_commit::{DiskHealth, SyncMode};
use spill::Spill;

/// How the embedded log is opened.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    pub sync: SyncMode,
    /// Free bytes on the log's disk below which client writes are refused.
    pub disk_reserve: u64,
    /// How long a client's write waits for the disk before it is answered 503.
    pub write_timeout: std::time::Duration,
    /// How long finished reservations are kept (the `purges` index's instants).
    pub retention: Retention,
}

/// The sled log.
#[derive(Clone)]
pub(super) struct SledLog {
    reservations: sled::Tree,
    idempotency: sled::Tree,
    purges: sled::Tree,
    retention: Retention,
    commit: GroupCommit,
    spill: Spill,
}

impl SledLog {
    /// Opens (or creates) the log in `dir` and starts its flusher thread. Blocking.
    pub(super) fn open(
        dir: &Path,
        options: &EmbeddedOptions,
        metrics: &crate::telemetry::Metrics,
    ) -> Result<Self, StoreError> {
        let open_error = |source: sled::Error| StoreError::Open {
            path: dir.to_owned(),
            detail: source.to_string(),
        };
        let created = create_private_dir(dir).map_err(|e| open_error(sled::Error::Io(e)))?;
        set_aside_torn_blobs(dir).map_err(|e| open_error(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .open()
            .map_err(open_error)?;
        let reservations = db.open_tree("reservations").map_err(open_error)?;
        let idempotency = db.open_tree("idempotency").map_err(open_error)?;
        let purges = db.open_tree("purges").map_err(open_error)?;
        let spill = Spill::open(dir, options.sync).map_err(|e| open_error(sled::Error::Io(e)))?;
        if options.sync == SyncMode::Fdatasync {
            make_names_durable(dir, created.as_deref())
                .map_err(|e| open_error(sled::Error::Io(e)))?;
        }
        if !spill.is_empty() {
            let referenced = reservations
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(key, value)| spill.file_of(id_of(&key).ok()?, &value))
                .collect();
            let swept = spill
                .sweep(&referenced)
                .map_err(|e| open_error(sled::Error::Io(e)))?;
            if swept > 0 {
                tracing::info!(
                    swept,
                    "deleted record files no record points to (left by a crash)"
                );
            }
        }
        let files = LogFiles {
            dir: dir.to_owned(),
            sync: options.sync,
            reserve: options.disk_reserve,
            superseded: spill.superseded(),
        };
        let commit = GroupCommit::start(db.clone(), files, metrics)
            .map_err(|e| open_error(sled::Error::Io(e)))?;
        Ok(Self {
            reservations,
            idempotency,
            purges,
            retention: options.retention,
            commit,
            spill,
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
        let encoded = record::encode(reservation, record::Format::Binary);
        let value = self.spill.store(reservation.id(), 1, encoded)?;
        let Some(key) = key else {
            if let Err(error) =
                self.reservations
                    .compare_and_swap(id, None::<&[u8]>, Some(value.as_slice()))?
            {
                self.spill.discard(reservation.id(), &value);
                reservation.set_revision(0);
                drop(error);
                return Err(StoreError::Conflict(reservation.id()));
            }
            self.index_purge(reservation)?;
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
            self.spill.discard(reservation.id(), &value);
            reservation.set_revision(0);
            return decode_key_entry(key.key, &existing).map(Some);
        }
        self.index_purge(reservation)?;
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
        let encoded = record::encode(reservation, record::Format::Binary);
        let value = self.spill.store(id, reservation.revision(), encoded)?;
        match self
            .reservations
            .compare_and_swap(key, current.clone(), Some(value.as_slice()))?
        {
            Ok(()) => {
                if let Some(old) = current {
                    self.spill.supersede(id, &old);
                }
                // Flushed with the record by the same group flush. An index that cannot be
                // written does not undo the record: recovery adds the entry at the next start.
                if let Err(error) = self.index_purge(reservation) {
                    tracing::warn!(reservation_id = %id, %error,
                        "could not index the reservation's end of retention; it is purged after the next restart");
                }
                Ok(())
            }
            Err(_) => {
                self.spill.discard(id, &value);
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
        let purge = self
            .purge_at(reservation)
            .map(|at| purge_key(at, reservation.id()));
        let removed = (&self.reservations, &self.idempotency, &self.purges)
            .transaction(|(reservations, keys, purges)| {
                let removed = reservations.remove(&reservation.id().to_bytes())?;
                if let Some(key) = key {
                    keys.remove(key.as_bytes())?;
                }
                if let Some(purge) = &purge {
                    purges.remove(purge)?;
                }
                Ok::<_, ConflictableTransactionError<()>>(removed)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::from(e),
                TransactionError::Abort(()) => StoreError::Blocking("transaction aborted".into()),
            })?;
        if let Some(old) = removed {
            self.spill.supersede(reservation.id(), &old);
        }
        Ok(())
    }

    pub(super) fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    fn purge_at(&self, reservation: &Reservation) -> Option<DateTime<Utc>> {
        reservation.purge_at(
            self.retention.retention,
            self.retention.transaction_retention,
        )
    }

    /// Adds a finished reservation to the `purges` index (nothing for an unfinished one; a
    /// second time changes nothing). Not flushed: the record's own flush, or the next, makes
    /// it durable.
    fn index_purge(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if let Some(at) = self.purge_at(reservation) {
            self.purges.insert(purge_key(at, reservation.id()), &[])?;
        }
        Ok(())
    }

    /// [`Self::index_purge`] where the entry is missing: recovery reads every record at each
    /// start, and most finished ones are indexed already (a read costs less than a write).
    fn restore_purge_index(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if let Some(at) = self.purge_at(reservation) {
            let key = purge_key(at, reservation.id());
            if !self.purges.contains_key(key)? {
                self.purges.insert(key, &[])?;
            }
        }
        Ok(())
    }

    /// Drops up to `limit` records whose retention ended by `now`, earliest first, with their
    /// `Idempotency-Key` entries. An index entry is checked against its record first: one
    /// whose record is gone, or ends its retention at another instant, is only dropped. Not
    /// flushed: a purge lost in a crash is done again by the next sweep.
    pub(super) fn purge_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Purged, StoreError> {
        let last = purge_key(now, ReservationId::from_bytes([0xff; 16]));
        let due = self
            .purges
            .range(..=last)
            .keys()
            .take(limit)
            .collect::<Result<Vec<_>, _>>()?;
        let mut purged = Purged {
            scanned: due.len(),
            removed: Vec::new(),
        };
        for key in due {
            let id = id_of(&key[8..])?;
            if let Some(r) = self.load(id)? {
                if self.purge_at(&r).is_some_and(|at| at <= now) {
                    self.remove(&r)?;
                    purged.removed.push((id, r.state()));
                }
            }
            self.purges.remove(key)?;
        }
        Ok(purged)
    }

    /// Closes the log: a last flush, then sled's files are released (another process or a
    /// new `open` may take them once this returns). Blocking.
    pub(super) fn close(self) {
        let Self {
            reservations,
            idempotency,
            commit,
            ..
        } = self;
        drop((reservations, idempotency));
        commit.close();
    }

    pub(super) fn health(&self) -> &DiskHealth {
        self.commit.health()
    }

    pub(super) fn load(&self, id: ReservationId) -> Result<Option<Reservation>, StoreError> {
        self.reservations
            .get(id.to_bytes())?
            .map(|bytes| record::decode(id, &self.spill.load(id, &bytes)?))
            .transpose()
    }

    /// Every record, oldest first (recovery's scan). Adds each finished one to the
    /// `purges` index on the way, where a crash lost its entry or a log written before the
    /// index has none.
    pub(super) fn all(&self) -> impl Iterator<Item = Result<Reservation, StoreError>> + '_ {
        self.reservations.iter().map(|entry| {
            let (key, value) = entry?;
            let id = id_of(&key)?;
            let reservation = record::decode(id, &self.spill.load(id, &value)?)?;
            if let Err(error) = self.restore_purge_index(&reservation) {
                tracing::warn!(reservation_id = %id, %error,
                    "could not index the reservation's end of retention; it is kept until the next restart");
            }
            Ok(reservation)
        })
    }

    /// Scans from `before` backwards until `limit + 1` match. Blocking (a scan).
    pub(super) fn newest_first(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<Reservation>, Option<ReservationId>), StoreError> {
        let entries = match query.start_before() {
            Some(id) => self.reservations.range(..id.to_bytes()),
            None => self.reservations.iter(),
        };
        let mut page = Page::new(query);
        for entry in entries.rev() {
            let (key, value) = entry?;
            let id = id_of(&key)?;
            let record = record::decode(id, &self.spill.load(id, &value)?)?;
            match page.offer(record) {
                Next::More => {}
                Next::Done(next) => return Ok(page.finish(Some(next))),
                Next::End => return Ok(page.finish(None)),
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

/// For the store suite: empties the `purges` index of the closed log in `dir`, as a crash
/// (or a log written before the index) leaves it; returns how many entries it held.
#[cfg(test)]
pub(super) fn forget_purge_index(dir: &Path) -> sled::Result<usize> {
    let db = sled::open(dir)?;
    let index = db.open_tree("purges")?;
    let held = index.len();
    index.clear()?;
    db.flush()?;
    Ok(held)
}

/// The `purges` key of a record whose retention ends at `at`.
fn purge_key(at: DateTime<Utc>, id: ReservationId) -> [u8; 24] {
    let millis = u64::from_be_bytes(at.timestamp_millis().to_be_bytes()) ^ (1 << 63);
    let mut key = [0; 24];
    key[..8].copy_from_slice(&millis.to_be_bytes());
    key[8..].copy_from_slice(&id.to_bytes());
    key
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
/// others is left as it is, with a warning. Returns the first directory it had to create
/// (`dir` or an ancestor), `None` when `dir` existed.
fn create_private_dir(dir: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let created = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .last()
        .map(Path::to_path_buf);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if created.is_none() {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %dir.display(), mode = format!("{mode:o}"),
                    "the data directory is open to other users, and the log holds participant \
                     credentials: chmod 700 it");
            }
            return Ok(None);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(created)
}

/// Moves aside the blob files a power loss left incomplete (shorter than their header, or
/// failing their checksum), before sled reads the log. sled writes a blob (a value too large
/// for a page) to a file of its own; after a power loss its name may have survived without
/// its data (a directory fsynced, or a filesystem's own journal commit, before the file's
/// data was), and sled's recovery, reading such a file, stops there and drops every record
/// logged after it. Without the file, sled skips only the record that points to it, which
/// was never acknowledged: the group flush fsyncs a blob before the record that points to it.
fn set_aside_torn_blobs(dir: &Path) -> std::io::Result<()> {
    use std::io::Read;
    let blobs = dir.join("blobs");
    let Ok(entries) = std::fs::read_dir(&blobs) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
        let intact = bytes.len() >= 5 && {
            let expected = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            crc32fast::hash(&bytes[4..]) == expected
        };
        if !intact {
            let torn = dir.join("torn-blobs");
            std::fs::create_dir_all(&torn)?;
            let name = path.file_name().unwrap_or_default();
            std::fs::rename(&path, torn.join(name))?;
            tracing::warn!(blob = %path.display(), kept_in = %torn.display(),
                "a blob file of the log is incomplete (a power loss while it was written): set \
                 aside; the write it held was never acknowledged");
        }
    }
    Ok(())
}

/// Makes the log's files findable after a power loss: sled creates its files (and its
/// configuration, which it never fsyncs) without fsyncing the directory that names them, and
/// a new data directory is only a name in its parent until that parent is fsynced.
fn make_names_durable(dir: &Path, created: Option<&Path>) -> std::io::Result<()> {
    std::fs::File::open(dir.join("conf"))?.sync_all()?;
    let blobs = dir.join("blobs");
    if blobs.exists() {
        sync_dir(&blobs)?;
    }
    sync_dir(dir)?;
    if let Some(top) = created {
        // Every directory created for the log, and the one holding the topmost of them.
        for d in dir.ancestors().skip(1) {
            if d.as_os_str().is_empty() {
                sync_dir(Path::new("."))?;
                break;
            }
            sync_dir(d)?;
            if Some(d) == top.parent() {
                break;
            }
        }
    }
    Ok(())
}

/// sled's errors stop here: the rest of the coordinator sees a sentence.
impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Log(error.to_string())
    }
}

//! Large records live in files of their own, so that sled never writes a blob.
//!
//! sled writes a page too large for a quarter of a segment (128 KiB) to a blob file, which it
//! never fsyncs, and logs a pointer to it that its own fsyncs (every 500 ms) or a disk's
//! cache can make durable before the blob is. After a power loss, recovery then finds a
//! pointer to a missing or torn blob: it stops reading the log there, dropping every record
//! logged after it (acknowledged ones included), or fails on the page the blob replaced.
//! The power-cut test found both (`tests/crash/storage.rs`).
//!
//! A leaf page holds up to 17 records, so pages stay under the blob threshold when no record
//! in sled exceeds [`SPILL_ABOVE`]. A larger record is written to `records/<id>.<revision>`
//! and fsynced (with its directory) before sled stores a small pointer to it
//! (`record::VERSION_SPILLED`): the pointer can never be durable before what it points to.
//! A file a newer revision replaced is deleted after the group flush that made the newer one
//! durable; files a crash left behind are swept at the next start.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::group_commit::sync_dir;
use super::SyncMode;
use crate::domain::ReservationId;
use crate::store::{record, StoreError};

/// Records longer than this (in bytes, encoded) are spilled to a file of their own:
/// 17 of them stay under sled's blob threshold (a quarter of its 512 KiB segments, less
/// headers).
pub const SPILL_ABOVE: usize = 6 * 1024;

/// The spilled records of one log.
#[derive(Clone)]
pub(super) struct Spill {
    dir: PathBuf,
    sync: SyncMode,
    /// Files replaced by a newer revision (or a removal) not yet known to be durable.
    superseded: Arc<Mutex<Vec<PathBuf>>>,
}

impl Spill {
    /// `dir` is the log's data directory; the files go to `dir/records`.
    pub(super) fn open(dir: &Path, sync: SyncMode) -> std::io::Result<Self> {
        let records = dir.join("records");
        if !records.exists() {
            std::fs::create_dir(&records)?;
            if sync == SyncMode::Fdatasync {
                sync_dir(dir)?;
            }
        }
        Ok(Self {
            dir: records,
            sync,
            superseded: Arc::default(),
        })
    }

    /// What the flusher deletes once a flush has made their replacements durable.
    pub(super) fn superseded(&self) -> Arc<Mutex<Vec<PathBuf>>> {
        self.superseded.clone()
    }

    /// `records/<id>.<revision>.<nonce>`: a name of its own for every write, so that two
    /// writers of one revision (only one of which wins the compare-and-swap) never share a file.
    fn path(&self, id: ReservationId, spilled: &record::Spilled) -> PathBuf {
        let id = id.to_bytes().map(|b| format!("{b:02x}")).concat();
        self.dir
            .join(format!("{id}.{}.{:016x}", spilled.revision, spilled.nonce))
    }

    /// The value to store in sled for `encoded` (a record of `id` at `revision`): itself
    /// when small; else a pointer to a file written (and, with `fdatasync`, made durable)
    /// first.
    pub(super) fn store(
        &self,
        id: ReservationId,
        revision: u64,
        encoded: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        if encoded.len() <= SPILL_ABOVE {
            return Ok(encoded);
        }
        let pointer = record::spilled(revision, &encoded, uuid::Uuid::new_v4().as_u64_pair().0);
        let spilled = record::spilled_header(&pointer).expect("a pointer was just made");
        let path = self.path(id, &spilled);
        let written = (|| {
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&encoded)?;
            if self.sync == SyncMode::Fdatasync {
                file.sync_all()?;
                sync_dir(&self.dir)?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(error) = written {
            // Nothing points to it: it goes, and the log goes on (sled was not written).
            let _ = std::fs::remove_file(&path);
            return Err(if error.kind() == std::io::ErrorKind::StorageFull {
                StoreError::NoSpace(format!("writing {}: {error}", path.display()))
            } else {
                StoreError::Log(format!("writing {}: {error}", path.display()))
            });
        }
        Ok(pointer)
    }

    /// The record a stored value holds: the value itself, or the file it points to.
    pub(super) fn load<'a>(
        &self,
        id: ReservationId,
        value: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, StoreError> {
        let Some(spilled) = record::spilled_header(value) else {
            return Ok(std::borrow::Cow::Borrowed(value));
        };
        let path = self.path(id, &spilled);
        let corrupt = |detail: String| StoreError::Corrupt {
            key: id.to_string(),
            detail: format!("{}: {detail}", path.display()),
        };
        let bytes = std::fs::read(&path).map_err(|e| corrupt(e.to_string()))?;
        if bytes.len() as u64 != spilled.len || crc32fast::hash(&bytes) != spilled.crc {
            return Err(corrupt("the file does not match its pointer".into()));
        }
        Ok(std::borrow::Cow::Owned(bytes))
    }

    /// The file a stored value points to, if it does.
    pub(super) fn file_of(&self, id: ReservationId, value: &[u8]) -> Option<PathBuf> {
        record::spilled_header(value).map(|spilled| self.path(id, &spilled))
    }

    /// `value` was replaced or removed in sled: its file goes after the next flush.
    pub(super) fn supersede(&self, id: ReservationId, value: &[u8]) {
        if let Some(path) = self.file_of(id, value) {
            self.superseded.lock().expect("superseded lock").push(path);
        }
    }

    /// A value written to a file but never stored in sled (its write lost a race).
    pub(super) fn discard(&self, id: ReservationId, value: &[u8]) {
        if let Some(path) = self.file_of(id, value) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Deletes the files no stored value points to (left by a crash between a write and the
    /// flush that would have deleted them). `referenced` lists the files the log points to.
    pub(super) fn sweep(&self, referenced: &HashSet<PathBuf>) -> std::io::Result<usize> {
        let mut swept = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !referenced.contains(&path) {
                std::fs::remove_file(&path)?;
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Whether any file is spilled (a sweep is needed only then).
    pub(super) fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.dir).map_or(true, |mut d| d.next().is_none())
    }
}

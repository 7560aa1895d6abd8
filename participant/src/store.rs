//! Where holds are kept: the [`HoldStore`] interface, in memory and on sled.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::hold::HoldRecord;

/// A store failed; the kit answers `503` and changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the hold store failed: {0}")]
    Io(#[from] sled::Error),
    #[error("a stored hold cannot be read: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Keeps hold records. `save` and `remove` return once the change is durable (as durable as
/// the store is): the kit answers a try, confirm or cancel only after that.
pub trait HoldStore: Send + Sync + 'static {
    /// Every stored hold, at start.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn load(&self) -> Result<Vec<HoldRecord>, StoreError>;
    /// Writes (or overwrites) a hold.
    ///
    /// # Errors
    /// When it could not be written; the kit then answers `503`.
    fn save(&self, hold: &HoldRecord) -> Result<(), StoreError>;
    /// Forgets a hold (after its retention).
    ///
    /// # Errors
    /// When it could not be removed.
    fn remove(&self, id: &str) -> Result<(), StoreError>;
}

/// Holds in memory: lost on restart. For tests and for resources that are themselves
/// in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    holds: Mutex<HashMap<String, HoldRecord>>,
}

impl HoldStore for MemoryStore {
    fn load(&self) -> Result<Vec<HoldRecord>, StoreError> {
        Ok(self
            .holds
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect())
    }

    fn save(&self, hold: &HoldRecord) -> Result<(), StoreError> {
        self.holds
            .lock()
            .expect("poisoned")
            .insert(hold.id.clone(), hold.clone());
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.holds.lock().expect("poisoned").remove(id);
        Ok(())
    }
}

/// Holds on disk in a sled database: they survive a restart, their expiry still counting.
/// Each write is flushed (`Db::flush`) before the kit answers.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// When sled cannot open the directory (in use by another process, unreadable).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(Self {
            db: sled::open(dir)?,
        })
    }
}

impl HoldStore for SledStore {
    fn load(&self) -> Result<Vec<HoldRecord>, StoreError> {
        self.db
            .iter()
            .values()
            .map(|value| Ok(serde_json::from_slice(&value?)?))
            .collect()
    }

    fn save(&self, hold: &HoldRecord) -> Result<(), StoreError> {
        self.db
            .insert(hold.id.as_bytes(), serde_json::to_vec(hold)?)?;
        // A blocking flush on the caller's (blocking) thread; never flush_async
        // (spacejam/sled#1308).
        self.db.flush()?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.db.remove(id.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }
}

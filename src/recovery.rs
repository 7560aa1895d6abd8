//! Resume after a restart: read the log back once, re-arm every deadline and restart every
//! driver. A deadline that passed while the coordinator was down fires at once (the timer
//! pops it immediately); a later one waits for its time.
//!
//! A record that cannot be read (a truncated or hand-edited data directory, a record written
//! by a newer version) stops recovery before anything resumes: dropping it silently could
//! leave a participant holding stock forever. `--recover-skip-unreadable` skips such records
//! instead, naming each one in the log.

use crate::coordinator::Coordinator;
use crate::store::StoreError;

/// What recovery found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Reservations that were not terminal and are resumed.
    pub resumed: usize,
    /// Unreadable records skipped (only with `skip_unreadable`).
    pub skipped: usize,
}

/// Recovery could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "{count} record(s) in the transaction log cannot be read; the first: {first}. Nothing \
         was resumed. Restore the data directory from a backup, or start with \
         --recover-skip-unreadable to resume everything else and leave these records untouched"
    )]
    Unreadable { count: usize, first: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Scans the log and resumes every unfinished reservation.
///
/// # Errors
/// [`RecoveryError::Unreadable`] when a record cannot be decoded and `skip_unreadable` is off
/// (nothing is resumed then); [`RecoveryError::Store`] when the scan itself cannot run.
pub async fn recover(
    coordinator: &Coordinator,
    skip_unreadable: bool,
) -> Result<Recovered, RecoveryError> {
    let scanning = coordinator.clone();
    let (found, unreadable) = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut unreadable = Vec::new();
        for entry in scanning.store().local_records() {
            match entry {
                Ok(r) => found.push(scanning.resumption(&r)),
                Err(error) => {
                    tracing::error!(%error, skipping = skip_unreadable,
                        "unreadable record in the transaction log");
                    unreadable.push(error);
                }
            }
        }
        (found, unreadable)
    })
    .await
    .map_err(|e| StoreError::Blocking(e.to_string()))?;
    let skipped = unreadable.len();
    if let Some(first) = unreadable.into_iter().next() {
        if !skip_unreadable {
            return Err(RecoveryError::Unreadable {
                count: skipped,
                first,
            });
        }
    }
    let mut resumed = 0;
    for r in &found {
        coordinator.resume(r);
        resumed += usize::from(r.is_unfinished());
    }
    Ok(Recovered { resumed, skipped })
}

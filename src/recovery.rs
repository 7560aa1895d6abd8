//! Resume after a restart: read the log back once, re-arm every deadline and restart every
//! driver. A deadline that passed while the coordinator was down fires at once (the timer
//! pops it immediately); a later one waits for its time.

use crate::coordinator::Coordinator;
use crate::store::StoreError;

/// What recovery found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Reservations that were not terminal and are resumed.
    pub resumed: usize,
    /// Records that could not be read (logged one by one, and skipped).
    pub unreadable: usize,
}

/// Scans the log and resumes every unfinished reservation.
///
/// # Errors
/// [`StoreError`] when the scan itself cannot run.
pub async fn recover(coordinator: &Coordinator) -> Result<Recovered, StoreError> {
    let scanning = coordinator.clone();
    let (found, unreadable) = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut unreadable = 0;
        for entry in scanning.store().all() {
            match entry {
                Ok(r) => found.push(scanning.resumption(&r)),
                Err(error) => {
                    unreadable += 1;
                    tracing::error!(%error, "skipping an unreadable record during recovery");
                }
            }
        }
        (found, unreadable)
    })
    .await
    .map_err(|e| StoreError::Blocking(e.to_string()))?;
    let mut resumed = 0;
    for r in &found {
        coordinator.resume(r);
        resumed += usize::from(r.is_unfinished());
    }
    Ok(Recovered {
        resumed,
        unreadable,
    })
}

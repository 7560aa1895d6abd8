//! Resume after a restart: read the log back once, re-arm every deadline and restart every
//! driver. A deadline that passed while the coordinator was down fires at once (the timer
//! pops it immediately); a later one waits for its time.

use crate::coordinator::Coordinator;
use crate::domain::Reservation;
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
    let store = coordinator.store().clone();
    let (pending, finished, unreadable) = tokio::task::spawn_blocking(move || {
        let mut pending: Vec<Reservation> = Vec::new();
        let mut finished: Vec<Reservation> = Vec::new();
        let mut unreadable = 0;
        for entry in store.all() {
            match entry {
                Ok(r) if !r.state.is_terminal() => pending.push(r),
                // Only what `resume` needs of a finished one, to arm its purge.
                Ok(mut r) => {
                    r.participants = Vec::new();
                    r.metadata = serde_json::Map::new();
                    finished.push(r);
                }
                Err(error) => {
                    unreadable += 1;
                    tracing::error!(%error, "skipping an unreadable record during recovery");
                }
            }
        }
        (pending, finished, unreadable)
    })
    .await
    .map_err(|e| StoreError::Blocking(e.to_string()))?;
    for reservation in pending.iter().chain(&finished) {
        coordinator.resume(reservation);
    }
    Ok(Recovered {
        resumed: pending.len(),
        unreadable,
    })
}

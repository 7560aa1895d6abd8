//! Resumption: reading the log back at start, re-arming every deadline and restarting every
//! driver (a deadline that passed while the coordinator was down fires at once; a later one
//! waits for its time); also a reservation taken over from another instance.
//!
//! A record that cannot be read (a truncated or hand-edited data directory, a record written
//! by a newer version) stops recovery before anything resumes: dropping it silently could
//! leave a participant holding stock forever. `--recover-skip-unreadable` skips such records
//! instead, naming each one in the log.

use chrono::{DateTime, Utc};

use super::Coordinator;
use crate::domain::{Reservation, ReservationId, State};
use crate::store::StoreError;

impl Coordinator {
    /// What recovery keeps of a record read back from the log: enough to re-arm its timers
    /// and restart its driver, small enough to hold for millions.
    pub(crate) fn resumption(&self, reservation: &Reservation) -> Resumption {
        Resumption {
            id: reservation.id(),
            state: reservation.state(),
            expires_at: reservation.expires_at(),
            callback_due: reservation.callback_due(),
        }
    }

    /// Resumes a reservation read back from the log at start: arms its deadline and
    /// restarts its driver.
    pub(crate) fn resume(&self, r: &Resumption) {
        let topology = self.inner.topology;
        if topology.counts_states_here() {
            self.inner.metrics.entered(r.state);
        }
        if matches!(r.state, State::Trying | State::Reserved) {
            self.arm_deadline_at(r.expires_at, r.id);
        }
        if r.state.is_in_progress() || r.callback_due {
            self.ensure_driven(r.id);
        }
    }

    /// Resumes a reservation taken over from an instance whose lease lapsed (shared stores).
    pub(crate) fn take_over(&self, reservation: &Reservation) {
        self.resume(&self.resumption(reservation));
    }
}

/// A reservation as recovery remembers it (see [`Coordinator::resumption`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resumption {
    id: ReservationId,
    state: State,
    expires_at: DateTime<Utc>,
    callback_due: bool,
}

impl Resumption {
    pub(crate) fn is_unfinished(&self) -> bool {
        !self.state.is_terminal()
    }
}

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

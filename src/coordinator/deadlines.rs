//! Deadlines and retention: what the timer thread asks for when a deadline comes (expire
//! undecided reservations), arming those timers, and the sweep that drops records whose
//! retention ended.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Coordinator, CoordinatorError, MAX_CONFLICTS};
use crate::domain::{Reservation, ReservationId, State};
use crate::store::{Ownership, StoreError};

/// How often the embedded log is swept for records past their retention: a record is
/// dropped at most this long after its retention ends.
const RETENTION_SWEEP: Duration = Duration::from_secs(1);

/// Records dropped in one pass of the sweep (it goes on at once while passes are full).
const PURGE_BATCH: usize = 1000;

impl Coordinator {
    /// Cancels every reservation of `ids` whose deadline has passed with nothing decided.
    /// Called by the timers with all the deadlines due at once; harmless for the others.
    /// The decisions share one flush, and no participant is called before it.
    ///
    /// # Errors
    /// `Store`; nothing after the failure is expired (the timers' entries are gone, but
    /// recovery re-arms every deadline at the next start).
    pub async fn expire(&self, ids: &[ReservationId]) -> Result<usize, CoordinatorError> {
        let ids = self.maybe_undecided(ids);
        let mut expired = Vec::new();
        // First the reservations nobody else is updating, then, waiting, the others: one
        // busy stripe must not hold up the whole batch.
        let mut busy = Vec::new();
        for &id in &ids {
            match self.lock_for(id).try_lock() {
                Ok(_guard) => expired.extend(self.expire_locked(id).await?),
                Err(_) => busy.push(id),
            }
        }
        for id in busy {
            let _guard = self.lock_for(id).lock().await;
            expired.extend(self.expire_locked(id).await?);
        }
        if expired.is_empty() {
            return Ok(0);
        }
        self.inner.store.wait_durable().await?;
        for (before, after) in &expired {
            let metrics = &self.inner.metrics;
            metrics.deadlines_fired.inc();
            let late = after.decided_at().unwrap_or(after.expires_at()) - after.expires_at();
            metrics
                .deadline_lateness_seconds
                .observe(late.to_std().unwrap_or_default().as_secs_f64());
            tracing::info!(reservation_id = %after.id(), reason = ?after.reason(),
                "deadline passed: cancelling every participant");
            self.saved(before, after);
        }
        Ok(expired.len())
    }

    /// Applies the deadline to one reservation whose lock the caller holds, writing without
    /// waiting for the flush. Returns the states before and after when it expired.
    ///
    /// # Errors
    /// `Store` when the log cannot be read or written: the deadline is still due, and the
    /// caller arms it again (a deadline that falls while the database is away fires once it
    /// is back).
    pub(super) async fn expire_locked(
        &self,
        id: ReservationId,
    ) -> Result<Option<(Arc<Reservation>, Arc<Reservation>)>, CoordinatorError> {
        let mut conflicts = 0;
        let mut hint = self.hint(id);
        loop {
            let guessed = hint.is_some();
            let before = match hint.take() {
                Some(r) => Ok(r),
                None => self.current(id).await,
            };
            let before = match before {
                Ok(r) => r,
                // Purged, or past its retention: nothing to expire.
                Err(
                    CoordinatorError::NotFound(_)
                    | CoordinatorError::Purged(_)
                    | CoordinatorError::Refused { .. },
                ) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut after = Reservation::clone(&before);
            if !after.expire_if_due(self.now()) {
                if guessed {
                    // Nothing to write, so nothing checks the guess: read it.
                    continue;
                }
                return Ok(None);
            }
            match self.inner.store.write(&mut after, Ownership::Take).await {
                Ok(()) => return Ok(Some((before, Arc::new(after)))),
                // Another instance changed it meanwhile (decided it, joined a participant,
                // recorded an outcome): read it again and see whether it is still due.
                Err(StoreError::Conflict(_)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    self.drop_copies(id);
                }
                Err(StoreError::Conflict(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Drops the records whose retention has ended, a batch at a time until none is due;
    /// returns how many. Embedded log only (a shared store's sweep is the cluster's).
    ///
    /// # Errors
    /// `Store`: the next sweep tries again.
    pub async fn sweep_retention(&self) -> Result<usize, CoordinatorError> {
        let mut purged = 0;
        loop {
            let batch = self.inner.store.purge_due(self.now(), PURGE_BATCH).await?;
            for &(id, state) in &batch.removed {
                self.drop_copies(id);
                self.inner.metrics.left(state);
                tracing::debug!(reservation_id = %id, "retention ended: record purged");
            }
            purged += batch.removed.len();
            if batch.scanned < PURGE_BATCH {
                return Ok(purged);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Sweeps the embedded log every [`RETENTION_SWEEP`] until `shutdown`.
    pub async fn sweep_retention_until(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(RETENTION_SWEEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.sweep_retention().await {
                tracing::error!(%error, "dropping records past their retention failed; trying again in 1 s");
            }
        }
    }

    pub(super) fn arm_deadline(&self, reservation: &Reservation) {
        if matches!(reservation.state(), State::Trying | State::Reserved) {
            self.arm_deadline_at(reservation.expires_at(), reservation.id());
        }
    }

    pub(super) fn arm_deadline_at(&self, at: chrono::DateTime<chrono::Utc>, id: ReservationId) {
        // A deadline armed after the timers stopped (at shutdown) is re-armed by recovery at
        // the next start.
        self.inner
            .armed
            .lock()
            .expect("armed lock")
            .insert(id, false);
        self.inner.deadlines.arm(at, id);
    }

    /// Notes that a reservation whose deadline is armed here was decided: its timer will
    /// skip it without reading the log.
    pub(super) fn note_decided(&self, id: ReservationId) {
        if let Some(decided) = self.inner.armed.lock().expect("armed lock").get_mut(&id) {
            *decided = true;
        }
    }

    /// Of the reservations whose timers came, those that may still be undecided: the others
    /// were decided here after their deadline was armed here, and need nothing.
    fn maybe_undecided(&self, ids: &[ReservationId]) -> Vec<ReservationId> {
        let mut armed = self.inner.armed.lock().expect("armed lock");
        ids.iter()
            .copied()
            .filter(|id| armed.remove(id) != Some(true))
            .collect()
    }
}

/// The deadline thread's view of the coordinator: it is handed this, and knows nothing else.
impl crate::timers::Fire for Coordinator {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        Coordinator::now(self)
    }

    fn expire(
        &self,
        ids: Vec<ReservationId>,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move { this.expire(&ids).await.map(drop).map_err(|e| e.to_string()) })
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.io_runtime()
    }
}

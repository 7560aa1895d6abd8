//! Driver supervision: at most one driver task per reservation, started or woken on demand,
//! running the current phase until nothing is left to do, stopping at shutdown or when
//! another instance owns the work.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Coordinator, CoordinatorError};
use crate::domain::{Reservation, ReservationId, State};
use crate::telemetry::ActiveSpan;

/// How long a driver waits before re-reading the log after the log failed.
pub(super) const STORE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How many drivers make their first round of calls at once; the others wait, small, for a
/// place. Four times the calls allowed in flight keeps every call slot busy while some drivers
/// record their answers. Without it, 100,000 deadlines falling together started 100,000
/// phases at once, each holding its calls' state (about 7 KiB) while waiting for a call slot:
/// 700 MB more memory, and a sixth of the storm's CPU spent by the kernel zeroing it.
pub const PHASES_AT_ONCE: usize = 4 * crate::participant::MAX_CALLS_IN_FLIGHT;

/// A driver's place among the [`PHASES_AT_ONCE`]: held from reading the reservation through
/// the first round of calls and its record, released before any wait (a retry's backoff, a
/// try waiting for its deadline), so that participants that keep failing never hold places.
pub(super) struct Slot<'a>(Option<tokio::sync::SemaphorePermit<'a>>);

impl Slot<'_> {
    /// Gives the place back; the driver goes on without one.
    pub(super) fn release(&mut self) {
        self.0 = None;
    }
}

impl Coordinator {
    /// Starts the reservation's driver, or wakes it when it runs already.
    pub(super) fn ensure_driven(&self, id: ReservationId) {
        let mut drivers = self.inner.drivers.lock().expect("drivers lock");
        if let Some(wake) = drivers.get(&id) {
            wake.cancel();
            return;
        }
        let wake = CancellationToken::new();
        drivers.insert(id, wake.clone());
        drop(drivers);
        let this = self.clone();
        // On the main runtime, also when the deadline thread expires a reservation.
        self.inner.tasks.spawn_on(
            async move { this.drive(id, wake).await },
            &self.inner.runtime,
        );
    }

    /// Whether a driver of this instance works on the reservation now.
    pub(super) fn drives(&self, id: ReservationId) -> bool {
        let drivers = self.inner.drivers.lock().expect("drivers lock");
        drivers.contains_key(&id)
    }

    /// The driver: runs phases until the reservation needs nothing more from participants.
    pub(super) async fn drive(&self, id: ReservationId, mut wake: CancellationToken) {
        loop {
            let slot = tokio::select! {
                permit = self.inner.phases.acquire() => permit.ok(),
                () = self.inner.shutdown.cancelled() => None,
            };
            if self.inner.shutdown.is_cancelled() {
                self.inner.drivers.lock().expect("drivers lock").remove(&id);
                return;
            }
            let mut slot = Slot(slot);
            // Boxed: a driver waiting for a place holds only this loop's few bytes.
            let phase = match Box::pin(self.current(id)).await {
                Ok(r) if !self.inner.store.owns(&r) => {
                    // Another instance sharing the store works on it now; unless this one
                    // was woken meanwhile (a takeover made it its own again): then read it
                    // once more, or the takeover's wake-up would be lost with this driver.
                    self.drop_copies(id);
                    if self.stop_unless_woken(id, &wake) {
                        return;
                    }
                    Ok(())
                }
                Ok(r) if r.state().is_in_progress() || r.callback_due() => {
                    let phase_span = self.phase_span(&r);
                    let phase = phase_span.as_ref().map(ActiveSpan::as_parent);
                    let slot = &mut slot;
                    let run = async {
                        match r.state() {
                            State::Trying => self.run_tries(&r, &wake, phase, slot).await,
                            State::Confirming => self.run_confirms(&r, phase, slot).await,
                            State::Cancelling => self.run_cancels(&r, phase, slot).await,
                            _ => self.deliver_callback(&r, phase, slot).await,
                        }
                    };
                    Box::pin(run.instrument(span(&r))).await
                }
                Ok(_) => {
                    if self.stop_unless_woken(id, &wake) {
                        self.forget_settled(id);
                        return;
                    }
                    Ok(())
                }
                Err(CoordinatorError::NotFound(_) | CoordinatorError::Purged(_)) => {
                    // Its retention ended (a callback that was never acknowledged): nothing
                    // is left to do.
                    self.inner.drivers.lock().expect("drivers lock").remove(&id);
                    return;
                }
                Err(error) => Err(error),
            };
            drop(slot);
            if let Err(error) = phase {
                tracing::error!(reservation_id = %id, %error, "driving the reservation failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(STORE_RETRY_DELAY) => {}
                    () = self.inner.shutdown.cancelled() => {}
                }
            }
            if wake.is_cancelled() {
                wake = CancellationToken::new();
                self.inner
                    .drivers
                    .lock()
                    .expect("drivers lock")
                    .insert(id, wake.clone());
            }
        }
    }

    /// Unregisters this driver, unless it was woken since it read the reservation (a
    /// takeover or a decision made it this driver's work again): returns whether it did, and
    /// the driver must then end. Looked at under the drivers lock, where `ensure_driven` looks
    /// for a driver to wake: a wake-up lands before (seen here, the driver reads again) or
    /// after (no driver registered, so a new one starts), never lost in between.
    pub(super) fn stop_unless_woken(&self, id: ReservationId, wake: &CancellationToken) -> bool {
        let mut drivers = self.inner.drivers.lock().expect("drivers lock");
        if wake.is_cancelled() {
            return false;
        }
        drivers.remove(&id);
        true
    }

    /// Sleeps until `delay` passes, `wake` fires or the coordinator stops. Returns whether
    /// the caller should try again.
    pub(super) async fn pause(&self, delay: Duration, wake: Option<&CancellationToken>) -> bool {
        let woken = async {
            match wake {
                Some(w) => w.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = woken => false,
            () = self.inner.shutdown.cancelled() => false,
        }
    }
}

/// The span of a reservation's participant calls: its id and its trace.
pub(super) fn span(r: &Reservation) -> tracing::Span {
    tracing::info_span!("reservation", reservation_id = %r.id(),
        trace_id = r.trace().map(|t| t.trace_id()).unwrap_or_default())
}

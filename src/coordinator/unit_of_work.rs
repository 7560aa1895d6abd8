//! The unit of work, the only writer: lock the reservation, load it, apply a change, save it
//! durably (conditional on the revision read, re-applied after a concurrent change), then
//! remember it and do what follows a save (waiters, driver, timers).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::spans::decided_by_client;
use super::{Coordinator, CoordinatorError};
use std::hash::{Hash, Hasher};

use crate::domain::{Reservation, ReservationId, State};
use crate::store::{Ownership, StoreError};

/// Lock stripes: reservations hashing to the same stripe serialise their updates. An update
/// holds its stripe across a flush, so with hundreds of reservations in flight the stripes
/// must be many for unrelated ones not to wait for each other's flushes (64 Ki stripes:
/// about 2.5 MiB).
pub(super) const LOCK_STRIPES: usize = 1 << 16;

/// Most reservations kept in memory beyond those in progress: reserved ones waiting for a
/// decision (a few KiB each, so at most some tens of MiB). Beyond it, a decision reads the
/// record from the log.
pub(super) const KEEP_IN_MEMORY: usize = 1 << 14;

/// How many times an update is re-applied after a concurrent change before giving up (with
/// one process, never more than once; with several, only under a storm on one reservation).
pub(super) const MAX_CONFLICTS: u32 = 16;

impl Coordinator {
    /// Load, change, save (if changed), under the reservation's lock. Re-arms the deadline
    /// when it moved, and wakes the driver when the state changed to one that needs work.
    ///
    /// The save is conditional on the revision read: when another instance sharing the store
    /// changed the reservation in between, it is read again and `change` applied to what it
    /// now is, exactly as if the two requests had come to one instance one after the other.
    pub(super) async fn update<T>(
        &self,
        id: ReservationId,
        change: impl FnMut(&mut Reservation, DateTime<Utc>) -> T,
    ) -> Result<(Arc<Reservation>, T), CoordinatorError> {
        self.update_as(id, Ownership::Keep, change).await
    }

    /// [`Coordinator::update`], taking the reservation's work over when `ownership` says so
    /// (a client's request: this instance starts the work it asked for).
    pub(super) async fn update_as<T>(
        &self,
        id: ReservationId,
        ownership: Ownership,
        mut change: impl FnMut(&mut Reservation, DateTime<Utc>) -> T,
    ) -> Result<(Arc<Reservation>, T), CoordinatorError> {
        let _guard = self.lock_for(id).lock().await;
        let mut conflicts = 0;
        let mut hint = self.hint(id);
        loop {
            let guessed = hint.is_some();
            let before = match hint.take() {
                Some(r) => r,
                None => self.current(id).await?,
            };
            let mut after = Reservation::clone(&before);
            let out = change(&mut after, self.now());
            if after == *before && guessed {
                // Nothing to write, so nothing checks the guess: answer from what is read.
                continue;
            }
            if after == *before {
                if after.state().is_in_progress()
                    && self.inner.topology.redrives_repeated_requests()
                {
                    self.ensure_driven(id);
                }
                return Ok((before, out));
            }
            match self.inner.store.replace(&mut after, ownership).await {
                Ok(()) => {
                    // One copy, shared by the caller, the kept copy and the waiters.
                    let after = Arc::new(after);
                    self.saved(&before, &after);
                    return Ok((after, out));
                }
                Err(StoreError::Conflict(_)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    // A copy kept here is stale now.
                    self.drop_copies(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Records one participant's outcome under the reservation's lock; durable before anyone
    /// can read it, so an outcome once shown is never called for again after a crash.
    pub(super) async fn record(
        &self,
        id: ReservationId,
        index: usize,
        mut change: impl FnMut(&mut Reservation, usize, DateTime<Utc>),
    ) -> Result<(), CoordinatorError> {
        self.update(id, |r, now| change(r, index, now)).await?;
        Ok(())
    }

    /// What follows a durable save: the in-memory copy, waiters, the driver, the timers.
    pub(super) fn saved(&self, before: &Reservation, after: &Arc<Reservation>) {
        let id = after.id();
        self.remember(after);
        if let (None, Some(decided)) = (before.decided_at(), after.decided_at()) {
            if !decided_by_client(after) {
                self.decision_span(after, None, decided.into());
            }
        }
        if after.state() != before.state() {
            if !matches!(after.state(), State::Trying | State::Reserved) {
                self.note_decided(id);
            }
            self.inner.metrics.moved(before.state(), after.state());
            tracing::debug!(reservation_id = %id, from = %before.state(), to = %after.state(),
                reason = ?after.reason(), "state changed");
            if let Some(watcher) = self.inner.watchers.lock().expect("watchers lock").get(&id) {
                watcher.send_replace(Some(Arc::clone(after)));
            }
            if after.state().is_in_progress() || after.callback_due() {
                self.ensure_driven(id);
            }
        }
        // With a shared store, a client's request (a join, a repeated decision) can make this
        // instance the owner of a reservation another instance worked on: from now on its
        // deadline and its driver are this instance's, whatever becomes of the other.
        let taken_over = after.owner() != before.owner() && self.inner.store.owns(after);
        if taken_over && (after.state().is_in_progress() || after.callback_due()) {
            self.ensure_driven(id);
        }
        if after.expires_at() != before.expires_at()
            || after.state() != before.state()
            || taken_over
        {
            self.arm_deadline(after);
        }
    }

    /// Keeps a reservation being worked on in memory, and forgets it once it is not: one in
    /// progress; one whose driver will look at it once more before it stops; and with an
    /// embedded log, one reserved (waiting for the client's decision), up
    /// to [`KEEP_IN_MEMORY`] kept copies, so that deciding it reads and decodes nothing. With
    /// a shared store, a reserved one is kept as a hint instead (see `Inner::hints`). A copy
    /// never replaces a newer one: a batch of deadlines is remembered after its flush, when a
    /// driver may already have saved a later revision.
    pub(super) fn remember(&self, r: &Arc<Reservation>) {
        let driven = self.drives(r.id());
        // Only a process that is the log's sole writer may trust a copy of a reservation it is
        // not working on: with a shared store another instance may decide it meanwhile, and a
        // driver started by a takeover or after an outage must read what was decided. The
        // copy its own driver saved is safe for that driver's last look: an instance that
        // changes it meanwhile becomes its owner, and this driver then finds its write
        // refused or the work not its own; the driver drops the copy as it stops
        // (`forget_settled`).
        let sole_writer = self.inner.topology.answers_from_memory();
        let reserved = r.state() == State::Reserved;
        let trusted = r.state().is_in_progress() || driven || (sole_writer && reserved);
        let hinted = !sole_writer && reserved;
        if keep(&self.inner.working, r, trusted) {
            return;
        }
        keep(&self.inner.hints, r, hinted);
    }

    /// The copy this instance saved of a reserved reservation, with a shared store: a guess
    /// for an update, never an answer.
    pub(super) fn hint(&self, id: ReservationId) -> Option<Arc<Reservation>> {
        let hints = self.inner.hints.lock().expect("hints lock");
        hints.get(&id).cloned()
    }

    /// Drops every copy kept of a reservation (it changed elsewhere, or left the log).
    pub(super) fn drop_copies(&self, id: ReservationId) {
        self.inner.working.lock().expect("working lock").remove(&id);
        self.inner.hints.lock().expect("hints lock").remove(&id);
    }

    /// Forgets the copy of a reservation that has settled, once nothing works on it.
    /// With a shared store, a reserved one becomes a hint: its driver was the last to trust it.
    pub(super) fn forget_settled(&self, id: ReservationId) {
        let sole_writer = self.inner.topology.answers_from_memory();
        let mut working = self.inner.working.lock().expect("working lock");
        let Some(kept) = working.get(&id) else {
            return;
        };
        if kept.state().is_in_progress() || (sole_writer && kept.state() == State::Reserved) {
            return;
        }
        let kept = working.remove(&id);
        drop(working);
        if let Some(reserved) = kept.filter(|r| r.state() == State::Reserved) {
            keep(&self.inner.hints, &reserved, true);
        }
    }

    pub(super) fn lock_for(&self, id: ReservationId) -> &tokio::sync::Mutex<()> {
        let mut hasher = rustc_hash::FxHasher::default();
        id.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        &self.inner.locks[stripe]
    }
}

/// Keeps `r` in `copies` when `wanted` (within [`KEEP_IN_MEMORY`] for a reserved one, never
/// over a newer copy), else drops its copy. Returns whether a newer copy is kept, which
/// makes this save old news everywhere.
fn keep(
    copies: &std::sync::Mutex<super::IdMap<Arc<Reservation>>>,
    r: &Arc<Reservation>,
    wanted: bool,
) -> bool {
    let mut copies = copies.lock().expect("copies lock");
    if copies
        .get(&r.id())
        .is_some_and(|kept| kept.revision() > r.revision())
    {
        return true;
    }
    let room = copies.contains_key(&r.id()) || copies.len() < KEEP_IN_MEMORY;
    if wanted && (room || r.state() != State::Reserved) {
        copies.insert(r.id(), Arc::clone(r));
    } else {
        copies.remove(&r.id());
    }
    false
}

//! Reads: a reservation (from the working copy or the log), a confirmed transaction, the
//! listing, and waiting for a change (`Prefer: wait`). Nothing here writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Coordinator, CoordinatorError};
use crate::domain::{Refusal, Reservation, ReservationId, State};
use crate::store::{ListQuery, MAX_SCAN};

/// While this instance drives a reservation, a waiter reads it on every this many polls.
const DRIVEN_POLL_EVERY: u32 = 10;

impl Coordinator {
    /// Waits up to `limit` (capped by `--max-wait`) until `settled` holds for the
    /// reservation; returns it as it then stands, and whether `settled` held.
    ///
    /// # Errors
    /// `NotFound`; `Store`.
    pub async fn wait_until(
        &self,
        id: ReservationId,
        settled: impl Fn(&Reservation) -> bool,
        limit: Duration,
    ) -> Result<(Reservation, bool), CoordinatorError> {
        let deadline = tokio::time::Instant::now() + limit.min(self.inner.limits.max_wait);
        let mut changes = self
            .inner
            .watchers
            .lock()
            .expect("watchers lock")
            .entry(id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        // Read once (the copy this instance keeps while it works on the reservation, saved
        // before any waiter is told; with a shared store no statement for it); then each
        // change made here arrives with the reservation as it was saved; changes made by
        // other instances are read every poll, and only every tenth while this instance
        // drives the reservation (another instance changes it then only by taking it over).
        let poll = self.inner.topology.poll_for_changes();
        let mut polls = 0_u32;
        let result = match self.current(id).await {
            Err(e) => Err(e),
            Ok(mut reservation) => loop {
                if settled(&reservation) {
                    break Ok((Arc::unwrap_or_clone(reservation), true));
                }
                let until = match poll {
                    Some(every) => deadline.min(tokio::time::Instant::now() + every),
                    None => deadline,
                };
                match tokio::time::timeout_at(until, changes.changed()).await {
                    Ok(Ok(())) => {
                        if let Some(changed) = changes.borrow_and_update().clone() {
                            reservation = changed;
                        }
                    }
                    Err(_) if until < deadline => {
                        polls += 1;
                        if polls % DRIVEN_POLL_EVERY != 0 && self.drives(id) {
                            continue;
                        }
                        match self.get(id).await {
                            Ok(read) => reservation = Arc::new(read),
                            Err(e) => break Err(e),
                        }
                    }
                    _ => break Ok((Arc::unwrap_or_clone(reservation), false)),
                }
            },
        };
        drop(changes);
        let mut watchers = self.inner.watchers.lock().expect("watchers lock");
        if watchers.get(&id).is_some_and(|w| w.receiver_count() == 0) {
            watchers.remove(&id);
        }
        result
    }

    /// Reads a reservation.
    ///
    /// # Errors
    /// [`CoordinatorError::NotFound`]; [`CoordinatorError::Log`].
    pub async fn get(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        // A shared store's records change under our feet: what clients read comes from it.
        if self.inner.topology.answers_from_memory() {
            if let Some(r) = self.inner.working.lock().expect("working lock").get(&id) {
                return Ok(Reservation::clone(r));
            }
        }
        self.read(id).await
    }

    /// The reservation as this instance last saved it while working on it, else as read.
    /// With a shared store the copy may be stale; that is harmless where it is used (to
    /// change it, or to drive it): every write is conditional on the revision, and a stale
    /// copy's write fails, drops the copy and reads again.
    pub(super) async fn current(
        &self,
        id: ReservationId,
    ) -> Result<Arc<Reservation>, CoordinatorError> {
        if let Some(r) = self.inner.working.lock().expect("working lock").get(&id) {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::new(self.read(id).await?))
    }

    /// Reads a reservation from the store.
    pub(super) async fn read(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        let retention = self.inner.limits.retention;
        match self.inner.store.load(id).await? {
            Some(r) if r.is_past_retention(self.now(), retention) => {
                Err(CoordinatorError::Refused {
                    refusal: Refusal::Gone,
                    reservation: Box::new(r),
                })
            }
            Some(r) => Ok(r),
            // Ids carry their creation time: one older than the retention was most likely
            // purged (an id never issued answers the same; nothing tells the two apart).
            None if id.created_at().is_some_and(|t| {
                t + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
                    <= self.now()
            }) =>
            {
                Err(CoordinatorError::Purged(id))
            }
            None => Err(CoordinatorError::NotFound(id)),
        }
    }

    /// A confirmed transaction, while `--transaction-retention` keeps it.
    ///
    /// # Errors
    /// `NotFound` for anything else; `Store`.
    pub async fn transaction(&self, id: ReservationId) -> Result<Reservation, CoordinatorError> {
        let retention = self.inner.limits.transaction_retention;
        match self.inner.store.load(id).await? {
            Some(r)
                if r.state() == State::Confirmed && !r.is_past_retention(self.now(), retention) =>
            {
                Ok(r)
            }
            _ => Err(CoordinatorError::NotFound(id)),
        }
    }

    /// A page of reservations, newest first, as `query` filters them, and the cursor of the
    /// next page (`None`: nothing older matches).
    ///
    /// # Errors
    /// [`CoordinatorError::Log`].
    pub async fn list(
        &self,
        query: ListQuery,
    ) -> Result<(Vec<Reservation>, Option<ReservationId>), CoordinatorError> {
        Ok(self.inner.store.newest_first(query).await?)
    }

    /// How many reservations match `query` (its state, cursor and limit aside) in each
    /// state, among the newest [`MAX_SCAN`] that match; and whether that was all of them.
    ///
    /// # Errors
    /// `Store`.
    pub async fn count_by_state(
        &self,
        query: &ListQuery,
    ) -> Result<(BTreeMap<&'static str, u64>, bool), CoordinatorError> {
        let all = ListQuery {
            state: None,
            before: None,
            limit: MAX_SCAN,
            max_scan: MAX_SCAN,
            ..query.clone()
        };
        let (items, next) = self.inner.store.newest_first(all).await?;
        let mut counts = BTreeMap::new();
        for r in &items {
            *counts.entry(r.state().as_str()).or_insert(0) += 1;
        }
        Ok((counts, next.is_none()))
    }

    /// The reservations in one of `states` that match `query` (its state, cursor and limit
    /// aside): from memory where this process works on all of them, else from the store,
    /// newest first, at most [`MAX_SCAN`] a state.
    pub(super) async fn in_progress(
        &self,
        query: &ListQuery,
        states: &[State],
    ) -> Result<Vec<Reservation>, CoordinatorError> {
        if self.inner.topology.works_on_everything_in_progress() {
            let working = self.inner.working.lock().expect("working lock");
            return Ok(working
                .values()
                .filter(|r| states.contains(&r.state()) && query.matches(r))
                .map(|r| Reservation::clone(r))
                .collect());
        }
        let mut found = Vec::new();
        for state in states {
            let (items, _) = self
                .inner
                .store
                .newest_first(ListQuery {
                    state: Some(*state),
                    before: None,
                    limit: MAX_SCAN,
                    max_scan: MAX_SCAN,
                    ..query.clone()
                })
                .await?;
            found.extend(items);
        }
        Ok(found)
    }

    /// The reservations confirming or cancelling since longer than `threshold` that match
    /// `query`, the longest waiting first (on a shared database, every instance's).
    ///
    /// # Errors
    /// `Store`.
    pub async fn stuck_reservations(
        &self,
        threshold: std::time::Duration,
        query: &ListQuery,
    ) -> Result<Vec<Reservation>, CoordinatorError> {
        let since = self.now() - chrono::Duration::from_std(threshold).unwrap_or_default();
        let mut stuck: Vec<Reservation> = self
            .in_progress(query, &[State::Confirming, State::Cancelling])
            .await?
            .into_iter()
            .filter(|r| r.decided_at().is_some_and(|at| at <= since))
            .collect();
        stuck.sort_by_key(Reservation::decided_at);
        stuck.truncate(query.limit);
        Ok(stuck)
    }
}

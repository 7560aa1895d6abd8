//! Deadlines: a min-heap of (deadline, reservation) and the task that fires them.
//!
//! No periodic scan: the task sleeps until the earliest deadline, pops every due entry and
//! asks the coordinator to expire it. An entry is a hint, not a fact: `expire` re-reads the
//! log, so stale entries (a reservation confirmed meanwhile, a deadline moved earlier and
//! pushed again) cost one lookup and change nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::{Coordinator, Due};
use crate::domain::ReservationId;

/// Most deadlines expired in one batch: large enough to share a flush among many, small
/// enough that the first of a storm is not held up by the last.
const EXPIRY_BATCH: usize = 512;

/// Pending timers, earliest first. Pure: the caller says what time it is.
#[derive(Debug)]
pub struct Deadlines<T = Due> {
    heap: BinaryHeap<Reverse<(DateTime<Utc>, ReservationId, T)>>,
}

impl<T: Ord> Default for Deadlines<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }
}

impl<T: Ord + Copy> Deadlines<T> {
    pub fn push(&mut self, at: DateTime<Utc>, id: ReservationId, what: T) {
        self.heap.push(Reverse((at, id, what)));
    }

    /// The earliest pending instant.
    #[must_use]
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns every entry due at `now`.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<(ReservationId, T)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id, what))) = self.heap.peek() {
            if *at > now {
                break;
            }
            due.push((*id, *what));
            self.heap.pop();
        }
        due
    }
}

/// Starts the deadline thread: its own single-threaded runtime runs [`run`] and the
/// expiries it fires, so that deadlines keep their time while the main runtime is busy with
/// thousands of participant calls (it competes for the CPU as one thread among the OS's,
/// not as one task among the runtime's).
///
/// # Errors
/// When the thread or its runtime cannot be created.
pub fn start(
    arm: mpsc::UnboundedReceiver<(DateTime<Utc>, ReservationId, Due)>,
    coordinator: Coordinator,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("tcc-deadlines".into())
        .spawn(move || runtime.block_on(run(arm, coordinator, tasks, shutdown)))
}

/// Runs the deadline loop until `shutdown`: receives deadlines to arm, fires due ones.
pub async fn run(
    mut arm: mpsc::UnboundedReceiver<(DateTime<Utc>, ReservationId, Due)>,
    coordinator: Coordinator,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut deadlines = Deadlines::<Due>::default();
    let mut incoming = Vec::new();
    loop {
        let sleep = async {
            match deadlines.next() {
                Some(at) => {
                    let wait = (at - coordinator.now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = arm.recv_many(&mut incoming, 4096) => {
                if received == 0 {
                    return;
                }
                for (at, id, what) in incoming.drain(..) {
                    deadlines.push(at, id, what);
                }
            }
            () = sleep => {
                let due = deadlines.pop_due(coordinator.now());
                let (expiring, purging): (Vec<_>, Vec<_>) =
                    due.into_iter().partition(|(_, what)| *what == Due::Deadline);
                // Deadlines due together are expired together: one flush for the batch.
                for batch in expiring.chunks(EXPIRY_BATCH) {
                    let ids: Vec<_> = batch.iter().map(|(id, _)| *id).collect();
                    let coordinator = coordinator.clone();
                    tasks.spawn(async move {
                        if let Err(error) = coordinator.expire(&ids).await {
                            tracing::error!(%error, "expiring reservations failed");
                        }
                    });
                }
                for (id, _) in purging {
                    let coordinator = coordinator.clone();
                    tasks.spawn(async move {
                        if let Err(error) = coordinator.purge(id).await {
                            tracing::error!(reservation_id = %id, %error, "purging a reservation failed");
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn only_due_deadlines_pop_earliest_first() {
        let mut d = Deadlines::default();
        let (a, b, c) = (
            ReservationId::new(),
            ReservationId::new(),
            ReservationId::new(),
        );
        d.push(at(300), c, Due::Purge);
        d.push(at(100), a, Due::Deadline);
        d.push(at(200), b, Due::Deadline);
        assert_eq!(d.next(), Some(at(100)));
        assert_eq!(d.pop_due(at(99)), vec![]);
        assert_eq!(
            d.pop_due(at(200)),
            vec![(a, Due::Deadline), (b, Due::Deadline)]
        );
        assert_eq!(d.next(), Some(at(300)));
        assert_eq!(d.pop_due(at(1_000)), vec![(c, Due::Purge)]);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn a_million_deadlines_pop_in_order() {
        let mut d = Deadlines::default();
        for i in (0..1_000_000).rev() {
            d.push(at(i), ReservationId::new(), Due::Deadline);
        }
        assert_eq!(d.pop_due(at(9)).len(), 10);
        assert_eq!(d.next(), Some(at(10)));
    }
}

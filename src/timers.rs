//! Deadlines: a min-heap of (instant, reservation) and the thread that fires them.
//!
//! No periodic scan: the thread sleeps until the earliest instant, pops every due entry and
//! hands it to the [`Fire`] it was given (the coordinator, which this module does not know).
//! An entry is a hint, not a fact: the handler re-reads the log, so stale entries (a
//! reservation confirmed meanwhile, a deadline moved earlier and pushed again) cost one
//! lookup and change nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::future::BoxFuture;

use crate::domain::ReservationId;

/// What the deadline thread calls when instants come.
pub trait Fire: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Expires a batch of reservations whose deadlines came (harmless for any that is not
    /// due any more). An error (the log out of reach) arms them again a second later.
    fn expire(&self, ids: Vec<ReservationId>) -> BoxFuture<'static, Result<(), String>>;

    /// The runtime the expiries must run on, when not the deadline thread's own (a store
    /// whose connections live on the main runtime).
    fn runtime(&self) -> Option<tokio::runtime::Handle>;
}

/// The arming side of the timer queue: the coordinator arms, the deadline thread fires.
///
/// Arming only wakes the deadline thread when the new instant is earlier than the one it
/// sleeps until: deadlines are mostly far away, and waking another thread for each new
/// reservation cost a few percent of the CPU under load.
#[derive(Clone, Default)]
pub struct TimerQueue {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    entries: Vec<(DateTime<Utc>, ReservationId)>,
    /// When the deadline thread will look next; `None` while it has nothing to wait for.
    next_wake: Option<DateTime<Utc>>,
}

impl TimerQueue {
    /// Arms a timer: the deadline of `id` falls at `at`.
    pub fn arm(&self, at: DateTime<Utc>, id: ReservationId) {
        let mut pending = self.shared.pending.lock().expect("timer queue lock");
        pending.entries.push((at, id));
        if pending.next_wake.is_none_or(|next| at < next) {
            pending.next_wake = Some(at);
            drop(pending);
            self.shared.wake.notify_one();
        }
    }

    /// Moves the armed entries into `deadlines` and records when the thread will look next.
    fn drain_into(&self, deadlines: &mut Deadlines) -> Option<DateTime<Utc>> {
        let mut pending = self.shared.pending.lock().expect("timer queue lock");
        for (at, id) in pending.entries.drain(..) {
            deadlines.push(at, id);
        }
        pending.next_wake = deadlines.next();
        pending.next_wake
    }
}

/// Most deadlines expired in one batch: large enough to share a flush among many, small
/// enough that the first of a storm is not held up by the last.
const EXPIRY_BATCH: usize = 512;

/// Pending timers, earliest first. Pure: the caller says what time it is.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(DateTime<Utc>, ReservationId)>>,
}

impl Deadlines {
    pub fn push(&mut self, at: DateTime<Utc>, id: ReservationId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest pending instant.
    #[must_use]
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns every reservation whose deadline is due at `now`.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<ReservationId> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek() {
            if *at > now {
                break;
            }
            due.push(*id);
            self.heap.pop();
        }
        due
    }
}

/// Starts the deadline thread: its own single-threaded runtime runs [`run`] and the
/// expiries it fires, so that deadlines keep their time while the main runtime is busy with
/// thousands of participant calls (it competes for the CPU as one thread among the OS's,
/// not as one task among the runtime's). With a database store, the expiries run on the
/// main runtime instead: database connections belong to it (this runtime has no I/O).
///
/// # Errors
/// When the thread or its runtime cannot be created.
pub fn start(
    arm: TimerQueue,
    handler: Arc<dyn Fire>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let stop = shutdown.clone();
    std::thread::Builder::new()
        .name("tcc-deadlines".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(run(arm, handler, tasks, shutdown));
            }));
            if let Err(panic) = ran {
                // A coordinator without deadlines must not go on serving: stop, and let the
                // join report it (the process then exits with an error).
                stop.cancel();
                std::panic::resume_unwind(panic);
            }
        })
}

/// Runs the deadline loop until `shutdown`: receives deadlines to arm, fires due ones.
pub async fn run(
    arm: TimerQueue,
    handler: Arc<dyn Fire>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut deadlines = Deadlines::default();
    loop {
        let next = arm.drain_into(&mut deadlines);
        let sleep = async {
            match next {
                Some(at) => {
                    let wait = (at - handler.now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            // An earlier instant was armed: look again.
            () = arm.shared.wake.notified() => {}
            () = sleep => {
                let expiring = deadlines.pop_due(handler.now());
                // Deadlines due together are expired together: one flush for the batch.
                for batch in expiring.chunks(EXPIRY_BATCH) {
                    let ids = batch.to_vec();
                    let (handler, rearm) = (handler.clone(), arm.clone());
                    let io = handler.runtime();
                    let expiring = async move {
                        if let Err(error) = handler.expire(ids.clone()).await {
                            // The log is out of reach: the deadlines stay due, and are tried
                            // again (expiring is harmless for those already expired).
                            tracing::error!(%error, count = ids.len(),
                                "expiring reservations failed; trying again in 1 s");
                            let at = handler.now() + chrono::Duration::seconds(1);
                            for id in ids {
                                rearm.arm(at, id);
                            }
                        }
                    };
                    match io {
                        Some(runtime) => tasks.spawn_on(expiring, &runtime),
                        None => tasks.spawn(expiring),
                    };
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
        d.push(at(300), c);
        d.push(at(100), a);
        d.push(at(200), b);
        assert_eq!(d.next(), Some(at(100)));
        assert_eq!(d.pop_due(at(99)), vec![]);
        assert_eq!(d.pop_due(at(200)), vec![a, b]);
        assert_eq!(d.next(), Some(at(300)));
        assert_eq!(d.pop_due(at(1_000)), vec![c]);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn arming_wakes_the_deadline_thread_only_for_a_new_earliest_instant() {
        use futures_util::FutureExt;

        let queue = TimerQueue::default();
        let mut deadlines = Deadlines::default();
        let woken = |q: &TimerQueue| q.shared.wake.notified().now_or_never().is_some();

        queue.arm(at(100), ReservationId::new());
        assert!(
            woken(&queue),
            "the first deadline wakes the sleeping thread"
        );
        assert_eq!(queue.drain_into(&mut deadlines), Some(at(100)));

        queue.arm(at(200), ReservationId::new());
        assert!(!woken(&queue), "a later instant waits for the next look");

        queue.arm(at(50), ReservationId::new());
        assert!(woken(&queue), "an earlier instant wakes it");
        assert_eq!(queue.drain_into(&mut deadlines), Some(at(50)));
        assert_eq!(
            deadlines.pop_due(at(1_000)).len(),
            3,
            "nothing armed is lost"
        );
    }

    #[test]
    fn a_million_deadlines_pop_in_order() {
        let mut d = Deadlines::default();
        for i in (0..1_000_000).rev() {
            d.push(at(i), ReservationId::new());
        }
        assert_eq!(d.pop_due(at(9)).len(), 10);
        assert_eq!(d.next(), Some(at(10)));
    }
}

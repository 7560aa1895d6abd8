//! Several coordinators on one shared store: the lease heartbeat, takeover of the
//! reservations of instances whose lease lapsed, the retention sweep, and the state counts.
//!
//! One task per process, ticking every quarter of the lease (at most every second):
//! 1. renew this instance's lease (a failure marks the store unreachable: `/health/ready`
//!    answers 503 and client writes get 503 with `Retry-After` until it answers again);
//! 2. claim unfinished reservations whose owner's lease lapsed, and resume them here
//!    (deadlines armed, drivers started): work of a dead instance is finished within about
//!    one lease plus one tick; and after the database was out of reach, resume every
//!    unfinished reservation this instance owns (a write may have committed without its
//!    answer, so the driver or deadline that should have followed it never started; a
//!    deadline or retry that fell meanwhile is due now);
//! 3. delete reservations past their retention, in batches of [`PURGE_BATCH`], at most
//!    [`PURGE_BATCHES_PER_TICK`] batches a tick (no long locks on a big table);
//! 4. every [`COUNT_EVERY`], read how many reservations are in each state, for
//!    `tcc_reservations{state}` (the count is the whole cluster's, the same on every instance).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;

/// Reservations claimed in one statement.
const CLAIM_BATCH: usize = 500;
/// Reservations deleted in one statement.
const PURGE_BATCH: usize = 1000;
const PURGE_BATCHES_PER_TICK: usize = 10;
/// How often the state counts are read (a full count is a scan of the table).
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// The tick for a lease: a quarter of it, at most a second.
#[must_use]
pub fn tick(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_secs(1))
}

/// Runs until `shutdown`, then ends this instance's lease so that others take over at once.
pub async fn run(coordinator: Coordinator, lease: Duration, shutdown: CancellationToken) {
    let store = coordinator.store().clone();
    let mut ticks = tokio::time::interval(tick(lease));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = tokio::time::Instant::now() - COUNT_EVERY;
    // Unreachable from the start: the store said so once already, as it began to wait.
    let mut failing = !store.is_reachable();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let round = async {
            store.heartbeat().await?;
            if store.take_interrupted() {
                let mut after = None;
                loop {
                    let mine = store.owned_active(after, CLAIM_BATCH).await?;
                    for reservation in &mine {
                        coordinator.take_over(reservation);
                    }
                    tracing::debug!(
                        count = mine.len(),
                        "resumed this instance's reservations after the database was out of reach"
                    );
                    match mine.last() {
                        Some(last) if mine.len() == CLAIM_BATCH => after = Some(last.id()),
                        _ => break,
                    }
                }
            }
            loop {
                let claimed = store.claim_orphans(CLAIM_BATCH).await?;
                let count = claimed.len();
                for reservation in &claimed {
                    tracing::info!(reservation_id = %reservation.id(), state = %reservation.state(),
                        "taking over a reservation whose coordinator's lease lapsed");
                    coordinator.take_over(reservation);
                }
                if count < CLAIM_BATCH {
                    break;
                }
            }
            for _ in 0..PURGE_BATCHES_PER_TICK {
                if store
                    .purge_due(coordinator.now(), PURGE_BATCH)
                    .await?
                    .scanned
                    < PURGE_BATCH
                {
                    break;
                }
            }
            if counted.elapsed() >= COUNT_EVERY {
                coordinator
                    .metrics()
                    .set_states(&store.count_by_state().await?);
                counted = tokio::time::Instant::now();
            }
            Ok::<_, crate::store::StoreError>(())
        };
        match round.await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the database answers again; ready");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::error!(%error, "the database cannot be reached: not ready, client \
                    writes answer 503 until it is back; the lease lapses after {}",
                    humantime::format_duration(lease));
            }
            Err(error) => tracing::debug!(%error, "the database is still out of reach"),
        }
    }
    store.release().await;
}

//! One process on its own log, or several processes on one database: decided once, when the
//! app is built. Each behaviour that differs between the two is one method here, so a reader
//! finds every difference in one place and a new one is added here, not as a branch elsewhere.

use std::time::Duration;

/// How often a client waiting for a change (`Prefer: wait`) re-reads a reservation kept in a
/// shared store, where another instance may change it.
const SHARED_POLL: Duration = Duration::from_millis(100);

/// Where the log lives and who else writes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// This process alone owns its log (sled): what it keeps in memory is the truth.
    Embedded,
    /// Several processes share the log (PostgreSQL): records change under a process's feet,
    /// and work is owned through leases.
    Shared,
}

impl Topology {
    /// Clients may be answered from the copy of a reservation this process is working on.
    /// Shared: every client read goes to the database (another instance may have changed it).
    #[must_use]
    pub fn answers_from_memory(self) -> bool {
        self == Topology::Embedded
    }

    /// How often a client waiting for a change re-reads the reservation. Embedded: never,
    /// every change is made here and arrives by itself.
    #[must_use]
    pub fn poll_for_changes(self) -> Option<Duration> {
        (self == Topology::Shared).then_some(SHARED_POLL)
    }

    /// A request repeated for work in progress makes sure a driver runs: its first write may
    /// have committed while its answer was lost. Only where what is read is committed: the
    /// embedded log can show a deadline's decision before its flush, and nothing may call a
    /// participant before that.
    #[must_use]
    pub fn redrives_repeated_requests(self) -> bool {
        self == Topology::Shared
    }

    /// The counts by state come from this process's own transitions. Shared: from the
    /// database, for the whole cluster (see `cluster`).
    #[must_use]
    pub fn counts_states_here(self) -> bool {
        self == Topology::Embedded
    }

    /// Retention ends through this process's sweep of its own log, every second (see
    /// `deadlines::RETENTION_SWEEP`). Shared: the cluster's sweep of the
    /// database (see `cluster`).
    #[must_use]
    pub fn sweeps_its_own_log(self) -> bool {
        self == Topology::Embedded
    }

    /// The store's calls must run on the main runtime (its database connections live there),
    /// not on the deadline thread's.
    #[must_use]
    pub fn store_needs_main_runtime(self) -> bool {
        self == Topology::Shared
    }

    /// Every reservation in progress is in this process's memory: the stuck view and the
    /// host-wide retry read it there. Shared: other instances work on others, so they are
    /// read from the database (an index on the state).
    #[must_use]
    pub fn works_on_everything_in_progress(self) -> bool {
        self == Topology::Embedded
    }

    /// Leases, takeover of lapsed instances' work and the retention sweep run (`cluster`).
    #[must_use]
    pub fn has_cluster_duties(self) -> bool {
        self == Topology::Shared
    }
}

#[cfg(test)]
mod tests {
    use super::Topology::{Embedded, Shared};

    #[test]
    fn every_difference_between_an_embedded_and_a_shared_log() {
        let row = |t: super::Topology| {
            (
                t.answers_from_memory(),
                t.poll_for_changes().is_some(),
                t.redrives_repeated_requests(),
                t.counts_states_here(),
                t.sweeps_its_own_log(),
                t.store_needs_main_runtime(),
                t.has_cluster_duties(),
                t.works_on_everything_in_progress(),
            )
        };
        assert_eq!(
            row(Embedded),
            (true, false, false, true, true, false, false, true)
        );
        assert_eq!(
            row(Shared),
            (false, true, true, false, false, true, true, false)
        );
    }
}

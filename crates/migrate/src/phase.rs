//! The coarse phases operators see (metrics, `status`, the report's table):
//! each state of [`crate::source::Source`] and
//! [`crate::destination::Destination`] belongs to one.

use serde::{Deserialize, Serialize};

/// The phases of a migration, in order. Transitions only go forward; any
/// failure before the commit leads to `Aborted` with the source still the
/// owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Link to the destination, agree on the epoch.
    Connecting,
    /// Iterative method only: dumps while the service runs, each shipped
    /// as a delta against the previous, until the dirty rate is low.
    PreCopying,
    /// Barrier: fix the snapshot point s.
    Quiescing,
    /// The snapshot driver dumps the service.
    Dumping,
    /// Snapshot files go to the destination.
    Transferring,
    /// The destination restores; the log after s streams and is replayed.
    CatchingUp,
    /// Input held; the tail is shipped and ownership moves.
    HandingOver,
    /// The old service is stopped.
    Stopping,
    /// Finished: the destination owns the service.
    Done,
    /// Failed; the source still owns and serves.
    Aborted,
}

impl Phase {
    /// Every phase, in order (the metrics export each).
    pub const ALL: [Phase; 10] = [
        Phase::Connecting,
        Phase::PreCopying,
        Phase::Quiescing,
        Phase::Dumping,
        Phase::Transferring,
        Phase::CatchingUp,
        Phase::HandingOver,
        Phase::Stopping,
        Phase::Done,
        Phase::Aborted,
    ];

    /// The phase's name, as in JSON and the `phase` label.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::PreCopying => "pre_copying",
            Phase::Quiescing => "quiescing",
            Phase::Dumping => "dumping",
            Phase::Transferring => "transferring",
            Phase::CatchingUp => "catching_up",
            Phase::HandingOver => "handing_over",
            Phase::Stopping => "stopping",
            Phase::Done => "done",
            Phase::Aborted => "aborted",
        }
    }

    /// The phase that may follow this one on success.
    pub fn next(self) -> Option<Phase> {
        use Phase::*;
        match self {
            Connecting => Some(Quiescing),
            Quiescing => Some(Dumping),
            Dumping => Some(Transferring),
            Transferring => Some(CatchingUp),
            CatchingUp => Some(HandingOver),
            HandingOver => Some(Stopping),
            Stopping => Some(Done),
            PreCopying => Some(Quiescing),
            Done | Aborted => None,
        }
    }

    /// Whether a migration may go from this phase to `to`: the successor,
    /// or the iterative method's detour through `PreCopying`.
    pub fn can_advance_to(self, to: Phase) -> bool {
        self.next() == Some(to) || (self == Phase::Connecting && to == Phase::PreCopying)
    }
}

//! What the protocol machines need to know of a peer message: its kind and
//! the fields that decide a transition (an epoch, a reason) — not its
//! payload, so a machine stays cheap to feed and to test.

use replaymig_peer::Message;

/// A message from the other side of a migration, as the machines see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `MigrateBegin`: the source wants to hand the service over under `epoch`.
    Begin {
        /// The epoch offered.
        epoch: u64,
    },
    /// `MigrateReady`.
    Ready,
    /// `SnapshotBegin`, `SnapshotChunk`, `SnapshotEnd` or a streamed piece.
    Snapshot,
    /// `LogBatch`.
    LogBatch,
    /// `LogApplied`.
    LogApplied,
    /// `HandOver` under `epoch`.
    HandOver {
        /// The epoch handed over.
        epoch: u64,
    },
    /// `HandOverDone` for `epoch`.
    HandOverDone {
        /// The epoch prepared.
        epoch: u64,
    },
    /// `HandOverCommit` for `epoch`.
    Commit {
        /// The epoch committed.
        epoch: u64,
    },
    /// `MigrateAbort`.
    Abort {
        /// Why the other side ended it.
        reason: String,
    },
    /// Anything else (never legal during a migration).
    Other {
        /// The message's name.
        name: &'static str,
    },
}

impl From<&Message> for Incoming {
    fn from(m: &Message) -> Incoming {
        match m {
            Message::MigrateBegin { epoch, .. } => Incoming::Begin { epoch: *epoch },
            Message::MigrateReady => Incoming::Ready,
            Message::SnapshotBegin { .. }
            | Message::SnapshotChunk { .. }
            | Message::SnapshotEnd
            | Message::SnapshotStreamChunk { .. }
            | Message::SnapshotStreamsNamed { .. } => Incoming::Snapshot,
            Message::LogBatch { .. } => Incoming::LogBatch,
            Message::LogApplied { .. } => Incoming::LogApplied,
            Message::HandOver { epoch, .. } => Incoming::HandOver { epoch: *epoch },
            Message::HandOverDone { epoch, .. } => Incoming::HandOverDone { epoch: *epoch },
            Message::HandOverCommit { epoch } => Incoming::Commit { epoch: *epoch },
            Message::MigrateAbort { reason } => Incoming::Abort {
                reason: reason.clone(),
            },
            other => Incoming::Other { name: other.name() },
        }
    }
}

impl Incoming {
    /// The message's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Incoming::Begin { .. } => "migrate_begin",
            Incoming::Ready => "migrate_ready",
            Incoming::Snapshot => "snapshot",
            Incoming::LogBatch => "log_batch",
            Incoming::LogApplied => "log_applied",
            Incoming::HandOver { .. } => "hand_over",
            Incoming::HandOverDone { .. } => "hand_over_done",
            Incoming::Commit { .. } => "hand_over_commit",
            Incoming::Abort { .. } => "migrate_abort",
            Incoming::Other { name } => name,
        }
    }

    /// One of each kind, for tests that try every message in every state.
    pub fn samples(epoch: u64) -> Vec<Incoming> {
        vec![
            Incoming::Begin { epoch },
            Incoming::Ready,
            Incoming::Snapshot,
            Incoming::LogBatch,
            Incoming::LogApplied,
            Incoming::HandOver { epoch },
            Incoming::HandOverDone { epoch },
            Incoming::Commit { epoch },
            Incoming::Abort {
                reason: "test".into(),
            },
            Incoming::Other { name: "ping" },
        ]
    }
}

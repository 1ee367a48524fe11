//! What a migration reports: the paper's figures (total time, interruption,
//! time per phase, bytes over the link by kind) as a table and as JSON.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The phases operators see; the protocol machines in crates/migrate
/// map each of their states to one.
pub use replaymig_migrate::Phase;

/// How a migration moves the service.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Paper Algorithm 2 (the product): one snapshot, then the journaled
    /// client input is shipped and replayed while the source serves on.
    #[default]
    Replay,
    /// Paper Algorithm 1 (the baseline): dumps while the service runs, each
    /// shipped as a block delta, until the dirty rate falls below
    /// `dirty_threshold_bytes_per_second` or after `max_iterations`; then
    /// input is held for a final dump, its delta, the restore, and the
    /// hand-over.
    Iterative {
        /// Stop pre-copying once memory is dirtied slower than this.
        dirty_threshold_bytes_per_second: u64,
        /// Pre-copy rounds at most.
        max_iterations: u32,
    },
}

impl Method {
    /// Its name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Replay => "replay",
            Method::Iterative { .. } => "iterative",
        }
    }
}

/// One pre-copy round of an iterative migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    /// 1, 2, …
    pub round: u32,
    /// Taking the dump, seconds (CRIU freezes the service meanwhile).
    pub dump_seconds: f64,
    /// Bytes that differ from what the destination held.
    pub dirty_bytes: u64,
    /// Bytes on the link for them (compressed).
    pub sent_bytes: u64,
    /// Dirty bytes per second since the previous round's dump (0 for the
    /// first round, which sends everything).
    pub dirty_rate: f64,
    /// The whole round, seconds.
    pub seconds: f64,
}

/// Figures of one migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The service moved.
    pub service: String,
    /// `replay` or `iterative`.
    #[serde(default)]
    pub method: String,
    /// Iterative method: the pre-copy rounds (the final dump is not one).
    #[serde(default)]
    pub iterations: Vec<Iteration>,
    /// From which node to which.
    pub from: String,
    /// To which node.
    pub to: String,
    /// The new ownership epoch.
    pub epoch: u64,
    /// The snapshot point.
    pub snapshot_lsn: u64,
    /// The last LSN the old owner journaled.
    pub handover_lsn: u64,
    /// Trigger → destination owns and serves, seconds.
    pub total_seconds: f64,
    /// Client input held (snapshot barrier + hand-over + every failed
    /// barrier attempt), seconds.
    pub interruption_seconds: f64,
    /// Barrier attempts that gave up (the service was not quiet within
    /// `max_hold_ms`; input was released and the barrier tried again).
    #[serde(default)]
    pub failed_holds: u32,
    /// Client input held by those attempts, seconds (in the interruption).
    #[serde(default)]
    pub failed_hold_seconds: f64,
    /// Of which the hand-over hold.
    pub handover_hold_seconds: f64,
    /// The hand-over hold by step, seconds: `quiesce` (until the service is
    /// quiet), `tail` (the last records shipped and applied), `prepare`
    /// (the destination takes over the replayed connections, durably),
    /// `commit` (the source's durable record and message), `switch` (open
    /// connections become tunnels). Iterative migrations hold input from
    /// the final dump on, so their hold also has `dump`, `transfer` and
    /// `restore` (the destination restoring and acknowledging) steps.
    #[serde(default)]
    pub handover_steps: Vec<(String, f64)>,
    /// Service jitter (the paper's term): served, but not by the node the
    /// migration moves it to — from the trigger until the destination owns,
    /// minus the interruption. Clients at the destination are tunneled to
    /// the source meanwhile.
    #[serde(default)]
    pub jitter_seconds: f64,
    /// Seconds per phase.
    pub phase_seconds: Vec<(String, f64)>,
    /// At the destination, within transferring/catching up: restoring the
    /// snapshot and starting the service, seconds.
    #[serde(default)]
    pub destination_restore_seconds: f64,
    /// At the destination: replaying the log, from the restored service to
    /// the hand-over, seconds.
    #[serde(default)]
    pub destination_replay_seconds: f64,
    /// Snapshot bytes on the link (after compression).
    pub snapshot_bytes: u64,
    /// Snapshot bytes before compression.
    pub snapshot_raw_bytes: u64,
    /// Of those, bytes sent while the dump was still being written
    /// (`ExecDriver::stream`): the part of the transfer the dump overlapped.
    #[serde(default)]
    pub snapshot_streamed_bytes: u64,
    /// Journal bytes on the link (compressed batches).
    pub log_bytes: u64,
    /// The same records before compression.
    #[serde(default)]
    pub log_raw_bytes: u64,
    /// Journal records shipped.
    pub log_records: u64,
    /// Everything else on the migration's link, both ways: handshake,
    /// acknowledgements, hand-over messages, and the framing of the
    /// snapshot and log messages.
    #[serde(default)]
    pub control_bytes: u64,
    /// Client connections handed over through tunnels from this node.
    pub connections_handed_over: usize,
    /// Tunnels from other nodes that left this node's path: the relaying
    /// node took the word to dial the new owner itself.
    #[serde(default)]
    pub connections_redirected: usize,
    /// Client connections closed at the switch: no tunnel to the new owner
    /// could be opened for them (it died or is unreachable after the
    /// commit); their clients reconnect.
    #[serde(default)]
    pub connections_closed_at_switch: usize,
    /// Client connections the barriers closed (their clients reconnect):
    /// input left unanswered, or in use before the snapshot
    /// (`close_connections`, docs/fidelity.md).
    #[serde(default)]
    pub connections_closed: ConnectionsClosed,
    /// Client connections the snapshot carried with their server-side
    /// state (CRIU with `carry_connections`): none of them was closed.
    #[serde(default)]
    pub connections_carried: usize,
}

/// Connections a migration's barriers closed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionsClosed {
    /// Their last input had no answer when the service was otherwise quiet.
    pub unanswered: usize,
    /// In use before the snapshot, so they may hold state the destination
    /// could not give them.
    pub in_use: usize,
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "migrated {} from {} to {} (epoch {})",
            self.service, self.from, self.to, self.epoch
        )?;
        writeln!(f, "  method            {:>10}", self.method)?;
        writeln!(f, "  total time        {:>10.3} s", self.total_seconds)?;
        writeln!(
            f,
            "  interruption      {:>10.3} s (hand-over hold {:.3} s)",
            self.interruption_seconds, self.handover_hold_seconds
        )?;
        if self.failed_holds > 0 {
            writeln!(
                f,
                "  failed barriers   {:>10} ({:.3} s held, in the interruption)",
                self.failed_holds, self.failed_hold_seconds
            )?;
        }
        if self.connections_carried > 0 {
            writeln!(
                f,
                "  carried by CRIU   {:>10} connections, with their state",
                self.connections_carried
            )?;
        }
        let closed = self.connections_closed;
        if closed.unanswered + closed.in_use > 0 {
            writeln!(
                f,
                "  closed by barriers{:>10} ({} in use before the snapshot, {} with input unanswered)",
                closed.unanswered + closed.in_use,
                closed.in_use,
                closed.unanswered
            )?;
        }
        if !self.handover_steps.is_empty() {
            let steps: Vec<String> = self
                .handover_steps
                .iter()
                .map(|(step, secs)| format!("{step} {:.1}", secs * 1000.0))
                .collect();
            writeln!(f, "  hand-over hold ms  {}", steps.join(", "))?;
        }
        writeln!(f, "  jitter            {:>10.3} s", self.jitter_seconds)?;
        writeln!(
            f,
            "  snapshot at LSN   {:>10}   hand-over at LSN {}",
            self.snapshot_lsn, self.handover_lsn
        )?;
        writeln!(
            f,
            "  bytes: snapshot   {:>10} ({} before compression, {} of them while dumping)",
            self.snapshot_bytes, self.snapshot_raw_bytes, self.snapshot_streamed_bytes
        )?;
        writeln!(
            f,
            "         log        {:>10} ({} records, {} before compression)",
            self.log_bytes, self.log_records, self.log_raw_bytes
        )?;
        writeln!(f, "         control    {:>10}", self.control_bytes)?;
        writeln!(
            f,
            "  connections handed over: {} (+ {} tunnels from other nodes redirected)",
            self.connections_handed_over, self.connections_redirected
        )?;
        if self.connections_closed_at_switch > 0 {
            writeln!(
                f,
                "  connections closed at the switch: {} (the new owner could not be reached for them; their clients reconnect)",
                self.connections_closed_at_switch
            )?;
        }
        for (phase, secs) in &self.phase_seconds {
            writeln!(f, "  {phase:<17} {secs:>10.3} s")?;
        }
        for i in &self.iterations {
            writeln!(
                f,
                "  pre-copy round {}: dump {:.3} s, {} dirty bytes ({:.1} MB/s), {} sent, {:.3} s",
                i.round,
                i.dump_seconds,
                i.dirty_bytes,
                i.dirty_rate / 1e6,
                i.sent_bytes,
                i.seconds
            )?;
        }
        writeln!(
            f,
            "  at {}: restore {:.3} s, replay {:.3} s",
            self.to, self.destination_restore_seconds, self.destination_replay_seconds
        )?;
        Ok(())
    }
}

/// What a running migration tells its caller as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// A new phase began.
    Phase(Phase),
    /// Transfer and catch-up figures (sent about twice a second).
    Shipping {
        /// Snapshot bytes on the link so far.
        snapshot_bytes: u64,
        /// Log records shipped so far.
        log_records: u64,
        /// Highest LSN the destination has replayed.
        applied_lsn: u64,
        /// The source journal's head.
        head_lsn: u64,
    },
}

//! The node's migration metrics: the report's figures, per service, on the
//! Prometheus endpoint (`replaymig node --metrics ADDR`).

use crate::report::{MigrationReport, Phase};
use metrics::{counter, gauge, histogram};
use replaymig_proxy::metrics::ExporterOptions;

/// Migrations by role (`source`/`destination`) and outcome (`ok`/`failed`).
pub const MIGRATIONS_TOTAL: &str = "replaymig_migrations_total";
/// Time per migration phase (label `phase`), seconds. The migration
/// figures carry `method` (`replay`/`iterative`) too.
pub const PHASE_SECONDS: &str = "replaymig_migration_phase_duration_seconds";
/// Total migration time, seconds.
pub const TOTAL_SECONDS: &str = "replaymig_migration_duration_seconds";
/// Client input held per migration, seconds.
pub const INTERRUPTION_SECONDS: &str = "replaymig_migration_interruption_seconds";
/// Service jitter per migration (served through the source while the
/// destination is the target), seconds.
pub const JITTER_SECONDS: &str = "replaymig_migration_jitter_seconds";
/// Bytes over the peer link by `kind` (`snapshot`, `log`, `control`).
pub const LINK_BYTES_TOTAL: &str = "replaymig_migration_link_bytes_total";
/// Iterative migrations: bytes sent by pre-copy rounds (also counted in
/// `LINK_BYTES_TOTAL{kind="snapshot"}`).
pub const PRECOPY_BYTES_TOTAL: &str = "replaymig_migration_precopy_bytes_total";
/// Iterative migrations: dirty bytes per second measured by each pre-copy
/// round after the first.
pub const PRECOPY_DIRTY_RATE: &str = "replaymig_migration_precopy_dirty_bytes_per_second";
/// The service's ownership epoch as this node knows it.
pub const EPOCH: &str = "replaymig_ownership_epoch";
/// 1 while this node owns the service.
pub const OWNED: &str = "replaymig_service_owned";
/// The migration phase of the last migration here (labels `role`,
/// `phase`; 1 = current, every other phase 0; stays at `done`/`aborted`).
pub const PHASE: &str = "replaymig_migration_phase";
/// 1 while a migration of the service runs here (label `role`).
pub const IN_PROGRESS: &str = "replaymig_migration_in_progress";
/// When the last migration here started, Unix seconds (label `role`).
pub const STARTED_TIMESTAMP: &str = "replaymig_migration_start_timestamp_seconds";
/// Destination, while catching up: journaled records not yet replayed.
pub const REPLAY_LAG_RECORDS: &str = "replaymig_replay_lag_records";
/// Destination, while catching up: age of the oldest record not yet
/// replayed (how far the restored service trails the live one), seconds.
pub const REPLAY_LAG_SECONDS: &str = "replaymig_replay_lag_seconds";
/// Every hold of client input by a migration's barrier, seconds, by
/// `outcome`: `held` (the barrier went quiet; measured until released)
/// or `not_quiet` (the attempt gave up after `max_hold_ms`).
pub const HOLD_SECONDS: &str = "replaymig_migration_hold_seconds";
/// Admin requests refused, by `reason` (`not_loopback`, `bad_token`, `malformed`).
pub const ADMIN_REFUSED_TOTAL: &str = "replaymig_admin_refused_total";
/// Replays that diverged from the journal: a migration's (it then aborts)
/// or a rebuild's after a restart (the node keeps the service: the source
/// gave it up; each divergence is logged as an error).
pub const DIVERGENCES_TOTAL: &str = "replaymig_replay_divergences_total";
/// 1 if the last link attempt to or from this peer node succeeded (label
/// `peer`, a node name).
pub const PEER_LINK_UP: &str = "replaymig_peer_link_up";
/// Failed `accept`s on the node's own listeners (label `listener`: `peer`,
/// `admin`): each is followed by a short backoff rather than a spin.
pub const ACCEPT_ERRORS_TOTAL: &str = "replaymig_node_accept_errors_total";

/// Buckets of the node's second-valued histograms: migrations last from
/// milliseconds (a hand-over) to minutes (a large snapshot on a slow link).
const MIGRATION_SECONDS_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets of the pre-copy dirty rate, bytes per second.
const DIRTY_RATE_BUCKETS: [f64; 9] = [1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7, 6.4e7, 2.56e8, 1e9];

/// The node's exporter settings: its histogram buckets, and its name as the
/// `node` label on every series.
pub fn exporter_options(config: &crate::NodeConfig) -> ExporterOptions {
    let seconds = [
        TOTAL_SECONDS,
        INTERRUPTION_SECONDS,
        HOLD_SECONDS,
        JITTER_SECONDS,
        PHASE_SECONDS,
    ];
    let mut buckets: Vec<(String, Vec<f64>)> = seconds
        .iter()
        .map(|name| (name.to_string(), MIGRATION_SECONDS_BUCKETS.to_vec()))
        .collect();
    buckets.push((PRECOPY_DIRTY_RATE.to_string(), DIRTY_RATE_BUCKETS.to_vec()));
    ExporterOptions {
        buckets,
        global_labels: vec![("node".to_string(), config.name.clone())],
    }
}

/// Help texts of the node's and the peer link's families.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use replaymig_peer::names as peer;
    describe_counter!(MIGRATIONS_TOTAL, "Migrations ended, by role and outcome");
    describe_histogram!(
        PHASE_SECONDS,
        Unit::Seconds,
        "Time per phase of finished migrations"
    );
    describe_histogram!(
        TOTAL_SECONDS,
        Unit::Seconds,
        "Migration time, trigger to done"
    );
    describe_histogram!(
        INTERRUPTION_SECONDS,
        Unit::Seconds,
        "Client input held per migration"
    );
    describe_histogram!(
        HOLD_SECONDS,
        Unit::Seconds,
        "Every hold of client input by a barrier, by outcome (held, not_quiet)"
    );
    describe_histogram!(
        JITTER_SECONDS,
        Unit::Seconds,
        "Trigger until the destination owns, minus the interruption"
    );
    describe_counter!(
        LINK_BYTES_TOTAL,
        Unit::Bytes,
        "Migration bytes over the peer link by kind"
    );
    describe_counter!(
        PRECOPY_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes sent by pre-copy rounds"
    );
    describe_histogram!(
        PRECOPY_DIRTY_RATE,
        "Dirty bytes per second measured by pre-copy rounds"
    );
    describe_gauge!(
        EPOCH,
        "Ownership epoch of the service as this node knows it"
    );
    describe_gauge!(OWNED, "1 while this node owns the service");
    describe_gauge!(
        PHASE,
        "Phase of the running (or last) migration here: 1 = current"
    );
    describe_gauge!(IN_PROGRESS, "1 while a migration of the service runs here");
    describe_gauge!(
        STARTED_TIMESTAMP,
        Unit::Seconds,
        "When the last migration here started"
    );
    describe_gauge!(
        REPLAY_LAG_RECORDS,
        "Shipped records not yet replayed (destination)"
    );
    describe_gauge!(
        REPLAY_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest record not yet replayed"
    );
    describe_counter!(
        DIVERGENCES_TOTAL,
        "Replays (migration or rebuild) that diverged from the journal"
    );
    describe_counter!(FENCED_TOTAL, "Tunnels refused by the epoch fence");
    describe_counter!(
        RESOLVED_TOTAL,
        "Prepared hand-overs resolved by asking the source"
    );
    describe_counter!(
        FLEET_COMMIT_UNKNOWN_TOTAL,
        "Fleet mode: hand-over commits whose outcome etcd left unknown (settled before serving on)"
    );
    describe_gauge!(
        PEER_LINK_UP,
        "1 if the last link attempt with the peer node succeeded"
    );
    describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        "Failed accepts on the node's peer and admin listeners"
    );
    describe_counter!(ADMIN_REFUSED_TOTAL, "Admin requests refused, by reason");
    describe_counter!(
        peer::AUTH_FAILURES_TOTAL,
        "Peer handshakes refused, by the refusing side"
    );
    describe_counter!(
        peer::BAD_FRAMES_TOTAL,
        "Peer frames that could not be decoded"
    );
    describe_counter!(peer::FRAMES_TOTAL, "Peer frames sent and received");
    describe_counter!(
        peer::BYTES_TOTAL,
        Unit::Bytes,
        "Peer link bytes on the wire"
    );
}

/// Exports the node's families at zero before anything happens, so a
/// dashboard (and an alert on `increase(...)`) sees them from the start.
pub(crate) fn register(config: &crate::NodeConfig) {
    describe();
    for service in &config.services {
        let s = || service.name.clone();
        for role in ["source", "destination"] {
            gauge!(IN_PROGRESS, "service" => s(), "role" => role).set(0.0);
            for outcome in ["ok", "failed"] {
                counter!(MIGRATIONS_TOTAL, "service" => s(), "role" => role, "outcome" => outcome)
                    .absolute(0);
            }
        }
        counter!(FENCED_TOTAL, "service" => s()).absolute(0);
        counter!(DIVERGENCES_TOTAL, "service" => s()).absolute(0);
        gauge!(REPLAY_LAG_RECORDS, "service" => s()).set(0.0);
        gauge!(REPLAY_LAG_SECONDS, "service" => s()).set(0.0);
        for outcome in ["commit", "discard"] {
            counter!(RESOLVED_TOTAL, "service" => s(), "outcome" => outcome).absolute(0);
        }
        if config.fleet.is_some() {
            counter!(FLEET_COMMIT_UNKNOWN_TOTAL, "service" => s()).absolute(0);
        }
    }
    for side in ["dialer", "listener"] {
        counter!(replaymig_peer::names::AUTH_FAILURES_TOTAL, "side" => side).absolute(0);
    }
    counter!(replaymig_peer::names::BAD_FRAMES_TOTAL).absolute(0);
    for reason in ["not_loopback", "bad_token", "malformed"] {
        counter!(ADMIN_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
    for listener in ["peer", "admin"] {
        counter!(ACCEPT_ERRORS_TOTAL, "listener" => listener).absolute(0);
    }
}

/// An `accept` on the node's `listener` failed.
pub(crate) fn accept_error(listener: &'static str) {
    counter!(ACCEPT_ERRORS_TOTAL, "listener" => listener).increment(1);
}

/// The outcome of a link attempt with peer node `peer`.
pub(crate) fn peer_link(peer: &str, up: bool) {
    gauge!(PEER_LINK_UP, "peer" => peer.to_string()).set(if up { 1.0 } else { 0.0 });
}

/// A replay diverged (a migration's or a rebuild's).
pub(crate) fn divergence(service: &str) {
    counter!(DIVERGENCES_TOTAL, "service" => service.to_string()).increment(1);
}

/// How far the destination's replay trails the journal.
pub(crate) fn replay_lag(service: &str, records: u64, seconds: f64) {
    gauge!(REPLAY_LAG_RECORDS, "service" => service.to_string()).set(records as f64);
    gauge!(REPLAY_LAG_SECONDS, "service" => service.to_string()).set(seconds);
}

/// A migration starts here in `role`.
pub(crate) fn started(service: &str, role: &'static str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge!(STARTED_TIMESTAMP, "service" => service.to_string(), "role" => role).set(now);
    gauge!(IN_PROGRESS, "service" => service.to_string(), "role" => role).set(1.0);
}

/// Tunnels refused because this node does not own the service under the
/// tunnel's epoch (fencing at work; label `service`).
pub const FENCED_TOTAL: &str = "replaymig_tunnels_fenced_total";
/// Prepared hand-overs resolved by asking the source (label `outcome`:
/// `commit`/`discard`).
pub const RESOLVED_TOTAL: &str = "replaymig_handover_resolutions_total";

/// A tunnel refused by the epoch fence.
pub(crate) fn fenced(service: &str) {
    counter!(FENCED_TOTAL, "service" => service.to_string()).increment(1);
}

/// Fleet mode: hand-over commits left unknown by etcd.
pub const FLEET_COMMIT_UNKNOWN_TOTAL: &str = "replaymig_fleet_commit_unknown_total";

/// A fleet commit whose outcome etcd left unknown.
pub(crate) fn fleet_commit_unknown(service: &str) {
    counter!(FLEET_COMMIT_UNKNOWN_TOTAL, "service" => service.to_string()).increment(1);
}

/// A prepared hand-over resolved without the commit message.
pub(crate) fn resolved(service: &str, outcome: &'static str) {
    counter!(RESOLVED_TOTAL, "service" => service.to_string(), "outcome" => outcome).increment(1);
}

/// Ownership as seen by this node.
pub(crate) fn ownership(service: &str, epoch: u64, owned: bool) {
    gauge!(EPOCH, "service" => service.to_string()).set(epoch as f64);
    gauge!(OWNED, "service" => service.to_string()).set(if owned { 1.0 } else { 0.0 });
}

/// The current phase in `role`: 1 for it, 0 for every other phase (so a
/// new migration clears the last one's `done` or `aborted`).
pub(crate) fn phase(service: &str, role: &'static str, current: Phase) {
    for p in Phase::ALL {
        let value = if p == current { 1.0 } else { 0.0 };
        gauge!(PHASE, "service" => service.to_string(), "role" => role, "phase" => p.name())
            .set(value);
    }
}

/// A hold of client input ended (`outcome`: `held` or `not_quiet`).
pub(crate) fn hold(service: &str, outcome: &'static str, seconds: f64) {
    histogram!(HOLD_SECONDS, "service" => service.to_string(), "outcome" => outcome)
        .record(seconds);
}

/// An ended migration.
pub(crate) fn outcome(service: &str, role: &'static str, ok: bool) {
    gauge!(IN_PROGRESS, "service" => service.to_string(), "role" => role).set(0.0);
    counter!(MIGRATIONS_TOTAL, "service" => service.to_string(), "role" => role, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// A finished migration's figures (source side).
pub(crate) fn report(r: &MigrationReport) {
    let s = || r.service.clone();
    let m = || r.method.clone();
    histogram!(TOTAL_SECONDS, "service" => s(), "method" => m()).record(r.total_seconds);
    histogram!(INTERRUPTION_SECONDS, "service" => s(), "method" => m())
        .record(r.interruption_seconds);
    histogram!(JITTER_SECONDS, "service" => s(), "method" => m()).record(r.jitter_seconds);
    for (phase, secs) in &r.phase_seconds {
        histogram!(PHASE_SECONDS, "service" => s(), "method" => m(), "phase" => phase.clone())
            .record(*secs);
    }
    for (kind, bytes) in [
        ("snapshot", r.snapshot_bytes),
        ("log", r.log_bytes),
        ("control", r.control_bytes),
    ] {
        counter!(LINK_BYTES_TOTAL, "service" => s(), "method" => m(), "kind" => kind)
            .increment(bytes);
    }
    for i in &r.iterations {
        counter!(PRECOPY_BYTES_TOTAL, "service" => s()).increment(i.sent_bytes);
        histogram!(PRECOPY_DIRTY_RATE, "service" => s()).record(i.dirty_rate);
    }
}

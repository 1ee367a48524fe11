//! The node's migration metrics: the report's figures, per service, on the
//! Prometheus endpoint (`replaymig node --metrics ADDR`).

use crate::report::MigrationReport;
use metrics::{counter, gauge, histogram};

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
/// The migration phase running here (label `phase`; 1 = current).
pub const PHASE: &str = "replaymig_migration_phase";

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

/// A prepared hand-over resolved without the commit message.
pub(crate) fn resolved(service: &str, outcome: &'static str) {
    counter!(RESOLVED_TOTAL, "service" => service.to_string(), "outcome" => outcome).increment(1);
}

/// Ownership as seen by this node.
pub(crate) fn ownership(service: &str, epoch: u64, owned: bool) {
    gauge!(EPOCH, "service" => service.to_string()).set(epoch as f64);
    gauge!(OWNED, "service" => service.to_string()).set(if owned { 1.0 } else { 0.0 });
}

/// The current phase (previous one set back to 0).
pub(crate) fn phase(service: &str, previous: Option<&str>, current: &str) {
    if let Some(p) = previous {
        gauge!(PHASE, "service" => service.to_string(), "phase" => p.to_string()).set(0.0);
    }
    gauge!(PHASE, "service" => service.to_string(), "phase" => current.to_string()).set(1.0);
}

/// An ended migration.
pub(crate) fn outcome(service: &str, role: &'static str, ok: bool) {
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

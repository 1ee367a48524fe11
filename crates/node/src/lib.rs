//! The replaymig node agent (`replaymig node --config FILE`): hosts
//! services behind the journaling proxy, tunnels clients to the owner of a
//! service, and moves services between nodes by replay migration.

mod admin;
pub mod config;
mod destination;
mod handover;
mod listener;
mod migration;
mod node;
pub mod ownership;
mod precopy;
mod process;
mod report;
mod source;
pub mod telemetry;
mod tunnel;

pub use admin::Request as AdminRequest;
pub use config::{NodeConfig, ServiceConfig, SnapshotConfig};
pub use node::{Node, ServiceStatus};

/// Arms the fail points named in the `FAILPOINTS` environment variable
/// (`name=action;...`, see the `fail` crate), for crash tests of the real
/// binary; nothing is armed when it is unset.
pub fn arm_fail_points_from_env() {
    if std::env::var_os("FAILPOINTS").is_some() {
        std::mem::forget(fail::FailScenario::setup());
    }
}
pub use report::{Iteration, Method, MigrationReport, Phase, Progress};
pub use telemetry::exporter_options;

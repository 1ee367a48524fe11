//! The replaymig node agent (`replaymig node --config FILE`): hosts
//! services behind the journaling proxy, tunnels clients to the owner of a
//! service, and moves services between nodes by replay migration.

mod admin;
pub mod config;
mod migration;
mod node;
mod process;
mod report;
pub mod telemetry;
mod tunnel;

pub use admin::Request as AdminRequest;
pub use config::{NodeConfig, ServiceConfig, SnapshotConfig};
pub use node::{Node, ServiceStatus};
pub use report::{MigrationReport, Phase, Progress};

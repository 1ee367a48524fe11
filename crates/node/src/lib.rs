//! The replaymig node agent (`replaymig node --config FILE`): hosts
//! services behind the journaling proxy, tunnels clients to the owner of a
//! service, and moves services between nodes by replay migration.

mod admin;
mod carry;
pub mod config;
mod context;
mod destination;
mod dial;
mod dump_stream;
mod fleet;
mod fleet_view;
mod forward;
mod handover;
mod listener;
mod migration;
mod node;
pub mod ownership;
mod peers;
mod precopy;
mod process;
mod redirect;
mod report;
mod source;
pub mod telemetry;
mod tunnel;

pub use admin::Request as AdminRequest;
pub use config::{NodeConfig, ServiceConfig, SnapshotConfig};
pub use context::ServiceStatus;
pub use fleet_view::{FleetService, FleetStatus};
pub use node::Node;

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

#[cfg(test)]
mod layering {
    /// The crate's layers, bottom first: a module may use only modules of
    /// lower layers, so imports point one way (the lib root and re-exports
    /// of leaf types, `crate::Phase` and the like, are outside this).
    const LAYERS: &[&[&str]] = &[
        &["config", "dial", "ownership", "process", "report"],
        &["telemetry"],
        &["fleet"],
        &["context", "listener"],
        &["carry", "dump_stream"],
        &["migration", "precopy"],
        &["handover", "fleet_view", "redirect"],
        &["destination", "source", "tunnel"],
        &["forward"],
        &["admin", "peers"],
        &["node"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// The crate modules `source` names (`crate::x…`, `crate::{x, y…}`).
    fn uses(source: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for (at, _) in source.match_indices("crate::") {
            let rest = &source[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(group.split(',').map(|p| ident(p.trim())));
            } else {
                out.push(ident(rest));
            }
        }
        out.retain(|m| !m.is_empty());
        out
    }

    #[test]
    fn every_module_uses_only_lower_layers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let module = path.file_stem().unwrap().to_str().unwrap().to_string();
            if module == "lib" {
                continue;
            }
            let mine =
                layer(&module).unwrap_or_else(|| panic!("module {module} has no layer in LAYERS"));
            seen += 1;
            for used in uses(&std::fs::read_to_string(&path).unwrap()) {
                let theirs = layer(&used)
                    .unwrap_or_else(|| panic!("{module} uses {used}, which has no layer"));
                assert!(
                    theirs < mine,
                    "{module} (layer {mine}) uses {used} (layer {theirs}): imports must point down"
                );
            }
        }
        assert_eq!(seen, LAYERS.iter().map(|l| l.len()).sum::<usize>());
    }
}

//! The node's configuration file (TOML).
//!
//! ```toml
//! name = "a"
//! peer_listen = "10.77.0.1:7100"
//! admin_listen = "127.0.0.1:7200"
//! secret_file = "/etc/replaymig/secret"      # or: secret_env = "REPLAYMIG_SECRET"
//! work_dir = "/var/lib/replaymig"            # snapshots land here
//!
//! [peers]
//! b = "10.77.0.2:7100"
//!
//! # Fleet mode (instead of, or besides, [peers]): nodes register in etcd
//! # under a lease, ownership lives there (compare-and-swap at every
//! # hand-over), and peers are found through it.
//! # [fleet]
//! # etcd = ["http://10.77.0.10:2379", "http://10.77.0.11:2379"]
//! # prefix = "/replaymig"      # every key of this fleet lives under it
//! # lease_ttl_secs = 5         # a dead node leaves the member list after this
//! # advertise_peer = "10.77.0.1:7100"   # if peer_listen is a wildcard
//!
//! [[service]]
//! name = "redis"
//! listen = "0.0.0.0:6380"                    # clients connect here, on every node
//! backend = "127.0.0.1:6379"                 # the local service, on every node
//! journal = "/var/lib/replaymig/redis.journal"
//! owner = "a"                                # who owns it when the nodes start
//! start = "redis-server --port 6379 --dir {data_dir} --save ''"
//! ready = "redis-cli -p {port} PING | grep -q PONG"
//! data_dir = "/var/lib/redis"
//! # connection_state = "none"   declare: nothing kept per connection
//! #                     (default "unknown": refuse to continue connections
//! #                     in use before the snapshot; docs/fidelity.md)
//! # close_connections = true   barrier: close what it can neither wait
//! #                     for nor carry (clients reconnect; docs/fidelity.md)
//! # quiet_ms = 10        barrier: silent this long = quiet
//! # max_hold_ms = 100    barrier: give the input back after this long
//! # hold_attempts = 5    barrier: tries (back-off 100 ms, doubling)
//! # max_handover_ms = 1000  replay: bound on the hand-over's hold
//! [service.snapshot]
//! driver = "exec"                            # exec | criu | none (none: the service
//!                                            # starts empty and a migration replays its
//!                                            # whole journal, so its proxy always forwards
//!                                            # settled: docs/fidelity.md)
//! dump = ["redis-cli -p 6379 SAVE", "cp {data_dir}/dump.rdb {snapshot_dir}/"]
//! restore = ["cp {snapshot_dir}/dump.rdb {data_dir}/"]
//! # criu: timeout_secs (whole dump or restore, default 60) and
//! # freeze_timeout_secs (freezing the tree at a dump, default 2: clients
//! # wait while it is frozen; a tree that will not freeze fails the dump)
//! # and carry_connections (default false; true: the start command runs
//! # the service under "{holder}", e.g. "unshare --pid --fork {holder}
//! # redis-server ...", and every client connection continues at the
//! # destination with its server-side state: docs/fidelity.md)
//! ```

use anyhow::{bail, Context, Result};
use replaymig_peer::Secret;
use replaymig_snapshot::{CriuDriver, Driver, ExecDriver};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A node's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name (peers know it by it).
    pub name: String,
    /// Where other nodes connect (authenticated).
    pub peer_listen: SocketAddr,
    /// Where `replaymig migrate/status` connect. On loopback by default;
    /// any other address needs an admin token.
    pub admin_listen: SocketAddr,
    /// File holding the admin token: when set, every admin request must
    /// carry it (`replaymig ... --admin-token-file`), and requests from
    /// other hosts are accepted. Without it, only loopback peers are served.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Environment variable holding the admin token (instead of the file).
    #[serde(default)]
    pub admin_token_env: Option<String>,
    /// File holding the shared peer secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the shared peer secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Scratch space (snapshots).
    pub work_dir: PathBuf,
    /// Other nodes by name.
    #[serde(default)]
    pub peers: BTreeMap<String, SocketAddr>,
    /// Fleet mode: the etcd registry (membership, ownership, routing).
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    /// The services this node can host.
    #[serde(rename = "service", default)]
    pub services: Vec<ServiceConfig>,
}

/// Fleet mode's registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Client URLs of the etcd members.
    pub etcd: Vec<String>,
    /// Where this fleet's keys live.
    #[serde(default = "default_fleet_prefix")]
    pub prefix: String,
    /// The membership lease: a node that stops renewing it (dead, or cut
    /// off from etcd) leaves the member list this long after.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// The peer address other nodes dial (default `peer_listen`, which
    /// must then not be a wildcard).
    #[serde(default)]
    pub advertise_peer: Option<SocketAddr>,
}

fn default_fleet_prefix() -> String {
    "/replaymig".into()
}

fn default_lease_ttl_secs() -> u64 {
    5
}

impl FleetConfig {
    /// The peer address to publish for node `config`.
    pub fn peer_address(&self, config: &NodeConfig) -> SocketAddr {
        self.advertise_peer.unwrap_or(config.peer_listen)
    }
}

/// One service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Its name (the same on every node).
    pub name: String,
    /// Client address on this node.
    pub listen: SocketAddr,
    /// The service's own address on this node.
    pub backend: SocketAddr,
    /// This node's journal for it.
    pub journal: PathBuf,
    /// The node that owns it at start.
    pub owner: String,
    /// Shell command that starts the service (placeholders as for exec).
    #[serde(default)]
    pub start: Option<String>,
    /// Shell command that succeeds once the service can serve (e.g.
    /// `redis-cli -p {port} PING | grep -q PONG`: a Redis still loading its
    /// RDB accepts connections but answers `-LOADING`). Default: the
    /// backend accepts a TCP connection.
    #[serde(default)]
    pub ready: Option<String>,
    /// The service's data directory (placeholder `{data_dir}`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The barrier's quiet window: the service must send no answer byte for
    /// this long (after answering every connection's last input) to count
    /// as quiet. Both holds of a replay migration last at least this long;
    /// shorter risks taking a service that is merely slow (CPU-starved,
    /// mid-way through a large answer) for quiet — never silently: the
    /// answers that come after the snapshot point then do not replay and
    /// the migration is refused. Default 10 ms (20 ms before issue #15's
    /// P2: docs/fidelity.md has the campaign that chose it).
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u64,
    /// Bound on one barrier attempt: if the service is not quiet within
    /// this long, client input is released (the attempt counts as a
    /// failed hold) and the barrier is tried again after a back-off.
    /// Clients are never held longer than this waiting for quiet.
    /// Default 100 ms.
    #[serde(default = "default_max_hold_ms")]
    pub max_hold_ms: u64,
    /// Barrier attempts before the migration is refused ("did not go
    /// quiet"); between attempts the service serves for 100 ms, doubling
    /// each time. Default 5.
    #[serde(default = "default_hold_attempts")]
    pub hold_attempts: u32,
    /// Bound on a replay migration's hand-over hold: from its barrier to
    /// the destination's prepared answer (quiet, the tail applied, the
    /// hand-over prepared). Past it the migration is refused — the source
    /// gives the input back and keeps serving — instead of holding every
    /// client for as long as a slow tail takes. Default 1000 ms.
    #[serde(default = "default_max_handover_ms")]
    pub max_handover_ms: u64,
    /// What the journal keeps of the service's answers: `off`, `digest`
    /// (default) or `full` (see `replaymig proxy --journal-responses`).
    #[serde(default)]
    pub journal_responses: replaymig_proxy::AnswerJournaling,
    /// Whether the service keeps state per client connection (docs/fidelity.md,
    /// "Connections open at the snapshot"): `unknown` (the default) refuses
    /// a replay migration in which a connection that was in use before the
    /// snapshot would continue at the destination — a fresh connection there
    /// lacks its `SELECT`, `AUTH`, `MULTI` or subscription, and matching
    /// answers cannot show it; `none` declares the service keeps nothing
    /// per connection, so such connections continue.
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// Whether a migration's barriers close the client connections they
    /// can neither wait for nor carry (docs/fidelity.md, "Connections the
    /// barrier closes"), the way a restarting server would, so clients
    /// reconnect: input without an answer once the service is otherwise
    /// quiet (memcached `noreply`, a request still being sent, a blocked
    /// command), and — at the snapshot, when `connection_state` is
    /// `unknown` — connections already in use, whose state a fresh
    /// connection at the destination would lack. Default true; `false`
    /// waits for them instead, and such a migration is refused.
    #[serde(default = "default_close_connections")]
    pub close_connections: bool,
    /// Client input is refused while the journal's filesystem has fewer
    /// free bytes than this (see `replaymig proxy --journal-min-free`);
    /// default 5% of the filesystem, 4–16 MiB.
    #[serde(default)]
    pub journal_min_free: Option<u64>,
    /// How it is snapshotted.
    pub snapshot: SnapshotConfig,
}

/// What a service keeps per client connection (see
/// `ServiceConfig::connection_state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Not declared: connections in use before the snapshot may carry
    /// state, and a migration that would continue one is refused.
    #[default]
    Unknown,
    /// Declared: nothing per connection beyond what its input recreates.
    None,
}

impl ServiceConfig {
    /// Whether its snapshots carry the client connections themselves
    /// (CRIU with `carry_connections`): then nothing is closed or waited
    /// for at the snapshot, and each connection continues at the
    /// destination on its restored socket.
    pub fn carries_connections(&self) -> bool {
        matches!(&self.snapshot, SnapshotConfig::Criu(c) if c.carry_connections)
    }
}

fn default_close_connections() -> bool {
    true
}

fn default_quiet_ms() -> u64 {
    10
}

fn default_max_hold_ms() -> u64 {
    100
}

fn default_max_handover_ms() -> u64 {
    1000
}

fn default_hold_attempts() -> u32 {
    5
}

/// The snapshot driver section.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase")]
pub enum SnapshotConfig {
    /// Operator commands.
    Exec(ExecDriver),
    /// CRIU.
    Criu(CriuDriver),
    /// Stateless.
    None,
}

impl SnapshotConfig {
    /// The driver it describes.
    pub fn driver(&self) -> Driver {
        match self {
            SnapshotConfig::Exec(e) => Driver::Exec(e.clone()),
            SnapshotConfig::Criu(c) => Driver::Criu(c.clone()),
            SnapshotConfig::None => Driver::None,
        }
    }
}

impl NodeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: NodeConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid node configuration", path.display()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if let Some(fleet) = &self.fleet {
            if fleet.etcd.is_empty() {
                bail!("[fleet] etcd lists no endpoints");
            }
            if fleet.peer_address(self).ip().is_unspecified() {
                bail!(
                    "[fleet]: peer_listen {} is a wildcard address; set advertise_peer to the \
                     address other nodes dial",
                    self.peer_listen
                );
            }
            if !(1..=600).contains(&fleet.lease_ttl_secs) {
                bail!(
                    "[fleet] lease_ttl_secs must be 1..=600, not {}",
                    fleet.lease_ttl_secs
                );
            }
        }
        if self.secret_file.is_none() && self.secret_env.is_none() {
            bail!("set secret_file or secret_env (the peer secret never goes on the command line)");
        }
        let token = self.admin_token_file.is_some() || self.admin_token_env.is_some();
        if !self.admin_listen.ip().is_loopback() && !token {
            bail!(
                "admin_listen {} is not a loopback address: set admin_token_file or admin_token_env \
                 (the admin API moves services; off loopback it needs a token)",
                self.admin_listen
            );
        }
        for s in &self.services {
            if !(1..=1000).contains(&s.quiet_ms) {
                bail!(
                    "service {}: quiet_ms must be 1..=1000, not {}",
                    s.name,
                    s.quiet_ms
                );
            }
            if !(s.quiet_ms + 1..=10_000).contains(&s.max_hold_ms) {
                bail!(
                    "service {}: max_hold_ms must be above quiet_ms ({}) and at most 10000, not {}",
                    s.name,
                    s.quiet_ms,
                    s.max_hold_ms
                );
            }
            if !(1..=20).contains(&s.hold_attempts) {
                bail!(
                    "service {}: hold_attempts must be 1..=20, not {}",
                    s.name,
                    s.hold_attempts
                );
            }
            let under_holder = s.start.as_deref().is_some_and(|c| c.contains("{holder}"));
            if s.carries_connections() && !under_holder {
                bail!(
                    "service {}: carry_connections needs the service started under the socket \
                     holder: put {{holder}} before the service command in start (e.g. \
                     \"unshare --pid --fork {{holder}} redis-server ...\")",
                    s.name
                );
            }
            if let SnapshotConfig::Criu(c) = &s.snapshot {
                if c.carry_connections && c.netns.is_some() {
                    bail!(
                        "service {}: carry_connections needs the node in the service's network \
                         namespace (the proxy's ends of the connections are dumped with the \
                         service); drop netns and start the node there",
                        s.name
                    );
                }
            }
            // In fleet mode peers are found in the registry.
            if s.owner != self.name && !self.peers.contains_key(&s.owner) && self.fleet.is_none() {
                bail!(
                    "service {}: owner {:?} is neither this node nor a known peer",
                    s.name,
                    s.owner
                );
            }
        }
        Ok(())
    }

    /// The shared secret, from the file or the variable.
    pub fn secret(&self) -> Result<Secret> {
        match (&self.secret_file, &self.secret_env) {
            (Some(path), _) => Ok(Secret::from_file(path)?),
            (None, Some(var)) => Ok(Secret::from_env(var)?),
            (None, None) => bail!("no peer secret configured"),
        }
    }

    /// The admin token, if one is configured (file or variable).
    pub fn admin_token(&self) -> Result<Option<Secret>> {
        match (&self.admin_token_file, &self.admin_token_env) {
            (Some(path), _) => Ok(Some(Secret::from_file(path).context("admin token")?)),
            (None, Some(var)) => Ok(Some(Secret::from_env(var).context("admin token")?)),
            (None, None) => Ok(None),
        }
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_rejects_mistakes() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let config: NodeConfig = toml::from_str(&example).unwrap();
        config.check().unwrap();
        assert_eq!(config.services[0].snapshot.driver().name(), "exec");
        assert_eq!(config.services[0].quiet_ms, 10, "the default quiet window");
        // The admin API off loopback needs a token.
        let open = example.replace("127.0.0.1:7200", "0.0.0.0:7200");
        let err = toml::from_str::<NodeConfig>(&open)
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        let with_token = open.replace(
            "admin_listen =",
            "admin_token_env = \"REPLAYMIG_TEST_TOKEN\"\nadmin_listen =",
        );
        toml::from_str::<NodeConfig>(&with_token)
            .unwrap()
            .check()
            .unwrap();
        let quick = example.replace("data_dir = ", "quiet_ms = 8\ndata_dir = ");
        let config: NodeConfig = toml::from_str(&quick).unwrap();
        assert_eq!(config.services[0].quiet_ms, 8);
        let zero = example.replace("data_dir = ", "quiet_ms = 0\ndata_dir = ");
        assert!(toml::from_str::<NodeConfig>(&zero)
            .unwrap()
            .check()
            .is_err());
        let bad = example.replace("owner = \"a\"", "owner = \"zz\"");
        let config: NodeConfig = toml::from_str(&bad).unwrap();
        assert!(config.check().is_err());
        assert!(toml::from_str::<NodeConfig>(&format!("bogus = 1\n{example}")).is_err());
    }

    #[test]
    fn carrying_connections_needs_criu_and_the_holder_in_the_start_command() {
        let base = r#"
name = "a"
peer_listen = "127.0.0.1:7100"
admin_listen = "127.0.0.1:7200"
secret_env = "S"
work_dir = "/tmp/w"
[[service]]
name = "redis"
listen = "127.0.0.1:6380"
backend = "127.0.0.1:6379"
journal = "/tmp/j"
owner = "a"
START
[service.snapshot]
driver = "criu"
carry_connections = true
"#;
        let without = base.replace("START", "start = \"unshare --pid --fork redis-server\"");
        let err = toml::from_str::<NodeConfig>(&without)
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("{holder}"), "{err}");
        let with = base.replace(
            "START",
            "start = \"unshare --pid --fork {holder} redis-server\"",
        );
        let config: NodeConfig = toml::from_str(&with).unwrap();
        config.check().unwrap();
        assert!(config.services[0].carries_connections());
        let elsewhere = with.replace("carry_connections", "netns = \"other\"\ncarry_connections");
        let err = toml::from_str::<NodeConfig>(&elsewhere)
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("network"), "{err}");
        let exec = with.replace(
            "driver = \"criu\"\ncarry_connections = true",
            "driver = \"none\"",
        );
        let config: NodeConfig = toml::from_str(&exec).unwrap();
        assert!(!config.services[0].carries_connections());
    }
}

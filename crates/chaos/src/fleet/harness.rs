//! The fleet harness: three node agents (real `replaymig node` processes,
//! each in front of its own Redis) that know no peers but a real etcd
//! cluster, the commands an operator would run against them, and checking
//! clients. Shared by the fleet campaign's scenarios (`scenarios`), which
//! `tests/fleet.rs` runs once each and `replaymig-chaos` many times.
//!
//! A failed check panics, as in a test: the campaign counts a panicking
//! run as failed (every guard — nodes, Redis, etcd, temp dirs — is dropped
//! on the way out).

use crate::Target;
use replaymig_testkit::{
    write_node_config, ChildGuard, EtcdCluster, NodePorts, Reply, RespClient, StopRedisOnDrop,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

use crate::start_node;

/// Where the fleet keeps its keys in etcd.
pub const PREFIX: &str = "/fleet-test";

/// Three fleet nodes in front of their own Redis, a owning the service.
pub struct Fleet {
    /// Configs, secret, data, journals and logs.
    pub dir: TempDir,
    /// The `replaymig` binary.
    bin: PathBuf,
    /// Each node's ports, by name.
    pub ports: Vec<(String, NodePorts)>,
    /// The node agents, in `ports`' order.
    pub nodes: Vec<ChildGuard>,
    _redis: StopRedisOnDrop,
}

impl Fleet {
    /// Three nodes, a owning the service, no fail points.
    pub fn start(target: &Target, cluster: &EtcdCluster) -> Fleet {
        Fleet::start_with(target, cluster, "a", &[])
    }

    /// [`Fleet::start`], node `special` with extra environment
    /// (`FAILPOINTS`).
    pub fn start_with(
        target: &Target,
        cluster: &EtcdCluster,
        special: &str,
        special_env: &[(&str, &str)],
    ) -> Fleet {
        let dir = TempDir::new().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "fleet-test-secret-0123456789abcdef",
        )
        .unwrap();
        let names = ["a", "b", "c"];
        let ports: Vec<(String, NodePorts)> = names
            .iter()
            .map(|n| (n.to_string(), NodePorts::loopback()))
            .collect();
        let endpoints = cluster
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let fleet_section =
            format!("[fleet]\netcd = [{endpoints}]\nprefix = \"{PREFIX}\"\nlease_ttl_secs = 2\n");
        // Before any node starts: a node that fails to start must not leave
        // the Redis its predecessors started behind.
        let redis = StopRedisOnDrop(ports.iter().map(|(_, p)| p.backend).collect());
        let mut nodes = Vec::new();
        for (i, (name, me)) in ports.iter().enumerate() {
            let other = &ports[(i + 1) % ports.len()];
            let config =
                write_node_config(dir.path(), name, me, (&other.0, &other.1), "a", None, None);
            fleet_config(&config, &fleet_section);
            let env = if name == special { special_env } else { &[] };
            nodes.push(
                start_node(&target.bin, dir.path(), name, &config, me.admin, env)
                    .unwrap_or_else(|e| panic!("node {name}: {e:#}")),
            );
        }
        Fleet {
            dir,
            bin: target.bin.clone(),
            ports,
            nodes,
            _redis: redis,
        }
    }

    /// Starts node `name` again (after it died), without extra
    /// environment.
    pub fn restart(&mut self, name: &str) {
        let config = self.dir.path().join(format!("{name}.toml"));
        let admin = self.node(name).admin;
        let i = self.ports.iter().position(|(n, _)| n == name).unwrap();
        self.nodes[i] = start_node(&self.bin, self.dir.path(), name, &config, admin, &[])
            .unwrap_or_else(|e| panic!("node {name}: {e:#}"));
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn node(&self, name: &str) -> &NodePorts {
        &self.ports.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn listen(&self, name: &str) -> SocketAddr {
        let p = self.node(name);
        SocketAddr::new(p.ip, p.listen)
    }

    pub fn admin(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.node(name).admin)
    }

    /// `replaymig status --fleet --json` at node `name`.
    pub fn fleet_status(&self, name: &str) -> Value {
        let out = Command::new(&self.bin)
            .args(["status", "--fleet", "--json", "--admin", &self.admin(name)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until node `name` sees every node registered and the service
    /// owned by `owner` under `epoch`.
    pub fn wait_view(&self, name: &str, owner: &str, epoch: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.fleet_status(name);
            let nodes = status["nodes"].as_array().map_or(0, |n| n.len());
            let service = &status["services"][0];
            if nodes == 3 && service["owner"] == owner && service["epoch"] == epoch {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {name} never saw {owner} own the service under epoch {epoch}: {status}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node sees `owner` own the service under `epoch`.
    pub fn wait_all(&self, owner: &str, epoch: u64) {
        for n in ["a", "b", "c"] {
            self.wait_view(n, owner, epoch);
        }
    }

    /// Moves the service a → b → c, each move required to succeed and seen
    /// by every node (epochs 2 and 3) before the next, with a pause of
    /// load after each.
    pub fn migrate_a_b_c(&self) {
        for (epoch, (from, to)) in [(2, ("a", "b")), (3, ("b", "c"))] {
            let (ok, text) = self.migrate(from, to);
            assert!(ok, "{text}\n{}", self.logs());
            self.wait_all(to, epoch);
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `replaymig migrate redis --to TO` at node `from`, in a thread.
    pub fn migrate_in_background(
        &self,
        from: &str,
        to: &str,
    ) -> std::thread::JoinHandle<std::process::Output> {
        let (admin, to, bin) = (self.admin(from), to.to_string(), self.bin.clone());
        std::thread::spawn(move || {
            Command::new(&bin)
                .args(["migrate", "redis", "--to", &to, "--admin", &admin])
                .output()
                .unwrap()
        })
    }

    /// `replaymig migrate redis --to TO` at node `from`: exit status, and
    /// stdout + stderr.
    pub fn migrate(&self, from: &str, to: &str) -> (bool, String) {
        let out = Command::new(&self.bin)
            .args(["migrate", "redis", "--to", to, "--admin", &self.admin(from)])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn logs(&self) -> String {
        ["a", "b", "c"]
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                format!(
                    "--- {n}.log (last lines, newest first)\n{}",
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Turns a two-node configuration into a fleet one: no `[peers]`, a
/// `[fleet]` section instead.
fn fleet_config(path: &Path, fleet_section: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("[peers]\n").expect("a [peers] section");
    let end = start + text[start..].find("[[service]]").expect("a service");
    let edited = format!("{}{}{}", &text[..start], fleet_section, &text[end..]);
    std::fs::write(path, edited).unwrap();
}

/// The registry's entry for the service, read with etcdctl.
pub fn registry_entry(cluster: &EtcdCluster) -> Value {
    let raw = cluster
        .etcdctl(&[
            "get",
            &format!("{PREFIX}/services/redis"),
            "--print-value-only",
        ])
        .unwrap();
    serde_json::from_str(raw.trim()).unwrap()
}

/// A client on its own connection through `addr`, INCRing `key` one at a
/// time and checking every answer, until `stop`; its acknowledged count,
/// and whether its connection broke (a move must not break it).
pub fn client(
    addr: SocketAddr,
    key: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(String, i64, Option<String>)> {
    std::thread::spawn(move || {
        let mut c = RespClient::connect(addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut acked = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            match c.cmd(&["INCR", &key]) {
                Ok(Reply::Int(n)) if n == acked + 1 => acked = n,
                Ok(other) => return (key, acked, Some(format!("answer {other:?} after {acked}"))),
                Err(e) => {
                    return (
                        key,
                        acked,
                        Some(format!("connection broke after {acked}: {e}")),
                    )
                }
            }
        }
        (key, acked, None)
    })
}

/// The value of `key`, read through the node listening at `addr`.
pub fn get(addr: SocketAddr, key: &str) -> i64 {
    let mut c = RespClient::connect(addr).unwrap();
    match c.cmd(&["GET", key]).unwrap() {
        Reply::Bulk(v) => String::from_utf8(v).unwrap().parse().unwrap(),
        Reply::Nil => 0,
        other => panic!("GET {key}: {other:?}"),
    }
}

/// A client on node `at` that pipelines `depth` INCRs of its own key per
/// write and checks every answer (consecutive, from where it was): its
/// acknowledged count, or what went wrong. Pipelines keep input in flight
/// when a hand-over holds it, so a moved tunnel must send some again.
pub fn pipelined_client(
    addr: SocketAddr,
    key: String,
    depth: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<i64, String>> {
    std::thread::spawn(move || {
        let mut c = RespClient::connect(addr).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut acked = 0;
        let batch: Vec<Vec<&str>> = (0..depth).map(|_| vec!["INCR", key.as_str()]).collect();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let replies = c
                .pipeline(&batch)
                .map_err(|e| format!("{key}: connection broke after {acked}: {e}"))?;
            for r in replies {
                match r {
                    Reply::Int(n) if n == acked + 1 => acked = n,
                    other => return Err(format!("{key}: answer {other:?} after {acked}")),
                }
            }
        }
        Ok(acked)
    })
}

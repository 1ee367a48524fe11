//! Fleet mode end to end: three node agents (real processes, each with its
//! own Redis) that know no peers but a 3-member etcd cluster (real etcd
//! 3.4). They register, find each other through it and take every
//! ownership decision there. Redis is moved a → b → c → a under INCR load
//! from clients on every node; connections opened before the moves stay
//! open (tunneled, then handed over), and at the end every acknowledged
//! INCR is on the owner and each key was counted exactly. The registry's
//! entry says who owns it under which epoch at each step, and a node that
//! took no part in a move learns of it from its watch.
//!
//! A second test kills an etcd member in the middle of a migration, and a
//! third refuses a migration while etcd has no quorum — the source keeps
//! serving and nothing changes in the registry.

mod common;

use common::{replaymig, start_node, StopRedisOnDrop};
use replaymig_testkit::{
    write_node_config, ChildGuard, EtcdCluster, IncrLoad, NodePorts, Reply, RespClient,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const PREFIX: &str = "/fleet-test";

/// Three fleet nodes in front of their own Redis, a owning the service.
struct Fleet {
    dir: TempDir,
    ports: Vec<(String, NodePorts)>,
    nodes: Vec<ChildGuard>,
    _redis: StopRedisOnDrop,
}

impl Fleet {
    fn start(cluster: &EtcdCluster) -> Fleet {
        Fleet::start_with(cluster, "a", &[])
    }

    /// [`Fleet::start`], node `special` with extra environment
    /// (`FAILPOINTS`).
    fn start_with(cluster: &EtcdCluster, special: &str, special_env: &[(&str, &str)]) -> Fleet {
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
            nodes.push(start_node(dir.path(), name, &config, me.admin, env, &[]));
        }
        Fleet {
            dir,
            ports,
            nodes,
            _redis: redis,
        }
    }

    /// Starts node `name` again (after it died), without extra
    /// environment.
    fn restart(&mut self, name: &str) {
        let config = self.dir.path().join(format!("{name}.toml"));
        let admin = self.node(name).admin;
        let i = self.ports.iter().position(|(n, _)| n == name).unwrap();
        self.nodes[i] = start_node(self.dir.path(), name, &config, admin, &[], &[]);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn node(&self, name: &str) -> &NodePorts {
        &self.ports.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn listen(&self, name: &str) -> SocketAddr {
        let p = self.node(name);
        SocketAddr::new(p.ip, p.listen)
    }

    fn admin(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.node(name).admin)
    }

    /// `replaymig status --fleet --json` at node `name`.
    fn fleet_status(&self, name: &str) -> Value {
        let out = replaymig()
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
    fn wait_view(&self, name: &str, owner: &str, epoch: u64) {
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
    fn wait_all(&self, owner: &str, epoch: u64) {
        for n in ["a", "b", "c"] {
            self.wait_view(n, owner, epoch);
        }
    }

    /// `replaymig migrate redis --to TO` at node `from`, in a thread.
    fn migrate_in_background(
        &self,
        from: &str,
        to: &str,
    ) -> std::thread::JoinHandle<std::process::Output> {
        let (admin, to) = (self.admin(from), to.to_string());
        std::thread::spawn(move || {
            replaymig()
                .args(["migrate", "redis", "--to", &to, "--admin", &admin])
                .output()
                .unwrap()
        })
    }

    /// `replaymig migrate redis --to TO` at node `from`: exit status, and
    /// stdout + stderr.
    fn migrate(&self, from: &str, to: &str) -> (bool, String) {
        let out = replaymig()
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

    fn logs(&self) -> String {
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
fn registry_entry(cluster: &EtcdCluster) -> Value {
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
fn client(
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

/// The value of `key`, read through node `at`.
fn get(addr: SocketAddr, key: &str) -> i64 {
    let mut c = RespClient::connect(addr).unwrap();
    match c.cmd(&["GET", key]).unwrap() {
        Reply::Bulk(v) => String::from_utf8(v).unwrap().parse().unwrap(),
        Reply::Nil => 0,
        other => panic!("GET {key}: {other:?}"),
    }
}

#[test]
fn a_service_moves_round_three_nodes_on_etcd_and_every_write_survives() {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(&cluster);
    fleet.wait_all("a", 1);
    assert_eq!(registry_entry(&cluster)["owner"], "a");

    // Clients on every node, their connections kept across all the moves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| (0..2).map(move |i| (n, i)))
        .map(|(n, i)| client(fleet.listen(n), format!("k{n}:{i}"), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let mut epoch = 1;
    let mut handover = 0;
    // Each move asked at one node's admin: a (the owner), then a again
    // once b owns it (a forwards the request to b, which runs b → c), then
    // c (the owner).
    for (asked, to) in [("a", "b"), ("a", "c"), ("c", "a")] {
        let from = asked;
        let (ok, text) = fleet.migrate(asked, to);
        if to == "c" {
            assert!(
                text.contains("b (its owner in the fleet's registry) runs"),
                "{text}"
            );
        }
        assert!(
            ok,
            "migrate {from} → {to} failed:\n{text}\n{}",
            fleet.logs()
        );
        epoch += 1;
        let entry = registry_entry(&cluster);
        assert_eq!(entry["owner"], to, "{entry}");
        assert_eq!(entry["epoch"], epoch, "{entry}");
        let lsn = entry["handover_lsn"].as_u64().unwrap();
        assert!(
            lsn > handover,
            "hand-over LSNs grow: {lsn} after {handover}"
        );
        handover = lsn;
        // Every node follows, the one that took no part too.
        fleet.wait_all(to, epoch);
        std::thread::sleep(Duration::from_millis(300));
    }

    // Asked at b, status --fleet shows the owner's (a's) journal: it goes
    // on from the last hand-over.
    let status = fleet.fleet_status("b");
    let journal = &status["services"][0]["journal"];
    assert!(
        journal[1].as_u64().unwrap_or(0) >= handover,
        "the owner's journal ends before the last hand-over at {handover}: {status}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for c in clients {
        let (key, n, broke) = c.join().unwrap();
        assert_eq!(broke, None, "client {key}: {}", fleet.logs());
        assert!(n > 0, "client {key} got nothing through");
        acked.push((key, n));
    }
    // Every acknowledged INCR is there, exactly (each client waited for
    // every answer before sending the next, and stopped cleanly).
    for (key, n) in &acked {
        assert_eq!(get(fleet.listen("b"), key), *n, "{key}\n{}", fleet.logs());
    }
    // A new connection at any node reaches the owner (a) and its data.
    for n in ["a", "b", "c"] {
        assert_eq!(get(fleet.listen(n), &acked[0].0), acked[0].1);
    }
}

#[test]
fn an_etcd_member_killed_mid_migration_does_not_stop_the_commit() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(&cluster);
    fleet.wait_all("a", 1);
    let load = IncrLoad::start(fleet.listen("c"), 2, "kill:", 1_000_000);
    std::thread::sleep(Duration::from_millis(300));
    let migration = fleet.migrate_in_background("a", "b");
    // The member listed first — every client's first choice — dies while
    // the migration runs.
    std::thread::sleep(Duration::from_millis(150));
    cluster.kill(0);
    let out = migration.join().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    assert_eq!(registry_entry(&cluster)["owner"], "b");
    fleet.wait_all("b", 2);
    for (key, n) in load.finish() {
        assert_eq!(get(fleet.listen("a"), &key), n, "{key}");
    }
}

#[test]
fn without_etcd_quorum_a_migration_is_refused_and_the_source_serves_on() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(&cluster);
    fleet.wait_all("a", 1);
    let load = IncrLoad::start(fleet.listen("a"), 2, "noq:", 1_000_000);
    cluster.kill(1);
    cluster.kill(2);
    let (ok, text) = fleet.migrate("a", "b");
    assert!(!ok, "a migration without quorum must fail:\n{text}");
    assert!(
        text.contains("etcd") || text.contains("registry"),
        "says why: {text}"
    );
    // a serves on, and a new connection through b still reaches it.
    std::thread::sleep(Duration::from_millis(300));
    let acked = load.finish();
    assert!(acked.iter().all(|(_, n)| *n > 0));
    for (key, n) in &acked {
        assert_eq!(get(fleet.listen("b"), key), *n, "{key}");
    }
    // Quorum back: nothing changed in the registry.
    cluster.restart(1).unwrap();
    let entry = registry_entry(&cluster);
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some("a"), Some(1))
    );
}

/// The registry commit applied but its answer was lost: the source does
/// not know, settles it (the pin finds it committed) and completes.
#[test]
fn a_commit_whose_answer_was_lost_is_settled_as_committed() {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start_with(
        &cluster,
        "a",
        &[("FAILPOINTS", "fleet-commit-answer-lost=return")],
    );
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = client(fleet.listen("c"), "lost:0".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (ok, text) = fleet.migrate("a", "b");
    assert!(ok, "{text}\n{}", fleet.logs());
    assert!(
        fleet.log("a").contains("outcome is unknown"),
        "{}",
        fleet.logs()
    );
    let entry = registry_entry(&cluster);
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some("b"), Some(2))
    );
    fleet.wait_all("b", 2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (key, acked, broke) = c.join().unwrap();
    assert_eq!(broke, None);
    assert_eq!(get(fleet.listen("a"), &key), acked);
}

/// The registry commit never left: the pin finds the entry as read, the
/// migration is refused with the registry's word, the source serves on and
/// the destination drops its copy.
#[test]
fn a_commit_that_never_left_is_settled_as_not_committed() {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start_with(
        &cluster,
        "a",
        &[("FAILPOINTS", "fleet-commit-not-sent=return")],
    );
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = client(fleet.listen("c"), "unsent:0".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (ok, text) = fleet.migrate("a", "b");
    assert!(!ok, "{text}");
    assert!(
        text.contains("registry did not take the hand-over"),
        "{text}"
    );
    // The pin rewrote the entry as read: same owner and epoch.
    let entry = registry_entry(&cluster);
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some("a"), Some(1))
    );
    std::thread::sleep(Duration::from_millis(500));
    fleet.wait_all("a", 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (key, acked, broke) = c.join().unwrap();
    assert_eq!(broke, None, "{}", fleet.logs());
    assert_eq!(get(fleet.listen("b"), &key), acked);
}

/// The source dies right after the registry commit, before its own record
/// and before telling the destination: the destination learns the outcome
/// from the registry and serves; the source, restarted, settles its
/// recorded intent from the registry and does not take the service back.
#[test]
fn a_source_dying_after_the_registry_commit_leaves_the_destination_owning() {
    let cluster = EtcdCluster::start(3).unwrap();
    let mut fleet = Fleet::start_with(
        &cluster,
        "a",
        &[("FAILPOINTS", "fleet-after-registry-commit=return")],
    );
    fleet.wait_all("a", 1);
    // Writes acknowledged by a before the move.
    let mut writer = RespClient::connect(fleet.listen("b")).unwrap();
    for i in 1..=50 {
        assert_eq!(writer.cmd(&["INCR", "crash:0"]).unwrap(), Reply::Int(i));
    }
    drop(writer);
    let (ok, text) = fleet.migrate("a", "b");
    assert!(!ok, "the source crashed mid-migration: {text}");
    // b serves without a (it asked the registry).
    for n in ["b", "c"] {
        fleet.wait_view(n, "b", 2);
    }
    assert_eq!(get(fleet.listen("c"), "crash:0"), 50, "{}", fleet.logs());
    fleet.restart("a");
    fleet.wait_view("a", "b", 2);
    assert!(fleet.log("a").contains("settled"), "{}", fleet.logs());
    let mut c = RespClient::connect(fleet.listen("a")).unwrap();
    assert_eq!(c.cmd(&["INCR", "crash:0"]).unwrap(), Reply::Int(51));
}

/// `tools/fleet-demo.sh` (root: network namespaces), with `env`; its
/// stdout after checking that it succeeded and reported every move.
fn fleet_demo(env: &[(&str, &str)]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP fleet demo: needs root for network namespaces");
        return None;
    }
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fleet-demo.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_replaymig"))
        .envs(env.iter().copied())
        .output()
        .expect("run tools/fleet-demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (from, to, epoch) in [("a", "c", 2), ("c", "e", 3), ("e", "b", 4)] {
        assert!(
            stdout.contains(&format!(
                "migrated redis from {from} to {to} (epoch {epoch})"
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("no connection broke"), "{stdout}");
    Some(stdout)
}

/// Five namespaced nodes and three namespaced etcd members on a bridge,
/// Redis moved a → c → e → b under load from every node; the script checks
/// every acknowledgement on b.
#[test]
fn the_fleet_demo_moves_redis_across_five_namespaced_nodes() {
    fleet_demo(&[]);
}

/// The source cut off from etcd by the network (iptables in its
/// namespace) at the registry commit: the move is refused — at once if no
/// try reached etcd, once etcd answers again otherwise — and a serves on;
/// then the demo's moves run as usual.
#[test]
fn a_source_cut_off_from_etcd_at_the_commit_keeps_the_service() {
    if let Some(stdout) = fleet_demo(&[("PARTITION", "1")]) {
        assert!(
            stdout.contains("refused; node a still owns redis under epoch 1"),
            "{stdout}"
        );
    }
}

/// etcd loses its quorum while a migration runs (two of three members
/// killed just after it starts, one back 3 s later): whatever the commit
/// then meets — a refusal ("no leader"), or no answer, settled once
/// quorum is back — the outcome `migrate` reports is the registry's, one
/// owner serves, and every acknowledged INCR is on it.
#[test]
fn quorum_lost_mid_migration_ends_with_the_owner_migrate_reports() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(&cluster);
    fleet.wait_all("a", 1);
    // Some bulk, so the migration lasts a few hundred milliseconds.
    let mut bulk = RespClient::connect(fleet.listen("a")).unwrap();
    let value = "v".repeat(4096);
    for chunk in 0..40 {
        let cmds: Vec<Vec<String>> = (0..100)
            .map(|i| vec!["SET".into(), format!("bulk:{chunk}:{i}"), value.clone()])
            .collect();
        let refs: Vec<Vec<&str>> = cmds
            .iter()
            .map(|c| c.iter().map(String::as_str).collect())
            .collect();
        bulk.pipeline(&refs).unwrap();
    }
    drop(bulk);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = client(fleet.listen("c"), "quorum:0".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let migration = fleet.migrate_in_background("a", "b");
    std::thread::sleep(Duration::from_millis(50));
    cluster.kill(1);
    cluster.kill(2);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(1).unwrap();
    let out = migration.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = registry_entry(&cluster);
    let (owner, epoch) = if out.status.success() {
        ("b", 2)
    } else {
        assert!(
            text.contains("registry") || text.contains("etcd"),
            "says why: {text}"
        );
        ("a", 1)
    };
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some(owner), Some(epoch)),
        "migrate said:\n{text}"
    );
    fleet.wait_all(owner, epoch);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (key, acked, broke) = c.join().unwrap();
    assert_eq!(broke, None, "{}", fleet.logs());
    assert_eq!(get(fleet.listen("c"), &key), acked);
    eprintln!(
        "quorum lost mid-migration: migrate {}",
        if out.status.success() {
            "committed"
        } else {
            "refused"
        }
    );
}

/// Shared state under fleet moves, not per-client keys: two clients on
/// every node INCR one shared counter and APPEND to one shared string (a
/// reply that grows), on connections kept across a → b → c. The oracle:
/// every INCR answer is distinct (none executed twice, none lost between
/// two answers), every APPEND length is distinct, and the final counter
/// and string length equal the acknowledgements.
#[test]
fn shared_keys_from_every_node_stay_exact_across_fleet_moves() {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(&cluster);
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| (0..2).map(move |i| (*n, i)))
        .map(|(n, i)| {
            let (addr, stop) = (fleet.listen(n), stop.clone());
            std::thread::spawn(move || {
                let mut c = RespClient::connect(addr).unwrap();
                let (mut incrs, mut lens) = (Vec::new(), Vec::new());
                let piece = "x".repeat(1 + i);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    match c.cmd(&["INCR", "shared:counter"]) {
                        Ok(Reply::Int(v)) => incrs.push(v),
                        other => return Err(format!("{n}{i}: INCR answered {other:?}")),
                    }
                    match c.cmd(&["APPEND", "shared:string", &piece]) {
                        Ok(Reply::Int(len)) => lens.push((len, piece.len() as i64)),
                        other => return Err(format!("{n}{i}: APPEND answered {other:?}")),
                    }
                }
                Ok((incrs, lens))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let mut epoch = 1;
    for (from, to) in [("a", "b"), ("b", "c")] {
        let (ok, text) = fleet.migrate(from, to);
        assert!(ok, "{text}\n{}", fleet.logs());
        epoch += 1;
        fleet.wait_all(to, epoch);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut incrs, mut lens, mut appended) = (Vec::new(), Vec::new(), 0i64);
    for w in workers {
        let (i, l) = w
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        incrs.extend(i);
        appended += l.iter().map(|(_, p)| p).sum::<i64>();
        lens.extend(l.into_iter().map(|(len, _)| len));
    }
    let n = incrs.len() as i64;
    incrs.sort_unstable();
    incrs.dedup();
    assert_eq!(incrs.len() as i64, n, "an INCR answer was given twice");
    assert_eq!(
        incrs,
        (1..=n).collect::<Vec<_>>(),
        "the INCR answers are 1..=n"
    );
    let m = lens.len();
    lens.sort_unstable();
    lens.dedup();
    assert_eq!(lens.len(), m, "an APPEND length was given twice");
    assert_eq!(get(fleet.listen("a"), "shared:counter"), n);
    let mut c = RespClient::connect(fleet.listen("b")).unwrap();
    assert_eq!(
        c.cmd(&["STRLEN", "shared:string"]).unwrap(),
        Reply::Int(appended)
    );
    assert_eq!(
        *lens.last().unwrap(),
        appended,
        "the last APPEND saw the whole string"
    );
}

/// A client on node `at` that pipelines `depth` INCRs of its own key per
/// write and checks every answer (consecutive, from where it was): its
/// acknowledged count, or what went wrong. Pipelines keep input in flight
/// when a hand-over holds it, so a moved tunnel must send some again.
fn pipelined_client(
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

/// Clients of node c reach the owner a through tunnels. At a's hand-over
/// to b, a tells c to dial b itself (`TunnelMove`): c's connections then
/// no longer pass through a, which is killed right after — and they keep
/// working, every INCR counted exactly once. One of them pipelines, so
/// input is in flight at the hand-over and c sends it again to b.
#[test]
fn tunnels_from_a_third_node_move_to_the_new_owner_and_outlive_the_old_one() {
    let cluster = EtcdCluster::start(3).unwrap();
    let mut fleet = Fleet::start(&cluster);
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let singles: Vec<_> = (0..2)
        .map(|i| client(fleet.listen("c"), format!("c:{i}"), stop.clone()))
        .collect();
    let piped = pipelined_client(fleet.listen("c"), "c:piped".into(), 32, stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    let (ok, text) = fleet.migrate("a", "b");
    assert!(ok, "{text}\n{}", fleet.logs());
    assert!(
        text.contains("(+ 3 tunnels from other nodes redirected)"),
        "a handed c's three tunnels to c itself:\n{text}\n{}",
        fleet.logs()
    );
    fleet.wait_all("b", 2);
    let log_c = fleet.log("c");
    let moved: Vec<&str> = log_c
        .lines()
        .filter(|l| l.contains("relayed connection moved"))
        .collect();
    eprintln!("{}", moved.join("\n"));
    let moved = moved.len();
    assert_eq!(moved, 3, "c moved its three tunnels\n{}", fleet.logs());

    // The old owner dies: c's clients no longer go through it.
    fleet.nodes[0].kill9().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for c in singles {
        let (key, n, broke) = c.join().unwrap();
        assert_eq!(broke, None, "client {key}: {}", fleet.logs());
        acked.push((key, n));
    }
    let piped = piped
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    acked.push(("c:piped".into(), piped));
    for (key, n) in &acked {
        assert!(*n > 0, "{key} made progress");
        assert_eq!(get(fleet.listen("c"), key), *n, "{key}\n{}", fleet.logs());
    }
}

/// The destination dies (node agent and its restored Redis, as in a
/// machine crash) right after the source's registry commit, when it is
/// told to own the service. The registry says b owns it; nothing serves
/// until b is back; restarted, b rebuilds the service from the snapshot it
/// kept and the log it journaled, and every write acknowledged before the
/// move is there — once; a client cut by the crash finds its acknowledged
/// INCRs there too (its last, unanswered one at most once).
#[test]
fn a_destination_dying_right_after_the_commit_owns_the_service_when_back() {
    let cluster = EtcdCluster::start(3).unwrap();
    let mut fleet = Fleet::start_with(
        &cluster,
        "b",
        &[("FAILPOINTS", "destination-crash-at-commit=return")],
    );
    fleet.wait_all("a", 1);
    let mut writer = RespClient::connect(fleet.listen("c")).unwrap();
    for i in 1..=50 {
        assert_eq!(writer.cmd(&["INCR", "dest:0"]).unwrap(), Reply::Int(i));
    }
    drop(writer);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = client(fleet.listen("a"), "dest:live".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    let (ok, text) = fleet.migrate("a", "b");
    assert!(ok, "the source committed: {text}\n{}", fleet.logs());
    let entry = registry_entry(&cluster);
    assert_eq!(
        (&entry["owner"], &entry["epoch"]),
        (&"b".into(), &2.into()),
        "{entry}"
    );
    assert!(
        fleet.log("b").contains("crashing at the commit"),
        "{}",
        fleet.logs()
    );
    // The crash took b's service with it.
    for pid in replaymig_testkit::listener_pids(fleet.node("b").backend) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let (key, acked, broke) = live.join().unwrap();
    assert!(broke.is_some(), "the live client's connection went with b");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    fleet.restart("b");
    fleet.wait_all("b", 2);
    assert_eq!(get(fleet.listen("c"), "dest:0"), 50, "{}", fleet.logs());
    let got = get(fleet.listen("a"), &key);
    assert!(
        got == acked || got == acked + 1,
        "{key}: {acked} acknowledged, {got} on b\n{}",
        fleet.logs()
    );
    let mut c = RespClient::connect(fleet.listen("a")).unwrap();
    assert_eq!(c.cmd(&["INCR", "dest:0"]).unwrap(), Reply::Int(51));
}

/// The source's registry commit applied, but it does not know yet (the
/// answer was lost and etcd stays silent to it for 2 s): for that long a
/// is a stale owner — it still thinks it owns epoch 1 and holds its
/// clients — while the registry and every other node say b owns epoch 2.
/// Meanwhile new clients of c are served by b (their tunnel under epoch 2
/// is b's commit), a tunnel routed by epoch 2 to the stale owner is fenced,
/// and nobody is served by a. Once a settles it hands its clients over:
/// every answer of every client checked, every count exact on b.
#[test]
fn a_stale_owner_is_fenced_while_the_new_owner_serves() {
    use replaymig_peer::{Authenticator, Message, PeerLink, Secret};
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start_with(
        &cluster,
        "a",
        &[(
            "FAILPOINTS",
            "fleet-commit-answer-lost=return;fleet-before-settle=return(2000)",
        )],
    );
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = [
        client(fleet.listen("a"), "stale:a".into(), stop.clone()),
        client(fleet.listen("c"), "stale:c".into(), stop.clone()),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let migration = fleet.migrate_in_background("a", "b");
    // The registry and c say b; a does not know yet.
    fleet.wait_view("c", "b", 2);
    let status_a = || -> Value {
        let out = replaymig()
            .args(["status", "--json", "--admin", &fleet.admin("a")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let a = status_a();
    assert_eq!(
        (&a[0]["owner"], &a[0]["epoch"]),
        (&"a".into(), &1.into()),
        "a is a stale owner now: {a}"
    );

    // A new client of c reaches b, which owns by the registry.
    let mut fresh = RespClient::connect(fleet.listen("c")).unwrap();
    for i in 1..=20 {
        assert_eq!(
            fresh.cmd(&["INCR", "stale:fresh"]).unwrap(),
            Reply::Int(i),
            "{}",
            fleet.logs()
        );
    }
    // A tunnel routed by the new epoch to the stale owner is fenced.
    let answer = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let secret = Secret::from_file(&fleet.dir.path().join("secret")).unwrap();
        let a = fleet.node("a");
        let mut link = PeerLink::connect((a.ip, a.peer).into(), &Authenticator::new("c", secret))
            .await
            .unwrap();
        link.send(Message::TunnelOpen {
            service: "redis".into(),
            conn: None,
            delivered: 0,
            client: "test".into(),
            epoch: 2,
        })
        .await
        .unwrap();
        link.recv_timeout(Duration::from_secs(10)).await.unwrap()
    });
    match answer {
        Message::MigrateAbort { reason } => assert!(reason.contains("owns epoch 1"), "{reason}"),
        other => panic!("the stale owner took a tunnel of epoch 2: {other:?}"),
    }
    let a = status_a();
    assert_eq!(a[0]["epoch"], 1, "still settling: {a}");

    let out = migration.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    fleet.wait_all("b", 2);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in held {
        let (key, acked, broke) = c.join().unwrap();
        assert_eq!(broke, None, "{key}\n{}", fleet.logs());
        assert!(acked > 0, "{key} made progress");
        assert_eq!(
            get(fleet.listen("b"), &key),
            acked,
            "{key}\n{}",
            fleet.logs()
        );
    }
    assert_eq!(get(fleet.listen("a"), "stale:fresh"), 20);
}

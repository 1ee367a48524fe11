//! Fidelity under load (DESIGN.md, "Fidelity"): a migration that exits 0
//! is exactly right; anything else is a refusal that names a reason, and
//! the source still owns and serves the service with every acknowledged
//! write.
//!
//! Each suite runs `FIDELITY_RUNS` migrations (default 2), each between
//! two fresh node agents (the real binary) on loopback, while several
//! clients load the service through node a's proxy and one through node
//! b's (tunneled to the owner). Every client checks every reply as it
//! comes (the client-side oracle); after the migration the state of the
//! node that holds the service (b if `migrate` exited 0, else a) is
//! compared with what the clients were acknowledged. Outcomes are counted:
//! an exit-0 run whose oracle failed is a *silent divergence* (the test
//! fails with the details); a refusal whose oracle failed (no reason, a
//! lost write, a client error at the source) fails the test too. The rate
//! of successful migrations is printed, not asserted — except that suite c
//! must be refused every time.
//!
//! * a: Redis, every client INCRs one shared key (some pipelined 4 deep,
//!   one reconnecting every 20 commands) and RPUSHes its own sequence to
//!   one shared list.
//! * b: seqsvc (`replaymig-seqsvc`, the server speaks first, `NEXT`'s
//!   answer comes in two writes, one global counter), with connections
//!   opened before the migration and kept across it, idle ones included.
//! * c: seqsvc with a `STATS` poller, whose answers are non-deterministic:
//!   the replay cannot be proven equal, so the migration must be refused.
//! * d: memcached (`-t 1`): gets/cas read-modify-write of one key, incr of
//!   one counter, append to one key; snapshot driver `none` (replay from
//!   LSN 1).
//! * e: memcached -t 4: refused or exact.
//! * f: Redis MULTI/EXEC and 96 KiB values on the shared keys.
//! * i: Redis connections that ran `SELECT 3` before the snapshot and only
//!   `SET` (answers `+OK` whichever database), `connection_state`
//!   undeclared: the snapshot's barrier closes them and the clients
//!   reconnect (a migration exited 0 with the keys in the wrong database
//!   before; then it was refused every time).
//! * j: Redis with a password and stateful clients (`tests/fidelity/stateful.rs`).
//! * k: memcached with `noreply` writers (`tests/fidelity/noreply.rs`).
//! * g, h: suites a and b with the criu driver; a restored process keeps
//!   its address, so these nodes run in a testbed's two network
//!   namespaces (root; skipped with the reason otherwise).
//!
//! Suites run one at a time (a lock): a 2-core machine loaded by two of
//! them at once measures the machine, not the migration.

mod common;
#[path = "fidelity/noreply.rs"]
mod noreply;
#[path = "fidelity/stateful.rs"]
mod stateful;

use common::{replaymig, start_node_in};
use replaymig_testkit::seqsvc::{Answer, GREETING};
use replaymig_testkit::REDIS_BGSAVE_DUMP;
use replaymig_testkit::{
    is_root, listener_pids, toml_string, wait_for_listen, write_node_config,
    write_service_node_config, ChildGuard, NodePorts, Reply, RespClient, ServiceSpec,
    StopListenersOnDrop, StopNetnsListenersOnDrop, Testbed,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The test service's binary, built by cargo for this test run.
const SEQSVC: &str = env!("CARGO_BIN_EXE_replaymig-seqsvc");
/// Where tools/install-criu.sh puts CRIU (the criu driver's default).
const CRIU: &str = "/opt/replaymig/criu/bin/criu";
/// Every load loop ends by then, whatever happens.
const LOAD_BOUND: Duration = Duration::from_secs(20);
/// ... or after this many commands per client.
const MAX_OPS: u64 = 60_000;
/// Load before the migration starts.
const WARM_UP: Duration = Duration::from_millis(800);
/// Load after it ended (through the new owner, or still the old one).
const AFTER: Duration = Duration::from_millis(700);
/// `replaymig migrate` is killed (and the run fails) after this.
const MIGRATE_BOUND: Duration = Duration::from_secs(90);
/// Every client read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Appends per memcached client (its tokens stay well below memcached's
/// 1 MB item size: 2 clients x 20,000 x ~14 bytes).
const MAX_APPENDS: u64 = 20_000;
/// Failures listed per kind before "and N more".
const SHOWN: usize = 5;

/// Migrations per suite: `FIDELITY_RUNS`, default 2.
fn runs() -> usize {
    std::env::var("FIDELITY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// One suite at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `program` is on the PATH.
fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(program);
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

/// Moves the calling thread into network namespace `ns` (a testbed
/// node's): sockets it opens from then on are there.
fn enter_netns(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------- cluster

/// The service a suite migrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Svc {
    Redis,
    Seqsvc,
    Memcached,
    /// memcached with 4 worker threads: connections are spread over
    /// threads, so concurrent commands run in no order the journal knows.
    MemcachedThreaded,
    /// Redis checkpointed and restored by CRIU (its own PID namespace, so
    /// the restore gets its PIDs back). A restored process keeps its
    /// address, so the nodes run in a testbed's two network namespaces.
    RedisCriu,
    /// seqsvc checkpointed and restored by CRIU, in a testbed.
    SeqsvcCriu,
    /// Redis as `Redis`, but without declaring `connection_state = "none"`:
    /// connections in use before the snapshot must not continue.
    RedisUndeclared,
    /// `RedisUndeclared` with a password (`requirepass`): every client
    /// connection keeps its authentication.
    RedisAuth,
    /// `RedisAuth` checkpointed by CRIU carrying the connections
    /// themselves (`carry_connections`, the service under the socket
    /// holder), in a testbed.
    RedisAuthCarried,
    /// `SeqsvcCriu` carrying the connections: greetings, answers in two
    /// parts 3 ms apart (the pause may split one), undeclared state.
    SeqsvcCarried,
    /// memcached `-t 1` checkpointed by CRIU carrying the connections:
    /// `noreply` input continues instead of being closed.
    MemcachedCarried,
    /// `RedisAuthCarried` moved by the iterative method (pre-copy rounds
    /// dump the service alone; the final dump carries the connections).
    RedisAuthCarriedIterative,
}

impl Svc {
    fn name(self) -> &'static str {
        match self {
            Svc::Redis
            | Svc::RedisCriu
            | Svc::RedisUndeclared
            | Svc::RedisAuth
            | Svc::RedisAuthCarried
            | Svc::RedisAuthCarriedIterative => "redis",
            Svc::Seqsvc | Svc::SeqsvcCriu | Svc::SeqsvcCarried => "seqsvc",
            Svc::Memcached | Svc::MemcachedThreaded | Svc::MemcachedCarried => "memcached",
        }
    }

    /// The programs it needs beyond this build.
    fn programs(self) -> &'static [&'static str] {
        match self {
            Svc::Redis | Svc::RedisUndeclared | Svc::RedisAuth => &["redis-server", "redis-cli"],
            Svc::Seqsvc => &[],
            Svc::Memcached | Svc::MemcachedThreaded => &["memcached"],
            Svc::RedisCriu | Svc::RedisAuthCarried | Svc::RedisAuthCarriedIterative => &[
                "redis-server",
                "redis-cli",
                "unshare",
                "setsid",
                "nsenter",
                "ip",
            ],
            Svc::SeqsvcCriu => &["unshare", "setsid", "nsenter", "ip"],
            Svc::SeqsvcCarried => &["unshare", "nsenter", "ip"],
            Svc::MemcachedCarried => &["memcached", "unshare", "nsenter", "ip"],
        }
    }

    /// Extra `replaymig migrate` arguments (the method).
    fn migrate_args(self) -> &'static [&'static str] {
        match self {
            Svc::RedisAuthCarriedIterative => &["--method", "iterative"],
            _ => &[],
        }
    }

    /// Whether its nodes run in a testbed (two network namespaces).
    fn in_testbed(self) -> bool {
        matches!(
            self,
            Svc::RedisCriu
                | Svc::SeqsvcCriu
                | Svc::RedisAuthCarried
                | Svc::SeqsvcCarried
                | Svc::MemcachedCarried
                | Svc::RedisAuthCarriedIterative
        )
    }

    /// Why this machine cannot run it (a skip reason), if it cannot.
    fn unavailable(self) -> Option<String> {
        if let Some(p) = self.programs().iter().find(|p| !have(p)) {
            return Some(format!("{p} is not installed (tools/setup.sh installs it)"));
        }
        if self.in_testbed() && !is_root() {
            return Some("CRIU and network namespaces need root".into());
        }
        if self.in_testbed() && !Path::new(CRIU).exists() {
            return Some(format!("{CRIU} is missing (tools/install-criu.sh)"));
        }
        None
    }

    /// Writes node `name`'s configuration (both nodes name a as owner).
    fn config(
        self,
        dir: &Path,
        name: &str,
        me: &NodePorts,
        other: (&str, &NodePorts),
    ) -> std::path::PathBuf {
        match self {
            Svc::Redis => write_node_config(dir, name, me, other, "a", None, None),
            Svc::RedisUndeclared => {
                let snapshot = format!(
                    "driver = \"exec\"\n{REDIS_BGSAVE_DUMP}\nrestore = [{}]",
                    toml_string("cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb")
                );
                let spec = ServiceSpec {
                    name: "redis",
                    start: "redis-server --port {port} --bind 127.0.0.1 --dir {data_dir} --save '' --appendonly no --enable-protected-configs local",
                    ready: Some("redis-cli -p {port} PING | grep -q PONG"),
                    snapshot: &snapshot,
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::RedisAuth => {
                let auth = format!("REDISCLI_AUTH={} redis-cli", stateful::PASSWORD);
                let snapshot = format!(
                    "driver = \"exec\"\n{}\nrestore = [{}]",
                    REDIS_BGSAVE_DUMP.replace("redis-cli", &auth),
                    toml_string("cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb")
                );
                let start = format!(
                    "redis-server --port {{port}} --bind 127.0.0.1 --dir {{data_dir}} --save '' \
                     --appendonly no --enable-protected-configs local --requirepass {}",
                    stateful::PASSWORD
                );
                let ready = format!("{auth} -p {{port}} PING | grep -q PONG");
                let spec = ServiceSpec {
                    name: "redis",
                    start: &start,
                    ready: Some(&ready),
                    snapshot: &snapshot,
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::RedisCriu => {
                let spec = ServiceSpec {
                    name: "redis",
                    connection_state: Some("none"),
                    start:
                        "unshare --pid --fork setsid redis-server --port {port} --bind 127.0.0.1 \
                            --dir {data_dir} --save '' --appendonly no",
                    ready: Some("redis-cli -p {port} PING | grep -q PONG"),
                    snapshot: "driver = \"criu\"",
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::RedisAuthCarried | Svc::RedisAuthCarriedIterative => {
                let start = format!(
                    "unshare --pid --fork {{holder}} redis-server --port {{port}} --bind 127.0.0.1 \
                     --dir {{data_dir}} --save '' --appendonly no --requirepass {}",
                    stateful::PASSWORD
                );
                let ready = format!(
                    "REDISCLI_AUTH={} redis-cli -p {{port}} PING | grep -q PONG",
                    stateful::PASSWORD
                );
                let spec = ServiceSpec {
                    name: "redis",
                    start: &start,
                    ready: Some(&ready),
                    snapshot: "driver = \"criu\"\ncarry_connections = true",
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::MemcachedCarried => {
                // -u root: CRIU reads each process's rlimits, which needs
                // CAP_SYS_RESOURCE for a process of another user, and this
                // machine's root lacks it (docs/ENVIRONMENT.md): with
                // `-u nobody` every dump fails ("Can't get rlimit").
                let spec = ServiceSpec {
                    name: "memcached",
                    start: "unshare --pid --fork {holder} memcached -t 1 -U 0 -l 127.0.0.1 \
                            -p {port} -u root",
                    snapshot: "driver = \"criu\"\ncarry_connections = true",
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::SeqsvcCarried => {
                let start = format!(
                    "unshare --pid --fork {{holder}} {} --listen 127.0.0.1:{{port}} --state {{data_dir}}/state",
                    shell_quote(SEQSVC)
                );
                let spec = ServiceSpec {
                    name: "seqsvc",
                    start: &start,
                    snapshot: "driver = \"criu\"\ncarry_connections = true",
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::SeqsvcCriu => {
                let start = format!(
                    "unshare --pid --fork setsid {} --listen 127.0.0.1:{{port}} --state {{data_dir}}/state",
                    shell_quote(SEQSVC)
                );
                let spec = ServiceSpec {
                    name: "seqsvc",
                    connection_state: Some("none"),
                    start: &start,
                    snapshot: "driver = \"criu\"",
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::Seqsvc => {
                let bin = shell_quote(SEQSVC);
                let start = format!(
                    "{bin} --listen 127.0.0.1:{{port}} --state {{data_dir}}/state --exit-with-parent"
                );
                let dump = format!("{bin} save --port {{port}} --to {{snapshot_dir}}/state");
                let snapshot = format!(
                    "driver = \"exec\"\ndump = [{}]\nrestore = [{}]",
                    toml_string(&dump),
                    toml_string("cp {snapshot_dir}/state {data_dir}/state")
                );
                let spec = ServiceSpec {
                    name: "seqsvc",
                    connection_state: Some("none"),
                    start: &start,
                    snapshot: &snapshot,
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
            Svc::Memcached | Svc::MemcachedThreaded => {
                // -t 1: one worker thread, so its CAS ids follow the input
                // order; -u: memcached refuses root without it.
                let start = if self == Svc::Memcached {
                    "memcached -t 1 -U 0 -l 127.0.0.1 -p {port} -u nobody"
                } else {
                    "memcached -t 4 -U 0 -l 127.0.0.1 -p {port} -u nobody"
                };
                let spec = ServiceSpec {
                    name: "memcached",
                    connection_state: Some("none"),
                    start,
                    snapshot: "driver = \"none\"",
                    ..Default::default()
                };
                write_service_node_config(dir, name, me, other, "a", &spec)
            }
        }
    }
}

/// Two node agents, on loopback or in a testbed; a owns the service.
struct Cluster {
    svc: Svc,
    pa: NodePorts,
    pb: NodePorts,
    a: ChildGuard,
    b: ChildGuard,
    /// After the nodes: a service a killed node left behind is stopped
    /// by its port (its PID found from the listening socket).
    _services: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// After the services: the namespaces, if the nodes run in a testbed.
    testbed: Option<Testbed>,
    /// Last: removed when everything in it has stopped.
    dir: TempDir,
}

/// How `replaymig migrate` ended.
struct Migration {
    /// Its exit code (None: killed after MIGRATE_BOUND, or by a signal).
    code: Option<i32>,
    stdout: String,
    stderr: String,
    seconds: f64,
}

impl Migration {
    fn succeeded(&self) -> bool {
        self.code == Some(0)
    }

    /// The reason a failed migration printed (`error: ...`).
    fn reason(&self) -> Option<String> {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error:"))
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
    }
}

impl Cluster {
    /// Fresh nodes for `svc`, node a's agent started with `a_env`.
    fn start_with(svc: Svc, a_env: &[(&str, &str)]) -> Cluster {
        let dir = TempDir::new().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "fidelity-test-secret-0123456789abcdef",
        )
        .unwrap();
        let testbed = svc.in_testbed().then(|| {
            let name = format!("rmfid{}", std::process::id() % 100_000);
            Testbed::up(&name, None).expect("testbed up")
        });
        let (mut pa, mut pb) = (NodePorts::loopback(), NodePorts::loopback());
        let mut services: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
        match &testbed {
            Some(tb) => {
                // A restored process keeps its address: the service
                // listens on the same port on both nodes (each node has
                // its own port space).
                (pa.ip, pb.ip) = (tb.addr('a'), tb.addr('b'));
                pb.backend = pa.backend;
                for (node, p) in [('a', &pa), ('b', &pb)] {
                    services.push(Box::new(StopNetnsListenersOnDrop {
                        netns: tb.netns(node),
                        ports: vec![p.backend],
                    }));
                }
            }
            None => services.push(Box::new(StopListenersOnDrop(vec![pa.backend, pb.backend]))),
        }
        let netns = |node| testbed.as_ref().map(|tb| tb.netns(node));
        let ca = svc.config(dir.path(), "a", &pa, ("b", &pb));
        let cb = svc.config(dir.path(), "b", &pb, ("a", &pa));
        let (na, nb) = (netns('a'), netns('b'));
        let a = start_node_in(na.as_deref(), dir.path(), "a", &ca, pa.admin, a_env, &[]);
        let b = start_node_in(nb.as_deref(), dir.path(), "b", &cb, pb.admin, &[], &[]);
        let cluster = Cluster {
            svc,
            pa,
            pb,
            a,
            b,
            _services: services,
            testbed,
            dir,
        };
        for (node, port, what) in [
            ('a', pa.backend, "a's service"),
            ('a', pa.listen, "a's proxy"),
            ('b', pb.listen, "b's proxy"),
        ] {
            if let Err(e) = cluster.on(node, || wait_for_listen(port, Duration::from_secs(30))) {
                panic!("{what} did not come up: {e}\n{}", cluster.logs());
            }
        }
        cluster
    }

    /// The network namespace of `node`'s testbed host, if in a testbed.
    fn netns(&self, node: char) -> Option<String> {
        self.testbed.as_ref().map(|tb| tb.netns(node))
    }

    /// Runs `f` on `node`: in its network namespace (on a scoped thread
    /// that entered it) if in a testbed, else right here.
    fn on<T: Send>(&self, node: char, f: impl FnOnce() -> T + Send) -> T {
        let Some(ns) = self.netns(node) else {
            return f();
        };
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_netns(&ns);
                    f()
                })
                .join()
                .expect("a thread on a testbed node panicked")
        })
    }

    /// `replaymig ARGS` run on `node` (its admin endpoint listens on the
    /// node's loopback).
    fn replaymig_on(&self, node: char) -> Command {
        match self.netns(node) {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg(env!("CARGO_BIN_EXE_replaymig"));
                c
            }
            None => replaymig(),
        }
    }

    fn proxy_a(&self) -> SocketAddr {
        (self.pa.ip, self.pa.listen).into()
    }

    fn proxy_b(&self) -> SocketAddr {
        (self.pb.ip, self.pb.listen).into()
    }

    /// The service's own address on `node` (not journaled).
    fn backend(&self, node: char) -> SocketAddr {
        let p = if node == 'a' { &self.pa } else { &self.pb };
        ([127, 0, 0, 1], p.backend).into()
    }

    fn admin(&self, node: char) -> u16 {
        if node == 'a' {
            self.pa.admin
        } else {
            self.pb.admin
        }
    }

    /// The service's entry of node `node`'s `status --json`.
    fn status(&self, node: char) -> Result<serde_json::Value, String> {
        let out = self
            .replaymig_on(node)
            .args(["status", "--json", "--admin"])
            .arg(format!("127.0.0.1:{}", self.admin(node)))
            .output()
            .map_err(|e| format!("run status: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "status of {node} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let all: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("status of {node} is not JSON: {e}"))?;
        all.as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == self.svc.name()))
            .cloned()
            .ok_or_else(|| format!("status of {node} lists no {}: {all}", self.svc.name()))
    }

    /// Waits (bounded) until node `node` runs no migration; its owner.
    fn settled_owner(&self, node: char) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.status(node)?;
            if s["migrating"] != true && s["prepared"].is_null() {
                return s["owner"]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("no owner in {s}"));
            }
            if Instant::now() > deadline {
                return Err(format!("node {node} still migrating after 15 s: {s}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until nothing listens on node `node`'s backend
    /// port: its copy of the service is stopped.
    fn service_stopped(&self, node: char) -> Result<(), String> {
        let port = self.backend(node).port();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listeners = || self.on(node, || listener_pids(port));
        while !listeners().is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "node {node}'s copy of the service still runs (port {port}, pids {:?})",
                    listeners()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `replaymig migrate SERVICE --to b`, to its end (bounded).
    fn migrate(&self) -> Migration {
        let started = Instant::now();
        let mut child = self
            .replaymig_on('a')
            .args(["migrate", self.svc.name(), "--to", "b", "--admin"])
            .arg(format!("127.0.0.1:{}", self.pa.admin))
            .args(self.svc.migrate_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start replaymig migrate");
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let mut guard = ChildGuard::new("replaymig migrate", child);
        let code = match guard.wait_timeout(MIGRATE_BOUND) {
            Ok(status) => status.code(),
            Err(_) => {
                let _ = guard.kill9();
                None
            }
        };
        Migration {
            code,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// The last lines of both nodes' logs.
    fn logs(&self) -> String {
        ['a', 'b']
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                format!(
                    "--- {n}.log (last {} lines)\n{}\n",
                    tail.len(),
                    tail.join("\n")
                )
            })
            .collect()
    }

    /// Stops both nodes gracefully (they stop their services); the guards
    /// kill whatever is left.
    fn stop(mut self) {
        let _ = self.a.terminate(Duration::from_secs(15));
        let _ = self.b.terminate(Duration::from_secs(15));
        if std::env::var_os("FIDELITY_KEEP").is_some() {
            // Logs, work dirs (CRIU's dump.log) and journals, to look into.
            let kept = std::mem::replace(&mut self.dir, TempDir::new().unwrap()).keep();
            eprintln!("fidelity: kept {}", kept.display());
        }
    }
}

// ---------------------------------------------------------------- campaign

/// What the clients share: when to stop, and whether the migration ended.
#[derive(Clone)]
struct Control {
    stop: Arc<AtomicBool>,
    migrated: Arc<AtomicBool>,
    deadline: Instant,
    /// In a testbed: the namespace clients run in (node a's; b's proxy is
    /// reached over the testbed's link).
    netns: Option<String>,
}

impl Control {
    fn new(cluster: &Cluster) -> Control {
        Control {
            stop: Arc::new(AtomicBool::new(false)),
            migrated: Arc::new(AtomicBool::new(false)),
            deadline: Instant::now() + LOAD_BOUND,
            netns: cluster.netns('a'),
        }
    }

    /// Called first on every client thread: enters the clients' network
    /// namespace, if any, so the sockets it opens are there.
    fn enter(&self) {
        if let Some(ns) = &self.netns {
            enter_netns(ns);
        }
    }

    /// Whether a client that has sent `ops` commands goes on.
    fn go(&self, ops: u64) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline && ops < MAX_OPS
    }

    /// Waits until the migration ended (or the load must stop).
    fn wait_migrated(&self) {
        while !self.migrated.load(Ordering::Relaxed) && self.go(0) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What every client's log has: its name, and the error that ended it.
trait ClientLog: Default + Send + 'static {
    fn named(name: String) -> Self;
    fn failed(&mut self, error: String);
}

/// `ClientLog` for logs with `name` and `errors` fields.
macro_rules! client_log {
    ($($log:ty),*) => {$(
        impl ClientLog for $log {
            fn named(name: String) -> Self {
                let mut log = Self::default();
                log.name = name;
                log
            }
            fn failed(&mut self, error: String) {
                self.errors.push(error);
            }
        }
    )*};
}
client_log!(
    RedisLog,
    SeqLog,
    McLog,
    stateful::StateLog,
    noreply::NoreplyLog
);

/// Runs one client's `session` on its own thread, in the clients'
/// namespace, with a log named `name`; the error that ends it goes into
/// the log.
fn spawn_client<L: ClientLog>(
    name: &str,
    ctl: &Control,
    session: impl FnOnce(&mut L, &Control) -> Result<(), String> + Send + 'static,
) -> JoinHandle<L> {
    let (name, ctl) = (name.to_string(), ctl.clone());
    std::thread::spawn(move || {
        ctl.enter();
        let mut log = L::named(name);
        if let Err(e) = session(&mut log, &ctl) {
            log.failed(e);
        }
        log
    })
}

/// What the oracle found for one run: failures, and a line of counts.
struct Verdict {
    failures: Vec<String>,
    summary: String,
}

/// For suites whose connections CRIU carries: every client that saw its
/// connection closed (`(name, closes)`) is a failure.
fn fail_closed<'a>(verdict: &mut Verdict, clients: impl Iterator<Item = (&'a str, u64)>) {
    for (name, closes) in clients.filter(|(_, closes)| *closes > 0) {
        verdict.failures.push(format!(
            "{name}: closed {closes} times, but its connection was carried and must continue"
        ));
    }
}

/// Adds `items` as failures, at most SHOWN of them, then a count.
fn report_some(failures: &mut Vec<String>, items: Vec<String>) {
    let n = items.len();
    failures.extend(items.into_iter().take(SHOWN));
    if n > SHOWN {
        failures.push(format!("... and {} more like these", n - SHOWN));
    }
}

/// `values` must be exactly 1..=len (each once): what every answer of a
/// shared counter must look like when nothing was lost or repeated.
fn exactly_one_to_n(values: &[i64], what: &str) -> Vec<String> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as i64;
    let mut out = Vec::new();
    let dups: Vec<i64> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    if !dups.is_empty() {
        out.push(format!(
            "{} {what} answers were given more than once, e.g. {:?}",
            dups.len(),
            &dups[..dups.len().min(SHOWN)]
        ));
    }
    let set: BTreeSet<i64> = sorted.iter().copied().collect();
    let missing: Vec<i64> = (1..=n).filter(|v| !set.contains(v)).collect();
    if !missing.is_empty() {
        out.push(format!(
            "{} of the {what} answers 1..={n} were never given, e.g. {:?}; out of range: {:?}",
            missing.len(),
            &missing[..missing.len().min(SHOWN)],
            set.iter()
                .filter(|&&v| v < 1 || v > n)
                .take(SHOWN)
                .collect::<Vec<_>>()
        ));
    }
    out
}

/// What a suite's migrations must end in.
#[derive(Clone, Copy)]
enum Expect {
    /// Either moved exactly or refused with a reason.
    Either,
    /// Refused, naming a divergence or mismatch (an exit 0 is a failure).
    Divergence,
    /// Refused, the reason containing this (a fault the suite injects).
    Refusal(&'static str),
}

/// Runs one suite: `runs()` migrations, each on fresh nodes under the load
/// `clients` starts; `check` is the oracle against the node holding the
/// service. `must_refuse`: an exit 0 is itself a failure.
fn campaign<L: Send + Sync + 'static>(
    suite: &str,
    svc: Svc,
    must_refuse: bool,
    clients: impl Fn(&Cluster, &Control) -> Vec<JoinHandle<L>>,
    check: impl Fn(&[L], &Cluster, char) -> Verdict + Sync,
) {
    let expect = if must_refuse {
        Expect::Divergence
    } else {
        Expect::Either
    };
    campaign_with(suite, svc, expect, &[], clients, check);
}

/// [`campaign`] with any expectation, node a started with `a_env` (a
/// `FAILPOINTS` fault, say).
fn campaign_with<L: Send + Sync + 'static>(
    suite: &str,
    svc: Svc,
    expect: Expect,
    a_env: &[(&str, &str)],
    clients: impl Fn(&Cluster, &Control) -> Vec<JoinHandle<L>>,
    check: impl Fn(&[L], &Cluster, char) -> Verdict + Sync,
) {
    let must_refuse = !matches!(expect, Expect::Either);
    let _one_at_a_time = serial();
    if let Some(why) = svc.unavailable() {
        eprintln!("SKIP fidelity {suite}: {why}");
        return;
    }
    let runs = runs();
    let (mut succeeded, mut refused, mut silent, mut bad_refusals) = (0, 0, 0, 0);
    let mut details = Vec::new();
    let mut reasons = Vec::new();
    for run in 1..=runs {
        let cluster = Cluster::start_with(svc, a_env);
        let ctl = Control::new(&cluster);
        let handles = clients(&cluster, &ctl);
        std::thread::sleep(WARM_UP);
        let m = cluster.migrate();
        ctl.migrated.store(true, Ordering::Relaxed);
        std::thread::sleep(AFTER);
        ctl.stop.store(true, Ordering::Relaxed);
        let logs: Vec<L> = handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect();

        let mut failures = Vec::new();
        let holder = if m.succeeded() {
            for node in ['a', 'b'] {
                match cluster.settled_owner(node) {
                    Ok(owner) if owner == "b" => {}
                    Ok(owner) => failures.push(format!(
                        "migrate exited 0 but node {node} says the owner is {owner}"
                    )),
                    Err(e) => failures.push(e),
                }
            }
            if let Err(e) = cluster.service_stopped('a') {
                failures.push(e);
            }
            match expect {
                Expect::Either => {}
                Expect::Divergence => failures.push(
                    "migrate exited 0, but this load's answers (STATS) cannot be reproduced: \
                     the destination cannot be proven equal and the migration must be refused"
                        .into(),
                ),
                Expect::Refusal(why) => failures.push(format!(
                    "migrate exited 0, but the injected fault ({why}) must refuse it"
                )),
            }
            'b'
        } else {
            match m.reason() {
                None => failures.push(format!(
                    "migrate failed (exit {:?}) without naming a reason",
                    m.code
                )),
                Some(reason) if matches!(expect, Expect::Refusal(_)) => {
                    if let Expect::Refusal(why) = expect {
                        if !reason.contains(why) {
                            failures.push(format!("the refusal does not name {why:?}: {reason}"));
                        }
                    }
                }
                Some(reason) if must_refuse => {
                    let r = reason.to_lowercase();
                    if !["diverg", "mismatch", "differ", "state"]
                        .iter()
                        .any(|w| r.contains(w))
                    {
                        failures.push(format!(
                            "the refusal does not name a divergence or mismatch: {reason}"
                        ));
                    }
                }
                Some(_) => {}
            }
            for node in ['a', 'b'] {
                match cluster.settled_owner(node) {
                    Ok(owner) if owner == "a" => {}
                    Ok(owner) => failures.push(format!(
                        "migrate failed but node {node} says the owner is {owner}"
                    )),
                    Err(e) => failures.push(e),
                }
            }
            if let Err(e) = cluster.service_stopped('b') {
                failures.push(format!("after the refusal: {e}"));
            }
            'a'
        };
        let verdict = cluster.on(holder, || check(&logs, &cluster, holder));
        failures.extend(verdict.failures);

        let outcome = match (m.succeeded(), failures.is_empty()) {
            (true, true) => {
                succeeded += 1;
                "succeeded".to_string()
            }
            (true, false) => {
                silent += 1;
                "SILENT DIVERGENCE".to_string()
            }
            (false, ok) => {
                refused += 1;
                reasons.push(m.reason().unwrap_or_default());
                if !ok {
                    bad_refusals += 1;
                }
                format!(
                    "refused{}: {}",
                    if ok { "" } else { " BADLY" },
                    m.reason().unwrap_or_else(|| "(no reason)".into())
                )
            }
        };
        eprintln!(
            "fidelity {suite} run {run}/{runs}: migrate exit {:?} after {:.2} s, {outcome}; {}; oracle on {holder}: {}",
            m.code,
            m.seconds,
            verdict.summary,
            if failures.is_empty() {
                "ok".to_string()
            } else {
                format!("{} failures", failures.len())
            }
        );
        if std::env::var_os("FIDELITY_VERBOSE").is_some() {
            eprintln!("--- migrate stdout\n{}", m.stdout.trim_end());
        }
        if !failures.is_empty() {
            details.push(format!(
                "=== fidelity {suite} run {run}: {outcome}\n- {}\n--- migrate stdout\n{}\n--- migrate stderr\n{}\n{}",
                failures.join("\n- "),
                m.stdout.trim_end(),
                m.stderr.trim_end(),
                cluster.logs()
            ));
        }
        cluster.stop();
    }
    println!(
        "fidelity {suite}: runs {runs}, succeeded {succeeded}, refused {refused}, silent divergences {silent}"
    );
    if let Ok(path) = std::env::var("FIDELITY_REPORT") {
        // One table row per suite for docs/reliability.md (tools/fidelity.sh).
        let kinds: std::collections::BTreeSet<String> =
            reasons.iter().map(|r| refusal_kind(r)).collect();
        let row = format!(
            "| {suite}: {} | {runs} | {succeeded} | {refused} | {silent} | {bad_refusals} | {} |\n",
            suite_label(suite),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(row.as_bytes()))
            .expect("FIDELITY_REPORT is writable");
    }
    if bad_refusals > 0 {
        println!("fidelity {suite}: {bad_refusals} of the refusals broke the contract (no reason, or the source lost or disturbed something)");
    }
    for d in &details {
        eprintln!("{d}");
    }
    assert_eq!(
        silent, 0,
        "fidelity {suite}: {silent} migrations exited 0 although the oracle failed (details above)"
    );
    assert_eq!(
        bad_refusals, 0,
        "fidelity {suite}: {bad_refusals} refusals without a reason or with lost/disturbed state at the source (details above)"
    );
    if must_refuse {
        assert_eq!(refused, runs, "fidelity {suite}: every run must be refused");
    }
}

/// What a suite loads, for the campaign table.
fn suite_label(suite: &str) -> &'static str {
    match suite {
        "a" => "Redis, 6 clients on one shared counter and list (pipelines, churn, one tunneled)",
        "b" => "seqsvc: greeting, global sequence, two-part answers, long-lived and churning connections",
        "c" => "seqsvc with a STATS poller (timestamps: must be refused)",
        "d" => "memcached -t 1, gets/cas, incr and append on shared keys (driver none)",
        "e" => "memcached -t 4 (multi-threaded), the same load as d",
        "f" => "Redis, MULTI/EXEC transactions and 96 KiB values on the shared counter and list",
        "g" => "suite a with the criu driver (nodes in two network namespaces), over 9 MB of random values (part of the image streams under the hold)",
        "h" => "suite b with the criu driver (nodes in two network namespaces)",
        "i" => "Redis, long-lived connections that ran SELECT 3 before the snapshot, connection_state undeclared (closed at the snapshot, clients reconnect)",
        "k" => "memcached -t 1: noreply writers (confirmed by mn), a shared counter, one writer tunneled (driver none)",
        "j" => "Redis with requirepass, connection_state undeclared: SELECT+SETNAME, MULTI across the barrier, SUBSCRIBE+PUBLISH, BLPOP 0, 2 MiB SETs sent slowly, an idle connection",
        "o" => "suite l by the iterative method (pre-copy rounds, then one hold to the hand-over)",
        "p" => "suite h, the peer link failing while CRIU's dump streams under its hold (must be refused; a thawed, serving)",
        "n" => "suite k with CRIU carrying the connections (no writer closed)",
        "m" => "suite b with CRIU carrying the connections, connection_state undeclared",
        "l" => "suite j with CRIU carrying the connections (socket holder): in-use connections continue with their state",
        _ => "",
    }
}

/// The phase and divergence kind a refusal names (`catching_up:
/// answer_mismatch`), for the campaign table.
fn refusal_kind(reason: &str) -> String {
    // "migration failed: catching_up failed: the destination aborted: ..."
    let parts: Vec<&str> = reason.split(" failed:").collect();
    let phase = match parts.as_slice() {
        [_, phase, _, ..] => phase.trim(),
        _ => "?",
    };
    let kind = [
        "answer_mismatch",
        "unchecked_answer",
        "extra_answer",
        "answer_never_came",
        "greeting_mismatch",
        "missing_answer",
        "target_closed",
        "carried_state",
    ]
    .into_iter()
    .find(|k| reason.contains(k))
    .unwrap_or(if reason.contains("did not go quiet") {
        "barrier not quiet"
    } else {
        "other"
    });
    format!("{phase} {kind}")
}

// ---------------------------------------------------------------- line client

/// A blocking line-oriented client connection (seqsvc, memcached).
struct LineConn {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl LineConn {
    fn connect(addr: SocketAddr) -> Result<LineConn, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let setup = || -> std::io::Result<LineConn> {
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            Ok(LineConn {
                reader: BufReader::new(stream.try_clone()?),
                stream: stream.try_clone()?,
            })
        };
        setup().map_err(|e| format!("set up {addr}: {e}"))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("send: {e}"))
    }

    /// The next line, without its `\n` (and `\r`).
    fn line(&mut self) -> Result<String, String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Err("the connection was closed while a reply was due".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e} (after {buf:?})")),
        }
        if buf.pop() != Some(b'\n') {
            return Err(format!("the connection was closed mid-line: {buf:?}"));
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|e| format!("not UTF-8: {:?}", e.as_bytes()))
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; n];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| format!("read {n} bytes: {e}"))?;
        Ok(buf)
    }

    /// Nothing more has come or comes within 30 ms: no stray bytes.
    fn drained(&mut self) -> Result<(), String> {
        if !self.reader.buffer().is_empty() {
            return Err(format!(
                "stray bytes after the last reply: {:?}",
                String::from_utf8_lossy(self.reader.buffer())
            ));
        }
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(30)));
        let mut b = [0u8; 256];
        let result = match self.reader.read(&mut b) {
            Ok(0) => Err("the server closed the connection".to_string()),
            Ok(n) => Err(format!(
                "stray bytes after the last reply: {:?}",
                String::from_utf8_lossy(&b[..n])
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        };
        let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
        result
    }
}

// ---------------------------------------------------------------- a: redis

const REDIS_COUNTER: &str = "fidelity:counter";
const REDIS_LIST: &str = "fidelity:list";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisRole {
    /// INCR, RPUSH, one at a time.
    Sequential,
    /// INCR, RPUSH, INCR, ECHO in one write.
    Pipelined,
    /// Sequential, on a new connection every 20 commands.
    Churn,
    /// MULTI, INCR, RPUSH, EXEC in one write.
    Transaction,
    /// SET of a 96 KiB value, INCR, GET of it back, in one write.
    Large,
}

#[derive(Debug, Default)]
struct RedisLog {
    name: String,
    /// Every INCR answer.
    incrs: Vec<i64>,
    /// Every RPUSH: (the list's length it answered, the item pushed).
    pushes: Vec<(i64, String)>,
    connections: u64,
    /// Connections a barrier closed under it (it reconnected).
    closes: u64,
    errors: Vec<String>,
}

fn redis_client(
    name: &str,
    role: RedisRole,
    addr: SocketAddr,
    ctl: &Control,
) -> JoinHandle<RedisLog> {
    spawn_client(name, ctl, move |log, ctl| {
        redis_session(log, role, addr, ctl)
    })
}

fn redis_session(
    log: &mut RedisLog,
    role: RedisRole,
    addr: SocketAddr,
    ctl: &Control,
) -> Result<(), String> {
    let connect = |log: &mut RedisLog| {
        log.connections += 1;
        RespClient::connect(addr).map_err(|e| format!("connect: {e:#}"))
    };
    let mut c = connect(log)?;
    let (mut ops, mut k) = (0u64, 0u64);
    while ctl.go(ops) {
        k += 1;
        let item = format!("{}:{k}", log.name);
        let when = format!("(after {ops} commands)");
        match role {
            RedisRole::Sequential | RedisRole::Churn => {
                match c.cmd(&["INCR", REDIS_COUNTER]) {
                    Ok(Reply::Int(v)) => log.incrs.push(v),
                    Ok(other) => return Err(format!("INCR answered {other:?} {when}")),
                    Err(e) => return Err(format!("INCR: {e:#} {when}")),
                }
                match c.cmd(&["RPUSH", REDIS_LIST, &item]) {
                    Ok(Reply::Int(p)) => log.pushes.push((p, item)),
                    Ok(other) => return Err(format!("RPUSH answered {other:?} {when}")),
                    Err(e) => return Err(format!("RPUSH: {e:#} {when}")),
                }
                ops += 2;
            }
            RedisRole::Pipelined => {
                let token = format!("{}-echo-{k}", log.name);
                let batch = vec![
                    vec!["INCR", REDIS_COUNTER],
                    vec!["RPUSH", REDIS_LIST, &item],
                    vec!["INCR", REDIS_COUNTER],
                    vec!["ECHO", &token],
                ];
                let replies = c
                    .pipeline(&batch)
                    .map_err(|e| format!("pipeline: {e:#} {when}"))?;
                match replies.as_slice() {
                    [Reply::Int(x), Reply::Int(p), Reply::Int(y), Reply::Bulk(echo)]
                        if y > x && echo == token.as_bytes() =>
                    {
                        log.incrs.extend([*x, *y]);
                        log.pushes.push((*p, item));
                    }
                    other => {
                        return Err(format!(
                            "INCR, RPUSH, INCR, ECHO {token} answered {other:?} {when}"
                        ))
                    }
                }
                ops += 4;
            }
            RedisRole::Transaction => {
                let batch = vec![
                    vec!["MULTI"],
                    vec!["INCR", REDIS_COUNTER],
                    vec!["RPUSH", REDIS_LIST, &item],
                    vec!["EXEC"],
                ];
                let replies = c
                    .pipeline(&batch)
                    .map_err(|e| format!("transaction: {e:#} {when}"))?;
                match replies.as_slice() {
                    [Reply::Status(ok), Reply::Status(q1), Reply::Status(q2), Reply::Array(done)]
                        if ok == "OK" && q1 == "QUEUED" && q2 == "QUEUED" =>
                    {
                        match done.as_slice() {
                            [Reply::Int(x), Reply::Int(p)] => {
                                log.incrs.push(*x);
                                log.pushes.push((*p, item));
                            }
                            other => return Err(format!("EXEC answered {other:?} {when}")),
                        }
                    }
                    other => {
                        return Err(format!(
                            "MULTI, INCR, RPUSH, EXEC answered {other:?} {when}"
                        ))
                    }
                }
                ops += 4;
            }
            RedisRole::Large => {
                let key = format!("fidelity:large:{}", log.name);
                let value = format!("{item}:{}", "v".repeat(96 * 1024));
                let batch = vec![
                    vec!["SET", key.as_str(), value.as_str()],
                    vec!["INCR", REDIS_COUNTER],
                    vec!["GET", key.as_str()],
                ];
                // A barrier may close this connection while the value is
                // on its way (input left unanswered, `close_connections`):
                // what was answered before the close counts, the rest never
                // ran, and the client reconnects.
                let mut replies = Vec::new();
                let sent = batch
                    .iter()
                    .try_for_each(|cmd| c.send(&replaymig_testkit::encode_command(cmd)));
                let mut closed = sent.err();
                if closed.is_none() {
                    for _ in &batch {
                        match c.read_reply() {
                            Ok(r) => replies.push(r),
                            Err(e) => {
                                closed = Some(e);
                                break;
                            }
                        }
                    }
                }
                match replies.as_slice() {
                    [Reply::Status(ok), Reply::Int(x), Reply::Bulk(got)]
                        if ok == "OK" && got == value.as_bytes() =>
                    {
                        log.incrs.push(*x)
                    }
                    [Reply::Status(ok), Reply::Int(x)] if ok == "OK" && closed.is_some() => {
                        log.incrs.push(*x)
                    }
                    [Reply::Status(ok)] if ok == "OK" && closed.is_some() => {}
                    [] if closed.is_some() => {}
                    other => {
                        let short: Vec<String> = other
                            .iter()
                            .map(|r| format!("{r:?}").chars().take(60).collect())
                            .collect();
                        return Err(format!("SET, INCR, GET of {key} answered {short:?} {when}"));
                    }
                }
                if let Some(e) = closed {
                    log.closes += 1;
                    if log.closes > 10 {
                        return Err(format!(
                            "large SET: closed {} times: {e:#} {when}",
                            log.closes
                        ));
                    }
                    c = connect(log)?;
                }
                ops += 3;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        if role == RedisRole::Churn && ops.is_multiple_of(20) {
            c = connect(log)?;
        }
    }
    Ok(())
}

fn check_redis(logs: &[RedisLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut failures = Vec::new();
    for l in logs {
        for e in &l.errors {
            failures.push(format!("client {}: {e}", l.name));
        }
    }
    let incrs: Vec<i64> = logs.iter().flat_map(|l| l.incrs.iter().copied()).collect();
    let pushes: Vec<&(i64, String)> = logs.iter().flat_map(|l| l.pushes.iter()).collect();
    failures.extend(exactly_one_to_n(&incrs, "INCR"));
    let lengths: Vec<i64> = pushes.iter().map(|(p, _)| *p).collect();
    failures.extend(exactly_one_to_n(&lengths, "RPUSH"));
    let (n, m) = (incrs.len(), pushes.len());

    let state = (|| -> Result<(Reply, Vec<String>), String> {
        let mut c = RespClient::connect(cluster.backend(holder)).map_err(|e| format!("{e:#}"))?;
        let value = c
            .cmd(&["GET", REDIS_COUNTER])
            .map_err(|e| format!("{e:#}"))?;
        let list = c.lrange(REDIS_LIST).map_err(|e| format!("{e:#}"))?;
        Ok((value, list))
    })();
    match state {
        Err(e) => failures.push(format!("cannot read the state on {holder}: {e}")),
        Ok((value, list)) => {
            let expected = if n == 0 {
                Reply::Nil
            } else {
                Reply::Bulk(n.to_string().into_bytes())
            };
            if value != expected {
                failures.push(format!(
                    "{holder}'s counter is {value:?}, but {n} INCRs were acknowledged"
                ));
            }
            if list.len() != m {
                failures.push(format!(
                    "{holder}'s list holds {} items, but {m} RPUSHes were acknowledged",
                    list.len()
                ));
            }
            // Each RPUSH answered the list's new length: its item must be
            // at that position (so every client's items are there, once,
            // in its order, and nothing else is).
            let misplaced: Vec<String> = pushes
                .iter()
                .filter(|(p, item)| {
                    usize::try_from(*p - 1).ok().and_then(|i| list.get(i)) != Some(item)
                })
                .map(|(p, item)| {
                    format!(
                        "{item} was acknowledged at list position {p}, {holder} has {:?} there",
                        usize::try_from(*p - 1).ok().and_then(|i| list.get(i))
                    )
                })
                .collect();
            report_some(&mut failures, misplaced);
        }
    }
    Verdict {
        failures,
        summary: format!(
            "{n} INCR and {m} RPUSH acknowledged over {} connections ({} closed by a barrier)",
            logs.iter().map(|l| l.connections).sum::<u64>(),
            logs.iter().map(|l| l.closes).sum::<u64>()
        ),
    }
}

/// Suites a and g: 6 clients on one shared counter and list.
fn redis_shared_clients(c: &Cluster, ctl: &Control) -> Vec<JoinHandle<RedisLog>> {
    let a = c.proxy_a();
    vec![
        redis_client("seq1", RedisRole::Sequential, a, ctl),
        redis_client("seq2", RedisRole::Sequential, a, ctl),
        redis_client("pipe1", RedisRole::Pipelined, a, ctl),
        redis_client("pipe2", RedisRole::Pipelined, a, ctl),
        redis_client("churn", RedisRole::Churn, a, ctl),
        redis_client("tunneled", RedisRole::Sequential, c.proxy_b(), ctl),
    ]
}

#[test]
fn a_redis_shared_counter_and_list() {
    campaign("a", Svc::Redis, false, redis_shared_clients, check_redis);
}

/// Incompressible values suite g writes before its load: CRIU's image
/// then holds pieces zstd cannot shrink, which are the ones sent while the
/// dump runs under its hold (`DumpStream::incompressible_only`), so the
/// suite moves state both streamed and sent after the dump.
const RANDOM_VALUES: usize = 6;
const RANDOM_VALUE_BYTES: usize = 1_500_000;

/// The `i`th random value (xorshift, so the check can make it again).
fn random_value(i: usize) -> Vec<u8> {
    replaymig_testkit::noise(RANDOM_VALUE_BYTES, i as u64 + 1)
}

/// SETs the random values through `proxy` (binary, so written as RESP).
fn set_random_values(proxy: SocketAddr) {
    let mut c = RespClient::connect(proxy).expect("connect for the random values");
    for i in 0..RANDOM_VALUES {
        let key = format!("random:{i}");
        let value = random_value(i);
        let cmd = replaymig_testkit::encode_command_bytes(&[b"SET", key.as_bytes(), &value]);
        c.send(&cmd).unwrap();
        assert_eq!(c.read_reply().unwrap(), Reply::Status("OK".into()));
    }
}

/// Every random value byte for byte on the holder.
fn check_random_values(cluster: &Cluster, holder: char) -> Vec<String> {
    let mut c = match RespClient::connect(cluster.backend(holder)) {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot read the random values on {holder}: {e:#}")],
    };
    (0..RANDOM_VALUES)
        .filter_map(|i| match c.cmd(&["GET", &format!("random:{i}")]) {
            Ok(Reply::Bulk(v)) if v == random_value(i) => None,
            Ok(Reply::Bulk(v)) => Some(format!(
                "random:{i} differs on {holder} ({} bytes)",
                v.len()
            )),
            other => Some(format!("random:{i} on {holder}: {other:?}")),
        })
        .collect()
}

/// Suite a with the criu driver: the frozen process is the snapshot. It
/// also holds random values, so part of the image streams under the hold.
#[test]
fn g_redis_shared_counter_and_list_with_criu() {
    campaign(
        "g",
        Svc::RedisCriu,
        false,
        |c, ctl| {
            // From where the clients run (a testbed's namespace).
            let (proxy, at) = (c.proxy_a(), ctl.clone());
            std::thread::spawn(move || {
                at.enter();
                set_random_values(proxy)
            })
            .join()
            .expect("writing the random values");
            redis_shared_clients(c, ctl)
        },
        |logs, c, holder| {
            let mut verdict = check_redis(logs, c, holder);
            verdict.failures.extend(check_random_values(c, holder));
            verdict
        },
    );
}

#[test]
fn f_redis_transactions_and_large_values_on_shared_keys() {
    campaign(
        "f",
        Svc::Redis,
        false,
        |c, ctl| {
            let a = c.proxy_a();
            vec![
                redis_client("multi1", RedisRole::Transaction, a, ctl),
                redis_client("multi2", RedisRole::Transaction, a, ctl),
                redis_client("large", RedisRole::Large, a, ctl),
                redis_client("seq", RedisRole::Sequential, a, ctl),
                redis_client("tunneled", RedisRole::Transaction, c.proxy_b(), ctl),
            ]
        },
        check_redis,
    );
}

// ---------------------------------------------------------------- b, c: seqsvc

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqRole {
    /// NEXT, NEXT, ADD k, ... one at a time, on one connection.
    Steady,
    /// NEXT, ADD 2, NEXT, GET in one write.
    Pipelined,
    /// NEXT, on a new connection every 20 commands.
    Churn,
    /// Connects (and is greeted) at once, then sends nothing until the
    /// migration ended; then NEXT, ADD 1, GET.
    Idle,
    /// STATS every 5 ms.
    Stats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqOp {
    Next,
    Add(u64),
    Get,
    Stats,
}

impl SeqOp {
    fn line(self) -> String {
        match self {
            SeqOp::Next => "NEXT\n".into(),
            SeqOp::Add(k) => format!("ADD {k}\n"),
            SeqOp::Get => "GET\n".into(),
            SeqOp::Stats => "STATS\n".into(),
        }
    }
}

#[derive(Debug, Default)]
struct SeqLog {
    name: String,
    /// Every NEXT / ADD: (the counter it answered, what it added).
    writes: Vec<(u64, u64)>,
    nexts: u64,
    adds: u64,
    /// Every GET: (its VAL, this client's last answered write before it).
    gets: Vec<(u64, u64)>,
    /// The counter of every STATS answer.
    stats: Vec<u64>,
    connections: u64,
    errors: Vec<String>,
}

fn seq_client(name: &str, role: SeqRole, addr: SocketAddr, ctl: &Control) -> JoinHandle<SeqLog> {
    spawn_client(name, ctl, move |log, ctl| seq_session(log, role, addr, ctl))
}

/// A new connection; its first line must be the greeting.
fn seq_connect(addr: SocketAddr, log: &mut SeqLog) -> Result<LineConn, String> {
    let mut c = LineConn::connect(addr)?;
    log.connections += 1;
    let first = c
        .line()
        .map_err(|e| format!("connection {}: no greeting: {e}", log.connections))?;
    if format!("{first}\n") != GREETING {
        return Err(format!(
            "connection {}: the first line is {first:?}, not the greeting",
            log.connections
        ));
    }
    Ok(c)
}

fn seq_session(
    log: &mut SeqLog,
    role: SeqRole,
    addr: SocketAddr,
    ctl: &Control,
) -> Result<(), String> {
    let mut c = seq_connect(addr, log)?;
    if role == SeqRole::Idle {
        ctl.wait_migrated();
    }
    let (mut ops, mut last_write) = (0u64, 0u64);
    while ctl.go(ops) {
        let batch = match role {
            SeqRole::Steady if ops % 3 == 2 => vec![SeqOp::Add(1 + ops % 5)],
            SeqRole::Steady | SeqRole::Churn => vec![SeqOp::Next],
            SeqRole::Pipelined => vec![SeqOp::Next, SeqOp::Add(2), SeqOp::Next, SeqOp::Get],
            SeqRole::Idle => vec![SeqOp::Next, SeqOp::Add(1), SeqOp::Get],
            SeqRole::Stats => vec![SeqOp::Stats],
        };
        let text: String = batch.iter().map(|op| op.line()).collect();
        c.send(text.as_bytes())?;
        for op in batch {
            let when = format!("(connection {}, after {ops} commands)", log.connections);
            let line = c.line().map_err(|e| format!("{op:?}: {e} {when}"))?;
            let answer = Answer::parse(&line).map_err(|e| format!("{op:?}: {e} {when}"))?;
            match (op, answer) {
                (SeqOp::Next, Answer::Seq(v)) if v >= 1 => {
                    log.writes.push((v, 1));
                    log.nexts += 1;
                    last_write = v;
                }
                (SeqOp::Add(k), Answer::Ok(v)) if v >= k => {
                    log.writes.push((v, k));
                    log.adds += k;
                    last_write = v;
                }
                (SeqOp::Get, Answer::Val(v)) => log.gets.push((v, last_write)),
                (SeqOp::Stats, Answer::Stats(n, t)) if t > 0 => log.stats.push(n),
                (op, other) => return Err(format!("{op:?} answered {other:?} {when}")),
            }
            ops += 1;
        }
        if role == SeqRole::Churn && ops.is_multiple_of(20) {
            c.drained()?;
            c = seq_connect(addr, log)?;
        }
        if role == SeqRole::Stats {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    c.drained()
}

/// The counter of the seqsvc at `addr` (GET on a new connection, which
/// must be greeted first and say nothing more).
fn seq_counter(addr: SocketAddr) -> Result<u64, String> {
    let mut c = LineConn::connect(addr)?;
    let greeting = c.line()?;
    c.send(b"GET\n")?;
    let n = match Answer::parse(&c.line()?) {
        Ok(Answer::Val(n)) if format!("{greeting}\n") == GREETING => n,
        other => return Err(format!("greeting {greeting:?}, GET answered {other:?}")),
    };
    c.drained()?;
    Ok(n)
}

fn check_seq(logs: &[SeqLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut failures = Vec::new();
    for l in logs {
        for e in &l.errors {
            failures.push(format!("client {}: {e}", l.name));
        }
    }
    // Every write answered the counter after it; they all differ, and in
    // increasing order each is the one before plus what it added (from 0):
    // nothing lost, repeated or reordered.
    let mut writes: Vec<(u64, u64, &str)> = logs
        .iter()
        .flat_map(|l| l.writes.iter().map(|&(v, d)| (v, d, l.name.as_str())))
        .collect();
    writes.sort_unstable();
    let dups: Vec<String> = writes
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| {
            format!(
                "the counter value {} was answered twice (to {} and {})",
                w[0].0, w[0].2, w[1].2
            )
        })
        .collect();
    report_some(&mut failures, dups);
    let mut prev = 0u64;
    let mut breaks = Vec::new();
    for &(v, d, who) in &writes {
        if v.checked_sub(d) != Some(prev) {
            breaks.push(format!(
                "{who} was answered {v} for adding {d}, but the answer before it is {prev}: \
                 an operation was lost, repeated or reordered"
            ));
        }
        prev = v;
    }
    report_some(&mut failures, breaks);
    let expected: u64 = writes.iter().map(|w| w.1).sum();
    let values: HashSet<u64> = writes.iter().map(|w| w.0).collect();
    let mut reads = Vec::new();
    for l in logs {
        for &(v, own) in &l.gets {
            if v < own {
                reads.push(format!(
                    "{}: GET answered {v} after its own write answered {own}",
                    l.name
                ));
            } else if v != 0 && !values.contains(&v) {
                reads.push(format!(
                    "{}: GET answered {v}, a value no write produced",
                    l.name
                ));
            }
        }
        for &n in &l.stats {
            if n != 0 && !values.contains(&n) {
                reads.push(format!(
                    "{}: STATS answered {n}, a value no write produced",
                    l.name
                ));
            }
        }
    }
    report_some(&mut failures, reads);
    // On the node holding the service, and as a new client of a's proxy
    // sees it (tunneled to b after a hand-over).
    for (addr, what) in [
        (cluster.backend(holder), format!("{holder}'s counter")),
        (cluster.proxy_a(), "GET through a's proxy".to_string()),
    ] {
        match seq_counter(addr) {
            Ok(n) if n == expected => {}
            Ok(n) => failures.push(format!(
                "{what} is {n}, but the acknowledged NEXTs and ADDs sum to {expected}"
            )),
            Err(e) => failures.push(format!("cannot read {what}: {e}")),
        }
    }
    let nexts: u64 = logs.iter().map(|l| l.nexts).sum();
    let adds: u64 = logs.iter().map(|l| l.adds).sum();
    let stats: usize = logs.iter().map(|l| l.stats.len()).sum();
    Verdict {
        failures,
        summary: format!(
            "{nexts} NEXT + ADDs of {adds} acknowledged (counter {expected}), {stats} STATS, {} connections",
            logs.iter().map(|l| l.connections).sum::<u64>()
        ),
    }
}

/// Suites b and h: steady, pipelined, churning and idle connections.
fn seq_sequence_clients(c: &Cluster, ctl: &Control) -> Vec<JoinHandle<SeqLog>> {
    let a = c.proxy_a();
    vec![
        seq_client("steady1", SeqRole::Steady, a, ctl),
        seq_client("steady2", SeqRole::Steady, a, ctl),
        seq_client("pipe", SeqRole::Pipelined, a, ctl),
        seq_client("churn", SeqRole::Churn, a, ctl),
        seq_client("idle1", SeqRole::Idle, a, ctl),
        seq_client("idle2", SeqRole::Idle, a, ctl),
        seq_client("tunneled", SeqRole::Steady, c.proxy_b(), ctl),
    ]
}

#[test]
fn b_seqsvc_global_sequence_with_greetings_and_split_answers() {
    campaign("b", Svc::Seqsvc, false, seq_sequence_clients, check_seq);
}

/// Suite b with the criu driver.
#[test]
fn h_seqsvc_global_sequence_with_criu() {
    campaign("h", Svc::SeqsvcCriu, false, seq_sequence_clients, check_seq);
}

/// Suite b with CRIU, the peer link failing while CRIU's dump streams
/// (under the hold): refused with that reason, CRIU thawed the service,
/// and the clients on a went on, every answer checked.
#[test]
fn p_seqsvc_with_criu_the_link_failing_while_the_dump_streams() {
    campaign_with(
        "p",
        Svc::SeqsvcCriu,
        Expect::Refusal("while it was written"),
        &[("FAILPOINTS", "dump-stream-link-fails=return")],
        seq_sequence_clients,
        check_seq,
    );
}

/// Suite b with CRIU carrying the connections (`connection_state`
/// undeclared: only carrying lets the used ones continue).
#[test]
fn m_seqsvc_global_sequence_carried_by_criu() {
    campaign(
        "m",
        Svc::SeqsvcCarried,
        false,
        seq_sequence_clients,
        check_seq,
    );
}

/// Suite l by the iterative method: its final dump carries the
/// connections (the pre-copy rounds dump the service alone).
#[test]
fn o_redis_stateful_clients_carried_by_criu_iterative() {
    campaign(
        "o",
        Svc::RedisAuthCarriedIterative,
        false,
        stateful::state_clients,
        stateful::check_carried_state,
    );
}

/// Suite k with CRIU carrying the connections: nothing closed.
#[test]
fn n_memcached_noreply_writers_carried_by_criu() {
    campaign(
        "n",
        Svc::MemcachedCarried,
        false,
        noreply::noreply_clients,
        noreply::check_noreply_carried,
    );
}

/// Must be refused every time. Until replay compares answer content with
/// the journaled digests (work in progress in crates/replayer, proxy/,
/// journal/, crates/node), this one may fail: the replayed STATS answers
/// have the same length as the journaled ones.
#[test]
fn c_seqsvc_with_a_nondeterministic_stats_poller_is_refused() {
    campaign(
        "c",
        Svc::Seqsvc,
        true,
        |c, ctl| {
            let a = c.proxy_a();
            vec![
                seq_client("steady", SeqRole::Steady, a, ctl),
                seq_client("pipe", SeqRole::Pipelined, a, ctl),
                seq_client("stats", SeqRole::Stats, a, ctl),
                seq_client("tunneled", SeqRole::Steady, c.proxy_b(), ctl),
            ]
        },
        check_seq,
    );
}

// ---------------------------------------------------------------- d: memcached

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum McRole {
    /// gets + cas read-modify-write of one shared key.
    Cas,
    /// incr of one shared counter.
    Incr,
    /// incr, on a new connection every 20 commands.
    IncrChurn,
    /// Two appends of this client's next tokens to one shared key, in one
    /// write, every millisecond (at most MAX_APPENDS).
    Append,
}

#[derive(Debug, Default)]
struct McLog {
    name: String,
    /// Every incr answer.
    incrs: Vec<i64>,
    /// The value every successful cas stored.
    cas_stored: Vec<i64>,
    /// cas answered EXISTS (someone else wrote first; retried).
    cas_exists: u64,
    /// Tokens `NAME.1;` .. `NAME.appends;` were appended (acknowledged).
    appends: u64,
    connections: u64,
    errors: Vec<String>,
}

fn mc_client(name: &str, role: McRole, addr: SocketAddr, ctl: &Control) -> JoinHandle<McLog> {
    spawn_client(name, ctl, move |log, ctl| mc_session(log, role, addr, ctl))
}

/// A memcached value: its data, and its CAS id (`gets`).
type McValue = (Vec<u8>, Option<u64>);

/// Reads a `get`/`gets` answer for `key`: its value, or None.
fn mc_value(c: &mut LineConn, key: &str) -> Result<Option<McValue>, String> {
    let head = c.line()?;
    if head == "END" {
        return Ok(None);
    }
    let f: Vec<&str> = head.split(' ').collect();
    let (len, cas) = match f.as_slice() {
        ["VALUE", k, _flags, len, rest @ ..] if *k == key && rest.len() <= 1 => (
            len.parse::<usize>()
                .map_err(|_| format!("bad length in {head:?}"))?,
            rest.first()
                .map(|c| c.parse::<u64>().map_err(|_| format!("bad cas in {head:?}")))
                .transpose()?,
        ),
        _ => return Err(format!("expected VALUE {key} ..., got {head:?}")),
    };
    let mut data = c.exact(len + 2)?;
    if !data.ends_with(b"\r\n") {
        return Err(format!("value of {key} not followed by CRLF: {data:?}"));
    }
    data.truncate(len);
    match c.line()?.as_str() {
        "END" => Ok(Some((data, cas))),
        other => Err(format!(
            "expected END after the value of {key}, got {other:?}"
        )),
    }
}

fn mc_number(data: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.trim_end().parse().ok())
        .ok_or_else(|| format!("not a number: {:?}", String::from_utf8_lossy(data)))
}

fn mc_session(
    log: &mut McLog,
    role: McRole,
    addr: SocketAddr,
    ctl: &Control,
) -> Result<(), String> {
    let connect = |log: &mut McLog| {
        log.connections += 1;
        LineConn::connect(addr)
    };
    let mut c = connect(log)?;
    let mut ops = 0u64;
    while ctl.go(ops) {
        let when = format!("(connection {}, after {ops} commands)", log.connections);
        match role {
            McRole::Cas => {
                c.send(b"gets k\r\n")?;
                let (data, cas) = mc_value(&mut c, "k")
                    .map_err(|e| format!("gets: {e} {when}"))?
                    .ok_or_else(|| format!("gets k: the key is gone {when}"))?;
                let cas = cas.ok_or_else(|| format!("gets k answered no CAS id {when}"))?;
                let new = mc_number(&data)? + 1;
                let text = new.to_string();
                c.send(format!("cas k 0 0 {} {cas}\r\n{text}\r\n", text.len()).as_bytes())?;
                match c.line().map_err(|e| format!("cas: {e} {when}"))?.as_str() {
                    "STORED" => log.cas_stored.push(new),
                    "EXISTS" => log.cas_exists += 1,
                    other => return Err(format!("cas answered {other:?} {when}")),
                }
                ops += 2;
            }
            McRole::Incr | McRole::IncrChurn => {
                c.send(b"incr ctr 1\r\n")?;
                let line = c.line().map_err(|e| format!("incr: {e} {when}"))?;
                let v = line
                    .parse::<i64>()
                    .map_err(|_| format!("incr answered {line:?} {when}"))?;
                log.incrs.push(v);
                ops += 1;
                if role == McRole::IncrChurn && ops.is_multiple_of(20) {
                    c.drained()?;
                    c = connect(log)?;
                }
            }
            McRole::Append => {
                if log.appends >= MAX_APPENDS {
                    break;
                }
                let mut text = Vec::new();
                for i in 1..=2 {
                    let token = format!("{}.{};", log.name, log.appends + i);
                    text.extend(format!("append log 0 0 {}\r\n{token}\r\n", token.len()).bytes());
                }
                c.send(&text)?;
                for _ in 0..2 {
                    match c
                        .line()
                        .map_err(|e| format!("append: {e} {when}"))?
                        .as_str()
                    {
                        "STORED" => log.appends += 1,
                        other => return Err(format!("append answered {other:?} {when}")),
                    }
                }
                ops += 2;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    c.drained()
}

/// Creates the keys, through a's proxy (journaled: with the `none`
/// driver the destination replays from LSN 1).
fn mc_init(addr: SocketAddr) {
    let mut c = LineConn::connect(addr).unwrap();
    c.send(b"set ctr 0 0 1\r\n0\r\nset k 0 0 1\r\n0\r\nset log 0 0 0\r\n\r\n")
        .unwrap();
    for _ in 0..3 {
        assert_eq!(c.line().unwrap(), "STORED");
    }
}

fn check_mc(logs: &[McLog], cluster: &Cluster, holder: char) -> Verdict {
    let mut failures = Vec::new();
    for l in logs {
        for e in &l.errors {
            failures.push(format!("client {}: {e}", l.name));
        }
    }
    let incrs: Vec<i64> = logs.iter().flat_map(|l| l.incrs.iter().copied()).collect();
    let stored: Vec<i64> = logs
        .iter()
        .flat_map(|l| l.cas_stored.iter().copied())
        .collect();
    failures.extend(exactly_one_to_n(&incrs, "incr"));
    failures.extend(exactly_one_to_n(&stored, "cas-stored value"));
    let appends: u64 = logs.iter().map(|l| l.appends).sum();
    let state = (|| -> Result<[Option<Vec<u8>>; 3], String> {
        let mut c = LineConn::connect(cluster.backend(holder))?;
        let mut get = |key: &str| -> Result<Option<Vec<u8>>, String> {
            c.send(format!("get {key}\r\n").as_bytes())?;
            Ok(mc_value(&mut c, key)?.map(|(data, _)| data))
        };
        Ok([get("ctr")?, get("k")?, get("log")?])
    })();
    match state {
        Err(e) => failures.push(format!("cannot read the state on {holder}: {e}")),
        Ok([ctr, k, log]) => {
            for (key, value, acked, what) in [
                ("ctr", ctr, incrs.len(), "incrs"),
                ("k", k, stored.len(), "cas STORED"),
            ] {
                match value.as_deref().map(mc_number) {
                    Some(Ok(v)) if v == acked as i64 => {}
                    other => failures.push(format!(
                        "{holder}'s {key} is {other:?}, but {acked} {what} were acknowledged"
                    )),
                }
            }
            match log.map(String::from_utf8) {
                Some(Ok(text)) => {
                    let mut per: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
                    let mut bad = Vec::new();
                    for token in text.split(';').filter(|t| !t.is_empty()) {
                        match token
                            .rsplit_once('.')
                            .and_then(|(n, i)| Some((n, i.parse().ok()?)))
                        {
                            Some((n, i)) => per.entry(n).or_default().push(i),
                            None => {
                                bad.push(format!("{holder}'s log holds a stray token {token:?}"))
                            }
                        }
                    }
                    for l in logs {
                        let got = per.remove(l.name.as_str()).unwrap_or_default();
                        let want: Vec<u64> = (1..=l.appends).collect();
                        if got != want {
                            bad.push(format!(
                                "{holder}'s log holds {} tokens of {} (first out of place at index {:?}), {} were acknowledged in order",
                                got.len(),
                                l.name,
                                got.iter().zip(&want).position(|(g, w)| g != w),
                                l.appends
                            ));
                        }
                    }
                    for (n, tokens) in per {
                        bad.push(format!(
                            "{holder}'s log holds {} tokens of unknown client {n}",
                            tokens.len()
                        ));
                    }
                    report_some(&mut failures, bad);
                }
                other => failures.push(format!("{holder}'s log is {other:?}")),
            }
        }
    }
    Verdict {
        failures,
        summary: format!(
            "{} incr, {} cas STORED ({} EXISTS), {appends} appends acknowledged over {} connections",
            incrs.len(),
            stored.len(),
            logs.iter().map(|l| l.cas_exists).sum::<u64>(),
            logs.iter().map(|l| l.connections).sum::<u64>()
        ),
    }
}

#[test]
fn d_memcached_cas_incr_append_on_shared_keys() {
    memcached_campaign("d", Svc::Memcached);
}

#[test]
fn e_multi_threaded_memcached_is_refused_or_exact() {
    memcached_campaign("e", Svc::MemcachedThreaded);
}

/// Suites d and e: the same clients and oracle on either memcached.
fn memcached_campaign(suite: &str, svc: Svc) {
    campaign(
        suite,
        svc,
        false,
        |c, ctl| {
            let a = c.proxy_a();
            mc_init(a);
            vec![
                mc_client("cas1", McRole::Cas, a, ctl),
                mc_client("cas2", McRole::Cas, a, ctl),
                mc_client("incr", McRole::Incr, a, ctl),
                mc_client("churn", McRole::IncrChurn, a, ctl),
                mc_client("append1", McRole::Append, a, ctl),
                mc_client("append2", McRole::Append, a, ctl),
                mc_client("tunneled", McRole::Incr, c.proxy_b(), ctl),
            ]
        },
        check_mc,
    );
}

// ---------------------------------------------------------------- i: per-connection state

#[test]
fn i_a_connection_that_selected_a_database_before_the_snapshot() {
    campaign(
        "i",
        Svc::RedisUndeclared,
        false,
        stateful::select_clients,
        stateful::check_selected,
    );
}

#[test]
fn j_redis_clients_with_connection_state_auth_subscribe_multi_blpop_and_slow_values() {
    campaign(
        "j",
        Svc::RedisAuth,
        false,
        stateful::state_clients,
        stateful::check_state,
    );
}

#[test]
fn k_memcached_noreply_writers() {
    campaign(
        "k",
        Svc::Memcached,
        false,
        noreply::noreply_clients,
        noreply::check_noreply,
    );
}

#[test]
fn l_redis_stateful_clients_carried_by_criu() {
    campaign(
        "l",
        Svc::RedisAuthCarried,
        false,
        stateful::state_clients,
        stateful::check_carried_state,
    );
}

//! The peer link cut mid-transfer. Two node agents (the real binary) in
//! the two network namespaces of tools/testbed.sh, joined by a veth pair
//! shaped to 20 Mbit/s; redis owned by node a holds ~30 MB of random data,
//! so the snapshot transfer takes more than 10 s. While snapshot bytes
//! flow, the veth pair is taken down (both ends). Then:
//!
//! * `replaymig migrate` exits non-zero, within a bound, with an error
//!   that says what went wrong (the peer send timeout is 30 s);
//! * node a still owns the service and its sequential INCR clients never
//!   saw an error and kept being answered during and after the cut;
//! * node b does not own the service, leaves the migration (its status says
//!   `migrating: false`) and runs no copy of redis;
//! * with the link back up, migrating again succeeds (epoch 2), and every
//!   acknowledged INCR is on node b's redis.
//!
//! Needs root (network namespaces); skips with a reason otherwise.

use replaymig_testkit::{in_netns, is_root, ChildGuard, Reply, RespClient, Testbed};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_replaymig");
/// The veth ends tools/testbed.sh creates: `va` in NAME-a, `vb` in NAME-b.
const VETH: [(char, &str); 2] = [('a', "va"), ('b', "vb")];
/// Link rate (Mbit/s) and how much random data redis holds before the
/// migration: 30 MB at 20 Mbit/s is a transfer of about 12.6 s.
const RATE_MBIT: u32 = 20;
const PRELOAD_BYTES: usize = 30 << 20;
/// INCR clients on node a, one key each.
const CLIENTS: usize = 4;
/// Pause between two INCRs of one client: keeps the log shipped next to
/// the snapshot small on the 20 Mbit/s link (~4 k records/s in all).
const CLIENT_PAUSE: Duration = Duration::from_millis(1);
/// Bound on the whole run of a client.
const CLIENT_DEADLINE: Duration = Duration::from_secs(240);
/// The cut comes once this much of the snapshot was sent.
const CUT_AFTER_MB: f64 = 2.0;
/// Bound on the failed migration's exit after the cut (sends time out
/// after 30 s; the abort it then tries to send may take as long again).
const FAIL_BOUND: Duration = Duration::from_secs(90);
/// Bound on node b leaving the failed migration.
const DISCARD_BOUND: Duration = Duration::from_secs(90);
/// Bound on the second, successful migration.
const RETRY_BOUND: Duration = Duration::from_secs(120);

/// Seconds since the test started, for the log.
fn t(start: Instant) -> String {
    format!("[{:>7.2} s]", start.elapsed().as_secs_f64())
}

/// A command run inside node `node`'s network namespace (`nsenter` execs
/// the program, so the child's PID is the program's).
fn on(tb: &Testbed, node: char, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", tb.netns(node)))
        .arg(program);
    cmd
}

/// Runs `cmd` to completion within `bound` (killed by PID otherwise).
fn run_bounded(mut cmd: Command, what: &str, bound: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut guard = ChildGuard::new(what, child);
    let status = guard
        .wait_timeout(bound)
        .unwrap_or_else(|e| panic!("{e:#}"));
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run_bounded(cmd, "ip", Duration::from_secs(10));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Takes both ends of the testbed's veth pair down or up.
fn set_link(tb: &Testbed, state: &str) {
    for (node, dev) in VETH {
        ip(&["-n", &tb.netns(node), "link", "set", "dev", dev, state]);
    }
}

/// What `replaymig status --json` on a node says about the one service.
#[derive(Debug)]
struct Status {
    owner: String,
    epoch: u64,
    migrating: bool,
}

/// The two nodes, their files, and the testbed; stops everything on drop
/// (node agents by PID, gracefully first so they stop their redis), and
/// prints the nodes' logs if the test failed.
struct Cluster {
    start: Instant,
    nodes: Vec<(char, ChildGuard)>,
    dir: TempDir,
    addr_a: IpAddr,
    // Last: the namespaces go after the processes in them.
    tb: Testbed,
}

impl Cluster {
    fn up(start: Instant) -> Cluster {
        let name = format!("rmcut{}", std::process::id());
        let tb = Testbed::up(&name, Some(RATE_MBIT)).expect("testbed up");
        let dir = TempDir::new().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "cut-link-test-secret-0123456789abcdef",
        )
        .unwrap();
        let (addr_a, addr_b) = (tb.addr('a'), tb.addr('b'));
        let mut cluster = Cluster {
            start,
            nodes: Vec::new(),
            dir,
            addr_a,
            tb,
        };
        for (me, other, my_addr, other_addr) in
            [('a', 'b', addr_a, addr_b), ('b', 'a', addr_b, addr_a)]
        {
            let config = write_config(cluster.dir.path(), me, other, my_addr, other_addr);
            let log = std::fs::File::create(cluster.log(me)).unwrap();
            let child = on(&cluster.tb, me, BIN)
                .args(["node", "--config"])
                .arg(&config)
                .env("REPLAYMIG_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start a node agent");
            cluster
                .nodes
                .push((me, ChildGuard::new(format!("node {me}"), child)));
        }
        for node in ['a', 'b'] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while cluster.try_status(node).is_none() {
                assert!(Instant::now() < deadline, "node {node} did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn log(&self, node: char) -> PathBuf {
        self.dir.path().join(format!("{node}.log"))
    }

    /// The client address of node a's proxy.
    fn listen_a(&self) -> SocketAddr {
        (self.addr_a, 6380).into()
    }

    fn try_status(&self, node: char) -> Option<Status> {
        let mut cmd = on(&self.tb, node, BIN);
        cmd.args(["status", "--json", "--admin", "127.0.0.1:7200"]);
        let out = run_bounded(cmd, "replaymig status", Duration::from_secs(15));
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = &v[0];
        Some(Status {
            owner: s["owner"].as_str()?.to_string(),
            epoch: s["epoch"].as_u64()?,
            migrating: s["migrating"].as_bool()?,
        })
    }

    fn status(&self, node: char) -> Status {
        self.try_status(node)
            .unwrap_or_else(|| panic!("replaymig status on node {node} failed"))
    }

    /// Whether a redis answers on 127.0.0.1:6379 in `node`'s namespace.
    fn redis_running(&self, node: char) -> bool {
        in_netns(&self.tb.netns(node), || {
            TcpStream::connect_timeout(&([127, 0, 0, 1], 6379).into(), Duration::from_secs(2))
                .is_ok()
        })
        .expect("enter the namespace")
    }

    /// `GET key` on `node`'s redis, straight (not through the proxy).
    fn redis_get_int(&self, node: char, key: &str) -> i64 {
        let key = key.to_string();
        let reply = in_netns(&self.tb.netns(node), move || {
            RespClient::connect(([127, 0, 0, 1], 6379).into())?.cmd(&["GET", &key])
        })
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("GET on node {node}'s redis: {e:#}"));
        match reply {
            Reply::Nil => 0,
            Reply::Bulk(b) => String::from_utf8(b).unwrap().parse().unwrap(),
            other => panic!("GET: unexpected {other:?}"),
        }
    }

    /// Starts `replaymig migrate redis --to b --json` on node a.
    fn migrate(&self) -> Migration {
        let mut child = on(&self.tb, 'a', BIN)
            .args(["migrate", "redis", "--to", "b", "--json"])
            .args(["--admin", "127.0.0.1:7200"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start replaymig migrate");
        let mut stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let (tx, lines) = std::sync::mpsc::channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let start = self.start;
        std::thread::spawn({
            let all = all.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{} migrate| {line}", t(start));
                    all.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            }
        });
        Migration {
            guard: ChildGuard::new("replaymig migrate", child),
            lines,
            stderr: all,
            stdout: Some(stdout),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM first: a node agent stops the redis it runs on shutdown.
        for (_, guard) in &mut self.nodes {
            if guard.is_running() {
                let _ = guard.terminate(Duration::from_secs(15));
            }
        }
        if std::thread::panicking() {
            for (node, _) in &self.nodes {
                let log = std::fs::read_to_string(self.log(*node)).unwrap_or_default();
                eprintln!("===== node {node} log =====\n{log}");
            }
        }
        self.nodes.clear(); // SIGKILL whatever did not exit
                            // A redis left behind by a killed agent, stopped through its port.
        for node in ['a', 'b'] {
            let mut cmd = on(&self.tb, node, "redis-cli");
            cmd.args(["-p", "6379", "SHUTDOWN", "NOSAVE"]);
            let _ = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A node's configuration, as tools/demo.sh writes it (exec driver, redis
/// `BGSAVE` dump, restore by copy).
fn write_config(dir: &Path, me: char, other: char, my_addr: IpAddr, other_addr: IpAddr) -> PathBuf {
    let data = dir.join(format!("{me}-data"));
    std::fs::create_dir_all(&data).unwrap();
    let text = format!(
        r#"name = "{me}"
peer_listen = "{my_addr}:7100"
admin_listen = "127.0.0.1:7200"
secret_file = "{secret}"
work_dir = "{work}"
[peers]
{other} = "{other_addr}:7100"
[[service]]
name = "redis"
listen = "0.0.0.0:6380"
backend = "127.0.0.1:6379"
journal = "{journal}"
owner = "a"
data_dir = "{data}"
connection_state = "none"
start = "redis-server --port {{port}} --bind 127.0.0.1 --dir {{data_dir}} --save '' --appendonly no --protected-mode no"
ready = "redis-cli -p {{port}} PING | grep -q PONG"
[service.snapshot]
driver = "exec"
dump = [
  "redis-cli -p {{port}} BGSAVE | grep -q saving.started",
  "while redis-cli -p {{port}} INFO persistence | grep -q rdb_bgsave_in_progress:1; do sleep 0.02; done; redis-cli -p {{port}} INFO persistence | grep -q rdb_last_bgsave_status:ok",
  "cp {{data_dir}}/dump.rdb {{snapshot_dir}}/dump.rdb",
]
point_fixed_after = 1
restore = ["cp {{snapshot_dir}}/dump.rdb {{data_dir}}/dump.rdb"]
"#,
        secret = dir.join("secret").display(),
        work = dir.join(format!("{me}-work")).display(),
        journal = dir.join(format!("{me}-journal")).display(),
        data = data.display(),
    );
    let path = dir.join(format!("{me}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `replaymig migrate`: its stderr lines as they come (phases and
/// progress), and its stdout (the JSON report) once it ended.
struct Migration {
    guard: ChildGuard,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Migration {
    /// Waits until the transfer phase began and at least `mb` MB of the
    /// snapshot were sent.
    fn wait_transferring(&mut self, mb: f64, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut transferring = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {mb} MB of snapshot sent within {bound:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("migrate ended before the transfer: {:?}", self.stderr())
                }
            };
            assert!(
                !line.ends_with("] aborted") && !line.starts_with("error"),
                "the migration failed before the cut: {line}"
            );
            if line.ends_with("] transferring") {
                transferring = true;
            }
            if transferring && snapshot_mb(&line).is_some_and(|sent| sent >= mb) {
                return;
            }
        }
    }

    /// Waits for the exit; returns its status, stdout and stderr lines.
    fn finish(mut self, bound: Duration) -> (std::process::ExitStatus, String, Vec<String>) {
        let status = self
            .guard
            .wait_timeout(bound)
            .unwrap_or_else(|e| panic!("{e:#}; stderr so far: {:?}", self.stderr()));
        let stdout = self.stdout.take().unwrap().join().unwrap();
        // The stderr reader ends with the process (its pipe closes).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Err(RecvTimeoutError::Disconnected) => break,
                _ => continue,
            }
        }
        (status, stdout, self.stderr())
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

/// "[  3.0 s]   snapshot 2.1 MB sent, ..." → 2.1
fn snapshot_mb(line: &str) -> Option<f64> {
    let rest = line
        .split("] ")
        .nth(1)?
        .trim_start()
        .strip_prefix("snapshot ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Sequential INCR clients, one key each, each checking that every answer
/// is exactly the previous one plus one.
struct Counters {
    stop: Arc<AtomicBool>,
    acks: Vec<Arc<AtomicI64>>,
    error: Arc<Mutex<Option<String>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Counters {
    /// Connects the clients from inside namespace `netns` to `addr`.
    fn start(netns: &str, addr: SocketAddr) -> Counters {
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let mut acks = Vec::new();
        let mut workers = Vec::new();
        for i in 0..CLIENTS {
            // The socket stays in the namespace it was created in.
            let mut client = in_netns(netns, move || RespClient::connect(addr))
                .expect("enter the namespace")
                .expect("connect an INCR client");
            let key = key(i);
            let count = Arc::new(AtomicI64::new(0));
            acks.push(count.clone());
            let (stop, error) = (stop.clone(), error.clone());
            workers.push(std::thread::spawn(move || {
                let deadline = Instant::now() + CLIENT_DEADLINE;
                let mut acked = 0i64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.cmd(&["INCR", &key]) {
                        Ok(Reply::Int(n)) if n == acked + 1 => {
                            acked = n;
                            count.store(acked, Ordering::Relaxed);
                        }
                        other => {
                            let e = format!("{key}: after {acked} acks, got {other:?}");
                            error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                    std::thread::sleep(CLIENT_PAUSE);
                }
            }));
        }
        Counters {
            stop,
            acks,
            error,
            workers,
        }
    }

    /// Acknowledged INCRs over all clients so far.
    fn total(&self) -> i64 {
        self.acks.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Panics with the first client error, if any.
    fn assert_no_error(&self, when: &str) {
        if let Some(e) = self.error.lock().unwrap().as_ref() {
            panic!("an INCR client failed ({when}): {e}");
        }
    }

    /// Waits (bounded) until the clients acknowledged `more` INCRs past
    /// `from` in total.
    fn assert_progress(&self, from: i64, more: i64, bound: Duration, when: &str) {
        let deadline = Instant::now() + bound;
        while self.total() < from + more {
            self.assert_no_error(when);
            assert!(
                Instant::now() < deadline,
                "INCR clients stalled ({when}): {} acks, expected {} within {bound:?}",
                self.total(),
                from + more
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the clients; each key with its acknowledged INCRs.
    fn finish(mut self) -> Vec<(String, i64)> {
        self.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.workers) {
            w.join().expect("INCR client thread");
        }
        if let Some(e) = self.error.lock().unwrap().as_ref() {
            panic!("an INCR client failed: {e}");
        }
        self.acks
            .iter()
            .enumerate()
            .map(|(i, a)| (key(i), a.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Counters {
    /// A failed test stops its clients too (they end within one INCR).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn key(i: usize) -> String {
    format!("cut:counter:{i}")
}

/// Writes `bytes` of random values (4 KiB each) through node a's proxy,
/// pipelined, checking every answer.
fn preload(netns: &str, addr: SocketAddr, bytes: usize) {
    const SIZE: usize = 4096;
    const BATCH: usize = 64;
    let mut c = in_netns(netns, move || RespClient::connect(addr))
        .expect("enter the namespace")
        .expect("connect the preload client");
    // xorshift64*: incompressible enough for zstd, and fast.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut random = |out: &mut Vec<u8>| {
        for _ in 0..SIZE / 8 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
    };
    let batches = bytes / SIZE / BATCH;
    for b in 0..batches {
        let mut buf = Vec::with_capacity(BATCH * (SIZE + 64));
        for j in 0..BATCH {
            let key = format!("big:{:08}", b * BATCH + j);
            buf.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${SIZE}\r\n", key.len()).as_bytes(),
            );
            random(&mut buf);
            buf.extend_from_slice(b"\r\n");
        }
        c.send(&buf).expect("preload write");
        c.sent.clear();
        for _ in 0..BATCH {
            assert_eq!(
                c.read_reply().expect("preload answer"),
                Reply::Status("OK".into())
            );
        }
    }
}

#[test]
fn a_peer_link_cut_mid_transfer_fails_cleanly_and_a_retry_succeeds() {
    if !is_root() {
        eprintln!("SKIP migrate_cutlink: needs root for network namespaces");
        return;
    }
    let start = Instant::now();
    let cluster = Cluster::up(start);
    let netns_a = cluster.tb.netns('a');
    eprintln!(
        "{} nodes up in {} / {} ({RATE_MBIT} Mbit/s)",
        t(start),
        netns_a,
        cluster.tb.netns('b')
    );

    preload(&netns_a, cluster.listen_a(), PRELOAD_BYTES);
    eprintln!(
        "{} preloaded {} MB through node a's proxy",
        t(start),
        PRELOAD_BYTES >> 20
    );

    let counters = Counters::start(&netns_a, cluster.listen_a());
    counters.assert_progress(0, 200, Duration::from_secs(10), "before the migration");

    // 1. Cut the link while the snapshot is on its way.
    let mut first = cluster.migrate();
    first.wait_transferring(CUT_AFTER_MB, Duration::from_secs(60));
    let b = cluster.status('b');
    assert!(b.migrating, "node b takes part in the migration: {b:?}");
    let at_cut = counters.total();
    set_link(&cluster.tb, "down");
    let cut = Instant::now();
    eprintln!("{} link cut ({at_cut} INCRs acknowledged so far)", t(start));
    counters.assert_progress(at_cut, 500, Duration::from_secs(10), "during the cut");

    // Meanwhile, note when node b gives up (its admin is on loopback, so
    // it answers while the link is down).
    let mut b_left = None;
    while first.guard.is_running() && cut.elapsed() < FAIL_BOUND {
        if b_left.is_none() && !cluster.status('b').migrating {
            b_left = Some(cut.elapsed());
            eprintln!("{} node b left the migration (link still down)", t(start));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, stdout, stderr) = first.finish(FAIL_BOUND.saturating_sub(cut.elapsed()));
    let failed_after = cut.elapsed();
    eprintln!(
        "{} migrate exited ({status}) {failed_after:.1?} after the cut",
        t(start)
    );
    assert!(!status.success(), "the migration over a cut link must fail");
    assert!(stdout.trim().is_empty(), "no report: {stdout}");
    let error = stderr
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("migrate printed no error: {stderr:?}"))
        .clone();
    let reason = error
        .trim_start_matches("error:")
        .trim()
        .trim_start_matches("migration failed:")
        .trim();
    assert!(!reason.is_empty(), "an empty reason: {error}");
    // It names the phase and says the link stalled (the receiving side
    // may also notice first: then the peer did not answer in time).
    assert!(
        reason.contains("transferring failed")
            && (reason.contains("could not send to the peer") || reason.contains("did not answer")),
        "the error does not say the peer link failed: {error}"
    );
    assert!(
        stderr.iter().any(|l| l.ends_with("] aborted")),
        "the aborted phase was reported: {stderr:?}"
    );
    let during_cut = counters.total();
    counters.assert_no_error("during the cut");
    assert!(
        during_cut > at_cut,
        "the clients were answered during the cut"
    );

    // 2. Link back: a still owns and serves, b leaves the migration and
    // runs no copy of redis.
    set_link(&cluster.tb, "up");
    eprintln!("{} link up again", t(start));
    let a = cluster.status('a');
    assert_eq!(
        (a.owner.as_str(), a.epoch, a.migrating),
        ("a", 1, false),
        "node a: {a:?}"
    );
    assert!(cluster.redis_running('a'), "node a's redis serves on");
    counters.assert_progress(during_cut, 500, Duration::from_secs(10), "after the cut");

    let deadline = Instant::now() + DISCARD_BOUND;
    loop {
        let b = cluster.status('b');
        assert_eq!(b.owner, "a", "node b must not own the service: {b:?}");
        assert_eq!(b.epoch, 1, "node b: {b:?}");
        let redis_b = cluster.redis_running('b');
        if !b.migrating && !redis_b {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b still in the migration {:.1?} after the cut: {b:?}, its redis {}",
            cut.elapsed(),
            if redis_b { "runs" } else { "is stopped" }
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{} node b is out of the failed migration (it left {:.1?} after the cut)",
        t(start),
        b_left.unwrap_or_else(|| cut.elapsed())
    );
    let log_b = std::fs::read_to_string(cluster.log('b')).unwrap_or_default();
    for line in log_b
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        eprintln!("  node b| {line}");
    }
    counters.assert_no_error("after the cut");

    // 3. Again, with the link up: it must succeed.
    let before_retry = counters.total();
    let retry = cluster.migrate();
    let (status, stdout, stderr) = retry.finish(RETRY_BOUND);
    eprintln!("{} second migrate exited ({status})", t(start));
    assert!(status.success(), "the retry must succeed: {stderr:?}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("a JSON report ({e}): {stdout}"));
    assert_eq!(report["epoch"], 2, "{report}");
    assert_eq!(report["from"], "a", "{report}");
    assert_eq!(report["to"], "b", "{report}");
    // The clients go on through node a's tunnel to the new owner.
    counters.assert_progress(
        counters.total(),
        200,
        Duration::from_secs(10),
        "after the hand-over",
    );
    assert!(counters.total() > before_retry);
    let acked = counters.finish();

    let b = cluster.status('b');
    assert_eq!((b.owner.as_str(), b.epoch), ("b", 2), "node b: {b:?}");
    let a = cluster.status('a');
    assert_eq!((a.owner.as_str(), a.epoch), ("b", 2), "node a: {a:?}");
    for (key, n) in &acked {
        assert!(*n > 0, "{key} was never acknowledged");
        assert_eq!(
            cluster.redis_get_int('b', key),
            *n,
            "every acknowledged INCR on {key} is on node b"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.redis_running('a') {
        assert!(Instant::now() < deadline, "node a's redis was not stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{} ok: {} acknowledged INCRs over {CLIENTS} clients, all on node b",
        t(start),
        acked.iter().map(|(_, n)| n).sum::<i64>()
    );
}

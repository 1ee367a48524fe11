//! Faulted migrations: two real node agents on loopback, a checking INCR
//! client on node a, and a replay migration a → b that is attacked while it
//! runs. Node a reaches b's peer port through a relay in this process, so
//! the link can be cut or corrupted without namespaces.
//!
//! Faults: b killed (`kill -9`) while the snapshot flows; the peer link cut
//! while the snapshot flows; one byte of the a → b stream flipped; b
//! restoring a stale snapshot (its replay diverges); a killed during
//! catch-up and restarted. Each run checks: the
//! migration exits non-zero with a reason; both nodes agree that a owns
//! epoch 1 (anything else is a split-ownership event); every acknowledged
//! INCR is in a's redis; and, once the fault is healed (b restarted, the
//! link whole again), the next migration succeeds and b serves every
//! acknowledged INCR of both attempts.

use crate::{Row, Target};
use anyhow::{bail, Context, Result};
use replaymig_testkit::{
    write_node_config, ChildGuard, NodePorts, Reply, RespClient, StopRedisOnDrop,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What is done to a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the destination node while the snapshot flows.
    KillDestination,
    /// The peer link cut while the snapshot flows.
    CutLink,
    /// One byte of the source's stream flipped after the first 256 KiB.
    CorruptStream,
    /// The destination restores a stale (empty) snapshot: its replay diverges.
    DivergentReplay,
    /// `kill -9` of the source node during catch-up, then its restart (its
    /// redis, orphaned by the kill, keeps running).
    RestartSource,
}

impl Fault {
    /// Every fault, in report order.
    pub const ALL: [Fault; 5] = [
        Fault::KillDestination,
        Fault::CutLink,
        Fault::CorruptStream,
        Fault::DivergentReplay,
        Fault::RestartSource,
    ];

    /// The short name used on the command line (`--faults`).
    pub fn key(self) -> &'static str {
        match self {
            Fault::KillDestination => "kill-destination",
            Fault::CutLink => "cut-link",
            Fault::CorruptStream => "corrupt-stream",
            Fault::DivergentReplay => "divergent-replay",
            Fault::RestartSource => "restart-source",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::KillDestination => "faulted migration: destination killed, snapshot in flight",
            Fault::CutLink => "faulted migration: peer link cut, snapshot in flight",
            Fault::CorruptStream => "faulted migration: a corrupted byte on the link",
            Fault::DivergentReplay => "faulted migration: divergent replay",
            Fault::RestartSource => "faulted migration: source killed and restarted in catch-up",
        }
    }
}

/// How the campaign runs.
#[derive(Debug, Clone)]
pub struct FaultedMigrations {
    /// Runs of each fault.
    pub runs: u64,
    /// Data preloaded into redis so the transfer lasts long enough to hit.
    pub preload_mb: usize,
    /// Only these faults (by `Fault::key`; empty: all).
    pub only: Vec<String>,
}

impl Default for FaultedMigrations {
    fn default() -> Self {
        FaultedMigrations {
            runs: 50,
            preload_mb: 16,
            only: Vec::new(),
        }
    }
}

/// The relay's pace from a to b (the snapshot's direction).
const RELAY_BYTES_PER_SECOND: f64 = 16e6;

const PASS: u8 = 0;
const CUT: u8 = 1;
const CORRUPT: u8 = 2;

/// A TCP relay to one address: passes bytes (a → b paced to 16 MB/s, so a
/// transfer takes a while), cuts every connection, or flips
/// one byte of the a → b direction after the first 256 KiB.
struct Relay {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(PASS));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (m, o) = (mode.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if m.load(Ordering::Acquire) == CUT {
                    continue; // dropped: refused while cut
                }
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                {
                    let mut open = o.lock().expect("poisoned");
                    open.extend(client.try_clone().ok());
                    open.extend(server.try_clone().ok());
                }
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let m2 = m.clone();
                std::thread::spawn(move || pump(client, server, Some(m2)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Ok(Relay { addr, mode, open })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Release);
        if mode == CUT {
            for s in self.open.lock().expect("poisoned").drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to`; the a → b direction (`mode` given) is paced and
/// may be corrupted once.
fn pump(mut from: TcpStream, mut to: TcpStream, mode: Option<Arc<AtomicU8>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut passed = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(mode) = &mode {
            if mode.load(Ordering::Acquire) == CORRUPT && passed + n > 256 * 1024 {
                let at = (256 * 1024usize).saturating_sub(passed).min(n - 1);
                buf[at] ^= 0x20;
                mode.store(PASS, Ordering::Release);
            }
            // Paced to RELAY_BYTES_PER_SECOND, so a fault lands mid-transfer.
            std::thread::sleep(Duration::from_secs_f64(n as f64 / RELAY_BYTES_PER_SECOND));
        }
        passed += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Two nodes (a owns redis), a's link to b through a relay.
struct Pair {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pa: NodePorts,
    pb: NodePorts,
    a: ChildGuard,
    b: ChildGuard,
    config_a: PathBuf,
    config_b: PathBuf,
    relay: Relay,
    /// Last: after the nodes, stop the redis-servers they leave behind.
    _redis: StopRedisOnDrop,
}

impl Pair {
    fn start(bin: &Path, b_restore: Option<&str>) -> Result<Pair> {
        let dir = tempfile::TempDir::new()?;
        std::fs::write(
            dir.path().join("secret"),
            "chaos-campaign-secret-0123456789",
        )?;
        let (pa, pb) = (NodePorts::loopback(), NodePorts::loopback());
        let redis = StopRedisOnDrop(vec![pa.backend, pb.backend]);
        let relay = Relay::start((pb.ip, pb.peer).into())?;
        let relayed = NodePorts {
            peer: relay.addr.port(),
            ..pb
        };
        let config_a = write_node_config(dir.path(), "a", &pa, ("b", &relayed), "a", None, None);
        let config_b = write_node_config(dir.path(), "b", &pb, ("a", &pa), "a", None, b_restore);
        let a = crate::start_node(bin, dir.path(), "a", &config_a, pa.admin, &[])?;
        let b = crate::start_node(bin, dir.path(), "b", &config_b, pb.admin, &[])?;
        Ok(Pair {
            bin: bin.to_path_buf(),
            dir,
            pa,
            pb,
            a,
            b,
            config_a,
            config_b,
            relay,
            _redis: redis,
        })
    }

    fn restart_a(&mut self) -> Result<()> {
        self.a = crate::start_node(
            &self.bin,
            self.dir.path(),
            "a",
            &self.config_a,
            self.pa.admin,
            &[],
        )?;
        Ok(())
    }

    fn restart_b(&mut self) -> Result<()> {
        self.b = crate::start_node(
            &self.bin,
            self.dir.path(),
            "b",
            &self.config_b,
            self.pb.admin,
            &[],
        )?;
        Ok(())
    }

    fn listen_a(&self) -> SocketAddr {
        (self.pa.ip, self.pa.listen).into()
    }

    /// `replaymig migrate redis --to b` through a, stderr piped (phases).
    fn migrate(&self) -> Result<Child> {
        Ok(Command::new(&self.bin)
            .args(["migrate", "redis", "--to", "b"])
            .args(["--admin", &format!("127.0.0.1:{}", self.pa.admin)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    }
}

/// One service's status line from a node's admin endpoint.
fn status(admin: u16) -> Result<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", admin))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"{\"status\": {}}\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    anyhow::ensure!(
        !line.trim().is_empty(),
        "node with admin port {admin} closed the status request unanswered"
    );
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok(v["services"][0].clone())
}

/// Waits (bounded) for a migration's stderr to name `phase`; the rest of
/// its stderr is read in the background: join the handle once the process
/// exited for all of it (the reason it failed is its last line).
fn wait_phase(child: &mut Child, phase: &str) -> Result<std::thread::JoinHandle<String>> {
    let stderr = child.stderr.take().context("stderr piped")?;
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let phase = phase.to_string();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(&phase) {
                let _ = seen_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let _ = seen_rx.recv_timeout(Duration::from_secs(60));
    Ok(reader)
}

/// Waits (bounded) for `child` to exit; its success.
fn finish(child: &mut Child) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("migrate did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sequential, checking INCR client on `key` through `addr`.
struct Counter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<i64>>,
}

impl Counter {
    /// `until_error`: a connection error ends the client (its node died)
    /// instead of failing it; the INCR in flight may then have been
    /// executed without its acknowledgement.
    fn start(addr: SocketAddr, key: &'static str, until_error: bool) -> Counter {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut c = RespClient::connect(addr)?;
            let mut acked = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let reply = match c.cmd(&["INCR", key]) {
                    Ok(reply) => reply,
                    Err(_) if until_error => break,
                    Err(e) => return Err(e).context("a client error"),
                };
                if reply != Reply::Int(acked + 1) {
                    bail!("{key}: expected {}, got {reply:?}", acked + 1);
                }
                acked += 1;
            }
            Ok(acked)
        });
        Counter { stop, thread }
    }

    fn finish(self) -> Result<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the client panicked"))?
    }
}

fn get_int(addr: SocketAddr, key: &str) -> Result<i64> {
    match RespClient::connect(addr)?.cmd(&["GET", key])? {
        Reply::Bulk(b) => Ok(String::from_utf8(b)?.parse()?),
        Reply::Nil => Ok(0),
        other => bail!("GET {key}: {other:?}"),
    }
}

/// Fills a's redis with `mb` MB of random values (so the snapshot is big).
fn preload(pa: &NodePorts, mb: usize) -> Result<()> {
    let mut c = RespClient::connect((pa.ip, pa.backend).into())?;
    for i in 0..mb {
        let value: String = (0..1 << 20).map(|_| fastrand::alphanumeric()).collect();
        c.cmd(&["SET", &format!("fill:{i}"), &value])?;
    }
    Ok(())
}

/// The outcome of one run: acknowledged writes, lost ones, split events,
/// and the first check that failed.
#[derive(Default)]
struct RunOutcome {
    acked: i64,
    lost: u64,
    split: bool,
    migrations: u64,
    failed: Option<String>,
    /// What `migrate` said when the fault made it fail.
    error: String,
}

impl RunOutcome {
    fn failed(mut self, why: String) -> Result<RunOutcome> {
        self.failed = Some(why);
        Ok(self)
    }
}

fn one_run(target: &Target, fault: Fault, options: &FaultedMigrations) -> Result<RunOutcome> {
    // A stale snapshot: the restore ignores the shipped RDB.
    let stale = r#"["rm -f {data_dir}/dump.rdb"]"#;
    let restore = (fault == Fault::DivergentReplay).then_some(stale);
    let mut pair = Pair::start(&target.bin, restore)?;
    let mut out = RunOutcome::default();
    if fault != Fault::DivergentReplay {
        preload(&pair.pa, options.preload_mb)?;
    }
    let source_dies = fault == Fault::RestartSource;
    let first = Counter::start(pair.listen_a(), "first", source_dies);
    std::thread::sleep(Duration::from_millis(200));
    if fault == Fault::CorruptStream {
        pair.relay.set(CORRUPT);
    }
    let mut migrate = pair.migrate()?;
    out.migrations += 1;
    let trigger = if source_dies {
        "catching_up"
    } else {
        "transferring"
    };
    let reason = wait_phase(&mut migrate, trigger)?;
    match fault {
        Fault::KillDestination => pair.b.kill9()?,
        Fault::CutLink => pair.relay.set(CUT),
        Fault::RestartSource => pair.a.kill9()?,
        Fault::CorruptStream | Fault::DivergentReplay => {}
    }
    if finish(&mut migrate)? {
        return out.failed("the migration succeeded despite the fault".into());
    }
    let reason = reason.join().unwrap_or_default();
    // When the source itself dies, so does the admin connection: the CLI
    // says so instead of naming a phase.
    let clear = |l: &&str| {
        l.contains("migration failed") || (source_dies && l.contains("closed the admin connection"))
    };
    match reason.lines().find(clear) {
        Some(line) => out.error = line.trim().to_string(),
        None => {
            let a_log = crate::log_tail(pair.dir.path(), "a", 12);
            return out.failed(format!(
                "no clear error from migrate: {reason}; node a's log ends: {a_log}"
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let acked = first.finish()?;
    out.acked += acked;
    // Heal; both nodes must agree a owns epoch 1.
    match fault {
        Fault::KillDestination => pair.restart_b()?,
        Fault::RestartSource => pair.restart_a()?,
        _ => {}
    }
    pair.relay.set(PASS);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A node still settling the fault (discarding its copy, restarting)
        // may close an admin connection unanswered: asked again until the
        // deadline, which still fails the run.
        let (sa, sb) = match (status(pair.pa.admin), status(pair.pb.admin)) {
            (Ok(sa), Ok(sb)) => (sa, sb),
            (Err(e), _) | (_, Err(e)) => {
                if Instant::now() > deadline {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let settled = sb["migrating"] == false && sb["prepared"].is_null();
        if settled || Instant::now() > deadline {
            if sa["owner"] != "a" || sb["owner"] != "a" || sa["epoch"] != 1 || sb["epoch"] != 1 {
                out.split = true;
                return out.failed(format!("after the fault: a says {sa}, b says {sb}"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_a = get_int((pair.pa.ip, pair.pa.backend).into(), "first")?;
    // A client whose node died may have had one INCR executed, unacknowledged.
    let in_flight = i64::from(source_dies);
    if on_a < acked || on_a > acked + in_flight {
        out.lost += acked.abs_diff(on_a);
        return out.failed(format!("{acked} INCRs acknowledged, {on_a} in a's redis"));
    }
    if fault == Fault::DivergentReplay {
        return Ok(out); // b's restore is broken for good: no retry
    }
    // The next attempt succeeds, and b serves every acknowledged write.
    let second = Counter::start(pair.listen_a(), "second", false);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = pair.migrate()?;
    out.migrations += 1;
    let reason = wait_phase(&mut again, "done")?;
    let ok = finish(&mut again)?;
    std::thread::sleep(Duration::from_millis(300));
    let acked2 = second.finish()?;
    out.acked += acked2;
    if !ok {
        let why = reason.join().unwrap_or_default().trim().to_string();
        return out.failed(format!("the retry failed: {why}"));
    }
    let (sa, sb) = (status(pair.pa.admin)?, status(pair.pb.admin)?);
    if sa["owner"] != "b" || sb["owner"] != "b" || sa["epoch"] != 2 || sb["epoch"] != 2 {
        out.split = true;
        return out.failed(format!("after the retry: a says {sa}, b says {sb}"));
    }
    let on_b: SocketAddr = (pair.pb.ip, pair.pb.backend).into();
    for (key, acked) in [("first", on_a), ("second", acked2)] {
        let got = get_int(on_b, key)?;
        if got != acked {
            out.lost += acked.abs_diff(got);
            return out.failed(format!("{key}: {acked} acknowledged, {got} on b"));
        }
    }
    Ok(out)
}

/// Runs every fault `options.runs` times; one row per fault.
pub fn run(target: &Target, options: &FaultedMigrations) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let wanted = |f: Fault| options.only.is_empty() || options.only.iter().any(|k| k == f.key());
    for fault in Fault::ALL.into_iter().filter(|f| wanted(*f)) {
        let mut row = Row {
            campaign: fault.name().into(),
            ..Default::default()
        };
        let (mut acked, mut migrations, mut split) = (0i64, 0u64, 0u64);
        let mut said = String::new();
        for run in 0..options.runs {
            row.runs += 1;
            match one_run(target, fault, options) {
                Ok(o) => {
                    acked += o.acked;
                    migrations += o.migrations;
                    row.lost += o.lost;
                    split += u64::from(o.split);
                    if said.is_empty() {
                        said = o.error.chars().take(140).collect();
                    }
                    if let Some(why) = o.failed {
                        row.fail(format!("run {run}: {why}"));
                    }
                }
                // The harness itself failed (a node did not start, ...).
                Err(e) => row.fail(format!("run {run}: {e:#}")),
            }
        }
        row.checked = format!("{migrations} migrations, {acked} acked INCRs on the owner");
        row.notes = format!(
            "split-ownership events {split}; {} MB preloaded; migrate said: \"{}\"",
            options.preload_mb,
            said.replace('|', "/")
        );
        rows.push(row);
    }
    Ok(rows)
}

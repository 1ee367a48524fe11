//! Crash loop: the proxy under a checking INCR load, `kill -9` at a random
//! moment, restarted on the same journal, again and again. After every
//! kill: the journal opens, its new records verify (no torn record) and
//! their LSNs continue without a gap, every INCR redis executed is in the
//! journal (executed ≤ journaled) and every acknowledged one was executed
//! (acked ≤ executed).

use crate::{check_incrs, Row, Target};
use anyhow::{Context, Result};
use replaymig_journal::{Durability, Entry, Journal, JournalOptions, Lsn, OpenMode};
use replaymig_testkit::journal_view::{connections, journaled_incrs, JournaledConn};
use replaymig_testkit::{free_port, wait_for_listen_by, ChildGuard, IncrLoad, RedisServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How a crash loop runs.
#[derive(Debug, Clone)]
pub struct CrashLoop {
    /// Kill/restart cycles.
    pub runs: u64,
    /// Concurrent clients per cycle.
    pub clients: usize,
    /// Each cycle's kill comes after a random delay in this range (ms).
    pub kill_after_ms: (u64, u64),
    /// Random seed (the kill moments), for a repeatable campaign.
    pub seed: u64,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            runs: 100,
            clients: 8,
            kill_after_ms: (50, 600),
            seed: 1,
        }
    }
}

/// Bounds each client's loop if a kill never lands.
const MAX_INCRS: i64 = 50_000;

/// Starts `replaymig proxy` on a free port (with `extra` arguments); its
/// guard kills it by PID.
pub(crate) fn start_proxy(
    target: &Target,
    backend: SocketAddr,
    journal: &Path,
    durability: &str,
    extra: &[String],
) -> Result<(ChildGuard, SocketAddr)> {
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(&target.bin)
        .args(["proxy", "--listen", &listen.to_string()])
        .args([
            "--backend",
            &backend.to_string(),
            "--durability",
            durability,
        ])
        .arg("--journal")
        .arg(journal)
        .args(extra)
        .env("REPLAYMIG_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", target.bin.display()))?;
    let guard = ChildGuard::new("replaymig proxy", child);
    wait_for_listen_by(guard.pid(), listen.port(), Duration::from_secs(15))
        .context("the proxy did not start")?;
    Ok((guard, listen))
}

/// Records from `from` on of a journal no process holds, every one verified.
pub(crate) fn read_from(journal: &Path, from: Lsn) -> Result<Vec<Entry>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let options = JournalOptions {
            durability: Durability::None,
            mode: OpenMode::MustExist,
            ..JournalOptions::default()
        };
        let j = Journal::open(journal, options).context("the journal does not open")?;
        let entries: Result<Vec<Entry>, _> = j.read_range(from, Lsn::MAX).collect();
        j.close().await?;
        entries.context("a record does not verify")
    })
}

/// Runs the campaign against `target`.
pub fn run(target: &Target, options: &CrashLoop) -> Result<Row> {
    let mut row = Row {
        campaign: "crash loop (proxy kill -9 under INCR load)".into(),
        ..Default::default()
    };
    let redis = RedisServer::start()?;
    let dir = tempfile::TempDir::new()?;
    let journal = dir.path().join("journal");
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut conns: BTreeMap<u64, JournaledConn> = BTreeMap::new();
    let (mut next_lsn, mut records, mut keys) = (1, 0u64, 0u64);
    for run in 0..options.runs {
        row.runs += 1;
        let durability = if run % 2 == 0 { "batch" } else { "sync" };
        let (mut proxy, listen) = match start_proxy(target, redis.addr, &journal, durability, &[]) {
            Ok(p) => p,
            Err(e) => {
                row.fail(format!("run {run}: {e:#}"));
                break; // a journal that no longer opens ends the campaign
            }
        };
        let prefix = format!("run{run}:k");
        let load = IncrLoad::start(listen, options.clients, &prefix, MAX_INCRS);
        let (lo, hi) = options.kill_after_ms;
        std::thread::sleep(Duration::from_millis(rng.u64(lo..=hi.max(lo))));
        proxy.kill9()?;
        let acked = match load.finish_checked() {
            Ok(acked) => acked,
            Err(e) => {
                row.fail(format!("run {run}: {e}"));
                continue;
            }
        };
        // The journal's new part: verified, contiguous.
        let entries = match read_from(&journal, next_lsn) {
            Ok(entries) => entries,
            Err(e) => {
                row.fail(format!("run {run}: {e:#}"));
                break;
            }
        };
        if let Some(gap) = entries
            .iter()
            .zip(next_lsn..)
            .find(|(e, expected)| e.lsn != *expected)
        {
            row.fail(format!(
                "run {run}: LSN {} where {} was due",
                gap.0.lsn, gap.1
            ));
        }
        next_lsn += entries.len() as Lsn;
        records += entries.len() as u64;
        for (id, c) in connections(&entries) {
            let whole = conns.entry(id).or_default();
            whole.data.extend_from_slice(&c.data);
        }
        // acked ≤ executed ≤ journaled, per key.
        for (key, acked) in acked {
            keys += 1;
            let executed = redis.get_int(&key)?;
            let journaled = journaled_incrs(&conns, &key) as i64;
            check_incrs(&mut row, run, &key, acked, executed, journaled);
        }
    }
    // The journal still opens for appending after the last kill.
    if let Err(e) = start_proxy(target, redis.addr, &journal, "batch", &[]) {
        row.fail(format!("after the last run: {e:#}"));
    }
    row.checked = format!("{records} records, {keys} keys (acked ≤ executed ≤ journaled)");
    row.notes = format!(
        "kill after {}-{} ms, {} clients, batch/sync alternating",
        options.kill_after_ms.0, options.kill_after_ms.1, options.clients
    );
    Ok(row)
}

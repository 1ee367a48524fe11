//! Disk full: the journal's disk (a small tmpfs made for the run) fills
//! under a checking INCR load, stays full a moment, then gets space back.
//! Runs alternate between the two ways a disk fills: another process
//! writes a file until `ENOSPC` (sled may then fail a flush and is
//! reopened in place), and the clients' own large writes through the
//! proxy (the journal's free-space reserve stops them first). Per run:
//! the journal refused input (counted in its metric), the same proxy
//! process serves a new client within 10 s of space returning, it stops
//! cleanly, the journal verifies with LSNs contiguous from 1, and for
//! every key acked ≤ executed ≤ journaled.

use crate::crash_loop::{read_from, start_proxy};
use crate::{check_incrs, Row, Target};
use anyhow::{bail, Context, Result};
use replaymig_testkit::journal_view::{connections, journaled_incrs};
use replaymig_testkit::{
    fill_up, free_port, is_root, scrape, IncrLoad, RedisServer, Reply, RespClient, Tmpfs,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How the disk-full campaign runs.
#[derive(Debug, Clone)]
pub struct DiskFull {
    /// Fill / free cycles (each on a fresh tmpfs and journal).
    pub runs: u64,
    /// Concurrent INCR clients.
    pub clients: usize,
}

impl Default for DiskFull {
    fn default() -> Self {
        DiskFull {
            runs: 20,
            clients: 4,
        }
    }
}

/// The tmpfs each run's journal lives on.
const DISK_SIZE: &str = "48m";
/// What it grows to when a run gives space back by growing it.
const GROWN_SIZE: &str = "160m";
/// How long the proxy has to serve again once space is back.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// What one run saw.
struct RunStats {
    records: u64,
    keys: u64,
    refused: u64,
    reopens: u64,
    recovery: Duration,
}

/// Runs the campaign against `target`.
pub fn run(target: &Target, options: &DiskFull) -> Result<Row> {
    let mut row = Row {
        campaign: "disk full (journal disk fills under INCR load, then space returns)".into(),
        ..Default::default()
    };
    if !is_root() {
        row.notes = "skipped: needs root to mount a tmpfs".into();
        return Ok(row);
    }
    let redis = RedisServer::start()?;
    let (mut records, mut keys, mut refused, mut reopens) = (0, 0, 0, 0);
    let mut slowest = Duration::ZERO;
    for run in 0..options.runs {
        row.runs += 1;
        match one_run(target, &redis, options, run, &mut row) {
            Ok(s) => {
                records += s.records;
                keys += s.keys;
                refused += s.refused;
                reopens += s.reopens;
                slowest = slowest.max(s.recovery);
            }
            Err(e) => row.fail(format!("run {run}: {e:#}")),
        }
    }
    row.checked =
        format!("{records} records (LSNs contiguous), {keys} keys (acked ≤ executed ≤ journaled)");
    row.notes = format!(
        "{refused} records refused, {reopens} in-place storage reopens, served again ≤ {} ms after space returned, same process; fills alternate: another process's file / the clients' own writes",
        slowest.as_millis()
    );
    Ok(row)
}

/// One fill / free cycle; data-check failures go to `row`, anything that
/// stops the run is the error.
fn one_run(
    target: &Target,
    redis: &RedisServer,
    options: &DiskFull,
    run: u64,
    row: &mut Row,
) -> Result<RunStats> {
    let dir = tempfile::TempDir::new()?;
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), DISK_SIZE) else {
        bail!("mount -t tmpfs failed");
    };
    let journal = fs.0.join("journal");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let extra = ["--metrics".to_string(), metrics.to_string()];
    let (mut proxy, listen) = start_proxy(target, redis.addr, &journal, "batch", &extra)?;
    let prefix = format!("diskfull{run}:k");
    let load = IncrLoad::start(listen, options.clients, &prefix, 1_000_000);
    std::thread::sleep(Duration::from_millis(300));

    let by_file = run.is_multiple_of(2);
    let filler = fs.0.join("filler");
    if by_file {
        fill_up(&filler).context("filling the disk")?;
    } else {
        fill_through_proxy(listen);
    }
    // The journal must have refused input (else nothing was tested).
    let until = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let m = scrape(metrics)?;
        let refused = m.get("replaymig_journal_refused_records_total");
        if refused > 0.0
            || m.get_labelled(
                "replaymig_errors_total",
                &[("service", "default"), ("kind", "journal_append")],
            ) > 0.0
        {
            break refused as u64;
        }
        if Instant::now() > until {
            bail!("the journal never refused input on the full disk");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(1));
    if !proxy.is_running() {
        bail!("the proxy exited on the full disk");
    }

    if by_file {
        std::fs::remove_file(&filler)?;
    } else {
        fs.resize(GROWN_SIZE)?;
    }
    let freed = Instant::now();
    let probe_key = format!("diskfull{run}:probe");
    loop {
        let served = RespClient::connect(listen).and_then(|mut c| c.cmd(&["INCR", &probe_key]));
        match served {
            Ok(Reply::Int(1)) => break,
            Ok(other) => bail!("the probe INCR answered {other:?}"),
            Err(_) if freed.elapsed() < RECOVERY_BOUND => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => bail!("not served {RECOVERY_BOUND:?} after space returned: {e}"),
        }
    }
    let recovery = freed.elapsed();
    let after = IncrLoad::start(
        listen,
        options.clients,
        &format!("diskfull{run}:after"),
        1_000_000,
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut acked = load.finish_checked().map_err(anyhow::Error::msg)?;
    acked.extend(after.finish_checked().map_err(anyhow::Error::msg)?);
    acked.push((probe_key, 1));
    let reopens = scrape(metrics)?.get_labelled(
        "replaymig_journal_reopens_total",
        &[("service", "default"), ("outcome", "ok")],
    ) as u64;

    proxy.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = proxy.wait_timeout(Duration::from_secs(15))?;
    if !status.success() {
        row.fail(format!(
            "run {run}: the proxy's stop was not clean ({status})"
        ));
    }
    let entries = read_from(&journal, 1)?;
    if let Some((e, expected)) = entries.iter().zip(1..).find(|(e, n)| e.lsn != *n) {
        row.fail(format!("run {run}: LSN {} where {expected} was due", e.lsn));
    }
    let conns = connections(&entries);
    for (key, acked) in &acked {
        let executed = redis.get_int(key)?;
        let journaled = journaled_incrs(&conns, key) as i64;
        check_incrs(row, run, key, *acked, executed, journaled);
    }
    Ok(RunStats {
        records: entries.len() as u64,
        keys: acked.len() as u64,
        refused,
        reopens,
        recovery,
    })
}

/// Large SETs through the proxy until it closes the connection (the
/// journal refused them) — at most 2,000 or 20 s.
fn fill_through_proxy(listen: SocketAddr) {
    let value = "v".repeat(256 << 10);
    let Ok(mut c) = RespClient::connect(listen) else {
        return;
    };
    let until = Instant::now() + Duration::from_secs(20);
    for i in 0..2000 {
        if Instant::now() > until || c.cmd(&["SET", &format!("fill:{i}"), &value]).is_err() {
            return;
        }
    }
}

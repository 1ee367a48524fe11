//! `replaymig replay`: re-sends a journal's client input to a service, to
//! reproduce what the original service saw (debugging), from any LSN.
//!
//! The journal is opened like `journal stat` does (must exist, nothing
//! durable promised) and only read: a replay never appends. The range is
//! read twice in bounded slices: once to verify every record (a corrupt one
//! stops the command, naming its LSN, before anything is sent), then to
//! feed the [`Replayer`] (`replaymig_replayer::feed`, the loop a node
//! rebuilding a service uses too), which opens one target connection per journaled
//! connection and honours the recorded answer causality. Divergences (the
//! target answering more or fewer bytes than the original; with `--compare`
//! also different bytes, checked against the answer segments the proxy
//! journaled) are collected, not fatal on the spot, and make the exit
//! non-zero.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replaymig_journal::marker::SnapshotMark;
use replaymig_journal::{
    ConnId, Durability, Entry, Journal, JournalError, JournalOptions, Lsn, OpenMode, Record,
};
use replaymig_proxy::SETTLE_WAIT;
use replaymig_replayer::feed::{feed_range, Fed, FeedError, SLICE};
use replaymig_replayer::{Divergence, DivergenceKind, ReplayOptions, ReplayReport, Replayer};
use std::collections::{BTreeSet, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long the reachability check waits for the target to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of a data record shown by `--dry-run`.
const PREVIEW_BYTES: usize = 48;

/// Options of `replaymig replay`: which journal, which range and
/// connections, which target, and how to report.
#[derive(Args)]
pub struct ReplayArgs {
    /// Journal directory (only read: a replay never appends to it).
    #[arg(long)]
    journal: PathBuf,
    /// The service to feed, HOST:PORT (not needed with --dry-run).
    #[arg(long, required_unless_present = "dry_run")]
    target: Option<String>,
    /// First LSN to replay (default: the journal's first). Connections
    /// opened before it are continued from their first record in range; if
    /// the record at LSN-1 is a snapshot marker, answers count from it.
    #[arg(long, value_name = "LSN", value_parser = clap::value_parser!(u64).range(1..))]
    from: Option<Lsn>,
    /// Last LSN to replay (default and at most: the journal's last).
    #[arg(long, value_name = "LSN", value_parser = clap::value_parser!(u64).range(1..))]
    to: Option<Lsn>,
    /// Replay only these connections (ID = the LSN of their `opened`
    /// record); repeat the option or separate IDs with commas. Causality
    /// across connections is then not enforced.
    #[arg(long = "conn", value_name = "ID", value_delimiter = ',')]
    conns: Vec<ConnId>,
    /// Print the records that would be sent, one line each; connect to nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also compare the target's answers by content with the answers the
    /// proxy journaled (`--journal-responses digest` or `full`): each
    /// differing answer segment is a divergence, with its byte offset and
    /// previews (the exact first differing byte when bytes were kept).
    /// Without it (or for a journal without answer records) only answer
    /// byte counts are compared.
    #[arg(long)]
    compare: bool,
    /// Send a record only once the target answered the one before (at most
    /// 2 ms later), as a proxy with `--settled-forwarding` (or a migration
    /// catching up) forwarded them: the target then executes them in
    /// journal order, as the original did.
    #[arg(long)]
    settled: bool,
    /// Print the summary as one JSON object (with --dry-run: one JSON
    /// object per record).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for answer bytes the original client had received
    /// before calling it a divergence.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    answer_timeout: f64,
    /// Divergences listed at most (all of them are counted).
    #[arg(long, value_name = "N", default_value_t = 20)]
    max_divergences: usize,
    /// Pace of the replay: `max` (as fast as the causality allows) or `Nx`
    /// for any positive N (`1x` = the original timing, `2x` = twice as
    /// fast, `0.5x` = half as fast): each record is sent no earlier than
    /// its original offset from the range's first record, divided by N.
    #[arg(long, value_name = "max|Nx", default_value = "max", value_parser = parse_speed)]
    speed: Speed,
}

/// `--speed`: as fast as possible, or a multiplier of the original timing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Speed {
    Max,
    Times(f64),
}

impl Speed {
    fn multiplier(self) -> Option<f64> {
        match self {
            Speed::Max => None,
            Speed::Times(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Speed::Max => f.write_str("max"),
            Speed::Times(n) => write!(f, "{n}x"),
        }
    }
}

fn parse_speed(s: &str) -> Result<Speed, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(Speed::Max);
    }
    let bad = || format!("{s:?}: expected max or a positive multiplier like 1x, 2x, 0.5x");
    let n = s
        .strip_suffix(['x', 'X'])
        .ok_or_else(bad)?
        .parse::<f64>()
        .map_err(|_| bad())?;
    if n.is_finite() && n > 0.0 {
        Ok(Speed::Times(n))
    } else {
        Err(bad())
    }
}

/// Runs `replaymig replay`; an error (or any divergence) is a non-zero exit.
pub async fn run(args: ReplayArgs) -> Result<()> {
    if !(args.answer_timeout.is_finite() && args.answer_timeout > 0.0) {
        bail!("--answer-timeout must be a positive number of seconds");
    }
    let journal = Journal::open(
        &args.journal,
        JournalOptions {
            durability: Durability::None,
            mode: OpenMode::MustExist,
            ..JournalOptions::default()
        },
    )
    .with_context(|| format!("cannot open journal {}", args.journal.display()))?;
    let outcome = replay(&journal, &args).await;
    // Closed whatever happened: releases the journal's lock.
    let closed = journal.close().await;
    let outcome = outcome?;
    closed.with_context(|| format!("closing journal {}", args.journal.display()))?;
    outcome.verdict()
}

/// The LSNs to replay, both ends included.
#[derive(Debug, Clone, Copy)]
struct Range {
    from: Lsn,
    to: Lsn,
}

impl Range {
    fn len(&self) -> u64 {
        self.to - self.from + 1
    }
}

/// What the verifying pass found in the range.
#[derive(Default)]
struct Scan {
    records: u64,
    data_records: u64,
    data_bytes: u64,
    /// Answer records (journaled answer segments) and how many kept bytes.
    answer_records: u64,
    answer_records_with_bytes: u64,
    /// Connections with at least one record in range.
    conns: BTreeSet<ConnId>,
}

/// How a command ended, decided once the journal is closed.
enum Outcome {
    /// Nothing to judge (a dry run).
    Done,
    /// A replay: divergences or an interruption fail it.
    Replayed {
        divergences: Vec<Divergence>,
        interrupted_at: Option<Lsn>,
    },
}

impl Outcome {
    fn verdict(self) -> Result<()> {
        match self {
            Outcome::Done => Ok(()),
            Outcome::Replayed {
                interrupted_at: Some(lsn),
                ..
            } => bail!("interrupted: replayed up to LSN {lsn}"),
            Outcome::Replayed { divergences, .. } => match divergences.first() {
                None => Ok(()),
                Some(first) => bail!(
                    "the replay diverged {} time(s), first at LSN {} (connection {})",
                    divergences.len(),
                    first.lsn,
                    first.conn
                ),
            },
        }
    }
}

async fn replay(journal: &Journal, args: &ReplayArgs) -> Result<Outcome> {
    let dir = &args.journal;
    let range = resolve_range(journal, dir, args.from, args.to)?;
    let scan = verify(journal, dir, range)?;
    let only: Option<HashSet<ConnId>> =
        (!args.conns.is_empty()).then(|| args.conns.iter().copied().collect());
    for conn in &args.conns {
        if !scan.conns.contains(conn) {
            bail!(
                "connection {conn} has no records in LSN {} ..= {} (a connection's ID is the LSN of its opened record)",
                range.from,
                range.to
            );
        }
    }
    let mark = snapshot_mark_before(journal, range.from)?;
    if args.dry_run {
        dry_run(journal, dir, range, only.as_ref(), mark.as_ref(), args.json)?;
        return Ok(Outcome::Done);
    }
    let shown = args.target.as_deref().expect("clap requires --target");
    let target = reachable_target(shown).await?;

    let mut options = ReplayOptions::new(target);
    options.only = only;
    options.answer_timeout = Duration::from_secs_f64(args.answer_timeout);
    // List every divergence rather than stop at the first (debugging).
    options.stop_on_divergence = false;
    options.speed = args.speed.multiplier();
    options.compare_answers = args.compare;
    options.settle = args.settled.then_some(SETTLE_WAIT);
    let mut replayer = Replayer::new(options);
    if let Some(mark) = &mark {
        replayer.start_at(mark);
    }
    let interrupt = CancellationToken::new();
    let watcher = tokio::spawn(cancel_on_ctrl_c(interrupt.clone()));
    let bar = progress_bar(range.len());
    // stop_on_divergence is off: divergences only go to the report.
    let fed = feed_range(
        journal,
        range.from..=range.to,
        &mut replayer,
        &interrupt,
        |end| {
            if let Some(bar) = &bar {
                let done = end - range.from + 1;
                bar.set_position(done);
                let rate = per_second(done as f64, bar.elapsed().as_secs_f64());
                bar.set_message(format!("{rate:.0} records/s"));
            }
        },
    )
    .await;
    let interrupted_at = match fed {
        Ok(Fed::All) => None,
        Ok(Fed::Stopped { at }) => Some(at - 1),
        Err(FeedError::Journal(e)) => return Err(bad_record(dir, e)),
        Err(FeedError::Replay(e)) => return Err(e.into()),
    };
    watcher.abort();
    if let Some(bar) = &bar {
        bar.set_message("waiting for the last answers".to_string());
    }
    // Connections the journal left open are handed back: dropping them
    // closes them.
    let (mut report, _open) = replayer.finish().await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report.divergences.sort_by_key(|d| (d.lsn, d.conn));
    let summary = Summary {
        dir,
        target: shown,
        range,
        scan: &scan,
        conns: &args.conns,
        report: &report,
        mark: mark.as_ref(),
        interrupted_at,
        max_divergences: args.max_divergences,
        speed: args.speed,
        compare: args.compare,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.json())?);
    } else {
        print!("{}", summary.text());
    }
    Ok(Outcome::Replayed {
        divergences: report.divergences,
        interrupted_at,
    })
}

/// The range to replay, checked against what the journal holds.
fn resolve_range(
    journal: &Journal,
    dir: &Path,
    from: Option<Lsn>,
    to: Option<Lsn>,
) -> Result<Range> {
    let last = journal.last_lsn();
    let first = match journal.first_lsn()? {
        Some(first) if last > 0 => first,
        _ => bail!(
            "journal {} holds no records: nothing to replay",
            dir.display()
        ),
    };
    let holds = format!("it holds LSN {first} ..= {last}");
    let from = from.unwrap_or(first);
    if from > last {
        bail!("--from {from} is beyond the journal's last LSN {last} ({holds})");
    }
    if from < first {
        bail!("--from {from} was truncated away: the journal starts at LSN {first} ({holds})");
    }
    let to = to.map_or(last, |to| to.min(last));
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    Ok(Range { from, to })
}

/// Reads (and so verifies) one slice; a bad record is named by its LSN.
fn read_slice(journal: &Journal, dir: &Path, from: Lsn, to: Lsn) -> Result<Vec<Entry>> {
    journal
        .read_range(from, to)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_record(dir, e))
}

/// Reads every record of the range once before anything is sent: a
/// corrupt record fails the command with the target untouched.
fn verify(journal: &Journal, dir: &Path, range: Range) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut next = range.from;
    while next <= range.to {
        let end = range.to.min(next.saturating_add(SLICE - 1));
        for entry in journal.read_range(next, end) {
            let entry = entry.map_err(|e| bad_record(dir, e))?;
            scan.records += 1;
            if let Some(conn) = entry.record.conn(entry.lsn) {
                scan.conns.insert(conn);
            }
            match &entry.record {
                Record::Data { data, .. } => {
                    scan.data_records += 1;
                    scan.data_bytes += data.len() as u64;
                }
                Record::Answer { data, .. } => {
                    scan.answer_records += 1;
                    scan.answer_records_with_bytes += u64::from(!data.is_empty());
                }
                _ => {}
            }
        }
        next = end + 1;
    }
    Ok(scan)
}

/// A journal read error, naming the journal (and, through the journal's
/// error, the bad record's LSN), with how to replay up to it.
fn bad_record(dir: &Path, e: JournalError) -> anyhow::Error {
    let hint = match &e {
        JournalError::Checksum { lsn, .. }
        | JournalError::Malformed { lsn, .. }
        | JournalError::UnsupportedVersion { lsn, .. }
            if *lsn > 1 =>
        {
            format!(" (--to {} replays up to it)", lsn - 1)
        }
        _ => String::new(),
    };
    anyhow::anyhow!("journal {} failed verification: {e}{hint}", dir.display())
}

/// The snapshot marker at `from - 1`, if that is what precedes the range
/// and no client input lies between its snapshot point and it: then the
/// answers each connection had received are known exactly (the replayer
/// uses a marker inside the range by itself).
fn snapshot_mark_before(journal: &Journal, from: Lsn) -> Result<Option<SnapshotMark>> {
    if from < 2 {
        return Ok(None);
    }
    let Some(entry) = journal.get(from - 1)? else {
        return Ok(None);
    };
    let Some(mark) = SnapshotMark::from_record(&entry.record) else {
        return Ok(None);
    };
    if mark.lsn + 1 < entry.lsn {
        for between in journal.read_range(mark.lsn + 1, entry.lsn - 1) {
            if matches!(between?.record, Record::Data { .. }) {
                return Ok(None);
            }
        }
    }
    Ok(Some(mark))
}

/// `HOST:PORT` to the address to feed: the first of its addresses that
/// accepts a connection. Fails early, naming the target, when none does
/// (rather than reporting every connection as a divergence).
async fn reachable_target(target: &str) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("bad --target {target:?} (expected HOST:PORT)"))?
        .collect();
    let mut failure = format!("{target:?} resolves to no address");
    for addr in addrs {
        let named = if target == addr.to_string() {
            target.to_string()
        } else {
            format!("{target} ({addr})")
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_probe)) => return Ok(addr),
            Ok(Err(e)) => failure = format!("{named} is unreachable: {e}"),
            Err(_) => {
                failure = format!(
                    "{named} is unreachable: no answer to a connect within {CONNECT_TIMEOUT:?}"
                )
            }
        }
    }
    bail!("the target {failure}")
}

/// Ctrl-C stops feeding records; the summary of what was sent still comes.
async fn cancel_on_ctrl_c(token: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        token.cancel();
    }
}

/// A progress bar on stderr, only when a person watches it.
fn progress_bar(len: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} records, {msg}, eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Everything the end-of-replay report says, text or JSON.
struct Summary<'a> {
    dir: &'a Path,
    target: &'a str,
    range: Range,
    scan: &'a Scan,
    conns: &'a [ConnId],
    report: &'a ReplayReport,
    mark: Option<&'a SnapshotMark>,
    interrupted_at: Option<Lsn>,
    max_divergences: usize,
    speed: Speed,
    compare: bool,
}

impl Summary<'_> {
    fn records_per_second(&self) -> f64 {
        per_second(self.report.records as f64, self.report.elapsed_seconds)
    }

    fn megabytes_per_second(&self) -> f64 {
        per_second(
            self.report.data_bytes as f64 / 1e6,
            self.report.elapsed_seconds,
        )
    }

    /// What `--compare` could check, in words.
    fn compared(&self) -> &'static str {
        let scan = self.scan;
        match (
            self.compare,
            scan.answer_records,
            scan.answer_records_with_bytes,
        ) {
            (false, _, _) => "counts",
            (true, 0, _) => "counts (no answers journaled in range: journal-responses off)",
            (true, n, kept) if kept == n => "bytes",
            (true, _, 0) => "digests",
            (true, _, _) => "digests and bytes",
        }
    }

    fn json(&self) -> serde_json::Value {
        let r = self.report;
        let listed = &r.divergences[..r.divergences.len().min(self.max_divergences)];
        serde_json::json!({
            "journal": self.dir,
            "target": self.target,
            "from_lsn": self.range.from,
            "to_lsn": self.range.to,
            "only_connections": (!self.conns.is_empty()).then_some(self.conns),
            "snapshot_mark_lsn": self.mark.map(|m| m.lsn),
            "speed": self.speed.to_string(),
            "speed_multiplier": self.speed.multiplier(),
            "records": r.records,
            "data_records": r.data_records,
            "data_bytes": r.data_bytes,
            "connections": r.connections,
            "answer_bytes": r.answer_bytes,
            "compared": self.compared(),
            "answer_segments_compared": r.answer_segments,
            "last_lsn": r.last_lsn,
            "elapsed_seconds": r.elapsed_seconds,
            "records_per_second": self.records_per_second(),
            "megabytes_per_second": self.megabytes_per_second(),
            "interrupted_at_lsn": self.interrupted_at,
            "divergence_count": r.divergences.len(),
            "divergences": listed,
        })
    }

    fn text(&self) -> String {
        let r = self.report;
        let mut out = format!(
            "replayed         {} LSN {} ..= {} onto {}\n",
            self.dir.display(),
            self.range.from,
            self.range.to,
            self.target
        );
        if !self.conns.is_empty() {
            let ids: Vec<String> = self.conns.iter().map(|c| c.to_string()).collect();
            out += &format!("only connections {}\n", ids.join(", "));
        }
        if let Some(mark) = self.mark {
            out += &format!(
                "answers counted  from the snapshot mark at LSN {} (snapshot point {})\n",
                self.range.from - 1,
                mark.lsn
            );
        }
        out += &format!("speed            {}\n", self.speed);
        if let Some(lsn) = self.interrupted_at {
            out += &format!("interrupted      after LSN {lsn}\n");
        }
        out += &format!(
            "records          {} of {} ({} data)\n",
            r.records, self.scan.records, r.data_records
        );
        out += &format!("client bytes     {} sent\n", r.data_bytes);
        out += &format!("connections      {}\n", r.connections);
        out += &format!("answer bytes     {} read\n", r.answer_bytes);
        out += &format!("compared         answer {}", self.compared());
        if self.compare {
            out += &format!(", {} journaled segments", r.answer_segments);
        }
        out += "\n";
        out += &format!("elapsed          {:.3} s\n", r.elapsed_seconds);
        out += &format!(
            "rate             {:.0} records/s, {:.2} MB/s\n",
            self.records_per_second(),
            self.megabytes_per_second()
        );
        out += &format!("divergences      {}\n", r.divergences.len());
        for d in r.divergences.iter().take(self.max_divergences) {
            out += &format!(
                "  LSN {:<10} connection {:<10} {}\n",
                d.lsn,
                d.conn,
                describe(&d.kind)
            );
        }
        if r.divergences.len() > self.max_divergences {
            out += &format!(
                "  ... and {} more (--max-divergences)\n",
                r.divergences.len() - self.max_divergences
            );
        }
        out
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// One divergence in words (answer counts are from the replay's start).
fn describe(kind: &DivergenceKind) -> String {
    kind.to_string()
}

/// `--dry-run`: the records that would be sent, one line (or JSON object)
/// each, without connecting anywhere.
fn dry_run(
    journal: &Journal,
    dir: &Path,
    range: Range,
    only: Option<&HashSet<ConnId>>,
    mark: Option<&SnapshotMark>,
    json: bool,
) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match dry_run_lines(journal, dir, range, only, mark, json, &mut out) {
        // `| head` closing the pipe is not a failure.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn dry_run_lines(
    journal: &Journal,
    dir: &Path,
    range: Range,
    only: Option<&HashSet<ConnId>>,
    mark: Option<&SnapshotMark>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    if !json {
        writeln!(
            out,
            "# dry run: {} LSN {} ..= {}; nothing is sent",
            dir.display(),
            range.from,
            range.to
        )?;
        if let Some(mark) = mark {
            writeln!(
                out,
                "# answers count from the snapshot mark at LSN {} (snapshot point {})",
                range.from - 1,
                mark.lsn
            )?;
        }
        writeln!(
            out,
            "{:>10}  {:>10}  {:<11}  {:>7}  preview",
            "lsn", "conn", "kind", "len"
        )?;
    }
    let (mut data_records, mut data_bytes, mut conns) = (0u64, 0u64, BTreeSet::new());
    let mut next = range.from;
    while next <= range.to {
        let end = range.to.min(next.saturating_add(SLICE - 1));
        for entry in read_slice(journal, dir, next, end)? {
            let conn = entry.record.conn(entry.lsn);
            if let (Some(only), Some(conn)) = (only, conn) {
                if !only.contains(&conn) {
                    continue;
                }
            }
            let (len, preview) = describe_record(&entry.record);
            if let Record::Data { data, .. } = &entry.record {
                data_records += 1;
                data_bytes += data.len() as u64;
            }
            if let Some(conn) = conn {
                conns.insert(conn);
            }
            if json {
                let line = serde_json::json!({
                    "lsn": entry.lsn,
                    "conn": conn,
                    "kind": entry.record.kind_name(),
                    "len": len,
                    "preview": preview,
                });
                writeln!(out, "{line}")?;
            } else {
                let conn = conn.map_or("-".to_string(), |c| c.to_string());
                let len = len.map_or("-".to_string(), |l| l.to_string());
                writeln!(
                    out,
                    "{:>10}  {:>10}  {:<11}  {:>7}  {preview}",
                    entry.lsn,
                    conn,
                    entry.record.kind_name(),
                    len
                )?;
            }
        }
        next = end + 1;
    }
    if !json {
        writeln!(
            out,
            "# would send {data_records} data records ({data_bytes} bytes) on {} connections",
            conns.len()
        )?;
    }
    out.flush()?;
    Ok(())
}

/// A record's payload length (data and markers) and a short readable
/// description.
fn describe_record(record: &Record) -> (Option<usize>, String) {
    match record {
        Record::Opened { client_addr, .. } => (None, format!("client {client_addr}")),
        Record::Data {
            data, resp_before, ..
        } => (
            Some(data.len()),
            format!("{} (after {resp_before} answer bytes)", preview(data)),
        ),
        Record::HalfClosed { .. } => (None, "client sent FIN".to_string()),
        Record::Closed { resp_total, .. } => {
            (None, format!("closed after {resp_total} answer bytes"))
        }
        Record::Answer {
            offset, len, data, ..
        } if data.is_empty() => (None, format!("answer {len} bytes at {offset} (digest)")),
        Record::Answer { offset, data, .. } => (
            Some(data.len()),
            format!("answer {} at {offset}", preview(data)),
        ),
        Record::Marker {
            mark,
            lsn_ref,
            payload,
            ..
        } => (Some(payload.len()), format!("{mark} at LSN {lsn_ref}")),
    }
}

/// The first bytes of `data`, escaped so that protocol bytes stay readable
/// (`\r\n`, `\x00`) and quoted.
fn preview(data: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in data.iter().take(PREVIEW_BYTES) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    if data.len() > PREVIEW_BYTES {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_escapes_protocol_bytes_and_cuts_long_data() {
        assert_eq!(
            preview(b"*1\r\n$4\r\nPING\r\n"),
            r#""*1\r\n$4\r\nPING\r\n""#
        );
        assert_eq!(preview(b"a\x00\"\\"), r#""a\x00\"\\""#);
        let long = vec![b'x'; 100];
        let p = preview(&long);
        assert!(p.ends_with("\"..."), "{p}");
        assert_eq!(p.len(), PREVIEW_BYTES + 2 + 3);
    }

    #[test]
    fn speed_is_max_or_a_positive_multiplier() {
        assert_eq!(parse_speed("max"), Ok(Speed::Max));
        assert_eq!(parse_speed("1x"), Ok(Speed::Times(1.0)));
        assert_eq!(parse_speed("2x"), Ok(Speed::Times(2.0)));
        assert_eq!(parse_speed("0.5x"), Ok(Speed::Times(0.5)));
        assert_eq!(parse_speed("1.5X"), Ok(Speed::Times(1.5)));
        for bad in ["", "x", "2", "0x", "-1x", "infx", "NaNx", "fast", "1xx"] {
            assert!(parse_speed(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Speed::Times(1.5).to_string(), "1.5x");
        assert_eq!(Speed::Times(2.0).to_string(), "2x");
        assert_eq!(Speed::Max.to_string(), "max");
        assert_eq!(Speed::Max.multiplier(), None);
    }
}

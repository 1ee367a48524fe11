//! `replaymig journal dump`: see [`DumpArgs`] (the logic is in
//! `replaymig_journal_inspect::dump`).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use replaymig_journal::{
    ConnId, Durability, Entry, Journal, JournalError, JournalOptions, Lsn, OpenMode,
};
use replaymig_journal_inspect::dump::{self, Filter, Format};
use replaymig_journal_inspect::follow::Follower;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

/// Options of `replaymig journal dump`.
#[derive(Args)]
pub struct DumpArgs {
    /// Journal directory.
    #[arg(long)]
    journal: PathBuf,
    /// First LSN.
    #[arg(long, default_value_t = 1)]
    from: Lsn,
    /// Last LSN (default: the journal's last).
    #[arg(long)]
    to: Option<Lsn>,
    /// Only records at or after this time (RFC 3339, e.g. 2026-11-25T14:00:00Z).
    #[arg(long, value_parser = parse_time)]
    since: Option<u64>,
    /// Only records before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<u64>,
    /// Only this connection (its id = the LSN of its `opened` record); repeatable.
    #[arg(long = "conn")]
    conns: Vec<u64>,
    /// Only connections whose client address contains this; repeatable.
    #[arg(long = "client")]
    clients: Vec<String>,
    /// Only this record kind (opened, data, answer, half_closed, closed, marker); repeatable.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Output: one line per record with a preview, a full hexdump, or JSON lines.
    #[arg(long, value_enum, default_value_t = FormatArg::Human)]
    format: FormatArg,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<usize>,
    /// Keep printing records as they are journaled (until Ctrl-C, `--to`
    /// or `--limit`). A journal a proxy or node holds is followed through
    /// the socket that process serves in the journal directory; a journal
    /// nobody holds is printed, then followed once a process opens it.
    #[arg(long)]
    follow: bool,
}

/// `--format`.
#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Human,
    Hex,
    Json,
}

fn parse_time(s: &str) -> Result<u64, String> {
    let at = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e}"))?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .map_err(|e| e.to_string())
}

const KINDS: [&str; 6] = [
    "opened",
    "data",
    "answer",
    "half_closed",
    "closed",
    "marker",
];

/// Runs `replaymig journal dump`: never writes to the journal.
pub async fn run(args: DumpArgs) -> Result<()> {
    if let Some(bad) = args.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        anyhow::bail!("unknown record kind {bad:?} (one of {})", KINDS.join(", "));
    }
    let opened = Journal::open(
        &args.journal,
        JournalOptions {
            durability: Durability::None,
            mode: OpenMode::MustExist,
            ..JournalOptions::default()
        },
    );
    let journal = match opened {
        Err(JournalError::Locked { .. }) if args.follow => {
            let mut shown = 0;
            return follow(&args, args.from, &mut HashMap::new(), &mut shown).await;
        }
        other => {
            other.with_context(|| format!("cannot open journal {}", args.journal.display()))?
        }
    };
    let mut clients = HashMap::new();
    let outcome = dump_range(&journal, &args, &mut clients);
    let last = journal.last_lsn();
    journal.close().await?;
    let mut shown = outcome?;
    let done = args.to.is_some_and(|to| to <= last) || args.limit.is_some_and(|l| shown >= l);
    if !args.follow || done {
        return Ok(());
    }
    drop(journal);
    follow(&args, last + 1, &mut clients, &mut shown).await
}

/// `--follow`: records from `from` on, from the process that holds the
/// journal, as they come; waits for such a process when there is none.
async fn follow(
    args: &DumpArgs,
    from: Lsn,
    clients: &mut HashMap<ConnId, String>,
    shown: &mut usize,
) -> Result<()> {
    let filter = filter(args);
    let format = format(args);
    let mut next = from;
    loop {
        let mut follower = loop {
            match Follower::connect(&args.journal, next).await {
                Ok(f) => break f,
                // Nobody serves it (yet, or any more): wait for a process.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        };
        while let Some(entry) = follower
            .next()
            .await
            .with_context(|| format!("following journal {}", args.journal.display()))?
        {
            next = entry.lsn + 1;
            if args.to.is_some_and(|to| entry.lsn > to) {
                return Ok(());
            }
            note_client(&entry, clients);
            if !filter.accepts(&entry, clients) {
                continue;
            }
            if !print(&entry, format, shown, args.limit)? {
                return Ok(());
            }
            if args.to == Some(entry.lsn) {
                return Ok(());
            }
        }
    }
}

/// Remembers a connection's client address (for `--client` while following).
fn note_client(entry: &Entry, clients: &mut HashMap<ConnId, String>) {
    if let replaymig_journal::Record::Opened { client_addr, .. } = &entry.record {
        clients.insert(entry.lsn, client_addr.clone());
    }
}

/// Prints one record; false once `--limit` is reached or the reader left.
fn print(entry: &Entry, format: Format, shown: &mut usize, limit: Option<usize>) -> Result<bool> {
    if limit.is_some_and(|limit| *shown >= limit) {
        return Ok(false);
    }
    *shown += 1;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(dump::render(entry, format).as_bytes())
        .and_then(|_| out.flush());
    match written {
        Ok(()) => Ok(limit.is_none_or(|limit| *shown < limit)),
        // A reader that stopped (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn filter(args: &DumpArgs) -> Filter {
    Filter {
        since_us: args.since,
        until_us: args.until,
        conns: args.conns.iter().copied().collect(),
        clients: args.clients.clone(),
        kinds: args.kinds.iter().cloned().collect(),
    }
}

fn format(args: &DumpArgs) -> Format {
    match args.format {
        FormatArg::Human => Format::Human,
        FormatArg::Hex => Format::Hex,
        FormatArg::Json => Format::Json,
    }
}

/// The stored range; returns how many records it printed.
fn dump_range(
    journal: &Journal,
    args: &DumpArgs,
    clients: &mut HashMap<ConnId, String>,
) -> Result<usize> {
    let last = journal.last_lsn();
    let to = args.to.unwrap_or(last).min(last);
    if args.follow && args.from > last {
        // Following from beyond the end: nothing stored to print yet.
        return Ok(0);
    }
    dump::check_range(args.from, to, last).map_err(anyhow::Error::msg)?;
    let filter = filter(args);
    // Client addresses live in the `opened` records, which may precede
    // the range.
    if filter.needs_clients() {
        let opened: Vec<_> = journal
            .read_range(1, to)
            .filter(|e| !matches!(e, Ok(e) if e.record.kind_name() != "opened"))
            .collect::<Result<_, _>>()?;
        *clients = dump::client_addresses(&opened);
    }
    let format = format(args);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut shown = 0;
    for entry in journal.read_range(args.from, to) {
        let entry = entry?;
        if !filter.accepts(&entry, clients) {
            continue;
        }
        if args.limit.is_some_and(|limit| shown >= limit) {
            break;
        }
        shown += 1;
        if let Err(e) = out.write_all(dump::render(&entry, format).as_bytes()) {
            // A reader that stopped (`| head`) is not an error.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(shown);
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(shown),
    }
}

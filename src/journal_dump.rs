//! `replaymig journal dump`: see [`DumpArgs`] (the logic is in
//! `replaymig_journal::dump`).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use replaymig_journal::dump::{self, Filter, Format};
use replaymig_journal::{Durability, Journal, JournalOptions, Lsn, OpenMode};
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
    /// Only this record kind (opened, data, half_closed, closed, marker); repeatable.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Output: one line per record with a preview, a full hexdump, or JSON lines.
    #[arg(long, value_enum, default_value_t = FormatArg::Human)]
    format: FormatArg,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<usize>,
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

const KINDS: [&str; 5] = ["opened", "data", "half_closed", "closed", "marker"];

/// Runs `replaymig journal dump`: never writes to the journal.
pub async fn run(args: DumpArgs) -> Result<()> {
    if let Some(bad) = args.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        anyhow::bail!("unknown record kind {bad:?} (one of {})", KINDS.join(", "));
    }
    let journal = Journal::open(
        &args.journal,
        JournalOptions {
            durability: Durability::None,
            mode: OpenMode::MustExist,
        },
    )
    .with_context(|| format!("cannot open journal {}", args.journal.display()))?;
    let outcome = dump_range(&journal, &args);
    journal.close().await?;
    outcome
}

fn dump_range(journal: &Journal, args: &DumpArgs) -> Result<()> {
    let last = journal.last_lsn();
    let to = args.to.unwrap_or(last).min(last);
    dump::check_range(args.from, to, last).map_err(anyhow::Error::msg)?;
    let filter = Filter {
        since_us: args.since,
        until_us: args.until,
        conns: args.conns.iter().copied().collect(),
        clients: args.clients.clone(),
        kinds: args.kinds.iter().cloned().collect(),
    };
    // Client addresses live in the `opened` records, which may precede
    // the range.
    let mut clients = Default::default();
    if filter.needs_clients() {
        let opened: Vec<_> = journal
            .read_range(1, to)
            .filter(|e| !matches!(e, Ok(e) if e.record.kind_name() != "opened"))
            .collect::<Result<_, _>>()?;
        clients = dump::client_addresses(&opened);
    }
    let format = match args.format {
        FormatArg::Human => Format::Human,
        FormatArg::Hex => Format::Hex,
        FormatArg::Json => Format::Json,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut shown = 0;
    for entry in journal.read_range(args.from, to) {
        let entry = entry?;
        if !filter.accepts(&entry, &clients) {
            continue;
        }
        if args.limit.is_some_and(|limit| shown >= limit) {
            break;
        }
        shown += 1;
        if let Err(e) = out.write_all(dump::render(&entry, format).as_bytes()) {
            // A reader that stopped (`| head`) is not an error.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

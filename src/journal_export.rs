//! `replaymig journal export`: see [`ExportArgs`] (the logic is in
//! `replaymig_journal_inspect::pcap`).

use anyhow::{Context, Result};
use clap::Args;
use replaymig_journal::{Durability, Journal, JournalOptions, Lsn, OpenMode, Record};
use replaymig_journal_inspect::dump;
use replaymig_journal_inspect::pcap::{ExportOptions, PcapExporter};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;

/// Options of `replaymig journal export`: writes the journaled
/// conversations as a pcap capture for Wireshark/tshark.
///
/// One IPv4/TCP stream per journaled connection (handshake at its `opened`
/// time, the client's bytes at their read times, FIN on half-close/close).
/// Only client→service bytes are in the journal: the service's answers are
/// not journaled (only their byte counts), so the capture carries no
/// service→client payload, just the service's ACKs and FIN.
#[derive(Args)]
#[command(
    after_help = "Answers are not journaled (only their byte counts): the capture has no \
service->client payload, only the client's bytes, the service's ACKs and FINs. Sequence numbers \
are synthetic; checksums are valid. Connections opened before --from start at their first \
exported record."
)]
pub struct ExportArgs {
    /// Journal directory (opened read-only in effect: nothing is written).
    #[arg(long)]
    journal: PathBuf,
    /// The pcap file to write (replaced if it exists).
    #[arg(long)]
    pcap: PathBuf,
    /// First LSN.
    #[arg(long, default_value_t = 1)]
    from: Lsn,
    /// Last LSN (default: the journal's last).
    #[arg(long)]
    to: Option<Lsn>,
    /// Only this connection (its id = the LSN of its `opened` record); repeatable.
    #[arg(long = "conn")]
    conns: Vec<u64>,
    /// The service's address in the capture (IPv4 ip:port; the journal does
    /// not record where the proxy forwarded to).
    #[arg(long, default_value = "127.0.0.1:6379")]
    service: SocketAddr,
}

/// Runs `replaymig journal export`: never writes to the journal; on an
/// error the partial capture is removed.
pub async fn run(args: ExportArgs) -> Result<()> {
    let SocketAddr::V4(service) = args.service else {
        anyhow::bail!(
            "--service {}: IPv6 is not supported, give an IPv4 ip:port",
            args.service
        );
    };
    let journal = Journal::open(
        &args.journal,
        JournalOptions {
            durability: Durability::None,
            mode: OpenMode::MustExist,
            ..JournalOptions::default()
        },
    )
    .with_context(|| format!("cannot open journal {}", args.journal.display()))?;
    let outcome = export(&journal, &args, service);
    journal.close().await?;
    let stats = outcome?;
    eprintln!(
        "exported {} connections, {} packets, {} client bytes to {}",
        stats.streams,
        stats.packets,
        stats.payload_bytes,
        args.pcap.display()
    );
    Ok(())
}

fn export(
    journal: &Journal,
    args: &ExportArgs,
    service: SocketAddrV4,
) -> Result<replaymig_journal_inspect::pcap::ExportStats> {
    let last = journal.last_lsn();
    let to = args.to.unwrap_or(last).min(last);
    dump::check_range(args.from, to, last).map_err(anyhow::Error::msg)?;
    let file = std::fs::File::create(&args.pcap)
        .with_context(|| format!("cannot create {}", args.pcap.display()))?;
    let written = write_capture(journal, args, service, to, std::io::BufWriter::new(file));
    if written.is_err() {
        let _ = std::fs::remove_file(&args.pcap);
    }
    written
}

fn write_capture(
    journal: &Journal,
    args: &ExportArgs,
    service: SocketAddrV4,
    to: Lsn,
    out: std::io::BufWriter<std::fs::File>,
) -> Result<replaymig_journal_inspect::pcap::ExportStats> {
    let options = ExportOptions {
        service,
        conns: args.conns.iter().copied().collect(),
    };
    let mut exporter = PcapExporter::new(out, options)?;
    // Connections opened before the range keep their recorded address.
    if args.from > 1 {
        for entry in journal.read_range(1, args.from - 1) {
            let entry = entry?;
            if let Record::Opened { client_addr, .. } = entry.record {
                // A connection's id is the LSN of its `opened` record.
                exporter.know_client(entry.lsn, client_addr);
            }
        }
    }
    for entry in journal.read_range(args.from, to) {
        exporter.push(&entry?)?;
    }
    let (out, stats) = exporter.finish()?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", args.pcap.display()))?;
    Ok(stats)
}

//! Journal append throughput against the floor it is built on: a raw file
//! written with one `fdatasync` per group of the same size. Used by
//! tools/bench-proxy.sh; prints a Markdown table.

use bytes::Bytes;
use clap::Parser;
use replaymig_journal::{Durability, Journal, JournalOptions, OpenMode, Record};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Scratch directory (created, then removed).
    #[arg(long)]
    dir: PathBuf,
    /// Concurrent appenders (like proxy connections).
    #[arg(long, default_value_t = 50)]
    appenders: usize,
    /// Bytes of client data per record.
    #[arg(long, default_value_t = 64)]
    record_bytes: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).unwrap();
    println!("| writer | records/s | MB/s | mean group size |");
    println!("|---|---|---|---|");
    let mut group_of = std::collections::HashMap::new();
    for durability in [Durability::None, Durability::Batch, Durability::Sync] {
        let (rate, groups) = journal_rate(&args, durability).await;
        group_of.insert(
            durability,
            (rate / groups.max(1.0)).round().max(1.0) as usize,
        );
        let mb = rate * args.record_bytes as f64 / 1e6;
        println!(
            "| journal ({durability}) | {rate:.0} | {mb:.1} | {:.1} |",
            rate / groups.max(1.0)
        );
    }
    // The floors: the same group sizes written to a plain file, with the
    // same per-group promise as `batch` (a write) and `sync` (+ fdatasync).
    for (durability, sync, what) in [
        (Durability::Batch, false, "write"),
        (Durability::Sync, true, "write + fdatasync"),
    ] {
        let group = group_of[&durability];
        let rate = raw_file_rate(&args, group, sync);
        let mb = rate * args.record_bytes as f64 / 1e6;
        println!("| raw file, {what} per group of {group} | {rate:.0} | {mb:.1} | {group} |");
    }
    std::fs::remove_dir_all(&args.dir).unwrap();
}

/// Records/s and groups/s: `appenders` tasks append as fast as acks return.
async fn journal_rate(args: &Args, durability: Durability) -> (f64, f64) {
    let dir = args.dir.join(format!("journal-{durability}"));
    let journal = Journal::open(
        &dir,
        JournalOptions {
            durability,
            mode: OpenMode::CreateIfMissing,
            ..JournalOptions::default()
        },
    )
    .unwrap();
    let payload = Bytes::from(vec![b'x'; args.record_bytes]);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.appenders as u64)
        .map(|conn| {
            let (journal, payload) = (journal.clone(), payload.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    journal
                        .append(Record::data(conn, n, n, payload.clone()))
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    journal.close().await.unwrap();
    let groups = journal.group_commits();
    (total as f64 / secs, groups as f64 / secs)
}

/// Records/s for a plain file: write `group` records (fdatasync if `sync`), repeat.
fn raw_file_rate(args: &Args, group: usize, sync: bool) -> f64 {
    let path = args.dir.join("raw.log");
    let mut file = std::fs::File::create(&path).unwrap();
    let record = vec![b'x'; args.record_bytes + 40];
    let mut buf = Vec::with_capacity(record.len() * group);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut total = 0u64;
    while Instant::now() < deadline {
        buf.clear();
        for _ in 0..group {
            buf.extend_from_slice(&record);
        }
        file.write_all(&buf).unwrap();
        if sync {
            file.sync_data().unwrap();
        }
        total += group as u64;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

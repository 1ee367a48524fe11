//! `replaymig-chaos`: the reliability campaigns (see `replaymig_chaos`),
//! for tests (`--quick`) and operators (the full counts). Prints a Markdown
//! table; `--report FILE` also writes it there; exits non-zero if any
//! campaign lost data or failed a run.

use anyhow::Result;
use clap::Parser;
use replaymig_chaos::{connections, crash_loop, disk_full, migrations, table, Row, Target};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "replaymig-chaos", about = "Reliability campaigns with counts")]
struct Args {
    /// The short versions (CI): 5 crash-loop runs, 3 runs of each faulted
    /// migration, 2 disk-full cycles, 5,000 connections for 5 s.
    #[arg(long)]
    quick: bool,
    /// Runs of each faulted migration (default 50; 3 with --quick).
    #[arg(long)]
    migration_runs: Option<u64>,
    /// Only these faulted migrations (kill-destination, cut-link,
    /// corrupt-stream, divergent-replay, restart-source; default all).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Only these campaigns (crash-loop, migrations, disk-full,
    /// connections; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Crash-loop runs (default 100; 5 with --quick).
    #[arg(long)]
    crash_runs: Option<u64>,
    /// Disk-full fill / free cycles (default 20; 2 with --quick). Needs
    /// root (each mounts a small tmpfs); skipped with a note otherwise.
    #[arg(long)]
    disk_full_runs: Option<u64>,
    /// Concurrent connections of the connection load (default 5000).
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Seconds the connection load works after its warm-up (default 180, long enough to see sled's page cache reach its cap; 5 with --quick).
    #[arg(long)]
    connection_seconds: Option<u64>,
    /// Random seed of the crash moments.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The `replaymig` binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    let bin = match args.bin {
        Some(bin) => bin,
        None => std::env::current_exe()?.with_file_name("replaymig"),
    };
    let target = Target { bin };
    let crash = crash_loop::CrashLoop {
        runs: args.crash_runs.unwrap_or(if args.quick { 5 } else { 100 }),
        seed: args.seed,
        ..Default::default()
    };
    let load = connections::ConnectionLoad {
        count: args.connections,
        seconds: args
            .connection_seconds
            .unwrap_or(if args.quick { 5 } else { 180 }),
    };
    let faulted = migrations::FaultedMigrations {
        runs: args
            .migration_runs
            .unwrap_or(if args.quick { 3 } else { 50 }),
        only: args.faults.clone(),
        ..Default::default()
    };
    let disk = disk_full::DiskFull {
        runs: args
            .disk_full_runs
            .unwrap_or(if args.quick { 2 } else { 20 }),
        ..Default::default()
    };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    if wanted("crash-loop") {
        eprintln!("crash loop: {} runs ...", crash.runs);
        rows.push(crash_loop::run(&target, &crash)?);
    }
    if wanted("migrations") {
        eprintln!(
            "faulted migrations: {} runs of each fault ...",
            faulted.runs
        );
        rows.extend(migrations::run(&target, &faulted)?);
    }
    if wanted("disk-full") {
        eprintln!("disk full: {} fill / free cycles ...", disk.runs);
        rows.push(disk_full::run(&target, &disk)?);
    }
    if wanted("connections") {
        eprintln!(
            "connection load: {} clients for {} s ...",
            load.count, load.seconds
        );
        rows.push(connections::run(&target, &load)?);
    }
    let report = format!(
        "{}\n{} campaigns in {:.0} s ({}).\n",
        table(&rows),
        rows.len(),
        started.elapsed().as_secs_f64(),
        if args.quick { "--quick" } else { "full counts" }
    );
    print!("{report}");
    if let Some(path) = args.report {
        std::fs::write(&path, &report)?;
    }
    Ok(rows.iter().all(Row::ok))
}

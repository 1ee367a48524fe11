//! `replaymig-chaos`: the reliability campaigns (see `replaymig_chaos`),
//! for CI (`--quick`) and operators (the full counts). Prints a Markdown
//! table; `--report FILE` also writes it there; exits non-zero if any
//! campaign lost data or failed a run. Only option parsing lives here:
//! what runs is `replaymig_chaos::campaigns`, which `tests/chaos_quick.rs`
//! calls directly.

use anyhow::Result;
use clap::Parser;
use replaymig_chaos::campaigns::{self, Campaigns};
use replaymig_chaos::Target;
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
    /// connections, fleet; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs of each fleet scenario on a real 3-member etcd (default 20;
    /// none with --quick, where tests/fleet.rs runs each once).
    #[arg(long)]
    fleet_runs: Option<u64>,
    /// Only these fleet scenarios (moves, shared-keys, churn, member-killed,
    /// no-quorum, quorum-lost, answer-lost, never-sent, source-dies,
    /// destination-dies, stale-owner, old-owner-dies; default all).
    #[arg(long, value_delimiter = ',')]
    fleet_scenarios: Vec<String>,
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
    let mut campaigns = Campaigns::sized(args.quick);
    campaigns.only = args.only;
    if let Some(runs) = args.crash_runs {
        campaigns.crash.runs = runs;
    }
    campaigns.crash.seed = args.seed;
    campaigns.load.count = args.connections;
    if let Some(seconds) = args.connection_seconds {
        campaigns.load.seconds = seconds;
    }
    if let Some(runs) = args.migration_runs {
        campaigns.faulted.runs = runs;
    }
    campaigns.faulted.only = args.faults;
    if let Some(runs) = args.fleet_runs {
        campaigns.fleet.runs = runs;
    }
    campaigns.fleet.only = args.fleet_scenarios;
    if let Some(runs) = args.disk_full_runs {
        campaigns.disk.runs = runs;
    }
    let report = campaigns::run(&Target { bin }, &campaigns)?;
    print!("{}", report.text);
    if let Some(path) = args.report {
        std::fs::write(&path, &report.text)?;
    }
    Ok(report.ok())
}

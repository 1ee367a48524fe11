//! The campaign set `replaymig-chaos` runs, sized for CI (`--quick`) or
//! for the report (the full counts), and the report it prints. A library
//! function rather than the binary's `main`, so that a test of the product
//! can run exactly what the binary runs without having to find the
//! `replaymig-chaos` executable (Cargo only tells a package's own tests
//! where its binaries are).

use crate::{connections, crash_loop, disk_full, fleet, migrations, table, Row, Target};
use anyhow::Result;
use std::time::Instant;

/// Which campaigns run and how big each is.
#[derive(Debug, Clone)]
pub struct Campaigns {
    /// Sized for CI (said in the report's last line).
    pub quick: bool,
    /// Only these campaigns (`crash-loop`, `migrations`, `disk-full`,
    /// `connections`, `fleet`); empty: all of them.
    pub only: Vec<String>,
    /// The proxy kill -9 / restart loop.
    pub crash: crash_loop::CrashLoop,
    /// The faulted migrations.
    pub faulted: migrations::FaultedMigrations,
    /// The disk-full fill / free cycles.
    pub disk: disk_full::DiskFull,
    /// The concurrent connection load.
    pub load: connections::ConnectionLoad,
    /// Fleet mode's faults (none in `--quick`: `tests/fleet.rs` runs each
    /// scenario once in CI).
    pub fleet: fleet::FleetFaults,
}

impl Campaigns {
    /// Every campaign, at the CI sizes (`quick`: 5 crash-loop runs, 3 runs
    /// of each faulted migration, 2 disk-full cycles, 5,000 connections
    /// for 5 s) or at the report's full counts (100, 50, 20, 5,000 for
    /// 180 s); the binary's options adjust them from there.
    pub fn sized(quick: bool) -> Campaigns {
        let pick = |quick_size, full_size| if quick { quick_size } else { full_size };
        Campaigns {
            quick,
            only: Vec::new(),
            crash: crash_loop::CrashLoop {
                runs: pick(5, 100),
                ..Default::default()
            },
            faulted: migrations::FaultedMigrations {
                runs: pick(3, 50),
                ..Default::default()
            },
            disk: disk_full::DiskFull {
                runs: pick(2, 20),
                ..Default::default()
            },
            load: connections::ConnectionLoad {
                seconds: pick(5, 180),
                ..Default::default()
            },
            fleet: fleet::FleetFaults {
                runs: pick(0, 20),
                ..Default::default()
            },
        }
    }

    fn wanted(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// What a set of campaigns found: one row per campaign, and the Markdown
/// report the binary prints.
#[derive(Debug, Clone)]
pub struct Report {
    /// The campaigns' rows, in the order they ran.
    pub rows: Vec<Row>,
    /// The table, the failure reasons and a closing line with the count
    /// and the time taken.
    pub text: String,
}

impl Report {
    /// Whether every campaign held (no lost data, no failed run).
    pub fn ok(&self) -> bool {
        self.rows.iter().all(Row::ok)
    }
}

/// Runs the wanted campaigns against `target`, in a fixed order (crash
/// loop, faulted migrations, disk full, connection load, fleet), with a progress
/// line on stderr before each. An error is a campaign that could not run
/// at all; failed checks are in the rows.
pub fn run(target: &Target, campaigns: &Campaigns) -> Result<Report> {
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    if campaigns.wanted("crash-loop") {
        eprintln!("crash loop: {} runs ...", campaigns.crash.runs);
        rows.push(crash_loop::run(target, &campaigns.crash)?);
    }
    if campaigns.wanted("migrations") {
        eprintln!(
            "faulted migrations: {} runs of each fault ...",
            campaigns.faulted.runs
        );
        rows.extend(migrations::run(target, &campaigns.faulted)?);
    }
    if campaigns.wanted("disk-full") {
        eprintln!("disk full: {} fill / free cycles ...", campaigns.disk.runs);
        rows.push(disk_full::run(target, &campaigns.disk)?);
    }
    if campaigns.wanted("connections") {
        eprintln!(
            "connection load: {} clients for {} s ...",
            campaigns.load.count, campaigns.load.seconds
        );
        rows.push(connections::run(target, &campaigns.load)?);
    }
    if campaigns.wanted("fleet") && campaigns.fleet.runs > 0 {
        eprintln!(
            "fleet faults: {} runs of each scenario ...",
            campaigns.fleet.runs
        );
        rows.extend(fleet::run(target, &campaigns.fleet)?);
    }
    let text = format!(
        "{}\n{} campaigns in {:.0} s ({}).\n",
        table(&rows),
        rows.len(),
        started.elapsed().as_secs_f64(),
        if campaigns.quick {
            "--quick"
        } else {
            "full counts"
        }
    );
    Ok(Report { rows, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_and_full_sizes_are_the_documented_ones() {
        let quick = Campaigns::sized(true);
        assert_eq!(
            (
                quick.crash.runs,
                quick.faulted.runs,
                quick.disk.runs,
                quick.load.count,
                quick.load.seconds
            ),
            (5, 3, 2, 5000, 5)
        );
        let full = Campaigns::sized(false);
        assert_eq!(
            (
                full.crash.runs,
                full.faulted.runs,
                full.disk.runs,
                full.load.count,
                full.load.seconds
            ),
            (100, 50, 20, 5000, 180)
        );
        assert_eq!(full.crash.seed, 1);
        assert_eq!((quick.fleet.runs, full.fleet.runs), (0, 20));
        assert!(quick.wanted("disk-full"), "empty only: every campaign");
        let only = Campaigns {
            only: vec!["connections".into()],
            ..quick
        };
        assert!(only.wanted("connections") && !only.wanted("crash-loop"));
    }

    #[test]
    fn nothing_wanted_reports_no_campaign_and_holds() {
        let mut none = Campaigns::sized(true);
        none.only = vec!["no-such-campaign".into()];
        let target = Target {
            bin: "/nonexistent/replaymig".into(),
        };
        let report = run(&target, &none).unwrap();
        assert!(report.rows.is_empty());
        assert!(report.ok());
        assert!(
            report.text.ends_with("\n0 campaigns in 0 s (--quick).\n"),
            "{}",
            report.text
        );
    }
}

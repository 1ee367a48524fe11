//! Reliability campaigns for replaymig, with counts: the single fault tests
//! of the earlier issues turned into repeatable runs that check the data
//! every time and print a table (`replaymig-chaos`, `tools/chaos.sh`).
//!
//! Each campaign starts the real `replaymig` binary and real redis-servers
//! on loopback, bounds every loop in count and time, stops what it started
//! by PID (guards, also on failure) and returns one [`Row`].

pub mod campaigns;
pub mod connections;
pub mod crash_loop;
pub mod disk_full;
pub mod fleet;
pub mod migrations;
mod rss;

use anyhow::{bail, Context, Result};
use replaymig_testkit::{wait_for_listen_by, ChildGuard};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where the binary under test is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `replaymig` binary.
    pub bin: PathBuf,
}

/// Starts `BIN node --config CONFIG` with `env` (log in `DIR/NAME.log`)
/// and waits for its admin port.
pub(crate) fn start_node(
    bin: &Path,
    dir: &Path,
    name: &str,
    config: &Path,
    admin: u16,
    env: &[(&str, &str)],
) -> Result<ChildGuard> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .args(["node", "--config"])
        .arg(config)
        .env("REPLAYMIG_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let guard = ChildGuard::new(format!("node {name}"), child);
    if let Err(e) = wait_for_listen_by(guard.pid(), admin, Duration::from_secs(30)) {
        let last = log_tail(dir, name, 1);
        bail!("node {name} did not start: {e:#}; its log ends: {last}");
    }
    Ok(guard)
}

/// The last `lines` lines of node `name`'s log in `dir` (as
/// [`start_node`] writes it), for a failure message.
pub(crate) fn log_tail(dir: &Path, name: &str, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    match all.len() {
        0 => "(its log is empty)".to_string(),
        n => all[n.saturating_sub(lines)..].join("\n"),
    }
}

/// One campaign's outcome, as a line of the report table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Campaign name.
    pub campaign: String,
    /// Runs done.
    pub runs: u64,
    /// Runs whose checks failed.
    pub failures: u64,
    /// What was checked, in words with counts.
    pub checked: String,
    /// Acknowledged or executed writes missing where they must be (must be 0).
    pub lost: u64,
    /// Other facts (RSS, peak connections, ...).
    pub notes: String,
    /// The first few failure reasons.
    pub reasons: Vec<String>,
}

impl Row {
    /// Records a failed run (keeps the first few reasons).
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.failures += 1;
        if self.reasons.len() < 5 {
            self.reasons.push(reason.into());
        }
    }

    /// Whether the campaign held.
    pub fn ok(&self) -> bool {
        self.failures == 0 && self.lost == 0
    }
}

/// The write-ahead invariant on one INCR key: every acknowledged INCR
/// was executed and every executed one is in the journal (acked ≤
/// executed ≤ journaled); what is missing counts as lost.
pub(crate) fn check_incrs(
    row: &mut Row,
    run: u64,
    key: &str,
    acked: i64,
    executed: i64,
    journaled: i64,
) {
    if acked > executed {
        row.lost += (acked - executed) as u64;
        row.fail(format!(
            "run {run}: {key}: {acked} acked, {executed} executed"
        ));
    }
    if executed > journaled {
        row.lost += (executed - journaled) as u64;
        row.fail(format!(
            "run {run}: {key}: redis executed {executed}, the journal holds {journaled}"
        ));
    }
}

/// The rows as a Markdown table (and the failure reasons under it).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| campaign | runs | failures | data checked | lost writes | notes |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.campaign, r.runs, r.failures, r.checked, r.lost, r.notes
        );
    }
    for r in rows {
        for reason in &r.reasons {
            let _ = writeln!(out, "\n- {}: {reason}", r.campaign);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_line_per_campaign_and_lists_failures() {
        let mut bad = Row {
            campaign: "crash loop".into(),
            runs: 3,
            ..Default::default()
        };
        bad.fail("run 2: LSN gap at 17");
        assert!(!bad.ok());
        let good = Row {
            campaign: "connections".into(),
            runs: 1,
            checked: "5000 connections".into(),
            ..Default::default()
        };
        assert!(good.ok());
        let t = table(&[bad, good]);
        assert!(t.contains("| crash loop | 3 | 1 |"), "{t}");
        assert!(
            t.contains("| connections | 1 | 0 | 5000 connections |"),
            "{t}"
        );
        assert!(t.contains("- crash loop: run 2: LSN gap at 17"), "{t}");
    }
}

//! `results.md`: medians, ratios, target checks and every run, as Markdown.
//!
//! The text is generated from the numbers only (no prose about causes), so the
//! file can be regenerated after every experiment and committed as is.

use std::fmt::Write as _;

use crate::data::{Method, Run};
use crate::stats::{fmt_rate, Check, Outcome, Spread, Summary, Target, PHASES};

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

fn med(s: Option<Spread>) -> Option<f64> {
    s.map(|s| s.median)
}

/// Renders the whole `results.md`; `source` is the CSV's name as it should
/// appear in the text (a file name, so the output does not depend on where
/// the experiment ran).
pub fn render_markdown(source: &str, runs: &[Run], summary: &Summary, checks: &[Check]) -> String {
    let mut md = String::new();
    let ok = runs.iter().filter(|r| r.ok).count();
    let _ = writeln!(md, "# Migration experiment results\n");
    let _ = writeln!(
        md,
        "Source: `{source}` — {} runs, {ok} ok, {} failed. Every figure below is the \
         median over the ok runs of a condition; failed runs are listed under \
         \"All runs\" and enter no median. MB = 10^6 bytes over the link \
         (snapshot + log + control).\n",
        runs.len(),
        runs.len() - ok
    );

    let _ = writeln!(md, "## Medians\n");
    let _ = writeln!(
        md,
        "| workload | method | rate (Mbit/s) | ok runs | total (s) | interruption (ms) | jitter (s) | MB over the link | iterations |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for g in &summary.groups {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            g.workload,
            g.method,
            fmt_rate(g.rate_mbit),
            g.ok_runs,
            g.runs,
            num(med(g.total_s), 3),
            num(med(g.interruption_s).map(|v| v * 1e3), 1),
            num(med(g.jitter_s), 3),
            num(med(g.link_bytes).map(|b| b / 1e6), 3),
            num(med(g.iterations), 1),
        );
    }

    let _ = writeln!(md, "\n## Replay / iterative\n");
    let _ = writeln!(
        md,
        "Ratio of the replay median to the iterative median at each rate (below 1: replay is shorter).\n"
    );
    let _ = writeln!(
        md,
        "| workload | rate (Mbit/s) | total ratio | interruption ratio |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for w in &summary.workloads {
        for rate in summary.rates_of(w) {
            let (t, i) = summary.ratios(w, rate);
            let _ = writeln!(
                md,
                "| {w} | {} | {} | {} |",
                fmt_rate(rate),
                num(t, 3),
                num(i, 4)
            );
        }
    }

    md.push_str(&link_table(summary));

    let _ = writeln!(md, "\n## Phases\n");
    let _ = writeln!(
        md,
        "Median seconds per phase (Fig. 5 plots each as a share of the median total).\n"
    );
    let mut head = String::from("| workload | method | rate (Mbit/s) |");
    let mut rule = String::from("|---|---|---:|");
    for (name, _) in PHASES {
        let _ = write!(head, " {name} (s) |");
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for g in &summary.groups {
        let _ = write!(
            md,
            "| {} | {} | {} |",
            g.workload,
            g.method,
            fmt_rate(g.rate_mbit)
        );
        for (_, get) in PHASES {
            let _ = write!(md, " {} |", num(med(get(g)), 3));
        }
        md.push('\n');
    }

    render_targets(&mut md, checks);
    render_runs(&mut md, runs);
    md
}

fn render_targets(md: &mut String, checks: &[Check]) {
    let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(
        md,
        "Checked per workload and rate on medians of ok runs: {}, {} and {}. \
         {} met, {} missed, {} without data (of {}).\n",
        Target::TotalVsIterative.rule(),
        Target::Interruption.rule(),
        Target::LinkBound.rule(),
        count(Outcome::Met),
        count(Outcome::Missed),
        count(Outcome::NoData),
        checks.len()
    );
    let _ = writeln!(
        md,
        "| workload | rate (Mbit/s) | target | figures | result |"
    );
    let _ = writeln!(md, "|---|---:|---|---|---|");
    for c in checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | **{}** |",
            c.workload,
            fmt_rate(c.rate_mbit),
            c.target.rule(),
            c.working,
            c.outcome.as_str()
        );
    }
}

fn render_runs(md: &mut String, runs: &[Run]) {
    let _ = writeln!(md, "\n## All runs\n");
    let _ = writeln!(
        md,
        "| line | workload | method | rate (Mbit/s) | run | ok | total (s) | interruption (ms) | jitter (s) | MB over the link | iterations |"
    );
    let _ = writeln!(md, "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|");
    let mut sorted: Vec<&Run> = runs.iter().collect();
    // Same order as the medians table: workload (first appearance), method, rate (first appearance), run.
    let pos = |v: &[String], w: &str| v.iter().position(|x| x == w).unwrap_or(usize::MAX);
    let mut workloads: Vec<String> = Vec::new();
    let mut rates: Vec<f64> = Vec::new();
    for r in runs {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload.clone());
        }
        if !rates.contains(&r.rate_mbit) {
            rates.push(r.rate_mbit);
        }
    }
    let rate_pos = |x: f64| rates.iter().position(|&r| r == x).unwrap_or(usize::MAX);
    sorted.sort_by_key(|r| {
        (
            pos(&workloads, &r.workload),
            r.method != Method::Replay,
            rate_pos(r.rate_mbit),
            r.run,
        )
    });
    for r in sorted {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.line,
            r.workload,
            r.method,
            fmt_rate(r.rate_mbit),
            r.run,
            if r.ok { "yes" } else { "**no**" },
            num(r.total_s, 3),
            num(r.interruption_s.map(|v| v * 1e3), 1),
            num(r.jitter_s, 3),
            num(r.link_bytes().map(|b| b as f64 / 1e6), 3),
            r.iterations.map_or_else(|| "–".into(), |i| i.to_string()),
        );
    }
}

/// Shorthand used by tests and the binary: a one-line tally of the target
/// checks (`met/missed/no data`).
/// P3 per workload, rate and method: median total ÷ (median link bytes ÷
/// rate + median restore), as a Markdown table (results.md, and printed by
/// `replaymig-bench-report`).
pub fn link_table(summary: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "\n## Total ÷ (bytes on the link ÷ rate + restore)\n");
    let _ = writeln!(
        md,
        "P3 of issue #16 (target ≤ 1.15 at every rate): 1.00 would be a migration that took only what moving its bytes over the link and restoring take.\n"
    );
    let _ = writeln!(md, "| workload | method | rate (Mbit/s) | P3 |");
    let _ = writeln!(md, "|---|---|---:|---:|");
    for g in &summary.groups {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            g.workload,
            g.method,
            fmt_rate(g.rate_mbit),
            num(g.link_ratio(), 2)
        );
    }
    md
}

/// "N met, M missed, K without data" over `checks`.
pub fn tally(checks: &[Check]) -> String {
    let count = |o: Outcome| checks.iter().filter(|c| c.outcome == o).count();
    format!(
        "{} met, {} missed, {} without data",
        count(Outcome::Met),
        count(Outcome::Missed),
        count(Outcome::NoData)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_csv;
    use crate::stats::check_targets;

    const FIXTURE: &str = "\
method,workload,rate_mbit,run,ok,total_s,interruption_s,jitter_s,snapshot_bytes,log_bytes,control_bytes,iterations,dump_s,transfer_s,restore_s,replay_s,handover_s
replay,redis,100,1,true,1.0,0.010,0.9,10000000,500000,0,0,0.1,0.8,0.05,0.02,0.01
replay,redis,100,2,false,,,,,,,,,,,,
iterative,redis,100,1,true,10.0,2.0,8.0,50000000,0,0,3,2.0,6.0,1.0,0,0.01
";

    #[test]
    fn markdown_has_rows_ratios_targets_and_failed_runs() {
        let runs = parse_csv(FIXTURE.as_bytes()).unwrap();
        let summary = Summary::from_runs(&runs);
        let checks = check_targets(&summary);
        let md = render_markdown("fixture.csv", &runs, &summary, &checks);
        assert!(
            md.contains("| redis | replay | 100 | 1/2 | 1.000 | 10.0 | 0.900 | 10.500 | 0.0 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| redis | iterative | 100 | 1/1 | 10.000 | 2000.0 | 8.000 | 50.000 | 3.0 |"
            ),
            "{md}"
        );
        assert!(md.contains("| redis | 100 | 0.100 | 0.0050 |"), "{md}");
        assert!(md.contains("## Targets"));
        assert!(md.contains("| redis | 100 | replay interruption ≤ 50 ms | replay 10.0 ms vs 50.0 ms | **met** |"), "{md}");
        // 10.5 MB at 100 Mbit/s = 0.84 s; 1.15 × 0.84 + 0.05 = 1.016 ≥ 1.0
        assert!(md.contains("= 1.016 s | **met** |"), "{md}");
        assert!(
            md.contains("| 3 | redis | replay | 100 | 2 | **no** | – |"),
            "{md}"
        );
        assert_eq!(tally(&checks), "3 met, 0 missed, 0 without data");
        // P3: 1.0 s ÷ (0.84 s + 0.05 s) = 1.12; iterative: 10 ÷ (4 + 1) = 2.00.
        assert!(md.contains("| redis | replay | 100 | 1.12 |"), "{md}");
        assert!(md.contains("| redis | iterative | 100 | 2.00 |"), "{md}");
        assert_eq!(
            link_table(&summary)
                .lines()
                .filter(|l| l.starts_with("| redis"))
                .count(),
            2
        );
    }
}

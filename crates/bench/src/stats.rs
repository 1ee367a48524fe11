//! Aggregation of runs into per-condition medians, the replay/iterative
//! ratios and the project's target checks.
//!
//! Medians (not means, as the paper used) because three runs on a shared
//! machine can include one outlier; min and max are kept for the error bars.
//! Only successful runs (`ok=true`) enter any statistic.

use crate::data::{Method, Run};

/// Replay's total time must be at most this fraction of iterative's.
pub const TOTAL_RATIO_MAX: f64 = 0.35;
/// Replay's median interruption must be at most this many seconds (50 ms).
pub const INTERRUPTION_MAX_S: f64 = 0.050;
/// Replay's total may exceed the pure transfer time (bytes / rate) by at most
/// this factor, plus the restore time.
pub const LINK_BOUND_FACTOR: f64 = 1.15;

/// Median, minimum and maximum of one measurement over the ok runs of a
/// condition: the point and the error bar of a figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Median of `values`, `None` when empty; split out so it can be tested on
/// its own.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// [`Spread`] of `values`, `None` when empty (a condition with no ok run).
pub fn spread(values: &[f64]) -> Option<Spread> {
    Some(Spread {
        median: median(values)?,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// `numerator / denominator`, `None` if either is missing or the
/// denominator is zero, so a ratio is never printed as `inf`.
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// All runs of one workload × method × rate, aggregated: one table row, one
/// point per figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Workload name.
    pub workload: String,
    /// Migration method.
    pub method: Method,
    /// Link rate, Mbit/s.
    pub rate_mbit: f64,
    /// Number of runs in the CSV, failed ones included.
    pub runs: usize,
    /// Number of ok runs, the ones every statistic below is over.
    pub ok_runs: usize,
    /// Total migration time, seconds.
    pub total_s: Option<Spread>,
    /// Interruption, seconds.
    pub interruption_s: Option<Spread>,
    /// Jitter, seconds.
    pub jitter_s: Option<Spread>,
    /// Bytes over the link (snapshot + log + control).
    pub link_bytes: Option<Spread>,
    /// Pre-copy iterations.
    pub iterations: Option<Spread>,
    /// Dump phase, seconds.
    pub dump_s: Option<Spread>,
    /// Transfer phase, seconds.
    pub transfer_s: Option<Spread>,
    /// Restore phase, seconds.
    pub restore_s: Option<Spread>,
    /// Replay phase, seconds.
    pub replay_s: Option<Spread>,
    /// Hand-over phase, seconds.
    pub handover_s: Option<Spread>,
}

/// Reads one measurement's spread from a group, so tables and figures can
/// iterate over measurements.
pub type Field = fn(&Group) -> Option<Spread>;

/// The phases of Fig. 5, in stacking order, with how to read each from a
/// group; one list so the figure and any table agree.
pub const PHASES: [(&str, Field); 5] = [
    ("dump", |g| g.dump_s),
    ("transfer", |g| g.transfer_s),
    ("restore", |g| g.restore_s),
    ("replay", |g| g.replay_s),
    ("handover", |g| g.handover_s),
];

impl Group {
    fn new(workload: &str, method: Method, rate_mbit: f64, runs: &[&Run]) -> Group {
        let ok: Vec<&Run> = runs.iter().copied().filter(|r| r.ok).collect();
        let s = |get: fn(&Run) -> Option<f64>| {
            spread(&ok.iter().filter_map(|r| get(r)).collect::<Vec<_>>())
        };
        Group {
            workload: workload.to_string(),
            method,
            rate_mbit,
            runs: runs.len(),
            ok_runs: ok.len(),
            total_s: s(|r| r.total_s),
            interruption_s: s(|r| r.interruption_s),
            jitter_s: s(|r| r.jitter_s),
            link_bytes: s(|r| r.link_bytes().map(|b| b as f64)),
            iterations: s(|r| r.iterations.map(f64::from)),
            dump_s: s(|r| r.dump_s),
            transfer_s: s(|r| r.transfer_s),
            restore_s: s(|r| r.restore_s),
            replay_s: s(|r| r.replay_s),
            handover_s: s(|r| r.handover_s),
        }
    }

    /// P3: median total ÷ (median bytes on the link ÷ rate + median
    /// restore) — how close the migration came to what the link alone
    /// forces (issue #16's target: ≤ 1.15 at every rate).
    pub fn link_ratio(&self) -> Option<f64> {
        let total = Group::med(self.total_s)?;
        let wire = Group::med(self.link_bytes)? * 8.0 / (self.rate_mbit * 1e6);
        let bound = wire + Group::med(self.restore_s)?;
        (bound > 0.0).then(|| total / bound)
    }

    /// Median of a spread-valued field, the number tables print.
    pub fn med(field: Option<Spread>) -> Option<f64> {
        field.map(|s| s.median)
    }

    /// Each phase's median as a share of the median total (Fig. 5), plus the
    /// unattributed rest (`other`, never negative); `None` without ok runs.
    /// Phases may overlap, so the shares may add up to more than 1.
    pub fn phase_shares(&self) -> Option<Vec<(&'static str, f64)>> {
        let total = self.total_s?.median;
        if total <= 0.0 {
            return None;
        }
        let mut shares: Vec<(&'static str, f64)> = PHASES
            .iter()
            .map(|(name, get)| (*name, get(self).map_or(0.0, |s| s.median) / total))
            .collect();
        let sum: f64 = shares.iter().map(|(_, v)| v).sum();
        shares.push(("other", (1.0 - sum).max(0.0)));
        Some(shares)
    }

    /// Median interruption and median jitter as shares of the median total
    /// (Fig. 6); `None` without ok runs.
    pub fn interruption_jitter_shares(&self) -> Option<(f64, f64)> {
        let total = self.total_s?.median;
        if total <= 0.0 {
            return None;
        }
        Some((
            self.interruption_s?.median / total,
            self.jitter_s?.median / total,
        ))
    }
}

/// Every group of a CSV, with workloads and rates in the order they first
/// appear (the experiment's order, e.g. 580 → 10 Mbit/s, like the paper).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Workloads in order of first appearance.
    pub workloads: Vec<String>,
    /// Rates (Mbit/s) in order of first appearance.
    pub rates: Vec<f64>,
    /// One group per workload × method × rate present in the CSV, ordered by
    /// workload, method (replay first), rate.
    pub groups: Vec<Group>,
}

impl Summary {
    /// Aggregates `runs`; failed runs are counted but excluded from every
    /// statistic.
    pub fn from_runs(runs: &[Run]) -> Summary {
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
        let mut groups = Vec::new();
        for w in &workloads {
            for m in Method::ALL {
                for &rate in &rates {
                    let members: Vec<&Run> = runs
                        .iter()
                        .filter(|r| &r.workload == w && r.method == m && r.rate_mbit == rate)
                        .collect();
                    if !members.is_empty() {
                        groups.push(Group::new(w, m, rate, &members));
                    }
                }
            }
        }
        Summary {
            workloads,
            rates,
            groups,
        }
    }

    /// The group for one condition, if the CSV has runs for it.
    pub fn group(&self, workload: &str, method: Method, rate_mbit: f64) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.workload == workload && g.method == method && g.rate_mbit == rate_mbit)
    }

    /// Rates that have at least one run for `workload`, in summary order.
    pub fn rates_of(&self, workload: &str) -> Vec<f64> {
        self.rates
            .iter()
            .copied()
            .filter(|&r| {
                self.groups
                    .iter()
                    .any(|g| g.workload == workload && g.rate_mbit == r)
            })
            .collect()
    }

    /// Replay/iterative ratios of median total and median interruption for
    /// one condition, `(total, interruption)`.
    pub fn ratios(&self, workload: &str, rate_mbit: f64) -> (Option<f64>, Option<f64>) {
        let rep = self.group(workload, Method::Replay, rate_mbit);
        let it = self.group(workload, Method::Iterative, rate_mbit);
        let med =
            |g: Option<&Group>, f: fn(&Group) -> Option<Spread>| g.and_then(f).map(|s| s.median);
        (
            ratio(med(rep, |g| g.total_s), med(it, |g| g.total_s)),
            ratio(
                med(rep, |g| g.interruption_s),
                med(it, |g| g.interruption_s),
            ),
        )
    }
}

/// The three targets the project set for replay migration, checked per
/// workload and rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Replay total ≤ 0.35 × iterative total (medians).
    TotalVsIterative,
    /// Replay median interruption ≤ 50 ms.
    Interruption,
    /// Replay total ≤ 1.15 × (bytes over the link / link rate) + restore time
    /// (medians): replay costs little beyond moving its bytes.
    LinkBound,
}

impl Target {
    /// All targets, in report order.
    pub const ALL: [Target; 3] = [
        Target::TotalVsIterative,
        Target::Interruption,
        Target::LinkBound,
    ];

    /// The rule as the report prints it.
    pub fn rule(self) -> &'static str {
        match self {
            Target::TotalVsIterative => "replay total ≤ 0.35 × iterative total",
            Target::Interruption => "replay interruption ≤ 50 ms",
            Target::LinkBound => "replay total ≤ 1.15 × (link bytes ÷ rate) + restore",
        }
    }
}

/// The verdict of one check; `NoData` when a needed median is missing (no
/// ok run), so a missing measurement is never reported as met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The numbers satisfy the target.
    Met,
    /// The numbers do not satisfy the target.
    Missed,
    /// A median the check needs is missing.
    NoData,
}

impl Outcome {
    /// The word the report prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Met => "met",
            Outcome::Missed => "missed",
            Outcome::NoData => "no data",
        }
    }
}

/// One target checked at one workload and rate, with the figures used so the
/// report can show its working.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Workload.
    pub workload: String,
    /// Link rate, Mbit/s.
    pub rate_mbit: f64,
    /// Which target.
    pub target: Target,
    /// The replay-side value compared (seconds).
    pub value: Option<f64>,
    /// The limit it is compared against (seconds).
    pub limit: Option<f64>,
    /// How the limit was computed, in words and numbers.
    pub working: String,
    /// The verdict.
    pub outcome: Outcome,
}

fn verdict(value: Option<f64>, limit: Option<f64>) -> Outcome {
    match (value, limit) {
        (Some(v), Some(l)) if v <= l => Outcome::Met,
        (Some(_), Some(_)) => Outcome::Missed,
        _ => Outcome::NoData,
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3} s"))
}

/// Checks every target at every workload × rate that has replay or
/// iterative runs, from the medians of ok runs.
pub fn check_targets(summary: &Summary) -> Vec<Check> {
    let mut checks = Vec::new();
    for w in &summary.workloads {
        for rate in summary.rates_of(w) {
            let rep = summary.group(w, Method::Replay, rate);
            let it = summary.group(w, Method::Iterative, rate);
            let rep_total = rep.and_then(|g| Group::med(g.total_s));
            for target in Target::ALL {
                let (value, limit, working) = match target {
                    Target::TotalVsIterative => {
                        let it_total = it.and_then(|g| Group::med(g.total_s));
                        let limit = it_total.map(|t| TOTAL_RATIO_MAX * t);
                        (
                            rep_total,
                            limit,
                            format!(
                                "replay {} vs 0.35 × iterative {} = {}",
                                secs(rep_total),
                                secs(it_total),
                                secs(limit)
                            ),
                        )
                    }
                    Target::Interruption => {
                        let v = rep.and_then(|g| Group::med(g.interruption_s));
                        (
                            v,
                            Some(INTERRUPTION_MAX_S),
                            format!(
                                "replay {} vs 50.0 ms",
                                v.map_or_else(|| "n/a".into(), |v| format!("{:.1} ms", v * 1e3))
                            ),
                        )
                    }
                    Target::LinkBound => {
                        let bytes = rep.and_then(|g| Group::med(g.link_bytes));
                        let restore = rep.and_then(|g| Group::med(g.restore_s));
                        let wire = bytes.map(|b| b * 8.0 / (rate * 1e6));
                        let limit = match (wire, restore) {
                            (Some(w), Some(r)) => Some(LINK_BOUND_FACTOR * w + r),
                            _ => None,
                        };
                        (
                            rep_total,
                            limit,
                            format!(
                                "replay {} vs 1.15 × {} ({} MB at {} Mbit/s) + restore {} = {}",
                                secs(rep_total),
                                secs(wire),
                                bytes.map_or_else(|| "n/a".into(), |b| format!("{:.3}", b / 1e6)),
                                fmt_rate(rate),
                                secs(restore),
                                secs(limit)
                            ),
                        )
                    }
                };
                checks.push(Check {
                    workload: w.clone(),
                    rate_mbit: rate,
                    target,
                    value,
                    limit,
                    working,
                    outcome: verdict(value, limit),
                });
            }
        }
    }
    checks
}

/// A rate as people write it: `580`, `0.5` (no trailing `.0`), used in every
/// label so figures and tables match.
pub fn fmt_rate(rate: f64) -> String {
    if rate.fract() == 0.0 && rate.abs() < 1e15 {
        format!("{}", rate as i64)
    } else {
        format!("{rate}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_csv;

    const FIXTURE: &str = "\
method,workload,rate_mbit,run,ok,total_s,interruption_s,jitter_s,snapshot_bytes,log_bytes,control_bytes,iterations,dump_s,transfer_s,restore_s,replay_s,handover_s
replay,redis,100,1,true,2.0,0.010,1.9,10000000,500000,0,0,0.2,1.0,0.3,0.2,0.01
replay,redis,100,2,true,3.0,0.030,2.9,12000000,500000,0,0,0.2,1.2,0.3,0.2,0.01
replay,redis,100,3,false,,,,,,,,,,,,
iterative,redis,100,1,true,10.0,1.0,9.0,50000000,0,0,3,2.0,6.0,1.0,0,0.01
iterative,redis,100,2,true,12.0,3.0,9.0,60000000,0,0,4,2.0,8.0,1.0,0,0.01
iterative,redis,100,3,true,11.0,2.0,9.0,55000000,0,0,3,2.0,7.0,1.0,0,0.01
replay,redis,10,1,true,20.0,0.080,19.0,10000000,5000000,0,0,0.2,12.0,0.3,2.0,0.01
iterative,redis,10,1,true,50.0,10.0,40.0,60000000,0,0,5,2.0,40.0,1.0,0,0.01
";

    fn summary() -> Summary {
        Summary::from_runs(&parse_csv(FIXTURE.as_bytes()).unwrap())
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let s = spread(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
    }

    #[test]
    fn ratio_guards_zero_and_missing() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn groups_keep_order_and_exclude_failed_runs() {
        let s = summary();
        assert_eq!(s.workloads, vec!["redis"]);
        assert_eq!(s.rates, vec![100.0, 10.0]);
        let rep = s.group("redis", Method::Replay, 100.0).unwrap();
        assert_eq!((rep.runs, rep.ok_runs), (3, 2));
        let t = rep.total_s.unwrap();
        assert_eq!((t.median, t.min, t.max), (2.5, 2.0, 3.0));
        assert_eq!(Group::med(rep.interruption_s), Some(0.02));
        assert_eq!(Group::med(rep.link_bytes), Some(11_500_000.0));
        let it = s.group("redis", Method::Iterative, 100.0).unwrap();
        assert_eq!(Group::med(it.total_s), Some(11.0));
        assert_eq!(Group::med(it.iterations), Some(3.0));
    }

    #[test]
    fn ratios_are_replay_over_iterative() {
        let (total, interruption) = summary().ratios("redis", 100.0);
        assert!((total.unwrap() - 2.5 / 11.0).abs() < 1e-12);
        assert!((interruption.unwrap() - 0.02 / 2.0).abs() < 1e-12);
    }

    #[test]
    fn shares_for_figures() {
        let s = summary();
        let it = s.group("redis", Method::Iterative, 100.0).unwrap();
        let shares = it.phase_shares().unwrap();
        let get = |n: &str| shares.iter().find(|(k, _)| *k == n).unwrap().1;
        assert!((get("transfer") - 7.0 / 11.0).abs() < 1e-12);
        assert!((get("other") - (1.0 - 10.01 / 11.0)).abs() < 1e-12);
        let (i, j) = it.interruption_jitter_shares().unwrap();
        assert!((i - 2.0 / 11.0).abs() < 1e-12 && (j - 9.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn targets_met_and_missed() {
        let checks = check_targets(&summary());
        assert_eq!(checks.len(), 6);
        let find = |rate: f64, t: Target| {
            checks
                .iter()
                .find(|c| c.rate_mbit == rate && c.target == t)
                .unwrap()
        };
        // 2.5 ≤ 0.35 × 11 = 3.85
        assert_eq!(find(100.0, Target::TotalVsIterative).outcome, Outcome::Met);
        // 20 > 0.35 × 50 = 17.5
        assert_eq!(
            find(10.0, Target::TotalVsIterative).outcome,
            Outcome::Missed
        );
        // 20 ms ≤ 50 ms; 80 ms > 50 ms
        assert_eq!(find(100.0, Target::Interruption).outcome, Outcome::Met);
        assert_eq!(find(10.0, Target::Interruption).outcome, Outcome::Missed);
        // 100 Mbit/s: 11.5 MB → 0.92 s; 1.15 × 0.92 + 0.3 = 1.358 < 2.5
        let c = find(100.0, Target::LinkBound);
        assert_eq!(c.outcome, Outcome::Missed);
        assert!((c.limit.unwrap() - 1.358).abs() < 1e-9);
        // 10 Mbit/s: 15 MB → 12 s; 1.15 × 12 + 0.3 = 14.1 < 20
        assert_eq!(find(10.0, Target::LinkBound).outcome, Outcome::Missed);
    }

    #[test]
    fn targets_without_data_are_not_met() {
        let runs = parse_csv(
            "method,workload,rate_mbit,run,ok,total_s,interruption_s,jitter_s,snapshot_bytes,log_bytes,control_bytes,iterations,dump_s,transfer_s,restore_s,replay_s,handover_s\n\
             replay,redis,50,1,false,,,,,,,,,,,,\n"
                .as_bytes(),
        )
        .unwrap();
        let checks = check_targets(&Summary::from_runs(&runs));
        assert_eq!(checks.len(), 3);
        assert!(checks.iter().all(|c| c.outcome == Outcome::NoData));
    }

    #[test]
    fn rate_formatting() {
        assert_eq!(fmt_rate(580.0), "580");
        assert_eq!(fmt_rate(0.5), "0.5");
    }
}

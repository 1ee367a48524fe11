//! The fleet campaign (issue #17): fleet mode's faults — etcd members
//! killed, quorum lost, a commit's answer lost or its request never sent,
//! the source or the destination dying at the commit, a stale owner, the
//! old owner dying after its tunnels moved — each run `runs` times against
//! three real node agents on a real 3-member etcd, one row per scenario.
//! The scenarios (`scenarios`) are what `tests/fleet.rs` runs once each in
//! CI; `--quick` runs none of them again.

pub mod harness;
pub mod scenarios;

use crate::{Row, Target};
use anyhow::Result;

/// One scenario: its command-line key, its row's name, and the run.
pub struct Scenario {
    /// The short name (`--fleet-scenarios`).
    pub key: &'static str,
    /// The row's name.
    pub name: &'static str,
    /// One run; panics on a failed check.
    pub run: fn(&Target),
}

/// Every scenario, in report order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "moves",
        name: "fleet: a → b → c → a under load, one move asked at a non-owner",
        run: scenarios::a_service_moves_round_three_nodes_on_etcd_and_every_write_survives,
    },
    Scenario {
        key: "shared-keys",
        name: "fleet: shared keys from every node across moves",
        run: scenarios::shared_keys_from_every_node_stay_exact_across_fleet_moves,
    },
    Scenario {
        key: "churn",
        name: "fleet: a new connection per INCR on every node across moves",
        run: scenarios::connection_churn_on_every_node_stays_exact_across_fleet_moves,
    },
    Scenario {
        key: "member-killed",
        name: "fleet: an etcd member killed mid-migration",
        run: scenarios::an_etcd_member_killed_mid_migration_does_not_stop_the_commit,
    },
    Scenario {
        key: "no-quorum",
        name: "fleet: a migration without etcd quorum (refused)",
        run: scenarios::without_etcd_quorum_a_migration_is_refused_and_the_source_serves_on,
    },
    Scenario {
        key: "quorum-lost",
        name: "fleet: etcd quorum lost mid-migration",
        run: scenarios::quorum_lost_mid_migration_ends_with_the_owner_migrate_reports,
    },
    Scenario {
        key: "answer-lost",
        name: "fleet: the commit's answer lost (settled committed)",
        run: scenarios::a_commit_whose_answer_was_lost_is_settled_as_committed,
    },
    Scenario {
        key: "never-sent",
        name: "fleet: the commit never sent (settled not committed)",
        run: scenarios::a_commit_that_never_left_is_settled_as_not_committed,
    },
    Scenario {
        key: "source-dies",
        name: "fleet: the source dies right after the registry commit",
        run: scenarios::a_source_dying_after_the_registry_commit_leaves_the_destination_owning,
    },
    Scenario {
        key: "destination-dies",
        name: "fleet: the destination dies right after the commit",
        run: scenarios::a_destination_dying_right_after_the_commit_owns_the_service_when_back,
    },
    Scenario {
        key: "stale-owner",
        name: "fleet: a stale owner fenced while the new owner serves",
        run: scenarios::a_stale_owner_is_fenced_while_the_new_owner_serves,
    },
    Scenario {
        key: "old-owner-dies",
        name: "fleet: third-node tunnels moved, then the old owner killed",
        run: scenarios::tunnels_from_a_third_node_move_to_the_new_owner_and_outlive_the_old_one,
    },
];

/// How the campaign runs.
#[derive(Debug, Clone, Default)]
pub struct FleetFaults {
    /// Runs of each scenario (0: the campaign is skipped).
    pub runs: u64,
    /// Only these scenarios (by [`Scenario::key`]; empty: all).
    pub only: Vec<String>,
}

/// Runs the wanted scenarios `runs` times each: one row per scenario, a
/// run whose check failed (panicked) counted with its reason.
pub fn run(target: &Target, faults: &FleetFaults) -> Result<Vec<Row>> {
    if faults.runs == 0 {
        return Ok(Vec::new());
    }
    anyhow::ensure!(
        std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the fleet campaign needs etcd (tools/setup.sh installs Debian's etcd-server)"
    );
    let mut rows = Vec::new();
    for scenario in SCENARIOS
        .iter()
        .filter(|s| faults.only.is_empty() || faults.only.iter().any(|o| o == s.key))
    {
        let mut row = Row {
            campaign: scenario.name.to_string(),
            checked: "one owner serving (registry and every view agree), every acked INCR on it, \
                      connections kept unless the fault took them, `migrate` matches the registry"
                .into(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        for run in 1..=faults.runs {
            eprintln!("  {} — run {run} of {}", scenario.key, faults.runs);
            row.runs += 1;
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (scenario.run)(target)));
            if let Err(panic) = outcome {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                let first = text.lines().next().unwrap_or_default();
                row.fail(format!("run {run}: {first}"));
            }
        }
        row.notes = format!(
            "{:.1} s per run",
            started.elapsed().as_secs_f64() / faults.runs as f64
        );
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_distinct_key() {
        let mut keys: Vec<&str> = SCENARIOS.iter().map(|s| s.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), SCENARIOS.len());
    }

    #[test]
    fn no_runs_is_no_rows_and_needs_nothing() {
        let target = Target {
            bin: "/nonexistent/replaymig".into(),
        };
        let rows = run(&target, &FleetFaults::default()).unwrap();
        assert!(rows.is_empty());
    }
}

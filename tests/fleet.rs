//! Fleet mode end to end, once each in CI: the fleet campaign's scenarios
//! (`replaymig_chaos::fleet::scenarios`: three node agents — real
//! processes, each with its own Redis — that know no peers but a real
//! 3-member etcd 3.4, under checking INCR load: moves round the nodes,
//! shared keys, etcd members killed, quorum lost, a commit's answer lost
//! or never sent, the source or the destination dying at the commit, a
//! stale owner, the old owner dying after its tunnels moved), which
//! `replaymig-chaos --only fleet` runs 20 times each; and the namespaced
//! demos (`tools/fleet-demo.sh`, root).

use replaymig_chaos::fleet::scenarios;
use replaymig_chaos::Target;

fn target() -> Target {
    Target {
        bin: env!("CARGO_BIN_EXE_replaymig").into(),
    }
}

#[test]
fn a_service_moves_round_three_nodes_on_etcd_and_every_write_survives() {
    scenarios::a_service_moves_round_three_nodes_on_etcd_and_every_write_survives(&target());
}

#[test]
fn connection_churn_on_every_node_stays_exact_across_fleet_moves() {
    scenarios::connection_churn_on_every_node_stays_exact_across_fleet_moves(&target());
}

#[test]
fn an_etcd_member_killed_mid_migration_does_not_stop_the_commit() {
    scenarios::an_etcd_member_killed_mid_migration_does_not_stop_the_commit(&target());
}

#[test]
fn without_etcd_quorum_a_migration_is_refused_and_the_source_serves_on() {
    scenarios::without_etcd_quorum_a_migration_is_refused_and_the_source_serves_on(&target());
}

/// The registry commit applied but its answer was lost: the source does
/// not know, settles it (the pin finds it committed) and completes.
#[test]
fn a_commit_whose_answer_was_lost_is_settled_as_committed() {
    scenarios::a_commit_whose_answer_was_lost_is_settled_as_committed(&target());
}

/// The registry commit never left: the pin finds the entry as read, the
/// migration is refused with the registry's word, the source serves on and
/// the destination drops its copy.
#[test]
fn a_commit_that_never_left_is_settled_as_not_committed() {
    scenarios::a_commit_that_never_left_is_settled_as_not_committed(&target());
}

/// The source dies right after the registry commit, before its own record
/// and before telling the destination: the destination learns the outcome
/// from the registry and serves; the source, restarted, settles its
/// recorded intent from the registry and does not take the service back.
#[test]
fn a_source_dying_after_the_registry_commit_leaves_the_destination_owning() {
    scenarios::a_source_dying_after_the_registry_commit_leaves_the_destination_owning(&target());
}

/// etcd loses its quorum while a migration runs (two of three members
/// killed just after it starts, one back 3 s later): whatever the commit
/// then meets — a refusal ("no leader"), or no answer, settled once
/// quorum is back — the outcome `migrate` reports is the registry's, one
/// owner serves, and every acknowledged INCR is on it.
#[test]
fn quorum_lost_mid_migration_ends_with_the_owner_migrate_reports() {
    scenarios::quorum_lost_mid_migration_ends_with_the_owner_migrate_reports(&target());
}

/// Shared state under fleet moves, not per-client keys: two clients on
/// every node INCR one shared counter and APPEND to one shared string (a
/// reply that grows), on connections kept across a → b → c. The oracle:
/// every INCR answer is distinct (none executed twice, none lost between
/// two answers), every APPEND length is distinct, and the final counter
/// and string length equal the acknowledgements.
#[test]
fn shared_keys_from_every_node_stay_exact_across_fleet_moves() {
    scenarios::shared_keys_from_every_node_stay_exact_across_fleet_moves(&target());
}

/// Clients of node c reach the owner a through tunnels. At a's hand-over
/// to b, a tells c to dial b itself (`TunnelMove`): c's connections then
/// no longer pass through a, which is killed right after — and they keep
/// working, every INCR counted exactly once. One of them pipelines, so
/// input is in flight at the hand-over and c sends it again to b.
#[test]
fn tunnels_from_a_third_node_move_to_the_new_owner_and_outlive_the_old_one() {
    scenarios::tunnels_from_a_third_node_move_to_the_new_owner_and_outlive_the_old_one(&target());
}

/// The destination dies (node agent and its restored Redis, as in a
/// machine crash) right after the source's registry commit, when it is
/// told to own the service. The registry says b owns it; nothing serves
/// until b is back; restarted, b rebuilds the service from the snapshot it
/// kept and the log it journaled, and every write acknowledged before the
/// move is there — once; a client cut by the crash finds its acknowledged
/// INCRs there too (its last, unanswered one at most once).
#[test]
fn a_destination_dying_right_after_the_commit_owns_the_service_when_back() {
    scenarios::a_destination_dying_right_after_the_commit_owns_the_service_when_back(&target());
}

/// The source's registry commit applied, but it does not know yet (the
/// answer was lost and etcd stays silent to it for 2 s): for that long a
/// is a stale owner — it still thinks it owns epoch 1 and holds its
/// clients — while the registry and every other node say b owns epoch 2.
/// Meanwhile new clients of c are served by b (their tunnel under epoch 2
/// is b's commit), a tunnel routed by epoch 2 to the stale owner is fenced,
/// and nobody is served by a. Once a settles it hands its clients over:
/// every answer of every client checked, every count exact on b.
#[test]
fn a_stale_owner_is_fenced_while_the_new_owner_serves() {
    scenarios::a_stale_owner_is_fenced_while_the_new_owner_serves(&target());
}

/// `tools/fleet-demo.sh` (root: network namespaces), with `env`; its
/// stdout after checking that it succeeded and reported every move.
fn fleet_demo(env: &[(&str, &str)]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP fleet demo: needs root for network namespaces");
        return None;
    }
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fleet-demo.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_replaymig"))
        .envs(env.iter().copied())
        .output()
        .expect("run tools/fleet-demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (from, to, epoch) in [("a", "c", 2), ("c", "e", 3), ("e", "b", 4)] {
        assert!(
            stdout.contains(&format!(
                "migrated redis from {from} to {to} (epoch {epoch})"
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("no connection broke"), "{stdout}");
    Some(stdout)
}

/// Five namespaced nodes and three namespaced etcd members on a bridge,
/// Redis moved a → c → e → b under load from every node; the script checks
/// every acknowledgement on b.
#[test]
fn the_fleet_demo_moves_redis_across_five_namespaced_nodes() {
    fleet_demo(&[]);
}

/// The source cut off from etcd by the network (iptables in its
/// namespace, put in while it pauses just before the registry commit): the
/// move is refused — at once if no try reached etcd, once etcd answers
/// again otherwise — and a serves on; or, when the commit's request sat in
/// a's TCP send queue and reached etcd once the cut healed, it is settled
/// as committed. Either way every view agrees with what `migrate` said;
/// then the demo's remaining moves run.
#[test]
fn a_source_cut_off_from_etcd_at_the_commit_ends_as_the_registry_says() {
    if let Some(stdout) = fleet_demo(&[("PARTITION", "1")]) {
        assert!(
            stdout.contains("refused; node a still owns redis under epoch 1")
                || stdout.contains("taken once the cut healed (settled with the registry); node c owns redis under epoch 2"),
            "{stdout}"
        );
        let outcome = stdout
            .lines()
            .find(|l| l.contains("refused; node") || l.contains("taken once"));
        eprintln!("partitioned commit: {}", outcome.unwrap_or_default().trim());
    }
}

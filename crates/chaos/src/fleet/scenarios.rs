//! The fleet campaign's scenarios: each starts a real 3-member etcd and
//! three node agents (`harness`), runs a migration under checking load,
//! injects its fault, and checks — panicking on the first failed check —
//! that exactly one owner serves (the registry and every node's view
//! agree), every acknowledged write is on it, no client connection broke
//! unless the fault broke it, and what `migrate` said matches what
//! happened. `tests/fleet.rs` runs each once; `replaymig-chaos --only
//! fleet` runs each `--fleet-runs` times and counts.

use super::harness::{client, get, pipelined_client, registry_entry, Fleet};
use crate::Target;
use replaymig_testkit::{EtcdCluster, IncrLoad, Reply, RespClient};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn a_service_moves_round_three_nodes_on_etcd_and_every_write_survives(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    assert_eq!(registry_entry(&cluster)["owner"], "a");

    // Clients on every node, their connections kept across all the moves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| (0..2).map(move |i| (n, i)))
        .map(|(n, i)| client(fleet.listen(n), format!("k{n}:{i}"), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let mut epoch = 1;
    let mut handover = 0;
    // Each move asked at one node's admin: a (the owner), then a again
    // once b owns it (a forwards the request to b, which runs b → c), then
    // c (the owner).
    for (asked, to) in [("a", "b"), ("a", "c"), ("c", "a")] {
        let from = asked;
        let (ok, text) = fleet.migrate(asked, to);
        if to == "c" {
            assert!(
                text.contains("b (its owner in the fleet's registry) runs"),
                "{text}"
            );
        }
        assert!(
            ok,
            "migrate {from} → {to} failed:\n{text}\n{}",
            fleet.logs()
        );
        epoch += 1;
        let entry = registry_entry(&cluster);
        assert_eq!(entry["owner"], to, "{entry}");
        assert_eq!(entry["epoch"], epoch, "{entry}");
        let lsn = entry["handover_lsn"].as_u64().unwrap();
        assert!(
            lsn > handover,
            "hand-over LSNs grow: {lsn} after {handover}"
        );
        handover = lsn;
        // Every node follows, the one that took no part too.
        fleet.wait_all(to, epoch);
        std::thread::sleep(Duration::from_millis(300));
    }

    // Asked at b, status --fleet shows the owner's (a's) journal: it goes
    // on from the last hand-over.
    let status = fleet.fleet_status("b");
    let journal = &status["services"][0]["journal"];
    assert!(
        journal[1].as_u64().unwrap_or(0) >= handover,
        "the owner's journal ends before the last hand-over at {handover}: {status}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for c in clients {
        let (key, n, broke) = c.join().unwrap();
        assert_eq!(broke, None, "client {key}: {}", fleet.logs());
        assert!(n > 0, "client {key} got nothing through");
        acked.push((key, n));
    }
    // Every acknowledged INCR is there, exactly (each client waited for
    // every answer before sending the next, and stopped cleanly).
    for (key, n) in &acked {
        assert_eq!(get(fleet.listen("b"), key), *n, "{key}\n{}", fleet.logs());
    }
    // A new connection at any node reaches the owner (a) and its data.
    for n in ["a", "b", "c"] {
        assert_eq!(get(fleet.listen(n), &acked[0].0), acked[0].1);
    }
}

pub fn an_etcd_member_killed_mid_migration_does_not_stop_the_commit(target: &Target) {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    let load = IncrLoad::start(fleet.listen("c"), 2, "kill:", 1_000_000);
    std::thread::sleep(Duration::from_millis(300));
    let migration = fleet.migrate_in_background("a", "b");
    // The member listed first — every client's first choice — dies while
    // the migration runs.
    std::thread::sleep(Duration::from_millis(150));
    cluster.kill(0);
    let out = migration.join().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    assert_eq!(registry_entry(&cluster)["owner"], "b");
    fleet.wait_all("b", 2);
    for (key, n) in load.finish() {
        assert_eq!(get(fleet.listen("a"), &key), n, "{key}");
    }
}

pub fn without_etcd_quorum_a_migration_is_refused_and_the_source_serves_on(target: &Target) {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    let load = IncrLoad::start(fleet.listen("a"), 2, "noq:", 1_000_000);
    cluster.kill(1);
    cluster.kill(2);
    let (ok, text) = fleet.migrate("a", "b");
    assert!(!ok, "a migration without quorum must fail:\n{text}");
    assert!(
        text.contains("etcd") || text.contains("registry"),
        "says why: {text}"
    );
    // a serves on, and a new connection through b still reaches it.
    std::thread::sleep(Duration::from_millis(300));
    let acked = load.finish();
    assert!(acked.iter().all(|(_, n)| *n > 0));
    for (key, n) in &acked {
        assert_eq!(get(fleet.listen("b"), key), *n, "{key}");
    }
    // Quorum back: nothing changed in the registry.
    cluster.restart(1).unwrap();
    let entry = registry_entry(&cluster);
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some("a"), Some(1))
    );
}

/// The registry commit applied but its answer was lost: the source does
/// not know, settles it (the pin finds it committed) and completes.
pub fn a_commit_whose_answer_was_lost_is_settled_as_committed(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start_with(
        target,
        &cluster,
        "a",
        &[("FAILPOINTS", "fleet-commit-answer-lost=return")],
    );
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = client(fleet.listen("c"), "lost:0".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (ok, text) = fleet.migrate("a", "b");
    assert!(ok, "{text}\n{}", fleet.logs());
    assert!(
        fleet.log("a").contains("outcome is unknown"),
        "{}",
        fleet.logs()
    );
    let entry = registry_entry(&cluster);
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some("b"), Some(2))
    );
    fleet.wait_all("b", 2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (key, acked, broke) = c.join().unwrap();
    assert_eq!(broke, None);
    assert_eq!(get(fleet.listen("a"), &key), acked);
}

/// The registry commit never left: the pin finds the entry as read, the
/// migration is refused with the registry's word, the source serves on and
/// the destination drops its copy.
pub fn a_commit_that_never_left_is_settled_as_not_committed(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start_with(
        target,
        &cluster,
        "a",
        &[("FAILPOINTS", "fleet-commit-not-sent=return")],
    );
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = client(fleet.listen("c"), "unsent:0".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (ok, text) = fleet.migrate("a", "b");
    assert!(!ok, "{text}");
    assert!(
        text.contains("registry did not take the hand-over"),
        "{text}"
    );
    // The pin rewrote the entry as read: same owner and epoch.
    let entry = registry_entry(&cluster);
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some("a"), Some(1))
    );
    std::thread::sleep(Duration::from_millis(500));
    fleet.wait_all("a", 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (key, acked, broke) = c.join().unwrap();
    assert_eq!(broke, None, "{}", fleet.logs());
    assert_eq!(get(fleet.listen("b"), &key), acked);
}

/// The source dies right after the registry commit, before its own record
/// and before telling the destination: the destination learns the outcome
/// from the registry and serves; the source, restarted, settles its
/// recorded intent from the registry and does not take the service back.
pub fn a_source_dying_after_the_registry_commit_leaves_the_destination_owning(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let mut fleet = Fleet::start_with(
        target,
        &cluster,
        "a",
        &[("FAILPOINTS", "fleet-after-registry-commit=return")],
    );
    fleet.wait_all("a", 1);
    // Writes acknowledged by a before the move.
    let mut writer = RespClient::connect(fleet.listen("b")).unwrap();
    for i in 1..=50 {
        assert_eq!(writer.cmd(&["INCR", "crash:0"]).unwrap(), Reply::Int(i));
    }
    drop(writer);
    let (ok, text) = fleet.migrate("a", "b");
    assert!(!ok, "the source crashed mid-migration: {text}");
    // b serves without a (it asked the registry).
    for n in ["b", "c"] {
        fleet.wait_view(n, "b", 2);
    }
    assert_eq!(get(fleet.listen("c"), "crash:0"), 50, "{}", fleet.logs());
    fleet.restart("a");
    fleet.wait_view("a", "b", 2);
    assert!(fleet.log("a").contains("settled"), "{}", fleet.logs());
    let mut c = RespClient::connect(fleet.listen("a")).unwrap();
    assert_eq!(c.cmd(&["INCR", "crash:0"]).unwrap(), Reply::Int(51));
}

/// etcd loses its quorum while a migration runs (two of three members
/// killed just after it starts, one back 3 s later): whatever the commit
/// then meets — a refusal ("no leader"), or no answer, settled once
/// quorum is back — the outcome `migrate` reports is the registry's, one
/// owner serves, and every acknowledged INCR is on it.
pub fn quorum_lost_mid_migration_ends_with_the_owner_migrate_reports(target: &Target) {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    // Some bulk, so the migration lasts a few hundred milliseconds.
    let mut bulk = RespClient::connect(fleet.listen("a")).unwrap();
    let value = "v".repeat(4096);
    for chunk in 0..40 {
        let cmds: Vec<Vec<String>> = (0..100)
            .map(|i| vec!["SET".into(), format!("bulk:{chunk}:{i}"), value.clone()])
            .collect();
        let refs: Vec<Vec<&str>> = cmds
            .iter()
            .map(|c| c.iter().map(String::as_str).collect())
            .collect();
        bulk.pipeline(&refs).unwrap();
    }
    drop(bulk);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = client(fleet.listen("c"), "quorum:0".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let migration = fleet.migrate_in_background("a", "b");
    std::thread::sleep(Duration::from_millis(50));
    cluster.kill(1);
    cluster.kill(2);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(1).unwrap();
    let out = migration.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let entry = registry_entry(&cluster);
    let (owner, epoch) = if out.status.success() {
        ("b", 2)
    } else {
        assert!(
            text.contains("registry") || text.contains("etcd"),
            "says why: {text}"
        );
        ("a", 1)
    };
    assert_eq!(
        (entry["owner"].as_str(), entry["epoch"].as_u64()),
        (Some(owner), Some(epoch)),
        "migrate said:\n{text}"
    );
    fleet.wait_all(owner, epoch);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (key, acked, broke) = c.join().unwrap();
    assert_eq!(broke, None, "{}", fleet.logs());
    assert_eq!(get(fleet.listen("c"), &key), acked);
    eprintln!(
        "quorum lost mid-migration: migrate {}",
        if out.status.success() {
            "committed"
        } else {
            "refused"
        }
    );
}

/// Shared state under fleet moves, not per-client keys: two clients on
/// every node INCR one shared counter and APPEND to one shared string (a
/// reply that grows), on connections kept across a → b → c. The oracle:
/// every INCR answer is distinct (none executed twice, none lost between
/// two answers), every APPEND length is distinct, and the final counter
/// and string length equal the acknowledgements.
pub fn shared_keys_from_every_node_stay_exact_across_fleet_moves(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| (0..2).map(move |i| (*n, i)))
        .map(|(n, i)| {
            let (addr, stop) = (fleet.listen(n), stop.clone());
            std::thread::spawn(move || {
                let mut c = RespClient::connect(addr).unwrap();
                let (mut incrs, mut lens) = (Vec::new(), Vec::new());
                let piece = "x".repeat(1 + i);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    match c.cmd(&["INCR", "shared:counter"]) {
                        Ok(Reply::Int(v)) => incrs.push(v),
                        other => return Err(format!("{n}{i}: INCR answered {other:?}")),
                    }
                    match c.cmd(&["APPEND", "shared:string", &piece]) {
                        Ok(Reply::Int(len)) => lens.push((len, piece.len() as i64)),
                        other => return Err(format!("{n}{i}: APPEND answered {other:?}")),
                    }
                }
                Ok((incrs, lens))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    fleet.migrate_a_b_c();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut incrs, mut lens, mut appended) = (Vec::new(), Vec::new(), 0i64);
    for w in workers {
        let (i, l) = w
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        incrs.extend(i);
        appended += l.iter().map(|(_, p)| p).sum::<i64>();
        lens.extend(l.into_iter().map(|(len, _)| len));
    }
    let n = incrs.len() as i64;
    incrs.sort_unstable();
    incrs.dedup();
    assert_eq!(incrs.len() as i64, n, "an INCR answer was given twice");
    assert_eq!(
        incrs,
        (1..=n).collect::<Vec<_>>(),
        "the INCR answers are 1..=n"
    );
    let m = lens.len();
    lens.sort_unstable();
    lens.dedup();
    assert_eq!(lens.len(), m, "an APPEND length was given twice");
    assert_eq!(get(fleet.listen("a"), "shared:counter"), n);
    let mut c = RespClient::connect(fleet.listen("b")).unwrap();
    assert_eq!(
        c.cmd(&["STRLEN", "shared:string"]).unwrap(),
        Reply::Int(appended)
    );
    assert_eq!(
        *lens.last().unwrap(),
        appended,
        "the last APPEND saw the whole string"
    );
}

/// Clients of node c reach the owner a through tunnels. At a's hand-over
/// to b, a tells c to dial b itself (`TunnelMove`): c's connections then
/// no longer pass through a, which is killed right after — and they keep
/// working, every INCR counted exactly once. One of them pipelines, so
/// input is in flight at the hand-over and c sends it again to b.
pub fn tunnels_from_a_third_node_move_to_the_new_owner_and_outlive_the_old_one(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let mut fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let singles: Vec<_> = (0..2)
        .map(|i| client(fleet.listen("c"), format!("c:{i}"), stop.clone()))
        .collect();
    let piped = pipelined_client(fleet.listen("c"), "c:piped".into(), 32, stop.clone());
    // Replies whose length changes every time: the string grows by a
    // piece per APPEND, and every GET must return exactly what the client
    // appended so far (tens of KB by the end).
    let growing = {
        let (addr, stop) = (fleet.listen("c"), stop.clone());
        std::thread::spawn(move || -> Result<String, String> {
            let mut c = RespClient::connect(addr).map_err(|e| e.to_string())?;
            let mut expected = String::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let piece = format!("{i}-{}|", "y".repeat(i % 97));
                match c.cmd(&["APPEND", "c:growing", &piece]) {
                    Ok(Reply::Int(n)) if n as usize == expected.len() + piece.len() => {}
                    other => return Err(format!("APPEND {i}: {other:?}")),
                }
                expected.push_str(&piece);
                match c.cmd(&["GET", "c:growing"]) {
                    Ok(Reply::Bulk(v)) if v == expected.as_bytes() => {}
                    Ok(Reply::Bulk(v)) => {
                        return Err(format!(
                            "GET {i}: {} bytes, expected {}",
                            v.len(),
                            expected.len()
                        ))
                    }
                    other => return Err(format!("GET {i}: {other:?}")),
                }
                i += 1;
            }
            Ok(expected)
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let (ok, text) = fleet.migrate("a", "b");
    assert!(ok, "{text}\n{}", fleet.logs());
    assert!(
        text.contains("(+ 4 tunnels from other nodes redirected)"),
        "a handed c's four tunnels to c itself:\n{text}\n{}",
        fleet.logs()
    );
    fleet.wait_all("b", 2);
    let log_c = fleet.log("c");
    let moved: Vec<&str> = log_c
        .lines()
        .filter(|l| l.contains("relayed connection moved"))
        .collect();
    eprintln!("{}", moved.join("\n"));
    let moved = moved.len();
    assert_eq!(moved, 4, "c moved its four tunnels\n{}", fleet.logs());

    // The old owner dies: c's clients no longer go through it.
    fleet.nodes[0].kill9().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for c in singles {
        let (key, n, broke) = c.join().unwrap();
        assert_eq!(broke, None, "client {key}: {}", fleet.logs());
        acked.push((key, n));
    }
    let piped = piped
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    acked.push(("c:piped".into(), piped));
    for (key, n) in &acked {
        assert!(*n > 0, "{key} made progress");
        assert_eq!(get(fleet.listen("c"), key), *n, "{key}\n{}", fleet.logs());
    }
    let expected = growing
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let mut c = RespClient::connect(fleet.listen("c")).unwrap();
    assert_eq!(
        c.cmd(&["GET", "c:growing"]).unwrap(),
        Reply::Bulk(expected.into_bytes()),
        "the grown string on the new owner"
    );
}

/// The destination dies (node agent and its restored Redis, as in a
/// machine crash) right after the source's registry commit, when it is
/// told to own the service. The registry says b owns it; nothing serves
/// until b is back; restarted, b rebuilds the service from the snapshot it
/// kept and the log it journaled, and every write acknowledged before the
/// move is there — once; a client cut by the crash finds its acknowledged
/// INCRs there too (its last, unanswered one at most once).
pub fn a_destination_dying_right_after_the_commit_owns_the_service_when_back(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let mut fleet = Fleet::start_with(
        target,
        &cluster,
        "b",
        &[("FAILPOINTS", "destination-crash-at-commit=return")],
    );
    fleet.wait_all("a", 1);
    let mut writer = RespClient::connect(fleet.listen("c")).unwrap();
    for i in 1..=50 {
        assert_eq!(writer.cmd(&["INCR", "dest:0"]).unwrap(), Reply::Int(i));
    }
    drop(writer);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = client(fleet.listen("a"), "dest:live".into(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    let (ok, text) = fleet.migrate("a", "b");
    assert!(ok, "the source committed: {text}\n{}", fleet.logs());
    let entry = registry_entry(&cluster);
    assert_eq!(
        (&entry["owner"], &entry["epoch"]),
        (&"b".into(), &2.into()),
        "{entry}"
    );
    assert!(
        fleet.log("b").contains("crashing at the commit"),
        "{}",
        fleet.logs()
    );
    // The crash took b's service with it.
    for pid in replaymig_testkit::listener_pids(fleet.node("b").backend) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let (key, acked, broke) = live.join().unwrap();
    assert!(broke.is_some(), "the live client's connection went with b");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    fleet.restart("b");
    fleet.wait_all("b", 2);
    assert_eq!(get(fleet.listen("c"), "dest:0"), 50, "{}", fleet.logs());
    let got = get(fleet.listen("a"), &key);
    assert!(
        got == acked || got == acked + 1,
        "{key}: {acked} acknowledged, {got} on b\n{}",
        fleet.logs()
    );
    let mut c = RespClient::connect(fleet.listen("a")).unwrap();
    assert_eq!(c.cmd(&["INCR", "dest:0"]).unwrap(), Reply::Int(51));
}

/// The source's registry commit applied, but it does not know yet (the
/// answer was lost and etcd stays silent to it for 2 s): for that long a
/// is a stale owner — it still thinks it owns epoch 1 and holds its
/// clients — while the registry and every other node say b owns epoch 2.
/// Meanwhile new clients of c are served by b (their tunnel under epoch 2
/// is b's commit), a tunnel routed by epoch 2 to the stale owner is fenced,
/// and nobody is served by a. Once a settles it hands its clients over:
/// every answer of every client checked, every count exact on b.
pub fn a_stale_owner_is_fenced_while_the_new_owner_serves(target: &Target) {
    use replaymig_peer::{Authenticator, Message, PeerLink, Secret};
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start_with(
        target,
        &cluster,
        "a",
        &[(
            "FAILPOINTS",
            "fleet-commit-answer-lost=return;fleet-before-settle=return(2000)",
        )],
    );
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = [
        client(fleet.listen("a"), "stale:a".into(), stop.clone()),
        client(fleet.listen("c"), "stale:c".into(), stop.clone()),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let migration = fleet.migrate_in_background("a", "b");
    // The registry and c say b; a does not know yet.
    fleet.wait_view("c", "b", 2);
    let status_a = || -> Value {
        let out = Command::new(&target.bin)
            .args(["status", "--json", "--admin", &fleet.admin("a")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let a = status_a();
    assert_eq!(
        (&a[0]["owner"], &a[0]["epoch"]),
        (&"a".into(), &1.into()),
        "a is a stale owner now: {a}"
    );

    // A new client of c reaches b, which owns by the registry.
    let mut fresh = RespClient::connect(fleet.listen("c")).unwrap();
    for i in 1..=20 {
        assert_eq!(
            fresh.cmd(&["INCR", "stale:fresh"]).unwrap(),
            Reply::Int(i),
            "{}",
            fleet.logs()
        );
    }
    // A tunnel routed by the new epoch to the stale owner is fenced.
    let answer = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let secret = Secret::from_file(&fleet.dir.path().join("secret")).unwrap();
        let a = fleet.node("a");
        let mut link = PeerLink::connect((a.ip, a.peer).into(), &Authenticator::new("c", secret))
            .await
            .unwrap();
        link.send(Message::TunnelOpen {
            service: "redis".into(),
            conn: None,
            delivered: 0,
            client: "test".into(),
            epoch: 2,
        })
        .await
        .unwrap();
        link.recv_timeout(Duration::from_secs(10)).await.unwrap()
    });
    match answer {
        Message::MigrateAbort { reason } => assert!(reason.contains("owns epoch 1"), "{reason}"),
        other => panic!("the stale owner took a tunnel of epoch 2: {other:?}"),
    }
    let a = status_a();
    assert_eq!(a[0]["epoch"], 1, "still settling: {a}");

    let out = migration.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    fleet.wait_all("b", 2);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in held {
        let (key, acked, broke) = c.join().unwrap();
        assert_eq!(broke, None, "{key}\n{}", fleet.logs());
        assert!(acked > 0, "{key} made progress");
        assert_eq!(
            get(fleet.listen("b"), &key),
            acked,
            "{key}\n{}",
            fleet.logs()
        );
    }
    assert_eq!(get(fleet.listen("a"), "stale:fresh"), 20);
}

/// Connection churn across moves: on every node a client opens a new
/// connection for each INCR of its own key (a → b → c meanwhile), so
/// connections are set up before, during and after each hand-over, through
/// routes that are changing. A connection attempt may fail while a route
/// follows the registry (the client then cannot know whether its INCR ran:
/// it counts the attempt as unknown). The oracle: the answers of a key
/// strictly increase, every value skipped between two answers is explained
/// by an unknown attempt in between (none executed twice, none lost), and
/// the final value is the last answer plus at most the unknown attempts
/// after it.
pub fn connection_churn_on_every_node_stays_exact_across_fleet_moves(target: &Target) {
    let cluster = EtcdCluster::start(3).unwrap();
    let fleet = Fleet::start(target, &cluster);
    fleet.wait_all("a", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let (addr, stop, key) = (fleet.listen(n), stop.clone(), format!("churn:{n}"));
            std::thread::spawn(move || {
                // (answer, unknown attempts since the previous answer)
                let mut answers: Vec<(i64, u64)> = Vec::new();
                let mut unknown = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let answer = RespClient::connect(addr).and_then(|mut c| c.cmd(&["INCR", &key]));
                    match answer {
                        Ok(Reply::Int(v)) => {
                            answers.push((v, unknown));
                            unknown = 0;
                        }
                        Ok(other) => return Err(format!("{key}: INCR answered {other:?}")),
                        Err(_) => unknown += 1,
                    }
                }
                Ok((key, answers, unknown))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    fleet.migrate_a_b_c();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed_attempts = 0;
    for churner in churners {
        let (key, answers, unknown_after) = churner
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
        assert!(answers.len() > 10, "{key} made progress: {answers:?}");
        let mut previous = 0;
        for (value, unknown) in &answers {
            failed_attempts += unknown;
            assert!(
                *value > previous && (*value - previous - 1) as u64 <= *unknown,
                "{key}: answer {value} after {previous} with {unknown} unknown attempts between\n{}",
                fleet.logs()
            );
            previous = *value;
        }
        failed_attempts += unknown_after;
        let last = get(fleet.listen("c"), &key);
        assert!(
            last >= previous && (last - previous) as u64 <= unknown_after,
            "{key}: {last} on the owner, last answer {previous}, {unknown_after} unknown after it"
        );
    }
    eprintln!("connection churn across moves: {failed_attempts} connection attempts failed");
}

//! The README's demo as a test: two node agents (the real binary) in two
//! network namespaces, redis under load on node a, `replaymig migrate` to
//! node b — with the exec driver and with CRIU. The script itself checks
//! that every acknowledgement of its 8 clients (INCR on own keys and RPUSH
//! to own lists, pipelined and not) is on node b's redis exactly once, the
//! lists in order, and that node a's copy is stopped; here we check it said
//! so. Needs root.

use std::process::Command;

fn demo(driver: &str) -> String {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/demo.sh"))
        .env("BIN", env!("CARGO_BIN_EXE_replaymig"))
        .env("DRIVER", driver)
        .output()
        .expect("run tools/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo with {driver} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn check(stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.contains("acknowledgements; node b's redis says"))
        .expect("the demo reports the counter");
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert!(numbers[0] > 1000, "the client kept working: {line}");
    assert_eq!(numbers[0], numbers[1], "{line}");
    assert!(stdout.contains("== ok: every acknowledged write is on node b"));
    assert!(stdout.contains("migrated redis from a to b (epoch 2)"));
}

#[test]
fn replay_migration_between_namespaces_with_exec_and_criu() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP migrate_netns: needs root for network namespaces");
        return;
    }
    check(&demo("exec"));
    if !std::path::Path::new("/opt/replaymig/criu/bin/criu").exists() {
        eprintln!("SKIP criu half: tools/install-criu.sh has not run");
        return;
    }
    check(&demo("criu"));
}

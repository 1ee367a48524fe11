//! The reliability campaigns' short versions, as CI runs them
//! (`replaymig-chaos --quick`): 5 kill -9 / restart cycles of the proxy
//! under a checking INCR load, three runs of each faulted migration (b killed,
//! link cut, a corrupted byte, a divergent replay, a killed and restarted;
//! then a retry), two disk-full cycles (the journal's disk filled by
//! another process, then by the clients; space returns; the same proxy
//! serves again), and 5,000 concurrent connections through one proxy. The command fails on any lost write, failed check or memory
//! growth; the test also reads the table it prints.

use std::process::Command;

#[test]
fn the_quick_campaigns_lose_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_replaymig-chaos"))
        .args(["--quick", "--bin", env!("CARGO_BIN_EXE_replaymig")])
        .output()
        .expect("run replaymig-chaos");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| "))
        .filter(|l| !l.starts_with("| campaign"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 8, "{table}");
    for row in &rows {
        // | campaign | runs | failures | data checked | lost writes | notes |
        assert_eq!(row[3], "0", "failures: {table}");
        assert_eq!(row[5], "0", "lost writes: {table}");
    }
    assert_eq!(rows[0][2], "5", "five crash cycles: {table}");
    for row in &rows[1..6] {
        assert!(row[1].starts_with("faulted migration"), "{table}");
        assert_eq!(row[2], "3", "three runs of each fault: {table}");
        assert!(row[6].contains("split-ownership events 0"), "{table}");
        assert!(
            row[6].contains("migrate said: \"error:"),
            "a clear error: {table}"
        );
    }
    assert!(rows[6][1].starts_with("disk full"), "{table}");
    if replaymig_testkit::is_root() {
        assert_eq!(rows[6][2], "2", "two disk-full cycles: {table}");
        assert!(rows[6][6].contains("same process"), "{table}");
    } else {
        eprintln!("disk-full cycles skipped: not root");
    }
    assert!(rows[7][4].starts_with("5000 connections"), "{table}");
    assert!(rows[7][6].contains("peak 5000 connected"), "{table}");
}

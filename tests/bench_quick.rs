//! The migration experiment's harness in `--quick` mode (one rate, one run,
//! small sizes): `tools/bench-migration.sh` runs both methods on both
//! workloads in the two-node testbed and writes the CSV, the table and the
//! four figures. This checks the harness works, not the timings. Needs root
//! (namespaces) and CRIU (the detector workload); uses the binaries the
//! workspace build made (`cargo test --workspace` builds them all).

use std::path::{Path, PathBuf};
use std::process::Command;

fn sibling_binary(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_replaymig"));
    let path = bin.parent().expect("a target dir").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or build it: cargo build -p replaymig-workload -p replaymig-bench)",
        path.display()
    );
    path
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| b.len() > 10_000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
        .unwrap_or(false)
}

#[test]
fn the_quick_experiment_writes_the_csv_the_table_and_the_figures() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP bench_quick: needs root for network namespaces");
        return;
    }
    if !Path::new("/opt/replaymig/criu/bin/criu").exists() {
        eprintln!("SKIP bench_quick: tools/install-criu.sh has not run");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tools/bench-migration.sh"
        ))
        .args(["--quick", "--out"])
        .arg(out.path())
        .env("BIN", env!("CARGO_BIN_EXE_replaymig"))
        .env("WORKLOAD_BIN", sibling_binary("replaymig-workload"))
        .env("REPORT_BIN", sibling_binary("replaymig-bench-report"))
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out.path().join("bench.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "bench-migration.sh --quick failed:\n{}\n{}\n{log}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for method in ["replay", "iterative"] {
        for workload in ["redis", "detector"] {
            let row = rows
                .iter()
                .find(|r| r[col("method")] == method && r[col("workload")] == workload)
                .unwrap_or_else(|| panic!("no {method} {workload} row in\n{csv}"));
            assert_eq!(
                row[col("ok")],
                "true",
                "{method} {workload} failed:\n{csv}\n{log}"
            );
            for figure in [
                "total_s",
                "interruption_s",
                "snapshot_bytes",
                "control_bytes",
            ] {
                let value: f64 = row[col(figure)].parse().unwrap();
                assert!(value > 0.0, "{method} {workload} {figure} = {value}");
            }
            let iterations: u32 = row[col("iterations")].parse().unwrap();
            match method {
                "replay" => assert_eq!(iterations, 0),
                _ => assert!(iterations >= 1, "{workload}: no pre-copy round"),
            }
        }
    }
    for figure in [
        "fig3_total_time.png",
        "fig4_interruption.png",
        "fig5_phases.png",
        "fig6_interruption_jitter_share.png",
    ] {
        assert!(is_png(&out.path().join(figure)), "{figure} is not a PNG");
    }
    let table = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        table.contains("## Targets") && table.contains("| detector | iterative | 100 |"),
        "{table}"
    );
}

//! Replays the fuzz corpora and the saved crash inputs through the same
//! checks as the cargo-fuzz targets (`fuzz/src/lib.rs`, compiled here as a
//! plain module: stable Rust, no libFuzzer), so CI re-checks every
//! committed input without cargo-fuzz. Layout:
//! `fuzz/corpus/<target>/*` (interesting inputs) and
//! `fuzz/regressions/<target>/*` (inputs that once crashed a decoder).
//! A panic on any of them fails the test, naming the file.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let mut failed = Vec::new();
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).expect("read input");
            n += 1;
            let result = std::panic::catch_unwind(|| harness::run(target, &data));
            if let Err(panic) = result {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{}: {msg}", path.display()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {n} inputs panic:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn journal_record_inputs_do_not_panic() {
    replay("journal_record");
}

#[test]
fn journal_segment_inputs_do_not_panic() {
    replay("journal_segment");
}

#[test]
fn peer_frame_inputs_do_not_panic() {
    replay("peer_frame");
}

#[test]
fn snapshot_manifest_inputs_do_not_panic() {
    replay("snapshot_manifest");
}

/// The seed corpora are still what the crates' encoders produce (so a
/// format change that makes them stale is noticed) and pass their targets.
#[test]
fn seeds_pass_their_targets() {
    for target in harness::TARGETS {
        for (name, bytes) in harness::seeds::for_target(target) {
            harness::run(target, &bytes);
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target)
                .join(format!("seed-{name}"));
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run the seeds program)", path.display()));
            assert_eq!(
                committed,
                bytes,
                "{} is stale: rerun `cargo run --bin seeds` in fuzz/",
                path.display()
            );
        }
    }
}

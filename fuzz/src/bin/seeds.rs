//! Writes the seed corpora: `cargo run --bin seeds -- [DIR]` (default
//! `corpus` next to this crate's Cargo.toml) gets one directory per target
//! with valid inputs made through the crates' own encoders. Existing files
//! of the same name are overwritten; others are left alone.

use replaymig_fuzz::{seeds, TARGETS};
use std::path::PathBuf;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for target in TARGETS {
        let tdir = dir.join(target);
        std::fs::create_dir_all(&tdir).expect("create corpus dir");
        let inputs = seeds::for_target(target);
        for (name, bytes) in &inputs {
            // Every seed must pass its own target.
            replaymig_fuzz::run(target, bytes);
            std::fs::write(tdir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
        println!("{target}: {} seeds in {}", inputs.len(), tdir.display());
    }
}

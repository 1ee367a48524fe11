//! cargo-fuzz target `snapshot_manifest`: see `replaymig_fuzz::snapshot_manifest` for the input
//! layout and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replaymig_fuzz::snapshot_manifest(data));

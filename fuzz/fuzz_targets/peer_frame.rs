//! cargo-fuzz target `peer_frame`: see `replaymig_fuzz::peer_frame` for the input
//! layout and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replaymig_fuzz::peer_frame(data));

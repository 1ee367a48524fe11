//! cargo-fuzz target `journal_segment`: see `replaymig_fuzz::journal_segment` for the input
//! layout and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replaymig_fuzz::journal_segment(data));

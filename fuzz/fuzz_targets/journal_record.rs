//! cargo-fuzz target `journal_record`: see `replaymig_fuzz::journal_record` for the input
//! layout and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replaymig_fuzz::journal_record(data));

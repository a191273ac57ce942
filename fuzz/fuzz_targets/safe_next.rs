//! Fuzz target `safe_next`: see `portcullis_fuzz::harness::safe_next_target` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::safe_next_target(data));

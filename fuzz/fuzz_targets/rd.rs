//! Fuzz target `rd`: see `portcullis_fuzz::harness::rd_target` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::rd_target(data));

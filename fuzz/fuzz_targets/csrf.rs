//! Fuzz target `csrf`: see `portcullis_fuzz::harness::csrf` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::csrf(data));

//! Fuzz target `forwarded_for`: see `portcullis_fuzz::harness::forwarded_for` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::forwarded_for(data));

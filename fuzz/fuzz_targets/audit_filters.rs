//! Fuzz target `audit_filters`: see `portcullis_fuzz::harness::audit_filters` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::audit_filters(data));

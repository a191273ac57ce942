//! Fuzz target `cookies`: see `portcullis_fuzz::harness::cookie_header` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::cookie_header(data));

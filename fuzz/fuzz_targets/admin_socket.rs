//! Fuzz target `admin_socket`: see `portcullis_fuzz::harness::admin_request` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::admin_request(data));

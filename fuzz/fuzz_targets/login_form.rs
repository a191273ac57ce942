//! Fuzz target `login_form`: see `portcullis_fuzz::harness::login_form` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::login_form(data));

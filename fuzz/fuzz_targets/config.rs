//! Fuzz target `config`: see `portcullis_fuzz::harness::config_file` for the input format and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::harness::config_file(data));

//! The integration suite: one binary, every test against the real server over real TLS on
//! port 0 with a temporary store (see `helpers::spawn_app`).

mod brute_force;
mod child;
mod cli;
mod crash;
mod exhaustion;
mod fuzz_props;
mod helpers;
mod load;
mod loadtest;
mod login;
mod logout;
mod memory;
mod review;
mod secrets;
mod security;
mod sessions;
mod stalls;
mod tls;

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

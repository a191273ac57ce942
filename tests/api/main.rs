//! The integration suite: one binary, every test against the real server over real TLS on
//! port 0 with a temporary store (see `helpers::spawn_app`).

mod admin_review;
mod brute_force;
mod brute_force_pg;
mod brute_force_races;
mod child;
mod cli;
mod crash;
mod descriptors;
mod disk;
mod exhaustion;
mod fuzz_props;
mod hash_upgrade;
mod helpers;
mod http_edges;
mod identities;
mod instances;
mod load;
mod loadtest;
mod login;
mod login_csrf;
mod logout;
mod lookalikes;
mod memory;
mod notices;
mod password_policy;
mod pg;
mod pg_app;
mod postgres;
mod readiness;
mod review;
mod review_times;
mod secrets;
mod security;
mod sessions;
mod stalls;
mod store_postgres;
mod store_seam;
mod terminal;
mod tls;
mod user_enumeration;

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

//! portcullis: a security-hardened login server. The binary is a thin shell around this
//! library, which the integration tests and benches drive directly.

// No panicking shortcuts outside tests; the few justified exceptions say why where they are.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod admin_socket;
pub mod app;
pub mod audit;
pub mod authentication;
pub mod brute_force;
pub mod captcha;
pub mod cli;
pub mod client;
pub mod config;
pub mod cookies;
pub mod cpu_time;
pub mod csrf;
pub mod descriptors;
pub mod domain;
pub mod factors;
pub mod failures;
pub mod fault_log;
pub mod files;
pub mod forward_auth;
pub mod loadtest;
pub mod log_file;
pub mod memory;
pub mod metrics;
pub mod passkeys;
pub mod password;
pub mod postgres;
pub mod random;
pub mod rate_limit;
pub mod review;
pub mod routes;
pub mod serve;
pub mod session;
pub mod sign_in;
pub mod stall;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod users;

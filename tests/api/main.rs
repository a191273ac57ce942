//! The integration suite: one binary, every test against the real server over real TLS on
//! port 0 with a temporary store (see `helpers::spawn_app`).

mod cli;
mod helpers;
mod login;
mod logout;
mod security;
mod sessions;

//! The fuzz crate's library: the shared checks every target (and every property test) runs.

pub mod harness;

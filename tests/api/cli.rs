//! The command line against a stopped and a running server (filled in below).

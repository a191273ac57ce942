//! Terminal logging: human-readable lines on standard error, filtered by `RUST_LOG`
//! (default `info`). The JSON audit files are per application, see [`crate::audit`].

use tracing_subscriber::EnvFilter;

pub fn init_terminal() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,poem=warn,sled=warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

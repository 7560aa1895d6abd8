//! Logging: the tracing subscriber, the only global of the process.

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: human-readable lines on stderr, filtered by `RUST_LOG`
/// (default: `info` for the coordinator, `warn` for its libraries). Safe to call twice.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,tcc_coordinator=info,tcc-coordinator=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

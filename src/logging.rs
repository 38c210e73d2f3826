//! Logging to stderr through tracing; refinery's `log` records are bridged in.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Logs go to stderr so stdout stays data (plans, JSON).
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

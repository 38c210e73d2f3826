//! Logging to stderr through tracing; refinery's and tokio-postgres's `log` records are bridged in.
//!
//! **Invariant:** the PostgreSQL driver's records are never shown below `info`, whatever the
//! filter asks: its debug lines print every statement and its parameters, and those carry role
//! passwords (`CREATE ROLE … PASSWORD`, the emulator's stored project records).

use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

/// Log targets of the driver crates that print statements with their parameters.
const STATEMENT_LOGGING_TARGETS: &[&str] = &["tokio_postgres", "postgres_protocol"];

/// Install the global subscriber. Logs go to stderr so stdout stays data (plans, JSON).
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter_fn(|metadata| !prints_statements(metadata)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// A debug or trace record of the driver: it may hold a statement's text or parameters.
fn prints_statements(metadata: &Metadata<'_>) -> bool {
    *metadata.level() > tracing::Level::INFO
        && STATEMENT_LOGGING_TARGETS.iter().any(|target| {
            metadata
                .target()
                .strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

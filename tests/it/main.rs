//! The integration tests, in one binary: one link instead of thirty, and one pool of test
//! threads, so a file whose last test runs long no longer leaves the other core idle.
//!
//! Each module is one area (its own doc says what it covers); `common` and `support` are the
//! shared helpers, `fault_support` the fault proxies.

mod common;
#[path = "support/faults.rs"]
mod fault_support;
mod support;

mod apply;
mod bad_input;
mod baseline;
mod bench_smoke;
mod catalog;
mod checkpoints;
mod compute;
mod crash_windows;
mod drift_gc;
mod economy;
mod emulator;
mod faults;
mod fingerprint;
mod gates;
mod hostile_input;
mod lint;
mod lock_footprint;
mod neon_client;
mod plan;
mod real_history;
mod releases;
mod resume;
mod rollback;
mod schema_drift;
mod secrets;
mod shared_state;
mod transactions;

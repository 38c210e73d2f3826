//! The only module that knows tokio-postgres and refinery's runner.
//!
//! - [`check`]: the query of a `sql:` check between waves (read-only, `$1` = wave start).
//! - [`connect`]: direct connections (verified TLS to any host but loopback, where
//!   `sslmode=disable` is allowed for the local emulator).
//! - [`catalog`]: streams the rows of the user's catalog query (`fleet.source: postgres`).
//! - [`history`]: reads refinery's history table and compares it with the plan (pure compare).
//! - [`fingerprint`]: the schema fingerprint, read in one catalog query.
//! - [`lock`]: one runner per tenant through a polled session advisory lock; the probe's
//!   lock-and-read in one round trip; the release guard that takes the lock and checks the
//!   probe's read in the release's own round trip.
//! - [`lock_footprint`]: the locks a release takes on a validation branch, measured.
//! - [`reference`]: reference fingerprints from V1..Vn applied to a throwaway database.
//! - [`runner`]: refinery with `lock_timeout`/`statement_timeout` and no-transaction migrations.
//! - [`error`]: SQLSTATE and message extraction from driver errors.
//!
//! **Invariant:** refinery's history table in the tenant is the truth about what is applied;
//! nothing here writes history rows except refinery's own insert, in the migration's transaction.

pub mod baseline;
pub mod catalog;
pub mod check;
pub mod connect;
pub mod error;
pub mod fingerprint;
pub mod history;
pub mod invalid_index;
pub mod lock;
pub mod lock_footprint;
pub mod reference;
pub mod runner;

pub use connect::connect;
pub use error::DbFailure;
pub use fingerprint::read_fingerprint;
pub use history::{
    AppliedMigration, HistoryComparison, HistoryRead, PlannedVersion, compare_history, read_history,
};

/// refinery's default history table; tenants migrated by refinery or refinery_cli use it too.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

//! Executes a plan: waves in order, tenants in parallel within a wave, every step journaled.
//!
//! - [`shutdown`]: Ctrl-C levels (stop starting tenants; abort now).
//! - [`tenant`]: one tenant's pipeline: probe, validate on a branch, restore point, apply to main.
//! - [`waves`]: the wave loop: bounded concurrency, failure budget, bake, `--until-wave`, resume.
//! - [`timings`]: where a run's time went, step by step (the `timings` of `apply --output json`).
//! - [`recorded`]: which tenants `--skip-recorded` skips without connecting (pure).
//! - [`recovery`]: what a retry or resume takes over from the journal (what an interrupted
//!   apply committed, whether the restore point still serves), decided against main's history.
//! - [`shared`]: the wave loop of one of several runners sharing a state store (claims, leases),
//!   and `shared_gates`, its gates between waves (each run once by the runner the store elects,
//!   waited for by the others); both loops end a wave through `waves::end_wave`;
//!   [`control`]: pause/abort switches and `--max-duration`, read before each tenant starts.
//! - [`reporter`]: the trait progress displays implement; the executor never draws anything.
//! - [`settle`]: the end of a run's one look at the validation-branch deletes still young then.
//! - [`schema_check`]: the opt-in check (`verify_schema`) that main's schema is what its
//!   history says, before anything is applied.
//!
//! **Invariant:** a tenant whose probe or validation fails is never touched on main.
//! **Invariant:** a tenant finished in the journal is not touched or even connected to on resume;
//! an unfinished one is re-probed, and its history table decides what is still pending.
//! **Invariant:** a tenant this plan rolled back (or whose rollback failed) is held back: no
//! run of this plan touches it unless [`ApplyConfig::include_rolled_back`] names it.
//! **Invariant:** when a wave's failures exceed its budget no new tenant of it starts and no later
//! wave starts.

pub mod control;
pub mod recorded;
pub mod recovery;
pub mod reporter;
pub mod schema_check;
pub mod settle;
pub mod shared;
mod shared_gates;
pub mod shutdown;
pub mod tenant;
pub mod timings;
pub mod waves;

pub use reporter::{NoReporter, Reporter};
pub use shutdown::{
    Shutdown, ShutdownTrigger, channel as shutdown_channel, install_signal_handlers,
};
pub use tenant::TenantOutcome;
pub use waves::{RunOutcome, execute};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::pg::runner::LockRetry;

/// Which tenants that this plan rolled back `apply` migrates again. A rollback is an operator's
/// decision ("the app broke"), so a later run of the same plan, `--retry-failed` included, leaves
/// them back unless asked; a new plan treats them as any tenant that is behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IncludeRolledBack {
    #[default]
    None,
    All,
    Tenants(BTreeSet<String>),
}

impl IncludeRolledBack {
    pub fn includes(&self, tenant: &str) -> bool {
        match self {
            IncludeRolledBack::None => false,
            IncludeRolledBack::All => true,
            IncludeRolledBack::Tenants(tenants) => tenants.contains(tenant),
        }
    }
}

/// How `apply` runs, beyond what the plan decides.
#[derive(Debug, Clone)]
pub struct ApplyConfig {
    /// Stop cleanly after this wave.
    pub until_wave: Option<String>,
    /// Try failed tenants again and un-halt their waves.
    pub retry_failed: bool,
    /// Which tenants this plan rolled back are migrated again (by default none).
    pub include_rolled_back: IncludeRolledBack,
    /// Do not wait for bake times.
    pub skip_bake: bool,
    /// Bound on open database connections across all tenants in flight.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// How long to poll for the per-tenant advisory lock before failing the tenant.
    pub lock_wait: Duration,
    pub lock_retry: LockRetry,
    /// Reconnect-and-retry bound when a tenant's connection drops mid-apply.
    pub max_connection_retries: u32,
    /// Statements run on each validation branch after its migrations (policy `verify`).
    pub verify_sql: Option<String>,
    /// Expiry of backup branches (restore_point: backup_branch).
    pub backup_ttl: Duration,
    /// Policy `verify_schema: true`: the references main's schema must equal before a tenant
    /// is migrated; `None` skips the check.
    pub schema_check: Option<Arc<schema_check::SchemaCheck>>,
    /// Checks, approvals and notifications between waves.
    pub gates: crate::gates::GateConfig,
    /// Main's connection URIs from the fleet's source (the catalog): those tenants are
    /// connected to without a Neon API call.
    pub source_connections: Option<Arc<crate::fleet::ConnectionBook>>,
    /// `--skip-recorded`: tenants whose recorded version covers the plan are skipped without
    /// connecting (journaled `skipped_recorded`).
    pub skip_recorded: Option<Arc<recorded::RecordedVersions>>,
}

impl ApplyConfig {
    /// The settings a pipeline gets without flags.
    pub fn standard() -> ApplyConfig {
        ApplyConfig {
            until_wave: None,
            retry_failed: false,
            include_rolled_back: IncludeRolledBack::None,
            skip_bake: false,
            max_connections: 64,
            connect_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(30),
            lock_retry: LockRetry {
                max_attempts: 5,
                base_delay: Duration::from_millis(500),
            },
            max_connection_retries: 3,
            verify_sql: None,
            backup_ttl: Duration::from_secs(7 * 24 * 3600),
            schema_check: None,
            gates: crate::gates::GateConfig::standard(),
            source_connections: None,
            skip_recorded: None,
        }
    }
}

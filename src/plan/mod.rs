//! Plans: the wave assignment (pure), the plan file, and the pipeline that writes it.
//!
//! Layout: [`model`] is the file format; [`waves`] assigns tenants to waves; [`build`] turns a
//! policy, migrations and a fleet into a [`model::Plan`]; [`id`] digests it; [`file`] reads and
//! writes it; [`check`] compares it with the migrations on disk; [`summary`] describes it;
//! [`pipeline`] strings these together for `schemafleet plan`.
//!
//! **Invariant:** `waves`, `build`, `id`, `check` and `summary` do no I/O; only `file` and
//! `pipeline` touch the filesystem.

pub mod build;
pub mod check;
pub mod file;
pub mod id;
pub mod model;
pub mod pipeline;
pub mod summary;
pub mod waves;

pub use check::{MigrationDifference, MigrationMismatch, check_migrations};
pub use file::{PlanError, load_plan, resolve_from_plan, write_plan};
pub use id::compute_plan_id;
// Merge resolution (drift branch): main's `apply` reads `plan::sha256_hex`, which moved to `migrations`.
pub use crate::migrations::sha256_hex;
pub use pipeline::{PlanOutcome, PlanningError, plan_from_tenants_file};

use model::{Plan, Validation};

/// Whether `apply` validates `tenant_id` on a branch under this plan's validation mode.
///
/// For [`Validation::SamplePercent`] the sample is stable: a hash of the plan's salt and the
/// tenant id, independent of the tenant's wave, so a sample is spread across all waves.
pub fn sampled_for_validation(plan: &Plan, tenant_id: &str) -> bool {
    match plan.policy.validation {
        Validation::Branch => true,
        Validation::None => false,
        Validation::SamplePercent(percent) => {
            waves::hash_position(
                &plan.policy.salt,
                waves::VALIDATION_SAMPLE_DOMAIN,
                tenant_id,
            ) < percent / 100.0
        }
    }
}

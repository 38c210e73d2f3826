//! Plans: the wave assignment (pure), the plan file, and the pipeline that writes it.
//!
//! Layout: [`model`] is the file format; [`collect`] reduces the fleet to what planning needs;
//! [`waves`] assigns tenants to waves; [`build`] turns a
//! policy, migrations and a fleet into a [`model::Plan`]; [`id`] digests it; [`file`] reads and
//! writes it; [`check`] compares it with the migrations on disk; [`summary`] describes it;
//! [`pipeline`] strings these together for `schemafleet plan`.
//!
//! **Invariant:** `collect`, `waves`, `build`, `id`, `check` and `summary` do no I/O; only `file` and
//! `pipeline` touch the filesystem.

pub mod build;
pub mod check;
pub mod collect;
pub mod cost;
mod fast_load;
pub mod file;
pub mod id;
pub mod model;
pub mod pipeline;
pub mod shares;
pub mod summary;
pub mod waves;

pub use check::{MigrationDifference, MigrationMismatch, check_migrations};
pub use file::{PlanError, load_plan, resolve_from_plan, write_plan};
pub use id::compute_plan_id;
pub use pipeline::{PlanOutcome, PlanningError, plan_from_tenants_file};

use model::{Plan, Validation};

/// The plan's migrations as the history comparison wants them.
pub fn planned_versions(plan: &Plan) -> Vec<crate::pg::PlannedVersion> {
    plan.migrations
        .items
        .iter()
        .map(|item| crate::pg::PlannedVersion {
            version: item.version,
            name: item.name.clone(),
            checksum: item.checksum.clone(),
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::model::*;
    use super::*;

    fn plan(validation: Validation, restore_point: RestorePointKind, n_tenants: usize) -> Plan {
        let mut plan = test_plan(vec![PlannedWave {
            name: "all".into(),
            concurrency: 1,
            max_failures: None,
            max_failure_percent: None,
            bake_s: 0,
            checks: Vec::new(),
            approval: Default::default(),
            tenants: (0..n_tenants)
                .map(|idx| PlannedTenant::from_id(format!("p-{idx}")))
                .collect(),
        }]);
        plan.policy.validation = validation;
        plan.policy.restore_point = restore_point;
        plan.policy.salt = "sample-salt".into();
        plan
    }

    #[test]
    fn validation_sampling_is_stable_and_proportional() {
        let sampled = plan(
            Validation::SamplePercent(10.0),
            RestorePointKind::BackupBranch,
            0,
        );
        let n_sampled = (0..10_000)
            .filter(|idx| sampled_for_validation(&sampled, &format!("p-{idx}")))
            .count();
        assert!((800..1200).contains(&n_sampled), "{n_sampled}");
        assert_eq!(
            sampled_for_validation(&sampled, "p-1"),
            sampled_for_validation(&sampled, "p-1")
        );
        let none = plan(
            Validation::SamplePercent(0.0),
            RestorePointKind::BackupBranch,
            0,
        );
        let all = plan(
            Validation::SamplePercent(100.0),
            RestorePointKind::BackupBranch,
            0,
        );
        for idx in 0..1000 {
            let tenant_id = format!("p-{idx}");
            assert!(!sampled_for_validation(&none, &tenant_id));
            assert!(sampled_for_validation(&all, &tenant_id));
        }
        let branch = plan(Validation::Branch, RestorePointKind::BranchPoint, 0);
        assert!(sampled_for_validation(&branch, "p-1"));
        let off = plan(Validation::None, RestorePointKind::BackupBranch, 0);
        assert!(!sampled_for_validation(&off, "p-1"));
    }

    #[test]
    fn the_transaction_mode_is_part_of_the_plan_id_and_summary() {
        let per_migration = plan(Validation::Branch, RestorePointKind::BranchPoint, 3);
        let mut per_release = per_migration.clone();
        per_release.policy.transaction = TransactionMode::PerRelease;
        assert_ne!(
            id::compute_plan_id(&per_migration),
            id::compute_plan_id(&per_release)
        );
        let summary = summary::summarize(&per_release, "p.plan.yaml", 600);
        assert!(
            summary.to_string().contains("`transaction: per_release`"),
            "{summary}"
        );
    }

    #[test]
    fn api_call_estimate() {
        let branch = plan(Validation::Branch, RestorePointKind::BranchPoint, 100);
        let summary = summary::summarize(&branch, "p.plan.yaml", 600);
        assert_eq!(summary.api_calls.total, 100 + 200);
        assert!((summary.estimated_api_minutes - 300.0 / 600.0).abs() < 1e-9);
        let backup = plan(Validation::None, RestorePointKind::BackupBranch, 100);
        let summary = summary::summarize(&backup, "p.plan.yaml", 100);
        let words = |summary: &summary::PlanSummary| {
            summary
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(summary.api_calls.total, 100 + 300);
        assert_eq!(summary.estimated_api_minutes, 4.0);
        assert!(
            words(&summary).contains("~400 requests")
                && words(&summary).contains("≈ 4 min at 100 requests/min"),
            "{summary}"
        );
        // A catalog that gives every URI: validation's requests only.
        let mut catalog = plan(Validation::Branch, RestorePointKind::BranchPoint, 100);
        catalog.fleet.connection_uris = 100;
        let summary = summary::summarize(&catalog, "p.plan.yaml", 700);
        assert_eq!(summary.api_calls.connection, 0);
        assert_eq!(summary.api_calls.total, 200);
        assert!(
            words(&summary).contains("≈ 17 s at 700 requests/min")
                && words(&summary).contains("none for the connection URIs of 100 tenants"),
            "{summary}"
        );
        assert!(summary.suggestion.is_none());
        // 300,000 validated tenants: most of a day, and a suggestion to sample.
        let fleet = plan(Validation::Branch, RestorePointKind::BranchPoint, 300_000);
        let summary = summary::summarize(&fleet, "p.plan.yaml", 700);
        let text = words(&summary);
        assert!(text.contains("≈ 21 h at 700 requests/min"), "{text}");
        assert!(
            summary
                .suggestion
                .as_deref()
                .is_some_and(|s| s.contains("sample_percent: 10")),
            "{text}"
        );
    }
}

//! Turns a policy, a migration set and a fleet into a [`Plan`]. Pure: paths and the creation
//! time come in as arguments.
//!
//! **Invariant:** the same arguments give the same plan, field for field; the plan's tenants are
//! exactly the fleet's tenants that the filters keep.

use super::collect::CollectedFleet;
use super::id::compute_plan_id;
use super::model::{
    FleetSummary, PLAN_FORMAT_VERSION, Plan, PlannedLint, PlannedMigration, PlannedMigrations,
    PlannedPolicy, PlannedTenant, PlannedWave, VerifyFile,
};
use super::waves::{WaveCandidate, WaveSpec, assign_waves};
use crate::migrations::MigrationSet;
use crate::policy::Policy;

/// Named tenants listed in an error before it says "and N more".
const MAX_TENANTS_IN_MESSAGE: usize = 10;

/// Everything [`build_plan`] needs besides the policy, migrations and fleet.
#[derive(Debug, Clone)]
pub struct PlanPaths {
    /// The policy path as the user gave it.
    pub policy: String,
    /// The migrations directory relative to the plan file's directory.
    pub migrations_dir: String,
    /// The verify file relative to the plan file's directory, when the policy has one.
    pub verify: Option<String>,
}

/// Why no plan can be made from these inputs.
#[derive(Debug, thiserror::Error)]
pub enum PlanBuildError {
    #[error(
        "no migrations in {dir}: nothing to roll out; add V1__name.sql files or pass --migrations DIR"
    )]
    NoMigrations { dir: String },
    #[error(
        "the fleet is empty: {fleet_source} listed {discovered} tenants and the policy's fleet filters excluded {excluded}; check fleet.source, the filters, or --tenants"
    )]
    EmptyFleet {
        fleet_source: String,
        discovered: usize,
        excluded: usize,
    },
    #[error(
        "{location}: wave `{wave}` names tenant {tenant}, which is not in the fleet ({fleet_source}); use a Neon project id or project name from the fleet, or remove it"
    )]
    UnknownNamedTenant {
        location: String,
        wave: String,
        tenant: String,
        fleet_source: String,
    },
    #[error(
        "{location}: wave `{wave}` names tenant {tenant}, which the policy excludes ({reason}); remove it from the wave or from the exclusion"
    )]
    NamedTenantExcluded {
        location: String,
        wave: String,
        tenant: String,
        reason: String,
    },
    #[error(
        "{location}: wave `{wave}` names {tenant}, which is the name of several projects ({ids}); name the project by its id"
    )]
    AmbiguousNamedTenant {
        location: String,
        wave: String,
        tenant: String,
        ids: String,
    },
    #[error(
        "{location}: wave `{wave}` names {tenant}, but project {id} is already named in the policy (by its id or its name); name each tenant once"
    )]
    NamedTwice {
        location: String,
        wave: String,
        tenant: String,
        id: String,
    },
    #[error(
        "{location}: wave `{wave}` names tenant {tenant}, but its `match` ({rule}) rejects that tenant; move the tenant to another wave or change the match"
    )]
    NamedTenantRejected {
        location: String,
        wave: String,
        tenant: String,
        rule: String,
    },
    #[error(
        "{location}: no wave accepts {n_tenants} tenant(s): {tenants}; every wave from their position on has a `match` they fail: make the last wave take everyone (remove its `match`)"
    )]
    Unassigned {
        location: String,
        n_tenants: usize,
        tenants: String,
    },
    #[error(
        "{location}: tenant id {id} is listed twice (first at {first_place}); each Neon project must appear once"
    )]
    DuplicateTenant {
        location: String,
        id: String,
        first_place: String,
    },
}

/// Build the plan. `fleet` is consumed: at 300,000 tenants its ids are most of the memory, and
/// they move into the plan's waves.
pub fn build_plan(
    policy: &Policy,
    migrations: &MigrationSet,
    fleet: CollectedFleet,
    paths: &PlanPaths,
    created_at: String,
) -> Result<Plan, PlanBuildError> {
    if migrations.migrations.is_empty() {
        return Err(PlanBuildError::NoMigrations {
            dir: migrations.dir.display().to_string(),
        });
    }
    let named = resolve_named_tenants(policy, &fleet)?;
    let specs: Vec<WaveSpec> = policy
        .waves
        .iter()
        .zip(named)
        .map(|(wave, named_tenants)| WaveSpec {
            percent: wave.percent,
            named_tenants,
        })
        .collect();
    let CollectedFleet {
        source,
        n_discovered,
        tenants: mut kept,
        excluded,
        unavailable,
        catalog,
        connection_uris,
        ..
    } = fleet;
    let wave_members = assign_waves(&kept, &specs, &policy.salt).map_err(|unassigned| {
        let n_tenants = unassigned.tenant_idxs.len();
        let listed: Vec<&str> = unassigned
            .tenant_idxs
            .iter()
            .take(MAX_TENANTS_IN_MESSAGE)
            .map(|&tenant_idx| kept[tenant_idx].id.as_str())
            .collect();
        let more = n_tenants.saturating_sub(listed.len());
        let mut tenants = listed.join(", ");
        if more > 0 {
            tenants.push_str(&format!(" and {more} more"));
        }
        PlanBuildError::Unassigned {
            location: policy.wave_location(policy.waves.len() - 1),
            n_tenants,
            tenants,
        }
    })?;

    let waves: Vec<PlannedWave> = planned_waves_without_tenants(policy)
        .into_iter()
        .zip(wave_members)
        .map(|(wave, members)| PlannedWave {
            tenants: members
                .into_iter()
                .map(|tenant_idx| {
                    let tenant = &mut kept[tenant_idx];
                    PlannedTenant {
                        id: std::mem::take(&mut tenant.id),
                        name: std::mem::take(&mut tenant.name),
                        region: std::mem::take(&mut tenant.region),
                    }
                })
                .collect(),
            ..wave
        })
        .collect();

    let mut plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        plan_id: String::new(),
        created_at,
        policy: planned_policy(policy, paths),
        migrations: PlannedMigrations {
            dir: paths.migrations_dir.clone(),
            items: migrations
                .migrations
                .iter()
                .map(|migration| PlannedMigration {
                    version: migration.version,
                    name: migration.name.clone(),
                    sha256: migration.sha256.clone(),
                    checksum: migration.checksum.to_string(),
                    no_transaction: migration.no_transaction,
                })
                .collect(),
        },
        fleet: FleetSummary {
            source,
            discovered: n_discovered,
            planned: kept.len(),
            excluded,
            unavailable,
            catalog,
            connection_uris,
        },
        waves,
        lint: Some(PlannedLint::new(
            &policy.lint,
            crate::lint::lint_set(migrations, &policy.lint, policy.transaction),
        )),
    };
    plan.plan_id = compute_plan_id(&plan);
    Ok(plan)
}

/// The policy's settings as a plan records them.
pub fn planned_policy(policy: &Policy, paths: &PlanPaths) -> PlannedPolicy {
    PlannedPolicy {
        path: paths.policy.clone(),
        sha256: policy.sha256.clone(),
        database: policy.database.clone(),
        role: policy.role.clone(),
        validation: policy.validation,
        restore_point: policy.restore_point,
        transaction: policy.transaction,
        lock_timeout_ms: duration_ms(policy.lock_timeout),
        statement_timeout_ms: duration_ms(policy.statement_timeout),
        branch_ttl_s: policy.branch_ttl.as_secs(),
        max_lock_hold_ms: policy.max_lock_hold.map(duration_ms),
        salt: policy.salt.clone(),
        verify: policy
            .verify
            .as_ref()
            .zip(paths.verify.as_ref())
            .map(|(verify, path)| VerifyFile {
                path: path.clone(),
                sha256: verify.sha256.clone(),
            }),
        api_rate_limit_per_min: policy.api_rate_limit_per_min,
        schemas: policy.schemas.clone(),
        verify_schema: policy.verify_schema,
        notify: policy.notify.clone(),
    }
}

/// The policy's waves as a plan records them, before tenants are assigned.
pub fn planned_waves_without_tenants(policy: &Policy) -> Vec<PlannedWave> {
    policy
        .waves
        .iter()
        .map(|wave| PlannedWave {
            name: wave.name.clone(),
            concurrency: wave.concurrency,
            max_failures: wave.max_failures,
            max_failure_percent: wave.max_failure_percent,
            bake_s: wave.bake.as_secs(),
            checks: wave.checks.clone(),
            approval: wave.approval,
            tenants: Vec::new(),
        })
        .collect()
}

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// For each wave, the indexes into the fleet's tenants of those the policy names (by id or by
/// name).
fn resolve_named_tenants(
    policy: &Policy,
    fleet: &CollectedFleet,
) -> Result<Vec<Vec<usize>>, PlanBuildError> {
    let mut named: Vec<Vec<usize>> = Vec::with_capacity(policy.waves.len());
    for (wave_idx, wave) in policy.waves.iter().enumerate() {
        let mut wave_named = Vec::with_capacity(wave.tenants.len());
        for reference in &wave.tenants {
            let location = || policy.named_tenant_location(wave_idx, reference);
            let tenant_idx = match fleet.position_of_id(reference) {
                Some(tenant_idx) => tenant_idx,
                None => match fleet.ids_named(reference) {
                    [tenant_id] => fleet
                        .position_of_id(tenant_id)
                        .expect("invariant: ids_named only returns ids of kept tenants"),
                    [] => {
                        if let Some(reason) = fleet.exclusion_of_reference(reference) {
                            return Err(PlanBuildError::NamedTenantExcluded {
                                location: location(),
                                wave: wave.name.clone(),
                                tenant: reference.clone(),
                                reason: reason.to_string(),
                            });
                        }
                        return Err(PlanBuildError::UnknownNamedTenant {
                            location: location(),
                            wave: wave.name.clone(),
                            tenant: reference.clone(),
                            fleet_source: fleet.source.clone(),
                        });
                    }
                    several => {
                        return Err(PlanBuildError::AmbiguousNamedTenant {
                            location: location(),
                            wave: wave.name.clone(),
                            tenant: reference.clone(),
                            ids: several.join(", "),
                        });
                    }
                },
            };
            if !fleet.tenants[tenant_idx].accepted_by(wave_idx) {
                return Err(PlanBuildError::NamedTenantRejected {
                    location: location(),
                    wave: wave.name.clone(),
                    tenant: reference.clone(),
                    rule: wave
                        .match_rule
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                });
            }
            // The policy rejects a name given twice, but an id and its project's name can
            // still point at one tenant.
            if named
                .iter()
                .chain(std::iter::once(&wave_named))
                .any(|members| members.contains(&tenant_idx))
            {
                return Err(PlanBuildError::NamedTwice {
                    location: location(),
                    wave: wave.name.clone(),
                    tenant: reference.clone(),
                    id: fleet.tenants[tenant_idx].id.clone(),
                });
            }
            wave_named.push(tenant_idx);
        }
        named.push(wave_named);
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::fleet::{FleetInventory, Tenant};
    use crate::migrations::Migration;
    use crate::policy;

    const POLICY: &str = "\
fleet: {source: file, file: t.csv, exclude: [p-0009]}
database: neondb
role: owner
salt: s1
waves:
  - name: canary
    tenants: [p-0003, tenant-0005]
    percent: 5
    concurrency: 2
  - name: eu
    percent: 50
    concurrency: 4
    match: {region: eu}
  - name: rest
    percent: 100
    concurrency: 8
";

    fn policy(text: &str) -> Policy {
        policy::parse(Path::new("plans/p.yaml"), text).unwrap()
    }

    fn migrations() -> MigrationSet {
        let sql = "SELECT 1;".to_string();
        MigrationSet {
            dir: PathBuf::from("migrations"),
            migrations: vec![Migration {
                version: 1,
                name: "one".into(),
                file_name: "V1__one.sql".into(),
                sha256: crate::migrations::sha256_hex(sql.as_bytes()),
                checksum: 42,
                sql,
                no_transaction: false,
            }],
        }
    }

    fn inventory(n_tenants: usize) -> FleetInventory {
        FleetInventory {
            source: "file:t.csv".into(),
            tenants: (1..=n_tenants)
                .map(|number| Tenant {
                    id: format!("p-{number:04}"),
                    name: format!("tenant-{number:04}"),
                    region: Some(if number.is_multiple_of(2) { "eu" } else { "us" }.into()),
                    labels: BTreeMap::new(),
                })
                .collect(),
            unavailable: vec!["p-gone".into()],
        }
    }

    fn paths() -> PlanPaths {
        PlanPaths {
            policy: "plans/p.yaml".into(),
            migrations_dir: "../migrations".into(),
            verify: None,
        }
    }

    fn build(text: &str, n_tenants: usize, created_at: &str) -> Result<Plan, String> {
        let policy = policy(text);
        let fleet = crate::plan::collect::collect_inventory(&policy, inventory(n_tenants))
            .map_err(|error| error.to_string())?;
        build_plan(&policy, &migrations(), fleet, &paths(), created_at.into())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn same_inputs_same_plan_apart_from_creation_time() {
        let first = build(POLICY, 40, "2026-11-26T10:00:00Z").unwrap();
        let mut second = build(POLICY, 40, "2026-11-27T10:00:00Z").unwrap();
        assert_eq!(first.plan_id, second.plan_id);
        assert_eq!(first.plan_id.len(), 16);
        second.created_at = first.created_at.clone();
        assert_eq!(first, second);
        // Anything apply acts on changes the id.
        let other_salt = build(&POLICY.replace("salt: s1", "salt: s2"), 40, "t").unwrap();
        assert_ne!(other_salt.plan_id, first.plan_id);
    }

    #[test]
    fn fleet_counts_exclusions_and_waves() {
        let plan = build(POLICY, 40, "t").unwrap();
        assert_eq!(plan.fleet.discovered, 40);
        assert_eq!(plan.fleet.planned, 39);
        assert_eq!(plan.fleet.excluded.len(), 1);
        assert_eq!(plan.fleet.excluded[0].id, "p-0009");
        assert_eq!(plan.fleet.unavailable, vec!["p-gone".to_string()]);
        assert_eq!(plan.tenant_count(), 39);
        let canary = plan.wave("canary").unwrap();
        // Named by id and by project name; the plan shows the name and region beside the id.
        assert!(canary.tenant("p-0003").is_some());
        let named = canary.tenant("p-0005").unwrap();
        assert_eq!(named.name, "tenant-0005");
        assert_eq!(named.label(), "tenant-0005 (p-0005)");
        assert!(!named.region.is_empty(), "{named:?}");
        let eu = plan.wave("eu").unwrap();
        assert!(eu.tenant_ids().all(|id| {
            let number: usize = id[2..].parse().unwrap();
            number.is_multiple_of(2)
        }));
        assert_eq!(plan.migrations.items[0].checksum, "42");
    }

    #[test]
    fn named_tenant_errors_point_at_the_policy() {
        let message = build(&POLICY.replace("p-0003", "p-0999"), 40, "t").unwrap_err();
        assert_eq!(
            message,
            "plans/p.yaml:7:15: wave `canary` names tenant p-0999, which is not in the fleet (file:t.csv); use a Neon project id or project name from the fleet, or remove it"
        );
        let message = build(&POLICY.replace("p-0003", "p-0009"), 40, "t").unwrap_err();
        assert!(
            message.starts_with("plans/p.yaml:7:15: wave `canary` names tenant p-0009, which the policy excludes (listed in fleet.exclude)"),
            "{message}"
        );
        let message = build(&POLICY.replace("p-0003", "p-0005"), 40, "t").unwrap_err();
        assert!(
            message.contains("project p-0005 is already named"),
            "{message}"
        );
        let rejected = POLICY.replace(
            "    percent: 5\n    concurrency: 2\n",
            "    percent: 5\n    concurrency: 2\n    match: {region: eu}\n",
        );
        let message = build(&rejected, 40, "t").unwrap_err();
        assert!(
            message.contains("its `match` (region eu) rejects that tenant"),
            "{message}"
        );
    }

    #[test]
    fn empty_fleet_and_unassigned_tenants_are_errors() {
        let message = build(&POLICY.replace("[p-0003, tenant-0005]", "[]"), 0, "t").unwrap_err();
        assert!(
            message.starts_with("the fleet is empty: file:t.csv listed 0 tenants"),
            "{message}"
        );
        let only_eu_last = POLICY.replace(
            "    percent: 100\n    concurrency: 8\n",
            "    percent: 100\n    concurrency: 8\n    match: {region: eu}\n",
        );
        let message = build(&only_eu_last, 40, "t").unwrap_err();
        assert!(
            message.starts_with("plans/p.yaml:14:5: no wave accepts"),
            "{message}"
        );
        assert!(message.contains("p-0001"), "{message}");
    }

    #[test]
    fn one_and_two_tenant_fleets() {
        let text = POLICY
            .replace("[p-0003, tenant-0005]", "[]")
            .replace(", exclude: [p-0009]", "");
        for n_tenants in [1, 2] {
            let plan = build(&text, n_tenants, "t").unwrap();
            assert_eq!(plan.tenant_count(), n_tenants);
            assert_eq!(plan.fleet.planned, n_tenants);
        }
    }
}

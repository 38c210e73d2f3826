//! Turns a policy, a migration set and a fleet into a [`Plan`]. Pure: paths and the creation
//! time come in as arguments.
//!
//! **Invariant:** the same arguments give the same plan, field for field; the plan's tenants are
//! exactly the fleet's tenants that the filters keep.

use std::collections::HashMap;

use super::id::compute_plan_id;
use super::model::{
    FleetSummary, PLAN_FORMAT_VERSION, Plan, PlannedMigration, PlannedMigrations, PlannedPolicy,
    PlannedWave, VerifyFile,
};
use super::waves::{WaveSpec, assign_waves};
use crate::fleet::{FleetInventory, Tenant, apply_filters};
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
    #[error("{fleet_source} lists tenant {id} twice; each Neon project must appear once")]
    DuplicateTenant { fleet_source: String, id: String },
}

/// Build the plan. `inventory` is consumed: at 300,000 tenants its strings are most of the
/// memory, and the plan keeps only the ids.
pub fn build_plan(
    policy: &Policy,
    migrations: &MigrationSet,
    inventory: FleetInventory,
    paths: &PlanPaths,
    created_at: String,
) -> Result<Plan, PlanBuildError> {
    if migrations.migrations.is_empty() {
        return Err(PlanBuildError::NoMigrations {
            dir: migrations.dir.display().to_string(),
        });
    }
    let FleetInventory {
        source,
        tenants,
        unavailable,
    } = inventory;
    let n_discovered = tenants.len();
    let filtered = apply_filters(tenants, &policy.fleet.filters);
    let mut kept = filtered.kept;
    let excluded = filtered.excluded;
    if kept.is_empty() {
        return Err(PlanBuildError::EmptyFleet {
            fleet_source: source,
            discovered: n_discovered,
            excluded: excluded.len(),
        });
    }
    kept.sort_unstable_by(|left, right| left.id.cmp(&right.id));
    if let Some(pair) = kept.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(PlanBuildError::DuplicateTenant {
            fleet_source: source,
            id: pair[0].id.clone(),
        });
    }

    let named = resolve_named_tenants(policy, &kept, &excluded, &source)?;
    let specs: Vec<WaveSpec> = policy
        .waves
        .iter()
        .zip(named)
        .map(|(wave, named_tenants)| WaveSpec {
            percent: wave.percent,
            match_rule: wave.match_rule.as_ref(),
            named_tenants,
        })
        .collect();
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

    let waves: Vec<PlannedWave> = policy
        .waves
        .iter()
        .zip(wave_members)
        .map(|(wave, members)| PlannedWave {
            name: wave.name.clone(),
            concurrency: wave.concurrency,
            max_failures: wave.max_failures,
            max_failure_percent: wave.max_failure_percent,
            bake_s: wave.bake.as_secs(),
            tenants: members
                .into_iter()
                .map(|tenant_idx| std::mem::take(&mut kept[tenant_idx].id))
                .collect(),
        })
        .collect();

    let mut plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        plan_id: String::new(),
        created_at,
        policy: PlannedPolicy {
            path: paths.policy.clone(),
            sha256: policy.sha256.clone(),
            database: policy.database.clone(),
            role: policy.role.clone(),
            validation: policy.validation,
            restore_point: policy.restore_point,
            lock_timeout_ms: duration_ms(policy.lock_timeout),
            statement_timeout_ms: duration_ms(policy.statement_timeout),
            branch_ttl_s: policy.branch_ttl.as_secs(),
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
        },
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
        },
        waves,
    };
    plan.plan_id = compute_plan_id(&plan);
    Ok(plan)
}

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// For each wave, the indexes into `kept` of the tenants the policy names (by id or by name).
fn resolve_named_tenants(
    policy: &Policy,
    kept: &[Tenant],
    excluded: &[crate::plan::model::ExcludedTenant],
    source: &str,
) -> Result<Vec<Vec<usize>>, PlanBuildError> {
    let mut tenants_by_name: Option<HashMap<&str, Vec<usize>>> = None;
    let mut named = Vec::with_capacity(policy.waves.len());
    for (wave_idx, wave) in policy.waves.iter().enumerate() {
        let mut wave_named = Vec::with_capacity(wave.tenants.len());
        for reference in &wave.tenants {
            let location = || policy.named_tenant_location(wave_idx, reference);
            let by_id = kept
                .binary_search_by(|tenant| tenant.id.as_str().cmp(reference))
                .ok();
            let tenant_idx = match by_id {
                Some(tenant_idx) => tenant_idx,
                None => {
                    let by_name = tenants_by_name.get_or_insert_with(|| {
                        let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
                        for (tenant_idx, tenant) in kept.iter().enumerate() {
                            map.entry(tenant.name.as_str())
                                .or_default()
                                .push(tenant_idx);
                        }
                        map
                    });
                    match by_name.get(reference.as_str()).map(Vec::as_slice) {
                        Some([tenant_idx]) => *tenant_idx,
                        Some(several) => {
                            return Err(PlanBuildError::AmbiguousNamedTenant {
                                location: location(),
                                wave: wave.name.clone(),
                                tenant: reference.clone(),
                                ids: several
                                    .iter()
                                    .map(|&tenant_idx| kept[tenant_idx].id.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            });
                        }
                        None => {
                            if let Some(excluded) =
                                excluded.iter().find(|excluded| &excluded.id == reference)
                            {
                                return Err(PlanBuildError::NamedTenantExcluded {
                                    location: location(),
                                    wave: wave.name.clone(),
                                    tenant: reference.clone(),
                                    reason: excluded.reason.clone(),
                                });
                            }
                            return Err(PlanBuildError::UnknownNamedTenant {
                                location: location(),
                                wave: wave.name.clone(),
                                tenant: reference.clone(),
                                fleet_source: source.to_string(),
                            });
                        }
                    }
                }
            };
            if let Some(rule) = &wave.match_rule
                && !rule.matches(&kept[tenant_idx])
            {
                return Err(PlanBuildError::NamedTenantRejected {
                    location: location(),
                    wave: wave.name.clone(),
                    tenant: reference.clone(),
                    rule: rule.to_string(),
                });
            }
            // The policy rejects a name given twice, but an id and its project's name can
            // still point at one tenant.
            if named
                .iter()
                .chain(std::iter::once(&wave_named))
                .any(|members: &Vec<usize>| members.contains(&tenant_idx))
            {
                return Err(PlanBuildError::NamedTwice {
                    location: location(),
                    wave: wave.name.clone(),
                    tenant: reference.clone(),
                    id: kept[tenant_idx].id.clone(),
                });
            }
            wave_named.push(tenant_idx);
        }
        named.push(wave_named);
    }
    Ok(named)
}

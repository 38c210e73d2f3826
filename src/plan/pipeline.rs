//! The planning pipeline `schemafleet plan` (and the `plan` benchmark) runs: read the policy and
//! migrations, get the fleet, build the plan, write it, summarize it.
//!
//! **Invariant:** on any error no plan file is written (and an existing one is left as it was).

use std::path::{Path, PathBuf};

use super::build::{PlanBuildError, PlanPaths, build_plan};
use super::collect::{CollectedFleet, FleetCollector, collect_inventory};
use super::file::{PlanWriteError, relative_path, write_plan};
use super::model::Plan;
use super::summary::{PlanSummary, summarize_paced};
use crate::fleet::{FleetError, read_tenants_file_with_sources};
use crate::migrations::{self, MigrationError, MigrationSet};
use crate::neon::{ClientConfig, NeonClient};
use crate::policy::{self, FleetSource, Policy, PolicyError};
use crate::secret::SecretString;

/// The client's rate limit assumed when planning without a command line (`--api-rate-limit-per-min`'s
/// default).
pub const DEFAULT_API_RATE_LIMIT_PER_MIN: u32 = 600;

/// A written plan and its summary.
#[derive(Debug, Clone)]
pub struct PlanOutcome {
    pub plan_path: PathBuf,
    pub plan: Plan,
    pub summary: PlanSummary,
}

/// Why `schemafleet plan` stopped. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PlanningError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Migrations(#[from] MigrationError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Build(#[from] PlanBuildError),
    #[error(transparent)]
    Write(#[from] PlanWriteError),
    #[error("{}: the fleet comes from the Neon API (`fleet.source: neon`); set NEON_API_KEY (and NEON_API_URL for a Neon-compatible endpoint), or pass --tenants FILE to plan from a tenants file", policy.display())]
    NeedsNeonAccess { policy: PathBuf },
    #[error("cannot write the plan to {}: the directory {} does not exist; create it or pass another --out", plan.display(), dir.display())]
    MissingOutDir { plan: PathBuf, dir: PathBuf },
    #[error(
        "{} has a journal ({}) of another plan, {journal_plan_id}: writing plan {new_plan_id} over it would orphan that rollout's journal and restore points. Write the new plan elsewhere (--out {}), or, once that rollout needs no rollback, archive the old plan and its journal together and plan again",
        plan.display(),
        journal.display(),
        suggested.display()
    )]
    JournalOfAnotherPlan {
        plan: PathBuf,
        journal: PathBuf,
        journal_plan_id: String,
        new_plan_id: String,
        suggested: PathBuf,
    },
    #[error("the lint denies {} finding(s) in the migrations; no plan was written. Fix them, acknowledge each with `-- squawk-ignore <rule> -- <reason>` above it, or change the policy's `lint:` levels:\n{report}", report.denied().count())]
    LintDenied { report: crate::lint::LintReport },
    #[error("cannot read {}, the journal beside the plan", journal.display())]
    ReadJournal {
        journal: PathBuf,
        #[source]
        source: crate::journal::JournalError,
    },
    #[error("cannot resolve {}", path.display())]
    ResolvePath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The policy and migrations of a planning run, read and checked.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    pub policy: Policy,
    pub migrations: MigrationSet,
}

/// Read and check the policy and the migrations (the part of planning that needs no fleet).
pub fn read_inputs(policy_path: &Path, migrations_dir: &Path) -> Result<PlanInputs, PlanningError> {
    let policy = policy::load(policy_path)?;
    let migrations = migrations::load(migrations_dir)?;
    Ok(PlanInputs { policy, migrations })
}

/// Where the plan goes when `--out` is not given: beside the policy, `<policy-stem>.plan.yaml`.
pub fn default_plan_path(policy_path: &Path) -> PathBuf {
    let stem = policy_path
        .file_stem()
        .map_or_else(|| "rollout".into(), |stem| stem.to_string_lossy());
    let file_name = format!("{stem}.plan.yaml");
    match policy_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(file_name),
        _ => PathBuf::from(file_name),
    }
}

/// How to reach the Neon API for `fleet.source: neon`.
#[derive(Debug, Clone)]
pub struct NeonAccess {
    pub api_url: String,
    pub api_key: SecretString,
    pub rate_limit_per_min: u32,
}

/// The fleet for planning: `tenants_file` if given, else the policy's source (the Neon API
/// through `neon`, or `fleet.file`).
pub async fn collect_fleet(
    policy: &Policy,
    tenants_file: Option<&Path>,
    neon: Option<&NeonAccess>,
) -> Result<CollectedFleet, PlanningError> {
    let org_id = match (tenants_file, &policy.fleet.source) {
        (Some(path), _) => return collect_tenants_file(policy, path),
        (None, FleetSource::File { path }) => return collect_tenants_file(policy, path),
        (None, FleetSource::Postgres { url_env, query }) => {
            return collect_catalog(policy, url_env, query).await;
        }
        (None, FleetSource::Neon { org_id }) => org_id,
    };
    let Some(neon) = neon else {
        return Err(PlanningError::NeedsNeonAccess {
            policy: policy.path.clone(),
        });
    };
    let client = NeonClient::new(ClientConfig::new(
        neon.api_url.clone(),
        neon.api_key.clone(),
        neon.rate_limit_per_min,
    ))
    .map_err(|source| FleetError::Discovery {
        source: Box::new(source),
    })?;
    let name_prefix = policy.fleet.filters.name_prefix.as_deref();
    let inventory = crate::fleet::neon::discover(&client, org_id.as_deref(), name_prefix).await?;
    Ok(collect_inventory(policy, inventory)?)
}

/// The fleet for planning from the user's catalog database, streamed like a tenants file. Only
/// the number of connection URIs is kept: the URIs are secrets, and `apply` reads them again.
pub async fn collect_catalog(
    policy: &Policy,
    url_env: &str,
    query: &str,
) -> Result<CollectedFleet, PlanningError> {
    let catalog = crate::fleet::postgres::CatalogQuery {
        url_env,
        query,
        location: policy.fleet_key_location("query:"),
        key: "fleet.query",
    };
    let mut collector = FleetCollector::new(policy, catalog.source_label());
    crate::fleet::postgres::read_catalog(&catalog, |row, place| {
        if collector.add(row.tenant, Some(place)) && row.connection_uri.is_some() {
            collector.count_connection_uri();
        }
        Ok(())
    })
    .await?;
    Ok(collector.finish_with(
        Vec::new(),
        Some(super::model::PlannedCatalog {
            url_env: url_env.to_string(),
            query: query.to_string(),
        }),
    )?)
}

/// The fleet for planning from a tenants file, streamed (see [`super::collect`]).
pub fn collect_tenants_file(policy: &Policy, path: &Path) -> Result<CollectedFleet, PlanningError> {
    let mut collector = FleetCollector::new(policy, format!("file:{}", path.display()));
    read_tenants_file_with_sources(path, |tenant, place, entry| {
        if collector.add(tenant, Some(place)) && entry.connection_uri.is_some() {
            collector.count_connection_uri();
        }
        Ok(())
    })?;
    Ok(collector.finish(Vec::new())?)
}

/// Plan from a tenants file (or the policy's `fleet.file`) and write the plan: the whole
/// pipeline without the network.
pub fn plan_from_tenants_file(
    policy_path: &Path,
    migrations_dir: &Path,
    tenants_file: Option<&Path>,
    out: Option<&Path>,
) -> Result<PlanOutcome, PlanningError> {
    let inputs = read_inputs(policy_path, migrations_dir)?;
    let fleet = match (tenants_file, &inputs.policy.fleet.source) {
        (Some(path), _) => collect_tenants_file(&inputs.policy, path)?,
        (None, FleetSource::File { path }) => collect_tenants_file(&inputs.policy, path)?,
        (None, FleetSource::Neon { .. } | FleetSource::Postgres { .. }) => {
            return Err(PlanningError::NeedsNeonAccess {
                policy: inputs.policy.path.clone(),
            });
        }
    };
    write_planned(&inputs, fleet, out, DEFAULT_API_RATE_LIMIT_PER_MIN)
}

/// Build the plan from a fleet, write it to `out` (default: [`default_plan_path`]) and
/// summarize it. The estimate is at the policy's `api_rate_limit_per_min` (the account's
/// limit, default Neon's 700), and says how long when `cli_rate_limit_per_min` paces it slower.
pub fn write_planned(
    inputs: &PlanInputs,
    fleet: CollectedFleet,
    out: Option<&Path>,
    cli_rate_limit_per_min: u32,
) -> Result<PlanOutcome, PlanningError> {
    let policy = &inputs.policy;
    let plan_path = out.map_or_else(|| default_plan_path(&policy.path), Path::to_path_buf);
    let plan_dir = policy::parent_dir(&plan_path);
    if !plan_dir.is_dir() {
        return Err(PlanningError::MissingOutDir {
            plan: plan_path,
            dir: plan_dir,
        });
    }
    let relative_to_plan = |target: &Path| {
        relative_path(&plan_dir, target)
            .map(|relative| relative.to_string_lossy().into_owned())
            .map_err(|source| PlanningError::ResolvePath {
                path: target.to_path_buf(),
                source,
            })
    };
    let paths = PlanPaths {
        policy: policy.path.display().to_string(),
        migrations_dir: relative_to_plan(&inputs.migrations.dir)?,
        verify: policy
            .verify
            .as_ref()
            .map(|verify| relative_to_plan(&verify.path))
            .transpose()?,
    };
    let plan = build_plan(policy, &inputs.migrations, fleet, &paths, now_rfc3339())?;
    if let Some(lint) = &plan.lint
        && lint.report().has_denied()
    {
        return Err(PlanningError::LintDenied {
            report: lint.report(),
        });
    }
    refuse_to_orphan_a_journal(&plan_path, &plan.plan_id)?;
    write_plan(&plan_path, &plan)?;
    let rate_limit = policy
        .api_rate_limit_per_min
        .unwrap_or(super::cost::ACCOUNT_RATE_LIMIT_PER_MIN);
    let mut summary = summarize_paced(
        &plan,
        &plan_path.display().to_string(),
        rate_limit,
        Some(cli_rate_limit_per_min),
    );
    // The percents and named tenants are the policy's, not the plan's: said here, once.
    let shares: Vec<super::shares::WaveShare<'_>> = policy
        .waves
        .iter()
        .zip(&plan.waves)
        .map(|(wave_policy, planned)| super::shares::WaveShare {
            name: &wave_policy.name,
            percent: wave_policy.percent,
            n_named: wave_policy.tenants.len(),
            n_members: planned.tenants.len(),
            has_match: wave_policy.match_rule.is_some(),
        })
        .collect();
    summary.warnings.extend(super::shares::surprising_shares(
        &shares,
        plan.tenant_count(),
    ));
    Ok(PlanOutcome {
        plan_path,
        plan,
        summary,
    })
}

/// A plan file is the only key to its journal's restore points: never overwrite one whose
/// journal (at the default place beside it) belongs to a different plan.
fn refuse_to_orphan_a_journal(plan_path: &Path, new_plan_id: &str) -> Result<(), PlanningError> {
    let journal = crate::journal::default_journal_path(plan_path);
    if !plan_path.exists() || !journal.exists() {
        return Ok(());
    }
    let read =
        crate::journal::Journal::read(&journal).map_err(|source| PlanningError::ReadJournal {
            journal: journal.clone(),
            source,
        })?;
    match read.state.plan_id {
        Some(journal_plan_id) if journal_plan_id != new_plan_id => {
            Err(PlanningError::JournalOfAnotherPlan {
                plan: plan_path.to_path_buf(),
                journal,
                suggested: plan_path.with_file_name(format!(
                    "{}-{}.plan.yaml",
                    plan_stem(plan_path),
                    &new_plan_id[..new_plan_id.len().min(8)]
                )),
                journal_plan_id,
                new_plan_id: new_plan_id.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// `rollout` for `plans/rollout.plan.yaml`.
fn plan_stem(plan_path: &Path) -> String {
    let name = plan_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".plan.yaml")
        .or_else(|| name.strip_suffix(".yaml"))
        .unwrap_or(&name)
        .to_string()
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

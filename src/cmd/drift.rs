//! `schemafleet drift`: probe every tenant's history table and compare it with `migrations/`.
//!
//! The tenants come from a plan (`--plan`) or from a policy's fleet (`--policy`, optionally
//! `--tenants`). Probing is bounded by `--concurrency`; classifying and presenting is the pure
//! [`crate::drift`].
//!
//! **Invariant:** read-only: drift opens no transaction, takes no lock and writes no file.
//! **Invariant:** exit 0 when no tenant diverges or is unreachable, 1 when any does, 2 when the
//! input (plan, policy, migrations, API key) is unusable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use crate::cli::{DriftArgs, OutputFormat};
use crate::drift::{self, Probe, TenantDrift};
use crate::exit::ExitStatus;
use crate::neon::NeonClient;
use crate::pg::{self, PlannedVersion};
use crate::plan::pipeline::{NeonAccess, collect_fleet};
use crate::secret::{SecretString, redact_uri};

/// How long one tenant's connect may take; a suspended Neon compute wakes in a few seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which tenants to probe and how to reach their database.
struct Targets {
    tenants: Vec<String>,
    /// Project names by id, to show beside the ids.
    names: HashMap<String, String>,
    /// Tenants the fleet source knows of but could not list: reported unreachable, not dropped.
    unavailable: Vec<String>,
    database: String,
    role: String,
    /// The migrations directory when `--migrations` is not given.
    default_migrations_dir: PathBuf,
}

pub async fn run(args: DriftArgs) -> anyhow::Result<ExitStatus> {
    let targets = targets(&args).await?;
    let migrations_dir = args
        .migrations
        .clone()
        .unwrap_or_else(|| targets.default_migrations_dir.clone());
    let set = crate::migrations::load(&migrations_dir)
        .with_context(|| format!("loading migrations from {}", migrations_dir.display()))?;
    let planned: Vec<PlannedVersion> = set
        .migrations
        .iter()
        .map(|migration| PlannedVersion {
            version: migration.version,
            name: migration.name.clone(),
            checksum: migration.checksum.to_string(),
        })
        .collect();

    let client = super::api::client(&args.api)?;
    super::api::preflight(&client, &args.api.api_url).await?;
    let mut classified: Vec<TenantDrift> = futures::stream::iter(targets.tenants.iter())
        .map(|tenant| {
            let client = client.clone();
            let planned = &planned;
            let targets = &targets;
            async move {
                let probe = probe(&client, tenant, &targets.database, &targets.role).await;
                drift::classify(tenant, probe, planned)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    classified.extend(targets.unavailable.iter().map(|tenant| {
        let probe = Probe::Unreachable {
            reason: "the fleet source lists the project as unavailable".to_string(),
        };
        drift::classify(tenant, probe, &planned)
    }));
    let report = drift::aggregate(&planned, classified).with_names(targets.names);
    let dir_display = migrations_dir.display().to_string();
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&dir_display))?
        ),
        OutputFormat::Text => print!("{}", drift::render_text(&report, &dir_display)),
    }
    Ok(report.exit_status())
}

/// One tenant's history, or why it could not be read (redacted).
async fn probe(client: &NeonClient, tenant: &str, database: &str, role: &str) -> Probe {
    let unreachable = |reason: String| Probe::Unreachable {
        reason: redact_uri(&reason),
    };
    let uri = match client.connection_uri(tenant, None, database, role).await {
        Ok(uri) => uri,
        Err(error) => return unreachable(format!("connection URI: {error}")),
    };
    let connection = match pg::connect(&uri, CONNECT_TIMEOUT).await {
        Ok(connection) => connection,
        Err(failure) => return unreachable(failure.to_string()),
    };
    match pg::read_history(&connection).await {
        Ok(history) => Probe::History(history),
        Err(failure) => unreachable(failure.to_string()),
    }
}

async fn targets(args: &DriftArgs) -> anyhow::Result<Targets> {
    if let Some(plan_path) = &args.plan {
        return plan_targets(plan_path);
    }
    let Some(policy_path) = &args.policy else {
        anyhow::bail!("give the tenants to check with --plan PLAN or --policy POLICY");
    };
    policy_targets(args, policy_path).await
}

fn plan_targets(plan_path: &Path) -> anyhow::Result<Targets> {
    let plan = crate::plan::load_plan(plan_path)?;
    let plan_dir = plan_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(Targets {
        tenants: plan
            .waves
            .iter()
            .flat_map(|wave| wave.tenant_ids().map(str::to_string))
            .collect(),
        names: plan
            .tenants()
            .filter(|(tenant, _)| !tenant.name.is_empty())
            .map(|(tenant, _)| (tenant.id.clone(), tenant.name.clone()))
            .collect(),
        unavailable: Vec::new(),
        database: plan.policy.database.clone(),
        role: plan.policy.role.clone(),
        default_migrations_dir: plan_dir.join(&plan.migrations.dir),
    })
}

async fn policy_targets(args: &DriftArgs, policy_path: &Path) -> anyhow::Result<Targets> {
    let policy = crate::policy::load(policy_path)?;
    let neon = args
        .api
        .api_key
        .as_ref()
        .filter(|api_key| !api_key.is_empty())
        .map(|api_key| NeonAccess {
            api_url: args.api.api_url.clone(),
            api_key: SecretString::new(api_key.clone()),
            rate_limit_per_min: args.api.api_rate_limit_per_min,
        });
    let fleet = collect_fleet(&policy, args.tenants.as_deref(), neon.as_ref()).await?;
    let names = fleet
        .tenants
        .iter()
        .filter(|tenant| !tenant.name.is_empty())
        .map(|tenant| (tenant.id.clone(), tenant.name.clone()))
        .collect();
    Ok(Targets {
        names,
        tenants: fleet.tenants.into_iter().map(|tenant| tenant.id).collect(),
        unavailable: fleet.unavailable,
        database: policy.database.clone(),
        role: policy.role.clone(),
        default_migrations_dir: PathBuf::from("migrations"),
    })
}

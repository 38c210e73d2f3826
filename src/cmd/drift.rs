//! `schemafleet drift`: probe every tenant's history table and compare it with `migrations/`.
//!
//! The tenants come from a plan (`--plan`) or from a policy's fleet (`--policy`, optionally
//! `--tenants`). Probing is bounded by `--concurrency`; classifying and presenting is the pure
//! [`crate::drift`].
//!
//! With `--schema`, each tenant's schema fingerprint (read on the same connection) is compared
//! with the reference at its recorded version ([`crate::fingerprint::report`]).
//!
//! **Invariant:** read-only: drift opens no transaction, takes no lock and writes no file but
//! the reference cache (`--schema`); tenants are only read.
//! **Invariant:** exit 0 when no tenant diverges or is unreachable, 1 when any does, 2 when the
//! input (plan, policy, migrations, API key) is unusable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use crate::cli::{DriftArgs, OutputFormat};
use crate::drift::{self, DriftState, Probe, TenantDrift};
use crate::exit::ExitStatus;
use crate::fingerprint::report::TenantSchema;
use crate::fingerprint::{Fingerprint, SchemaFilter};
use crate::neon::NeonClient;
use crate::pg::reference::ReferenceFingerprints;
use crate::pg::{self, PlannedVersion};
use crate::plan::pipeline::{NeonAccess, collect_fleet};
use crate::secret::{SecretString, redact_uri};

use super::reference::ReferenceConfig;

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
    /// The policy's (or plan's) `schemas:`, for `--schema` when `--schemas` is not given.
    schemas: Vec<String>,
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

    let reference_config = ReferenceConfig::from_args(&args.reference, &targets.schemas)?;
    let schema_filter = args.schema.then(|| reference_config.filter.clone());
    let references = if args.schema {
        let (references, cached) = super::reference::references(&set, &reference_config).await?;
        tracing::info!(cached, "reference fingerprints ready");
        Some(references)
    } else {
        None
    };

    let client = super::api::client(&args.api)?;
    super::api::preflight(&client, &args.api.api_url).await?;
    let probed: Vec<(TenantDrift, Option<SchemaProbe>)> =
        futures::stream::iter(targets.tenants.iter())
            .map(|tenant| {
                let client = client.clone();
                let planned = &planned;
                let targets = &targets;
                let schema_filter = schema_filter.as_ref();
                async move {
                    let (probe, schema) = probe(
                        &client,
                        tenant,
                        &targets.database,
                        &targets.role,
                        schema_filter,
                    )
                    .await;
                    (drift::classify(tenant, probe, planned), schema)
                }
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await;
    let schema_report = references.as_ref().map(|references| {
        crate::fingerprint::report::aggregate(
            probed
                .iter()
                .map(|(tenant, schema)| compare_schema(tenant, schema.as_ref(), references))
                .collect(),
        )
    });
    let mut classified: Vec<TenantDrift> = probed.into_iter().map(|(tenant, _)| tenant).collect();
    classified.extend(targets.unavailable.iter().map(|tenant| {
        let probe = Probe::Unreachable {
            reason: "the fleet source lists the project as unavailable".to_string(),
        };
        drift::classify(tenant, probe, &planned)
    }));
    let schema_report = schema_report.map(|report| report.with_names(targets.names.clone()));
    let report = drift::aggregate(&planned, classified).with_names(targets.names);
    let dir_display = crate::plan::file::display_path(&migrations_dir);
    match args.output {
        OutputFormat::Json => {
            let mut document = report.to_json(&dir_display);
            if let Some(schema_report) = &schema_report {
                document["schema"] = schema_report.to_json();
            }
            println!("{}", serde_json::to_string_pretty(&document)?)
        }
        OutputFormat::Text => {
            print!("{}", drift::render_text(&report, &dir_display));
            if let Some(schema_report) = &schema_report {
                println!();
                print!("{}", crate::fingerprint::report::render_text(schema_report));
            }
        }
    }
    let schema_status = schema_report
        .as_ref()
        .map_or(ExitStatus::Success, |schema_report| {
            schema_report.exit_status()
        });
    Ok(match report.exit_status() {
        ExitStatus::Success => schema_status,
        history_status => history_status,
    })
}

/// A tenant's fingerprint, or why it could not be read (redacted).
type SchemaProbe = Result<Fingerprint, String>;

/// Compare a tenant whose history agrees with the files with the reference at its version.
fn compare_schema(
    tenant: &TenantDrift,
    schema: Option<&SchemaProbe>,
    references: &ReferenceFingerprints,
) -> TenantSchema {
    let skipped = |reason: String| TenantSchema {
        tenant: tenant.tenant.clone(),
        tenant_name: String::new(),
        version: tenant.version,
        differences: Vec::new(),
        skipped: Some(reason),
    };
    if !matches!(tenant.state, DriftState::UpToDate | DriftState::Behind) {
        return skipped(format!("history is {}", tenant.state.as_str()));
    }
    let fingerprint = match schema {
        Some(Ok(fingerprint)) => fingerprint,
        Some(Err(reason)) => return skipped(reason.clone()),
        None => return skipped("no fingerprint read".to_string()),
    };
    let Some(expected) = references.at(tenant.version.unwrap_or(0)) else {
        return skipped(format!("no reference for V{}", tenant.version.unwrap_or(0)));
    };
    TenantSchema {
        tenant: tenant.tenant.clone(),
        tenant_name: String::new(),
        version: tenant.version,
        differences: crate::fingerprint::diff(expected, fingerprint),
        skipped: None,
    }
}

/// One tenant's history, or why it could not be read (redacted); with `schema_filter`, its
/// fingerprint too, read on the same connection.
async fn probe(
    client: &NeonClient,
    tenant: &str,
    database: &str,
    role: &str,
    schema_filter: Option<&SchemaFilter>,
) -> (Probe, Option<SchemaProbe>) {
    let unreachable = |reason: String| {
        (
            Probe::Unreachable {
                reason: redact_uri(&reason),
            },
            None,
        )
    };
    let uri = match client.connection_uri(tenant, None, database, role).await {
        Ok(uri) => uri,
        Err(error) => return unreachable(format!("connection URI: {error}")),
    };
    let connection = match pg::connect(&uri, CONNECT_TIMEOUT).await {
        Ok(connection) => connection,
        Err(failure) => return unreachable(failure.to_string()),
    };
    let history = match pg::read_history(&connection).await {
        Ok(history) => Probe::History(history),
        Err(failure) => return unreachable(failure.to_string()),
    };
    let schema = match schema_filter {
        Some(filter) => Some(
            pg::read_fingerprint(&connection, filter)
                .await
                .map_err(|failure| redact_uri(&failure.to_string())),
        ),
        None => None,
    };
    (history, schema)
}

async fn targets(args: &DriftArgs) -> anyhow::Result<Targets> {
    if let Some(plan_path) = args.plan_path() {
        return plan_targets(plan_path);
    }
    let Some(policy_path) = &args.policy else {
        anyhow::bail!("give the tenants to check with a PLAN or --policy POLICY");
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
        schemas: plan.policy.schemas.clone(),
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
        schemas: policy.schemas.clone(),
    })
}

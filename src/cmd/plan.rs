//! `schemafleet plan`: write a plan from a policy, or `--check` a plan against the migrations.
//!
//! **Invariant:** data (the summary, the check result) goes to stdout; the mismatch explanation
//! and errors go to stderr. Exit 0 written or matching, 1 the plan no longer matches the
//! migrations, 2 bad input.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{OutputFormat, PlanArgs};
use crate::exit::ExitStatus;
use crate::migrations;
use crate::plan::pipeline::{NeonAccess, PlanOutcome, collect_fleet, read_inputs, write_planned};
use crate::plan::{check_migrations, load_plan, resolve_from_plan};
use crate::secret::SecretString;

pub async fn run(args: PlanArgs) -> anyhow::Result<ExitStatus> {
    if let Some(plan_path) = &args.check {
        return check(plan_path, args.output);
    }
    let policy_path = args
        .policy
        .as_deref()
        .context("--policy is required unless --check is given")?;
    let outcome = plan(&args, policy_path).await?;
    match args.output {
        // Tenant names come from the Neon API or a tenants file.
        OutputFormat::Text => print!(
            "{}",
            crate::terminal::escape_controls(&outcome.summary.to_string())
        ),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outcome.summary)?),
    }
    Ok(ExitStatus::Success)
}

async fn plan(args: &PlanArgs, policy_path: &Path) -> anyhow::Result<PlanOutcome> {
    let inputs = read_inputs(policy_path, &args.migrations)?;
    let api_key = args
        .api
        .api_key
        .as_ref()
        .filter(|api_key| !api_key.is_empty());
    let neon = api_key.map(|api_key| NeonAccess {
        api_url: args.api.api_url.clone(),
        api_key: SecretString::new(api_key.clone()),
        rate_limit_per_min: inputs
            .policy
            .api_rate_limit_per_min
            .unwrap_or(args.api.api_rate_limit_per_min),
    });
    let fleet = collect_fleet(&inputs.policy, args.tenants.as_deref(), neon.as_ref()).await?;
    Ok(write_planned(
        &inputs,
        fleet,
        args.out.as_deref(),
        args.api.api_rate_limit_per_min,
    )?)
}

#[derive(Serialize)]
struct CheckReport {
    plan: String,
    plan_id: String,
    migrations_dir: String,
    matches: bool,
    differences: Vec<String>,
}

fn check(plan_path: &Path, output: OutputFormat) -> anyhow::Result<ExitStatus> {
    let plan = load_plan(plan_path)?;
    let migrations_dir = resolve_from_plan(plan_path, &plan.migrations.dir);
    let set = migrations::load(&migrations_dir)?;
    let result = check_migrations(&plan, &set);
    let report = CheckReport {
        plan: plan_path.display().to_string(),
        plan_id: plan.plan_id.clone(),
        migrations_dir: migrations_dir.display().to_string(),
        matches: result.is_ok(),
        differences: result
            .as_ref()
            .err()
            .map(|mismatch| {
                mismatch
                    .differences
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            if result.is_ok() {
                println!(
                    "plan {} ({}) matches the {} migrations in {}",
                    report.plan,
                    report.plan_id,
                    set.migrations.len(),
                    report.migrations_dir
                );
            }
        }
    }
    match result {
        Ok(()) => Ok(ExitStatus::Success),
        Err(mismatch) => {
            eprintln!(
                "error: plan {} does not match {}: {mismatch}",
                report.plan, report.migrations_dir
            );
            Ok(ExitStatus::Failure)
        }
    }
}

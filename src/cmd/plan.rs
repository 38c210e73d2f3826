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
use crate::plan::model::PlannedLint;
use crate::plan::pipeline::{
    NeonAccess, PlanOutcome, PlanningError, collect_fleet, read_inputs, write_planned,
};
use crate::plan::{check_migrations, load_plan, resolve_from_plan};
use crate::secret::SecretString;
use crate::{lint, migrations};

pub async fn run(args: PlanArgs) -> anyhow::Result<ExitStatus> {
    if let Some(plan_path) = &args.check {
        return check(plan_path, args.output);
    }
    let policy_path = args
        .policy
        .as_deref()
        .context("--policy is required unless --check is given")?;
    let outcome = match plan(&args, policy_path).await {
        Ok(outcome) => outcome,
        // A denied lint finding is a verdict on the migrations, not bad input: exit 1.
        Err(error) => match error.downcast_ref::<PlanningError>() {
            Some(denied @ PlanningError::LintDenied { .. }) => {
                eprintln!(
                    "error: {}",
                    crate::terminal::escape_controls(&denied.to_string())
                );
                return Ok(ExitStatus::Failure);
            }
            _ => return Err(error),
        },
    };
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
    /// Lint findings or acknowledgements that differ from the plan's, `+` new, `-` gone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lint_changes: Vec<String>,
}

fn check(plan_path: &Path, output: OutputFormat) -> anyhow::Result<ExitStatus> {
    let plan = load_plan(plan_path)?;
    let migrations_dir = resolve_from_plan(plan_path, &plan.migrations.dir);
    let set = migrations::load(&migrations_dir)?;
    let result = check_migrations(&plan, &set);
    let lint_changes = plan
        .lint
        .as_ref()
        .map(|planned| lint_changes(planned, &set))
        .unwrap_or_default();
    let report = CheckReport {
        plan: plan_path.display().to_string(),
        plan_id: plan.plan_id.clone(),
        migrations_dir: migrations_dir.display().to_string(),
        matches: result.is_ok() && lint_changes.is_empty(),
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
        lint_changes,
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
    if result.is_ok() && !report.lint_changes.is_empty() {
        eprintln!(
            "error: the lint's findings on {} changed since plan {} was written; review them and plan again:\n{}",
            report.migrations_dir,
            report.plan,
            crate::terminal::escape_controls(&report.lint_changes.join("\n"))
        );
        return Ok(ExitStatus::Failure);
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

/// The findings and acknowledgements of the plan's lint settings today, against the plan's.
fn lint_changes(planned: &PlannedLint, set: &migrations::MigrationSet) -> Vec<String> {
    let now = lint::lint_set(set, &planned.settings);
    let describe_finding = |finding: &lint::Finding| {
        format!(
            "{}:{}:{} {} [{}] {}",
            finding.file,
            finding.line,
            finding.column,
            finding.level,
            finding.rule,
            finding.message
        )
    };
    let describe_acknowledged = |acknowledged: &lint::Acknowledged| {
        format!(
            "{}:{}:{} acknowledged [{}]",
            acknowledged.file, acknowledged.line, acknowledged.column, acknowledged.rule
        )
    };
    let mut changes = Vec::new();
    list_changes(
        &now.findings,
        &planned.findings,
        describe_finding,
        &mut changes,
    );
    list_changes(
        &now.acknowledged,
        &planned.acknowledged,
        describe_acknowledged,
        &mut changes,
    );
    changes
}

/// `+` for what `now` has and `planned` lacks, `-` for the reverse.
fn list_changes<T: PartialEq>(
    now: &[T],
    planned: &[T],
    describe: impl Fn(&T) -> String,
    changes: &mut Vec<String>,
) {
    for item in now.iter().filter(|item| !planned.contains(item)) {
        changes.push(format!("+ {}", describe(item)));
    }
    for item in planned.iter().filter(|item| !now.contains(item)) {
        changes.push(format!("- {}", describe(item)));
    }
}

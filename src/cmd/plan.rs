//! `schemafleet plan`: write a plan from a policy, or `--check` a plan against the migrations.
//!
//! **Invariant:** data (the summary, the check result) goes to stdout; the mismatch explanation
//! and errors go to stderr. Exit 0 written or matching, 1 the plan no longer matches the
//! migrations, the policy or (with `--fleet`) the fleet, 2 bad input.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::cli::{OutputFormat, PlanArgs};
use crate::exit::ExitStatus;
use crate::fleet::FleetError;
use crate::plan::PlanningError;
use crate::plan::build::{PlanPaths, build_plan};
use crate::plan::check::{check_fleet, check_policy};
use crate::plan::file::display_path;
use crate::plan::model::Plan;
use crate::plan::model::PlannedLint;
use crate::plan::pipeline::{NeonAccess, PlanOutcome, collect_fleet, read_inputs, write_planned};
use crate::plan::{check_migrations, load_plan, resolve_from_plan};
use crate::policy::Policy;
use crate::secret::SecretString;
use crate::{lint, migrations};

pub async fn run(args: PlanArgs) -> anyhow::Result<ExitStatus> {
    if let Some(plan_path) = &args.check {
        return check(&args, plan_path).await;
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
    let migrations = args
        .migrations
        .clone()
        .unwrap_or_else(|| PathBuf::from("migrations"));
    let inputs = read_inputs(policy_path, &migrations)?;
    let neon = neon_access(args, &inputs.policy);
    let fleet = collect_fleet(&inputs.policy, args.tenants.as_deref(), neon.as_ref())
        .await
        .map_err(|error| fleet_error(error, &args.api.api_url))?;
    Ok(write_planned(
        &inputs,
        fleet,
        args.out.as_deref(),
        args.api.api_rate_limit_per_min,
    )?)
}

/// A failed Neon listing gets the same hint as other commands' preflight.
fn fleet_error(error: PlanningError, api_url: &str) -> anyhow::Error {
    match error {
        PlanningError::Fleet(FleetError::Discovery { .. }) => {
            super::api::unusable_api(anyhow::Error::new(error), api_url)
        }
        other => anyhow::Error::new(other),
    }
}

/// How to list the fleet, when an API key is given.
fn neon_access(args: &PlanArgs, policy: &Policy) -> Option<NeonAccess> {
    let api_key = args
        .api
        .api_key
        .as_ref()
        .filter(|api_key| !api_key.is_empty())?;
    Some(NeonAccess {
        api_url: args.api.api_url.clone(),
        api_key: SecretString::new(api_key.clone()),
        rate_limit_per_min: policy
            .api_rate_limit_per_min
            .unwrap_or(args.api.api_rate_limit_per_min),
    })
}

#[derive(Serialize)]
struct CheckReport {
    plan: String,
    plan_id: String,
    migrations_dir: String,
    policy: String,
    /// Whether the plan matches everything checked (migrations, policy, and with `--fleet` the
    /// fleet).
    matches: bool,
    /// The migrations' differences (kept under this name for pipelines that read it).
    differences: Vec<String>,
    policy_differences: Vec<String>,
    /// `null` unless `--fleet` was given.
    fleet_differences: Option<Vec<String>>,
    /// Lint findings or acknowledgements that differ from the plan's, `+` new, `-` gone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lint_changes: Vec<String>,
}

/// `--migrations` wins over the plan's recorded directory, as for `apply` and `drift`: an old
/// plan is checked against its release's checkout.
async fn check(args: &PlanArgs, plan_path: &Path) -> anyhow::Result<ExitStatus> {
    if args.tenants.is_some() && !args.fleet {
        anyhow::bail!("--tenants with --check lists the fleet to compare: add --fleet");
    }
    let plan = load_plan(plan_path)?;
    let migrations_dir = args.migrations.as_deref().map_or_else(
        || resolve_from_plan(plan_path, &plan.migrations.dir),
        Path::to_path_buf,
    );
    let set = migrations::load(&migrations_dir)?;
    let migration_result = check_migrations(&plan, &set);
    let policy_path = locate_policy(plan_path, &plan, args.policy.as_deref())?;
    let policy = crate::policy::load(&policy_path)?;
    let policy_differences = check_policy(&plan, &policy).err().unwrap_or_default();
    let fleet_differences = if args.fleet {
        let fleet = collect_fleet(
            &policy,
            args.tenants.as_deref(),
            neon_access(args, &policy).as_ref(),
        )
        .await
        .map_err(|error| fleet_error(error, &args.api.api_url))?;
        let paths = PlanPaths {
            policy: plan.policy.path.clone(),
            migrations_dir: plan.migrations.dir.clone(),
            verify: plan
                .policy
                .verify
                .as_ref()
                .map(|verify| verify.path.clone()),
        };
        let replanned = build_plan(&policy, &set, fleet, &paths, plan.created_at.clone())?;
        Some(check_fleet(&plan, &replanned))
    } else {
        None
    };
    let migration_differences: Vec<String> = migration_result
        .as_ref()
        .err()
        .map(|mismatch| {
            mismatch
                .differences
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .unwrap_or_default();
    let lint_changes = plan
        .lint
        .as_ref()
        .map(|planned| lint_changes(planned, &set, plan.policy.transaction))
        .unwrap_or_default();
    let report = CheckReport {
        plan: plan_path.display().to_string(),
        plan_id: plan.plan_id.clone(),
        migrations_dir: display_path(&migrations_dir),
        policy: display_path(&policy_path),
        matches: migration_differences.is_empty()
            && policy_differences.is_empty()
            && fleet_differences.as_ref().is_none_or(Vec::is_empty)
            && lint_changes.is_empty(),
        differences: migration_differences,
        policy_differences,
        fleet_differences,
        lint_changes,
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            if report.matches {
                println!(
                    "plan {} ({}) matches the {} in {}, the policy {}{}",
                    report.plan,
                    report.plan_id,
                    crate::report::render::plural(set.migrations.len(), "migration"),
                    report.migrations_dir,
                    report.policy,
                    if args.fleet { " and the fleet" } else { "" }
                );
            }
        }
    }
    if report.matches {
        return Ok(ExitStatus::Success);
    }
    let mut text = format!("error: plan {} no longer matches:\n", report.plan);
    let mut sections = vec![
        (
            format!("the migrations in {}", report.migrations_dir),
            &report.differences,
        ),
        (
            format!("the policy {}", report.policy),
            &report.policy_differences,
        ),
    ];
    sections.push((
        format!("the lint's findings on {}", report.migrations_dir),
        &report.lint_changes,
    ));
    if let Some(fleet_differences) = &report.fleet_differences {
        sections.push(("the fleet".to_string(), fleet_differences));
    }
    for (what, differences) in sections {
        if differences.is_empty() {
            continue;
        }
        text.push_str(&format!("  {what}:\n"));
        for difference in differences {
            crate::report::render::wrap_into(
                &mut text,
                &format!("- {difference}"),
                "    ",
                "      ",
            );
        }
    }
    crate::report::render::wrap_into(
        &mut text,
        "re-run `schemafleet plan` and commit the new plan (or undo the change); a re-plan keeps the plan id when nothing that decides the run changed",
        "",
        "  ",
    );
    eprint!("{text}");
    Ok(ExitStatus::Failure)
}

/// The policy a plan was made from: `explicit` if given, else the file of that name beside the
/// plan, else the path the plan records (relative to the current directory).
fn locate_policy(
    plan_path: &Path,
    plan: &Plan,
    explicit: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let recorded = PathBuf::from(&plan.policy.path);
    let beside_plan = recorded
        .file_name()
        .map(|file_name| resolve_from_plan(plan_path, &file_name.to_string_lossy()));
    for candidate in beside_plan.iter().chain(std::iter::once(&recorded)) {
        if candidate.is_file() {
            return Ok(candidate.clone());
        }
    }
    anyhow::bail!(
        "{}: cannot find the policy it was made from ({}; looked beside the plan and in the current directory); pass --policy FILE",
        plan_path.display(),
        plan.policy.path
    )
}

/// The findings and acknowledgements of the plan's lint settings today, against the plan's.
fn lint_changes(
    planned: &PlannedLint,
    set: &migrations::MigrationSet,
    transaction: crate::plan::model::TransactionMode,
) -> Vec<String> {
    let now = lint::lint_set(set, &planned.settings, transaction);
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

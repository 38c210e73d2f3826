//! `schemafleet gc`: delete branches schemafleet created once nothing needs them.
//!
//! Lists the branches of the plan's tenants (or of every project the key lists), asks the pure
//! [`crate::gc::select`] which to delete, and deletes them (`--dry-run`: only lists them).
//!
//! **Invariant:** only branches [`crate::gc::select`] marks for deletion are deleted; every
//! other branch, and every branch in a dry run, is left alone.
//! **Invariant:** with `--plan` and without `--dry-run`, the plan's journal is held locked for the
//! whole run, so gc never races an `apply` of the same plan, and each deletion of a branch the
//! journal lists as open is journaled (`branch_deleted`). With `--state` the journal is the
//! store's and the lock is the plan's exclusive lock there, which no runner may hold beside it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;

use crate::cli::{GcArgs, OutputFormat};
use crate::exit::ExitStatus;
use crate::gc::{self, Decision, GcOptions, Rollout};
use crate::journal::store::{JournalSource, StateStore};
use crate::journal::{Event, Journal, JournalError, JournalState};
use crate::neon::{NeonClient, ProjectFilter};
use crate::plan::model::PlannedTenant;
use crate::report::render::{plural, wrap_into};
use crate::secret::redact_uri;

/// What happened to one schemafleet branch.
#[derive(Debug, Serialize)]
struct Outcome {
    #[serde(flatten)]
    decision: Decision,
    /// The project's name and region, as the plan or the project listing gives them.
    #[serde(skip_serializing_if = "String::is_empty")]
    tenant_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    region: String,
    /// Whether the branch is gone now (always false in a dry run).
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A project whose branches could not be listed.
#[derive(Debug, Serialize)]
struct ProjectError {
    project_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    tenant_name: String,
    error: String,
}

/// Projects by id, with the name and region people know them by.
type Projects = Vec<PlannedTenant>;

/// The plan-mode context: the plan id, its replayed journal, and (unless a dry run) the open,
/// locked journal that deletions are recorded in.
struct PlanContext {
    plan_id: String,
    state: JournalState,
    journal: Option<Journal>,
    /// With `--state`: the store, whose connection holds the plan's lock until gc ends.
    _store: Option<StateStore>,
}

pub async fn run(args: GcArgs) -> anyhow::Result<ExitStatus> {
    let client = super::api::client(&args.api)?;
    let (projects, plan_context, mut project_errors) = match &args.plan {
        Some(plan_path) => {
            let (projects, context) = plan_projects(&args, plan_path).await?;
            (projects, Some(context), Vec::new())
        }
        None => {
            if args.state.state.is_some() {
                anyhow::bail!(
                    "--state tells where a plan's rollout state is: pass the plan with --plan"
                );
            }
            all_projects(&client).await?
        }
    };
    super::api::preflight(&client, &args.api.api_url).await?;
    let now = time::OffsetDateTime::now_utc();
    let preserved_older_than = match &args.older_than {
        Some(text) => Some(
            crate::policy::parse_duration(text)
                .map_err(|error| anyhow::anyhow!("--older-than: {error}"))?,
        ),
        None => None,
    };
    let options = GcOptions {
        all: args.all,
        preserved_older_than,
    };
    let rollout = plan_context.as_ref().map(|context| Rollout {
        plan_id: &context.plan_id,
        state: &context.state,
    });
    let journal = plan_context
        .as_ref()
        .and_then(|context| context.journal.as_ref());

    let per_project: Vec<Result<Vec<Outcome>, ProjectError>> = futures::stream::iter(&projects)
        .map(|project| {
            let client = client.clone();
            async move {
                collect_project(
                    &client,
                    project,
                    now,
                    rollout,
                    options,
                    args.dry_run,
                    journal,
                )
                .await
            }
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    if let Some(journal) = plan_context.and_then(|context| context.journal) {
        journal.close().await;
    }

    let names: HashMap<&str, &PlannedTenant> = projects
        .iter()
        .map(|project| (project.id.as_str(), project))
        .collect();
    for error in &mut project_errors {
        if let Some(project) = names.get(error.project_id.as_str()) {
            error.tenant_name = project.name.clone();
        }
    }
    let mut outcomes = Vec::new();
    for result in per_project {
        match result {
            Ok(project_outcomes) => outcomes.extend(project_outcomes),
            Err(error) => project_errors.push(error),
        }
    }
    let failed_deletes = outcomes
        .iter()
        .filter(|outcome| outcome.error.is_some())
        .count();
    match args.output {
        OutputFormat::Json => {
            let document = serde_json::json!({
                "dry_run": args.dry_run,
                "projects": projects.len(),
                "branches": outcomes,
                "project_errors": project_errors,
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        OutputFormat::Text => print!(
            "{}",
            render_text(projects.len(), &outcomes, &project_errors, args.dry_run)
        ),
    }
    Ok(if failed_deletes + project_errors.len() > 0 {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

async fn plan_projects(args: &GcArgs, plan_path: &Path) -> anyhow::Result<(Projects, PlanContext)> {
    let plan = crate::plan::load_plan(plan_path)?;
    let source = JournalSource::choose(
        args.state.state.as_deref(),
        args.journal.as_deref(),
        plan_path,
    );
    let (state, journal, store) = match &source {
        JournalSource::File(journal_path) => {
            let (state, journal) = file_journal(args, journal_path, &plan.plan_id)?;
            (state, journal, None)
        }
        JournalSource::Store(uri) => {
            let store = StateStore::connect(uri).await?;
            if args.dry_run {
                let read = store.read(&plan.plan_id).await?;
                store.check_plan(&read.state, &plan.plan_id)?;
                (read.state, None, Some(store))
            } else {
                if !store.try_lock_plan(&plan.plan_id, true).await? {
                    anyhow::bail!(
                        "runners of plan {} are working (they hold its lock in {}): run gc after they end, or use --dry-run to look",
                        plan.plan_id,
                        source.describe()
                    );
                }
                let writer = format!(
                    "gc:{}:{}/{}",
                    super::control::host_name(),
                    std::process::id(),
                    crate::clock::compact_stamp()
                );
                let (journal, read) = store.open_journal(&plan.plan_id, &writer).await?;
                (read.state, Some(journal), Some(store))
            }
        }
    };
    if let Some(found) = &state.plan_id
        && found != &plan.plan_id
    {
        anyhow::bail!(
            "journal {} belongs to plan {found}, not {} ({}); pass the right --journal",
            source.describe(),
            plan.plan_id,
            plan_path.display()
        );
    }
    let projects = plan.tenants().map(|(tenant, _)| tenant.clone()).collect();
    Ok((
        projects,
        PlanContext {
            plan_id: plan.plan_id,
            state,
            journal,
            _store: store,
        },
    ))
}

/// The plan's journal file: read (a dry run, or no file yet), or opened and locked.
fn file_journal(
    args: &GcArgs,
    journal_path: &Path,
    plan_id: &str,
) -> anyhow::Result<(JournalState, Option<Journal>)> {
    if args.dry_run || !journal_path.exists() {
        return Ok((Journal::read(journal_path)?.state, None));
    }
    match Journal::open(journal_path, plan_id) {
        Ok((journal, read)) => Ok((read.state, Some(journal))),
        Err(error @ JournalError::Locked { .. }) => Err(anyhow::Error::new(error).context(
            "an `apply` (or another gc) of this plan is running: run gc after it ends, or use --dry-run to look",
        )),
        Err(error) => Err(error.into()),
    }
}

async fn all_projects(
    client: &NeonClient,
) -> anyhow::Result<(Projects, Option<PlanContext>, Vec<ProjectError>)> {
    let listing = client
        .list_projects(&ProjectFilter::default())
        .await
        .context("listing the projects the API key can see")?;
    let errors = listing
        .unavailable_project_ids
        .into_iter()
        .map(|project_id| ProjectError {
            project_id,
            tenant_name: String::new(),
            error: "Neon lists the project as unavailable; run gc again later".to_string(),
        })
        .collect();
    let projects = listing
        .projects
        .into_iter()
        .map(|project| PlannedTenant {
            id: project.id,
            name: project.name,
            region: project.region_id,
        })
        .collect();
    Ok((projects, None, errors))
}

/// List one project's branches, decide, and delete (unless a dry run) one branch at a time.
async fn collect_project(
    client: &NeonClient,
    project: &PlannedTenant,
    now: time::OffsetDateTime,
    rollout: Option<Rollout<'_>>,
    options: GcOptions,
    dry_run: bool,
    journal: Option<&Journal>,
) -> Result<Vec<Outcome>, ProjectError> {
    let project_id = project.id.as_str();
    let outcome = |decision: Decision, deleted: bool, error: Option<String>| Outcome {
        decision,
        tenant_name: project.name.clone(),
        region: project.region.clone(),
        deleted,
        error,
    };
    let branches = client
        .list_branches(project_id)
        .await
        .map_err(|error| ProjectError {
            project_id: project_id.to_string(),
            tenant_name: project.name.clone(),
            error: redact_uri(&format!("listing branches: {error}")),
        })?;
    let mut outcomes = Vec::new();
    for decision in gc::select(project_id, &branches, now, rollout, options) {
        if !decision.delete || dry_run {
            outcomes.push(outcome(decision, false, None));
            continue;
        }
        let (deleted, error) = match client.delete_branch(project_id, &decision.branch_id).await {
            Ok(()) => (
                true,
                record_deletion(journal, rollout, project_id, &decision.branch_id).await,
            ),
            Err(error) => (false, Some(redact_uri(&error.to_string()))),
        };
        outcomes.push(outcome(decision, deleted, error));
    }
    Ok(outcomes)
}

/// Journal the deletion of a branch the journal still lists as open, so a later `status` or
/// `apply` does not count it; `Some(error)` when that write failed.
async fn record_deletion(
    journal: Option<&Journal>,
    rollout: Option<Rollout<'_>>,
    project_id: &str,
    branch_id: &str,
) -> Option<String> {
    let (Some(journal), Some(rollout)) = (journal, rollout) else {
        return None;
    };
    let listed_open = rollout
        .state
        .tenant(project_id)
        .is_some_and(|tenant| tenant.open_branches.contains_key(branch_id));
    if !listed_open {
        return None;
    }
    let event = Event::BranchDeleted {
        tenant: project_id.to_string(),
        branch_id: branch_id.to_string(),
    };
    match journal.append(event).await {
        Ok(_) => None,
        Err(error) => Some(format!("deleted, but not journaled: {error}")),
    }
}

/// `name (id), region` as the plan shows a tenant; the id alone when it has no name.
fn tenant_label(project_id: &str, name: &str, region: &str) -> String {
    let label = PlannedTenant {
        id: project_id.to_string(),
        name: name.to_string(),
        region: String::new(),
    }
    .label();
    if region.is_empty() {
        label
    } else {
        format!("{label}, {region}")
    }
}

/// Which outcomes one section of the text output lists.
type OutcomeFilter = fn(&Outcome) -> bool;

fn render_text(
    project_count: usize,
    outcomes: &[Outcome],
    project_errors: &[ProjectError],
    dry_run: bool,
) -> String {
    let mut out = String::new();
    let count =
        |keep: fn(&Outcome) -> bool| outcomes.iter().filter(|outcome| keep(outcome)).count();
    let to_delete = count(|outcome| outcome.decision.delete);
    let kept = outcomes.len() - to_delete;
    let headline = if dry_run {
        format!(
            "gc (dry run, nothing deleted): {}, {}: {to_delete} would be deleted, {kept} kept",
            plural(project_count, "project"),
            plural(outcomes.len(), "schemafleet branch"),
        )
    } else {
        format!(
            "gc: {}, {}: {} deleted, {} failed, {kept} kept",
            plural(project_count, "project"),
            plural(outcomes.len(), "schemafleet branch"),
            count(|outcome| outcome.deleted),
            count(|outcome| outcome.decision.delete && !outcome.deleted),
        )
    };
    wrap_into(&mut out, &headline, "", "  ");
    let sections: [(&str, OutcomeFilter); 4] = [
        ("would delete", |outcome| {
            outcome.decision.delete && !outcome.deleted && outcome.error.is_none()
        }),
        ("deleted", |outcome| outcome.deleted),
        ("FAILED to delete", |outcome| {
            outcome.decision.delete && !outcome.deleted && outcome.error.is_some()
        }),
        ("kept", |outcome| !outcome.decision.delete),
    ];
    for (title, belongs) in sections {
        let members: Vec<&Outcome> = outcomes.iter().filter(|outcome| belongs(outcome)).collect();
        if members.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{title} ({}):\n", members.len()));
        for outcome in members {
            let decision = &outcome.decision;
            wrap_into(
                &mut out,
                &format!(
                    "{} ({}) of {}: {}",
                    decision.branch_name,
                    decision.branch_id,
                    tenant_label(&decision.project_id, &outcome.tenant_name, &outcome.region),
                    decision.reason
                ),
                "  ",
                "      ",
            );
            if let Some(error) = &outcome.error {
                wrap_into(&mut out, &format!("error: {error}"), "      ", "        ");
            }
        }
    }
    if !project_errors.is_empty() {
        out.push_str(&format!(
            "\nprojects not checked ({}):\n",
            project_errors.len()
        ));
    }
    for error in project_errors {
        wrap_into(
            &mut out,
            &format!(
                "{}: {}",
                tenant_label(&error.project_id, &error.tenant_name, ""),
                error.error
            ),
            "  ",
            "      ",
        );
    }
    // Branch names, reasons and errors carry foreign text.
    crate::terminal::escape_controls(&out)
}

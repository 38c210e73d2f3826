//! `schemafleet apply PLAN`: execute a plan wave by wave, resuming from its journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::cli::{ApplyArgs, OutputFormat};
use crate::executor::{self, ApplyConfig, Reporter, RunOutcome};
use crate::exit::ExitStatus;
use crate::journal::{Journal, default_journal_path};
use crate::plan::model::Plan;
use crate::report;

pub async fn run(args: ApplyArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let plan_dir = args
        .plan
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let migrations_dir = args
        .migrations
        .clone()
        .unwrap_or_else(|| plan_dir.join(&plan.migrations.dir));
    let shown_dir = crate::plan::file::display_path(&migrations_dir);
    let set = crate::migrations::load(&migrations_dir)
        .with_context(|| format!("loading migrations from {shown_dir}"))?;
    crate::plan::check_migrations(&plan, &set).with_context(|| {
        format!(
            "plan {} no longer matches the migrations in {shown_dir}; re-run `schemafleet plan` and review the new plan",
            args.plan.display(),
        )
    })?;
    if let Some(wave) = &args.until_wave
        && plan.wave(wave).is_none()
    {
        let names: Vec<&str> = plan.waves.iter().map(|wave| wave.name.as_str()).collect();
        bail!(
            "--until-wave {wave}: the plan has no such wave (waves: {})",
            names.join(", ")
        );
    }
    let verify_sql = read_verify(&plan, &plan_dir)?;
    let client = super::api::client(&args.api)?;
    super::api::preflight(&client, &args.api.api_url).await?;

    let journal_path = args
        .journal
        .clone()
        .unwrap_or_else(|| default_journal_path(&args.plan));
    let (journal, read) = Journal::open(&journal_path, &plan.plan_id)?;
    // Keep the replayed state only: the raw records would stay resident for the whole run.
    let crate::journal::file::ReadJournal {
        state: prior,
        torn_tail,
        ..
    } = read;
    if let Some(torn) = &torn_tail {
        eprintln!(
            "warning: journal {}: {torn}; the step it described is re-checked against the tenant",
            journal_path.display()
        );
    }

    let mut config = ApplyConfig::standard();
    config.until_wave = args.until_wave.clone();
    config.retry_failed = args.retry_failed;
    config.include_rolled_back = include_rolled_back(&plan, args.include_rolled_back.as_deref())?;
    config.skip_bake = args.skip_bake;
    config.max_connections = args.max_connections.max(1);
    config.verify_sql = verify_sql;
    config.source_connections = source_connections(&plan, &args.plan).await?;
    config.skip_recorded = recorded_versions(&plan, &args, config.source_connections.as_deref())?;
    let n_source_uris = config
        .source_connections
        .as_ref()
        .map_or(0, |book| book.n_connection_uris());

    let planned = crate::plan::planned_versions(&plan);
    let migrations: Vec<refinery::Migration> = set
        .migrations
        .iter()
        .map(|migration| migration.to_refinery())
        .collect();
    let show_progress = !args.no_progress && args.output == OutputFormat::Text;
    let reporter: Arc<dyn Reporter> =
        Arc::new(crate::progress::ProgressReporter::new(show_progress));
    let (trigger, shutdown) = executor::shutdown_channel();
    executor::install_signal_handlers(trigger);

    let plan = Arc::new(plan);
    let inputs = executor::waves::RunInputs {
        plan: plan.clone(),
        migrations,
        planned,
        client: client.clone(),
        journal: journal.clone(),
        prior,
        config,
    };
    let result = executor::execute(inputs, reporter, shutdown).await;
    journal.close().await;
    let result = result.with_context(|| {
        format!(
            "the journal {} cannot be written; the run stopped",
            journal_path.display()
        )
    })?;

    let mut summary = report::summarize(&plan, &result.state);
    summary.no_run_active();
    let plan_display = args.plan.display().to_string();
    let groups = report::group_failures(&summary, &plan_display);
    let api_stats = client.stats();
    match args.output {
        OutputFormat::Json => {
            let document = serde_json::json!({
                "plan_id": summary.plan_id,
                "outcome": result.outcome.as_str(),
                "waves": summary.waves,
                "totals": summary.totals,
                "failures": summary.failures,
                "failure_groups": groups,
                "held_back": summary.held_back,
                "connection_uris_from_source": n_source_uris,
                "api": {"requests": api_stats.requests, "retries": api_stats.retries, "mutations": api_stats.mutations, "rate_limited": api_stats.rate_limited, "rate_limiter_wait_ms": api_stats.rate_limiter_wait_ms},
                "timings": result.timings,
                "journal": journal_path,
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        OutputFormat::Text => {
            println!("plan {} ({})", summary.plan_id, plan_display);
            print!("{}", report::render::summary_text(&summary, &groups));
            let mut text = String::new();
            report::render::wrap_into(
                &mut text,
                &outcome_line(&result.outcome, &summary, &plan_display, &journal_path),
                "",
                "  ",
            );
            print!("{text}");
            println!(
                "Neon API: {} request{}, {} retried, {} rate-limited",
                api_stats.requests,
                if api_stats.requests == 1 { "" } else { "s" },
                api_stats.retries,
                api_stats.rate_limited
            );
        }
    }
    Ok(exit_status(&result.outcome, &summary))
}

/// `--include-rolled-back` alone includes every tenant this plan rolled back; with ids, only
/// those, each of which must be in the plan.
fn include_rolled_back(
    plan: &Plan,
    given: Option<&[String]>,
) -> anyhow::Result<executor::IncludeRolledBack> {
    let Some(ids) = given else {
        return Ok(executor::IncludeRolledBack::None);
    };
    if ids.is_empty() {
        return Ok(executor::IncludeRolledBack::All);
    }
    let mut tenants = std::collections::BTreeSet::new();
    for id in ids {
        if plan.tenant(id).is_none() {
            bail!(
                "--include-rolled-back={id}: tenant {id} is not in plan {} (give Neon project ids, as the plan and `status` list them)",
                plan.plan_id
            );
        }
        tenants.insert(id.clone());
    }
    Ok(executor::IncludeRolledBack::Tenants(tenants))
}

fn read_verify(plan: &Plan, plan_dir: &Path) -> anyhow::Result<Option<String>> {
    let Some(verify) = &plan.policy.verify else {
        return Ok(None);
    };
    let path: PathBuf = plan_dir.join(&verify.path);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the verify SQL {}", path.display()))?;
    let digest = crate::migrations::sha256_hex(&bytes);
    if digest != verify.sha256 {
        bail!(
            "verify SQL {} changed since the plan was written; re-run `schemafleet plan`",
            path.display()
        );
    }
    let text = String::from_utf8(bytes)
        .with_context(|| format!("verify SQL {} is not UTF-8", path.display()))?;
    Ok(Some(text))
}

/// The fleet's source again (the catalog query, or a tenants file with `connection_uri`), for
/// main's connection URIs and recorded versions of the plan's tenants (held in memory only:
/// they are secrets). `None` when the source gave no URI and has no catalog.
async fn source_connections(
    plan: &Plan,
    plan_path: &Path,
) -> anyhow::Result<Option<Arc<crate::fleet::ConnectionBook>>> {
    let planned: std::collections::HashSet<&str> = plan
        .waves
        .iter()
        .flat_map(|wave| wave.tenant_ids())
        .collect();
    let wanted = |id: &str| planned.contains(id);
    let book = match (&plan.fleet.catalog, plan.fleet.source.strip_prefix("file:")) {
        (Some(catalog), _) => {
            let query = crate::fleet::postgres::CatalogQuery {
                url_env: &catalog.url_env,
                query: &catalog.query,
                location: plan_path.display().to_string(),
                key: "fleet.catalog.query",
            };
            crate::fleet::connections::load_catalog(&query, wanted).await?
        }
        (None, Some(file)) if plan.fleet.connection_uris > 0 => {
            crate::fleet::connections::load_tenants_file(Path::new(file), wanted).with_context(
                || {
                    format!(
                        "the plan's tenants file gave {} tenants' connection URIs, which apply reads from it again; run apply where plan ran, or plan again",
                        plan.fleet.connection_uris
                    )
                },
            )?
        }
        _ => return Ok(None),
    };
    tracing::info!(
        source = %book.source,
        with_uri = book.n_connection_uris(),
        tenants = planned.len(),
        "main's connection URIs from the fleet's source"
    );
    Ok(Some(Arc::new(book)))
}

/// `--skip-recorded`: every tenant's recorded version, from the catalog's `schema_version` and
/// the `--recorded-from` plans' journals.
fn recorded_versions(
    plan: &Plan,
    args: &ApplyArgs,
    book: Option<&crate::fleet::ConnectionBook>,
) -> anyhow::Result<Option<Arc<executor::recorded::RecordedVersions>>> {
    use executor::recorded::{Recorded, RecordedVersions};
    if !args.skip_recorded {
        return Ok(None);
    }
    let mut recorded = RecordedVersions::default();
    if let Some(book) = book {
        for tenant_id in plan.waves.iter().flat_map(|wave| wave.tenant_ids()) {
            if let Some(version) = book.schema_version(tenant_id) {
                recorded.add(
                    tenant_id,
                    Recorded {
                        version,
                        source: book.source.clone(),
                    },
                );
            }
        }
    }
    for earlier_path in &args.recorded_from {
        let earlier = crate::plan::load_plan(earlier_path)
            .with_context(|| format!("--recorded-from {}", earlier_path.display()))?;
        let journal_path = default_journal_path(earlier_path);
        let read = Journal::read(&journal_path).with_context(|| {
            format!(
                "--recorded-from {}: reading its journal {}",
                earlier_path.display(),
                journal_path.display()
            )
        })?;
        recorded
            .add_from_journal(plan, &earlier, &read.state)
            .map_err(|message| {
                anyhow::anyhow!(
                    "--recorded-from {}: {message}; without a record of these files, drop --skip-recorded (every tenant is then probed)",
                    earlier_path.display()
                )
            })?;
    }
    if recorded.is_empty() {
        bail!(
            "--skip-recorded: no tenant has a recorded version: the plan's fleet source gives no `schema_version` (a catalog query's or tenants file's column) and no --recorded-from plan recorded a finished tenant"
        );
    }
    Ok(Some(Arc::new(recorded)))
}

fn outcome_line(
    outcome: &RunOutcome,
    summary: &report::Summary,
    plan: &str,
    journal: &Path,
) -> String {
    let totals = &summary.totals;
    let n_unfinished = totals.failed + totals.diverged + totals.rollback_failed;
    match outcome {
        RunOutcome::Completed if n_unfinished == 0 => {
            format!("rollout complete; journal: {}", journal.display())
        }
        RunOutcome::Completed => format!(
            "rollout NOT complete: every wave ran; {} of {} migrated or already up to date, {} not (grouped above): fix the causes, then `schemafleet apply {plan} --retry-failed`; journal: {}",
            totals.applied + totals.up_to_date,
            crate::report::render::plural(totals.tenants, "tenant"),
            n_unfinished,
            journal.display()
        ),
        RunOutcome::Halted { wave } => format!(
            "wave {wave} HALTED: its failure budget is spent and later waves did not start; fix the cause, then `schemafleet apply {plan} --retry-failed`"
        ),
        RunOutcome::StoppedAfter { wave } => {
            format!(
                "stopped after wave {wave} as asked; `schemafleet apply {plan}` continues with the next wave"
            )
        }
        RunOutcome::Interrupted => {
            format!(
                "interrupted; the journal is consistent: `schemafleet apply {plan}` resumes where this run stopped"
            )
        }
    }
}

fn exit_status(outcome: &RunOutcome, summary: &report::Summary) -> ExitStatus {
    match outcome {
        RunOutcome::Interrupted => ExitStatus::Interrupted,
        RunOutcome::Halted { .. } => ExitStatus::Failure,
        RunOutcome::Completed | RunOutcome::StoppedAfter { .. } => {
            if summary.totals.failed + summary.totals.diverged + summary.totals.rollback_failed > 0
            {
                ExitStatus::Failure
            } else {
                ExitStatus::Success
            }
        }
    }
}

//! `schemafleet apply PLAN`: execute a plan wave by wave, resuming from its journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::cli::{ApplyArgs, OutputFormat};
use crate::executor::control::RunControl;
use crate::executor::shared::SharedRun;
use crate::executor::{self, ApplyConfig, Reporter, RunOutcome};
use crate::exit::ExitStatus;
use crate::journal::coordination::Coordinator;
use crate::journal::gate_claims::GateClaims;
use crate::journal::store::{JournalSource, StateStore};
use crate::journal::{Journal, default_journal_path};
use crate::plan::model::Plan;
use crate::report;

/// With the plan's `verify_schema: true`, the references every tenant's schema is checked
/// against before it is migrated; built (or read from the cache) before any tenant is touched.
async fn schema_check(
    args: &ApplyArgs,
    plan: &Plan,
    set: &crate::migrations::MigrationSet,
) -> anyhow::Result<Option<Arc<executor::schema_check::SchemaCheck>>> {
    if !plan.policy.verify_schema {
        return Ok(None);
    }
    let reference_args = crate::cli::ReferenceArgs {
        reference_url: args.reference_url.clone(),
        reference_cache: args.reference_cache.clone(),
        schemas: Vec::new(),
    };
    let config =
        super::reference::ReferenceConfig::from_args(&reference_args, &plan.policy.schemas)?;
    let (references, _cached) = super::reference::references(set, &config)
        .await
        .context("the plan says verify_schema: true, so apply needs the reference schemas")?;
    Ok(Some(Arc::new(executor::schema_check::SchemaCheck {
        references,
        filter: config.filter,
    })))
}

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
    let schema_check = schema_check(&args, &plan, &set).await?;
    let max_duration = args
        .runners
        .max_duration
        .as_deref()
        .map(|text| {
            parse_duration(text).map_err(|error| anyhow::anyhow!("--max-duration: {error}"))
        })
        .transpose()?;
    let lease =
        parse_duration(&args.runners.lease).map_err(|error| anyhow::anyhow!("--lease: {error}"))?;
    if lease < std::time::Duration::from_secs(1) {
        bail!(
            "--lease {}: at least 1s (it is renewed every third of it)",
            args.runners.lease
        );
    }
    let started = std::time::Instant::now();
    let client = super::api::client(&args.api)?;
    super::api::preflight(&client, &args.api.api_url).await?;

    let source = JournalSource::choose(
        args.runners.state.state.as_deref(),
        args.journal.as_deref(),
        &args.plan,
    );
    let journal_path = std::path::PathBuf::from(source.describe());
    let mut control = RunControl {
        deadline: max_duration.map(|duration| started + duration),
        ..RunControl::default()
    };
    let (journal, read) = match &source {
        JournalSource::File(path) => {
            control.file = Some(crate::journal::control::control_path(path));
            Journal::open(path, &plan.plan_id)?
        }
        JournalSource::Store(uri) => {
            let runner_id = args.runners.runner_id.clone().unwrap_or_else(|| {
                format!("{}:{}", super::control::host_name(), std::process::id())
            });
            let writer = format!("{runner_id}/{}", crate::clock::compact_stamp());
            let store = StateStore::connect(uri).await?;
            if !store.try_lock_plan(&plan.plan_id, false).await? {
                bail!(
                    "a rollback or gc of plan {} holds its lock in the state store; run apply after it ends",
                    plan.plan_id
                );
            }
            let (journal, read) = store.open_journal(&plan.plan_id, &writer).await?;
            let coordinator = Coordinator::new(
                uri,
                &plan.plan_id,
                &runner_id,
                args.runners.regions.clone(),
                lease,
            )
            .await?;
            let gate_claims = GateClaims::new(uri, &plan.plan_id, &runner_id, lease).await?;
            control.shared = Some(Arc::new(SharedRun::new(
                store,
                coordinator,
                gate_claims,
                &plan.plan_id,
                &writer,
                read.state.last_seq,
            )));
            (journal, read)
        }
    };
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
    config.schema_check = schema_check;
    config.gates = crate::gates::GateConfig {
        retry_checks: args.retry_checks,
        workdir: if plan_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            plan_dir.clone()
        },
        plan_path: args.plan.display().to_string(),
    };
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
        control,
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
                "held_back_tenants": summary.held_back_tenants,
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
            print!("{}", report::render::gates_text(&summary, &plan_display));
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
        RunOutcome::Halted { wave } if halted_by_checks(summary, wave) => format!(
            "wave {wave} HALTED: a check failed (above) and later waves did not start; roll the wave back (`schemafleet rollback {plan} --wave {wave}`), or fix the cause and `schemafleet apply {plan} --retry-checks`"
        ),
        RunOutcome::Halted { wave } => {
            // The last wave has no later waves to hold back.
            let last = summary.waves.last().is_some_and(|last| &last.name == wave);
            let held = if last {
                ""
            } else {
                " and later waves did not start"
            };
            format!(
                "wave {wave} HALTED: its failure budget is spent{held}; fix the cause, then `schemafleet apply {plan} --retry-failed`"
            )
        }
        RunOutcome::AwaitingApproval { wave } => format!(
            "waiting for approval before wave {wave}: `schemafleet approve {plan} {wave} --by NAME`, then `schemafleet apply {plan}` continues"
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
        RunOutcome::Aborted { by, reason } => format!(
            "ABORTED by {by}: {reason}; no tenant started after it. `schemafleet resume {plan}` lifts the abort, then `schemafleet apply {plan}` continues"
        ),
        RunOutcome::OutOfTime => format!(
            "stopped on time (--max-duration): tenants remain; `schemafleet apply {plan}` continues (exit code 75)"
        ),
    }
}

/// Whether `wave` is halted by its checks rather than its failure budget.
fn halted_by_checks(summary: &report::Summary, wave: &str) -> bool {
    summary
        .waves
        .iter()
        .any(|summary| summary.name == wave && !summary.check_failures.is_empty())
}

fn exit_status(outcome: &RunOutcome, summary: &report::Summary) -> ExitStatus {
    match outcome {
        RunOutcome::Interrupted => ExitStatus::Interrupted,
        RunOutcome::Halted { .. } | RunOutcome::Aborted { .. } => ExitStatus::Failure,
        RunOutcome::AwaitingApproval { .. } => ExitStatus::AwaitingApproval,
        RunOutcome::OutOfTime => ExitStatus::StoppedOnTime,
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

/// `5h30m`, `90s`, `1d2h`: whole numbers each with a unit (ms, s, m, h, d), summed.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: write whole numbers with units (ms, s, m, h, d), e.g. 5h30m"
        )
    };
    let mut total = std::time::Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let (amount, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let amount: u64 = amount.parse().map_err(|_| invalid())?;
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        let part = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
        total = total
            .checked_add(std::time::Duration::from_millis(part))
            .ok_or_else(invalid)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_add_their_parts() {
        assert_eq!(
            parse_duration("5h30m"),
            Ok(Duration::from_secs(5 * 3600 + 1800))
        );
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "h", "5x", "3m-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

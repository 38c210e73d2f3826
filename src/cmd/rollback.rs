//! `schemafleet rollback PLAN --tenant ID... | --wave NAME | --failed`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::cli::{OutputFormat, RollbackArgs};
use crate::executor::tenant::Recorder;
use crate::exit::ExitStatus;
use crate::journal::Journal;
use crate::journal::store::{JournalSource, StateStore};
use crate::rollback::{self, Candidate, Selection};

/// One tenant's rollback: the inner result is the tenant's fate, the outer the journal's.
type TenantRollback = Result<Result<(), String>, crate::journal::JournalError>;

pub async fn run(args: RollbackArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let source = JournalSource::choose(
        args.state.state.as_deref(),
        args.journal.as_deref(),
        &args.plan,
    );
    let journal_path = std::path::PathBuf::from(source.describe());
    let selection = if let Some(wave) = &args.wave {
        Selection::Wave(wave.clone())
    } else if args.failed {
        Selection::Failed
    } else {
        Selection::Tenants(args.tenants.clone())
    };
    // A dry run reads without the lock: it must work while an apply holds the journal. A real
    // rollback locks the journal before it selects, so no apply can move a tenant between the
    // list the operator confirms and the restore. In a state store the lock is the plan's
    // advisory lock there, which every runner holds shared.
    let (locked, read, _store) = match &source {
        JournalSource::File(path) => {
            if !path.exists() {
                bail!(
                    "journal {} does not exist: nothing of plan {} was applied, so there is nothing to roll back",
                    path.display(),
                    plan.plan_id
                );
            }
            if args.dry_run {
                (None, Journal::read(path)?, None)
            } else {
                let (journal, read) = Journal::open(path, &plan.plan_id)?;
                (Some(journal), read, None)
            }
        }
        JournalSource::Store(uri) => {
            let store = StateStore::connect(uri).await?;
            let read = store.read(&plan.plan_id).await?;
            store.check_plan(&read.state, &plan.plan_id)?;
            if read.records.is_empty() {
                bail!(
                    "the state store holds nothing of plan {}, so there is nothing to roll back",
                    plan.plan_id
                );
            }
            if args.dry_run {
                (None, read, Some(store))
            } else {
                if !store.try_lock_plan(&plan.plan_id, true).await? {
                    bail!(
                        "runners of plan {} are working (they hold its lock in the state store): `schemafleet pause` it and let them finish, then roll back",
                        plan.plan_id
                    );
                }
                let writer = format!(
                    "rollback:{}:{}/{}",
                    super::control::host_name(),
                    std::process::id(),
                    crate::clock::compact_stamp()
                );
                let (journal, read) = store.open_journal(&plan.plan_id, &writer).await?;
                (Some(journal), read, Some(store))
            }
        }
    };
    let stamp = crate::clock::compact_stamp();
    let preserve_until = preserve_until(args.preserve_for.as_deref())?;
    let (candidates, mut refusals) =
        rollback::select(&plan, &read.state, &selection, &stamp).map_err(anyhow::Error::msg)?;
    // The API is checked before anything is announced; a dry run without it still prints the
    // calls, and says what it could not check.
    let client = match super::api::client(&args.api) {
        Ok(client) => match super::api::preflight(&client, &args.api.api_url).await {
            Ok(()) => Some(client),
            Err(error) if args.dry_run => {
                eprintln!(
                    "note: cannot read main's history to check the restores: {}",
                    crate::terminal::escape_controls(&format!("{error:#}"))
                );
                None
            }
            Err(error) => return Err(error),
        },
        Err(error) if args.dry_run => {
            eprintln!("note: cannot read main's history to check the restores: {error:#}");
            None
        }
        Err(error) => return Err(error),
    };
    // Refusals and checks are told from main's history now: this plan's journal does not see
    // what another plan's apply or rollback did since.
    let (candidates, collateral) = match &client {
        Some(client) => {
            retell_rolled_back(client, &plan, &read.state, &mut refusals, args.concurrency).await;
            check_mains(client, &plan, candidates, &mut refusals, &args).await
        }
        None => (candidates, Vec::new()),
    };
    for refusal in &refusals {
        eprintln!(
            "refused: {}: {}",
            plan.tenant_label(&refusal.tenant),
            crate::terminal::escape_controls(&refusal.reason)
        );
    }
    if candidates.is_empty() {
        eprintln!("{}", nothing_to_roll_back(&plan, &read.state, &selection));
        if args.output == OutputFormat::Json {
            print_json(&plan, Vec::new(), &refusals)?;
        }
        return Ok(if refusals.is_empty() {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        });
    }
    describe(&plan, &candidates, &collateral, preserve_until.as_deref());
    if args.dry_run {
        print_dry_run(&plan, &candidates, &refusals, &collateral, args.output)?;
        return Ok(ExitStatus::Success);
    }
    if !args.yes && !confirm(candidates.len())? {
        eprintln!("rollback cancelled; nothing was changed");
        return Ok(ExitStatus::Failure);
    }

    let client = client.context("the Neon API client is missing after its preflight")?;
    let journal =
        locked.context("the journal is locked for every rollback that is not a dry run")?;
    let recorder = Arc::new(Recorder::new(journal.clone(), read.state));
    let plan = Arc::new(plan);
    let preserve_until = preserve_until.as_deref();
    let results: Vec<(String, TenantRollback)> = futures::stream::iter(candidates.clone())
        .map(|candidate| {
            let client = client.clone();
            let recorder = recorder.clone();
            let plan = plan.clone();
            async move {
                let result =
                    rollback::roll_back_tenant(&client, &recorder, &plan, &candidate).await;
                if let (Ok(Ok(())), Some(expires_at)) = (&result, preserve_until)
                    && let Err(error) = rollback::expire_preserved(
                        &client,
                        &candidate.tenant,
                        &candidate.preserve_under_name,
                        expires_at,
                    )
                    .await
                {
                    // The restore itself succeeded; only the preserved branch's expiry is
                    // missing, which `gc --preserved` can make up for.
                    eprintln!(
                        "warning: {}: rolled back, but the preserved branch has no expiry: {}",
                        plan.tenant_label(&candidate.tenant),
                        crate::terminal::escape_controls(&error)
                    );
                }
                (candidate.tenant.clone(), result)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    journal.close().await;
    let mut n_failed = refusals.len();
    let mut report = Vec::new();
    for (tenant, result) in results {
        let outcome = result
            .with_context(|| format!("the journal {} cannot be written", journal_path.display()))?;
        let label = plan.tenant_label(&tenant);
        match &outcome {
            Ok(()) => eprintln!("rolled back: {label}"),
            Err(reason) => {
                n_failed += 1;
                eprintln!(
                    "FAILED: {label}: {}",
                    crate::terminal::escape_controls(&reason.to_string())
                );
            }
        }
        let preserved = candidates
            .iter()
            .find(|candidate| candidate.tenant == tenant)
            .map(|candidate| candidate.preserve_under_name.clone());
        report.push(serde_json::json!({"tenant": tenant, "tenant_name": tenant_name(&plan, &tenant), "ok": outcome.is_ok(), "error": outcome.err(), "preserved_branch": preserved}));
    }
    if args.output == OutputFormat::Json {
        print_json(&plan, report, &refusals)?;
    } else {
        let total = report.len() + refusals.len();
        let rolled_back = total - n_failed;
        if rolled_back == 0 {
            println!(
                "0 of {} rolled back (the reasons are above)",
                crate::report::render::plural(total, "tenant")
            );
        } else {
            let mut text = String::new();
            crate::report::render::wrap_into(
                &mut text,
                &format!(
                    "{rolled_back} of {} rolled back; `schemafleet status {}` shows {}; `apply` of this plan leaves {} back until `--include-rolled-back`",
                    crate::report::render::plural(total, "tenant"),
                    args.plan.display(),
                    if rolled_back == 1 { "it" } else { "them" },
                    if rolled_back == 1 { "it" } else { "them" },
                ),
                "",
                "  ",
            );
            print!("{text}");
        }
    }
    Ok(if n_failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// Why nothing was chosen: for `--failed`, that the failed tenants failed before their main
/// changed (validation, probe), so there is nothing on main to undo.
fn nothing_to_roll_back(
    plan: &crate::plan::model::Plan,
    state: &crate::journal::JournalState,
    selection: &rollback::Selection,
) -> String {
    if !matches!(selection, rollback::Selection::Failed) {
        return "nothing to roll back".to_string();
    }
    let untouched: Vec<String> = plan
        .tenants()
        .filter(|(tenant, _)| {
            state.tenant(&tenant.id).is_some_and(|tenant_state| {
                tenant_state.status == crate::journal::TenantStatus::Failed
                    && tenant_state.applied_versions.is_empty()
            })
        })
        .map(|(tenant, _)| tenant.label())
        .collect();
    if untouched.is_empty() {
        return "nothing to roll back: no tenant of this plan failed after its main changed"
            .to_string();
    }
    const SHOWN: usize = 5;
    let mut names = untouched
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if untouched.len() > SHOWN {
        names.push_str(&format!(" and {} more", untouched.len() - SHOWN));
    }
    let mut text = String::new();
    crate::report::render::wrap_into(
        &mut text,
        &format!(
            "nothing to roll back: {} failed before main changed, so main is as it was ({names}); fix the cause and `apply --retry-failed`",
            crate::report::render::plural(untouched.len(), "tenant"),
        ),
        "",
        "  ",
    );
    text.trim_end().to_string()
}

/// The rollback's JSON document: restored tenants and refusals (also when nothing was rolled
/// back, so a pipeline always gets one).
fn print_json(
    plan: &crate::plan::model::Plan,
    tenants: Vec<serde_json::Value>,
    refusals: &[rollback::Refusal],
) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "plan_id": plan.plan_id,
            "tenants": tenants,
            "refused": refused_json(plan, refusals),
        }))?
    );
    Ok(())
}

/// The refused tenants as JSON: id, name and why.
fn refused_json(
    plan: &crate::plan::model::Plan,
    refusals: &[rollback::Refusal],
) -> Vec<serde_json::Value> {
    refusals
        .iter()
        .map(|refusal| serde_json::json!({"tenant": refusal.tenant, "tenant_name": tenant_name(plan, &refusal.tenant), "reason": refusal.reason}))
        .collect()
}

/// `--preserve-for DURATION`: the expiry (RFC 3339) the preserved branches get; Neon accepts at
/// most 30 days ahead.
fn preserve_until(preserve_for: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(text) = preserve_for else {
        return Ok(None);
    };
    let duration = crate::policy::parse_duration(text)
        .map_err(|error| anyhow::anyhow!("--preserve-for: {error}"))?;
    const MAX: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
    if duration.is_zero() || duration > MAX {
        bail!(
            "--preserve-for {text}: Neon accepts a branch expiry from 1s to 30d ahead; leave it out to keep the preserved branches until `gc --preserved --older-than` deletes them"
        );
    }
    Ok(Some(crate::clock::rfc3339_seconds_from_now(duration)))
}

/// Re-tell the refusal of each tenant this plan's journal says it already rolled back from
/// main's history now: a later plan may have migrated it again.
async fn retell_rolled_back(
    client: &crate::neon::NeonClient,
    plan: &crate::plan::model::Plan,
    state: &crate::journal::JournalState,
    refusals: &mut [rollback::Refusal],
    concurrency: usize,
) {
    let retold: Vec<Option<String>> = futures::stream::iter(refusals.iter())
        .map(|refusal| async move {
            let before = rollback::RolledBackBefore::of(state, &refusal.tenant)?;
            Some(
                match rollback::main_versions(client, plan, &refusal.tenant).await {
                    Ok(current) => rollback::already_rolled_back_reason(before, &current),
                    Err(error) => format!(
                        "{} (main's history could not be read to confirm it: {error})",
                        refusal.reason
                    ),
                },
            )
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    for (refusal, reason) in refusals.iter_mut().zip(retold) {
        if let Some(reason) = reason {
            refusal.reason = reason;
        }
    }
}

/// Read every candidate's main history: a tenant whose restore would move main forward is
/// refused; one that a later release migrated further is refused unless
/// `--undo-later-releases`, in which case what it undoes is listed.
async fn check_mains(
    client: &crate::neon::NeonClient,
    plan: &crate::plan::model::Plan,
    candidates: Vec<Candidate>,
    refusals: &mut Vec<rollback::Refusal>,
    args: &RollbackArgs,
) -> (Vec<Candidate>, Vec<(String, Vec<i32>)>) {
    let planned = rollback::planned_versions(plan);
    let checked: Vec<(Candidate, Result<Vec<i32>, String>)> = futures::stream::iter(candidates)
        .map(|candidate| async move {
            let current = rollback::main_versions(client, plan, &candidate.tenant).await;
            (candidate, current)
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    let mut kept = Vec::new();
    let mut collateral = Vec::new();
    for (candidate, current) in checked {
        let refuse = |reason: String| rollback::Refusal {
            tenant: candidate.tenant.clone(),
            reason,
        };
        match current {
            Ok(current) => {
                let check =
                    rollback::check_main(&current, candidate.expected_version, &planned);
                if let Some(reason) = check.refusal(args.undo_later_releases) {
                    refusals.push(refuse(reason));
                    continue;
                }
                if let rollback::MainCheck::LaterReleases(versions) = check {
                    collateral.push((candidate.tenant.clone(), versions));
                }
                kept.push(candidate);
            }
            Err(_) if args.undo_later_releases => kept.push(candidate),
            Err(error) => refusals.push(refuse(format!(
                "cannot read main's history to check it ({error}); pass --undo-later-releases to restore without that check; nothing was changed"
            ))),
        }
    }
    (kept, collateral)
}

/// The project's name, or "" when it has none of its own.
fn tenant_name<'p>(plan: &'p crate::plan::model::Plan, tenant_id: &str) -> &'p str {
    plan.tenant(tenant_id)
        .map_or("", |(tenant, _)| tenant.name.as_str())
}

/// `--dry-run`: the restore calls, as text or one JSON document on stdout.
fn print_dry_run(
    plan: &crate::plan::model::Plan,
    candidates: &[Candidate],
    refusals: &[rollback::Refusal],
    collateral: &[(String, Vec<i32>)],
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut tenants = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let (main_branch_id, request) = rollback::restore_request(candidate);
        let path = format!(
            "/projects/{}/branches/{main_branch_id}/restore",
            candidate.tenant
        );
        match output {
            OutputFormat::Text => {
                println!("POST {path}");
                println!(
                    "  source_branch_id: {}, source_lsn: {}",
                    request.source_branch_id,
                    request.source_lsn.as_deref().unwrap_or("(its head)")
                );
                println!(
                    "  preserve_under_name: {}",
                    request.preserve_under_name.as_deref().unwrap_or("")
                );
            }
            OutputFormat::Json => tenants.push(serde_json::json!({
                "tenant": candidate.tenant,
                "tenant_name": tenant_name(plan, &candidate.tenant),
                "wave": candidate.wave,
                "restore_point_at": candidate.point_at,
                "preserved_branch": candidate.preserve_under_name,
                "undoes_later_releases": collateral
                    .iter()
                    .find(|(tenant, _)| *tenant == candidate.tenant)
                    .map(|(_, versions)| versions.clone())
                    .unwrap_or_default(),
                "request": {
                    "method": "POST",
                    "path": path,
                    "body": {
                        "source_branch_id": request.source_branch_id,
                        "source_lsn": request.source_lsn,
                        "preserve_under_name": request.preserve_under_name,
                    },
                },
            })),
        }
    }
    if output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan_id": plan.plan_id,
                "dry_run": true,
                "tenants": tenants,
                "refused": refused_json(plan, refusals),
            }))?
        );
    }
    Ok(())
}

fn describe(
    plan: &crate::plan::model::Plan,
    candidates: &[Candidate],
    collateral: &[(String, Vec<i32>)],
    preserve_until: Option<&str>,
) {
    eprintln!(
        "will restore {}:",
        crate::report::render::plural(candidates.len(), "tenant")
    );
    for candidate in candidates {
        let age = rollback::age_seconds(candidate)
            .map(|seconds| format!("{} ago", human_duration(seconds)))
            .unwrap_or_else(|| "age unknown".to_string());
        let keep = preserve_until.map_or_else(
            || "kept until `gc --preserved` deletes it".to_string(),
            |until| format!("it expires at {until}"),
        );
        eprintln!(
            "  {}, wave {}: back to its restore point from {age};",
            plan.tenant_label(&candidate.tenant),
            candidate.wave
        );
        let mut text = String::new();
        crate::report::render::wrap_into(
            &mut text,
            &format!(
                "writes since then move to branch {} ({keep})",
                candidate.preserve_under_name
            ),
            "    ",
            "      ",
        );
        eprint!("{text}");
        if let Some((_, versions)) = collateral
            .iter()
            .find(|(tenant, _)| *tenant == candidate.tenant)
        {
            eprintln!(
                "    also undoes {} of a later release (--undo-later-releases)",
                rollback::version_list(versions)
            );
        }
    }
}

fn human_duration(seconds: i64) -> String {
    match seconds {
        seconds if seconds < 120 => format!("{seconds}s"),
        seconds if seconds < 7200 => format!("{}m", seconds / 60),
        seconds => format!("{}h{}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

fn confirm(n_tenants: usize) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to roll back {} without confirmation: stdin is not a terminal; pass --yes (or --dry-run to see the calls)",
            crate::report::render::plural(n_tenants, "tenant")
        );
    }
    let branches = if n_tenants == 1 {
        "main branch"
    } else {
        "main branches"
    };
    eprint!("restore {n_tenants} tenant {branches}? type 'yes' to continue: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

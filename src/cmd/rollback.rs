//! `schemafleet rollback PLAN --tenant ID... | --wave NAME | --failed`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::cli::{OutputFormat, RollbackArgs};
use crate::executor::tenant::Recorder;
use crate::exit::ExitStatus;
use crate::journal::{Journal, LockHolder, default_journal_path};
use crate::rollback::{self, Candidate, Selection};

/// One tenant's rollback: the inner result is the tenant's fate, the outer the journal's.
type TenantRollback = Result<Result<(), String>, crate::journal::JournalError>;

pub async fn run(args: RollbackArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let journal_path = args
        .journal
        .clone()
        .unwrap_or_else(|| default_journal_path(&args.plan));
    if !journal_path.exists() {
        bail!(
            "journal {} does not exist: nothing of plan {} was applied, so there is nothing to roll back",
            journal_path.display(),
            plan.plan_id
        );
    }
    let selection = if let Some(wave) = &args.wave {
        Selection::Wave(wave.clone())
    } else if args.failed {
        Selection::Failed
    } else {
        Selection::Tenants(args.tenants.clone())
    };
    // Read without the lock first: a dry run must work while an apply holds the journal.
    let read = Journal::read(&journal_path)?;
    // A real rollback cannot run beside an apply: say so before listing what it would do.
    if !args.dry_run && Journal::lock_holder(&journal_path, &read)? != LockHolder::Nobody {
        return Err(crate::journal::JournalError::Locked {
            path: journal_path.clone(),
        }
        .into());
    }
    let stamp = crate::clock::compact_stamp();
    let (candidates, mut refusals) =
        rollback::select(&plan, &read.state, &selection, &stamp).map_err(anyhow::Error::msg)?;
    // The API is checked before anything is announced; a dry run without it still prints the
    // calls, and says what it could not check.
    let client = match super::api::client(&args.api) {
        Ok(client) => match super::api::preflight(&client, &args.api.api_url).await {
            Ok(()) => Some(client),
            Err(error) if args.dry_run => {
                eprintln!("note: cannot check main for later releases: {error:#}");
                None
            }
            Err(error) => return Err(error),
        },
        Err(error) if args.dry_run => {
            eprintln!("note: cannot check main for later releases: {error:#}");
            None
        }
        Err(error) => return Err(error),
    };
    let (candidates, collateral) = match &client {
        Some(client) if !candidates.is_empty() => {
            check_later_releases(client, &plan, candidates, &mut refusals, &args).await
        }
        _ => (candidates, Vec::new()),
    };
    for refusal in &refusals {
        eprintln!(
            "refused: {}: {}",
            plan.tenant_label(&refusal.tenant),
            refusal.reason
        );
    }
    if candidates.is_empty() {
        eprintln!("nothing to roll back");
        return Ok(if refusals.is_empty() {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        });
    }
    describe(&plan, &candidates, &collateral);
    if args.dry_run {
        print_dry_run(&plan, &candidates, &refusals, &collateral, args.output)?;
        return Ok(ExitStatus::Success);
    }
    if !args.yes && !confirm(candidates.len())? {
        eprintln!("rollback cancelled; nothing was changed");
        return Ok(ExitStatus::Failure);
    }

    let client = client.context("the Neon API client is missing after its preflight")?;
    let (journal, read) = Journal::open(&journal_path, &plan.plan_id)?;
    let recorder = Arc::new(Recorder::new(journal.clone(), read.state));
    let plan = Arc::new(plan);
    let results: Vec<(String, TenantRollback)> = futures::stream::iter(candidates.clone())
        .map(|candidate| {
            let client = client.clone();
            let recorder = recorder.clone();
            let plan = plan.clone();
            async move {
                let result =
                    rollback::roll_back_tenant(&client, &recorder, &plan, &candidate).await;
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
                eprintln!("FAILED: {label}: {reason}");
            }
        }
        let preserved = candidates
            .iter()
            .find(|candidate| candidate.tenant == tenant)
            .map(|candidate| candidate.preserve_under_name.clone());
        report.push(serde_json::json!({"tenant": tenant, "tenant_name": tenant_name(&plan, &tenant), "ok": outcome.is_ok(), "error": outcome.err(), "preserved_branch": preserved}));
    }
    if args.output == OutputFormat::Json {
        let refused: Vec<serde_json::Value> = refusals
            .iter()
            .map(|refusal| serde_json::json!({"tenant": refusal.tenant, "tenant_name": tenant_name(&plan, &refusal.tenant), "reason": refusal.reason}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"plan_id": plan.plan_id, "tenants": report, "refused": refused})
            )?
        );
    } else {
        let total = report.len() + refusals.len();
        let rolled_back = total - n_failed;
        if rolled_back == 0 {
            println!(
                "0 of {} rolled back (the reasons are above)",
                crate::report::render::plural(total, "tenant")
            );
        } else {
            println!(
                "{rolled_back} of {} rolled back; `schemafleet status {}` shows them, a later `apply` migrates them again",
                crate::report::render::plural(total, "tenant"),
                args.plan.display()
            );
        }
    }
    Ok(if n_failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// Read every candidate's main history: a tenant that a later release has migrated further is
/// refused, unless `--undo-later-releases`, in which case what it undoes is listed.
async fn check_later_releases(
    client: &crate::neon::NeonClient,
    plan: &crate::plan::model::Plan,
    candidates: Vec<Candidate>,
    refusals: &mut Vec<rollback::Refusal>,
    args: &RollbackArgs,
) -> (Vec<Candidate>, Vec<(String, Vec<i32>)>) {
    let checked: Vec<(Candidate, Result<Vec<i32>, String>)> = futures::stream::iter(candidates)
        .map(|candidate| async move {
            let later = rollback::later_releases(client, plan, &candidate).await;
            (candidate, later)
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    let mut kept = Vec::new();
    let mut collateral = Vec::new();
    for (candidate, later) in checked {
        match later {
            Ok(versions) if versions.is_empty() => kept.push(candidate),
            Ok(versions) if args.undo_later_releases => {
                collateral.push((candidate.tenant.clone(), versions));
                kept.push(candidate);
            }
            Ok(versions) => refusals.push(rollback::Refusal {
                tenant: candidate.tenant.clone(),
                reason: format!(
                    "main also has {} from a later release (not in this plan), which the restore would undo too; roll back the later plan first, or pass --undo-later-releases; nothing was changed",
                    rollback::version_list(&versions)
                ),
            }),
            Err(_) if args.undo_later_releases => kept.push(candidate),
            Err(error) => refusals.push(rollback::Refusal {
                tenant: candidate.tenant.clone(),
                reason: format!(
                    "cannot read main's history to check for later releases ({error}); pass --undo-later-releases to restore without that check; nothing was changed"
                ),
            }),
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
        let refused: Vec<serde_json::Value> = refusals
            .iter()
            .map(|refusal| serde_json::json!({"tenant": refusal.tenant, "tenant_name": tenant_name(plan, &refusal.tenant), "reason": refusal.reason}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan_id": plan.plan_id,
                "dry_run": true,
                "tenants": tenants,
                "refused": refused,
            }))?
        );
    }
    Ok(())
}

fn describe(
    plan: &crate::plan::model::Plan,
    candidates: &[Candidate],
    collateral: &[(String, Vec<i32>)],
) {
    eprintln!(
        "will restore {}:",
        crate::report::render::plural(candidates.len(), "tenant")
    );
    for candidate in candidates {
        let age = rollback::age_seconds(candidate)
            .map(|seconds| format!("{} ago", human_duration(seconds)))
            .unwrap_or_else(|| "age unknown".to_string());
        eprintln!(
            "  {}, wave {}: back to its restore point from {age};",
            plan.tenant_label(&candidate.tenant),
            candidate.wave
        );
        eprintln!(
            "    writes since then move to branch {}",
            candidate.preserve_under_name
        );
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

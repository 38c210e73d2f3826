//! `schemafleet status PLAN`: where a rollout stands, from its journal alone.
//!
//! **Invariant:** without `--live` this makes no connection and no API call, so an operator can
//! run it at any time, even while `apply` runs (the journal is read without its lock; whether
//! an `apply` holds it is probed, so a live run is told apart from a killed one).

use std::path::Path;

use futures::StreamExt;

use crate::cli::{OutputFormat, StatusArgs};
use crate::exit::ExitStatus;
use crate::journal::coordination::{self, ControlRow, RunnerRow};
use crate::journal::store::{JournalSource, StateStore};
use crate::journal::{Journal, JournalState, LockHolder, RestorePoint, TenantStatus};
use crate::pg::{self, HistoryComparison};
use crate::plan::file::display_path;
use crate::plan::model::Plan;
use crate::report;

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let source = JournalSource::choose(
        args.state.state.as_deref(),
        args.journal.as_deref(),
        &args.plan,
    );
    let journal_path = std::path::PathBuf::from(source.describe());
    let (read, lock_holder, runners, switches) = match &source {
        JournalSource::File(path) => {
            let read = Journal::read_for_plan(path, &plan.plan_id)?;
            let lock_holder = Journal::lock_holder(path, &read)?;
            let switches =
                crate::journal::control::read(&crate::journal::control::control_path(path))
                    .unwrap_or_default();
            (read, lock_holder, None, switches)
        }
        JournalSource::Store(uri) => {
            let store = StateStore::connect(uri).await?;
            let read = store.read(&plan.plan_id).await?;
            store.check_plan(&read.state, &plan.plan_id)?;
            let runners = coordination::runners(&*store.client().await, uri, &plan.plan_id).await?;
            let switches =
                coordination::control(&*store.client().await, uri, &plan.plan_id).await?;
            // A runner that is not finished and has a live claim or was seen recently is running.
            let live = runners.iter().any(|runner| {
                !runner.finished && (runner.in_flight > 0 || runner.seconds_since_seen < 60.0)
            });
            let holder = if live {
                LockHolder::Other
            } else {
                LockHolder::Nobody
            };
            (read, holder, Some(runners), switches)
        }
    };
    let mut summary = report::summarize(&plan, &read.state);
    if lock_holder == LockHolder::Nobody {
        summary.no_run_active();
    }
    let plan_display = args.plan.display().to_string();
    let groups = report::group_failures(&summary, &plan_display);
    let baselined = baselined(&plan, &read.state);
    let unconfirmed = baseline_unconfirmed(&plan, &read.state);
    let baking = baking(&plan, &read.state, time::OffsetDateTime::now_utc());
    let live = if args.live {
        Some(live_probe(&args, &plan, &read.state).await?)
    } else {
        None
    };
    // Journal-only status is as of this plan's last record: another plan's apply or rollback
    // since then is invisible to it; main's history (`--live`) is the authority.
    let as_of = read.state.last_at.clone();
    let running = summary
        .waves
        .iter()
        .find(|wave| wave.status == "running" || wave.status == report::summary::STOPPED)
        .map(|wave| wave.name.clone());
    let apply_pid = match lock_holder {
        LockHolder::Apply { pid } => Some(pid),
        LockHolder::Nobody | LockHolder::Other => None,
    };
    let halted = summary
        .waves
        .iter()
        .find(|wave| wave.halted)
        .map(|wave| wave.name.clone());
    // A wave `apply` stopped before for an approval not given yet: exit 3, as `apply` does.
    let awaiting = summary
        .waves
        .iter()
        .find(|wave| {
            wave.approval
                .as_ref()
                .is_some_and(|approval| approval.status == "awaiting")
        })
        .map(|wave| wave.name.clone());
    match args.output {
        OutputFormat::Json => {
            let limit = if args.all_restore_points {
                usize::MAX
            } else {
                RESTORE_POINTS_LISTED
            };
            let points = restore_points(&plan, &read.state, limit);
            let document = serde_json::json!({
                "plan_id": summary.plan_id,
                "journal": journal_path,
                "journal_exists": !read.records.is_empty() || journal_path.exists(),
                "runners": runners,
                "paused_by": switches.paused_by,
                "paused_at": switches.paused_at,
                "aborted_by": switches.aborted_by,
                "abort_reason": switches.abort_reason,
                // The journal's last abort: who, why, when; `lifted` once `resume` ran.
                "abort": read.state.last_abort.as_ref().map(|abort| serde_json::json!({
                    "by": abort.by, "reason": abort.reason, "at": abort.at,
                    "lifted": switches.aborted_by.is_none(),
                })),
                "awaiting_approval": awaiting,
                "runs": read.state.runs,
                "outcome": read.state.last_run_outcome,
                "apply_running_pid": apply_pid,
                "journal_locked": lock_holder != LockHolder::Nobody,
                "running_wave": running.as_ref().filter(|_| lock_holder != LockHolder::Nobody),
                "stopped_wave": running.as_ref().filter(|_| lock_holder == LockHolder::Nobody),
                "halted_wave": halted,
                "waves": summary.waves,
                "totals": summary.totals,
                "failures": summary.failures,
                "failure_groups": groups,
                // Listed for JSON only: text shows the count. A list of every tenant's point
                // grows with the fleet, so it is cut at RESTORE_POINTS_LISTED unless asked for.
                "restore_points": points.listed,
                "restore_point_counts": points.counts,
                "restore_points_truncated": points.truncated,
                "held_back": summary.held_back,
                "held_back_tenants": summary.held_back_tenants,
                "baseline": baselined,
                "baseline_unconfirmed": unconfirmed,
                "baking": baking.as_ref().map(|bake| serde_json::json!({
                    "wave": bake.wave, "until": bake.until, "next_wave": bake.next_wave,
                })),
                "source": if live.is_some() { "journal+live" } else { "journal" },
                "as_of": as_of,
                "torn_tail": read.torn_tail,
                "live": live,
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        OutputFormat::Text => {
            print_switches(
                &switches,
                read.state.last_abort.as_ref(),
                runners.as_deref(),
            );
            print_text(
                &args.plan,
                &journal_path,
                &read.state,
                &summary,
                &groups,
                summary.restore_points,
                live.as_ref(),
                running,
                halted.clone(),
                read.torn_tail.as_deref(),
                as_of.as_deref(),
                lock_holder,
            );
            if let Some(bake) = &baking {
                print!("{}", bake.text(apply_pid));
            }
            print!("{}", baseline_text(&baselined));
            print!("{}", unconfirmed_text(&args.plan, &unconfirmed));
        }
    }
    // A tenant `--skip-recorded` skipped whose main is not up to date was never migrated: the
    // record was wrong, which is a failure, not a note.
    let wrong_records = live
        .as_ref()
        .and_then(|live| live["stale"].as_array())
        .map_or(0, |stale| {
            stale
                .iter()
                .filter(|entry| entry["journal"] == "skipped_recorded")
                .count()
        });
    let live_problems = live
        .as_ref()
        .and_then(|live| live["problems"].as_array())
        .map_or(0, Vec::len)
        + wrong_records;
    Ok(
        if summary.totals.failed + summary.totals.diverged + summary.totals.rollback_failed > 0
            || halted.is_some()
            || live_problems > 0
        {
            ExitStatus::Failure
        } else if awaiting.is_some() {
            ExitStatus::AwaitingApproval
        } else {
            ExitStatus::Success
        },
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename the same eleven things"
)]
fn print_text(
    plan_path: &Path,
    journal_path: &Path,
    state: &JournalState,
    summary: &report::Summary,
    groups: &[report::FailureGroup],
    n_points: usize,
    live: Option<&serde_json::Value>,
    running: Option<String>,
    halted: Option<String>,
    torn_tail: Option<&str>,
    as_of: Option<&str>,
    lock_holder: LockHolder,
) {
    println!("plan {} ({})", summary.plan_id, display_path(plan_path));
    if let Some(torn) = torn_tail {
        println!(
            "warning: journal {}: {torn}; `apply` re-checks that step against the tenant",
            display_path(journal_path)
        );
    }
    let last_run = match (lock_holder, state.last_run_outcome.as_deref()) {
        (LockHolder::Apply { pid }, _) => format!("apply is running (pid {pid})"),
        (LockHolder::Other, _) => {
            "the journal is locked by another schemafleet process (a rollback?)".to_string()
        }
        (LockHolder::Nobody, Some(outcome)) => format!("last: {outcome}"),
        (LockHolder::Nobody, None) => {
            "last: killed before it finished (`apply` resumes it)".to_string()
        }
    };
    if state.runs == 0 {
        println!("journal {}: no run yet", display_path(journal_path));
    } else {
        println!(
            "journal {}: {}, {last_run}",
            display_path(journal_path),
            report::render::plural(state.runs as usize, "run"),
        );
    }
    if live.is_none()
        && let Some(as_of) = as_of
    {
        let mut note = String::new();
        report::render::wrap_into(
            &mut note,
            &format!(
                "as of this plan's last record ({}): another plan's apply or rollback since then is not in it; `--live` reads the tenants",
                to_the_second(as_of)
            ),
            "",
            "  ",
        );
        print!("{note}");
    }
    if let Some(wave) = running {
        match lock_holder {
            LockHolder::Apply { pid } => println!("wave {wave} is running (apply pid {pid})"),
            LockHolder::Other => println!("wave {wave} started and is not finished"),
            LockHolder::Nobody => {
                let how = if state.last_run_outcome.as_deref() == Some("interrupted") {
                    "interrupted"
                } else {
                    "killed"
                };
                println!("wave {wave} stopped unfinished (its run was {how}): `apply` resumes it");
            }
        }
    }
    if let Some(wave) = halted {
        // The last wave has no later waves to hold back.
        let last = summary.waves.last().is_some_and(|last| last.name == wave);
        let held = if last {
            "its failures are not resolved"
        } else {
            "later waves wait until its failures are resolved"
        };
        println!("wave {wave} is HALTED: {held}");
    }
    let apply_pid = match lock_holder {
        LockHolder::Apply { pid } => Some(pid),
        LockHolder::Nobody | LockHolder::Other => None,
    };
    print!(
        "{}",
        report::render::summary_text_during(summary, groups, apply_pid)
    );
    print!(
        "{}",
        report::render::gates_text(summary, &plan_path.display().to_string())
    );
    let (verb, pronoun) = if n_points == 1 {
        ("tenant holds", "it")
    } else {
        ("tenants hold", "them")
    };
    println!("\n{n_points} {verb} a restore point (`schemafleet rollback` can use {pronoun})");
    if let Some(live) = live {
        print_live(live);
    }
}

/// A journal time as people read it: whole seconds (`…T12:18:48Z`); the JSON keeps it exact.
fn to_the_second(at: &str) -> String {
    crate::clock::parse_rfc3339(at).map_or_else(
        || at.to_string(),
        |time| crate::clock::format_rfc3339(time.replace_nanosecond(0).unwrap_or(time)),
    )
}

/// A finished wave whose bake time has not run out, before a wave that has not started.
struct Baking {
    wave: String,
    until: String,
    next_wave: String,
}

impl Baking {
    /// Why nothing moves: the running apply waits, or the next one will.
    fn text(&self, apply_pid: Option<u32>) -> String {
        let line = match apply_pid {
            Some(pid) => format!(
                "apply (pid {pid}) is baking wave {} until {}; wave {} starts then",
                self.wave,
                to_the_second(&self.until),
                self.next_wave
            ),
            None => format!(
                "wave {} bakes until {}: `apply` waits for it before wave {} starts, unless given `--skip-bake`",
                self.wave,
                to_the_second(&self.until),
                self.next_wave
            ),
        };
        let mut out = String::new();
        report::render::wrap_into(&mut out, &line, "", "  ");
        out
    }
}

fn baking(plan: &Plan, state: &JournalState, now: time::OffsetDateTime) -> Option<Baking> {
    plan.waves.windows(2).find_map(|pair| {
        let until = state.waves.get(&pair[0].name)?.bake_until.clone()?;
        let ends = crate::clock::parse_rfc3339(&until)?;
        let next_waits = state.wave_status(&pair[1].name) == crate::journal::WaveStatus::NotStarted;
        (ends > now && next_waits).then(|| Baking {
            wave: pair[0].name.clone(),
            until,
            next_wave: pair[1].name.clone(),
        })
    })
}

/// Tenants `baseline --yes` recorded a history for, in plan order.
fn baselined(plan: &Plan, state: &JournalState) -> Vec<serde_json::Value> {
    plan.tenants()
        .filter_map(|(planned, _)| {
            let (versions, at) = state.baselined.get(&planned.id)?;
            Some(serde_json::json!({
                "tenant": planned.id,
                "tenant_name": planned.name,
                "region": planned.region,
                "versions": versions,
                "recorded_at": at,
            }))
        })
        .collect()
}

/// Tenants whose `baseline_started` has no `baseline_recorded` (a crash between the commit
/// and the record, or a write that failed), in plan order.
fn baseline_unconfirmed(plan: &Plan, state: &JournalState) -> Vec<serde_json::Value> {
    plan.tenants()
        .filter_map(|(planned, _)| {
            let versions = state.baseline_unconfirmed.get(&planned.id)?;
            Some(serde_json::json!({
                "tenant": planned.id,
                "tenant_name": planned.name,
                "versions": versions,
            }))
        })
        .collect()
}

/// The journal alone cannot tell whether those rows were committed: the tenants' history
/// tables can, and `baseline --yes` reads them.
fn unconfirmed_text(plan_path: &std::path::Path, unconfirmed: &[serde_json::Value]) -> String {
    if unconfirmed.is_empty() {
        return String::new();
    }
    let labels: Vec<String> = unconfirmed
        .iter()
        .map(|entry| {
            crate::plan::model::PlannedTenant {
                id: entry["tenant"].as_str().unwrap_or("?").to_string(),
                name: entry["tenant_name"].as_str().unwrap_or("").to_string(),
                region: String::new(),
            }
            .label()
        })
        .collect();
    let mut out = String::new();
    report::render::wrap_into(
        &mut out,
        &format!(
            "baseline started on {} without a record of its outcome (stopped before it \
             journaled the commit?): {}; `schemafleet baseline {} --yes` reads their history \
             and journals the rows it finds",
            report::render::plural(labels.len(), "tenant"),
            labels.join(", "),
            plan_path.display()
        ),
        "",
        "  ",
    );
    out
}

/// One line per set of recorded versions: `baseline recorded V1..V2 on 3 tenants: …`.
fn baseline_text(baselined: &[serde_json::Value]) -> String {
    let mut by_versions: std::collections::BTreeMap<Vec<i64>, Vec<String>> = Default::default();
    for entry in baselined {
        let versions: Vec<i64> = entry["versions"]
            .as_array()
            .map(|versions| {
                versions
                    .iter()
                    .filter_map(serde_json::Value::as_i64)
                    .collect()
            })
            .unwrap_or_default();
        let label = crate::plan::model::PlannedTenant {
            id: entry["tenant"].as_str().unwrap_or("?").to_string(),
            name: entry["tenant_name"].as_str().unwrap_or("").to_string(),
            region: String::new(),
        }
        .label();
        by_versions.entry(versions).or_default().push(label);
    }
    let mut out = String::new();
    if !by_versions.is_empty() {
        out.push('\n');
    }
    for (versions, labels) in by_versions {
        const SHOWN: usize = 10;
        let versions: Vec<i32> = versions.iter().map(|version| *version as i32).collect();
        let mut names = labels
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if labels.len() > SHOWN {
            names.push_str(&format!(
                " (+{} more; --output json lists them all)",
                labels.len() - SHOWN
            ));
        }
        report::render::wrap_into(
            &mut out,
            &format!(
                "baseline recorded {} on {}: {names}",
                crate::drift::format_versions(&versions),
                report::render::plural(labels.len(), "tenant")
            ),
            "",
            "  ",
        );
    }
    out
}

/// Restore points `status --output json` lists without `--all-restore-points`.
const RESTORE_POINTS_LISTED: usize = 100;

/// The restore points of a `status --output json` document.
struct RestorePoints {
    /// The first `limit`, in plan order.
    listed: Vec<serde_json::Value>,
    /// How many tenants hold one, in all and by kind.
    counts: serde_json::Value,
    /// Whether `listed` leaves some out.
    truncated: bool,
}

/// Restore points as the operator needs them: tenant, wave, kind, when; the first `limit` in
/// plan order, and every one counted. Only the listed tenants' states are built.
fn restore_points(plan: &Plan, state: &JournalState, limit: usize) -> RestorePoints {
    let mut listed = Vec::new();
    let (mut n_branch_points, mut n_backup_branches) = (0usize, 0usize);
    for wave in &plan.waves {
        for planned in &wave.tenants {
            let tenant_id = &planned.id;
            match state.restore_point_kind(tenant_id) {
                Some("branch_point") => n_branch_points += 1,
                Some(_) => n_backup_branches += 1,
                None => continue,
            }
            if listed.len() >= limit {
                continue;
            }
            let Some(tenant) = state.tenant(tenant_id) else {
                continue;
            };
            let Some(point) = tenant.restore_point.as_deref() else {
                continue;
            };
            let detail = match point {
                RestorePoint::BranchPoint { lsn, .. } => lsn,
                RestorePoint::BackupBranch {
                    backup_branch_name, ..
                } => backup_branch_name,
            };
            listed.push(serde_json::json!({
                "tenant": tenant_id,
                "tenant_name": planned.name,
                "region": planned.region,
                "wave": wave.name,
                "kind": point.kind(),
                "point": detail,
                "recorded_at": tenant.restore_point_at,
                "status": tenant.status.as_str(),
            }));
        }
    }
    let total = n_branch_points + n_backup_branches;
    RestorePoints {
        truncated: listed.len() < total,
        listed,
        counts: serde_json::json!({
            "total": total,
            "branch_point": n_branch_points,
            "backup_branch": n_backup_branches,
        }),
    }
}

/// The `--live` section for humans: counts on one line, then each tenant that is not up to date
/// or merely behind (at most 20; JSON has them all).
fn print_live(live: &serde_json::Value) {
    let counts: Vec<String> = live["counts"]
        .as_object()
        .map(|counts| {
            counts
                .iter()
                .map(|(state, count)| format!("{state} {count}"))
                .collect()
        })
        .unwrap_or_default();
    println!("live (history tables now): {}", counts.join(", "));
    let problems = live["problems"].as_array().cloned().unwrap_or_default();
    const SHOWN: usize = 20;
    for problem in problems.iter().take(SHOWN) {
        let tenant = crate::plan::model::PlannedTenant {
            id: problem["tenant"].as_str().unwrap_or("?").to_string(),
            name: problem["tenant_name"].as_str().unwrap_or("").to_string(),
            region: String::new(),
        };
        println!(
            "  {}: {}",
            tenant.label(),
            problem["state"].as_str().unwrap_or("?")
        );
    }
    if problems.len() > SHOWN {
        println!(
            "  (+{} more; --output json lists them all)",
            problems.len() - SHOWN
        );
    }
    let stale = live["stale"].as_array().cloned().unwrap_or_default();
    if stale.is_empty() {
        return;
    }
    let mut out = String::new();
    report::render::wrap_into(
        &mut out,
        &format!(
            "stale in this journal ({}): main's history, which is authoritative, says otherwise now:",
            stale.len()
        ),
        "",
        "  ",
    );
    for entry in stale.iter().take(SHOWN) {
        report::render::wrap_into(
            &mut out,
            &format!(
                "{}: {}",
                crate::plan::model::PlannedTenant {
                    id: entry["tenant"].as_str().unwrap_or("?").to_string(),
                    name: entry["tenant_name"].as_str().unwrap_or("").to_string(),
                    region: String::new(),
                }
                .label(),
                entry["reason"].as_str().unwrap_or("?")
            ),
            "  ",
            "      ",
        );
    }
    if stale.len() > SHOWN {
        out.push_str(&format!(
            "  (+{} more; --output json lists them all)\n",
            stale.len() - SHOWN
        ));
    }
    print!("{out}");
}

/// What main's history says now, next to the version it is at.
struct LiveVerdict {
    /// `up_to_date`, `behind`, `ahead`, `diverged`, `unreachable: …`, `unreadable: …`.
    state: String,
    current_version: Option<i32>,
}

/// `--live`: probe every planned tenant's history table (bounded concurrency), and name the
/// tenants whose journal entry main's history now contradicts (stale: main is authoritative).
async fn live_probe(
    args: &StatusArgs,
    plan: &Plan,
    state: &JournalState,
) -> anyhow::Result<serde_json::Value> {
    let client = super::api::client(&args.api)?;
    // A wrong key or URL is one clear error, not one "unreachable" per tenant.
    super::api::preflight(&client, &args.api.api_url).await?;
    let planned = crate::plan::planned_versions(plan);
    let tenants: Vec<String> = plan
        .waves
        .iter()
        .flat_map(|wave| wave.tenant_ids().map(str::to_string))
        .collect();
    let mut results: Vec<(String, LiveVerdict)> = futures::stream::iter(tenants)
        .map(|tenant| {
            let client = client.clone();
            let planned = planned.clone();
            let policy = plan.policy.clone();
            async move {
                let verdict = match client
                    .connection_uri(&tenant, None, &policy.database, &policy.role)
                    .await
                {
                    Err(error) => unknown(format!("unreachable: {error}")),
                    Ok(uri) => match pg::connect(&uri, std::time::Duration::from_secs(30)).await {
                        Err(failure) => unknown(format!("unreachable: {failure}")),
                        Ok(connection) => match pg::read_history(&connection).await {
                            Err(failure) => unknown(format!("unreadable: {failure}")),
                            Ok(history) => {
                                let current_version = history.iter().map(|row| row.version).max();
                                let state = match pg::compare_history(&history, &planned) {
                                    HistoryComparison::UpToDate { .. } => "up_to_date",
                                    HistoryComparison::Pending { .. } => "behind",
                                    HistoryComparison::Ahead { .. } => "ahead",
                                    HistoryComparison::Diverged { .. } => "diverged",
                                };
                                LiveVerdict {
                                    state: state.to_string(),
                                    current_version,
                                }
                            }
                        },
                    },
                };
                (tenant, verdict)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    results.sort_by(|left, right| left.0.cmp(&right.0));
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (_, verdict) in &results {
        let key = verdict.state.split(':').next().unwrap_or("").to_string();
        *counts.entry(key).or_default() += 1;
    }
    let problems: Vec<serde_json::Value> = results
        .iter()
        .filter(|(_, verdict)| !matches!(verdict.state.as_str(), "up_to_date" | "behind" | "ahead"))
        .map(|(tenant, verdict)| {
            let name = plan
                .tenant(tenant)
                .map_or("", |(planned, _)| planned.name.as_str());
            serde_json::json!({"tenant": tenant, "tenant_name": name, "state": verdict.state})
        })
        .collect();
    let stale: Vec<serde_json::Value> = results
        .iter()
        .filter_map(|(tenant, verdict)| {
            let journal = state.tenant_status(tenant);
            let reason = stale_reason(journal, &verdict.state, verdict.current_version)?;
            let name = plan
                .tenant(tenant)
                .map_or("", |(planned, _)| planned.name.as_str());
            Some(serde_json::json!({
                "tenant": tenant,
                "tenant_name": name,
                "journal": journal.as_str(),
                "live": verdict.state,
                "current_version": verdict.current_version,
                "reason": reason,
            }))
        })
        .collect();
    Ok(serde_json::json!({"counts": counts, "problems": problems, "stale": stale}))
}

fn unknown(state: String) -> LiveVerdict {
    LiveVerdict {
        state,
        current_version: None,
    }
}

/// Why this plan's journal entry for a tenant no longer describes its main, judged by main's
/// history now; `None` when they agree (or main could not be read). Pure.
fn stale_reason(journal: TenantStatus, live: &str, current_version: Option<i32>) -> Option<String> {
    let at =
        current_version.map_or_else(|| "no version".to_string(), |version| format!("V{version}"));
    match (journal, live) {
        (TenantStatus::Applied | TenantStatus::UpToDate, "behind") => Some(format!(
            "the journal says {}, but main is at {at} now, behind this plan (another plan's rollback?)",
            journal.as_str()
        )),
        // `apply --skip-recorded` trusted a record without connecting: this is its check.
        (TenantStatus::SkippedRecorded, "behind" | "diverged") => Some(format!(
            "skipped by its recorded version, but main is at {at} now, not up to date: the record (catalog or earlier journal) is wrong; run `apply` without --skip-recorded"
        )),
        (
            TenantStatus::Failed
            | TenantStatus::Diverged
            | TenantStatus::RolledBack
            | TenantStatus::RollbackFailed,
            "up_to_date" | "ahead",
        ) => Some(format!(
            "the journal says {}, but main is at {at} now, with every migration of this plan (a later run or plan migrated it)",
            journal.as_str()
        )),
        _ => None,
    }
}

/// The rollout's switches and (with a state store) its runners, before the summary.
fn print_switches(
    switches: &ControlRow,
    last_abort: Option<&crate::journal::state::Abort>,
    runners: Option<&[RunnerRow]>,
) {
    use crate::terminal::escape_controls;
    if let Some(by) = &switches.aborted_by {
        // The journal says when; a switch set before any run has no record yet.
        let at = last_abort
            .filter(|abort| &abort.by == by)
            .map(|abort| abort.at.as_str())
            .or(switches.aborted_at.as_deref())
            .map(|at| format!(" at {}", to_the_second(at)))
            .unwrap_or_default();
        println!(
            "ABORTED by {}{at}: {} (`schemafleet resume` lifts it)",
            escape_controls(by),
            escape_controls(switches.abort_reason.as_deref().unwrap_or(""))
        );
    } else if let Some(abort) = last_abort {
        println!(
            "aborted by {} at {}: {}; lifted since by `schemafleet resume`",
            escape_controls(&abort.by),
            to_the_second(&abort.at),
            escape_controls(&abort.reason)
        );
    }
    if let Some(by) = &switches.paused_by {
        println!(
            "PAUSED by {} since {} (`schemafleet resume` continues)",
            escape_controls(by),
            switches.paused_at.as_deref().unwrap_or("?")
        );
    }
    let Some(runners) = runners else { return };
    if runners.is_empty() {
        println!("runners: none yet");
        return;
    }
    println!("runners:");
    for runner in runners {
        println!(
            "  {}  region {}  last seen {} ({:.0}s ago)  {} in flight{}",
            escape_controls(&runner.runner_id),
            if runner.regions.is_empty() {
                "any".to_string()
            } else {
                escape_controls(&runner.regions)
            },
            runner.last_seen,
            runner.seconds_since_seen,
            runner.in_flight,
            if runner.finished { "  (finished)" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_lists_the_first_restore_points_and_counts_them_all() {
        use crate::journal::{Event, Record};
        use crate::plan::model::{PlannedTenant, PlannedWave};
        let ids: Vec<String> = (0..300).map(|idx| format!("p-{idx:03}")).collect();
        let plan = crate::plan::model::test_plan(vec![PlannedWave {
            name: "all".into(),
            concurrency: 1,
            max_failures: None,
            max_failure_percent: None,
            bake_s: 0,
            checks: Vec::new(),
            approval: Default::default(),
            tenants: ids.iter().map(PlannedTenant::from_id).collect(),
        }]);
        let records: Vec<Record> = ids
            .iter()
            .enumerate()
            // Every third tenant has no restore point; every fifth has a backup branch.
            .filter(|(idx, _)| idx % 3 != 2)
            .map(|(idx, id)| Record {
                v: 1,
                seq: idx as u64 + 1,
                at: "2026-12-02T10:00:00Z".into(),
                event: Event::RestorePointRecorded {
                    tenant: id.clone(),
                    wave: "all".into(),
                    point: if idx % 5 == 0 {
                        RestorePoint::BackupBranch {
                            main_branch_id: "br-main".into(),
                            backup_branch_id: format!("br-backup-{idx}"),
                            backup_branch_name: format!("backup-{idx}"),
                        }
                    } else {
                        RestorePoint::BranchPoint {
                            main_branch_id: "br-main".into(),
                            lsn: format!("0/{idx:X}"),
                            timestamp: None,
                        }
                    },
                },
            })
            .collect();
        let state = JournalState::replay(&records);
        let n_backup = (0..300).filter(|idx| idx % 3 != 2 && idx % 5 == 0).count();

        let points = restore_points(&plan, &state, RESTORE_POINTS_LISTED);
        assert_eq!(points.listed.len(), RESTORE_POINTS_LISTED);
        assert!(points.truncated);
        assert_eq!(
            points.counts,
            serde_json::json!({"total": 200, "branch_point": 200 - n_backup, "backup_branch": n_backup})
        );
        assert_eq!(points.listed[0]["tenant"], "p-000");
        assert_eq!(points.listed[0]["kind"], "backup_branch");
        assert_eq!(points.listed[1]["point"], "0/1");
        assert_eq!(points.listed[2]["tenant"], "p-003", "p-002 holds none");

        let all = restore_points(&plan, &state, usize::MAX);
        assert_eq!(all.listed.len(), 200);
        assert!(!all.truncated);
        assert_eq!(all.counts, points.counts);
    }

    #[test]
    fn a_journal_entry_main_contradicts_is_stale() {
        let reason = stale_reason(TenantStatus::Applied, "behind", None).expect("stale");
        assert!(
            reason.contains("main is at no version now, behind"),
            "{reason}"
        );
        let reason = stale_reason(TenantStatus::Failed, "ahead", Some(6)).expect("stale");
        assert!(
            reason.contains("says failed, but main is at V6 now"),
            "{reason}"
        );
        assert!(stale_reason(TenantStatus::RolledBack, "up_to_date", Some(3)).is_some());
        // Agreement, or nothing known, is not stale.
        assert_eq!(stale_reason(TenantStatus::Applied, "ahead", Some(6)), None);
        assert_eq!(stale_reason(TenantStatus::Failed, "behind", Some(3)), None);
        assert_eq!(
            stale_reason(TenantStatus::NotStarted, "up_to_date", Some(3)),
            None
        );
        assert_eq!(
            stale_reason(TenantStatus::Applied, "unreachable: refused", None),
            None
        );
    }
}

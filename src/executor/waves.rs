//! The wave loop: bounded concurrency, failure budget, bake, `--until-wave`, resume, Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::ApplyConfig;
use super::control::{GATE_POLL, Gate as ControlGate, RunControl};
use super::reporter::Reporter;
use super::shared::SharedRun;
use super::shutdown::Shutdown;
use super::tenant::{Recorder, TenantContext, TenantOutcome, run_tenant};
use super::timings::StepTiming;
use crate::gates::notify::Detail;
use crate::gates::spec::NotifyEvent;
use crate::gates::{Gate, Gates};
use crate::journal::{Event, Journal, JournalError, JournalState, TenantStatus, WaveStatus};
use crate::neon::NeonClient;
use crate::pg::PlannedVersion;
use crate::plan::model::{Plan, PlannedWave};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every wave ran to its end within budget.
    Completed,
    /// A wave's failures exceeded its budget; later waves did not start.
    Halted { wave: String },
    /// `--until-wave` was reached; a later `apply` continues with the next wave.
    StoppedAfter { wave: String },
    /// The next wave needs `schemafleet approve`; a later `apply` continues with it.
    AwaitingApproval { wave: String },
    /// Ctrl-C: the journal is consistent, a re-run resumes.
    Interrupted,
    /// `abort PLAN`: no tenant starts, like a spent budget; who and why.
    Aborted { by: String, reason: String },
    /// `--max-duration` passed: no tenant started after it; a re-run continues.
    OutOfTime,
}

impl RunOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Halted { .. } => "halted",
            RunOutcome::StoppedAfter { .. } => "stopped_after_wave",
            RunOutcome::AwaitingApproval { .. } => "awaiting_approval",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Aborted { .. } => "aborted",
            RunOutcome::OutOfTime => "out_of_time",
        }
    }
}

/// What `execute` needs besides the display and the shutdown signal.
pub struct RunInputs {
    pub plan: Arc<Plan>,
    /// The plan's migrations as refinery runs them, sorted by version.
    pub migrations: Vec<refinery::Migration>,
    pub planned: Vec<PlannedVersion>,
    pub client: NeonClient,
    pub journal: Journal,
    /// The journal as replayed when it was opened.
    pub prior: JournalState,
    pub config: ApplyConfig,
    /// Pause/abort switches, `--max-duration`, and the runners sharing a state store.
    pub control: RunControl,
}

pub struct RunResult {
    pub outcome: RunOutcome,
    /// The journal state after the run (prior runs included).
    pub state: JournalState,
    /// This run's steps, summed over its tenants.
    pub timings: Vec<StepTiming>,
}

/// Run the plan's waves in order, resuming from the journal.
pub async fn execute(
    inputs: RunInputs,
    reporter: Arc<dyn Reporter>,
    shutdown: Shutdown,
) -> Result<RunResult, JournalError> {
    let run_id = format!("run-{}", crate::clock::compact_stamp());
    let recorder = Arc::new(Recorder::new(inputs.journal.clone(), inputs.prior));
    let context = Arc::new(TenantContext {
        plan: inputs.plan.clone(),
        migrations: inputs.migrations,
        planned: inputs.planned,
        client: inputs.client,
        recorder: recorder.clone(),
        connections: Arc::new(Semaphore::new(inputs.config.max_connections.max(1))),
        config: inputs.config.clone(),
        requested_deletes: Default::default(),
    });
    let gates = Gates::new(
        inputs.plan.clone(),
        recorder.clone(),
        context.client.clone(),
        &inputs.config,
        &run_id,
        reporter.as_ref(),
    );
    recorder
        .record(Event::RunStarted {
            plan_id: inputs.plan.plan_id.clone(),
            run_id: run_id.clone(),
            pid: std::process::id(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await?;
    gates
        .notify(
            NotifyEvent::RolloutStarted,
            None,
            Detail::None,
            reporter.as_ref(),
        )
        .await;
    let outcome = match &inputs.control.shared {
        Some(shared) => {
            super::shared::run_waves(
                &context,
                &gates,
                shared,
                &inputs.control,
                reporter.as_ref(),
                &shutdown,
            )
            .await?
        }
        None => {
            run_waves(
                &context,
                &gates,
                &inputs.config,
                &inputs.control,
                reporter.as_ref(),
                &shutdown,
            )
            .await?
        }
    };
    // After a Ctrl-C the user wants out: the deletes are journaled, and expire regardless.
    if !shutdown.is_stopping() {
        super::settle::settle_young_deletes(
            &context.client,
            &context.requested_deletes,
            recorder.timings(),
        )
        .await;
    }
    if let RunOutcome::Aborted { by, reason } = &outcome
        && inputs.control.shared.is_none()
    {
        record_abort(&recorder, &inputs.control, by, reason).await?;
    }
    recorder
        .record(Event::RunFinished {
            run_id,
            outcome: outcome.as_str().to_string(),
        })
        .await?;
    gates
        .notify(
            NotifyEvent::RolloutFinished,
            None,
            Detail::Outcome(outcome.as_str()),
            reporter.as_ref(),
        )
        .await;
    Ok(RunResult {
        outcome,
        state: recorder.take_state(),
        timings: recorder.timings().summary(),
    })
}

/// Journal the abort a file journal's run stopped on, unless `abort` journaled it already
/// (it does when no `apply` holds the journal). A state store's `abort` always journals it.
async fn record_abort(
    recorder: &Recorder,
    control: &RunControl,
    by: &str,
    reason: &str,
) -> Result<(), JournalError> {
    let requested_at = control
        .file
        .as_deref()
        .and_then(|path| crate::journal::control::read(path).ok())
        .and_then(|row| row.aborted_at);
    let known = recorder.read(|state| {
        state.last_abort.as_ref().is_some_and(|abort| {
            abort.by == by
                && abort.reason == reason
                && requested_at.as_ref().is_none_or(|at| &abort.at == at)
        })
    });
    if known {
        return Ok(());
    }
    recorder
        .record(Event::Aborted {
            by: by.to_string(),
            reason: reason.to_string(),
            requested_at,
        })
        .await
}

async fn run_waves(
    context: &Arc<TenantContext>,
    gates: &Gates,
    config: &ApplyConfig,
    control: &RunControl,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<RunOutcome, JournalError> {
    let plan = context.plan.clone();
    let recorder = &context.recorder;
    for (wave_idx, wave) in plan.waves.iter().enumerate() {
        if shutdown.is_stopping() {
            return Ok(RunOutcome::Interrupted);
        }
        match control.file_gate() {
            ControlGate::Aborted { by, reason } => return Ok(RunOutcome::Aborted { by, reason }),
            ControlGate::OutOfTime => return Ok(RunOutcome::OutOfTime),
            ControlGate::Go | ControlGate::Paused { .. } => {}
        }
        // The gates (checks, approval) come first: a passing `--retry-checks` un-halts the wave.
        if let Gate::Stop(outcome) = gates.held_by_checks(wave, reporter).await? {
            return Ok(outcome);
        }
        if let Gate::Stop(outcome) = gates.before_wave(wave_idx, reporter, shutdown).await? {
            return Ok(outcome);
        }
        let (wave_status, todo, previous_bake_until) = recorder.read(|state| {
            let todo: Vec<String> = wave
                .tenant_ids()
                .filter(|tenant| needs_work(state, tenant, config))
                .map(str::to_string)
                .collect();
            let previous_bake_until = wave_idx
                .checked_sub(1)
                .and_then(|previous| state.waves.get(&plan.waves[previous].name))
                .and_then(|wave_state| wave_state.bake_until.clone());
            (state.wave_status(&wave.name), todo, previous_bake_until)
        });
        if wave_status == WaveStatus::Halted && !config.retry_failed {
            reporter.note(&format!(
                "wave {} is halted (failure budget spent in an earlier run); fix the cause, then re-run with --retry-failed",
                wave.name
            ));
            return Ok(RunOutcome::Halted {
                wave: wave.name.clone(),
            });
        }
        if wave_status == WaveStatus::Done && todo.is_empty() {
            if config.until_wave.as_deref() == Some(wave.name.as_str()) {
                return Ok(RunOutcome::StoppedAfter {
                    wave: wave.name.clone(),
                });
            }
            continue;
        }
        if !config.skip_bake
            && let Some(until) = previous_bake_until
            && !bake(
                &until,
                &plan.waves[wave_idx - 1].name,
                &wave.name,
                reporter,
                shutdown,
            )
            .await
        {
            return Ok(RunOutcome::Interrupted);
        }
        if wave_status != WaveStatus::Running {
            recorder
                .record(Event::WaveStarted {
                    wave: wave.name.clone(),
                })
                .await?;
        }
        gates
            .notify(
                NotifyEvent::WaveStarted,
                Some(&wave.name),
                Detail::None,
                reporter,
            )
            .await;
        let halted = match run_wave(context, wave, todo, control, reporter, shutdown).await? {
            WaveEnd::Ran { halted } => halted,
            WaveEnd::Stopped(outcome) => return Ok(outcome),
        };
        if shutdown.is_stopping() && !halted {
            return Ok(RunOutcome::Interrupted);
        }
        if let Some(outcome) =
            end_wave(context, gates, wave_idx, halted, None, reporter, shutdown).await?
        {
            return Ok(outcome);
        }
    }
    Ok(RunOutcome::Completed)
}

/// The end of a wave whose tenants stopped starting (all finished, or its budget spent):
/// journal `wave_finished` with the next wave's bake, report and notify it, run the wave's
/// checks, and stop at `--until-wave`. `Some(outcome)` ends the run.
///
/// With runners sharing a store (`shared`), the store says which one runner journals and
/// notifies the end (the one that marks it ended), and elects the one that runs the checks;
/// every runner waits for their verdict.
pub(super) async fn end_wave(
    context: &TenantContext,
    gates: &Gates,
    wave_idx: usize,
    halted: bool,
    shared: Option<&SharedRun>,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<Option<RunOutcome>, JournalError> {
    let plan = &context.plan;
    let wave = &plan.waves[wave_idx];
    let is_last = wave_idx + 1 == plan.waves.len();
    let bake_until = (!halted && !is_last && wave.bake_s > 0)
        .then(|| crate::clock::rfc3339_seconds_from_now(Duration::from_secs(wave.bake_s)));
    let journals_end = match shared {
        None => true,
        Some(shared) => {
            shared
                .coordinator
                .finish_wave(&wave.name, bake_until.as_deref())
                .await?
        }
    };
    if journals_end {
        context
            .recorder
            .record(Event::WaveFinished {
                wave: wave.name.clone(),
                halted,
                bake_until,
            })
            .await?;
    }
    reporter.wave_finished(&wave.name, halted);
    if journals_end {
        let (event, detail) = if halted {
            (NotifyEvent::WaveHalted, Detail::Halted("budget"))
        } else {
            (NotifyEvent::WaveFinished, Detail::None)
        };
        gates
            .notify(event, Some(&wave.name), detail, reporter)
            .await;
    }
    if halted {
        return Ok(Some(RunOutcome::Halted {
            wave: wave.name.clone(),
        }));
    }
    let gate = match shared {
        None => gates.after_wave(wave, reporter).await?,
        Some(shared) => {
            super::shared_gates::after_wave(context, gates, shared, wave, true, reporter, shutdown)
                .await?
        }
    };
    if let Gate::Stop(outcome) = gate {
        return Ok(Some(outcome));
    }
    if context.config.until_wave.as_deref() == Some(wave.name.as_str()) {
        return Ok(Some(RunOutcome::StoppedAfter {
            wave: wave.name.clone(),
        }));
    }
    Ok(None)
}

/// "the 2 in flight finish", with the verb agreeing for one.
pub(super) fn in_flight_finish(n: usize) -> String {
    if n == 1 {
        "the 1 in flight finishes".to_string()
    } else {
        format!("the {n} in flight finish")
    }
}

/// Whether `tenant` still needs work in this run. A tenant this plan rolled back stays back
/// unless the operator included it: the rollback was their decision.
pub(super) fn needs_work(state: &JournalState, tenant: &str, config: &ApplyConfig) -> bool {
    match state.tenant_status(tenant) {
        TenantStatus::Failed => config.retry_failed,
        TenantStatus::RolledBack | TenantStatus::RollbackFailed => {
            config.include_rolled_back.includes(tenant)
        }
        status => !status.is_finished(),
    }
}

/// Wait until `until`; false when interrupted.
pub(super) async fn bake(
    until: &str,
    baked_wave: &str,
    next_wave: &str,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> bool {
    let Some(until_at) = crate::clock::parse_rfc3339(until) else {
        return true;
    };
    let remaining = until_at - time::OffsetDateTime::now_utc();
    if remaining <= time::Duration::ZERO {
        return true;
    }
    let remaining = Duration::from_secs_f64(remaining.as_seconds_f64());
    // Rounded up: a 3 s bake read a few milliseconds later is still "3s", not "2s".
    reporter.note(&format!(
        "baking wave {baked_wave} for {}s before wave {next_wave} starts (--skip-bake to skip)",
        remaining.as_secs_f64().ceil() as u64
    ));
    tokio::select! {
        () = tokio::time::sleep(remaining) => true,
        () = shutdown.stopping() => false,
    }
}

/// How a wave's tenants stopped being started.
enum WaveEnd {
    /// Every tenant ran (or the budget halted the wave).
    Ran { halted: bool },
    /// An abort or `--max-duration` stopped it; its tenants in flight finished first.
    Stopped(RunOutcome),
}

/// Run one wave's tenants with bounded concurrency.
async fn run_wave(
    context: &Arc<TenantContext>,
    wave: &PlannedWave,
    todo: Vec<String>,
    control: &RunControl,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<WaveEnd, JournalError> {
    let todo_set: std::collections::HashSet<&str> = todo.iter().map(String::as_str).collect();
    // Failures from earlier runs that are not being retried still count against the budget.
    let mut n_failed = context.recorder.read(|state| {
        wave.tenant_ids()
            .filter(|tenant| !todo_set.contains(tenant))
            .filter(|tenant| {
                matches!(
                    state.tenant_status(tenant),
                    TenantStatus::Failed | TenantStatus::Diverged
                )
            })
            .count()
    });
    reporter.wave_started(
        &wave.name,
        wave.tenants.len(),
        wave.tenants.len() - todo.len(),
    );
    let mut halted = wave.budget_exceeded(n_failed);
    let mut n_panicked = 0;
    let mut queue = todo.into_iter();
    let mut in_flight: JoinSet<Result<(String, TenantOutcome), JournalError>> = JoinSet::new();
    let concurrency = wave.concurrency.max(1);
    let mut stopped: Option<RunOutcome> = None;
    loop {
        let mut paused = false;
        while !halted
            && stopped.is_none()
            && !shutdown.is_stopping()
            && in_flight.len() < concurrency
            && !queue.as_slice().is_empty()
        {
            match control.file_gate() {
                ControlGate::Go => {}
                ControlGate::Paused { by } => {
                    if !paused {
                        tracing::info!(%by, "paused: no tenant starts until `schemafleet resume`");
                    }
                    paused = true;
                    break;
                }
                ControlGate::Aborted { by, reason } => {
                    stopped = Some(RunOutcome::Aborted { by, reason });
                    break;
                }
                ControlGate::OutOfTime => {
                    stopped = Some(RunOutcome::OutOfTime);
                    break;
                }
            }
            let Some(tenant) = queue.next() else { break };
            reporter.tenant_started(&wave.name, &tenant);
            let tenant_context = context.clone();
            let wave_name = wave.name.clone();
            in_flight.spawn(async move {
                let outcome = run_tenant(tenant_context, tenant.clone(), wave_name).await?;
                Ok((tenant, outcome))
            });
        }
        if in_flight.is_empty() {
            if paused && !shutdown.is_stopping() {
                // Paused with nothing in flight: look at the switches again shortly.
                tokio::select! {
                    () = tokio::time::sleep(GATE_POLL) => {}
                    () = shutdown.stopping() => {}
                }
                continue;
            }
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(GATE_POLL), if paused => {}
            joined = in_flight.join_next() => {
                let Some(joined) = joined else { break };
                let (tenant, outcome) = match joined {
                    Ok(result) => result?,
                    Err(join_error) => {
                        // A panicking tenant task is a bug. Its tenant stays in flight in the
                        // journal (its `apply_started` intact, so the re-probe can tell what
                        // this plan committed); it counts against the budget, and its wave is
                        // journaled halted, never done, while a tenant of it is unfinished.
                        tracing::error!(error = %join_error, "a tenant task panicked");
                        n_failed += 1;
                        n_panicked += 1;
                        if !halted && wave.budget_exceeded(n_failed) {
                            halted = true;
                        }
                        continue;
                    }
                };
                if matches!(outcome, TenantOutcome::Failed { .. } | TenantOutcome::Diverged { .. }) {
                    n_failed += 1;
                    if !halted && wave.budget_exceeded(n_failed) {
                        halted = true;
                        reporter.note(&format!(
                            "wave {}: {} its budget; no new tenant starts, {}",
                            wave.name,
                            if n_failed == 1 {
                                "1 failure exceeds".to_string()
                            } else {
                                format!("{n_failed} failures exceed")
                            },
                            in_flight_finish(in_flight.len())
                        ));
                    }
                }
                reporter.tenant_finished(&wave.name, &tenant, &outcome);
            }
            () = shutdown.aborting() => {
                // Second Ctrl-C: drop every tenant task now. Their sessions close, so open
                // transactions roll back; the journal holds only what completed.
                in_flight.abort_all();
                while in_flight.join_next().await.is_some() {}
                return Ok(WaveEnd::Ran { halted: false });
            }
        }
    }
    if n_panicked > 0 {
        reporter.note(&format!(
            "wave {}: {n_panicked} tenant task(s) panicked (a bug; the log has it); the wave is halted, and `--retry-failed` re-probes them",
            wave.name
        ));
    }
    if let Some(outcome) = stopped
        && !halted
    {
        return Ok(WaveEnd::Stopped(outcome));
    }
    Ok(WaveEnd::Ran {
        halted: halted || n_panicked > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Record, RestorePoint};

    fn record(seq: u64, event: Event) -> Record {
        Record {
            v: crate::journal::record::RECORD_VERSION,
            seq,
            at: "2026-12-01T10:00:00Z".into(),
            event,
        }
    }

    /// `t-back` was applied then rolled back; `t-failed` failed.
    fn state() -> JournalState {
        let wave = "canary".to_string();
        JournalState::replay(&[
            record(
                1,
                Event::Applied {
                    tenant: "t-back".into(),
                    wave: wave.clone(),
                    versions: vec![1],
                    lock_retries: 0,
                },
            ),
            record(
                2,
                Event::RolledBack {
                    tenant: "t-back".into(),
                    preserved_branch: "pre-rollback-x-y".into(),
                    restored_to: RestorePoint::BranchPoint {
                        main_branch_id: "br-main".into(),
                        lsn: "0/1".into(),
                        timestamp: None,
                    },
                },
            ),
            record(
                3,
                Event::Failed {
                    tenant: "t-failed".into(),
                    wave,
                    phase: crate::journal::Phase::Validate,
                    error: crate::pg::DbFailure::new(None, "boom"),
                    applied_on_main: Vec::new(),
                },
            ),
        ])
    }

    #[test]
    fn a_rolled_back_tenant_stays_back_unless_included() {
        let state = state();
        let mut config = ApplyConfig::standard();
        config.retry_failed = true;
        assert!(needs_work(&state, "t-failed", &config));
        assert!(
            !needs_work(&state, "t-back", &config),
            "--retry-failed does not re-migrate a rolled-back tenant"
        );
        assert!(needs_work(&state, "t-new", &config));
        config.include_rolled_back = crate::executor::IncludeRolledBack::Tenants(
            ["t-other".to_string()].into_iter().collect(),
        );
        assert!(!needs_work(&state, "t-back", &config));
        config.include_rolled_back = crate::executor::IncludeRolledBack::Tenants(
            ["t-back".to_string()].into_iter().collect(),
        );
        assert!(needs_work(&state, "t-back", &config));
        config.include_rolled_back = crate::executor::IncludeRolledBack::All;
        assert!(needs_work(&state, "t-back", &config));
    }
}

//! The wave loop of a runner that shares its plan with others through a state store: tenants
//! come from claims instead of a queue, the budget and a wave's end are decided in the store,
//! and a tenant another runner left unfinished resumes here from its records.
//!
//! **Invariant:** a wave ends when every tenant of it is finished, wherever it ran; the runner
//! that marks it ended in the store journals `wave_finished` (with its bake), once.
//! **Invariant:** before a claimed tenant starts, this runner has folded in every record other
//! runners committed, so the tenant resumes exactly as after a killed run (re-probe, sweep its
//! requested branches).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

use super::control::{GATE_POLL, RunControl};
use super::reporter::Reporter;
use super::shutdown::Shutdown;
use super::tenant::{Recorder, TenantContext, TenantOutcome, run_tenant};
use super::waves::{RunOutcome, bake, end_wave, needs_work};
use crate::gates::notify::Detail;
use crate::gates::spec::NotifyEvent;
use crate::gates::{Gate, Gates};
use crate::journal::coordination::{Claim, Coordinator, SeedTenant, SeedWave};
use crate::journal::gate_claims::GateClaims;
use crate::journal::store::StateStore;
use crate::journal::{Event, JournalError, TenantStatus, WaveStatus};
use crate::plan::model::PlannedWave;

/// A runner's handle on a shared plan: the store (records), its coordination, and how far it
/// has read other runners' records.
pub struct SharedRun {
    pub store: StateStore,
    pub coordinator: Coordinator,
    /// Which runner runs each gate between waves.
    pub gate_claims: GateClaims,
    plan_id: String,
    /// This process's records are tagged with it, so only others' are folded in.
    writer: String,
    cursor: tokio::sync::Mutex<u64>,
}

impl SharedRun {
    /// `read_up_to` is the last seq of the records the run was opened with.
    pub fn new(
        store: StateStore,
        coordinator: Coordinator,
        gate_claims: GateClaims,
        plan_id: &str,
        writer: &str,
        read_up_to: u64,
    ) -> SharedRun {
        SharedRun {
            store,
            coordinator,
            gate_claims,
            plan_id: plan_id.to_string(),
            writer: writer.to_string(),
            cursor: tokio::sync::Mutex::new(read_up_to),
        }
    }

    /// Fold in what other runners committed since the last look.
    pub async fn sync(&self, recorder: &Recorder) -> Result<(), JournalError> {
        let mut cursor = self.cursor.lock().await;
        let records = self.store.records_after(&self.plan_id, *cursor).await?;
        if let Some((_, last)) = records.last() {
            *cursor = last.seq;
        }
        recorder.absorb(
            records
                .iter()
                .filter(|(writer, _)| *writer != self.writer)
                .map(|(_, record)| record),
        );
        Ok(())
    }
}

/// How one wave's claiming ended.
enum WaveEnd {
    Done,
    Halted,
    Stopped(RunOutcome),
}

pub(super) async fn run_waves(
    context: &Arc<TenantContext>,
    gates: &Gates,
    shared: &Arc<SharedRun>,
    control: &RunControl,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<RunOutcome, JournalError> {
    seed(context, shared).await?;
    shared.gate_claims.forget_reopened().await?;
    shared.coordinator.register().await?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), in_flight.clone()));
    let outcome = run_shared_waves(
        context, gates, shared, control, reporter, shutdown, &in_flight,
    )
    .await;
    heartbeat.abort();
    let released = shared.gate_claims.release().await;
    let retired = shared.coordinator.retire().await;
    let synced = shared.sync(&context.recorder).await;
    let outcome = outcome?;
    released?;
    retired?;
    synced?;
    Ok(outcome)
}

/// Put the plan in the store as this runner's records see it; reopen what its flags retry.
async fn seed(context: &TenantContext, shared: &SharedRun) -> Result<(), JournalError> {
    let plan = &context.plan;
    let config = &context.config;
    let (tenants, waves, reopen) = context.recorder.read(|state| {
        let mut tenants = Vec::with_capacity(plan.tenant_count());
        let mut reopen = Vec::new();
        for wave in &plan.waves {
            for tenant in &wave.tenants {
                let status = state.tenant_status(&tenant.id);
                let done = !needs_work(state, &tenant.id, config);
                if !done
                    && matches!(
                        status,
                        TenantStatus::Failed
                            | TenantStatus::RolledBack
                            | TenantStatus::RollbackFailed
                    )
                {
                    reopen.push(tenant.id.clone());
                }
                tenants.push((
                    tenant.id.clone(),
                    wave.name.clone(),
                    tenant.region.clone(),
                    done,
                    done.then(|| status.as_str()),
                ));
            }
        }
        let waves: Vec<(String, WaveStatus, Option<String>)> = plan
            .waves
            .iter()
            .map(|wave| {
                let bake_until = state
                    .waves
                    .get(&wave.name)
                    .and_then(|wave| wave.bake_until.clone());
                (wave.name.clone(), state.wave_status(&wave.name), bake_until)
            })
            .collect();
        (tenants, waves, reopen)
    });
    let seed_tenants: Vec<SeedTenant<'_>> = tenants
        .iter()
        .map(|(tenant, wave, region, done, outcome)| SeedTenant {
            tenant,
            wave,
            region,
            done: *done,
            outcome: *outcome,
        })
        .collect();
    let seed_waves: Vec<SeedWave<'_>> = waves
        .iter()
        .map(|(wave, status, bake_until)| SeedWave {
            wave,
            started: *status != WaveStatus::NotStarted,
            finished: matches!(status, WaveStatus::Done | WaveStatus::Halted),
            halted: *status == WaveStatus::Halted,
            bake_until: bake_until.as_deref(),
        })
        .collect();
    let reopen: Vec<&str> = reopen.iter().map(String::as_str).collect();
    shared
        .coordinator
        .seed(&seed_waves, &seed_tenants, &reopen)
        .await
}

/// Renew this runner's leases (and say it is alive) a few times per lease.
async fn heartbeat(shared: Arc<SharedRun>, in_flight: Arc<AtomicUsize>) {
    let every = shared.coordinator.lease() / 3;
    loop {
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
        // Side by side on their own connections: a slow claim renewal must not make a long
        // check lose its gate.
        let (claims, gates) = tokio::join!(
            shared
                .coordinator
                .heartbeat(in_flight.load(Ordering::Relaxed)),
            shared.gate_claims.renew()
        );
        if let Err(error) = claims {
            tracing::warn!(%error, "cannot renew the leases; retrying");
        }
        if let Err(error) = gates {
            tracing::warn!(%error, "cannot renew a gate's lease; retrying");
        }
    }
}

async fn run_shared_waves(
    context: &Arc<TenantContext>,
    gates: &Gates,
    shared: &Arc<SharedRun>,
    control: &RunControl,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
    in_flight: &Arc<AtomicUsize>,
) -> Result<RunOutcome, JournalError> {
    let plan = context.plan.clone();
    let config = &context.config;
    let coordinator = &shared.coordinator;
    for (wave_idx, wave) in plan.waves.iter().enumerate() {
        if shutdown.is_stopping() {
            return Ok(RunOutcome::Interrupted);
        }
        if control.out_of_time() {
            return Ok(RunOutcome::OutOfTime);
        }
        // The gates read the records: fold in what the other runners decided.
        shared.sync(&context.recorder).await?;
        // The checks' halt comes first: a passing `--retry-checks` un-halts the wave.
        if let Gate::Stop(outcome) =
            super::shared_gates::held_by_checks(context, gates, shared, wave, reporter, shutdown)
                .await?
        {
            return Ok(outcome);
        }
        let row = coordinator.wave(&wave.name).await?;
        if row.finished {
            if row.halted {
                reporter.note(&format!(
                    "wave {} is halted (failure budget spent); fix the cause, then re-run with --retry-failed",
                    wave.name
                ));
                return Ok(RunOutcome::Halted {
                    wave: wave.name.clone(),
                });
            }
            if config.until_wave.as_deref() == Some(wave.name.as_str()) {
                return Ok(RunOutcome::StoppedAfter {
                    wave: wave.name.clone(),
                });
            }
            continue;
        }
        if let Gate::Stop(outcome) =
            super::shared_gates::before_wave(context, gates, shared, wave_idx, reporter, shutdown)
                .await?
        {
            return Ok(outcome);
        }
        // Every runner waits out the previous wave's bake before claiming this wave's tenants.
        if !config.skip_bake && wave_idx > 0 {
            let previous = &plan.waves[wave_idx - 1].name;
            if let Some(until) = coordinator.wave(previous).await?.bake_until
                && !bake(&until, previous, &wave.name, reporter, shutdown).await
            {
                return Ok(RunOutcome::Interrupted);
            }
        }
        if coordinator.start_wave(&wave.name).await? {
            context
                .recorder
                .record(Event::WaveStarted {
                    wave: wave.name.clone(),
                })
                .await?;
            gates
                .notify(
                    NotifyEvent::WaveStarted,
                    Some(&wave.name),
                    Detail::None,
                    reporter,
                )
                .await;
        }
        let halted = match claim_wave(
            context, shared, wave, control, reporter, shutdown, in_flight,
        )
        .await?
        {
            WaveEnd::Done => false,
            WaveEnd::Halted => true,
            WaveEnd::Stopped(outcome) => return Ok(outcome),
        };
        if let Some(outcome) = end_wave(
            context,
            gates,
            wave_idx,
            halted,
            Some(shared),
            reporter,
            shutdown,
        )
        .await?
        {
            return Ok(outcome);
        }
    }
    Ok(RunOutcome::Completed)
}

fn outcome_name(outcome: &TenantOutcome) -> &'static str {
    match outcome {
        TenantOutcome::Applied { .. } => "applied",
        TenantOutcome::UpToDate => "up_to_date",
        TenantOutcome::Diverged { .. } => "diverged",
        TenantOutcome::Failed { .. } => "failed",
        TenantOutcome::SkippedRecorded => "skipped_recorded",
    }
}

/// Claim and run tenants of `wave` until none is left, the budget is spent, or a switch, the
/// clock or Ctrl-C stops it; tenants in flight always finish first.
async fn claim_wave(
    context: &Arc<TenantContext>,
    shared: &Arc<SharedRun>,
    wave: &PlannedWave,
    control: &RunControl,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
    n_in_flight: &Arc<AtomicUsize>,
) -> Result<WaveEnd, JournalError> {
    let coordinator = &shared.coordinator;
    reporter.wave_started(&wave.name, wave.tenants.len(), 0);
    let concurrency = wave.concurrency.max(1);
    let mut in_flight: JoinSet<Result<(String, TenantOutcome), JournalError>> = JoinSet::new();
    let mut tenants_of_tasks: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut halted = false;
    let mut stopped: Option<RunOutcome> = None;
    let mut paused_by: Option<String> = None;
    loop {
        let mut idle = false;
        let mut wave_done = false;
        while !halted
            && stopped.is_none()
            && !shutdown.is_stopping()
            && in_flight.len() < concurrency
        {
            if control.out_of_time() {
                stopped = Some(RunOutcome::OutOfTime);
                break;
            }
            match coordinator.claim(&wave.name).await? {
                Claim::Tenant { tenant, resumed } => {
                    if paused_by.take().is_some() {
                        reporter.note("resumed: tenants start again");
                    }
                    shared.sync(&context.recorder).await?;
                    if resumed {
                        tracing::info!(%tenant, "resuming a tenant whose runner's lease lapsed");
                    }
                    reporter.tenant_started(&wave.name, &tenant);
                    n_in_flight.fetch_add(1, Ordering::Relaxed);
                    let tenant_context = context.clone();
                    let wave_name = wave.name.clone();
                    let task_tenant = tenant.clone();
                    let handle = in_flight.spawn(async move {
                        let outcome =
                            run_tenant(tenant_context, task_tenant.clone(), wave_name).await?;
                        Ok((task_tenant, outcome))
                    });
                    tenants_of_tasks.insert(handle.id(), tenant);
                }
                Claim::Wait => {
                    idle = true;
                    break;
                }
                Claim::WaveDone => {
                    wave_done = true;
                    break;
                }
                Claim::Halted => {
                    halted = true;
                    break;
                }
                Claim::Paused { by } => {
                    if paused_by.is_none() {
                        reporter.note(&format!(
                            "paused by {by}: no tenant starts until `schemafleet resume`; {}",
                            super::waves::in_flight_finish(in_flight.len())
                        ));
                    }
                    paused_by = Some(by);
                    idle = true;
                    break;
                }
                Claim::Aborted { by, reason } => {
                    stopped = Some(RunOutcome::Aborted { by, reason });
                    break;
                }
            }
        }
        if in_flight.is_empty() {
            if halted {
                return Ok(WaveEnd::Halted);
            }
            if let Some(outcome) = stopped {
                return Ok(WaveEnd::Stopped(outcome));
            }
            if shutdown.is_stopping() {
                return Ok(WaveEnd::Stopped(RunOutcome::Interrupted));
            }
            if wave_done {
                return Ok(WaveEnd::Done);
            }
            tokio::select! {
                () = tokio::time::sleep(GATE_POLL) => {}
                () = shutdown.stopping() => {}
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(GATE_POLL), if idle => {}
            joined = in_flight.join_next_with_id() => {
                let Some(joined) = joined else { continue };
                n_in_flight.fetch_sub(1, Ordering::Relaxed);
                let (tenant, outcome) = match joined {
                    Ok((id, result)) => {
                        tenants_of_tasks.remove(&id);
                        result?
                    }
                    Err(join_error) => {
                        // A panicked tenant counts as a failure (see `waves.rs`); its records
                        // leave it in flight, so a retry re-probes it.
                        tracing::error!(error = %join_error, "a tenant task panicked");
                        if let Some(tenant) = tenants_of_tasks.remove(&join_error.id())
                            && coordinator
                                .finish(&tenant, "failed", |n| wave.budget_exceeded(n))
                                .await?
                        {
                            halted = true;
                        }
                        continue;
                    }
                };
                let now_halted = coordinator
                    .finish(&tenant, outcome_name(&outcome), |n| wave.budget_exceeded(n))
                    .await?;
                if now_halted && !halted {
                    halted = true;
                    reporter.note(&format!(
                        "wave {}: its failure budget is spent; no runner starts a new tenant of it, {} in flight here finish",
                        wave.name,
                        in_flight.len()
                    ));
                }
                reporter.tenant_finished(&wave.name, &tenant, &outcome);
            }
            () = shutdown.aborting() => {
                in_flight.abort_all();
                while in_flight.join_next().await.is_some() {}
                return Ok(WaveEnd::Stopped(RunOutcome::Interrupted));
            }
        }
    }
}

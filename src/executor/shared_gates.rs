//! The gates between waves when several runners share a plan: each gate (a wave's checks after
//! it, at the end of its bake, a retry of failed checks; asking for an approval) is run by one
//! runner the store elects ([`crate::journal::gate_claims`]); the others wait for its verdict,
//! then read its records. What a gate does is [`crate::gates::Gates`]' own, as for one runner.
//!
//! **Invariant:** no runner starts a tenant of a wave before the gates before it let the
//! rollout on: a failed check halts every runner, a missing approval stops every runner
//! (exit 3), and every runner waits out the previous wave's bake.
//! **Invariant:** a gate runs only on records that include the wave's `wave_finished`, so the
//! verdict it journals follows the wave's end in seq order.

use std::future::Future;
use std::time::{Duration, Instant};

use super::control::GATE_POLL;
use super::reporter::Reporter;
use super::shared::SharedRun;
use super::shutdown::Shutdown;
use super::tenant::TenantContext;
use super::waves::RunOutcome;
use crate::gates::{Gate, Gates};
use crate::journal::gate_claims::GateTurn;
use crate::journal::{JournalError, WaveStatus};
use crate::plan::model::PlannedWave;

/// Run `gate` of `wave` here if the store elects this runner, else wait for the verdict of the
/// runner it elected (taking over if that one's lease lapses).
async fn once<F, Fut>(
    context: &TenantContext,
    shared: &SharedRun,
    wave: &str,
    gate: &str,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
    run: F,
) -> Result<Gate, JournalError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Gate, JournalError>>,
{
    let claims = &shared.gate_claims;
    loop {
        match claims.claim(wave, gate).await? {
            GateTurn::Run => {
                shared.sync(&context.recorder).await?;
                let verdict = run().await?;
                match &verdict {
                    Gate::Open | Gate::Stop(RunOutcome::AwaitingApproval { .. }) => {
                        claims.decide(wave, gate, true).await?;
                    }
                    Gate::Stop(RunOutcome::Halted { .. }) => {
                        claims.decide(wave, gate, false).await?;
                    }
                    // Interrupted (Ctrl-C in a bake): undecided, the next runner takes it.
                    Gate::Stop(_) => claims.release().await?,
                }
                return Ok(verdict);
            }
            GateTurn::Decided { .. } => {
                // The records decide, not the verdict bit: a retry since (`--retry-checks`)
                // may have lifted a failure this gate recorded.
                shared.sync(&context.recorder).await?;
                let halted = context.recorder.read(|state| {
                    state
                        .waves
                        .get(wave)
                        .is_some_and(|wave_state| !wave_state.check_failures.is_empty())
                });
                if !halted {
                    return Ok(Gate::Open);
                }
                // The runner that ran the checks printed them; this one says why it stops.
                reporter.note(&format!(
                    "wave {wave}: a check failed (`schemafleet status` names it); no runner starts the next wave"
                ));
                return Ok(Gate::Stop(RunOutcome::Halted {
                    wave: wave.to_string(),
                }));
            }
            GateTurn::Wait => {
                tokio::select! {
                    () = tokio::time::sleep(GATE_POLL) => {}
                    () = shutdown.stopping() => {
                        return Ok(Gate::Stop(RunOutcome::Interrupted));
                    }
                }
            }
        }
    }
}

/// A wave whose checks halted it: stop (every runner), or with `--retry-checks` run them again
/// once (keyed by the failure's record, so a later retry of a later failure runs again).
pub(super) async fn held_by_checks(
    context: &TenantContext,
    gates: &Gates,
    shared: &SharedRun,
    wave: &PlannedWave,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<Gate, JournalError> {
    let Some(failed_seq) = gates.held_since(wave) else {
        return Ok(Gate::Open);
    };
    if !gates.retries_checks() {
        return gates.held_by_checks(wave, reporter).await;
    }
    let gate = format!("retry:{failed_seq}");
    once(
        context,
        shared,
        &wave.name,
        &gate,
        reporter,
        shutdown,
        || gates.held_by_checks(wave, reporter),
    )
    .await
}

/// After a wave's tenants finished: its checks, run once. `run_if_absent` false only waits
/// for a run another runner began (a wave that ended in an earlier run had its checks then).
pub(super) async fn after_wave(
    context: &TenantContext,
    gates: &Gates,
    shared: &SharedRun,
    wave: &PlannedWave,
    run_if_absent: bool,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<Gate, JournalError> {
    if wave.checks.is_empty() {
        return Ok(Gate::Open);
    }
    if !run_if_absent && !shared.gate_claims.exists(&wave.name, "after_wave").await? {
        return Ok(Gate::Open);
    }
    if !await_wave_end(context, shared, wave, shutdown).await? {
        return Ok(Gate::Stop(RunOutcome::Interrupted));
    }
    once(
        context,
        shared,
        &wave.name,
        "after_wave",
        reporter,
        shutdown,
        || gates.after_wave(wave, reporter),
    )
    .await
}

/// Before a wave that has not started: a check run of the previous wave still under way, the
/// previous wave's bake and end-of-bake checks (once), then the approval (asked once; without
/// it every runner stops).
pub(super) async fn before_wave(
    context: &TenantContext,
    gates: &Gates,
    shared: &SharedRun,
    wave_idx: usize,
    reporter: &dyn Reporter,
    shutdown: &Shutdown,
) -> Result<Gate, JournalError> {
    let plan = &context.plan;
    let wave = &plan.waves[wave_idx];
    if context.recorder.read(|state| state.wave_status(&wave.name)) != WaveStatus::NotStarted {
        return Ok(Gate::Open);
    }
    if let Some(previous) = wave_idx.checked_sub(1).map(|idx| &plan.waves[idx]) {
        if let Gate::Stop(outcome) =
            after_wave(context, gates, shared, previous, false, reporter, shutdown).await?
        {
            return Ok(Gate::Stop(outcome));
        }
        if gates.has_previous_checks(wave_idx) {
            let verdict = once(
                context,
                shared,
                &previous.name,
                "bake_end",
                reporter,
                shutdown,
                || gates.previous_checks(wave_idx, reporter, shutdown),
            )
            .await?;
            if let Gate::Stop(outcome) = verdict {
                return Ok(Gate::Stop(outcome));
            }
        }
    }
    if wave.approval != crate::gates::spec::Approval::Required {
        return Ok(Gate::Open);
    }
    shared.sync(&context.recorder).await?;
    // One runner journals the request and notifies; every runner stops until `approve`.
    let ask = shared.gate_claims.claim(&wave.name, "approval").await? == GateTurn::Run;
    let verdict = gates.approval(wave_idx, ask, reporter).await?;
    if ask {
        shared
            .gate_claims
            .decide(&wave.name, "approval", true)
            .await?;
    }
    Ok(verdict)
}

/// Wait until this runner's records hold `wave`'s end (its finisher journals it right after
/// the store marks the wave ended). Bounded: a finisher that died in between never writes it,
/// and the checks must not wait for it forever. False when interrupted.
async fn await_wave_end(
    context: &TenantContext,
    shared: &SharedRun,
    wave: &PlannedWave,
    shutdown: &Shutdown,
) -> Result<bool, JournalError> {
    let give_up = Instant::now() + 2 * shared.coordinator.lease().max(Duration::from_secs(1));
    loop {
        shared.sync(&context.recorder).await?;
        let status = context.recorder.read(|state| state.wave_status(&wave.name));
        if matches!(status, WaveStatus::Done | WaveStatus::Halted) || Instant::now() >= give_up {
            return Ok(true);
        }
        tokio::select! {
            () = tokio::time::sleep(GATE_POLL) => {}
            () = shutdown.stopping() => return Ok(false),
        }
    }
}

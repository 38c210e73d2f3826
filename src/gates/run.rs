//! The gates as the wave loop meets them: checks after a wave and at the end of its bake
//! (and every `interval` during it), the approval before a wave, and the notifications of it
//! all. Each decision is journaled before the loop acts on it.
//!
//! **Invariant:** a wave whose checks failed is halted in the journal (`checks_failed`), and no
//! later wave starts until a `checks_passed` record lifts it (`--retry-checks`).
//! **Invariant:** a wave with `approval: required` starts only after an `approved` record.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::check::{CheckEnv, CheckTarget, Stage, run_check};
use super::notify::{Detail, Notifier, PayloadInput, payload};
use super::spec::{Approval, CheckSpec, NotifyEvent};
use crate::executor::shutdown::Shutdown;
use crate::executor::tenant::Recorder;
use crate::executor::{Reporter, RunOutcome};
use crate::journal::{CheckFailure, Event, JournalError, TenantStatus, WaveStatus};
use crate::neon::NeonClient;
use crate::plan::model::{Plan, PlannedWave};

/// How `apply` treats the gates, beyond what the plan decides.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Run the checks of a wave they halted again, instead of stopping.
    pub retry_checks: bool,
    /// Commands (checks, notify) run here: the plan file's directory.
    pub workdir: PathBuf,
    /// The plan as the operator names it, for the next steps in notifications.
    pub plan_path: String,
}

impl GateConfig {
    pub fn standard() -> GateConfig {
        GateConfig {
            retry_checks: false,
            workdir: PathBuf::from("."),
            plan_path: "PLAN".to_string(),
        }
    }
}

/// What a gate tells the wave loop.
pub enum Gate {
    Open,
    Stop(RunOutcome),
}

/// The gates of one run.
pub struct Gates {
    plan: Arc<Plan>,
    recorder: Arc<Recorder>,
    env: CheckEnv,
    config: GateConfig,
    notifier: Notifier,
    run_id: String,
    skip_bake: bool,
}

impl Gates {
    pub fn new(
        plan: Arc<Plan>,
        recorder: Arc<Recorder>,
        client: NeonClient,
        apply: &crate::executor::ApplyConfig,
        run_id: &str,
        reporter: &dyn Reporter,
    ) -> Gates {
        let (notifier, warnings) = Notifier::from_plan(&plan, apply.gates.workdir.clone());
        for warning in warnings {
            reporter.note(&warning);
        }
        Gates {
            plan,
            recorder,
            env: CheckEnv {
                client,
                connect_timeout: apply.connect_timeout,
                workdir: apply.gates.workdir.clone(),
                source_connections: apply.source_connections.clone(),
            },
            config: apply.gates.clone(),
            notifier,
            run_id: run_id.to_string(),
            skip_bake: apply.skip_bake,
        }
    }

    /// Send `event` (about `wave`) if the plan's `notify:` wants it.
    pub async fn notify(
        &self,
        event: NotifyEvent,
        wave: Option<&str>,
        detail: Detail<'_>,
        reporter: &dyn Reporter,
    ) {
        if !self.notifier.wants(event) {
            return;
        }
        let document = self.recorder.read(|state| {
            let summary = crate::report::summarize(&self.plan, state);
            let groups = crate::report::group_failures(&summary, &self.config.plan_path);
            payload(&PayloadInput {
                event,
                plan: &self.plan,
                plan_path: &self.config.plan_path,
                run_id: &self.run_id,
                at: &crate::clock::now_rfc3339(),
                wave,
                summary: &summary,
                groups: &groups,
                detail,
            })
        });
        self.notifier.deliver(event, &document, reporter).await;
    }

    /// Seq of the `checks_failed` record that halts `wave`, if its checks halted it.
    pub fn held_since(&self, wave: &PlannedWave) -> Option<u64> {
        self.recorder.read(|state| {
            state
                .waves
                .get(&wave.name)
                .filter(|wave_state| !wave_state.check_failures.is_empty())
                .map(|wave_state| wave_state.checks_failed_seq.unwrap_or(0))
        })
    }

    /// `--retry-checks`: a wave its checks halted runs them again.
    pub fn retries_checks(&self) -> bool {
        self.config.retry_checks
    }

    /// A wave its checks halted: stop, or with `--retry-checks` run them again.
    pub async fn held_by_checks(
        &self,
        wave: &PlannedWave,
        reporter: &dyn Reporter,
    ) -> Result<Gate, JournalError> {
        let failures = self.recorder.read(|state| {
            state
                .waves
                .get(&wave.name)
                .map(|wave_state| wave_state.check_failures.clone())
                .unwrap_or_default()
        });
        if failures.is_empty() {
            return Ok(Gate::Open);
        }
        if !self.config.retry_checks {
            let names: Vec<&str> = failures
                .iter()
                .map(|failure| failure.check.as_str())
                .collect();
            reporter.note(&format!(
                "wave {} is halted: its check{} {} failed in an earlier run; roll the wave back (`schemafleet rollback {} --wave {}`) or fix the cause and re-run with --retry-checks",
                wave.name,
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                self.config.plan_path,
                wave.name
            ));
            return Ok(Gate::Stop(RunOutcome::Halted {
                wave: wave.name.clone(),
            }));
        }
        reporter.note(&format!(
            "wave {}: running its checks again (--retry-checks)",
            wave.name
        ));
        let checks: Vec<&CheckSpec> = wave.checks.iter().collect();
        self.run_checks(wave, &checks, Stage::Retry, reporter).await
    }

    /// Before a wave that has not started: the previous wave's bake (with its interval checks),
    /// its end-of-bake checks, then this wave's approval.
    pub async fn before_wave(
        &self,
        wave_idx: usize,
        reporter: &dyn Reporter,
        shutdown: &Shutdown,
    ) -> Result<Gate, JournalError> {
        if let Gate::Stop(outcome) = self.previous_checks(wave_idx, reporter, shutdown).await? {
            return Ok(Gate::Stop(outcome));
        }
        self.approval(wave_idx, true, reporter).await
    }

    /// Whether [`Gates::previous_checks`] has anything to do before wave `wave_idx`: the
    /// previous wave has checks, or this wave needs approval (which waits for the bake).
    pub fn has_previous_checks(&self, wave_idx: usize) -> bool {
        let wave = &self.plan.waves[wave_idx];
        wave_idx.checked_sub(1).is_some_and(|previous| {
            !self.plan.waves[previous].checks.is_empty() || wave.approval == Approval::Required
        })
    }

    /// Before a wave that has not started: the previous wave's bake (with its interval checks)
    /// and its end-of-bake checks, unless they already passed after the bake.
    pub async fn previous_checks(
        &self,
        wave_idx: usize,
        reporter: &dyn Reporter,
        shutdown: &Shutdown,
    ) -> Result<Gate, JournalError> {
        let wave = &self.plan.waves[wave_idx];
        if self.recorder.read(|state| state.wave_status(&wave.name)) != WaveStatus::NotStarted
            || !self.has_previous_checks(wave_idx)
        {
            return Ok(Gate::Open);
        }
        let previous = &self.plan.waves[wave_idx - 1];
        let (bake_until, passed_at, passed_stage) = self.recorder.read(|state| {
            let wave_state = state.waves.get(&previous.name);
            (
                wave_state.and_then(|wave_state| wave_state.bake_until.clone()),
                wave_state.and_then(|wave_state| wave_state.checks_passed_at.clone()),
                wave_state.and_then(|wave_state| wave_state.checks_passed_stage.clone()),
            )
        });
        let bake_until = bake_until.as_deref().and_then(crate::clock::parse_rfc3339);
        if let Some(until) = bake_until
            && !self.skip_bake
            && let Gate::Stop(outcome) = self
                .bake(previous, until, &wave.name, reporter, shutdown)
                .await?
        {
            return Ok(Gate::Stop(outcome));
        }
        // The end-of-bake checks, unless they passed at the end of the bake or in a retry
        // after it (a resume) or, with no bake, after the wave's tenants finished. A pass
        // right after the wave does not count for a bake, however short: the bake's end is
        // second-granular and can fall before it.
        let passed_at = passed_at.as_deref().and_then(crate::clock::parse_rfc3339);
        let after_bake = matches!(passed_stage.as_deref(), Some("bake_end") | Some("retry"));
        let passed_since = match (passed_at, bake_until) {
            (Some(passed), Some(until)) => after_bake && passed >= until,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !previous.checks.is_empty() && !passed_since {
            let checks: Vec<&CheckSpec> = previous.checks.iter().collect();
            return self
                .run_checks(previous, &checks, Stage::BakeEnd, reporter)
                .await;
        }
        Ok(Gate::Open)
    }

    /// Before a wave that has not started: its approval, if it needs one. Without it the run
    /// stops; `ask` journals `approval_needed` and notifies (once: runners sharing a store
    /// elect the one that asks).
    pub async fn approval(
        &self,
        wave_idx: usize,
        ask: bool,
        reporter: &dyn Reporter,
    ) -> Result<Gate, JournalError> {
        let wave = &self.plan.waves[wave_idx];
        if wave.approval != Approval::Required
            || self.recorder.read(|state| state.wave_status(&wave.name)) != WaveStatus::NotStarted
        {
            return Ok(Gate::Open);
        }
        let (approved, already_asked) = self.recorder.read(|state| {
            let wave_state = state.waves.get(&wave.name);
            (
                wave_state.and_then(|wave_state| wave_state.approved.clone()),
                wave_state.is_some_and(|wave_state| wave_state.approval_needed),
            )
        });
        if let Some(approval) = approved {
            reporter.note(&format!(
                "wave {} was approved by {} at {}{}",
                wave.name,
                approval.by.as_deref().unwrap_or("someone"),
                approval.at,
                approval
                    .note
                    .map(|note| format!(": {}", crate::terminal::escape_controls(&note)))
                    .unwrap_or_default()
            ));
            return Ok(Gate::Open);
        }
        if ask && !already_asked {
            self.recorder
                .record(Event::ApprovalNeeded {
                    wave: wave.name.clone(),
                })
                .await?;
        }
        reporter.note(&format!(
            "wave {} needs approval before it starts: `schemafleet approve {} {}`, then `schemafleet apply {}` continues",
            wave.name, self.config.plan_path, wave.name, self.config.plan_path
        ));
        if ask {
            self.notify(
                NotifyEvent::ApprovalNeeded,
                Some(&wave.name),
                Detail::None,
                reporter,
            )
            .await;
        }
        Ok(Gate::Stop(RunOutcome::AwaitingApproval {
            wave: wave.name.clone(),
        }))
    }

    /// Right after a wave's tenants finished within budget: its checks.
    pub async fn after_wave(
        &self,
        wave: &PlannedWave,
        reporter: &dyn Reporter,
    ) -> Result<Gate, JournalError> {
        if wave.checks.is_empty() {
            return Ok(Gate::Open);
        }
        let checks: Vec<&CheckSpec> = wave.checks.iter().collect();
        self.run_checks(wave, &checks, Stage::AfterWave, reporter)
            .await
    }

    /// Wait out `previous`'s bake, running its interval checks when they fall due.
    async fn bake(
        &self,
        previous: &PlannedWave,
        until: time::OffsetDateTime,
        next_wave: &str,
        reporter: &dyn Reporter,
        shutdown: &Shutdown,
    ) -> Result<Gate, JournalError> {
        let now = time::OffsetDateTime::now_utc();
        if until <= now {
            return Ok(Gate::Open);
        }
        reporter.note(&format!(
            "baking wave {} for {}s before wave {next_wave} starts (--skip-bake to skip)",
            previous.name,
            (until - now).as_seconds_f64().ceil() as u64
        ));
        let interval_checks: Vec<(&CheckSpec, Duration)> = previous
            .checks
            .iter()
            .filter_map(|check| {
                check
                    .interval_ms
                    .map(|ms| (check, Duration::from_millis(ms)))
            })
            .collect();
        let mut due: Vec<time::OffsetDateTime> = interval_checks
            .iter()
            .map(|(_, interval)| now + *interval)
            .collect();
        loop {
            let now = time::OffsetDateTime::now_utc();
            if now >= until {
                return Ok(Gate::Open);
            }
            let wake = due
                .iter()
                .copied()
                .filter(|at| *at < until)
                .min()
                .unwrap_or(until);
            let pause = Duration::from_secs_f64((wake - now).as_seconds_f64().max(0.0));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.stopping() => return Ok(Gate::Stop(RunOutcome::Interrupted)),
            }
            let now = time::OffsetDateTime::now_utc();
            if now >= until {
                return Ok(Gate::Open);
            }
            let mut checks = Vec::new();
            for ((check, interval), at) in interval_checks.iter().zip(due.iter_mut()) {
                if *at <= now {
                    checks.push(*check);
                    *at = now + *interval;
                }
            }
            if !checks.is_empty()
                && let Gate::Stop(outcome) = self
                    .run_checks(previous, &checks, Stage::DuringBake, reporter)
                    .await?
            {
                return Ok(Gate::Stop(outcome));
            }
        }
    }

    /// Run `checks` of `wave` in order and journal the verdict: a failure halts the wave.
    async fn run_checks(
        &self,
        wave: &PlannedWave,
        checks: &[&CheckSpec],
        stage: Stage,
        reporter: &dyn Reporter,
    ) -> Result<Gate, JournalError> {
        let (migrated, wave_started_at) = self.recorder.read(|state| {
            let migrated: Vec<String> = wave
                .tenant_ids()
                .filter(|tenant| {
                    matches!(
                        state.tenant_status(tenant),
                        TenantStatus::Applied | TenantStatus::UpToDate
                    )
                })
                .map(str::to_string)
                .collect();
            let started_at = state
                .waves
                .get(&wave.name)
                .and_then(|wave_state| wave_state.started_at.clone())
                .unwrap_or_else(crate::clock::now_rfc3339);
            (migrated, started_at)
        });
        let target = CheckTarget {
            plan: &self.plan,
            wave,
            migrated,
            wave_started_at,
            stage,
        };
        let mut failures: Vec<CheckFailure> = Vec::new();
        for check in checks {
            let outcome = run_check(check, &target, &self.env).await;
            if outcome.passed {
                continue;
            }
            reporter.note(&format!(
                "wave {}: check {} ({}) FAILED at {}: {}",
                wave.name,
                check.name,
                outcome.failure.kind,
                stage.as_str(),
                crate::terminal::escape_controls(
                    outcome.failure.output.lines().next().unwrap_or("")
                )
            ));
            failures.push(outcome.failure);
        }
        let names = checks.iter().map(|check| check.name.clone()).collect();
        if failures.is_empty() {
            // Passes during the bake are not journaled: only the end of the bake lets the next
            // wave start.
            if stage != Stage::DuringBake {
                self.recorder
                    .record(Event::ChecksPassed {
                        wave: wave.name.clone(),
                        stage: stage.as_str().to_string(),
                        checks: names,
                    })
                    .await?;
            }
            return Ok(Gate::Open);
        }
        self.recorder
            .record(Event::ChecksFailed {
                wave: wave.name.clone(),
                stage: stage.as_str().to_string(),
                failures: failures.clone(),
            })
            .await?;
        for failure in &failures {
            self.notify(
                NotifyEvent::CheckFailed,
                Some(&wave.name),
                Detail::Check {
                    failure,
                    stage: stage.as_str(),
                },
                reporter,
            )
            .await;
        }
        self.notify(
            NotifyEvent::WaveHalted,
            Some(&wave.name),
            Detail::Halted("checks"),
            reporter,
        )
        .await;
        Ok(Gate::Stop(RunOutcome::Halted {
            wave: wave.name.clone(),
        }))
    }
}

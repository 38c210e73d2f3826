//! Counting tenants per wave and state.

use serde::Serialize;

use crate::journal::{JournalState, TenantState, TenantStatus, WaveStatus};
use crate::plan::model::{Plan, PlannedTenant};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub tenants: usize,
    pub applied: usize,
    pub up_to_date: usize,
    /// Of `up_to_date`, those whose main has migrations newer than the plan's: a later release
    /// reached them (`drift` calls them ahead). The plan has nothing left to do on them.
    pub ahead: usize,
    /// `apply --skip-recorded` skipped them without connecting: a record (catalog, earlier
    /// journal) says they are up to date; `drift` or `status --live` checks it.
    pub skipped_recorded: usize,
    pub failed: usize,
    pub diverged: usize,
    /// Not started: in a halted or not-started wave, or left when the run stopped.
    pub not_started: usize,
    /// Started and not finished (a killed or interrupted run); a resume re-probes them.
    pub in_flight: usize,
    pub rolled_back: usize,
    pub rollback_failed: usize,
}

impl Counts {
    fn add(&mut self, status: TenantStatus) {
        self.tenants += 1;
        match status {
            TenantStatus::NotStarted => self.not_started += 1,
            TenantStatus::InFlight => self.in_flight += 1,
            TenantStatus::Applied => self.applied += 1,
            TenantStatus::UpToDate => self.up_to_date += 1,
            TenantStatus::SkippedRecorded => self.skipped_recorded += 1,
            TenantStatus::Failed => self.failed += 1,
            TenantStatus::Diverged => self.diverged += 1,
            TenantStatus::RolledBack => self.rolled_back += 1,
            TenantStatus::RollbackFailed => self.rollback_failed += 1,
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.tenants += other.tenants;
        self.applied += other.applied;
        self.up_to_date += other.up_to_date;
        self.ahead += other.ahead;
        self.skipped_recorded += other.skipped_recorded;
        self.failed += other.failed;
        self.diverged += other.diverged;
        self.not_started += other.not_started;
        self.in_flight += other.in_flight;
        self.rolled_back += other.rolled_back;
        self.rollback_failed += other.rollback_failed;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveSummary {
    pub name: String,
    /// `not_started`, `running`, `stopped` (started, and no run is working on it: interrupted
    /// or killed; see [`Summary::no_run_active`]), `done` or `halted`.
    pub status: &'static str,
    pub halted: bool,
    #[serde(flatten)]
    pub counts: Counts,
    /// The tenants with the longest write-blocking lock holds measured on their validation
    /// branches, longest first (at most five).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lock_holds: Vec<super::lock_holds::TenantLockHold>,
    /// The checks that halted the wave (its latest failed round), with their output and the
    /// tenants that failed them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub check_failures: Vec<crate::journal::CheckFailure>,
    /// For a wave with `approval: required`: `required`, `awaiting` (an apply stopped for it)
    /// or `approved`, with who and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<WaveApproval>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveApproval {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A wave's approval as reports show it.
fn wave_approval(
    wave: &crate::plan::model::PlannedWave,
    state: &JournalState,
) -> Option<WaveApproval> {
    if wave.approval != crate::gates::spec::Approval::Required {
        return None;
    }
    let wave_state = state.waves.get(&wave.name);
    if let Some(approved) = wave_state.and_then(|wave_state| wave_state.approved.as_ref()) {
        return Some(WaveApproval {
            status: "approved",
            by: approved.by.clone(),
            note: approved.note.clone(),
            at: Some(approved.at.clone()),
        });
    }
    let awaiting = wave_state.is_some_and(|wave_state| wave_state.approval_needed);
    Some(WaveApproval {
        status: if awaiting { "awaiting" } else { "required" },
        by: None,
        note: None,
        at: None,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureEntry {
    pub tenant: String,
    /// The project's name, when it has one of its own.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub region: String,
    pub wave: String,
    /// `probe`, `branch`, `validate`, `apply` (or `diverged` for history that disagrees).
    pub phase: String,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// Versions this plan committed on main, over every attempt (a retry that changed nothing
    /// does not hide the first attempt's): main changed when not empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applied_on_main: Vec<i32>,
    /// The migration that failed (`V3__name`), when the failure is one migration's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// main's version as far as the journal knows: its probed version, or the last version
    /// committed since (a failure after some migrations committed leaves it in between).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_version: Option<i32>,
}

impl FailureEntry {
    /// `name (id)`, or the id when the tenant has no name of its own.
    pub fn label(&self) -> String {
        PlannedTenant {
            id: self.tenant.clone(),
            name: self.tenant_name.clone(),
            region: String::new(),
        }
        .label()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub plan_id: String,
    pub waves: Vec<WaveSummary>,
    pub totals: Counts,
    pub failures: Vec<FailureEntry>,
    /// Tenants holding a restore point in the journal.
    pub restore_points: usize,
    /// Tenants this plan rolled back (or tried to): `apply` leaves them alone unless
    /// `--include-rolled-back` names them, so every report lists them by id.
    pub held_back: Vec<String>,
    /// The same tenants with their names and regions, for people.
    pub held_back_tenants: Vec<HeldBack>,
}

/// A tenant this plan rolled back, as people know it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldBack {
    pub tenant: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub region: String,
}

impl HeldBack {
    /// `name (id)`, or the id when the tenant has no name of its own.
    pub fn label(&self) -> String {
        PlannedTenant {
            id: self.tenant.clone(),
            name: self.tenant_name.clone(),
            region: String::new(),
        }
        .label()
    }
}

/// main's version after what the journal saw: the probe's, or the highest committed since.
fn main_version(tenant: &TenantState) -> Option<i32> {
    tenant
        .applied_versions
        .iter()
        .copied()
        .max()
        .max(tenant.current_version)
}

impl Summary {
    /// Said when no `apply` is working on the journal (it finished, was interrupted or was
    /// killed): a wave the journal shows as started and unfinished is `stopped`, not `running`.
    pub fn no_run_active(&mut self) {
        for wave in &mut self.waves {
            if wave.status == WaveStatus::Running.as_str() {
                wave.status = STOPPED;
            }
        }
    }
}

/// The status of a started wave that no run is working on.
pub const STOPPED: &str = "stopped";

/// Count every planned tenant by its journal state, wave by wave, in plan order.
pub fn summarize(plan: &Plan, state: &JournalState) -> Summary {
    let mut waves = Vec::with_capacity(plan.waves.len());
    let mut totals = Counts::default();
    let mut failures = Vec::new();
    let mut restore_points = 0;
    let mut held_back = Vec::new();
    let mut held_back_tenants = Vec::new();
    let plan_version = plan.migrations.items.iter().map(|item| item.version).max();
    for wave in &plan.waves {
        let mut counts = Counts::default();
        // Tenants with rare parts (lock holds among them), their states built.
        let mut rare_states = Vec::new();
        for planned in &wave.tenants {
            let tenant_id = &planned.id;
            // Counted from the compact state, one lookup a tenant; a tenant's whole state is
            // built only for the few with rare parts (failures, lock holds, ...).
            let brief = state.brief(tenant_id);
            let status = brief.status;
            counts.add(status);
            if status == TenantStatus::UpToDate && brief.current_version > plan_version {
                counts.ahead += 1;
            }
            if brief.has_restore_point {
                restore_points += 1;
            }
            // Built once: for the rare parts' lock holds, and for the failure entry below.
            let tenant = if brief.has_rare_parts
                || matches!(
                    status,
                    TenantStatus::Failed | TenantStatus::Diverged | TenantStatus::RollbackFailed
                ) {
                state.tenant(tenant_id)
            } else {
                None
            };
            if matches!(
                status,
                TenantStatus::RolledBack | TenantStatus::RollbackFailed
            ) {
                held_back.push(tenant_id.clone());
                held_back_tenants.push(HeldBack {
                    tenant: tenant_id.clone(),
                    tenant_name: planned.name.clone(),
                    region: planned.region.clone(),
                });
            }
            let Some(tenant) = tenant else { continue };
            match status {
                TenantStatus::Failed => {
                    if let Some(failure) = &tenant.failure {
                        failures.push(FailureEntry {
                            tenant: tenant_id.clone(),
                            tenant_name: planned.name.clone(),
                            region: planned.region.clone(),
                            wave: wave.name.clone(),
                            phase: failure.phase.as_str().to_string(),
                            error: failure.error.message.clone(),
                            sqlstate: failure.error.sqlstate.clone(),
                            applied_on_main: tenant.applied_versions.clone(),
                            migration: failure.error.migration.clone(),
                            main_version: main_version(&tenant),
                        });
                    }
                }
                TenantStatus::Diverged => failures.push(FailureEntry {
                    tenant: tenant_id.clone(),
                    tenant_name: planned.name.clone(),
                    region: planned.region.clone(),
                    wave: wave.name.clone(),
                    phase: "diverged".to_string(),
                    error: tenant.diverged_reason.clone().unwrap_or_default(),
                    sqlstate: None,
                    applied_on_main: Vec::new(),
                    migration: None,
                    main_version: tenant.current_version,
                }),
                TenantStatus::RollbackFailed => failures.push(FailureEntry {
                    tenant: tenant_id.clone(),
                    tenant_name: planned.name.clone(),
                    region: planned.region.clone(),
                    wave: wave.name.clone(),
                    phase: "rollback".to_string(),
                    error: tenant.rollback_error.clone().unwrap_or_default(),
                    sqlstate: None,
                    applied_on_main: tenant.applied_versions.clone(),
                    migration: None,
                    main_version: None,
                }),
                _ => {}
            }
            if brief.has_rare_parts {
                rare_states.push((planned, tenant));
            }
        }
        let wave_status = state.wave_status(&wave.name);
        totals.merge(&counts);
        waves.push(WaveSummary {
            name: wave.name.clone(),
            status: wave_status.as_str(),
            halted: wave_status == WaveStatus::Halted,
            counts,
            // Holds live in a tenant's rare part: the common tenant, which has none, is not
            // built.
            lock_holds: super::lock_holds::worst_in_wave(
                rare_states
                    .iter()
                    .map(|(planned, tenant)| (*planned, Some(tenant))),
            ),
            check_failures: state
                .waves
                .get(&wave.name)
                .map(|wave_state| wave_state.check_failures.clone())
                .unwrap_or_default(),
            approval: wave_approval(wave, state),
        });
    }
    Summary {
        plan_id: plan.plan_id.clone(),
        waves,
        totals,
        failures,
        restore_points,
        held_back,
        held_back_tenants,
    }
}

//! Pure replay: journal records in, per-tenant and per-wave state out. No I/O.
//!
//! **Invariant:** replaying the same records always yields the same state, and a tenant's
//! state only depends on its own records (plus its wave's records for waves).

use std::collections::{BTreeMap, HashMap};

use super::compact::{NO_SET, Packed, TenantTable};
use super::record::{CheckFailure, Event, Phase, Record, RestorePoint};
use crate::pg::DbFailure;

/// Where a tenant stands, as far as the journal knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantStatus {
    /// No record yet.
    NotStarted,
    /// Started but not finished: a resume re-probes it (its history table is the truth).
    InFlight,
    Applied,
    UpToDate,
    /// Skipped without connecting: a record (catalog, earlier journal) says it is up to date;
    /// unverified, so never counted as `up_to_date`.
    SkippedRecorded,
    Failed,
    Diverged,
    RolledBack,
    RollbackFailed,
}

impl TenantStatus {
    /// Finished for `apply`: a resume does not touch or even connect to it.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TenantStatus::Applied
                | TenantStatus::UpToDate
                | TenantStatus::SkippedRecorded
                | TenantStatus::Failed
                | TenantStatus::Diverged
        )
    }

    /// The status [`TenantStatus::as_str`] names.
    pub fn parse(text: &str) -> Option<TenantStatus> {
        [
            TenantStatus::NotStarted,
            TenantStatus::InFlight,
            TenantStatus::Applied,
            TenantStatus::UpToDate,
            TenantStatus::SkippedRecorded,
            TenantStatus::Failed,
            TenantStatus::Diverged,
            TenantStatus::RolledBack,
            TenantStatus::RollbackFailed,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::NotStarted => "not_started",
            TenantStatus::InFlight => "in_flight",
            TenantStatus::Applied => "applied",
            TenantStatus::UpToDate => "up_to_date",
            TenantStatus::SkippedRecorded => "skipped_recorded",
            TenantStatus::Failed => "failed",
            TenantStatus::Diverged => "diverged",
            TenantStatus::RolledBack => "rolled_back",
            TenantStatus::RollbackFailed => "rollback_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantFailure {
    pub phase: Phase,
    pub error: DbFailure,
    pub applied_on_main: Vec<i32>,
    pub at: String,
}

/// A tenant's status and what else it holds, without building its state ([`JournalState::brief`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantBrief {
    pub status: TenantStatus,
    pub has_restore_point: bool,
    /// A failure, lock holds, open branches, an uncommon restore point, ...
    pub has_rare_parts: bool,
    /// main's version as the journal last saw it (a later release's when found ahead).
    pub current_version: Option<i32>,
}

impl TenantBrief {
    const NOT_STARTED: TenantBrief = TenantBrief {
        status: TenantStatus::NotStarted,
        has_restore_point: false,
        has_rare_parts: false,
        current_version: None,
    };
}

/// Everything the journal knows about one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantState {
    pub wave: String,
    pub status: TenantStatus,
    /// The last phase entered, for in-flight tenants.
    pub phase: Option<Phase>,
    pub current_version: Option<i32>,
    pub pending: Vec<i32>,
    /// Versions validated on a branch since the tenant was last rolled back or failed.
    pub validated: Option<Vec<i32>>,
    /// The lock holds the last validation measured on the branch, longest first.
    pub lock_holds: Vec<crate::pg::lock_footprint::LockHold>,
    /// Versions whose apply to main started and did not finish (kept by `up_to_date`: main
    /// may have changed since the restore point all the same).
    pub apply_started: Option<Vec<i32>>,
    /// When `apply_started` was written: history rows of those versions applied later are
    /// this plan's own.
    pub apply_started_at: Option<String>,
    /// Kept until a rollback uses it: a retried tenant keeps its original pre-migration point.
    pub restore_point: Option<Box<RestorePoint>>,
    pub restore_point_at: Option<String>,
    /// main's version when the restore point was recorded: what a rollback must bring back.
    pub version_at_restore_point: Option<i32>,
    /// Branches created and not yet deleted: id -> (name, purpose).
    pub open_branches: BTreeMap<String, (String, String)>,
    /// Branches requested whose creation was never confirmed: name -> purpose.
    pub requested_branches: BTreeMap<String, String>,
    /// Versions this plan committed on main, accumulated over every attempt (`applied`,
    /// `apply_recovered`, each `failed`'s `applied_on_main`) until a rollback clears them: a
    /// later attempt that changes nothing must not hide what an earlier one committed.
    pub applied_versions: Vec<i32>,
    pub failure: Option<Box<TenantFailure>>,
    pub diverged_reason: Option<String>,
    pub preserved_branch: Option<String>,
    pub rollback_error: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveStatus {
    NotStarted,
    Running,
    Done,
    Halted,
}

impl WaveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WaveStatus::NotStarted => "not_started",
            WaveStatus::Running => "running",
            WaveStatus::Done => "done",
            WaveStatus::Halted => "halted",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WaveState {
    pub status: WaveStatus,
    /// The next wave may not start before this time (RFC 3339).
    pub bake_until: Option<String>,
    /// When the wave first started (its `wave_started` record): SQL checks get it as `$1`.
    pub started_at: Option<String>,
    /// The checks that failed in the latest round; the wave is halted while this is not empty.
    pub check_failures: Vec<CheckFailure>,
    /// Seq of the `checks_failed` record of that round: runners sharing a store retry it once.
    pub checks_failed_seq: Option<u64>,
    /// When the wave's checks last passed, and at which stage (`after_wave`, `bake_end`, …).
    pub checks_passed_at: Option<String>,
    pub checks_passed_stage: Option<String>,
    /// `apply` stopped before the wave for an approval not given yet.
    pub approval_needed: bool,
    /// Who approved the wave, with their note, and when.
    pub approved: Option<Approval>,
}

/// A recorded `schemafleet approve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub by: Option<String>,
    pub note: Option<String>,
    pub at: String,
}

/// A recorded `schemafleet abort`: who, why, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub by: String,
    pub reason: String,
    /// When it was asked (the record's time unless it was written later by the `apply` that
    /// stopped on it).
    pub at: String,
}

/// The replayed journal.
///
/// Tenants live in a compact table (issue 23): a few hundred bytes each, whatever the fleet's
/// size. [`JournalState::tenant`] rebuilds one tenant's full [`TenantState`] on demand; the
/// counts and checks a whole-fleet report needs ([`JournalState::tenant_status`],
/// [`JournalState::has_restore_point`]) read the table without building anything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JournalState {
    pub plan_id: Option<String>,
    pub runs: u32,
    pub last_seq: u64,
    pub waves: HashMap<String, WaveState>,
    pub last_run_outcome: Option<String>,
    /// Tenants `baseline` recorded a history for: tenant -> (versions, when). Kept apart from
    /// [`TenantState`]: adopting a tenant is not a step of the rollout.
    pub baselined: BTreeMap<String, (Vec<i32>, String)>,
    /// `baseline_started` without its `baseline_recorded`: tenant -> versions whose rows may
    /// or may not have been committed (the tenant's history table tells).
    pub baseline_unconfirmed: BTreeMap<String, Vec<i32>>,
    /// The process of the last run while it has not finished (`run_started` without its
    /// `run_finished`): the `apply` a held lock belongs to.
    pub open_run_pid: Option<u32>,
    /// When the last record folded in was written (RFC 3339).
    pub last_at: Option<String>,
    /// The last abort recorded (kept after `resume` lifts it: `status` says whether it is).
    pub last_abort: Option<Abort>,
    /// Event records folded in (a checkpoint stands for the records it covers).
    pub records: u64,
    pub(crate) tenants: TenantTable,
}

impl JournalState {
    pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> JournalState {
        let mut state = JournalState::default();
        for record in records {
            state.apply(record);
        }
        state
    }

    /// The tenant's state, rebuilt from the compact table.
    pub fn tenant(&self, tenant_id: &str) -> Option<TenantState> {
        self.tenants.view_of(tenant_id)
    }

    pub fn tenant_status(&self, tenant_id: &str) -> TenantStatus {
        self.tenants
            .find(tenant_id)
            .map_or(TenantStatus::NotStarted, |idx| {
                self.tenants.slot(idx).status
            })
    }

    /// main's version as the journal last saw it (probed, or a later release's when it was
    /// found ahead).
    pub fn tenant_current_version(&self, tenant_id: &str) -> Option<i32> {
        self.tenants
            .find(tenant_id)
            .and_then(|idx| self.tenants.slot(idx).current_version)
    }

    /// What counting a tenant needs, found with one lookup of its id.
    pub fn brief(&self, tenant_id: &str) -> TenantBrief {
        self.tenants
            .find(tenant_id)
            .map_or(TenantBrief::NOT_STARTED, |idx| TenantBrief {
                status: self.tenants.slot(idx).status,
                has_restore_point: self.tenants.has_restore_point(idx),
                has_rare_parts: self.tenants.slot(idx).rare.is_some(),
                current_version: self.tenants.slot(idx).current_version,
            })
    }

    /// Whether the journal holds a restore point for the tenant.
    pub fn has_restore_point(&self, tenant_id: &str) -> bool {
        self.tenants
            .find(tenant_id)
            .is_some_and(|idx| self.tenants.has_restore_point(idx))
    }

    /// The kind of the tenant's restore point (`branch_point`, `backup_branch`), if it holds
    /// one; nothing else of its state is built.
    pub fn restore_point_kind(&self, tenant_id: &str) -> Option<&'static str> {
        let idx = self.tenants.find(tenant_id)?;
        self.tenants.restore_point_kind(idx)
    }

    /// Tenants the journal names.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Every tenant the journal names, in the order it first named them.
    pub fn tenant_ids(&self) -> impl Iterator<Item = &str> {
        (0..self.tenants.len() as u32).map(|idx| self.tenants.id(idx))
    }

    pub fn wave_status(&self, wave: &str) -> WaveStatus {
        self.waves
            .get(wave)
            .map_or(WaveStatus::NotStarted, |state| state.status)
    }

    /// Give back what growing the state over-allocated (after a replay).
    pub fn shrink(&mut self) {
        self.tenants.shrink();
    }

    /// Fold one record into the state.
    pub fn apply(&mut self, record: &Record) {
        self.last_seq = self.last_seq.max(record.seq);
        self.records += 1;
        let last_at = self.last_at.get_or_insert_with(String::new);
        last_at.clear();
        last_at.push_str(&record.at);
        let at = record.at.as_str();
        let table = &mut self.tenants;
        match &record.event {
            Event::RunStarted { plan_id, pid, .. } => {
                self.plan_id = Some(plan_id.clone());
                self.runs += 1;
                self.open_run_pid = Some(*pid);
                // The outcome belongs to the run that finished; a new run has none yet.
                self.last_run_outcome = None;
            }
            Event::RunFinished { outcome, .. } => {
                self.open_run_pid = None;
                self.last_run_outcome = Some(outcome.clone());
            }
            Event::WaveStarted { wave } => {
                let wave_state = self.wave_mut(wave);
                wave_state.status = WaveStatus::Running;
                wave_state.approval_needed = false;
                if wave_state.started_at.is_none() {
                    wave_state.started_at = Some(at.to_string());
                }
            }
            Event::WaveFinished {
                wave,
                halted,
                bake_until,
            } => {
                let wave_state = self.wave_mut(wave);
                wave_state.status = if *halted {
                    WaveStatus::Halted
                } else {
                    WaveStatus::Done
                };
                if bake_until.is_some() {
                    wave_state.bake_until = bake_until.clone();
                }
            }
            Event::BakeStarted { wave, until } => {
                self.wave_mut(wave).bake_until = Some(until.clone());
            }
            Event::TenantProbed {
                tenant,
                wave,
                current_version,
                pending,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let pending = table.versions(pending);
                table.clear_rare(idx, |rare| {
                    rare.failure = None;
                    rare.diverged_reason = None;
                });
                let state = table.slot_mut(idx);
                state.status = TenantStatus::InFlight;
                state.phase = Some(Phase::Probe);
                state.current_version = *current_version;
                state.pending = pending;
            }
            Event::UpToDate {
                tenant,
                wave,
                ahead,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let state = table.slot_mut(idx);
                state.status = TenantStatus::UpToDate;
                state.phase = None;
                state.pending = EMPTY_SET;
                // The versions are ascending: main is at the last (reports compare it with the
                // plan's highest to call the tenant ahead).
                if let Some(&newest) = ahead.last() {
                    state.current_version = Some(newest);
                }
            }
            Event::SkippedRecorded { tenant, wave, .. } => {
                // The recorded version is a claim, so it does not become `current_version`.
                let idx = tenant_mut(table, tenant, wave, at);
                let state = table.slot_mut(idx);
                state.status = TenantStatus::SkippedRecorded;
                state.phase = None;
                state.pending = EMPTY_SET;
            }
            Event::Diverged {
                tenant,
                wave,
                reason,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                table.rare_mut(idx).diverged_reason = Some(reason.clone());
                let state = table.slot_mut(idx);
                state.status = TenantStatus::Diverged;
                state.phase = None;
            }
            Event::BranchRequested {
                tenant,
                wave,
                purpose,
                branch_name,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                table.slot_mut(idx).status = TenantStatus::InFlight;
                table
                    .rare_mut(idx)
                    .requested_branches
                    .insert(branch_name.clone(), purpose.clone());
            }
            Event::BranchAbandoned {
                tenant,
                branch_name,
            } => {
                if let Some(idx) = table.find(tenant) {
                    table.clear_rare(idx, |rare| {
                        rare.requested_branches.remove(branch_name);
                    });
                    let stamp = table.stamp(at);
                    table.slot_mut(idx).updated_at = stamp;
                }
            }
            Event::BranchCreated {
                tenant,
                wave,
                purpose,
                branch_id,
                branch_name,
                ..
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let rare = table.rare_mut(idx);
                rare.requested_branches.remove(branch_name);
                rare.open_branches
                    .insert(branch_id.clone(), (branch_name.clone(), purpose.clone()));
                let state = table.slot_mut(idx);
                state.status = TenantStatus::InFlight;
                state.phase = Some(if purpose == "validate" {
                    Phase::Validate
                } else {
                    Phase::Branch
                });
            }
            Event::BranchDeleted { tenant, branch_id }
            | Event::BranchDeleteRequested { tenant, branch_id } => {
                if let Some(idx) = table.find(tenant) {
                    table.clear_rare(idx, |rare| {
                        rare.open_branches.remove(branch_id);
                    });
                    let stamp = table.stamp(at);
                    table.slot_mut(idx).updated_at = stamp;
                }
            }
            Event::Validated {
                tenant,
                wave,
                versions,
                lock_holds,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let versions = table.versions(versions);
                table.slot_mut(idx).validated = versions;
                if lock_holds.is_empty() {
                    table.clear_rare(idx, |rare| rare.lock_holds = Vec::new());
                } else {
                    table.rare_mut(idx).lock_holds = lock_holds.clone();
                }
            }
            Event::RestorePointRecorded {
                tenant,
                wave,
                point,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                table.set_restore_point(idx, point);
                let stamp = table.stamp(at);
                let state = table.slot_mut(idx);
                state.restore_point_at = stamp;
                state.version_at_restore_point = state.current_version;
            }
            Event::ApplyStarted {
                tenant,
                wave,
                versions,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let versions = table.versions(versions);
                let stamp = table.stamp(at);
                let state = table.slot_mut(idx);
                state.status = TenantStatus::InFlight;
                state.phase = Some(Phase::Apply);
                state.apply_started = versions;
                state.apply_started_at = stamp;
            }
            Event::Applied {
                tenant,
                wave,
                versions,
                ..
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let state = table.slot_mut(idx);
                state.status = TenantStatus::Applied;
                state.phase = None;
                state.apply_started = NO_SET;
                state.apply_started_at = Packed::default();
                state.pending = EMPTY_SET;
                table.add_applied(idx, versions);
            }
            Event::ApplyRecovered {
                tenant,
                wave,
                versions,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                table.slot_mut(idx).status = TenantStatus::InFlight;
                table.add_applied(idx, versions);
            }
            Event::Failed {
                tenant,
                wave,
                phase,
                error,
                applied_on_main,
            } => {
                let idx = tenant_mut(table, tenant, wave, at);
                let state = table.slot_mut(idx);
                state.status = TenantStatus::Failed;
                state.phase = None;
                state.apply_started = NO_SET;
                state.apply_started_at = Packed::default();
                state.validated = NO_SET;
                table.add_applied(idx, applied_on_main);
                table.rare_mut(idx).failure = Some(Box::new(TenantFailure {
                    phase: *phase,
                    error: error.clone(),
                    applied_on_main: applied_on_main.clone(),
                    at: at.to_string(),
                }));
            }
            Event::RollbackStarted { tenant, .. } => {
                if let Some(idx) = table.find(tenant) {
                    let stamp = table.stamp(at);
                    let state = table.slot_mut(idx);
                    state.phase = Some(Phase::Rollback);
                    state.updated_at = stamp;
                }
            }
            Event::RolledBack {
                tenant,
                preserved_branch,
                ..
            } => {
                if let Some(idx) = table.find(tenant) {
                    table.clear_restore_point(idx);
                    let rare = table.rare_mut(idx);
                    rare.preserved_branch = Some(preserved_branch.clone());
                    rare.rollback_error = None;
                    let stamp = table.stamp(at);
                    let state = table.slot_mut(idx);
                    state.status = TenantStatus::RolledBack;
                    state.phase = None;
                    state.restore_point_at = Packed::default();
                    state.validated = NO_SET;
                    state.apply_started = NO_SET;
                    state.apply_started_at = Packed::default();
                    state.applied_versions = EMPTY_SET;
                    state.updated_at = stamp;
                }
            }
            Event::BaselineStarted { tenant, versions } => {
                self.baseline_unconfirmed
                    .insert(tenant.clone(), versions.clone());
            }
            Event::BaselineRecorded {
                tenant, versions, ..
            } => {
                self.baseline_unconfirmed.remove(tenant);
                self.baselined
                    .insert(tenant.clone(), (versions.clone(), at.to_string()));
            }
            Event::RollbackFailed { tenant, error } => {
                if let Some(idx) = table.find(tenant) {
                    table.rare_mut(idx).rollback_error = Some(error.clone());
                    let stamp = table.stamp(at);
                    let state = table.slot_mut(idx);
                    state.status = TenantStatus::RollbackFailed;
                    state.phase = None;
                    state.updated_at = stamp;
                }
            }
            Event::ChecksPassed { wave, stage, .. } => {
                let wave_state = self.wave_mut(wave);
                // Only a halt the checks caused is lifted by their passing.
                if !wave_state.check_failures.is_empty() && wave_state.status == WaveStatus::Halted
                {
                    wave_state.status = WaveStatus::Done;
                }
                wave_state.check_failures.clear();
                wave_state.checks_passed_at = Some(at.to_string());
                wave_state.checks_passed_stage = Some(stage.clone());
            }
            Event::ChecksFailed { wave, failures, .. } => {
                let wave_state = self.wave_mut(wave);
                wave_state.status = WaveStatus::Halted;
                wave_state.check_failures = failures.clone();
                wave_state.checks_failed_seq = Some(record.seq);
            }
            Event::Aborted {
                by,
                reason,
                requested_at,
            } => {
                self.last_abort = Some(Abort {
                    by: by.clone(),
                    reason: reason.clone(),
                    at: requested_at.clone().unwrap_or_else(|| at.to_string()),
                });
            }
            Event::ApprovalNeeded { wave } => self.wave_mut(wave).approval_needed = true,
            Event::Approved { wave, by, note } => {
                let wave_state = self.wave_mut(wave);
                wave_state.approval_needed = false;
                wave_state.approved = Some(Approval {
                    by: by.clone(),
                    note: note.clone(),
                    at: at.to_string(),
                });
            }
        }
    }

    fn wave_mut(&mut self, wave: &str) -> &mut WaveState {
        self.waves.entry(wave.to_string()).or_insert(WaveState {
            status: WaveStatus::NotStarted,
            bake_until: None,
            started_at: None,
            check_failures: Vec::new(),
            checks_failed_seq: None,
            checks_passed_at: None,
            checks_passed_stage: None,
            approval_needed: false,
            approved: None,
        })
    }
}

/// The empty version set (interned first in every table).
const EMPTY_SET: u32 = 0;

/// The tenant's slot, named by a record of `wave` written `at`.
fn tenant_mut(table: &mut TenantTable, tenant: &str, wave: &str, at: &str) -> u32 {
    let idx = table.entry(tenant, wave);
    let wave = table.wave_idx(wave);
    let stamp = table.stamp(at);
    let state = table.slot_mut(idx);
    state.wave = wave;
    state.updated_at = stamp;
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::RECORD_VERSION;

    fn record(seq: u64, event: Event) -> Record {
        Record {
            v: RECORD_VERSION,
            seq,
            at: format!("2026-11-26T10:00:{seq:02}Z"),
            event,
        }
    }

    #[test]
    fn baseline_records_are_kept_apart_from_the_rollout() {
        let records = vec![record(
            1,
            Event::BaselineRecorded {
                tenant: "t1".into(),
                versions: vec![1, 2],
                tools: vec!["drizzle: 2 migrations".into()],
            },
        )];
        let state = JournalState::replay(&records);
        assert_eq!(
            state.baselined.get("t1"),
            Some(&(vec![1, 2], "2026-11-26T10:00:01Z".to_string()))
        );
        assert!(state.baseline_unconfirmed.is_empty());
        assert_eq!(state.tenant_status("t1"), TenantStatus::NotStarted);
        assert_eq!((state.plan_id.as_deref(), state.runs), (None, 0));
    }

    #[test]
    fn a_baseline_start_without_its_record_stays_unconfirmed() {
        let started = |seq, tenant: &str| {
            record(
                seq,
                Event::BaselineStarted {
                    tenant: tenant.into(),
                    versions: vec![1, 2],
                },
            )
        };
        let records = vec![
            started(1, "t1"),
            started(2, "t2"),
            record(
                3,
                Event::BaselineRecorded {
                    tenant: "t1".into(),
                    versions: vec![1, 2],
                    tools: Vec::new(),
                },
            ),
        ];
        let state = JournalState::replay(&records);
        assert_eq!(
            state.baseline_unconfirmed,
            BTreeMap::from([("t2".to_string(), vec![1, 2])])
        );
        assert_eq!(
            state.baselined.keys().collect::<Vec<_>>(),
            [&"t1".to_string()]
        );
    }

    fn tenant_event_sequence() -> Vec<Record> {
        vec![
            record(
                1,
                Event::RunStarted {
                    plan_id: "p1".into(),
                    run_id: "r1".into(),
                    pid: 1,
                    tool_version: "0".into(),
                },
            ),
            record(
                2,
                Event::WaveStarted {
                    wave: "canary".into(),
                },
            ),
            record(
                3,
                Event::TenantProbed {
                    tenant: "t1".into(),
                    wave: "canary".into(),
                    current_version: None,
                    pending: vec![1, 2],
                },
            ),
            record(
                4,
                Event::BranchCreated {
                    tenant: "t1".into(),
                    wave: "canary".into(),
                    purpose: "validate".into(),
                    branch_id: "br-1".into(),
                    branch_name: "sf-validate".into(),
                    parent_branch_id: Some("br-main".into()),
                    parent_lsn: Some("0/10".into()),
                    expires_at: None,
                },
            ),
            record(
                5,
                Event::Validated {
                    tenant: "t1".into(),
                    wave: "canary".into(),
                    versions: vec![1, 2],
                    lock_holds: Vec::new(),
                },
            ),
            record(
                6,
                Event::BranchDeleted {
                    tenant: "t1".into(),
                    branch_id: "br-1".into(),
                },
            ),
            record(
                7,
                Event::RestorePointRecorded {
                    tenant: "t1".into(),
                    wave: "canary".into(),
                    point: RestorePoint::BranchPoint {
                        main_branch_id: "br-main".into(),
                        lsn: "0/10".into(),
                        timestamp: None,
                    },
                },
            ),
            record(
                8,
                Event::ApplyStarted {
                    tenant: "t1".into(),
                    wave: "canary".into(),
                    versions: vec![1, 2],
                },
            ),
        ]
    }

    #[test]
    fn a_tenant_mid_apply_is_in_flight_with_its_restore_point() {
        let records = tenant_event_sequence();
        let state = JournalState::replay(&records);
        let tenant = state.tenant("t1").expect("t1 replayed");
        assert_eq!(tenant.status, TenantStatus::InFlight);
        assert_eq!(tenant.phase, Some(Phase::Apply));
        assert!(tenant.open_branches.is_empty());
        assert_eq!(tenant.validated, Some(vec![1, 2]));
        assert!(tenant.restore_point.is_some());
        assert_eq!(state.wave_status("canary"), WaveStatus::Running);
        assert_eq!(state.last_seq, 8);
    }

    #[test]
    fn applied_is_finished_and_rollback_clears_the_restore_point() {
        let mut records = tenant_event_sequence();
        records.push(record(
            9,
            Event::Applied {
                tenant: "t1".into(),
                wave: "canary".into(),
                versions: vec![1, 2],
                lock_retries: 0,
            },
        ));
        let state = JournalState::replay(&records);
        assert!(state.tenant_status("t1").is_finished());
        assert_eq!(
            state.tenant("t1").map(|t| t.applied_versions.clone()),
            Some(vec![1, 2])
        );
        records.push(record(
            10,
            Event::RolledBack {
                tenant: "t1".into(),
                preserved_branch: "main_rollback".into(),
                restored_to: RestorePoint::BranchPoint {
                    main_branch_id: "br-main".into(),
                    lsn: "0/10".into(),
                    timestamp: None,
                },
            },
        ));
        let state = JournalState::replay(&records);
        let tenant = state.tenant("t1").expect("t1");
        assert_eq!(tenant.status, TenantStatus::RolledBack);
        assert!(
            !tenant.status.is_finished(),
            "a rolled-back tenant can be rolled forward again"
        );
        assert!(tenant.restore_point.is_none());
    }

    #[test]
    fn a_failure_after_main_changed_keeps_the_restore_point() {
        let mut records = tenant_event_sequence();
        records.push(record(
            9,
            Event::Failed {
                tenant: "t1".into(),
                wave: "canary".into(),
                phase: Phase::Apply,
                error: DbFailure::new(Some("55P03"), "lock timeout"),
                applied_on_main: vec![1],
            },
        ));
        let state = JournalState::replay(&records);
        let tenant = state.tenant("t1").expect("t1");
        assert_eq!(tenant.status, TenantStatus::Failed);
        assert!(tenant.restore_point.is_some());
        assert_eq!(tenant.applied_versions, vec![1]);
    }

    #[test]
    fn a_requested_branch_is_remembered_until_created_or_abandoned() {
        let mut records: Vec<Record> = tenant_event_sequence().into_iter().take(3).collect();
        records.push(record(
            4,
            Event::BranchRequested {
                tenant: "t1".into(),
                wave: "canary".into(),
                purpose: "validate".into(),
                branch_name: "sf-validate".into(),
            },
        ));
        let state = JournalState::replay(&records);
        assert_eq!(
            state.tenant("t1").map(|t| t.requested_branches.len()),
            Some(1)
        );
        records.push(record(
            5,
            Event::BranchAbandoned {
                tenant: "t1".into(),
                branch_name: "sf-validate".into(),
            },
        ));
        let state = JournalState::replay(&records);
        assert_eq!(
            state.tenant("t1").map(|t| t.requested_branches.len()),
            Some(0)
        );
    }

    #[test]
    fn what_every_attempt_committed_accumulates_until_a_rollback() {
        let mut records = tenant_event_sequence();
        let failed = |seq, applied_on_main: Vec<i32>| {
            record(
                seq,
                Event::Failed {
                    tenant: "t1".into(),
                    wave: "canary".into(),
                    phase: Phase::Apply,
                    error: DbFailure::new(Some("23514"), "check violated"),
                    applied_on_main,
                },
            )
        };
        records.push(failed(9, vec![1]));
        records.push(failed(10, Vec::new()));
        let state = JournalState::replay(&records);
        let tenant = state.tenant("t1").expect("t1");
        assert_eq!(tenant.applied_versions, vec![1]);
        assert_eq!(
            tenant.failure.as_ref().map(|f| f.applied_on_main.clone()),
            Some(Vec::new())
        );
        records.push(record(
            11,
            Event::ApplyRecovered {
                tenant: "t1".into(),
                wave: "canary".into(),
                versions: vec![2],
            },
        ));
        let state = JournalState::replay(&records);
        let tenant = state.tenant("t1").expect("t1");
        assert_eq!(tenant.applied_versions, vec![1, 2]);
        assert_eq!(tenant.status, TenantStatus::InFlight);
    }

    #[test]
    fn the_bake_rides_on_wave_finished_and_old_bake_started_still_replays() {
        let records = vec![
            record(
                1,
                Event::WaveFinished {
                    wave: "canary".into(),
                    halted: false,
                    bake_until: Some("2026-11-26T11:00:00Z".into()),
                },
            ),
            record(
                2,
                Event::WaveFinished {
                    wave: "early".into(),
                    halted: false,
                    bake_until: None,
                },
            ),
            record(
                3,
                Event::BakeStarted {
                    wave: "early".into(),
                    until: "2026-11-26T12:00:00Z".into(),
                },
            ),
        ];
        let state = JournalState::replay(&records);
        assert_eq!(
            state.waves["canary"].bake_until.as_deref(),
            Some("2026-11-26T11:00:00Z")
        );
        assert_eq!(
            state.waves["early"].bake_until.as_deref(),
            Some("2026-11-26T12:00:00Z")
        );
        // An old record without the field reads as no bake.
        let old: Record = serde_json::from_str(
            r#"{"v":1,"seq":4,"at":"x","event":"wave_finished","wave":"w","halted":false}"#,
        )
        .expect("an old wave_finished");
        assert!(matches!(
            old.event,
            Event::WaveFinished {
                bake_until: None,
                ..
            }
        ));
    }

    #[test]
    fn an_open_branch_is_remembered_for_cleanup() {
        let records: Vec<Record> = tenant_event_sequence().into_iter().take(4).collect();
        let state = JournalState::replay(&records);
        assert_eq!(state.tenant("t1").map(|t| t.open_branches.len()), Some(1));
    }
}

//! Pure replay: journal records in, per-tenant and per-wave state out. No I/O.
//!
//! **Invariant:** replaying the same records always yields the same state, and a tenant's
//! state only depends on its own records (plus its wave's records for waves).

use std::collections::{BTreeMap, HashMap};

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

impl TenantState {
    /// Versions this plan committed on main, over every attempt, until a rollback.
    fn add_applied(&mut self, versions: &[i32]) {
        for version in versions {
            if !self.applied_versions.contains(version) {
                self.applied_versions.push(*version);
            }
        }
    }

    fn new(wave: &str) -> TenantState {
        TenantState {
            wave: wave.to_string(),
            status: TenantStatus::NotStarted,
            phase: None,
            current_version: None,
            pending: Vec::new(),
            validated: None,
            lock_holds: Vec::new(),
            apply_started: None,
            apply_started_at: None,
            restore_point: None,
            restore_point_at: None,
            version_at_restore_point: None,
            open_branches: BTreeMap::new(),
            requested_branches: BTreeMap::new(),
            applied_versions: Vec::new(),
            failure: None,
            diverged_reason: None,
            preserved_branch: None,
            rollback_error: None,
            updated_at: String::new(),
        }
    }
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

/// The replayed journal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JournalState {
    pub plan_id: Option<String>,
    pub runs: u32,
    pub last_seq: u64,
    /// Boxed, and the rare parts of a tenant's state boxed again, so a fleet of finished
    /// tenants costs a few hundred bytes each: peak memory must stay flat as the fleet grows.
    pub tenants: HashMap<String, Box<TenantState>>,
    pub waves: HashMap<String, WaveState>,
    pub last_run_outcome: Option<String>,
    /// Tenants `baseline` recorded a history for: tenant -> (versions, when). Kept apart from
    /// [`TenantState`]: adopting a tenant is not a step of the rollout.
    pub baselined: BTreeMap<String, (Vec<i32>, String)>,
}

impl JournalState {
    pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> JournalState {
        let mut state = JournalState::default();
        for record in records {
            state.apply(record);
        }
        state
    }

    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantState> {
        self.tenants.get(tenant_id).map(|state| &**state)
    }

    pub fn tenant_status(&self, tenant_id: &str) -> TenantStatus {
        self.tenants
            .get(tenant_id)
            .map_or(TenantStatus::NotStarted, |tenant| tenant.status)
    }

    pub fn wave_status(&self, wave: &str) -> WaveStatus {
        self.waves
            .get(wave)
            .map_or(WaveStatus::NotStarted, |state| state.status)
    }

    /// Fold one record into the state.
    pub fn apply(&mut self, record: &Record) {
        self.last_seq = self.last_seq.max(record.seq);
        let at = record.at.clone();
        match &record.event {
            Event::RunStarted { plan_id, .. } => {
                self.plan_id = Some(plan_id.clone());
                self.runs += 1;
                // The outcome belongs to the run that finished; a new run has none yet.
                self.last_run_outcome = None;
            }
            Event::RunFinished { outcome, .. } => self.last_run_outcome = Some(outcome.clone()),
            Event::WaveStarted { wave } => {
                let wave_state = self.wave_mut(wave);
                wave_state.status = WaveStatus::Running;
                wave_state.approval_needed = false;
                if wave_state.started_at.is_none() {
                    wave_state.started_at = Some(at.clone());
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
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::InFlight;
                state.phase = Some(Phase::Probe);
                state.current_version = *current_version;
                state.pending = pending.clone();
                state.failure = None;
                state.diverged_reason = None;
            }
            Event::UpToDate { tenant, wave } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::UpToDate;
                state.phase = None;
                state.pending.clear();
            }
            Event::SkippedRecorded { tenant, wave, .. } => {
                // The recorded version is a claim, so it does not become `current_version`.
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::SkippedRecorded;
                state.phase = None;
                state.pending.clear();
            }
            Event::Diverged {
                tenant,
                wave,
                reason,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::Diverged;
                state.phase = None;
                state.diverged_reason = Some(reason.clone());
            }
            Event::BranchRequested {
                tenant,
                wave,
                purpose,
                branch_name,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::InFlight;
                state
                    .requested_branches
                    .insert(branch_name.clone(), purpose.clone());
            }
            Event::BranchAbandoned {
                tenant,
                branch_name,
            } => {
                if let Some(state) = self.tenants.get_mut(tenant.as_str()) {
                    state.requested_branches.remove(branch_name);
                    state.updated_at = at;
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
                let state = self.tenant_mut(tenant, wave, &at);
                state.requested_branches.remove(branch_name);
                state.status = TenantStatus::InFlight;
                state.phase = Some(if purpose == "validate" {
                    Phase::Validate
                } else {
                    Phase::Branch
                });
                state
                    .open_branches
                    .insert(branch_id.clone(), (branch_name.clone(), purpose.clone()));
            }
            Event::BranchDeleted { tenant, branch_id }
            | Event::BranchDeleteRequested { tenant, branch_id } => {
                if let Some(state) = self.tenants.get_mut(tenant.as_str()) {
                    state.open_branches.remove(branch_id);
                    state.updated_at = at;
                }
            }
            Event::Validated {
                tenant,
                wave,
                versions,
                lock_holds,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.validated = Some(versions.clone());
                state.lock_holds = lock_holds.clone();
            }
            Event::RestorePointRecorded {
                tenant,
                wave,
                point,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.restore_point = Some(Box::new(point.clone()));
                state.restore_point_at = Some(at.clone());
                state.version_at_restore_point = state.current_version;
            }
            Event::ApplyStarted {
                tenant,
                wave,
                versions,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::InFlight;
                state.phase = Some(Phase::Apply);
                state.apply_started = Some(versions.clone());
                state.apply_started_at = Some(at.clone());
            }
            Event::Applied {
                tenant,
                wave,
                versions,
                ..
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::Applied;
                state.phase = None;
                state.apply_started = None;
                state.apply_started_at = None;
                state.pending.clear();
                state.add_applied(versions);
            }
            Event::ApplyRecovered {
                tenant,
                wave,
                versions,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::InFlight;
                state.add_applied(versions);
            }
            Event::Failed {
                tenant,
                wave,
                phase,
                error,
                applied_on_main,
            } => {
                let state = self.tenant_mut(tenant, wave, &at);
                state.status = TenantStatus::Failed;
                state.phase = None;
                state.apply_started = None;
                state.apply_started_at = None;
                state.validated = None;
                state.add_applied(applied_on_main);
                state.failure = Some(Box::new(TenantFailure {
                    phase: *phase,
                    error: error.clone(),
                    applied_on_main: applied_on_main.clone(),
                    at: at.clone(),
                }));
            }
            Event::RollbackStarted { tenant, .. } => {
                if let Some(state) = self.tenants.get_mut(tenant.as_str()) {
                    state.phase = Some(Phase::Rollback);
                    state.updated_at = at;
                }
            }
            Event::RolledBack {
                tenant,
                preserved_branch,
                ..
            } => {
                if let Some(state) = self.tenants.get_mut(tenant.as_str()) {
                    state.status = TenantStatus::RolledBack;
                    state.phase = None;
                    state.preserved_branch = Some(preserved_branch.clone());
                    state.restore_point = None;
                    state.restore_point_at = None;
                    state.validated = None;
                    state.apply_started = None;
                    state.apply_started_at = None;
                    state.applied_versions.clear();
                    state.rollback_error = None;
                    state.updated_at = at;
                }
            }
            Event::BaselineRecorded {
                tenant, versions, ..
            } => {
                self.baselined
                    .insert(tenant.clone(), (versions.clone(), at.clone()));
            }
            Event::RollbackFailed { tenant, error } => {
                if let Some(state) = self.tenants.get_mut(tenant.as_str()) {
                    state.status = TenantStatus::RollbackFailed;
                    state.phase = None;
                    state.rollback_error = Some(error.clone());
                    state.updated_at = at;
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
                wave_state.checks_passed_at = Some(at);
                wave_state.checks_passed_stage = Some(stage.clone());
            }
            Event::ChecksFailed { wave, failures, .. } => {
                let wave_state = self.wave_mut(wave);
                wave_state.status = WaveStatus::Halted;
                wave_state.check_failures = failures.clone();
            }
            Event::ApprovalNeeded { wave } => self.wave_mut(wave).approval_needed = true,
            Event::Approved { wave, by, note } => {
                let wave_state = self.wave_mut(wave);
                wave_state.approval_needed = false;
                wave_state.approved = Some(Approval {
                    by: by.clone(),
                    note: note.clone(),
                    at,
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
            checks_passed_at: None,
            checks_passed_stage: None,
            approval_needed: false,
            approved: None,
        })
    }

    fn tenant_mut(&mut self, tenant: &str, wave: &str, at: &str) -> &mut TenantState {
        let state = self
            .tenants
            .entry(tenant.to_string())
            .or_insert_with(|| Box::new(TenantState::new(wave)));
        state.wave = wave.to_string();
        state.updated_at = at.to_string();
        state
    }
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
        assert_eq!(state.tenant_status("t1"), TenantStatus::NotStarted);
        assert_eq!((state.plan_id.as_deref(), state.runs), (None, 0));
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

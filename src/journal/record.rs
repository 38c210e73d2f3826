//! Journal records. Every field here is part of a file format: add, never repurpose.

use serde::{Deserialize, Serialize};

use crate::pg::DbFailure;

/// Current record format version.
pub const RECORD_VERSION: u32 = 1;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// Strictly increasing within a journal; lets a reader spot lost or reordered lines.
    pub seq: u64,
    /// RFC 3339 UTC time the record was written.
    pub at: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Which step of a tenant's pipeline something happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading the tenant's history on main (API lookup, connect, compare).
    Probe,
    /// Creating or deleting a Neon branch (validation or backup).
    Branch,
    /// Applying the pending migrations on the validation branch, and the verify SQL.
    Validate,
    /// Applying to main.
    Apply,
    /// Restoring main to its restore point.
    Rollback,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Probe => "probe",
            Phase::Branch => "branch",
            Phase::Validate => "validate",
            Phase::Apply => "apply",
            Phase::Rollback => "rollback",
        }
    }
}

/// The point a rollback restores a tenant's main branch to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestorePoint {
    /// main's own history at the validation branch's branch point (Neon `parent_lsn`).
    BranchPoint {
        main_branch_id: String,
        lsn: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<String>,
    },
    /// The head of a backup branch created from main just before applying.
    BackupBranch {
        main_branch_id: String,
        backup_branch_id: String,
        backup_branch_name: String,
    },
}

impl RestorePoint {
    pub fn main_branch_id(&self) -> &str {
        match self {
            RestorePoint::BranchPoint { main_branch_id, .. } => main_branch_id,
            RestorePoint::BackupBranch { main_branch_id, .. } => main_branch_id,
        }
    }
}

/// What happened. Tenant events carry the tenant (Neon project id) and its wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        plan_id: String,
        run_id: String,
        pid: u32,
        tool_version: String,
    },
    RunFinished {
        run_id: String,
        outcome: String,
    },
    WaveStarted {
        wave: String,
    },
    /// The wave ended; `halted` when its failure budget was spent.
    WaveFinished {
        wave: String,
        halted: bool,
        /// The next wave may not start before this time (RFC 3339). Carried by the record that
        /// ends the wave, so a crash cannot leave a finished wave without its bake (issue 19).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bake_until: Option<String>,
    },
    /// The next wave may not start before `until` (RFC 3339). Written by earlier versions after
    /// `wave_finished`; replayed, no longer written.
    BakeStarted {
        wave: String,
        until: String,
    },
    TenantProbed {
        tenant: String,
        wave: String,
        current_version: Option<i32>,
        pending: Vec<i32>,
    },
    UpToDate {
        tenant: String,
        wave: String,
        /// Versions on main newer than every one of the plan's: a later release reached the
        /// tenant, which reports then call ahead (as `drift` does). Empty (and not written) when
        /// main is exactly at the plan, so older journals read the same.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ahead: Vec<i32>,
    },
    /// `apply --skip-recorded` did not connect: a record (`source`: the fleet source's
    /// `schema_version`, `postgres:<VARIABLE>` or `file:<path>`, or `plan <id>` for an earlier
    /// release's journal) says main has `recorded_version`, which covers the
    /// plan. Not verified against main: `drift` or `status --live` checks it.
    SkippedRecorded {
        tenant: String,
        wave: String,
        recorded_version: i32,
        source: String,
    },
    Diverged {
        tenant: String,
        wave: String,
        reason: String,
    },
    /// Written before the create call: if the process dies before `branch_created`, a resume
    /// finds the branch by this name and deletes it, so a crash cannot leak an unnamed branch.
    BranchRequested {
        tenant: String,
        wave: String,
        purpose: String,
        branch_name: String,
    },
    /// A requested branch that a resume found absent, or deleted.
    BranchAbandoned {
        tenant: String,
        branch_name: String,
    },
    BranchCreated {
        tenant: String,
        wave: String,
        purpose: String,
        branch_id: String,
        branch_name: String,
        parent_branch_id: Option<String>,
        parent_lsn: Option<String>,
        expires_at: Option<String>,
    },
    BranchDeleted {
        tenant: String,
        branch_id: String,
    },
    /// Neon accepted the delete of a throwaway branch, whose operations were not waited for:
    /// the branch is no longer ours to clean up (its expiry and `gc` are the backstop).
    BranchDeleteRequested {
        tenant: String,
        branch_id: String,
    },
    Validated {
        tenant: String,
        wave: String,
        versions: Vec<i32>,
        /// The write-blocking locks the versions held on existing tables of the branch, and
        /// for how long, longest first (issue 15).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lock_holds: Vec<crate::pg::lock_footprint::LockHold>,
    },
    RestorePointRecorded {
        tenant: String,
        wave: String,
        point: RestorePoint,
    },
    ApplyStarted {
        tenant: String,
        wave: String,
        versions: Vec<i32>,
    },
    Applied {
        tenant: String,
        wave: String,
        versions: Vec<i32>,
        lock_retries: u32,
    },
    /// The re-probe of a tenant whose apply started and never finished found these versions
    /// committed on main after `apply_started`: this plan applied them (the run died, or the
    /// COMMIT's answer was lost, before `applied` was written). The apply continues.
    ApplyRecovered {
        tenant: String,
        wave: String,
        versions: Vec<i32>,
    },
    Failed {
        tenant: String,
        wave: String,
        phase: Phase,
        error: DbFailure,
        /// Versions that committed on main before the failure.
        #[serde(default)]
        applied_on_main: Vec<i32>,
    },
    RollbackStarted {
        tenant: String,
        preserve_under_name: String,
    },
    RolledBack {
        tenant: String,
        preserved_branch: String,
        restored_to: RestorePoint,
    },
    RollbackFailed {
        tenant: String,
        error: String,
    },
    /// `baseline --yes` is about to write the history rows of `versions` into a tenant (an
    /// intent, before its transaction). Until a `baseline_recorded` follows, the outcome is
    /// unknown: a crash between the commit and that record leaves the rows unjournaled, and
    /// the next `baseline --yes` journals them when it finds exactly these rows.
    BaselineStarted {
        tenant: String,
        versions: Vec<i32>,
    },
    /// `baseline --yes` wrote the history rows of `versions` into a tenant's empty history
    /// table: its schema equalled the reference after the highest of them. Written after the
    /// commit (a fact); the tenant's history table stays the truth.
    BaselineRecorded {
        tenant: String,
        versions: Vec<i32>,
        /// Other tools' history tables found on the tenant (`drizzle: 12 migrations`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<String>,
    },
    /// Every check of the wave passed at `stage` (`after_wave`, `bake_end`, `retry`); the next
    /// wave's gate does not run them again for a bake that ended before this record.
    ChecksPassed {
        wave: String,
        stage: String,
        checks: Vec<String>,
    },
    /// Checks of the wave failed at `stage`: the wave is halted (like a spent budget) until
    /// `apply --retry-checks` passes them, or the wave is rolled back.
    ChecksFailed {
        wave: String,
        stage: String,
        failures: Vec<CheckFailure>,
    },
    /// `apply` stopped before this wave: it waits for `schemafleet approve`.
    ApprovalNeeded {
        wave: String,
    },
    /// The rollout was aborted (`schemafleet abort PLAN --reason`): no tenant starts until
    /// `resume` lifts it. Written by `abort` itself when it can (a state store, or a journal
    /// file no `apply` holds), else by the `apply` that stops on it.
    Aborted {
        by: String,
        reason: String,
        /// When the abort was asked, when that was before this record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_at: Option<String>,
    },
    /// A person approved the wave (`schemafleet approve PLAN WAVE`).
    Approved {
        wave: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

/// One failed check of a wave, as `status` and the reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckFailure {
    pub check: String,
    /// `sql`, `command` or `http`.
    pub kind: String,
    /// What the check said (its output, the answer, or which tenants failed it), bounded and
    /// with secrets redacted.
    pub output: String,
    /// The tenants (project ids) that failed a `sql` check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tenants: Vec<String>,
    /// How many tenants a `sql` check read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<usize>,
}

impl Event {
    /// The tenant this event is about, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Event::TenantProbed { tenant, .. }
            | Event::UpToDate { tenant, .. }
            | Event::SkippedRecorded { tenant, .. }
            | Event::Diverged { tenant, .. }
            | Event::BranchRequested { tenant, .. }
            | Event::BranchAbandoned { tenant, .. }
            | Event::BranchCreated { tenant, .. }
            | Event::BranchDeleted { tenant, .. }
            | Event::BranchDeleteRequested { tenant, .. }
            | Event::Validated { tenant, .. }
            | Event::RestorePointRecorded { tenant, .. }
            | Event::ApplyStarted { tenant, .. }
            | Event::Applied { tenant, .. }
            | Event::ApplyRecovered { tenant, .. }
            | Event::Failed { tenant, .. }
            | Event::RollbackStarted { tenant, .. }
            | Event::RolledBack { tenant, .. }
            | Event::RollbackFailed { tenant, .. }
            | Event::BaselineStarted { tenant, .. }
            | Event::BaselineRecorded { tenant, .. } => Some(tenant),
            Event::RunStarted { .. }
            | Event::RunFinished { .. }
            | Event::WaveStarted { .. }
            | Event::WaveFinished { .. }
            | Event::BakeStarted { .. }
            | Event::ChecksPassed { .. }
            | Event::ChecksFailed { .. }
            | Event::ApprovalNeeded { .. }
            | Event::Aborted { .. }
            | Event::Approved { .. } => None,
        }
    }
}

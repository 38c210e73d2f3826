//! Checkpoint records (issue 23): the replayed state written into the journal itself, so a
//! later replay starts from the last checkpoint instead of the first record.
//!
//! A checkpoint is a run of lines appended in one write: `checkpoint` parts (record format
//! [`CHECKPOINT_VERSION`]), each at most [`PART_BYTES`] plus one row, then one
//! `checkpoint_end` naming where the first part starts (byte offset and line). Part 1 carries the
//! journal-wide state (plan, runs, waves, the version lists rows refer to); every part carries
//! its column names and rows of tenants, one array per tenant:
//!
//! ```text
//! {"v":2,"seq":901,"at":"…","event":"checkpoint","covers":900,"part":1,"state":{…},"columns":["tenant","wave",…],"rows":[["p-1","canary","applied",null,…],…]}
//! {"v":2,"seq":903,"at":"…","event":"checkpoint_end","covers":900,"parts":2,"start":181234,"line":901}
//! ```
//!
//! **Invariant:** a checkpoint is exactly the replay of the lines before it (`covers` is the seq
//! of the last of them); a reader that skips it and replays those lines gets the same state. An
//! incomplete checkpoint (no end: a crash mid-write) is ignored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use super::compact::{NO_SET, Packed, TenantTable};
use super::record::{CheckFailure, Phase, RestorePoint};
use super::state::{
    Abort, Approval, JournalState, TenantFailure, TenantStatus, WaveState, WaveStatus,
};
use crate::pg::DbFailure;
use crate::pg::lock_footprint::LockHold;

/// Record format of checkpoint lines (event records stay at [`super::record::RECORD_VERSION`]).
pub const CHECKPOINT_VERSION: u32 = 2;

/// A part is closed once it holds this much (a row may take it past; a line stays far under
/// [`super::file::MAX_LINE_BYTES`]).
pub const PART_BYTES: usize = 256 * 1024;

/// What every checkpoint line's event is, as it appears in the line.
pub const PART_MARKER: &[u8] = br#""event":"checkpoint""#;
pub const END_MARKER: &[u8] = br#""event":"checkpoint_end""#;

/// The columns of a row, in order: a checkpoint written with other columns is refused.
pub const COLUMNS: [&str; 15] = [
    "tenant",
    "wave",
    "status",
    "phase",
    "current_version",
    "pending",
    "validated",
    "apply_started",
    "applied_versions",
    "version_at_restore_point",
    "branch_point",
    "restore_point_at",
    "apply_started_at",
    "updated_at",
    "rare",
];

/// The first fields of any checkpoint line: enough to skip one in a forward replay.
#[derive(Debug, Deserialize)]
pub struct Head {
    pub v: u32,
    pub seq: u64,
    pub event: String,
}

/// The last line of a complete checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct End {
    pub v: u32,
    pub seq: u64,
    pub at: String,
    pub event: String,
    /// Seq of the last record the checkpoint stands for.
    pub covers: u64,
    pub parts: u32,
    /// Byte offset and line number of part 1.
    pub start: u64,
    pub line: u64,
}

#[derive(Debug, Deserialize)]
pub struct Part<'a> {
    pub v: u32,
    pub seq: u64,
    pub covers: u64,
    pub part: u32,
    #[serde(default)]
    pub state: Option<Header>,
    #[serde(borrow)]
    pub columns: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pub rows: Vec<Row<'a>>,
}

/// Journal-wide state, in part 1.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub plan_id: Option<String>,
    pub runs: u32,
    pub last_run_outcome: Option<String>,
    pub open_run_pid: Option<u32>,
    pub last_at: Option<String>,
    pub records: u64,
    /// Rows in all parts (lets a reader size its table once).
    #[serde(default)]
    pub tenants: usize,
    pub waves: BTreeMap<String, WaveRow>,
    /// The version lists rows name by index.
    pub version_sets: Vec<Vec<i32>>,
    /// `baseline`'s records: tenant -> (versions, when), kept apart from the rows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baselined: BTreeMap<String, (Vec<i32>, String)>,
    /// The last `aborted` record (absent in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_abort: Option<AbortRow>,
    /// `baseline_started` records without their `baseline_recorded`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baseline_unconfirmed: BTreeMap<String, Vec<i32>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AbortRow {
    pub by: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WaveRow {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The gates' state: failed checks, when they last passed, approvals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check_failures: Vec<CheckFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_failed_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_passed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_passed_stage: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval_needed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<ApprovalRow>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApprovalRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub at: String,
}

/// A packed branch point: main's branch id, LSN, timestamp.
type BranchPointRow<'a> = (Cow<'a, str>, Cow<'a, str>, Option<Cow<'a, str>>);

/// One tenant, in [`COLUMNS`] order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row<'a>(
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    Option<Phase>,
    Option<i32>,
    u32,
    Option<u32>,
    Option<u32>,
    u32,
    Option<i32>,
    #[serde(borrow)] Option<BranchPointRow<'a>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    Option<Box<RareRow>>,
);

/// A tenant's rare parts, only what it has.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RareRow {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    open_branches: BTreeMap<String, (String, String)>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    requested_branches: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<FailureRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    diverged_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preserved_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restore_point: Option<RestorePoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lock_holds: Vec<LockHold>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FailureRow {
    phase: Phase,
    error: DbFailure,
    applied_on_main: Vec<i32>,
    at: String,
}

/// Write a checkpoint of `state` to `out`: its lines numbered from seq `first_seq`, starting at
/// byte `start` and line `line` of the journal. Returns the number of lines written.
pub fn write(
    out: &mut impl Write,
    state: &JournalState,
    first_seq: u64,
    at: &str,
    start: u64,
    line: u64,
) -> io::Result<u64> {
    let table = &state.tenants;
    let covers = state.last_seq;
    let total = table.len() as u32;
    let columns = serde_json::to_string(&COLUMNS)?;
    let at_json = serde_json::to_string(at)?;
    let mut part_line = Vec::with_capacity(PART_BYTES + 64 * 1024);
    let mut seq = first_seq;
    let mut part = 0u32;
    let mut idx = 0u32;
    loop {
        part += 1;
        part_line.clear();
        part_line.extend_from_slice(
            format!(
                r#"{{"v":{CHECKPOINT_VERSION},"seq":{seq},"at":{at_json},"event":"checkpoint","covers":{covers},"part":{part},"#
            )
            .as_bytes(),
        );
        if part == 1 {
            part_line.extend_from_slice(br#""state":"#);
            serde_json::to_writer(&mut part_line, &header(state))?;
            part_line.push(b',');
        }
        part_line.extend_from_slice(br#""columns":"#);
        part_line.extend_from_slice(columns.as_bytes());
        part_line.extend_from_slice(br#","rows":["#);
        let mut first = true;
        while idx < total && part_line.len() < PART_BYTES {
            if !first {
                part_line.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut part_line, &row(table, idx))?;
            idx += 1;
        }
        part_line.extend_from_slice(b"]}\n");
        out.write_all(&part_line)?;
        seq += 1;
        if idx >= total {
            break;
        }
    }
    let end = End {
        v: CHECKPOINT_VERSION,
        seq,
        at: at.to_string(),
        event: "checkpoint_end".into(),
        covers,
        parts: part,
        start,
        line,
    };
    serde_json::to_writer(&mut *out, &end)?;
    out.write_all(b"\n")?;
    Ok(u64::from(part) + 1)
}

fn header(state: &JournalState) -> Header {
    Header {
        plan_id: state.plan_id.clone(),
        runs: state.runs,
        last_run_outcome: state.last_run_outcome.clone(),
        open_run_pid: state.open_run_pid,
        last_at: state.last_at.clone(),
        records: state.records,
        tenants: state.tenants.len(),
        waves: state
            .waves
            .iter()
            .map(|(name, wave)| {
                (
                    name.clone(),
                    WaveRow {
                        status: wave.status.as_str().to_string(),
                        bake_until: wave.bake_until.clone(),
                        started_at: wave.started_at.clone(),
                        check_failures: wave.check_failures.clone(),
                        checks_failed_seq: wave.checks_failed_seq,
                        checks_passed_at: wave.checks_passed_at.clone(),
                        checks_passed_stage: wave.checks_passed_stage.clone(),
                        approval_needed: wave.approval_needed,
                        approved: wave.approved.as_ref().map(|approval| ApprovalRow {
                            by: approval.by.clone(),
                            note: approval.note.clone(),
                            at: approval.at.clone(),
                        }),
                    },
                )
            })
            .collect(),
        version_sets: state.tenants.version_sets(),
        baselined: state.baselined.clone(),
        last_abort: state.last_abort.as_ref().map(|abort| AbortRow {
            by: abort.by.clone(),
            reason: abort.reason.clone(),
            at: abort.at.clone(),
        }),
        baseline_unconfirmed: state.baseline_unconfirmed.clone(),
    }
}

fn row(table: &TenantTable, idx: u32) -> Row<'_> {
    let slot = table.slot(idx);
    let text = |packed: Packed| table.stamp_text(packed).map(Cow::Owned);
    let set = |id: u32| (id != NO_SET).then_some(id);
    let branch_point = table.branch_point(idx).map(|(branch, lsn, timestamp)| {
        (
            Cow::Borrowed(branch),
            Cow::Owned(lsn),
            timestamp.map(Cow::Owned),
        )
    });
    let rare = slot.rare.as_deref().map(|rare| {
        Box::new(RareRow {
            open_branches: rare.open_branches.clone(),
            requested_branches: rare.requested_branches.clone(),
            failure: rare.failure.as_deref().map(|failure| FailureRow {
                phase: failure.phase,
                error: failure.error.clone(),
                applied_on_main: failure.applied_on_main.clone(),
                at: failure.at.clone(),
            }),
            diverged_reason: rare.diverged_reason.clone(),
            preserved_branch: rare.preserved_branch.clone(),
            rollback_error: rare.rollback_error.clone(),
            restore_point: rare.restore_point.as_deref().cloned(),
            lock_holds: rare.lock_holds.clone(),
        })
    });
    Row(
        Cow::Borrowed(table.id(idx)),
        Cow::Borrowed(table.wave_name(slot.wave)),
        Cow::Borrowed(slot.status.as_str()),
        slot.phase,
        slot.current_version,
        slot.pending,
        set(slot.validated),
        set(slot.apply_started),
        slot.applied_versions,
        slot.version_at_restore_point,
        branch_point,
        text(slot.restore_point_at),
        text(slot.apply_started_at),
        text(slot.updated_at),
        rare,
    )
}

/// Builds a state from a checkpoint's parts, in order.
#[derive(Default)]
pub struct Loader {
    /// Header's version-set index -> the table's.
    sets: Vec<u32>,
    pub covers: u64,
    pub parts: u32,
    pub last_seq: u64,
}

impl Loader {
    /// Fold one part into `state`; Err says why the checkpoint cannot be used.
    pub fn part(&mut self, state: &mut JournalState, part: Part<'_>) -> Result<(), String> {
        if part.v != CHECKPOINT_VERSION {
            return Err(format!("checkpoint format v{} is not supported", part.v));
        }
        if part.part != self.parts + 1 || (self.parts > 0 && part.covers != self.covers) {
            return Err(format!("checkpoint part {} is out of order", part.part));
        }
        if part.columns.len() != COLUMNS.len()
            || part
                .columns
                .iter()
                .zip(COLUMNS)
                .any(|(found, want)| found != want)
        {
            return Err("checkpoint columns are not the ones this version reads".into());
        }
        if part.part == 1 {
            let header = part.state.ok_or("checkpoint part 1 has no state")?;
            self.covers = part.covers;
            state.plan_id = header.plan_id;
            state.runs = header.runs;
            state.last_run_outcome = header.last_run_outcome;
            state.open_run_pid = header.open_run_pid;
            state.last_at = header.last_at;
            state.records = header.records;
            state.baselined = header.baselined;
            state.last_abort = header.last_abort.map(|abort| Abort {
                by: abort.by,
                reason: abort.reason,
                at: abort.at,
            });
            state.baseline_unconfirmed = header.baseline_unconfirmed;
            state.tenants.reserve(header.tenants);
            for (name, wave) in header.waves {
                let status = wave_status(&wave.status)
                    .ok_or_else(|| format!("unknown wave status {}", wave.status))?;
                state.waves.insert(
                    name,
                    WaveState {
                        status,
                        bake_until: wave.bake_until,
                        started_at: wave.started_at,
                        check_failures: wave.check_failures,
                        checks_failed_seq: wave.checks_failed_seq,
                        checks_passed_at: wave.checks_passed_at,
                        checks_passed_stage: wave.checks_passed_stage,
                        approval_needed: wave.approval_needed,
                        approved: wave.approved.map(|approval| Approval {
                            by: approval.by,
                            note: approval.note,
                            at: approval.at,
                        }),
                    },
                );
            }
            self.sets = header
                .version_sets
                .iter()
                .map(|set| state.tenants.versions(set))
                .collect();
        }
        for row in part.rows {
            self.row(&mut state.tenants, row)?;
        }
        self.parts = part.part;
        self.last_seq = part.seq;
        state.last_seq = state.last_seq.max(part.seq);
        Ok(())
    }

    fn row(&self, table: &mut TenantTable, row: Row<'_>) -> Result<(), String> {
        let set = |id: u32| {
            self.sets.get(id as usize).copied().ok_or_else(|| {
                format!(
                    "tenant {}: version set {id} is not in the checkpoint",
                    row.0
                )
            })
        };
        let optional_set = |id: Option<u32>| id.map_or(Ok(NO_SET), set);
        let status = TenantStatus::parse(&row.2)
            .ok_or_else(|| format!("tenant {}: unknown status {}", row.0, row.2))?;
        let (pending, validated, apply_started, applied) = (
            set(row.5)?,
            optional_set(row.6)?,
            optional_set(row.7)?,
            set(row.8)?,
        );
        let idx = table.entry(&row.0, &row.1);
        let wave = table.wave_idx(&row.1);
        if let Some((branch, lsn, timestamp)) = &row.10 {
            table.set_branch_point(idx, branch, lsn, timestamp.as_deref());
        }
        let restore_point_at = row
            .11
            .as_deref()
            .map_or(Packed::default(), |t| table.stamp(t));
        let apply_started_at = row
            .12
            .as_deref()
            .map_or(Packed::default(), |t| table.stamp(t));
        let updated_at = row
            .13
            .as_deref()
            .map_or(Packed::default(), |t| table.stamp(t));
        if let Some(rare) = row.14 {
            let rare = *rare;
            if let Some(point) = &rare.restore_point {
                table.set_restore_point(idx, point);
            }
            let target = table.rare_mut(idx);
            target.open_branches = rare.open_branches;
            target.requested_branches = rare.requested_branches;
            target.failure = rare.failure.map(|failure| {
                Box::new(TenantFailure {
                    phase: failure.phase,
                    error: failure.error,
                    applied_on_main: failure.applied_on_main,
                    at: failure.at,
                })
            });
            target.diverged_reason = rare.diverged_reason;
            target.preserved_branch = rare.preserved_branch;
            target.rollback_error = rare.rollback_error;
            target.lock_holds = rare.lock_holds;
            table.tidy(idx);
        }
        let slot = table.slot_mut(idx);
        slot.wave = wave;
        slot.status = status;
        slot.phase = row.3;
        slot.current_version = row.4;
        slot.pending = pending;
        slot.validated = validated;
        slot.apply_started = apply_started;
        slot.applied_versions = applied;
        slot.version_at_restore_point = row.9;
        slot.restore_point_at = restore_point_at;
        slot.apply_started_at = apply_started_at;
        slot.updated_at = updated_at;
        Ok(())
    }
}

fn wave_status(text: &str) -> Option<WaveStatus> {
    [
        WaveStatus::NotStarted,
        WaveStatus::Running,
        WaveStatus::Done,
        WaveStatus::Halted,
    ]
    .into_iter()
    .find(|status| status.as_str() == text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::file::{CheckpointPolicy, Journal, JournalError};
    use crate::journal::record::{Event, Record};

    fn point(lsn: &str, timestamp: Option<&str>) -> RestorePoint {
        RestorePoint::BranchPoint {
            main_branch_id: "br-main-1".into(),
            lsn: lsn.into(),
            timestamp: timestamp.map(str::to_string),
        }
    }

    /// A run with every kind of tenant record: applied, failed after committing, diverged,
    /// rolled back, a failed rollback, a backup branch and odd texts, branches left open.
    fn events() -> Vec<Event> {
        let tenant = |n: usize| format!("t{n}");
        let mut events = vec![
            Event::RunStarted {
                plan_id: "plan-a".into(),
                run_id: "r1".into(),
                pid: 42,
                tool_version: "0".into(),
            },
            Event::WaveStarted {
                wave: "canary".into(),
            },
        ];
        for n in 0..6 {
            let (t, wave) = (tenant(n), "canary".to_string());
            events.push(Event::TenantProbed {
                tenant: t.clone(),
                wave: wave.clone(),
                current_version: (n == 2).then_some(1),
                pending: vec![2, 3],
            });
            events.push(Event::BranchRequested {
                tenant: t.clone(),
                wave: wave.clone(),
                purpose: "validate".into(),
                branch_name: format!("sf-validate-{n}"),
            });
            if n == 0 {
                continue; // killed mid-create: a requested branch the resume must find
            }
            if n == 1 {
                // A throwaway branch whose delete was requested, not waited for.
                events.push(Event::BranchCreated {
                    tenant: t.clone(),
                    wave: wave.clone(),
                    purpose: "validate".into(),
                    branch_id: "br-throwaway-1".into(),
                    branch_name: "sf-throwaway-1".into(),
                    parent_branch_id: Some("br-main-1".into()),
                    parent_lsn: Some("0/16B3D40".into()),
                    expires_at: None,
                });
                events.push(Event::BranchDeleteRequested {
                    tenant: t.clone(),
                    branch_id: "br-throwaway-1".into(),
                });
            }
            events.push(Event::BranchCreated {
                tenant: t.clone(),
                wave: wave.clone(),
                purpose: "validate".into(),
                branch_id: format!("br-{n}"),
                branch_name: format!("sf-validate-{n}"),
                parent_branch_id: Some("br-main-1".into()),
                parent_lsn: Some("0/16B3D40".into()),
                expires_at: None,
            });
            if n == 5 {
                events.push(Event::Diverged {
                    tenant: t.clone(),
                    wave: wave.clone(),
                    reason: "history has \"V9\"\nthat the plan lacks".into(),
                });
                continue; // an open branch stays open
            }
            events.push(Event::BranchDeleted {
                tenant: t.clone(),
                branch_id: format!("br-{n}"),
            });
            events.push(Event::Validated {
                tenant: t.clone(),
                wave: wave.clone(),
                versions: vec![2, 3],
                // Lock holds measured on the branch (issue 15): some tenants have them.
                lock_holds: if n % 2 == 0 {
                    vec![LockHold {
                        migration: "V3__rewrite_orders".into(),
                        table: "public.orders".into(),
                        mode: "ACCESS EXCLUSIVE".into(),
                        rewritten: n == 2,
                        bytes: 1 << 20,
                        held_ms: 40 + n as u64,
                    }]
                } else {
                    Vec::new()
                },
            });
            let recorded = match n {
                3 => RestorePoint::BackupBranch {
                    main_branch_id: "br-main-3".into(),
                    backup_branch_id: "br-backup".into(),
                    backup_branch_name: "sf-backup".into(),
                },
                4 => point("0/0a", Some("not a time")),
                _ => point("0/16B3D40", Some("2026-12-02T11:41:10.5Z")),
            };
            events.push(Event::RestorePointRecorded {
                tenant: t.clone(),
                wave: wave.clone(),
                point: recorded,
            });
            events.push(Event::ApplyStarted {
                tenant: t.clone(),
                wave: wave.clone(),
                versions: vec![2, 3],
            });
            if n == 2 {
                events.push(Event::Failed {
                    tenant: t.clone(),
                    wave: wave.clone(),
                    phase: Phase::Apply,
                    error: DbFailure::new(Some("23514"), "check violated"),
                    applied_on_main: vec![2],
                });
                continue;
            }
            events.push(Event::Applied {
                tenant: t.clone(),
                wave: wave.clone(),
                versions: vec![2, 3],
                lock_retries: 1,
            });
        }
        // `--skip-recorded`: a tenant skipped on a record, without connecting (issue 14).
        events.push(Event::SkippedRecorded {
            tenant: "t6".into(),
            wave: "canary".into(),
            recorded_version: 3,
            source: "file:versions.csv".into(),
        });
        // A tenant a later release reached: up to date, main at its newest version (ahead).
        events.push(Event::UpToDate {
            tenant: "t7".into(),
            wave: "canary".into(),
            ahead: vec![4, 5],
        });
        events.push(Event::WaveFinished {
            wave: "canary".into(),
            halted: false,
            bake_until: Some("2026-12-02T12:00:00Z".into()),
        });
        // The gates between waves: checks that fail, then pass, an approval asked and given.
        events.push(Event::ChecksFailed {
            wave: "canary".into(),
            stage: "after_wave".into(),
            failures: vec![CheckFailure {
                check: "orders_ok".into(),
                kind: "sql".into(),
                output: "1 tenant returned false".into(),
                failed_tenants: vec!["t3".into()],
                sampled: Some(5),
            }],
        });
        events.push(Event::ChecksPassed {
            wave: "canary".into(),
            stage: "retry".into(),
            checks: vec!["orders_ok".into()],
        });
        events.push(Event::ChecksFailed {
            wave: "canary".into(),
            stage: "bake_end".into(),
            failures: vec![CheckFailure {
                check: "errors_http".into(),
                kind: "http".into(),
                output: "503".into(),
                failed_tenants: Vec::new(),
                sampled: None,
            }],
        });
        events.push(Event::ApprovalNeeded {
            wave: "wide".into(),
        });
        events.push(Event::Approved {
            wave: "wide".into(),
            by: Some("ops@example.com".into()),
            note: Some("canary looked fine".into()),
        });
        events.push(Event::ApprovalNeeded {
            wave: "later".into(),
        });
        // `abort` recorded with who, why and when it was asked.
        events.push(Event::Aborted {
            by: "ana@ops".into(),
            reason: "orders lock storm".into(),
            requested_at: Some("2026-12-02T12:30:00Z".into()),
        });
        events.push(Event::WaveStarted {
            wave: "wide".into(),
        });
        // `baseline --yes` adopting a tenant: kept apart from the rollout's tenants; another
        // whose outcome was never recorded (a crash after its commit).
        events.push(Event::BaselineStarted {
            tenant: "t-adopted".into(),
            versions: vec![1, 2],
        });
        events.push(Event::BaselineStarted {
            tenant: "t-unconfirmed".into(),
            versions: vec![1],
        });
        events.push(Event::BaselineRecorded {
            tenant: "t-adopted".into(),
            versions: vec![1, 2],
            tools: vec!["drizzle: 2 migrations".into()],
        });
        events.push(Event::RollbackStarted {
            tenant: "t1".into(),
            preserve_under_name: "pre-rollback".into(),
        });
        events.push(Event::RolledBack {
            tenant: "t1".into(),
            preserved_branch: "pre-rollback".into(),
            restored_to: point("0/16B3D40", None),
        });
        events.push(Event::RollbackFailed {
            tenant: "t4".into(),
            error: "restore refused".into(),
        });
        events.push(Event::RunFinished {
            run_id: "r1".into(),
            outcome: "completed".into(),
        });
        events
    }

    /// The state a reader must reach from the first `lines` lines: the replay of their event
    /// records, ignoring every checkpoint.
    fn expected(lines: &[&str]) -> JournalState {
        let records: Vec<Record> = lines
            .iter()
            .filter(|line| !line.contains(r#""event":"checkpoint"#))
            .map(|line| serde_json::from_str(line).expect("an event record"))
            .collect();
        JournalState::replay(&records)
    }

    /// The text of a journal [`events`] were appended to under `policy`, then closed.
    async fn written(path: &std::path::Path, policy: CheckpointPolicy) -> String {
        let (journal, _) = Journal::open_with(path, "plan-a", policy).expect("open");
        for event in events() {
            journal.append(event).await.expect("append");
        }
        journal.close().await;
        std::fs::read_to_string(path).expect("read")
    }

    fn last_seq(lines: &[&str]) -> u64 {
        lines
            .iter()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).expect("json")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_read_cut_after_any_line_equals_the_replay_of_its_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        let policy = CheckpointPolicy {
            every: 4,
            grow: false,
            on_close: 1,
        };
        let text = written(&path, policy).await;
        let lines: Vec<&str> = text.lines().collect();
        let ends = lines
            .iter()
            .filter(|line| line.contains(r#""event":"checkpoint_end""#))
            .count();
        assert!(
            ends >= 5,
            "checkpoints every 4 records and on close: {text}"
        );
        assert!(
            lines
                .last()
                .is_some_and(|line| line.contains("checkpoint_end"))
        );

        // What main's records leave survives the last checkpoint, which the whole read starts
        // from: lock holds, a skipped-on-record tenant, a requested delete, baseline, gates.
        let whole = Journal::read(&path).expect("read");
        let state = &whole.state;
        let mut replayed = expected(&lines);
        replayed.last_seq = state.last_seq;
        assert_eq!(state, &replayed);
        let t0 = state.tenant("t0").expect("t0");
        assert!(t0.lock_holds.is_empty(), "t0 never validated");
        let t2 = state.tenant("t2").expect("t2");
        assert_eq!(t2.lock_holds.len(), 1);
        assert!(t2.lock_holds[0].rewritten);
        assert!(state.tenant("t1").expect("t1").lock_holds.is_empty());
        assert!(state.tenant("t4").expect("t4").lock_holds[0].held_ms == 44);
        assert!(
            !state
                .tenant("t1")
                .expect("t1")
                .open_branches
                .contains_key("br-throwaway-1")
        );
        assert_eq!(state.tenant_status("t6"), TenantStatus::SkippedRecorded);
        assert_eq!(
            (
                state.tenant_status("t7"),
                state.tenant_current_version("t7")
            ),
            (TenantStatus::UpToDate, Some(5))
        );
        assert_eq!(
            state
                .baselined
                .get("t-adopted")
                .map(|(versions, _)| versions.clone()),
            Some(vec![1, 2])
        );
        assert!(state.tenant("t-adopted").is_none());
        assert_eq!(
            state.baseline_unconfirmed,
            BTreeMap::from([("t-unconfirmed".to_string(), vec![1])])
        );
        let canary = &state.waves["canary"];
        assert_eq!(canary.check_failures.len(), 1);
        assert_eq!(canary.checks_passed_stage.as_deref(), Some("retry"));
        assert!(canary.started_at.is_some());
        let wide = &state.waves["wide"];
        assert_eq!(
            wide.approved
                .as_ref()
                .and_then(|approval| approval.by.as_deref()),
            Some("ops@example.com")
        );
        assert!(!wide.approval_needed);
        assert!(state.waves["later"].approval_needed);
        let abort = state
            .last_abort
            .as_ref()
            .expect("the abort survives a checkpoint");
        assert_eq!(
            (abort.by.as_str(), abort.reason.as_str(), abort.at.as_str()),
            ("ana@ops", "orders lock storm", "2026-12-02T12:30:00Z")
        );
        assert!(canary.checks_failed_seq.is_some());

        let cut = dir.path().join("cut.journal.jsonl");
        for kept in 0..=lines.len() {
            let mut prefix: String = lines[..kept]
                .iter()
                .map(|line| format!("{line}\n"))
                .collect();
            std::fs::write(&cut, &prefix).expect("write the cut");
            let read = Journal::read(&cut).expect("the cut journal reads");
            let mut want = expected(&lines[..kept]);
            assert_eq!(
                read.state.last_seq,
                last_seq(&lines[..kept]),
                "cut after {kept}"
            );
            want.last_seq = read.state.last_seq;
            assert_eq!(read.state, want, "cut after line {kept}");
            assert_eq!(read.records.len(), want.records as usize);
            for id in want.tenant_ids() {
                assert_eq!(
                    read.state.tenant(id),
                    want.tenant(id),
                    "{id}, cut after {kept}"
                );
            }
            // What a crash mid-append leaves: the next line half written.
            if let Some(next) = lines.get(kept) {
                prefix.push_str(&next[..next.len() / 2]);
                std::fs::write(&cut, &prefix).expect("write the torn cut");
                let torn = Journal::read(&cut).expect("a torn tail reads");
                assert!(torn.torn_tail.is_some(), "cut inside line {}", kept + 1);
                assert_eq!(torn.state, read.state, "cut inside line {}", kept + 1);
                // The writer repairs it and carries on after the last whole line.
                let (journal, reopened) =
                    Journal::open_with(&cut, "plan-a", policy).expect("reopen");
                assert_eq!(reopened.state, read.state);
                let record = journal
                    .append(Event::WaveStarted {
                        wave: "next".into(),
                    })
                    .await
                    .expect("append after the repair");
                assert_eq!(record.seq, read.state.last_seq + 1);
                journal.close().await;
                let after = Journal::read(&cut).expect("reads after the append");
                assert_eq!(after.state.wave_status("next"), super::WaveStatus::Running);
                assert!(after.torn_tail.is_none());
            }
        }
    }

    #[tokio::test]
    async fn a_checkpoint_whose_end_points_elsewhere_is_passed_over_for_a_full_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        let policy = CheckpointPolicy {
            every: 0,
            grow: false,
            on_close: 1,
        };
        let text = written(&path, policy).await;
        let lines: Vec<&str> = text.lines().collect();
        let want = expected(&lines);
        // An end record naming the wrong start: the reader must not trust it.
        let damaged = text.replace(r#""start":"#, r#""start":1"#);
        std::fs::write(&path, damaged).expect("write");
        let read = Journal::read(&path).expect("reads by full replay");
        assert_eq!(read.state.tenant("t2"), want.tenant("t2"));
        assert_eq!(read.state.tenant_count(), want.tenant_count());
        assert_eq!(read.state.runs, 1);
    }

    /// The resume of a killed run: its writer keeps a mirror of the replayed state, and the
    /// checkpoint on close, written from the mirror rather than a re-read, equals the replay.
    #[tokio::test]
    async fn a_checkpoint_from_the_writers_mirror_equals_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        let policy = CheckpointPolicy {
            every: 0,
            grow: false,
            on_close: 1,
        };
        let (journal, _) = Journal::open_with(&path, "plan-a", policy).expect("open");
        let events = events();
        let (before_kill, after) = events.split_at(events.len() / 2);
        for event in before_kill {
            journal.append(event.clone()).await.expect("append");
        }
        drop(journal); // killed: no close, no checkpoint
        let killed = std::fs::read_to_string(&path).expect("read");
        assert!(!killed.contains(r#""event":"checkpoint"#), "{killed}");
        let reopened = loop {
            match Journal::open_with(&path, "plan-a", policy) {
                Ok((journal, _)) => break journal,
                Err(JournalError::Locked { .. }) => tokio::task::yield_now().await,
                Err(error) => panic!("{error}"),
            }
        };
        for event in after {
            reopened.append(event.clone()).await.expect("append");
        }
        reopened.close().await;
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines
                .last()
                .is_some_and(|line| line.contains(r#""event":"checkpoint_end""#)),
            "the close wrote a checkpoint: {text}"
        );
        let read = Journal::read(&path).expect("reads from the checkpoint");
        let mut want = expected(&lines);
        want.last_seq = last_seq(&lines);
        assert_eq!(read.state, want);
        for id in want.tenant_ids() {
            assert_eq!(read.state.tenant(id), want.tenant(id), "{id}");
        }
    }

    #[test]
    fn a_checkpoint_of_an_unsupported_format_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        let text = concat!(
            r#"{"v":1,"seq":1,"at":"x","event":"wave_started","wave":"w"}"#,
            "\n",
            r#"{"v":3,"seq":2,"at":"x","event":"checkpoint","covers":1,"part":1,"rows":[]}"#,
            "\n",
            r#"{"v":1,"seq":3,"at":"x","event":"wave_started","wave":"v"}"#,
            "\n"
        );
        std::fs::write(&path, text).expect("write");
        let error = Journal::read(&path).err().expect("refused");
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(error.to_string().contains("v3"), "{error}");
    }
}

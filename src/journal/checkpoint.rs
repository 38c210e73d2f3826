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
use super::record::{Phase, RestorePoint};
use super::state::{JournalState, TenantFailure, TenantStatus, WaveState, WaveStatus};
use crate::pg::DbFailure;

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
    pub waves: BTreeMap<String, WaveRow>,
    /// The version lists rows name by index.
    pub version_sets: Vec<Vec<i32>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WaveRow {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until: Option<String>,
}

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
    #[serde(borrow)] Option<(Cow<'a, str>, Cow<'a, str>, Option<Cow<'a, str>>)>,
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
        waves: state
            .waves
            .iter()
            .map(|(name, wave)| {
                (
                    name.clone(),
                    WaveRow {
                        status: wave.status.as_str().to_string(),
                        bake_until: wave.bake_until.clone(),
                    },
                )
            })
            .collect(),
        version_sets: state.tenants.version_sets(),
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
            || part.columns.iter().zip(COLUMNS).any(|(found, want)| found != want)
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
            for (name, wave) in header.waves {
                let status = wave_status(&wave.status)
                    .ok_or_else(|| format!("unknown wave status {}", wave.status))?;
                state.waves.insert(
                    name,
                    WaveState {
                        status,
                        bake_until: wave.bake_until,
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
            self.sets
                .get(id as usize)
                .copied()
                .ok_or_else(|| format!("tenant {}: version set {id} is not in the checkpoint", row.0))
        };
        let optional_set = |id: Option<u32>| id.map_or(Ok(NO_SET), set);
        let status = TenantStatus::parse(&row.2)
            .ok_or_else(|| format!("tenant {}: unknown status {}", row.0, row.2))?;
        let (pending, validated, apply_started, applied) =
            (set(row.5)?, optional_set(row.6)?, optional_set(row.7)?, set(row.8)?);
        let idx = table.entry(&row.0, &row.1);
        let wave = table.wave_idx(&row.1);
        if let Some((branch, lsn, timestamp)) = &row.10 {
            table.set_branch_point(idx, branch, lsn, timestamp.as_deref());
        }
        let restore_point_at = row.11.as_deref().map_or(Packed::default(), |t| table.stamp(t));
        let apply_started_at = row.12.as_deref().map_or(Packed::default(), |t| table.stamp(t));
        let updated_at = row.13.as_deref().map_or(Packed::default(), |t| table.stamp(t));
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

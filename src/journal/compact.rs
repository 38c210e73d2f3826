//! The compact per-tenant store behind [`super::JournalState`] (issue 23): a rollout of 300,000
//! tenants must replay in a few hundred bytes per tenant, not kilobytes.
//!
//! - Tenant ids are interned once into one string arena, found through a table of indices.
//! - Version lists (`pending`, `validated`, …) are interned: a fleet shares a handful of them.
//! - Times and LSNs in the form our writer and Neon produce are packed into 8 bytes; anything
//!   else is kept as text, exactly as written (see [`Packed`]).
//! - The common restore point (a branch point) is three packed fields; every rare part (open
//!   branches, failures, other restore points, rollback details) lives in one boxed [`Rare`],
//!   absent for almost every tenant.
//!
//! **Invariant:** what goes in comes out unchanged: [`TenantTable::view`] rebuilds exactly the
//! [`TenantState`] the records described (tested by round trips of every packed form).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;

use super::record::{Phase, RestorePoint};
use super::state::{TenantFailure, TenantState, TenantStatus};
use crate::pg::lock_footprint::LockHold;

/// No version set (`validated`, `apply_started` are optional).
pub const NO_SET: u32 = u32::MAX;

/// A time, LSN or text in 8 bytes: 0 = none; high bit clear = a packed value + 1; high bit set =
/// an index into the table's texts (whatever did not pack, kept verbatim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Packed(u64);

const TEXT_BIT: u64 = 1 << 63;

/// One tenant, as small as the common case allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub current_version: Option<i32>,
    pub version_at_restore_point: Option<i32>,
    pub pending: u32,
    pub validated: u32,
    pub apply_started: u32,
    pub applied_versions: u32,
    pub updated_at: Packed,
    pub apply_started_at: Packed,
    pub restore_point_at: Packed,
    /// A branch-point restore point: main's branch id (in the branch arena), LSN, timestamp.
    pub point_branch: (u32, u32),
    pub point_lsn: Packed,
    pub point_timestamp: Packed,
    pub rare: Option<Box<Rare>>,
    pub wave: u16,
    pub status: TenantStatus,
    pub phase: Option<Phase>,
}

/// What few tenants have: kept out of [`Slot`] so the many pay one pointer for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rare {
    pub open_branches: BTreeMap<String, (String, String)>,
    pub requested_branches: BTreeMap<String, String>,
    pub failure: Option<Box<TenantFailure>>,
    pub diverged_reason: Option<String>,
    pub preserved_branch: Option<String>,
    pub rollback_error: Option<String>,
    /// A restore point the packed fields cannot hold (a backup branch, an unusual LSN).
    pub restore_point: Option<Box<RestorePoint>>,
    /// The lock holds the last validation measured (issue 15): only tenants whose migrations
    /// block writes on existing tables have any.
    pub lock_holds: Vec<LockHold>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.open_branches.is_empty()
            && self.requested_branches.is_empty()
            && self.failure.is_none()
            && self.diverged_reason.is_none()
            && self.preserved_branch.is_none()
            && self.rollback_error.is_none()
            && self.restore_point.is_none()
            && self.lock_holds.is_empty()
    }
}

/// Tenant ids, each stored once; index `i` is the `i`th id first seen.
#[derive(Clone, Default)]
struct IdIndex {
    arena: String,
    /// End of id `i` in the arena (it starts where id `i - 1` ends).
    ends: Vec<u32>,
    table: hashbrown::HashTable<u32>,
}

fn hash_id(id: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(id.as_bytes());
    hasher.finish()
}

fn id_at<'a>(arena: &'a str, ends: &[u32], idx: u32) -> &'a str {
    let idx = idx as usize;
    let start = if idx == 0 { 0 } else { ends[idx - 1] as usize };
    &arena[start..ends[idx] as usize]
}

impl IdIndex {
    fn get(&self, id: &str) -> Option<u32> {
        self.table
            .find(hash_id(id), |&idx| {
                id_at(&self.arena, &self.ends, idx) == id
            })
            .copied()
    }

    /// The id's index, added when new: one hash and one probe either way (a checkpoint of
    /// 300,000 tenants inserts each once).
    fn insert(&mut self, id: &str) -> u32 {
        let next_idx = self.ends.len() as u32;
        let (arena, ends) = (&self.arena, &self.ends);
        let entry = self.table.entry(
            hash_id(id),
            |&idx| id_at(arena, ends, idx) == id,
            |&other| hash_id(id_at(arena, ends, other)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(entry) => *entry.get(),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(next_idx);
                self.arena.push_str(id);
                self.ends.push(self.arena.len() as u32);
                next_idx
            }
        }
    }

    fn id(&self, idx: u32) -> &str {
        id_at(&self.arena, &self.ends, idx)
    }

    fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
        let (arena, ends) = (&self.arena, &self.ends);
        self.table
            .shrink_to_fit(|&other| hash_id(id_at(arena, ends, other)));
    }
}

/// Interned version lists; set 0 is the empty list.
#[derive(Debug, Clone)]
struct VersionSets {
    sets: Vec<Box<[i32]>>,
    index: HashMap<Box<[i32]>, u32>,
}

impl Default for VersionSets {
    fn default() -> VersionSets {
        let empty: Box<[i32]> = Box::new([]);
        VersionSets {
            sets: vec![empty.clone()],
            index: HashMap::from([(empty, 0)]),
        }
    }
}

impl VersionSets {
    fn intern(&mut self, versions: &[i32]) -> u32 {
        if let Some(&id) = self.index.get(versions) {
            return id;
        }
        let id = self.sets.len() as u32;
        let boxed: Box<[i32]> = versions.into();
        self.sets.push(boxed.clone());
        self.index.insert(boxed, id);
        id
    }

    fn get(&self, id: u32) -> &[i32] {
        self.sets.get(id as usize).map_or(&[], |set| set)
    }
}

/// Texts that did not pack, each kept once.
#[derive(Debug, Clone, Default)]
struct Texts {
    texts: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
}

impl Texts {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        let id = self.texts.len() as u32;
        self.texts.push(text.into());
        self.index.insert(text.into(), id);
        id
    }
}

/// Every tenant the journal names.
#[derive(Clone, Default)]
pub struct TenantTable {
    ids: IdIndex,
    slots: Vec<Slot>,
    wave_names: Vec<Box<str>>,
    versions: VersionSets,
    texts: Texts,
    /// Main branch ids of branch-point restore points, back to back.
    branches: String,
}

impl std::fmt::Debug for TenantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTable")
            .field("tenants", &self.slots.len())
            .finish()
    }
}

impl PartialEq for TenantTable {
    /// Equal when every tenant reads the same, however the tables were built.
    fn eq(&self, other: &TenantTable) -> bool {
        self.len() == other.len()
            && (0..self.len() as u32).all(|idx| {
                let id = self.ids.id(idx);
                other.view_of(id) == Some(self.view(idx))
            })
    }
}

impl TenantTable {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Make room for `tenants` more (a checkpoint says how many it holds).
    pub fn reserve(&mut self, tenants: usize) {
        self.slots.reserve(tenants);
        self.ids.ends.reserve(tenants);
        self.ids.arena.reserve(tenants * 24);
        let (arena, ends) = (&self.ids.arena, &self.ids.ends);
        self.ids
            .table
            .reserve(tenants, |&other| hash_id(id_at(arena, ends, other)));
    }

    pub fn find(&self, id: &str) -> Option<u32> {
        self.ids.get(id)
    }

    pub fn id(&self, idx: u32) -> &str {
        self.ids.id(idx)
    }

    pub fn slot(&self, idx: u32) -> &Slot {
        &self.slots[idx as usize]
    }

    pub fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        &mut self.slots[idx as usize]
    }

    /// The tenant's slot, created (not started, in `wave`) if the journal did not name it yet.
    pub fn entry(&mut self, id: &str, wave: &str) -> u32 {
        let idx = self.ids.insert(id);
        if idx as usize == self.slots.len() {
            let wave = self.wave_idx(wave);
            self.slots.push(Slot {
                current_version: None,
                version_at_restore_point: None,
                pending: 0,
                validated: NO_SET,
                apply_started: NO_SET,
                applied_versions: 0,
                updated_at: Packed::default(),
                apply_started_at: Packed::default(),
                restore_point_at: Packed::default(),
                point_branch: (0, 0),
                point_lsn: Packed::default(),
                point_timestamp: Packed::default(),
                rare: None,
                wave,
                status: TenantStatus::NotStarted,
                phase: None,
            });
        }
        idx
    }

    pub fn wave_idx(&mut self, wave: &str) -> u16 {
        if let Some(idx) = self.wave_names.iter().position(|name| &**name == wave) {
            return idx as u16;
        }
        self.wave_names.push(wave.into());
        (self.wave_names.len() - 1) as u16
    }

    pub fn wave_name(&self, idx: u16) -> &str {
        self.wave_names.get(idx as usize).map_or("", |name| name)
    }

    pub fn versions(&mut self, versions: &[i32]) -> u32 {
        self.versions.intern(versions)
    }

    pub fn version_set(&self, id: u32) -> &[i32] {
        self.versions.get(id)
    }

    /// Versions committed on main, over every attempt: add `versions` to the tenant's.
    pub fn add_applied(&mut self, idx: u32, versions: &[i32]) {
        let current = self.slot(idx).applied_versions;
        let set = self.versions.get(current);
        if versions.iter().all(|version| set.contains(version)) {
            return;
        }
        let mut merged = set.to_vec();
        for version in versions {
            if !merged.contains(version) {
                merged.push(*version);
            }
        }
        let id = self.versions.intern(&merged);
        self.slot_mut(idx).applied_versions = id;
    }

    pub fn stamp(&mut self, text: &str) -> Packed {
        match parse_stamp(text) {
            Some(nanos) => Packed(nanos + 1),
            None => self.text(text),
        }
    }

    pub fn lsn(&mut self, text: &str) -> Packed {
        match parse_lsn(text) {
            Some(lsn) if lsn < TEXT_BIT - 1 => Packed(lsn + 1),
            _ => self.text(text),
        }
    }

    fn text(&mut self, text: &str) -> Packed {
        Packed(TEXT_BIT | u64::from(self.texts.intern(text)))
    }

    fn unpack(&self, packed: Packed, format: fn(u64) -> String) -> Option<String> {
        match packed.0 {
            0 => None,
            value if value & TEXT_BIT != 0 => self
                .texts
                .texts
                .get((value & !TEXT_BIT) as usize)
                .map(|text| text.to_string()),
            value => Some(format(value - 1)),
        }
    }

    pub fn stamp_text(&self, packed: Packed) -> Option<String> {
        self.unpack(packed, format_stamp)
    }

    pub fn lsn_text(&self, packed: Packed) -> Option<String> {
        self.unpack(packed, format_lsn)
    }

    /// Record `point` as the tenant's restore point, packed when it is a branch point.
    pub fn set_restore_point(&mut self, idx: u32, point: &RestorePoint) {
        match point {
            RestorePoint::BranchPoint {
                main_branch_id,
                lsn,
                timestamp,
            } if !main_branch_id.is_empty() && main_branch_id.len() < u32::MAX as usize => {
                self.set_branch_point(idx, main_branch_id, lsn, timestamp.as_deref());
            }
            other => {
                self.clear_restore_point(idx);
                self.rare_mut(idx).restore_point = Some(Box::new(other.clone()));
            }
        }
    }

    /// A branch-point restore point, packed (an empty branch id is kept whole in the rare part).
    pub fn set_branch_point(&mut self, idx: u32, branch: &str, lsn: &str, timestamp: Option<&str>) {
        self.clear_restore_point(idx);
        if branch.is_empty() {
            self.rare_mut(idx).restore_point = Some(Box::new(RestorePoint::BranchPoint {
                main_branch_id: String::new(),
                lsn: lsn.to_string(),
                timestamp: timestamp.map(str::to_string),
            }));
            return;
        }
        let start = self.branches.len() as u32;
        self.branches.push_str(branch);
        let lsn = self.lsn(lsn);
        let timestamp = timestamp.map_or(Packed::default(), |text| self.stamp(text));
        let slot = self.slot_mut(idx);
        slot.point_branch = (start, branch.len() as u32);
        slot.point_lsn = lsn;
        slot.point_timestamp = timestamp;
    }

    /// The packed branch point: main's branch id, LSN, timestamp.
    pub fn branch_point(&self, idx: u32) -> Option<(&str, String, Option<String>)> {
        let slot = self.slot(idx);
        let (start, len) = slot.point_branch;
        (len != 0).then(|| {
            (
                &self.branches[start as usize..(start + len) as usize],
                self.lsn_text(slot.point_lsn).unwrap_or_default(),
                self.stamp_text(slot.point_timestamp),
            )
        })
    }

    /// Every interned version list, by id.
    pub fn version_sets(&self) -> Vec<Vec<i32>> {
        self.versions.sets.iter().map(|set| set.to_vec()).collect()
    }

    pub fn clear_restore_point(&mut self, idx: u32) {
        let slot = self.slot_mut(idx);
        slot.point_branch = (0, 0);
        slot.point_lsn = Packed::default();
        slot.point_timestamp = Packed::default();
        self.clear_rare(idx, |rare| rare.restore_point = None);
    }

    pub fn has_restore_point(&self, idx: u32) -> bool {
        let slot = self.slot(idx);
        slot.point_branch.1 != 0
            || slot
                .rare
                .as_ref()
                .is_some_and(|rare| rare.restore_point.is_some())
    }

    /// The kind of the tenant's restore point ([`RestorePoint::kind`]), without building it.
    pub fn restore_point_kind(&self, idx: u32) -> Option<&'static str> {
        let slot = self.slot(idx);
        if slot.point_branch.1 != 0 {
            return Some("branch_point");
        }
        let rare = slot.rare.as_deref()?;
        rare.restore_point.as_deref().map(RestorePoint::kind)
    }

    pub fn restore_point(&self, idx: u32) -> Option<RestorePoint> {
        if let Some((branch, lsn, timestamp)) = self.branch_point(idx) {
            return Some(RestorePoint::BranchPoint {
                main_branch_id: branch.to_string(),
                lsn,
                timestamp,
            });
        }
        self.slot(idx)
            .rare
            .as_ref()
            .and_then(|rare| rare.restore_point.as_deref().cloned())
    }

    pub fn rare_mut(&mut self, idx: u32) -> &mut Rare {
        self.slot_mut(idx).rare.get_or_insert_with(Box::default)
    }

    /// Clear fields of the tenant's rare part, if it has one, and drop the part once nothing is
    /// left in it: a clear never allocates the part only to drop it again.
    pub fn clear_rare(&mut self, idx: u32, clear: impl FnOnce(&mut Rare)) {
        let rare = &mut self.slot_mut(idx).rare;
        if let Some(part) = rare {
            clear(part);
            if part.is_empty() {
                *rare = None;
            }
        }
    }

    /// Drop the tenant's rare part once nothing is left in it.
    pub fn tidy(&mut self, idx: u32) {
        let slot = self.slot_mut(idx);
        if slot.rare.as_ref().is_some_and(|rare| rare.is_empty()) {
            slot.rare = None;
        }
    }

    /// The tenant's state as the journal describes it.
    pub fn view(&self, idx: u32) -> TenantState {
        let slot = self.slot(idx);
        let set = |id: u32| (id != NO_SET).then(|| self.version_set(id).to_vec());
        let rare = slot.rare.as_deref();
        TenantState {
            wave: self.wave_name(slot.wave).to_string(),
            status: slot.status,
            phase: slot.phase,
            current_version: slot.current_version,
            pending: self.version_set(slot.pending).to_vec(),
            validated: set(slot.validated),
            lock_holds: rare.map(|rare| rare.lock_holds.clone()).unwrap_or_default(),
            apply_started: set(slot.apply_started),
            apply_started_at: self.stamp_text(slot.apply_started_at),
            restore_point: self.restore_point(idx).map(Box::new),
            restore_point_at: self.stamp_text(slot.restore_point_at),
            version_at_restore_point: slot.version_at_restore_point,
            open_branches: rare
                .map(|rare| rare.open_branches.clone())
                .unwrap_or_default(),
            requested_branches: rare
                .map(|rare| rare.requested_branches.clone())
                .unwrap_or_default(),
            applied_versions: self.version_set(slot.applied_versions).to_vec(),
            failure: rare.and_then(|rare| rare.failure.clone()),
            diverged_reason: rare.and_then(|rare| rare.diverged_reason.clone()),
            preserved_branch: rare.and_then(|rare| rare.preserved_branch.clone()),
            rollback_error: rare.and_then(|rare| rare.rollback_error.clone()),
            updated_at: self.stamp_text(slot.updated_at).unwrap_or_default(),
        }
    }

    pub fn view_of(&self, id: &str) -> Option<TenantState> {
        self.find(id).map(|idx| self.view(idx))
    }

    /// Give back what growing the table over-allocated (after a replay, before a long run).
    pub fn shrink(&mut self) {
        self.ids.shrink();
        self.slots.shrink_to_fit();
        self.branches.shrink_to_fit();
    }
}

// --- Packed forms. Each parser accepts only what its formatter writes back byte for byte. ---

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as the `time` crate writes UTC (the fraction without
/// trailing zeros, absent when zero): nanoseconds since 1970, or None for any other form.
pub fn parse_stamp(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[bytes.len() - 1] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        bytes.get(range)?.iter().try_fold(0u64, |acc, byte| {
            byte.is_ascii_digit()
                .then(|| acc * 10 + u64::from(byte - b'0'))
        })
    };
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let nanos = match bytes.len() {
        20 => 0,
        // The writer drops trailing zeros: a fraction ending in one would not come back as is.
        len if bytes[19] == b'.' && (22..=30).contains(&len) && bytes[len - 2] != b'0' => {
            let fraction = &bytes[20..len - 1];
            let mut value = digits(20..len - 1)?;
            for _ in fraction.len()..9 {
                value *= 10;
            }
            value
        }
        _ => return None,
    };
    if !(1970..=2200).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    // A day past the month's end (2026-02-30) would come back as another date.
    if civil_from_days(days) != (year as i64, month as i64, day as i64) {
        return None;
    }
    let seconds = days as u64 * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000_000 + nanos)
}

pub fn format_stamp(nanos_since_epoch: u64) -> String {
    let seconds = nanos_since_epoch / 1_000_000_000;
    let nanos = nanos_since_epoch % 1_000_000_000;
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// PostgreSQL's `X/Y` LSN in upper-case hex as Neon writes it, or None for any other form.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let slash = text.bytes().position(|byte| byte == b'/')?;
    let (high, low) = (&text[..slash], &text[slash + 1..]);
    // What `format_lsn` writes, checked without writing it (a checkpoint holds one per tenant):
    // upper-case hex digits, no leading zero, at most eight of them.
    let canonical = |part: &str| {
        (1..=8).contains(&part.len())
            && (part == "0" || !part.starts_with('0'))
            && part
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte))
    };
    if !canonical(high) || !canonical(low) {
        return None;
    }
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

pub fn format_lsn(value: u64) -> String {
    format!("{:X}/{:X}", value >> 32, value & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_our_writer_and_neon_write_pack_and_come_back_unchanged() {
        for text in [
            "2026-11-26T10:00:01Z",
            "2026-12-02T11:41:10.123456789Z",
            "2026-12-02T11:41:10.5Z",
            "2024-02-29T23:59:59.000000001Z",
            "1970-01-01T00:00:00Z",
        ] {
            let packed = parse_stamp(text).unwrap_or_else(|| panic!("{text} packs"));
            assert_eq!(format_stamp(packed), text);
        }
        let now = crate::clock::now_rfc3339();
        assert_eq!(parse_stamp(&now).map(format_stamp), Some(now));
        for text in [
            "x",
            "2026-12-02T11:41:10.500Z",
            "2026-12-02T11:41:10+00:00",
            "2026-13-02T11:41:10Z",
            "2026-02-30T11:41:10Z",
            "2026-12-02 11:41:10Z",
        ] {
            assert_eq!(parse_stamp(text), None, "{text} stays text");
        }
    }

    #[test]
    fn lsns_pack_only_in_neons_form() {
        for text in ["0/1A2B3C4", "0/0", "FF/10"] {
            assert_eq!(parse_lsn(text).map(format_lsn).as_deref(), Some(text));
        }
        for text in [
            "0/01",
            "0/1a",
            "x",
            "1/2/3",
            "",
            "/1",
            "0/",
            "100000000/0",
            "+1/0",
        ] {
            assert_eq!(parse_lsn(text), None, "{text} stays text");
        }
    }

    #[test]
    fn anything_unusual_is_kept_verbatim() {
        let mut table = TenantTable::default();
        let idx = table.entry("t1", "canary");
        for text in ["x", "2026-12-02T11:41:10.500Z", "0/01"] {
            let packed = table.stamp(text);
            assert_eq!(table.stamp_text(packed).as_deref(), Some(text));
        }
        let point = RestorePoint::BranchPoint {
            main_branch_id: "br-main".into(),
            lsn: "0/0a".into(),
            timestamp: Some("yesterday".into()),
        };
        table.set_restore_point(idx, &point);
        assert_eq!(table.restore_point(idx), Some(point));
        let backup = RestorePoint::BackupBranch {
            main_branch_id: "br-main".into(),
            backup_branch_id: "br-b".into(),
            backup_branch_name: "b".into(),
        };
        table.set_restore_point(idx, &backup);
        assert_eq!(table.restore_point(idx), Some(backup));
        table.clear_restore_point(idx);
        assert!(!table.has_restore_point(idx));
        assert!(
            table.slot(idx).rare.is_none(),
            "an empty rare part is dropped"
        );
    }

    #[test]
    fn ids_are_found_after_the_index_grows() {
        let mut table = TenantTable::default();
        for n in 0..10_000 {
            table.entry(&format!("p-{n}"), "w");
        }
        table.shrink();
        assert_eq!(table.find("p-9999"), Some(9999));
        assert_eq!(table.id(42), "p-42");
        assert_eq!(table.find("p-10000"), None);
    }
}

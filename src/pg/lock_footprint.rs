//! The lock footprint of a release, measured on a tenant's validation branch: which tables that
//! existed before a migration's transaction it locked, in what mode, whether it rewrote them,
//! and how long it held a lock that blocks writes.
//!
//! How: before the runner sees them, each pending transactional migration's SQL gets a probe
//! after every statement ([`instrument`]). A probe inserts, into a temporary table of the
//! session, the time and the locks the transaction holds (`pg_locks` of our own backend, joined
//! to a snapshot of `pg_class` taken at the transaction's start), so the runner itself is
//! unchanged and reads nothing back; [`read`] collects the rows after the run and
//! [`footprint`] (pure) turns them into [`LockHold`]s. A lock is held from the start of the
//! statement that first took it (the probe just before it) to the transaction's last probe,
//! just before its history row and COMMIT.
//!
//! **Invariant:** only the validation branch is instrumented; main runs the migrations' text
//! as written. The branch's history rows carry the instrumented text's checksum (the branch
//! is deleted right after). `-- no-transaction` migrations are not instrumented: nothing holds
//! their locks beyond one statement.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::error::DbFailure;

/// The most holds kept per tenant (the longest first), so a journal line stays small.
pub const MAX_HOLDS_KEPT: usize = 16;

/// One migration's heaviest lock on one table that existed before its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHold {
    /// `V7__rewrite_orders`.
    pub migration: String,
    /// Schema-qualified, as `format('%I.%I')` quotes it.
    pub table: String,
    /// The strongest mode held: `ACCESS EXCLUSIVE`, `EXCLUSIVE`, `SHARE ROW EXCLUSIVE`, `SHARE`.
    pub mode: String,
    /// The table's storage was replaced (its relfilenode changed): a full rewrite.
    pub rewritten: bool,
    /// The table's size (`pg_table_size`) when last seen in the transaction.
    pub bytes: u64,
    /// From the start of the statement that took the lock to the transaction's end.
    pub held_ms: u64,
}

impl LockHold {
    /// The sentence an operator reads: "V7__x rewrote public.orders (1.9 GB) under ACCESS
    /// EXCLUSIVE for 41 s".
    pub fn describe(&self) -> String {
        let verb = if self.rewritten { "rewrote" } else { "locked" };
        format!(
            "{} {verb} {} ({}) under {} for {}",
            self.migration,
            self.table,
            human_bytes(self.bytes),
            self.mode,
            human_millis(self.held_ms)
        )
    }
}

impl fmt::Display for LockHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The hold over the policy's `max_lock_hold`, as the failure of the tenant's validation.
pub fn over_budget(holds: &[LockHold], max_lock_hold_ms: u64) -> Option<DbFailure> {
    let worst = holds.iter().max_by_key(|hold| hold.held_ms)?;
    if worst.held_ms <= max_lock_hold_ms {
        return None;
    }
    let mut failure = DbFailure::new(
        None,
        format!(
            "{} on its branch; main would block writes that long (max_lock_hold {})",
            worst.describe(),
            human_millis(max_lock_hold_ms)
        ),
    );
    failure.migration = Some(worst.migration.clone());
    failure.lock_hold = Some(Box::new(worst.clone()));
    Some(failure)
}

/// Modes that conflict with `ROW EXCLUSIVE`: while held, the table takes no writes.
const WRITE_BLOCKING: &[&str] = &[
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// `AccessExclusiveLock` -> `ACCESS EXCLUSIVE`.
fn mode_name(mode: &str) -> String {
    let bare = mode.strip_suffix("Lock").unwrap_or(mode);
    let mut name = String::new();
    for (char_idx, character) in bare.chars().enumerate() {
        if character.is_uppercase() && char_idx > 0 {
            name.push(' ');
        }
        name.push(character.to_ascii_uppercase());
    }
    name
}

fn mode_strength(mode: &str) -> usize {
    WRITE_BLOCKING
        .iter()
        .position(|blocking| *blocking == mode)
        .map_or(0, |position| position + 1)
}

const EXISTING_TABLE: &str = "pg_temp.schemafleet_lock_existing";
const PROBE_TABLE: &str = "pg_temp.schemafleet_lock_probe";

/// Create the session's probe tables; run once on the branch connection before the runner.
pub async fn prepare(client: &Client) -> Result<(), DbFailure> {
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS schemafleet_lock_existing \
               (xact bigint NOT NULL, relation oid NOT NULL, relname text, relfilenode oid); \
             CREATE TEMP TABLE IF NOT EXISTS schemafleet_lock_probe \
               (xact bigint NOT NULL, version int NOT NULL, seq int NOT NULL, \
                at double precision NOT NULL, relation oid, mode text, relfilenode oid, \
                bytes bigint); \
             TRUNCATE {EXISTING_TABLE}, {PROBE_TABLE}"
        ))
        .await
        .map_err(|error| DbFailure::from_error("preparing the lock measurement", &error))
}

/// The tables of the transaction's start, once per transaction (a sentinel row marks an
/// empty schema as seen, so later migrations of a `per_release` transaction do not count the
/// tables it created as existing).
fn snapshot_sql() -> String {
    format!(
        "INSERT INTO {EXISTING_TABLE} \
         SELECT pg_catalog.txid_current(), s.relation, s.relname, s.relfilenode FROM ( \
           SELECT c.oid AS relation, pg_catalog.format('%I.%I', n.nspname, c.relname) AS relname, \
                  c.relfilenode \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('r', 'p', 'm') AND c.relpersistence <> 't' \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' \
           UNION ALL SELECT 0, NULL, NULL) s \
         WHERE NOT EXISTS (SELECT FROM {EXISTING_TABLE} e \
                           WHERE e.xact = pg_catalog.txid_current())"
    )
}

/// The time and the locks held on existing tables, after statement `seq` of `version`.
fn probe_sql(version: i32, seq: usize) -> String {
    let blocking = WRITE_BLOCKING
        .iter()
        .map(|mode| format!("'{mode}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {PROBE_TABLE} \
         SELECT pg_catalog.txid_current(), {version}, {seq}, \
                extract(epoch FROM pg_catalog.clock_timestamp()) * 1000, \
                held.relation, held.mode, c.relfilenode, \
                CASE WHEN held.mode IN ({blocking}) AND c.oid IS NOT NULL \
                     THEN pg_catalog.pg_table_size(c.oid) END \
         FROM (SELECT 1) AS one LEFT JOIN ( \
           SELECT l.relation, l.mode FROM pg_catalog.pg_locks l \
           JOIN {EXISTING_TABLE} e ON e.relation = l.relation \
                                  AND e.xact = pg_catalog.txid_current() \
           WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' AND l.granted \
         ) AS held ON true \
         LEFT JOIN pg_catalog.pg_class c ON c.oid = held.relation"
    )
}

/// `sql` with the snapshot and a probe before its first statement and a probe after each.
/// `statement_ends` are the byte offsets where statements end (`None` when the SQL could not
/// be cut safely: it is then measured as one statement, from its start).
pub fn instrument_sql(version: i32, sql: &str, statement_ends: Option<&[usize]>) -> String {
    let mut instrumented = String::with_capacity(sql.len() + 2048);
    instrumented.push_str(&snapshot_sql());
    instrumented.push_str(";\n");
    instrumented.push_str(&probe_sql(version, 0));
    instrumented.push_str(";\n");
    let ends: Vec<usize> = match statement_ends {
        Some(ends) if !ends.is_empty() => ends.to_vec(),
        _ => vec![sql.len()],
    };
    let mut start = 0;
    for (statement_idx, end) in ends.iter().enumerate() {
        let end = (*end).clamp(start, sql.len());
        let mut cut = end;
        // The last statement takes the rest of the text (trailing comments).
        if statement_idx + 1 == ends.len() {
            cut = sql.len();
        }
        instrumented.push_str(&sql[start..cut]);
        // A newline ends a trailing line comment; `;` ends a statement that had none.
        instrumented.push_str("\n;\n");
        instrumented.push_str(&probe_sql(version, statement_idx + 1));
        instrumented.push_str(";\n");
        start = cut;
    }
    instrumented
}

/// The migrations to hand the runner on the branch: the `pending` transactional ones
/// instrumented, the others as they are (refinery checks applied ones by checksum).
pub fn instrument(migrations: &[refinery::Migration], pending: &[i32]) -> Vec<refinery::Migration> {
    migrations
        .iter()
        .map(|migration| {
            let sql = migration.sql().unwrap_or_default();
            let no_transaction = sql
                .trim_start()
                .starts_with(super::runner::NO_TRANSACTION_MARKER);
            if !pending.contains(&migration.version()) || no_transaction {
                return migration.clone();
            }
            let ends = crate::lint::squawk::statement_ends(sql);
            let instrumented = instrument_sql(migration.version(), sql, ends.as_deref());
            refinery::Migration::unapplied(
                &format!("V{}__{}", migration.version(), migration.name()),
                &instrumented,
            )
            .unwrap_or_else(|_| migration.clone())
        })
        .collect()
}

/// One probe row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub xact: i64,
    pub version: i32,
    pub seq: i32,
    /// Milliseconds since the epoch, server clock.
    pub at_ms: f64,
    /// `None` for a probe that saw no lock.
    pub lock: Option<ProbedLock>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbedLock {
    pub relation: u32,
    /// Schema-qualified, from the transaction's start.
    pub table: String,
    pub mode: String,
    /// At the transaction's start (0 for a partitioned table, which has no storage).
    pub relfilenode_before: u32,
    /// Now; `None` when the table was dropped.
    pub relfilenode_now: Option<u32>,
    pub bytes: Option<i64>,
}

/// Read the probes the run left in the session.
pub async fn read(client: &Client) -> Result<Vec<ProbeRow>, DbFailure> {
    let rows = client
        .query(
            &format!(
                "SELECT p.xact, p.version, p.seq, p.at, p.relation, e.relname, p.mode, \
                        e.relfilenode, p.relfilenode, p.bytes \
                 FROM {PROBE_TABLE} p \
                 LEFT JOIN {EXISTING_TABLE} e ON e.xact = p.xact AND e.relation = p.relation \
                 ORDER BY p.xact, p.version, p.seq"
            ),
            &[],
        )
        .await
        .map_err(|error| DbFailure::from_error("reading the lock measurement", &error))?;
    Ok(rows
        .iter()
        .map(|row| ProbeRow {
            xact: row.get(0),
            version: row.get(1),
            seq: row.get(2),
            at_ms: row.get(3),
            lock: row.get::<_, Option<u32>>(4).map(|relation| ProbedLock {
                relation,
                table: row.get::<_, Option<String>>(5).unwrap_or_default(),
                mode: row.get::<_, Option<String>>(6).unwrap_or_default(),
                relfilenode_before: row.get::<_, Option<u32>>(7).unwrap_or_default(),
                relfilenode_now: row.get(8),
                bytes: row.get(9),
            }),
        })
        .collect())
}

/// The holds of write-blocking locks (and rewrites) the probes show, longest first, at most
/// [`MAX_HOLDS_KEPT`]. `label` names a version's migration (`V7__rewrite_orders`).
pub fn footprint(rows: &[ProbeRow], label: impl Fn(i32) -> String) -> Vec<LockHold> {
    let mut by_xact: BTreeMap<i64, Vec<&ProbeRow>> = BTreeMap::new();
    for row in rows {
        by_xact.entry(row.xact).or_default().push(row);
    }
    let mut holds = Vec::new();
    for probes in by_xact.values() {
        // The probes in the order they ran, each with its time.
        let mut times: Vec<((i32, i32), f64)> = probes
            .iter()
            .map(|row| ((row.version, row.seq), row.at_ms))
            .collect();
        times.sort_by_key(|(order, _)| *order);
        times.dedup_by_key(|(order, _)| *order);
        let end_ms = times.iter().map(|(_, at)| *at).fold(f64::MIN, f64::max);
        // Per table: the first probe that saw it write-blocked, its strongest mode, its last
        // sight (relfilenode, size).
        struct Seen<'r> {
            first_blocking: Option<(i32, i32)>,
            strongest: &'r str,
            last: &'r ProbedLock,
        }
        let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
        for row in probes {
            let Some(lock) = &row.lock else { continue };
            let entry = seen.entry(lock.relation).or_insert(Seen {
                first_blocking: None,
                strongest: "",
                last: lock,
            });
            if mode_strength(&lock.mode) > 0 {
                let order = (row.version, row.seq);
                if entry.first_blocking.is_none_or(|first| order < first) {
                    entry.first_blocking = Some(order);
                }
                if lock.bytes.is_some() {
                    entry.last = lock;
                }
            }
            if mode_strength(&lock.mode) > mode_strength(entry.strongest) {
                entry.strongest = &lock.mode;
            }
        }
        for entry in seen.values() {
            let Some(first) = entry.first_blocking else {
                continue;
            };
            // The statement that took the lock started at the probe before the first one
            // that saw it.
            let position = times
                .iter()
                .position(|(order, _)| *order == first)
                .unwrap_or(0);
            let started_ms = times[position.saturating_sub(1)].1;
            let rewritten = entry.last.relfilenode_before != 0
                && entry
                    .last
                    .relfilenode_now
                    .is_some_and(|now| now != entry.last.relfilenode_before);
            holds.push(LockHold {
                migration: label(first.0),
                table: entry.last.table.clone(),
                mode: mode_name(entry.strongest),
                rewritten,
                bytes: entry.last.bytes.unwrap_or(0).max(0) as u64,
                held_ms: (end_ms - started_ms).max(0.0).round() as u64,
            });
        }
    }
    holds.sort_by(|a, b| {
        b.held_ms
            .cmp(&a.held_ms)
            .then_with(|| a.table.cmp(&b.table))
    });
    holds.truncate(MAX_HOLDS_KEPT);
    holds
}

/// `1.9 GB`, `12 MB`, `8 kB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: &[&str] = &["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit_idx = 0;
    while value >= 1024.0 && unit_idx + 1 < UNITS.len() {
        value /= 1024.0;
        unit_idx += 1;
    }
    if unit_idx == 0 {
        format!("{bytes} bytes")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit_idx])
    } else {
        format!("{value:.0} {}", UNITS[unit_idx])
    }
}

/// `41 s`, `1.2 s`, `350 ms`.
pub fn human_millis(millis: u64) -> String {
    if millis < 1000 {
        format!("{millis} ms")
    } else if millis < 10_000 {
        format!("{:.1} s", millis as f64 / 1000.0)
    } else {
        format!("{} s", millis / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock a probe saw: (relation, mode, relfilenode before, relfilenode now).
    type Seen<'a> = (u32, &'a str, u32, u32);

    /// The rows the probes of transaction `xact` leave, as [`probe_sql`] writes them: each probe
    /// `(version, seq, at_ms, locks seen)` is one row per lock, or one lockless row.
    fn probes(xact: i64, probes: &[(i32, i32, f64, &[Seen])]) -> Vec<ProbeRow> {
        let mut rows = Vec::new();
        for &(version, seq, at_ms, seen) in probes {
            let locks: Vec<Option<ProbedLock>> = if seen.is_empty() {
                vec![None]
            } else {
                seen.iter()
                    .map(|&(relation, mode, before, now)| {
                        Some(ProbedLock {
                            relation,
                            table: format!("public.t{relation}"),
                            mode: mode.into(),
                            relfilenode_before: before,
                            relfilenode_now: Some(now),
                            bytes: Some(8192),
                        })
                    })
                    .collect()
            };
            rows.extend(locks.into_iter().map(|lock| ProbeRow {
                xact,
                version,
                seq,
                at_ms,
                lock,
            }));
        }
        rows
    }

    /// The one hold the probes show, its migration named `V{version}{suffix}`.
    fn only_hold(rows: &[ProbeRow], suffix: &str) -> LockHold {
        let mut holds = footprint(rows, |version| format!("V{version}{suffix}"));
        assert_eq!(holds.len(), 1, "{holds:?}");
        holds.remove(0)
    }

    #[test]
    fn a_lock_is_held_from_the_start_of_the_statement_that_took_it_to_the_end() {
        let rows = probes(
            1,
            &[
                (3, 0, 1000.0, &[]),
                // Statement 1: a long backfill under ROW EXCLUSIVE (not write-blocking).
                (3, 1, 5000.0, &[(10, "RowExclusiveLock", 100, 100)]),
                // Statement 2: the rewrite.
                (
                    3,
                    2,
                    5600.0,
                    &[
                        (10, "RowExclusiveLock", 100, 200),
                        (10, "AccessExclusiveLock", 100, 200),
                    ],
                ),
                (3, 3, 5700.0, &[(10, "AccessExclusiveLock", 100, 200)]),
            ],
        );
        let hold = only_hold(&rows, "__x");
        assert_eq!(hold.held_ms, 700);
        assert!(hold.rewritten);
        assert_eq!(hold.mode, "ACCESS EXCLUSIVE");
        assert_eq!(
            hold.describe(),
            "V3__x rewrote public.t10 (8.0 kB) under ACCESS EXCLUSIVE for 700 ms"
        );
    }

    #[test]
    fn per_release_holds_last_to_the_release_s_end_and_weak_locks_are_not_holds() {
        let rows = probes(
            7,
            &[
                (1, 0, 0.0, &[]),
                (
                    1,
                    1,
                    10.0,
                    &[
                        (10, "ShareLock", 100, 100),
                        (11, "AccessShareLock", 101, 101),
                    ],
                ),
                (2, 0, 10.0, &[(10, "ShareLock", 100, 100)]),
                (2, 1, 3010.0, &[(10, "ShareLock", 100, 100)]),
            ],
        );
        let hold = only_hold(&rows, "");
        assert_eq!((hold.migration.as_str(), hold.held_ms), ("V1", 3010));
        assert!(!hold.rewritten);
        let holds = [hold];
        let failure = over_budget(&holds, 2000).expect("over budget");
        assert_eq!(failure.migration.as_deref(), Some("V1"));
        assert!(
            failure
                .message
                .contains("V1 locked public.t10 (8.0 kB) under SHARE for 3.0 s on its branch; main would block writes that long"),
            "{}",
            failure.message
        );
        assert!(over_budget(&holds, 5000).is_none());
    }

    #[test]
    fn instrumented_sql_keeps_every_statement_and_probes_after_each() {
        let sql = "ALTER TABLE a ADD COLUMN b int; -- why\nUPDATE a SET b = 1";
        let instrumented = instrument_sql(4, sql, Some(&[31, sql.len()]));
        assert!(instrumented.contains("ALTER TABLE a ADD COLUMN b int;"));
        assert!(instrumented.contains(" -- why\nUPDATE a SET b = 1\n;\n"));
        for seq in 0..=2 {
            assert!(
                instrumented.contains(&format!(", 4, {seq},")),
                "{instrumented}"
            );
        }
        assert!(!instrumented.contains(", 4, 3,"));
    }

    #[test]
    fn sizes_and_times_read_like_a_person_wrote_them() {
        assert_eq!(human_bytes(2_040_109_465), "1.9 GB");
        assert_eq!(human_bytes(500), "500 bytes");
        assert_eq!(human_millis(41_000), "41 s");
        assert_eq!(human_millis(1_234), "1.2 s");
        assert_eq!(mode_name("ShareRowExclusiveLock"), "SHARE ROW EXCLUSIVE");
    }
}

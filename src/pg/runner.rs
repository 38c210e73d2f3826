//! refinery, run safely: lock and statement timeouts, no-transaction migrations, lock retries,
//! and the policy's transaction mode.
//!
//! [`Guarded`] replaces refinery's transaction policy while keeping its verification and its
//! history format (crates-and-refinery.md §2.9). refinery is always run `grouped`, so it hands
//! over every pending migration at once as `[sql, history insert]` pairs; [`Guarded`] then
//! decides the transactions. That call shape is why refinery is pinned exactly.
//!
//! **Invariant:** a transactional migration and its history row commit together or not at all,
//! and no migration runs after one that failed. In `per_migration` mode (the default, and
//! refinery's, sqlx's and `psql -1 -f`'s semantics) each migration commits on its own, so a
//! later migration can use what an earlier one committed (a new enum label); the transactions
//! are still sent back to back in one round trip. In `per_release` mode they commit as one.
//! A `-- no-transaction` migration runs alone, outside a transaction, and must be idempotent
//! (a crash between it and its history row leaves it applied but unrecorded; the re-run repeats it).

use std::time::Duration;

use rand::Rng;
use refinery::{Migration, Runner, Target};
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::HISTORY_TABLE;
use super::error::DbFailure;
use super::history::HistoryRead;
use super::invalid_index;

/// What Neon's guide and most teams run: refinery's [`Runner`] with its defaults (one
/// transaction per migration, refinery's own transaction handling) on a connection of its own.
/// The benchmark's `sequential` baseline; returns how many migrations it applied.
pub async fn run_refinery_defaults(
    uri: &crate::secret::SecretUri,
    migrations: &[Migration],
    connect_timeout: Duration,
) -> Result<usize, DbFailure> {
    let mut client = super::connect(uri, connect_timeout).await?;
    let report = Runner::new(migrations)
        .run_async(&mut client)
        .await
        .map_err(|error| DbFailure::new(None, format!("refinery: {error}")))?;
    Ok(report.applied_migrations().len())
}

pub use crate::plan::model::TransactionMode;

/// The marker sqlx uses too: a migration whose first line is this runs outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- no-transaction";

/// Session limits applied to every migration statement.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Give up waiting for a lock after this long, so the application is never blocked behind
    /// a queued `ALTER TABLE` for longer than this.
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

/// How often to try again when a migration loses a lock race (SQLSTATE 55P03 / 40P01).
#[derive(Debug, Clone, Copy)]
pub struct LockRetry {
    pub max_attempts: u32,
    pub base_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Versions applied by this call, ascending.
    pub applied: Vec<i32>,
    pub lock_retries: u32,
}

#[derive(Debug, Clone)]
pub struct ApplyFailure {
    /// Versions that did commit before the failure: main has changed when this is not empty.
    pub applied: Vec<i32>,
    pub lock_retries: u32,
    /// Names the failing migration (`failure.migration`) when one failed.
    pub failure: DbFailure,
}

/// Apply every pending migration of `migrations` on `client` in `mode`, retrying lock
/// timeouts with jitter up to `retry`. A retry re-reads the history, so it continues from the
/// migration that lost the lock race.
pub async fn apply_pending(
    client: &mut Client,
    migrations: &[Migration],
    mode: TransactionMode,
    timeouts: Timeouts,
    retry: LockRetry,
) -> Result<ApplyReport, ApplyFailure> {
    apply_pending_known(client, migrations, mode, timeouts, retry, None).await
}

/// [`apply_pending`] when this session has just read the history under the advisory lock
/// ([`super::lock::try_lock_and_read_history`]): refinery is answered from `known` instead of
/// reading again, and the history table's creation (when it was missing) rides in the first
/// transaction, so the whole release is one round trip. Nobody else can have changed the
/// history since (the lock), so refinery's verification against it is as good as a read.
pub async fn apply_pending_known(
    client: &mut Client,
    migrations: &[Migration],
    mode: TransactionMode,
    timeouts: Timeouts,
    retry: LockRetry,
    known: Option<HistoryRead>,
) -> Result<ApplyReport, ApplyFailure> {
    let start = match known {
        Some(read) => Start::Locked(read),
        None => Start::Unread,
    };
    apply_from(client, migrations, mode, timeouts, retry, start).await
}

/// [`apply_pending_known`] on a session that holds no lock yet, with the history `probed` by
/// an earlier session (closed since, for a branch): the first statement sent takes the lock
/// and checks the history still equals `probed` ([`super::lock::release_guard`]), so the
/// release is still one round trip. When the guard refuses, nothing of the release ran and
/// the failure is [`super::lock::refused_by_guard`]: wait for the lock and apply again with
/// the history read afresh.
pub async fn apply_pending_guarded(
    client: &mut Client,
    migrations: &[Migration],
    mode: TransactionMode,
    timeouts: Timeouts,
    retry: LockRetry,
    probed: HistoryRead,
) -> Result<ApplyReport, ApplyFailure> {
    let start = Start::Probed(probed);
    apply_from(client, migrations, mode, timeouts, retry, start).await
}

/// What the apply knows of the history when it starts.
enum Start {
    /// Nothing: refinery reads it (the session holds the lock).
    Unread,
    /// Read on this session under the lock.
    Locked(HistoryRead),
    /// Read by an earlier session; the lock is not held yet.
    Probed(HistoryRead),
}

async fn apply_from(
    client: &mut Client,
    migrations: &[Migration],
    mode: TransactionMode,
    timeouts: Timeouts,
    retry: LockRetry,
    start: Start,
) -> Result<ApplyReport, ApplyFailure> {
    let mut applied = Vec::new();
    let mut lock_retries = 0;
    let mut start = Some(start);
    loop {
        // A retry reads the history again (the first attempt may have committed some), and
        // holds the lock: a retry only follows a lock timeout, after the guard passed.
        let (known, guard) = match start.take() {
            None | Some(Start::Unread) => (None, None),
            Some(Start::Locked(read)) => (Some(read), None),
            Some(Start::Probed(read)) => {
                let marker = super::lock::release_guard_marker();
                let guard = super::lock::release_guard(&read, &marker);
                (Some(read), Some((guard, marker)))
            }
        };
        let mut runner = Runner::new(migrations)
            .set_grouped(true)
            .set_abort_divergent(true)
            .set_abort_missing(true)
            .set_target(Target::Latest);
        runner.set_migration_table_name(HISTORY_TABLE);
        let mut guarded = Guarded {
            client: &mut *client,
            migrations,
            mode,
            timeouts,
            committed: Vec::new(),
            failed_migration: None,
            known,
            guard_marker: guard.as_ref().map(|(_, marker)| marker.clone()),
            guard_statement: guard.map(|(statement, _)| statement),
            table_statement: None,
        };
        let result = runner.run_async(&mut guarded).await;
        // Ours, not refinery's report: a grouped run's error carries none, and ours knows
        // which of the pipelined transactions committed.
        applied.extend(guarded.committed.iter().copied());
        let failed_migration = guarded.failed_migration.take();
        let error = match result {
            Ok(_) => {
                return Ok(ApplyReport {
                    applied,
                    lock_retries,
                });
            }
            Err(error) => error,
        };
        let mut failure = match &failed_migration {
            Some(label) => DbFailure::from_error(label, &error),
            None => {
                let context = match error.kind() {
                    refinery::error::Kind::Connection(message, _) => message.clone(),
                    _ => String::new(),
                };
                DbFailure::from_error(&context, &error)
            }
        };
        // The guard's refusal is no migration's failure: none of them ran.
        if !super::lock::refused_by_guard(&failure) {
            failure.migration = failed_migration;
        }
        if failure.is_lock_contention() && lock_retries + 1 < retry.max_attempts {
            lock_retries += 1;
            tokio::time::sleep(jittered(retry.base_delay, lock_retries)).await;
            continue;
        }
        return Err(ApplyFailure {
            applied,
            lock_retries,
            failure,
        });
    }
}

fn is_no_transaction(sql: &str) -> bool {
    sql.trim_start().starts_with(NO_TRANSACTION_MARKER)
}

/// Full jitter over an exponentially growing window, capped at 30 s.
fn jittered(base: Duration, attempt: u32) -> Duration {
    let window = base
        .saturating_mul(1u32 << attempt.min(6))
        .min(Duration::from_secs(30));
    let millis = window.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

/// `SET` value for a duration, in milliseconds (0 would mean "no limit" to PostgreSQL).
fn millis(duration: Duration) -> u128 {
    duration.as_millis().max(1)
}

/// A refinery connection whose transactions follow the policy's mode, carry our timeouts and
/// honour no-transaction files.
struct Guarded<'c> {
    client: &'c mut Client,
    migrations: &'c [Migration],
    mode: TransactionMode,
    timeouts: Timeouts,
    /// Versions this run committed, ascending.
    committed: Vec<i32>,
    /// `V3__name` of the migration that failed, when one did.
    failed_migration: Option<String>,
    /// The history as this session read it under the lock: refinery's read is answered from
    /// it once, without a round trip.
    known: Option<HistoryRead>,
    /// The release guard ([`super::lock::release_guard`]), held back to open the first
    /// statement that is sent, when the history was read by another session.
    guard_statement: Option<String>,
    /// The guard's marker: each later transaction of the pipeline checks the guard passed.
    guard_marker: Option<String>,
    /// refinery's `CREATE TABLE IF NOT EXISTS` of the history table, held back to open the
    /// first transaction that is sent (the table was missing when the history was read).
    table_statement: Option<String>,
}

/// One pending migration as refinery hands it over: its SQL and its history row's insert.
struct PendingStep<'q> {
    version: i32,
    /// `V3__name`, for errors.
    label: String,
    no_transaction: bool,
    sql: &'q str,
    insert: &'q str,
}

/// Statements each migration takes in a per-migration pipeline: head, SQL, history row, COMMIT.
const STATEMENTS_PER_STEP: usize = 4;

impl Guarded<'_> {
    fn settings(&self, scope: &str) -> String {
        format!(
            "SET {scope}lock_timeout = {}; SET {scope}statement_timeout = {}",
            millis(self.timeouts.lock_timeout),
            millis(self.timeouts.statement_timeout)
        )
    }

    /// `; <guard>; CREATE TABLE …` with what is still held back for the first statement sent
    /// (taken: it goes into that statement), else nothing. The guard comes first: it checks
    /// the table is still missing when the probe found it missing.
    fn opening(&mut self) -> String {
        [self.guard_statement.take(), self.table_statement.take()]
            .into_iter()
            .flatten()
            .map(|statement| format!("; {}", statement.trim().trim_end_matches(';')))
            .collect()
    }

    /// Pair refinery's `[sql, insert, sql, insert, …]` with the migrations they come from.
    fn steps<'q>(&self, queries: &[&'q str]) -> Vec<PendingStep<'q>> {
        queries
            .chunks(2)
            .enumerate()
            .map(|(step_idx, pair)| {
                let sql = pair[0];
                let insert = pair.get(1).copied().unwrap_or_default();
                let version = history_version(insert).unwrap_or(-1);
                let label = self
                    .migrations
                    .iter()
                    .find(|migration| migration.version() == version)
                    .map_or_else(
                        || format!("pending migration #{}", step_idx + 1),
                        ToString::to_string,
                    );
                PendingStep {
                    version,
                    label,
                    no_transaction: is_no_transaction(sql),
                    sql,
                    insert,
                }
            })
            .collect()
    }

    /// Every step and its history row in one transaction (`per_release`).
    async fn run_as_one(&mut self, steps: &[PendingStep<'_>]) -> Result<(), tokio_postgres::Error> {
        let begin = format!("BEGIN; {}{}", self.settings("LOCAL "), self.opening());
        let mut statements = Vec::with_capacity(steps.len() * 2 + 2);
        statements.push(begin.as_str());
        for step in steps {
            statements.push(step.sql);
            statements.push(step.insert);
        }
        statements.push("COMMIT");
        match pipelined(self.client, &statements).await {
            Ok(()) => {
                self.committed.extend(steps.iter().map(|step| step.version));
                Ok(())
            }
            Err((statement_idx, error)) => {
                // The BEGIN or the COMMIT failing names no migration.
                self.failed_migration = statement_idx
                    .checked_sub(1)
                    .and_then(|idx| steps.get(idx / 2))
                    .map(|step| step.label.clone());
                Err(error)
            }
        }
    }

    /// One transaction per step, all sent back to back: one round trip for the lot. Each
    /// transaction after the first opens with a guard that fails unless the one before it
    /// committed its history row (and, after a release guard, that the guard passed), so
    /// after a failure nothing later runs (their statements fail as "transaction aborted" and
    /// their COMMITs roll back).
    async fn run_each(&mut self, steps: &[PendingStep<'_>]) -> Result<(), tokio_postgres::Error> {
        if steps.is_empty() {
            return Ok(());
        }
        let settings = self.settings("LOCAL ");
        let opening = self.opening();
        let heads: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(step_idx, _)| match step_idx.checked_sub(1) {
                None => format!("BEGIN; {settings}{opening}"),
                Some(previous_idx) => format!(
                    "BEGIN; {settings}; {}",
                    committed_guard(steps[previous_idx].version, self.guard_marker.as_deref())
                ),
            })
            .collect();
        let mut statements = Vec::with_capacity(steps.len() * STATEMENTS_PER_STEP);
        for (step, head) in steps.iter().zip(&heads) {
            statements.extend([head.as_str(), step.sql, step.insert, "COMMIT"]);
        }
        match pipelined(self.client, &statements).await {
            Ok(()) => {
                self.committed.extend(steps.iter().map(|step| step.version));
                Ok(())
            }
            Err((statement_idx, error)) => {
                let failed_idx = statement_idx / STATEMENTS_PER_STEP;
                self.committed
                    .extend(steps[..failed_idx].iter().map(|step| step.version));
                self.failed_migration = Some(steps[failed_idx].label.clone());
                Err(error)
            }
        }
    }

    /// A `-- no-transaction` step: alone, outside a transaction, then its history row.
    async fn run_alone(&mut self, step: &PendingStep<'_>) -> Result<(), tokio_postgres::Error> {
        // Session-level settings: there is no transaction for SET LOCAL to live in.
        let settings = format!("{}{}", self.settings(""), self.opening());
        let result = async {
            self.client.batch_execute(&settings).await?;
            // An earlier attempt's interrupted concurrent build must not pass for this one.
            let indexes = invalid_index::concurrent_index_names(step.sql);
            invalid_index::drop_invalid(self.client, &indexes).await?;
            self.client.simple_query(step.sql).await?;
            if let Some(check) = invalid_index::assert_valid_sql(&indexes) {
                self.client.batch_execute(&check).await?;
            }
            self.client.simple_query(step.insert).await
        }
        .await;
        match result {
            Ok(_) => {
                self.committed.push(step.version);
                Ok(())
            }
            Err(error) => {
                self.failed_migration = Some(step.label.clone());
                Err(error)
            }
        }
    }
}

impl AsyncTransaction for Guarded<'_> {
    type Error = tokio_postgres::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<&str> = queries.collect();
        if queries.len() == 1 {
            // refinery's `CREATE TABLE IF NOT EXISTS` for the history table, before it reads it.
            // With the history known, it was read already: the table is created (if it was
            // missing) in the first transaction of the release instead.
            if let Some(known) = &self.known {
                if !known.table_exists {
                    self.table_statement = Some(queries[0].to_string());
                }
                return Ok(1);
            }
            let begin = format!("BEGIN; {}", self.settings("LOCAL "));
            pipelined(self.client, &[begin.as_str(), queries[0], "COMMIT"])
                .await
                .map_err(|(_, error)| error)?;
            return Ok(1);
        }
        // Otherwise the grouped pending migrations (none when up to date: nothing to send).
        let steps = self.steps(&queries);
        let any_no_transaction = steps.iter().any(|step| step.no_transaction);
        if self.mode == TransactionMode::PerRelease && !any_no_transaction {
            self.run_as_one(&steps).await?;
            return Ok(queries.len());
        }
        // Transactional runs between no-transaction steps are pipelined; each such run is
        // awaited before a no-transaction step starts, so a failure stops everything after it.
        let mut run_start = 0;
        for (step_idx, step) in steps.iter().enumerate() {
            if step.no_transaction {
                self.run_each(&steps[run_start..step_idx]).await?;
                self.run_alone(step).await?;
                run_start = step_idx + 1;
            }
        }
        self.run_each(&steps[run_start..]).await?;
        Ok(queries.len())
    }
}

/// The version in refinery's history insert, `INSERT INTO t (version, …) VALUES (3, '…', …)`
/// (refinery is pinned; its format is fixed).
fn history_version(insert: &str) -> Option<i32> {
    let (_, values) = insert.split_once("VALUES (")?;
    let (version, _) = values.split_once(',')?;
    version.trim().parse().ok()
}

/// A statement that fails unless `version`'s history row is committed and, with a release
/// guard's `marker`, unless that guard passed on this session: without the lock, the row could
/// be another runner's, committed after the guard refused.
fn committed_guard(version: i32, marker: Option<&str>) -> String {
    let guard_missed = marker
        .map(|marker| format!(" OR {}", super::lock::release_guard_missed(marker)))
        .unwrap_or_default();
    format!(
        "DO $guard$ BEGIN IF NOT EXISTS (SELECT FROM {HISTORY_TABLE} WHERE version = {version}){guard_missed} \
         THEN RAISE EXCEPTION 'V{version} did not commit, so the migrations after it do not run'; \
         END IF; END $guard$"
    )
}

/// Send `statements` back to back and await the answers together: one round trip instead of
/// one per statement, which at fleet concurrency is server CPU the raw floor does not spend.
/// Each stays its own simple query, so the first error names the statement that failed;
/// `Err` carries that statement's index.
///
/// A failed statement leaves its transaction aborted; the pipelined `COMMIT` then rolls it
/// back (PostgreSQL answers `ROLLBACK`), and the connection is dropped on error anyway. If the
/// client dies half way, the server rolls back the open transaction when the session ends.
async fn pipelined(
    client: &Client,
    statements: &[&str],
) -> Result<(), (usize, tokio_postgres::Error)> {
    // tokio-postgres writes each request when its future is first polled; join_all polls them
    // in order, so they reach the server in order.
    let answers =
        futures::future::join_all(statements.iter().map(|sql| client.batch_execute(sql))).await;
    for (statement_idx, answer) in answers.into_iter().enumerate() {
        answer.map_err(|error| (statement_idx, error))?;
    }
    Ok(())
}

impl AsyncQuery<Vec<Migration>> for Guarded<'_> {
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
        if let Some(known) = self.known.take() {
            return Ok(known.rows.into_iter().map(applied_migration).collect());
        }
        // The simple protocol: one round trip, where a prepared query costs two.
        let messages = self.client.simple_query(query).await?;
        let mut migrations = Vec::new();
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            // A malformed row would make refinery's own reader panic; ours maps it to version
            // -1 or a zero checksum, which then fails verification loudly as a divergence.
            let version = row.get(0).and_then(|text| text.parse().ok()).unwrap_or(-1);
            let name = row.get(1).unwrap_or_default().to_string();
            let applied_on = row
                .get(2)
                .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let checksum = row.get(3).and_then(|text| text.parse().ok()).unwrap_or(0);
            migrations.push(Migration::applied(version, name, applied_on, checksum));
        }
        Ok(migrations)
    }
}

impl AsyncMigrate for Guarded<'_> {}

/// A history row as refinery's own read would have returned it (same fallbacks as `query`).
fn applied_migration(row: super::AppliedMigration) -> Migration {
    let applied_on =
        OffsetDateTime::parse(&row.applied_on, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let checksum = row.checksum.parse().unwrap_or(0);
    Migration::applied(row.version, row.name, applied_on, checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_of_refinery_s_history_insert() {
        let mut migration = Migration::unapplied("V12__add_index", "SELECT 1").expect("a name");
        migration.set_applied();
        let insert = format!(
            "INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) VALUES ({}, '{}', '2026-01-01T00:00:00Z', '{}')",
            migration.version(),
            migration.name(),
            migration.checksum()
        );
        assert_eq!(history_version(&insert), Some(12));
        assert_eq!(history_version("SELECT 1"), None);
    }

    #[test]
    fn the_guard_checks_the_previous_history_row() {
        let guard = committed_guard(7, None);
        assert!(guard.starts_with("DO $guard$"), "{guard}");
        assert!(
            guard.contains(&format!("FROM {HISTORY_TABLE} WHERE version = 7")),
            "{guard}"
        );
        let guard = committed_guard(7, Some("00ff"));
        assert!(
            guard.contains(&super::super::lock::release_guard_missed("00ff")),
            "{guard}"
        );
    }
}

//! refinery, run safely: lock and statement timeouts, no-transaction migrations, lock retries.
//!
//! [`Guarded`] replaces refinery's transaction policy while keeping its verification and its
//! history format (crates-and-refinery.md §2.9). refinery calls `execute([sql, history insert])`
//! once per migration when not grouped; that call shape is why refinery is pinned exactly.
//!
//! **Invariant:** a transactional migration and its history row commit together or not at all.
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
    pub failure: DbFailure,
}

/// Apply every pending migration of `migrations` on `client`, retrying lock timeouts with
/// jitter up to `retry`.
///
/// When no migration is `-- no-transaction`, all pending ones and their history rows go in
/// one transaction: a tenant is never left half-migrated, and it costs one commit instead of
/// one per migration (the benchmark's raw floor does the same). Otherwise each migration gets
/// its own transaction, and no-transaction ones run alone.
pub async fn apply_pending(
    client: &mut Client,
    migrations: &[Migration],
    timeouts: Timeouts,
    retry: LockRetry,
) -> Result<ApplyReport, ApplyFailure> {
    let mut applied = Vec::new();
    let mut lock_retries = 0;
    let grouped = !migrations
        .iter()
        .any(|migration| migration.sql().is_some_and(is_no_transaction));
    loop {
        let mut runner = Runner::new(migrations)
            .set_grouped(grouped)
            .set_abort_divergent(true)
            .set_abort_missing(true)
            .set_target(Target::Latest);
        runner.set_migration_table_name(HISTORY_TABLE);
        let mut guarded = Guarded {
            client: &mut *client,
            timeouts,
        };
        match runner.run_async(&mut guarded).await {
            Ok(report) => {
                applied.extend(
                    report
                        .applied_migrations()
                        .iter()
                        .map(|migration| migration.version()),
                );
                return Ok(ApplyReport {
                    applied,
                    lock_retries,
                });
            }
            Err(error) => {
                if let Some(report) = error.report() {
                    applied.extend(
                        report
                            .applied_migrations()
                            .iter()
                            .map(|migration| migration.version()),
                    );
                }
                let context = match error.kind() {
                    refinery::error::Kind::Connection(message, _) => message.clone(),
                    _ => String::new(),
                };
                let failure = DbFailure::from_error(&context, &error);
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

/// A refinery connection whose transactions carry our timeouts and honour no-transaction files.
struct Guarded<'c> {
    client: &'c mut Client,
    timeouts: Timeouts,
}

impl AsyncTransaction for Guarded<'_> {
    type Error = tokio_postgres::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<&str> = queries.collect();
        let settings = format!(
            "SET lock_timeout = {}; SET statement_timeout = {}",
            millis(self.timeouts.lock_timeout),
            millis(self.timeouts.statement_timeout)
        );
        if queries.first().is_some_and(|sql| is_no_transaction(sql)) {
            // Session-level settings: there is no transaction for SET LOCAL to live in.
            self.client.batch_execute(&settings).await?;
            // An earlier attempt's interrupted concurrent build must not pass for this one.
            let indexes = invalid_index::concurrent_index_names(queries[0]);
            invalid_index::drop_invalid(self.client, &indexes).await?;
            let (migration, bookkeeping) = queries.split_at(1);
            self.client.simple_query(migration[0]).await?;
            if let Some(check) = invalid_index::assert_valid_sql(&indexes) {
                self.client.batch_execute(&check).await?;
            }
            for query in bookkeeping {
                self.client.simple_query(query).await?;
            }
            return Ok(queries.len());
        }
        let begin = format!("BEGIN; {}", settings.replace("SET ", "SET LOCAL "));
        let mut statements = Vec::with_capacity(queries.len() + 2);
        statements.push(begin.as_str());
        statements.extend(queries.iter().copied());
        statements.push("COMMIT");
        pipelined(self.client, &statements).await?;
        Ok(queries.len())
    }
}

/// Send `statements` back to back and await the answers together: one round trip instead of
/// one per statement, which at fleet concurrency is server CPU the raw floor does not spend.
/// Each stays its own simple query, so the first error names the statement that failed.
///
/// A failed statement leaves the transaction aborted; the pipelined `COMMIT` then rolls it
/// back (PostgreSQL answers `ROLLBACK`), and the connection is dropped on error anyway. If the
/// client dies half way, the server rolls back the open transaction when the session ends.
async fn pipelined(client: &Client, statements: &[&str]) -> Result<(), tokio_postgres::Error> {
    // tokio-postgres writes each request when its future is first polled; join_all polls them
    // in order, so they reach the server in order.
    let answers =
        futures::future::join_all(statements.iter().map(|sql| client.batch_execute(sql))).await;
    answers.into_iter().collect()
}

impl AsyncQuery<Vec<Migration>> for Guarded<'_> {
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
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

//! The floor the real pipeline is compared with: per tenant, connect, apply the whole release and
//! its refinery-compatible history rows in one transaction (one round trip), disconnect; at the
//! same concurrency, with no plan, journal, API, validation or history read.
//!
//! It connects through [`crate::pg::connect`] like the executor, so both pay the same connection
//! setup; beyond that it issues one `batch_execute`, the least any tool can do.
//!
//! **Invariant:** a raw tenant ends with exactly the rows refinery would have written
//! (version, name, applied_on as RFC 3339, checksum as a decimal string).

use std::time::Duration;

use futures::StreamExt;

use crate::migrations::MigrationSet;
use crate::secret::SecretUri;

/// The one SQL batch every raw tenant runs.
pub fn release_batch(set: &MigrationSet, applied_on: &str) -> String {
    let mut batch = String::from(
        "BEGIN;\nCREATE TABLE IF NOT EXISTS refinery_schema_history (version int4 PRIMARY KEY, name varchar(255), applied_on varchar(255), checksum varchar(255));\n",
    );
    for migration in &set.migrations {
        batch.push_str(&migration.sql);
        batch.push_str("\n;\n");
    }
    let rows: Vec<String> = set
        .migrations
        .iter()
        .map(|migration| {
            format!(
                "({}, '{}', '{}', '{}')",
                migration.version,
                migration.name.replace('\'', "''"),
                applied_on,
                migration.checksum
            )
        })
        .collect();
    batch.push_str(&format!(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES {};\nCOMMIT;",
        rows.join(", ")
    ));
    batch
}

/// Outcome of a raw run.
#[derive(Debug, Clone, Default)]
pub struct RawOutcome {
    pub succeeded: usize,
    pub failed: usize,
    /// The first failure, redacted, to say why when any tenant failed.
    pub first_error: Option<String>,
}

/// Run the batch on every tenant, `concurrency` at a time. With `probe_connection`, each tenant
/// first gets a separate connection that only looks for the history table, as the executor's
/// probe does (the `raw-probe` variant, which prices that second connection).
pub async fn run(
    tenants: &[SecretUri],
    batch: &str,
    concurrency: usize,
    probe_connection: bool,
) -> RawOutcome {
    let results: Vec<Result<(), String>> = futures::stream::iter(tenants)
        .map(|uri| async move {
            if probe_connection {
                let probe = crate::pg::connect(uri, Duration::from_secs(30))
                    .await
                    .map_err(|failure| failure.to_string())?;
                probe
                    .batch_execute("SELECT to_regclass('refinery_schema_history')")
                    .await
                    .map_err(|error| crate::secret::redact_uri(&format!("{error:#}")))?;
            }
            let client = crate::pg::connect(uri, Duration::from_secs(30))
                .await
                .map_err(|failure| failure.to_string())?;
            client
                .batch_execute(batch)
                .await
                .map_err(|error| crate::secret::redact_uri(&format!("{error:#}")))?;
            Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut outcome = RawOutcome::default();
    for result in results {
        match result {
            Ok(()) => outcome.succeeded += 1,
            Err(error) => {
                outcome.failed += 1;
                outcome.first_error.get_or_insert(error);
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_one_transaction_with_every_history_row() {
        let dir =
            std::env::temp_dir().join(format!("schemafleet-bench-raw-{}", std::process::id()));
        super::super::assets::write_migrations(&dir).expect("write the release");
        let set = crate::migrations::load(&dir).expect("the release loads");
        std::fs::remove_dir_all(&dir).expect("clean up");
        let batch = release_batch(&set, "2026-01-01T00:00:00Z");
        assert!(batch.starts_with("BEGIN;"));
        assert!(batch.ends_with("COMMIT;"));
        assert_eq!(batch.matches("BEGIN;").count(), 1);
        for migration in &set.migrations {
            assert!(batch.contains(&format!(
                "({}, '{}', '2026-01-01T00:00:00Z', '{}')",
                migration.version, migration.name, migration.checksum
            )));
        }
    }
}

//! Reference fingerprints: apply V1..Vn to a throwaway database and fingerprint after each.
//!
//! The throwaway database lives on a PostgreSQL server the caller names (`--reference-url`:
//! locally the emulator's backing server, against Neon any server whose role may
//! `CREATE DATABASE`). It is created with a random name, migrated with the same guarded
//! refinery runner `apply` uses, and dropped at the end, whether the build worked or not.
//!
//! **Invariant:** nothing but the throwaway database is written; the server's other databases
//! are only read by `CREATE DATABASE … TEMPLATE template0`.

use std::time::Duration;

use super::error::DbFailure;
use super::fingerprint::read_fingerprint;
use super::runner::{LockRetry, Timeouts, apply_pending};
use crate::fingerprint::{Fingerprint, SchemaFilter};
use crate::secret::SecretUri;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The fingerprint after each version; version 0 is the empty database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReferenceFingerprints {
    pub by_version: Vec<(i32, Fingerprint)>,
}

impl ReferenceFingerprints {
    /// The reference at `version` (0 for no history).
    pub fn at(&self, version: i32) -> Option<&Fingerprint> {
        self.by_version
            .iter()
            .find(|(candidate, _)| *candidate == version)
            .map(|(_, fingerprint)| fingerprint)
    }
}

/// `server_uri` with its database replaced by `database` (URI form only).
pub fn database_uri(server_uri: &SecretUri, database: &str) -> Result<SecretUri, DbFailure> {
    let mut url = url::Url::parse(server_uri.expose()).map_err(|_| {
        DbFailure::new(
            None,
            format!("reference server {server_uri}: not a postgresql:// URI"),
        )
    })?;
    url.set_path(&format!("/{database}"));
    Ok(SecretUri::new(url.to_string()))
}

/// Build the reference fingerprints of `migrations` (sorted by version) on a throwaway
/// database of the server at `server_uri`.
pub async fn build_references(
    server_uri: &SecretUri,
    migrations: &[crate::migrations::Migration],
    filter: &SchemaFilter,
) -> Result<ReferenceFingerprints, DbFailure> {
    let admin = super::connect(server_uri, CONNECT_TIMEOUT).await?;
    let database = format!(
        "schemafleet_reference_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {database} TEMPLATE template0"))
        .await
        .map_err(|error| DbFailure::from_error("create the reference database", &error))?;
    let built = migrate_and_fingerprint(server_uri, &database, migrations, filter).await;
    // Dropped whatever happened; WITH (FORCE) since a failed build may leave its session open.
    let dropped = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    let references = built?;
    dropped.map_err(|error| DbFailure::from_error("drop the reference database", &error))?;
    Ok(references)
}

async fn migrate_and_fingerprint(
    server_uri: &SecretUri,
    database: &str,
    migrations: &[crate::migrations::Migration],
    filter: &SchemaFilter,
) -> Result<ReferenceFingerprints, DbFailure> {
    let mut client = super::connect(&database_uri(server_uri, database)?, CONNECT_TIMEOUT).await?;
    let mut by_version = vec![(0, read_fingerprint(&client, filter).await?)];
    let refinery_migrations: Vec<refinery::Migration> = migrations
        .iter()
        .map(crate::migrations::Migration::to_refinery)
        .collect();
    for (migration_idx, migration) in migrations.iter().enumerate() {
        apply_pending(
            &mut client,
            &refinery_migrations[..=migration_idx],
            crate::plan::model::TransactionMode::PerMigration,
            Timeouts {
                lock_timeout: Duration::from_secs(10),
                statement_timeout: Duration::from_secs(600),
            },
            LockRetry {
                max_attempts: 1,
                base_delay: Duration::from_millis(10),
            },
        )
        .await
        .map_err(|failure| {
            DbFailure::new(
                None,
                format!(
                    "reference database: V{} failed: {}",
                    migration.version, failure.failure
                ),
            )
        })?;
        by_version.push((migration.version, read_fingerprint(&client, filter).await?));
    }
    Ok(ReferenceFingerprints { by_version })
}

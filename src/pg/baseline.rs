//! Adopting a tenant another tool migrated: which tools' history tables it has, and recording
//! refinery's history rows for V1..Vn without running them.
//!
//! **Invariant:** rows are written only into an empty (or absent) history table, in one
//! transaction, under the advisory lock `apply` takes; a tenant that gained history meanwhile
//! is left alone.

use std::time::Duration;

use tokio_postgres::Client;

use super::HISTORY_TABLE;
use super::error::DbFailure;
use super::lock::{LOCK_KEY, try_lock_for};

/// Another tool's history table found in a tenant, and how many migrations it recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolHistory {
    pub tool: &'static str,
    /// Schema-qualified.
    pub table: String,
    pub migrations: i64,
}

/// Tool name and history table name, as each tool creates it by default.
const TOOLS: [(&str, &str); 6] = [
    ("refinery", HISTORY_TABLE),
    ("drizzle", "__drizzle_migrations"),
    ("prisma", "_prisma_migrations"),
    ("sqlx", "_sqlx_migrations"),
    ("flyway", "flyway_schema_history"),
    ("atlas", "atlas_schema_revisions"),
];

/// Every known tool's history table in any schema, with its row count.
pub async fn detect_tools(client: &Client) -> Result<Vec<ToolHistory>, DbFailure> {
    let names: Vec<&str> = TOOLS.iter().map(|(_, table)| *table).collect();
    let tables = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND c.relname = ANY($1::text[])
             ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(|error| DbFailure::from_error("look for migration tools' tables", &error))?;
    let mut found = Vec::new();
    for row in tables {
        let qualified: String = row.get(0);
        let relname: String = row.get(1);
        let Some((tool, _)) = TOOLS.iter().find(|(_, table)| *table == relname) else {
            continue;
        };
        // The name comes from quote_ident above, so it is safe to splice.
        let count = client
            .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
            .await
            .map_err(|error| DbFailure::from_error(&format!("count {qualified}"), &error))?;
        found.push(ToolHistory {
            tool,
            table: qualified,
            migrations: count.get(0),
        });
    }
    Ok(found)
}

/// Record `migrations` (V1..Vn, in order) as applied, in refinery's format, in one transaction
/// under the advisory lock. Fails without writing when the history table has rows.
pub async fn record_baseline(
    client: &mut Client,
    migrations: &[crate::migrations::Migration],
    applied_on: &str,
) -> Result<(), DbFailure> {
    if !try_lock_for(client, Duration::from_secs(10)).await? {
        return Err(DbFailure::new(
            None,
            "another schemafleet run holds the tenant's advisory lock",
        ));
    }
    let result = record_locked(client, migrations, applied_on).await;
    let unlocked = client
        .simple_query(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
        .await;
    result?;
    unlocked.map_err(|error| DbFailure::from_error("advisory unlock", &error))?;
    Ok(())
}

async fn record_locked(
    client: &mut Client,
    migrations: &[crate::migrations::Migration],
    applied_on: &str,
) -> Result<(), DbFailure> {
    let failure = |context: &str| {
        let context = context.to_string();
        move |error: tokio_postgres::Error| DbFailure::from_error(&context, &error)
    };
    let transaction = client
        .transaction()
        .await
        .map_err(failure("begin baseline"))?;
    // refinery's own DDL (refinery-core traits/mod.rs), so refinery reads the rows as its own.
    transaction
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE}(
                 version int4 PRIMARY KEY,
                 name VARCHAR(255),
                 applied_on VARCHAR(255),
                 checksum VARCHAR(255))"
        ))
        .await
        .map_err(failure("create the history table"))?;
    let existing: i64 = transaction
        .query_one(&format!("SELECT count(*) FROM {HISTORY_TABLE}"), &[])
        .await
        .map_err(failure("read the history table"))?
        .get(0);
    if existing > 0 {
        return Err(DbFailure::new(
            None,
            format!("{HISTORY_TABLE} gained {existing} rows since the probe; nothing recorded"),
        ));
    }
    for migration in migrations {
        transaction
            .execute(
                &format!(
                    "INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) VALUES ($1, $2, $3, $4)"
                ),
                &[
                    &migration.version,
                    &migration.name,
                    &applied_on,
                    &migration.checksum.to_string(),
                ],
            )
            .await
            .map_err(failure("insert a history row"))?;
    }
    transaction
        .commit()
        .await
        .map_err(failure("commit baseline"))?;
    Ok(())
}

//! The query of a `sql:` check on one tenant's main.
//!
//! The query's `$1` is declared `text` and bound to the time the wave started (RFC 3339), so
//! a check can write `WHERE at >= $1::timestamptz`; a query without `$1` simply ignores it.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::error::DbFailure;

/// What one tenant answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckAnswer {
    /// One row whose one column is `true`.
    Pass,
    /// Anything else: `false`, NULL, no row, several rows, not a boolean.
    Fail(String),
}

/// Run `sql` read-only with `$1` = `wave_started_at`, under a statement timeout.
pub async fn run_check_query(
    client: &Client,
    sql: &str,
    wave_started_at: &str,
    timeout: Duration,
) -> Result<CheckAnswer, DbFailure> {
    let timeout_ms = timeout.as_millis().max(1);
    // A check reads; a read-only transaction makes sure a mistaken query cannot write.
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout_ms}"
        ))
        .await
        .map_err(|error| DbFailure::from_error("starting the check", &error))?;
    let result = async {
        let statement = client.prepare_typed(sql, &[Type::TEXT]).await?;
        client.query(&statement, &[&wave_started_at]).await
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    let rows = result.map_err(|error| DbFailure::from_error("check query", &error))?;
    Ok(match rows.as_slice() {
        [] => CheckAnswer::Fail("no row (expected one row: true)".to_string()),
        [row] if row.len() != 1 => CheckAnswer::Fail(format!(
            "{} columns (expected one boolean column)",
            row.len()
        )),
        [row] if row.columns()[0].type_() != &Type::BOOL => CheckAnswer::Fail(format!(
            "a {} (expected one boolean column)",
            row.columns()[0].type_().name()
        )),
        [row] => match row.try_get::<_, Option<bool>>(0) {
            Ok(Some(true)) => CheckAnswer::Pass,
            Ok(Some(false)) => CheckAnswer::Fail("false".to_string()),
            Ok(None) => CheckAnswer::Fail("NULL".to_string()),
            Err(error) => CheckAnswer::Fail(format!("unreadable answer: {error}")),
        },
        rows => CheckAnswer::Fail(format!("{} rows (expected one row: true)", rows.len())),
    })
}

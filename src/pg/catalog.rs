//! Reads the user's own catalog (control-plane) database for `fleet.source: postgres`: the
//! query's columns are checked before a row is fetched, then rows are streamed to the caller one
//! at a time, so a 300,000-tenant catalog is never held as driver rows.
//!
//! What the columns mean and which are allowed is `fleet::postgres`'s (pure) business; this file
//! only turns the driver's types and values into its plain ones.

use std::time::Duration;

use futures::{StreamExt, pin_mut};
use tokio_postgres::types::{FromSql, Type};

use super::DbFailure;
use crate::fleet::postgres::{CatalogLabels, CatalogRow, ColumnKind, ColumnLayout};
use crate::secret::SecretUri;

/// Why the catalog could not be read.
#[derive(Debug)]
pub enum CatalogReadError {
    /// Connecting, preparing or running the query failed (the server's message, redacted).
    Database {
        step: &'static str,
        failure: DbFailure,
    },
    /// The query's columns are not what a fleet needs (names the column and what to do).
    Columns(String),
    /// The visitor refused a row (its message names the row).
    Row(String),
}

/// Run `query` against the catalog at `url` and hand every row to `visit`, in the query's order.
pub async fn read_catalog(
    url: &SecretUri,
    query: &str,
    connect_timeout: Duration,
    mut visit: impl FnMut(CatalogRow) -> Result<(), String>,
) -> Result<(), CatalogReadError> {
    let database = |step, failure| CatalogReadError::Database { step, failure };
    let client = super::connect(url, connect_timeout)
        .await
        .map_err(|failure| database("connect", failure))?;
    // A catalog query only reads: a typo'd DELETE must not run.
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .map_err(|error| database("set read only", DbFailure::from_error("read only", &error)))?;
    let statement = client
        .prepare(query)
        .await
        .map_err(|error| database("prepare", DbFailure::from_error("query", &error)))?;
    let columns: Vec<(String, ColumnKind)> = statement
        .columns()
        .iter()
        .map(|column| (column.name().to_string(), kind_of(column.type_())))
        .collect();
    let layout = ColumnLayout::check(&columns).map_err(CatalogReadError::Columns)?;
    let rows = client
        .query_raw(&statement, Vec::<String>::new())
        .await
        .map_err(|error| database("query", DbFailure::from_error("query", &error)))?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(|error| database("query", DbFailure::from_error("query", &error)))?;
        let text = |idx: Option<usize>| -> Result<Option<String>, String> {
            match idx {
                None => Ok(None),
                Some(idx) => row
                    .try_get::<_, Option<String>>(idx)
                    .map_err(|error| error.to_string()),
            }
        };
        let value = (|| -> Result<CatalogRow, String> {
            Ok(CatalogRow {
                id: text(Some(layout.id))?,
                name: text(layout.name)?,
                region: text(layout.region)?,
                labels: match layout.labels {
                    None => None,
                    Some((idx, ColumnKind::Json)) => row
                        .try_get::<_, Option<JsonText>>(idx)
                        .map_err(|error| error.to_string())?
                        .map(|json| CatalogLabels::Json(json.0)),
                    Some((idx, _)) => row
                        .try_get::<_, Option<String>>(idx)
                        .map_err(|error| error.to_string())?
                        .map(CatalogLabels::Text),
                },
                connection_uri: text(layout.connection_uri)?.map(SecretUri::new),
                schema_version: match layout.schema_version {
                    None => None,
                    Some(idx) => row
                        .try_get::<_, Option<Integer>>(idx)
                        .map_err(|error| error.to_string())?
                        .map(|integer| integer.0),
                },
            })
        })()
        .map_err(|message| CatalogReadError::Row(format!("reading a row: {message}")))?;
        visit(value).map_err(CatalogReadError::Row)?;
    }
    Ok(())
}

fn kind_of(column_type: &Type) -> ColumnKind {
    match *column_type {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ColumnKind::Text,
        Type::INT2 | Type::INT4 | Type::INT8 => ColumnKind::Integer,
        Type::JSON | Type::JSONB => ColumnKind::Json,
        // citext and other extension text types have no fixed oid.
        _ if column_type.name() == "citext" => ColumnKind::Text,
        _ => ColumnKind::Other(column_type.name().to_string()),
    }
}

/// A `json`/`jsonb` value as its text (jsonb's binary form is a version byte, then the text):
/// the driver's JSON support would pull in another feature for one column.
struct JsonText(String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        column_type: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *column_type == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?.to_string()))
    }

    fn accepts(column_type: &Type) -> bool {
        matches!(*column_type, Type::JSON | Type::JSONB)
    }
}

/// `smallint`, `integer` or `bigint` as an `i64`.
struct Integer(i64);

impl<'a> FromSql<'a> for Integer {
    fn from_sql(
        column_type: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Integer(match *column_type {
            Type::INT2 => i64::from(i16::from_sql(column_type, raw)?),
            Type::INT4 => i64::from(i32::from_sql(column_type, raw)?),
            _ => i64::from_sql(column_type, raw)?,
        }))
    }

    fn accepts(column_type: &Type) -> bool {
        matches!(*column_type, Type::INT2 | Type::INT4 | Type::INT8)
    }
}

//! `fleet.source: postgres`: the tenants from a query against the user's own catalog
//! (control-plane) database, the table a database-per-user platform keeps anyway.
//!
//! The query returns `id` (required) and optionally `name`, `region`, `labels` (a JSON object, or
//! `k=v;k=v` text), `connection_uri` (main's direct URI: `apply` then needs no API call to
//! connect) and `schema_version` (the version the platform recorded, for `apply --skip-recorded`).
//!
//! **Invariant:** a connection URI read here is a secret from the moment it is read: it lives in
//! a [`SecretUri`], never in a [`Tenant`], the plan, the journal or a report. `plan` keeps the
//! query and the variable's *name*; `apply` runs the query again for the URIs.
//! **Invariant:** an unknown column or a column of the wrong type is an error naming the column,
//! never ignored (a typo like `regoin` would otherwise drop every region).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{FleetError, Tenant, TenantPlace};
use crate::secret::SecretUri;

/// The columns a catalog query may return.
pub const CATALOG_COLUMNS: [&str; 6] = [
    "id",
    "name",
    "region",
    "labels",
    "connection_uri",
    "schema_version",
];

/// How long to wait for the catalog database to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A column's type, as far as the catalog cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    Integer,
    Json,
    /// Anything else, by its PostgreSQL type name.
    Other(String),
}

/// Where each known column is in the query's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnLayout {
    pub id: usize,
    pub name: Option<usize>,
    pub region: Option<usize>,
    pub labels: Option<(usize, ColumnKind)>,
    pub connection_uri: Option<usize>,
    pub schema_version: Option<usize>,
}

impl ColumnLayout {
    /// Check the query's columns (name and kind, in order); the error says what to change.
    pub fn check(columns: &[(String, ColumnKind)]) -> Result<ColumnLayout, String> {
        let mut position: [Option<usize>; 6] = [None; 6];
        for (column_idx, (name, kind)) in columns.iter().enumerate() {
            let Some(known_idx) = CATALOG_COLUMNS.iter().position(|known| known == name) else {
                return Err(format!(
                    "the query returns a column `{name}`, which a fleet does not have; return only {} (alias yours with AS, e.g. `project_id AS id`)",
                    CATALOG_COLUMNS.join(", ")
                ));
            };
            if position[known_idx].is_some() {
                return Err(format!("the query returns column `{name}` twice"));
            }
            let fits = match known_idx {
                3 => matches!(kind, ColumnKind::Text | ColumnKind::Json),
                5 => *kind == ColumnKind::Integer,
                _ => *kind == ColumnKind::Text,
            };
            if !fits {
                let wanted = match known_idx {
                    3 => "a JSON object (json/jsonb) or text `k=v;k=v`",
                    5 => "an integer (smallint, integer or bigint)",
                    _ => "text",
                };
                let cast = match known_idx {
                    3 => "::jsonb",
                    5 => "::integer",
                    _ => "::text",
                };
                return Err(format!(
                    "column `{name}` is {}, it must be {wanted}; cast it in the query (`{name}{cast}`)",
                    kind.describe()
                ));
            }
            position[known_idx] = Some(column_idx);
        }
        let [id, name, region, labels, connection_uri, schema_version] = position;
        let Some(id) = id else {
            return Err(
                "the query returns no `id` column: it must return each tenant's Neon project id as `id` (e.g. `SELECT neon_project_id AS id, ...`)"
                    .to_string(),
            );
        };
        Ok(ColumnLayout {
            id,
            name,
            region,
            labels: labels.map(|idx| (idx, columns[idx].1.clone())),
            connection_uri,
            schema_version,
        })
    }
}

impl ColumnKind {
    fn describe(&self) -> String {
        match self {
            ColumnKind::Text => "text".to_string(),
            ColumnKind::Integer => "an integer".to_string(),
            ColumnKind::Json => "JSON".to_string(),
            ColumnKind::Other(name) => format!("of type {name}"),
        }
    }
}

/// A catalog's `labels` value as returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogLabels {
    Json(String),
    Text(String),
}

/// One row of the catalog query, the values not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRow {
    pub id: Option<String>,
    pub name: Option<String>,
    pub region: Option<String>,
    pub labels: Option<CatalogLabels>,
    pub connection_uri: Option<SecretUri>,
    pub schema_version: Option<i64>,
}

/// A checked row: the tenant as planning sees it, and what only `apply` may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogTenant {
    pub tenant: Tenant,
    /// Main's direct connection URI, when the catalog keeps one.
    pub connection_uri: Option<SecretUri>,
    /// The version the catalog records for the tenant.
    pub schema_version: Option<i32>,
}

/// Check one row (`row_number` is 1-based); the error names the row and the column.
pub fn tenant_from_row(row: CatalogRow, row_number: u64) -> Result<CatalogTenant, String> {
    let at = |message: String| format!("row {row_number}: {message}");
    let id = match row.id.map(|id| id.trim().to_string()) {
        Some(id) if !id.is_empty() => id,
        Some(_) => return Err(at("`id` is empty".to_string())),
        None => return Err(at("`id` is NULL".to_string())),
    };
    let labels = match row.labels {
        None => BTreeMap::new(),
        Some(CatalogLabels::Text(text)) => {
            super::file::parse_labels(&text).map_err(|message| at(format!("labels: {message}")))?
        }
        Some(CatalogLabels::Json(json)) => json_labels(&json).map_err(&at)?,
    };
    let name = row
        .name
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| id.clone());
    let region = row
        .region
        .map(|region| region.trim().to_string())
        .filter(|region| !region.is_empty());
    let connection_uri = match row.connection_uri {
        Some(uri) if uri.expose().trim().is_empty() => None,
        other => other,
    };
    let schema_version = row
        .schema_version
        .map(|version| {
            i32::try_from(version).map_err(|_| {
                at(format!(
                    "`schema_version` {version} is not a migration version (refinery's are 32-bit)"
                ))
            })
        })
        .transpose()?;
    Ok(CatalogTenant {
        tenant: Tenant {
            id,
            name,
            region,
            labels,
        },
        connection_uri,
        schema_version,
    })
}

/// `{"tier": "free", "beta": true}` → `tier=free`, `beta=true`.
fn json_labels(json: &str) -> Result<BTreeMap<String, String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("labels: not JSON ({error})"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("labels: must be a JSON object of key → value (or NULL)".to_string());
    };
    let mut labels = BTreeMap::new();
    for (key, value) in object {
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            serde_json::Value::Null => continue,
            _ => {
                return Err(format!(
                    "labels: the value of `{key}` is an array or object; labels are key → text"
                ));
            }
        };
        labels.insert(key, text);
    }
    Ok(labels)
}

/// Where a catalog query is configured, for reading it and for its errors.
#[derive(Debug, Clone)]
pub struct CatalogQuery<'a> {
    /// The environment variable holding the catalog database's URL (its name only).
    pub url_env: &'a str,
    pub query: &'a str,
    /// Where `url_env` and `query` are written (`policy.yaml:3:3`, or the plan file), and the
    /// key path of the query there (`fleet.query`), for errors.
    pub location: String,
    pub key: &'a str,
}

impl CatalogQuery<'_> {
    /// The source as recorded in plans: `postgres:<VARIABLE>`.
    pub fn source_label(&self) -> String {
        format!("postgres:{}", self.url_env)
    }
}

/// Run the catalog query and hand every checked row to `visit` (with its row number). Ids are
/// not checked for duplicates here: planning detects them, as for a tenants file.
pub async fn read_catalog(
    catalog: &CatalogQuery<'_>,
    mut visit: impl FnMut(CatalogTenant, TenantPlace) -> Result<(), FleetError>,
) -> Result<String, FleetError> {
    let invalid = |message: String| FleetError::Invalid {
        location: catalog.location.clone(),
        message,
    };
    let url = match std::env::var(catalog.url_env) {
        Ok(url) if !url.trim().is_empty() => SecretUri::new(url),
        _ => {
            return Err(invalid(format!(
                "fleet.url_env: the environment variable {} is not set (or empty); export your catalog database's URL in it",
                catalog.url_env
            )));
        }
    };
    let mut row_number = 0u64;
    let mut visit_error = None;
    let result = crate::pg::catalog::read_catalog(&url, catalog.query, CONNECT_TIMEOUT, |row| {
        row_number += 1;
        let tenant = tenant_from_row(row, row_number)?;
        visit(tenant, TenantPlace::Row(row_number)).map_err(|error| {
            let message = error.to_string();
            visit_error = Some(error);
            message
        })
    })
    .await;
    if let Some(error) = visit_error {
        return Err(error);
    }
    let key = catalog.key;
    let env = catalog.url_env;
    result.map_err(|error| match error {
        crate::pg::catalog::CatalogReadError::Database { step, failure } => invalid(format!(
            "{key}: the catalog database (URL from ${env}): {step}: {}",
            failure.message
        )),
        crate::pg::catalog::CatalogReadError::Columns(message) => {
            invalid(format!("{key}: {message}"))
        }
        crate::pg::catalog::CatalogReadError::Row(message) => invalid(format!("{key}: {message}")),
    })?;
    Ok(catalog.source_label())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[(&str, ColumnKind)]) -> Vec<(String, ColumnKind)> {
        names
            .iter()
            .map(|(name, kind)| (name.to_string(), kind.clone()))
            .collect()
    }

    #[test]
    fn layout_finds_known_columns_in_any_order() {
        let layout = ColumnLayout::check(&columns(&[
            ("region", ColumnKind::Text),
            ("id", ColumnKind::Text),
            ("labels", ColumnKind::Json),
            ("schema_version", ColumnKind::Integer),
        ]))
        .expect("valid");
        assert_eq!(layout.id, 1);
        assert_eq!(layout.region, Some(0));
        assert_eq!(layout.labels, Some((2, ColumnKind::Json)));
        assert_eq!(layout.schema_version, Some(3));
        assert_eq!(layout.name, None);
        assert_eq!(layout.connection_uri, None);
    }

    #[test]
    fn layout_refuses_unknown_missing_twice_and_mistyped_columns() {
        let unknown = ColumnLayout::check(&columns(&[
            ("id", ColumnKind::Text),
            ("regoin", ColumnKind::Text),
        ]))
        .unwrap_err();
        assert!(unknown.contains("`regoin`"), "{unknown}");
        let missing = ColumnLayout::check(&columns(&[("name", ColumnKind::Text)])).unwrap_err();
        assert!(missing.contains("no `id` column"), "{missing}");
        let twice = ColumnLayout::check(&columns(&[
            ("id", ColumnKind::Text),
            ("id", ColumnKind::Text),
        ]))
        .unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        let mistyped =
            ColumnLayout::check(&columns(&[("id", ColumnKind::Other("uuid".into()))])).unwrap_err();
        assert!(
            mistyped.contains("of type uuid") && mistyped.contains("id::text"),
            "{mistyped}"
        );
        let version = ColumnLayout::check(&columns(&[
            ("id", ColumnKind::Text),
            ("schema_version", ColumnKind::Text),
        ]))
        .unwrap_err();
        assert!(version.contains("schema_version::integer"), "{version}");
    }

    fn row(id: Option<&str>) -> CatalogRow {
        CatalogRow {
            id: id.map(str::to_string),
            name: None,
            region: None,
            labels: None,
            connection_uri: None,
            schema_version: None,
        }
    }

    #[test]
    fn rows_become_tenants_with_their_secrets_apart() {
        let mut full = row(Some("p-1"));
        full.name = Some("tenant-1".into());
        full.region = Some("aws-us-east-2".into());
        full.labels = Some(CatalogLabels::Json(r#"{"tier":"free","seats":3}"#.into()));
        full.connection_uri = Some(SecretUri::new("postgresql://u:pw@h/db"));
        full.schema_version = Some(4);
        let tenant = tenant_from_row(full, 1).expect("valid");
        assert_eq!(tenant.tenant.name, "tenant-1");
        assert_eq!(tenant.tenant.labels["tier"], "free");
        assert_eq!(tenant.tenant.labels["seats"], "3");
        assert_eq!(tenant.schema_version, Some(4));
        assert!(tenant.connection_uri.is_some());
        assert!(!format!("{:?}", tenant).contains("pw"));

        let bare = tenant_from_row(row(Some("p-2")), 2).expect("valid");
        assert_eq!(bare.tenant.name, "p-2");
        assert!(bare.connection_uri.is_none());

        let mut text_labels = row(Some("p-3"));
        text_labels.labels = Some(CatalogLabels::Text("tier=paid".into()));
        assert_eq!(
            tenant_from_row(text_labels, 3)
                .expect("valid")
                .tenant
                .labels["tier"],
            "paid"
        );
    }

    #[test]
    fn bad_rows_name_their_row_and_column() {
        assert_eq!(
            tenant_from_row(row(None), 7).unwrap_err(),
            "row 7: `id` is NULL"
        );
        let mut array = row(Some("p"));
        array.labels = Some(CatalogLabels::Json("[1]".into()));
        assert!(
            tenant_from_row(array, 2)
                .unwrap_err()
                .starts_with("row 2: labels")
        );
        let mut huge = row(Some("p"));
        huge.schema_version = Some(1 << 40);
        assert!(
            tenant_from_row(huge, 3)
                .unwrap_err()
                .contains("schema_version")
        );
    }
}

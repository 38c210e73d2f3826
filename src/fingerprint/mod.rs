//! A tenant's schema as data: the catalog objects a migration history can create, normalised.
//!
//! [`Fingerprint`] is read by [`crate::pg::fingerprint::read_fingerprint`] (the only I/O) and
//! compared here by [`diff`] (pure). Two databases whose schemas were built differently (a
//! table created at once, or the same columns added later) have equal fingerprints; a changed
//! default, function body, `NOT VALID` constraint or invalid index makes them differ.
//!
//! **Invariant:** a fingerprint holds no OIDs, owners, physical order or data: only what a
//! migration decides. Objects are sorted by (kind, name), so equality is `==` and the digest is
//! stable across servers.
//! **Invariant:** nothing here does I/O.

pub mod baseline;
pub mod diff;
pub mod report;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use diff::{Difference, diff};

/// Schemas never fingerprinted by default: PostgreSQL's own and the ones Neon manages.
pub const DEFAULT_EXCLUDED_SCHEMAS: [&str; 4] =
    ["pg_catalog", "information_schema", "neon_auth", "neon"];

/// Which schemas a fingerprint covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaFilter {
    /// Only these schemas; empty means every schema not excluded.
    pub include: Vec<String>,
    /// Never these schemas (`pg_toast*` and temporary schemas are always left out).
    pub exclude: Vec<String>,
}

impl SchemaFilter {
    /// Every schema but PostgreSQL's own and Neon-managed ones.
    pub fn default_filter() -> SchemaFilter {
        SchemaFilter {
            include: Vec::new(),
            exclude: DEFAULT_EXCLUDED_SCHEMAS
                .iter()
                .map(|schema| schema.to_string())
                .collect(),
        }
    }

    /// Only `schemas` (still never the excluded ones).
    pub fn only(schemas: Vec<String>) -> SchemaFilter {
        SchemaFilter {
            include: schemas,
            ..SchemaFilter::default_filter()
        }
    }

    /// `--schemas` when given, else the policy's (or the plan's) `schemas:`, else the default.
    pub fn chosen(command_line: &[String], policy: &[String]) -> SchemaFilter {
        match (command_line, policy) {
            ([], []) => SchemaFilter::default_filter(),
            ([], policy) => SchemaFilter::only(policy.to_vec()),
            (command_line, _) => SchemaFilter::only(command_line.to_vec()),
        }
    }
}

/// Whether `name` can be one of the schemas a fingerprint covers (`schemas:` in a policy,
/// `--schemas`): a PostgreSQL identifier as the catalog spells it, and not a schema that is
/// never fingerprinted (which would silently compare nothing).
pub fn check_schema_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a schema name must not be empty".to_string());
    }
    if name.len() > 63 {
        return Err(format!(
            "schema `{name}` is longer than PostgreSQL's 63-byte identifiers"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "schema `{}` holds a control character",
            name.escape_debug()
        ));
    }
    if DEFAULT_EXCLUDED_SCHEMAS.contains(&name)
        || name.starts_with("pg_toast")
        || name.starts_with("pg_temp")
    {
        return Err(format!(
            "schema `{name}` is PostgreSQL's or Neon's own and never fingerprinted; list the \
             schemas your migrations create (e.g. public)"
        ));
    }
    Ok(())
}

/// [`check_schema_name`] for a list, which must also name each schema once.
pub fn check_schema_names(names: &[String]) -> Result<(), String> {
    for (index, name) in names.iter().enumerate() {
        check_schema_name(name)?;
        if names[..index].contains(name) {
            return Err(format!("schema `{name}` is listed twice"));
        }
    }
    Ok(())
}

/// What kind of catalog object a [`SchemaObject`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Extension,
    Type,
    Sequence,
    Table,
    Column,
    Constraint,
    Index,
    View,
    MaterializedView,
    Function,
    Trigger,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 11] = [
        ObjectKind::Extension,
        ObjectKind::Type,
        ObjectKind::Sequence,
        ObjectKind::Table,
        ObjectKind::Column,
        ObjectKind::Constraint,
        ObjectKind::Index,
        ObjectKind::View,
        ObjectKind::MaterializedView,
        ObjectKind::Function,
        ObjectKind::Trigger,
    ];

    /// The kind as the fingerprint query spells it.
    pub fn from_catalog(kind: &str) -> Option<ObjectKind> {
        Some(match kind {
            "extension" => ObjectKind::Extension,
            "type" => ObjectKind::Type,
            "sequence" => ObjectKind::Sequence,
            "table" => ObjectKind::Table,
            "column" => ObjectKind::Column,
            "constraint" => ObjectKind::Constraint,
            "index" => ObjectKind::Index,
            "view" => ObjectKind::View,
            "materialized view" => ObjectKind::MaterializedView,
            "function" => ObjectKind::Function,
            "trigger" => ObjectKind::Trigger,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Extension => "extension",
            ObjectKind::Type => "type",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Table => "table",
            ObjectKind::Column => "column",
            ObjectKind::Constraint => "constraint",
            ObjectKind::Index => "index",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::Function => "function",
            ObjectKind::Trigger => "trigger",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One catalog object: `name` is schema-qualified (and table-qualified for columns,
/// constraints and triggers; functions carry their argument types), `definition` is
/// everything a migration decides about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SchemaObject {
    pub kind: ObjectKind,
    pub name: String,
    pub definition: String,
}

/// A schema, sorted by (kind, name); one object per (kind, name).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    objects: Vec<SchemaObject>,
}

impl Fingerprint {
    /// Sort and deduplicate `objects` (the catalog query's order is not ours to rely on).
    pub fn new(mut objects: Vec<SchemaObject>) -> Fingerprint {
        objects.sort();
        objects.dedup_by(|right, left| left.kind == right.kind && left.name == right.name);
        Fingerprint { objects }
    }

    pub fn objects(&self) -> &[SchemaObject] {
        &self.objects
    }

    /// SHA-256 over the sorted objects: equal fingerprints, equal digests.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for object in &self.objects {
            for part in [object.kind.as_str(), &object.name, &object.definition] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn object(kind: ObjectKind, name: &str, definition: &str) -> SchemaObject {
        SchemaObject {
            kind,
            name: name.to_string(),
            definition: definition.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::object;
    use super::*;

    #[test]
    fn order_does_not_matter_and_digest_follows_equality() {
        let table = object(ObjectKind::Table, "public.a", "table");
        let column = object(ObjectKind::Column, "public.a.id", "integer not null");
        let one = Fingerprint::new(vec![table.clone(), column.clone()]);
        let other = Fingerprint::new(vec![column.clone(), table.clone()]);
        assert_eq!(one, other);
        assert_eq!(one.digest(), other.digest());
        let changed = Fingerprint::new(vec![
            table,
            object(ObjectKind::Column, "public.a.id", "bigint not null"),
        ]);
        assert_ne!(one.digest(), changed.digest());
    }

    #[test]
    fn schema_names_are_checked() {
        assert_eq!(
            check_schema_names(&["public".into(), "billing".into()]),
            Ok(())
        );
        for (bad, says) in [
            (vec!["".to_string()], "must not be empty"),
            (vec!["neon_auth".to_string()], "never fingerprinted"),
            (vec!["pg_catalog".to_string()], "never fingerprinted"),
            (vec!["pg_toast_1".to_string()], "never fingerprinted"),
            (vec!["a".repeat(64)], "63-byte"),
            (vec!["public".into(), "public".into()], "listed twice"),
        ] {
            let error = check_schema_names(&bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        let chosen = SchemaFilter::chosen(&[], &["app".into()]);
        assert_eq!(chosen.include, ["app"]);
        let chosen = SchemaFilter::chosen(&["cli".into()], &["app".into()]);
        assert_eq!(chosen.include, ["cli"]);
        assert_eq!(
            SchemaFilter::chosen(&[], &[]),
            SchemaFilter::default_filter()
        );
    }

    #[test]
    fn catalog_kinds_round_trip() {
        for kind in ObjectKind::ALL {
            assert_eq!(ObjectKind::from_catalog(kind.as_str()), Some(kind));
        }
        assert_eq!(ObjectKind::from_catalog("policy"), None);
    }
}

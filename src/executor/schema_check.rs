//! The opt-in schema check before applying (policy `verify_schema: true`): main's schema must
//! equal the reference at the version its history records, or the tenant fails untouched with
//! the differences named, instead of failing half-way through a migration that assumed the
//! schema its history promised.
//!
//! A separate step of the tenant pipeline, run on the probe's connection to main after the
//! probe found versions pending; it reads one catalog query and writes nothing.
//!
//! **Invariant:** the check only reads; a tenant it fails has had nothing applied.

use crate::fingerprint::{Difference, SchemaFilter};
use crate::pg::DbFailure;
use crate::pg::reference::ReferenceFingerprints;

/// Differences named in the failure before it says how many more there are.
const DIFFERENCES_SHOWN: usize = 10;

/// The references a tenant's schema is compared with, and the schemas compared.
#[derive(Debug)]
pub struct SchemaCheck {
    pub references: ReferenceFingerprints,
    pub filter: SchemaFilter,
}

/// Compare main's schema (on `client`) with the reference at `version` (0: no history).
pub async fn verify_schema(
    check: &SchemaCheck,
    client: &tokio_postgres::Client,
    version: i32,
) -> Result<(), DbFailure> {
    let Some(expected) = check.references.at(version) else {
        return Err(DbFailure::new(
            None,
            format!("verify_schema: no reference for V{version} among the plan's migrations"),
        ));
    };
    let found = crate::pg::read_fingerprint(client, &check.filter).await?;
    let differences = crate::fingerprint::diff(expected, &found);
    if differences.is_empty() {
        return Ok(());
    }
    Err(DbFailure::new(None, describe(version, &differences)))
}

/// `verify_schema: the schema differs from the reference at V2: missing index …; extra …`.
fn describe(version: i32, differences: &[Difference]) -> String {
    let mut named: Vec<String> = differences
        .iter()
        .take(DIFFERENCES_SHOWN)
        .map(Difference::describe)
        .collect();
    if differences.len() > DIFFERENCES_SHOWN {
        named.push(format!(
            "and {} more",
            differences.len() - DIFFERENCES_SHOWN
        ));
    }
    let at = if version == 0 {
        "the empty database (no history)".to_string()
    } else {
        format!("the reference at V{version}")
    };
    format!(
        "verify_schema: the schema differs from {at}, so nothing was applied: {}",
        named.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::ObjectKind;

    #[test]
    fn the_failure_names_each_difference_and_counts_the_rest() {
        let difference = |index: usize| Difference {
            kind: ObjectKind::Index,
            name: format!("public.extra_{index}"),
            expected: None,
            found: Some("CREATE INDEX ...".to_string()),
        };
        let few: Vec<Difference> = (0..2).map(difference).collect();
        let text = describe(2, &few);
        assert!(text.starts_with("verify_schema: the schema differs from the reference at V2"));
        assert!(
            text.contains("public.extra_0 (CREATE INDEX ...); extra index public.extra_1"),
            "{text}"
        );
        let many: Vec<Difference> = (0..13).map(difference).collect();
        assert!(describe(0, &many).ends_with("; and 3 more"));
        assert!(describe(0, &many).contains("the empty database"));
    }
}

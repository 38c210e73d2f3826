//! refinery's history table: read it, and compare it with the planned migrations (pure).

use tokio_postgres::{Client, SimpleQueryMessage};

use super::HISTORY_TABLE;
use super::error::DbFailure;

/// One row of refinery's history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
    /// refinery's checksum, a u64 stored as decimal text.
    pub checksum: String,
    /// When the runner wrote the row (RFC 3339, the runner's own clock), as stored.
    pub applied_on: String,
}

/// What the plan says a version must look like in the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVersion {
    pub version: i32,
    pub name: String,
    pub checksum: String,
}

/// Where a tenant stands against the planned migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryComparison {
    /// Every planned version is applied with the same checksum.
    UpToDate { current_version: Option<i32> },
    /// History agrees with the plan so far; these versions (ascending) are still to apply.
    Pending {
        current_version: Option<i32>,
        pending: Vec<i32>,
    },
    /// Every planned version is applied with the same checksum, and these later versions too
    /// (ascending, all newer than any planned one): a newer release reached the tenant.
    Ahead {
        current_version: Option<i32>,
        extra: Vec<i32>,
    },
    /// History and plan disagree: touching the tenant could corrupt it.
    Diverged { reason: String },
}

/// What a read of the history table found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The rows in version order.
    pub rows: Vec<AppliedMigration>,
    /// The table exists (when it does not, nothing was ever applied and the apply creates it).
    pub table_exists: bool,
}

/// The query [`read_history`] sends; simple protocol, one round trip.
pub(crate) fn history_query() -> String {
    format!("SELECT version, name, checksum, applied_on FROM {HISTORY_TABLE} ORDER BY version")
}

/// Read the history rows in version order. A missing table means nothing was ever applied
/// (refinery itself errors with 42P01 there, see crates-and-refinery.md §2.6).
pub async fn read_history(client: &Client) -> Result<Vec<AppliedMigration>, DbFailure> {
    // The simple protocol: one round trip, where a prepared query costs two.
    let answer = client.simple_query(&history_query()).await;
    history_from_answer(answer).map(|read| read.rows)
}

/// The rows of an answer to [`history_query`]; a missing table is an empty history.
pub(crate) fn history_from_answer(
    answer: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
) -> Result<HistoryRead, DbFailure> {
    match answer {
        Ok(messages) => Ok(HistoryRead {
            rows: messages
                .iter()
                .filter_map(|message| match message {
                    SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                })
                .map(|row| {
                    let version = row.get(0).unwrap_or_default();
                    Ok(AppliedMigration {
                        version: version.parse().map_err(|_| {
                            DbFailure::new(
                                None,
                                format!("read history: {HISTORY_TABLE} has a version that is not an integer: {version:?}"),
                            )
                        })?,
                        name: row.get(1).unwrap_or_default().to_string(),
                        checksum: row.get(2).unwrap_or_default().to_string(),
                        applied_on: row.get(3).unwrap_or_default().to_string(),
                    })
                })
                .collect::<Result<_, _>>()?,
            table_exists: true,
        }),
        Err(error) if error.code().map(|code| code.code()) == Some("42P01") => Ok(HistoryRead {
            rows: Vec::new(),
            table_exists: false,
        }),
        Err(error) => Err(DbFailure::from_error("read history", &error)),
    }
}

/// Compare applied history with the plan's migrations (sorted by version).
///
/// Diverged when an applied version is not in the plan (missing file, or the tenant is ahead),
/// when name or checksum differ (a file edited after it was applied), or when a planned
/// version below the tenant's current version was never applied (refinery would refuse it).
pub fn compare_history(
    applied: &[AppliedMigration],
    planned: &[PlannedVersion],
) -> HistoryComparison {
    let newest_planned = planned.iter().map(|migration| migration.version).max();
    let mut extra = Vec::new();
    for row in applied {
        match planned
            .iter()
            .find(|migration| migration.version == row.version)
        {
            None if newest_planned.is_none_or(|newest| row.version > newest) => {
                extra.push(row.version);
            }
            None => {
                return HistoryComparison::Diverged {
                    reason: format!(
                        "V{}__{} is applied on the tenant but missing from the migrations",
                        row.version, row.name
                    ),
                };
            }
            Some(migration) if migration.name != row.name || migration.checksum != row.checksum => {
                return HistoryComparison::Diverged {
                    reason: format!(
                        "V{}__{} was applied with checksum {} but the file now has V{}__{} with checksum {} (edited after it was applied?)",
                        row.version,
                        row.name,
                        row.checksum,
                        migration.version,
                        migration.name,
                        migration.checksum
                    ),
                };
            }
            Some(_) => {}
        }
    }
    let current_version = applied.iter().map(|row| row.version).max();
    let mut pending = Vec::new();
    for migration in planned {
        if applied.iter().any(|row| row.version == migration.version) {
            continue;
        }
        if current_version.is_some_and(|current| migration.version < current) {
            return HistoryComparison::Diverged {
                reason: format!(
                    "V{}__{} is not applied but the tenant is already at V{}: refinery will not apply it out of order",
                    migration.version,
                    migration.name,
                    current_version.unwrap_or_default()
                ),
            };
        }
        pending.push(migration.version);
    }
    if !extra.is_empty() {
        extra.sort_unstable();
        HistoryComparison::Ahead {
            current_version,
            extra,
        }
    } else if pending.is_empty() {
        HistoryComparison::UpToDate { current_version }
    } else {
        HistoryComparison::Pending {
            current_version,
            pending,
        }
    }
}

/// History rows and planned versions named `m{version}`, for tests here and in `drift`.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{AppliedMigration, PlannedVersion};

    pub(crate) fn planned(version: i32, checksum: &str) -> PlannedVersion {
        PlannedVersion {
            version,
            name: format!("m{version}"),
            checksum: checksum.into(),
        }
    }

    pub(crate) fn applied(version: i32, checksum: &str) -> AppliedMigration {
        AppliedMigration {
            version,
            name: format!("m{version}"),
            checksum: checksum.into(),
            applied_on: "2026-11-26T10:00:00Z".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{applied, planned};
    use super::*;

    #[test]
    fn fresh_tenant_has_everything_pending() {
        let plan = [planned(1, "a"), planned(2, "b")];
        assert_eq!(
            compare_history(&[], &plan),
            HistoryComparison::Pending {
                current_version: None,
                pending: vec![1, 2]
            }
        );
    }

    #[test]
    fn partially_migrated_tenant_has_the_rest_pending() {
        let plan = [planned(1, "a"), planned(2, "b"), planned(3, "c")];
        assert_eq!(
            compare_history(&[applied(1, "a")], &plan),
            HistoryComparison::Pending {
                current_version: Some(1),
                pending: vec![2, 3]
            }
        );
    }

    #[test]
    fn fully_migrated_tenant_is_up_to_date() {
        let plan = [planned(1, "a"), planned(2, "b")];
        assert_eq!(
            compare_history(&[applied(1, "a"), applied(2, "b")], &plan),
            HistoryComparison::UpToDate {
                current_version: Some(2)
            }
        );
    }

    #[test]
    fn a_tenant_a_newer_release_reached_is_ahead_not_diverged() {
        let plan = [planned(1, "a"), planned(2, "b")];
        assert_eq!(
            compare_history(
                &[
                    applied(1, "a"),
                    applied(2, "b"),
                    applied(4, "d"),
                    applied(3, "c")
                ],
                &plan
            ),
            HistoryComparison::Ahead {
                current_version: Some(4),
                extra: vec![3, 4]
            }
        );
        // A newer version with a planned one missing below it is still out of order.
        let result = compare_history(&[applied(1, "a"), applied(3, "c")], &plan);
        assert!(
            matches!(&result, HistoryComparison::Diverged { reason } if reason.contains("V2__m2")),
            "{result:?}"
        );
        // A version inside the planned range with no file is a deleted migration.
        let plan = [planned(1, "a"), planned(3, "c")];
        let result = compare_history(&[applied(1, "a"), applied(2, "b"), applied(3, "c")], &plan);
        assert!(
            matches!(&result, HistoryComparison::Diverged { reason } if reason.contains("missing")),
            "{result:?}"
        );
    }

    #[test]
    fn edited_migration_diverges() {
        let plan = [planned(1, "a"), planned(2, "b")];
        let result = compare_history(&[applied(1, "zzz")], &plan);
        assert!(
            matches!(&result, HistoryComparison::Diverged { reason } if reason.contains("V1__m1") && reason.contains("edited")),
            "{result:?}"
        );
    }

    #[test]
    fn applied_version_missing_from_files_diverges() {
        let plan = [planned(1, "a"), planned(8, "h")];
        let result = compare_history(&[applied(1, "a"), applied(7, "x")], &plan);
        assert!(
            matches!(&result, HistoryComparison::Diverged { reason } if reason.contains("V7__m7") && reason.contains("missing")),
            "{result:?}"
        );
    }

    #[test]
    fn gap_below_current_version_diverges() {
        let plan = [planned(1, "a"), planned(2, "b"), planned(3, "c")];
        let result = compare_history(&[applied(1, "a"), applied(3, "c")], &plan);
        assert!(
            matches!(&result, HistoryComparison::Diverged { reason } if reason.contains("V2__m2")),
            "{result:?}"
        );
    }
}

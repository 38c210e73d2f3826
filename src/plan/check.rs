//! Does a plan still match the migrations on disk? The check a pull request runs, and the one
//! `apply` makes before it touches a tenant.
//!
//! **Invariant:** [`check_migrations`] returns `Ok` only when every planned migration is on disk
//! with the same version, name, bytes and transaction mode, and there is no other.

use std::collections::BTreeMap;
use std::fmt;

use super::model::{Plan, PlannedMigration};
use crate::migrations::{Migration, MigrationSet};

/// One way the migrations on disk differ from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationDifference {
    /// On disk, not in the plan.
    Added { version: i32, file_name: String },
    /// In the plan, no longer on disk.
    Removed { version: i32, name: String },
    /// Same version, different content (or name, or transaction mode).
    Edited {
        version: i32,
        planned_name: String,
        file_name: String,
        what: String,
    },
}

/// The differences between a plan's migrations and a directory's, in version order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationMismatch {
    pub differences: Vec<MigrationDifference>,
}

impl fmt::Display for MigrationDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationDifference::Added { file_name, .. } => {
                write!(f, "added: {file_name} is not in the plan")
            }
            MigrationDifference::Removed { version, name } => {
                write!(
                    f,
                    "removed: V{version}__{name}.sql is in the plan but not on disk"
                )
            }
            MigrationDifference::Edited {
                file_name, what, ..
            } => write!(f, "edited: {file_name} {what} since the plan was made"),
        }
    }
}

impl fmt::Display for MigrationMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the migrations on disk no longer match the plan:")?;
        for difference in &self.differences {
            writeln!(f, "  - {difference}")?;
        }
        write!(
            f,
            "re-run `schemafleet plan` and commit the new plan (or undo the change to the migrations)"
        )
    }
}

impl std::error::Error for MigrationMismatch {}

/// Compare the plan's migrations with those loaded from disk.
pub fn check_migrations(plan: &Plan, set: &MigrationSet) -> Result<(), MigrationMismatch> {
    let planned: BTreeMap<i32, &PlannedMigration> = plan
        .migrations
        .items
        .iter()
        .map(|migration| (migration.version, migration))
        .collect();
    let on_disk: BTreeMap<i32, &Migration> = set
        .migrations
        .iter()
        .map(|migration| (migration.version, migration))
        .collect();
    let mut versions: Vec<i32> = planned.keys().chain(on_disk.keys()).copied().collect();
    versions.sort_unstable();
    versions.dedup();

    let mut differences = Vec::new();
    for version in versions {
        match (planned.get(&version), on_disk.get(&version)) {
            (Some(planned), None) => differences.push(MigrationDifference::Removed {
                version,
                name: planned.name.clone(),
            }),
            (None, Some(disk)) => differences.push(MigrationDifference::Added {
                version,
                file_name: disk.file_name.clone(),
            }),
            (Some(planned), Some(disk)) => {
                let what = if planned.name != disk.name {
                    Some(format!("was renamed from V{version}__{}", planned.name))
                } else if planned.sha256 != disk.sha256
                    || planned.checksum != disk.checksum.to_string()
                {
                    Some("has changed".to_string())
                } else if planned.no_transaction != disk.no_transaction {
                    Some("changed its -- no-transaction marker".to_string())
                } else {
                    None
                };
                if let Some(what) = what {
                    differences.push(MigrationDifference::Edited {
                        version,
                        planned_name: planned.name.clone(),
                        file_name: disk.file_name.clone(),
                        what,
                    });
                }
            }
            (None, None) => {}
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(MigrationMismatch { differences })
    }
}

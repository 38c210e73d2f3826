//! Does a plan still match the migrations on disk, its policy and its fleet? The check a pull
//! request runs, and (for migrations) the one `apply` makes before it touches a tenant.
//!
//! **Invariant:** [`check_migrations`] returns `Ok` only when every planned migration is on disk
//! with the same version, name, bytes and transaction mode, and there is no other.
//! **Invariant:** [`check_policy`] returns `Ok` only when the policy file's bytes are the ones
//! planned; otherwise it names every recorded setting that changed.

use std::collections::BTreeMap;
use std::fmt;

use super::build::{PlanPaths, planned_policy, planned_waves_without_tenants};
use super::model::{Plan, PlannedMigration, PlannedWave};
use crate::migrations::{Migration, MigrationSet};
use crate::policy::Policy;

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

/// How the policy file differs from the one the plan was made from: one line per changed
/// setting (`waves[early].concurrency: 16 -> 1`).
pub fn check_policy(plan: &Plan, policy: &Policy) -> Result<(), Vec<String>> {
    if policy.sha256 == plan.policy.sha256 {
        return Ok(());
    }
    let paths = PlanPaths {
        policy: plan.policy.path.clone(),
        migrations_dir: plan.migrations.dir.clone(),
        // Only the verify file's digest is compared; its path is where the plan found it.
        verify: Some(String::new()),
    };
    let mut differences = Vec::new();
    diff_settings(
        "",
        &settings_of(&plan.policy),
        &settings_of(&planned_policy(policy, &paths)),
        &mut differences,
    );
    let planned_waves: Vec<&str> = plan.waves.iter().map(|wave| wave.name.as_str()).collect();
    let policy_waves = planned_waves_without_tenants(policy);
    let policy_wave_names: Vec<&str> = policy_waves.iter().map(|wave| wave.name.as_str()).collect();
    if planned_waves != policy_wave_names {
        differences.push(format!(
            "waves: {} -> {}",
            planned_waves.join(", "),
            policy_wave_names.join(", ")
        ));
    } else {
        for (planned, wanted) in plan.waves.iter().zip(&policy_waves) {
            diff_settings(
                &format!("waves[{}].", planned.name),
                &wave_settings(planned),
                &wave_settings(wanted),
                &mut differences,
            );
        }
    }
    if differences.is_empty() {
        differences.push(format!(
            "the policy file {} changed since the plan was made, though none of the settings the plan records did: comments, or wave shares, `match`es, named tenants or fleet filters (`--fleet` compares the waves' tenants)",
            policy.path.display()
        ));
    }
    Err(differences)
}

/// A plan's policy settings as JSON, without what only says where files were.
fn settings_of(policy: &super::model::PlannedPolicy) -> serde_json::Value {
    let mut policy = policy.clone();
    policy.path = String::new();
    policy.sha256 = String::new();
    if let Some(verify) = &mut policy.verify {
        verify.path = String::new();
    }
    serde_json::to_value(&policy)
        .expect("invariant: plan types serialize to JSON (strings, integers, finite floats)")
}

fn wave_settings(wave: &PlannedWave) -> serde_json::Value {
    let mut value = serde_json::to_value(PlannedWave {
        tenants: Vec::new(),
        ..wave.clone()
    })
    .expect("invariant: plan types serialize to JSON (strings, integers, finite floats)");
    if let Some(object) = value.as_object_mut() {
        object.remove("tenants");
        object.remove("name");
    }
    value
}

/// `prefix key: old -> new` for every top-level key whose value differs.
fn diff_settings(
    prefix: &str,
    planned: &serde_json::Value,
    wanted: &serde_json::Value,
    differences: &mut Vec<String>,
) {
    let empty = serde_json::Map::new();
    let planned = planned.as_object().unwrap_or(&empty);
    let wanted = wanted.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = planned.keys().chain(wanted.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let before = planned.get(key).unwrap_or(&serde_json::Value::Null);
        let after = wanted.get(key).unwrap_or(&serde_json::Value::Null);
        if before == after {
            continue;
        }
        if key == "verify" && !before.is_null() && !after.is_null() {
            differences.push(format!("{prefix}verify: its SQL file changed"));
        } else if key == "notify" {
            // Settings, not a file: show them (they hold variable names, never secrets).
            let shown = |value: &serde_json::Value| match value {
                serde_json::Value::Null => "(not set)".to_string(),
                other => other.to_string(),
            };
            differences.push(format!(
                "{prefix}notify: {} -> {}",
                shown(before),
                shown(after)
            ));
        } else {
            differences.push(format!(
                "{prefix}{key}: {} -> {}",
                setting_text(before),
                setting_text(after)
            ));
        }
    }
}

fn setting_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "(not set)".to_string(),
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Object(_) => "(a file)".to_string(),
        other => other.to_string(),
    }
}

/// Tenants of a change in the fleet listed before "and N more".
const LISTED_FLEET_CHANGES: usize = 5;

/// How `replanned` (the policy and migrations planned against today's fleet) differs from
/// `plan` in its fleet: tenants added, gone, moved to another wave, exclusions. Empty when
/// every tenant is where the plan put it.
pub fn check_fleet(plan: &Plan, replanned: &Plan) -> Vec<String> {
    let wave_of = |plan: &Plan| -> BTreeMap<String, (String, String)> {
        plan.tenants()
            .map(|(tenant, wave)| (tenant.id.clone(), (wave.name.clone(), tenant.label())))
            .collect()
    };
    let before = wave_of(plan);
    let after = wave_of(replanned);
    let mut added = Vec::new();
    let mut gone = Vec::new();
    let mut moved = Vec::new();
    for (id, (wave, label)) in &after {
        match before.get(id) {
            None => added.push(format!("{label} (wave {wave})")),
            Some((old_wave, _)) if old_wave != wave => {
                moved.push(format!("{label} ({old_wave} -> {wave})"))
            }
            Some(_) => {}
        }
    }
    for (id, (wave, label)) in &before {
        if !after.contains_key(id) {
            gone.push(format!("{label} (was in wave {wave})"));
        }
    }
    let mut differences = Vec::new();
    for (what, tenants) in [
        ("new in the fleet", added),
        ("no longer in the fleet (or now excluded)", gone),
        ("in another wave", moved),
    ] {
        if tenants.is_empty() {
            continue;
        }
        let mut listed = tenants
            .iter()
            .take(LISTED_FLEET_CHANGES)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if tenants.len() > LISTED_FLEET_CHANGES {
            listed.push_str(&format!(
                " and {} more",
                tenants.len() - LISTED_FLEET_CHANGES
            ));
        }
        differences.push(format!(
            "{} {what}: {listed}",
            crate::report::render::plural(tenants.len(), "tenant")
        ));
    }
    if differences.is_empty()
        && (plan.fleet.excluded != replanned.fleet.excluded
            || plan.fleet.unavailable != replanned.fleet.unavailable
            || plan.fleet.discovered != replanned.fleet.discovered)
    {
        differences.push(format!(
            "same tenants in the same waves, but the fleet's excluded or unlisted projects changed ({} listed now, {} when planned)",
            replanned.fleet.discovered, plan.fleet.discovered
        ));
    }
    differences
}

//! `apply --skip-recorded`: which tenants a run may skip without connecting, because a record
//! says their main already has every migration of the plan. Connecting to a suspended Neon
//! compute wakes it (and bills it for its idle timeout), so a release that touches nobody should
//! not wake 300,000 computes to find that out.
//!
//! The record is either the fleet source's `schema_version` (the catalog's column with
//! `fleet.source: postgres`, or a tenants file's) or an earlier release's plan and journal (`--recorded-from PLAN`). It is a claim, not a check:
//! skipped tenants are journaled `skipped_recorded`, never `up_to_date`, and `drift` or
//! `status --live` is how the record is verified.
//!
//! **Invariant:** a tenant is skipped only when its recorded version is at least the plan's
//! highest version and, for a journal record, the earlier plan's migrations are the same files
//! (checksums) as this plan's up to that version. Pure: no I/O.

use std::collections::HashMap;

use crate::journal::{JournalState, TenantStatus};
use crate::plan::model::Plan;

/// A tenant's recorded version and where the record comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub version: i32,
    /// The fleet source (`postgres:<VARIABLE>`, `file:<path>`) or `plan <id>`: journaled with
    /// the skip.
    pub source: String,
}

/// Recorded versions by tenant id; the highest record wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedVersions {
    by_tenant: HashMap<String, Recorded>,
}

impl RecordedVersions {
    pub fn add(&mut self, tenant_id: &str, recorded: Recorded) {
        match self.by_tenant.get(tenant_id) {
            Some(existing) if existing.version >= recorded.version => {}
            _ => {
                self.by_tenant.insert(tenant_id.to_string(), recorded);
            }
        }
    }

    /// The record that covers `plan_max_version`, if any.
    pub fn covering(&self, tenant_id: &str, plan_max_version: i32) -> Option<&Recorded> {
        self.by_tenant
            .get(tenant_id)
            .filter(|recorded| recorded.version >= plan_max_version)
    }

    pub fn len(&self) -> usize {
        self.by_tenant.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }

    /// Add the tenants an earlier plan's journal finished (`applied` or `up_to_date`): each
    /// has the earlier plan's highest version. Refused when the earlier plan's migrations are
    /// not this plan's files up to that version: its record would be about other migrations.
    pub fn add_from_journal(
        &mut self,
        plan: &Plan,
        earlier: &Plan,
        journal: &JournalState,
    ) -> Result<usize, String> {
        if journal
            .plan_id
            .as_ref()
            .is_some_and(|plan_id| *plan_id != earlier.plan_id)
        {
            return Err(format!(
                "its journal belongs to plan {}, not to this plan {}",
                journal.plan_id.as_deref().unwrap_or_default(),
                earlier.plan_id
            ));
        }
        let Some(earlier_max) = earlier.migrations.items.iter().map(|m| m.version).max() else {
            return Ok(0);
        };
        for old in &earlier.migrations.items {
            match plan
                .migrations
                .items
                .iter()
                .find(|new| new.version == old.version)
            {
                Some(new) if new.checksum == old.checksum => {}
                Some(_) => {
                    return Err(format!(
                        "its V{}__{} is not this plan's file of that version (checksums differ), so its record does not say what this plan's migrations did",
                        old.version, old.name
                    ));
                }
                None => {
                    return Err(format!(
                        "its V{}__{} is not in this plan, so its record does not say what this plan's migrations did",
                        old.version, old.name
                    ));
                }
            }
        }
        let source = format!("plan {}", earlier.plan_id);
        let mut added = 0;
        for tenant_id in journal.tenant_ids() {
            if matches!(
                journal.tenant_status(tenant_id),
                TenantStatus::Applied | TenantStatus::UpToDate
            ) {
                self.add(
                    tenant_id,
                    Recorded {
                        version: earlier_max,
                        source: source.clone(),
                    },
                );
                added += 1;
            }
        }
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Event, Record};
    use crate::plan::model::{PlannedMigration, test_plan};

    fn migration(version: i32, checksum: &str) -> PlannedMigration {
        PlannedMigration {
            version,
            name: format!("m{version}"),
            sha256: String::new(),
            checksum: checksum.into(),
            no_transaction: false,
        }
    }

    fn plan(id: &str, migrations: &[(i32, &str)]) -> Plan {
        let mut plan = test_plan(Vec::new());
        plan.plan_id = id.into();
        plan.migrations.items = migrations
            .iter()
            .map(|(version, checksum)| migration(*version, checksum))
            .collect();
        plan
    }

    fn journal(plan_id: &str, events: Vec<Event>) -> JournalState {
        let record = |seq: u64, event: Event| Record {
            v: 1,
            seq,
            at: "2026-01-01T00:00:00Z".into(),
            event,
        };
        let mut records = vec![record(
            1,
            Event::RunStarted {
                plan_id: plan_id.into(),
                run_id: "r".into(),
                pid: 1,
                tool_version: "t".into(),
            },
        )];
        for (idx, event) in events.into_iter().enumerate() {
            records.push(record(idx as u64 + 2, event));
        }
        JournalState::replay(&records)
    }

    #[test]
    fn finished_tenants_of_an_earlier_release_cover_a_plan_of_the_same_files() {
        let earlier = plan("old", &[(1, "a"), (2, "b")]);
        let current = plan("new", &[(1, "a"), (2, "b")]);
        let state = journal(
            "old",
            vec![
                Event::UpToDate {
                    tenant: "p-1".into(),
                    wave: "w".into(),
                    ahead: Vec::new(),
                },
                Event::Failed {
                    tenant: "p-2".into(),
                    wave: "w".into(),
                    phase: crate::journal::Phase::Apply,
                    error: crate::pg::DbFailure::new(None, "boom"),
                    applied_on_main: Vec::new(),
                },
            ],
        );
        let mut recorded = RecordedVersions::default();
        assert_eq!(recorded.add_from_journal(&current, &earlier, &state), Ok(1));
        assert_eq!(recorded.covering("p-1", 2).map(|r| r.version), Some(2));
        assert!(
            recorded.covering("p-2", 2).is_none(),
            "a failed tenant has no record"
        );
        let later = plan("next", &[(1, "a"), (2, "b"), (3, "c")]);
        let mut for_later = RecordedVersions::default();
        for_later
            .add_from_journal(&later, &earlier, &state)
            .expect("same files");
        assert!(
            for_later.covering("p-1", 3).is_none(),
            "V3 is not covered by a record of V2"
        );
    }

    #[test]
    fn a_record_of_other_files_or_another_journal_is_refused() {
        let earlier = plan("old", &[(1, "a"), (2, "edited")]);
        let current = plan("new", &[(1, "a"), (2, "b")]);
        let error = RecordedVersions::default()
            .add_from_journal(&current, &earlier, &journal("old", Vec::new()))
            .unwrap_err();
        assert!(
            error.contains("V2__m2") && error.contains("checksums"),
            "{error}"
        );
        let same = plan("old", &[(1, "a"), (2, "b")]);
        let error = RecordedVersions::default()
            .add_from_journal(&current, &same, &journal("other", Vec::new()))
            .unwrap_err();
        assert!(error.contains("plan other"), "{error}");
    }

    #[test]
    fn the_highest_record_wins() {
        let mut recorded = RecordedVersions::default();
        for (version, source) in [(3, "catalog"), (2, "plan x")] {
            recorded.add(
                "p",
                Recorded {
                    version,
                    source: source.into(),
                },
            );
        }
        assert_eq!(
            recorded.covering("p", 3).map(|r| r.source.as_str()),
            Some("catalog")
        );
    }
}

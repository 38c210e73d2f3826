//! gc: which branches schemafleet created may be deleted now, and why (pure).
//!
//! The executor names its branches `schemafleet-{purpose}-{plan_id[..12]}-{stamp}-{rand}` with
//! purpose `validate` or `backup`. [`decide`] looks at one listed branch, the time, and (with
//! `--plan`) that plan's replayed journal, and says delete or keep with a reason an operator can
//! check. `cmd/gc.rs` does the listing and deleting.
//!
//! **Invariant:** a branch whose name does not start with `schemafleet-validate-` or
//! `schemafleet-backup-` is never a candidate, and a default or protected branch is always kept.
//! **Invariant:** a branch a rollback preserved (`pre-rollback-*`: main's state before the
//! restore, with writes made after the restore point) is deleted only when expired or when the
//! operator asked for preserved branches older than an age (`--preserved --older-than`); `--all`
//! does not reach it.
//! **Invariant:** without `--all`, a backup branch that is a tenant's current restore point and
//! a branch of a tenant still in flight are kept unless expired (Neon deletes expired branches
//! by itself anyway).

use serde::Serialize;
use time::OffsetDateTime;

use crate::journal::{JournalState, RestorePoint, TenantStatus};
use crate::neon::Branch;

pub const VALIDATE_PREFIX: &str = "schemafleet-validate-";
pub const BACKUP_PREFIX: &str = "schemafleet-backup-";
/// `rollback` names the branch a restore preserves the old main under
/// `pre-rollback-{plan_id[..8]}-{stamp}`.
pub const PRESERVED_PREFIX: &str = "pre-rollback-";

/// Characters of the plan id the executor puts into branch names.
pub const PLAN_PREFIX_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchPurpose {
    Validate,
    Backup,
    /// Kept by a rollback: main as it was before the restore.
    Preserved,
}

/// The parts of a schemafleet branch name gc acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemafleetBranchName {
    pub purpose: BranchPurpose,
    /// The first [`PLAN_PREFIX_LEN`] characters of the plan id; `None` when the name does not
    /// have the executor's full shape (still schemafleet's by prefix, but of unknown plan).
    pub plan_prefix: Option<String>,
}

/// `Some` for names schemafleet gives its branches, `None` for every other name.
pub fn parse_branch_name(name: &str) -> Option<SchemafleetBranchName> {
    let (purpose, rest) = if let Some(rest) = name.strip_prefix(VALIDATE_PREFIX) {
        (BranchPurpose::Validate, rest)
    } else if let Some(rest) = name.strip_prefix(BACKUP_PREFIX) {
        (BranchPurpose::Backup, rest)
    } else if let Some(rest) = name.strip_prefix(PRESERVED_PREFIX) {
        let plan_prefix = rest
            .rsplit_once('-')
            .map(|(prefix, _stamp)| prefix.to_string())
            .filter(|prefix| !prefix.is_empty());
        return Some(SchemafleetBranchName {
            purpose: BranchPurpose::Preserved,
            plan_prefix,
        });
    } else {
        return None;
    };
    // From the right, because only the plan prefix could ever contain a dash.
    let mut parts = rest.rsplitn(3, '-');
    let plan_prefix = match (parts.next(), parts.next(), parts.next()) {
        (Some(_rand), Some(_stamp), Some(prefix)) if !prefix.is_empty() => Some(prefix.to_string()),
        _ => None,
    };
    Some(SchemafleetBranchName {
        purpose,
        plan_prefix,
    })
}

/// The rollout whose journal tells which branches are no longer needed (`gc --plan`).
#[derive(Debug, Clone, Copy)]
pub struct Rollout<'a> {
    pub plan_id: &'a str,
    pub state: &'a JournalState,
}

impl Rollout<'_> {
    fn owns(&self, plan_prefix: Option<&str>) -> bool {
        let own_prefix: String = self.plan_id.chars().take(PLAN_PREFIX_LEN).collect();
        plan_prefix == Some(own_prefix.as_str())
    }
}

/// gc's verdict on one schemafleet branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub project_id: String,
    pub branch_id: String,
    pub branch_name: String,
    pub purpose: BranchPurpose,
    pub delete: bool,
    pub reason: String,
    /// Seconds since the branch was created, when Neon says when that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<i64>,
}

/// Options that widen what gc deletes.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    /// Delete every validation and backup branch that is not a default or protected branch.
    pub all: bool,
    /// Delete branches rollbacks preserved once they are at least this old (`--preserved
    /// --older-than`).
    pub preserved_older_than: Option<std::time::Duration>,
}

/// Decisions for the schemafleet branches among `branches` (other branches are not listed).
pub fn select(
    project_id: &str,
    branches: &[Branch],
    now: OffsetDateTime,
    rollout: Option<Rollout<'_>>,
    options: GcOptions,
) -> Vec<Decision> {
    branches
        .iter()
        .filter_map(|branch| decide(project_id, branch, now, rollout, options))
        .collect()
}

/// Delete or keep one branch; `None` when schemafleet did not name it.
pub fn decide(
    project_id: &str,
    branch: &Branch,
    now: OffsetDateTime,
    rollout: Option<Rollout<'_>>,
    options: GcOptions,
) -> Option<Decision> {
    let name = parse_branch_name(&branch.name)?;
    let age_seconds = crate::clock::parse_rfc3339(&branch.created_at)
        .map(|created_at| (now - created_at).whole_seconds().max(0));
    let (delete, reason) = if name.purpose == BranchPurpose::Preserved {
        preserved_verdict(branch, age_seconds, now, options)
    } else {
        verdict(project_id, branch, &name, now, rollout, options)
    };
    Some(Decision {
        project_id: project_id.to_string(),
        branch_id: branch.id.clone(),
        branch_name: branch.name.clone(),
        purpose: name.purpose,
        delete,
        reason,
        age_seconds,
    })
}

/// The verdicts every branch gets before its purpose matters: a default or protected branch is
/// kept, an expired one goes (Neon would delete it anyway).
fn settled_by_kind_or_expiry(branch: &Branch, now: OffsetDateTime) -> Option<(bool, String)> {
    if branch.default {
        return Some((
            false,
            "the project's default branch: never deleted".to_string(),
        ));
    }
    if branch.protected {
        return Some((false, "protected branch: never deleted".to_string()));
    }
    let text = branch.expires_at.as_deref()?;
    crate::clock::parse_rfc3339(text)
        .is_some_and(|at| at <= now)
        .then(|| (true, format!("expired at {text}")))
}

/// A preserved branch holds writes made after a restore point, which only the operator can
/// judge: it goes when expired (an expiry set by `rollback --preserve-for`) or when asked for
/// by age, never by `--all` or a journal.
fn preserved_verdict(
    branch: &Branch,
    age_seconds: Option<i64>,
    now: OffsetDateTime,
    options: GcOptions,
) -> (bool, String) {
    if let Some(settled) = settled_by_kind_or_expiry(branch, now) {
        return settled;
    }
    let age = age_seconds.map_or_else(
        || "of unknown age".to_string(),
        |seconds| format!("{} old", human_age(seconds)),
    );
    let holds = "main's state before a rollback, with writes made after its restore point";
    match options.preserved_older_than {
        Some(limit) => {
            let limit_text = human_age(limit.as_secs() as i64);
            if age_seconds.is_some_and(|seconds| seconds >= limit.as_secs() as i64) {
                (
                    true,
                    format!("preserved by a rollback, {age}: at least --older-than {limit_text}"),
                )
            } else {
                (
                    false,
                    format!(
                        "preserved by a rollback, {age}: younger than --older-than {limit_text} ({holds})"
                    ),
                )
            }
        }
        None => {
            let expiry = branch
                .expires_at
                .as_deref()
                .map_or_else(String::new, |text| format!(", expires at {text}"));
            (
                false,
                format!(
                    "preserved by a rollback, {age}{expiry}: {holds}; `gc --preserved --older-than 30d` deletes those once nobody needs them"
                ),
            )
        }
    }
}

/// `45s`, `12m`, `5h`, `3d`: the largest whole unit.
pub fn human_age(seconds: i64) -> String {
    match seconds {
        seconds if seconds < 120 => format!("{seconds}s"),
        seconds if seconds < 7_200 => format!("{}m", seconds / 60),
        seconds if seconds < 172_800 => format!("{}h", seconds / 3_600),
        seconds => format!("{}d", seconds / 86_400),
    }
}

fn verdict(
    project_id: &str,
    branch: &Branch,
    name: &SchemafleetBranchName,
    now: OffsetDateTime,
    rollout: Option<Rollout<'_>>,
    options: GcOptions,
) -> (bool, String) {
    if let Some(settled) = settled_by_kind_or_expiry(branch, now) {
        return settled;
    }
    let expires_at = branch.expires_at.as_deref();
    let not_expired = match expires_at {
        Some(text) => format!("expires at {text}"),
        None => "no expiry".to_string(),
    };
    if options.all {
        return (true, format!("--all ({not_expired})"));
    }
    let Some(rollout) = rollout.filter(|rollout| rollout.owns(name.plan_prefix.as_deref())) else {
        let owner = name.plan_prefix.as_deref().map_or_else(
            || "an unknown plan".to_string(),
            |prefix| format!("plan {prefix}…"),
        );
        return (
            false,
            format!(
                "{not_expired}; made by {owner}, whose journal was not given (pass that plan with --plan, or --all)"
            ),
        );
    };
    let Some(tenant) = rollout.state.tenant(project_id) else {
        return (
            false,
            format!(
                "{not_expired}; this plan's journal has no record of the tenant (pass --all to delete)"
            ),
        );
    };
    let status = tenant.status;
    let finished = status.is_finished()
        || matches!(
            status,
            TenantStatus::RolledBack | TenantStatus::RollbackFailed
        );
    if !finished {
        return (
            false,
            format!(
                "{not_expired}; the tenant is {} in this plan's journal: `apply` may still use the branch (its resume cleans up)",
                status.as_str()
            ),
        );
    }
    match name.purpose {
        // [`decide`] judges these by age before any journal is consulted.
        BranchPurpose::Preserved => (
            false,
            format!(
                "{not_expired}; preserved by a rollback: only `--preserved --older-than` deletes it"
            ),
        ),
        BranchPurpose::Validate => (
            true,
            format!(
                "validation branch of a finished rollout (tenant {})",
                status.as_str()
            ),
        ),
        BranchPurpose::Backup => {
            let is_restore_point = matches!(
                tenant.restore_point.as_deref(),
                Some(RestorePoint::BackupBranch { backup_branch_id, backup_branch_name, .. })
                    if backup_branch_id == &branch.id || backup_branch_name == &branch.name
            );
            if is_restore_point {
                (
                    false,
                    format!(
                        "{not_expired}; the tenant's current restore point (`rollback` needs it; --all deletes it)"
                    ),
                )
            } else {
                (
                    true,
                    format!(
                        "backup branch no longer a restore point (tenant {})",
                        status.as_str()
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Event, Phase, Record};
    use crate::pg::DbFailure;

    const PLAN_ID: &str = "0123456789abcdef0123";

    fn now() -> OffsetDateTime {
        crate::clock::parse_rfc3339("2026-05-01T12:00:00Z").unwrap()
    }

    fn branch(id: &str, name: &str, expires_at: Option<&str>) -> Branch {
        Branch {
            id: id.into(),
            name: name.into(),
            expires_at: expires_at.map(str::to_string),
            current_state: "ready".into(),
            ..Branch::default()
        }
    }

    fn validate_name(plan_prefix: &str) -> String {
        format!("schemafleet-validate-{plan_prefix}-20260501t110000z-1a2b")
    }

    fn backup_name(plan_prefix: &str) -> String {
        format!("schemafleet-backup-{plan_prefix}-20260501t110000z-3c4d")
    }

    fn record(seq: u64, event: Event) -> Record {
        Record {
            v: crate::journal::record::RECORD_VERSION,
            seq,
            at: "2026-05-01T11:00:00Z".into(),
            event,
        }
    }

    /// Tenant `p-done` applied with backup restore point `br-backup-current`; `p-busy` is in
    /// flight; `p-failed` failed.
    fn journal() -> JournalState {
        let wave = "canary".to_string();
        let records = vec![
            record(
                1,
                Event::RunStarted {
                    plan_id: PLAN_ID.into(),
                    run_id: "r".into(),
                    pid: 1,
                    tool_version: "0".into(),
                },
            ),
            record(
                2,
                Event::TenantProbed {
                    tenant: "p-done".into(),
                    wave: wave.clone(),
                    current_version: Some(1),
                    pending: vec![2],
                },
            ),
            record(
                3,
                Event::RestorePointRecorded {
                    tenant: "p-done".into(),
                    wave: wave.clone(),
                    point: RestorePoint::BackupBranch {
                        main_branch_id: "br-main".into(),
                        backup_branch_id: "br-backup-current".into(),
                        backup_branch_name: backup_name("0123456789ab"),
                    },
                },
            ),
            record(
                4,
                Event::Applied {
                    tenant: "p-done".into(),
                    wave: wave.clone(),
                    versions: vec![2],
                    lock_retries: 0,
                },
            ),
            record(
                5,
                Event::TenantProbed {
                    tenant: "p-busy".into(),
                    wave: wave.clone(),
                    current_version: Some(1),
                    pending: vec![2],
                },
            ),
            record(
                6,
                Event::Failed {
                    tenant: "p-failed".into(),
                    wave,
                    phase: Phase::Validate,
                    error: DbFailure::new(None, "boom"),
                    applied_on_main: Vec::new(),
                },
            ),
        ];
        JournalState::replay(&records)
    }

    fn decide_one(
        project_id: &str,
        branch: &Branch,
        state: Option<&JournalState>,
        all: bool,
    ) -> Option<Decision> {
        let rollout = state.map(|state| Rollout {
            plan_id: PLAN_ID,
            state,
        });
        decide(
            project_id,
            branch,
            now(),
            rollout,
            GcOptions {
                all,
                preserved_older_than: None,
            },
        )
    }

    #[test]
    fn names_are_parsed_by_prefix_and_plan() {
        let parsed = parse_branch_name(&validate_name("0123456789ab")).unwrap();
        assert_eq!(parsed.purpose, BranchPurpose::Validate);
        assert_eq!(parsed.plan_prefix.as_deref(), Some("0123456789ab"));
        let parsed = parse_branch_name(&backup_name("ab-cd")).unwrap();
        assert_eq!(parsed.purpose, BranchPurpose::Backup);
        assert_eq!(parsed.plan_prefix.as_deref(), Some("ab-cd"));
        let odd = parse_branch_name("schemafleet-backup-x").unwrap();
        assert_eq!(odd.plan_prefix, None);
        assert_eq!(parse_branch_name("main"), None);
        assert_eq!(parse_branch_name("schemafleet-preserved-x-y-z"), None);
        let preserved = parse_branch_name("pre-rollback-0123abcd-20260501t110000z").unwrap();
        assert_eq!(preserved.purpose, BranchPurpose::Preserved);
        assert_eq!(preserved.plan_prefix.as_deref(), Some("0123abcd"));
        assert_eq!(parse_branch_name("my-schemafleet-validate-a-b-c"), None);
    }

    #[test]
    fn other_branches_are_not_candidates_even_with_all_and_expired() {
        let dev = branch("br-dev", "dev", Some("2026-01-01T00:00:00Z"));
        assert_eq!(decide_one("p", &dev, None, true), None);
        let branches = vec![dev, branch("br-v", &validate_name("0123456789ab"), None)];
        let options = GcOptions {
            all: true,
            preserved_older_than: None,
        };
        let decisions = select("p", &branches, now(), None, options);
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].branch_id, "br-v");
    }

    #[test]
    fn default_and_protected_branches_are_always_kept() {
        let mut default = branch("br-main", &validate_name("0123456789ab"), None);
        default.default = true;
        let decision = decide_one("p", &default, None, true).unwrap();
        assert!(!decision.delete && decision.reason.contains("default"));
        let mut protected = branch("br-p", &backup_name("x"), Some("2026-01-01T00:00:00Z"));
        protected.protected = true;
        let decision = decide_one("p", &protected, None, true).unwrap();
        assert!(!decision.delete && decision.reason.contains("protected"));
    }

    #[test]
    fn expired_branches_go_without_a_journal() {
        let expired = branch(
            "br-1",
            &validate_name("fffffffffff0"),
            Some("2026-05-01T11:59:59Z"),
        );
        let decision = decide_one("p", &expired, None, false).unwrap();
        assert!(decision.delete, "{decision:?}");
        assert!(decision.reason.contains("expired at 2026-05-01T11:59:59Z"));
        let later = branch(
            "br-2",
            &validate_name("fffffffffff0"),
            Some("2026-05-01T12:00:01Z"),
        );
        let decision = decide_one("p", &later, None, false).unwrap();
        assert!(!decision.delete, "{decision:?}");
        assert!(decision.reason.contains("--plan"), "{decision:?}");
        let decision = decide_one("p", &later, None, true).unwrap();
        assert!(decision.delete && decision.reason.contains("--all"));
    }

    #[test]
    fn finished_tenants_lose_validation_branches_and_stale_backups() {
        let state = journal();
        let validate = branch("br-v", &validate_name("0123456789ab"), None);
        let decision = decide_one("p-done", &validate, Some(&state), false).unwrap();
        assert!(decision.delete, "{decision:?}");
        assert!(decision.reason.contains("applied"));
        let decision = decide_one("p-failed", &validate, Some(&state), false).unwrap();
        assert!(decision.delete, "{decision:?}");

        let stale_backup = branch(
            "br-backup-old",
            "schemafleet-backup-0123456789ab-20260430t090000z-0000",
            None,
        );
        let decision = decide_one("p-done", &stale_backup, Some(&state), false).unwrap();
        assert!(decision.delete, "{decision:?}");
        assert!(decision.reason.contains("no longer a restore point"));
    }

    #[test]
    fn the_current_restore_point_is_kept_unless_all() {
        let state = journal();
        let current = branch("br-backup-current", &backup_name("0123456789ab"), None);
        let decision = decide_one("p-done", &current, Some(&state), false).unwrap();
        assert!(!decision.delete, "{decision:?}");
        assert!(decision.reason.contains("restore point"));
        assert!(
            decide_one("p-done", &current, Some(&state), true)
                .unwrap()
                .delete
        );
    }

    #[test]
    fn in_flight_unknown_and_foreign_plans_are_kept() {
        let state = journal();
        let validate = branch("br-v", &validate_name("0123456789ab"), None);
        let decision = decide_one("p-busy", &validate, Some(&state), false).unwrap();
        assert!(
            !decision.delete && decision.reason.contains("in_flight"),
            "{decision:?}"
        );
        let decision = decide_one("p-unknown", &validate, Some(&state), false).unwrap();
        assert!(
            !decision.delete && decision.reason.contains("no record"),
            "{decision:?}"
        );
        let foreign = branch("br-f", &validate_name("999999999999"), None);
        let decision = decide_one("p-done", &foreign, Some(&state), false).unwrap();
        assert!(
            !decision.delete && decision.reason.contains("plan 999999999999"),
            "{decision:?}"
        );
    }

    #[test]
    fn preserved_branches_are_listed_with_age_and_go_only_by_age_or_expiry() {
        let mut old = branch("br-old", "pre-rollback-0123abcd-20260401t120000z", None);
        old.created_at = "2026-04-01T12:00:00Z".into();
        let mut young = branch("br-young", "pre-rollback-0123abcd-20260430t120000z", None);
        young.created_at = "2026-04-30T12:00:00Z".into();
        let by_age = |older_than_days: Option<u64>, all: bool| GcOptions {
            all,
            preserved_older_than: older_than_days
                .map(|days| std::time::Duration::from_secs(days * 86_400)),
        };
        // Listed, never deleted by default or by --all.
        for options in [by_age(None, false), by_age(None, true)] {
            let decision = decide("p-1", &old, now(), None, options).unwrap();
            assert!(!decision.delete, "{decision:?}");
            assert_eq!(decision.purpose, BranchPurpose::Preserved);
            assert_eq!(decision.age_seconds, Some(30 * 86_400));
            assert!(decision.reason.contains("30d old"), "{decision:?}");
            assert!(
                decision.reason.contains("--preserved --older-than"),
                "{decision:?}"
            );
        }
        // By age.
        let decision = decide("p-1", &old, now(), None, by_age(Some(30), false)).unwrap();
        assert!(decision.delete, "{decision:?}");
        let decision = decide("p-1", &young, now(), None, by_age(Some(30), false)).unwrap();
        assert!(
            !decision.delete && decision.reason.contains("younger"),
            "{decision:?}"
        );
        // An expiry set at rollback time is honoured without flags.
        let mut expired = young.clone();
        expired.expires_at = Some("2026-05-01T11:00:00Z".into());
        let decision = decide("p-1", &expired, now(), None, by_age(None, false)).unwrap();
        assert!(
            decision.delete && decision.reason.contains("expired"),
            "{decision:?}"
        );
        assert_eq!(human_age(90), "90s");
        assert_eq!(human_age(3 * 3_600), "3h");
    }
}

//! What a retry or a resume takes over from the journal, decided against main's history: the
//! versions an interrupted apply committed, and whether the journaled restore point still
//! serves. Pure: journal state and history rows in, decisions out (issue 19).
//!
//! **Invariant:** a version is credited to this plan only when the journal says its apply
//! started (`apply_started`) and main's history row for it was written after that record.

use time::OffsetDateTime;

use crate::journal::TenantState;
use crate::pg::AppliedMigration;

/// How far the runner's clock (which stamps `applied_on`) may trail the journal's. Both are
/// this machine's clock when this tool applied the row; the slack only covers rounding.
const CLOCK_SLACK: time::Duration = time::Duration::seconds(5);

/// Versions of `started` (an `apply_started` record's) that main's history holds with a row
/// written at or after `started_at`: this plan's apply committed them, whatever the journal
/// lacks after it (the run was killed, or the COMMIT's answer was lost). A row whose time
/// cannot be read is credited too: naming a tenant for rollback beats hiding it.
pub fn committed_by_interrupted_apply(
    started: &[i32],
    started_at: &str,
    history: &[AppliedMigration],
) -> Vec<i32> {
    let started_at = crate::clock::parse_rfc3339(started_at);
    history
        .iter()
        .filter(|row| started.contains(&row.version))
        .filter(|row| {
            match (
                started_at,
                crate::clock::parse_rfc3339(row.applied_on.trim()),
            ) {
                (Some(started_at), Some(applied_on)) => applied_on >= started_at - CLOCK_SLACK,
                _ => true,
            }
        })
        .map(|row| row.version)
        .collect()
}

/// The versions the tenant's unfinished apply (its journaled `apply_started`, of an earlier
/// run or of this one before a reconnect) committed on main, as `history` (read just now)
/// shows them.
pub fn committed_since_apply_started(
    prior: Option<&TenantState>,
    history: &[AppliedMigration],
) -> Vec<i32> {
    let Some(prior) = prior else {
        return Vec::new();
    };
    match (&prior.apply_started, &prior.apply_started_at) {
        (Some(started), Some(started_at)) => {
            committed_by_interrupted_apply(started, started_at, history)
        }
        _ => Vec::new(),
    }
}

/// Whether the journaled restore point must be kept: only once main holds versions of this plan
/// (`applied_on_main` is what the earlier attempts committed, `recovered` what the re-probe just
/// credited). While main is still at its pre-release version, the newest point is the right
/// one: an old one may have left the history window, and restoring to it would also throw
/// away every write made since the failed attempt.
pub fn keeps_restore_point(applied_on_main: &[i32], recovered: &[i32]) -> bool {
    !applied_on_main.is_empty() || !recovered.is_empty()
}

/// Why a branch point taken at `point_at` can no longer be restored in a project that keeps
/// `retention_seconds` of history, checked at `now`; `None` when it can (or is unknown).
pub fn outside_history_window(
    point_at: Option<&str>,
    retention_seconds: Option<u64>,
    now: OffsetDateTime,
) -> Option<String> {
    let point_at = crate::clock::parse_rfc3339(point_at?)?;
    let window = i64::try_from(retention_seconds?).ok()?;
    let age = (now - point_at).whole_seconds();
    (age > window).then(|| {
        format!(
            "the restore point is {age}s old but the project keeps {window}s of history: Neon can no longer restore main to before this plan, so this plan does not migrate it further; main holds part of the plan (applied_on_main): finish it by hand, or restore it from a backup of your own"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i32, applied_on: &str) -> AppliedMigration {
        AppliedMigration {
            version,
            name: format!("m{version}"),
            checksum: "1".into(),
            applied_on: applied_on.into(),
        }
    }

    #[test]
    fn only_started_versions_committed_after_the_start_are_credited() {
        let history = [
            row(1, "2026-11-26T09:00:00Z"),
            row(2, "2026-11-26T10:00:01.5Z"),
            row(3, "2026-11-26T10:00:02Z"),
            row(5, "2026-11-26T10:00:03Z"),
        ];
        // V1 was there long before the start (another runner), V5 was not started by us.
        assert_eq!(
            committed_by_interrupted_apply(&[1, 2, 3, 4], "2026-11-26T10:00:00Z", &history),
            vec![2, 3]
        );
        // A row stamped a moment before the journal's record is still ours (rounding).
        assert_eq!(
            committed_by_interrupted_apply(&[2], "2026-11-26T10:00:04Z", &history),
            vec![2]
        );
        // An unreadable time credits the row rather than hiding a change to main.
        assert_eq!(
            committed_by_interrupted_apply(&[7], "2026-11-26T10:00:00Z", &[row(7, "garbage")]),
            vec![7]
        );
    }

    #[test]
    fn the_restore_point_is_kept_only_once_main_holds_this_plan() {
        assert!(!keeps_restore_point(&[], &[]));
        assert!(keeps_restore_point(&[1], &[]));
        assert!(keeps_restore_point(&[], &[2]));
    }

    #[test]
    fn a_branch_point_older_than_the_history_window_is_refused() {
        let now = crate::clock::parse_rfc3339("2026-11-26T12:00:00Z").expect("time");
        let old = Some("2026-11-26T10:00:00Z");
        assert!(
            outside_history_window(old, Some(3600), now)
                .is_some_and(|reason| reason.contains("7200s old"))
        );
        assert!(outside_history_window(old, Some(86_400), now).is_none());
        assert!(outside_history_window(None, Some(60), now).is_none());
        assert!(outside_history_window(old, None, now).is_none());
    }
}

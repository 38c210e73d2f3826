//! Rollback by Neon branch restore: put a tenant's main back to its journaled restore point.
//!
//! Choosing tenants and building the restore requests is pure ([`select`], [`restore_request`]);
//! [`roll_back_tenant`] does the I/O: restore through the API, wait for its operations, then
//! check the history table shows the pre-migration versions.
//!
//! **Invariant:** a tenant without a restore point, or whose point is outside the project's
//! history window, is refused before any API call: never a partial restore.
//! **Invariant:** the state main had before the restore is kept under `preserve_under_name`.
//! **Invariant:** a restore never silently undoes another release: a tenant whose main has
//! migrations this plan does not contain, applied after the restore point, is refused unless
//! the operator asks for them to be undone too.
//! **Invariant:** a restore never moves a tenant forward: a tenant whose main no longer has the
//! version it had at the restore point (another plan's rollback took it further back, or
//! elsewhere) is refused, whatever the flags.
//! **Invariant:** what a refusal says about main is read from main's history, not inferred from
//! this plan's journal, which another plan's apply or rollback can have made stale.

use std::time::Duration;

use crate::journal::{Event, JournalState, RestorePoint, TenantState, TenantStatus};
use crate::neon::{NeonClient, RestoreBranch};
use crate::pg;
use crate::plan::model::Plan;

/// Which tenants the operator asked for.
#[derive(Debug, Clone)]
pub enum Selection {
    Tenants(Vec<String>),
    Wave(String),
    /// Tenants whose apply failed after main changed.
    Failed,
}

/// A tenant that will be restored.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub tenant: String,
    pub wave: String,
    pub point: RestorePoint,
    /// When the restore point was taken (RFC 3339): writes after it move to the preserved branch.
    pub point_at: Option<String>,
    /// The version main had before the migration, which the history must show afterwards.
    pub expected_version: Option<i32>,
    pub preserve_under_name: String,
}

/// A tenant that will not be restored, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub tenant: String,
    pub reason: String,
}

/// What this plan's journal remembers of a tenant it rolled back: main's version at the restore
/// point it was rolled back to. A refusal of such a tenant is re-told from main's history
/// ([`already_rolled_back_reason`]), since a later plan may have migrated it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBackBefore {
    pub version_at_point: Option<i32>,
}

impl RolledBackBefore {
    /// `Some` when the journal says this plan rolled the tenant back.
    pub fn of(state: &JournalState, tenant: &str) -> Option<RolledBackBefore> {
        let tenant = state.tenant(tenant)?;
        (tenant.status == TenantStatus::RolledBack).then_some(RolledBackBefore {
            version_at_point: tenant.version_at_restore_point,
        })
    }
}

/// Pick the tenants to roll back. Pure: plan and journal in, candidates and refusals out.
pub fn select(
    plan: &Plan,
    state: &JournalState,
    selection: &Selection,
    stamp: &str,
) -> Result<(Vec<Candidate>, Vec<Refusal>), String> {
    let chosen: Vec<(String, String)> = match selection {
        Selection::Tenants(references) => {
            let mut chosen: Vec<(String, String)> = Vec::new();
            for reference in references {
                match plan.resolve_tenant(reference).as_slice() {
                    [tenant] => {
                        let (_, wave) = plan
                            .tenant(&tenant.id)
                            .expect("invariant: resolve_tenant returns planned tenants");
                        if !chosen.iter().any(|(id, _)| *id == tenant.id) {
                            chosen.push((tenant.id.clone(), wave.name.clone()));
                        }
                    }
                    [] => {
                        return Err(format!(
                            "tenant {reference} is not in plan {}: --tenant takes a Neon project id or project name of the plan (its waves list both, and so do the apply report and `status`)",
                            plan.plan_id
                        ));
                    }
                    several => {
                        let ids: Vec<&str> =
                            several.iter().map(|tenant| tenant.id.as_str()).collect();
                        return Err(format!(
                            "--tenant {reference}: several tenants of plan {} have that name ({}); name the one you mean by its project id",
                            plan.plan_id,
                            ids.join(", ")
                        ));
                    }
                }
            }
            chosen
        }
        Selection::Wave(name) => {
            let Some(wave) = plan.wave(name) else {
                let names: Vec<&str> = plan.waves.iter().map(|wave| wave.name.as_str()).collect();
                return Err(format!(
                    "the plan has no wave {name} (waves: {})",
                    names.join(", ")
                ));
            };
            wave.tenant_ids()
                .filter(|tenant| changed_main(state.tenant(tenant).as_ref()))
                .map(|tenant| (tenant.to_string(), wave.name.clone()))
                .collect()
        }
        Selection::Failed => plan
            .waves
            .iter()
            .flat_map(|wave| {
                wave.tenant_ids()
                    .map(move |tenant| (tenant.to_string(), wave.name.clone()))
            })
            .filter(|(tenant, _)| {
                // What every attempt committed, not only the last one: a retry that failed
                // before touching main must not hide what the first attempt left there.
                state.tenant(tenant).is_some_and(|state| {
                    state.status == TenantStatus::Failed && !state.applied_versions.is_empty()
                })
            })
            .collect(),
    };
    let plan_prefix: String = plan.plan_id.chars().take(8).collect();
    let mut candidates = Vec::new();
    let mut refusals = Vec::new();
    for (tenant, wave) in chosen {
        let tenant_state = state.tenant(&tenant);
        match tenant_state.as_ref().and_then(|state| {
            state
                .restore_point
                .as_deref()
                .cloned()
                .map(|point| (state, point))
        }) {
            Some((tenant_state, point)) => candidates.push(Candidate {
                preserve_under_name: format!("pre-rollback-{plan_prefix}-{stamp}"),
                point_at: point_time(&point).or(tenant_state.restore_point_at.clone()),
                expected_version: tenant_state.version_at_restore_point,
                tenant,
                wave,
                point,
            }),
            None => {
                let status = tenant_state
                    .as_ref()
                    .map_or(TenantStatus::NotStarted, |state| state.status);
                let reason = match status {
                    TenantStatus::NotStarted
                    | TenantStatus::UpToDate
                    | TenantStatus::SkippedRecorded
                    | TenantStatus::Diverged => {
                        format!(
                            "no restore point: main was not changed by this plan (status {})",
                            status.as_str()
                        )
                    }
                    TenantStatus::RolledBack => {
                        "already rolled back; nothing to restore".to_string()
                    }
                    _ => format!(
                        "no restore point in the journal (status {}; restore_point: {} in the plan)",
                        status.as_str(),
                        plan.policy.restore_point.as_str()
                    ),
                };
                refusals.push(Refusal { tenant, reason });
            }
        }
    }
    Ok((candidates, refusals))
}

/// Whether main may have changed since the restore point, whatever the tenant's last outcome:
/// an `up_to_date` after an `apply_started` (a journal of an earlier version, where the re-probe
/// of a tenant killed after its COMMIT recorded it so) still had this plan's apply reach main.
fn changed_main(state: Option<&TenantState>) -> bool {
    state.is_some_and(|state| {
        state.status == TenantStatus::Applied
            || state.status == TenantStatus::RollbackFailed
            || state.apply_started.is_some()
            || !state.applied_versions.is_empty()
    })
}

fn point_time(point: &RestorePoint) -> Option<String> {
    match point {
        RestorePoint::BranchPoint { timestamp, .. } => timestamp.clone(),
        RestorePoint::BackupBranch { .. } => None,
    }
}

/// The restore call for a candidate: `(main branch id, request)`.
pub fn restore_request(candidate: &Candidate) -> (String, RestoreBranch) {
    let request = match &candidate.point {
        RestorePoint::BranchPoint {
            main_branch_id,
            lsn,
            ..
        } => RestoreBranch {
            source_branch_id: main_branch_id.clone(),
            source_lsn: Some(lsn.clone()),
            source_timestamp: None,
            preserve_under_name: Some(candidate.preserve_under_name.clone()),
        },
        RestorePoint::BackupBranch {
            backup_branch_id, ..
        } => RestoreBranch {
            source_branch_id: backup_branch_id.clone(),
            source_lsn: None,
            source_timestamp: None,
            preserve_under_name: Some(candidate.preserve_under_name.clone()),
        },
    };
    (candidate.point.main_branch_id().to_string(), request)
}

/// How long ago the restore point was, in seconds, if known.
pub fn age_seconds(candidate: &Candidate) -> Option<i64> {
    let at = crate::clock::parse_rfc3339(candidate.point_at.as_deref()?)?;
    Some((time::OffsetDateTime::now_utc() - at).whole_seconds())
}

/// Restore one tenant and check its history. Journals start and end. `Ok(Err(reason))` is a
/// tenant-level failure; `Err` means the journal cannot be written.
pub async fn roll_back_tenant(
    client: &NeonClient,
    recorder: &crate::executor::tenant::Recorder,
    plan: &Plan,
    candidate: &Candidate,
) -> Result<Result<(), String>, crate::journal::JournalError> {
    // The history window: a branch point older than it cannot be restored exactly.
    if let RestorePoint::BranchPoint { .. } = candidate.point {
        match client.get_project(&candidate.tenant).await {
            Ok(project) => {
                if let (Some(window), Some(age)) =
                    (project.history_retention_seconds, age_seconds(candidate))
                    && age > window as i64
                {
                    return Ok(Err(format!(
                        "the restore point is {age}s old but the project keeps {window}s of history: Neon cannot restore it; nothing was changed"
                    )));
                }
            }
            Err(error) => {
                return Ok(Err(format!(
                    "reading the project: {error}; nothing was changed"
                )));
            }
        }
    }
    recorder
        .record(Event::RollbackStarted {
            tenant: candidate.tenant.clone(),
            preserve_under_name: candidate.preserve_under_name.clone(),
        })
        .await?;
    let (main_branch_id, request) = restore_request(candidate);
    if let Err(error) = client
        .restore_branch(&candidate.tenant, &main_branch_id, &request)
        .await
    {
        let reason = format!("restore: {error}");
        recorder
            .record(Event::RollbackFailed {
                tenant: candidate.tenant.clone(),
                error: reason.clone(),
            })
            .await?;
        return Ok(Err(reason));
    }
    match verify_history(client, plan, candidate).await {
        Ok(()) => {
            recorder
                .record(Event::RolledBack {
                    tenant: candidate.tenant.clone(),
                    preserved_branch: candidate.preserve_under_name.clone(),
                    restored_to: candidate.point.clone(),
                })
                .await?;
            Ok(Ok(()))
        }
        Err(reason) => {
            recorder
                .record(Event::RollbackFailed {
                    tenant: candidate.tenant.clone(),
                    error: reason.clone(),
                })
                .await?;
            Ok(Err(reason))
        }
    }
}

/// What main's history now means for restoring a tenant to its restore point. Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MainCheck {
    /// The restore undoes this plan and nothing else.
    Restorable,
    /// The restore would also undo these versions of later releases (ascending).
    LaterReleases(Vec<i32>),
    /// main does not have the version it had at the restore point: restoring would move it
    /// forward (or sideways), re-creating a state another rollback already left.
    WouldMoveForward { current: Option<i32>, at_point: i32 },
}

impl MainCheck {
    /// The refusal's text, or `None` when the restore may go ahead (with `undo_later`, the
    /// operator accepted undoing later releases).
    pub fn refusal(&self, undo_later: bool) -> Option<String> {
        match self {
            MainCheck::Restorable => None,
            MainCheck::LaterReleases(_) if undo_later => None,
            MainCheck::LaterReleases(versions) => Some(format!(
                "main also has {} from a later release (not in this plan), which the restore would undo too; roll back the later plan first, or pass --undo-later-releases; nothing was changed",
                version_list(versions)
            )),
            MainCheck::WouldMoveForward { current, at_point } => {
                let (relation, effect) = if current.is_none_or(|current| current < *at_point) {
                    ("behind", "move it forward to")
                } else {
                    ("elsewhere than", "put it back at")
                };
                Some(format!(
                    "main is at {} now, {relation} the restore point's V{at_point} (another plan's rollback moved it since): restoring would {effect} V{at_point}; nothing was changed",
                    describe(*current)
                ))
            }
        }
    }
}

/// Judge main's versions now (`current`) against the version it had at the restore point and
/// the plan's versions (`planned`). Pure.
pub fn check_main(current: &[i32], version_at_point: Option<i32>, planned: &[i32]) -> MainCheck {
    if let Some(at_point) = version_at_point
        && !current.contains(&at_point)
    {
        return MainCheck::WouldMoveForward {
            current: current.iter().copied().max(),
            at_point,
        };
    }
    let mut later: Vec<i32> = current
        .iter()
        .copied()
        .filter(|version| version_at_point.is_none_or(|at| *version > at))
        .filter(|version| !planned.contains(version))
        .collect();
    later.sort_unstable();
    if later.is_empty() {
        MainCheck::Restorable
    } else {
        MainCheck::LaterReleases(later)
    }
}

/// Why a tenant this plan already rolled back is refused, told from main's versions now. Pure.
pub fn already_rolled_back_reason(before: RolledBackBefore, current: &[i32]) -> String {
    let now = current.iter().copied().max();
    if now == before.version_at_point {
        format!(
            "already rolled back by this plan: main is at {} now, its version before this plan; nothing to restore",
            describe(now)
        )
    } else {
        format!(
            "this plan rolled it back to {} earlier, but main is at {} now (another plan or run migrated it since); this plan holds no restore point for that state: roll back the plan that migrated it; nothing was changed",
            describe(before.version_at_point),
            describe(now)
        )
    }
}

/// main's applied versions now, read from its history table.
pub async fn main_versions(
    client: &NeonClient,
    plan: &Plan,
    tenant: &str,
) -> Result<Vec<i32>, String> {
    let uri = main_uri(client, plan, tenant)
        .await
        .map_err(|error| format!("looking up main's URI: {error}"))?;
    let connection = pg::connect(&uri, Duration::from_secs(30))
        .await
        .map_err(|failure| failure.to_string())?;
    let history = pg::read_history(&connection)
        .await
        .map_err(|failure| failure.to_string())?;
    Ok(history.iter().map(|row| row.version).collect())
}

/// The plan's versions, for [`check_main`].
pub fn planned_versions(plan: &Plan) -> Vec<i32> {
    plan.migrations
        .items
        .iter()
        .map(|migration| migration.version)
        .collect()
}

/// The connection URI of the tenant's main, with the plan's database and role.
async fn main_uri(
    client: &NeonClient,
    plan: &Plan,
    tenant: &str,
) -> Result<crate::secret::SecretUri, crate::neon::NeonError> {
    client
        .connection_uri(tenant, None, &plan.policy.database, &plan.policy.role)
        .await
}

/// Give the branch a restore preserved the old main under an expiry (`rollback
/// --preserve-for`): found by its name, which the restore request chose.
pub async fn expire_preserved(
    client: &NeonClient,
    tenant: &str,
    preserved_name: &str,
    expires_at: &str,
) -> Result<(), String> {
    let branches = client
        .list_branches(tenant)
        .await
        .map_err(|error| format!("listing branches to find {preserved_name}: {error}"))?;
    let branch = branches
        .iter()
        .find(|branch| branch.name == preserved_name)
        .ok_or_else(|| format!("the preserved branch {preserved_name} is not listed"))?;
    client
        .set_branch_expiry(tenant, &branch.id, expires_at)
        .await
        .map_err(|error| format!("setting the expiry of {preserved_name}: {error}"))
}

/// `V5, V6, V9`.
pub fn version_list(versions: &[i32]) -> String {
    versions
        .iter()
        .map(|version| format!("V{version}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// After the restore, main's history must end at the version it had before the migration.
async fn verify_history(
    client: &NeonClient,
    plan: &Plan,
    candidate: &Candidate,
) -> Result<(), String> {
    let uri = main_uri(client, plan, &candidate.tenant)
        .await
        .map_err(|error| {
            format!("restored, but looking up main's URI to verify failed: {error}")
        })?;
    // The compute reconnects to the restored timeline; give it a few tries.
    let mut last_error = String::new();
    for attempt in 0..5u64 {
        match pg::connect(&uri, Duration::from_secs(30)).await {
            Ok(connection) => match pg::read_history(&connection).await {
                Ok(history) => {
                    let version = history.iter().map(|row| row.version).max();
                    if version == candidate.expected_version {
                        return Ok(());
                    }
                    return Err(format!(
                        "restored, but main's history is at {} instead of the pre-migration {}",
                        describe(version),
                        describe(candidate.expected_version)
                    ));
                }
                Err(failure) => last_error = failure.to_string(),
            },
            Err(failure) => last_error = failure.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(format!(
        "restored, but main's history could not be read to verify it: {last_error}"
    ))
}

fn describe(version: Option<i32>) -> String {
    version.map_or_else(|| "no version".to_string(), |version| format!("V{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Record;
    use crate::plan::model::{PlannedTenant, PlannedWave, test_plan};

    fn replay(events: Vec<Event>) -> JournalState {
        let records: Vec<Record> = events
            .into_iter()
            .enumerate()
            .map(|(idx, event)| Record {
                v: crate::journal::record::RECORD_VERSION,
                seq: idx as u64 + 1,
                at: format!("2026-11-26T10:00:{idx:02}Z"),
                event,
            })
            .collect();
        JournalState::replay(&records)
    }

    #[test]
    fn main_changed_since_the_restore_point_whatever_the_last_outcome() {
        let started = Event::ApplyStarted {
            tenant: "t1".into(),
            wave: "w".into(),
            versions: vec![1],
        };
        // A journal of an earlier version: killed after the COMMIT, the resume said up_to_date.
        let state = replay(vec![
            started.clone(),
            Event::UpToDate {
                tenant: "t1".into(),
                wave: "w".into(),
                ahead: Vec::new(),
            },
        ]);
        assert!(changed_main(state.tenant("t1").as_ref()));
        // A later attempt that changed nothing does not hide an earlier one's commits.
        let failed = |applied_on_main: Vec<i32>| Event::Failed {
            tenant: "t1".into(),
            wave: "w".into(),
            phase: crate::journal::Phase::Apply,
            error: crate::pg::DbFailure::new(None, "boom"),
            applied_on_main,
        };
        let state = replay(vec![started, failed(vec![1]), failed(Vec::new())]);
        assert!(changed_main(state.tenant("t1").as_ref()));
        let state = replay(vec![Event::UpToDate {
            tenant: "t1".into(),
            wave: "w".into(),
            ahead: Vec::new(),
        }]);
        assert!(!changed_main(state.tenant("t1").as_ref()));
    }

    #[test]
    fn tenants_are_chosen_by_id_or_name_and_shared_names_refused() {
        let tenant = |id: &str, name: &str| PlannedTenant {
            id: id.into(),
            name: name.into(),
            region: String::new(),
        };
        let plan = test_plan(vec![PlannedWave {
            name: "all".into(),
            concurrency: 1,
            max_failures: None,
            max_failure_percent: None,
            bake_s: 0,
            checks: Vec::new(),
            approval: Default::default(),
            tenants: vec![
                tenant("p-1", "acme"),
                tenant("p-2", "twin"),
                tenant("p-3", "twin"),
            ],
        }]);
        let state = JournalState::default();
        let choose = |references: &[&str]| {
            let selection =
                Selection::Tenants(references.iter().map(|text| text.to_string()).collect());
            select(&plan, &state, &selection, "stamp")
        };
        // By name and by id: the same tenant, once (refused: nothing was applied to it).
        let (candidates, refusals) = choose(&["acme", "p-1"]).unwrap();
        assert!(candidates.is_empty());
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].tenant, "p-1");
        assert!(
            refusals[0].reason.contains("no restore point"),
            "{refusals:?}"
        );
        let message = choose(&["twin"]).unwrap_err();
        assert!(message.contains("several tenants"), "{message}");
        assert!(message.contains("(p-2, p-3)"), "{message}");
        let message = choose(&["nobody"]).unwrap_err();
        assert!(message.contains("project id or project name"), "{message}");
    }

    #[test]
    fn only_later_versions_outside_the_plan_are_collateral() {
        let planned = [1, 2, 3, 4];
        // Main was at V2 at the restore point, this plan took it to V4, a later one to V6.
        assert_eq!(
            check_main(&[1, 2, 3, 4, 5, 6], Some(2), &planned),
            MainCheck::LaterReleases(vec![5, 6])
        );
        // Nothing beyond this plan: nothing else is undone.
        assert_eq!(
            check_main(&[1, 2, 3, 4], Some(2), &planned),
            MainCheck::Restorable
        );
        // A version from before the restore point stays, in the plan or not.
        assert_eq!(
            check_main(&[0, 1, 2, 3, 4], Some(2), &planned),
            MainCheck::Restorable
        );
        // A fresh tenant: everything outside the plan is collateral.
        assert_eq!(
            check_main(&[7, 1], None, &planned),
            MainCheck::LaterReleases(vec![7])
        );
        assert_eq!(version_list(&[5, 6]), "V5, V6");
        let refusal = MainCheck::LaterReleases(vec![5]).refusal(false).unwrap();
        assert!(refusal.contains("V5") && refusal.contains("--undo-later-releases"));
        assert_eq!(MainCheck::LaterReleases(vec![5]).refusal(true), None);
    }

    #[test]
    fn a_restore_that_would_move_main_forward_is_refused_whatever_the_flags() {
        let planned = [4, 5];
        // Release 1's rollback emptied main; release 2's point was taken at V3.
        let check = check_main(&[], Some(3), &planned);
        assert_eq!(
            check,
            MainCheck::WouldMoveForward {
                current: None,
                at_point: 3
            }
        );
        let reason = check
            .refusal(true)
            .expect("refused even with --undo-later-releases");
        assert!(
            reason.contains("no version") && reason.contains("behind") && reason.contains("V3"),
            "{reason}"
        );
        // Main at V1 only: behind.
        assert!(
            check_main(&[1], Some(3), &planned)
                .refusal(false)
                .unwrap()
                .contains("at V1 now, behind the restore point's V3")
        );
        // Main has V4 but lost V3: elsewhere.
        assert!(
            check_main(&[1, 2, 4], Some(3), &planned)
                .refusal(false)
                .unwrap()
                .contains("elsewhere than")
        );
        // A fresh tenant's point (no version) is never forward of anything.
        assert_eq!(check_main(&[], None, &planned), MainCheck::Restorable);
    }

    #[test]
    fn an_already_rolled_back_tenant_is_described_from_main() {
        let before = RolledBackBefore {
            version_at_point: Some(3),
        };
        let reason = already_rolled_back_reason(before, &[1, 2, 3]);
        assert!(
            reason.contains("already rolled back") && reason.contains("V3"),
            "{reason}"
        );
        let reason = already_rolled_back_reason(before, &[1, 2, 3, 4, 5, 6]);
        assert!(
            reason.contains("main is at V6 now") && reason.contains("another plan"),
            "{reason}"
        );
        assert!(!reason.contains("already rolled back"), "{reason}");
    }
}

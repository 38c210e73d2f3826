//! One tenant's pipeline: probe main, validate on a throwaway branch, record the restore point,
//! apply to main under the advisory lock. Every step is journaled before the next depends on it.
//!
//! **Invariant:** main is only connected to for migrating after validation succeeded (when the
//! plan validates this tenant) and after the restore point is durable in the journal.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApplyConfig;
use super::recovery;
use super::settle::{RequestedDelete, RequestedDeletes};
use super::timings::{StepTimings, TimedStep};
use crate::journal::{
    Event, Journal, JournalError, JournalState, Phase, RestorePoint, TenantState,
};
use crate::neon::{CreateBranch, NeonClient, NeonError};
use crate::pg::lock_footprint::{self, LockHold};
use crate::pg::runner::{self, Timeouts};
use crate::pg::{self, AppliedMigration, DbFailure, HistoryComparison, PlannedVersion};
use crate::plan::model::{Plan, RestorePointKind, Validation};
use crate::secret::SecretUri;

/// How a tenant ended in this run.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantOutcome {
    Applied {
        versions: Vec<i32>,
    },
    UpToDate,
    /// `--skip-recorded`: not connected to; a record says it is up to date.
    SkippedRecorded,
    Diverged {
        reason: String,
    },
    Failed {
        phase: Phase,
        error: DbFailure,
    },
}

/// Appends to the journal and keeps the replayed state current, so summaries need no re-read;
/// and keeps the run's step timings, its own appends included.
pub struct Recorder {
    journal: Journal,
    state: Mutex<JournalState>,
    timings: StepTimings,
}

impl Recorder {
    pub fn new(journal: Journal, state: JournalState) -> Recorder {
        Recorder {
            journal,
            state: Mutex::new(state),
            timings: StepTimings::default(),
        }
    }

    pub async fn record(&self, event: Event) -> Result<(), JournalError> {
        let record = self
            .timings
            .time(TimedStep::Journal, self.journal.append(event))
            .await?;
        self.lock_state().apply(&record);
        Ok(())
    }

    pub fn timings(&self) -> &StepTimings {
        &self.timings
    }

    /// Fold in records other runners of the plan wrote (a shared state store), so a tenant
    /// one of them left unfinished resumes from its records here.
    pub fn absorb<'a>(&self, records: impl IntoIterator<Item = &'a crate::journal::Record>) {
        let mut state = self.lock_state();
        for record in records {
            state.apply(record);
        }
    }

    pub fn tenant(&self, tenant_id: &str) -> Option<TenantState> {
        self.lock_state().tenant(tenant_id)
    }

    /// Read the replayed state in place: a clone would cost a copy of every tenant's state.
    pub fn read<R>(&self, read: impl FnOnce(&JournalState) -> R) -> R {
        read(&self.lock_state())
    }

    /// Move the replayed state out, leaving an empty one: for the end of a run, when nothing
    /// records any more.
    pub fn take_state(&self) -> JournalState {
        std::mem::take(&mut *self.lock_state())
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, JournalState> {
        // A panic while holding this lock cannot leave the state half-applied in a way that
        // matters: `apply` is a plain fold, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Everything a tenant task needs, shared by all tenants of a run.
pub struct TenantContext {
    pub plan: Arc<Plan>,
    pub migrations: Vec<refinery::Migration>,
    pub planned: Vec<PlannedVersion>,
    pub client: NeonClient,
    pub recorder: Arc<Recorder>,
    pub connections: Arc<Semaphore>,
    pub config: ApplyConfig,
    /// Validation branches whose delete was requested, for the end of the run.
    pub requested_deletes: RequestedDeletes,
}

/// The record that lets `--skip-recorded` skip this tenant, if any.
fn skip_by_record<'c>(
    context: &'c TenantContext,
    tenant_id: &str,
    prior: Option<&TenantState>,
) -> Option<&'c super::recorded::Recorded> {
    let recorded = context.config.skip_recorded.as_ref()?;
    if prior.is_some_and(|state| state.status != crate::journal::TenantStatus::NotStarted) {
        return None;
    }
    let plan_max_version = context
        .planned
        .iter()
        .map(|planned| planned.version)
        .max()?;
    recorded.covering(tenant_id, plan_max_version)
}

/// Result of a step that may fail the tenant.
type Step<T> = Result<T, (Phase, DbFailure)>;

/// Run one tenant to an outcome. `Err` only when the journal cannot be written (the run stops).
pub async fn run_tenant(
    context: Arc<TenantContext>,
    tenant_id: String,
    wave: String,
) -> Result<TenantOutcome, JournalError> {
    let prior = context.recorder.tenant(&tenant_id);
    cleanup_open_branches(&context, &tenant_id, prior.as_ref()).await?;
    sweep_requested_branches(&context, &tenant_id, false).await?;
    let result = pipeline(&context, &tenant_id, &wave, prior.as_ref()).await?;
    // A create that a killed run sent may land after the first sweep (Neon reads can lag
    // writes); by now it has, so a second look finds it.
    sweep_requested_branches(&context, &tenant_id, true).await?;
    match result {
        Ok(outcome) => Ok(outcome),
        Err((phase, error)) => {
            let applied_on_main = Vec::new();
            context
                .recorder
                .record(Event::Failed {
                    tenant: tenant_id.clone(),
                    wave: wave.clone(),
                    phase,
                    error: error.clone(),
                    applied_on_main,
                })
                .await?;
            Ok(TenantOutcome::Failed { phase, error })
        }
    }
}

/// Delete branches an earlier, killed run created and never deleted. Best effort: they expire.
async fn cleanup_open_branches(
    context: &TenantContext,
    tenant_id: &str,
    prior: Option<&TenantState>,
) -> Result<(), JournalError> {
    let Some(prior) = prior else { return Ok(()) };
    for (branch_id, (name, purpose)) in &prior.open_branches {
        if purpose != "validate" {
            // Backup branches are restore points: only `gc` deletes them.
            continue;
        }
        match context.client.delete_branch(tenant_id, branch_id).await {
            Ok(()) => {
                context
                    .recorder
                    .record(Event::BranchDeleted {
                        tenant: tenant_id.to_string(),
                        branch_id: branch_id.clone(),
                    })
                    .await?
            }
            Err(error) => {
                tracing::warn!(tenant = tenant_id, branch = %name, error = %error, "could not delete a leftover validation branch; it expires on its own")
            }
        }
    }
    Ok(())
}

/// Delete branches that were requested (journaled `branch_requested`) but never journaled as
/// created: the process died during the create call. With `final_look`, a name that is still
/// not found is given up as never created.
async fn sweep_requested_branches(
    context: &TenantContext,
    tenant_id: &str,
    final_look: bool,
) -> Result<(), JournalError> {
    let requested: Vec<String> = context
        .recorder
        .tenant(tenant_id)
        .map(|state| state.requested_branches.keys().cloned().collect())
        .unwrap_or_default();
    if requested.is_empty() {
        return Ok(());
    }
    let branches = match context.client.list_branches(tenant_id).await {
        Ok(branches) => branches,
        Err(error) => {
            tracing::warn!(tenant = tenant_id, error = %error, "could not list branches to clean up after a killed run; they expire on their own");
            return Ok(());
        }
    };
    for name in requested {
        match branches.iter().find(|branch| branch.name == name) {
            Some(branch) => {
                if let Err(error) = context.client.delete_branch(tenant_id, &branch.id).await {
                    tracing::warn!(tenant = tenant_id, branch = %name, error = %error, "could not delete a leftover branch; it expires on its own");
                    continue;
                }
            }
            None if !final_look => continue,
            None => {}
        }
        context
            .recorder
            .record(Event::BranchAbandoned {
                tenant: tenant_id.to_string(),
                branch_name: name,
            })
            .await?;
    }
    Ok(())
}

fn api_failure(phase: Phase, what: &str, error: &NeonError) -> (Phase, DbFailure) {
    (phase, DbFailure::new(None, format!("{what}: {error}")))
}

/// The steps; the outer `Result` is the journal, the inner one the tenant's fate.
async fn pipeline(
    context: &TenantContext,
    tenant_id: &str,
    wave: &str,
    prior: Option<&TenantState>,
) -> Result<Step<TenantOutcome>, JournalError> {
    let policy = &context.plan.policy;
    let recorder = &context.recorder;

    // 0. Skip without connecting (which would wake its compute) when a record says main has
    // the whole plan. Only a tenant this plan never started: otherwise its history decides.
    if let Some(recorded) = skip_by_record(context, tenant_id, prior) {
        recorder
            .record(Event::SkippedRecorded {
                tenant: tenant_id.into(),
                wave: wave.into(),
                recorded_version: recorded.version,
                source: recorded.source.clone(),
            })
            .await?;
        return Ok(Ok(TenantOutcome::SkippedRecorded));
    }

    // 1. Probe main: what does its history say is pending? The URI comes from the fleet's
    // source when it has one (no API request), else from the Neon API.
    let source_uri = context
        .config
        .source_connections
        .as_ref()
        .and_then(|book| book.connection_uri(tenant_id));
    let main_uri = match source_uri {
        Some(uri) => Ok(uri.clone()),
        None => {
            recorder
                .timings()
                .time(
                    TimedStep::ConnectionUri,
                    context
                        .client
                        .connection_uri(tenant_id, None, &policy.database, &policy.role),
                )
                .await
        }
    };
    let main_uri = match main_uri {
        Ok(uri) => uri,
        Err(error) => {
            let what = if error.status() == Some(404) {
                "the project, its default branch, database or role was not found (deleted or renamed after planning?)"
            } else {
                "looking up main's connection URI"
            };
            return Ok(Err(api_failure(Phase::Probe, what, &error)));
        }
    };
    let (comparison, history, session) = match probe(context, &main_uri).await {
        Ok(probed) => probed,
        Err(failure) => return Ok(Err((Phase::Probe, failure))),
    };
    let recovered = recovery::committed_since_apply_started(prior, &history);
    if let Some(outcome) =
        record_recovered(context, tenant_id, wave, prior, &comparison, &recovered).await?
    {
        return Ok(Ok(outcome));
    }
    // Kept open for the apply when no branch is made in between: one connection per tenant.
    // Branching closes it first, so the copy of main sees no session of ours (and Neon's
    // branch point is not held up by our idle session either).
    let mut main = MainBefore::Open(session);
    let pending = match comparison {
        // Nothing of this plan is left to do; a tenant a newer release already reached is
        // recorded with those versions, so reports call it ahead as `drift` does.
        HistoryComparison::UpToDate { .. } | HistoryComparison::Ahead { .. } => {
            let ahead = match comparison {
                HistoryComparison::Ahead { extra, .. } => extra,
                _ => Vec::new(),
            };
            recorder
                .record(Event::UpToDate {
                    tenant: tenant_id.into(),
                    wave: wave.into(),
                    ahead,
                })
                .await?;
            return Ok(Ok(TenantOutcome::UpToDate));
        }
        HistoryComparison::Diverged { reason } => {
            recorder
                .record(Event::Diverged {
                    tenant: tenant_id.into(),
                    wave: wave.into(),
                    reason: reason.clone(),
                })
                .await?;
            return Ok(Ok(TenantOutcome::Diverged { reason }));
        }
        HistoryComparison::Pending {
            current_version,
            pending,
        } => {
            recorder
                .record(Event::TenantProbed {
                    tenant: tenant_id.into(),
                    wave: wave.into(),
                    current_version,
                    pending: pending.clone(),
                })
                .await?;
            pending
        }
    };
    if let Some(failure) = check_schema(context, tenant_id, main.session()).await {
        return Ok(Err((Phase::Probe, failure)));
    }

    // 2. Validate on a throwaway branch, unless an earlier run already validated these versions.
    let applied_on_main = prior.map_or(&[][..], |state| state.applied_versions.as_slice());
    let kept_point = recovery::keeps_restore_point(applied_on_main, &recovered);
    let mut restore_point = prior
        .filter(|_| kept_point)
        .and_then(|state| state.restore_point.as_deref().cloned());
    let wants_validation = match policy.validation {
        Validation::Branch => true,
        Validation::None => false,
        Validation::SamplePercent(_) => {
            crate::plan::sampled_for_validation(&context.plan, tenant_id)
        }
    };
    let already_validated = prior
        .and_then(|state| state.validated.as_ref())
        .is_some_and(|validated| pending.iter().all(|version| validated.contains(version)));
    let needs_branch_point =
        policy.restore_point == RestorePointKind::BranchPoint && restore_point.is_none();
    if wants_validation && (!already_validated || needs_branch_point) {
        main = main.close();
        match validate(context, tenant_id, wave, &pending).await? {
            Ok(branch_point) => {
                if restore_point.is_none() && policy.restore_point == RestorePointKind::BranchPoint
                {
                    restore_point = Some(branch_point);
                    if let Some(point) = &restore_point {
                        recorder
                            .record(Event::RestorePointRecorded {
                                tenant: tenant_id.into(),
                                wave: wave.into(),
                                point: point.clone(),
                            })
                            .await?;
                    }
                }
            }
            Err(failure) => return Ok(Err(failure)),
        }
    }

    // 3. A restore point that Neon can honour, durable before main changes.
    if restore_point.is_none() {
        match policy.restore_point {
            RestorePointKind::BranchPoint => {
                return Ok(Err((
                    Phase::Branch,
                    DbFailure::new(
                        None,
                        "no branch point to restore to: restore_point: branch_point needs a validation branch for every tenant",
                    ),
                )));
            }
            RestorePointKind::BackupBranch => {
                main = main.close();
                let backed_up = backup(context, tenant_id, wave).await?;
                match backed_up {
                    Ok(point) => {
                        recorder
                            .record(Event::RestorePointRecorded {
                                tenant: tenant_id.into(),
                                wave: wave.into(),
                                point,
                            })
                            .await?;
                    }
                    Err(failure) => return Ok(Err(failure)),
                }
            }
            RestorePointKind::None => {}
        }
    }

    // A point kept from an earlier attempt must still be one Neon can restore.
    if let (Some(point), Some(state)) = (&restore_point, prior)
        && kept_point
        && let Err(failure) = check_kept_restore_point(context, tenant_id, point, state).await
    {
        return Ok(Err(failure));
    }

    // 4. Apply to main under the advisory lock.
    apply_to_main(context, tenant_id, wave, &main_uri, &pending, main).await
}

/// The opt-in step between probe and validation (policy `verify_schema`): main's schema must
/// equal the reference at the version the probe found; `Some` fails the tenant untouched.
async fn check_schema(
    context: &TenantContext,
    tenant_id: &str,
    session: Option<&MainSession>,
) -> Option<DbFailure> {
    let check = context.config.schema_check.as_deref()?;
    let session = session?;
    let version = context
        .recorder
        .read(|state| {
            state
                .tenant(tenant_id)
                .and_then(|tenant| tenant.current_version)
        })
        .unwrap_or(0);
    super::schema_check::verify_schema(check, &session.client, version)
        .await
        .err()
}

/// Journal what the re-probe credits to an earlier run's unfinished apply (`recovered`):
/// `applied` when nothing is left to do (the outcome is returned), else `apply_recovered`
/// and the apply goes on with what is pending.
async fn record_recovered(
    context: &TenantContext,
    tenant_id: &str,
    wave: &str,
    prior: Option<&TenantState>,
    comparison: &HistoryComparison,
    recovered: &[i32],
) -> Result<Option<TenantOutcome>, JournalError> {
    if recovered.is_empty() {
        return Ok(None);
    }
    tracing::info!(tenant = tenant_id, versions = ?recovered, "main holds versions an interrupted apply of this plan committed");
    match comparison {
        HistoryComparison::UpToDate { .. } | HistoryComparison::Ahead { .. } => {
            context
                .recorder
                .record(Event::Applied {
                    tenant: tenant_id.into(),
                    wave: wave.into(),
                    versions: recovered.to_vec(),
                    lock_retries: 0,
                })
                .await?;
            Ok(Some(TenantOutcome::Applied {
                versions: recovered.to_vec(),
            }))
        }
        HistoryComparison::Pending { .. } => {
            let known = prior.map_or(&[][..], |state| state.applied_versions.as_slice());
            if !recovered.iter().all(|version| known.contains(version)) {
                context
                    .recorder
                    .record(Event::ApplyRecovered {
                        tenant: tenant_id.into(),
                        wave: wave.into(),
                        versions: recovered.to_vec(),
                    })
                    .await?;
            }
            Ok(None)
        }
        HistoryComparison::Diverged { .. } => Ok(None),
    }
}

/// A restore point kept from an earlier attempt (main already holds versions of this plan):
/// before main changes further, check Neon can still restore it. A branch point must be
/// inside the project's history window; a backup branch must still exist (they expire).
async fn check_kept_restore_point(
    context: &TenantContext,
    tenant_id: &str,
    point: &RestorePoint,
    state: &TenantState,
) -> Step<()> {
    match point {
        RestorePoint::BranchPoint { timestamp, .. } => {
            let project = context
                .client
                .get_project(tenant_id)
                .await
                .map_err(|error| {
                    api_failure(
                        Phase::Branch,
                        "reading the project to check the restore point",
                        &error,
                    )
                })?;
            let point_at = timestamp.as_deref().or(state.restore_point_at.as_deref());
            match recovery::outside_history_window(
                point_at,
                project.history_retention_seconds,
                time::OffsetDateTime::now_utc(),
            ) {
                Some(reason) => Err((Phase::Branch, DbFailure::new(None, reason))),
                None => Ok(()),
            }
        }
        RestorePoint::BackupBranch {
            backup_branch_id,
            backup_branch_name,
            ..
        } => match context.client.get_branch(tenant_id, backup_branch_id).await {
            Ok(_) => Ok(()),
            Err(error) if error.status() == Some(404) => Err((
                Phase::Branch,
                DbFailure::new(
                    None,
                    format!(
                        "the restore point, backup branch {backup_branch_name} ({backup_branch_id}), is gone (expired or deleted): main is not migrated further without a way back"
                    ),
                ),
            )),
            Err(error) => Err(api_failure(
                Phase::Branch,
                "reading the backup branch to check the restore point",
                &error,
            )),
        },
    }
}

fn timeouts(plan: &Plan) -> Timeouts {
    Timeouts {
        lock_timeout: std::time::Duration::from_millis(plan.policy.lock_timeout_ms),
        statement_timeout: std::time::Duration::from_millis(plan.policy.statement_timeout_ms),
    }
}

/// Main's session between the probe and the apply.
enum MainBefore {
    /// Open since the probe: no branch came in between.
    Open(MainSession),
    /// Closed for a branch, with the history its probe read: the release's guard checks main
    /// still holds it.
    Closed(pg::HistoryRead),
}

impl MainBefore {
    fn session(&self) -> Option<&MainSession> {
        match self {
            MainBefore::Open(session) => Some(session),
            MainBefore::Closed(_) => None,
        }
    }

    /// Close the session (before a branch is made), keeping what its probe read.
    fn close(self) -> MainBefore {
        match self {
            MainBefore::Open(session) => MainBefore::Closed(session.read.history),
            closed => closed,
        }
    }
}

/// An open connection to main with its slot in the connection bound, and what its probe read.
struct MainSession {
    client: tokio_postgres::Client,
    _permit: OwnedSemaphorePermit,
    /// The lock and the history as this session's last read found them.
    read: pg::lock::LockedRead,
}

async fn probe(
    context: &TenantContext,
    uri: &SecretUri,
) -> Result<(HistoryComparison, Vec<AppliedMigration>, MainSession), DbFailure> {
    let permit = context
        .connections
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| DbFailure::new(None, "connection pool closed"))?;
    let timings = context.recorder.timings();
    let client = timings
        .time(
            TimedStep::ConnectMain,
            pg::connect(uri, context.config.connect_timeout),
        )
        .await?;
    // The lock is tried with the read (one round trip): when something is pending and no
    // branch comes in between, the apply then needs neither another read nor a lock.
    let read = timings
        .time(
            TimedStep::ProbeMain,
            pg::lock::try_lock_and_read_history(&client),
        )
        .await?;
    let history = read.history.rows.clone();
    let comparison = pg::compare_history(&history, &context.planned);
    Ok((
        comparison,
        history,
        MainSession {
            client,
            _permit: permit,
            read,
        },
    ))
}

/// A branch name that says where it came from and cannot collide with an earlier attempt's.
fn branch_name(purpose: &str, plan_id: &str) -> String {
    let plan_prefix: String = plan_id.chars().take(12).collect();
    let salt: u16 = rand::random();
    format!(
        "schemafleet-{purpose}-{plan_prefix}-{}-{salt:04x}",
        crate::clock::compact_stamp()
    )
}

/// Create a validation branch, migrate it, verify, delete it. Ok = the branch point of main.
async fn validate(
    context: &TenantContext,
    tenant_id: &str,
    wave: &str,
    pending: &[i32],
) -> Result<Step<RestorePoint>, JournalError> {
    let policy = &context.plan.policy;
    let ttl = std::time::Duration::from_secs(policy.branch_ttl_s);
    let created = match create_branch(context, tenant_id, wave, "validate", ttl, true).await? {
        Ok(created) => created,
        Err(failure) => return Ok(Err(failure)),
    };
    let branch = &created.branch;
    let timings = context.recorder.timings();
    let result = timings
        .time(
            TimedStep::MigrateBranch,
            migrate_branch(context, tenant_id, &created, pending),
        )
        .await;
    // Delete whatever happened; a failed delete leaves a branch that expires on its own. The
    // delete's operations are not waited for: nothing after depends on them, and the end of
    // the run reads only those still young then (`settle`).
    match timings
        .time(
            TimedStep::DeleteBranch,
            context.client.request_branch_delete(tenant_id, &branch.id),
        )
        .await
    {
        Ok(operations) => {
            let requested_at = tokio::time::Instant::now();
            context
                .recorder
                .record(Event::BranchDeleteRequested {
                    tenant: tenant_id.into(),
                    branch_id: branch.id.clone(),
                })
                .await?;
            context.requested_deletes.push(RequestedDelete {
                tenant_id: tenant_id.into(),
                branch_name: branch.name.clone(),
                created: created.unsettled.clone(),
                deleted: operations,
                requested_at,
            });
        }
        Err(error) => {
            tracing::warn!(tenant = tenant_id, branch = %branch.name, error = %error, "could not delete the validation branch; it expires on its own")
        }
    }
    let lock_holds = match result {
        Ok(lock_holds) => lock_holds,
        Err(failure) => return Ok(Err(failure)),
    };
    context
        .recorder
        .record(Event::Validated {
            tenant: tenant_id.into(),
            wave: wave.into(),
            versions: pending.to_vec(),
            lock_holds,
        })
        .await?;
    let point = match (&branch.parent_id, &branch.parent_lsn) {
        (Some(main_branch_id), Some(lsn)) => RestorePoint::BranchPoint {
            main_branch_id: main_branch_id.clone(),
            lsn: lsn.clone(),
            timestamp: branch.parent_timestamp.clone(),
        },
        _ => {
            return Ok(Err((
                Phase::Branch,
                DbFailure::new(
                    None,
                    format!(
                        "Neon returned branch {} without parent_id/parent_lsn: no restore point",
                        branch.id
                    ),
                ),
            )));
        }
    };
    Ok(Ok(point))
}

/// Migrate the validation branch, measuring the locks each migration holds; Ok = those holds
/// (within the policy's `max_lock_hold`).
async fn migrate_branch(
    context: &TenantContext,
    tenant_id: &str,
    created: &crate::neon::CreatedBranch,
    pending: &[i32],
) -> Step<Vec<LockHold>> {
    let policy = &context.plan.policy;
    let uri = match &created.connection_uri {
        Some(uri) => uri.clone(),
        None => context
            .client
            .connection_uri(
                tenant_id,
                Some(&created.branch.id),
                &policy.database,
                &policy.role,
            )
            .await
            .map_err(|error| {
                api_failure(
                    Phase::Branch,
                    "looking up the validation branch's connection URI",
                    &error,
                )
            })?,
    };
    let _permit = context.connections.acquire().await.map_err(|_| {
        (
            Phase::Validate,
            DbFailure::new(None, "connection pool closed"),
        )
    })?;
    // The create's operations were not waited for: the new endpoint's compute accepts the
    // connection once it runs. Should it refuse one, wait for them and try once more.
    let mut client = match pg::connect(&uri, context.config.connect_timeout).await {
        Ok(client) => client,
        Err(failure) if !created.unsettled.is_empty() => {
            tracing::info!(tenant = tenant_id, error = %failure, "the new branch refused a connection; waiting for its operations");
            context
                .client
                .wait_for_operations(tenant_id, &created.unsettled)
                .await
                .map_err(|error| {
                    api_failure(Phase::Branch, "waiting for the validation branch", &error)
                })?;
            pg::connect(&uri, context.config.connect_timeout)
                .await
                .map_err(|failure| (Phase::Validate, failure))?
        }
        Err(failure) => return Err((Phase::Validate, failure)),
    };
    // Lock and history in one round trip, the release in one more, as on main. (Main's
    // probe cannot stand in for the read: main may have changed before the branch was made.)
    let read = pg::lock::try_lock_and_read_history(&client)
        .await
        .map_err(|failure| (Phase::Validate, failure))?;
    let enforced = policy.max_lock_hold_ms.is_some();
    let instrumented =
        measured_migrations(&client, &context.migrations, pending, enforced, tenant_id).await?;
    let measuring = instrumented.is_some();
    runner::apply_pending_known(
        &mut client,
        instrumented.as_deref().unwrap_or(&context.migrations),
        context.plan.policy.transaction,
        timeouts(&context.plan),
        context.config.lock_retry,
        read.locked.then_some(read.history),
    )
    .await
    .map_err(|failure| (Phase::Validate, failure.failure))?;
    let lock_holds = if measuring {
        measured_holds(&client, &context.migrations).await?
    } else {
        Vec::new()
    };
    if let Some(failure) = policy
        .max_lock_hold_ms
        .and_then(|max_ms| lock_footprint::over_budget(&lock_holds, max_ms))
    {
        return Err((Phase::Validate, failure));
    }
    if let Some(verify_sql) = &context.config.verify_sql {
        client
            .batch_execute(verify_sql)
            .await
            .map_err(|error| (Phase::Validate, DbFailure::from_error("verify SQL", &error)))?;
    }
    Ok(lock_holds)
}

/// The branch's migrations with the lock probes of [`lock_footprint`] in the pending ones.
/// `None` when the session cannot hold the probes (no TEMP privilege) and no `max_lock_hold`
/// is `enforced`: the branch then validates unmeasured rather than failing the tenant.
async fn measured_migrations(
    client: &tokio_postgres::Client,
    migrations: &[refinery::Migration],
    pending: &[i32],
    enforced: bool,
    tenant_id: &str,
) -> Step<Option<Vec<refinery::Migration>>> {
    match lock_footprint::prepare(client).await {
        Ok(()) => Ok(Some(lock_footprint::instrument(migrations, pending))),
        Err(failure) if enforced => Err((Phase::Validate, failure)),
        Err(failure) => {
            tracing::warn!(tenant = tenant_id, error = %failure, "locks not measured on the validation branch");
            Ok(None)
        }
    }
}

/// What the probes saw, as holds named by migration.
async fn measured_holds(
    client: &tokio_postgres::Client,
    migrations: &[refinery::Migration],
) -> Step<Vec<LockHold>> {
    let rows = lock_footprint::read(client)
        .await
        .map_err(|failure| (Phase::Validate, failure))?;
    Ok(lock_footprint::footprint(&rows, |version| {
        migrations
            .iter()
            .find(|migration| migration.version() == version)
            .map_or_else(|| format!("V{version}"), ToString::to_string)
    }))
}

/// Create a branch of main for `purpose` (`validate` or `backup`) expiring after `ttl`,
/// journaled before the call (its name) and after it (its id and branch point).
async fn create_branch(
    context: &TenantContext,
    tenant_id: &str,
    wave: &str,
    purpose: &str,
    ttl: std::time::Duration,
    connect_at_once: bool,
) -> Result<Step<crate::neon::CreatedBranch>, JournalError> {
    let request = CreateBranch {
        name: branch_name(purpose, &context.plan.plan_id),
        parent_id: None,
        expires_at: Some(crate::clock::rfc3339_seconds_from_now(ttl)),
    };
    context
        .recorder
        .record(Event::BranchRequested {
            tenant: tenant_id.into(),
            wave: wave.into(),
            purpose: purpose.into(),
            branch_name: request.name.clone(),
        })
        .await?;
    let created = match context
        .recorder
        .timings()
        .time(TimedStep::CreateBranch, async {
            if connect_at_once {
                context
                    .client
                    .create_branch_unsettled(tenant_id, &request)
                    .await
            } else {
                context.client.create_branch(tenant_id, &request).await
            }
        })
        .await
    {
        Ok(created) => created,
        Err(error) => {
            let what = format!("creating the {purpose} branch");
            return Ok(Err(api_failure(Phase::Branch, &what, &error)));
        }
    };
    let branch = &created.branch;
    context
        .recorder
        .record(Event::BranchCreated {
            tenant: tenant_id.into(),
            wave: wave.into(),
            purpose: purpose.into(),
            branch_id: branch.id.clone(),
            branch_name: branch.name.clone(),
            parent_branch_id: branch.parent_id.clone(),
            parent_lsn: branch.parent_lsn.clone(),
            expires_at: branch.expires_at.clone().or(request.expires_at),
        })
        .await?;
    Ok(Ok(created))
}

/// Create a backup branch of main's current head. Ok = a restore point at its head.
async fn backup(
    context: &TenantContext,
    tenant_id: &str,
    wave: &str,
) -> Result<Step<RestorePoint>, JournalError> {
    let created = match create_branch(
        context,
        tenant_id,
        wave,
        "backup",
        context.config.backup_ttl,
        false,
    )
    .await?
    {
        Ok(created) => created,
        Err(failure) => return Ok(Err(failure)),
    };
    let branch = created.branch;
    let Some(main_branch_id) = branch.parent_id.clone() else {
        return Ok(Err((
            Phase::Branch,
            DbFailure::new(
                None,
                format!(
                    "Neon returned backup branch {} without parent_id",
                    branch.id
                ),
            ),
        )));
    };
    Ok(Ok(RestorePoint::BackupBranch {
        main_branch_id,
        backup_branch_id: branch.id,
        backup_branch_name: branch.name,
    }))
}

async fn apply_to_main(
    context: &TenantContext,
    tenant_id: &str,
    wave: &str,
    main_uri: &SecretUri,
    pending: &[i32],
    main: MainBefore,
) -> Result<Step<TenantOutcome>, JournalError> {
    let recorder = &context.recorder;
    let (mut reusable, mut probed, _permit) = match main {
        MainBefore::Open(MainSession {
            client,
            _permit,
            read,
        }) => (Some((client, read)), None, _permit),
        MainBefore::Closed(probed) => match context.connections.clone().acquire_owned().await {
            Ok(permit) => (None, Some(probed), permit),
            Err(_) => {
                return Ok(Err((
                    Phase::Apply,
                    DbFailure::new(None, "connection pool closed"),
                )));
            }
        },
    };
    let mut applied: Vec<i32> = Vec::new();
    let mut lock_retries = 0;
    let mut connection_attempt = 0;
    let mut started = false;
    loop {
        connection_attempt += 1;
        // A lost connection is worth a new session, a bounded number of times; any other
        // failure fails the tenant.
        let reconnect = |failure: &DbFailure| {
            failure.is_connection_loss()
                && connection_attempt <= context.config.max_connection_retries
        };
        // A session whose probe took the lock and read the history goes straight to the
        // release. The first new session after a branch sends the release at once, its guard
        // taking the lock and checking the history is still the probe's (`guarded`); a new one
        // after a lost connection takes the lock and reads the history in one round trip.
        let mut guarded = None;
        let connected = match reusable.take() {
            Some((client, read)) if !client.is_closed() => Ok((client, Some(read))),
            _ => {
                let timings = recorder.timings();
                match timings
                    .time(
                        TimedStep::ConnectMain,
                        pg::connect(main_uri, context.config.connect_timeout),
                    )
                    .await
                {
                    Ok(client) => match probed.take() {
                        Some(history) => {
                            guarded = Some(history);
                            Ok((client, None))
                        }
                        None => timings
                            .time(
                                TimedStep::LockMain,
                                pg::lock::try_lock_and_read_history(&client),
                            )
                            .await
                            .map(|read| (client, Some(read))),
                    },
                    Err(failure) => Err(failure),
                }
            }
        };
        let (mut client, read) = match connected {
            Ok(connected) => connected,
            Err(failure) if reconnect(&failure) => {
                tokio::time::sleep(std::time::Duration::from_millis(
                    200 * u64::from(connection_attempt),
                ))
                .await;
                continue;
            }
            Err(failure) => return fail_apply(recorder, tenant_id, wave, failure, applied).await,
        };
        // Another runner held the lock when it was tried: wait for it, and since it may have
        // migrated meanwhile, let the runner read the history again once the lock is ours.
        let known = match read {
            Some(read) if read.locked => Some(read.history),
            Some(_) => match wait_for_lock(context, &client).await {
                Ok(()) => None,
                Err(failure) if reconnect(&failure) => {
                    continue;
                }
                Err(failure) => {
                    return fail_apply(recorder, tenant_id, wave, failure, applied).await;
                }
            },
            None => None,
        };
        if !started {
            recorder
                .record(Event::ApplyStarted {
                    tenant: tenant_id.into(),
                    wave: wave.into(),
                    versions: pending.to_vec(),
                })
                .await?;
            started = true;
        } else {
            // Reconnected after a lost connection: a COMMIT whose answer was lost did commit.
            let history = match &known {
                Some(history) => Ok(history.rows.clone()),
                None => pg::read_history(&client).await,
            };
            match history {
                Ok(history) => {
                    applied.extend(committed_before_reconnect(
                        recorder, tenant_id, &history, &applied,
                    ));
                }
                Err(failure) if reconnect(&failure) => {
                    continue;
                }
                Err(failure) => {
                    return fail_apply(recorder, tenant_id, wave, failure, applied).await;
                }
            }
        }
        let timings = recorder.timings();
        let result = match guarded {
            None => {
                timings
                    .time(
                        TimedStep::MigrateMain,
                        migrate_main(context, &mut client, known),
                    )
                    .await
            }
            Some(probed) => {
                let result = timings
                    .time(
                        TimedStep::MigrateMain,
                        runner::apply_pending_guarded(
                            &mut client,
                            &context.migrations,
                            context.plan.policy.transaction,
                            timeouts(&context.plan),
                            context.config.lock_retry,
                            probed,
                        ),
                    )
                    .await;
                match result {
                    // Nothing of the release ran: another runner holds the lock, or main's
                    // history moved since the probe. Wait for the lock as a session without
                    // a probe does, then let refinery read the history.
                    Err(refused) if pg::lock::refused_by_guard(&refused.failure) => {
                        tracing::info!(tenant = tenant_id, reason = %refused.failure, "the release's guard refused; waiting for the lock and reading the history again");
                        match wait_for_lock(context, &client).await {
                            Ok(()) => {}
                            Err(failure) if reconnect(&failure) => {
                                // Nothing of ours committed: the next session starts afresh.
                                started = false;
                                continue;
                            }
                            Err(failure) => {
                                return fail_apply(recorder, tenant_id, wave, failure, applied)
                                    .await;
                            }
                        }
                        // Journaled again once the lock is ours: history rows another runner
                        // wrote before now are not credited to this plan (`recovery`).
                        recorder
                            .record(Event::ApplyStarted {
                                tenant: tenant_id.into(),
                                wave: wave.into(),
                                versions: pending.to_vec(),
                            })
                            .await?;
                        timings
                            .time(
                                TimedStep::MigrateMain,
                                migrate_main(context, &mut client, None),
                            )
                            .await
                    }
                    other => other,
                }
            }
        };
        match result {
            Ok(report) => {
                lock_retries += report.lock_retries;
                applied.extend(report.applied);
                // Ending the session releases the lock: no unlock round trip.
                drop(client);
                if applied.is_empty() {
                    // Someone else migrated this tenant between our probe and our lock.
                    recorder
                        .record(Event::UpToDate {
                            tenant: tenant_id.into(),
                            wave: wave.into(),
                            ahead: Vec::new(),
                        })
                        .await?;
                    return Ok(Ok(TenantOutcome::UpToDate));
                }
                recorder
                    .record(Event::Applied {
                        tenant: tenant_id.into(),
                        wave: wave.into(),
                        versions: applied.clone(),
                        lock_retries,
                    })
                    .await?;
                return Ok(Ok(TenantOutcome::Applied { versions: applied }));
            }
            Err(failure) => {
                lock_retries += failure.lock_retries;
                applied.extend(failure.applied.iter().copied());
                if reconnect(&failure.failure) {
                    tracing::info!(tenant = tenant_id, error = %failure.failure, "connection lost while applying; reconnecting (history decides what is left)");
                    continue;
                }
                return fail_apply(recorder, tenant_id, wave, failure.failure, applied).await;
            }
        }
    }
}

/// Versions of this apply that main's `history` shows committed and `applied` does not hold
/// yet: their COMMIT went through although its answer never arrived. The history row's time
/// against the `apply_started` record tells them from another runner's.
fn committed_before_reconnect(
    recorder: &Recorder,
    tenant_id: &str,
    history: &[AppliedMigration],
    applied: &[i32],
) -> Vec<i32> {
    let mut committed =
        recovery::committed_since_apply_started(recorder.tenant(tenant_id).as_ref(), history);
    committed.retain(|version| !applied.contains(version));
    committed
}

/// refinery on main's session, which holds the lock: answered from `known`, or reading the
/// history itself.
async fn migrate_main(
    context: &TenantContext,
    client: &mut tokio_postgres::Client,
    known: Option<pg::HistoryRead>,
) -> Result<runner::ApplyReport, runner::ApplyFailure> {
    runner::apply_pending_known(
        client,
        &context.migrations,
        context.plan.policy.transaction,
        timeouts(&context.plan),
        context.config.lock_retry,
        known,
    )
    .await
}

/// Poll the tenant's advisory lock on `client` for up to `lock_wait`; a failure when another
/// runner kept it that long.
async fn wait_for_lock(
    context: &TenantContext,
    client: &tokio_postgres::Client,
) -> Result<(), DbFailure> {
    let lock_wait = context.config.lock_wait;
    let taken = context
        .recorder
        .timings()
        .time(
            TimedStep::LockMain,
            pg::lock::try_lock_for(client, lock_wait),
        )
        .await?;
    if taken {
        Ok(())
    } else {
        Err(DbFailure::new(
            None,
            format!("another runner held this tenant's migration lock for over {lock_wait:?}"),
        ))
    }
}

async fn fail_apply(
    recorder: &Recorder,
    tenant_id: &str,
    wave: &str,
    error: DbFailure,
    applied_on_main: Vec<i32>,
) -> Result<Step<TenantOutcome>, JournalError> {
    recorder
        .record(Event::Failed {
            tenant: tenant_id.into(),
            wave: wave.into(),
            phase: Phase::Apply,
            error: error.clone(),
            applied_on_main,
        })
        .await?;
    Ok(Ok(TenantOutcome::Failed {
        phase: Phase::Apply,
        error,
    }))
}

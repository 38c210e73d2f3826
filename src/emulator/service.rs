//! The emulator's behaviour, free of HTTP: each Neon API call as a method returning the JSON body
//! or an [`ApiError`] with Neon's status code and message.
//!
//! **Invariant:** a mutation holds its project's lock from the 423 check until its document is
//! saved; physical work (copies, renames, drops) happens before the records that describe it are
//! published, so a reader never sees a branch whose database does not exist yet.
//! **Invariant:** every physical database is named after the id of the branch it backs
//! ([`ids::branch_database_name`]), so a restored branch keeps its connection details.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::OwnedMutexGuard;

use super::compute::Computes;
use super::error::ApiError;
use super::ids;
use super::model::{
    self, BranchRecord, ConnectionTarget, EndpointRecord, Millis, OperationRecord, ProjectRecord,
    SnapshotRecord, now_ms,
};
use super::physical::Physical;
use super::state::{ProjectDocument, State};
use super::store::Store;

const LOCKED_MESSAGE: &str =
    "project already has running conflicting operations, scheduling of new ones is prohibited";
const MAX_EXPIRY_MS: Millis = 30 * 86_400_000;
const MAX_HISTORY_RETENTION_SECONDS: i64 = 2_592_000;
/// How long an operation chosen to fail stays `failed` before the control plane retries it.
const FAILED_OPERATION_MS: Millis = 300;

pub struct Emulator {
    pub(crate) state: StdMutex<State>,
    pub(crate) store: Store,
    pub(crate) physical: Physical,
    /// The proxy's address, which every connection URI names.
    pub(crate) target: ConnectionTarget,
    /// Every endpoint's compute: lifecycle, latency, counters.
    pub(crate) computes: Arc<Computes>,
    pub(crate) op_delay: Duration,
    /// For projects created without `history_retention_seconds`.
    pub(crate) default_history_retention_seconds: i64,
    /// Fraction of operations that go through `failed` once before they finish.
    pub(crate) failed_operation_rate: f64,
    pub(crate) max_branches_per_project: usize,
    /// The backing server's major version, reported as projects' default `pg_version`.
    pub(crate) server_major_version: i64,
}

/// A project's mutation in progress: its lock and a working copy of its document.
pub(crate) struct Mutation {
    _guard: OwnedMutexGuard<()>,
    pub document: ProjectDocument,
}

/// What `POST /projects` accepts (`project.*`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct CreateProjectFields {
    pub name: Option<String>,
    pub org_id: Option<String>,
    pub pg_version: Option<i64>,
    pub history_retention_seconds: Option<i64>,
    pub branch: Option<CreateProjectBranchFields>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct CreateProjectBranchFields {
    pub name: Option<String>,
    pub role_name: Option<String>,
    pub database_name: Option<String>,
}

/// How a new project's main database comes to be.
pub(crate) enum MainSource<'a> {
    Empty,
    /// Copy this template (nobody is connected to it); objects owned by `seed_owner` are handed
    /// to the project's role.
    Template {
        database: &'a str,
        seed_owner: &'a str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListOrder {
    Ascending,
    Descending,
}

impl Emulator {
    pub(crate) fn op_delay_ms(&self) -> Millis {
        self.op_delay.as_millis() as Millis
    }

    /// A read-only copy of one project's document.
    pub(crate) fn document(&self, project_id: &str) -> Result<ProjectDocument, ApiError> {
        let state = self.lock_state();
        state
            .projects
            .get(project_id)
            .map(|entry| entry.document.clone())
            .ok_or_else(|| ApiError::project_not_found(project_id))
    }

    /// An endpoint object with its compute's state (`current_state`, `last_active`, …).
    fn render_endpoint(&self, endpoint: &EndpointRecord, now: Millis) -> Value {
        let mut value = model::render_endpoint(endpoint, &self.target, now);
        self.computes.view(endpoint).render_into(&mut value);
        value
    }

    pub(crate) fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Start a mutation: 404 for an unknown project, 423 while another mutation or any
    /// operation of the project is in flight.
    pub(crate) fn begin_mutation(&self, project_id: &str) -> Result<Mutation, ApiError> {
        let state = self.lock_state();
        let entry = state
            .projects
            .get(project_id)
            .ok_or_else(|| ApiError::project_not_found(project_id))?;
        let guard = entry
            .lock
            .clone()
            .try_lock_owned()
            .map_err(|_| ApiError::locked(LOCKED_MESSAGE))?;
        if entry.document.has_running_operations(now_ms()) {
            return Err(ApiError::locked(LOCKED_MESSAGE));
        }
        Ok(Mutation {
            _guard: guard,
            document: entry.document.clone(),
        })
    }

    /// Like [`Self::begin_mutation`] but waits for the lock and ignores running operations: for
    /// background work (the reaper) that must happen eventually.
    pub(crate) async fn begin_background_mutation(&self, project_id: &str) -> Option<Mutation> {
        let lock = {
            let state = self.lock_state();
            state.projects.get(project_id)?.lock.clone()
        };
        let guard = lock.lock_owned().await;
        let document = self.lock_state().projects.get(project_id)?.document.clone();
        Some(Mutation {
            _guard: guard,
            document,
        })
    }

    /// Publish a mutation's document: memory first (so readers see it), then the store.
    pub(crate) async fn commit(&self, mutation: Mutation) -> Result<(), ApiError> {
        self.lock_state().insert(mutation.document.clone());
        self.store
            .save(&mutation.document)
            .await
            .map_err(|error| ApiError::internal(error.to_string()))
    }

    fn operation(
        &self,
        project_id: &str,
        branch_id: Option<&str>,
        endpoint_id: Option<&str>,
        action: &str,
        start_at: Millis,
        finish_at: Millis,
    ) -> OperationRecord {
        // Some operations fail once and are retried by the control plane: `failed` long enough
        // for a poller to see it, then the whole run again.
        // Instant operations (seeding) never fail.
        let failed_until = (finish_at > start_at
            && self.failed_operation_rate > 0.0
            && rand::random::<f64>() < self.failed_operation_rate)
            .then(|| start_at + FAILED_OPERATION_MS);
        let finish_at = match failed_until {
            Some(until) => until + (finish_at - start_at),
            None => finish_at,
        };
        OperationRecord {
            id: ids::operation_id(),
            project_id: project_id.to_string(),
            branch_id: branch_id.map(str::to_string),
            endpoint_id: endpoint_id.map(str::to_string),
            action: action.to_string(),
            created_at: now_ms(),
            start_at,
            finish_at,
            failed_until,
        }
    }

    fn render_operations(operations: &[OperationRecord], now: Millis) -> Value {
        Value::Array(
            operations
                .iter()
                .map(|operation| model::render_operation(operation, now))
                .collect(),
        )
    }

    // ---------------------------------------------------------------- projects

    pub async fn create_project(&self, fields: CreateProjectFields) -> Result<Value, ApiError> {
        let (document, operations) = self
            .create_project_document(fields, MainSource::Empty, self.op_delay_ms())
            .await?;
        let now = now_ms();
        let project = &document.project;
        let branch = document
            .default_branch()
            .ok_or_else(|| ApiError::internal("the new project has no default branch"))?;
        let endpoints: Vec<Value> = document
            .endpoints
            .iter()
            .map(|endpoint| self.render_endpoint(endpoint, now))
            .collect();
        let endpoint_id = document.connection_endpoint_id(&branch.id);
        Ok(json!({
            "project": model::render_project(project),
            "connection_uris": [model::render_connection_details(project, branch, endpoint_id, &self.target)],
            "roles": [model::render_role(project, branch, true)],
            "databases": [model::render_database(project, branch)],
            "operations": Self::render_operations(&operations, now),
            "branch": model::render_branch(branch, now),
            "endpoints": endpoints,
        }))
    }

    /// Create a project (role, main database, endpoint) and publish it; `op_delay_ms` 0 makes it
    /// ready at once (seeding).
    pub(crate) async fn create_project_document(
        &self,
        fields: CreateProjectFields,
        main_source: MainSource<'_>,
        op_delay_ms: Millis,
    ) -> Result<(ProjectDocument, Vec<OperationRecord>), ApiError> {
        let history_retention_seconds = fields
            .history_retention_seconds
            .unwrap_or(self.default_history_retention_seconds);
        if !(0..=MAX_HISTORY_RETENTION_SECONDS).contains(&history_retention_seconds) {
            return Err(ApiError::bad_request(format!(
                "history_retention_seconds must be between 0 and {MAX_HISTORY_RETENTION_SECONDS}, \
                 got {history_retention_seconds}"
            )));
        }
        let pg_version = fields.pg_version.unwrap_or(self.server_major_version);
        if !(14..=18).contains(&pg_version) {
            return Err(ApiError::bad_request(format!(
                "pg_version must be between 14 and 18, got {pg_version}"
            )));
        }
        if let Some(name) = &fields.name
            && (name.is_empty() || name.len() > 256)
        {
            return Err(ApiError::bad_request(
                "project name must be 1 to 256 characters long",
            ));
        }
        let branch_fields = fields.branch.unwrap_or_default();
        let database_name = branch_fields
            .database_name
            .unwrap_or_else(|| "neondb".to_string());
        let role_name = branch_fields
            .role_name
            .unwrap_or_else(|| format!("{database_name}_owner"));
        let branch_name = branch_fields.name.unwrap_or_else(|| "main".to_string());

        let (project_id, seq) = {
            let mut state = self.lock_state();
            let mut project_id = ids::project_id();
            while state.projects.contains_key(&project_id) {
                project_id = ids::project_id();
            }
            (project_id, state.take_seq())
        };
        let branch_id = ids::branch_id();
        let endpoint_id = ids::endpoint_id();
        let physical_role = ids::project_role_name(&project_id);
        let role_password = ids::role_password();
        let physical_database = ids::branch_database_name(&branch_id);

        let internal =
            |error: super::physical::PhysicalError| ApiError::internal(error.to_string());
        self.physical
            .create_role(&physical_role, &role_password)
            .await
            .map_err(internal)?;
        let created = match main_source {
            MainSource::Empty => {
                self.physical
                    .create_empty_database(&physical_database, &physical_role)
                    .await
            }
            MainSource::Template {
                database,
                seed_owner,
            } => {
                let copied = self
                    .physical
                    .copy_database(database, &physical_database, &physical_role)
                    .await;
                match copied {
                    Ok(_) => {
                        self.physical
                            .reassign_owned(&physical_database, seed_owner, &physical_role)
                            .await
                    }
                    Err(error) => Err(error),
                }
            }
        };
        if let Err(error) = created {
            let _ = self.physical.drop_database(&physical_database).await;
            let _ = self.physical.drop_role(&physical_role).await;
            return Err(internal(error));
        }

        let now = now_ms();
        let ready_at = now + op_delay_ms;
        let project = ProjectRecord {
            id: project_id.clone(),
            name: fields.name.unwrap_or_else(|| project_id.clone()),
            seq,
            org_id: fields.org_id,
            pg_version,
            history_retention_seconds,
            created_at: now,
            updated_at: now,
            role_name,
            database_name,
            physical_role,
            role_password,
            default_branch_id: branch_id.clone(),
        };
        let branch = BranchRecord {
            id: branch_id.clone(),
            project_id: project_id.clone(),
            name: branch_name,
            parent_id: None,
            parent_lsn: None,
            parent_timestamp: None,
            created_at: now,
            updated_at: now,
            ready_at,
            default: true,
            protected: false,
            expires_at: None,
            ttl_interval_seconds: None,
            last_reset_at: None,
            physical_database,
            database_id: database_id(),
        };
        let endpoint = EndpointRecord {
            id: endpoint_id.clone(),
            project_id: project_id.clone(),
            branch_id: branch_id.clone(),
            read_write: true,
            created_at: now,
            ready_at,
        };
        let half = now + op_delay_ms / 2;
        let operations = vec![
            self.operation(
                &project_id,
                Some(&branch_id),
                None,
                "create_timeline",
                now,
                half,
            ),
            self.operation(
                &project_id,
                Some(&branch_id),
                Some(&endpoint_id),
                "start_compute",
                half,
                ready_at,
            ),
        ];
        let mut document = ProjectDocument {
            project,
            branches: vec![branch],
            endpoints: vec![endpoint],
            operations: Vec::new(),
            snapshots: Vec::new(),
        };
        document.add_operations(&operations);
        self.lock_state().insert(document.clone());
        self.store
            .save(&document)
            .await
            .map_err(|error| ApiError::internal(error.to_string()))?;
        Ok((document, operations))
    }

    pub fn list_projects(
        &self,
        cursor: Option<&str>,
        limit: Option<&str>,
        search: Option<&str>,
        org_id: Option<&str>,
    ) -> Result<Value, ApiError> {
        let limit = parse_limit(limit, 10, 400)?;
        let after_seq = match cursor {
            None | Some("") => None,
            Some(text) => Some(text.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "cursor {text:?} is not one this server issued; pass pagination.cursor from \
                     the previous page"
                ))
            })?),
        };
        let state = self.lock_state();
        let page: Vec<&ProjectDocument> = state
            .ordered_projects()
            .into_iter()
            .filter(|document| after_seq.is_none_or(|seq| document.project.seq > seq))
            .filter(|document| {
                search.is_none_or(|needle| {
                    document.project.name.contains(needle) || document.project.id.contains(needle)
                })
            })
            .filter(|document| {
                org_id.is_none_or(|org| document.project.org_id.as_deref() == Some(org))
            })
            .take(limit)
            .collect();
        let projects: Vec<Value> = page
            .iter()
            .map(|document| model::render_project_list_item(&document.project))
            .collect();
        let mut body = json!({
            "projects": projects,
            "applications": {},
            "integrations": {},
            "unavailable_project_ids": [],
        });
        if let (Some(last), Some(object)) = (page.last(), body.as_object_mut()) {
            object.insert(
                "pagination".into(),
                json!({"cursor": last.project.seq.to_string()}),
            );
        }
        Ok(body)
    }

    /// `GET /projects/shared`: projects other accounts shared with this one; there are none
    /// here (neonctl's `projects list` asks for them next to the account's own).
    pub fn list_shared_projects(&self) -> Value {
        json!({"projects": [], "unavailable_project_ids": []})
    }

    pub fn get_project(&self, project_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        Ok(json!({"project": model::render_project(&document.project)}))
    }

    pub async fn delete_project(&self, project_id: &str) -> Result<Value, ApiError> {
        let mutation = self.begin_mutation(project_id)?;
        let document = &mutation.document;
        let internal =
            |error: super::physical::PhysicalError| ApiError::internal(error.to_string());
        for branch in &document.branches {
            self.physical
                .drop_database(&branch.physical_database)
                .await
                .map_err(internal)?;
        }
        for snapshot in &document.snapshots {
            self.physical
                .drop_database(&snapshot.physical_database)
                .await
                .map_err(internal)?;
        }
        self.physical
            .drop_role(&document.project.physical_role)
            .await
            .map_err(internal)?;
        for endpoint in &document.endpoints {
            self.computes.retire(endpoint);
        }
        self.lock_state().projects.remove(project_id);
        self.store
            .delete(project_id)
            .await
            .map_err(|error| ApiError::internal(error.to_string()))?;
        Ok(json!({"project": model::render_project(&document.project)}))
    }

    // ---------------------------------------------------------------- reads

    pub fn get_branch(&self, project_id: &str, branch_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let branch = document
            .branch(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        Ok(json!({
            "branch": model::render_branch(branch, now_ms()),
            "annotation": {"object": {"type": "console/branch", "id": branch.id}, "value": {}},
        }))
    }

    pub fn list_branches(
        &self,
        project_id: &str,
        query: &BranchListQuery,
    ) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let sort_by = query.sort_by.as_deref().unwrap_or("updated_at");
        if !matches!(sort_by, "name" | "created_at" | "updated_at") {
            return Err(ApiError::bad_request(format!(
                "sort_by must be one of name, created_at, updated_at; got {sort_by:?}"
            )));
        }
        let order = match query.sort_order.as_deref().unwrap_or("desc") {
            "asc" => ListOrder::Ascending,
            "desc" => ListOrder::Descending,
            other => {
                return Err(ApiError::bad_request(format!(
                    "sort_order must be asc or desc; got {other:?}"
                )));
            }
        };
        let limit = parse_limit(query.limit.as_deref(), 10_000, 10_000)?;
        let offset = match query.cursor.as_deref() {
            None | Some("") => 0,
            Some(text) => text.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "cursor {text:?} is not one this server issued; pass pagination.next"
                ))
            })?,
        };
        let mut branches: Vec<&BranchRecord> = document
            .branches
            .iter()
            .filter(|branch| {
                query
                    .search
                    .as_deref()
                    .is_none_or(|needle| branch.name.contains(needle) || branch.id.contains(needle))
            })
            .collect();
        branches.sort_by(|left, right| {
            let ordering = match sort_by {
                "name" => left.name.cmp(&right.name),
                "created_at" => left.created_at.cmp(&right.created_at),
                _ => left.updated_at.cmp(&right.updated_at),
            }
            .then_with(|| left.id.cmp(&right.id));
            match order {
                ListOrder::Ascending => ordering,
                ListOrder::Descending => ordering.reverse(),
            }
        });
        let total = branches.len();
        let now = now_ms();
        let page: Vec<Value> = branches
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|branch| model::render_branch(branch, now))
            .collect();
        let mut pagination = json!({
            "sort_by": sort_by,
            "sort_order": if order == ListOrder::Ascending { "asc" } else { "desc" },
        });
        let next_offset = offset + page.len();
        if next_offset < total
            && let Some(object) = pagination.as_object_mut()
        {
            object.insert("next".into(), json!(next_offset.to_string()));
        }
        Ok(json!({"branches": page, "annotations": {}, "pagination": pagination}))
    }

    pub fn count_branches(
        &self,
        project_id: &str,
        search: Option<&str>,
    ) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let count = document
            .branches
            .iter()
            .filter(|branch| {
                search
                    .is_none_or(|needle| branch.name.contains(needle) || branch.id.contains(needle))
            })
            .count();
        Ok(json!({"count": count}))
    }

    pub fn list_operations(
        &self,
        project_id: &str,
        cursor: Option<&str>,
        limit: Option<&str>,
    ) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let limit = parse_limit(limit, 100, 1000)?;
        let offset = match cursor {
            None | Some("") => 0,
            Some(text) => text.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "cursor {text:?} is not one this server issued; pass pagination.cursor"
                ))
            })?,
        };
        let now = now_ms();
        // Newest first, like Neon.
        let page: Vec<Value> = document
            .operations
            .iter()
            .rev()
            .skip(offset)
            .take(limit)
            .map(|operation| model::render_operation(operation, now))
            .collect();
        let mut body = json!({"operations": page});
        if let (false, Some(object)) = (page.is_empty(), body.as_object_mut()) {
            object.insert(
                "pagination".into(),
                json!({"cursor": (offset + page.len()).to_string()}),
            );
        }
        Ok(body)
    }

    pub fn get_operation(&self, project_id: &str, operation_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let operation = document
            .operations
            .iter()
            .find(|operation| operation.id == operation_id)
            .ok_or_else(|| ApiError::not_found(format!("operation {operation_id} not found")))?;
        Ok(json!({"operation": model::render_operation(operation, now_ms())}))
    }

    pub fn connection_uri(
        &self,
        project_id: &str,
        query: &ConnectionUriQuery,
    ) -> Result<Value, ApiError> {
        let database_name = query
            .database_name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("query parameter database_name is required"))?;
        let role_name = query
            .role_name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("query parameter role_name is required"))?;
        let document = self.document(project_id)?;
        let branch = match query.branch_id.as_deref() {
            Some(branch_id) => document
                .branch(branch_id)
                .ok_or_else(|| ApiError::branch_not_found(branch_id))?,
            None => document
                .default_branch()
                .ok_or_else(|| ApiError::internal("the project has no default branch"))?,
        };
        if let Some(endpoint_id) = query.endpoint_id.as_deref()
            && !document
                .endpoints_of(&branch.id)
                .iter()
                .any(|endpoint| endpoint.id == endpoint_id)
        {
            return Err(ApiError::not_found(format!(
                "endpoint {endpoint_id} not found on branch {}",
                branch.id
            )));
        }
        // There is no pooler here: a pooled URI is the direct one, which behaves the same.
        if let Some(pooled) = query.pooled.as_deref()
            && pooled != "true"
            && pooled != "false"
        {
            return Err(ApiError::bad_request(format!(
                "pooled must be true or false, got {pooled:?}"
            )));
        }
        if role_name != document.project.role_name {
            return Err(ApiError::not_found(format!(
                "role {role_name:?} not found on branch {}",
                branch.id
            )));
        }
        if database_name != document.project.database_name {
            return Err(ApiError::not_found(format!(
                "database {database_name:?} not found on branch {}",
                branch.id
            )));
        }
        let endpoint_id = query
            .endpoint_id
            .as_deref()
            .or_else(|| document.connection_endpoint_id(&branch.id));
        Ok(
            json!({"uri": model::connection_uri(&document.project, branch, endpoint_id, &self.target)}),
        )
    }

    pub fn branch_endpoints(&self, project_id: &str, branch_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        document
            .branch(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        let now = now_ms();
        let endpoints: Vec<Value> = document
            .endpoints_of(branch_id)
            .into_iter()
            .map(|endpoint| self.render_endpoint(endpoint, now))
            .collect();
        Ok(json!({"endpoints": endpoints}))
    }

    pub fn project_endpoints(&self, project_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let now = now_ms();
        let endpoints: Vec<Value> = document
            .endpoints
            .iter()
            .map(|endpoint| self.render_endpoint(endpoint, now))
            .collect();
        Ok(json!({"endpoints": endpoints}))
    }

    /// `POST …/endpoints/{id}/start` (`start: true`) or `…/suspend`: the compute layer moves the
    /// endpoint, and the change is recorded as Neon's `start_compute` / `suspend_compute`.
    pub async fn change_endpoint_state(
        &self,
        project_id: &str,
        endpoint_id: &str,
        start: bool,
    ) -> Result<Value, ApiError> {
        let mut mutation = self.begin_mutation(project_id)?;
        let endpoint = mutation
            .document
            .endpoints
            .iter()
            .find(|endpoint| endpoint.id == endpoint_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("endpoint {endpoint_id} not found")))?;
        let now = now_ms();
        let (changed, action, finish) = if start {
            let cold_start_ms = self.computes.config.cold_start.as_millis() as Millis;
            (
                self.computes.start(&endpoint),
                "start_compute",
                now + cold_start_ms,
            )
        } else {
            (self.computes.suspend(&endpoint), "suspend_compute", now)
        };
        let operations: Vec<OperationRecord> = changed
            .then(|| {
                self.operation(
                    project_id,
                    Some(&endpoint.branch_id),
                    Some(&endpoint.id),
                    action,
                    now,
                    finish,
                )
            })
            .into_iter()
            .collect();
        mutation.document.add_operations(&operations);
        let body = json!({
            "endpoint": self.render_endpoint(&endpoint, now),
            "operations": Self::render_operations(&operations, now),
        });
        self.commit(mutation).await?;
        Ok(body)
    }

    pub fn branch_databases(&self, project_id: &str, branch_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let branch = document
            .branch(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        Ok(json!({"databases": [model::render_database(&document.project, branch)]}))
    }

    pub fn branch_roles(&self, project_id: &str, branch_id: &str) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        let branch = document
            .branch(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        Ok(json!({"roles": [model::render_role(&document.project, branch, false)]}))
    }

    pub fn reveal_role_password(
        &self,
        project_id: &str,
        branch_id: &str,
        role_name: &str,
    ) -> Result<Value, ApiError> {
        let document = self.document(project_id)?;
        document
            .branch(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        if role_name != document.project.role_name {
            return Err(ApiError::not_found("Role not found"));
        }
        Ok(json!({"password": document.project.role_password}))
    }

    // ---------------------------------------------------------------- branches

    pub async fn create_branch(
        &self,
        project_id: &str,
        request: CreateBranchRequest,
    ) -> Result<Value, ApiError> {
        let mut mutation = self.begin_mutation(project_id)?;
        let fields = request.branch.unwrap_or_default();
        let endpoint_options = request.endpoints.unwrap_or_default();
        let mut read_write_endpoints = 0;
        for option in &endpoint_options {
            match option.endpoint_type.as_str() {
                "read_write" => read_write_endpoints += 1,
                "read_only" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "endpoints[].type must be read_write or read_only, got {other:?}"
                    )));
                }
            }
        }
        if read_write_endpoints > 1 {
            return Err(ApiError::bad_request(
                "a branch can have only one read_write endpoint",
            ));
        }
        if fields
            .init_source
            .as_deref()
            .is_some_and(|source| source != "parent-data")
        {
            return Err(ApiError::bad_request(
                "init_source other than parent-data (schema-only branches) is not supported by \
                 the local emulator",
            ));
        }
        let document = &mutation.document;
        if document.branches.len() >= self.max_branches_per_project {
            return Err(ApiError::unprocessable(
                "BRANCHES_LIMIT_EXCEEDED",
                format!(
                    "number of branches for project {} exceeds the limit of {}",
                    project_id, self.max_branches_per_project
                ),
            ));
        }
        let branch_id = ids::branch_id();
        let name = fields.name.clone().unwrap_or_else(|| branch_id.clone());
        if name.is_empty() || name.len() > 256 {
            return Err(ApiError::bad_request(
                "branch name must be 1 to 256 characters long",
            ));
        }
        if document.branch_by_name(&name).is_some() {
            return Err(ApiError::conflict(format!(
                "branch with the provided name {name:?} already exists"
            )));
        }
        let parent = match fields.parent_id.as_deref().filter(|id| !id.is_empty()) {
            Some(parent_id) => document.branch(parent_id).ok_or_else(|| {
                ApiError::not_found(format!("parent branch {parent_id} not found"))
            })?,
            None => document
                .default_branch()
                .ok_or_else(|| ApiError::internal("the project has no default branch"))?,
        }
        .clone();
        if parent.expires_at.is_some() {
            return Err(ApiError::bad_request(format!(
                "cannot create a branch from {}: it has an expiration time set",
                parent.id
            )));
        }
        let now = now_ms();
        let expires_at = match fields.expires_at.as_deref() {
            Some(text) => Some(validate_expires_at(text, now)?),
            None => None,
        };
        if expires_at.is_some() && fields.protected == Some(true) {
            return Err(ApiError::bad_request(
                "expires_at cannot be set on a protected branch",
            ));
        }
        let history_point = match (&fields.parent_lsn, &fields.parent_timestamp) {
            (None, None) => None,
            (lsn, timestamp) => Some(find_snapshot(
                document,
                &parent,
                lsn.as_deref(),
                timestamp.as_deref(),
                now,
            )?),
        };

        let role = document.project.physical_role.clone();
        let child_database = ids::branch_database_name(&branch_id);
        let internal =
            |error: super::physical::PhysicalError| ApiError::internal(error.to_string());
        let (parent_lsn, parent_timestamp, new_snapshot) = match &history_point {
            Some(snapshot) => {
                self.physical
                    .copy_database(&snapshot.physical_database, &child_database, &role)
                    .await
                    .map_err(internal)?;
                (snapshot.lsn.clone(), snapshot.taken_at, None)
            }
            None => {
                let lsn = self.physical.current_lsn().await.map_err(internal)?;
                let taken_at = now_ms();
                self.physical
                    .copy_database(&parent.physical_database, &child_database, &role)
                    .await
                    .map_err(internal)?;
                // The parent's state at this instant, kept for restores; nobody is connected to
                // the fresh child yet, so this copy takes the fast template path.
                let snapshot = if document.project.history_retention_seconds > 0 {
                    let snapshot_database = ids::snapshot_database_name();
                    let copied = self
                        .physical
                        .copy_database(&child_database, &snapshot_database, &role)
                        .await;
                    if let Err(error) = copied {
                        let _ = self.physical.drop_database(&child_database).await;
                        return Err(internal(error));
                    }
                    Some(SnapshotRecord {
                        branch_id: parent.id.clone(),
                        lsn: lsn.clone(),
                        taken_at,
                        physical_database: snapshot_database,
                    })
                } else {
                    None
                };
                (lsn, taken_at, snapshot)
            }
        };

        let now = now_ms();
        let ready_at = now + self.op_delay_ms();
        let half = now + self.op_delay_ms() / 2;
        let branch = BranchRecord {
            id: branch_id.clone(),
            project_id: project_id.to_string(),
            name,
            parent_id: Some(parent.id.clone()),
            parent_lsn: Some(parent_lsn),
            parent_timestamp: Some(parent_timestamp),
            created_at: now,
            updated_at: now,
            ready_at,
            default: false,
            protected: fields.protected.unwrap_or(false),
            expires_at,
            ttl_interval_seconds: expires_at.map(|at| (at - now) / 1000),
            last_reset_at: None,
            physical_database: child_database,
            database_id: database_id(),
        };
        let mut operations = vec![self.operation(
            project_id,
            Some(&branch_id),
            None,
            "create_branch",
            now,
            half,
        )];
        let mut endpoints = Vec::new();
        for option in &endpoint_options {
            let endpoint = EndpointRecord {
                id: ids::endpoint_id(),
                project_id: project_id.to_string(),
                branch_id: branch_id.clone(),
                read_write: option.endpoint_type == "read_write",
                created_at: now,
                ready_at,
            };
            operations.push(self.operation(
                project_id,
                Some(&branch_id),
                Some(&endpoint.id),
                "start_compute",
                half,
                ready_at,
            ));
            endpoints.push(endpoint);
        }

        let document = &mutation.document;
        let endpoint_id = endpoints
            .iter()
            .find(|endpoint| endpoint.read_write)
            .or(endpoints.first())
            .map(|endpoint| endpoint.id.as_str());
        let body = json!({
            "branch": model::render_branch(&branch, now),
            "endpoints": endpoints
                .iter()
                .map(|endpoint| self.render_endpoint(endpoint, now))
                .collect::<Vec<_>>(),
            "operations": Self::render_operations(&operations, now),
            "roles": [model::render_role(&document.project, &branch, false)],
            "databases": [model::render_database(&document.project, &branch)],
            "connection_uris": [model::render_connection_details(&document.project, &branch, endpoint_id, &self.target)],
        });
        mutation.document.branches.push(branch);
        mutation.document.endpoints.extend(endpoints);
        mutation.document.snapshots.extend(new_snapshot);
        mutation.document.add_operations(&operations);
        self.commit(mutation).await?;
        Ok(body)
    }

    /// `Ok(None)` means the branch does not exist (204).
    pub async fn delete_branch(
        &self,
        project_id: &str,
        branch_id: &str,
    ) -> Result<Option<Value>, ApiError> {
        let mut mutation = self.begin_mutation(project_id)?;
        let Some(branch) = mutation.document.branch(branch_id).cloned() else {
            return Ok(None);
        };
        if branch.default {
            return Err(ApiError::unprocessable(
                "",
                format!("branch {branch_id} is the default branch and cannot be deleted"),
            ));
        }
        if mutation.document.has_children(branch_id) {
            return Err(ApiError::unprocessable(
                "",
                format!("branch {branch_id} has child branches and cannot be deleted"),
            ));
        }
        if branch.protected {
            return Err(ApiError::unprocessable(
                "",
                format!("branch {branch_id} is protected and cannot be deleted"),
            ));
        }
        self.drop_branch_storage(&mut mutation.document, branch_id)
            .await?;
        let now = now_ms();
        let half = now + self.op_delay_ms() / 2;
        let finish = now + self.op_delay_ms();
        let mut operations = Vec::new();
        for endpoint in mutation.document.endpoints_of(branch_id) {
            operations.push(self.operation(
                project_id,
                Some(branch_id),
                Some(&endpoint.id),
                "suspend_compute",
                now,
                half,
            ));
        }
        operations.push(self.operation(
            project_id,
            Some(branch_id),
            None,
            "delete_timeline",
            half,
            finish,
        ));
        for endpoint in mutation.document.endpoints_of(branch_id) {
            self.computes.retire(endpoint);
        }
        mutation
            .document
            .endpoints
            .retain(|endpoint| endpoint.branch_id != branch_id);
        mutation
            .document
            .branches
            .retain(|other| other.id != branch_id);
        mutation.document.add_operations(&operations);
        let body = json!({
            "branch": model::render_branch(&branch, now),
            "operations": Self::render_operations(&operations, now),
        });
        self.commit(mutation).await?;
        Ok(Some(body))
    }

    /// Drop a branch's database and its snapshots (the records stay for the caller to remove).
    pub(crate) async fn drop_branch_storage(
        &self,
        document: &mut ProjectDocument,
        branch_id: &str,
    ) -> Result<(), ApiError> {
        let internal =
            |error: super::physical::PhysicalError| ApiError::internal(error.to_string());
        if let Some(branch) = document.branch(branch_id) {
            self.physical
                .drop_database(&branch.physical_database)
                .await
                .map_err(internal)?;
        }
        let (gone, kept): (Vec<SnapshotRecord>, Vec<SnapshotRecord>) = document
            .snapshots
            .drain(..)
            .partition(|snapshot| snapshot.branch_id == branch_id);
        document.snapshots = kept;
        for snapshot in gone {
            self.physical
                .drop_database(&snapshot.physical_database)
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    pub async fn update_branch(
        &self,
        project_id: &str,
        branch_id: &str,
        request: UpdateBranchRequest,
    ) -> Result<Value, ApiError> {
        let mut mutation = self.begin_mutation(project_id)?;
        let fields = request
            .branch
            .ok_or_else(|| ApiError::bad_request("request body must have a branch object"))?;
        let has_children = mutation.document.has_children(branch_id);
        let name_taken = fields.name.as_deref().is_some_and(|name| {
            mutation
                .document
                .branch_by_name(name)
                .is_some_and(|other| other.id != branch_id)
        });
        let now = now_ms();
        let branch = mutation
            .document
            .branch_mut(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        if let Some(name) = &fields.name {
            if name.is_empty() || name.len() > 256 {
                return Err(ApiError::bad_request(
                    "branch name must be 1 to 256 characters long",
                ));
            }
            if name_taken {
                return Err(ApiError::conflict(format!(
                    "branch with the provided name {name:?} already exists"
                )));
            }
        }
        let protected = fields.protected.unwrap_or(branch.protected);
        let expires_at = match &fields.expires_at {
            ExpiresAtChange::Unchanged => branch.expires_at,
            ExpiresAtChange::Remove => None,
            ExpiresAtChange::Set(text) => {
                if branch.default {
                    return Err(ApiError::bad_request(
                        "expires_at cannot be set on the default branch",
                    ));
                }
                if has_children {
                    return Err(ApiError::bad_request(
                        "expires_at cannot be set on a branch that has children",
                    ));
                }
                Some(validate_expires_at(text, now)?)
            }
        };
        if protected && expires_at.is_some() {
            return Err(ApiError::bad_request(
                "expires_at cannot be set on a protected branch",
            ));
        }
        if let Some(name) = fields.name {
            branch.name = name;
        }
        branch.protected = protected;
        if expires_at != branch.expires_at {
            branch.ttl_interval_seconds = expires_at.map(|at| (at - now) / 1000);
        }
        branch.expires_at = expires_at;
        branch.updated_at = now;
        let body = json!({"branch": model::render_branch(branch, now), "operations": []});
        self.commit(mutation).await?;
        Ok(body)
    }

    pub async fn restore_branch(
        &self,
        project_id: &str,
        branch_id: &str,
        request: RestoreBranchRequest,
    ) -> Result<Value, ApiError> {
        let mut mutation = self.begin_mutation(project_id)?;
        let source_branch_id = request
            .source_branch_id
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("source_branch_id is required"))?;
        let document = &mutation.document;
        let target = document
            .branch(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?
            .clone();
        let source = document
            .branch(source_branch_id)
            .ok_or_else(|| {
                ApiError::not_found(format!("source branch {source_branch_id} not found"))
            })?
            .clone();
        let from_itself = source.id == target.id;
        let point_in_time = request.source_lsn.is_some() || request.source_timestamp.is_some();
        if from_itself && !point_in_time {
            return Err(ApiError::bad_request(
                "restoring a branch from itself requires source_lsn or source_timestamp",
            ));
        }
        let has_children = document.has_children(branch_id);
        if (from_itself || has_children) && request.preserve_under_name.is_none() {
            return Err(ApiError::bad_request(if from_itself {
                "preserve_under_name is required when restoring a branch from its own history"
            } else {
                "preserve_under_name is required when the branch has children"
            }));
        }
        let now = now_ms();
        let snapshot = if point_in_time {
            Some(find_snapshot(
                document,
                &source,
                request.source_lsn.as_deref(),
                request.source_timestamp.as_deref(),
                now,
            )?)
        } else {
            None
        };
        let backup_name = request
            .preserve_under_name
            .clone()
            .unwrap_or_else(|| format!("{}_old_{}", target.name, model::rfc3339_seconds(now)));
        if backup_name.is_empty() || backup_name.len() > 256 {
            return Err(ApiError::bad_request(
                "preserve_under_name must be 1 to 256 characters long",
            ));
        }
        if document.branch_by_name(&backup_name).is_some() {
            return Err(ApiError::conflict(format!(
                "branch with the provided name {backup_name:?} already exists"
            )));
        }
        if document.branches.len() >= self.max_branches_per_project {
            return Err(ApiError::unprocessable(
                "BRANCHES_LIMIT_EXCEEDED",
                format!(
                    "restoring keeps the old state as a new branch, and project {project_id} is \
                     at its limit of {} branches",
                    self.max_branches_per_project
                ),
            ));
        }

        let role = document.project.physical_role.clone();
        let backup_id = ids::branch_id();
        let backup_database = ids::branch_database_name(&backup_id);
        let internal =
            |error: super::physical::PhysicalError| ApiError::internal(error.to_string());
        // The restored branch keeps its database name: move the current state away, then copy
        // the source into the original name.
        self.physical
            .rename_database(&target.physical_database, &backup_database)
            .await
            .map_err(internal)?;
        let source_database = match &snapshot {
            Some(snapshot) => snapshot.physical_database.clone(),
            None if from_itself => backup_database.clone(),
            None => source.physical_database.clone(),
        };
        let copied = self
            .physical
            .copy_database(&source_database, &target.physical_database, &role)
            .await;
        if let Err(error) = copied {
            let _ = self
                .physical
                .rename_database(&backup_database, &target.physical_database)
                .await;
            return Err(internal(error));
        }

        let now = now_ms();
        let ready_at = now + self.op_delay_ms();
        let half = now + self.op_delay_ms() / 2;
        let backup = BranchRecord {
            id: backup_id.clone(),
            project_id: project_id.to_string(),
            name: backup_name,
            parent_id: target.parent_id.clone(),
            parent_lsn: target.parent_lsn.clone(),
            parent_timestamp: target.parent_timestamp,
            created_at: now,
            updated_at: now,
            ready_at: now,
            default: false,
            protected: false,
            expires_at: None,
            ttl_interval_seconds: None,
            last_reset_at: None,
            physical_database: backup_database,
            database_id: database_id(),
        };
        let mut operations = vec![self.operation(
            project_id,
            Some(branch_id),
            None,
            "create_timeline",
            now,
            half,
        )];
        for endpoint in mutation.document.endpoints_of(branch_id) {
            operations.push(self.operation(
                project_id,
                Some(branch_id),
                Some(&endpoint.id),
                "start_compute",
                half,
                ready_at,
            ));
        }
        for child in mutation.document.branches.iter_mut() {
            if child.parent_id.as_deref() == Some(branch_id) {
                child.parent_id = Some(backup_id.clone());
            }
        }
        let restored = mutation
            .document
            .branch_mut(branch_id)
            .ok_or_else(|| ApiError::branch_not_found(branch_id))?;
        // A restored root stays a root; otherwise the backup becomes its parent, as on Neon.
        if restored.parent_id.is_some() {
            restored.parent_id = Some(backup_id.clone());
        }
        if let Some(snapshot) = &snapshot
            && !from_itself
        {
            restored.parent_lsn = Some(snapshot.lsn.clone());
            restored.parent_timestamp = Some(snapshot.taken_at);
        }
        restored.last_reset_at = Some(now);
        restored.updated_at = now;
        restored.ready_at = ready_at;
        let body = json!({
            "branch": model::render_branch(restored, now),
            "operations": Self::render_operations(&operations, now),
        });
        mutation.document.branches.push(backup);
        mutation.document.add_operations(&operations);
        self.commit(mutation).await?;
        Ok(body)
    }

    /// The superuser URI of a branch's physical database (for tests and tools).
    pub fn branch_database(&self, project_id: &str, branch_id: &str) -> Option<String> {
        let state = self.lock_state();
        let branch = state.projects.get(project_id)?.document.branch(branch_id)?;
        Some(branch.physical_database.clone())
    }
}

/// Query of `GET …/branches`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct BranchListQuery {
    pub search: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// Query of `GET …/connection_uri`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectionUriQuery {
    pub database_name: Option<String>,
    pub role_name: Option<String>,
    pub branch_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub pooled: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct CreateBranchRequest {
    pub branch: Option<CreateBranchFields>,
    pub endpoints: Option<Vec<EndpointOption>>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CreateBranchFields {
    pub parent_id: Option<String>,
    pub name: Option<String>,
    pub parent_lsn: Option<String>,
    pub parent_timestamp: Option<String>,
    pub protected: Option<bool>,
    pub expires_at: Option<String>,
    pub init_source: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub struct EndpointOption {
    #[serde(rename = "type")]
    pub endpoint_type: String,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct UpdateBranchRequest {
    pub branch: Option<UpdateBranchFields>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct UpdateBranchFields {
    pub name: Option<String>,
    pub protected: Option<bool>,
    #[serde(default)]
    pub expires_at: ExpiresAtChange,
}

/// `expires_at` in a PATCH: absent leaves it, `null` removes it, a string sets it.
#[derive(Debug, Default)]
pub enum ExpiresAtChange {
    #[default]
    Unchanged,
    Remove,
    Set(String),
}

impl<'de> serde::Deserialize<'de> for ExpiresAtChange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value: Option<String> = Option::deserialize(deserializer)?;
        Ok(match value {
            None => ExpiresAtChange::Remove,
            Some(text) => ExpiresAtChange::Set(text),
        })
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct RestoreBranchRequest {
    pub source_branch_id: Option<String>,
    pub source_lsn: Option<String>,
    pub source_timestamp: Option<String>,
    pub preserve_under_name: Option<String>,
}

fn parse_limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match text {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {max}, got {text:?}"
            ))),
        },
    }
}

fn validate_expires_at(text: &str, now: Millis) -> Result<Millis, ApiError> {
    let (expires_at, _) = model::parse_rfc3339(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "expires_at {text:?} is not an RFC 3339 timestamp such as 2025-06-09T18:02:16Z"
        ))
    })?;
    if expires_at <= now {
        return Err(ApiError::bad_request(format!(
            "expires_at {text} must be in the future"
        )));
    }
    if expires_at > now + MAX_EXPIRY_MS {
        return Err(ApiError::bad_request(format!(
            "expires_at {text} must be at most 30 days from now"
        )));
    }
    Ok(expires_at)
}

/// The snapshot of `branch` at exactly the requested LSN or timestamp, within the restore window.
fn find_snapshot(
    document: &ProjectDocument,
    branch: &BranchRecord,
    lsn: Option<&str>,
    timestamp: Option<&str>,
    now: Millis,
) -> Result<SnapshotRecord, ApiError> {
    let window_start = now - document.project.history_retention_seconds * 1000;
    let mut candidates: Vec<&SnapshotRecord> = document
        .snapshots
        .iter()
        .filter(|snapshot| snapshot.branch_id == branch.id && snapshot.taken_at >= window_start)
        .collect();
    candidates.sort_by_key(|snapshot| snapshot.taken_at);
    let parsed_timestamp = match timestamp {
        Some(text) => Some(model::parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!("timestamp {text:?} is not an RFC 3339 timestamp"))
        })?),
        None => None,
    };
    let found = candidates.iter().rev().find(|snapshot| {
        let lsn_matches = lsn.is_none_or(|lsn| lsn.eq_ignore_ascii_case(&snapshot.lsn));
        let timestamp_matches = parsed_timestamp.is_none_or(|(at, has_fraction)| {
            if has_fraction {
                snapshot.taken_at == at
            } else {
                snapshot.taken_at.div_euclid(1000) == at.div_euclid(1000)
            }
        });
        lsn_matches && timestamp_matches
    });
    match found {
        Some(snapshot) => Ok((*snapshot).clone()),
        None => {
            let available: Vec<String> = candidates
                .iter()
                .map(|snapshot| {
                    format!(
                        "lsn {} / timestamp {}",
                        snapshot.lsn,
                        model::rfc3339_millis(snapshot.taken_at)
                    )
                })
                .collect();
            let asked = match (lsn, timestamp) {
                (Some(lsn), Some(timestamp)) => format!("lsn {lsn} / timestamp {timestamp}"),
                (Some(lsn), None) => format!("lsn {lsn}"),
                (None, Some(timestamp)) => format!("timestamp {timestamp}"),
                (None, None) => "head".to_string(),
            };
            Err(ApiError::bad_request(format!(
                "the local emulator keeps branch {}'s history only at the instants child \
                 branches were created from it, within the project's restore window of {} s; \
                 {asked} is not one of them. Points it can restore to: {}",
                branch.id,
                document.project.history_retention_seconds,
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            )))
        }
    }
}

fn database_id() -> i64 {
    use rand::Rng;
    rand::rng().random_range(1_000_000..100_000_000)
}

//! The Neon API v2 objects this tool reads and the request bodies it sends.
//!
//! Every response type is lenient: only the fields the tool acts on are required (`id`, `name`),
//! every other field has a `#[serde(default)]`, unknown fields are ignored, and enumerations that
//! Neon keeps extending (`current_state`, operation `action`/`status`) stay plain strings.
//!
//! **Invariant:** no type here that can hold a password derives `Debug`; connection URIs leave
//! this module only as [`SecretUri`].
//! **Invariant:** the wire envelopes (`*Response`, `*Page`) are `pub(crate)`; the public types are
//! the ones listed in `neon/mod.rs`.

use serde::{Deserialize, Serialize};

use crate::secret::SecretUri;

/// Which projects [`crate::neon::NeonClient::list_projects`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFilter {
    /// Neon's `org_id` query parameter; personal API keys need it to see organization projects.
    pub org_id: Option<String>,
    /// Neon's `search` parameter: a partial match on the project name or id.
    pub search: Option<String>,
}

/// Every project a listing produced, plus the ids Neon could not describe in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectListing {
    pub projects: Vec<ProjectSummary>,
    /// Ids Neon reported in `unavailable_project_ids` and that a follow-up
    /// `GET /projects/{id}` could not fetch either.
    pub unavailable_project_ids: Vec<String>,
}

/// The part of a Neon project (`ProjectListItem` / `Project`) the fleet needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSummary {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub region_id: String,
    #[serde(default)]
    pub org_id: Option<String>,
    /// The restore window; `0` disables point-in-time restore.
    #[serde(default)]
    pub history_retention_seconds: Option<u64>,
}

/// What [`crate::neon::NeonClient::create_branch`] asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateBranch {
    /// The branch name; unique per project, so it doubles as the idempotency key of the create.
    pub name: String,
    /// `None` branches from the project's default branch.
    pub parent_id: Option<String>,
    /// RFC 3339 with seconds and a zone, at most 30 days ahead (Neon's rule).
    pub expires_at: Option<String>,
}

/// A branch that exists, is `ready` and has a read-write endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedBranch {
    pub branch: Branch,
    /// `connection_uris[0]` of the create answer. `None` when Neon omits it (the parent has more
    /// than one role or database) or when the branch was adopted after an unknown outcome.
    pub connection_uri: Option<SecretUri>,
    /// Operations of the create not known to have finished: empty when the create waited for
    /// them; see [`crate::neon::NeonClient::create_branch_unsettled`].
    pub unsettled: Vec<Operation>,
}

/// What [`crate::neon::NeonClient::restore_branch`] asks for (Neon's `BranchRestoreRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreBranch {
    pub source_branch_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_timestamp: Option<String>,
    /// Name of the branch that keeps the pre-restore state; required by Neon when a branch is
    /// restored from its own history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preserve_under_name: Option<String>,
}

/// Neon's `Branch` object, reduced to the fields the fleet acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub id: String,
    #[serde(default)]
    pub project_id: String,
    pub name: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub parent_lsn: Option<String>,
    #[serde(default)]
    pub parent_timestamp: Option<String>,
    /// `init`, `resetting`, `ready`, `archived`, or whatever Neon adds next.
    #[serde(default)]
    pub current_state: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub created_at: String,
    /// Set by a restore; a changed value proves a restore took effect.
    #[serde(default)]
    pub last_reset_at: Option<String>,
}

impl Branch {
    /// The state in which Neon accepts connections and further mutations.
    pub const READY: &'static str = "ready";

    pub fn is_ready(&self) -> bool {
        self.current_state == Self::READY
    }
}

/// Neon's asynchronous `Operation`; `action` and `status` stay strings because Neon adds values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub branch_id: Option<String>,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
    /// How long it ran (Neon's required field; the poller learns its first wait from it).
    #[serde(default)]
    pub total_duration_ms: Option<u64>,
}

// ---- wire envelopes -------------------------------------------------------------------------

/// `pagination` of `GET /projects` and `GET /projects/{id}/operations`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CursorPagination {
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `pagination` of `GET /projects/{id}/branches` (a different shape from the projects pager).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NextPagination {
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProjectsPage {
    #[serde(default)]
    pub projects: Vec<ProjectSummary>,
    #[serde(default)]
    pub pagination: Option<CursorPagination>,
    #[serde(default)]
    pub unavailable_project_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct BranchesPage {
    #[serde(default)]
    pub branches: Vec<Branch>,
    #[serde(default)]
    pub pagination: Option<NextPagination>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ProjectResponse {
    pub project: ProjectSummary,
}

#[derive(Debug, Deserialize)]
pub(crate) struct BranchResponse {
    pub branch: Branch,
}

/// Neon's `BranchOperations`: the answer of delete and restore. Only the operations matter: the
/// branch is re-read once they are done, since its state in this answer is stale.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct BranchOperationsResponse {
    #[serde(default)]
    pub operations: Vec<Operation>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OperationResponse {
    pub operation: Operation,
}

/// Neon's `CreatedBranch`. No `Debug`: `connection_uris` carries a password.
#[derive(Deserialize)]
pub(crate) struct CreatedBranchResponse {
    pub branch: Branch,
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub connection_uris: Vec<ConnectionDetails>,
}

/// No `Debug`: carries a password.
#[derive(Deserialize)]
pub(crate) struct ConnectionDetails {
    pub connection_uri: String,
}

/// No `Debug`: carries a password.
#[derive(Deserialize)]
pub(crate) struct ConnectionUriResponse {
    pub uri: String,
}

/// Neon's `GeneralError`. `code` is usually empty, `request_id` optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GeneralError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// Body of `POST /projects/{id}/branches`: always with one read-write endpoint, because every
/// branch this tool creates is connected to right away.
pub(crate) fn create_branch_body(request: &CreateBranch) -> serde_json::Value {
    let mut branch = serde_json::Map::new();
    branch.insert("name".into(), request.name.clone().into());
    if let Some(parent_id) = &request.parent_id {
        branch.insert("parent_id".into(), parent_id.clone().into());
    }
    if let Some(expires_at) = &request.expires_at {
        branch.insert("expires_at".into(), expires_at.clone().into());
    }
    serde_json::json!({
        "branch": branch,
        "endpoints": [{ "type": "read_write" }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_tolerates_missing_optional_fields_and_unknown_ones() {
        let branch: Branch = serde_json::from_str(
            r#"{"id":"br-a","name":"main","current_state":"hibernating","brand_new_field":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(branch.id, "br-a");
        assert_eq!(branch.current_state, "hibernating");
        assert!(!branch.default);
        assert_eq!(branch.last_reset_at, None);
    }

    #[test]
    fn operation_keeps_unknown_action_and_status_as_strings() {
        let operation: Operation = serde_json::from_str(
            r#"{"id":"op","project_id":"p","action":"swap_binding_id","status":"brand_new","failures_count":0}"#,
        )
        .unwrap();
        assert_eq!(operation.action, "swap_binding_id");
        assert_eq!(operation.status, "brand_new");
    }

    #[test]
    fn project_page_without_pagination_parses() {
        let page: ProjectsPage = serde_json::from_str(
            r#"{"projects":[{"id":"p1","name":"t1","region_id":"aws-us-east-2","pg_version":17}],
                "applications":{},"integrations":{}}"#,
        )
        .unwrap();
        assert_eq!(page.projects.len(), 1);
        assert!(page.pagination.is_none());
        assert!(page.unavailable_project_ids.is_empty());
    }

    #[test]
    fn create_body_asks_for_a_read_write_endpoint_and_omits_absent_fields() {
        let body = create_branch_body(&CreateBranch {
            name: "validate-1".into(),
            parent_id: None,
            expires_at: Some("2026-05-01T12:00:00Z".into()),
        });
        assert_eq!(body["branch"]["name"], "validate-1");
        assert!(body["branch"].get("parent_id").is_none());
        assert_eq!(body["endpoints"][0]["type"], "read_write");
    }

    #[test]
    fn restore_body_omits_absent_fields() {
        let body = serde_json::to_value(RestoreBranch {
            source_branch_id: "br-main".into(),
            source_timestamp: Some("2026-05-01T12:00:00Z".into()),
            ..RestoreBranch::default()
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"source_branch_id":"br-main","source_timestamp":"2026-05-01T12:00:00Z"})
        );
    }
}

//! The emulator's own records (what it persists) and their rendering as Neon API v2 JSON.
//!
//! Times are kept as milliseconds since the Unix epoch; states that change with time (an
//! operation's status, a branch's `init` -> `ready`) are derived from the clock at render time, so
//! a restarted emulator needs no runner to finish what was in flight.
//!
//! **Invariant:** rendered objects carry every field the official spec marks required and omit
//! optional fields that have no value (never `null`), so responses validate against the spec.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub const REGION_ID: &str = "aws-us-east-2";
pub const PLATFORM_ID: &str = "aws";
pub const CREATION_SOURCE: &str = "console";
pub const DEFAULT_HISTORY_RETENTION_SECONDS: i64 = 86_400;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as Millis
}

/// RFC 3339 at second precision, e.g. `2026-04-30T12:00:00Z`.
pub fn rfc3339_seconds(ms: Millis) -> String {
    format_time(ms, false)
}

/// RFC 3339 at millisecond precision, e.g. `2026-04-30T12:00:00.123Z`: used where a client passes
/// the value back and expects it to name one instant exactly.
pub fn rfc3339_millis(ms: Millis) -> String {
    format_time(ms, true)
}

fn format_time(ms: Millis, with_millis: bool) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp(seconds) else {
        return "1970-01-01T00:00:00Z".to_string();
    };
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    if with_millis {
        format!("{base}.{millis:03}Z")
    } else {
        format!("{base}Z")
    }
}

/// Parse an RFC 3339 timestamp; also returns whether it carried a fractional second.
pub fn parse_rfc3339(text: &str) -> Option<(Millis, bool)> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = (parsed.unix_timestamp_nanos() / 1_000_000) as Millis;
    let has_fraction = text.contains('.');
    Some((ms, has_fraction))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: String,
    pub name: String,
    /// Creation order, for stable pagination.
    pub seq: i64,
    pub org_id: Option<String>,
    pub pg_version: i64,
    pub history_retention_seconds: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// What the API calls the role and the database (`neondb_owner`, `neondb`).
    pub role_name: String,
    pub database_name: String,
    /// The cluster-wide login role that really owns the project's databases.
    pub physical_role: String,
    pub role_password: String,
    pub default_branch_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BranchRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub parent_lsn: Option<String>,
    pub parent_timestamp: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Before this instant the branch reports `init` (its create operation is running).
    pub ready_at: Millis,
    pub default: bool,
    pub protected: bool,
    pub expires_at: Option<Millis>,
    pub ttl_interval_seconds: Option<i64>,
    pub last_reset_at: Option<Millis>,
    pub physical_database: String,
    pub database_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub project_id: String,
    pub branch_id: String,
    pub read_write: bool,
    pub created_at: Millis,
    pub ready_at: Millis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRecord {
    pub id: String,
    pub project_id: String,
    pub branch_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub action: String,
    pub created_at: Millis,
    /// `scheduling` before this, `running` until `finish_at`, then `finished`.
    pub start_at: Millis,
    pub finish_at: Millis,
    /// An operation the control plane retries: `failed` (failures_count 1) from `start_at`
    /// until this, then `running` again. Neon documents `failed` as not terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_until: Option<Millis>,
}

impl OperationRecord {
    pub fn is_running(&self, now: Millis) -> bool {
        now < self.finish_at
    }
}

/// A branch's state at one instant, kept in a database of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub branch_id: String,
    pub lsn: String,
    pub taken_at: Millis,
    pub physical_database: String,
}

/// Where the emulator serves connections: its proxy's TCP address.
#[derive(Debug, Clone)]
pub struct ConnectionTarget {
    pub host: String,
    pub port: u16,
}

impl ConnectionTarget {
    /// An endpoint's `host`: what a client needs to reach the proxy, in the form Neon's
    /// endpoints have (`ep-….<domain>`, which clients send as TLS SNI) plus the proxy's port,
    /// since it is not 5432. neonctl builds its URIs from this field. The name resolves where
    /// `*.localhost` does (systemd's resolver, nss-myhostname); elsewhere a client adds
    /// `hostaddr=127.0.0.1` (libpq: `PGHOSTADDR`). A proxy on a non-loopback address has no
    /// such name: the host is its address, and clients name the endpoint in `options`.
    pub fn endpoint_host(&self, endpoint_id: &str) -> String {
        let loopback = self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback());
        let name = if loopback {
            format!("{endpoint_id}.{}", super::tls::COMMON_NAME)
        } else if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{name}:{}", self.port)
    }
}

pub fn render_project_list_item(project: &ProjectRecord) -> Value {
    let mut value = json!({
        "id": project.id,
        "platform_id": PLATFORM_ID,
        "region_id": REGION_ID,
        "name": project.name,
        "provisioner": "k8s-neonvm",
        "pg_version": project.pg_version,
        "proxy_host": "127.0.0.1",
        "branch_logical_size_limit": 0,
        "branch_logical_size_limit_bytes": 0,
        "store_passwords": true,
        "active_time": 0,
        "cpu_used_sec": 0,
        "creation_source": CREATION_SOURCE,
        "created_at": rfc3339_seconds(project.created_at),
        "updated_at": rfc3339_seconds(project.updated_at),
        "owner_id": "emulator",
        "history_retention_seconds": project.history_retention_seconds,
        "settings": {"allowed_ips": {"ips": [], "protected_branches_only": false}},
        "default_endpoint_settings": {
            "autoscaling_limit_min_cu": 0.25,
            "autoscaling_limit_max_cu": 1,
            "suspend_timeout_seconds": 0
        },
    });
    if let (Some(org_id), Some(object)) = (&project.org_id, value.as_object_mut()) {
        object.insert("org_id".into(), json!(org_id));
    }
    value
}

pub fn render_project(project: &ProjectRecord) -> Value {
    let mut value = render_project_list_item(project);
    if let Some(object) = value.as_object_mut() {
        for field in [
            "data_storage_bytes_hour",
            "data_transfer_bytes",
            "written_data_bytes",
            "compute_time_seconds",
            "active_time_seconds",
        ] {
            object.insert(field.into(), json!(0));
        }
        object.remove("active_time");
        object.insert(
            "consumption_period_start".into(),
            json!(rfc3339_seconds(project.created_at)),
        );
        object.insert(
            "consumption_period_end".into(),
            json!(rfc3339_seconds(project.created_at + 30 * 86_400_000)),
        );
    }
    value
}

pub fn render_branch(branch: &BranchRecord, now: Millis) -> Value {
    let ready = now >= branch.ready_at;
    let mut object = Map::new();
    object.insert("id".into(), json!(branch.id));
    object.insert("project_id".into(), json!(branch.project_id));
    if let Some(parent_id) = &branch.parent_id {
        object.insert("parent_id".into(), json!(parent_id));
    }
    if let Some(parent_lsn) = &branch.parent_lsn {
        object.insert("parent_lsn".into(), json!(parent_lsn));
    }
    if let Some(parent_timestamp) = branch.parent_timestamp {
        object.insert(
            "parent_timestamp".into(),
            json!(rfc3339_millis(parent_timestamp)),
        );
    }
    object.insert("name".into(), json!(branch.name));
    if ready {
        object.insert("current_state".into(), json!("ready"));
    } else {
        object.insert("current_state".into(), json!("init"));
        object.insert("pending_state".into(), json!("ready"));
    }
    let state_changed_at = if ready {
        branch.ready_at
    } else {
        branch.created_at
    };
    object.insert(
        "state_changed_at".into(),
        json!(rfc3339_seconds(state_changed_at)),
    );
    object.insert("logical_size".into(), json!(0));
    object.insert("creation_source".into(), json!(CREATION_SOURCE));
    object.insert("primary".into(), json!(branch.default));
    object.insert("default".into(), json!(branch.default));
    object.insert("protected".into(), json!(branch.protected));
    for field in [
        "cpu_used_sec",
        "compute_time_seconds",
        "active_time_seconds",
        "written_data_bytes",
        "data_transfer_bytes",
    ] {
        object.insert(field.into(), json!(0));
    }
    object.insert(
        "created_at".into(),
        json!(rfc3339_seconds(branch.created_at)),
    );
    object.insert(
        "updated_at".into(),
        json!(rfc3339_seconds(branch.updated_at)),
    );
    if let Some(expires_at) = branch.expires_at {
        object.insert("expires_at".into(), json!(rfc3339_seconds(expires_at)));
    }
    if let Some(ttl) = branch.ttl_interval_seconds {
        object.insert("ttl_interval_seconds".into(), json!(ttl));
    }
    if let Some(last_reset_at) = branch.last_reset_at {
        object.insert("last_reset_at".into(), json!(rfc3339_millis(last_reset_at)));
    }
    object.insert("init_source".into(), json!("parent-data"));
    Value::Object(object)
}

pub fn render_endpoint(endpoint: &EndpointRecord, target: &ConnectionTarget, now: Millis) -> Value {
    let active = now >= endpoint.ready_at;
    let mut value = json!({
        "host": target.endpoint_host(&endpoint.id),
        "id": endpoint.id,
        "project_id": endpoint.project_id,
        "branch_id": endpoint.branch_id,
        "autoscaling_limit_min_cu": 0.25,
        "autoscaling_limit_max_cu": 1,
        "region_id": REGION_ID,
        "type": if endpoint.read_write { "read_write" } else { "read_only" },
        "current_state": if active { "active" } else { "init" },
        "settings": {"pg_settings": {}},
        "pooler_enabled": false,
        "pooler_mode": "transaction",
        "disabled": false,
        "passwordless_access": true,
        "creation_source": CREATION_SOURCE,
        "created_at": rfc3339_seconds(endpoint.created_at),
        "updated_at": rfc3339_seconds(endpoint.created_at),
        "proxy_host": target.host,
        "suspend_timeout_seconds": 0,
        "provisioner": "k8s-neonvm",
    });
    if let Some(object) = value.as_object_mut() {
        if active {
            object.insert(
                "started_at".into(),
                json!(rfc3339_seconds(endpoint.ready_at)),
            );
        } else {
            object.insert("pending_state".into(), json!("active"));
        }
    }
    value
}

pub fn operation_status(operation: &OperationRecord, now: Millis) -> &'static str {
    if now >= operation.finish_at {
        "finished"
    } else if operation
        .failed_until
        .is_some_and(|until| now >= operation.start_at && now < until)
    {
        "failed"
    } else if now >= operation.start_at {
        "running"
    } else {
        "scheduling"
    }
}

pub fn render_operation(operation: &OperationRecord, now: Millis) -> Value {
    let status = operation_status(operation, now);
    let updated_at = if now >= operation.finish_at {
        operation.finish_at
    } else {
        operation.created_at
    };
    let duration = (now.min(operation.finish_at) - operation.start_at).max(0);
    let mut object = Map::new();
    object.insert("id".into(), json!(operation.id));
    object.insert("project_id".into(), json!(operation.project_id));
    if let Some(branch_id) = &operation.branch_id {
        object.insert("branch_id".into(), json!(branch_id));
    }
    if let Some(endpoint_id) = &operation.endpoint_id {
        object.insert("endpoint_id".into(), json!(endpoint_id));
    }
    object.insert("action".into(), json!(operation.action));
    object.insert("status".into(), json!(status));
    let failed_once = operation.failed_until.is_some() && now >= operation.start_at;
    object.insert("failures_count".into(), json!(u32::from(failed_once)));
    // The spec: "when the operation was last retried" — the retry the control plane makes
    // when the failed phase ends.
    if let Some(until) = operation.failed_until
        && failed_once
    {
        object.insert("retry_at".into(), json!(rfc3339_seconds(until)));
    }
    object.insert(
        "created_at".into(),
        json!(rfc3339_seconds(operation.created_at)),
    );
    object.insert("updated_at".into(), json!(rfc3339_seconds(updated_at)));
    object.insert("total_duration_ms".into(), json!(duration));
    Value::Object(object)
}

pub fn render_role(project: &ProjectRecord, branch: &BranchRecord, with_password: bool) -> Value {
    let mut value = json!({
        "branch_id": branch.id,
        "name": project.role_name,
        "protected": false,
        "created_at": rfc3339_seconds(branch.created_at),
        "updated_at": rfc3339_seconds(branch.created_at),
    });
    if let (true, Some(object)) = (with_password, value.as_object_mut()) {
        object.insert("password".into(), json!(project.role_password));
    }
    value
}

pub fn render_database(project: &ProjectRecord, branch: &BranchRecord) -> Value {
    json!({
        "id": branch.database_id,
        "branch_id": branch.id,
        "name": project.database_name,
        "owner_name": project.role_name,
        "created_at": rfc3339_seconds(branch.created_at),
        "updated_at": rfc3339_seconds(branch.created_at),
    })
}

/// The URI a tenant connects with: the physical role and database of the branch.
/// A URI through the emulator's proxy (`target`), naming the endpoint as Neon's proxy accepts
/// it from clients without SNI; a branch without an endpoint gets none, and the proxy refuses it.
pub fn connection_uri(
    project: &ProjectRecord,
    branch: &BranchRecord,
    endpoint_id: Option<&str>,
    target: &ConnectionTarget,
) -> String {
    let endpoint_option = endpoint_id
        .map(|endpoint_id| format!("&options=endpoint%3D{endpoint_id}"))
        .unwrap_or_default();
    format!(
        "postgresql://{}:{}@{}:{}/{}?sslmode=disable{endpoint_option}",
        project.physical_role,
        project.role_password,
        target.host,
        target.port,
        branch.physical_database
    )
}

pub fn render_connection_details(
    project: &ProjectRecord,
    branch: &BranchRecord,
    endpoint_id: Option<&str>,
    target: &ConnectionTarget,
) -> Value {
    json!({
        "connection_uri": connection_uri(project, branch, endpoint_id, target),
        "connection_parameters": {
            "database": branch.physical_database,
            "password": project.role_password,
            "role": project.physical_role,
            "host": target.host,
            "pooler_host": target.host,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_host_names_the_endpoint_and_the_proxy_port() {
        let target = |host: &str| ConnectionTarget {
            host: host.into(),
            port: 6543,
        };
        assert_eq!(
            target("127.0.0.1").endpoint_host("ep-cool-1"),
            "ep-cool-1.localhost:6543"
        );
        assert_eq!(
            target("::1").endpoint_host("ep-cool-1"),
            "ep-cool-1.localhost:6543"
        );
        assert_eq!(
            target("10.0.0.5").endpoint_host("ep-cool-1"),
            "10.0.0.5:6543"
        );
        assert_eq!(
            target("fd00::5").endpoint_host("ep-cool-1"),
            "[fd00::5]:6543"
        );
    }

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        let ms = 1_777_550_400_123;
        let text = rfc3339_millis(ms);
        assert_eq!(text, "2026-04-30T12:00:00.123Z");
        assert_eq!(parse_rfc3339(&text), Some((ms, true)));
        assert_eq!(rfc3339_seconds(ms), "2026-04-30T12:00:00Z");
        assert_eq!(
            parse_rfc3339("2026-04-30T12:00:00Z"),
            Some((1_777_550_400_000, false))
        );
    }

    #[test]
    fn operation_status_follows_the_clock() {
        let operation = OperationRecord {
            id: "x".into(),
            project_id: "p".into(),
            branch_id: None,
            endpoint_id: None,
            action: "create_branch".into(),
            created_at: 0,
            start_at: 10,
            finish_at: 20,
            failed_until: None,
        };
        assert_eq!(operation_status(&operation, 5), "scheduling");
        assert_eq!(operation_status(&operation, 10), "running");
        assert_eq!(operation_status(&operation, 20), "finished");

        let retried = OperationRecord {
            failed_until: Some(15),
            ..operation
        };
        assert_eq!(operation_status(&retried, 5), "scheduling");
        assert_eq!(operation_status(&retried, 10), "failed");
        assert_eq!(render_operation(&retried, 12)["failures_count"], 1);
        assert!(render_operation(&retried, 12)["retry_at"].is_string());
        assert_eq!(operation_status(&retried, 15), "running");
        assert_eq!(render_operation(&retried, 16)["failures_count"], 1);
        assert_eq!(operation_status(&retried, 20), "finished");
        assert_eq!(render_operation(&retried, 5)["failures_count"], 0);
    }
}

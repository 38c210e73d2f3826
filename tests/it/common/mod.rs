//! Shared helpers for integration tests: raw HTTP against the emulator and SQL against the
//! databases behind it. Kept small on purpose.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use schemafleet::emulator::{LocalFleet, LocalFleetConfig};
use serde_json::Value;

/// Raw HTTP access to a running emulator.
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub key: String,
}

/// A response: status and parsed JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub fn new(fleet: &LocalFleet) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: fleet.api_url().to_string(),
            key: fleet.api_key().expose().to_string(),
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the emulator answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a readable body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Poll until every operation of the project is finished.
    pub async fn wait_for_operations(&self, project_id: &str) {
        wait_until("the project's operations to finish", || async {
            let answer = self
                .get(&format!("/projects/{project_id}/operations"))
                .await;
            answer.status == 200
                && answer.body["operations"]
                    .as_array()
                    .expect("operations")
                    .iter()
                    .all(|operation| operation["status"] == "finished")
        })
        .await;
    }

    /// The tenant connection URI of a branch's `neondb`.
    pub async fn connection_uri(&self, project_id: &str, branch_id: &str) -> String {
        let answer = self
            .get(&format!(
                "/projects/{project_id}/connection_uri?database_name=neondb&role_name=neondb_owner&branch_id={branch_id}"
            ))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["uri"].as_str().expect("uri").to_string()
    }
}

/// Poll `condition` every 20 ms for up to 20 s.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn start_fleet() -> LocalFleet {
    LocalFleet::start(LocalFleetConfig::for_tests())
        .await
        .expect("the local fleet starts")
}

/// A connected SQL client; the connection task ends with the client.
pub async fn connect(uri: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(uri, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect: {error}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Every user table with its columns and rows as text, for comparing whole database states.
pub async fn dump_tables(client: &tokio_postgres::Client) -> Vec<(String, Vec<String>)> {
    let tables = client
        .query(
            "SELECT format('%I.%I', table_schema, table_name), \
                    (SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) \
                     FROM information_schema.columns c \
                     WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name) \
             FROM information_schema.tables t \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables");
    let mut dump = Vec::new();
    for table in tables {
        let name: String = table.get(0);
        let columns: String = table.get(1);
        let rows = client
            .query(&format!("SELECT t::text FROM {name} t ORDER BY 1"), &[])
            .await
            .expect("read rows");
        let mut lines = vec![format!("columns: {columns}")];
        lines.extend(rows.iter().map(|row| row.get::<_, String>(0)));
        dump.push((name, lines));
    }
    dump
}

/// Neon's official OpenAPI document, used to check response bodies against the schema each
/// operation declares.
pub struct Spec {
    document: Value,
    validators:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

impl Spec {
    /// `None` (with a visible message) when the spec file is absent outside CI; a panic in CI.
    pub fn load() -> Option<Spec> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/neon-openapi-v2.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(Spec {
                document: serde_json::from_str(&text).expect("the spec is JSON"),
                validators: Default::default(),
            }),
            Err(error) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "the Neon OpenAPI spec {} is required in CI: {error}",
                    path.display()
                );
                eprintln!(
                    "SKIPPED: spec validation needs {} ({error})",
                    path.display()
                );
                None
            }
        }
    }

    /// Assert that `answer` matches the schema `path`/`method` declares for its status (or the
    /// `default` response).
    pub fn check(&self, method: &str, path: &str, answer: &Answer) {
        let operation = &self.document["paths"][path][method];
        assert!(operation.is_object(), "the spec has no {method} {path}");
        let responses = &operation["responses"];
        let status = answer.status.to_string();
        let mut response = if responses[&status].is_object() {
            &responses[&status]
        } else {
            &responses["default"]
        };
        if let Some(reference) = response["$ref"].as_str() {
            let name = reference.rsplit('/').next().expect("a named response");
            response = &self.document["components"]["responses"][name];
        }
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert!(
                answer.text.is_empty(),
                "{method} {path} {status} declares no body, got {}",
                answer.text
            );
            return;
        }
        let key = format!("{method} {path} {status}");
        let validator = {
            let mut validators = self.validators.lock().unwrap();
            validators
                .entry(key.clone())
                .or_insert_with(|| {
                    let wrapped = serde_json::json!({
                        "allOf": [schema],
                        "components": self.document["components"],
                    });
                    std::sync::Arc::new(
                        jsonschema::options()
                            .with_draft(jsonschema::Draft::Draft4)
                            .should_validate_formats(true)
                            .build(&wrapped)
                            .unwrap_or_else(|error| panic!("schema for {key}: {error}")),
                    )
                })
                .clone()
        };
        let errors: Vec<String> = validator
            .iter_errors(&answer.body)
            .map(|error| format!("{} at {}", error, error.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{key} does not match the spec:\n{}\nbody: {}",
            errors.join("\n"),
            answer.text
        );
    }
}

/// Apply `migrations` to the database at `uri` with the real guarded runner, as `apply` does.
pub async fn migrate_with_runner(
    uri: &schemafleet::secret::SecretUri,
    migrations: &[refinery::Migration],
) {
    let mut client = schemafleet::pg::connect(uri, Duration::from_secs(10))
        .await
        .expect("the tenant accepts connections");
    schemafleet::pg::runner::apply_pending(
        &mut client,
        migrations,
        schemafleet::pg::runner::TransactionMode::PerMigration,
        schemafleet::pg::runner::Timeouts {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(30),
        },
        schemafleet::pg::runner::LockRetry {
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
        },
    )
    .await
    .unwrap_or_else(|failure| panic!("migrating failed: {}", failure.failure));
}

/// The binary's stdout as JSON, or a panic showing stdout and stderr.
pub fn stdout_json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

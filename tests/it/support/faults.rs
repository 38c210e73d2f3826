//! Helpers for the fault, bad-input, secret and resume tests: raw HTTP to the emulator (fleet
//! changes behind the tool's back), the binary spawned and killed, exact-once checks of a
//! tenant's schema, and polling without multi-second sleeps.
//!
//! Included once, as `crate::fault_support`, by `tests/it/main.rs`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TestFleet, connect};

/// The repository's migrations, as versions.
pub const ALL_VERSIONS: [i32; 4] = [1, 2, 3, 4];

/// A policy body (after the fleet/database/role lines `TestFleet::write_policy` adds) with
/// branch validation, a short lock timeout and the given waves.
pub fn policy_with_waves(waves: &str) -> String {
    format!(
        "validation: branch\nrestore_point: branch_point\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: faults\nwaves:\n{waves}"
    )
}

/// A policy without validation branches, for faults that concern main only.
pub fn main_only_policy(lock_timeout: &str, statement_timeout: &str, concurrency: usize) -> String {
    format!(
        "validation: none\nrestore_point: none\nlock_timeout: {lock_timeout}\nstatement_timeout: {statement_timeout}\nbranch_ttl: 1h\nsalt: faults\nwaves:\n  - name: all\n    percent: 100\n    concurrency: {concurrency}\n    max_failures: 100\n"
    )
}

/// One wave holding the whole fleet.
pub fn one_wave(concurrency: usize) -> String {
    policy_with_waves(&format!(
        "  - name: all\n    percent: 100\n    concurrency: {concurrency}\n    max_failures: 100\n"
    ))
}

/// The binary with this fleet's environment, as `TestFleet::run` sets it, not yet started.
pub fn command(fleet: &TestFleet, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_schemafleet"));
    command
        .args(args)
        .current_dir(fleet.dir.path())
        .env("NEON_API_URL", fleet.fleet.api_url())
        .env("NEON_API_KEY", fleet.fleet.api_key().expose())
        .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
        .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
        .env("SCHEMAFLEET_NO_PROGRESS", "1")
        .env_remove("SCHEMAFLEET_LOG");
    command
}

/// Run to completion with extra environment (`None` removes the variable).
pub fn run_with_env(fleet: &TestFleet, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut command = command(fleet, args);
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.output().expect("the binary runs")
}

/// A running `schemafleet` whose stdout and stderr go to files (a killed child cannot block
/// on a full pipe, and what it printed before dying stays readable).
pub struct Spawned {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Spawned {
    pub fn start(fleet: &TestFleet, args: &[&str], label: &str) -> Spawned {
        let stdout_path = fleet.path(&format!("{label}.stdout"));
        let stderr_path = fleet.path(&format!("{label}.stderr"));
        let stdout = std::fs::File::create(&stdout_path).expect("create stdout file");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let child = command(fleet, args)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("the binary starts");
        Spawned {
            child,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Send a signal by number through `kill(1)` (no libc binding needed).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Wait for the exit, at most `timeout`; panics (after a SIGKILL) when it does not end.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "schemafleet did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Complete lines of a journal (0 when it does not exist yet).
pub fn journal_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|byte| **byte == b'\n').count())
        .unwrap_or(0)
}

/// Every record of a journal, parsed; panics on a line that is not JSON.
pub fn journal_records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read the journal");
    text.lines()
        .enumerate()
        .map(|(idx, line)| {
            serde_json::from_str(line).unwrap_or_else(|error| {
                panic!("journal line {} is not JSON ({error}): {line}", idx + 1)
            })
        })
        .collect()
}

/// Poll `condition` every 5 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Async variant of [`wait_for`].
pub async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raw HTTP to the emulator, for changing the fleet behind the tool's back and for listing
/// what the tool left behind.
pub struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    pub fn new(fleet: &TestFleet) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: fleet.fleet.api_url().to_string(),
            key: fleet.fleet.api_key().expose().to_string(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the emulator answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The project's branches; panics unless the emulator answers 200.
    pub async fn branches(&self, project_id: &str) -> Vec<Value> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                &format!("/projects/{project_id}/branches"),
                None,
            )
            .await;
        assert_eq!(status, 200, "listing branches of {project_id}: {body}");
        body["branches"].as_array().cloned().unwrap_or_default()
    }

    /// Names of the project's branches.
    pub async fn branch_names(&self, project_id: &str) -> Vec<String> {
        self.branches(project_id)
            .await
            .iter()
            .filter_map(|branch| branch["name"].as_str().map(str::to_string))
            .collect()
    }

    pub async fn delete_project(&self, project_id: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::DELETE,
                &format!("/projects/{project_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "deleting {project_id}: {body}");
    }

    pub async fn rename_branch(&self, project_id: &str, branch_id: &str, name: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::PATCH,
                &format!("/projects/{project_id}/branches/{branch_id}"),
                Some(serde_json::json!({"branch": {"name": name}})),
            )
            .await;
        assert_eq!(status, 200, "renaming {project_id}/{branch_id}: {body}");
    }
}

/// refinery's history as (version, name, checksum), with a count of rows per version so a
/// duplicate shows.
pub async fn history_rows(uri: &str) -> Vec<(i32, String, String, i64)> {
    let client = connect(uri).await;
    match client
        .query(
            "SELECT version, name, checksum, count(*) OVER (PARTITION BY version) FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect(),
        Err(error) if error.code().map(|code| code.code()) == Some("42P01") => Vec::new(),
        Err(error) => panic!("reading history: {error}"),
    }
}

/// Assert the tenant holds each of the repository's migrations exactly once: one history row
/// per version, and each object the migrations create present once (and the concurrently
/// built index valid, which a killed `CREATE INDEX CONCURRENTLY` would not leave it).
pub async fn assert_repo_migrations_once(label: &str, uri: &str) {
    let rows = history_rows(uri).await;
    let versions: Vec<i32> = rows.iter().map(|row| row.0).collect();
    assert_eq!(versions, ALL_VERSIONS, "{label}: history {rows:?}");
    assert!(
        rows.iter().all(|row| row.3 == 1),
        "{label}: duplicate history rows {rows:?}"
    );
    let client = connect(uri).await;
    let counts = client
        .query_one(
            "SELECT
                (SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'accounts' AND column_name = 'plan'),
                (SELECT count(*) FROM pg_constraint WHERE conname = 'orders_status_check'),
                (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname = 'orders_account_id_idx'),
                (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'orders_account_id_idx' AND i.indisvalid),
                (SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'audit_log'),
                (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname = 'audit_log_account_created_idx'),
                (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'orders')",
            &[],
        )
        .await
        .expect("catalog counts");
    let counts: Vec<i64> = (0..7).map(|idx| counts.get(idx)).collect();
    assert_eq!(
        counts,
        vec![1, 1, 1, 1, 1, 1, 2],
        "{label}: [accounts.plan, orders_status_check, orders_account_id_idx, valid, audit_log, audit_log idx, indexes on orders]"
    );
}

/// The tenant's schema and data as text, with refinery's history reduced to what must match
/// between two runs (version, name, checksum: `applied_on` differs by construction).
pub async fn schema_state(uri: &str) -> String {
    let client = connect(uri).await;
    let mut out = String::new();
    let queries = [
        "SELECT string_agg(format('%s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default), E'\\n' ORDER BY table_name, ordinal_position) FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), E'\\n' ORDER BY conname) FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT string_agg(i.indexdef || ' valid=' || x.indisvalid, E'\\n' ORDER BY i.indexname) FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname AND c.relnamespace = 'public'::regnamespace JOIN pg_index x ON x.indexrelid = c.oid WHERE i.schemaname = 'public'",
    ];
    for query in queries {
        let row = client.query_one(query, &[]).await.expect("catalog query");
        out.push_str(&row.get::<_, Option<String>>(0).unwrap_or_default());
        out.push('\n');
    }
    let tables = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'refinery_schema_history' ORDER BY tablename",
            &[],
        )
        .await
        .expect("list tables");
    for table in tables {
        let name: String = table.get(0);
        let rows = client
            .query(
                // The seed's `created_at` is the time its template was filled: equal within one
                // seeding, different between two fleets seeded one after the other.
                &format!(
                    "SELECT (to_jsonb(t) - 'created_at')::text FROM public.{name} t ORDER BY 1"
                ),
                &[],
            )
            .await
            .expect("read rows");
        out.push_str(&format!("{name}:\n"));
        for row in rows {
            out.push_str(&row.get::<_, String>(0));
            out.push('\n');
        }
    }
    for (version, name, checksum, count) in history_rows(uri).await {
        out.push_str(&format!("history {version} {name} {checksum} x{count}\n"));
    }
    out
}

/// A migrations directory holding only `files` (name, SQL).
pub fn migrations_dir(fleet: &TestFleet, files: &[(&str, &str)]) -> PathBuf {
    let dir = fleet.path("migrations");
    std::fs::create_dir_all(&dir).expect("create migrations dir");
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).expect("write migration");
    }
    dir
}

/// The report's (or `status`'s) failure entry of `project_id`.
pub fn failure_of<'r>(report: &'r Value, project_id: &str) -> &'r Value {
    report["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .find(|failure| failure["tenant"] == project_id)
        .unwrap_or_else(|| panic!("no failure entry for {project_id}: {report:#}"))
}

/// The database name in a connection URI's path.
pub fn database_of(uri: &str) -> String {
    url::Url::parse(uri)
        .expect("a URI")
        .path()
        .trim_start_matches('/')
        .to_string()
}

/// Copy the repository's migrations into `dir` (created), for tests that add or edit one.
pub fn copy_repo_migrations(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create migrations dir");
    for entry in std::fs::read_dir(crate::support::repo_migrations()).expect("read migrations") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy migration");
    }
}

/// Names of the files in `dir`, sorted (to show nothing was written).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Every file under `dir` with its bytes (to show a command wrote nothing, or to search them).
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                files.insert(path, bytes);
            }
        }
    }
    files
}

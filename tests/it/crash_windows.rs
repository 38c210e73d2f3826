//! The crash and retry windows of issue 19, each reproduced exactly on the local fleet
//! (emulator + real PostgreSQL): a journal cut at the record boundary a SIGKILL leaves, a failed
//! attempt followed by a retry, a lock held by the application. Each test then asks what
//! `status`, the JSON report and `rollback` believe, and checks it against the tenant's database.

use crate::fault_support;
use crate::support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use fault_support::{
    Spawned, assert_repo_migrations_once, database_of, failure_of, journal_records,
    main_only_policy, migrations_dir, one_wave, policy_with_waves, wait_for, wait_for_async,
};
use support::{TestFleet, connect, history, json, repo_migrations, text};

const CREATE_NOTES: &str = "CREATE TABLE notes (id bigint PRIMARY KEY);\n";

/// No validation branch; a backup branch as the restore point.
fn backup_branch_policy(concurrency: usize) -> String {
    main_only_policy("2s", "30s", concurrency)
        .replace("restore_point: none", "restore_point: backup_branch")
}

/// Cut the journal just before its first record matching `cut_here`: what a SIGKILL right
/// before that record's append leaves on disk. Returns the records cut.
fn cut_journal_before(journal: &Path, mut cut_here: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let text = std::fs::read_to_string(journal).expect("read the journal");
    let lines: Vec<&str> = text.lines().collect();
    let cut_at = lines
        .iter()
        .position(|line| cut_here(&serde_json::from_str(line).expect("a record")))
        .expect("the record to cut before");
    let mut kept = lines[..cut_at].join("\n");
    kept.push('\n');
    std::fs::write(journal, kept).expect("write the cut journal");
    lines[cut_at..]
        .iter()
        .map(|line| serde_json::from_str(line).expect("a record"))
        .collect()
}

/// The restore points `status --output json` lists, by tenant.
fn status_restore_point<'s>(status: &'s Value, tenant: &str) -> &'s Value {
    status["restore_points"]
        .as_array()
        .expect("restore_points")
        .iter()
        .find(|point| point["tenant"] == tenant)
        .unwrap_or_else(|| panic!("no restore point for {tenant}: {status:#}"))
}

/// SQL that fails on the tenant's main (`uri`), and not on its validation branch (a database
/// of another name), while a row with email `block@example.com` is there.
fn blocked_on_main(uri: &str) -> String {
    format!(
        "DO $$ BEGIN\n  IF current_database() = '{}' AND EXISTS (SELECT 1 FROM accounts WHERE email = 'block@example.com') THEN\n    RAISE EXCEPTION 'blocked on main';\n  END IF;\nEND $$;\n",
        database_of(uri)
    )
}

/// Insert the row [`blocked_on_main`] fails on; the session stays open for the test's writes.
async fn block_main(uri: &str) -> tokio_postgres::Client {
    let main = connect(uri).await;
    main.batch_execute("INSERT INTO accounts (email) VALUES ('block@example.com')")
        .await
        .expect("insert the blocking row");
    main
}

async fn has_table(uri: &str, table: &str) -> bool {
    connect(uri)
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn account_emails(uri: &str) -> Vec<String> {
    connect(uri)
        .await
        .query("SELECT email FROM accounts ORDER BY email", &[])
        .await
        .expect("read accounts")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Finding 1: killed between a tenant's COMMIT on main and its `applied` record. The resume's
/// re-probe finds nothing pending; it credits the versions to this plan (history rows written
/// after `apply_started`), so the tenant is `applied`, not `up_to_date`, and `rollback --wave`
/// restores it instead of saying there is nothing to roll back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_commit_the_resume_reports_applied_and_rollback_wave_restores() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(&one_wave(1));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let journal = fleet.path("policy.journal.jsonl");
    let records = journal_records(&journal);
    let victim = records
        .iter()
        .rev()
        .find(|record| record["event"] == "applied")
        .and_then(|record| record["tenant"].as_str())
        .expect("an applied record")
        .to_string();
    let cut = cut_journal_before(&journal, |record| {
        record["event"] == "applied" && record["tenant"] == victim.as_str()
    });
    assert_eq!(cut[0]["versions"], serde_json::json!([1, 2, 3, 4]));

    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    assert_eq!(report["totals"]["up_to_date"], 0, "{report:#}");
    let reapplied = journal_records(&journal)
        .into_iter()
        .rev()
        .find(|record| record["tenant"] == victim.as_str() && record["event"] == "applied")
        .expect("the resume journals the tenant as applied");
    assert_eq!(reapplied["versions"], serde_json::json!([1, 2, 3, 4]));

    let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
    assert_eq!(status["totals"]["applied"], 2, "{status:#}");
    assert_eq!(status_restore_point(&status, &victim)["status"], "applied");

    let output = fleet.run(&[
        "rollback", &plan, "--wave", "all", "--yes", "--output", "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rolled = json(&output);
    let rolled_back: Vec<&str> = rolled["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter(|tenant| tenant["ok"] == true)
        .filter_map(|tenant| tenant["tenant"].as_str())
        .collect();
    assert!(rolled_back.contains(&victim.as_str()), "{rolled:#}");
    for tenant in &fleet.tenants {
        let uri = tenant.connection_uri.expose();
        assert!(
            history(uri).await.is_empty(),
            "{} still migrated",
            tenant.name
        );
        assert!(!has_table(uri, "audit_log").await, "{}", tenant.name);
    }
    fleet.fleet.stop().await.expect("stop");
}

/// Finding 2: attempt 1 commits V1 and fails on V2; the retry fails again before changing main.
/// The report, `status` and `rollback --failed` still know main holds V1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_failure_keeps_what_the_first_committed_for_rollback_failed() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(&backup_branch_policy(2));
    let migrations = migrations_dir(
        &fleet,
        &[
            ("V1__create_notes.sql", CREATE_NOTES),
            (
                "V2__accounts_email_short.sql",
                "-- no-transaction\n-- squawk-ignore constraint-missing-not-valid -- a test table of a few rows\nALTER TABLE accounts ADD CONSTRAINT email_short CHECK (length(email) < 40);\n",
            ),
        ],
    );
    let plan = fleet.plan(&migrations);
    let plan = plan.to_str().expect("utf-8").to_string();
    let bad = fleet.tenant("tenant-0002");
    let bad_uri = bad.connection_uri.expose();
    connect(bad_uri)
        .await
        .batch_execute(&format!(
            "INSERT INTO accounts (email) VALUES ('{}@example.com')",
            "x".repeat(50)
        ))
        .await
        .expect("insert the long email");

    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(
        failure_of(&report, &bad.project_id)["applied_on_main"],
        serde_json::json!([1]),
        "{report:#}"
    );

    let output = fleet.run(&["apply", &plan, "--retry-failed", "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let records = journal_records(&fleet.path("policy.journal.jsonl"));
    let last_failed = records
        .iter()
        .rev()
        .find(|record| record["event"] == "failed" && record["tenant"] == bad.project_id.as_str())
        .expect("the retry's failed record");
    assert_eq!(
        last_failed["applied_on_main"],
        serde_json::json!([]),
        "the retry itself committed nothing"
    );
    let report = json(&output);
    assert_eq!(
        failure_of(&report, &bad.project_id)["applied_on_main"],
        serde_json::json!([1]),
        "{report:#}"
    );
    let group_steps: Vec<&str> = report["failure_groups"]
        .as_array()
        .expect("failure_groups")
        .iter()
        .filter_map(|group| group["next_step"].as_str())
        .collect();
    assert!(
        group_steps
            .iter()
            .any(|step| step.contains("partly migrated") && step.contains("--failed")),
        "{group_steps:#?}"
    );
    assert!(
        group_steps
            .iter()
            .all(|step| !step.contains("main was not changed")),
        "{group_steps:#?}"
    );
    let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
    assert_eq!(
        failure_of(&status, &bad.project_id)["applied_on_main"],
        serde_json::json!([1]),
        "{status:#}"
    );

    let output = fleet.run(&["rollback", &plan, "--failed", "--dry-run"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("POST /projects/{}/branches/", bad.project_id)),
        "{}",
        text(&output)
    );
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("nothing to roll back"),
        "{}",
        text(&output)
    );
    let output = fleet.run(&["rollback", &plan, "--failed", "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(history(bad_uri).await.is_empty());
    assert!(!has_table(bad_uri, "notes").await);
    let good = fleet.tenant("tenant-0001");
    assert_eq!(
        history(good.connection_uri.expose())
            .await
            .iter()
            .map(|row| row.0)
            .collect::<Vec<_>>(),
        vec![1, 2],
        "the applied tenant is not rolled back by --failed"
    );
    fleet.fleet.stop().await.expect("stop");
}

/// Finding 3: an attempt fails on main without changing it; the application writes; the retry
/// validates again. Its fresh branch point becomes the restore point, so a rollback keeps the
/// write made between the attempts (the old point would throw it away, or leave the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_an_attempt_that_changed_nothing_takes_a_fresh_restore_point() {
    let fleet = TestFleet::start(1).await;
    fleet.write_policy(&one_wave(1));
    let tenant = fleet.tenant("tenant-0001");
    let uri = tenant.connection_uri.expose();
    let migrations = migrations_dir(
        &fleet,
        &[(
            "V1__create_notes.sql",
            &format!("{}{CREATE_NOTES}", blocked_on_main(uri)),
        )],
    );
    let plan = fleet.plan(&migrations);
    let plan = plan.to_str().expect("utf-8").to_string();
    let main = block_main(uri).await;

    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        failure_of(&json(&output), &tenant.project_id)["phase"],
        "apply"
    );
    assert!(
        history(uri).await.is_empty(),
        "the failed attempt changed main"
    );

    main.batch_execute(
        "DELETE FROM accounts WHERE email = 'block@example.com'; \
         INSERT INTO accounts (email) VALUES ('written-between-attempts@example.com')",
    )
    .await
    .expect("the application writes");
    let output = fleet.run(&["apply", &plan, "--retry-failed", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let points: Vec<Value> = journal_records(&fleet.path("policy.journal.jsonl"))
        .into_iter()
        .filter(|record| record["event"] == "restore_point_recorded")
        .map(|record| record["point"].clone())
        .collect();
    assert_eq!(
        points.len(),
        2,
        "one restore point per attempt: {points:#?}"
    );
    assert_ne!(points[0]["lsn"], points[1]["lsn"], "{points:#?}");
    let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
    assert_eq!(
        status_restore_point(&status, &tenant.project_id)["point"],
        points[1]["lsn"],
        "{status:#}"
    );

    let output = fleet.run(&["rollback", &plan, "--tenant", &tenant.project_id, "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(history(uri).await.is_empty());
    assert!(!has_table(uri, "notes").await);
    let emails = account_emails(uri).await;
    assert!(
        emails.contains(&"written-between-attempts@example.com".to_string()),
        "the write made between the attempts is lost: {emails:?}"
    );
    assert!(
        !emails.contains(&"block@example.com".to_string()),
        "restored to the failed attempt's point: {emails:?}"
    );
    fleet.fleet.stop().await.expect("stop");
}

/// Finding 4: an application transaction that wrote to `orders` makes `CREATE INDEX
/// CONCURRENTLY` time out waiting for it, which leaves the index INVALID. The lock-timeout retry
/// (after the application committed) must rebuild it, not skip it with `IF NOT EXISTS`: every
/// index of a tenant that reports applied is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_retry_rebuilds_the_invalid_index_a_concurrent_build_left() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(&main_only_policy("300ms", "1m", 2));
    let concurrent_index =
        std::fs::read_to_string(repo_migrations().join("V3__index_orders_account.sql"))
            .expect("the concurrent index migration");
    let migrations = migrations_dir(
        &fleet,
        &[("V1__index_orders_account.sql", &concurrent_index)],
    );
    let plan = fleet.plan(&migrations);
    let locked = fleet.tenant("tenant-0002");
    let locked_uri = locked.connection_uri.expose().to_string();
    let application = connect(&locked_uri).await;
    application
        .batch_execute(
            "BEGIN; INSERT INTO orders (account_id, total_cents, status) VALUES (1, 5, 'open');",
        )
        .await
        .expect("the application's open write");

    let mut spawned = Spawned::start(
        &fleet,
        &["apply", plan.to_str().expect("utf-8"), "--output", "json"],
        "invalid-index",
    );
    let observer = connect(&locked_uri).await;
    // The index is invalid all through a concurrent build; the attempt has failed once it is
    // invalid and no build is running (the runner sleeps before its lock-timeout retry).
    wait_for_async(
        "the first attempt to time out and leave an invalid index",
        Duration::from_secs(60),
        || {
            let observer = &observer;
            async move {
                observer
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'orders_account_id_idx' AND NOT i.indisvalid) \
                         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'schemafleet' AND state = 'active' AND query ILIKE '%CREATE INDEX%')",
                        &[],
                    )
                    .await
                    .expect("pg_index")
                    .get(0)
            }
        },
    )
    .await;
    // The lock-timeout retry waits at least half its base delay (250 ms): the application
    // commits before it comes.
    application
        .batch_execute("COMMIT")
        .await
        .expect("the application commits");
    let status = spawned.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", spawned.stderr());
    let report: Value = serde_json::from_str(&spawned.stdout()).expect("JSON report");
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    assert!(
        spawned.stderr().contains("orders_account_id_idx"),
        "the retry names the invalid index it dropped: {}",
        spawned.stderr()
    );
    for tenant in &fleet.tenants {
        let client = connect(tenant.connection_uri.expose()).await;
        let indexes: Vec<(String, bool)> = client
            .query(
                "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .expect("pg_index")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert!(
            indexes
                .iter()
                .any(|(name, _)| name == "orders_account_id_idx"),
            "{}: {indexes:?}",
            tenant.name
        );
        assert!(
            indexes.iter().all(|(_, valid)| *valid),
            "{} reports applied with an invalid index: {indexes:?}",
            tenant.name
        );
    }
    fleet.fleet.stop().await.expect("stop");
}

/// Finding 5: killed right after a wave's `wave_finished`. The bake is part of that record, so
/// the resume bakes (Ctrl-C during it stops the run) and the next wave does not start at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_wave_finished_the_resume_still_bakes() {
    let fleet = TestFleet::start(3).await;
    fleet.write_policy(&policy_with_waves(
        "  - name: canary\n    tenants: [tenant-0001]\n    percent: 0\n    concurrency: 1\n    bake: 10m\n  - name: rest\n    percent: 100\n    concurrency: 2\n",
    ));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let output = fleet.run(&["apply", &plan, "--until-wave", "canary"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let journal = fleet.path("policy.journal.jsonl");
    // A SIGKILL right after `wave_finished` leaves nothing of the run after it.
    let mut finished_seen = false;
    cut_journal_before(&journal, |record| {
        let after = finished_seen;
        finished_seen |= record["event"] == "wave_finished";
        after
    });
    let finished = journal_records(&journal)
        .pop()
        .expect("the wave_finished record");
    assert_eq!(finished["event"], "wave_finished", "{finished}");

    let mut spawned = Spawned::start(&fleet, &["apply", &plan, "--output", "json"], "bake");
    wait_for(
        "the resume to bake or start wave rest",
        Duration::from_secs(60),
        || {
            spawned.stderr().contains("baking wave canary")
                || journal_records(&journal)
                    .iter()
                    .any(|record| record["event"] == "wave_started" && record["wave"] == "rest")
        },
    );
    spawned.signal("INT");
    let status = spawned.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{}", spawned.stderr());
    assert!(
        spawned.stderr().contains("baking wave canary"),
        "{}",
        spawned.stderr()
    );
    let records = journal_records(&journal);
    assert!(
        records.iter().all(|record| record["wave"] != "rest"),
        "wave rest started during the bake: {records:#?}"
    );
    for tenant in &fleet.tenants {
        let uri = tenant.connection_uri.expose();
        if tenant.name == "tenant-0001" {
            assert_repo_migrations_once(&tenant.name, uri).await;
        } else {
            assert!(
                history(uri).await.is_empty(),
                "{} was migrated",
                tenant.name
            );
        }
    }
    fleet.fleet.stop().await.expect("stop");
}

/// Finding 3, the other half: once main holds part of this plan the first restore point is
/// kept, and a retry checks Neon can still restore it before changing main further. Here the
/// project keeps one second of history, so by the retry the branch point has left the window:
/// the tenant fails with that reason and main stays as the first attempt left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_refuses_to_go_on_with_a_restore_point_outside_the_history_window() {
    let config = schemafleet::emulator::LocalFleetConfig {
        history_retention_seconds: 1,
        ..schemafleet::emulator::LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 1).await;
    fleet.write_policy(&one_wave(1));
    let tenant = fleet.tenant("tenant-0001");
    let uri = tenant.connection_uri.expose();
    let migrations = migrations_dir(
        &fleet,
        &[
            ("V1__create_notes.sql", CREATE_NOTES),
            (
                "V2__blocked_on_main.sql",
                &format!("-- no-transaction\n{}", blocked_on_main(uri)),
            ),
        ],
    );
    let plan = fleet.plan(&migrations);
    let plan = plan.to_str().expect("utf-8").to_string();
    let main = block_main(uri).await;

    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    // The restore point was taken before this apply returned: timing from here keeps the
    // window passed however slowly a loaded machine ran the first attempt.
    let started = std::time::Instant::now();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        failure_of(&json(&output), &tenant.project_id)["applied_on_main"],
        serde_json::json!([1])
    );
    main.batch_execute("DELETE FROM accounts WHERE email = 'block@example.com'")
        .await
        .expect("unblock");
    // Whole seconds are compared: two of them past a one-second window.
    if let Some(left) = Duration::from_millis(2100).checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let output = fleet.run(&["apply", &plan, "--retry-failed", "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    let failure = failure_of(&report, &tenant.project_id);
    assert_eq!(failure["phase"], "branch", "{failure:#}");
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|error| error.contains("keeps 1s of history")),
        "{failure:#}"
    );
    assert_eq!(failure["applied_on_main"], serde_json::json!([1]));
    assert_eq!(
        history(uri)
            .await
            .iter()
            .map(|row| row.0)
            .collect::<Vec<_>>(),
        vec![1],
        "main must not be migrated further without a way back"
    );
    fleet.fleet.stop().await.expect("stop");
}

/// A TCP proxy in front of PostgreSQL that, once, swallows the answer to the COMMIT of a
/// transaction that wrote a history row and closes the connection: the COMMIT went through,
/// its answer never arrived (a lost reply, exactly). Returns its address and whether it did.
async fn commit_answer_dropper(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // CommandComplete "COMMIT": 'C', length 11, the tag and its NUL.
    const COMMIT_COMPLETE: &[u8] = b"C\0\0\0\x0bCOMMIT\0";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let address = listener.local_addr().expect("proxy address");
    let fired = Arc::new(AtomicBool::new(false));
    let dropped = fired.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let fired = fired.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(upstream)
                    .await
                    .expect("connect upstream");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let wrote_history = Arc::new(AtomicBool::new(false));
                let armed = wrote_history.clone();
                let upstream_task = tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => read,
                        };
                        let chunk = &buffer[..read];
                        if String::from_utf8_lossy(chunk)
                            .contains("INSERT INTO refinery_schema_history")
                        {
                            armed.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let read = match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => read,
                    };
                    let chunk = &buffer[..read];
                    if wrote_history.load(Ordering::SeqCst)
                        && chunk
                            .windows(COMMIT_COMPLETE.len())
                            .any(|window| window == COMMIT_COMPLETE)
                        && !fired.swap(true, Ordering::SeqCst)
                    {
                        // Both directions close: the server has committed, the client never
                        // hears of it.
                        break;
                    }
                    if client_write.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                upstream_task.abort();
            });
        }
    });
    (address, dropped)
}

/// The Neon API, passed through, except that main's connection URI of `tenant` points at
/// `database_proxy`.
async fn api_redirecting_main(
    upstream: String,
    tenant: String,
    database_proxy: std::net::SocketAddr,
) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, Uri};

    let forward = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let upstream = upstream.clone();
        let tenant = tenant.clone();
        async move {
            let path = uri.path_and_query().map_or("/", |path| path.as_str());
            let (status, mut body) =
                forward_upstream(&upstream, method, path, &headers, body).await;
            let is_main_uri = uri.path() == format!("/projects/{tenant}/connection_uri")
                && !uri.query().unwrap_or_default().contains("branch_id");
            if is_main_uri && status.is_success() {
                let mut answer: Value = serde_json::from_slice(&body).expect("JSON");
                let mut url = url::Url::parse(answer["uri"].as_str().expect("uri")).expect("a URI");
                url.set_port(Some(database_proxy.port())).expect("a port");
                answer["uri"] = Value::String(url.to_string());
                body = serde_json::to_vec(&answer).expect("JSON");
            }
            (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    };
    let router = axum::Router::new().fallback(forward);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the API proxy");
    let address = listener.local_addr().expect("API proxy address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// Finding 1, the in-run window: the COMMIT of main's one transaction goes through but its
/// answer is lost with the connection. The reconnect finds nothing pending; the history rows
/// written after `apply_started` are credited to this run, so the tenant is `applied` with its
/// versions (not `up_to_date`), and `rollback --wave` restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_credited_after_the_reconnect() {
    let fleet = TestFleet::start(1).await;
    fleet.write_policy(&backup_branch_policy(1));
    let migrations = migrations_dir(
        &fleet,
        &[
            (
                "V1__add_note.sql",
                "ALTER TABLE accounts ADD COLUMN note text;\n",
            ),
            ("V2__create_notes.sql", CREATE_NOTES),
        ],
    );
    let plan = fleet.plan(&migrations);
    let plan = plan.to_str().expect("utf-8").to_string();
    let tenant = fleet.tenant("tenant-0001");
    let uri = tenant.connection_uri.expose();
    let database = url::Url::parse(uri).expect("a URI");
    let upstream =
        std::net::SocketAddr::from(([127, 0, 0, 1], database.port().expect("the cluster's port")));
    let (database_proxy, dropped) = commit_answer_dropper(upstream).await;
    let api = api_redirecting_main(
        fleet.fleet.api_url().to_string(),
        tenant.project_id.clone(),
        database_proxy,
    )
    .await;

    let output = fault_support::run_with_env(
        &fleet,
        &["apply", &plan, "--output", "json"],
        &[("NEON_API_URL", Some(&api))],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the COMMIT's answer was never intercepted"
    );
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 1, "{report:#}");
    assert_eq!(report["totals"]["up_to_date"], 0, "{report:#}");
    let records = journal_records(&fleet.path("policy.journal.jsonl"));
    let applied = records
        .iter()
        .find(|record| record["event"] == "applied")
        .expect("an applied record");
    assert_eq!(
        applied["versions"],
        serde_json::json!([1, 2]),
        "{records:#?}"
    );
    assert_eq!(
        history(uri)
            .await
            .iter()
            .map(|row| row.0)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );

    let output = fleet.run(&["rollback", &plan, "--wave", "all", "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(history(uri).await.is_empty());
    assert!(!has_table(uri, "notes").await);
    fleet.fleet.stop().await.expect("stop");
}

/// Send one request on to the emulator; status and body of its answer.
async fn forward_upstream(
    upstream: &str,
    method: axum::http::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{upstream}{path}"))
        .body(body);
    for name in ["authorization", "content-type"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.expect("the emulator answers");
    let status = axum::http::StatusCode::from_u16(response.status().as_u16()).expect("a status");
    (status, response.bytes().await.expect("a body").to_vec())
}

/// Neon as its reads lag its writes: the first create (or restore) is applied and answered
/// 500, and for the next `stale_reads` reads of the branch list (or of the restored branch)
/// the API still answers what it held before that mutation. Counts the mutations sent.
struct LaggingApi {
    upstream: String,
    stale_reads: u32,
    mutations: std::sync::atomic::AtomicU32,
    /// The pre-mutation answer and how many more reads get it.
    stale: std::sync::Mutex<Option<(String, Vec<u8>, u32)>>,
}

async fn lagging_api(upstream: String, stale_reads: u32) -> (String, std::sync::Arc<LaggingApi>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::atomic::Ordering;

    let lag = std::sync::Arc::new(LaggingApi {
        upstream,
        stale_reads,
        mutations: Default::default(),
        stale: Default::default(),
    });
    let state = lag.clone();
    let handle = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let lag = state.clone();
        async move {
            let path = uri
                .path_and_query()
                .map_or("/", |path| path.as_str())
                .to_string();
            let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
            let is_create = method == Method::POST && uri.path().ends_with("/branches");
            let is_restore = method == Method::POST && uri.path().ends_with("/restore");
            if is_create || is_restore {
                let first = lag.mutations.fetch_add(1, Ordering::SeqCst) == 0;
                if first {
                    // What reads keep answering for a while: the list before the create, or
                    // the branch before its restore.
                    let read_path = if is_create {
                        uri.path().to_string()
                    } else {
                        uri.path().trim_end_matches("/restore").to_string()
                    };
                    let (_, before) = forward_upstream(
                        &lag.upstream,
                        Method::GET,
                        &read_path,
                        &headers,
                        Bytes::new(),
                    )
                    .await;
                    *lag.stale.lock().expect("lock") = Some((read_path, before, lag.stale_reads));
                }
                let (status, body) =
                    forward_upstream(&lag.upstream, method, &path, &headers, body).await;
                if first {
                    let lost = br#"{"code":"","message":"the answer was lost"}"#.to_vec();
                    return (StatusCode::INTERNAL_SERVER_ERROR, json, lost);
                }
                return (status, json, body);
            }
            if method == Method::GET {
                let mut stale = lag.stale.lock().expect("lock");
                if let Some((read_path, before, left)) = stale.as_mut()
                    && *read_path == uri.path()
                    && *left > 0
                {
                    *left -= 1;
                    return (StatusCode::OK, json, before.clone());
                }
            }
            let (status, body) =
                forward_upstream(&lag.upstream, method, &path, &headers, body).await;
            (status, json, body)
        }
    };
    let router = axum::Router::new().fallback(handle);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the lagging API");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), lag)
}

fn client_of(api_url: &str, fleet: &TestFleet) -> schemafleet::neon::NeonClient {
    let mut config = schemafleet::neon::ClientConfig::new(
        api_url,
        schemafleet::secret::SecretString::new(fleet.fleet.api_key().expose()),
        100_000,
    );
    config.poll_interval = Duration::from_millis(20);
    config.backoff_base = Duration::from_millis(20);
    schemafleet::neon::NeonClient::new(config).expect("a client")
}

/// Also-check: a create whose answer is lost while the branch list lags. The resent POST is
/// refused (the name is taken: the first one took effect); the client reads until the branch
/// shows and adopts it, instead of failing the tenant or creating a second branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_answer_under_lagging_reads_adopts_the_one_branch() {
    let fleet = TestFleet::start(1).await;
    let project = fleet.tenant("tenant-0001").project_id.clone();
    let (api_url, lag) = lagging_api(fleet.fleet.api_url().to_string(), 3).await;
    let client = client_of(&api_url, &fleet);
    let request = schemafleet::neon::CreateBranch {
        name: "schemafleet-validate-lagging".into(),
        parent_id: None,
        expires_at: None,
    };
    let created = client
        .create_branch(&project, &request)
        .await
        .expect("the create is adopted");
    assert_eq!(created.branch.name, request.name);
    // One resend, refused by name; a loaded machine may see it answered 423 first (the first
    // create's operations still running) and sent once more, which Neon's semantics allow.
    let n_mutations = lag.mutations.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=3).contains(&n_mutations),
        "{n_mutations} POSTs: one lost, then resends until one is refused by name"
    );
    let direct = client_of(fleet.fleet.api_url(), &fleet);
    let named: Vec<String> = direct
        .list_branches(&project)
        .await
        .expect("list")
        .into_iter()
        .filter(|branch| branch.name == request.name)
        .map(|branch| branch.id)
        .collect();
    assert_eq!(
        named,
        vec![created.branch.id],
        "exactly one branch of that name"
    );
    fleet.fleet.stop().await.expect("stop");
}

/// Also-check: a restore whose answer is lost while reads of the branch lag (`last_reset_at`
/// has not moved yet). The branch preserved under `preserve_under_name` shows the restore
/// took effect, so it is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_restore_answer_under_lagging_reads_is_not_sent_again() {
    let fleet = TestFleet::start(1).await;
    let project = fleet.tenant("tenant-0001").project_id.clone();
    let direct = client_of(fleet.fleet.api_url(), &fleet);
    let main = direct.default_branch(&project).await.expect("main");
    let backup = direct
        .create_branch(
            &project,
            &schemafleet::neon::CreateBranch {
                name: "backup".into(),
                parent_id: None,
                expires_at: None,
            },
        )
        .await
        .expect("a backup branch");
    let (api_url, lag) = lagging_api(fleet.fleet.api_url().to_string(), 20).await;
    let client = client_of(&api_url, &fleet);
    let request = schemafleet::neon::RestoreBranch {
        source_branch_id: backup.branch.id.clone(),
        source_lsn: None,
        source_timestamp: None,
        preserve_under_name: Some("pre-rollback-lagging".into()),
    };
    client
        .restore_branch(&project, &main.id, &request)
        .await
        .expect("the restore is recognised as done");
    assert_eq!(
        lag.mutations.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the restore was sent again"
    );
    let names: Vec<String> = direct
        .list_branches(&project)
        .await
        .expect("list")
        .into_iter()
        .map(|branch| branch.name)
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|name| *name == "pre-rollback-lagging")
            .count(),
        1,
        "{names:?}"
    );
    fleet.fleet.stop().await.expect("stop");
}

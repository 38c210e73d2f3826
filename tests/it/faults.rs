//! API, database and fleet faults during `apply`, each on the local fleet (emulator + real
//! PostgreSQL): the run completes where the fault is transient, and a tenant the fault does
//! break ends with a clear state while the rest of its wave goes on.

use crate::fault_support;
use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use schemafleet::emulator::LocalFleetConfig;
use serde_json::Value;

use fault_support::{
    Api, Spawned, assert_repo_migrations_once, database_of, failure_of, history_rows,
    journal_records, main_only_policy, migrations_dir, one_wave, wait_for_async,
};
use support::{TestFleet, connect, fingerprint, history, json, repo_migrations, text};

async fn assert_no_validation_branch_left(fleet: &TestFleet) {
    let api = Api::new(fleet);
    for tenant in &fleet.tenants {
        let names = api.branch_names(&tenant.project_id).await;
        assert!(
            names
                .iter()
                .all(|name| !name.starts_with("schemafleet-validate-")),
            "{}: {names:?}",
            tenant.name
        );
    }
}

/// One request in five answered 423/429/500/503/524 (500/524 on mutations sometimes after
/// applying them): every tenant still ends applied, and the report's retry count covers every
/// fault the client had to send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_at_twenty_percent_are_retried_and_counted() {
    let config = LocalFleetConfig {
        fault_rate: 0.2,
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 8).await;
    fleet.write_policy(&one_wave(4));
    let plan = fleet.plan(&repo_migrations());
    let before = fleet.fleet.stats();
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    let after = fleet.fleet.stats();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 8, "{report:#}");
    assert_eq!(report["totals"]["failed"], 0, "{report:#}");
    let injected = after.injected_faults - before.injected_faults;
    let applied_then_failed = after.applied_then_failed - before.applied_then_failed;
    let retries = report["api"]["retries"].as_u64().expect("api.retries");
    let requests = report["api"]["requests"].as_u64().expect("api.requests");
    eprintln!(
        "20% faults: {requests} requests, {retries} retries, {injected} injected ({applied_then_failed} applied first), by status {:?}",
        after.injected_by_status
    );
    assert!(injected > 0, "no fault was injected: {after:?}");
    assert_eq!(
        requests,
        after.requests - before.requests,
        "the report counts every request the emulator answered"
    );
    // A fault on a mutation that had been applied first is settled by re-reading, not re-sending.
    assert!(
        retries >= injected - applied_then_failed,
        "{retries} retries for {injected} injected faults ({applied_then_failed} applied first)"
    );
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    fleet.fleet.set_fault_rate(0.0);
    assert_no_validation_branch_left(&fleet).await;
    fleet.fleet.stop().await.expect("stop");
}

/// Operations that take a second: the client waits for them instead of using a branch that is
/// not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_operations_are_waited_for() {
    let op_delay = Duration::from_millis(1000);
    let config = LocalFleetConfig {
        op_delay,
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 3).await;
    fleet.write_policy(&one_wave(3));
    let plan = fleet.plan(&repo_migrations());
    let started = Instant::now();
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 3, "{report:#}");
    // Each tenant creates, then deletes, its branch: two operations one after the other.
    assert!(
        elapsed >= op_delay * 2,
        "finished in {elapsed:?}: operations of {op_delay:?} were not waited for"
    );
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    assert_no_validation_branch_left(&fleet).await;
    fleet.fleet.stop().await.expect("stop");
}

/// Every operation reports `failed` for a while before Neon's control plane would retry it.
/// `failed` is not terminal: the client keeps polling, and every tenant is validated and
/// applied once, with no branch left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_that_fail_once_are_waited_out() {
    let config = LocalFleetConfig {
        failed_operation_rate: 1.0,
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 2).await;
    fleet.write_policy(&one_wave(2));
    let plan = fleet.plan(&repo_migrations());
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    let api = Api::new(&fleet);
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
        // The branch operations did go through `failed`, and finished after it.
        let (status, operations) = api
            .send(
                reqwest::Method::GET,
                &format!("/projects/{}/operations", tenant.project_id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{operations}");
        let branch_operations: Vec<&Value> = operations["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .filter(|operation| operation["branch_id"] != tenant.branch_id.as_str())
            .collect();
        assert!(!branch_operations.is_empty(), "{operations:#}");
        assert!(
            branch_operations
                .iter()
                .all(|operation| operation["failures_count"] == 1
                    && operation["status"] == "finished"),
            "{operations:#}"
        );
    }
    assert_no_validation_branch_left(&fleet).await;
    fleet.fleet.stop().await.expect("stop");
}

/// A 429 storm: the emulator's rate limit is spent before the run starts and refills slowly,
/// the client's own limit is far above it. Every tenant is applied; the report counts the 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_completes() {
    let config = LocalFleetConfig {
        rate_limit_per_min: Some(900),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 6).await;
    fleet.write_policy(&one_wave(6));
    let plan = fleet.plan(&repo_migrations());
    // Spend the burst so the storm starts with the run.
    let api = Api::new(&fleet);
    for _ in 0..40 {
        api.send(reqwest::Method::GET, "/projects?limit=1", None)
            .await;
    }
    let before = fleet.fleet.stats();
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    let after = fleet.fleet.stats();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 6, "{report:#}");
    let refused = after.rate_limited - before.rate_limited;
    eprintln!("429 storm: {refused} refused, report {}", report["api"]);
    assert!(refused > 0, "the storm never happened: {after:?}");
    assert_eq!(
        report["api"]["rate_limited"].as_u64(),
        Some(refused),
        "the report counts every 429"
    );
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    fleet.fleet.stop().await.expect("stop");
}

/// The tenant's connection is terminated by the server while a migration runs: the transaction
/// rolls back, the tool reconnects, and the history table decides: applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_migration_is_retried_and_applied_once() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(&main_only_policy("2s", "1m", 2));
    let migrations = migrations_dir(
        &fleet,
        &[(
            "V1__slow_column.sql",
            "ALTER TABLE accounts ADD COLUMN note text;\nSELECT pg_sleep(1);\n",
        )],
    );
    let plan = fleet.plan(&migrations);
    let victim = fleet.tenant("tenant-0001");
    let victim_database = database_of(victim.connection_uri.expose());
    let superuser = connect(fleet.fleet.database_url().expose()).await;

    let mut spawned = Spawned::start(
        &fleet,
        &["apply", plan.to_str().expect("utf-8"), "--output", "json"],
        "killed-connection",
    );
    wait_for_async("the migration to sleep on main", Duration::from_secs(60), || {
        let superuser = &superuser;
        let victim_database = &victim_database;
        async move {
            superuser
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'schemafleet' AND datname = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
                    &[victim_database],
                )
                .await
                .expect("terminate")
                .iter()
                .any(|row| row.get::<_, bool>(0))
        }
    })
    .await;
    let status = spawned.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", spawned.stderr());
    let report: Value = serde_json::from_str(&spawned.stdout()).expect("JSON report");
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    for tenant in &fleet.tenants {
        let rows = history_rows(tenant.connection_uri.expose()).await;
        assert_eq!(rows.len(), 1, "{}: {rows:?}", tenant.name);
        assert_eq!((rows[0].0, rows[0].3), (1, 1), "{}: {rows:?}", tenant.name);
        let client = connect(tenant.connection_uri.expose()).await;
        let columns: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'",
                &[],
            )
            .await
            .expect("count columns")
            .get(0);
        assert_eq!(columns, 1, "{}", tenant.name);
    }
    fleet.fleet.stop().await.expect("stop");
}

/// A statement that runs into `statement_timeout` fails its tenant with SQLSTATE 57014, the
/// migration's transaction rolls back (main unchanged), and the other tenants are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_fails_the_tenant_and_leaves_main_unchanged() {
    let fleet = TestFleet::start(3).await;
    fleet.write_policy(&main_only_policy("2s", "500ms", 3));
    let migrations = migrations_dir(
        &fleet,
        &[(
            "V1__backfill.sql",
            "ALTER TABLE accounts ADD COLUMN note text;\nSELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM accounts WHERE email = 'slow@example.com') THEN 5 ELSE 0 END);\n",
        )],
    );
    let plan = fleet.plan(&migrations);
    let slow = fleet.tenant("tenant-0002");
    connect(slow.connection_uri.expose())
        .await
        .batch_execute("INSERT INTO accounts (email) VALUES ('slow@example.com')")
        .await
        .expect("insert the slow tenant's row");
    let before = fingerprint(slow.connection_uri.expose()).await;

    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    assert_eq!(report["totals"]["failed"], 1, "{report:#}");
    let failure = failure_of(&report, &slow.project_id);
    assert_eq!(failure["phase"], "apply", "{failure:#}");
    assert_eq!(failure["sqlstate"], "57014", "{failure:#}");
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|error| error.contains("statement timeout")),
        "{failure:#}"
    );
    assert!(
        failure["applied_on_main"]
            .as_array()
            .is_none_or(|versions| versions.is_empty()),
        "{failure:#}"
    );
    // refinery creates its (empty) history table before the first migration; nothing else of
    // the migration may remain.
    let without_history = |fingerprint: String| {
        fingerprint
            .lines()
            .filter(|line| !line.contains("refinery_schema_history"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_history(fingerprint(slow.connection_uri.expose()).await),
        without_history(before)
    );
    assert!(history(slow.connection_uri.expose()).await.is_empty());
    fleet.fleet.stop().await.expect("stop");
}

/// With `transaction: per_release`, two migrations go to main in one pipelined transaction.
/// The second fails on one tenant's data: the error is the second's own (SQLSTATE and message),
/// and the first migration's table and history row are gone with it, while the other tenants
/// get both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_release_a_failing_second_migration_takes_the_first_with_it() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(&format!(
        "transaction: per_release\n{}",
        main_only_policy("2s", "30s", 2)
    ));
    let migrations = migrations_dir(
        &fleet,
        &[
            (
                "V1__create_notes.sql",
                "CREATE TABLE notes (id bigint PRIMARY KEY);\n",
            ),
            (
                "V2__accounts_email_short.sql",
                "-- squawk-ignore constraint-missing-not-valid -- the scan must fail on one tenant\nALTER TABLE accounts ADD CONSTRAINT email_short CHECK (length(email) < 40);\n",
            ),
        ],
    );
    let plan = fleet.plan(&migrations);
    let bad = fleet.tenant("tenant-0002");
    connect(bad.connection_uri.expose())
        .await
        .batch_execute(&format!(
            "INSERT INTO accounts (email) VALUES ('{}@example.com')",
            "x".repeat(50)
        ))
        .await
        .expect("insert the long email");

    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 1, "{report:#}");
    let failure = failure_of(&report, &bad.project_id);
    assert_eq!(failure["sqlstate"], "23514", "{failure:#}");
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|error| error.contains("email_short")),
        "{failure:#}"
    );
    assert_eq!(
        failure["migration"], "V2__accounts_email_short",
        "{failure:#}"
    );
    assert!(failure.get("applied_on_main").is_none(), "{failure:#}");
    let client = connect(bad.connection_uri.expose()).await;
    let notes = client
        .query_one("SELECT to_regclass('notes') IS NULL", &[])
        .await
        .expect("look for notes");
    assert!(notes.get::<_, bool>(0), "V1 must be rolled back with V2");
    assert!(history(bad.connection_uri.expose()).await.is_empty());
    let good = fleet.tenant("tenant-0001");
    assert_eq!(
        history(good.connection_uri.expose())
            .await
            .iter()
            .map(|row| row.0)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    fleet.fleet.stop().await.expect("stop");
}

/// An application transaction holds a lock on the table being altered. The migration waits at
/// most `lock_timeout` per attempt, retries with growing jittered pauses, never holds the
/// application's queries up much longer than `lock_timeout`, and finally fails the tenant with
/// SQLSTATE 55P03 while the rest of the wave is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_the_application_times_out_retries_and_fails_only_its_tenant() {
    let lock_timeout = Duration::from_millis(300);
    let fleet = TestFleet::start(4).await;
    fleet.write_policy(&main_only_policy("300ms", "1m", 4));
    let plan = fleet.plan(&repo_migrations());
    let locked = fleet.tenant("tenant-0003");
    let locked_uri = locked.connection_uri.expose().to_string();
    let locked_database = database_of(&locked_uri);

    // The application: a long transaction that read `accounts` (ACCESS SHARE, held to commit).
    let application = connect(&locked_uri).await;
    application
        .batch_execute("BEGIN; SELECT count(*) FROM accounts;")
        .await
        .expect("application transaction");

    // Another application session querying `accounts` all along, timing each query.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let uri = locked_uri.clone();
        tokio::spawn(async move {
            let client = connect(&uri).await;
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                client
                    .query_one("SELECT count(*) FROM accounts", &[])
                    .await
                    .expect("application query");
                longest = longest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            longest
        })
    };
    // The migration's lock waits, seen from the server: one episode per attempt.
    let watcher = {
        let stop = stop.clone();
        let superuser_url = fleet.fleet.database_url().expose().to_string();
        tokio::spawn(async move {
            let client = connect(&superuser_url).await;
            let mut episodes: Vec<(Instant, Instant)> = Vec::new();
            let mut waiting_since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let waiting: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND a.application_name = 'schemafleet' AND a.datname = $1)",
                        &[&locked_database],
                    )
                    .await
                    .expect("pg_locks")
                    .get(0);
                match (waiting, waiting_since) {
                    (true, None) => waiting_since = Some(Instant::now()),
                    (false, Some(since)) => {
                        episodes.push((since, Instant::now()));
                        waiting_since = None;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            episodes
        })
    };

    let mut spawned = Spawned::start(
        &fleet,
        &["apply", plan.to_str().expect("utf-8"), "--output", "json"],
        "locked",
    );
    wait_for_async("apply to finish", Duration::from_secs(120), || {
        let running = spawned.is_running();
        async move { !running }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let longest_app_wait = prober.await.expect("prober");
    let episodes = watcher.await.expect("watcher");
    application
        .batch_execute("COMMIT")
        .await
        .expect("application commit");

    let status = spawned.wait(Duration::from_secs(1));
    assert_eq!(status.code(), Some(1), "{}", spawned.stderr());
    let report: Value = serde_json::from_str(&spawned.stdout()).expect("JSON report");
    assert_eq!(report["totals"]["applied"], 3, "{report:#}");
    assert_eq!(report["totals"]["failed"], 1, "{report:#}");
    let failure = failure_of(&report, &locked.project_id);
    assert_eq!(failure["phase"], "apply", "{failure:#}");
    assert_eq!(failure["sqlstate"], "55P03", "{failure:#}");
    assert!(
        history(&locked_uri).await.is_empty(),
        "main must be unchanged"
    );

    let waits: Vec<Duration> = episodes.iter().map(|(from, to)| *to - *from).collect();
    let pauses: Vec<Duration> = episodes
        .windows(2)
        .map(|pair| pair[1].0 - pair[0].1)
        .collect();
    eprintln!(
        "lock waits {waits:?}, pauses between attempts {pauses:?}, longest application query {longest_app_wait:?}"
    );
    assert!(
        episodes.len() >= 3,
        "the migration must retry after a lock timeout: {} attempts seen",
        episodes.len()
    );
    assert!(
        waits
            .iter()
            .all(|wait| *wait < lock_timeout + Duration::from_millis(700)),
        "an attempt waited longer than lock_timeout: {waits:?}"
    );
    assert!(
        pauses
            .iter()
            .all(|pause| *pause >= Duration::from_millis(200)),
        "retries must back off: {pauses:?}"
    );
    assert!(
        longest_app_wait < lock_timeout + Duration::from_millis(700),
        "an application query waited {longest_app_wait:?} behind the migration (lock_timeout {lock_timeout:?})"
    );
    assert!(
        longest_app_wait >= lock_timeout / 3,
        "the application never queued behind the migration ({longest_app_wait:?}): the measurement saw nothing"
    );

    // The rest of the wave did not wait for the locked tenant.
    let records = journal_records(&fleet.path("policy.journal.jsonl"));
    let failed_at = records
        .iter()
        .position(|record| record["event"] == "failed" && record["tenant"] == locked.project_id)
        .expect("a failed record");
    let applied_before = records[..failed_at]
        .iter()
        .filter(|record| record["event"] == "applied")
        .count();
    assert_eq!(applied_before, 3, "the other tenants finished first");
    for tenant in &fleet.tenants {
        if tenant.name != locked.name {
            assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
        }
    }
    fleet.fleet.stop().await.expect("stop");
}

/// The fleet changes between `plan` and `apply`: a project is deleted, a main branch renamed,
/// and a tenant migrated by someone else. Each gets a clear state and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_changes_after_planning_get_clear_states() {
    let fleet = TestFleet::start(6).await;
    fleet.write_policy(&one_wave(2));
    let plan = fleet.plan(&repo_migrations());
    let api = Api::new(&fleet);
    let deleted = fleet.tenant("tenant-0002");
    let renamed = fleet.tenant("tenant-0003");
    let migrated = fleet.tenant("tenant-0004");
    api.delete_project(&deleted.project_id).await;
    api.rename_branch(&renamed.project_id, &renamed.branch_id, "production")
        .await;

    // Someone else migrates tenant-0004 with their own plan and journal.
    std::fs::create_dir_all(fleet.path("other")).expect("other dir");
    std::fs::write(
        fleet.path("other/tenants.csv"),
        format!("id,name\n{},{}\n", migrated.project_id, migrated.name),
    )
    .expect("other tenants");
    std::fs::write(
        fleet.path("other/policy.yaml"),
        format!(
            "fleet:\n  source: file\n  file: tenants.csv\ndatabase: neondb\nrole: neondb_owner\n{}",
            one_wave(1)
        ),
    )
    .expect("other policy");
    let migrations = repo_migrations();
    let output = fleet.run(&[
        "plan",
        "--policy",
        "other/policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
        "--out",
        "other/policy.plan.yaml",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let output = fleet.run(&["apply", "other/policy.plan.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 4, "{report:#}");
    assert_eq!(report["totals"]["up_to_date"], 1, "{report:#}");
    assert_eq!(report["totals"]["failed"], 1, "{report:#}");
    let failure = failure_of(&report, &deleted.project_id);
    assert_eq!(failure["phase"], "probe", "{failure:#}");
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|error| error.contains("not found")),
        "{failure:#}"
    );
    // Its grouped cause keeps the status, drops the request id, and says what to do.
    let group = &report["failure_groups"][0];
    let cause = group["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("answered 404"), "{group:#}");
    assert!(cause.contains("project <tenant> not found"), "{group:#}");
    assert!(!cause.contains("request_id"), "{group:#}");
    assert!(
        group["next_step"]
            .as_str()
            .is_some_and(|next| next.contains("re-run `schemafleet plan`")),
        "{group:#}"
    );
    assert_eq!(
        group["tenant_labels"][0],
        format!("{} ({})", deleted.name, deleted.project_id)
    );
    let records = journal_records(&fleet.path("policy.journal.jsonl"));
    let final_event = |project_id: &str| {
        records
            .iter()
            .rev()
            .find(|record| record["tenant"] == project_id)
            .and_then(|record| record["event"].as_str().map(str::to_string))
    };
    assert_eq!(final_event(&renamed.project_id).as_deref(), Some("applied"));
    assert_eq!(
        final_event(&migrated.project_id).as_deref(),
        Some("up_to_date")
    );
    for tenant in &fleet.tenants {
        if tenant.name != deleted.name {
            assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
        }
    }
    assert_eq!(
        api.branch_names(&renamed.project_id).await,
        vec!["production".to_string()]
    );
    fleet.fleet.stop().await.expect("stop");
}

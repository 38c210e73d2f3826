//! The crash and retry windows of issue 19, each reproduced exactly on the local fleet
//! (emulator + real PostgreSQL): a journal cut at the record boundary a SIGKILL leaves, a failed
//! attempt followed by a retry, a lock held by the application. Each test then asks what
//! `status`, the JSON report and `rollback` believe, and checks it against the tenant's database.

#[path = "support/faults.rs"]
mod fault_support;
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use fault_support::{
    Spawned, assert_repo_migrations_once, database_of, failure_of, journal_records,
    main_only_policy, migrations_dir, one_wave, policy_with_waves, wait_for, wait_for_async,
};
use support::{TestFleet, connect, history, json, repo_migrations, text};

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
    fleet.write_policy(
        &main_only_policy("2s", "30s", 2)
            .replace("restore_point: none", "restore_point: backup_branch"),
    );
    let migrations = migrations_dir(
        &fleet,
        &[
            (
                "V1__create_notes.sql",
                "CREATE TABLE notes (id bigint PRIMARY KEY);\n",
            ),
            (
                "V2__accounts_email_short.sql",
                "-- no-transaction\nALTER TABLE accounts ADD CONSTRAINT email_short CHECK (length(email) < 40);\n",
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
            &format!(
                "{}CREATE TABLE notes (id bigint PRIMARY KEY);\n",
                blocked_on_main(uri)
            ),
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
            (
                "V1__create_notes.sql",
                "CREATE TABLE notes (id bigint PRIMARY KEY);\n",
            ),
            (
                "V2__blocked_on_main.sql",
                &format!("-- no-transaction\n{}", blocked_on_main(uri)),
            ),
        ],
    );
    let plan = fleet.plan(&migrations);
    let plan = plan.to_str().expect("utf-8").to_string();
    let main = block_main(uri).await;

    let started = std::time::Instant::now();
    let output = fleet.run(&["apply", &plan, "--output", "json"]);
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

//! Rollout state in PostgreSQL (`--state URL`) shared by several runners: claims under leases,
//! a runner SIGKILLed mid-wave, the failure budget counted in the store, pause/resume/abort from
//! another process, `--max-duration`, and bad stores. The binary runs against the local fleet
//! (emulator + real PostgreSQL); the store is a database of the same PostgreSQL server.

use crate::fault_support;
use crate::support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use schemafleet::emulator::LocalFleetConfig;
use schemafleet::pgcluster::{PgCluster, PgClusterConfig};
use serde_json::Value;

use fault_support::{
    Api, Spawned, assert_repo_migrations_once, command, history_rows, policy_with_waves, wait_for,
    wait_for_async,
};
use support::{TestFleet, connect, json, repo_migrations, text};

/// Three waves with validation branches and no bake.
const WAVES: &str = "  - name: canary\n    percent: 10\n    concurrency: 4\n    max_failures: 0\n  - name: early\n    percent: 50\n    concurrency: 4\n    max_failures: 2\n  - name: rest\n    percent: 100\n    concurrency: 4\n    max_failures: 2\n";

/// A fresh database for the state store on the fleet's PostgreSQL server; its URL.
async fn state_database(fleet: &TestFleet, name: &str) -> String {
    let admin = fleet.fleet.database_url().expose().to_string();
    let client = connect(&admin).await;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the state database");
    admin.replace("/postgres?", &format!("/{name}?"))
}

/// A plan of the seeded fleet with the repository's migrations.
fn plan(fleet: &TestFleet, waves: &str) -> String {
    fleet.write_policy(&policy_with_waves(waves));
    fleet
        .plan(&repo_migrations())
        .to_str()
        .expect("utf-8")
        .to_string()
}

fn start_runner(fleet: &TestFleet, plan: &str, state: &str, id: &str, extra: &[&str]) -> Spawned {
    start_runner_leased(fleet, plan, state, id, "2s", extra)
}

/// A runner whose leases last `lease`: short where a test waits for one to lapse, long where a
/// test counts runs (on a loaded machine a runner can miss renewals for 2 s, and a lapsed lease
/// lets another runner run the same step again, which is correct but not "once").
fn start_runner_leased(
    fleet: &TestFleet,
    plan: &str,
    state: &str,
    id: &str,
    lease: &str,
    extra: &[&str],
) -> Spawned {
    let mut args = vec![
        "apply",
        plan,
        "--state",
        state,
        "--runner-id",
        id,
        "--lease",
        lease,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    Spawned::start(fleet, &args, id)
}

/// Every record of the store, as JSON, with its writer (none before a runner made the schema).
async fn store_records(state: &str) -> Vec<(String, Value)> {
    let client = connect(state).await;
    let rows = match client
        .query(
            "SELECT writer, record FROM schemafleet_record ORDER BY seq",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) if error.code().map(|code| code.code()) == Some("42P01") => Vec::new(),
        Err(error) => panic!("reading records: {error}"),
    };
    rows.iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                serde_json::from_str(row.get::<_, &str>(1)).expect("a record"),
            )
        })
        .collect()
}

fn count_events(records: &[(String, Value)], event: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, record) in records {
        if record["event"] == event {
            *counts
                .entry(record["tenant"].as_str().expect("tenant").to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Every tenant holds the migrations once, and has no branch besides main (8 tenants at a
/// time: a 60-tenant fleet checked one by one takes longer than its rollout).
async fn assert_exactly_once_and_no_leaks(fleet: &TestFleet) {
    use futures::StreamExt;
    let api = Api::new(fleet);
    futures::stream::iter(&fleet.tenants)
        .for_each_concurrent(8, |tenant| {
            let api = &api;
            async move {
                assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
                let branches = api.branch_names(&tenant.project_id).await;
                assert_eq!(branches, vec!["main".to_string()], "{}", tenant.name);
            }
        })
        .await;
}

fn waves_of(status: &Value) -> Vec<Value> {
    status["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|wave| {
            let mut wave = wave.clone();
            wave.as_object_mut().expect("object").remove("name");
            wave
        })
        .collect()
}

/// The fleet of the 3-runner test, the 60: 14.5 s at load 14 on 2 cores (4 s seeding,
/// 8 s rollout, 1.5 s checking); one measurement at load 20 took 35 s.
const THREE_RUNNERS_TENANTS: usize = 60;

/// 3 runners on one plan: every tenant applied exactly once (one `applied` record each, one
/// set of history rows), no branch left, and `status` per wave equals a single runner's run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_apply_every_tenant_exactly_once() {
    let started = Instant::now();
    let fleet = TestFleet::start(THREE_RUNNERS_TENANTS).await;
    let state = state_database(&fleet, "state_three").await;
    let plan = plan(&fleet, WAVES);
    eprintln!("fleet seeded and planned in {:?}", started.elapsed());
    let started = Instant::now();
    let mut runners: Vec<Spawned> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| start_runner(&fleet, &plan, &state, id, &[]))
        .collect();
    for runner in &mut runners {
        let status = runner.wait(Duration::from_secs(180));
        assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    }
    eprintln!("3 runners rolled out in {:?}", started.elapsed());
    let started = Instant::now();
    let records = store_records(&state).await;
    let applied = count_events(&records, "applied");
    assert_eq!(applied.len(), THREE_RUNNERS_TENANTS, "{applied:?}");
    assert!(applied.values().all(|count| *count == 1), "{applied:?}");
    let writers: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|(_, record)| record["event"] == "applied")
        .map(|(writer, _)| writer.split('/').next().expect("runner id"))
        .collect();
    assert!(
        writers.len() >= 2,
        "the runners shared the work: {writers:?}"
    );
    assert_exactly_once_and_no_leaks(&fleet).await;

    let status = fleet.run(&["status", &plan, "--state", &state, "--output", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let shared = json(&status);
    assert_eq!(shared["runners"].as_array().expect("runners").len(), 3);
    let password = url::Url::parse(&state)
        .expect("url")
        .password()
        .expect("a password")
        .to_string();
    assert!(
        !text(&status).contains(&password),
        "the store's password is a secret"
    );

    // What one runner would have reported: each wave done with all its planned tenants
    // applied; and the store's records, as a journal file, replay to the same status.
    let plan_doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&plan).expect("plan")).expect("yaml");
    let waves = shared["waves"].as_array().expect("waves");
    for (idx, wave) in waves.iter().enumerate() {
        let planned = plan_doc["waves"][idx]["tenants"]
            .as_sequence()
            .map_or(0, Vec::len) as u64;
        assert_eq!(wave["status"], "done", "{wave}");
        assert_eq!(wave["tenants"], planned, "{wave}");
        assert_eq!(wave["applied"], planned, "{wave}");
    }
    let client = connect(&state).await;
    let mut lines = String::new();
    for row in client
        .query("SELECT record FROM schemafleet_record ORDER BY seq", &[])
        .await
        .expect("records")
    {
        lines.push_str(row.get::<_, &str>(0));
        lines.push('\n');
    }
    std::fs::write(fleet.path("exported.journal.jsonl"), lines).expect("export");
    let from_file = json(&fleet.run(&[
        "status",
        &plan,
        "--journal",
        "exported.journal.jsonl",
        "--output",
        "json",
    ]));
    assert_eq!(waves_of(&shared), waves_of(&from_file));
    assert_eq!(shared["totals"], from_file["totals"]);
    eprintln!("checked in {:?}", started.elapsed());
}

/// A runner SIGKILLed in the middle of a wave: after its lease lapses the others resume its
/// tenants (re-probe, sweep its requested branches) and finish; exactly-once holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_is_finished_by_the_others_after_its_lease() {
    // Inside validation (a branch requested, maybe created), and inside an apply to main.
    for (event, count) in [("branch_requested", 1), ("apply_started", 2)] {
        killed_runner_round(event, count).await;
    }
}

async fn killed_runner_round(kill_after: &str, kill_count: usize) {
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(60),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 15).await;
    let state = state_database(&fleet, &format!("state_kill_{kill_after}")).await;
    let plan = plan(
        &fleet,
        "  - name: all\n    percent: 100\n    concurrency: 2\n    max_failures: 0\n",
    );
    let mut victim = start_runner(&fleet, &plan, &state, "victim", &[]);
    // Kill it inside a tenant's pipeline, right after the record named by `kill_after`.
    let mut others: Vec<Spawned> = ["r2", "r3"]
        .iter()
        .map(|id| start_runner(&fleet, &plan, &state, id, &[]))
        .collect();
    let started = Instant::now();
    loop {
        let records = store_records(&state).await;
        let victim_steps = records
            .iter()
            .filter(|(writer, record)| {
                writer.starts_with("victim/") && record["event"] == kill_after
            })
            .count();
        if victim_steps >= kill_count || !victim.is_running() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the victim never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(victim.is_running(), "the victim finished before the kill");
    victim.child.kill().expect("SIGKILL");
    victim.wait(Duration::from_secs(10));
    let last_victim_record = store_records(&state)
        .await
        .into_iter()
        .rev()
        .find(|(writer, _)| writer.starts_with("victim/"))
        .map(|(_, record)| record["event"].clone());
    eprintln!("killed after {last_victim_record:?}");
    for runner in &mut others {
        let status = runner.wait(Duration::from_secs(180));
        assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    }
    let client = connect(&state).await;
    let resumed: i64 = client
        .query_one(
            "SELECT count(*) FROM schemafleet_tenant WHERE claims > 1",
            &[],
        )
        .await
        .expect("claims")
        .get(0);
    assert!(resumed >= 1, "a tenant of the victim was claimed again");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM schemafleet_tenant WHERE NOT done",
            &[],
        )
        .await
        .expect("left")
        .get(0);
    assert_eq!(left, 0);
    assert_exactly_once_and_no_leaks(&fleet).await;
    let status = json(&fleet.run(&["status", &plan, "--state", &state, "--output", "json"]));
    assert_eq!(status["totals"]["failed"], 0, "{status:#}");
    assert_eq!(
        status["totals"]["applied"].as_u64().unwrap()
            + status["totals"]["up_to_date"].as_u64().unwrap(),
        15,
        "{status:#}"
    );
}

/// A wave with more bad tenants than its budget, 3 runners: failures never exceed the budget
/// plus what was in flight when it was spent, and no runner starts the next wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_never_overspend_the_budget() {
    let fleet = TestFleet::start(16).await;
    let state = state_database(&fleet, "state_budget").await;
    let plan = plan(
        &fleet,
        "  - name: first\n    percent: 50\n    concurrency: 1\n    max_failures: 1\n  - name: second\n    percent: 100\n    concurrency: 1\n    max_failures: 0\n",
    );
    let plan_doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&plan).expect("plan")).expect("yaml");
    let first: Vec<String> = plan_doc["waves"][0]["tenants"]
        .as_sequence()
        .expect("tenants")
        .iter()
        .map(|tenant| tenant["id"].as_str().expect("id").to_string())
        .collect();
    // Every tenant of the first wave is bad: V3 creates audit_log, which they already have.
    for id in &first {
        let tenant = fleet
            .tenants
            .iter()
            .find(|tenant| &tenant.project_id == id)
            .expect("tenant");
        connect(tenant.connection_uri.expose())
            .await
            .batch_execute("CREATE TABLE audit_log (id int)")
            .await
            .expect("sabotage");
    }
    let mut runners: Vec<Spawned> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| start_runner(&fleet, &plan, &state, id, &[]))
        .collect();
    for runner in &mut runners {
        let status = runner.wait(Duration::from_secs(180));
        assert_eq!(status.code(), Some(1), "halted: {}", runner.stderr());
    }
    let records = store_records(&state).await;
    let failed = count_events(&records, "failed");
    // Budget 1 (the 2nd failure halts), plus at most one in flight on each of the 3 runners.
    assert!(
        failed.len() >= 2 && failed.len() <= 2 + 2,
        "{} failures of {}: {failed:?}",
        failed.len(),
        first.len()
    );
    let second_started = records.iter().any(|(_, record)| record["wave"] == "second");
    assert!(!second_started, "no runner starts the next wave");
    let status = json(&fleet.run(&["status", &plan, "--state", &state, "--output", "json"]));
    assert_eq!(status["halted_wave"], "first", "{status:#}");
}

/// `pause` from a fourth process: no tenant starts 2 s after it, the runners wait; `resume`
/// finishes the rollout. `status` shows the runners and the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_from_another_process_stops_new_tenants_and_resume_finishes() {
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(40),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 15).await;
    let state = state_database(&fleet, "state_pause").await;
    let plan = plan(
        &fleet,
        "  - name: all\n    percent: 100\n    concurrency: 1\n    max_failures: 0\n",
    );
    let mut runners: Vec<Spawned> = ["p1", "p2", "p3"]
        .iter()
        .map(|id| start_runner(&fleet, &plan, &state, id, &[]))
        .collect();
    wait_for_async(
        "a few tenants to finish",
        Duration::from_secs(60),
        || async { count_events(&store_records(&state).await, "applied").len() >= 2 },
    )
    .await;
    let paused_at = Instant::now();
    let output = command(&fleet, &["pause", &plan, "--state", &state, "--by", "ops"])
        .output()
        .expect("pause runs");
    assert!(output.status.success(), "{}", text(&output));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started_by = |records: &[(String, Value)]| {
        records
            .iter()
            .filter(|(_, record)| record["event"] == "tenant_probed")
            .filter_map(|(_, record)| record["tenant"].as_str().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let after_two_seconds = started_by(&store_records(&state).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = started_by(&store_records(&state).await);
    assert_eq!(after_two_seconds, later, "a tenant started while paused");
    assert!(later.len() < 15, "the pause landed before the end");
    for runner in &mut runners {
        assert!(runner.is_running(), "a paused runner waits");
    }
    let status = fleet.run(&["status", &plan, "--state", &state, "--output", "json"]);
    let document = json(&status);
    assert_eq!(document["paused_by"], "ops", "{document:#}");
    assert_eq!(document["runners"].as_array().expect("runners").len(), 3);
    let status_text = text(&fleet.run(&["status", &plan, "--state", &state]));
    assert!(status_text.contains("PAUSED by ops"), "{status_text}");
    assert!(status_text.contains("p1"), "{status_text}");
    // Runners hold the plan's lock in the store: a rollback is refused, a dry run reads.
    let output = fleet.run(&[
        "rollback", &plan, "--state", &state, "--wave", "all", "--yes",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("runners of plan"),
        "{}",
        text(&output)
    );
    let output = fleet.run(&[
        "rollback",
        &plan,
        "--state",
        &state,
        "--wave",
        "all",
        "--dry-run",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    eprintln!("paused for {:?}", paused_at.elapsed());

    let output = command(&fleet, &["resume", &plan, "--state", &state])
        .output()
        .expect("resume runs");
    assert!(output.status.success(), "{}", text(&output));
    for runner in &mut runners {
        let status = runner.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    }
    assert_exactly_once_and_no_leaks(&fleet).await;
}

/// `abort` of a file-journal run: it stops starting tenants and exits 1 naming who and why;
/// `--max-duration` stops on time with exit 75 and a re-run finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_max_duration_with_the_file_journal() {
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(40),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 10).await;
    let plan = plan(
        &fleet,
        "  - name: all\n    percent: 100\n    concurrency: 1\n    max_failures: 0\n",
    );
    let output = fleet.run(&["apply", &plan, "--max-duration", "1s", "--output", "json"]);
    assert_eq!(output.status.code(), Some(75), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "out_of_time");
    let applied = report["totals"]["applied"].as_u64().expect("applied");
    assert!(applied < 10, "{report:#}");

    let mut run = Spawned::start(&fleet, &["apply", &plan], "aborted");
    wait_for("the run to go on", Duration::from_secs(30), || {
        std::fs::read_to_string(fleet.path("policy.journal.jsonl"))
            .unwrap_or_default()
            .matches("\"event\":\"applied\"")
            .count()
            > applied as usize
    });
    let output = fleet.run(&[
        "abort",
        &plan,
        "--by",
        "ana",
        "--reason",
        "orders lock storm",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let status = run.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    assert!(
        run.stdout().contains("ABORTED by ana: orders lock storm"),
        "{}",
        run.stdout()
    );
    // The apply held the journal, so it journaled the abort as it stopped: who, why, when.
    let journal = std::fs::read_to_string(fleet.path("policy.journal.jsonl")).expect("journal");
    let aborted: Vec<Value> = journal
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["event"] == "aborted")
        .collect();
    assert_eq!(aborted.len(), 1, "{journal}");
    assert_eq!(aborted[0]["by"], "ana");
    assert_eq!(aborted[0]["reason"], "orders lock storm");
    assert!(aborted[0]["requested_at"].is_string(), "{}", aborted[0]);
    let status_text = text(&fleet.run(&["status", &plan]));
    assert!(status_text.contains("ABORTED by ana at "), "{status_text}");

    let output = fleet.run(&["resume", &plan]);
    assert!(output.status.success(), "{}", text(&output));
    let status_text = text(&fleet.run(&["status", &plan]));
    assert!(
        status_text.contains("aborted by ana at ")
            && status_text.contains("orders lock storm; lifted since"),
        "{status_text}"
    );
    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
}

/// Bad stores stop `apply` with exit 2 before any tenant is touched, naming the reason and
/// never the password: unreachable, read-only, and one holding another plan's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stores_exit_2_before_any_tenant_is_touched() {
    let fleet = TestFleet::start(2).await;
    let plan = plan(
        &fleet,
        "  - name: all\n    percent: 100\n    concurrency: 1\n    max_failures: 0\n",
    );
    let untouched = || async {
        for tenant in &fleet.tenants {
            assert!(
                history_rows(tenant.connection_uri.expose())
                    .await
                    .is_empty(),
                "{} was touched",
                tenant.name
            );
        }
    };

    let unreachable = "postgresql://state:hunter2-secret@127.0.0.1:9/state?sslmode=disable";
    let output = fleet.run(&["apply", &plan, "--state", unreachable]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let shown = text(&output);
    assert!(
        shown.contains("state store") && shown.contains("cannot connect"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    untouched().await;

    // Read-only: a role that may connect but not create the state schema.
    let state = state_database(&fleet, "state_readonly").await;
    connect(&state)
        .await
        .batch_execute(
            "CREATE ROLE state_reader LOGIN PASSWORD 'reader-secret-pw'; REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        )
        .await
        .expect("role");
    let mut reader = url::Url::parse(&state).expect("url");
    reader.set_username("state_reader").expect("user");
    reader
        .set_password(Some("reader-secret-pw"))
        .expect("password");
    let reader = reader.to_string();
    let output = fleet.run(&["apply", &plan, "--state", &reader]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let shown = text(&output);
    assert!(shown.contains("state schema"), "{shown}");
    assert!(!shown.contains("reader-secret-pw"), "{shown}");
    untouched().await;

    // Another plan's history under this plan's id.
    let plan_id = json(&fleet.run(&["status", &plan, "--output", "json"]))["plan_id"]
        .as_str()
        .expect("plan id")
        .to_string();
    let output = fleet.run(&["status", &plan, "--state", &state]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "status creates the schema: {}",
        text(&output)
    );
    let store = connect(&state).await;
    let foreign = serde_json::json!({"v": 1, "seq": 1, "at": "2026-12-01T10:00:00Z", "event": "run_started", "plan_id": "ffffffffffffffff", "run_id": "run-x", "pid": 1, "tool_version": "0.1.0"});
    store
        .execute(
            "INSERT INTO schemafleet_plan (plan_id, last_seq) VALUES ($1, 1) ON CONFLICT (plan_id) DO UPDATE SET last_seq = 1",
            &[&plan_id],
        )
        .await
        .expect("plan row");
    store
        .execute(
            "INSERT INTO schemafleet_record (plan_id, seq, writer, record) VALUES ($1, 1, 'other', $2)",
            &[&plan_id, &foreign.to_string()],
        )
        .await
        .expect("foreign record");
    let output = fleet.run(&["apply", &plan, "--state", &state]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("belongs to plan ffffffffffffffff"),
        "{}",
        text(&output)
    );
    untouched().await;
}

/// `state import`: a rollout begun with the file journal continues from the store without
/// touching its finished tenants again; importing over a different history is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rollout_is_imported_and_continued_from_the_store() {
    let fleet = TestFleet::start(6).await;
    let state = state_database(&fleet, "state_import").await;
    let plan = plan(
        &fleet,
        "  - name: first\n    percent: 50\n    concurrency: 2\n    max_failures: 0\n  - name: second\n    percent: 100\n    concurrency: 2\n    max_failures: 0\n",
    );
    let output = fleet.run(&["apply", &plan, "--until-wave", "first"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = fleet.run(&["state", "import", &plan, "--state", &state]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("imported"), "{}", text(&output));
    let output = fleet.run(&["state", "import", &plan, "--state", &state]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "a second import is a no-op: {}",
        text(&output)
    );
    let output = fleet.run(&["apply", &plan, "--state", &state, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let applied = count_events(&store_records(&state).await, "applied");
    assert_eq!(applied.len(), 6, "{applied:?}");
    assert!(applied.values().all(|count| *count == 1), "{applied:?}");
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    // The store moved on; the file did not: importing it again would mix two histories.
    let output = fleet.run(&["state", "import", &plan, "--state", &state]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("different history"),
        "{}",
        text(&output)
    );
}

/// The gates with 3 runners on one store: the canary's checks run once per stage (on one
/// runner), a failing check halts every runner (exit 1) before the next wave, `--retry-checks`
/// retries once, the approval stops every runner with exit 3 (asked once; `status` exits 3
/// too) until `approve --state` journals it, and `abort --state` is journaled with who and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_hold_every_runner_and_run_once() {
    let fleet = TestFleet::start(8).await;
    let state = state_database(&fleet, "state_gates").await;
    // The check logs each run with its stage, and fails while alert.flag exists.
    fleet.write_policy(
        "validation: none\nrestore_point: none\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: gates\nwaves:\n  - name: canary\n    tenants: [tenant-0001, tenant-0002, tenant-0003]\n    concurrency: 1\n    max_failures: 0\n    bake: 1s\n    checks:\n      - name: no-alert\n        command: 'echo \"$SCHEMAFLEET_CHECK_STAGE\" >> check-runs.log; test ! -f alert.flag'\n  - name: rest\n    percent: 100\n    concurrency: 2\n    approval: required\n",
    );
    let plan = fleet
        .plan(&repo_migrations())
        .to_str()
        .expect("utf-8")
        .to_string();
    let check_runs = || {
        std::fs::read_to_string(fleet.path("check-runs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let events = |records: &[(String, Value)], event: &str| {
        records
            .iter()
            .filter(|(_, record)| record["event"] == event)
            .count()
    };
    let run_three = |extra: &[&str]| -> Vec<Spawned> {
        ["g1", "g2", "g3"]
            .iter()
            .map(|id| start_runner_leased(&fleet, &plan, &state, id, "30s", extra))
            .collect()
    };

    // 1. A failing check: every runner exits 1, the check ran once, the next wave never started.
    std::fs::write(fleet.path("alert.flag"), "").expect("flag");
    for runner in &mut run_three(&[]) {
        let status = runner.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(1), "{}", runner.stderr());
    }
    let records = store_records(&state).await;
    assert_eq!(check_runs(), vec!["after_wave"], "the check ran once");
    assert_eq!(events(&records, "checks_failed"), 1);
    assert!(
        !records.iter().any(|(_, record)| record["wave"] == "rest"),
        "no runner started the next wave"
    );
    let output = fleet.run(&["status", &plan, "--state", &state, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(json(&output)["halted_wave"], "canary");

    // 2. The cause gone, `--retry-checks` on every runner: one retry, then the approval stops
    // all three with exit 3, asked once.
    std::fs::remove_file(fleet.path("alert.flag")).expect("unflag");
    for runner in &mut run_three(&["--retry-checks"]) {
        let status = runner.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(3), "{}", runner.stderr());
        assert_eq!(json_of(&runner.stdout())["outcome"], "awaiting_approval");
    }
    // The retry passes; whether the 1 s bake still has its end-of-bake run to do depends on
    // when the retry passed against the bake's (second-granular) end, so it may follow, once.
    let runs = check_runs();
    assert_eq!(runs[..2], ["after_wave", "retry"], "one retry: {runs:?}");
    assert!(
        runs[2..].iter().all(|stage| stage == "bake_end") && runs.len() <= 3,
        "{runs:?}"
    );
    let records = store_records(&state).await;
    assert_eq!(events(&records, "approval_needed"), 1, "asked once");
    let output = fleet.run(&["status", &plan, "--state", &state]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(
        text(&output).contains("wave rest waits for approval"),
        "{}",
        text(&output)
    );

    // 3. `approve --state`: the next runners finish the rollout; every tenant once.
    let output = fleet.run(&["approve", &plan, "rest", "--state", &state, "--by", "ana"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for runner in &mut run_three(&[]) {
        let status = runner.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    }
    let records = store_records(&state).await;
    let applied = count_events(&records, "applied");
    assert_eq!(applied.len(), 8, "{applied:?}");
    assert!(applied.values().all(|count| *count == 1), "{applied:?}");
    assert_eq!(events(&records, "approved"), 1);
    assert_eq!(
        events(&records, "wave_finished"),
        2,
        "each wave's end journaled once"
    );
    assert_eq!(check_runs(), runs, "passed checks do not run again");
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }

    // 4. `abort --state` is a record: who, why, when; `status` shows it, lifted or not.
    let output = fleet.run(&[
        "abort",
        &plan,
        "--state",
        &state,
        "--by",
        "bo",
        "--reason",
        "pager storm",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let records = store_records(&state).await;
    let (writer, aborted) = records
        .iter()
        .find(|(_, record)| record["event"] == "aborted")
        .expect("an aborted record");
    assert!(writer.starts_with("abort/"), "{writer}");
    assert_eq!(
        (&aborted["by"], &aborted["reason"]),
        (&"bo".into(), &"pager storm".into())
    );
    let status = json(&fleet.run(&["status", &plan, "--state", &state, "--output", "json"]));
    assert_eq!(status["abort"]["by"], "bo", "{status:#}");
    assert_eq!(status["abort"]["lifted"], false, "{status:#}");
    let output = fleet.run(&["resume", &plan, "--state", &state]);
    assert!(output.status.success(), "{}", text(&output));
    let shown = text(&fleet.run(&["status", &plan, "--state", &state]));
    assert!(
        shown.contains("aborted by bo at ") && shown.contains("pager storm; lifted since"),
        "{shown}"
    );

    // 5. A gate whose runner died mid-run (its lease lapsed) goes to the next runner that asks;
    // the dead one's verdict no longer counts, the new holder's is final for every runner.
    use schemafleet::journal::gate_claims::{GateClaims, GateTurn};
    let plan_id = status["plan_id"].as_str().expect("plan id").to_string();
    let uri = schemafleet::secret::SecretUri::new(state.clone());
    let store = schemafleet::journal::store::StateStore::connect(&uri)
        .await
        .expect("store");
    let dead = GateClaims::new(&store, &plan_id, "dead", Duration::from_millis(300))
        .await
        .expect("claims");
    let alive = GateClaims::new(&store, &plan_id, "alive", Duration::from_secs(30))
        .await
        .expect("claims");
    assert_eq!(
        dead.claim("rest", "test-gate").await.expect("claim"),
        GateTurn::Run
    );
    assert_eq!(
        alive.claim("rest", "test-gate").await.expect("claim"),
        GateTurn::Wait
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alive.claim("rest", "test-gate").await.expect("claim"),
        GateTurn::Run,
        "taken over"
    );
    dead.decide("rest", "test-gate", true)
        .await
        .expect("decide");
    assert_eq!(
        dead.claim("rest", "test-gate").await.expect("claim"),
        GateTurn::Wait
    );
    alive
        .decide("rest", "test-gate", false)
        .await
        .expect("decide");
    assert_eq!(
        dead.claim("rest", "test-gate").await.expect("claim"),
        GateTurn::Decided { passed: false }
    );
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

/// A runner SIGKILLed while it runs a wave's checks: its lease on the gate lapses, another
/// runner runs the checks again, and the rollout finishes with every tenant applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_in_a_gate_is_replaced_by_another() {
    let fleet = TestFleet::start(6).await;
    let state = state_database(&fleet, "state_gate_kill").await;
    fleet.write_policy(
        "validation: none\nrestore_point: none\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: gates\nwaves:\n  - name: canary\n    tenants: [tenant-0001, tenant-0002]\n    concurrency: 1\n    max_failures: 0\n    checks:\n      - name: slow\n        command: 'echo \"$SCHEMAFLEET_CHECK_STAGE\" >> check-runs.log; sleep 2'\n        timeout: 30s\n  - name: rest\n    percent: 100\n    concurrency: 2\n",
    );
    let plan = fleet
        .plan(&repo_migrations())
        .to_str()
        .expect("utf-8")
        .to_string();
    let mut runners: BTreeMap<String, Spawned> = ["k1", "k2", "k3"]
        .iter()
        .map(|id| (id.to_string(), start_runner(&fleet, &plan, &state, id, &[])))
        .collect();
    let client = connect(&state).await;
    let holder = wait_for_async_value(Duration::from_secs(60), || async {
        client
            .query_opt(
                "SELECT runner_id FROM schemafleet_gate WHERE wave = 'canary' AND gate = 'after_wave' AND runner_id IS NOT NULL AND passed IS NULL",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|row| row.get::<_, String>(0))
    })
    .await;
    // Killed mid-check: once the holder's check has started (its line is in the log), not in
    // the instant between its claim and the check's start.
    let log = fleet.path("check-runs.log");
    wait_for_async_value(Duration::from_secs(60), || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|runs| !runs.is_empty())
    })
    .await;
    let mut victim = runners.remove(&holder).expect("the holder is a runner");
    victim.child.kill().expect("SIGKILL");
    victim.wait(Duration::from_secs(10));
    for (id, runner) in &mut runners {
        let status = runner.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{id}: {}", runner.stderr());
    }
    // The killed run, then the takeover (a runner that misses its renewals on a loaded
    // machine may be taken over once more: each run is a whole one, and passing).
    let runs = std::fs::read_to_string(fleet.path("check-runs.log")).expect("log");
    let runs: Vec<&str> = runs.lines().collect();
    assert!(
        runs.len() >= 2 && runs.iter().all(|stage| *stage == "after_wave"),
        "{runs:?}"
    );
    let claims: i32 = client
        .query_one(
            "SELECT claims FROM schemafleet_gate WHERE wave = 'canary' AND gate = 'after_wave'",
            &[],
        )
        .await
        .expect("gate")
        .get(0);
    assert!(claims >= 2, "taken over: {claims}");
    let records = store_records(&state).await;
    let applied = count_events(&records, "applied");
    assert_eq!(applied.len(), 6, "{applied:?}");
    assert!(applied.values().all(|count| *count == 1), "{applied:?}");
    let passed = records
        .iter()
        .filter(|(_, record)| record["event"] == "checks_passed")
        .count();
    assert!(
        passed >= 1 && passed < runs.len(),
        "the killed run journaled nothing: {passed} of {runs:?}"
    );
}

/// Poll `probe` until it gives a value (at most `timeout`).
async fn wait_for_async_value<T, F, Fut>(timeout: Duration, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {timeout:?} in vain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A state store of its own (a second PostgreSQL cluster), so it can be restarted without
/// touching the fleet's databases; its superuser URL is the store.
async fn own_store() -> PgCluster {
    PgCluster::start(PgClusterConfig {
        data_dir: None,
        tuned_for_benchmark: false,
        max_connections: 40,
    })
    .await
    .expect("the store's cluster starts")
}

/// The store restarted mid-run (`pg_ctl restart`): both runners say they wait, reconnect and
/// finish. Nothing is lost (seqs run without a gap) or doubled (no writer wrote a record
/// twice, one `applied` per tenant), every tenant holds its migrations once, and `status
/// --live` agrees with the databases. Then `gc --state` reads the finished rollout from the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_ride_out_a_store_restart_and_gc_reads_the_store() {
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(40),
        ..LocalFleetConfig::for_tests()
    };
    let (fleet, store) = tokio::join!(TestFleet::start_with(config, 10), own_store());
    let state = store.superuser_url().expose().to_string();
    let plan = plan(
        &fleet,
        "  - name: canary\n    percent: 20\n    concurrency: 2\n    max_failures: 0\n  - name: rest\n    percent: 100\n    concurrency: 2\n    max_failures: 0\n",
    );
    let mut runners: Vec<Spawned> = ["s1", "s2"]
        .iter()
        .map(|id| start_runner(&fleet, &plan, &state, id, &[]))
        .collect();
    wait_for_async("two tenants applied", Duration::from_secs(60), || async {
        count_events(&store_records(&state).await, "applied").len() >= 2
    })
    .await;
    let applied_before = count_events(&store_records(&state).await, "applied").len();
    store.restart().await.expect("the store restarts");
    for runner in &mut runners {
        let status = runner.wait(Duration::from_secs(180));
        assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    }
    assert!(applied_before < 10, "the restart came mid-run");
    let stderr: String = runners.iter().map(Spawned::stderr).collect();
    assert!(
        stderr.contains("is unreachable") && stderr.contains("is back after"),
        "the runners say they wait: {stderr}"
    );
    assert!(!stderr.contains(&password_of(&state)), "{stderr}");

    let records = store_records(&state).await;
    let seqs: Vec<u64> = records
        .iter()
        .map(|(_, record)| record["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    let mut seen = std::collections::BTreeSet::new();
    for (writer, record) in &records {
        let mut event = record.clone();
        let fields = event.as_object_mut().expect("object");
        fields.remove("seq");
        fields.remove("at");
        assert!(
            seen.insert((writer.clone(), event.to_string())),
            "written twice by {writer}: {record}"
        );
    }
    let applied = count_events(&records, "applied");
    assert_eq!(applied.len(), 10, "{applied:?}");
    assert!(applied.values().all(|count| *count == 1), "{applied:?}");
    assert_exactly_once_and_no_leaks(&fleet).await;
    let output = fleet.run(&[
        "status", &plan, "--state", &state, "--live", "--output", "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let status = json(&output);
    assert_eq!(status["totals"]["applied"], 10, "{status:#}");
    assert_eq!(status["live"]["counts"]["up_to_date"], 10, "{status:#}");
    assert_eq!(status["live"]["stale"], serde_json::json!([]), "{status:#}");

    // gc --state: the store says the tenant is finished, so a validation branch left behind
    // goes; without the store gc has no record of the tenant and keeps it.
    let plan_id = status["plan_id"].as_str().expect("plan id").to_string();
    let tenant = &fleet.tenants[0];
    let left_behind = format!(
        "schemafleet-validate-{}-20261202t100000z-0001",
        &plan_id[..12]
    );
    fleet
        .neon_client()
        .create_branch(
            &tenant.project_id,
            &schemafleet::neon::CreateBranch {
                name: left_behind.clone(),
                parent_id: None,
                expires_at: None,
            },
        )
        .await
        .expect("a branch left behind");
    let output = fleet.run(&["gc", "--plan", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let kept = json(&output);
    assert_eq!(kept["branches"][0]["deleted"], false, "{kept:#}");
    assert!(
        kept["branches"][0]["reason"]
            .as_str()
            .expect("reason")
            .contains("no record of the tenant"),
        "{kept:#}"
    );
    let output = fleet.run(&["gc", "--plan", &plan, "--state", &state, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let collected = json(&output);
    assert_eq!(collected["branches"][0]["deleted"], true, "{collected:#}");
    let branches = Api::new(&fleet).branch_names(&tenant.project_id).await;
    assert_eq!(branches, vec!["main".to_string()]);
    let output = fleet.run(&["gc", "--state", &state]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("--plan"), "{}", text(&output));
}

fn password_of(url: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .password()
        .expect("a password")
        .to_string()
}

/// Two runners share the account's API budget through the store. Sampled every 100 ms, the
/// emulator's request count over any 5 s, and over the whole run, never exceeds what the
/// shared bucket allows: its burst, the span plus the hold limit at the rate, a batch per
/// runner, and each runner's preflight request (sent before the bucket is joined). Unshared,
/// each runner would send at the full rate. While they run, `gc --state` refuses to work
/// beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_share_the_accounts_api_budget() {
    const PER_MINUTE: u32 = 120;
    let fleet = TestFleet::start(8).await;
    let state = state_database(&fleet, "state_bucket").await;
    let plan = plan(
        &fleet,
        "  - name: all\n    percent: 100\n    concurrency: 1\n    max_failures: 0\n",
    );
    let limit = PER_MINUTE.to_string();
    let extra = [
        "--api-rate-limit-per-min",
        limit.as_str(),
        "--max-duration",
        "7s",
    ];
    let start = Instant::now();
    let before = fleet.fleet.stats().requests;
    let mut runners: Vec<Spawned> = ["k1", "k2"]
        .iter()
        .map(|id| start_runner(&fleet, &plan, &state, id, &extra))
        .collect();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut gc_refused = false;
    while runners.iter_mut().any(Spawned::is_running) {
        samples.push((start.elapsed(), fleet.fleet.stats().requests - before));
        if !gc_refused && start.elapsed() > Duration::from_secs(3) {
            let output = fleet.run(&["gc", "--plan", &plan, "--state", &state]);
            assert_eq!(output.status.code(), Some(2), "{}", text(&output));
            assert!(
                text(&output).contains("runners of plan"),
                "{}",
                text(&output)
            );
            gc_refused = true;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "the runners end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.push((start.elapsed(), fleet.fleet.stats().requests - before));
    for runner in &mut runners {
        let status = runner.wait(Duration::from_secs(5));
        assert!(
            matches!(status.code(), Some(0 | 75)),
            "{status:?}: {}",
            runner.stderr()
        );
    }
    let per_second = f64::from(PER_MINUTE) / 60.0;
    let allowed = |span: Duration| {
        f64::from(schemafleet::neon::burst(PER_MINUTE))
            + per_second * (span + schemafleet::neon::HOLD_LIMIT).as_secs_f64()
            + 2.0 * f64::from(schemafleet::neon::batch_size(PER_MINUTE))
            + 2.0
    };
    // The requests between two samples at most 4.8 s apart fall within one 5 s window (a
    // sample's time and count are read one after the other).
    let window = Duration::from_secs(5);
    let mut busiest = 0;
    for (idx, (at, count)) in samples.iter().enumerate() {
        let end = samples[idx..]
            .iter()
            .take_while(|(later, _)| *later <= *at + window - Duration::from_millis(200))
            .last()
            .map_or(*count, |(_, later)| *later);
        busiest = busiest.max(end - count);
    }
    let (span, total) = *samples.last().expect("samples");
    eprintln!(
        "requests: {total} in {span:?} (allowed {}); busiest {window:?}: {busiest} (allowed {})",
        allowed(span),
        allowed(window)
    );
    assert!(
        busiest as f64 <= allowed(window),
        "{busiest} requests in {window:?}, allowed {}",
        allowed(window)
    );
    assert!(
        total as f64 <= allowed(span),
        "{total} requests in {span:?}, allowed {}",
        allowed(span)
    );
    // The runners were held back by the budget, not idle.
    assert!(
        total as f64 >= per_second * 3.0,
        "{total} requests: the runners had work"
    );
}

/// A TCP proxy in front of the store that, once armed, cuts every `every`-th connection that
/// sends a COMMIT right after passing the COMMIT on, before its answer comes back: the
/// transaction commits, and the runner cannot know it did. Put `down`, it cuts every
/// connection and refuses new ones, as a store that is gone.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    down: tokio::sync::watch::Sender<bool>,
    every: usize,
    commits: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
}

impl CommitCutter {
    async fn start(upstream: std::net::SocketAddr, every: usize) -> CommitCutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let armed = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (down, down_seen) = tokio::sync::watch::channel(false);
        let cutter = Cutting {
            every,
            armed: armed.clone(),
            commits: commits.clone(),
            cuts: cuts.clone(),
            down: down_seen,
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cutter.down.borrow() {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, cutter.clone()));
            }
        });
        CommitCutter {
            port,
            armed,
            down,
            every,
            commits,
            cuts,
        }
    }
}

/// What every relayed connection of a [`CommitCutter`] shares.
#[derive(Clone)]
struct Cutting {
    every: usize,
    armed: Arc<AtomicBool>,
    commits: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
    down: tokio::sync::watch::Receiver<bool>,
}

/// Relay one connection; see [`CommitCutter`].
async fn relay(client: tokio::net::TcpStream, server: tokio::net::TcpStream, mut cutting: Cutting) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        client_write
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = client_read.read(&mut buffer) => read,
            _ = cutting.down.wait_for(|down| *down) => break,
        };
        let Ok(read) = read else { break };
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        let commit = chunk.windows(7).any(|window| window == b"COMMIT\0");
        let cut = commit
            && cutting.armed.load(Ordering::SeqCst)
            && (cutting.commits.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(cutting.every);
        if cut {
            // Stop relaying answers first, then pass the COMMIT on and hang up both ways.
            answers.abort();
            let _ = server_write.write_all(chunk).await;
            let _ = server_write.flush().await;
            cutting.cuts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    answers.abort();
}

/// COMMITs whose answers are lost (the transaction committed, the connection dropped before
/// the runner heard so): the journal's appends, claims, finishes and waves' ends are all asked
/// again after a reconnect, and nothing is written or counted twice. Then the store goes away
/// for longer than `--state-patience`: the runner says it waits, gives up with exit 2, and the
/// next `apply` finishes from what committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_whose_answers_are_lost_are_not_written_twice() {
    let fleet = TestFleet::start(8).await;
    let state = state_database(&fleet, "state_lost_commits").await;
    let mut direct = url::Url::parse(&state).expect("url");
    let upstream = std::net::SocketAddr::new(
        "127.0.0.1".parse().expect("loopback"),
        direct.port().expect("port"),
    );
    let cutter = CommitCutter::start(upstream, 3).await;
    direct.set_port(Some(cutter.port)).expect("port");
    let through_cutter = direct.to_string();
    let plan = plan(
        &fleet,
        "  - name: first\n    percent: 50\n    concurrency: 2\n    max_failures: 0\n  - name: second\n    percent: 100\n    concurrency: 2\n    max_failures: 0\n",
    );
    let mut runner = start_runner(
        &fleet,
        &plan,
        &through_cutter,
        "c1",
        &["--until-wave", "first"],
    );
    // Armed once the runner made the schema and registered: a cut refinery COMMIT would only
    // stop it at the start, which the bad-store test covers.
    wait_for_async("the first record", Duration::from_secs(60), || async {
        !store_records(&state).await.is_empty()
    })
    .await;
    cutter.armed.store(true, Ordering::SeqCst);
    let status = runner.wait(Duration::from_secs(180));
    assert_eq!(status.code(), Some(0), "{}", runner.stderr());
    cutter.armed.store(false, Ordering::SeqCst);
    let cuts = cutter.cuts.load(Ordering::SeqCst);
    eprintln!(
        "{cuts} connections cut after a COMMIT (one in {} of {} COMMITs)",
        cutter.every,
        cutter.commits.load(Ordering::SeqCst)
    );
    assert!(cuts >= 2, "{cuts} cuts");
    let client = connect(&state).await;
    let claims: i32 = client
        .query_one("SELECT max(claims) FROM schemafleet_tenant", &[])
        .await
        .expect("claims")
        .get(0);
    assert_eq!(claims, 1, "no claim whose answer was lost was taken again");

    // The store gone for longer than the runner's patience, mid-wave.
    let mut impatient = start_runner(
        &fleet,
        &plan,
        &through_cutter,
        "c2",
        &["--state-patience", "2s"],
    );
    wait_for_async("c2 to start a tenant", Duration::from_secs(60), || async {
        store_records(&state)
            .await
            .iter()
            .any(|(writer, record)| writer.starts_with("c2/") && record["event"] == "tenant_probed")
    })
    .await;
    cutter.down.send_replace(true);
    let status = impatient.wait(Duration::from_secs(60));
    let stderr = impatient.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("waiting up to 2s"), "{stderr}");
    assert!(stderr.contains("its patience"), "{stderr}");
    cutter.down.send_replace(false);
    let mut last = start_runner(&fleet, &plan, &through_cutter, "c3", &[]);
    let status = last.wait(Duration::from_secs(180));
    assert_eq!(status.code(), Some(0), "{}", last.stderr());

    let records = store_records(&state).await;
    let seqs: Vec<u64> = records
        .iter()
        .map(|(_, record)| record["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    let mut seen = std::collections::BTreeSet::new();
    for (writer, record) in &records {
        let mut event = record.clone();
        let fields = event.as_object_mut().expect("object");
        fields.remove("seq");
        fields.remove("at");
        assert!(
            seen.insert((writer.clone(), event.to_string())),
            "written twice by {writer}: {record}"
        );
    }
    let applied = count_events(&records, "applied");
    assert_eq!(applied.len(), 8, "{applied:?}");
    assert!(applied.values().all(|count| *count == 1), "{applied:?}");
    for wave in ["first", "second"] {
        let ends = records
            .iter()
            .filter(|(_, record)| record["event"] == "wave_finished" && record["wave"] == wave)
            .count();
        assert_eq!(ends, 1, "wave {wave} ended once");
    }
    assert_exactly_once_and_no_leaks(&fleet).await;
}

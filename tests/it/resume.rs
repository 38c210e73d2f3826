//! Process faults: `apply` killed with SIGKILL at random moments and re-run, a torn last journal
//! line, a second `apply` of the same plan, and Ctrl-C. The binary runs against the local fleet
//! (emulator + real PostgreSQL); tenants' history tables and schemas are the judge.

use crate::fault_support;
use crate::support;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use schemafleet::emulator::LocalFleetConfig;

use fault_support::{
    Api, Spawned, assert_repo_migrations_once, journal_lines, journal_records, policy_with_waves,
    schema_state, wait_for,
};
use support::{SEED_SQL, TestFleet, history, json, repo_migrations, text};

const WAVES: &str = "  - name: canary\n    tenants: [{canary}]\n    percent: 10\n    concurrency: 2\n    max_failures: 0\n  - name: early\n    percent: 50\n    concurrency: 3\n    max_failures: 2\n  - name: rest\n    percent: 100\n    concurrency: 3\n    max_failures: 2\n";

fn waves_with_canary(canary: &str) -> String {
    policy_with_waves(&WAVES.replace("{canary}", canary))
}

/// The seed of this run's random kill points: `SCHEMAFLEET_TEST_SEED` replays a failure.
fn test_seed() -> u64 {
    std::env::var("SCHEMAFLEET_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random)
}

/// SIGKILL at random points of a three-wave run, 20 times in a row, then a run to completion:
/// every tenant holds each migration exactly once and equals, tenant by tenant, a fleet migrated
/// without interruption; the journal replays; no validation branch is left behind.
///
/// A kill point is "the journal gained 0–4 progress records (not counting the re-probes a resume
/// writes) since this run started, then 0–40 ms more": that lands kills inside every step
/// (between a branch's creation and its record, mid-apply, between waves) however fast the
/// machine is, and each round still makes progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_then_resume_ends_like_an_uninterrupted_run() {
    let seed = test_seed();
    eprintln!("kill points seeded with SCHEMAFLEET_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(40),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 10).await;

    // The reference: an identical fleet migrated by one uninterrupted run.
    let reference = fleet
        .fleet
        .seed(10, SEED_SQL, "ref")
        .await
        .expect("seed the reference fleet");
    std::fs::create_dir_all(fleet.path("ref")).expect("ref dir");
    let mut csv = String::from("id,name\n");
    for tenant in &reference {
        csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
    }
    std::fs::write(fleet.path("ref/tenants.csv"), csv).expect("ref tenants");
    std::fs::write(
        fleet.path("ref/policy.yaml"),
        format!(
            "fleet:\n  source: file\n  file: tenants.csv\ndatabase: neondb\nrole: neondb_owner\n{}",
            waves_with_canary("ref-0001")
        ),
    )
    .expect("ref policy");
    let migrations = repo_migrations();
    let migrations = migrations.to_str().expect("utf-8");
    let output = fleet.run(&[
        "plan",
        "--policy",
        "ref/policy.yaml",
        "--migrations",
        migrations,
        "--out",
        "ref/policy.plan.yaml",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let started = Instant::now();
    let output = fleet.run(&["apply", "ref/policy.plan.yaml", "--output", "json"]);
    let uninterrupted = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(json(&output)["totals"]["applied"], 10);

    fleet.write_policy(&waves_with_canary("tenant-0001"));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let journal = fleet.path("policy.journal.jsonl");
    let apply_args = ["apply", plan.as_str(), "--output", "json"];

    // Records a resume writes again for tenants it re-probes: they are not progress.
    let progress = |journal: &std::path::Path| {
        std::fs::read_to_string(journal)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                !line.contains("\"event\":\"run_started\"")
                    && !line.contains("\"event\":\"tenant_probed\"")
                    && !line.contains("\"event\":\"branch_deleted\"")
            })
            .count()
    };
    let mut kill_points: Vec<String> = Vec::new();
    let mut finished_unkilled = None;
    for round in 0..20 {
        let progress_before = progress(&journal);
        let grow = rng.random_range(0..=4usize);
        let extra = Duration::from_millis(rng.random_range(0..40));
        let mut spawned = Spawned::start(&fleet, &apply_args, &format!("round{round}"));
        wait_for("the journal to grow", Duration::from_secs(60), || {
            !spawned.is_running() || progress(&journal) >= progress_before + grow
        });
        std::thread::sleep(extra);
        if !spawned.is_running() {
            finished_unkilled = Some((round, spawned.wait(Duration::from_secs(1)), spawned));
            break;
        }
        spawned.child.kill().expect("SIGKILL");
        spawned.wait(Duration::from_secs(10));
        // A kill before the journal was opened (still in the API preflight) leaves no file.
        let records = if journal.exists() {
            journal_records(&journal)
        } else {
            Vec::new()
        };
        let last_event = records
            .last()
            .and_then(|record| record["event"].as_str().map(str::to_string))
            .unwrap_or_else(|| "<no journal yet>".to_string());
        kill_points.push(format!(
            "round {round}: +{grow} records +{}ms, after {last_event}",
            extra.as_millis()
        ));
    }
    eprintln!(
        "uninterrupted run: {uninterrupted:?}; {} kills mid-run:\n{}",
        kill_points.len(),
        kill_points.join("\n")
    );
    if let Some((round, status, spawned)) = &finished_unkilled {
        panic!(
            "round {round} finished before its kill point ({status}); only {} kills landed mid-run: the fleet is too small for 20 rounds\n{}",
            kill_points.len(),
            spawned.stderr()
        );
    }
    assert!(
        kill_points
            .iter()
            .any(|point| point.contains("apply_started"))
            || kill_points
                .iter()
                .any(|point| point.contains("branch_created")),
        "no kill landed inside a tenant's pipeline: {kill_points:#?}"
    );

    let output = fleet.run(&apply_args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the final run completes: {}",
        text(&output)
    );
    let report = json(&output);
    assert_eq!(report["outcome"], "completed", "{report:#}");
    assert_eq!(report["totals"]["failed"], 0, "{report:#}");
    let applied = report["totals"]["applied"].as_u64().expect("applied");
    let up_to_date = report["totals"]["up_to_date"].as_u64().expect("up_to_date");
    assert_eq!(applied + up_to_date, 10, "{report:#}");

    for (tenant, reference_tenant) in fleet.tenants.iter().zip(&reference) {
        let uri = tenant.connection_uri.expose();
        assert_repo_migrations_once(&tenant.name, uri).await;
        assert_eq!(
            schema_state(uri).await,
            schema_state(reference_tenant.connection_uri.expose()).await,
            "{} differs from {} (migrated without interruption)",
            tenant.name,
            reference_tenant.name
        );
    }

    // The journal replays: every line is a record, seqs strictly increase, and `status` (journal
    // only) agrees with the final run's report.
    let records = journal_records(&journal);
    let seqs: Vec<u64> = records
        .iter()
        .map(|record| record["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "journal seqs not increasing: {seqs:?}"
    );
    let status = fleet.run(&["status", plan.as_str(), "--output", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let status = json(&status);
    assert_eq!(status["totals"], report["totals"], "{status:#}");
    assert_eq!(status["outcome"], "completed");
    assert!(status["torn_tail"].is_null(), "{status:#}");

    // Every validation branch a killed run created is gone once the run finished.
    let api = Api::new(&fleet);
    let journal_text = std::fs::read_to_string(&journal).expect("read journal");
    let mut leaked = Vec::new();
    for tenant in &fleet.tenants {
        for name in api.branch_names(&tenant.project_id).await {
            if name.starts_with("schemafleet-validate-") {
                let journaled = journal_text.contains(&format!("\"branch_name\":\"{name}\""));
                leaked.push(format!(
                    "{}: {name} (branch_created journaled: {journaled})",
                    tenant.name
                ));
            }
        }
    }
    assert!(
        leaked.is_empty(),
        "validation branches left after the run finished: {leaked:#?}"
    );
    fleet.fleet.stop().await.expect("stop");
}

/// Power loss mid-write: half a record at the end of the journal. `status` reports it and does
/// not count it; `apply` warns, cuts it and resumes; the record's claim is never believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_journal_line_is_reported_and_apply_resumes() {
    let fleet = TestFleet::start(6).await;
    fleet.write_policy(&policy_with_waves(
        "  - name: canary\n    tenants: [tenant-0001]\n    percent: 0\n    concurrency: 1\n  - name: rest\n    percent: 100\n    concurrency: 3\n",
    ));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let output = fleet.run(&["apply", &plan, "--until-wave", "canary"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // The torn record claims a tenant of the next wave is applied: believing it would skip it.
    let journal = fleet.path("policy.journal.jsonl");
    let victim = fleet.tenant("tenant-0004");
    let seq = journal_records(&journal).len() + 1;
    let full = format!(
        "{{\"v\":1,\"seq\":{seq},\"at\":\"2026-01-01T00:00:00Z\",\"event\":\"applied\",\"tenant\":\"{}\",\"wave\":\"rest\",\"versions\":[1,2,3,4],\"lock_retries\":0}}\n",
        victim.project_id
    );
    let torn = &full[..full.len() / 2];
    let mut bytes = std::fs::read(&journal).expect("read journal");
    bytes.extend_from_slice(torn.as_bytes());
    std::fs::write(&journal, &bytes).expect("tear the journal");

    let status = fleet.run(&["status", &plan, "--output", "json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let report = json(&status);
    assert!(
        report["torn_tail"]
            .as_str()
            .is_some_and(|tail| tail.contains("torn")),
        "status --output json names the torn tail: {report:#}"
    );
    assert_eq!(report["totals"]["applied"], 1, "{report:#}");
    assert_eq!(
        std::fs::read(&journal).expect("read journal"),
        bytes,
        "status must not repair (or write) the journal"
    );
    let status_text = fleet.run(&["status", &plan]);
    assert!(
        text(&status_text).contains("torn"),
        "status (text) warns about the torn line: {}",
        text(&status_text)
    );

    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: journal") && stderr.contains("torn"),
        "apply warns about the torn line: {}",
        text(&output)
    );
    assert_eq!(json(&output)["totals"]["applied"], 6);
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    // The torn half is gone and every line is a whole record again.
    let records = journal_records(&journal);
    assert!(
        records
            .iter()
            .all(|record| record["at"] != "2026-01-01T00:00:00Z")
    );
    let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
    assert!(status["torn_tail"].is_null(), "{status:#}");
    fleet.fleet.stop().await.expect("stop");
}

/// A second `apply` of a plan whose `apply` is running refuses at once: exit 2, a message that
/// says why, and the running one's journal untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apply_of_a_running_plan_refuses_to_start() {
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(300),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 4).await;
    fleet.write_policy(&fault_support::one_wave(1));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let journal = fleet.path("policy.journal.jsonl");
    let mut first = Spawned::start(&fleet, &["apply", &plan], "first");
    wait_for("the first run's journal", Duration::from_secs(30), || {
        journal_lines(&journal) >= 2
    });
    let second = fleet.run(&["apply", &plan]);
    assert!(first.is_running(), "the first run must still be running");
    assert_eq!(second.status.code(), Some(2), "{}", text(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("locked by another") && stderr.contains("policy.journal.jsonl"),
        "{}",
        text(&second)
    );
    let status = first.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", first.stderr());
    let runs = journal_records(&journal)
        .iter()
        .filter(|record| record["event"] == "run_started")
        .count();
    assert_eq!(runs, 1, "the refused run wrote to the journal");
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    fleet.fleet.stop().await.expect("stop");
}

/// Ctrl-C once: no new tenant starts, the ones in flight finish and are journaled, exit 130;
/// a re-run completes the rest without touching the finished ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_in_flight_tenants_finish_and_exits_130() {
    let config = LocalFleetConfig {
        op_delay: Duration::from_millis(150),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 8).await;
    fleet.write_policy(&fault_support::one_wave(2));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let journal = fleet.path("policy.journal.jsonl");
    let mut spawned = Spawned::start(&fleet, &["apply", &plan, "--output", "json"], "ctrlc");
    wait_for("a validation branch", Duration::from_secs(30), || {
        std::fs::read_to_string(&journal).is_ok_and(|text| text.contains("\"branch_created\""))
    });
    spawned.signal("INT");
    let interrupted_at = journal_records(&journal);
    let status = spawned.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{}", spawned.stderr());
    let report: serde_json::Value =
        serde_json::from_str(&spawned.stdout()).expect("a JSON report after Ctrl-C");
    assert_eq!(report["outcome"], "interrupted", "{report:#}");

    // Every tenant that had started when Ctrl-C came finished; no other tenant started after.
    let records = journal_records(&journal);
    let started_before: std::collections::BTreeSet<String> = interrupted_at
        .iter()
        .filter(|record| record["event"] == "tenant_probed")
        .filter_map(|record| record["tenant"].as_str().map(str::to_string))
        .collect();
    assert!(!started_before.is_empty());
    let finished: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|record| {
            matches!(
                record["event"].as_str(),
                Some("applied" | "up_to_date" | "failed" | "diverged")
            )
        })
        .filter_map(|record| record["tenant"].as_str().map(str::to_string))
        .collect();
    let probed: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|record| record["event"] == "tenant_probed")
        .filter_map(|record| record["tenant"].as_str().map(str::to_string))
        .collect();
    assert!(
        started_before.is_subset(&finished),
        "in-flight tenants {started_before:?} must finish; finished: {finished:?}"
    );
    assert_eq!(probed, finished, "a started tenant was left in flight");
    assert!(
        finished.len() < 8,
        "Ctrl-C must stop new tenants from starting ({} finished)",
        finished.len()
    );
    assert_eq!(
        records.last().expect("records")["event"],
        "run_finished",
        "the journal ends with the run's outcome"
    );
    let mut untouched = 0;
    for tenant in &fleet.tenants {
        let rows = history(tenant.connection_uri.expose()).await;
        if finished.contains(&tenant.project_id) {
            assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
        } else {
            assert!(rows.is_empty(), "{} was not started: {rows:?}", tenant.name);
            untouched += 1;
        }
    }
    assert!(untouched > 0);
    let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
    assert_eq!(status["outcome"], "interrupted", "{status:#}");
    // No run works on the interrupted wave any more: it is `stopped`, not `running`.
    let wave_statuses: Vec<&str> = status["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .filter_map(|wave| wave["status"].as_str())
        .collect();
    assert!(wave_statuses.contains(&"stopped"), "{status:#}");
    assert!(!wave_statuses.contains(&"running"), "{status:#}");
    let status_text = fleet.run(&["status", &plan]);
    assert!(
        String::from_utf8_lossy(&status_text.stdout)
            .contains("stopped unfinished (its run was interrupted): `apply` resumes it"),
        "{}",
        text(&status_text)
    );
    assert_eq!(
        status["totals"]["applied"].as_u64(),
        Some(finished.len() as u64)
    );

    let lines_before_rerun = journal_lines(&journal);
    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(json(&output)["totals"]["applied"], 8);
    let rerun = &journal_records(&journal)[lines_before_rerun..];
    assert!(
        rerun
            .iter()
            .filter_map(|record| record["tenant"].as_str())
            .all(|tenant| !finished.contains(tenant)),
        "the re-run touched a tenant that had finished"
    );
    for tenant in &fleet.tenants {
        assert_repo_migrations_once(&tenant.name, tenant.connection_uri.expose()).await;
    }
    fleet.fleet.stop().await.expect("stop");
}

//! End-to-end rollouts of the binary against the local fleet (emulator + real PostgreSQL).

use crate::support;

use support::{TestFleet, add_legacy_status, fingerprint, history, json, repo_migrations, text};

const ALL_VERSIONS: [i32; 4] = [1, 2, 3, 4];

fn versions(rows: &[(i32, String)]) -> Vec<i32> {
    rows.iter().map(|(version, _)| *version).collect()
}

/// A fleet migrated in three waves: tenants whose data breaks V2 are caught on their validation
/// branch with main unchanged, everyone else ends with every migration exactly once, and a
/// re-run with nothing pending opens no branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_waves_catch_bad_data_on_branches_and_leave_main_untouched() {
    let fleet = TestFleet::start(40).await;
    let bad: Vec<&str> = vec!["tenant-0007", "tenant-0021", "tenant-0033"];
    let mut before = std::collections::HashMap::new();
    for name in &bad {
        let tenant = fleet.tenant(name);
        add_legacy_status(tenant.connection_uri.expose()).await;
        before.insert(
            tenant.project_id.clone(),
            fingerprint(tenant.connection_uri.expose()).await,
        );
    }
    fleet.write_policy(
        "validation: branch\nrestore_point: branch_point\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: canary\n    tenants: [tenant-0001]\n    percent: 5\n    concurrency: 2\n    max_failures: 3\n  - name: early\n    percent: 40\n    concurrency: 4\n    max_failures: 5\n  - name: rest\n    percent: 100\n    concurrency: 8\n    max_failures: 5\n",
    );
    let plan = fleet.plan(&repo_migrations());
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "failed tenants make exit code 1: {}",
        text(&output)
    );
    let report = json(&output);
    assert_eq!(report["totals"]["tenants"], 40, "{report:#}");
    assert_eq!(report["totals"]["applied"], 37, "{report:#}");
    assert_eq!(report["totals"]["failed"], 3, "{report:#}");
    let waves = report["waves"].as_array().expect("waves");
    assert_eq!(waves.len(), 3);
    assert!(
        waves.iter().all(|wave| wave["halted"] == false),
        "{report:#}"
    );
    let failures = report["failures"].as_array().expect("failures");
    assert!(
        failures
            .iter()
            .all(|failure| failure["phase"] == "validate"),
        "{report:#}"
    );
    assert!(
        failures.iter().all(|failure| failure["error"]
            .as_str()
            .unwrap_or("")
            .contains("orders_status_check")),
        "{report:#}"
    );
    // Every tenant was branched once and only the 37 validated ones reached main.
    let timing = |step: &str| {
        report["timings"]
            .as_array()
            .expect("timings")
            .iter()
            .find(|timing| timing["step"] == step)
            .unwrap_or_else(|| panic!("no {step} timing: {report:#}"))
            .clone()
    };
    for (step, count) in [
        ("connection_uri", 40),
        ("probe_main", 40),
        ("create_branch", 40),
        ("migrate_branch", 40),
        ("delete_branch", 40),
        ("migrate_main", 37),
    ] {
        assert_eq!(timing(step)["count"], count, "{step}: {report:#}");
        assert!(timing(step)["mean_ms"].as_f64().expect("mean_ms") > 0.0);
    }
    // The release after a branch takes the lock itself, in its guard: no separate lock step.
    assert!(
        report["timings"]
            .as_array()
            .expect("timings")
            .iter()
            .all(|timing| timing["step"] != "lock_main"),
        "{report:#}"
    );
    assert!(timing("journal")["count"].as_u64().expect("count") >= 40 * 4);

    // Apply again, as text: nothing left to do but the failures, and it says the rollout is not
    // complete, naming the failed tenants by name and id, within 100 columns.
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let flowing = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("rollout NOT complete: every wave ran; 37 of 40 tenants migrated or already up to date, 3 not"),
        "{stdout}"
    );
    assert!(!stdout.contains("rollout complete"), "{stdout}");
    let bad_one = fleet.tenant("tenant-0007");
    assert!(
        flowing.contains(&format!("tenant-0007 ({})", bad_one.project_id)),
        "{stdout}"
    );
    for line in stdout.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line}");
    }
    // `rollback --failed` has nothing to undo on mains validation kept untouched, and says so.
    let output = fleet.run(&[
        "rollback",
        plan.to_str().expect("utf-8"),
        "--failed",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let flowing = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("nothing to roll back: 3 tenants failed before main changed")
            && flowing.contains(&format!("tenant-0007 ({})", bad_one.project_id)),
        "{stderr}"
    );

    for tenant in &fleet.tenants {
        let rows = history(tenant.connection_uri.expose()).await;
        if bad.contains(&tenant.name.as_str()) {
            assert!(
                rows.is_empty(),
                "{} was caught on its branch, main must be untouched",
                tenant.name
            );
            let after = fingerprint(tenant.connection_uri.expose()).await;
            assert_eq!(
                &after, &before[&tenant.project_id],
                "{}: main changed",
                tenant.name
            );
        } else {
            assert_eq!(versions(&rows), ALL_VERSIONS, "{}", tenant.name);
        }
    }

    // Nothing pending: a second run touches no finished tenant and creates no branch.
    let branches_before = fleet.fleet.stats();
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the failed tenants still count: {}",
        text(&output)
    );
    let journal = std::fs::read_to_string(fleet.path("policy.journal.jsonl"))
        .expect("journal beside the plan");
    let second_run = journal
        .rsplit("\"event\":\"run_started\"")
        .next()
        .expect("a second run");
    assert!(
        !second_run.contains("branch_created"),
        "a re-run with nothing pending opened a branch"
    );
    let branches_after = fleet.fleet.stats();
    assert_eq!(
        branches_before.by_status.get(&201),
        branches_after.by_status.get(&201),
        "the emulator saw a branch creation on a no-op re-run"
    );
    fleet.fleet.stop().await.expect("stop");
}

/// A wave whose failures exceed its budget halts: no later wave starts, and their tenants'
/// databases are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_over_budget_halts_and_later_waves_stay_untouched() {
    let fleet = TestFleet::start(12).await;
    for name in ["tenant-0001", "tenant-0002"] {
        add_legacy_status(fleet.tenant(name).connection_uri.expose()).await;
    }
    fleet.write_policy(
        "validation: branch\nrestore_point: branch_point\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: canary\n    tenants: [tenant-0001, tenant-0002, tenant-0003]\n    percent: 0\n    concurrency: 1\n    max_failures: 0\n  - name: rest\n    percent: 100\n    concurrency: 4\n",
    );
    let plan = fleet.plan(&repo_migrations());
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["waves"][0]["name"], "canary");
    assert_eq!(report["waves"][0]["halted"], true, "{report:#}");
    assert_eq!(report["waves"][1]["not_started"], 9, "{report:#}");
    assert_eq!(report["outcome"], "halted");
    // Budget 0, concurrency 1: the first failure halts, no new canary tenant starts.
    assert_eq!(report["waves"][0]["failed"], 1, "{report:#}");
    for tenant in &fleet.tenants {
        if tenant.name != "tenant-0001"
            && tenant.name != "tenant-0002"
            && tenant.name != "tenant-0003"
        {
            assert!(
                history(tenant.connection_uri.expose()).await.is_empty(),
                "{} is in a later wave",
                tenant.name
            );
        }
    }
    // A re-run refuses to go on past the halted wave.
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("HALTED"),
        "{}",
        text(&output)
    );
    fleet.fleet.stop().await.expect("stop");
}

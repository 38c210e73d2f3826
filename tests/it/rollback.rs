//! Rollback by branch restore, and `status`, end to end against the local fleet.

use crate::support;

use support::{
    TestFleet, add_legacy_status, connect, fingerprint, history, json, repo_migrations, text,
};

/// A wave is applied, the application writes to main afterwards, `rollback --wave` brings every
/// tenant's schema and data back exactly to the pre-migration state, the post-migration state
/// with the later rows is kept under the preserved branch, and a later `apply` of the plan
/// migrates them again only with `--include-rolled-back`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_a_wave_restores_exactly_and_keeps_the_newer_state() {
    let fleet = TestFleet::start(4).await;
    let mut before = std::collections::HashMap::new();
    for tenant in &fleet.tenants {
        before.insert(
            tenant.project_id.clone(),
            fingerprint(tenant.connection_uri.expose()).await,
        );
    }
    fleet.write_policy(
        "validation: branch\nrestore_point: branch_point\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 4\n",
    );
    let plan = fleet.plan(&repo_migrations());
    let plan_arg = plan.to_str().expect("utf-8");
    let output = fleet.run(&["apply", plan_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // The application keeps writing after the migration, using the new column.
    for tenant in &fleet.tenants {
        let client = connect(tenant.connection_uri.expose()).await;
        client
            .batch_execute("INSERT INTO accounts (email, plan) VALUES ('late@example.com', 'pro')")
            .await
            .expect("a write after the migration");
        assert_eq!(history(tenant.connection_uri.expose()).await.len(), 4);
    }
    let mut after_writes = std::collections::HashMap::new();
    for tenant in &fleet.tenants {
        after_writes.insert(
            tenant.project_id.clone(),
            fingerprint(tenant.connection_uri.expose()).await,
        );
    }

    // A dry run says what it would do and changes nothing.
    let output = fleet.run(&["rollback", plan_arg, "--wave", "all", "--dry-run"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("/restore").count(), 4, "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("writes since then move to branch"),
        "{}",
        text(&output)
    );
    for line in stdout
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        assert!(line.chars().count() <= 100, "too wide: {line}");
    }
    // The same as one JSON document, each tenant by id and name, picked by name.
    let output = fleet.run(&[
        "rollback",
        plan_arg,
        "--tenant",
        &fleet.tenants[1].name,
        "--dry-run",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", text(&output)));
    assert_eq!(document["dry_run"], true, "{document:#}");
    let tenants = document["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 1, "{document:#}");
    assert_eq!(tenants[0]["tenant"], fleet.tenants[1].project_id.as_str());
    assert_eq!(tenants[0]["tenant_name"], fleet.tenants[1].name.as_str());
    assert_eq!(tenants[0]["request"]["method"], "POST");
    assert!(
        tenants[0]["request"]["path"]
            .as_str()
            .is_some_and(|path| path.ends_with("/restore")),
        "{document:#}"
    );
    assert_eq!(
        history(fleet.tenants[0].connection_uri.expose())
            .await
            .len(),
        4,
        "dry run changed nothing"
    );

    // Without --yes and without a terminal it refuses.
    let output = fleet.run(&["rollback", plan_arg, "--wave", "all"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--yes"),
        "{}",
        text(&output)
    );

    let output = fleet.run(&["rollback", plan_arg, "--wave", "all", "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let neon = fleet.neon_client();
    for tenant in &fleet.tenants {
        let restored = fingerprint(tenant.connection_uri.expose()).await;
        assert_eq!(
            restored, before[&tenant.project_id],
            "{}: main is not back to its pre-migration state",
            tenant.name
        );
        assert!(history(tenant.connection_uri.expose()).await.is_empty());
        let branches = neon
            .list_branches(&tenant.project_id)
            .await
            .expect("branches");
        let preserved = branches
            .iter()
            .find(|branch| branch.name.starts_with("pre-rollback-"))
            .unwrap_or_else(|| panic!("{}: no preserved branch among {branches:?}", tenant.name));
        // As on Neon, the preserved branch has no compute of its own: read it behind the API.
        let preserved_uri = fleet
            .fleet
            .branch_superuser_uri(&tenant.project_id, &preserved.id)
            .expect("the preserved branch has a database");
        assert_eq!(
            fingerprint(preserved_uri.expose()).await,
            after_writes[&tenant.project_id],
            "{}: the preserved branch must hold the post-migration state with the later rows",
            tenant.name
        );
    }

    let output = fleet.run(&["status", plan_arg, "--output", "json"]);
    let status = json(&output);
    assert_eq!(status["totals"]["rolled_back"], 4, "{status:#}");

    // A later apply of the same plan leaves them back and names them...
    let output = fleet.run(&["apply", plan_arg, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 0, "{report:#}");
    assert_eq!(
        report["held_back"].as_array().map(Vec::len),
        Some(4),
        "{report:#}"
    );
    assert!(
        history(fleet.tenants[0].connection_uri.expose())
            .await
            .is_empty()
    );
    // ... until asked for.
    let output = fleet.run(&[
        "apply",
        plan_arg,
        "--include-rolled-back",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(json(&output)["totals"]["applied"], 4);
    for tenant in &fleet.tenants {
        assert_eq!(
            history(tenant.connection_uri.expose()).await.len(),
            4,
            "{}",
            tenant.name
        );
    }
    fleet.fleet.stop().await.expect("stop");
}

/// `status` reads a journal from a real run with failures and a halted wave, with no API access.
/// With `restore_point: backup_branch` (no validation branch), apply creates one backup branch
/// per tenant. After a later release, `rollback --tenant` of the first one is refused because it
/// would undo the later release too; with `--undo-later-releases` it restores that tenant's
/// main from its backup's head, exactly, and leaves the other tenant migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_a_backup_branch_restores_one_tenant_exactly() {
    let fleet = TestFleet::start(2).await;
    let target = fleet.tenant("tenant-0001");
    let other = fleet.tenant("tenant-0002");
    let before = fingerprint(target.connection_uri.expose()).await;
    fleet.write_policy(
        "validation: none\nrestore_point: backup_branch\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 2\n",
    );
    let plan = fleet.plan(&repo_migrations());
    let plan_arg = plan.to_str().expect("utf-8");
    let output = fleet.run(&["apply", plan_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(history(target.connection_uri.expose()).await.len(), 4);

    let neon = fleet.neon_client();
    let backups = |branches: &[schemafleet::neon::Branch]| {
        branches
            .iter()
            .filter(|branch| branch.name.starts_with("schemafleet-backup-"))
            .count()
    };
    let branches = neon
        .list_branches(&target.project_id)
        .await
        .expect("branches");
    assert_eq!(backups(&branches), 1, "{branches:?}");

    // A later release adds V5 on top, with a plan of its own.
    let later = fleet.path("later-migrations");
    std::fs::create_dir_all(&later).expect("create the later release");
    for entry in std::fs::read_dir(repo_migrations()).expect("the repo's migrations") {
        let entry = entry.expect("a migration");
        std::fs::copy(entry.path(), later.join(entry.file_name())).expect("copy a migration");
    }
    std::fs::write(
        later.join("V5__accounts_note.sql"),
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    )
    .expect("write V5");
    let later_plan_arg = fleet.plan_at(&later, "later.plan.yaml");
    let output = fleet.run(&["apply", &later_plan_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let migrated = fingerprint(target.connection_uri.expose()).await;

    // Rolling back the first release would undo V5 too: refused, nothing changed.
    let output = fleet.run(&[
        "rollback",
        plan_arg,
        "--tenant",
        &target.project_id,
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("V5") && stderr.contains("--undo-later-releases"),
        "{}",
        text(&output)
    );
    assert_eq!(fingerprint(target.connection_uri.expose()).await, migrated);
    assert_eq!(history(target.connection_uri.expose()).await.len(), 5);

    // Asked for explicitly, it undoes both releases and says so first.
    let output = fleet.run(&[
        "rollback",
        plan_arg,
        "--tenant",
        &target.project_id,
        "--undo-later-releases",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("also undoes V5"),
        "{}",
        text(&output)
    );
    assert_eq!(
        fingerprint(target.connection_uri.expose()).await,
        before,
        "main is not back to its pre-migration state"
    );
    assert!(history(target.connection_uri.expose()).await.is_empty());
    let branches = neon
        .list_branches(&target.project_id)
        .await
        .expect("branches");
    assert!(
        branches
            .iter()
            .any(|branch| branch.name.starts_with("pre-rollback-")),
        "the migrated state is kept under a preserved branch: {branches:?}"
    );
    assert_eq!(
        history(other.connection_uri.expose()).await.len(),
        5,
        "the other tenant was not selected and stays migrated"
    );
    fleet.fleet.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_halted_run_from_the_journal_alone() {
    let fleet = TestFleet::start(6).await;
    add_legacy_status(fleet.tenant("tenant-0002").connection_uri.expose()).await;
    fleet.write_policy(
        "validation: branch\nrestore_point: branch_point\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: canary\n    tenants: [tenant-0001, tenant-0002]\n    percent: 0\n    concurrency: 2\n    max_failures: 0\n  - name: rest\n    percent: 100\n    concurrency: 4\n",
    );
    let plan = fleet.plan(&repo_migrations());
    let plan_arg = plan.to_str().expect("utf-8");
    let output = fleet.run(&["apply", plan_arg]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    // Stop the fleet: status must not need it.
    let TestFleet {
        fleet: local_fleet,
        dir,
        ..
    } = fleet;
    local_fleet.stop().await.expect("stop");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(["status", plan_arg, "--output", "json"])
        .current_dir(dir.path())
        .env("NEON_API_URL", "http://127.0.0.1:9/api/v2")
        .env_remove("NEON_API_KEY")
        .output()
        .expect("status runs");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a halted wave is a failure: {}",
        text(&output)
    );
    let status = json(&output);
    assert_eq!(status["halted_wave"], "canary", "{status:#}");
    assert_eq!(status["waves"][0]["failed"], 1, "{status:#}");
    assert_eq!(status["waves"][0]["applied"], 1, "{status:#}");
    assert_eq!(status["waves"][1]["not_started"], 4, "{status:#}");
    assert_eq!(
        status["restore_points"].as_array().map(Vec::len),
        Some(1),
        "{status:#}"
    );
    // Counted by kind beside the (bounded) list, which leaves nothing out here.
    assert_eq!(status["restore_point_counts"]["total"], 1, "{status:#}");
    assert_eq!(status["restore_points_truncated"], false, "{status:#}");
    let groups = status["failure_groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["phase"], "validate");
    assert!(
        groups[0]["cause"]
            .as_str()
            .unwrap_or("")
            .contains("orders_status_check"),
        "{status:#}"
    );
    assert!(
        groups[0]["next_step"]
            .as_str()
            .unwrap_or("")
            .contains("main was not touched"),
        "{status:#}"
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(["status", plan_arg])
        .current_dir(dir.path())
        .output()
        .expect("status runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("HALTED"), "{stdout}");
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "status fits 80 columns:\n{stdout}"
    );
}

/// `status --live` reads every tenant's history table now: exit 0 while all are up to date,
/// exit 1 naming a tenant whose history diverged, and exit 2 on a wrong key (one clear error,
/// not one per tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_live_reads_history_tables_and_fails_on_problems() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(
        "validation: none\nrestore_point: none\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 2\n",
    );
    let plan = fleet.plan(&repo_migrations());
    let plan_arg = plan.to_str().expect("utf-8");
    let output = fleet.run(&["apply", plan_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let output = fleet.run(&["status", plan_arg, "--live"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("up_to_date 2"),
        "{}",
        text(&output)
    );

    let odd = fleet.tenant("tenant-0002");
    connect(odd.connection_uri.expose())
        .await
        .batch_execute("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 2")
        .await
        .expect("a history row that no longer matches its file");
    let output = fleet.run(&["status", plan_arg, "--live"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("{} ({}): diverged", odd.name, odd.project_id)),
        "{}",
        text(&output)
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(["status", plan_arg, "--live"])
        .current_dir(fleet.path(""))
        .env("NEON_API_URL", fleet.fleet.api_url())
        .env("NEON_API_KEY", "napi_wrong")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NEON_API_KEY"), "{}", text(&output));
    assert!(!stderr.contains("napi_wrong"), "{}", text(&output));
    fleet.fleet.stop().await.expect("stop");
}

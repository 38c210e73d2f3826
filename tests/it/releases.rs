//! Several releases in a row on one fleet: what happens *between* plans. Rolled-back tenants stay
//! back, a rollback never moves a tenant forward, stale journals say so, and the branches
//! rollbacks preserve have an owner (`gc --preserved`).

use crate::support;

use std::path::PathBuf;

use support::{TestFleet, connect, history, json, repo_migrations, text};

/// A release's checkout: the repository's migrations up to `through` (V1–V4), then `extra`.
fn release(fleet: &TestFleet, name: &str, through: i32, extra: &[(&str, &str)]) -> PathBuf {
    let dir = fleet.path(name);
    std::fs::create_dir_all(&dir).expect("create the release's migrations");
    for entry in std::fs::read_dir(repo_migrations()).expect("the repo's migrations") {
        let entry = entry.expect("a migration");
        let file_name = entry.file_name().to_string_lossy().to_string();
        let version: i32 = file_name[1..file_name.find("__").expect("V{n}__")]
            .parse()
            .expect("a version");
        if version <= through {
            std::fs::copy(entry.path(), dir.join(&file_name)).expect("copy a migration");
        }
    }
    for (file_name, sql) in extra {
        std::fs::write(dir.join(file_name), sql).expect("write a migration");
    }
    dir
}

/// The `status PLAN --live` entry that calls `tenant`'s journal entry stale, if any.
fn stale_entry(fleet: &TestFleet, plan: &str, tenant: &str) -> Option<serde_json::Value> {
    let output = fleet.run(&["status", plan, "--live", "--output", "json"]);
    let status = json(&output);
    status["live"]["stale"]
        .as_array()
        .unwrap_or_else(|| panic!("no stale entries: {status:#}"))
        .iter()
        .find(|entry| entry["tenant"] == tenant)
        .cloned()
}

async fn versions(uri: &str) -> Vec<i32> {
    history(uri)
        .await
        .into_iter()
        .map(|(version, _)| version)
        .collect()
}

/// An email V5 rejects (it requires lower-case emails).
async fn give_upper_case_email(uri: &str) {
    connect(uri)
        .await
        .batch_execute("UPDATE accounts SET email = 'Ada@Example.com' WHERE id = 1")
        .await
        .expect("an upper-case email");
}

async fn fix_email(uri: &str) {
    connect(uri)
        .await
        .batch_execute("UPDATE accounts SET email = lower(email)")
        .await
        .expect("the data fix");
}

/// Release 1 = V1–V3, release 2 = V4–V5 (V5 fails on two tenants' data), release 3 = V6, on one
/// fleet of four tenants, as an on-call operator would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_releases_rolled_back_tenants_stay_back_and_rollback_never_moves_forward() {
    let fleet = TestFleet::start(4).await;
    let canary = fleet.tenant("tenant-0001");
    let steady = fleet.tenant("tenant-0002");
    let fixed = fleet.tenant("tenant-0003");
    let late = fleet.tenant("tenant-0004");
    fleet.write_policy(
        "validation: branch\nrestore_point: branch_point\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: test\nwaves:\n  - name: canary\n    tenants: [tenant-0001]\n    percent: 0\n    concurrency: 1\n  - name: rest\n    percent: 100\n    concurrency: 4\n    max_failures: 5\n",
    );
    let v5 = (
        "V5__accounts_email_lower.sql",
        "-- squawk-ignore constraint-missing-not-valid -- the scan finds the tenants whose data fails\nALTER TABLE accounts ADD CONSTRAINT accounts_email_lower CHECK (email = lower(email));\n",
    );
    let v6 = (
        "V6__accounts_note.sql",
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    );
    let r1_dir = release(&fleet, "r1", 3, &[]);
    let r2_dir = release(&fleet, "r2", 4, &[v5]);
    let r3_dir = release(&fleet, "r3", 4, &[v5, v6]);

    // Release 1 everywhere.
    let r1 = fleet.plan_at(&r1_dir, "r1.plan.yaml");
    let output = fleet.run(&["apply", &r1]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // Release 2: V5 fails on two tenants' data, validated on their branches.
    give_upper_case_email(fixed.connection_uri.expose()).await;
    give_upper_case_email(late.connection_uri.expose()).await;
    let r2 = fleet.plan_at(&r2_dir, "r2.plan.yaml");
    let output = fleet.run(&["apply", &r2]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(
        versions(canary.connection_uri.expose()).await,
        [1, 2, 3, 4, 5]
    );

    // "The app broke": the canary wave of release 2 is rolled back, its preserved branch
    // given an expiry at rollback time.
    let output = fleet.run(&[
        "rollback",
        &r2,
        "--wave",
        "canary",
        "--preserve-for",
        "7d",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(versions(canary.connection_uri.expose()).await, [1, 2, 3]);
    let neon = fleet.neon_client();
    let preserved = |branches: &[schemafleet::neon::Branch]| {
        branches
            .iter()
            .filter(|branch| branch.name.starts_with("pre-rollback-"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let canary_preserved = preserved(
        &neon
            .list_branches(&canary.project_id)
            .await
            .expect("branches"),
    );
    assert_eq!(canary_preserved.len(), 1, "{canary_preserved:?}");
    assert!(
        canary_preserved[0].expires_at.is_some(),
        "--preserve-for sets an expiry: {canary_preserved:?}"
    );

    // The operator fixes one tenant's data and retries the failures only: the rolled-back
    // canary stays at release 1's version and the report names it.
    fix_email(fixed.connection_uri.expose()).await;
    let output = fleet.run(&["apply", &r2, "--retry-failed", "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    assert_eq!(report["totals"]["failed"], 1, "{report:#}");
    assert_eq!(
        report["held_back"],
        serde_json::json!([canary.project_id]),
        "{report:#}"
    );
    assert_eq!(
        report["held_back_tenants"][0]["tenant_name"], "tenant-0001",
        "{report:#}"
    );
    assert_eq!(versions(canary.connection_uri.expose()).await, [1, 2, 3]);
    assert_eq!(
        versions(fixed.connection_uri.expose()).await,
        [1, 2, 3, 4, 5]
    );
    let output = fleet.run(&["status", &r2]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let flowing = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("held back")
            && flowing.contains(&format!("tenant-0001 ({})", canary.project_id)),
        "the held-back tenant by name: {}",
        text(&output)
    );
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "status fits 80 columns:\n{stdout}"
    );

    // Release 1 is rolled back on another tenant (undoing release 2 there too, as asked)...
    let output = fleet.run(&[
        "rollback",
        &r1,
        "--tenant",
        &steady.project_id,
        "--undo-later-releases",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(versions(steady.connection_uri.expose()).await.is_empty());
    // ... so release 2's rollback of it would move it forward to V3: refused, naming both.
    let output = fleet.run(&[
        "rollback",
        &r2,
        "--tenant",
        &steady.project_id,
        "--undo-later-releases",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("main is at no version now, behind the restore point's V3"),
        "{}",
        text(&output)
    );
    assert!(versions(steady.connection_uri.expose()).await.is_empty());
    // Release 2's journal still says applied; main's history says otherwise, and --live says so.
    let stale = stale_entry(&fleet, &r2, &steady.project_id).expect("stale in r2");
    assert!(
        stale["journal"] == "applied" && stale["live"] == "behind",
        "{stale:#}"
    );

    // Bad input names what is wrong and changes nothing.
    let output = fleet.run(&["apply", &r2, "--include-rolled-back=tenant-nope"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("tenant tenant-nope is not in plan"),
        "{}",
        text(&output)
    );
    let output = fleet.run(&["rollback", &r2, "--wave", "canary", "--preserve-for", "31d"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--preserve-for 31d: Neon accepts"),
        "{}",
        text(&output)
    );

    // Asked for by name, the canary gets release 2 again.
    let include = format!("--include-rolled-back={}", canary.project_id);
    let output = fleet.run(&["apply", &r2, &include, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["held_back"], serde_json::json!([]), "{report:#}");
    assert_eq!(
        versions(canary.connection_uri.expose()).await,
        [1, 2, 3, 4, 5]
    );

    // Release 3 after the last data fix: a new plan treats every tenant that is behind alike.
    fix_email(late.connection_uri.expose()).await;
    let r3 = fleet.plan_at(&r3_dir, "r3.plan.yaml");
    let output = fleet.run(&["apply", &r3]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for tenant in &fleet.tenants {
        assert_eq!(
            versions(tenant.connection_uri.expose()).await,
            [1, 2, 3, 4, 5, 6],
            "{}",
            tenant.name
        );
    }

    // Release 1's files planned and applied again after release 3: nothing to do, and the
    // tenants are called ahead, as `drift` calls them, not merely up to date.
    let r1_again = fleet.plan_at(&r1_dir, "r1-again.plan.yaml");
    let output = fleet.run(&["apply", &r1_again, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let totals = json(&output)["totals"].clone();
    assert_eq!(
        (&totals["up_to_date"], &totals["ahead"]),
        (&serde_json::json!(4), &serde_json::json!(4)),
        "{totals:#}"
    );
    let output = fleet.run(&["status", &r1_again]);
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .all(|line| line.chars().count() <= 80),
        "status fits 80 columns: {}",
        text(&output)
    );
    let flowing = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flowing.contains("of the tenants up to date, 4 are ahead: a later release reached them"),
        "{}",
        text(&output)
    );
    let output = fleet.run(&["drift", &r1_again, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(json(&output)["counts"]["ahead"], 4, "{}", text(&output));

    // Old journals are stale now: journal-only status says what it is as of, --live names them.
    let output = fleet.run(&["status", &r1]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("as of this plan's last record"),
        "{}",
        text(&output)
    );
    let stale = stale_entry(&fleet, &r1, &steady.project_id).expect("stale in r1");
    assert!(
        stale["journal"] == "rolled_back" && stale["current_version"] == 6,
        "{stale:#}"
    );
    let output = fleet.run(&["status", &r2, "--live"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("stale in this journal") && stdout.contains(&late.project_id),
        "{}",
        text(&output)
    );
    let stale = stale_entry(&fleet, &r2, &late.project_id).expect("stale in r2");
    assert!(
        stale["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("the journal says failed, but main is at V6 now")),
        "{stale:#}"
    );

    // Release 1's rollback of the tenant it rolled back before is refused from main's history.
    let output = fleet.run(&[
        "rollback",
        &r1,
        "--tenant",
        &steady.project_id,
        "--yes",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let refused = json(&output)["refused"].clone();
    assert!(
        refused[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("main is at V6 now")),
        "{refused:#}"
    );

    // The preserved branches are listed with their age and tenant, kept until old enough.
    let output = fleet.run(&["gc", "--plan", &r2, "--dry-run", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let listed = json(&output);
    let preserved_listed: Vec<&serde_json::Value> = listed["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter(|branch| branch["purpose"] == "preserved")
        .collect();
    assert_eq!(preserved_listed.len(), 2, "{listed:#}");
    assert!(
        preserved_listed
            .iter()
            .all(|branch| branch["age_seconds"].is_i64() && branch["delete"] == false),
        "{listed:#}"
    );
    let output = fleet.run(&[
        "gc",
        "--plan",
        &r2,
        "--preserved",
        "--older-than",
        "30d",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let kept = json(&output);
    let young: Vec<&serde_json::Value> = kept["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter(|branch| branch["purpose"] == "preserved")
        .collect();
    assert!(
        young.len() == 2
            && young.iter().all(|branch| branch["deleted"] == false
                && branch["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("younger than --older-than 30d"))),
        "{kept:#}"
    );
    let output = fleet.run(&["gc", "--plan", &r2, "--preserved", "--older-than", "0s"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for tenant in &fleet.tenants {
        let branches = neon
            .list_branches(&tenant.project_id)
            .await
            .expect("branches");
        assert!(
            preserved(&branches).is_empty(),
            "{}: {branches:?}",
            tenant.name
        );
    }

    // An old plan is checked against the checkout it is given, as `apply` and `drift` are.
    let output = fleet.run(&["plan", "--check", &r1]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = fleet.run(&[
        "plan",
        "--check",
        &r1,
        "--migrations",
        r3_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("V6__accounts_note.sql"),
        "{}",
        text(&output)
    );
    fleet.fleet.stop().await.expect("stop");
}

//! The policy's transaction mode end to end: one transaction per migration by default (a later
//! migration can use what an earlier one committed), `per_release` all or nothing, and a tenant
//! whose main committed some migrations before one failed.

use crate::support;

use std::path::{Path, PathBuf};

use support::{TestFleet, connect, fingerprint, history, json, text};

fn versions(rows: &[(i32, String)]) -> Vec<i32> {
    rows.iter().map(|(version, _)| *version).collect()
}

fn write_migrations(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("migrations directory");
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).expect("write a migration");
    }
    dir.to_path_buf()
}

/// V2 adds an enum label and V3 uses it, which PostgreSQL allows only once V2 committed.
const ENUM_RELEASE: [(&str, &str); 3] = [
    (
        "V1__order_state.sql",
        "CREATE TYPE order_state AS ENUM ('open', 'paid');\nALTER TABLE orders ADD COLUMN state order_state;\n",
    ),
    (
        "V2__add_shipped.sql",
        "ALTER TYPE order_state ADD VALUE 'shipped';\n",
    ),
    (
        "V3__use_shipped.sql",
        "-- squawk-ignore require-concurrent-index-creation -- a test table of a few rows\nCREATE INDEX orders_shipped ON orders (id) WHERE state = 'shipped';\nALTER TABLE orders ALTER COLUMN state SET DEFAULT 'shipped';\n",
    ),
];

const ONE_WAVE: &str =
    "waves:\n  - name: all\n    percent: 100\n    concurrency: 3\n    max_failures: 3\n";

/// By default the release applies on every tenant, branch and main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_label_added_then_used_applies_per_migration() {
    let fleet = TestFleet::start(3).await;
    let migrations = write_migrations(&fleet.path("migrations"), &ENUM_RELEASE);
    fleet.write_policy(&format!("validation: branch\nsalt: test\n{ONE_WAVE}"));
    let plan = fleet.plan(&migrations);
    let plan_text = std::fs::read_to_string(&plan).expect("plan");
    assert!(
        plan_text.contains("transaction: per_migration"),
        "{plan_text}"
    );
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 3, "{report:#}");
    for tenant in &fleet.tenants {
        let uri = tenant.connection_uri.expose();
        assert_eq!(versions(&history(uri).await), [1, 2, 3], "{}", tenant.name);
        let client = connect(uri).await;
        let row = client
            .query_one(
                "SELECT pg_get_indexdef('orders_shipped'::regclass), \
                 (SELECT column_default FROM information_schema.columns \
                  WHERE table_name = 'orders' AND column_name = 'state')",
                &[],
            )
            .await
            .expect("the index and the default exist");
        assert!(row.get::<_, String>(0).contains("'shipped'"), "{row:?}");
        assert!(row.get::<_, String>(1).starts_with("'shipped'"), "{row:?}");
    }

    fleet.fleet.stop().await.expect("stop");
}

/// The same release all or nothing: every validation branch refuses it with 55P04, main stays
/// untouched, and the hint blames the release rather than the tenants' data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_label_added_then_used_fails_per_release_on_every_branch() {
    let fleet = TestFleet::start(3).await;
    let migrations = write_migrations(&fleet.path("migrations"), &ENUM_RELEASE);
    fleet.write_policy(&format!(
        "validation: branch\ntransaction: per_release\nsalt: test\n{ONE_WAVE}"
    ));
    // The lint sees it coming: `plan` refuses the release under per_release.
    let output = fleet.run(&[
        "plan",
        "--policy",
        "policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("V3__use_shipped.sql")
            && stderr.contains("2:")
            && stderr.contains("[enum-label-added-and-used]"),
        "{}",
        text(&output)
    );
    // Made a warning, the release is planned and PostgreSQL itself refuses it.
    fleet.write_policy(&format!(
        "validation: branch\ntransaction: per_release\nsalt: test\n{ONE_WAVE}lint:\n  pg_version: 16\n  warn: [enum-label-added-and-used]\n"
    ));
    let (plan, summary) = fleet.plan_with_summary(&migrations);
    assert!(
        summary.contains("`transaction: per_release`"),
        "the summary names the mode: {summary}"
    );
    let plan_text = std::fs::read_to_string(&plan).expect("plan");
    assert!(
        plan_text.contains("transaction: per_release"),
        "{plan_text}"
    );
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["failed"], 3, "{report:#}");
    let failures = report["failures"].as_array().expect("failures");
    for failure in failures {
        assert_eq!(failure["phase"], "validate", "{report:#}");
        assert_eq!(failure["sqlstate"], "55P04", "{report:#}");
        assert_eq!(failure["migration"], "V3__use_shipped", "{report:#}");
    }
    let groups = report["failure_groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{report:#}");
    let next = groups[0]["next_step"].as_str().expect("next step");
    assert!(next.contains("every tenant that ran it (3)"), "{next}");
    assert!(next.contains("per_migration"), "{next}");
    assert!(!next.contains("fails on these tenants' data"), "{next}");
    for tenant in &fleet.tenants {
        assert!(
            history(tenant.connection_uri.expose()).await.is_empty(),
            "{}: main must be untouched",
            tenant.name
        );
    }
    fleet.fleet.stop().await.expect("stop");
}

/// V3 fails on one tenant's data after V1 and V2 committed on its main (no validation branch
/// to catch it first): that main holds exactly V1–V2, the report and `status` say so, a retry
/// after the data is fixed continues with V3 and V4, and a rollback restores it to before V1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_some_migrations_committed_is_reported_retried_and_rolled_back() {
    let fleet = TestFleet::start(3).await;
    let migrations = write_migrations(
        &fleet.path("migrations"),
        &[
            (
                "V1__add_note.sql",
                "ALTER TABLE orders ADD COLUMN note text;\n",
            ),
            (
                "V2__create_refunds.sql",
                "CREATE TABLE refunds (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders);\n",
            ),
            (
                "V3__positive_totals.sql",
                "-- squawk-ignore constraint-missing-not-valid -- the scan is what fails on the bad tenant\nALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total_cents > 0);\n",
            ),
            (
                "V4__create_audit.sql",
                "CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());\n",
            ),
        ],
    );
    let bad = fleet.tenant("tenant-0002");
    let bad_uri = bad.connection_uri.expose();
    connect(bad_uri)
        .await
        .batch_execute("INSERT INTO orders (account_id, total_cents) VALUES (1, 0)")
        .await
        .expect("a row V3 refuses");
    let before = fingerprint(bad_uri).await;
    fleet.write_policy(&format!(
        "validation: none\nrestore_point: backup_branch\nsalt: test\n{ONE_WAVE}"
    ));
    let plan = fleet.plan(&migrations);
    let plan_arg = plan.to_str().expect("utf-8");

    let output = fleet.run(&["apply", plan_arg, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    let failure = &report["failures"][0];
    assert_eq!(failure["tenant"], bad.project_id.as_str(), "{report:#}");
    assert_eq!(failure["phase"], "apply", "{report:#}");
    assert_eq!(failure["sqlstate"], "23514", "{report:#}");
    assert_eq!(failure["migration"], "V3__positive_totals", "{report:#}");
    assert_eq!(failure["applied_on_main"], serde_json::json!([1, 2]));
    assert_eq!(failure["main_version"], 2, "{report:#}");
    let next = report["failure_groups"][0]["next_step"]
        .as_str()
        .expect("next step");
    assert!(next.contains("main is partly migrated"), "{next}");
    assert!(next.contains("passed on 2 other tenants"), "{next}");
    assert!(next.contains("--retry-failed` to continue"), "{next}");

    // Exactly V1–V2 on that main: their schema and history rows, nothing of V3 or V4.
    assert_eq!(versions(&history(bad_uri).await), [1, 2]);
    let client = connect(bad_uri).await;
    let row = client
        .query_one(
            "SELECT to_regclass('refunds') IS NOT NULL, to_regclass('audit_log') IS NOT NULL, \
             EXISTS (SELECT FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'), \
             EXISTS (SELECT FROM pg_constraint WHERE conname = 'orders_total_positive')",
            &[],
        )
        .await
        .expect("catalog query");
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
            row.get::<_, bool>(3)
        ),
        (true, false, true, false),
        "V1 and V2 committed, V3 rolled back, V4 never ran"
    );
    for tenant in &fleet.tenants {
        if tenant.name != bad.name {
            assert_eq!(
                versions(&history(tenant.connection_uri.expose()).await),
                [1, 2, 3, 4]
            );
        }
    }

    let output = fleet.run(&["status", plan_arg, "--output", "json"]);
    let status = json(&output);
    assert_eq!(status["failures"][0]["main_version"], 2, "{status:#}");
    assert_eq!(
        status["failures"][0]["migration"], "V3__positive_totals",
        "{status:#}"
    );
    let output = fleet.run(&["status", plan_arg]);
    // Text wraps at 78 columns: compare word by word.
    let words = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.contains(&format!(
            "main of {} ({}) is at V2: V1, V2 committed before the failure",
            bad.name, bad.project_id
        )),
        "{}",
        text(&output)
    );

    // Fix the data; the retry continues from V3.
    client
        .batch_execute("UPDATE orders SET total_cents = 1 WHERE total_cents = 0")
        .await
        .expect("fix the data");
    let output = fleet.run(&["apply", plan_arg, "--retry-failed", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(versions(&history(bad_uri).await), [1, 2, 3, 4]);

    // The restore point is still the one from before V1.
    drop(client);
    let output = fleet.run(&["rollback", plan_arg, "--tenant", &bad.project_id, "--yes"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(history(bad_uri).await.is_empty());
    assert_eq!(
        fingerprint(bad_uri).await,
        before,
        "main is back to before V1"
    );
    fleet.fleet.stop().await.expect("stop");
}

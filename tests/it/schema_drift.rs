//! `schemafleet drift --schema`, end to end: the binary against the local emulator over a real
//! PostgreSQL; the reference is built on a throwaway database of the emulator's own server,
//! tenants are migrated by the real refinery runner and then hand-edited.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{migrate_with_runner, start_fleet, stdout_json};
use schemafleet::emulator::{LocalFleet, SeededTenant};
use serde_json::Value;

const MIGRATIONS: [(&str, &str); 3] = [
    (
        "V1__accounts.sql",
        "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL DEFAULT '');\n",
    ),
    (
        "V2__orders.sql",
        "CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts, note text);\n",
    ),
    (
        "V3__index_orders.sql",
        "CREATE INDEX orders_account ON orders (account_id);\n",
    ),
];

/// Apply the first `count` migrations to the tenant's main with the real runner.
async fn migrate(tenant: &SeededTenant, dir: &Path, count: usize) {
    let set = schemafleet::migrations::load(dir).expect("migrations load");
    migrate_with_runner(&tenant.connection_uri, &set.to_refinery()[..count]).await;
}

async fn edit(tenant: &SeededTenant, sql: &str) {
    let client = schemafleet::pg::connect(&tenant.connection_uri, Duration::from_secs(10))
        .await
        .expect("the tenant accepts connections");
    client.batch_execute(sql).await.expect("the hand edit runs");
}

async fn drift_schema(fleet: &LocalFleet, root: &Path, reference_url: Option<&str>) -> Output {
    drift_schema_as(fleet, root, reference_url, "json").await
}

async fn drift_schema_as(
    fleet: &LocalFleet,
    root: &Path,
    reference_url: Option<&str>,
    output: &str,
) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"));
    command
        .current_dir(root)
        .args([
            "drift",
            "--policy",
            "policy.yaml",
            "--schema",
            "--reference-cache",
            "cache",
            "--output",
            output,
        ])
        .env("NEON_API_URL", fleet.api_url())
        .env("NEON_API_KEY", fleet.api_key().expose())
        .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
        .env_remove("SCHEMAFLEET_REFERENCE_URL")
        .env_remove("SCHEMAFLEET_LOG");
    if let Some(url) = reference_url {
        command.args(["--reference-url", url]);
    }
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the blocking task joins")
}

/// A clean fleet (one tenant behind at V2, the rest at V3) exits 0; after hand edits (one
/// tenant lost an index, one has an extra column, five share an extra index) it exits 1 with
/// exactly three groups naming the objects, and the second run reads the cached reference.
#[tokio::test]
async fn drift_schema_groups_identical_hand_edits() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(8, "SELECT 1;", "schema").await.expect("seeding");
    let temp = tempfile::tempdir().expect("a temporary directory");
    let root = temp.path();
    std::fs::create_dir(root.join("migrations")).expect("migrations dir");
    for (file_name, sql) in MIGRATIONS {
        std::fs::write(root.join("migrations").join(file_name), sql).expect("write migration");
    }
    let mut csv = String::from("id,name\n");
    for tenant in &tenants {
        csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
    }
    std::fs::write(root.join("tenants.csv"), csv).expect("tenants file");
    std::fs::write(
        root.join("policy.yaml"),
        "fleet:\n  source: file\n  file: tenants.csv\n\
         database: neondb\nrole: neondb_owner\nsalt: schema-drift-test\n\
         waves:\n  - name: all\n    percent: 100\n    concurrency: 4\n    max_failures: 0\n",
    )
    .expect("write policy");
    let migrations_dir = root.join("migrations");
    migrate(&tenants[0], &migrations_dir, 2).await;
    for tenant in &tenants[1..] {
        migrate(tenant, &migrations_dir, 3).await;
    }

    let reference_url = fleet.database_url().expose().to_string();
    let clean = drift_schema(&fleet, root, Some(&reference_url)).await;
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&clean.stdout),
        String::from_utf8_lossy(&clean.stderr)
    );
    let document = stdout_json(&clean);
    assert_eq!(document["schema"]["compared"], 8, "{document:#}");
    assert_eq!(document["schema"]["differing"], 0, "{document:#}");
    assert!(
        !String::from_utf8_lossy(&clean.stderr).contains(fleet.database_url().expose()),
        "the reference URL leaked"
    );

    edit(&tenants[1], "DROP INDEX orders_account").await;
    edit(&tenants[2], "ALTER TABLE accounts ADD COLUMN nickname text").await;
    for tenant in &tenants[3..] {
        edit(tenant, "CREATE INDEX orders_note ON orders (note)").await;
    }
    // No --reference-url: the reference now comes from the cache.
    let drifted = drift_schema(&fleet, root, None).await;
    assert_eq!(
        drifted.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&drifted.stderr)
    );
    let document = stdout_json(&drifted);
    let schema = &document["schema"];
    assert_eq!(
        (schema["clean"].clone(), schema["differing"].clone()),
        (1.into(), 7.into())
    );
    let groups = schema["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{schema:#}");
    let ids = |group: &Value| -> Vec<String> {
        group["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .map(|tenant| tenant.as_str().expect("id").to_string())
            .collect()
    };
    let mut shared: Vec<String> = tenants[3..].iter().map(|t| t.project_id.clone()).collect();
    shared.sort();
    assert_eq!(ids(&groups[0]), shared);
    assert_eq!(
        groups[0]["differences"],
        serde_json::json!([{
            "kind": "index",
            "name": "public.orders_note",
            "expected": null,
            "found": "CREATE INDEX orders_note ON public.orders USING btree (note)",
        }])
    );
    let group_of = |tenant: &SeededTenant| {
        groups
            .iter()
            .find(|group| ids(group) == vec![tenant.project_id.clone()])
            .unwrap_or_else(|| panic!("no group of its own for {}: {schema:#}", tenant.name))
    };
    assert_eq!(
        group_of(&tenants[1])["differences"],
        serde_json::json!([{
            "kind": "index",
            "name": "public.orders_account",
            "expected": "CREATE INDEX orders_account ON public.orders USING btree (account_id)",
            "found": null,
        }])
    );
    assert_eq!(
        group_of(&tenants[2])["differences"],
        serde_json::json!([{
            "kind": "column",
            "name": "public.accounts.nickname",
            "expected": null,
            "found": "text",
        }])
    );
    // JSON names each tenant; the text groups list them as people know them.
    let entry = schema["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|entry| entry["tenant"] == tenants[2].project_id.as_str())
        .expect("the tenant with the extra column");
    assert_eq!(entry["tenant_name"], tenants[2].name.as_str());
    let text = drift_schema_as(&fleet, root, None, "text").await;
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    let flowing = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains(&format!(
            "- extra column public.accounts.nickname (text) {} ({})",
            tenants[2].name, tenants[2].project_id
        )),
        "{stdout}"
    );
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "{stdout}"
    );
    fleet.stop().await.expect("the fleet stops");
}

/// The policy's `schemas:` is what `drift --schema` compares: a hand edit in a schema the
/// policy leaves out is not a difference, and `--schemas` on the command line overrides it.
#[tokio::test]
async fn the_policy_chooses_the_schemas_compared() {
    let fleet = start_fleet().await;
    let tenants = fleet
        .seed(1, "SELECT 1;", "schemas")
        .await
        .expect("seeding");
    let temp = tempfile::tempdir().expect("a temporary directory");
    let root = temp.path();
    write_fleet(root, &tenants, "schemas: [public]\n");
    migrate(&tenants[0], &root.join("migrations"), 3).await;
    edit(
        &tenants[0],
        "CREATE SCHEMA scratch; CREATE TABLE scratch.notes (id int)",
    )
    .await;
    let reference_url = fleet.database_url().expose().to_string();
    let only_public = drift_schema(&fleet, root, Some(&reference_url)).await;
    assert_eq!(
        only_public.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&only_public.stderr)
    );
    assert_eq!(stdout_json(&only_public)["schema"]["clean"], 1);

    write_fleet(root, &tenants, "");
    let every_schema = drift_schema(&fleet, root, Some(&reference_url)).await;
    assert_eq!(every_schema.status.code(), Some(1));
    let document = stdout_json(&every_schema);
    let names: Vec<&str> = document["schema"]["groups"][0]["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|difference| difference["name"].as_str().expect("a name"))
        .collect();
    assert!(names.contains(&"scratch.notes"), "{document:#}");

    write_fleet(root, &tenants, "schemas: [neon_auth]\n");
    let refused = drift_schema(&fleet, root, Some(&reference_url)).await;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("policy.yaml:") && stderr.contains("never fingerprinted"),
        "{stderr}"
    );
    fleet.stop().await.expect("the fleet stops");
}

/// Migrations, a tenants file and a policy (with `extra` keys) for `tenants` in `root`.
fn write_fleet(root: &Path, tenants: &[SeededTenant], extra: &str) {
    std::fs::create_dir_all(root.join("migrations")).expect("migrations dir");
    for (file_name, sql) in MIGRATIONS {
        std::fs::write(root.join("migrations").join(file_name), sql).expect("write migration");
    }
    let mut csv = String::from("id,name\n");
    for tenant in tenants {
        csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
    }
    std::fs::write(root.join("tenants.csv"), csv).expect("tenants file");
    std::fs::write(
        root.join("policy.yaml"),
        format!(
            "fleet:\n  source: file\n  file: tenants.csv\n\
             database: neondb\nrole: neondb_owner\nsalt: schema-drift-test\n\
             validation: none\nrestore_point: backup_branch\n{extra}\
             waves:\n  - name: all\n    percent: 100\n    concurrency: 4\n    max_failures: 0\n"
        ),
    )
    .expect("write policy");
}

async fn versions(tenant: &SeededTenant) -> Vec<i32> {
    let client = schemafleet::pg::connect(&tenant.connection_uri, Duration::from_secs(10))
        .await
        .expect("the tenant accepts connections");
    client
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .expect("the history reads")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// With `verify_schema: true`, a tenant whose schema differs from the reference at its
/// version fails before anything is applied, the difference named; the others are migrated.
/// Without a reference to compare with, `apply` stops before touching any tenant.
#[tokio::test]
async fn verify_schema_refuses_a_drifted_tenant_before_applying() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(3, "SELECT 1;", "verify").await.expect("seeding");
    let temp = tempfile::tempdir().expect("a temporary directory");
    let root = temp.path();
    // V3's plain index is fine on the test's few rows; the lint would deny it.
    write_fleet(
        root,
        &tenants,
        "verify_schema: true\nschemas: [public]\n\
         lint:\n  warn: [require-concurrent-index-creation]\n",
    );
    for tenant in &tenants {
        migrate(tenant, &root.join("migrations"), 2).await;
    }
    edit(&tenants[1], "ALTER TABLE accounts ADD COLUMN nickname text").await;
    let plan = root.join("policy.plan.yaml");
    let planned = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .current_dir(root)
        .args(["plan", "--policy", "policy.yaml"])
        .env_remove("NEON_API_KEY")
        .output()
        .expect("the binary runs");
    let summary = String::from_utf8_lossy(&planned.stdout);
    assert_eq!(planned.status.code(), Some(0), "{summary}");
    let flowing = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("verify_schema: each tenant's schema (schemas public) must equal"),
        "the reviewer sees the check in the plan's summary: {summary}"
    );
    let plan_text = std::fs::read_to_string(&plan).expect("the plan");
    assert!(
        plan_text.contains("verify_schema: true") && plan_text.contains("- public"),
        "{plan_text}"
    );
    let apply = |reference_url: Option<String>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"));
        command
            .current_dir(root)
            .args([
                "apply",
                "policy.plan.yaml",
                "--no-progress",
                "--reference-cache",
                "cache",
                "--output",
                "json",
            ])
            .env("NEON_API_URL", fleet.api_url())
            .env("NEON_API_KEY", fleet.api_key().expose())
            .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
            .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
            .env_remove("SCHEMAFLEET_REFERENCE_URL")
            .env_remove("SCHEMAFLEET_LOG");
        if let Some(url) = reference_url {
            command.args(["--reference-url", &url]);
        }
        tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
    };

    let without_reference = apply(None).await.expect("the blocking task joins");
    assert_eq!(without_reference.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&without_reference.stderr);
    assert!(
        stderr.contains("verify_schema") && stderr.contains("--reference-url"),
        "{stderr}"
    );
    assert!(
        !root.join("policy.journal.jsonl").exists(),
        "apply opened its journal before it had the references"
    );

    let reference_url = fleet.database_url().expose().to_string();
    let applied = apply(Some(reference_url))
        .await
        .expect("the blocking task joins");
    let document = stdout_json(&applied);
    assert_eq!(applied.status.code(), Some(1), "{document:#}");
    assert_eq!(document["totals"]["applied"], 2, "{document:#}");
    let failures = document["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{document:#}");
    assert_eq!(failures[0]["tenant"], tenants[1].project_id.as_str());
    assert_eq!(failures[0]["phase"], "probe");
    let error = failures[0]["error"].as_str().expect("an error");
    assert!(
        error.contains("differs from the reference at V2")
            && error.contains("extra column public.accounts.nickname (text)"),
        "{error}"
    );
    assert_eq!(
        versions(&tenants[1]).await,
        [1, 2],
        "the drifted tenant was migrated"
    );
    assert_eq!(versions(&tenants[0]).await, [1, 2, 3]);
    assert_eq!(versions(&tenants[2]).await, [1, 2, 3]);
    fleet.stop().await.expect("the fleet stops");
}

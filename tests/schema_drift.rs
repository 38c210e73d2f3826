//! `schemafleet drift --schema`, end to end: the binary against the local emulator over a real
//! PostgreSQL; the reference is built on a throwaway database of the emulator's own server,
//! tenants are migrated by the real refinery runner and then hand-edited.

mod common;

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
            "json",
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
    fleet.stop().await.expect("the fleet stops");
}

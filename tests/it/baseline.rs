//! `schemafleet baseline`, end to end: tenants migrated to V2 with plain SQL (no history
//! table) get refinery-identical rows for V1..V2, after which `apply` runs only V3; a tenant
//! whose schema matches no version is listed with the difference and untouched; a tenant
//! refinery migrated needs no baseline; another tool's history table is named; a crash between
//! baseline's commit and its journal record is listed by `status` and journaled by the next
//! `baseline --yes`.
//!
//! The refinery and sqlx tenants are migrated by the code their CLIs run: refinery's `Runner`
//! over files loaded as `refinery migrate` loads them, and sqlx's `Migrator` (the
//! `_sqlx_migrations` bookkeeping of `sqlx migrate run`). Installing the CLIs themselves is a
//! long compile, so `scripts/check-real-clis.sh` runs them by hand.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{start_fleet, stdout_json};
use schemafleet::emulator::{LocalFleet, SeededTenant};
use serde_json::Value;

const MIGRATIONS: [(&str, &str); 3] = [
    (
        "V1__accounts.sql",
        "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL DEFAULT '');\n",
    ),
    (
        "V2__orders.sql",
        "CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts);\n",
    ),
    (
        "V3__index_orders.sql",
        "-- squawk-ignore require-concurrent-index-creation -- a test table of a few rows\nCREATE INDEX orders_account ON orders (account_id);\n",
    ),
];

async fn sql(tenant: &SeededTenant, sql: &str) -> tokio_postgres::Client {
    let client = schemafleet::pg::connect(&tenant.connection_uri, Duration::from_secs(10))
        .await
        .expect("the tenant accepts connections");
    client.batch_execute(sql).await.expect("the SQL runs");
    client
}

async fn history(tenant: &SeededTenant) -> Vec<(i32, String, String)> {
    let client = sql(tenant, "SELECT 1").await;
    match client
        .query(
            "SELECT version, name, checksum FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What `sqlx migrate run --source DIR` does: sqlx's migrator over files named the way sqlx
/// names them (`1_accounts.sql`), through the proxy like any client.
async fn migrate_with_sqlx(tenant: &SeededTenant, root: &Path, migrations: &[(&str, &str)]) {
    use sqlx::Connection;
    let dir = root.join("sqlx-migrations");
    std::fs::create_dir_all(&dir).expect("sqlx migrations dir");
    for (version, (file_name, body)) in (1..).zip(migrations) {
        let description = file_name
            .split_once("__")
            .and_then(|(_, rest)| rest.strip_suffix(".sql"))
            .expect("a refinery file name");
        std::fs::write(dir.join(format!("{version}_{description}.sql")), body)
            .expect("write an sqlx migration");
    }
    let mut connection = sqlx::PgConnection::connect(tenant.connection_uri.expose())
        .await
        .expect("sqlx connects through the proxy");
    sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .expect("sqlx reads its migrations")
        .run(&mut connection)
        .await
        .expect("sqlx migrates");
    connection.close().await.expect("sqlx closes");
}

/// What `refinery migrate -p DIR` does: its files loaded by refinery, run by refinery's own
/// `Runner` (refinery_cli runs the same code on the synchronous `postgres` client).
async fn migrate_with_refinery_runner(tenant: &SeededTenant, dir: &Path) {
    let migrations = refinery::load_sql_migrations(dir).expect("refinery loads the files");
    let mut client = schemafleet::pg::connect(&tenant.connection_uri, Duration::from_secs(10))
        .await
        .expect("the tenant accepts connections");
    refinery::Runner::new(&migrations)
        .run_async(&mut client)
        .await
        .expect("refinery migrates");
}

async fn run(fleet: &LocalFleet, root: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"));
    command
        .current_dir(root)
        .args(args)
        .env("NEON_API_URL", fleet.api_url())
        .env("NEON_API_KEY", fleet.api_key().expose())
        .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
        .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
        .env("SCHEMAFLEET_REFERENCE_CACHE", root.join("cache"))
        .env("SCHEMAFLEET_REFERENCE_URL", fleet.database_url().expose())
        .env_remove("SCHEMAFLEET_LOG");
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the blocking task joins")
}

fn write_plan(root: &Path, name: &str, tenants: &[&SeededTenant]) -> String {
    let mut csv = String::from("id,name\n");
    for tenant in tenants {
        csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
    }
    std::fs::write(root.join(format!("{name}.csv")), csv).expect("tenants file");
    std::fs::write(
        root.join(format!("{name}.yaml")),
        format!(
            "fleet:\n  source: file\n  file: {name}.csv\n\
             database: neondb\nrole: neondb_owner\nsalt: baseline-test\nvalidation: none\n\
             restore_point: backup_branch\n\
             waves:\n  - name: all\n    percent: 100\n    concurrency: 4\n    max_failures: 0\n"
        ),
    )
    .expect("write policy");
    let plan = root.join(format!("{name}.plan.yaml"));
    schemafleet::plan::plan_from_tenants_file(
        &root.join(format!("{name}.yaml")),
        &root.join("migrations"),
        None,
        Some(&plan),
    )
    .expect("a plan is written");
    plan.to_str().expect("utf-8").to_string()
}

fn entry<'a>(document: &'a Value, tenant: &SeededTenant) -> &'a Value {
    document["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|entry| entry["tenant"] == tenant.project_id.as_str())
        .unwrap_or_else(|| panic!("{} missing: {document:#}", tenant.name))
}

#[tokio::test]
async fn baseline_adopts_matching_tenants_and_leaves_the_rest() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(5, "SELECT 1;", "adopt").await.expect("seeding");
    let temp = tempfile::tempdir().expect("a temporary directory");
    let root = temp.path();
    std::fs::create_dir(root.join("migrations")).expect("migrations dir");
    for (file_name, body) in MIGRATIONS {
        std::fs::write(root.join("migrations").join(file_name), body).expect("write migration");
    }
    let v1_v2 = format!("{}{}", MIGRATIONS[0].1, MIGRATIONS[1].1);
    // tenants[0]: V2 by hand; [1]: V2 by hand and an extra column; [2]: V2 by sqlx; [3]: V3
    // by refinery; [4]: V2 by hand, adopted by a baseline that "crashes" (below).
    sql(&tenants[0], &v1_v2).await;
    sql(&tenants[4], &v1_v2).await;
    sql(
        &tenants[1],
        &format!("{v1_v2}ALTER TABLE accounts ADD COLUMN nickname text;"),
    )
    .await;
    migrate_with_sqlx(&tenants[2], root, &MIGRATIONS[..2]).await;
    migrate_with_refinery_runner(&tenants[3], &root.join("migrations")).await;
    let all: Vec<&SeededTenant> = tenants[..4].iter().collect();
    let plan = write_plan(root, "all", &all);

    let dry = run(&fleet, root, &["baseline", &plan, "--output", "json"]).await;
    assert_eq!(
        dry.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let document = stdout_json(&dry);
    assert_eq!(entry(&document, &tenants[0])["state"], "matched");
    assert_eq!(entry(&document, &tenants[0])["version"], 2);
    assert!(history(&tenants[0]).await.is_empty(), "a dry run wrote");

    let written = run(
        &fleet,
        root,
        &["baseline", &plan, "--yes", "--output", "json"],
    )
    .await;
    assert_eq!(
        written.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let document = stdout_json(&written);
    assert_eq!(entry(&document, &tenants[0])["state"], "recorded");
    let unmatched = entry(&document, &tenants[1]);
    assert_eq!(unmatched["state"], "unmatched", "{document:#}");
    assert_eq!(unmatched["version"], 2);
    assert_eq!(
        unmatched["differences"],
        serde_json::json!([{"kind": "column", "name": "public.accounts.nickname", "expected": null, "found": "text"}])
    );
    let sqlx = entry(&document, &tenants[2]);
    assert_eq!(sqlx["state"], "recorded");
    assert_eq!(sqlx["tools"][0]["tool"], "sqlx");
    assert_eq!(sqlx["tools"][0]["migrations"], 2);
    let refinery = entry(&document, &tenants[3]);
    assert_eq!(refinery["state"], "has_history");
    assert_eq!(refinery["tools"][0]["tool"], "refinery");

    // The journal beside the plan records each tenant baseline wrote, and `status` shows them
    // by name.
    let journal = std::fs::read_to_string(root.join("all.journal.jsonl")).expect("a journal");
    let mut recorded: Vec<Value> = journal
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a journal record"))
        .filter(|record| record["event"] == "baseline_recorded")
        .collect();
    recorded.sort_by_key(|record| record["tenant"].as_str().unwrap_or_default().to_string());
    let mut expected_ids = vec![tenants[0].project_id.clone(), tenants[2].project_id.clone()];
    expected_ids.sort();
    let journaled_ids: Vec<&str> = recorded
        .iter()
        .map(|record| record["tenant"].as_str().expect("a tenant"))
        .collect();
    assert_eq!(journaled_ids, expected_ids, "{journal}");
    for record in &recorded {
        assert_eq!(record["versions"], serde_json::json!([1, 2]), "{journal}");
    }
    let sqlx_record = recorded
        .iter()
        .find(|record| record["tenant"] == tenants[2].project_id.as_str())
        .expect("the sqlx tenant's record");
    assert_eq!(
        sqlx_record["tools"],
        serde_json::json!(["sqlx: 2 migrations"])
    );
    let status = run(&fleet, root, &["status", &plan]).await;
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{status_text}");
    let flowing = status_text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("baseline recorded V1, V2 on 2 tenants:")
            && flowing.contains(&format!("{} ({})", tenants[0].name, tenants[0].project_id)),
        "{status_text}"
    );
    let status = run(&fleet, root, &["status", &plan, "--output", "json"]).await;
    let status_json = stdout_json(&status);
    assert_eq!(
        status_json["baseline"].as_array().map(Vec::len),
        Some(2),
        "{status_json:#}"
    );
    // A second look names the tenants and finds nothing left to record.
    let again = run(&fleet, root, &["baseline", &plan]).await;
    let again_text = String::from_utf8_lossy(&again.stdout);
    assert!(
        again_text.contains(&format!(
            "{} ({}): has history at V2",
            tenants[0].name, tenants[0].project_id
        )),
        "{again_text}"
    );

    // sqlx's own bookkeeping is read, never written: its two rows stand as sqlx wrote them.
    let sqlx_rows: Vec<(i64, String, bool)> = sql(&tenants[2], "SELECT 1")
        .await
        .query(
            "SELECT version, description, success FROM _sqlx_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("sqlx's table")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        sqlx_rows,
        [
            (1, "accounts".to_string(), true),
            (2, "orders".to_string(), true)
        ]
    );

    // Refinery-identical rows: the same names and checksums refinery wrote itself.
    let by_refinery = history(&tenants[3]).await;
    assert_eq!(history(&tenants[0]).await, by_refinery[..2].to_vec());
    assert!(
        history(&tenants[1]).await.is_empty(),
        "an unmatched tenant was touched"
    );

    // A plan of tenants refinery migrated needs no reference: no server, an empty cache.
    let migrated = write_plan(root, "migrated", &[&tenants[3]]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"));
    command
        .current_dir(root)
        .args(["baseline", &migrated, "--output", "json"])
        .env("NEON_API_URL", fleet.api_url())
        .env("NEON_API_KEY", fleet.api_key().expose())
        .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
        .env("SCHEMAFLEET_REFERENCE_CACHE", root.join("empty-cache"))
        .env_remove("SCHEMAFLEET_REFERENCE_URL")
        .env_remove("SCHEMAFLEET_LOG");
    let no_reference = tokio::task::spawn_blocking(move || command.output().expect("runs"))
        .await
        .expect("the blocking task joins");
    assert_eq!(
        no_reference.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&no_reference.stderr)
    );
    assert_eq!(
        entry(&stdout_json(&no_reference), &tenants[3])["state"],
        "has_history"
    );

    let adopted = write_plan(root, "adopted", &[&tenants[0], &tenants[2]]);
    let applied = run(
        &fleet,
        root,
        &["apply", &adopted, "--no-progress", "--output", "json"],
    )
    .await;
    assert_eq!(
        applied.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(history(&tenants[0]).await, by_refinery);
    assert_eq!(history(&tenants[2]).await, by_refinery);

    crash_after_the_commit_before_the_record(&fleet, root, &tenants[4], &by_refinery[..2]).await;
    fleet.stop().await.expect("the fleet stops");
}

/// The journal as a crash right after baseline's commit leaves it: `baseline_started`, no
/// `baseline_recorded`. `status` names the tenant, `drift` reads its history (V2, V3
/// pending), a dry run says whose rows they are, and `--yes` journals them.
async fn crash_after_the_commit_before_the_record(
    fleet: &LocalFleet,
    root: &Path,
    tenant: &SeededTenant,
    expected_rows: &[(i32, String, String)],
) {
    let plan = write_plan(root, "crashed", &[tenant]);
    let written = run(fleet, root, &["baseline", &plan, "--yes"]).await;
    assert_eq!(written.status.code(), Some(0), "{written:?}");
    assert_eq!(history(tenant).await, expected_rows);
    let journal_path = root.join("crashed.journal.jsonl");
    let journal = std::fs::read_to_string(&journal_path).expect("a journal");
    let events: Vec<String> = journal
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a record")["event"].to_string())
        .collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("\"baseline_recorded\""),
        "{journal}"
    );
    assert!(
        events.contains(&"\"baseline_started\"".to_string()),
        "{journal}"
    );
    let cut = journal
        .trim_end_matches('\n')
        .rfind('\n')
        .map_or(0, |end| end + 1);
    std::fs::write(&journal_path, &journal[..cut]).expect("cut the journal");

    let status = run(fleet, root, &["status", &plan]).await;
    let status_text = String::from_utf8_lossy(&status.stdout);
    let flowing = status_text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(status.status.code(), Some(0), "{status_text}");
    assert!(
        flowing.contains(&format!(
            "baseline started on 1 tenant without a record of its outcome (stopped before it \
             journaled the commit?): {} ({});",
            tenant.name, tenant.project_id
        )) && !flowing.contains("baseline recorded"),
        "{status_text}"
    );
    let status_json = stdout_json(&run(fleet, root, &["status", &plan, "--output", "json"]).await);
    assert_eq!(
        status_json["baseline_unconfirmed"],
        serde_json::json!([{"tenant": tenant.project_id, "tenant_name": tenant.name, "versions": [1, 2]}])
    );

    let drift = run(fleet, root, &["drift", "--plan", &plan, "--output", "json"]).await;
    let drift_json = stdout_json(&drift);
    let drifted = &drift_json["tenants"][0];
    assert_eq!(
        (&drifted["version"], &drifted["state"], &drifted["pending"]),
        (
            &serde_json::json!(2),
            &serde_json::json!("behind"),
            &serde_json::json!([3])
        ),
        "{drift_json:#}"
    );

    let dry = run(fleet, root, &["baseline", &plan, "--output", "json"]).await;
    let dry_entry = entry(&stdout_json(&dry), tenant).clone();
    assert_eq!(
        (&dry_entry["state"], &dry_entry["unjournaled"]),
        (&serde_json::json!("has_history"), &serde_json::json!(true)),
        "{dry_entry:#}"
    );
    let journaled = run(
        fleet,
        root,
        &["baseline", &plan, "--yes", "--output", "json"],
    )
    .await;
    assert_eq!(journaled.status.code(), Some(0), "{journaled:?}");
    let journaled_entry = entry(&stdout_json(&journaled), tenant).clone();
    assert_eq!(journaled_entry["state"], "recorded", "{journaled_entry:#}");
    assert_eq!(
        history(tenant).await,
        expected_rows,
        "rows were written twice"
    );
    let status_json = stdout_json(&run(fleet, root, &["status", &plan, "--output", "json"]).await);
    assert_eq!(status_json["baseline_unconfirmed"], serde_json::json!([]));
    assert_eq!(
        status_json["baseline"][0]["versions"],
        serde_json::json!([1, 2])
    );
}

//! The lock footprint each tenant's validation branch measures (issue 15): a tenant whose big
//! table a migration rewrites for longer than `max_lock_hold` fails on its branch with the
//! measured figure while small tenants pass, its main untouched; `status` names the worst
//! holds per wave; and every heavy lock measured on the test release was predicted by the lint.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;

use support::{TestFleet, connect, history, json, repo_migrations, text};

/// Rows that make the big tenant's rewrite of `orders` take well over the lowered budget here
/// (about a second on an idle 2-core machine), and keep the test short.
const BIG_TENANT_ROWS: i64 = 400_000;
/// The lowered budget: a small tenant's rewrite of four rows holds its lock for milliseconds.
const MAX_LOCK_HOLD: &str = "200ms";

/// The repository's release (V1–V4) plus a migration that rewrites `orders`.
fn release(fleet: &TestFleet) -> std::path::PathBuf {
    let dir = fleet.path("migrations");
    std::fs::create_dir_all(&dir).expect("migrations directory");
    for entry in std::fs::read_dir(repo_migrations()).expect("the repo's migrations") {
        let entry = entry.expect("a migration");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy a migration");
    }
    std::fs::write(
        dir.join("V5__widen_order_totals.sql"),
        "-- squawk-ignore changing-column-type -- measured per tenant on its branch\nALTER TABLE orders ALTER COLUMN total_cents TYPE numeric(20, 0);\n",
    )
    .expect("write V5");
    dir
}

fn journal_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read the journal")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lock_hold_fails_the_big_tenant_on_its_branch_and_small_ones_pass() {
    let fleet = TestFleet::start(3).await;
    let big = &fleet.tenants[0];
    let big_uri = big.connection_uri.expose();
    connect(big_uri)
        .await
        .batch_execute(&format!(
            "INSERT INTO orders (account_id, total_cents, status) \
             SELECT 1 + n % 3, n, 'paid' FROM generate_series(1, {BIG_TENANT_ROWS}) AS n; \
             ANALYZE orders"
        ))
        .await
        .expect("seed the big tenant");
    let migrations = release(&fleet);
    fleet.write_policy(&format!(
        "validation: branch\nsalt: test\nmax_lock_hold: {MAX_LOCK_HOLD}\n\
         waves:\n  - name: all\n    percent: 100\n    concurrency: 3\n    max_failures: 3\n"
    ));
    let plan = fleet.plan(&migrations);
    let plan_arg = plan.to_str().expect("utf-8");
    let output = fleet.run(&["apply", plan_arg, "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 2, "{report:#}");
    assert_eq!(report["totals"]["failed"], 1, "{report:#}");

    // The big tenant failed on its branch, with the measured figure.
    let failure = &report["failures"][0];
    assert_eq!(failure["tenant"], big.project_id.as_str(), "{report:#}");
    assert_eq!(failure["phase"], "validate", "{report:#}");
    assert_eq!(failure["migration"], "V5__widen_order_totals", "{report:#}");
    let message = failure["error"].as_str().expect("a message");
    eprintln!("the big tenant's failure: {message}");
    assert!(
        message.starts_with("V5__widen_order_totals rewrote public.orders (")
            && message.contains(" MB) under ACCESS EXCLUSIVE for ")
            && message.ends_with(
                " on its branch; main would block writes that long (max_lock_hold 200 ms)"
            ),
        "{message}"
    );

    let next = report["failure_groups"][0]["next_step"]
        .as_str()
        .expect("a next step");
    assert!(
        next.contains("main was not touched") && next.contains("max_lock_hold"),
        "{next}"
    );

    // Its main is untouched: no history, the column still bigint, every row there.
    assert!(
        history(big_uri).await.is_empty(),
        "big tenant's main changed"
    );
    let main = connect(big_uri).await;
    let row = main
        .query_one(
            "SELECT data_type, (SELECT count(*) FROM orders) \
             FROM information_schema.columns \
             WHERE table_name = 'orders' AND column_name = 'total_cents'",
            &[],
        )
        .await
        .expect("read main's schema");
    assert_eq!(row.get::<_, String>(0), "bigint");
    assert_eq!(row.get::<_, i64>(1), BIG_TENANT_ROWS + 4);

    // The small tenants passed, and their journal says what their branches held.
    let journal = fleet.path("policy.journal.jsonl");
    let records = journal_records(&journal);
    let validated: Vec<&serde_json::Value> = records
        .iter()
        .filter(|record| record["event"] == "validated")
        .collect();
    assert_eq!(validated.len(), 2, "{records:#?}");
    for record in &validated {
        assert_ne!(record["tenant"], big.project_id.as_str());
        let holds = record["lock_holds"].as_array().expect("lock holds");
        let rewrite = holds
            .iter()
            .find(|hold| hold["migration"] == "V5__widen_order_totals")
            .unwrap_or_else(|| panic!("V5's hold is measured: {record:#}"));
        assert_eq!(rewrite["table"], "public.orders", "{record:#}");
        assert_eq!(rewrite["mode"], "ACCESS EXCLUSIVE", "{record:#}");
        assert_eq!(rewrite["rewritten"], true, "{record:#}");
        assert!(rewrite["held_ms"].as_u64().expect("ms") < 200, "{record:#}");
    }

    // No silent heavy lock: each migration the branches saw take ACCESS EXCLUSIVE or SHARE
    // on an existing table, or rewrite one, has a finding or an acknowledged one in the plan.
    let plan_value: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&plan).expect("plan")).expect("yaml");
    let mut linted: BTreeSet<String> = BTreeSet::new();
    for list in ["findings", "acknowledged"] {
        for entry in plan_value["lint"][list].as_sequence().into_iter().flatten() {
            let file = entry["file"].as_str().expect("a file");
            linted.insert(file.trim_end_matches(".sql").to_string());
        }
    }
    let mut heavy: BTreeSet<String> = BTreeSet::new();
    for record in &validated {
        for hold in record["lock_holds"].as_array().into_iter().flatten() {
            if ["ACCESS EXCLUSIVE", "SHARE"].contains(&hold["mode"].as_str().unwrap_or(""))
                || hold["rewritten"] == true
            {
                heavy.insert(hold["migration"].as_str().expect("migration").to_string());
            }
        }
    }
    heavy.insert(
        failure["migration"]
            .as_str()
            .expect("migration")
            .to_string(),
    );
    assert!(
        heavy.len() >= 3,
        "the release takes heavy locks in V1, V2 and V5: {heavy:?}"
    );
    for migration in &heavy {
        assert!(
            linted.contains(migration),
            "{migration} took a heavy lock on its branch but the lint said nothing: {linted:?}"
        );
    }

    // `status` gives the worst holds of the wave, the failing tenant first.
    let output = fleet.run(&["status", plan_arg, "--output", "json"]);
    let status = json(&output);
    let holds = status["waves"][0]["lock_holds"]
        .as_array()
        .unwrap_or_else(|| panic!("no lock holds: {status:#}"));
    assert_eq!(holds.len(), 3, "{status:#}");
    assert_eq!(holds[0]["tenant"], big.project_id.as_str(), "{status:#}");
    assert_eq!(holds[0]["over_budget"], true, "{status:#}");
    assert!(
        holds[0]["held_ms"].as_u64().expect("ms") > 200,
        "{status:#}"
    );
    assert_eq!(holds[1]["over_budget"], false, "{status:#}");
    let output = fleet.run(&["status", plan_arg]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    let flowing = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("longest write-blocking locks on validation branches")
            && flowing.contains(&format!(
                "all: {} ({}): V5__widen_order_totals rewrote public.orders",
                big.name, big.project_id
            ))
            && flowing.contains("(over max_lock_hold: failed)"),
        "{}",
        text(&output)
    );
    fleet.fleet.stop().await.expect("stop");
}

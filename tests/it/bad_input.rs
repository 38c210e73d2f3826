//! Bad input stops the binary before it changes anything: exit code 2, an error naming the
//! file / line / field / tenant, no file written, no journal entry, no API mutation.
//!
//! Cases share one local fleet per test to stay fast; every case is checked and all failing
//! cases are reported together.

use crate::fault_support;
use crate::support;

use std::path::PathBuf;
use std::process::Output;

use fault_support::{
    Api, copy_repo_migrations, files_under as tree, journal_records, one_wave, run_with_env,
};
use support::{TestFleet, history, json, repo_migrations, text};

/// Collects the cases that did not behave, so one run reports all of them.
#[derive(Default)]
struct Verdicts {
    problems: Vec<String>,
}

impl Verdicts {
    /// Exit 2, stderr holding every `expected` text, no file under `dir` written or changed,
    /// and at most `max_requests` API requests (reads only: no branch changed).
    fn check(
        &mut self,
        case: &str,
        fleet: &TestFleet,
        run: impl FnOnce() -> Output,
        expected: &[&str],
        max_requests: u64,
    ) {
        let files_before = tree(fleet.dir.path());
        let stats_before = fleet.fleet.stats();
        let started = std::time::Instant::now();
        let output = run();
        let elapsed = started.elapsed();
        let stats_after = fleet.fleet.stats();
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "[{case}] exit {:?} after {elapsed:?}: {}",
            output.status.code(),
            stderr.trim()
        );
        if output.status.code() != Some(2) {
            self.problems
                .push(format!("{case}: exit code is not 2\n{}", text(&output)));
        }
        for needle in expected {
            if !stderr.contains(needle) {
                self.problems.push(format!(
                    "{case}: the error does not name `{needle}`\n{}",
                    text(&output)
                ));
            }
        }
        if tree(fleet.dir.path()) != files_before {
            let after = tree(fleet.dir.path());
            let changed: Vec<&PathBuf> = after
                .keys()
                .filter(|path| files_before.get(*path) != after.get(*path))
                .chain(
                    files_before
                        .keys()
                        .filter(|path| !after.contains_key(*path)),
                )
                .collect();
            self.problems
                .push(format!("{case}: files written or changed: {changed:?}"));
        }
        let requests = stats_after.requests - stats_before.requests;
        if requests > max_requests {
            self.problems.push(format!(
                "{case}: {requests} API requests (at most {max_requests} allowed): {stats_after:?}"
            ));
        }
    }

    fn assert_none(self) {
        assert!(
            self.problems.is_empty(),
            "{} case(s) misbehaved:\n\n{}",
            self.problems.len(),
            self.problems.join("\n\n")
        );
    }
}

/// A case directory with a policy (fleet from its own tenants file), tenants and migrations.
struct Case {
    dir: PathBuf,
}

impl Case {
    fn new(fleet: &TestFleet, name: &str, policy_body: &str) -> Case {
        let dir = fleet.path(name);
        copy_repo_migrations(&dir.join("migrations"));
        let mut csv = String::from("id,name\n");
        for tenant in &fleet.tenants {
            csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
        }
        std::fs::write(dir.join("tenants.csv"), csv).expect("write tenants");
        std::fs::write(
            dir.join("policy.yaml"),
            format!(
                "fleet:\n  source: file\n  file: tenants.csv\ndatabase: neondb\nrole: neondb_owner\n{policy_body}"
            ),
        )
        .expect("write policy");
        Case { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8").to_string()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).expect("write case file");
    }

    fn plan_args(&self) -> Vec<String> {
        vec![
            "plan".into(),
            "--policy".into(),
            self.path("policy.yaml"),
            "--migrations".into(),
            self.path("migrations"),
            "--out".into(),
            self.path("policy.plan.yaml"),
        ]
    }
}

fn run_plan(fleet: &TestFleet, case: &Case) -> Output {
    let args = case.plan_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet.run(&args)
}

const WAVES: &str = "validation: branch\nrestore_point: branch_point\nsalt: bad\nwaves:\n  - name: canary\n    percent: 50\n    concurrency: 2\n  - name: rest\n    percent: 100\n    concurrency: 4\n";

/// Migrations, policies and tenants files that `plan` must refuse, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_migrations_policies_and_tenants_files_are_refused_by_plan() {
    let fleet = TestFleet::start(3).await;
    let mut verdicts = Verdicts::default();

    let case = Case::new(&fleet, "badname", WAVES);
    case.write(
        "migrations/V5_add_note.sql",
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    );
    verdicts.check(
        "malformed migration name",
        &fleet,
        || run_plan(&fleet, &case),
        &["V5_add_note.sql"],
        0,
    );

    let case = Case::new(&fleet, "emptymigration", WAVES);
    case.write("migrations/V5__nothing.sql", "-- to do\n");
    verdicts.check(
        "empty migration",
        &fleet,
        || run_plan(&fleet, &case),
        &["V5__nothing.sql", "empty"],
        0,
    );

    let case = Case::new(&fleet, "duplicate", WAVES);
    case.write("migrations/V2__other_check.sql", "SELECT 1;\n");
    verdicts.check(
        "duplicate migration version",
        &fleet,
        || run_plan(&fleet, &case),
        &["V2__orders_status_check.sql", "V2__other_check.sql"],
        0,
    );

    let case = Case::new(
        &fleet,
        "unknownkey",
        &WAVES.replace("salt: bad\n", "salt: bad\nvaldation: none\n"),
    );
    verdicts.check(
        "policy with an unknown key",
        &fleet,
        || run_plan(&fleet, &case),
        &["policy.yaml:9", "valdation"],
        0,
    );

    let case = Case::new(
        &fleet,
        "unknownwavekey",
        &WAVES.replace("concurrency: 2\n", "concurrency: 2\n    max_failure: 1\n"),
    );
    verdicts.check(
        "policy with an unknown wave key",
        &fleet,
        || run_plan(&fleet, &case),
        &["policy.yaml:", "max_failure"],
        0,
    );

    let case = Case::new(
        &fleet,
        "wrongtype",
        &WAVES.replace("concurrency: 2", "concurrency: many"),
    );
    verdicts.check(
        "policy with a wrong type",
        &fleet,
        || run_plan(&fleet, &case),
        &["policy.yaml:12", "concurrency"],
        0,
    );

    let case = Case::new(
        &fleet,
        "percent",
        &WAVES.replace("percent: 100", "percent: 150"),
    );
    verdicts.check(
        "percent over 100",
        &fleet,
        || run_plan(&fleet, &case),
        &["policy.yaml:", "percent", "150"],
        0,
    );

    let case = Case::new(&fleet, "emptyfleet", WAVES);
    case.write("tenants.csv", "id,name\n");
    verdicts.check(
        "empty fleet",
        &fleet,
        || run_plan(&fleet, &case),
        &["tenants.csv"],
        0,
    );

    let case = Case::new(&fleet, "duptenant", WAVES);
    let tenant = &fleet.tenants[1];
    case.write(
        "tenants.csv",
        &format!(
            "id,name\n{},{}\n{},{}\n{},again\n",
            fleet.tenants[0].project_id,
            fleet.tenants[0].name,
            tenant.project_id,
            tenant.name,
            tenant.project_id
        ),
    );
    verdicts.check(
        "tenants file with a duplicate",
        &fleet,
        || run_plan(&fleet, &case),
        &["tenants.csv", &tenant.project_id],
        0,
    );

    let case = Case::new(&fleet, "unknowncolumn", WAVES);
    case.write(
        "tenants.csv",
        &format!("id,name,tier\n{},a,gold\n", fleet.tenants[0].project_id),
    );
    verdicts.check(
        "tenants file with an unknown column",
        &fleet,
        || run_plan(&fleet, &case),
        &["tenants.csv", "tier"],
        0,
    );

    verdicts.assert_none();
    fleet.fleet.stop().await.expect("stop");
}

/// A plan edited by hand or cut short, migrations changed since planning, and a wrong, dead,
/// missing or rejected API endpoint or key: `apply` refuses before its journal exists and
/// before any mutation; a rejected key costs exactly one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_and_api_settings_are_refused_by_apply() {
    let fleet = TestFleet::start(3).await;
    fleet.write_policy(&one_wave(2));
    let plan = fleet.plan(&repo_migrations());
    let plan_text = std::fs::read_to_string(&plan).expect("read plan");
    let journal = fleet.path("policy.journal.jsonl");
    let mut verdicts = Verdicts::default();
    let apply = |plan: &str| fleet.run(&["apply", plan]);

    // Edited by hand: one more tenant of concurrency.
    std::fs::write(
        fleet.path("edited.plan.yaml"),
        plan_text.replace("concurrency: 2", "concurrency: 20"),
    )
    .expect("write edited plan");
    assert_ne!(
        std::fs::read_to_string(fleet.path("edited.plan.yaml")).expect("read"),
        plan_text,
        "the edit must change the plan"
    );
    verdicts.check(
        "plan edited by hand",
        &fleet,
        || apply("edited.plan.yaml"),
        &["edited.plan.yaml", "edited"],
        0,
    );

    // Edited by hand: a tenant swapped for another project.
    std::fs::write(
        fleet.path("swapped.plan.yaml"),
        plan_text.replace(&fleet.tenants[0].project_id, "project-not-in-the-fleet"),
    )
    .expect("write swapped plan");
    verdicts.check(
        "plan with a tenant swapped by hand",
        &fleet,
        || apply("swapped.plan.yaml"),
        &["swapped.plan.yaml"],
        0,
    );

    std::fs::write(
        fleet.path("truncated.plan.yaml"),
        &plan_text[..plan_text.len() / 2],
    )
    .expect("write truncated plan");
    verdicts.check(
        "truncated plan",
        &fleet,
        || apply("truncated.plan.yaml"),
        &["truncated.plan.yaml"],
        0,
    );

    // A migration changed after planning (the plan pins the files' hashes).
    let changed = fleet.path("changed-migrations");
    copy_repo_migrations(&changed);
    let v2 = changed.join("V2__orders_status_check.sql");
    let mut sql = std::fs::read_to_string(&v2).expect("read V2");
    sql.push_str("-- tightened later\n");
    std::fs::write(&v2, sql).expect("edit V2");
    let plan_path = plan.to_str().expect("utf-8").to_string();
    let changed_path = changed.to_str().expect("utf-8").to_string();
    verdicts.check(
        "migration changed after planning",
        &fleet,
        || fleet.run(&["apply", &plan_path, "--migrations", &changed_path]),
        &["V2", "policy.plan.yaml", "no longer matches"],
        0,
    );

    verdicts.check(
        "unreachable NEON_API_URL",
        &fleet,
        || {
            run_with_env(
                &fleet,
                &["apply", &plan_path],
                &[("NEON_API_URL", Some("http://127.0.0.1:9/api/v2"))],
            )
        },
        &["http://127.0.0.1:9/api/v2"],
        0,
    );
    let wrong_url = fleet.fleet.api_url().replace("/api/v2", "/api/v1");
    verdicts.check(
        "wrong NEON_API_URL (a server that is not the Neon API)",
        &fleet,
        || {
            run_with_env(
                &fleet,
                &["apply", &plan_path],
                &[("NEON_API_URL", Some(&wrong_url))],
            )
        },
        &[&wrong_url],
        2,
    );
    verdicts.check(
        "missing NEON_API_KEY",
        &fleet,
        || run_with_env(&fleet, &["apply", &plan_path], &[("NEON_API_KEY", None)]),
        &["NEON_API_KEY"],
        0,
    );
    let before = fleet.fleet.stats();
    verdicts.check(
        "rejected NEON_API_KEY",
        &fleet,
        || {
            run_with_env(
                &fleet,
                &["apply", &plan_path],
                &[("NEON_API_KEY", Some("napi_wrong_key"))],
            )
        },
        &["401", "NEON_API_KEY"],
        1,
    );
    let after = fleet.fleet.stats();
    assert_eq!(
        after.by_status.get(&401).copied().unwrap_or(0)
            - before.by_status.get(&401).copied().unwrap_or(0),
        1,
        "a rejected key is sent once and never retried: {after:?}"
    );

    if journal.exists() {
        verdicts
            .problems
            .push("a journal exists after refused runs".to_string());
    }
    let api = Api::new(&fleet);
    for tenant in &fleet.tenants {
        let branches = api.branches(&tenant.project_id).await.len();
        if branches != 1 {
            verdicts.problems.push(format!(
                "{}: {branches} branches after refused runs",
                tenant.name
            ));
        }
        assert!(
            history(tenant.connection_uri.expose()).await.is_empty(),
            "{}",
            tenant.name
        );
    }
    verdicts.assert_none();
    fleet.fleet.stop().await.expect("stop");
}

/// A migration edited after it was applied: the old plan is refused (exit 2, nothing journaled);
/// a new plan finds every tenant `diverged` and leaves it alone; `drift` reports the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_edited_after_it_was_applied_is_diverged_and_drift() {
    let fleet = TestFleet::start(3).await;
    fleet.write_policy(&one_wave(3));
    let migrations = fleet.path("migrations");
    copy_repo_migrations(&migrations);
    let plan = fleet.plan(&migrations);
    let plan_path = plan.to_str().expect("utf-8").to_string();
    let output = fleet.run(&["apply", &plan_path]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let journal = fleet.path("policy.journal.jsonl");
    let records_before = journal_records(&journal).len();
    let mut histories = Vec::new();
    for tenant in &fleet.tenants {
        histories.push(fault_support::history_rows(tenant.connection_uri.expose()).await);
    }

    let v2 = migrations.join("V2__orders_status_check.sql");
    let mut sql = std::fs::read_to_string(&v2).expect("read V2");
    sql = sql.replace("'refunded'", "'refunded', 'cancelled'");
    std::fs::write(&v2, sql).expect("edit V2");

    let output = fleet.run(&["apply", &plan_path]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("V2"), "{}", text(&output));
    assert_eq!(
        journal_records(&journal).len(),
        records_before,
        "the refused run journaled"
    );

    let output = fleet.run(&[
        "plan",
        "--policy",
        "policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
        "--out",
        "second.plan.yaml",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let output = fleet.run(&["apply", "second.plan.yaml", "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["diverged"], 3, "{report:#}");
    let failures = report["failures"].as_array().expect("failures");
    assert!(
        failures.iter().all(|failure| failure["error"]
            .as_str()
            .is_some_and(|error| error.contains("2") && error.to_lowercase().contains("checksum"))),
        "a diverged tenant names the migration and the checksum: {report:#}"
    );
    for (tenant, before) in fleet.tenants.iter().zip(&histories) {
        assert_eq!(
            &fault_support::history_rows(tenant.connection_uri.expose()).await,
            before,
            "{}: a diverged tenant is never touched",
            tenant.name
        );
    }

    let output = fleet.run(&[
        "drift",
        "--plan",
        "second.plan.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "drift is found: {}",
        text(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    for tenant in &fleet.tenants {
        assert!(
            stdout.contains(&tenant.project_id) || stdout.contains(&tenant.name),
            "drift names {}: {}",
            tenant.name,
            text(&output)
        );
    }
    fleet.fleet.stop().await.expect("stop");
}

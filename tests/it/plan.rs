//! `schemafleet plan` end to end: the real binary on temporary directories (and, for Neon
//! discovery, the local emulator over a real PostgreSQL).
//!
//! Every bad input must give its precise error, exit 2 and write no plan file.

use crate::common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use schemafleet::plan::load_plan;
use schemafleet::plan::model::Plan;

const POLICY: &str = "\
fleet:
  source: file
  file: tenants.csv
  exclude: [p-0007]
database: neondb
role: neondb_owner
validation: branch
restore_point: branch_point
lock_timeout: 2s
statement_timeout: 10m
branch_ttl: 2h
salt: release-test
waves:
  - name: canary
    tenants: [p-0001, tenant-0002]
    percent: 2
    concurrency: 2
    max_failures: 0
    bake: 1m
  - name: early
    percent: 25
    concurrency: 8
    max_failure_percent: 5
  - name: rest
    percent: 100
    concurrency: 16
    max_failure_percent: 1
";

/// A temporary project: `plans/rollout.yaml`, `plans/tenants.csv`, `migrations/`.
struct Workspace {
    dir: tempfile::TempDir,
}

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Workspace {
    fn new(n_tenants: usize) -> Workspace {
        let workspace = Workspace {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        workspace.write("plans/rollout.yaml", POLICY);
        workspace.write("plans/tenants.csv", &tenants_csv(1..=n_tenants));
        workspace.write(
            "migrations/V1__add_account_plan.sql",
            "ALTER TABLE accounts ADD COLUMN plan text NOT NULL DEFAULT 'free';\n",
        );
        workspace.write(
            "migrations/V2__index_orders.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_account_idx ON orders (account_id);\n",
        );
        workspace
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, contents: &str) {
        self.write_bytes(relative, contents.as_bytes());
    }

    fn write_bytes(&self, relative: &str, contents: &[u8]) {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn edit_policy(&self, from: &str, to: &str) {
        assert!(POLICY.contains(from), "the policy contains {from:?}");
        self.write("plans/rollout.yaml", &POLICY.replacen(from, to, 1));
    }

    /// Run `schemafleet` in the workspace with `args`.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_schemafleet"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("NEON_API_KEY")
            .env_remove("NEON_API_URL")
            .env_remove("SCHEMAFLEET_API_RATE_LIMIT");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("the binary runs");
        Run {
            code: output.status.code().expect("an exit code"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn plan(&self) -> Run {
        self.run(&["plan", "--policy", "plans/rollout.yaml"])
    }

    fn plan_file(&self) -> PathBuf {
        self.path("plans/rollout.plan.yaml")
    }

    /// The names of the files in `plans/` (to prove nothing else was written).
    fn plan_dir_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path("plans"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Run `plan`, expect exit 2 with `expected` in the error, and no file written.
    fn expect_rejected(&self, expected: &str) {
        let files_before = self.plan_dir_files();
        let run = self.plan();
        assert_eq!(
            run.code, 2,
            "stdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert!(
            run.stderr.contains(expected),
            "expected {expected:?} in:\n{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
        assert_eq!(self.plan_dir_files(), files_before, "no file written");
    }
}

fn tenants_csv(numbers: impl Iterator<Item = usize>) -> String {
    let mut csv = String::from("id,name,region,labels\n");
    for number in numbers {
        let tier = if number % 10 == 0 { "paid" } else { "free" };
        csv.push_str(&format!(
            "p-{number:04},tenant-{number:04},aws-us-east-2,tier={tier}\n"
        ));
    }
    csv
}

fn wave_of_each_tenant(plan: &Plan) -> HashMap<String, String> {
    plan.waves
        .iter()
        .flat_map(|wave| {
            wave.tenant_ids()
                .map(move |tenant| (tenant.to_string(), wave.name.clone()))
        })
        .collect()
}

/// A good policy writes the plan beside it and prints the summary; the plan holds every kept
/// tenant once, the exclusion with its reason, and paths relative to the plan.
#[test]
fn a_good_run_writes_the_plan_and_prints_the_summary() {
    let workspace = Workspace::new(300);
    let run = workspace.plan();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = load_plan(&workspace.plan_file()).expect("the written plan loads");
    assert!(
        run.stdout
            .contains(&format!("plan {} written to", plan.plan_id))
    );
    assert!(run.stdout.contains("299 tenants planned"), "{}", run.stdout);
    assert!(
        run.stdout.contains("V2__index_orders  (no transaction)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("~897 requests"), "{}", run.stdout);

    assert_eq!(plan.tenant_count(), 299);
    assert_eq!(plan.fleet.discovered, 300);
    assert_eq!(plan.fleet.excluded.len(), 1);
    assert_eq!(plan.fleet.excluded[0].id, "p-0007");
    assert_eq!(plan.fleet.excluded[0].reason, "listed in fleet.exclude");
    assert_eq!(plan.migrations.dir, "../migrations");
    assert_eq!(plan.migrations.items.len(), 2);
    assert!(plan.migrations.items[1].no_transaction);
    let canary = plan.wave("canary").unwrap();
    assert!(canary.tenant("p-0001").is_some());
    assert!(canary.tenant("p-0002").is_some(), "named by project name");
    assert_eq!(canary.bake_s, 60);
    let ids: Vec<&str> = canary.tenant_ids().collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    // The reviewer sees who the canaries are: name and region beside the id, in the plan file
    // and in the summary.
    let canary_one = canary.tenant("p-0001").unwrap();
    assert_eq!(
        (canary_one.name.as_str(), canary_one.region.as_str()),
        ("tenant-0001", "aws-us-east-2")
    );
    let plan_text = fs::read_to_string(workspace.plan_file()).unwrap();
    assert!(
        plan_text.contains("  - id: p-0001\n    name: tenant-0001\n    region: aws-us-east-2\n"),
        "{plan_text}"
    );
    assert!(
        run.stdout.contains("tenant-0001 (p-0001)  aws-us-east-2"),
        "{}",
        run.stdout
    );

    // Same inputs: the same plan byte for byte, apart from the creation time.
    let first_text = fs::read_to_string(workspace.plan_file()).unwrap();
    let run = workspace.run(&["plan", "--policy", "plans/rollout.yaml", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON summary");
    assert_eq!(summary["plan_id"], plan.plan_id.as_str());
    assert_eq!(summary["planned"], 299);
    assert_eq!(summary["api_calls"]["total"], 299 * 3);
    let second_text = fs::read_to_string(workspace.plan_file()).unwrap();
    let without_time = |text: &str| {
        text.lines()
            .filter(|line| !line.starts_with("created_at:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_time(&first_text), without_time(&second_text));
}

/// `--tenants` overrides the policy's fleet and `--out` chooses the file.
#[test]
fn tenants_and_out_flags() {
    let workspace = Workspace::new(10);
    workspace.write(
        "other.yaml",
        "- id: p-0001\n- id: p-0002\n  name: tenant-0002\n- id: x-1\n",
    );
    let run = workspace.run(&[
        "plan",
        "--policy",
        "plans/rollout.yaml",
        "--tenants",
        "other.yaml",
        "--out",
        "out.plan.yaml",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!workspace.plan_file().exists());
    let plan = load_plan(&workspace.path("out.plan.yaml")).unwrap();
    assert_eq!(plan.tenant_count(), 3);
    // On three tenants a later wave is empty: the warning says why in terms of this fleet and
    // does not talk of canaries for a wave that is not the first.
    let flowing = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flowing.contains("of this 3-tenant fleet"), "{}", run.stdout);
    assert!(flowing.contains("to give it some"), "{}", run.stdout);
    assert!(!flowing.contains("to have a canary"), "{}", run.stdout);
    for line in run.stdout.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line}");
    }
    assert_eq!(plan.migrations.dir, "migrations");
    assert!(
        plan.fleet.source.ends_with("other.yaml"),
        "{}",
        plan.fleet.source
    );

    let run = workspace.run(&[
        "plan",
        "--policy",
        "plans/rollout.yaml",
        "--out",
        "no/such/dir/p.yaml",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("the directory no/such/dir does not exist"),
        "{}",
        run.stderr
    );
}

/// Each policy mistake is an error naming the file, line and column, and what to do.
#[test]
fn bad_policies_are_rejected_precisely() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "    concurrency: 8\n",
            "    concurency: 8\n",
            "plans/rollout.yaml:22:5: waves[1]: unknown field `concurency`",
        ),
        (
            "role: neondb_owner",
            "role: {name: neondb_owner}",
            "plans/rollout.yaml:6:7: role: invalid type: map, expected a string",
        ),
        (
            "percent: 25",
            "percent: 101",
            "plans/rollout.yaml:21:14: waves[1].percent: a percent must be between 0 and 100, got 101",
        ),
        (
            "percent: 25",
            "percent: 2",
            "plans/rollout.yaml:21:5: waves[1].percent: 2 is not above waves[0]'s 2",
        ),
        (
            "  - name: early",
            "  - name: canary",
            "plans/rollout.yaml:20:5: waves[1].name: wave `canary` is already defined",
        ),
        (
            "tenants: [p-0001, tenant-0002]",
            "tenants: [p-0001, p-9999]",
            "plans/rollout.yaml:15:23: wave `canary` names tenant p-9999, which is not in the fleet",
        ),
        (
            "tenants: [p-0001, tenant-0002]",
            "tenants: [p-0001, p-0007]",
            "plans/rollout.yaml:15:23: wave `canary` names tenant p-0007, which the policy excludes (listed in fleet.exclude)",
        ),
        (
            "validation: branch",
            "validation: none",
            "plans/rollout.yaml:8:1: restore_point: `branch_point` is the validation branch's branch point, so it needs `validation: branch`",
        ),
        (
            "bake: 1m",
            "bake: 1 minute",
            "plans/rollout.yaml:19:11: waves[0].bake: invalid duration `1 minute`",
        ),
        (
            "  exclude: [p-0007]\n",
            "  exclude: [p-0007]\n  name_prefix: nobody-\n",
            "the fleet is empty: file:plans/tenants.csv listed 300 tenants and the policy's fleet filters excluded 300",
        ),
        (
            "  file: tenants.csv",
            "  file: missing.csv",
            "cannot read the tenants file plans/missing.csv",
        ),
    ];
    let workspace = Workspace::new(300);
    for (from, to, expected) in cases {
        workspace.edit_policy(from, to);
        workspace.expect_rejected(expected);
    }
    // A neon fleet without an API key says how to proceed.
    workspace.edit_policy("  source: file\n  file: tenants.csv\n", "  source: neon\n");
    workspace.expect_rejected("set NEON_API_KEY");
}

/// Each bad migrations directory is an error naming the file and the reason.
#[test]
fn bad_migrations_are_rejected_precisely() {
    let cases: &[(&str, &[u8], &str)] = &[
        ("V3__add-index.sql", b"SELECT 1;", "migrations/V3__add-index.sql: the name is not V{version}__{name}.sql"),
        ("v3__lower.sql", b"SELECT 1;", "migrations/v3__lower.sql: the name does not start with a capital V"),
        ("V3_one_underscore.sql", b"SELECT 1;", "V3_one_underscore.sql: the version and the name must be separated by two underscores"),
        ("V1__again.sql", b"SELECT 1;", "both have version 1; give each migration its own version"),
        ("V3__latin1.sql", b"SELECT 'caf\xe9';", "migrations/V3__latin1.sql: not UTF-8 (invalid byte at offset 11)"),
        ("V3__empty.sql", b"-- nothing yet\n", "migrations/V3__empty.sql: the migration is empty"),
        (
            "V3__two_indexes.sql",
            b"-- no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\nCREATE INDEX CONCURRENTLY b ON t (y);\n",
            "migrations/V3__two_indexes.sql: a `-- no-transaction` migration must hold exactly one statement, found 2",
        ),
    ];
    for (file_name, contents, expected) in cases {
        let workspace = Workspace::new(20);
        workspace.write_bytes(&format!("migrations/{file_name}"), contents);
        workspace.expect_rejected(expected);
    }
    let workspace = Workspace::new(20);
    fs::remove_dir_all(workspace.path("migrations")).unwrap();
    workspace.expect_rejected("cannot read the migrations directory migrations");
}

/// Each bad tenants file is an error naming the file and line.
#[test]
fn bad_tenants_files_are_rejected_precisely() {
    let cases: &[(&str, &str)] = &[
        (
            "id,name,regoin\np-0001,tenant-0001,x\n",
            "plans/tenants.csv:1: unknown column `regoin`",
        ),
        (
            "id,name\np-0001,tenant-0001\np-0002,tenant-0002\np-0001,again\n",
            "plans/tenants.csv:4: tenant id p-0001 is listed twice (first at line 2)",
        ),
        (
            "id,name\np-0001,a,b\n",
            "plans/tenants.csv:2: this row has 3 fields but the header has 2",
        ),
        (
            "id,labels\np-0001,tier\n",
            "plans/tenants.csv:2: tenant p-0001: label `tier` is not key=value",
        ),
        (
            "name\ntenant-0001\n",
            "plans/tenants.csv:1: the header row has no `id` column",
        ),
        (
            "id,name\n",
            "the fleet is empty: file:plans/tenants.csv listed 0 tenants",
        ),
        // The canary names p-0001 and tenant-0002: a fleet without them is an error.
        (
            "id,name\np-0005,tenant-0005\n",
            "plans/rollout.yaml:15:15: wave `canary` names tenant p-0001, which is not in the fleet",
        ),
    ];
    for (csv, expected) in cases {
        let workspace = Workspace::new(1);
        workspace.write("plans/tenants.csv", csv);
        workspace.expect_rejected(expected);
    }
}

/// A failed re-plan leaves the existing plan as it was.
#[test]
fn a_failed_plan_keeps_the_previous_plan() {
    let workspace = Workspace::new(50);
    assert_eq!(workspace.plan().code, 0);
    let before = fs::read(workspace.plan_file()).unwrap();
    workspace.write("migrations/V9__bad name.sql", "SELECT 1;");
    workspace.expect_rejected("V9__bad name.sql");
    assert_eq!(fs::read(workspace.plan_file()).unwrap(), before);
}

/// A plan whose journal sits beside it is the key to that rollout's restore points: planning
/// a different plan over it is refused (exit 2, both files unchanged); planning the same plan
/// again is fine.
#[tokio::test]
async fn a_plan_with_a_journal_of_its_own_is_not_overwritten_by_another() {
    let workspace = Workspace::new(20);
    assert_eq!(workspace.plan().code, 0);
    let plan = load_plan(&workspace.plan_file()).expect("the plan");
    let journal_path = workspace.path("plans/rollout.journal.jsonl");
    let (journal, _) = schemafleet::journal::Journal::open(&journal_path, &plan.plan_id)
        .expect("open the journal");
    journal
        .append(schemafleet::journal::Event::RunStarted {
            plan_id: plan.plan_id.clone(),
            run_id: "run-1".into(),
            pid: 1,
            tool_version: "test".into(),
        })
        .await
        .expect("a run started");
    journal.close().await;
    let journal_before = fs::read(&journal_path).unwrap();

    // The same inputs: the same plan id, so the journal still belongs to it.
    let run = workspace.plan();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan_before = fs::read(workspace.plan_file()).unwrap();

    workspace.write(
        "migrations/V3__accounts_note.sql",
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    );
    let run = workspace.plan();
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("rollout.journal.jsonl"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&plan.plan_id), "{}", run.stderr);
    assert!(run.stderr.contains("--out"), "{}", run.stderr);
    assert_eq!(fs::read(workspace.plan_file()).unwrap(), plan_before);
    assert_eq!(fs::read(&journal_path).unwrap(), journal_before);
}

/// The pull-request check: 0 while the migrations match, 1 naming each added, edited or removed
/// migration, 2 for a damaged plan.
#[test]
fn check_names_added_edited_and_removed_migrations() {
    let workspace = Workspace::new(30);
    assert_eq!(workspace.plan().code, 0);
    let check = || workspace.run(&["plan", "--check", "plans/rollout.plan.yaml"]);

    let run = check();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("matches the 2 migrations"),
        "{}",
        run.stdout
    );

    workspace.write(
        "migrations/V3__create_audit_log.sql",
        "CREATE TABLE audit_log (id bigint);\n",
    );
    let run = check();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("added: V3__create_audit_log.sql is not in the plan"),
        "{}",
        run.stderr
    );
    fs::remove_file(workspace.path("migrations/V3__create_audit_log.sql")).unwrap();

    workspace.write(
        "migrations/V1__add_account_plan.sql",
        "ALTER TABLE accounts ADD COLUMN plan text NOT NULL DEFAULT 'trial';\n",
    );
    let run = check();
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("edited: V1__add_account_plan.sql has changed since the plan was made"),
        "{}",
        run.stderr
    );

    fs::remove_file(workspace.path("migrations/V1__add_account_plan.sql")).unwrap();
    let run = workspace.run(&[
        "plan",
        "--check",
        "plans/rollout.plan.yaml",
        "--output",
        "json",
    ]);
    assert_eq!(run.code, 1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["matches"], false);
    assert_eq!(
        report["differences"][0],
        "removed: V1__add_account_plan.sql is in the plan but not on disk"
    );
    assert!(
        run.stderr.contains("re-run `schemafleet plan`"),
        "{}",
        run.stderr
    );

    // A hand-edited plan is not checked but rejected.
    let text = fs::read_to_string(workspace.plan_file()).unwrap();
    fs::write(
        workspace.plan_file(),
        text.replace("concurrency: 16", "concurrency: 64"),
    )
    .unwrap();
    let run = check();
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("does not match its plan_id"),
        "{}",
        run.stderr
    );
}

/// `plan --check` reports a changed policy like a changed migration (exit 1, saying what
/// changed), and with `--fleet` a changed fleet. See issue 18, point 4.
#[test]
fn check_reports_a_changed_policy_and_a_changed_fleet() {
    let workspace = Workspace::new(30);
    assert_eq!(workspace.plan().code, 0);
    let check = |extra: &[&str]| {
        let mut args = vec!["plan", "--check", "plans/rollout.plan.yaml"];
        args.extend_from_slice(extra);
        workspace.run(&args)
    };
    let run = check(&["--fleet"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("and the fleet"), "{}", run.stdout);

    workspace.edit_policy("concurrency: 16", "concurrency: 1");
    let run = check(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("- waves[rest].concurrency: 16 -> 1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("re-run `schemafleet plan`"),
        "{}",
        run.stderr
    );
    workspace.edit_policy("lock_timeout: 2s", "lock_timeout: 5s");
    let run = check(&["--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["matches"], false);
    assert_eq!(report["differences"], serde_json::json!([]));
    assert_eq!(
        report["policy_differences"],
        serde_json::json!(["lock_timeout_ms: 2000 -> 5000"])
    );
    // Bytes changed but no recorded setting: still a change, said as such.
    workspace.write("plans/rollout.yaml", &format!("{POLICY}# reviewed\n"));
    let run = check(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("none of the settings the plan records"),
        "{}",
        run.stderr
    );
    // A re-plan after a comment-only change keeps the plan id.
    let plan_id = load_plan(&workspace.plan_file()).unwrap().plan_id;
    assert_eq!(workspace.plan().code, 0);
    assert_eq!(load_plan(&workspace.plan_file()).unwrap().plan_id, plan_id);
    assert_eq!(check(&[]).code, 0);

    // The fleet grew and lost a tenant: only --fleet looks.
    workspace.write("plans/tenants.csv", &tenants_csv((1..=2).chain(4..=31)));
    assert_eq!(check(&[]).code, 0);
    let run = check(&["--fleet"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let unwrapped = run.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        unwrapped.contains("- 1 tenant new in the fleet: tenant-0031 (p-0031) (wave"),
        "{}",
        run.stderr
    );
    assert!(
        unwrapped.contains(
            "- 1 tenant no longer in the fleet (or now excluded): tenant-0003 (p-0003) (was in wave"
        ),
        "{}",
        run.stderr
    );

    // A plan whose policy cannot be found says how to name it.
    fs::rename(
        workspace.path("plans/rollout.yaml"),
        workspace.path("plans/moved.yaml"),
    )
    .unwrap();
    let run = check(&[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("pass --policy FILE"), "{}", run.stderr);
    assert_eq!(check(&["--policy", "plans/moved.yaml"]).code, 0);
}

/// While an `apply` holds the journal, `status` says so with its pid and `rollback` refuses
/// before listing anything; once the run is gone its wave is `stopped`, not `running`. See
/// issue 18, point 6. (No fleet needed: the journal is written here, as `apply` writes it.)
#[tokio::test]
async fn status_and_rollback_see_a_running_apply_through_the_journal_lock() {
    use schemafleet::journal::{Event, Journal};

    let workspace = Workspace::new(5);
    assert_eq!(workspace.plan().code, 0);
    let plan = load_plan(&workspace.plan_file()).unwrap();
    let journal_path = workspace.path("plans/rollout.journal.jsonl");
    let (journal, _) = Journal::open(&journal_path, &plan.plan_id).unwrap();
    for event in [
        Event::RunStarted {
            plan_id: plan.plan_id.clone(),
            run_id: "run-1".into(),
            pid: 4242,
            tool_version: "test".into(),
        },
        Event::WaveStarted {
            wave: "canary".into(),
        },
    ] {
        journal.append(event).await.unwrap();
    }
    let status = || workspace.run(&["status", "plans/rollout.plan.yaml"]);
    let run = status();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("apply is running (pid 4242)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("wave canary is running (apply pid 4242)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("killed"), "{}", run.stdout);
    let run = workspace.run(&["status", "plans/rollout.plan.yaml", "--output", "json"]);
    let document: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(document["apply_running_pid"], 4242, "{document:#}");
    assert_eq!(document["waves"][0]["status"], "running", "{document:#}");

    let canary = plan.wave("canary").unwrap();
    let run = workspace.run(&[
        "rollback",
        "plans/rollout.plan.yaml",
        "--tenant",
        &canary.tenants[0].name,
        "--yes",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is locked"), "{}", run.stderr);
    assert!(!run.stderr.contains("will restore"), "{}", run.stderr);

    // The run died without a word: nothing holds the journal, the wave stopped.
    journal.close().await;
    let run = status();
    assert!(
        run.stdout.contains("last: killed before it finished"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("wave canary stopped unfinished (its run was killed)"),
        "{}",
        run.stdout
    );
    let run = workspace.run(&["status", "plans/rollout.plan.yaml", "--output", "json"]);
    let document: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(document["waves"][0]["status"], "stopped", "{document:#}");
    assert!(document["apply_running_pid"].is_null(), "{document:#}");
    for line in status().stdout.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line}");
    }
}

/// `--help` describes every option and argument of every command, and `drift` without a fleet
/// names both ways to give one. See issue 18, point 8.
#[test]
fn every_option_and_argument_has_help() {
    let workspace = Workspace::new(1);
    for command in [
        "plan", "apply", "rollback", "status", "drift", "gc", "emulator", "demo", "bench", "lint",
        "baseline",
    ] {
        let run = workspace.run(&[command, "--help"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        // Every command that prints results has `--output json` (bench's `--json` is gone).
        if !matches!(command, "emulator" | "demo") {
            assert!(
                run.stdout.contains("--output <OUTPUT>"),
                "{command}: {}",
                run.stdout
            );
        }
        assert!(!run.stdout.contains("--json"), "{command}: {}", run.stdout);
        let lines: Vec<&str> = run.stdout.lines().collect();
        for (idx, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_item = line.starts_with("  ")
                && !line.starts_with("        ")
                && (trimmed.starts_with('-') || trimmed.starts_with('<'));
            // Short help puts the description on the option's line, after two spaces.
            let described_inline = trimmed
                .split_once("  ")
                .is_some_and(|(_, rest)| !rest.trim().is_empty());
            if is_item && !described_inline {
                let next = lines.get(idx + 1).copied().unwrap_or("");
                assert!(
                    next.starts_with("          ") && !next.trim().is_empty(),
                    "{command} --help: `{}` has no description:\n{}",
                    trimmed,
                    run.stdout
                );
            }
        }
    }
    // Options set in the environment are not shown as required in usage lines.
    let run = workspace.run_with_env(
        &["rollback", "p.plan.yaml"],
        &[
            ("NEON_API_KEY", "k"),
            ("NEON_API_URL", "http://127.0.0.1:9/api/v2"),
        ],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("Usage: schemafleet rollback [OPTIONS] <--tenant"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("--api-key <API_KEY>"),
        "{}",
        run.stderr
    );
    let run = workspace.run(&["drift"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("--plan <PLAN>|--policy <POLICY>"),
        "{}",
        run.stderr
    );
    let run = workspace.run(&["drift", "--help"]);
    assert!(
        run.stdout.contains("is\n          ahead") || run.stdout.contains("is ahead"),
        "{}",
        run.stdout
    );
}

/// A 10% canary with a named tenant on 12 tenants, under a salt whose hash places put 5 of the
/// 11 others in it: `plan` says why the canary is half the fleet and how to make it exact.
#[test]
fn a_canary_far_over_its_share_is_explained_by_plan() {
    let workspace = Workspace::new(12);
    let policy = POLICY
        .replace(
            "  exclude: [p-0007]
",
            "",
        )
        .replace("salt: release-test", "salt: s460")
        .replace(
            "tenants: [p-0001, tenant-0002]
    percent: 2",
            "tenants: [p-0001]
    percent: 10",
        )
        .replace(
            "  - name: early
    percent: 25
    concurrency: 8
    max_failure_percent: 5
",
            "",
        );
    workspace.write("plans/rollout.yaml", &policy);
    let run = workspace.plan();
    assert_eq!(
        run.code, 0,
        "stdout: {}
stderr: {}",
        run.stdout, run.stderr
    );
    let plan = load_plan(&workspace.plan_file()).unwrap();
    assert_eq!(plan.wave("canary").unwrap().tenants.len(), 6);
    let text = format!("{}{}", run.stdout, run.stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        text.contains("warning: wave `canary` has 6 of 12 tenants (50%): 1 named (named tenants come on top of the percent) and 5 of the 11 others by their hash place, where its share (0 to 10%) expects about 1.1;"),
        "{text}"
    );
    assert!(
        text.contains("name its tenants and give it the percent of the wave before (0 for the first), or change `salt`"),
        "{text}"
    );

    // Another salt draws 1 of the 11 for the canary, as close as 12 tenants allow: no note.
    workspace.write(
        "plans/rollout.yaml",
        &policy.replace("salt: s460", "salt: s3"),
    );
    let run = workspace.plan();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = load_plan(&workspace.plan_file()).unwrap();
    assert_eq!(plan.wave("canary").unwrap().tenants.len(), 2);
    assert!(
        !format!("{}{}", run.stdout, run.stderr).contains("by their hash place"),
        "{}",
        run.stdout
    );
}

/// Re-planning a grown fleet keeps every tenant already planned in its wave.
#[test]
fn a_grown_fleet_keeps_planned_tenants_in_their_waves() {
    let workspace = Workspace::new(1000);
    assert_eq!(workspace.plan().code, 0);
    let before = wave_of_each_tenant(&load_plan(&workspace.plan_file()).unwrap());
    workspace.write(
        "plans/tenants.csv",
        &tenants_csv((1..=1000).chain(5000..5500)),
    );
    assert_eq!(workspace.plan().code, 0);
    let after = wave_of_each_tenant(&load_plan(&workspace.plan_file()).unwrap());
    assert_eq!(after.len(), before.len() + 500);
    for (tenant, wave) in &before {
        assert_eq!(after.get(tenant), Some(wave), "{tenant} moved");
    }
}

/// `fleet.source: neon` lists the emulator's projects; the prefix filter's rejects are listed in
/// the plan with their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_the_fleet_through_the_neon_api() {
    let fleet = common::start_fleet().await;
    let seed_sql =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/demo-seed.sql"))
            .expect("the demo seed");
    let seeded = fleet
        .seed(4, &seed_sql, "tenant")
        .await
        .expect("seeding works");
    // Found by Neon's substring search for `tenant-`, then excluded by the prefix filter.
    fleet
        .seed(1, &seed_sql, "old-tenant")
        .await
        .expect("seeding works");

    let workspace = Workspace::new(0);
    workspace.write(
        "plans/rollout.yaml",
        &POLICY
            .replace(
                "  source: file\n  file: tenants.csv\n  exclude: [p-0007]\n",
                "  source: neon\n  name_prefix: tenant-\n",
            )
            .replace("tenants: [p-0001, tenant-0002]", "tenants: [tenant-0002]"),
    );
    let api_url = fleet.api_url().to_string();
    let api_key = fleet.api_key().expose().to_string();
    // The binary blocks; the emulator keeps serving on the runtime's other worker.
    let (run, without_v2, workspace) = tokio::task::spawn_blocking(move || {
        // A URL without `/api/v2` gets the hint apply and drift give, not a bare 404.
        let without_v2 = workspace.run_with_env(
            &["plan", "--policy", "plans/rollout.yaml"],
            &[
                ("NEON_API_URL", api_url.trim_end_matches("/api/v2")),
                ("NEON_API_KEY", &api_key),
            ],
        );
        let run = workspace.run_with_env(
            &["plan", "--policy", "plans/rollout.yaml"],
            &[("NEON_API_URL", &api_url), ("NEON_API_KEY", &api_key)],
        );
        (run, without_v2, workspace)
    })
    .await
    .unwrap();
    assert_eq!(without_v2.code, 2, "{}", without_v2.stderr);
    assert!(
        without_v2
            .stderr
            .contains("does not look like the Neon API v2 base URL"),
        "{}",
        without_v2.stderr
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("4 tenants planned from neon (5 discovered, 1 excluded, 0 unavailable)"),
        "{}",
        run.stdout
    );
    let plan = load_plan(&workspace.plan_file()).expect("the plan was written");
    assert_eq!(plan.fleet.source, "neon");
    assert_eq!(plan.fleet.discovered, 5);
    assert_eq!(plan.fleet.planned, 4);
    assert_eq!(plan.fleet.excluded.len(), 1);
    assert_eq!(
        plan.fleet.excluded[0].reason,
        "name `old-tenant-0001` does not start with fleet.name_prefix `tenant-`"
    );
    assert!(plan.fleet.unavailable.is_empty());
    // The named canary is in the canary wave; the 2% share may add another, depending on the
    // hash of the emulator's random project ids, so only the named one is certain.
    let named = seeded
        .iter()
        .find(|tenant| tenant.name == "tenant-0002")
        .map(|tenant| tenant.project_id.clone())
        .expect("tenant-0002 was seeded");
    let canary = plan.wave("canary").unwrap();
    assert_eq!(
        canary.tenant(&named).map(|tenant| tenant.name.as_str()),
        Some("tenant-0002"),
        "{:?}",
        plan.waves
    );
    // Neon's project listing gives the region too.
    assert!(
        canary
            .tenants
            .iter()
            .all(|tenant| !tenant.region.is_empty()),
        "{:?}",
        canary.tenants
    );
    assert_eq!(
        plan.waves
            .iter()
            .map(|wave| wave.tenants.len())
            .sum::<usize>(),
        4
    );

    // A wrong key is an error that says what to check, and writes nothing.
    fs::remove_file(workspace.plan_file()).unwrap();
    let api_url = fleet.api_url().to_string();
    let run = tokio::task::spawn_blocking(move || {
        let run = workspace.run_with_env(
            &["plan", "--policy", "plans/rollout.yaml"],
            &[("NEON_API_URL", &api_url), ("NEON_API_KEY", "wrong-key")],
        );
        (run, workspace.plan_file().exists())
    })
    .await
    .unwrap();
    let (run, written) = run;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("cannot list the fleet's Neon projects"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("check that NEON_API_KEY"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("wrong-key"),
        "the key is never printed: {}",
        run.stderr
    );
    assert!(!written);
    fleet.stop().await.expect("the fleet stops");
}

/// `verify:` is read relative to the policy, recorded relative to the plan with its digest, and
/// a missing verify file is an error pointing at the key.
#[test]
fn verify_sql_is_recorded_relative_to_the_plan() {
    let workspace = Workspace::new(20);
    workspace.write("checks/verify.sql", "SELECT count(*) FROM accounts;\n");
    workspace.edit_policy(
        "salt: release-test\n",
        "salt: release-test\nverify: ../checks/verify.sql\n",
    );
    let run = workspace.plan();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan = load_plan(&workspace.plan_file()).unwrap();
    let verify = plan
        .policy
        .verify
        .expect("the plan records the verify file");
    assert_eq!(verify.path, "../checks/verify.sql");
    assert_eq!(
        verify.sha256,
        schemafleet::migrations::sha256_hex(b"SELECT count(*) FROM accounts;\n")
    );

    fs::remove_file(workspace.plan_file()).unwrap();
    fs::remove_file(workspace.path("checks/verify.sql")).unwrap();
    workspace
        .expect_rejected("plans/rollout.yaml:13:1: verify: cannot read plans/../checks/verify.sql");
}

/// A long error is wrapped at the CLI's 100 columns on a terminal, and stays as written into a
/// pipe, where pipelines match its text. See issue 18, point 8.
#[test]
fn long_errors_wrap_at_100_columns_on_a_terminal() {
    let workspace = Workspace::new(30);
    assert_eq!(workspace.plan().code, 0);
    workspace.write(
        "migrations/V1__add_account_plan.sql",
        "ALTER TABLE accounts ADD COLUMN plan text;\n",
    );
    let piped = workspace.run(&["apply", "plans/rollout.plan.yaml"]);
    assert_eq!(piped.code, 2, "{}", piped.stderr);
    let error = piped
        .stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .expect("an error line");
    assert!(
        error.chars().count() > 100,
        "a long error: {}",
        piped.stderr
    );

    // `script` runs the binary on a pseudo-terminal (exit code passed on with -e).
    let command = format!(
        "{} apply plans/rollout.plan.yaml",
        env!("CARGO_BIN_EXE_schemafleet")
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(workspace.dir.path())
        .env_remove("NEON_API_KEY")
        .env_remove("NEON_API_URL")
        .output()
        .expect("script runs");
    assert_eq!(output.status.code(), Some(2));
    let terminal = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    for line in terminal.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line}");
    }
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words(&terminal).contains(&words(error)),
        "the same words, wrapped:\n{terminal}"
    );
    assert!(terminal.lines().count() > 1, "{terminal}");
}

/// A wave whose bake has not run out is named in `status` with its end, whether the running
/// apply is waiting on it or the next one will, so a quiet rollout is not mistaken for a stuck
/// one. (No fleet needed: the journal is written here, as `apply` writes it.)
#[tokio::test]
async fn status_says_which_wave_bakes_until_when() {
    use schemafleet::journal::{Event, Journal};

    let workspace = Workspace::new(5);
    assert_eq!(workspace.plan().code, 0);
    let plan = load_plan(&workspace.plan_file()).unwrap();
    let journal_path = workspace.path("plans/rollout.journal.jsonl");
    let (journal, _) = Journal::open(&journal_path, &plan.plan_id).unwrap();
    let until = schemafleet::clock::rfc3339_seconds_from_now(std::time::Duration::from_secs(600));
    for event in [
        Event::RunStarted {
            plan_id: plan.plan_id.clone(),
            run_id: "run-1".into(),
            pid: 4343,
            tool_version: "test".into(),
        },
        Event::WaveStarted {
            wave: "canary".into(),
        },
        Event::WaveFinished {
            wave: "canary".into(),
            halted: false,
            bake_until: Some(until.clone()),
        },
    ] {
        journal.append(event).await.unwrap();
    }
    let run = workspace.run(&["status", "plans/rollout.plan.yaml"]);
    let flowing = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains(&format!(
            "apply (pid 4343) is baking wave canary until {until}; wave early starts then"
        )),
        "{}",
        run.stdout
    );
    journal.close().await;
    let run = workspace.run(&["status", "plans/rollout.plan.yaml"]);
    let flowing = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains(&format!(
            "wave canary bakes until {until}: `apply` waits for it before wave early starts"
        )),
        "{}",
        run.stdout
    );
    let run = workspace.run(&["status", "plans/rollout.plan.yaml", "--output", "json"]);
    let document: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(document["baking"]["wave"], "canary", "{document:#}");
    assert_eq!(document["baking"]["next_wave"], "early", "{document:#}");
}

#[test]
fn names_several_tenants_share_are_warned_about() {
    let workspace = Workspace::new(20);
    let mut csv = tenants_csv(1..=20);
    csv.push_str("p-0999,tenant-0005,aws-us-east-2,tier=free\n");
    workspace.write("plans/tenants.csv", &csv);
    let run = workspace.plan();
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let text = format!("{}{}", run.stdout, run.stderr).replace("\n  ", " ");
    assert!(
        text.contains("warning: 1 name is shared by several tenants: tenant-0005 (p-0005, p-0999)")
            || text.contains(
                "warning: 1 name is shared by several tenants: tenant-0005 (p-0999, p-0005)"
            ),
        "{text}"
    );

    // Distinct names: no such warning.
    workspace.write("plans/tenants.csv", &tenants_csv(1..=20));
    let run = workspace.plan();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!format!("{}{}", run.stdout, run.stderr).contains("shared by several"));
}

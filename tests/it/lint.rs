//! `schemafleet lint` and the lint inside `plan`: the fixture release in `tests/fixtures/lint/`
//! has one migration per default deny/warn rule and per schemafleet rule, one acknowledged
//! finding and one clean migration.
//!
//! The lint's predictions are checked against PostgreSQL itself: each fixture migration is run
//! in a transaction on a real server and `pg_locks` is read before the commit.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use schemafleet::lint::{self, Level, LintSettings};
use schemafleet::migrations;
use schemafleet::pgcluster::{PgCluster, PgClusterConfig};
use schemafleet::plan::model::TransactionMode;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint")
}

fn schemafleet(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Each fixture migration is flagged by the expected rule, at the expected level and line.
#[test]
fn fixture_release_is_flagged_rule_by_rule_at_the_right_line() {
    let set = migrations::load(&fixture_dir().join("migrations")).expect("fixtures load");
    let report = lint::lint_set(
        &set,
        &LintSettings::defaults(),
        TransactionMode::PerMigration,
    );
    let expected: &[(&str, &str, Level, usize)] = &[
        (
            "V1__change_type.sql",
            "changing-column-type",
            Level::Deny,
            2,
        ),
        (
            "V2__index.sql",
            "require-concurrent-index-creation",
            Level::Deny,
            2,
        ),
        (
            "V3__check.sql",
            "constraint-missing-not-valid",
            Level::Deny,
            2,
        ),
        (
            "V4__foreign_key.sql",
            "adding-foreign-key-constraint",
            Level::Deny,
            2,
        ),
        ("V5__vacuum_full.sql", "vacuum-full", Level::Deny, 3),
        ("V6__cluster.sql", "cluster", Level::Deny, 2),
        ("V7__drop_column.sql", "ban-drop-column", Level::Warn, 2),
        ("V8__rename_column.sql", "renaming-column", Level::Warn, 2),
        (
            "V9__set_not_null.sql",
            "adding-not-nullable-field",
            Level::Warn,
            2,
        ),
        (
            "V10__required_column.sql",
            "adding-required-field",
            Level::Warn,
            2,
        ),
        (
            "V11__add_column.sql",
            "access-exclusive-metadata",
            Level::Warn,
            2,
        ),
        (
            "V12__no_transaction.sql",
            "no-transaction-not-idempotent",
            Level::Warn,
            3,
        ),
        ("V13__drop_table.sql", "ban-drop-table", Level::Warn, 2),
    ];
    for (file, rule, level, line) in expected {
        assert!(
            report.findings.iter().any(|finding| finding.file == *file
                && finding.rule == *rule
                && finding.level == *level
                && finding.line == *line),
            "{file}: expected {level} [{rule}] at line {line}; got:\n{report}"
        );
    }
    for finding in &report.findings {
        if ["ban-drop-column", "renaming-column", "ban-drop-table"].contains(&finding.rule.as_str())
        {
            assert!(
                finding.message.starts_with("backward-incompatible"),
                "{finding:?}"
            );
        }
    }
    let flagged: HashSet<&str> = report
        .findings
        .iter()
        .map(|finding| finding.file.as_str())
        .collect();
    assert!(!flagged.contains("V14__acknowledged.sql"), "{report}");
    assert!(!flagged.contains("V15__clean.sql"), "{report}");
    assert_eq!(report.acknowledged.len(), 1, "{report}");
    let acknowledged = &report.acknowledged[0];
    assert_eq!(acknowledged.file, "V14__acknowledged.sql");
    assert_eq!(acknowledged.rule, "require-concurrent-index-creation");
    assert_eq!(acknowledged.line, 3);
    assert_eq!(
        acknowledged.reason.as_deref(),
        Some("accounts holds a few rows on every tenant")
    );
}

/// Policy levels override the defaults; a parse error is itself a denied finding.
#[test]
fn policy_levels_and_parse_errors() {
    let settings = LintSettings {
        pg_version: 16,
        deny: vec!["ban-drop-column".into()],
        warn: vec!["changing-column-type".into()],
        ignore: vec!["access-exclusive-metadata".into()],
    };
    let report = lint::lint_sql(
        "V1__x.sql",
        "ALTER TABLE t ALTER COLUMN c TYPE bigint;\nALTER TABLE t DROP COLUMN d;\nALTER TABLE t ADD COLUMN e text;\n",
        false,
        &settings,
    );
    let levels: HashMap<&str, Level> = report
        .findings
        .iter()
        .map(|finding| (finding.rule.as_str(), finding.level))
        .collect();
    assert_eq!(
        levels.get("changing-column-type"),
        Some(&Level::Warn),
        "{report}"
    );
    assert_eq!(
        levels.get("ban-drop-column"),
        Some(&Level::Deny),
        "{report}"
    );
    assert_eq!(levels.get("access-exclusive-metadata"), None, "{report}");

    let broken = lint::lint_sql(
        "V2__y.sql",
        "SELECT 1;\nALTER TABLE ;\n",
        false,
        &LintSettings::defaults(),
    );
    let syntax_error = broken
        .findings
        .iter()
        .find(|finding| finding.rule == "syntax-error")
        .unwrap_or_else(|| panic!("no syntax-error finding:\n{broken}"));
    assert_eq!((syntax_error.level, syntax_error.line), (Level::Deny, 2));
}

/// Our own migrations lint clean (exit 0), with V2's validating CHECK acknowledged.
#[test]
fn repo_migrations_lint_clean() {
    let output = schemafleet(
        &["lint", "--output", "json"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        report["acknowledged"][0]["rule"],
        "constraint-missing-not-valid",
        "{}",
        text(&output)
    );
}

/// The fixture release exits 1 (denied findings); a policy naming no rule exits 2 with the line.
#[test]
fn lint_command_exit_codes() {
    let fixtures = fixture_dir();
    let output = schemafleet(&["lint", "--migrations", "migrations"], &fixtures);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("V1__change_type.sql\n  2:"),
        "{}",
        text(&output)
    );
    assert!(stdout.contains("acknowledged"), "{}", text(&output));

    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("tenants.csv"), "id,name\np-1,one\n").expect("write");
    fs::write(
        dir.path().join("policy.yaml"),
        policy("lint:\n  pg_version: 16\n  deny: [no-such-rule]\n"),
    )
    .expect("write");
    let migrations_arg = fixtures.join("migrations");
    let output = schemafleet(
        &[
            "lint",
            "--policy",
            "policy.yaml",
            "--migrations",
            migrations_arg.to_str().expect("utf-8"),
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.yaml:") && stderr.contains("no-such-rule"),
        "{}",
        text(&output)
    );
}

fn policy(extra: &str) -> String {
    format!(
        "fleet:\n  source: file\n  file: tenants.csv\ndatabase: neondb\nrole: neondb_owner\nsalt: s\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 1\n{extra}"
    )
}

/// `plan` refuses denied findings (exit 1, no plan), records warnings and acknowledgements in
/// the plan, and `plan --check` reports a changed finding.
#[test]
fn plan_records_findings_refuses_denied_ones_and_check_sees_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let migrations_dir = dir.path().join("migrations");
    fs::create_dir(&migrations_dir).expect("mkdir");
    fs::write(dir.path().join("tenants.csv"), "id,name\np-1,one\n").expect("write");
    fs::write(dir.path().join("policy.yaml"), policy("")).expect("write");
    fs::write(
        migrations_dir.join("V1__index.sql"),
        "CREATE INDEX orders_status_idx ON orders (status);\n",
    )
    .expect("write");

    let output = schemafleet(&["plan", "--policy", "policy.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("require-concurrent-index-creation"),
        "{}",
        text(&output)
    );
    assert!(!dir.path().join("policy.plan.yaml").exists());

    fs::write(
        migrations_dir.join("V1__index.sql"),
        "-- squawk-ignore require-concurrent-index-creation -- orders is tiny\nCREATE INDEX orders_status_idx ON orders (status);\nALTER TABLE orders DROP COLUMN legacy;\n",
    )
    .expect("write");
    let output = schemafleet(&["plan", "--policy", "policy.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let plan =
        schemafleet::plan::load_plan(&dir.path().join("policy.plan.yaml")).expect("plan loads");
    let planned = plan.lint.expect("the plan records the lint");
    assert_eq!(planned.findings.len(), 1, "{planned:?}");
    assert_eq!(planned.findings[0].rule, "ban-drop-column");
    assert_eq!(
        planned.acknowledged[0].reason.as_deref(),
        Some("orders is tiny")
    );

    let output = schemafleet(&["plan", "--check", "policy.plan.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // A plan whose recorded findings differ from today's (as after a Squawk upgrade or a
    // migration edited in place): the plan is re-signed so only the lint differs.
    let plan_path = dir.path().join("policy.plan.yaml");
    let plan_text = fs::read_to_string(&plan_path).expect("read");
    let mut plan_value: serde_yaml::Value = serde_yaml::from_str(&plan_text).expect("yaml");
    plan_value["lint"]["findings"] = serde_yaml::Value::Sequence(Vec::new());
    let mut edited: schemafleet::plan::model::Plan =
        serde_yaml::from_value(plan_value).expect("plan");
    edited.plan_id = schemafleet::plan::compute_plan_id(&edited);
    fs::write(&plan_path, serde_yaml::to_string(&edited).expect("yaml")).expect("write");
    let output = schemafleet(&["plan", "--check", "policy.plan.yaml"], dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("+ V1__index.sql:3:"),
        "{}",
        text(&output)
    );
}

/// No silent heavy lock: every fixture migration that, run for real, takes `ACCESS EXCLUSIVE`
/// or `SHARE` on a table that existed before it, or rewrites one, has a finding (or an
/// acknowledged one). `-- no-transaction` migrations cannot be observed before their commit
/// and are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_predictions_match_the_locks_postgres_takes() {
    let cluster = PgCluster::start(PgClusterConfig::temporary())
        .await
        .expect("PostgreSQL starts");
    let (client, connection) =
        tokio_postgres::connect(cluster.superuser_url().expose(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute(&fs::read_to_string(fixture_dir().join("setup.sql")).expect("setup"))
        .await
        .expect("setup runs");
    let set = migrations::load(&fixture_dir().join("migrations")).expect("fixtures load");
    let report = lint::lint_set(
        &set,
        &LintSettings::defaults(),
        TransactionMode::PerMigration,
    );
    let mut n_heavy = 0;
    for migration in set
        .migrations
        .iter()
        .filter(|migration| !migration.no_transaction)
    {
        let before: HashMap<u32, (String, u32)> = client
            .query(
                "SELECT oid, relname::text, relfilenode FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace",
                &[],
            )
            .await
            .expect("pg_class")
            .iter()
            .map(|row| (row.get::<_, u32>(0), (row.get::<_, String>(1), row.get::<_, u32>(2))))
            .collect();
        client.batch_execute("BEGIN").await.expect("begin");
        client
            .batch_execute(&migration.sql)
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", migration.file_name));
        let locks = client
            .query(
                "SELECT l.relation, l.mode FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted AND l.mode IN ('AccessExclusiveLock', 'ShareLock')",
                &[],
            )
            .await
            .expect("pg_locks");
        let rewritten = client
            .query(
                "SELECT oid, relfilenode FROM pg_class WHERE relkind IN ('r', 'p')",
                &[],
            )
            .await
            .expect("pg_class")
            .iter()
            .filter(|row| {
                before
                    .get(&row.get::<_, u32>(0))
                    .is_some_and(|(_, relfilenode)| *relfilenode != row.get::<_, u32>(1))
            })
            .count();
        client.batch_execute("COMMIT").await.expect("commit");
        let heavy_on_existing: Vec<String> = locks
            .iter()
            .filter_map(|row| {
                let oid: u32 = row.get(0);
                let mode: String = row.get(1);
                before
                    .get(&oid)
                    .map(|(name, _)| format!("{mode} on {name}"))
            })
            .collect();
        if heavy_on_existing.is_empty() && rewritten == 0 {
            continue;
        }
        n_heavy += 1;
        let predicted = report
            .findings
            .iter()
            .any(|finding| finding.file == migration.file_name)
            || report
                .acknowledged
                .iter()
                .any(|acknowledged| acknowledged.file == migration.file_name);
        assert!(
            predicted,
            "{} took {heavy_on_existing:?} (rewrote {rewritten} table(s)) but the lint said nothing:\n{report}",
            migration.file_name
        );
    }
    // The check is not vacuous: most fixture migrations lock an existing table heavily.
    assert!(n_heavy >= 10, "only {n_heavy} migrations took a heavy lock");
    cluster.stop().await.expect("PostgreSQL stops");
}

fn migration_set(files: &[(&str, &str)]) -> (tempfile::TempDir, migrations::MigrationSet) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, sql) in files {
        fs::write(dir.path().join(name), sql).expect("write a migration");
    }
    let set = migrations::load(dir.path()).expect("migrations load");
    (dir, set)
}

fn enum_findings(report: &lint::LintReport) -> Vec<(&str, usize, Level)> {
    report
        .findings
        .iter()
        .filter(|finding| finding.rule == lint::ENUM_LABEL_RULE)
        .map(|finding| (finding.file.as_str(), finding.line, finding.level))
        .collect()
}

/// An enum label used in the transaction that added it: in the same migration always, in a
/// later migration only when `per_release` runs both in one transaction (and no
/// `-- no-transaction` migration splits it); acknowledged with `-- squawk-ignore`.
#[test]
fn an_enum_label_used_in_the_transaction_that_added_it_is_denied() {
    let release = [
        (
            "V1__state.sql",
            "CREATE TYPE state AS ENUM ('open', 'paid');\nALTER TABLE orders ADD COLUMN state state;\n",
        ),
        ("V2__shipped.sql", "ALTER TYPE state ADD VALUE 'shipped';\n"),
        (
            "V3__use.sql",
            "-- shipped orders\nUPDATE orders\n   SET state = 'shipped' WHERE id < 0;\n",
        ),
    ];
    let (_dir, set) = migration_set(&release);
    let settings = LintSettings::defaults();
    let per_migration = lint::lint_set(&set, &settings, TransactionMode::PerMigration);
    assert!(enum_findings(&per_migration).is_empty(), "{per_migration}");
    let per_release = lint::lint_set(&set, &settings, TransactionMode::PerRelease);
    assert_eq!(
        enum_findings(&per_release),
        [("V3__use.sql", 3, Level::Deny)],
        "{per_release}"
    );
    let finding = per_release
        .findings
        .iter()
        .find(|finding| finding.rule == lint::ENUM_LABEL_RULE)
        .expect("the finding");
    assert!(
        finding.message.contains("'shipped'")
            && finding.message.contains("V2__shipped.sql (line 1)")
            && finding.message.contains("55P04"),
        "{finding:?}"
    );
    assert!(
        finding
            .help
            .as_deref()
            .is_some_and(|help| help.contains("per_migration")),
        "{finding:?}"
    );

    // A `-- no-transaction` migration between them splits the release into transactions.
    let mut split = release.to_vec();
    split[2].0 = "V4__use.sql";
    split.push((
        "V3__index.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_id ON orders (id);\n",
    ));
    let (_split_dir, split_set) = migration_set(&split);
    let report = lint::lint_set(&split_set, &settings, TransactionMode::PerRelease);
    assert!(enum_findings(&report).is_empty(), "{report}");

    // In one migration, any mode; a label of a type created in the same migration is usable.
    let (_one_dir, one) = migration_set(&[
        (
            "V1__both.sql",
            "ALTER TYPE state ADD VALUE 'lost';\nUPDATE orders SET state = 'lost' WHERE false;\n",
        ),
        (
            "V2__fresh.sql",
            "CREATE TYPE mood AS ENUM ('ok');\nALTER TYPE mood ADD VALUE 'sad';\nSELECT 'sad'::mood;\n",
        ),
        (
            "V3__acknowledged.sql",
            "ALTER TYPE state ADD VALUE 'held';\n-- squawk-ignore enum-label-added-and-used -- the comment, not a use\nCOMMENT ON TABLE orders IS 'held';\n",
        ),
    ]);
    let report = lint::lint_set(&one, &settings, TransactionMode::PerMigration);
    assert_eq!(
        enum_findings(&report),
        [("V1__both.sql", 2, Level::Deny)],
        "{report}"
    );
    assert!(
        report
            .findings
            .iter()
            .any(|finding| finding.rule == lint::ENUM_LABEL_RULE
                && finding.message.contains("used in the same migration")),
        "{report}"
    );
    let acknowledged: Vec<(&str, usize)> = report
        .acknowledged
        .iter()
        .filter(|acknowledged| acknowledged.rule == lint::ENUM_LABEL_RULE)
        .map(|acknowledged| (acknowledged.file.as_str(), acknowledged.line))
        .collect();
    assert_eq!(acknowledged, [("V3__acknowledged.sql", 3)], "{report}");
}

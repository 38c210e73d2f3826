//! A real project's migration history (graphile-worker's 20 SQL files, see
//! tests/fixtures/graphile-worker/README.md) rolled across a fleet with validation: every
//! tenant ends with exactly the schema its authors' way of running them gives, `psql -1 -f`
//! file by file.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use schemafleet::emulator::LocalFleetConfig;
use support::{TestFleet, history, json, text};

/// What graphile-worker itself creates before its first migration.
const SEED: &str = "CREATE SCHEMA graphile_worker;";
const N_TENANTS: usize = 10;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/graphile-worker/migrations")
}

/// The fixture's files in version order.
fn files_in_order() -> Vec<PathBuf> {
    let mut files: Vec<(i32, PathBuf)> = std::fs::read_dir(fixture())
        .expect("fixture directory")
        .map(|entry| entry.expect("directory entry").path())
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("");
            let version = name
                .strip_prefix('V')
                .and_then(|rest| rest.split_once("__"))
                .and_then(|(version, _)| version.parse().ok())
                .unwrap_or_else(|| panic!("not a V{{n}}__ file: {}", path.display()));
            (version, path)
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, path)| path).collect()
}

/// `pg_dump --schema-only` without schemafleet's history table, owners, grants and the
/// per-dump `\restrict` key.
fn schema_dump(uri: &str) -> String {
    let output = Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-table=public.refinery_schema_history",
            "--dbname",
            uri,
        ])
        .output()
        .expect("pg_dump runs");
    assert!(output.status.success(), "pg_dump: {}", text(&output));
    String::from_utf8(output.stdout)
        .expect("utf-8 dump")
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphile_worker_history_applies_as_psql_single_transaction_per_file() {
    let files = files_in_order();
    assert!(files.len() >= 20, "{files:?}");
    let fleet = TestFleet::start_seeded(LocalFleetConfig::for_tests(), N_TENANTS, SEED).await;
    let reference = fleet
        .fleet
        .seed(1, SEED, "reference")
        .await
        .expect("seeding works")
        .remove(0);
    let reference_uri = reference.connection_uri.expose().to_string();
    let psql_files = files.clone();
    tokio::task::spawn_blocking(move || {
        for file in &psql_files {
            let output = Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f"])
                .arg(file)
                .arg(&reference_uri)
                .output()
                .expect("psql runs");
            assert!(
                output.status.success(),
                "psql -1 -f {}: {}",
                file.display(),
                text(&output)
            );
        }
    })
    .await
    .expect("psql task");

    // graphile-worker's history was written for one database at a time: `schemafleet lint`
    // denies its table rewrites, plain index builds and validating constraints by default. The
    // statements are kept as published, so the policy lowers those rules to warnings, as a
    // team adopting such a history after review would.
    fleet.write_policy(
        "validation: branch\nsalt: graphile\nlint:\n  warn: [changing-column-type, require-concurrent-index-creation, disallowed-unique-constraint, constraint-missing-not-valid, adding-foreign-key-constraint]\nwaves:\n  - name: canary\n    tenants: [tenant-0001]\n    percent: 0\n    concurrency: 1\n    max_failures: 0\n  - name: rest\n    percent: 100\n    concurrency: 4\n",
    );
    let plan = fleet.plan(&fixture());
    let output = fleet.run(&["apply", plan.to_str().expect("utf-8"), "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], N_TENANTS, "{report:#}");

    let expected = schema_dump(reference.connection_uri.expose());
    assert!(
        expected.contains("CREATE TABLE graphile_worker._private_jobs"),
        "the reference holds graphile-worker's schema:\n{expected}"
    );
    for tenant in &fleet.tenants {
        let uri = tenant.connection_uri.expose();
        assert_eq!(history(uri).await.len(), files.len(), "{}", tenant.name);
        let dump = schema_dump(uri);
        assert!(
            dump == expected,
            "{}: schema differs from psql -1 -f per file:\n{}",
            tenant.name,
            first_difference(&expected, &dump)
        );
    }
    fleet.fleet.stop().await.expect("stop");
}

fn first_difference(expected: &str, actual: &str) -> String {
    for (line_idx, (left, right)) in expected.lines().zip(actual.lines()).enumerate() {
        if left != right {
            return format!(
                "line {}:\n  psql:        {left}\n  schemafleet: {right}",
                line_idx + 1
            );
        }
    }
    format!(
        "lengths differ: {} vs {} lines",
        expected.lines().count(),
        actual.lines().count()
    )
}

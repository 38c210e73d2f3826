//! `fleet.source: postgres` against a real catalog database (on the emulator's backing server),
//! and the API requests and woken computes a run saves: connection URIs from the catalog (no API
//! request per tenant), `apply --skip-recorded` (no connection at all), each counted by the
//! emulator itself.

use crate::support;

use crate::fault_support as faults;

use std::path::Path;
use std::process::Output;

use faults::run_with_env;
use support::{TestFleet, history, json, repo_migrations, text};

const CATALOG_ENV: &str = "SCHEMAFLEET_TEST_CATALOG_URL";

/// The catalog database's URL on the fleet's backing server (a superuser URL: a test's).
fn catalog_url(fleet: &TestFleet, database: &str) -> String {
    let mut url = url::Url::parse(fleet.fleet.database_url().expose()).expect("a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// A `control_plane` database with the platform's own table of its users' databases: ids, names,
/// a JSON label column, the URI of each main and the version the platform recorded.
async fn create_catalog(fleet: &TestFleet, database: &str, schema_version: Option<i32>) {
    let admin = support::connect(fleet.fleet.database_url().expose()).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create the catalog database");
    let catalog = support::connect(&catalog_url(fleet, database)).await;
    catalog
        .batch_execute(
            "CREATE TABLE customer_databases (
                neon_project_id text PRIMARY KEY,
                customer text NOT NULL,
                neon_region text,
                tags jsonb,
                main_uri text,
                migrated_to integer,
                deleted_at timestamptz
            )",
        )
        .await
        .expect("create the catalog table");
    for (idx, tenant) in fleet.tenants.iter().enumerate() {
        let tier = if idx % 2 == 0 { "free" } else { "paid" };
        catalog
            .execute(
                "INSERT INTO customer_databases VALUES ($1, $2, 'aws-us-east-2', jsonb_build_object('tier', $3::text), $4, $5, NULL)",
                &[
                    &tenant.project_id,
                    &tenant.name,
                    &tier,
                    &tenant.connection_uri.expose(),
                    &schema_version,
                ],
            )
            .await
            .expect("insert a catalog row");
    }
}

fn catalog_policy(fleet: &TestFleet, query: &str) {
    let text = format!(
        "fleet:\n  source: postgres\n  url_env: {CATALOG_ENV}\n  query: |\n    {query}\ndatabase: neondb\nrole: neondb_owner\nvalidation: none\nrestore_point: none\nsalt: catalog\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 4\n"
    );
    std::fs::write(fleet.path("policy.yaml"), text).expect("write the policy");
}

const QUERY: &str = "SELECT neon_project_id AS id, customer AS name, neon_region AS region, tags AS labels, main_uri AS connection_uri, migrated_to AS schema_version FROM customer_databases WHERE deleted_at IS NULL";

fn run(fleet: &TestFleet, url: &str, args: &[&str]) -> Output {
    run_with_env(fleet, args, &[(CATALOG_ENV, Some(url))])
}

fn plan(fleet: &TestFleet, url: &str, out: &str) -> String {
    let migrations = repo_migrations();
    let output = run(
        fleet,
        url,
        &[
            "plan",
            "--policy",
            "policy.yaml",
            "--migrations",
            migrations.to_str().expect("utf-8"),
            "--out",
            out,
        ],
    );
    assert!(output.status.success(), "plan failed: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every password of the fleet's URIs (and the catalog's own): none may be written anywhere.
fn passwords(fleet: &TestFleet, catalog: &str) -> Vec<String> {
    let mut passwords: Vec<String> = fleet
        .tenants
        .iter()
        .map(|tenant| {
            url::Url::parse(tenant.connection_uri.expose())
                .expect("a URI")
                .password()
                .expect("a password")
                .to_string()
        })
        .collect();
    if let Some(password) = url::Url::parse(catalog).expect("a URL").password() {
        passwords.push(password.to_string());
    }
    passwords
}

fn assert_no_secret(what: &str, body: &str, passwords: &[String]) {
    for password in passwords {
        assert!(
            !body.contains(password.as_str()),
            "{what} holds a password:\n{body}"
        );
    }
    assert!(
        !body.contains("postgresql://"),
        "{what} holds a URI:\n{body}"
    );
}

/// The catalog plans the fleet (names, regions, JSON labels, no URI written), `apply` connects
/// to every main with the catalog's URI and sends no API request per tenant, the
/// nothing-pending re-run sends none either, and `--skip-recorded` with the catalog's
/// `schema_version` wakes no compute and journals the tenants as skipped, not up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_fleet_costs_no_api_request_per_tenant_and_skip_recorded_wakes_nothing() {
    let fleet = TestFleet::start(6).await;
    create_catalog(&fleet, "control_plane", None).await;
    let url = catalog_url(&fleet, "control_plane");
    let secrets = passwords(&fleet, &url);
    catalog_policy(&fleet, QUERY);

    let summary = plan(&fleet, &url, "first.plan.yaml");
    let summary = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        summary.contains(&format!(
            "none for the connection URIs of 6 tenants, which postgres:{CATALOG_ENV} gives"
        )),
        "{summary}"
    );
    assert!(summary.contains("~0 requests"), "{summary}");
    let plan_text = std::fs::read_to_string(fleet.path("first.plan.yaml")).expect("the plan");
    assert_no_secret("the plan", &plan_text, &secrets);
    assert!(plan_text.contains("tenant-0001"), "{plan_text}");
    assert!(plan_text.contains("aws-us-east-2"), "{plan_text}");

    // 1. A release: every main migrated, its URI from the catalog.
    let before = fleet.fleet.stats().requests;
    let output = run(
        &fleet,
        &url,
        &["apply", "first.plan.yaml", "--output", "json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 6, "{report:#}");
    assert_eq!(report["connection_uris_from_source"], 6, "{report:#}");
    let requests = fleet.fleet.stats().requests - before;
    // The run's one access check; nothing per tenant.
    assert!(
        requests <= 1,
        "{requests} API requests for 6 tenants: {report:#}"
    );
    assert_eq!(report["api"]["requests"].as_u64(), Some(requests));
    for tenant in &fleet.tenants {
        let versions: Vec<i32> = history(tenant.connection_uri.expose())
            .await
            .iter()
            .map(|(version, _)| *version)
            .collect();
        assert_eq!(versions, vec![1, 2, 3, 4], "{}", tenant.name);
    }
    let journal = std::fs::read_to_string(fleet.path("first.journal.jsonl")).expect("the journal");
    assert_no_secret("the journal", &journal, &secrets);
    assert_no_secret("apply's report", &text(&output), &secrets);

    // 2. Nothing pending, from a fresh plan: probed (one connection each), still no API request
    // per tenant.
    plan(&fleet, &url, "second.plan.yaml");
    fleet.fleet.suspend_all_endpoints();
    let before = fleet.fleet.stats().requests;
    let compute_before = fleet.fleet.compute_stats();
    let output = run(
        &fleet,
        &url,
        &["apply", "second.plan.yaml", "--output", "json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["up_to_date"], 6, "{report:#}");
    assert!(fleet.fleet.stats().requests - before <= 1, "{report:#}");
    let compute_after = fleet.fleet.compute_stats();
    let cold_starts = compute_after.cold_starts - compute_before.cold_starts;
    assert!(
        (1..=6).contains(&cold_starts),
        "the probe wakes each compute at most once: {cold_starts}"
    );

    // 3. The platform records the version; `--skip-recorded` trusts it and connects to nobody.
    let catalog = support::connect(&url).await;
    catalog
        .batch_execute("UPDATE customer_databases SET migrated_to = 4")
        .await
        .expect("record the version");
    plan(&fleet, &url, "third.plan.yaml");
    fleet.fleet.suspend_all_endpoints();
    let before = fleet.fleet.stats().requests;
    let compute_before = fleet.fleet.compute_stats();
    let output = run(
        &fleet,
        &url,
        &[
            "apply",
            "third.plan.yaml",
            "--skip-recorded",
            "--output",
            "json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["skipped_recorded"], 6, "{report:#}");
    assert_eq!(
        report["totals"]["up_to_date"], 0,
        "never counted as checked"
    );
    let compute_after = fleet.fleet.compute_stats();
    assert_eq!(compute_after.connections, compute_before.connections);
    assert_eq!(compute_after.cold_starts, compute_before.cold_starts);
    assert!(fleet.fleet.stats().requests - before <= 1);
    let journal = faults::journal_records(&fleet.path("third.journal.jsonl"));
    let skipped: Vec<_> = journal
        .iter()
        .filter(|record| record["event"] == "skipped_recorded")
        .collect();
    assert_eq!(skipped.len(), 6, "{journal:#?}");
    assert!(
        skipped.iter().all(|record| record["recorded_version"] == 4
            && record["source"] == format!("postgres:{CATALOG_ENV}")),
        "{skipped:#?}"
    );
    // `status` says what the record is worth.
    let status = run(&fleet, &url, &["status", "third.plan.yaml"]);
    assert!(
        text(&status).contains("skipped without connecting"),
        "{}",
        text(&status)
    );

    // 4. A record that does not cover the plan is not trusted: the tenant is probed.
    catalog
        .batch_execute(&format!(
            "UPDATE customer_databases SET migrated_to = 3 WHERE neon_project_id = '{}'",
            fleet.tenants[0].project_id
        ))
        .await
        .expect("an older record");
    plan(&fleet, &url, "fourth.plan.yaml");
    let output = run(
        &fleet,
        &url,
        &[
            "apply",
            "fourth.plan.yaml",
            "--skip-recorded",
            "--output",
            "json",
        ],
    );
    let report = json(&output);
    assert_eq!(report["totals"]["skipped_recorded"], 5, "{report:#}");
    assert_eq!(report["totals"]["up_to_date"], 1, "{report:#}");
}

/// `--recorded-from` an earlier release's plan: a fresh plan of the same migrations skips every
/// tenant that release finished, without a connection; a plan of other files refuses the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_recorded_from_an_earlier_journal_connects_to_nobody() {
    let fleet = TestFleet::start(4).await;
    fleet.write_policy(
        "validation: none\nrestore_point: none\nsalt: s\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 4\n",
    );
    let migrations = repo_migrations();
    let first = fleet.plan_at(&migrations, "first.plan.yaml");
    let output = fleet.run(&["apply", &first, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let second = fleet.plan_at(&migrations, "second.plan.yaml");
    fleet.fleet.suspend_all_endpoints();
    let compute_before = fleet.fleet.compute_stats();
    let output = fleet.run(&[
        "apply",
        &second,
        "--skip-recorded",
        "--recorded-from",
        &first,
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["skipped_recorded"], 4, "{report:#}");
    let compute_after = fleet.fleet.compute_stats();
    assert_eq!(compute_after.connections, compute_before.connections);
    assert_eq!(compute_after.cold_starts, compute_before.cold_starts);
    let journal = faults::journal_records(&fleet.path("second.journal.jsonl"));
    assert!(
        journal
            .iter()
            .any(|record| record["event"] == "skipped_recorded"
                && record["source"]
                    .as_str()
                    .is_some_and(|source| source.starts_with("plan "))),
        "{journal:#?}"
    );

    // The record is checked by `status --live`: every skipped tenant is really up to date.
    let live = fleet.run(&["status", &second, "--live", "--output", "json"]);
    assert_eq!(live.status.code(), Some(0), "{}", text(&live));

    // Another release whose V4 differs from the recorded one: the record says nothing of it.
    let edited = fleet.path("edited");
    faults::copy_repo_migrations(&edited);
    let v4 = edited.join("V4__create_audit_log.sql");
    let mut sql = std::fs::read_to_string(&v4).expect("V4");
    sql.push_str("\n-- edited\n");
    std::fs::write(&v4, sql).expect("edit V4");
    let third = fleet.plan_at(&edited, "third.plan.yaml");
    let output = fleet.run(&[
        "apply",
        &third,
        "--skip-recorded",
        "--recorded-from",
        &first,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("V4__create_audit_log") && text(&output).contains("checksums"),
        "{}",
        text(&output)
    );
    assert!(
        !Path::new(&fleet.path("third.journal.jsonl")).exists() || {
            faults::journal_records(&fleet.path("third.journal.jsonl"))
                .iter()
                .all(|record| record["event"] != "skipped_recorded")
        }
    );
}

/// A catalog query that cannot give a fleet is refused at `plan`, naming the policy file, the
/// field and what to change; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_catalog_query_names_the_policy_field_and_the_column() {
    let fleet = TestFleet::start(2).await;
    create_catalog(&fleet, "control_plane_bad", None).await;
    let url = catalog_url(&fleet, "control_plane_bad");
    let migrations = repo_migrations();
    let plan_args = [
        "plan",
        "--policy",
        "policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
    ];
    let cases = [
        (
            "SELECT neon_project_id AS id, customer AS nmae FROM customer_databases",
            "column `nmae`",
        ),
        (
            "SELECT customer AS name FROM customer_databases",
            "no `id` column",
        ),
        (
            "SELECT neon_project_id AS id, deleted_at AS region FROM customer_databases",
            "region::text",
        ),
        (
            "SELECT neon_project_id AS id FROM customer_databses",
            "customer_databses",
        ),
        (
            "SELECT NULL::text AS id FROM customer_databases",
            "row 1: `id` is NULL",
        ),
    ];
    for (query, expected) in cases {
        catalog_policy(&fleet, query);
        let output = run(&fleet, &url, &plan_args);
        let message = text(&output);
        assert_eq!(output.status.code(), Some(2), "{query}: {message}");
        assert!(
            message.contains("policy.yaml:") && message.contains("fleet.query"),
            "{query}: {message}"
        );
        assert!(message.contains(expected), "{query}: {message}");
        assert!(!fleet.path("policy.plan.yaml").exists());
    }
    // The variable is not set: say which one.
    catalog_policy(&fleet, QUERY);
    let output = run_with_env(&fleet, &plan_args, &[(CATALOG_ENV, None)]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains(CATALOG_ENV) && text(&output).contains("fleet.url_env"),
        "{}",
        text(&output)
    );
    // A URL where the variable's name belongs is refused without echoing it.
    std::fs::write(
        fleet.path("policy.yaml"),
        format!(
            "fleet:\n  source: postgres\n  url_env: {url}\n  query: SELECT 1\ndatabase: d\nrole: r\nsalt: s\nwaves:\n  - {{name: all, percent: 100, concurrency: 1}}\n"
        ),
    )
    .expect("write");
    let output = run(&fleet, &url, &plan_args);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("NAME of the environment variable"),
        "{}",
        text(&output)
    );
    assert_no_secret("the error", &text(&output), &passwords(&fleet, &url));
    // A catalog whose password is wrong: the error names the variable, never the password.
    let mut wrong = url::Url::parse(&url).expect("a URL");
    wrong.set_password(Some("not-the-password")).expect("set");
    catalog_policy(&fleet, QUERY);
    let output = run(&fleet, wrong.as_str(), &plan_args);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains(&format!("${CATALOG_ENV}"))
            && !text(&output).contains("not-the-password"),
        "{}",
        text(&output)
    );
}

/// A tenants file with each main's `connection_uri`: planned without writing a URI, applied
/// (and re-run with nothing pending) without one API request per tenant, the wave's SQL check
/// on every migrated main included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_file_with_uris_costs_no_api_request_per_tenant() {
    let fleet = TestFleet::start(4).await;
    let mut csv = String::from("id,name,connection_uri\n");
    for tenant in &fleet.tenants {
        csv.push_str(&format!(
            "{},{},{}\n",
            tenant.project_id,
            tenant.name,
            tenant.connection_uri.expose()
        ));
    }
    std::fs::write(fleet.path("tenants.csv"), csv).expect("write the tenants file");
    // The check samples every migrated tenant: it would ask the API for 4 URIs if it did not
    // take the tenants file's.
    fleet.write_policy(
        "validation: none\nrestore_point: none\nsalt: s\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 4\n    checks:\n      - name: migrated\n        sql: SELECT $1::timestamptz IS NOT NULL AND to_regclass('public.audit_log') IS NOT NULL\n",
    );
    let secrets = passwords(&fleet, "postgresql://x@h/d");
    let migrations = repo_migrations();
    let (plan_path, summary) = fleet.plan_with_summary(&migrations);
    let summary = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        summary.contains("~0 requests") && summary.contains("connection URIs of 4 tenants"),
        "{summary}"
    );
    let plan_text = std::fs::read_to_string(&plan_path).expect("the plan");
    assert_no_secret("the plan", &plan_text, &secrets);
    let plan_path = plan_path.to_str().expect("utf-8").to_string();

    for (run, expected) in [("first", "applied"), ("nothing pending", "up_to_date")] {
        if run != "first" {
            fleet.plan_at(&migrations, "again.plan.yaml");
        }
        let plan = if run == "first" {
            plan_path.as_str()
        } else {
            "again.plan.yaml"
        };
        fleet.fleet.suspend_all_endpoints();
        let before = fleet.fleet.stats().requests;
        let compute_before = fleet.fleet.compute_stats();
        let output = fleet.run(&["apply", plan, "--output", "json"]);
        assert_eq!(output.status.code(), Some(0), "{run}: {}", text(&output));
        let report = json(&output);
        assert_eq!(report["totals"][expected], 4, "{run}: {report:#}");
        assert_eq!(
            report["connection_uris_from_source"], 4,
            "{run}: {report:#}"
        );
        let requests = fleet.fleet.stats().requests - before;
        assert!(requests <= 1, "{run}: {requests} requests for 4 tenants");
        let cold_starts = fleet.fleet.compute_stats().cold_starts - compute_before.cold_starts;
        assert!(
            cold_starts <= 4,
            "{run}: {cold_starts} cold starts for 4 tenants"
        );
        assert_no_secret("apply's report", &text(&output), &secrets);
    }
    let journal = std::fs::read_to_string(fleet.path("policy.journal.jsonl")).expect("journal");
    assert_no_secret("the journal", &journal, &secrets);
    assert!(
        journal.contains(r#""event":"checks_passed","wave":"all","stage":"after_wave""#),
        "{journal}"
    );
}

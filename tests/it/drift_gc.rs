//! `schemafleet drift` and `schemafleet gc`, end to end: the binary against the local emulator
//! over a real PostgreSQL, tenants migrated by the real refinery runner, branches made through
//! the real Neon client.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::start_fleet;
use schemafleet::emulator::{LocalFleet, SeededTenant};
use schemafleet::journal::{Event, Journal, RestorePoint};
use schemafleet::neon::{ClientConfig, CreateBranch, NeonClient};
use schemafleet::pg::runner::{LockRetry, Timeouts, TransactionMode, apply_pending};
use serde_json::Value;

const SEED_SQL: &str = "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);";

const MIGRATIONS: [(&str, &str); 3] = [
    (
        "V1__add_email.sql",
        "ALTER TABLE accounts ADD COLUMN email text;\n",
    ),
    (
        "V2__create_orders.sql",
        "CREATE TABLE orders (id int PRIMARY KEY, account_id int REFERENCES accounts);\n",
    ),
    (
        "V3__index_orders.sql",
        "-- squawk-ignore require-concurrent-index-creation -- orders is new and empty\nCREATE INDEX orders_account ON orders (account_id);\n",
    ),
];

/// A work directory with `migrations/`, a tenants file, a policy and a plan over `tenants`.
struct Workdir {
    _temp: tempfile::TempDir,
    root: PathBuf,
}

impl Workdir {
    fn new(tenants: &[SeededTenant]) -> Workdir {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let root = temp.path().to_path_buf();
        std::fs::create_dir(root.join("migrations")).expect("migrations dir");
        for (file_name, sql) in MIGRATIONS {
            std::fs::write(root.join("migrations").join(file_name), sql).expect("write migration");
        }
        write_tenants(&root.join("tenants.csv"), tenants, &[]);
        std::fs::write(
            root.join("policy.yaml"),
            "fleet:\n  source: file\n  file: tenants.csv\n\
             database: neondb\nrole: neondb_owner\n\
             validation: branch\nrestore_point: backup_branch\n\
             salt: drift-gc-test\n\
             waves:\n  - name: all\n    percent: 100\n    concurrency: 4\n    max_failures: 0\n",
        )
        .expect("write policy");
        schemafleet::plan::plan_from_tenants_file(
            &root.join("policy.yaml"),
            &root.join("migrations"),
            None,
            Some(&root.join("rollout.plan.yaml")),
        )
        .expect("a plan is written");
        Workdir { _temp: temp, root }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn plan_id(&self) -> String {
        schemafleet::plan::load_plan(&self.path("rollout.plan.yaml"))
            .expect("the plan loads")
            .plan_id
    }
}

fn write_tenants(path: &Path, tenants: &[SeededTenant], extra_ids: &[&str]) {
    let mut csv = String::from("id,name\n");
    for tenant in tenants {
        csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
    }
    for id in extra_ids {
        csv.push_str(&format!("{id},{id}\n"));
    }
    std::fs::write(path, csv).expect("write tenants file");
}

/// Apply the first `count` migrations of `dir` to the tenant's main with the real runner.
async fn migrate(tenant: &SeededTenant, dir: &Path, count: usize) {
    let set = schemafleet::migrations::load(dir).expect("migrations load");
    let migrations: Vec<refinery::Migration> = set.migrations[..count]
        .iter()
        .map(|migration| migration.to_refinery())
        .collect();
    let mut client = schemafleet::pg::connect(&tenant.connection_uri, Duration::from_secs(10))
        .await
        .expect("the tenant accepts connections");
    let report = apply_pending(
        &mut client,
        &migrations,
        TransactionMode::PerMigration,
        Timeouts {
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(30),
        },
        LockRetry {
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
        },
    )
    .await
    .unwrap_or_else(|failure| panic!("migrating {} failed: {}", tenant.name, failure.failure));
    assert_eq!(report.applied.len(), count, "{report:?}");
}

/// Run the binary against the fleet; stdout, stderr and exit code.
async fn schemafleet(fleet: &LocalFleet, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schemafleet"));
    command
        .args(args)
        .env("NEON_API_URL", fleet.api_url())
        .env("NEON_API_KEY", fleet.api_key().expose())
        .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
        .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
        .env_remove("SCHEMAFLEET_LOG");
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the blocking task joins")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn tenant_entry<'a>(document: &'a Value, tenant_id: &str) -> &'a Value {
    document["tenants"]
        .as_array()
        .expect("tenants array")
        .iter()
        .find(|entry| entry["tenant"] == tenant_id)
        .unwrap_or_else(|| panic!("{tenant_id} missing from {document:#}"))
}

/// Behind tenants are listed as behind with their pending versions and exit 0; after a
/// migration file is edited, tenants that ran it diverge (exit 1), an unknown project is
/// unreachable, and a tenant migrated with the edited file is up to date.
#[tokio::test]
async fn drift_reports_behind_diverged_and_unreachable_tenants() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(4, SEED_SQL, "drift").await.expect("seeding");
    let work = Workdir::new(&tenants);
    let migrations_dir = work.path("migrations");
    // tenants[0]: V1 only; tenants[1]: nothing; tenants[2]: all three (V3 as first written).
    migrate(&tenants[0], &migrations_dir, 1).await;
    migrate(&tenants[2], &migrations_dir, 3).await;
    let plan = work.path("rollout.plan.yaml");
    let plan = plan.to_str().expect("utf-8 path");

    let before = schemafleet(&fleet, &["drift", "--plan", plan, "--output", "json"]).await;
    assert_eq!(
        before.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let document = stdout_json(&before);
    assert_eq!(document["migrations"]["latest"], 3);
    let behind = tenant_entry(&document, &tenants[0].project_id);
    assert_eq!(behind["state"], "behind");
    assert_eq!(behind["version"], 1);
    assert_eq!(behind["pending"], serde_json::json!([2, 3]));
    let fresh = tenant_entry(&document, &tenants[1].project_id);
    assert_eq!(fresh["state"], "behind");
    assert!(fresh["version"].is_null());
    assert_eq!(fresh["pending"], serde_json::json!([1, 2, 3]));
    assert_eq!(
        tenant_entry(&document, &tenants[2].project_id)["state"],
        "up_to_date"
    );
    assert_eq!(document["counts"]["behind"], 3);
    assert_eq!(document["counts"]["diverged"], 0);

    // Someone edits V3 after tenants[2] ran it; tenants[3] is then migrated with the new file.
    std::fs::write(
        migrations_dir.join("V3__index_orders.sql"),
        "-- squawk-ignore require-concurrent-index-creation -- orders is new and empty\nCREATE INDEX orders_account ON orders (account_id, id);\n",
    )
    .expect("edit V3");
    migrate(&tenants[3], &migrations_dir, 3).await;
    write_tenants(
        &work.path("with-ghost.csv"),
        &tenants,
        &["ghost-project-404"],
    );

    let policy = work.path("policy.yaml");
    let ghost_file = work.path("with-ghost.csv");
    let after = schemafleet(
        &fleet,
        &[
            "drift",
            "--policy",
            policy.to_str().expect("utf-8"),
            "--tenants",
            ghost_file.to_str().expect("utf-8"),
            "--migrations",
            migrations_dir.to_str().expect("utf-8"),
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(
        after.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    let document = stdout_json(&after);
    let diverged = tenant_entry(&document, &tenants[2].project_id);
    assert_eq!(diverged["state"], "diverged");
    assert_eq!(diverged["version"], 3);
    let reason = diverged["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("V3__index_orders") && reason.contains("edited"),
        "{reason}"
    );
    assert_eq!(
        tenant_entry(&document, &tenants[3].project_id)["state"],
        "up_to_date"
    );
    assert_eq!(
        tenant_entry(&document, &tenants[0].project_id)["pending"],
        serde_json::json!([2, 3])
    );
    let ghost = tenant_entry(&document, "ghost-project-404");
    assert_eq!(ghost["state"], "unreachable");
    assert!(ghost["reason"].as_str().expect("a reason").contains("404"));
    assert_eq!(document["counts"]["total"], 5);
    assert_eq!(document["counts"]["diverged"], 1);
    assert_eq!(document["counts"]["unreachable"], 1);

    // The fleet discovered through the API by the policy's name prefix: the four tenants.
    std::fs::write(
        work.path("neon-policy.yaml"),
        std::fs::read_to_string(&policy).expect("policy").replace(
            "  source: file\n  file: tenants.csv\n",
            "  source: neon\n  name_prefix: drift-\n",
        ),
    )
    .expect("write neon policy");
    let discovered = schemafleet(
        &fleet,
        &[
            "drift",
            "--policy",
            work.path("neon-policy.yaml").to_str().expect("utf-8"),
            "--migrations",
            migrations_dir.to_str().expect("utf-8"),
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(
        discovered.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&discovered.stderr)
    );
    let document = stdout_json(&discovered);
    assert_eq!(document["counts"]["total"], 4, "{document:#}");
    assert_eq!(document["counts"]["diverged"], 1);

    // The plan positionally, as `status` and `apply` take it.
    let text = schemafleet(&fleet, &["drift", plan]).await;
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "{stdout}"
    );
    assert!(stdout.contains("DIVERGED: 1 tenant"), "{stdout}");
    assert!(stdout.contains(&tenants[2].project_id), "{stdout}");
    assert!(stdout.contains("behind, pending V2, V3"), "{stdout}");
    assert!(stdout.contains(&tenants[0].project_id), "{stdout}");

    let missing = schemafleet(&fleet, &["drift", "--plan", "/nonexistent/plan.yaml"]).await;
    assert_eq!(missing.status.code(), Some(2));
    fleet.stop().await.expect("the fleet stops");
}

fn client(fleet: &LocalFleet) -> NeonClient {
    let mut config = ClientConfig::new(fleet.api_url(), fleet.api_key().clone(), 100_000);
    config.poll_interval = Duration::from_millis(20);
    NeonClient::new(config).expect("a client")
}

async fn create_branch(
    client: &NeonClient,
    project_id: &str,
    name: &str,
    expires_at: Option<String>,
) -> String {
    client
        .create_branch(
            project_id,
            &CreateBranch {
                name: name.to_string(),
                parent_id: None,
                expires_at,
            },
        )
        .await
        .unwrap_or_else(|error| panic!("creating {name}: {error}"))
        .branch
        .id
}

async fn branch_names(client: &NeonClient, project_id: &str) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_branches(project_id)
        .await
        .expect("branches list")
        .into_iter()
        .map(|branch| branch.name)
        .collect();
    names.sort();
    names
}

/// A dry run lists and deletes nothing; gc --plan deletes the finished tenant's validation
/// branch and stale backup, keeps its restore point, the in-flight tenant's branch, a foreign
/// plan's branch, other branches and main; gc --all (every project) then takes every
/// schemafleet branch and still leaves main and the others alone.
#[tokio::test]
async fn gc_deletes_only_finished_schemafleet_branches() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(3, SEED_SQL, "gc").await.expect("seeding");
    let work = Workdir::new(&tenants);
    let plan_id = work.plan_id();
    let prefix: String = plan_id.chars().take(12).collect();
    let client = client(&fleet);
    let (done, busy, other) = (&tenants[0], &tenants[1], &tenants[2]);

    let stamp = "20260501t110000z";
    let done_validate = format!("schemafleet-validate-{prefix}-{stamp}-0001");
    let done_backup = format!("schemafleet-backup-{prefix}-{stamp}-0002");
    let stale_backup = format!("schemafleet-backup-{prefix}-{stamp}-0003");
    let busy_validate = format!("schemafleet-validate-{prefix}-{stamp}-0004");
    let foreign = format!("schemafleet-validate-999999999999-{stamp}-0005");
    let in_an_hour = schemafleet::clock::rfc3339_seconds_from_now(Duration::from_secs(3600));
    // One project at a time accepts a branch mutation (423 otherwise), so projects go in
    // parallel and one project's branches in sequence.
    let done_branches = async {
        let validate_id = create_branch(
            &client,
            &done.project_id,
            &done_validate,
            Some(in_an_hour.clone()),
        )
        .await;
        let backup_id = create_branch(&client, &done.project_id, &done_backup, None).await;
        create_branch(&client, &done.project_id, &stale_backup, None).await;
        create_branch(&client, &done.project_id, "dev-feature", None).await;
        (validate_id, backup_id)
    };
    let ((done_validate_id, done_backup_id), busy_validate_id, _) = futures::join!(
        done_branches,
        create_branch(
            &client,
            &busy.project_id,
            &busy_validate,
            Some(in_an_hour.clone())
        ),
        create_branch(
            &client,
            &other.project_id,
            &foreign,
            Some(in_an_hour.clone())
        ),
    );

    // The journal of a run: `done` applied with its backup as restore point, `busy` in flight.
    let journal_path = work.path("rollout.journal.jsonl");
    let (journal, _) = Journal::open(&journal_path, &plan_id).expect("journal opens");
    let wave = "all".to_string();
    let events = vec![
        Event::RunStarted {
            plan_id: plan_id.clone(),
            run_id: "run-1".into(),
            pid: 1,
            tool_version: "test".into(),
        },
        Event::TenantProbed {
            tenant: done.project_id.clone(),
            wave: wave.clone(),
            current_version: None,
            pending: vec![1, 2, 3],
        },
        Event::BranchCreated {
            tenant: done.project_id.clone(),
            wave: wave.clone(),
            purpose: "validate".into(),
            branch_id: done_validate_id.clone(),
            branch_name: done_validate.clone(),
            parent_branch_id: Some(done.branch_id.clone()),
            parent_lsn: None,
            expires_at: None,
        },
        Event::RestorePointRecorded {
            tenant: done.project_id.clone(),
            wave: wave.clone(),
            point: RestorePoint::BackupBranch {
                main_branch_id: done.branch_id.clone(),
                backup_branch_id: done_backup_id,
                backup_branch_name: done_backup.clone(),
            },
        },
        Event::Applied {
            tenant: done.project_id.clone(),
            wave: wave.clone(),
            versions: vec![1, 2, 3],
            lock_retries: 0,
        },
        Event::TenantProbed {
            tenant: busy.project_id.clone(),
            wave: wave.clone(),
            current_version: None,
            pending: vec![1, 2, 3],
        },
        Event::BranchCreated {
            tenant: busy.project_id.clone(),
            wave,
            purpose: "validate".into(),
            branch_id: busy_validate_id,
            branch_name: busy_validate.clone(),
            parent_branch_id: Some(busy.branch_id.clone()),
            parent_lsn: None,
            expires_at: None,
        },
    ];
    for event in events {
        journal.append(event).await.expect("journal append");
    }
    journal.close().await;

    let plan = work.path("rollout.plan.yaml");
    let plan = plan.to_str().expect("utf-8 path");
    let names_before = (
        branch_names(&client, &done.project_id).await,
        branch_names(&client, &busy.project_id).await,
        branch_names(&client, &other.project_id).await,
    );

    let dry = schemafleet(
        &fleet,
        &["gc", "--plan", plan, "--dry-run", "--output", "json"],
    )
    .await;
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let document = stdout_json(&dry);
    let mut to_delete: Vec<String> = document["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter(|branch| branch["delete"] == true)
        .map(|branch| branch["branch_name"].as_str().expect("name").to_string())
        .collect();
    to_delete.sort();
    assert_eq!(to_delete, vec![stale_backup.clone(), done_validate.clone()]);
    assert!(
        document["branches"]
            .as_array()
            .expect("branches")
            .iter()
            .all(|branch| branch["tenant_name"]
                == tenants
                    .iter()
                    .find(|tenant| branch["project_id"] == tenant.project_id.as_str())
                    .map_or("?", |tenant| tenant.name.as_str())),
        "{document:#}"
    );
    assert_eq!(document["branches"].as_array().expect("branches").len(), 5);
    let names_after_dry_run = (
        branch_names(&client, &done.project_id).await,
        branch_names(&client, &busy.project_id).await,
        branch_names(&client, &other.project_id).await,
    );
    assert_eq!(
        names_after_dry_run, names_before,
        "a dry run deletes nothing"
    );

    // While an `apply` holds the journal, gc refuses to delete (and says why).
    let (held, _) = Journal::open(&journal_path, &plan_id).expect("journal opens");
    let refused = schemafleet(&fleet, &["gc", "--plan", plan]).await;
    held.close().await;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is running"), "{stderr}");
    assert_eq!(
        branch_names(&client, &done.project_id).await,
        names_before.0,
        "a refused gc deletes nothing"
    );

    let real = schemafleet(&fleet, &["gc", "--plan", plan]).await;
    let stdout = String::from_utf8_lossy(&real.stdout);
    assert_eq!(
        real.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert!(stdout.contains("2 deleted, 0 failed, 3 kept"), "{stdout}");
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "{stdout}"
    );
    // Each branch is listed with its tenant as people know it, not by project id alone.
    let flowing = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains(&format!(
            "{done_validate} ({done_validate_id}) of {} ({}):",
            done.name, done.project_id
        )),
        "{stdout}"
    );
    let mut expected_done = vec![done_backup.clone(), "dev-feature".into(), "main".into()];
    expected_done.sort();
    assert_eq!(branch_names(&client, &done.project_id).await, expected_done);
    assert!(
        branch_names(&client, &busy.project_id)
            .await
            .contains(&busy_validate)
    );
    assert!(
        branch_names(&client, &other.project_id)
            .await
            .contains(&foreign)
    );
    // The deletion of the branch the journal listed as open is journaled.
    let state = Journal::read(&journal_path).expect("journal reads").state;
    let done_state = state.tenant(&done.project_id).expect("done is journaled");
    assert!(
        !done_state.open_branches.contains_key(&done_validate_id),
        "{:?}",
        done_state.open_branches
    );

    let all = schemafleet(&fleet, &["gc", "--all", "--output", "json"]).await;
    assert_eq!(
        all.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let all_document = stdout_json(&all);
    assert_eq!(all_document["projects"], 3);
    // Without a plan, the names and regions come from the project listing.
    let listed = all_document["branches"].as_array().expect("branches");
    assert!(!listed.is_empty(), "{all_document:#}");
    for branch in listed {
        let tenant = tenants
            .iter()
            .find(|tenant| branch["project_id"] == tenant.project_id.as_str())
            .expect("a seeded tenant");
        assert_eq!(
            branch["tenant_name"],
            tenant.name.as_str(),
            "{all_document:#}"
        );
        assert!(
            branch["region"]
                .as_str()
                .is_some_and(|region| !region.is_empty())
        );
    }
    let mut expected_done = vec!["dev-feature".to_string(), "main".into()];
    expected_done.sort();
    assert_eq!(branch_names(&client, &done.project_id).await, expected_done);
    assert_eq!(branch_names(&client, &busy.project_id).await, vec!["main"]);
    assert_eq!(branch_names(&client, &other.project_id).await, vec!["main"]);
    fleet.stop().await.expect("the fleet stops");
}

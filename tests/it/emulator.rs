//! The local Neon emulator over a real PostgreSQL, driven through raw HTTP (reqwest) and SQL
//! (tokio-postgres), as a client of the real service would.
//!
//! Each test starts its own small fleet (one temporary cluster) so tests run in parallel.

use crate::common;

use std::time::{Duration, Instant};

use common::{Api, connect, dump_tables, start_fleet, wait_until};
use schemafleet::emulator::{LocalFleet, LocalFleetConfig};
use serde_json::json;

const SEED_SQL: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO accounts VALUES (1, 'alpha'), (2, 'beta');
CREATE TABLE notes (id serial PRIMARY KEY, account_id int REFERENCES accounts, body text);
INSERT INTO notes (account_id, body) VALUES (1, 'first'), (2, 'second');
";

async fn count_accounts(uri: &str) -> i64 {
    let client = connect(uri).await;
    client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("accounts is readable")
        .get(0)
}

/// Seed a tenant, branch it, write on the branch: the branch has main's data, main never sees
/// the branch's writes, and deleting the branch removes its database.
#[tokio::test]
async fn branch_sees_parent_data_and_its_writes_stay_on_the_branch() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let tenants = fleet
        .seed(2, SEED_SQL, "tenant")
        .await
        .expect("seeding works");
    assert_eq!(tenants[0].name, "tenant-0001");
    assert_eq!(tenants[1].name, "tenant-0002");
    let tenant = &tenants[0];
    assert_eq!(count_accounts(tenant.connection_uri.expose()).await, 2);

    // Each tenant's role reaches only its own databases.
    let mut foreign = url::Url::parse(tenant.connection_uri.expose()).unwrap();
    let other_database = url::Url::parse(tenants[1].connection_uri.expose())
        .unwrap()
        .path()
        .to_string();
    foreign.set_path(&other_database);
    let refused = tokio_postgres::connect(foreign.as_str(), tokio_postgres::NoTls).await;
    assert!(
        refused.is_err(),
        "a tenant must not connect to another tenant's database"
    );

    // The seeded objects belong to the tenant's own role, which can therefore migrate them.
    let main = connect(tenant.connection_uri.expose()).await;
    main.batch_execute("ALTER TABLE accounts ADD COLUMN email text")
        .await
        .expect("the tenant role owns its tables");

    let created = api
        .post(
            &format!("/projects/{}/branches", tenant.project_id),
            json!({"branch": {"name": "validate-1"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["branch"]["current_state"], "init");
    assert_eq!(created.body["operations"][0]["action"], "create_branch");
    assert_eq!(created.body["operations"][1]["action"], "start_compute");
    let branch_id = created.body["branch"]["id"].as_str().unwrap().to_string();
    api.wait_for_operations(&tenant.project_id).await;
    let branch = api
        .get(&format!(
            "/projects/{}/branches/{branch_id}",
            tenant.project_id
        ))
        .await;
    assert_eq!(branch.body["branch"]["current_state"], "ready");

    let branch_uri = api.connection_uri(&tenant.project_id, &branch_id).await;
    assert_eq!(
        created.body["connection_uris"][0]["connection_uri"], branch_uri,
        "create-branch and connection_uri agree"
    );
    assert!(
        branch_uri.contains("?sslmode=disable&options=endpoint%3Dep-"),
        "the URI names the branch's endpoint for the proxy: {branch_uri}"
    );
    let on_branch = connect(&branch_uri).await;
    let email_columns: i64 = on_branch
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        email_columns, 1,
        "the branch has main's schema as of branching"
    );
    on_branch
        .batch_execute("INSERT INTO accounts VALUES (3, 'only-on-branch', NULL)")
        .await
        .unwrap();
    assert_eq!(count_accounts(&branch_uri).await, 3);
    assert_eq!(count_accounts(tenant.connection_uri.expose()).await, 2);
    drop(on_branch);

    let deleted = api
        .delete(&format!(
            "/projects/{}/branches/{branch_id}",
            tenant.project_id
        ))
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert!(
        tokio_postgres::connect(&branch_uri, tokio_postgres::NoTls)
            .await
            .is_err()
    );
    api.wait_for_operations(&tenant.project_id).await;
    let again = api
        .delete(&format!(
            "/projects/{}/branches/{branch_id}",
            tenant.project_id
        ))
        .await;
    assert_eq!(again.status, 204);
    fleet.stop().await.unwrap();
}

/// Every implemented route answers with the shape Neon's official spec declares for that
/// operation and status, errors included.
#[tokio::test]
async fn every_route_answers_with_the_shapes_of_the_official_spec() {
    let Some(spec) = common::Spec::load() else {
        return;
    };
    // Operations long enough that a second mutation reliably meets a running one (423).
    let fleet = LocalFleet::start(LocalFleetConfig {
        op_delay: Duration::from_millis(1000),
        ..LocalFleetConfig::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&fleet);

    let created = api
        .post(
            "/projects",
            json!({"project": {"name": "spec-check", "history_retention_seconds": 3600}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    spec.check("post", "/projects", &created);
    let project_id = created.body["project"]["id"].as_str().unwrap().to_string();
    let main_id = created.body["branch"]["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["roles"][0]["name"], "neondb_owner");
    assert_eq!(created.body["databases"][0]["name"], "neondb");
    api.wait_for_operations(&project_id).await;

    let listed = api.get("/projects?limit=5").await;
    spec.check("get", "/projects", &listed);
    let project = api.get(&format!("/projects/{project_id}")).await;
    spec.check("get", "/projects/{project_id}", &project);

    let branches_path = format!("/projects/{project_id}/branches");
    let branch = api
        .post(
            &branches_path,
            json!({"branch": {"name": "dev"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(branch.status, 201, "{}", branch.text);
    spec.check("post", "/projects/{project_id}/branches", &branch);
    let branch_id = branch.body["branch"]["id"].as_str().unwrap().to_string();

    let locked = api.post(&branches_path, json!({})).await;
    assert_eq!(locked.status, 423, "{}", locked.text);
    spec.check("post", "/projects/{project_id}/branches", &locked);
    api.wait_for_operations(&project_id).await;

    let duplicate = api
        .post(&branches_path, json!({"branch": {"name": "dev"}}))
        .await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.text);
    spec.check("post", "/projects/{project_id}/branches", &duplicate);

    let listed_branches = api.get(&format!("{branches_path}?limit=1")).await;
    spec.check("get", "/projects/{project_id}/branches", &listed_branches);
    let count = api.get(&format!("{branches_path}/count")).await;
    spec.check("get", "/projects/{project_id}/branches/count", &count);
    assert_eq!(count.body["count"], 2);
    let one = api.get(&format!("{branches_path}/{branch_id}")).await;
    spec.check("get", "/projects/{project_id}/branches/{branch_id}", &one);
    let renamed = api
        .patch(
            &format!("{branches_path}/{branch_id}"),
            json!({"branch": {"name": "dev-renamed"}}),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(renamed.body["branch"]["name"], "dev-renamed");
    spec.check(
        "patch",
        "/projects/{project_id}/branches/{branch_id}",
        &renamed,
    );

    for (suffix, template) in [
        (
            "endpoints",
            "/projects/{project_id}/branches/{branch_id}/endpoints",
        ),
        (
            "databases",
            "/projects/{project_id}/branches/{branch_id}/databases",
        ),
        ("roles", "/projects/{project_id}/branches/{branch_id}/roles"),
    ] {
        let answer = api
            .get(&format!("{branches_path}/{branch_id}/{suffix}"))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        spec.check("get", template, &answer);
    }
    let endpoints = api.get(&format!("/projects/{project_id}/endpoints")).await;
    spec.check("get", "/projects/{project_id}/endpoints", &endpoints);

    let operations = api.get(&format!("/projects/{project_id}/operations")).await;
    spec.check("get", "/projects/{project_id}/operations", &operations);
    let operation_id = operations.body["operations"][0]["id"].as_str().unwrap();
    let operation = api
        .get(&format!("/projects/{project_id}/operations/{operation_id}"))
        .await;
    spec.check(
        "get",
        "/projects/{project_id}/operations/{operation_id}",
        &operation,
    );

    let uri = api
        .get(&format!(
            "/projects/{project_id}/connection_uri?database_name=neondb&role_name=neondb_owner&pooled=true"
        ))
        .await;
    assert_eq!(uri.status, 200, "{}", uri.text);
    spec.check("get", "/projects/{project_id}/connection_uri", &uri);
    let missing_parameter = api
        .get(&format!(
            "/projects/{project_id}/connection_uri?role_name=neondb_owner"
        ))
        .await;
    assert_eq!(missing_parameter.status, 400);
    spec.check(
        "get",
        "/projects/{project_id}/connection_uri",
        &missing_parameter,
    );

    // Restore main from the dev branch's head; main has a child, so a preserve name is needed.
    let restore_path = format!("{branches_path}/{main_id}/restore");
    let unnamed = api
        .post(&restore_path, json!({"source_branch_id": branch_id}))
        .await;
    assert_eq!(unnamed.status, 400, "{}", unnamed.text);
    spec.check(
        "post",
        "/projects/{project_id}/branches/{branch_id}/restore",
        &unnamed,
    );
    let restored = api
        .post(
            &restore_path,
            json!({"source_branch_id": branch_id, "preserve_under_name": "main_before_reset"}),
        )
        .await;
    assert_eq!(restored.status, 200, "{}", restored.text);
    spec.check(
        "post",
        "/projects/{project_id}/branches/{branch_id}/restore",
        &restored,
    );
    assert!(restored.body["branch"]["last_reset_at"].is_string());
    api.wait_for_operations(&project_id).await;

    let default_delete = api.delete(&format!("{branches_path}/{main_id}")).await;
    assert_eq!(default_delete.status, 422, "{}", default_delete.text);
    spec.check(
        "delete",
        "/projects/{project_id}/branches/{branch_id}",
        &default_delete,
    );
    let deleted = api.delete(&format!("{branches_path}/{branch_id}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    spec.check(
        "delete",
        "/projects/{project_id}/branches/{branch_id}",
        &deleted,
    );
    api.wait_for_operations(&project_id).await;
    let gone = api.delete(&format!("{branches_path}/{branch_id}")).await;
    assert_eq!(gone.status, 204);
    spec.check(
        "delete",
        "/projects/{project_id}/branches/{branch_id}",
        &gone,
    );

    let unknown = api.get("/projects/no-such-project").await;
    assert_eq!(unknown.status, 404);
    spec.check("get", "/projects/{project_id}", &unknown);
    let deleted_project = api.delete(&format!("/projects/{project_id}")).await;
    assert_eq!(deleted_project.status, 200, "{}", deleted_project.text);
    spec.check("delete", "/projects/{project_id}", &deleted_project);
    assert_eq!(
        api.get(&format!("/projects/{project_id}")).await.status,
        404
    );
    fleet.stop().await.unwrap();
}

/// Branching while an application holds a session (with an open transaction) on main works, and
/// that session goes on undisturbed: same backend, its transaction commits.
#[tokio::test]
async fn branching_while_a_session_is_connected_to_main_leaves_it_undisturbed() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let tenant = fleet.seed(1, SEED_SQL, "tenant").await.unwrap().remove(0);
    let app = connect(tenant.connection_uri.expose()).await;
    let backend_before: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    app.batch_execute("INSERT INTO accounts VALUES (3, 'committed')")
        .await
        .unwrap();
    app.batch_execute("BEGIN; INSERT INTO accounts VALUES (4, 'in-flight')")
        .await
        .unwrap();

    let started = Instant::now();
    let created = api
        .post(
            &format!("/projects/{}/branches", tenant.project_id),
            json!({"branch": {"name": "while-connected"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    // CREATE DATABASE … TEMPLATE would have waited 5 s for the session before failing.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "branching took {:?}",
        started.elapsed()
    );
    let branch_id = created.body["branch"]["id"].as_str().unwrap();
    let branch_uri = api.connection_uri(&tenant.project_id, branch_id).await;
    let branch = connect(&branch_uri).await;
    let names: Vec<String> = branch
        .query("SELECT name FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(names, ["alpha", "beta", "committed"], "committed data only");

    app.batch_execute("INSERT INTO accounts VALUES (5, 'after-branching'); COMMIT;")
        .await
        .expect("the app's transaction survives branching");
    let backend_after: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(backend_before, backend_after, "same session throughout");
    assert_eq!(count_accounts(tenant.connection_uri.expose()).await, 5);
    assert_eq!(count_accounts(&branch_uri).await, 3);
    fleet.stop().await.unwrap();
}

/// Roll back a migration: restore main to the instant a branch was taken from it. Main returns
/// to exactly its earlier tables and rows, keeps its id, name and URI, and the migrated state is
/// kept under the preserve name. Points it cannot honour are refused with 400.
#[tokio::test]
async fn restore_brings_main_back_and_keeps_the_newer_state_under_the_preserved_name() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let tenant = fleet.seed(1, SEED_SQL, "tenant").await.unwrap().remove(0);
    let project_id = &tenant.project_id;
    let main_uri = tenant.connection_uri.expose().to_string();
    let before = dump_tables(&connect(&main_uri).await).await;

    let checkpoint = api
        .post(
            &format!("/projects/{project_id}/branches"),
            json!({"branch": {"name": "pre-migration"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(checkpoint.status, 201, "{}", checkpoint.text);
    let lsn = checkpoint.body["branch"]["parent_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let timestamp = checkpoint.body["branch"]["parent_timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lsn.contains('/'), "an LSN like 0/1DE2850: {lsn}");
    api.wait_for_operations(project_id).await;

    connect(&main_uri)
        .await
        .batch_execute(
            "ALTER TABLE accounts ADD COLUMN plan text DEFAULT 'free';
             INSERT INTO accounts (id, name) VALUES (3, 'gamma');
             CREATE TABLE invoices (id int PRIMARY KEY);
             DELETE FROM notes WHERE id = 1;",
        )
        .await
        .unwrap();
    let after = dump_tables(&connect(&main_uri).await).await;
    assert_ne!(before, after);

    let restore_path = format!(
        "/projects/{project_id}/branches/{}/restore",
        tenant.branch_id
    );
    let without_name = api
        .post(
            &restore_path,
            json!({"source_branch_id": tenant.branch_id, "source_lsn": lsn}),
        )
        .await;
    assert_eq!(without_name.status, 400, "{}", without_name.text);
    assert!(
        without_name.body["message"]
            .as_str()
            .unwrap()
            .contains("preserve_under_name"),
        "{}",
        without_name.text
    );
    let unknown_point = api
        .post(
            &restore_path,
            json!({"source_branch_id": tenant.branch_id, "source_lsn": "0/1",
                   "preserve_under_name": "x"}),
        )
        .await;
    assert_eq!(unknown_point.status, 400, "{}", unknown_point.text);
    let message = unknown_point.body["message"].as_str().unwrap();
    assert!(
        message.contains(&lsn),
        "names the points it can honour: {message}"
    );

    let restored = api
        .post(
            &restore_path,
            json!({"source_branch_id": tenant.branch_id, "source_lsn": lsn,
                   "preserve_under_name": "main_before_rollback"}),
        )
        .await;
    assert_eq!(restored.status, 200, "{}", restored.text);
    assert_eq!(restored.body["branch"]["id"], tenant.branch_id.as_str());
    assert_eq!(restored.body["branch"]["name"], "main");
    assert!(restored.body["branch"]["last_reset_at"].is_string());
    api.wait_for_operations(project_id).await;

    assert_eq!(
        api.connection_uri(project_id, &tenant.branch_id).await,
        main_uri,
        "connection details do not change"
    );
    assert_eq!(dump_tables(&connect(&main_uri).await).await, before);
    let branches = api
        .get(&format!(
            "/projects/{project_id}/branches?search=main_before_rollback"
        ))
        .await;
    let preserved_id = branches.body["branches"][0]["id"].as_str().unwrap();
    // As on Neon, the preserved branch has no compute of its own: read it behind the API.
    let preserved_uri = fleet
        .branch_superuser_uri(project_id, preserved_id)
        .expect("the preserved branch exists");
    assert_eq!(
        dump_tables(&connect(preserved_uri.expose()).await).await,
        after
    );

    // The same point named by its timestamp works again (main's history is kept).
    let again = api
        .post(
            &restore_path,
            json!({"source_branch_id": tenant.branch_id, "source_timestamp": timestamp,
                   "preserve_under_name": "second_rollback"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    fleet.stop().await.unwrap();
}

/// A branch with `expires_at` is deleted with its database once that time passes; expiry times
/// in the past or more than 30 days ahead are refused.
#[tokio::test]
async fn expired_branches_are_reaped_with_their_databases() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let tenant = fleet.seed(1, SEED_SQL, "tenant").await.unwrap().remove(0);
    let branches_path = format!("/projects/{}/branches", tenant.project_id);
    let now = time::OffsetDateTime::now_utc();
    let format = &time::format_description::well_known::Rfc3339;
    let past = (now - time::Duration::minutes(1)).format(format).unwrap();
    let too_far = (now + time::Duration::days(31)).format(format).unwrap();
    for expires_at in [past, too_far] {
        let refused = api
            .post(
                &branches_path,
                json!({"branch": {"expires_at": expires_at}}),
            )
            .await;
        assert_eq!(refused.status, 400, "{expires_at}: {}", refused.text);
    }
    let soon = (now + time::Duration::milliseconds(3000))
        .format(format)
        .unwrap();
    let created = api
        .post(
            &branches_path,
            json!({"branch": {"name": "short-lived", "expires_at": soon}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(created.body["branch"]["ttl_interval_seconds"].is_number());
    let branch_id = created.body["branch"]["id"].as_str().unwrap().to_string();
    let branch_uri = api.connection_uri(&tenant.project_id, &branch_id).await;
    assert_eq!(count_accounts(&branch_uri).await, 2);
    wait_until("the expired branch to be reaped", || async {
        api.get(&format!("{branches_path}/{branch_id}"))
            .await
            .status
            == 404
    })
    .await;
    assert!(
        tokio_postgres::connect(&branch_uri, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the branch's database is gone"
    );
    fleet.stop().await.unwrap();
}

/// While a project's operations run its mutations get 423 with Neon's message; afterwards they
/// succeed. Requests without the key get 401.
#[tokio::test]
async fn mutations_wait_for_running_operations_and_the_key_is_required() {
    let fleet = LocalFleet::start(LocalFleetConfig {
        op_delay: Duration::from_millis(1000),
        ..LocalFleetConfig::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&fleet);
    let tenant = fleet.seed(1, "", "tenant").await.unwrap().remove(0);
    let branches_path = format!("/projects/{}/branches", tenant.project_id);
    let first = api
        .post(&branches_path, json!({"branch": {"name": "one"}}))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["operations"][0]["status"], "running");
    let second = api
        .post(&branches_path, json!({"branch": {"name": "two"}}))
        .await;
    assert_eq!(second.status, 423, "{}", second.text);
    assert_eq!(
        second.body["message"],
        "project already has running conflicting operations, scheduling of new ones is prohibited"
    );
    assert_eq!(second.body["code"], "");
    assert!(second.body["request_id"].is_string());
    api.wait_for_operations(&tenant.project_id).await;
    let retried = api
        .post(&branches_path, json!({"branch": {"name": "two"}}))
        .await;
    assert_eq!(retried.status, 201, "{}", retried.text);

    let anonymous = reqwest::get(format!("{}/projects", fleet.api_url()))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong_key = reqwest::Client::new()
        .get(format!("{}/projects", fleet.api_url()))
        .bearer_auth("napi_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    let body: serde_json::Value = wrong_key.json().await.unwrap();
    assert_eq!(body["code"], "");
    assert!(body["message"].is_string() && body["request_id"].is_string());
    fleet.stop().await.unwrap();
}

/// Listing projects pages through the whole fleet with `pagination.cursor`; `search` filters;
/// limits outside 1..400 are refused. Branch listing pages with `pagination.next`.
#[tokio::test]
async fn projects_and_branches_page_with_cursors() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let seeded = fleet.seed(7, "", "tenant").await.unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/projects?limit=3&cursor={cursor}"),
            None => "/projects?limit=3".to_string(),
        };
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let projects = page.body["projects"].as_array().unwrap();
        if projects.is_empty() {
            break;
        }
        pages += 1;
        seen.extend(
            projects
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_string()),
        );
        cursor = Some(
            page.body["pagination"]["cursor"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = seeded.iter().map(|t| t.project_id.clone()).collect();
    assert_eq!(seen, expected, "every project once, in creation order");

    let found = api.get("/projects?search=tenant-0005").await;
    assert_eq!(found.body["projects"].as_array().unwrap().len(), 1);
    assert_eq!(
        found.body["projects"][0]["id"],
        seeded[4].project_id.as_str()
    );
    for bad in ["0", "401", "many"] {
        assert_eq!(api.get(&format!("/projects?limit={bad}")).await.status, 400);
    }

    let project_id = &seeded[0].project_id;
    for name in ["b1", "b2", "b3"] {
        let created = api
            .post(
                &format!("/projects/{project_id}/branches"),
                json!({"branch": {"name": name}}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        api.wait_for_operations(project_id).await;
    }
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(next) => format!(
                "/projects/{project_id}/branches?limit=3&sort_by=name&sort_order=asc&cursor={next}"
            ),
            None => format!("/projects/{project_id}/branches?limit=3&sort_by=name&sort_order=asc"),
        };
        let page = api.get(&path).await;
        names.extend(
            page.body["branches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["name"].as_str().unwrap().to_string()),
        );
        match page.body["pagination"]["next"].as_str() {
            Some(value) => next = Some(value.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["b1", "b2", "b3", "main"]);
    fleet.stop().await.unwrap();
}

/// A restarted emulator over the same data directory serves the same fleet, data included.
#[tokio::test]
async fn restart_with_the_same_data_dir_keeps_the_fleet() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = LocalFleetConfig {
        data_dir: Some(data_dir.path().join("pg")),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = LocalFleet::start(config.clone()).await.unwrap();
    let api = Api::new(&fleet);
    let tenants = fleet.seed(2, SEED_SQL, "tenant").await.unwrap();
    let created = api
        .post(
            &format!("/projects/{}/branches", tenants[0].project_id),
            json!({"branch": {"name": "kept"}, "endpoints": [{"type": "read_write"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let branch_id = created.body["branch"]["id"].as_str().unwrap().to_string();
    let before = api.get("/projects").await.body["projects"].clone();
    fleet.stop().await.unwrap();

    let fleet = LocalFleet::start(config).await.unwrap();
    let api = Api::new(&fleet);
    let after = api.get("/projects").await.body["projects"].clone();
    assert_eq!(before, after);
    let branch = api
        .get(&format!(
            "/projects/{}/branches/{branch_id}",
            tenants[0].project_id
        ))
        .await;
    assert_eq!(branch.status, 200, "{}", branch.text);
    assert_eq!(branch.body["branch"]["name"], "kept");
    let uri = api.connection_uri(&tenants[0].project_id, &branch_id).await;
    assert_eq!(count_accounts(&uri).await, 2);
    let more = fleet.seed(1, "", "tenant").await.unwrap();
    assert_eq!(more[0].name, "tenant-0003", "numbering continues");
    fleet.stop().await.unwrap();
}

/// Injected faults: every request faults at rate 1 (524 with an HTML body), some 500/524
/// mutations are applied before the error, and the rate can be turned off at runtime.
#[tokio::test]
async fn injected_faults_are_retryable_and_sometimes_applied_first() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let tenant = fleet.seed(1, "", "tenant").await.unwrap().remove(0);
    fleet.set_fault_rate(1.0);
    let branches_path = format!("/projects/{}/branches", tenant.project_id);
    let mut saw_html_524 = false;
    for attempt in 0..200 {
        let answer = api
            .post(
                &branches_path,
                json!({"branch": {"name": format!("try-{attempt}")}}),
            )
            .await;
        assert!(
            [423, 429, 500, 503, 524].contains(&answer.status),
            "{}",
            answer.text
        );
        if answer.status == 524 {
            assert!(answer.text.contains("<html>"), "{}", answer.text);
            saw_html_524 = true;
        } else {
            assert_eq!(answer.body["code"], "", "{}", answer.text);
        }
        if saw_html_524 && fleet.stats().applied_then_failed >= 2 {
            break;
        }
        // Applied mutations start operations; let them finish so the next one can apply.
        fleet.set_fault_rate(0.0);
        api.wait_for_operations(&tenant.project_id).await;
        fleet.set_fault_rate(1.0);
    }
    let stats = fleet.stats();
    assert!(saw_html_524);
    assert!(stats.applied_then_failed >= 2, "{stats:?}");
    assert_eq!(
        stats.injected_faults,
        stats.requests - stats.by_status.get(&200).copied().unwrap_or(0)
    );

    fleet.set_fault_rate(0.0);
    let count = api.get(&format!("{branches_path}/count")).await;
    assert_eq!(count.status, 200);
    assert_eq!(
        count.body["count"].as_u64().unwrap(),
        1 + stats.applied_then_failed,
        "each applied-then-failed mutation really created its branch"
    );
    fleet.stop().await.unwrap();
}

/// Past the configured rate, requests get 429 with a GeneralError body and `Retry-After`.
#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let fleet = LocalFleet::start(LocalFleetConfig {
        rate_limit_per_min: Some(5),
        ..LocalFleetConfig::for_tests()
    })
    .await
    .unwrap();
    let api = Api::new(&fleet);
    for _ in 0..5 {
        assert_eq!(api.get("/projects").await.status, 200);
    }
    let response = api
        .client
        .get(format!("{}/projects", fleet.api_url()))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "");
    assert_eq!(fleet.stats().rate_limited, 1);
    fleet.stop().await.unwrap();
}

/// Seeding 200 tenants takes seconds: the seed SQL runs once and each main is a template copy.
#[tokio::test]
async fn seeding_200_tenants_is_fast() {
    let fleet = start_fleet().await;
    let started = Instant::now();
    let tenants = fleet.seed(200, SEED_SQL, "tenant").await.unwrap();
    let elapsed = started.elapsed();
    println!("seeded 200 tenants in {:.2} s", elapsed.as_secs_f64());
    assert_eq!(tenants.len(), 200);
    assert_eq!(tenants[199].name, "tenant-0200");
    let mut ids: Vec<&str> = tenants.iter().map(|t| t.project_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(
        count_accounts(tenants[137].connection_uri.expose()).await,
        2
    );
    let api = Api::new(&fleet);
    let listed = api.get("/projects?limit=400").await;
    assert_eq!(listed.body["projects"].as_array().unwrap().len(), 200);
    let stopping = Instant::now();
    fleet.stop().await.unwrap();
    println!("stopped in {:.2} s", stopping.elapsed().as_secs_f64());
}

/// Snapshots older than the project's restore window are dropped by the reaper and can no
/// longer be restored to.
#[tokio::test]
async fn history_past_the_restore_window_is_dropped_and_refused() {
    let fleet = start_fleet().await;
    let api = Api::new(&fleet);
    let created = api
        .post(
            "/projects",
            json!({"project": {"name": "short-history", "history_retention_seconds": 1}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let project_id = created.body["project"]["id"].as_str().unwrap().to_string();
    let main_id = created.body["branch"]["id"].as_str().unwrap().to_string();
    api.wait_for_operations(&project_id).await;
    let branch = api
        .post(&format!("/projects/{project_id}/branches"), json!({}))
        .await;
    assert_eq!(branch.status, 201, "{}", branch.text);
    let lsn = branch.body["branch"]["parent_lsn"]
        .as_str()
        .unwrap()
        .to_string();

    let superuser = connect(fleet.database_url().expose()).await;
    let snapshots = || async {
        superuser
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'snap\\_%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(snapshots().await, 1, "branching kept a snapshot of main");
    wait_until("the reaper to drop the old snapshot", || async {
        snapshots().await == 0
    })
    .await;
    api.wait_for_operations(&project_id).await;
    // The reaper may still hold the project's lock for its bookkeeping after the drop: 423 is
    // Neon's "retry later", as every client treats it.
    let mut refused = None;
    for _ in 0..100 {
        let answer = api
            .post(
                &format!("/projects/{project_id}/branches/{main_id}/restore"),
                json!({"source_branch_id": main_id, "source_lsn": lsn, "preserve_under_name": "old"}),
            )
            .await;
        if answer.status != 423 {
            refused = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = refused.expect("the project's lock is released within 10 s");
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(
        refused.body["message"].as_str().unwrap().contains("none"),
        "{}",
        refused.text
    );
    fleet.stop().await.unwrap();
}

/// A closed terminal or dropped SSH session sends SIGHUP: `schemafleet emulator` must stop its
/// PostgreSQL server like on Ctrl-C, not die and leave the server (and its data) behind.
#[test]
fn a_hang_up_stops_the_emulator_and_its_server() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(["emulator", "--tenants", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator starts");
    let stdout = child.stdout.take().expect("stdout");
    let database_url = std::io::BufReader::new(stdout)
        .lines()
        .map(|line| line.expect("a line"))
        .find_map(|line| line.strip_prefix("DATABASE_URL=").map(str::to_string))
        .expect("the emulator prints DATABASE_URL");
    let port = url::Url::parse(&database_url)
        .expect("a URL")
        .port()
        .expect("a port");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    let sent = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the emulator ignored SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the PostgreSQL server outlived the emulator"
    );
}

/// `emulator --output json` prints its start-up facts as one JSON line a script can read
/// (the same values as the text's `NEON_API_URL=` lines, the proxy address, the data directory
/// and the tenants), and a restart on the same data directory says the key was kept.
#[test]
fn emulator_json_says_where_everything_is() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    // The postgres user (when running as root) must reach the data directory's parent.
    let parent = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("a temporary directory");
    let data_dir = parent.path().join("emu");
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_schemafleet"))
            .args([
                "emulator",
                "--tenants",
                "1",
                "--output",
                "json",
                "--data-dir",
            ])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the emulator starts");
        let stdout = child.stdout.take().expect("stdout");
        let line = std::io::BufReader::new(stdout)
            .lines()
            .next()
            .expect("a line on stdout")
            .expect("readable");
        let document: serde_json::Value =
            serde_json::from_str(&line).expect("the first line is one JSON document");
        (child, document)
    };
    let stop = |child: std::process::Child| -> String {
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let output = child.wait_with_output().expect("the emulator ends");
        assert!(output.status.success(), "{:?}", output.status);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let (child, first) = start();
    let env = &first["env"];
    assert!(
        env["NEON_API_URL"]
            .as_str()
            .is_some_and(|url| url.starts_with("http://127.0.0.1:") && url.ends_with("/api/v2")),
        "{first:#}"
    );
    let key = env["NEON_API_KEY"].as_str().expect("the key").to_string();
    assert!(!key.is_empty());
    assert!(
        env["DATABASE_URL"]
            .as_str()
            .is_some_and(|url| url.starts_with("postgresql://"))
    );
    assert_eq!(first["api_key_source"], "new", "{first:#}");
    assert_eq!(first["tenants"], 1, "{first:#}");
    assert_eq!(
        first["data_dir"],
        data_dir.display().to_string(),
        "{first:#}"
    );
    assert_eq!(first["data_dir_kept"], true, "{first:#}");
    let proxy: std::net::SocketAddr = first["proxy_address"]
        .as_str()
        .expect("the proxy address")
        .parse()
        .expect("an address");
    assert!(
        std::net::TcpStream::connect(proxy).is_ok(),
        "the proxy listens where it says"
    );
    stop(child);

    let (child, second) = start();
    assert_eq!(second["api_key_source"], "kept", "{second:#}");
    assert_eq!(second["env"]["NEON_API_KEY"], key.as_str());
    assert_eq!(second["tenants"], 1, "a restart seeds only what is missing");
    let notes = stop(child);
    assert!(
        notes.contains("listen on new ports: export the new NEON_API_URL"),
        "a restart says the URL changed: {notes}"
    );
}

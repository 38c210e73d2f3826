//! The local Neon emulator over a real PostgreSQL, driven through raw HTTP (reqwest) and SQL
//! (tokio-postgres), as a client of the real service would.
//!
//! Each test starts its own small fleet (one temporary cluster) so tests run in parallel.

mod common;

use common::{Api, connect, start_fleet};
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
    assert!(branch_uri.ends_with("?sslmode=disable"), "{branch_uri}");
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

//! Contract tests of the Neon API client against the project's own emulator, over real HTTP, with
//! tenants' databases in a real PostgreSQL.
//!
//! Each test starts its own [`LocalFleet`] (its own cluster), so tests run in parallel and the
//! fault-rate test cannot disturb the others. The client is tuned for the emulator (25 ms polls,
//! millisecond backoff); the policies under test are the same as with real Neon.

use std::collections::BTreeSet;
use std::time::Duration;

use schemafleet::emulator::{LocalFleet, LocalFleetConfig};
use schemafleet::neon::{
    ClientConfig, CreateBranch, NeonClient, NeonError, ProjectFilter, RestoreBranch,
};
use schemafleet::secret::{SecretString, SecretUri};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::NoTls;

const SEED_SQL: &str = "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
                        INSERT INTO items VALUES (1, 'one'), (2, 'two');";
const DATABASE: &str = "neondb";
const ROLE: &str = "neondb_owner";

async fn start_fleet() -> LocalFleet {
    LocalFleet::start(LocalFleetConfig::for_tests())
        .await
        .expect("start the local emulator over a throwaway PostgreSQL")
}

fn client_config(fleet: &LocalFleet) -> ClientConfig {
    let mut config = ClientConfig::new(fleet.api_url(), fleet.api_key().clone(), 60_000);
    config.poll_interval = Duration::from_millis(25);
    config.backoff_base = Duration::from_millis(5);
    config.backoff_cap = Duration::from_millis(200);
    config.operation_timeout = Duration::from_secs(30);
    config.request_timeout = Duration::from_secs(30);
    config.max_attempts = 10;
    config
}

fn client_for(fleet: &LocalFleet) -> NeonClient {
    NeonClient::new(client_config(fleet)).expect("build the client")
}

async fn connect(uri: &SecretUri) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(uri.expose(), NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect to {uri}: {error}"));
    tokio::spawn(connection);
    client
}

async fn item_ids(uri: &SecretUri) -> Vec<i32> {
    connect(uri)
        .await
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .expect("read items")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn execute(uri: &SecretUri, sql: &str) {
    connect(uri)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

fn branch_request(name: &str) -> CreateBranch {
    CreateBranch {
        name: name.to_string(),
        parent_id: None,
        expires_at: None,
    }
}

#[tokio::test]
async fn project_listing_follows_cursors_across_pages() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(7, SEED_SQL, "paged").await.unwrap();
    let mut config = client_config(&fleet);
    config.page_size = 3;
    let client = NeonClient::new(config).unwrap();

    let filter = ProjectFilter {
        org_id: None,
        search: Some("paged".into()),
    };
    let listing = client.list_projects(&filter).await.unwrap();

    let listed: BTreeSet<_> = listing.projects.iter().map(|p| p.id.clone()).collect();
    let seeded: BTreeSet<_> = tenants.iter().map(|t| t.project_id.clone()).collect();
    assert_eq!(listed, seeded);
    assert_eq!(listing.projects.len(), 7, "no project listed twice");
    assert!(listing.unavailable_project_ids.is_empty());
    // Pages of 3, 3 and 1: the short third page ends the listing without a fourth request.
    assert_eq!(client.stats().requests, 3);

    let tenant = &tenants[0];
    let project = client.get_project(&tenant.project_id).await.unwrap();
    assert_eq!(project.name, tenant.name);
    let main = client.default_branch(&tenant.project_id).await.unwrap();
    assert_eq!(main.id, tenant.branch_id);
    assert!(main.default && main.is_ready());
    assert_eq!(
        item_ids(
            &client
                .connection_uri(&tenant.project_id, None, DATABASE, ROLE)
                .await
                .unwrap()
        )
        .await,
        [1, 2]
    );

    // A wrong key stops at once, with a hint, and without showing the key.
    let mut wrong_key = client_config(&fleet);
    wrong_key.api_key = SecretString::new("napi_wrong_key_123");
    let unauthorized_client = NeonClient::new(wrong_key).unwrap();
    let error = unauthorized_client
        .list_projects(&ProjectFilter::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, NeonError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("NEON_API_KEY"), "{error}");
    assert!(!format!("{error} {error:?}").contains("wrong_key_123"));
    assert_eq!(
        unauthorized_client.stats().requests,
        1,
        "401 is never retried"
    );
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn client_side_limiter_keeps_a_burst_under_the_server_limit() {
    // The server allows 1,200/min with a burst of 40; a client paced at the same rate with its
    // smaller burst never trips it, while an unpaced client does and rides out the 429s.
    let fleet = LocalFleet::start(LocalFleetConfig {
        rate_limit_per_min: Some(1_200),
        ..LocalFleetConfig::for_tests()
    })
    .await
    .unwrap();
    let tenant = fleet.seed(1, SEED_SQL, "paced").await.unwrap().remove(0);

    let burst = |client: NeonClient| {
        let project_id = tenant.project_id.clone();
        async move {
            let reads = (0..60).map(|_| {
                let client = client.clone();
                let project_id = project_id.clone();
                async move { client.get_project(&project_id).await }
            });
            for result in futures::future::join_all(reads).await {
                result.unwrap();
            }
            client.stats()
        }
    };

    let mut paced_config = client_config(&fleet);
    paced_config.rate_limit_per_min = 1_200;
    let paced = burst(NeonClient::new(paced_config).unwrap()).await;
    assert_eq!(fleet.stats().rate_limited, 0, "{:?}", fleet.stats());
    assert_eq!((paced.requests, paced.rate_limited), (60, 0), "{paced:?}");
    assert!(paced.rate_limiter_wait_ms > 0, "{paced:?}");

    let unpaced = burst(client_for(&fleet)).await;
    assert!(unpaced.rate_limited > 0, "{unpaced:?}");
    assert_eq!(unpaced.retries, unpaced.requests - 60, "{unpaced:?}");
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn branch_sees_parent_data_and_its_writes_stay_off_main() {
    let fleet = start_fleet().await;
    let tenant = fleet.seed(1, SEED_SQL, "iso").await.unwrap().remove(0);
    let client = client_for(&fleet);
    let project_id = tenant.project_id.as_str();

    let created = client
        .create_branch(project_id, &branch_request("validate-1"))
        .await
        .unwrap();
    assert!(created.branch.is_ready(), "{:?}", created.branch);
    assert_eq!(
        created.branch.parent_id.as_deref(),
        Some(tenant.branch_id.as_str())
    );
    let branch_uri = created.connection_uri.clone().expect("connection_uris[0]");
    assert_eq!(item_ids(&branch_uri).await, [1, 2]);

    execute(&branch_uri, "INSERT INTO items VALUES (3, 'branch only')").await;
    let main_uri = client
        .connection_uri(project_id, None, DATABASE, ROLE)
        .await
        .unwrap();
    assert_eq!(item_ids(&main_uri).await, [1, 2]);
    let branch_uri_again = client
        .connection_uri(project_id, Some(&created.branch.id), DATABASE, ROLE)
        .await
        .unwrap();
    assert_eq!(item_ids(&branch_uri_again).await, [1, 2, 3]);

    // The name is the idempotency key: a second create adopts the branch instead of failing.
    let adopted = client
        .create_branch(project_id, &branch_request("validate-1"))
        .await
        .unwrap();
    assert_eq!(adopted.branch.id, created.branch.id);
    assert!(adopted.connection_uri.is_none());
    // A name taken under another parent is not adopted.
    let foreign = client
        .create_branch(
            project_id,
            &CreateBranch {
                parent_id: Some(created.branch.id.clone()),
                ..branch_request("validate-1")
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(foreign, NeonError::BranchNameTaken { .. }),
        "{foreign}"
    );

    client
        .delete_branch(project_id, &created.branch.id)
        .await
        .unwrap();
    let gone = client
        .get_branch(project_id, &created.branch.id)
        .await
        .unwrap_err();
    assert_eq!(gone.status(), Some(404), "{gone}");
    // Deleting what is already gone succeeds.
    client
        .delete_branch(project_id, &created.branch.id)
        .await
        .unwrap();
    let names: Vec<_> = client
        .list_branches(project_id)
        .await
        .unwrap()
        .into_iter()
        .map(|branch| branch.name)
        .collect();
    assert_eq!(names, ["main"]);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn restore_brings_main_back_and_keeps_the_newer_state_under_the_preserved_name() {
    let fleet = start_fleet().await;
    let tenant = fleet.seed(1, SEED_SQL, "restore").await.unwrap().remove(0);
    let client = client_for(&fleet);
    let project_id = tenant.project_id.as_str();

    // Branching records the restore point, as a pre-migration validation branch does.
    let before_migration = client
        .create_branch(project_id, &branch_request("pre-migration"))
        .await
        .unwrap();
    let restore_lsn = before_migration
        .branch
        .parent_lsn
        .clone()
        .expect("a branch records its parent LSN");

    let main_uri = client
        .connection_uri(project_id, None, DATABASE, ROLE)
        .await
        .unwrap();
    execute(
        &main_uri,
        "INSERT INTO items VALUES (3, 'after'); CREATE TABLE added_by_migration (id int);",
    )
    .await;
    assert_eq!(item_ids(&main_uri).await, [1, 2, 3]);

    let restored = client
        .restore_branch(
            project_id,
            &tenant.branch_id,
            &RestoreBranch {
                source_branch_id: tenant.branch_id.clone(),
                source_lsn: Some(restore_lsn),
                source_timestamp: None,
                preserve_under_name: Some("main_before_rollback".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(restored.id, tenant.branch_id);
    assert_eq!(restored.name, "main");
    assert!(restored.is_ready());
    assert!(restored.last_reset_at.is_some());

    let main_uri = client
        .connection_uri(project_id, None, DATABASE, ROLE)
        .await
        .unwrap();
    assert_eq!(item_ids(&main_uri).await, [1, 2]);
    let leftover = connect(&main_uri)
        .await
        .query_one("SELECT to_regclass('added_by_migration')::text", &[])
        .await
        .unwrap()
        .get::<_, Option<String>>(0);
    assert_eq!(leftover, None);

    let preserved = client
        .list_branches(project_id)
        .await
        .unwrap()
        .into_iter()
        .find(|branch| branch.name == "main_before_rollback")
        .expect("the pre-restore state is kept under the preserved name");
    // As on Neon, the preserved branch has no compute of its own: read it behind the API.
    let preserved_uri = fleet
        .branch_superuser_uri(project_id, &preserved.id)
        .expect("the preserved branch has a database");
    assert_eq!(item_ids(&preserved_uri).await, [1, 2, 3]);
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn expired_branches_are_reaped() {
    let fleet = start_fleet().await;
    let tenant = fleet.seed(1, SEED_SQL, "expiry").await.unwrap().remove(0);
    let client = client_for(&fleet);
    let project_id = tenant.project_id.as_str();

    let expires_at = (OffsetDateTime::now_utc() + Duration::from_secs(3))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    let created = client
        .create_branch(
            project_id,
            &CreateBranch {
                expires_at: Some(expires_at),
                ..branch_request("short-lived")
            },
        )
        .await
        .unwrap();
    assert!(created.branch.expires_at.is_some());
    assert!(
        client
            .list_branches(project_id)
            .await
            .unwrap()
            .iter()
            .any(|branch| branch.id == created.branch.id)
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let branches = client.list_branches(project_id).await.unwrap();
        if branches.iter().all(|branch| branch.id != created.branch.id) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "branch {} still listed 20 s after creation with a 3 s expiry",
            created.branch.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = client
        .get_branch(project_id, &created.branch.id)
        .await
        .unwrap_err();
    assert_eq!(gone.status(), Some(404), "{gone}");
    fleet.stop().await.unwrap();
}

#[tokio::test]
async fn fault_storm_is_absorbed_without_errors_or_leaked_branches() {
    let fleet = start_fleet().await;
    let tenants = fleet.seed(3, SEED_SQL, "storm").await.unwrap();
    let client = client_for(&fleet);
    fleet.set_fault_rate(0.2);

    let storm_started = std::time::Instant::now();
    let runs = tenants.iter().map(|tenant| {
        let client = client.clone();
        async move {
            let project_id = tenant.project_id.as_str();
            for round in 0..3 {
                let name = format!("storm-{round}");
                let created = client
                    .create_branch(project_id, &branch_request(&name))
                    .await
                    .map_err(|error| format!("create {name} in {project_id}: {error}"))?;
                let listed = client
                    .list_branches(project_id)
                    .await
                    .map_err(|error| format!("list {project_id}: {error}"))?;
                assert_eq!(
                    listed.iter().filter(|branch| branch.name == name).count(),
                    1,
                    "exactly one branch named {name} in {project_id}"
                );
                let fetched = client
                    .get_branch(project_id, &created.branch.id)
                    .await
                    .map_err(|error| format!("get {name} in {project_id}: {error}"))?;
                assert!(fetched.is_ready());
                client
                    .connection_uri(project_id, Some(&created.branch.id), DATABASE, ROLE)
                    .await
                    .map_err(|error| format!("uri of {name} in {project_id}: {error}"))?;
                client
                    .delete_branch(project_id, &created.branch.id)
                    .await
                    .map_err(|error| format!("delete {name} in {project_id}: {error}"))?;
            }
            Ok::<(), String>(())
        }
    });
    let results = futures::future::join_all(runs).await;
    let listing = client
        .list_projects(&ProjectFilter {
            org_id: None,
            search: Some("storm".into()),
        })
        .await;
    let injected = fleet.stats().injected_faults;
    fleet.set_fault_rate(0.0);

    for result in results {
        result.unwrap();
    }
    assert_eq!(listing.unwrap().projects.len(), 3);
    for tenant in &tenants {
        let names: Vec<_> = client
            .list_branches(&tenant.project_id)
            .await
            .unwrap()
            .into_iter()
            .map(|branch| branch.name)
            .collect();
        assert_eq!(names, ["main"], "no branch leaked in {}", tenant.project_id);
    }
    let stats = client.stats();
    eprintln!(
        "fault storm: {:?} for 3 tenants x 3 rounds, client {stats:?}, emulator {:?}",
        storm_started.elapsed(),
        fleet.stats()
    );
    assert!(injected > 0, "the emulator injected faults");
    assert!(stats.retries > 0, "{stats:?}");
    assert!(stats.mutations >= 18, "{stats:?}");
    fleet.stop().await.unwrap();
}

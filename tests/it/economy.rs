//! What a tenant costs, counted by the emulator itself (its proxy's round trips and connections
//! per endpoint, its API request counter), not by the tool: round trips on main after the
//! connection is set up, connections, and Neon API requests per tenant.
//!
//! A connection's set-up through the proxy (`sslmode=disable`) is three round trips: the
//! startup message, then SCRAM's two exchanges. The first test checks that figure, which the
//! others (and `bench`) subtract.

use crate::fault_support;
use crate::support;

use std::collections::{BTreeMap, HashSet};

use schemafleet::emulator::{ComputeConfig, ComputeStats, EmulatorStats, LocalFleetConfig};

use fault_support::{main_only_policy, one_wave};
use support::{TestFleet, json, text};

/// Round trips of a connection's set-up through the proxy (the bench's `SETUP_ROUND_TRIPS`).
const SETUP: u64 = 3;

/// A fleet whose proxy charges a round-trip time (so a pipelined batch is visibly one) and
/// whose operations take a while (so a create is polled).
async fn fleet(tenants: usize) -> TestFleet {
    let mut config = LocalFleetConfig::for_tests();
    config.compute = ComputeConfig {
        round_trip: std::time::Duration::from_millis(2),
        ..ComputeConfig::off()
    };
    config.op_delay = std::time::Duration::from_millis(40);
    TestFleet::start_with(config, tenants).await
}

/// A release of five transactional migrations (a `-- no-transaction` one runs alone, in
/// round trips of its own).
fn release(fleet: &TestFleet) -> std::path::PathBuf {
    let dir = fleet.path("release");
    std::fs::create_dir_all(&dir).expect("a migrations directory");
    for (name, sql) in [
        (
            "V1__notes",
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text);",
        ),
        (
            "V2__notes_author",
            "ALTER TABLE notes ADD COLUMN author text;",
        ),
        (
            "V3__notes_author_idx",
            "-- squawk-ignore require-concurrent-index-creation -- created with its table\nCREATE INDEX notes_author_idx ON notes (author);",
        ),
        (
            "V4__tags",
            "CREATE TABLE tags (note_id bigint REFERENCES notes, tag text);",
        ),
        (
            "V5__seed_tag",
            "INSERT INTO notes VALUES (1, 'hello', 'economy');",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.sql")), sql).expect("a migration");
    }
    dir
}

fn endpoint_of(uri: &str) -> String {
    let (_, rest) = uri
        .split_once("endpoint%3D")
        .expect("the URI names its endpoint");
    rest.split(['&', '%', '#'])
        .next()
        .unwrap_or(rest)
        .to_string()
}

/// Per main endpoint: (connections, round trips) grown between `before` and `after`.
fn main_costs(
    fleet: &TestFleet,
    before: &ComputeStats,
    after: &ComputeStats,
) -> Vec<(String, u64, u64)> {
    let mains: HashSet<String> = fleet
        .tenants
        .iter()
        .map(|tenant| endpoint_of(tenant.connection_uri.expose()))
        .collect();
    let mut costs: Vec<(String, u64, u64)> = mains
        .into_iter()
        .map(|endpoint| {
            let grown = |stats: &ComputeStats| {
                stats
                    .endpoints
                    .get(&endpoint)
                    .map_or((0, 0), |stats| (stats.connections, stats.round_trips))
            };
            let (connections_after, round_trips_after) = grown(after);
            let (connections_before, round_trips_before) = grown(before);
            (
                endpoint,
                connections_after - connections_before,
                round_trips_after - round_trips_before,
            )
        })
        .collect();
    costs.sort();
    costs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_set_up_costs_three_round_trips() {
    let fleet = fleet(1).await;
    let uri = fleet.tenants[0].connection_uri.expose().to_string();
    let before = fleet.fleet.compute_stats();
    let client = support::connect(&uri).await;
    drop(client);
    // The proxy counts a round trip when the answer arrives; give the relay a moment.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let after = fleet.fleet.compute_stats();
    assert_eq!(after.connections - before.connections, 1);
    assert_eq!(after.round_trips - before.round_trips, SETUP);
}

/// Without validation: one connection to main, the probe with the lock in one round trip and
/// the release with its history rows (and the history table's creation) in one more, whatever
/// the number of migrations; a fresh plan over the migrated fleet then costs one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_costs_two_round_trips_to_migrate_and_one_when_up_to_date() {
    let fleet = fleet(3).await;
    fleet.write_policy(&main_only_policy("2s", "1m", 3));
    let plan = fleet.plan(&release(&fleet));
    let plan = plan.to_str().expect("utf-8");
    let migrations = 5;

    let before = fleet.fleet.compute_stats();
    let output = fleet.run(&["apply", plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(json(&output)["totals"]["applied"], 3);
    let after = fleet.fleet.compute_stats();
    for (endpoint, connections, round_trips) in main_costs(&fleet, &before, &after) {
        assert_eq!(connections, 1, "{endpoint}: one session to main");
        assert_eq!(
            round_trips - SETUP * connections,
            2,
            "{endpoint}: probe + lock, then the release ({migrations} migrations)"
        );
    }

    // Another journal: a fresh run that finds every tenant up to date.
    let before = fleet.fleet.compute_stats();
    let output = fleet.run(&[
        "apply",
        plan,
        "--journal",
        "again.jsonl",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(json(&output)["totals"]["up_to_date"], 3);
    let after = fleet.fleet.compute_stats();
    for (endpoint, connections, round_trips) in main_costs(&fleet, &before, &after) {
        assert_eq!(connections, 1, "{endpoint}");
        assert_eq!(
            round_trips - SETUP * connections,
            1,
            "{endpoint}: the probe"
        );
    }
}

/// Requests the emulator answered between `before` and `after`, by kind of call.
fn calls_between(before: &EmulatorStats, after: &EmulatorStats) -> BTreeMap<String, u64> {
    after
        .by_route
        .iter()
        .map(|(route, &count)| {
            let earlier = before.by_route.get(route).copied().unwrap_or(0);
            (route.clone(), count - earlier)
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// The calls of one validated `apply` of `tenants` tenants: the preflight, `per_tenant` of
/// each listed kind, and the end of the run's reads of still-young deletes (returned), one
/// each, about `concurrency` at most (the last tenants'); nothing else.
fn assert_validated_calls(
    calls: &BTreeMap<String, u64>,
    tenants: u64,
    per_tenant: &[&str],
    concurrency: u64,
) -> u64 {
    eprintln!("calls of a validated run of {tenants} tenants: {calls:?}");
    let mut rest = calls.clone();
    assert_eq!(
        rest.remove("GET /projects"),
        Some(1),
        "the preflight: {calls:#?}"
    );
    for route in per_tenant {
        assert_eq!(rest.remove(*route), Some(tenants), "{route}: {calls:#?}");
    }
    let young_delete_reads = rest.remove("GET /projects/{id}/operations").unwrap_or(0)
        + rest
            .remove("GET /projects/{id}/operations/{id}")
            .unwrap_or(0);
    // The first read of the run may find its delete still running and look once more.
    assert!(
        young_delete_reads <= concurrency + 1,
        "{young_delete_reads} operation reads: about one per delete still young at the end: {calls:#?}"
    );
    assert!(rest.is_empty(), "no other call: {rest:#?}");
    young_delete_reads
}

/// Validated on a branch, main's URI from the Neon API (`fleet.source: neon`): per tenant
/// main's connection URI, the create and the delete, neither waited for, as the emulator
/// counts them call by call; the end of the run reads only the deletes still young then.
/// Main sees its probe, then lock + read and the release on a second session (the branch is
/// made in between). A second release, over a tenants file that gives main's URI: the create
/// and the delete only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validated_tenant_costs_three_api_requests_and_two_with_fleet_uris() {
    let fleet = fleet(6).await;
    let concurrency = 2;
    let policy = fleet.write_policy(&one_wave(concurrency));
    let text_of_policy = std::fs::read_to_string(&policy).expect("the policy");
    let from_neon =
        text_of_policy.replace("  source: file\n  file: tenants.csv\n", "  source: neon\n");
    assert_ne!(from_neon, text_of_policy);
    std::fs::write(&policy, from_neon).expect("write the policy");
    let release_dir = release(&fleet);
    let plan = fleet.plan(&release_dir);
    let plan = plan.to_str().expect("utf-8");
    let api_before = fleet.fleet.stats();
    let before = fleet.fleet.compute_stats();
    let output = fleet.run(&["apply", plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 6, "{report:#}");
    let after = fleet.fleet.compute_stats();
    let api_after = fleet.fleet.stats();

    let tenants = fleet.tenants.len() as u64;
    let served = api_after.requests - api_before.requests;
    let sent = report["api"]["requests"].as_u64().expect("api.requests");
    assert_eq!(sent, served, "the client and the emulator agree");
    let calls = calls_between(&api_before, &api_after);
    let young_delete_reads = assert_validated_calls(
        &calls,
        tenants,
        &[
            "GET /projects/{id}/connection_uri",
            "POST /projects/{id}/branches",
            "DELETE /projects/{id}/branches/{id}",
        ],
        concurrency as u64,
    );
    assert_eq!(served, 1 + 3 * tenants + young_delete_reads);
    assert_eq!(report["api"]["mutations"], 2 * tenants, "create and delete");
    for (endpoint, connections, round_trips) in main_costs(&fleet, &before, &after) {
        assert_eq!(connections, 2, "{endpoint}: probe, then apply");
        assert_eq!(
            round_trips - SETUP * connections,
            3,
            "{endpoint}: probe; lock + read, release"
        );
    }

    // The next release, with main's URI from the fleet's tenants file.
    let mut csv = String::from("id,name,connection_uri\n");
    for tenant in &fleet.tenants {
        csv.push_str(&format!(
            "{},{},{}\n",
            tenant.project_id,
            tenant.name,
            tenant.connection_uri.expose()
        ));
    }
    std::fs::write(fleet.path("uris.csv"), csv).expect("write the tenants file");
    fleet.write_policy(&one_wave(concurrency));
    let text_of_policy = std::fs::read_to_string(&policy).expect("the policy");
    std::fs::write(&policy, text_of_policy.replace("tenants.csv", "uris.csv"))
        .expect("write the policy");
    std::fs::write(
        release_dir.join("V6__notes_pinned.sql"),
        "ALTER TABLE notes ADD COLUMN pinned boolean;",
    )
    .expect("a migration");
    let plan = fleet.plan_at(&release_dir, "next.plan.yaml");
    let api_before = fleet.fleet.stats();
    let output = fleet.run(&["apply", &plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 6, "{report:#}");
    assert_eq!(report["connection_uris_from_source"], 6, "{report:#}");
    let api_after = fleet.fleet.stats();
    let calls = calls_between(&api_before, &api_after);
    let young_delete_reads = assert_validated_calls(
        &calls,
        tenants,
        &[
            "POST /projects/{id}/branches",
            "DELETE /projects/{id}/branches/{id}",
        ],
        concurrency as u64,
    );
    assert_eq!(
        api_after.requests - api_before.requests,
        1 + 2 * tenants + young_delete_reads
    );
}

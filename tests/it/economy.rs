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
const RELEASE: [(&str, &str); 5] = [
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
];

/// The next release: two more migrations.
const NEXT_RELEASE: [(&str, &str); 2] = [
    (
        "V6__notes_created",
        "ALTER TABLE notes ADD COLUMN created_at timestamptz;",
    ),
    ("V7__seed_tag_2", "INSERT INTO tags VALUES (1, 'cheap');"),
];

/// [`RELEASE`] as a migrations directory.
fn release(fleet: &TestFleet) -> std::path::PathBuf {
    migrations_dir(fleet, "release", &[&RELEASE[..]])
}

fn migrations_dir(
    fleet: &TestFleet,
    name: &str,
    releases: &[&[(&str, &str)]],
) -> std::path::PathBuf {
    let dir = fleet.path(name);
    std::fs::create_dir_all(&dir).expect("a migrations directory");
    for (name, sql) in releases.iter().copied().flatten() {
        std::fs::write(dir.join(format!("{name}.sql")), sql).expect("a migration");
    }
    dir
}

/// [`RELEASE`] as refinery's migrations, for driving the runner directly.
fn release_migrations() -> Vec<refinery::Migration> {
    RELEASE
        .iter()
        .map(|(name, sql)| refinery::Migration::unapplied(name, sql).expect("a migration name"))
        .collect()
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
/// Validated, the next release costs main the same two round trips over two sessions (the
/// probe's is closed before the branch is made; the release's guard takes the lock in the
/// release's round trip), and one when up to date.
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

    // The next release, validated on a branch.
    fleet.write_policy(&one_wave(3));
    let next = migrations_dir(&fleet, "next", &[&RELEASE[..], &NEXT_RELEASE[..]]);
    let next_plan = fleet.plan_at(&next, "next.plan.yaml");
    for (journal, connections_per_tenant, round_trips_per_tenant, what) in [
        ("next.jsonl", 2, 2, "probe; then the guarded release"),
        ("next-again.jsonl", 1, 1, "the probe"),
    ] {
        let before = fleet.fleet.compute_stats();
        let output = fleet.run(&[
            "apply",
            &next_plan,
            "--journal",
            journal,
            "--output",
            "json",
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let report = json(&output);
        let after = fleet.fleet.compute_stats();
        for (endpoint, connections, round_trips) in main_costs(&fleet, &before, &after) {
            assert_eq!(
                connections, connections_per_tenant,
                "{endpoint}: {report:#}"
            );
            assert_eq!(
                round_trips - SETUP * connections,
                round_trips_per_tenant,
                "{endpoint}: {what}"
            );
        }
    }
    for tenant in &fleet.tenants {
        let versions: Vec<i32> = support::history(tenant.connection_uri.expose())
            .await
            .iter()
            .map(|(version, _)| *version)
            .collect();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7], "{}", tenant.project_id);
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
/// Main sees its probe, then the guarded release (lock, history check and migrations in one
/// round trip) on a second session (the branch is made in between). A second release, over a tenants file that gives main's URI: the create
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
            2,
            "{endpoint}: probe; guarded release"
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

/// The release's guard, on a session that did not read the history itself: when another
/// runner's commit moved the history since the probe, or holds the lock, the whole release is
/// refused in its one round trip and no migration runs, not even the second one, whose
/// predecessor's history row the other runner wrote. Once the lock is free and the history
/// is as probed, the same call applies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_guard_refuses_a_moved_history_or_a_held_lock() {
    use schemafleet::pg::HistoryRead;
    use schemafleet::pg::lock::{LOCK_KEY, refused_by_guard};
    use schemafleet::pg::runner::{self, LockRetry, Timeouts, TransactionMode};

    let fleet = fleet(1).await;
    let uri = fleet.tenants[0].connection_uri.expose().to_string();
    let migrations = release_migrations();
    let timeouts = Timeouts {
        lock_timeout: std::time::Duration::from_secs(2),
        statement_timeout: std::time::Duration::from_secs(60),
    };
    let retry = LockRetry {
        max_attempts: 1,
        base_delay: std::time::Duration::from_millis(10),
    };
    let versions = || async {
        support::history(&uri)
            .await
            .iter()
            .map(|row| row.0)
            .collect::<Vec<i32>>()
    };

    // The probe found no history table; then another runner applied V1.
    let probed = HistoryRead {
        rows: Vec::new(),
        table_exists: false,
    };
    let mut other = support::connect(&uri).await;
    runner::apply_pending(
        &mut other,
        &migrations[..1],
        TransactionMode::PerMigration,
        timeouts,
        retry,
    )
    .await
    .expect("the other runner applies V1");
    for mode in [TransactionMode::PerMigration, TransactionMode::PerRelease] {
        let mut client = support::connect(&uri).await;
        let refused = runner::apply_pending_guarded(
            &mut client,
            &migrations,
            mode,
            timeouts,
            retry,
            probed.clone(),
        )
        .await
        .expect_err("the history moved since the probe");
        assert!(
            refused_by_guard(&refused.failure),
            "{mode:?}: {}",
            refused.failure
        );
        assert!(
            refused.failure.message.contains("changed since the probe"),
            "{}",
            refused.failure
        );
        assert_eq!(refused.failure.migration, None, "no migration failed");
        assert!(
            refused.applied.is_empty(),
            "{mode:?}: {:?}",
            refused.applied
        );
        assert_eq!(
            versions().await,
            [1],
            "{mode:?}: nothing of the release ran"
        );
    }

    // The history as probed now, but the other runner holds the lock.
    let probed = HistoryRead {
        rows: schemafleet::pg::read_history(&other)
            .await
            .expect("the history"),
        table_exists: true,
    };
    other
        .batch_execute(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .await
        .expect("the other runner takes the lock");
    let mut client = support::connect(&uri).await;
    let refused = runner::apply_pending_guarded(
        &mut client,
        &migrations,
        TransactionMode::PerMigration,
        timeouts,
        retry,
        probed.clone(),
    )
    .await
    .expect_err("the lock is held");
    assert!(refused_by_guard(&refused.failure), "{}", refused.failure);
    assert!(
        refused
            .failure
            .message
            .contains("holds this tenant's migration lock"),
        "{}",
        refused.failure
    );
    assert_eq!(
        versions().await,
        [1],
        "nothing ran under another runner's lock"
    );

    // Released: the guard passes and the rest is applied in the same call's one round trip.
    other
        .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
        .await
        .expect("the other runner releases the lock");
    let mut client = support::connect(&uri).await;
    let report = runner::apply_pending_guarded(
        &mut client,
        &migrations,
        TransactionMode::PerMigration,
        timeouts,
        retry,
        probed,
    )
    .await
    .expect("the guard passes");
    assert_eq!(report.applied, [2, 3, 4, 5]);
    assert_eq!(versions().await, [1, 2, 3, 4, 5]);
}

/// The runner's fallback: another session holds the tenant's lock while a validated tenant's
/// second session starts, so the release's guard refuses; the runner waits for the lock (no
/// migration runs meanwhile), journals `apply_started` again once it holds it, and applies
/// what the history then says is left: the other session applied V1 before letting go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_release_waits_for_the_lock_and_applies_what_is_left() {
    use schemafleet::pg::lock::LOCK_KEY;
    use schemafleet::pg::runner::{self, LockRetry, Timeouts, TransactionMode};

    let fleet = fleet(1).await;
    fleet.write_policy(&one_wave(1));
    let plan = fleet.plan(&release(&fleet));
    let uri = fleet.tenants[0].connection_uri.expose().to_string();
    let project_id = fleet.tenants[0].project_id.clone();
    let mut other = support::connect(&uri).await;
    other
        .batch_execute(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .await
        .expect("the other session takes the lock");

    let journal = fleet.path("guard.jsonl");
    let journal_arg = journal.to_str().expect("utf-8").to_string();
    let mut apply = fault_support::Spawned::start(
        &fleet,
        &[
            "apply",
            plan.to_str().expect("utf-8"),
            "--journal",
            &journal_arg,
            "--output",
            "json",
        ],
        "guarded",
    );
    let apply_started = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|record| record["event"] == "apply_started")
            .count()
    };
    fault_support::wait_for(
        "the apply to start",
        std::time::Duration::from_secs(60),
        || {
            std::fs::read_to_string(&journal)
                .unwrap_or_default()
                .contains("\"event\":\"apply_started\"")
        },
    );
    // The guard refused at once; give the release time to run if it wrongly could.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(apply.is_running(), "the runner waits for the lock");
    assert_eq!(
        support::history(&uri).await,
        [],
        "nothing ran under the other session's lock"
    );

    // The other session applies V1 (as another runner would), then lets go.
    let timeouts = Timeouts {
        lock_timeout: std::time::Duration::from_secs(2),
        statement_timeout: std::time::Duration::from_secs(60),
    };
    let retry = LockRetry {
        max_attempts: 1,
        base_delay: std::time::Duration::from_millis(10),
    };
    runner::apply_pending(
        &mut other,
        &release_migrations()[..1],
        TransactionMode::PerMigration,
        timeouts,
        retry,
    )
    .await
    .expect("the other session applies V1");
    other
        .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
        .await
        .expect("the other session lets go");

    let status = apply.wait(std::time::Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "{}\n{}",
        apply.stdout(),
        apply.stderr()
    );
    let records = fault_support::journal_records(&journal);
    assert_eq!(
        apply_started(&records),
        2,
        "again once the lock was ours: {records:#?}"
    );
    let applied: Vec<&serde_json::Value> = records
        .iter()
        .filter(|record| record["event"] == "applied")
        .collect();
    assert_eq!(applied.len(), 1, "{records:#?}");
    assert_eq!(applied[0]["tenant"], project_id.as_str());
    assert_eq!(
        applied[0]["versions"],
        serde_json::json!([2, 3, 4, 5]),
        "V1 is the other session's"
    );
    let rows = fault_support::history_rows(&uri).await;
    let versions: Vec<(i32, i64)> = rows.iter().map(|row| (row.0, row.3)).collect();
    assert_eq!(
        versions,
        [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)],
        "each version once"
    );
}

//! Journal checkpoints (issue 23) on the local fleet (emulator + real PostgreSQL): a validated
//! run whose writer checkpoints every few records, its journal cut after every line (what a
//! SIGKILL at that record boundary leaves, inside a checkpoint's lines included), `status` of
//! the cut journal checked against its own records, then resumed: every tenant must end
//! migrated exactly once, and `status` must say so.

use crate::fault_support;
use crate::support;

use std::collections::BTreeMap;

use serde_json::Value;

use fault_support::{assert_repo_migrations_once, one_wave, run_with_env};
use schemafleet::journal::file::CheckpointPolicy;
use support::{TestFleet, json, repo_migrations, text};

/// A checkpoint every this many records (and one on every clean close).
const EVERY: &str = "6";

/// Tenants whose last tenant record among `lines` is `applied`, ignoring checkpoint lines.
fn applied_in(lines: &[&str]) -> usize {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for line in lines {
        let record: Value = serde_json::from_str(line).expect("a journal line is JSON");
        let event = record["event"].as_str().unwrap_or_default();
        if event.starts_with("checkpoint") {
            continue;
        }
        if let Some(tenant) = record["tenant"].as_str() {
            last.insert(tenant.to_string(), event.to_string());
        }
    }
    last.values().filter(|event| *event == "applied").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_cut_after_any_line_around_its_checkpoints_resumes_to_the_truth() {
    let fleet = TestFleet::start(2).await;
    fleet.write_policy(&one_wave(1));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8").to_string();
    let env = [(CheckpointPolicy::ENV, Some(EVERY))];
    let output = run_with_env(&fleet, &["apply", &plan, "--output", "json"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let journal = fleet.path("policy.journal.jsonl");
    let full = std::fs::read_to_string(&journal).expect("read the journal");
    let lines: Vec<&str> = full.lines().collect();
    let checkpoints = lines
        .iter()
        .filter(|line| line.contains(r#""event":"checkpoint_end""#))
        .count();
    assert!(
        checkpoints >= 3,
        "checkpoints during the run and on its close: {full}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|line| line.contains("checkpoint_end")),
        "a clean close ends with a checkpoint"
    );

    for kept in 1..lines.len() {
        let prefix: String = lines[..kept]
            .iter()
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&journal, &prefix).expect("write the cut journal");

        let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
        assert_eq!(
            status["totals"]["applied"],
            applied_in(&lines[..kept]),
            "status of the journal cut after line {kept}: {status:#}"
        );

        let output = run_with_env(&fleet, &["apply", &plan, "--output", "json"], &env);
        assert_eq!(
            output.status.code(),
            Some(0),
            "resume after line {kept}: {}",
            text(&output)
        );
        let status = json(&fleet.run(&["status", &plan, "--output", "json"]));
        let totals = &status["totals"];
        assert_eq!(
            totals["applied"].as_u64().unwrap_or(0) + totals["up_to_date"].as_u64().unwrap_or(0),
            2,
            "after the resume from line {kept}: {status:#}"
        );
        assert_eq!(totals["failed"], 0, "after line {kept}: {status:#}");
        for tenant in &fleet.tenants {
            assert_repo_migrations_once(
                &format!("{} after line {kept}", tenant.name),
                tenant.connection_uri.expose(),
            )
            .await;
        }
    }
    fleet.fleet.stop().await.expect("stop");
}

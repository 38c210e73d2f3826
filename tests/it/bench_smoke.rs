//! `schemafleet bench` at toy sizes: it starts its fleet, runs raw, apply, validated, noop and plan in child
//! processes, and prints one sane line per mode and the ratios last. The real benchmark (500+
//! tenants, release build) is run by hand, never by `cargo test`.

use std::collections::BTreeMap;
use std::process::Command;

/// `key=value` fields of the line starting with `prefix`.
fn fields<'a>(stdout: &'a str, prefix: &str) -> BTreeMap<&'a str, &'a str> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .collect()
}

fn number(fields: &BTreeMap<&str, &str>, key: &str) -> f64 {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
        .parse()
        .unwrap_or_else(|error| panic!("{key} is not a number ({error}) in {fields:?}"))
}

#[test]
fn bench_runs_every_small_mode_and_prints_sane_lines() {
    let workdir = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args([
            "bench",
            "--tenants",
            "4",
            "--concurrency",
            "2",
            "--modes",
            "raw,sequential,apply,validated,noop,plan",
            "--pg-rtt-ms",
            "2",
            "--cold-start-ms",
            "20",
            "--plan-tenants",
            "1000",
            "--workdir",
            workdir.path().to_str().expect("utf-8 path"),
        ])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status.code()
    );
    assert!(
        stdout.contains("tuned for benchmarking"),
        "the output says the cluster is tuned: {stdout}"
    );

    for mode in ["raw", "apply", "noop-journal", "noop-fresh"] {
        let line = fields(&stdout, &format!("mode={mode} "));
        assert_eq!(line["tenants"], "4", "{line:?}");
        assert_eq!(line["concurrency"], "2", "{line:?}");
        assert!(number(&line, "wall_s") > 0.0, "{line:?}");
        assert!(number(&line, "tenants_per_s") > 0.0, "{line:?}");
        let rss = number(&line, "peak_rss_mb");
        assert!(rss > 1.0 && rss < 500.0, "{line:?}");
    }
    let raw = fields(&stdout, "mode=raw ");
    assert_eq!(number(&raw, "connections_per_tenant"), 1.0, "{raw:?}");
    // Every tenant starts suspended: one wake each, a handful of round trips (startup, SCRAM,
    // the batch) through the proxy.
    assert_eq!(number(&raw, "cold_starts_per_tenant"), 1.0, "{raw:?}");
    let raw_round_trips = number(&raw, "round_trips_per_tenant");
    assert!((3.0..10.0).contains(&raw_round_trips), "{raw:?}");
    assert!(number(&raw, "compute_s_per_tenant") > 0.0, "{raw:?}");
    // Neon's guide: one tenant at a time, one URI lookup each, refinery's own round trips.
    let sequential = fields(&stdout, "mode=sequential ");
    assert_eq!(sequential["concurrency"], "1", "{sequential:?}");
    assert_eq!(
        number(&sequential, "api_calls_per_tenant"),
        1.0,
        "{sequential:?}"
    );
    assert_eq!(
        number(&sequential, "cold_starts_per_tenant"),
        1.0,
        "{sequential:?}"
    );
    assert!(
        number(&sequential, "round_trips_per_tenant") > raw_round_trips,
        "{sequential:?}"
    );
    assert_eq!(number(&raw, "api_calls_per_tenant"), 0.0, "{raw:?}");
    let apply = fields(&stdout, "mode=apply ");
    // Without validation the probe's connection is reused for the apply; a connection-URI
    // lookup per tenant plus the preflight.
    assert_eq!(number(&apply, "connections_per_tenant"), 1.0, "{apply:?}");
    assert_eq!(number(&apply, "api_calls_per_tenant"), 1.25, "{apply:?}");
    let from_journal = fields(&stdout, "mode=noop-journal ");
    assert_eq!(
        number(&from_journal, "connections_per_tenant"),
        0.0,
        "{from_journal:?}"
    );
    let fresh = fields(&stdout, "mode=noop-fresh ");
    assert_eq!(number(&fresh, "connections_per_tenant"), 1.0, "{fresh:?}");

    let plan = fields(&stdout, "mode=plan ");
    assert_eq!(plan["tenants"], "1000", "{plan:?}");
    assert!(number(&plan, "peak_rss_mb") > 1.0, "{plan:?}");
    let plan_file = std::fs::read_to_string(workdir.path().join("plan/plan.yaml"))
        .expect("the plan mode wrote its plan");
    assert!(
        plan_file.contains("bench-plan-0001000"),
        "every tenant is planned"
    );

    let last = stdout.lines().last().expect("some output");
    assert!(
        last.starts_with("apply_vs_raw="),
        "ratios come last: {stdout}"
    );
    let ratios = fields(&stdout, "apply_vs_raw=");
    let apply_vs_raw = number(&ratios, "apply_vs_raw");
    assert!(apply_vs_raw > 0.0 && apply_vs_raw < 10.0, "{ratios:?}");
    assert!(number(&ratios, "validated_vs_raw") > 0.0, "{ratios:?}");
    assert!(number(&ratios, "apply_vs_sequential") > 0.0, "{ratios:?}");

    // Validation: a branch created and deleted per tenant, and the time measured step by step.
    let validated = fields(&stdout, "mode=validated ");
    assert_eq!(validated["tenants"], "4", "{validated:?}");
    let api = fields(&stdout, "validated_api ");
    assert_eq!(number(&api, "mutating_calls_per_tenant"), 2.0, "{api:?}");
    let breakdown = fields(&stdout, "validated_breakdown ");
    assert_eq!(breakdown["tenants"], "4", "{breakdown:?}");
    for step in [
        "connection_uri_ms",
        "create_branch_ms",
        "migrate_branch_ms",
        "delete_branch_ms",
        "migrate_main_ms",
        "journal_ms",
        "one_branch_copy_alone_ms",
    ] {
        assert!(number(&breakdown, step) > 0.0, "{step}: {breakdown:?}");
    }
    assert!(
        !stdout.contains("WARNING"),
        "every tenant was migrated and verified: {stdout}"
    );
}

//! Secrets never leave the process: a whole rollout with a recognisable API key and tenant
//! passwords, debug logging on, failing tenants included, and neither the key nor any password
//! appears in stdout, stderr, the plan, the journal, the JSON report or any file written.

#[path = "support/faults.rs"]
mod fault_support;
mod support;

use std::process::Output;

use rand::Rng;
use rand::distr::Alphanumeric;
use schemafleet::emulator::LocalFleetConfig;

use fault_support::{files_under, one_wave, run_with_env};
use support::{TestFleet, add_legacy_status, connect, json, repo_migrations, text};

fn marker(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// Every place `secrets` turn up in `haystack`, named by `what`.
fn leaks(what: &str, haystack: &str, secrets: &[(String, String)]) -> Vec<String> {
    secrets
        .iter()
        .filter(|(_, secret)| haystack.contains(secret.as_str()))
        .map(|(name, _)| format!("{name} appears in {what}"))
        .collect()
}

fn output_leaks(what: &str, output: &Output, secrets: &[(String, String)]) -> Vec<String> {
    let mut found = leaks(
        &format!("{what} stdout"),
        &String::from_utf8_lossy(&output.stdout),
        secrets,
    );
    found.extend(leaks(
        &format!("{what} stderr"),
        &String::from_utf8_lossy(&output.stderr),
        secrets,
    ));
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_or_password_appears_in_output_logs_or_files() {
    let api_key = marker("napi_SECRET_marker_");
    let config = LocalFleetConfig {
        api_key: Some(api_key.clone()),
        ..LocalFleetConfig::for_tests()
    };
    let fleet = TestFleet::start_with(config, 5).await;
    let mut secrets = vec![("the API key".to_string(), api_key.clone())];
    for tenant in &fleet.tenants {
        let uri = url::Url::parse(tenant.connection_uri.expose()).expect("a URI");
        let password = uri.password().expect("a password in the URI").to_string();
        assert!(password.len() >= 8, "a password too short to search for");
        secrets.push((format!("{}'s password", tenant.name), password));
    }

    // Failing tenants, so error paths print too: bad data caught on the validation branch, and a
    // tenant whose role password changed behind the API (the URI it hands out no longer works).
    add_legacy_status(fleet.tenant("tenant-0002").connection_uri.expose()).await;
    let stale = fleet.tenant("tenant-0004");
    let stale_uri = url::Url::parse(stale.connection_uri.expose()).expect("a URI");
    let new_password = marker("pw_SECRET_");
    connect(fleet.fleet.database_url().expose())
        .await
        .batch_execute(&format!(
            "ALTER ROLE \"{}\" PASSWORD '{new_password}'",
            stale_uri.username()
        ))
        .await
        .expect("change the role's password");
    secrets.push(("the changed password".to_string(), new_password));

    fleet.write_policy(&one_wave(3));
    let debug = [("SCHEMAFLEET_LOG", Some("debug"))];
    let migrations = repo_migrations();
    let output = run_with_env(
        &fleet,
        &[
            "plan",
            "--policy",
            "policy.yaml",
            "--migrations",
            migrations.to_str().expect("utf-8"),
            "--out",
            "policy.plan.yaml",
        ],
        &debug,
    );
    assert!(output.status.success(), "{}", text(&output));
    let mut found = output_leaks("plan", &output, &secrets);

    let output = run_with_env(
        &fleet,
        &["apply", "policy.plan.yaml", "--output", "json"],
        &debug,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["totals"]["applied"], 3, "{report:#}");
    assert_eq!(report["totals"]["failed"], 2, "{report:#}");
    let stale_failure = report["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .find(|failure| failure["tenant"] == stale.project_id)
        .expect("the stale-password tenant failed");
    assert!(
        stale_failure["error"]
            .as_str()
            .is_some_and(|error| error.contains("password authentication failed")),
        "{stale_failure:#}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("DEBUG"),
        "debug logging was not on: {}",
        text(&output)
    );
    found.extend(output_leaks("apply --output json", &output, &secrets));

    // Text output, the failed tenants retried (error paths again), and status.
    let output = run_with_env(
        &fleet,
        &["apply", "policy.plan.yaml", "--retry-failed"],
        &debug,
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    found.extend(output_leaks("apply (text)", &output, &secrets));
    for args in [
        vec!["status", "policy.plan.yaml"],
        vec!["status", "policy.plan.yaml", "--output", "json"],
    ] {
        let output = run_with_env(&fleet, &args, &debug);
        found.extend(output_leaks(&args.join(" "), &output, &secrets));
    }

    // A rejected key is a secret too, and the error path that reports it must not print it.
    let wrong_key = marker("napi_SECRET_wrong_");
    let output = run_with_env(
        &fleet,
        &["apply", "policy.plan.yaml"],
        &[
            ("SCHEMAFLEET_LOG", Some("debug")),
            ("NEON_API_KEY", Some(&wrong_key)),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    found.extend(output_leaks(
        "apply with a rejected key",
        &output,
        &[("the rejected API key".to_string(), wrong_key)],
    ));

    for (path, bytes) in files_under(fleet.dir.path()) {
        let (path, content) = (
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        );
        found.extend(leaks(&path, &content, &secrets));
    }
    assert!(
        std::fs::read_to_string(fleet.path("policy.journal.jsonl"))
            .is_ok_and(|journal| journal.contains("\"event\":\"failed\"")),
        "the journal holds the failures"
    );
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    fleet.fleet.stop().await.expect("stop");
}

//! Gates between waves against the local fleet: SQL, command and HTTP checks that halt the
//! rollout, approvals, and notifications to a local webhook receiver.

use crate::support;

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestFleet, connect, json, repo_migrations, text};

/// The binary with this fleet's API environment and `extra` variables.
fn run_with(fleet: &TestFleet, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(args)
        .current_dir(fleet.dir.path())
        .env("NEON_API_URL", fleet.fleet.api_url())
        .env("NEON_API_KEY", fleet.fleet.api_key().expose())
        .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
        .env("SCHEMAFLEET_API_RATE_LIMIT", "100000")
        .env("SCHEMAFLEET_NO_PROGRESS", "1")
        .envs(extra.iter().copied())
        .output()
        .expect("the binary runs")
}

/// Settings every policy here shares: no validation branch, so rollouts are quick.
const FAST: &str = "validation: none\nrestore_point: none\nlock_timeout: 2s\nstatement_timeout: 1m\nbranch_ttl: 1h\nsalt: gates\n";

fn wave_of<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .find(|wave| wave["name"] == name)
        .unwrap_or_else(|| panic!("no wave {name}: {report:#}"))
}

async fn write_app_errors(fleet: &TestFleet, names: &[&str]) {
    for name in names {
        let client = connect(fleet.tenant(name).connection_uri.expose()).await;
        client
            .batch_execute(
                "INSERT INTO app_errors (message) VALUES ('TypeError: orders.status is undefined')",
            )
            .await
            .expect("insert an app error");
    }
}

async fn clear_app_errors(fleet: &TestFleet) {
    for tenant in &fleet.tenants {
        let client = connect(tenant.connection_uri.expose()).await;
        client
            .batch_execute("DELETE FROM app_errors")
            .await
            .expect("clear app errors");
    }
}

/// A SQL check reads the canary wave's mains after its bake: three sampled tenants with app
/// errors written after the migration halt the rollout, named in the report and `status`;
/// `--retry-checks` passes once they are gone, and another plan with `threshold: 3` passes
/// with the same three. `plan` shows the check and `plan --check` notices a changed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_halts_on_sampled_tenants_with_app_errors_and_a_threshold_lets_it_pass() {
    let fleet = TestFleet::start(10).await;
    for tenant in &fleet.tenants {
        let client = connect(tenant.connection_uri.expose()).await;
        client
            .batch_execute(
                "CREATE TABLE app_errors (at timestamptz NOT NULL DEFAULT now(), message text)",
            )
            .await
            .expect("create app_errors");
    }
    let policy = |threshold: usize| {
        format!(
            "{FAST}waves:\n  - name: canary\n    tenants: [tenant-0001, tenant-0002, tenant-0003, tenant-0004, tenant-0005]\n    concurrency: 4\n    max_failures: 0\n    bake: 1s\n    checks:\n      - name: no-app-errors\n        sql: 'SELECT NOT EXISTS (SELECT 1 FROM app_errors WHERE at >= $1::timestamptz)'\n        sample: 5\n        threshold: {threshold}\n  - name: rest\n    percent: 100\n    concurrency: 4\n"
        )
    };
    fleet.write_policy(&policy(0));
    let migrations = repo_migrations();
    let output = fleet.run(&[
        "plan",
        "--policy",
        "policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
        "--out",
        "a.plan.yaml",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let shown = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        shown.contains(
            "check no-app-errors: sql on a sample of 5 tenants, at most 0 may fail, timeout 30s"
        ),
        "{shown}"
    );
    let plan = schemafleet::plan::load_plan(&fleet.path("a.plan.yaml")).expect("the plan loads");
    let canary: Vec<String> = plan.waves[0].tenant_ids().map(str::to_string).collect();
    assert_eq!(canary.len(), 5, "{canary:?}");

    // The canary migrates; its check right after the wave passes (no errors yet).
    let output = fleet.run(&[
        "apply",
        "a.plan.yaml",
        "--until-wave",
        "canary",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let journal = std::fs::read_to_string(fleet.path("a.journal.jsonl")).expect("journal");
    assert!(journal.contains(r#""event":"checks_passed""#), "{journal}");

    // The application logs errors on three canaries after the migration.
    let bad = ["tenant-0002", "tenant-0003", "tenant-0005"];
    write_app_errors(&fleet, &bad).await;
    let mut bad_ids: Vec<String> = bad
        .iter()
        .map(|name| fleet.tenant(name).project_id.clone())
        .collect();
    bad_ids.sort();

    let output = fleet.run(&["apply", "a.plan.yaml", "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "halted", "{report:#}");
    let failures = wave_of(&report, "canary")["check_failures"]
        .as_array()
        .expect("check_failures")
        .clone();
    assert_eq!(failures.len(), 1, "{report:#}");
    assert_eq!(failures[0]["check"], "no-app-errors");
    assert_eq!(failures[0]["kind"], "sql");
    assert_eq!(failures[0]["sampled"], 5);
    let failed: Vec<String> = failures[0]["failed_tenants"]
        .as_array()
        .expect("failed_tenants")
        .iter()
        .map(|tenant| tenant.as_str().expect("id").to_string())
        .collect();
    assert_eq!(failed, bad_ids, "{report:#}");
    let output_text = failures[0]["output"].as_str().expect("output");
    assert!(
        output_text.starts_with("3 of 5 sampled tenants failed the query (threshold 0)"),
        "{output_text}"
    );
    assert!(output_text.contains("tenant-0003"), "{output_text}");
    assert_eq!(wave_of(&report, "rest")["applied"], 0, "{report:#}");
    assert_eq!(wave_of(&report, "rest")["status"], "not_started");

    // `status` names the check, its tenants and the two ways on.
    let output = fleet.run(&["status", "a.plan.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let status = String::from_utf8_lossy(&output.stdout);
    let flowing = status.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "wave canary HALTED by its checks:",
        "check no-app-errors (sql): 3 of 5 sampled tenants failed",
        &format!(
            "tenant-0002 ({}): answered false",
            bad_ids
                .iter()
                .find(|id| **id == fleet.tenant("tenant-0002").project_id)
                .expect("id")
        ),
        "schemafleet rollback a.plan.yaml --wave canary",
        "schemafleet apply a.plan.yaml --retry-checks",
    ] {
        assert!(flowing.contains(expected), "{expected}:\n{status}");
    }
    let status_json = json(&fleet.run(&["status", "a.plan.yaml", "--output", "json"]));
    assert_eq!(status_json["halted_wave"], "canary", "{status_json:#}");
    assert_eq!(
        wave_of(&status_json, "canary")["check_failures"][0]["failed_tenants"],
        failures[0]["failed_tenants"]
    );

    // Without --retry-checks the rollout stays halted and says how to go on.
    let output = fleet.run(&["apply", "a.plan.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("--retry-checks"),
        "{}",
        text(&output)
    );

    // The cause fixed, the checks pass again and the rollout continues.
    clear_app_errors(&fleet).await;
    let output = fleet.run(&["apply", "a.plan.yaml", "--retry-checks", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "completed", "{report:#}");
    assert_eq!(report["totals"]["applied"], 10, "{report:#}");
    assert!(wave_of(&report, "canary").get("check_failures").is_none());

    // `threshold: 3` is another plan; `plan --check` of the first one notices the change.
    fleet.write_policy(&policy(3));
    let output = fleet.run(&[
        "plan",
        "--check",
        "a.plan.yaml",
        "--policy",
        "policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("waves[canary].checks:"),
        "{}",
        text(&output)
    );
    fleet.plan_at(&migrations, "b.plan.yaml");
    let output = fleet.run(&["apply", "b.plan.yaml", "--until-wave", "canary"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    write_app_errors(&fleet, &bad).await;
    let output = fleet.run(&["apply", "b.plan.yaml", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "completed", "{report:#}");
    let journal = std::fs::read_to_string(fleet.path("b.journal.jsonl")).expect("journal");
    assert!(journal.contains(r#""stage":"bake_end""#), "{journal}");
    assert!(!journal.contains("checks_failed"), "{journal}");
}

/// What the local app server answers, by path.
async fn start_app_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/health",
            get(|headers: HeaderMap| async move {
                if headers
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    != Some("Bearer tok-s3cret")
                {
                    return (StatusCode::UNAUTHORIZED, "who are you".to_string());
                }
                (StatusCode::OK, r#"{"status":"ok","errors":0}"#.to_string())
            }),
        )
        .route(
            "/degraded",
            get(|| async { r#"{"status":"degraded","errors":7}"# }),
        )
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), handle)
}

/// Command and HTTP checks against a local app server: passing ones let the rollout
/// complete (the command sees the wave, plan id and tenants; the header's token comes from
/// the environment); failing, timing-out and wrong-answer ones halt it, each with its output
/// in the report, and the token is in no file or report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_and_http_checks_pass_fail_and_time_out_as_configured() {
    let fleet = TestFleet::start(3).await;
    let (app, server) = start_app_server().await;
    let migrations = repo_migrations();
    let token = [("CHECK_TOKEN", "tok-s3cret")];

    fleet.write_policy(&format!(
        "{FAST}waves:\n  - name: all\n    percent: 100\n    concurrency: 3\n    checks:\n      - name: smoke\n        command: 'test \"$SCHEMAFLEET_WAVE\" = all && grep -q \"$SCHEMAFLEET_PLAN_ID\" \"$SCHEMAFLEET_CHECK_FILE\" && test -n \"$SCHEMAFLEET_TENANTS\" && echo smoke ok'\n      - name: health\n        http: '{app}/health'\n        headers: {{Authorization: 'Bearer ${{CHECK_TOKEN}}'}}\n        json_pointer: /status\n        expect: ok\n        timeout: 2s\n"
    ));
    fleet.plan_at(&migrations, "pass.plan.yaml");
    let output = run_with(
        &fleet,
        &["apply", "pass.plan.yaml", "--output", "json"],
        &token,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(json(&output)["outcome"], "completed");

    fleet.write_policy(&format!(
        "{FAST}waves:\n  - name: all\n    percent: 100\n    concurrency: 3\n    checks:\n      - name: error-budget\n        command: 'echo \"checking $SCHEMAFLEET_CHECK\"; echo \"error rate 7% over budget\" >&2; exit 3'\n      - name: hangs\n        command: 'sleep 30'\n        timeout: 1s\n      - name: down\n        http: '{app}/down'\n      - name: degraded\n        http: '{app}/degraded'\n        json_pointer: /status\n        expect: ok\n      - name: slow\n        http: '{app}/slow'\n        timeout: 1s\n      - name: health\n        http: '{app}/health'\n        headers: {{Authorization: 'Bearer ${{CHECK_TOKEN}}'}}\n        json_pointer: /errors\n        expect: 0\n      - name: clear\n        http_env: CLEAR_URL\n"
    ));
    fleet.plan_at(&migrations, "fail.plan.yaml");
    let started = Instant::now();
    // A plain-http URL to a host that is not loopback, known only when the check runs: refused
    // before any request (`.invalid` never resolves either).
    let output = run_with(
        &fleet,
        &["apply", "fail.plan.yaml", "--output", "json"],
        &[token[0], ("CLEAR_URL", "http://app.invalid/health")],
    );
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        elapsed < Duration::from_secs(15),
        "timeouts must cut the hanging checks short: {elapsed:?}"
    );
    let report = json(&output);
    assert_eq!(report["outcome"], "halted", "{report:#}");
    let failures = wave_of(&report, "all")["check_failures"]
        .as_array()
        .expect("check_failures")
        .clone();
    let output_of = |name: &str| -> String {
        failures
            .iter()
            .find(|failure| failure["check"] == name)
            .unwrap_or_else(|| panic!("{name} did not fail: {report:#}"))["output"]
            .as_str()
            .expect("output")
            .to_string()
    };
    assert_eq!(failures.len(), 6, "the health check passes: {report:#}");
    assert!(
        output_of("clear").contains(
            "GET $CLEAR_URL: the URL is http:// to a host that is not loopback; use https://"
        ),
        "{report:#}"
    );
    let budget = output_of("error-budget");
    assert!(
        budget.contains("exit 3")
            && budget.contains("error rate 7% over budget")
            && budget.contains("checking error-budget"),
        "{budget}"
    );
    assert!(
        output_of("hangs").contains("timed out after 1s"),
        "{report:#}"
    );
    assert!(output_of("down").contains("HTTP 503"), "{report:#}");
    assert!(output_of("down").contains("maintenance"), "{report:#}");
    assert!(
        output_of("degraded").contains(r#"/status = "degraded", expected "ok""#),
        "{report:#}"
    );
    assert!(
        output_of("slow").contains("no answer within 1s"),
        "{report:#}"
    );

    // The token lived in the environment only.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (what, content) in [
        (
            "plan",
            std::fs::read_to_string(fleet.path("fail.plan.yaml")).expect("plan"),
        ),
        (
            "journal",
            std::fs::read_to_string(fleet.path("fail.journal.jsonl")).expect("journal"),
        ),
        ("stdout", stdout.to_string()),
        ("stderr", stderr.to_string()),
    ] {
        assert!(
            !content.contains("tok-s3cret"),
            "{what} holds the token: {content}"
        );
    }
    assert!(
        std::fs::read_to_string(fleet.path("fail.plan.yaml"))
            .expect("plan")
            .contains("${CHECK_TOKEN}")
    );
    server.abort();
}

/// `approval: required` stops `apply` before the wave with exit 3; `approve` records who
/// approved it and the next `apply` continues; unknown waves, waves that need no approval and
/// finished plans are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gate_stops_apply_until_approve_records_it() {
    let fleet = TestFleet::start(4).await;
    fleet.write_policy(&format!(
        "{FAST}waves:\n  - name: canary\n    tenants: [tenant-0001]\n    percent: 25\n    concurrency: 2\n  - name: rest\n    percent: 100\n    concurrency: 4\n    approval: required\n"
    ));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8");

    let output = fleet.run(&["apply", plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "awaiting_approval", "{report:#}");
    assert_eq!(wave_of(&report, "rest")["approval"]["status"], "awaiting");
    assert_eq!(wave_of(&report, "rest")["applied"], 0);
    assert_eq!(
        wave_of(&report, "canary")["applied"],
        wave_of(&report, "canary")["tenants"]
    );
    assert_eq!(
        wave_of(&report, "rest")["not_started"],
        wave_of(&report, "rest")["tenants"]
    );
    let output = fleet.run(&["apply", plan]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains("schemafleet approve"), "{said}");

    // `status` exits 3 like `apply` while the wave waits.
    let output = fleet.run(&["status", plan]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("wave rest waits for approval"),
        "{}",
        text(&output)
    );

    for (wave, expected) in [
        ("middle", "has no wave `middle` (waves: canary, rest)"),
        ("canary", "wave `canary` does not need approval"),
    ] {
        let output = fleet.run(&["approve", plan, wave]);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{}",
            text(&output)
        );
    }
    let output = fleet.run(&[
        "approve",
        plan,
        "rest",
        "--by",
        "ana",
        "--note",
        "canary dashboards clean",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let journal = std::fs::read_to_string(fleet.path("policy.journal.jsonl")).expect("journal");
    assert!(
        journal.contains(
            r#""event":"approved","wave":"rest","by":"ana","note":"canary dashboards clean""#
        ),
        "{journal}"
    );

    let output = fleet.run(&["apply", plan, "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "completed", "{report:#}");
    assert_eq!(report["totals"]["applied"], 4, "{report:#}");
    assert_eq!(wave_of(&report, "rest")["approval"]["by"], "ana");

    let output = fleet.run(&["approve", plan, "rest"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is finished"),
        "{}",
        text(&output)
    );
}

/// A local webhook receiver gets every event of a small rollout in order (a check that fails,
/// is retried and passes; an approval), the notify command gets the same, and no payload
/// holds a secret. A receiver that is down does not fail a rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_every_event_in_order_and_a_dead_one_fails_nothing() {
    use axum::routing::post;
    let fleet = TestFleet::start(3).await;
    let received: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let router = axum::Router::new().route(
        "/hook/s3cr3t-path",
        post(move |body: axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!(
        "http://{}/hook/s3cr3t-path",
        listener.local_addr().expect("address")
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    fleet.write_policy(&format!(
        "{FAST}notify:\n  webhook_env: HOOK_URL\n  command: 'cat >> notified.jsonl && echo >> notified.jsonl'\nwaves:\n  - name: canary\n    tenants: [tenant-0001]\n    percent: 30\n    concurrency: 2\n    checks:\n      - name: flag\n        command: 'test -f ok.flag'\n  - name: rest\n    percent: 100\n    concurrency: 4\n    approval: required\n"
    ));
    let plan = fleet.plan(&repo_migrations());
    let plan = plan.to_str().expect("utf-8");
    let env = [("HOOK_URL", hook.as_str())];

    let output = run_with(&fleet, &["apply", plan], &env);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    std::fs::write(fleet.path("ok.flag"), "").expect("flag");
    let output = run_with(&fleet, &["apply", plan, "--retry-checks"], &env);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let output = fleet.run(&["approve", plan, "rest", "--by", "ana"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = run_with(&fleet, &["apply", plan], &env);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let events = received.lock().expect("lock").clone();
    let sequence: Vec<(String, String)> = events
        .iter()
        .map(|event| {
            (
                event["event"].as_str().expect("event").to_string(),
                event["wave"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("rollout_started", ""),
        ("wave_started", "canary"),
        ("wave_finished", "canary"),
        ("check_failed", "canary"),
        ("wave_halted", "canary"),
        ("rollout_finished", ""),
        ("rollout_started", ""),
        ("approval_needed", "rest"),
        ("rollout_finished", ""),
        ("rollout_started", ""),
        ("wave_started", "rest"),
        ("wave_finished", "rest"),
        ("rollout_finished", ""),
    ]
    .iter()
    .map(|(event, wave)| (event.to_string(), wave.to_string()))
    .collect();
    assert_eq!(sequence, expected, "{events:#?}");
    let outcomes: Vec<&str> = events
        .iter()
        .filter(|event| event["event"] == "rollout_finished")
        .map(|event| event["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(outcomes, ["halted", "awaiting_approval", "completed"]);
    let check = &events[3]["check"];
    assert_eq!(check["name"], "flag");
    assert_eq!(check["stage"], "after_wave");
    assert_eq!(events[4]["halted_by"], "checks");
    let last = &events[12];
    assert_eq!(last["counts"]["applied"], 3, "{last:#}");
    assert!(
        last["text"]
            .as_str()
            .expect("text")
            .starts_with("schemafleet: rollout of plan"),
        "{last:#}"
    );
    let api_key = fleet.fleet.api_key().expose().to_string();
    for event in &events {
        let body = event.to_string();
        assert_eq!(event["schema"], "schemafleet.notification.v1");
        assert!(
            event["text"]
                .as_str()
                .is_some_and(|text| text.starts_with("schemafleet: "))
        );
        for secret in ["s3cr3t-path", api_key.as_str(), "postgresql://", "password"] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
    }
    // The command got the same events, one JSON document each.
    let notified = std::fs::read_to_string(fleet.path("notified.jsonl")).expect("notified.jsonl");
    let commanded: Vec<String> = notified
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("JSON")["event"]
                .as_str()
                .expect("event")
                .to_string()
        })
        .collect();
    assert_eq!(
        commanded,
        expected
            .iter()
            .map(|(event, _)| event.clone())
            .collect::<Vec<_>>()
    );
    server.abort();

    // A receiver that is down: the rollout of another plan completes, and says so.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    fleet.write_policy(&format!(
        "{FAST}notify:\n  webhook_env: HOOK_URL\nwaves:\n  - name: all\n    percent: 100\n    concurrency: 3\n    bake: 0s\n"
    ));
    // The first plan no longer matches: its notifications changed.
    let migrations = repo_migrations();
    let output = fleet.run(&[
        "plan",
        "--check",
        plan,
        "--policy",
        "policy.yaml",
        "--migrations",
        migrations.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains(r#"notify: {"command":"cat >> notified.jsonl"#),
        "{}",
        text(&output)
    );
    fleet.plan_at(&migrations, "down.plan.yaml");
    let dead = format!("http://{closed}/hook/s3cr3t-path");
    let output = run_with(
        &fleet,
        &["apply", "down.plan.yaml"],
        &[("HOOK_URL", dead.as_str())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "notify: rollout_started could not be delivered to the webhook after 3 attempts"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t-path"), "{stderr}");
}

/// A check with an `interval` runs while the wave bakes: once it fails, the rollout halts
/// during the bake instead of waiting for its end, and the next wave never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_check_halts_the_rollout_during_the_bake() {
    let fleet = TestFleet::start(3).await;
    fleet.write_policy(&format!(
        "{FAST}waves:\n  - name: canary\n    tenants: [tenant-0001]\n    percent: 1\n    concurrency: 1\n    bake: 60s\n    checks:\n      - name: no-alert\n        command: 'test ! -f alert.flag'\n        interval: 1s\n  - name: rest\n    percent: 100\n    concurrency: 2\n"
    ));
    let plan = fleet.plan(&repo_migrations());
    let journal = fleet.path("policy.journal.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_schemafleet"))
        .args(["apply", plan.to_str().expect("utf-8"), "--output", "json"])
        .current_dir(fleet.dir.path())
        .env("NEON_API_URL", fleet.fleet.api_url())
        .env("NEON_API_KEY", fleet.fleet.api_key().expose())
        .env("SCHEMAFLEET_OPERATION_POLL_MS", "20")
        .env("SCHEMAFLEET_NO_PROGRESS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("apply starts");
    // Once the canary's first checks passed, the bake is under way: raise the alert.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .contains(r#""event":"checks_passed""#)
    {
        assert!(Instant::now() < deadline, "the canary never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raised = Instant::now();
    std::fs::write(fleet.path("alert.flag"), "").expect("flag");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("apply ends");
    assert!(
        raised.elapsed() < Duration::from_secs(20),
        "the interval check must halt well before the 60s bake ends: {:?}",
        raised.elapsed()
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = json(&output);
    assert_eq!(report["outcome"], "halted", "{report:#}");
    assert_eq!(
        wave_of(&report, "canary")["check_failures"][0]["check"],
        "no-alert"
    );
    assert_eq!(wave_of(&report, "rest")["status"], "not_started");
    let records = std::fs::read_to_string(&journal).expect("journal");
    assert!(
        records.contains(r#""event":"checks_failed","wave":"canary","stage":"during_bake""#),
        "{records}"
    );
}

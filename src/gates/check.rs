//! Running one check of a wave: a SQL query on a stable sample of its migrated mains, a
//! command, or an HTTP GET. A check's failure is data ([`CheckOutcome`]), never an `Err`: it
//! halts the rollout, it does not stop the program.
//!
//! **Invariant:** an outcome's `output` is bounded and passed through
//! [`crate::secret::redact_uri`]; expanded placeholders (secrets) are never part of it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::env::expand_from_env;
use super::sample::stable_sample;
use super::spec::{CheckKind, CheckSpec, CommandLine, HttpUrl};
use crate::journal::CheckFailure;
use crate::neon::NeonClient;
use crate::pg::check::{CheckAnswer, run_check_query};
use crate::plan::model::{Plan, PlannedWave};

/// The most of a check's output kept for the journal and reports.
const OUTPUT_LIMIT: usize = 4096;
/// Tenants a failed SQL check names in its output (all are in `failed_tenants`).
const LISTED_TENANTS: usize = 20;
/// SQL checks read at most this many tenants at once.
const SQL_CONCURRENCY: usize = 16;

/// When a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Right after the wave's tenants finished.
    AfterWave,
    /// Every `interval` while the wave bakes.
    DuringBake,
    /// At the end of the wave's bake, before the next wave starts.
    BakeEnd,
    /// `apply --retry-checks` on a wave its checks halted.
    Retry,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::AfterWave => "after_wave",
            Stage::DuringBake => "during_bake",
            Stage::BakeEnd => "bake_end",
            Stage::Retry => "retry",
        }
    }
}

/// What a check looks at.
pub struct CheckTarget<'a> {
    pub plan: &'a Plan,
    pub wave: &'a PlannedWave,
    /// The wave's tenants whose main has the release (applied or already up to date).
    pub migrated: Vec<String>,
    /// RFC 3339; `$1` of SQL checks.
    pub wave_started_at: String,
    pub stage: Stage,
}

/// What a check needs from the run.
#[derive(Clone)]
pub struct CheckEnv {
    pub client: NeonClient,
    pub connect_timeout: Duration,
    /// Commands run here (the plan file's directory).
    pub workdir: PathBuf,
    /// Mains' URIs from the fleet source (catalog query or tenants file), when it gives them:
    /// a SQL check connects with them as `apply` does, with no API request per sampled tenant.
    pub source_connections: Option<std::sync::Arc<crate::fleet::ConnectionBook>>,
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub passed: bool,
    pub failure: CheckFailure,
}

/// Run `check` against `target`.
pub async fn run_check(
    check: &CheckSpec,
    target: &CheckTarget<'_>,
    env: &CheckEnv,
) -> CheckOutcome {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let (passed, output, failed_tenants, sampled) = match check.kind() {
        CheckKind::Sql {
            query,
            sample,
            threshold,
        } => {
            let ids: Vec<&str> = target.migrated.iter().map(String::as_str).collect();
            let sampled = stable_sample(&target.plan.plan_id, &ids, sample);
            let (passed, output, failed) =
                sql_check(query, &sampled, threshold, timeout, target, env).await;
            (passed, output, failed, Some(sampled.len()))
        }
        CheckKind::Command(command) => {
            let (passed, output) = command_check(check, command, timeout, target, env).await;
            (passed, output, Vec::new(), None)
        }
        CheckKind::Http {
            url,
            headers,
            expect,
        } => {
            let (passed, output) = http_check(url, headers, expect, timeout).await;
            (passed, output, Vec::new(), None)
        }
    };
    CheckOutcome {
        passed,
        failure: CheckFailure {
            check: check.name.clone(),
            kind: check.kind_name().to_string(),
            output: bounded(&crate::secret::redact_uri(&output)),
            failed_tenants,
            sampled,
        },
    }
}

async fn sql_check(
    query: &str,
    sampled: &[&str],
    threshold: usize,
    timeout: Duration,
    target: &CheckTarget<'_>,
    env: &CheckEnv,
) -> (bool, String, Vec<String>) {
    let database = &target.plan.policy.database;
    let role = &target.plan.policy.role;
    let answers: Vec<(String, Result<CheckAnswer, String>)> =
        futures::stream::iter(sampled.iter().map(|tenant| async move {
            let answer = async {
                let source_uri = env
                    .source_connections
                    .as_ref()
                    .and_then(|book| book.connection_uri(tenant));
                let uri = match source_uri {
                    Some(uri) => uri.clone(),
                    None => env
                        .client
                        .connection_uri(tenant, None, database, role)
                        .await
                        .map_err(|error| format!("connection URI: {error}"))?,
                };
                let client = crate::pg::connect(&uri, env.connect_timeout)
                    .await
                    .map_err(|failure| failure.message)?;
                let answer = tokio::time::timeout(
                    timeout + Duration::from_secs(1),
                    run_check_query(&client, query, &target.wave_started_at, timeout),
                )
                .await
                .map_err(|_| {
                    format!(
                        "no answer within {}",
                        super::format_ms(timeout.as_millis() as u64)
                    )
                })?
                .map_err(|failure| match failure.sqlstate {
                    Some(code) => format!("{} (SQLSTATE {code})", failure.message),
                    None => failure.message,
                })?;
                Ok::<CheckAnswer, String>(answer)
            }
            .await;
            (tenant.to_string(), answer)
        }))
        .buffer_unordered(SQL_CONCURRENCY.min(target.wave.concurrency.max(1)))
        .collect()
        .await;
    let mut failed: Vec<(String, String)> = answers
        .into_iter()
        .filter_map(|(tenant, answer)| match answer {
            Ok(CheckAnswer::Pass) => None,
            Ok(CheckAnswer::Fail(reason)) => Some((tenant, format!("answered {reason}"))),
            Err(error) => Some((tenant, format!("error: {error}"))),
        })
        .collect();
    failed.sort();
    let passed = failed.len() <= threshold;
    let mut output = format!(
        "{} of {} sampled tenant{} failed the query (threshold {threshold})",
        failed.len(),
        sampled.len(),
        if sampled.len() == 1 { "" } else { "s" }
    );
    for (tenant, reason) in failed.iter().take(LISTED_TENANTS) {
        output.push_str(&format!("\n{}: {reason}", target.plan.tenant_label(tenant)));
    }
    if failed.len() > LISTED_TENANTS {
        output.push_str(&format!("\n… and {} more", failed.len() - LISTED_TENANTS));
    }
    (
        passed,
        output,
        failed.into_iter().map(|(tenant, _)| tenant).collect(),
    )
}

/// A file name no other check of this process uses.
fn context_file_path() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "schemafleet-check-{}-{}.json",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

async fn command_check(
    check: &CheckSpec,
    command: &CommandLine,
    timeout: Duration,
    target: &CheckTarget<'_>,
    env: &CheckEnv,
) -> (bool, String) {
    let tenants: Vec<serde_json::Value> = target
        .migrated
        .iter()
        .map(|id| {
            let (name, region) = target
                .plan
                .tenant(id)
                .map_or((String::new(), String::new()), |(tenant, _)| {
                    (tenant.name.clone(), tenant.region.clone())
                });
            serde_json::json!({"id": id, "name": name, "region": region})
        })
        .collect();
    let context = serde_json::json!({
        "plan_id": target.plan.plan_id,
        "wave": target.wave.name,
        "check": check.name,
        "stage": target.stage.as_str(),
        "wave_started_at": target.wave_started_at,
        "tenants": tenants,
    });
    let context_path = context_file_path();
    if let Err(error) = std::fs::write(&context_path, context.to_string()) {
        return (
            false,
            format!("cannot write the check's context file: {error}"),
        );
    }
    let extra = [
        ("SCHEMAFLEET_PLAN_ID", target.plan.plan_id.clone()),
        ("SCHEMAFLEET_WAVE", target.wave.name.clone()),
        ("SCHEMAFLEET_CHECK", check.name.clone()),
        ("SCHEMAFLEET_CHECK_STAGE", target.stage.as_str().to_string()),
        ("SCHEMAFLEET_TENANTS", target.migrated.join(",")),
        ("SCHEMAFLEET_CHECK_FILE", context_path.display().to_string()),
    ];
    let result = run_program(command, &env.workdir, &extra, None, timeout).await;
    let _ = std::fs::remove_file(&context_path);
    match result {
        Ok((status, output)) if status.success() => (true, output),
        Ok((status, output)) => {
            let code = status
                .code()
                .map_or_else(|| "a signal".to_string(), |code| format!("exit {code}"));
            (false, format!("{code}\n{output}").trim_end().to_string())
        }
        Err(message) => (false, message),
    }
}

/// Run `command` in `workdir` with `extra` environment and optional stdin, killing its whole
/// process group after `timeout`. Returns its exit status and its stdout and stderr.
pub(crate) async fn run_program(
    command: &CommandLine,
    workdir: &std::path::Path,
    extra: &[(&str, String)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String), String> {
    let mut process = match command {
        CommandLine::Shell(line) => {
            let mut process = tokio::process::Command::new("sh");
            process.arg("-c").arg(line);
            process
        }
        CommandLine::Argv(argv) => {
            let mut expanded = Vec::with_capacity(argv.len());
            for argument in argv {
                expanded.push(expand_from_env(argument).map_err(|error| error.to_string())?);
            }
            let mut process = tokio::process::Command::new(&expanded[0]);
            process.args(&expanded[1..]);
            process
        }
    };
    process
        .current_dir(workdir)
        .envs(extra.iter().map(|(key, value)| (*key, value.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout also ends what a shell line started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = process
        .spawn()
        .map_err(|error| format!("cannot run `{command}`: {error}"))?;
    let pid = child.id();
    if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        let bytes = bytes.to_vec();
        tokio::spawn(async move {
            let _ = input.write_all(&bytes).await;
        });
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(stdout) = &mut stdout {
                let _ = stdout.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(stderr) = &mut stderr {
                let _ = stderr.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok((Ok(status), out, err)) => {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            let err = String::from_utf8_lossy(&err);
            if !err.trim().is_empty() {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&err);
            }
            Ok((status, text.trim_end().to_string()))
        }
        Ok((Err(error), _, _)) => Err(format!("`{command}` could not be waited for: {error}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
                // SAFETY: kill(2) with a negative pid signals the process group we created.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            Err(format!(
                "`{command}` timed out after {} and was killed",
                super::format_ms(timeout.as_millis() as u64)
            ))
        }
    }
}

async fn http_check(
    url: HttpUrl<'_>,
    headers: &std::collections::BTreeMap<String, String>,
    expect: Option<(&str, &serde_json::Value)>,
    timeout: Duration,
) -> (bool, String) {
    let (shown, resolved) = match url {
        HttpUrl::Template(template) => (template.to_string(), expand_from_env(template)),
        HttpUrl::Env(name) => (
            format!("${name}"),
            std::env::var(name).map_err(|_| super::env::TemplateError::Unset(name.to_string())),
        ),
    };
    let resolved = match resolved {
        Ok(resolved) => resolved,
        Err(error) => return (false, format!("GET {shown}: {error}")),
    };
    // `plan` refuses a literal plain-http host; an `http_env` URL or a `${HOST}` is known only now.
    if let Some(refusal) = url::Url::parse(&resolved)
        .ok()
        .as_ref()
        .and_then(super::plain_http_refusal)
    {
        return (false, format!("GET {shown}: the URL {refusal}"));
    }
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(client) => client,
        Err(error) => return (false, format!("GET {shown}: {}", error.without_url())),
    };
    let mut request = client.get(&resolved);
    for (name, template) in headers {
        match expand_from_env(template) {
            Ok(value) => request = request.header(name, value),
            Err(error) => return (false, format!("GET {shown}: header {name}: {error}")),
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_timeout() => {
            return (
                false,
                format!(
                    "GET {shown}: no answer within {}",
                    super::format_ms(timeout.as_millis() as u64)
                ),
            );
        }
        Err(error) => return (false, format!("GET {shown}: {}", error.without_url())),
    };
    let status = response.status();
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => {
            return (
                false,
                format!(
                    "GET {shown}: HTTP {status}, body unreadable: {}",
                    error.without_url()
                ),
            );
        }
    };
    let excerpt: String = body.chars().take(500).collect();
    if !status.is_success() {
        return (false, format!("GET {shown}: HTTP {status}\n{excerpt}"));
    }
    let Some((pointer, expected)) = expect else {
        return (true, format!("GET {shown}: HTTP {status}"));
    };
    let found = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|document| document.pointer(pointer).cloned());
    match found {
        Some(found) if json_matches(&found, expected) => (
            true,
            format!("GET {shown}: HTTP {status}, {pointer} = {found}"),
        ),
        Some(found) => (
            false,
            format!("GET {shown}: HTTP {status}, {pointer} = {found}, expected {expected}"),
        ),
        None => (
            false,
            format!(
                "GET {shown}: HTTP {status}, no {pointer} in the answer (expected {expected})\n{excerpt}"
            ),
        ),
    }
}

/// Equal JSON, or a scalar the policy wrote as a string (`expect: "1"` matches `1`).
fn json_matches(found: &serde_json::Value, expected: &serde_json::Value) -> bool {
    if found == expected {
        return true;
    }
    match (found, expected) {
        (
            serde_json::Value::Number(_) | serde_json::Value::Bool(_),
            serde_json::Value::String(text),
        ) => {
            let found_text: String = found.to_string();
            found_text == *text
        }
        (serde_json::Value::Number(found), serde_json::Value::Number(expected)) => {
            found.as_f64() == expected.as_f64()
        }
        _ => false,
    }
}

/// At most [`OUTPUT_LIMIT`] bytes, cut at a character boundary, keeping the end (where
/// programs print their verdict).
fn bounded(text: &str) -> String {
    if text.len() <= OUTPUT_LIMIT {
        return text.to_string();
    }
    let mut start = text.len() - OUTPUT_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_match_as_the_policy_means() {
        use serde_json::json;
        assert!(json_matches(&json!("ok"), &json!("ok")));
        assert!(json_matches(&json!(1), &json!("1")));
        assert!(json_matches(&json!(1.0), &json!(1)));
        assert!(json_matches(&json!(true), &json!("true")));
        assert!(!json_matches(&json!("degraded"), &json!("ok")));
        assert!(!json_matches(&json!({"a": 1}), &json!("{\"a\":1}")));
    }

    #[test]
    fn output_is_bounded_from_the_end() {
        let long = "é".repeat(OUTPUT_LIMIT);
        let cut = bounded(&long);
        assert!(cut.len() <= OUTPUT_LIMIT + "…".len());
        assert!(cut.starts_with('…'));
        assert_eq!(bounded("short"), "short");
    }
}

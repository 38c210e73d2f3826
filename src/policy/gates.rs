//! The gates between waves in a policy: each wave's `checks:` and `approval:`, and `notify:`.
//! Which keys go together is checked here, after the YAML is read; errors name the policy
//! file, the line of the offending key and the field (`waves[1].checks[0].sample`).
//!
//! **Invariant:** a checked [`CheckSpec`] has exactly one kind, placeholders that parse, and no
//! credential written out (a URL's password must be a `${NAME}` placeholder).

use std::path::Path;
use std::time::Duration;

use super::PolicyError;
use super::locate::{FilePosition, find_in_section, find_in_wave, find_top_level_key};
use super::raw::{RawCheck, RawNotify};
use crate::gates::env::placeholders;
use crate::gates::spec::{CheckSpec, CommandLine, NotifySpec};

const DEFAULT_SQL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Where errors of one wave's checks point.
pub(crate) struct WaveAt<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub wave_idx: usize,
    pub bake: Duration,
}

impl WaveAt<'_> {
    fn error(&self, needle: &str, message: String) -> PolicyError {
        PolicyError::Invalid {
            location: FilePosition {
                path: self.path,
                position: find_in_wave(self.text, self.wave_idx, needle),
            }
            .to_string(),
            message,
        }
    }
}

/// A wave's checks, checked and named (`sql-1`, `http-2` when unnamed).
pub(crate) fn wave_checks(
    at: &WaveAt<'_>,
    raw_checks: Vec<RawCheck>,
) -> Result<Vec<CheckSpec>, PolicyError> {
    let mut checks: Vec<CheckSpec> = Vec::with_capacity(raw_checks.len());
    for (check_idx, raw) in raw_checks.into_iter().enumerate() {
        let field = format!("waves[{}].checks[{check_idx}]", at.wave_idx);
        let check = one_check(at, &field, check_idx, raw)?;
        if checks.iter().any(|other| other.name == check.name) {
            return Err(at.error(
                &check.name,
                format!(
                    "{field}.name: another check of this wave is named `{}`; give each check its own name",
                    check.name
                ),
            ));
        }
        checks.push(check);
    }
    Ok(checks)
}

fn one_check(
    at: &WaveAt<'_>,
    field: &str,
    check_idx: usize,
    raw: RawCheck,
) -> Result<CheckSpec, PolicyError> {
    let kinds: Vec<&str> = [
        raw.sql.as_ref().map(|_| "sql"),
        raw.command.as_ref().map(|_| "command"),
        raw.http.as_ref().map(|_| "http"),
        raw.http_env.as_ref().map(|_| "http_env"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let kind = match kinds.as_slice() {
        [kind] => *kind,
        [] => {
            return Err(at.error(
                "checks:",
                format!("{field}: give one of `sql:`, `command:` or `http:` (or `http_env:`)"),
            ));
        }
        [first, second, ..] => {
            return Err(at.error(
                &format!("{second}:"),
                format!(
                    "{field}: `{first}` and `{second}` in one check; a check is one of `sql:`, `command:` or `http:`, so make them two checks"
                ),
            ));
        }
    };
    let only_with = |present: bool, key: &str, owner: &str| -> Result<(), PolicyError> {
        if present {
            return Err(at.error(
                &format!("{key}:"),
                format!("{field}.{key}: only used by `{owner}` checks; remove it"),
            ));
        }
        Ok(())
    };
    let is_sql = kind == "sql";
    let is_http = kind == "http" || kind == "http_env";
    if !is_sql {
        only_with(raw.sample.is_some(), "sample", "sql")?;
        only_with(raw.sample_percent.is_some(), "sample_percent", "sql")?;
        only_with(raw.threshold.is_some(), "threshold", "sql")?;
    }
    if !is_http {
        only_with(!raw.headers.is_empty(), "headers", "http")?;
        only_with(raw.json_pointer.is_some(), "json_pointer", "http")?;
        only_with(raw.expect.is_some(), "expect", "http")?;
    }
    if raw.sample.is_some() && raw.sample_percent.is_some() {
        return Err(at.error(
            "sample_percent:",
            format!("{field}: `sample` and `sample_percent` both set; keep one"),
        ));
    }
    match (&raw.json_pointer, &raw.expect) {
        (Some(_), None) => {
            return Err(at.error(
                "json_pointer:",
                format!("{field}.json_pointer: needs `expect:`, the value it must equal"),
            ));
        }
        (None, Some(_)) => {
            return Err(at.error(
                "expect:",
                format!("{field}.expect: needs `json_pointer:` (e.g. /status), where in the answer to look"),
            ));
        }
        _ => {}
    }
    if let Some(pointer) = &raw.json_pointer
        && !pointer.is_empty()
        && !pointer.starts_with('/')
    {
        return Err(at.error(
            "json_pointer:",
            format!("{field}.json_pointer: `{pointer}` is not a JSON pointer; it starts with `/`, e.g. /status or /checks/0/ok"),
        ));
    }
    let template_error = |key: &str, error: crate::gates::env::TemplateError| {
        at.error(&format!("{key}:"), format!("{field}.{key}: {error}"))
    };
    if let Some(url) = &raw.http {
        placeholders(&url.0).map_err(|error| template_error("http", error))?;
        check_url_template(&url.0)
            .map_err(|message| at.error("http:", format!("{field}.http: {message}")))?;
    }
    for (name, value) in &raw.headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(at.error(
                name,
                format!("{field}.headers: `{name}` is not an HTTP header name"),
            ));
        }
        placeholders(value).map_err(|error| template_error("headers", error))?;
    }
    if let Some(command) = &raw.command
        && let CommandLine::Argv(argv) = &command.0
    {
        for argument in argv {
            placeholders(argument).map_err(|error| template_error("command", error))?;
        }
    }
    let default_timeout = match kind {
        "sql" => DEFAULT_SQL_TIMEOUT,
        "command" => DEFAULT_COMMAND_TIMEOUT,
        _ => DEFAULT_HTTP_TIMEOUT,
    };
    let timeout = raw.timeout.map_or(default_timeout, |timeout| timeout.0);
    if timeout.is_zero() {
        return Err(at.error("timeout:", format!("{field}.timeout: must be more than 0s")));
    }
    let interval = raw.interval.map(|interval| interval.0);
    if let Some(interval) = interval {
        if interval < MIN_INTERVAL {
            return Err(at.error("interval:", format!("{field}.interval: at least 1s")));
        }
        if at.bake.is_zero() {
            return Err(at.error(
                "interval:",
                format!(
                    "{field}.interval: the check runs every interval while the wave bakes, and this wave has no `bake:`; add one or remove `interval`"
                ),
            ));
        }
    }
    let short_kind = if kind == "http_env" { "http" } else { kind };
    Ok(CheckSpec {
        name: raw
            .name
            .map_or_else(|| format!("{short_kind}-{}", check_idx + 1), |name| name.0),
        sql: raw.sql.map(|sql| sql.0),
        sample: raw.sample.map(|sample| sample.0),
        sample_percent: raw.sample_percent.map(|percent| percent.0),
        threshold: raw.threshold.unwrap_or(0),
        command: raw.command.map(|command| command.0),
        http: raw.http.map(|url| url.0),
        http_env: raw.http_env.map(|name| name.0),
        headers: raw.headers,
        json_pointer: raw.json_pointer,
        expect: raw.expect,
        timeout_ms: millis(timeout),
        interval_ms: interval.map(millis),
    })
}

/// A URL template must be an http(s) URL once its placeholders are filled, and must not carry
/// a password in clear.
fn check_url_template(template: &str) -> Result<(), String> {
    let filled = crate::gates::env::expand(template, |_| Some("x".to_string()))
        .map_err(|error| error.to_string())?;
    let url =
        url::Url::parse(&filled).map_err(|error| format!("`{template}` is not a URL: {error}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "`{template}`: only http:// and https:// URLs are checked"
        ));
    }
    // The host is judged with each placeholder as a loopback address, so a host that is wholly
    // `${HOST}` is left to the check's run (which refuses it then), while a literal host is
    // refused here, before any run.
    let host_judged = crate::gates::env::expand(template, |_| Some("127.0.0.1".to_string()))
        .ok()
        .and_then(|filled| url::Url::parse(&filled).ok());
    if let Some(refusal) = host_judged
        .as_ref()
        .and_then(crate::gates::plain_http_refusal)
    {
        return Err(format!("`{template}` {refusal}"));
    }
    let literal = url::Url::parse(template).ok();
    if let Some(literal) = literal
        && literal
            .password()
            .is_some_and(|password| !password.contains("%7B"))
        && !template.contains("${")
    {
        return Err(
            "the URL holds a password; write it as a placeholder (`https://user:${APP_TOKEN}@host/health`) and set the variable where `apply` runs".to_string(),
        );
    }
    Ok(())
}

/// The policy's `notify:` section, checked.
pub(crate) fn notify(path: &Path, text: &str, raw: RawNotify) -> Result<NotifySpec, PolicyError> {
    let at = |needle: &str| {
        FilePosition {
            path,
            position: find_in_section(text, "notify", needle)
                .or(find_top_level_key(text, "notify")),
        }
        .to_string()
    };
    // `webhook:` never deserializes (its value is refused where it is written).
    debug_assert!(raw.webhook.is_none());
    if raw.webhook_env.is_none() && raw.command.is_none() {
        return Err(PolicyError::Invalid {
            location: at("notify:"),
            message: "notify: give `webhook_env: VAR` (the variable holding the webhook URL) and/or `command:`".to_string(),
        });
    }
    if let Some(command) = &raw.command
        && let CommandLine::Argv(argv) = &command.0
    {
        for argument in argv {
            placeholders(argument).map_err(|error| PolicyError::Invalid {
                location: at("command:"),
                message: format!("notify.command: {error}"),
            })?;
        }
    }
    let timeout = raw
        .timeout
        .map_or(DEFAULT_NOTIFY_TIMEOUT, |timeout| timeout.0);
    if timeout.is_zero() {
        return Err(PolicyError::Invalid {
            location: at("timeout:"),
            message: "notify.timeout: must be more than 0s".to_string(),
        });
    }
    let mut events = raw.events;
    let mut seen = std::collections::HashSet::new();
    events.retain(|event| seen.insert(*event));
    Ok(NotifySpec {
        webhook_env: raw.webhook_env.map(|name| name.0),
        command: raw.command.map(|command| command.0),
        events,
        timeout_ms: millis(timeout),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::gates::spec::{Approval, CheckKind, CommandLine, HttpUrl, NotifyEvent, Sample};

    const BASE: &str = "\
fleet:
  source: file
  file: tenants.csv
database: neondb
role: neondb_owner
salt: s
waves:
  - name: canary
    percent: 10
    concurrency: 2
    bake: 5m
    checks:
CHECKS
  - name: rest
    percent: 100
    concurrency: 8
    approval: required
";

    fn parse(checks: &str, extra: &str) -> Result<crate::policy::Policy, String> {
        let text = format!("{}{extra}", BASE.replace("CHECKS\n", checks));
        crate::policy::parse(Path::new("plans/r.yaml"), &text).map_err(|error| error.to_string())
    }

    #[test]
    fn checks_approval_and_notify_parse() {
        let policy = parse(
            "      - name: no-errors\n        sql: SELECT true\n        sample: 20\n        threshold: 2\n        interval: 30s\n      - command: [./check.sh, '${TOKEN}']\n        timeout: 5s\n      - http: 'https://app.local/health'\n        headers: {Authorization: 'Bearer ${APP_TOKEN}'}\n        json_pointer: /status\n        expect: ok\n",
            "notify:\n  webhook_env: SLACK_URL\n  events: [wave_halted, check_failed]\n",
        )
        .unwrap();
        let checks = &policy.waves[0].checks;
        assert_eq!(checks.len(), 3);
        assert_eq!(
            checks[0].kind(),
            CheckKind::Sql {
                query: "SELECT true",
                sample: Sample::Count(20),
                threshold: 2
            }
        );
        assert_eq!(checks[0].interval_ms, Some(30_000));
        assert_eq!(checks[0].timeout_ms, 30_000);
        assert_eq!(checks[1].name, "command-2");
        assert_eq!(
            checks[1].kind(),
            CheckKind::Command(&CommandLine::Argv(vec![
                "./check.sh".into(),
                "${TOKEN}".into()
            ]))
        );
        assert_eq!(checks[2].name, "http-3");
        match checks[2].kind() {
            CheckKind::Http { url, expect, .. } => {
                assert_eq!(url, HttpUrl::Template("https://app.local/health"));
                assert_eq!(expect, Some(("/status", &serde_json::json!("ok"))));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(policy.waves[1].approval, Approval::Required);
        assert_eq!(policy.waves[0].approval, Approval::None);
        let notify = policy.notify.unwrap();
        assert_eq!(notify.webhook_env.as_deref(), Some("SLACK_URL"));
        assert_eq!(
            notify.events,
            vec![NotifyEvent::WaveHalted, NotifyEvent::CheckFailed]
        );
    }

    #[test]
    fn plain_http_is_kept_for_loopback_and_hosts_known_only_at_run_time() {
        for url in [
            "http://127.0.0.1:8080/health",
            "http://localhost/health",
            "http://[::1]:9/health",
            "http://${HEALTH_HOST}/health",
            "https://app.example.com/health",
        ] {
            let checks = format!("      - http: '{url}'\n");
            assert!(parse(&checks, "").is_ok(), "{url}");
        }
    }

    #[test]
    fn bad_gates_name_the_file_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "      - sql: SELECT true\n        command: ./x\n",
                "",
                "plans/r.yaml:14:9: waves[0].checks[0]: `sql` and `command` in one check",
            ),
            (
                "      - name: x\n",
                "",
                "plans/r.yaml:12:5: waves[0].checks[0]: give one of `sql:`, `command:` or `http:`",
            ),
            (
                "      - sql: SELECT true\n        sample: 0\n",
                "",
                "plans/r.yaml:14:17: waves[0].checks[0].sample: a sample of tenants: expected a whole number from 1",
            ),
            (
                "      - sql: SELECT true\n        sample: 3\n        sample_percent: 5\n",
                "",
                "plans/r.yaml:15:9: waves[0].checks[0]: `sample` and `sample_percent` both set",
            ),
            (
                "      - command: ./x\n        threshold: 2\n",
                "",
                "plans/r.yaml:14:9: waves[0].checks[0].threshold: only used by `sql` checks",
            ),
            (
                "      - http: 'https://h/x'\n        json_pointer: /status\n",
                "",
                "plans/r.yaml:14:9: waves[0].checks[0].json_pointer: needs `expect:`",
            ),
            (
                "      - http: 'https://h/${1TOKEN}'\n",
                "",
                "plans/r.yaml:13:9: waves[0].checks[0].http: `${1TOKEN}` is not an environment variable name",
            ),
            (
                "      - http: 'https://user:hunter2@h/x'\n",
                "",
                "plans/r.yaml:13:9: waves[0].checks[0].http: the URL holds a password",
            ),
            (
                "      - http: 'http://app.example.com/health?token=${TOKEN}'\n",
                "",
                "plans/r.yaml:13:9: waves[0].checks[0].http: `http://app.example.com/health?token=${TOKEN}` is http:// to a host that is not loopback; use https://",
            ),
            (
                "      - http: 'http://${APP}.example.com/health'\n",
                "",
                "is http:// to a host that is not loopback",
            ),
            (
                "      - http: 'ftp://h/x'\n",
                "",
                "waves[0].checks[0].http: `ftp://h/x`: only http:// and https:// URLs",
            ),
            (
                "      - http_env: 'https://h/x'\n",
                "",
                "plans/r.yaml:13:19: waves[0].checks[0].http_env: `https://h/x` is not an environment variable's name",
            ),
            (
                "      - sql: SELECT true\n      - sql: SELECT 1 = 1\n        name: sql-1\n",
                "",
                "plans/r.yaml:15:15: waves[0].checks[1].name: another check of this wave is named `sql-1`",
            ),
            (
                "      - sql: SELECT true\n        colour: red\n",
                "",
                "plans/r.yaml:14:9: waves[0].checks[0]: unknown field `colour`",
            ),
            (
                "      - sql: SELECT true\n",
                "notify:\n  webhook: https://hooks.slack.com/services/T/B/X\n",
                "plans/r.yaml:19:12: notify.webhook: a webhook URL is a secret",
            ),
            (
                "      - sql: SELECT true\n",
                "notify:\n  events: [wave_halted]\n",
                "plans/r.yaml:18:1: notify: give `webhook_env: VAR`",
            ),
            (
                "      - sql: SELECT true\n",
                "notify:\n  webhook_env: X\n  events: [wave_exploded]\n",
                "plans/r.yaml:20:12: notify.events[0]: unknown variant `wave_exploded`",
            ),
        ];
        for (checks, extra, expected) in cases {
            let message = parse(checks, extra).unwrap_err();
            assert!(
                message.contains(expected),
                "{checks}{extra}\n{message}\nexpected: {expected}"
            );
        }
        let message = parse("      - sql: SELECT true\n", "")
            .map(|_| ())
            .and_then(|()| {
                crate::policy::parse(
                    Path::new("plans/r.yaml"),
                    &BASE
                        .replace(
                            "CHECKS\n",
                            "      - sql: SELECT true\n        interval: 10s\n",
                        )
                        .replace("    bake: 5m\n", ""),
                )
                .map(|_| ())
                .map_err(|error| error.to_string())
            })
            .unwrap_err();
        assert!(
            message.contains("waves[0].checks[0].interval: the check runs every interval while the wave bakes, and this wave has no `bake:`"),
            "{message}"
        );
        let message = crate::policy::parse(
            Path::new("plans/r.yaml"),
            &BASE
                .replace("CHECKS\n", "      - sql: SELECT true\n")
                .replace("approval: required", "approval: maybe"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("waves[1].approval: unknown variant `maybe`"),
            "{message}"
        );
    }
}

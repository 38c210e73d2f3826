//! Notifications: a JSON payload per rollout event, sent to a webhook (its URL from an
//! environment variable) and/or a command, retried briefly. A notification that cannot be
//! delivered is reported and the rollout goes on.
//!
//! [`payload`] is pure (plan, journal summary, event in; JSON out); [`Notifier`] delivers.
//!
//! **Invariant:** a payload holds no URI and no key: failure causes and check outputs have
//! every `scheme://…` replaced by `<uri>`, and the webhook URL itself is never shown, not even
//! in a delivery error.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};

use super::spec::{NotifyEvent, NotifySpec};
use crate::executor::Reporter;
use crate::journal::CheckFailure;
use crate::plan::model::Plan;
use crate::report::{FailureGroup, Summary};
use crate::secret::SecretString;

/// Attempts per delivery, and the first pause between them (doubled after each).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Failure groups a payload lists, and tenants per group.
const LISTED_GROUPS: usize = 10;
const LISTED_TENANTS: usize = 10;

/// The event-specific part of a notification.
#[derive(Debug, Clone)]
pub enum Detail<'a> {
    None,
    /// `rollout_finished`: the run's outcome (`completed`, `halted`, …).
    Outcome(&'a str),
    /// `check_failed`: the failed check and the stage it ran at.
    Check {
        failure: &'a CheckFailure,
        stage: &'a str,
    },
    /// `wave_halted`: why (`budget` or `checks`).
    Halted(&'a str),
}

/// What a notification says about the rollout at the moment of `event`.
pub struct PayloadInput<'a> {
    pub event: NotifyEvent,
    pub plan: &'a Plan,
    /// For the text's next step (`schemafleet approve <plan> <wave>`).
    pub plan_path: &'a str,
    pub run_id: &'a str,
    pub at: &'a str,
    pub wave: Option<&'a str>,
    pub summary: &'a Summary,
    pub groups: &'a [FailureGroup],
    pub detail: Detail<'a>,
}

static URI: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\x22<>]+")
        .expect("invariant: a valid regular expression")
});

/// `text` with every URI replaced by `<uri>`: a payload goes to a chat channel.
pub fn scrub_uris(text: &str) -> String {
    URI.replace_all(&crate::secret::redact_uri(text), "<uri>")
        .into_owned()
}

/// The JSON of one notification (documented in the README, "Notifications").
pub fn payload(input: &PayloadInput<'_>) -> Value {
    let wave_counts = input.wave.and_then(|name| {
        input
            .summary
            .waves
            .iter()
            .find(|wave| wave.name == name)
            .map(|wave| serde_json::to_value(&wave.counts).unwrap_or(Value::Null))
    });
    let groups: Vec<Value> = input
        .groups
        .iter()
        .take(LISTED_GROUPS)
        .map(|group| {
            json!({
                "phase": group.phase,
                "sqlstate": group.sqlstate,
                "cause": scrub_uris(&group.cause),
                "count": group.count,
                "tenants": group.tenants.iter().take(LISTED_TENANTS).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut document = json!({
        "schema": "schemafleet.notification.v1",
        "event": input.event.as_str(),
        "plan_id": input.plan.plan_id,
        "run_id": input.run_id,
        "at": input.at,
        "wave": input.wave,
        "counts": input.summary.totals,
        "wave_counts": wave_counts,
        "failure_groups": groups,
        "text": text(input),
    });
    let object = document
        .as_object_mut()
        .expect("invariant: json! of an object is an object");
    match &input.detail {
        Detail::None => {}
        Detail::Outcome(outcome) => {
            object.insert("outcome".into(), json!(outcome));
        }
        Detail::Halted(reason) => {
            object.insert("halted_by".into(), json!(reason));
        }
        Detail::Check { failure, stage } => {
            object.insert(
                "check".into(),
                json!({
                    "name": failure.check,
                    "kind": failure.kind,
                    "stage": stage,
                    "output": scrub_uris(&failure.output),
                    "failed_tenants": failure.failed_tenants.iter().take(LISTED_TENANTS * 5).collect::<Vec<_>>(),
                    "sampled": failure.sampled,
                }),
            );
        }
    }
    document
}

/// The Slack-compatible `text`: one line a person reads in a channel.
fn text(input: &PayloadInput<'_>) -> String {
    let plan = &input.plan.plan_id;
    let totals = &input.summary.totals;
    let wave = input.wave.unwrap_or("");
    let wave_counts = input
        .summary
        .waves
        .iter()
        .find(|summary| summary.name == wave)
        .map(|summary| &summary.counts);
    let line = match (input.event, &input.detail) {
        (NotifyEvent::RolloutStarted, _) => format!(
            "rollout of plan {plan} started: {} tenants in {} waves",
            totals.tenants,
            input.plan.waves.len()
        ),
        (NotifyEvent::WaveStarted, _) => format!(
            "wave {wave} of plan {plan} started ({} tenants)",
            wave_counts.map_or(0, |counts| counts.tenants)
        ),
        (NotifyEvent::WaveFinished, _) => {
            let counts = wave_counts.cloned().unwrap_or_default();
            format!(
                "wave {wave} of plan {plan} finished: {} applied, {} up to date, {}",
                counts.applied,
                counts.up_to_date,
                unfinished(&counts)
            )
        }
        (NotifyEvent::WaveHalted, Detail::Halted("checks")) => format!(
            "wave {wave} of plan {plan} HALTED by a failed check: roll the wave back (`schemafleet rollback {} --wave {wave}`) or fix the cause and `schemafleet apply {} --retry-checks`",
            input.plan_path, input.plan_path
        ),
        (NotifyEvent::WaveHalted, _) => format!(
            "wave {wave} of plan {plan} HALTED: its failure budget is spent ({}); later waves wait",
            unfinished(totals)
        ),
        (NotifyEvent::CheckFailed, Detail::Check { failure, stage }) => {
            let first_line = scrub_uris(failure.output.lines().next().unwrap_or(""));
            format!(
                "check {} ({}) of wave {wave} of plan {plan} failed at {stage}: {first_line}",
                failure.check, failure.kind
            )
        }
        (NotifyEvent::CheckFailed, _) => format!("a check of wave {wave} of plan {plan} failed"),
        (NotifyEvent::ApprovalNeeded, _) => format!(
            "wave {wave} of plan {plan} waits for approval: `schemafleet approve {} {wave}`, then `schemafleet apply {}`",
            input.plan_path, input.plan_path
        ),
        (NotifyEvent::RolloutFinished, Detail::Outcome(outcome)) => format!(
            "rollout of plan {plan} ended ({outcome}): {} applied, {} up to date, {}, {} not started",
            totals.applied,
            totals.up_to_date,
            unfinished(totals),
            totals.not_started
        ),
        (NotifyEvent::RolloutFinished, _) => format!("rollout of plan {plan} ended"),
    };
    format!("schemafleet: {line}")
}

/// `2 failed, 1 diverged`: each state by its own name, as the report's table counts them.
fn unfinished(counts: &crate::report::Counts) -> String {
    crate::report::render::unfinished_parts(counts.failed, counts.diverged, counts.rollback_failed)
}

/// Delivers notifications for one run.
pub struct Notifier {
    spec: Option<NotifySpec>,
    webhook: Option<SecretString>,
    http: reqwest::Client,
    workdir: PathBuf,
}

impl Notifier {
    /// The plan's notifier; the warnings say which target is off and why (an unset variable).
    pub fn from_plan(plan: &Plan, workdir: PathBuf) -> (Notifier, Vec<String>) {
        let spec = plan.policy.notify.clone();
        let mut warnings = Vec::new();
        let mut webhook = None;
        if let Some(name) = spec.as_ref().and_then(|spec| spec.webhook_env.as_ref()) {
            match std::env::var(name) {
                Ok(url) if !url.trim().is_empty() => match webhook_refusal(&url) {
                    None => webhook = Some(SecretString::new(url)),
                    Some(reason) => warnings.push(format!(
                        "notify: the webhook URL in ${name} {reason}; webhook notifications are off for this run"
                    )),
                },
                _ => warnings.push(format!(
                    "notify: ${name} is not set, so webhook notifications are off for this run"
                )),
            }
        }
        let timeout = Duration::from_millis(spec.as_ref().map_or(5000, |spec| spec.timeout_ms));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        (
            Notifier {
                spec,
                webhook,
                http,
                workdir,
            },
            warnings,
        )
    }

    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.spec.as_ref().is_some_and(|spec| spec.wants(event))
    }

    /// Deliver `document` to every target, retrying briefly; failures become notes.
    pub async fn deliver(&self, event: NotifyEvent, document: &Value, reporter: &dyn Reporter) {
        let Some(spec) = &self.spec else { return };
        let body = document.to_string();
        if let Some(url) = &self.webhook
            && let Err(error) = retry(|| self.post(url, &body)).await
        {
            reporter.note(&format!(
                "notify: {} could not be delivered to the webhook after {ATTEMPTS} attempts ({error}); the rollout goes on",
                event.as_str()
            ));
        }
        if let Some(command) = &spec.command {
            let timeout = Duration::from_millis(spec.timeout_ms);
            let extra = [("SCHEMAFLEET_EVENT", event.as_str().to_string())];
            let result = retry(|| async {
                match super::check::run_program(
                    command,
                    &self.workdir,
                    &extra,
                    Some(body.as_bytes()),
                    timeout,
                )
                .await
                {
                    Ok((status, _)) if status.success() => Ok(()),
                    Ok((status, output)) => {
                        Err(format!("{status}: {}", output.lines().last().unwrap_or("")))
                    }
                    Err(message) => Err(message),
                }
            })
            .await;
            if let Err(error) = result {
                reporter.note(&crate::secret::redact_uri(&format!(
                    "notify: {} could not be delivered to `{command}` after {ATTEMPTS} attempts ({error}); the rollout goes on",
                    event.as_str()
                )));
            }
        }
    }

    async fn post(&self, url: &SecretString, body: &str) -> Result<(), String> {
        let response = self
            .http
            .post(url.expose())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            // Without the URL: the webhook's URL is its secret.
            .map_err(|error| error.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
    }
}

/// Why a webhook URL is refused: not http(s), or plain http to a host that is not loopback
/// (the URL is a secret and would cross the network in clear).
fn webhook_refusal(url: &str) -> Option<&'static str> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Some("is not a URL");
    };
    match parsed.scheme() {
        "https" | "http" => super::plain_http_refusal(&parsed),
        _ => Some("is not an http(s) URL"),
    }
}

async fn retry<F, Fut>(mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();
    for attempt_idx in 0..ATTEMPTS {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(error) => last_error = error,
        }
        if attempt_idx + 1 < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::{PlannedTenant, PlannedWave, test_plan};

    /// A plan of one wave, `canary`, with one tenant.
    fn one_tenant_plan() -> crate::plan::model::Plan {
        test_plan(vec![PlannedWave {
            name: "canary".into(),
            concurrency: 1,
            max_failures: None,
            max_failure_percent: None,
            bake_s: 0,
            checks: Vec::new(),
            approval: Default::default(),
            tenants: vec![PlannedTenant::from_id("p-1")],
        }])
    }

    #[test]
    fn a_payload_s_text_counts_failed_and_diverged_apart() {
        let plan = one_tenant_plan();
        let mut summary = crate::report::summarize(&plan, &crate::journal::JournalState::default());
        summary.totals.applied = 3;
        summary.totals.failed = 1;
        summary.totals.diverged = 1;
        let document = payload(&PayloadInput {
            event: NotifyEvent::RolloutFinished,
            plan: &plan,
            plan_path: "plans/r.plan.yaml",
            run_id: "run-1",
            at: "2026-12-01T00:00:00Z",
            wave: None,
            summary: &summary,
            groups: &[],
            detail: Detail::Outcome("completed"),
        });
        let text = document["text"].as_str().unwrap();
        assert!(
            text.contains(": 3 applied, 0 up to date, 1 failed, 1 diverged, "),
            "{text}"
        );
        assert_eq!(
            (
                &document["counts"]["failed"],
                &document["counts"]["diverged"]
            ),
            (&serde_json::json!(1), &serde_json::json!(1))
        );
    }

    #[test]
    fn uris_and_passwords_never_reach_a_payload() {
        assert_eq!(
            scrub_uris("connect to postgresql://u:pw@h/db failed; see https://x.io/a?b=c"),
            "connect to <uri> failed; see <uri>"
        );
        let plan = one_tenant_plan();
        let summary = crate::report::summarize(&plan, &crate::journal::JournalState::default());
        let failure = CheckFailure {
            check: "errors".into(),
            kind: "sql".into(),
            output:
                "1 of 1 failed\np-1: error: postgresql://neondb_owner:hunter2@ep-x/neondb refused"
                    .into(),
            failed_tenants: vec!["p-1".into()],
            sampled: Some(1),
        };
        let document = payload(&PayloadInput {
            event: NotifyEvent::CheckFailed,
            plan: &plan,
            plan_path: "plans/r.plan.yaml",
            run_id: "run-1",
            at: "2026-12-01T00:00:00Z",
            wave: Some("canary"),
            summary: &summary,
            groups: &[],
            detail: Detail::Check {
                failure: &failure,
                stage: "bake_end",
            },
        });
        let text = document.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("postgresql://"),
            "{text}"
        );
        assert_eq!(document["event"], "check_failed");
        assert_eq!(document["check"]["failed_tenants"][0], "p-1");
        assert_eq!(document["wave_counts"]["tenants"], 1);
        assert!(
            document["text"]
                .as_str()
                .unwrap()
                .starts_with("schemafleet: check errors (sql) of wave canary"),
            "{document:#}"
        );
    }

    #[test]
    fn a_webhook_url_in_clear_over_the_network_is_refused() {
        assert_eq!(
            webhook_refusal("https://hooks.slack.com/services/T/B/X"),
            None
        );
        assert_eq!(webhook_refusal("http://127.0.0.1:9/hook"), None);
        assert!(webhook_refusal("http://hooks.example.com/x").is_some());
        assert!(webhook_refusal("ftp://x").is_some());
    }
}

//! What a plan records about the gates between waves: each wave's checks and approval, and the
//! policy's notifications. A serialization boundary (the plan file, and so the plan id).
//!
//! **Invariant:** nothing here holds a secret. Values that need one name an environment variable
//! (`http_env`, `webhook_env`) or carry `${NAME}` placeholders that are expanded only when the
//! check or notification runs ([`super::env`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One check of a wave, as the plan records it. Exactly one of `sql`, `command`, `http` or
/// `http_env` is set (the policy parser guarantees it); [`CheckSpec::kind`] is the typed view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: String,
    /// A query run on each sampled tenant's main; it must return one row whose one column is
    /// `true`. `$1` is the time the wave started (text, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<f64>,
    /// How many sampled tenants may answer other than `true` before the check fails.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threshold: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// The URL to GET; may hold `${NAME}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The environment variable holding the URL to GET (a URL that is itself a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_env: Option<String>,
    /// Request headers; values may hold `${NAME}` placeholders (`Bearer ${TOKEN}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// RFC 6901 pointer into the JSON answer whose value must equal `expect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<serde_json::Value>,
    /// Per tenant for `sql`, for the whole run of `command` and `http`.
    pub timeout_ms: u64,
    /// Also run every this long while the wave bakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

/// A program to run: a shell line (`sh -c`) or an argument vector (no shell; `${NAME}`
/// placeholders in it are expanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Shell(String),
    Argv(Vec<String>),
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLine::Shell(line) => f.write_str(line),
            CommandLine::Argv(argv) => f.write_str(&argv.join(" ")),
        }
    }
}

/// The typed view of a [`CheckSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckKind<'a> {
    Sql {
        query: &'a str,
        sample: Sample,
        threshold: usize,
    },
    Command(&'a CommandLine),
    Http {
        url: HttpUrl<'a>,
        headers: &'a BTreeMap<String, String>,
        expect: Option<(&'a str, &'a serde_json::Value)>,
    },
}

/// How many of a wave's migrated tenants a SQL check reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    All,
    Count(usize),
    Percent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpUrl<'a> {
    /// A URL, maybe with `${NAME}` placeholders.
    Template(&'a str),
    /// The name of the environment variable holding the URL.
    Env(&'a str),
}

impl CheckSpec {
    pub fn kind(&self) -> CheckKind<'_> {
        if let Some(query) = &self.sql {
            let sample = match (self.sample, self.sample_percent) {
                (Some(count), _) => Sample::Count(count),
                (None, Some(percent)) => Sample::Percent(percent),
                (None, None) => Sample::All,
            };
            return CheckKind::Sql {
                query,
                sample,
                threshold: self.threshold,
            };
        }
        if let Some(command) = &self.command {
            return CheckKind::Command(command);
        }
        let url = match (&self.http, &self.http_env) {
            (Some(url), _) => HttpUrl::Template(url),
            (None, Some(name)) => HttpUrl::Env(name),
            // The policy parser sets exactly one kind; a hand-edited plan without any is a GET
            // of nothing, which fails with a clear message when it runs.
            (None, None) => HttpUrl::Template(""),
        };
        CheckKind::Http {
            url,
            headers: &self.headers,
            expect: self.json_pointer.as_deref().zip(self.expect.as_ref()),
        }
    }

    /// `sql`, `command` or `http`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind() {
            CheckKind::Sql { .. } => "sql",
            CheckKind::Command(_) => "command",
            CheckKind::Http { .. } => "http",
        }
    }

    /// One line for `plan` and reports: what the check does, never a secret (placeholders are
    /// shown as written).
    pub fn describe(&self) -> String {
        let mut text = match self.kind() {
            CheckKind::Sql {
                sample, threshold, ..
            } => {
                let sample = match sample {
                    Sample::All => "every migrated tenant".to_string(),
                    Sample::Count(count) => format!("a sample of {count} tenants"),
                    Sample::Percent(percent) => format!("a {percent}% sample"),
                };
                format!("sql on {sample}, at most {threshold} may fail")
            }
            CheckKind::Command(command) => format!("command `{command}`"),
            CheckKind::Http { url, expect, .. } => {
                let url = match url {
                    HttpUrl::Template(url) => url.to_string(),
                    HttpUrl::Env(name) => format!("${name}"),
                };
                match expect {
                    Some((pointer, value)) => format!("http GET {url}, {pointer} = {value}"),
                    None => format!("http GET {url}, 2xx"),
                }
            }
        };
        text.push_str(&format!(", timeout {}", super::format_ms(self.timeout_ms)));
        if let Some(interval) = self.interval_ms {
            text.push_str(&format!(
                ", every {} while baking",
                super::format_ms(interval)
            ));
        }
        text
    }
}

/// Whether a wave waits for a person before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    #[default]
    None,
    /// `apply` stops before the wave until `schemafleet approve PLAN WAVE` is recorded.
    Required,
}

impl Approval {
    pub fn is_none(&self) -> bool {
        *self == Approval::None
    }
}

/// Where rollout events are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// The environment variable holding the webhook URL (Slack's and most others' URLs are
    /// secrets themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_env: Option<String>,
    /// A program given each event's JSON on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// The events sent; empty means every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NotifyEvent>,
    pub timeout_ms: u64,
}

/// The events a rollout notifies, in the order they can happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    RolloutStarted,
    WaveStarted,
    WaveFinished,
    WaveHalted,
    CheckFailed,
    ApprovalNeeded,
    RolloutFinished,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 7] = [
        NotifyEvent::RolloutStarted,
        NotifyEvent::WaveStarted,
        NotifyEvent::WaveFinished,
        NotifyEvent::WaveHalted,
        NotifyEvent::CheckFailed,
        NotifyEvent::ApprovalNeeded,
        NotifyEvent::RolloutFinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::RolloutStarted => "rollout_started",
            NotifyEvent::WaveStarted => "wave_started",
            NotifyEvent::WaveFinished => "wave_finished",
            NotifyEvent::WaveHalted => "wave_halted",
            NotifyEvent::CheckFailed => "check_failed",
            NotifyEvent::ApprovalNeeded => "approval_needed",
            NotifyEvent::RolloutFinished => "rollout_finished",
        }
    }
}

impl NotifySpec {
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }

    /// One line for `plan`.
    pub fn describe(&self) -> String {
        let mut targets = Vec::new();
        if let Some(name) = &self.webhook_env {
            targets.push(format!("webhook ${name}"));
        }
        if let Some(command) = &self.command {
            targets.push(format!("command `{command}`"));
        }
        let events = if self.events.is_empty() {
            "every event".to_string()
        } else {
            self.events
                .iter()
                .map(|event| event.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{} on {events}", targets.join(" and "))
    }
}

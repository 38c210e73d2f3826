//! The gates between waves: health checks that must pass before the next wave starts, a
//! person's approval before a wave, and notifications of what the rollout does.
//!
//! - [`spec`]: what the plan records (checks, approval, notify); no secrets, only env names.
//! - [`env`]: `${NAME}` placeholders, expanded only when a check or notification runs.
//! - [`sample`]: the stable sample of a wave's tenants a SQL check reads (pure).
//! - [`check`]: running one check (SQL on a sample of mains, a command, an HTTP GET).
//! - [`notify`]: the notification payload (pure) and its delivery (webhook, command).
//! - [`approve`]: whether `schemafleet approve` may record an approval (pure).
//! - [`run`]: the gates as the wave loop meets them, journaled and notified.
//!
//! **Invariant:** no secret reaches the plan, the journal, a report or a notification: check
//! outputs and failure causes pass through [`crate::secret::redact_uri`], and a notification
//! names no URI at all.

pub mod approve;
pub mod check;
pub mod env;
pub mod notify;
pub mod run;
pub mod sample;
pub mod spec;

pub use run::{Gate, GateConfig, Gates};

/// Why an `http://` URL may not be used: plain HTTP crosses the network in clear, and a check's
/// URL or headers (or a webhook URL) carry tokens. Loopback never leaves the machine, so a local
/// health endpoint or test server stays allowed; `None` for https:// and loopback http://.
pub fn plain_http_refusal(url: &url::Url) -> Option<&'static str> {
    if url.scheme() != "http" {
        return None;
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    };
    (!loopback).then_some("is http:// to a host that is not loopback; use https://")
}

/// `1500` → `1.5s`, `60000` → `1m`, `250` → `250ms`: durations as a policy writes them.
pub fn format_ms(ms: u64) -> String {
    if ms == 0 {
        "0s".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

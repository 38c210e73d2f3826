//! Retry policy of the Neon client: which answers to retry, how long to wait, and when a
//! mutation's outcome is unknown.
//!
//! The classes follow neon-api.md §10 and §14.1: 423/429/503 are always safe to retry, a 422
//! `branch not ready yet` and a 404 just after a create heal within seconds, and 500/524 or a
//! broken connection are only retried blindly on reads. A mutation whose outcome is unknown is
//! handed back to the caller, which re-reads state instead of re-sending it.
//!
//! **Invariant:** pure functions only (no clock, no IO); randomness comes in as a parameter.
//! **Invariant:** 401 and 403 are never retried.

use std::time::Duration;

use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

use super::error::is_branch_not_ready_message;

/// Whether a request changes state on Neon (anything but GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Read,
    Mutation,
}

/// How many attempts a retry class may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryBudget {
    /// Up to the configured `max_attempts`.
    Full,
    /// A handful of quick attempts for states that heal within seconds.
    Brief,
}

/// What to do with one answer (or one failure to get an answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// 2xx: hand the answer to the caller.
    Success,
    /// Wait, then send the same request again.
    Retry(RetryBudget),
    /// The request may or may not have been applied; the caller must re-read state.
    OutcomeUnknown,
    /// 401/403: stop everything, the key is wrong.
    Unauthorized,
    /// Any other failure: report it.
    Fail,
}

/// Attempts allowed to [`RetryBudget::Brief`] classes.
pub(crate) const BRIEF_ATTEMPTS: u32 = 4;

/// Classify an HTTP answer. `retry_not_found` is set on reads that follow a create, where Neon's
/// reads can briefly lag its writes (terraform-provider-neon#154, Neon's LKB-279).
pub(crate) fn classify_status(
    status: u16,
    kind: RequestKind,
    message: &str,
    retry_not_found: bool,
) -> Disposition {
    match status {
        200..=299 => Disposition::Success,
        401 | 403 => Disposition::Unauthorized,
        423 | 429 | 503 => Disposition::Retry(RetryBudget::Full),
        422 if is_branch_not_ready_message(message) => Disposition::Retry(RetryBudget::Full),
        404 if retry_not_found && kind == RequestKind::Read => {
            Disposition::Retry(RetryBudget::Brief)
        }
        500 | 502 | 504 | 524 => match kind {
            RequestKind::Read => Disposition::Retry(RetryBudget::Full),
            RequestKind::Mutation => Disposition::OutcomeUnknown,
        },
        _ => Disposition::Fail,
    }
}

/// Classify a request that got no HTTP answer. A connect failure never reached Neon, so even a
/// mutation can be re-sent; any later failure may have been applied.
pub(crate) fn classify_network_failure(kind: RequestKind, connect_failure: bool) -> Disposition {
    match (kind, connect_failure) {
        (RequestKind::Read, _) | (RequestKind::Mutation, true) => {
            Disposition::Retry(RetryBudget::Full)
        }
        (RequestKind::Mutation, false) => Disposition::OutcomeUnknown,
    }
}

/// Exponential backoff parameters (full jitter, as Neon's own `@neon/sdk` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The upper bound of the wait before retry number `retry_idx` (0 = first retry):
    /// `min(cap, base * 2^retry_idx)`.
    pub fn ceiling(&self, retry_idx: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry_idx.min(30));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Full jitter: `unit` in `[0, 1)` scales the ceiling.
    pub fn delay(&self, retry_idx: u32, unit: f64) -> Duration {
        self.ceiling(retry_idx).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// The wait before a retry: at least what `Retry-After` asked for, else the jittered backoff.
pub(crate) fn retry_delay(
    backoff: &Backoff,
    retry_idx: u32,
    unit: f64,
    retry_after: Option<Duration>,
) -> Duration {
    match retry_after {
        Some(asked) => asked,
        None => backoff.delay(retry_idx, unit),
    }
}

/// Parse a `Retry-After` header: delta-seconds or an HTTP-date (IMF-fixdate), relative to `now`.
/// A date in the past means "now".
pub(crate) fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    let remaining = at - now;
    Some(if remaining.is_positive() {
        remaining.unsigned_abs()
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(250),
        cap: Duration::from_secs(10),
    };

    #[test]
    fn backoff_ceiling_doubles_then_caps() {
        assert_eq!(BACKOFF.ceiling(0), Duration::from_millis(250));
        assert_eq!(BACKOFF.ceiling(1), Duration::from_millis(500));
        assert_eq!(BACKOFF.ceiling(5), Duration::from_secs(8));
        assert_eq!(BACKOFF.ceiling(6), Duration::from_secs(10));
        assert_eq!(BACKOFF.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn backoff_delay_stays_within_zero_and_the_ceiling() {
        for retry_idx in 0..40 {
            for unit in [0.0, 0.3, 0.999_999, 1.0, 7.0, -1.0] {
                let delay = BACKOFF.delay(retry_idx, unit);
                assert!(delay <= BACKOFF.ceiling(retry_idx), "{retry_idx} {unit}");
                assert!(delay <= Duration::from_secs(10));
            }
        }
        assert_eq!(BACKOFF.delay(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_wins_over_backoff() {
        assert_eq!(
            retry_delay(&BACKOFF, 0, 0.5, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_delay(&BACKOFF, 1, 0.5, None),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = datetime!(2026-04-30 12:00:00 UTC);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Thu, 30 Apr 2026 12:00:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Thu, 30 Apr 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn always_retried_statuses_are_retried_for_every_method() {
        for kind in [RequestKind::Read, RequestKind::Mutation] {
            for status in [423, 429, 503] {
                assert_eq!(
                    classify_status(status, kind, "", false),
                    Disposition::Retry(RetryBudget::Full),
                    "{status} {kind:?}"
                );
            }
        }
    }

    #[test]
    fn server_errors_are_retried_on_reads_and_unknown_on_mutations() {
        for status in [500, 524] {
            assert_eq!(
                classify_status(status, RequestKind::Read, "", false),
                Disposition::Retry(RetryBudget::Full)
            );
            assert_eq!(
                classify_status(status, RequestKind::Mutation, "", false),
                Disposition::OutcomeUnknown
            );
        }
    }

    #[test]
    fn auth_failures_stop_at_once() {
        for status in [401, 403] {
            for kind in [RequestKind::Read, RequestKind::Mutation] {
                assert_eq!(
                    classify_status(status, kind, "", true),
                    Disposition::Unauthorized
                );
            }
        }
    }

    #[test]
    fn unprocessable_is_retried_only_while_the_branch_is_not_ready() {
        assert_eq!(
            classify_status(422, RequestKind::Mutation, "branch not ready yet", false),
            Disposition::Retry(RetryBudget::Full)
        );
        assert_eq!(
            classify_status(
                422,
                RequestKind::Mutation,
                "ROOT_BRANCHES_LIMIT_EXCEEDED",
                false
            ),
            Disposition::Fail
        );
    }

    #[test]
    fn not_found_is_retried_briefly_only_on_reads_after_a_create() {
        assert_eq!(
            classify_status(404, RequestKind::Read, "", true),
            Disposition::Retry(RetryBudget::Brief)
        );
        assert_eq!(
            classify_status(404, RequestKind::Read, "", false),
            Disposition::Fail
        );
        assert_eq!(
            classify_status(404, RequestKind::Mutation, "", true),
            Disposition::Fail
        );
    }

    #[test]
    fn other_statuses_fail_and_successes_succeed() {
        for status in [400, 409, 410] {
            assert_eq!(
                classify_status(status, RequestKind::Read, "", false),
                Disposition::Fail
            );
        }
        for status in [200, 201, 204] {
            assert_eq!(
                classify_status(status, RequestKind::Mutation, "", false),
                Disposition::Success
            );
        }
    }

    #[test]
    fn network_failures_are_unknown_only_for_mutations_that_reached_the_server() {
        assert_eq!(
            classify_network_failure(RequestKind::Read, false),
            Disposition::Retry(RetryBudget::Full)
        );
        assert_eq!(
            classify_network_failure(RequestKind::Mutation, true),
            Disposition::Retry(RetryBudget::Full)
        );
        assert_eq!(
            classify_network_failure(RequestKind::Mutation, false),
            Disposition::OutcomeUnknown
        );
    }
}

//! How to read an operation's `status` (neon-api.md §4.3, where sources disagree on `failed`).
//!
//! - in flight: `scheduling`, `running`, `cancelling`;
//! - success: `finished`, `skipped`;
//! - `failed`: Neon's control plane retries it, so keep polling and report it only if it is still
//!   `failed` at the deadline;
//! - failure: `error`, `cancelled`.
//!
//! A status Neon adds later is treated as in flight: waiting until the deadline is safer than
//! declaring success or failure on a value we do not understand.
//!
//! When to poll: [`SettleTimes`] learns how long each kind of mutation's operations take in
//! this run (Neon reports `total_duration_ms`), so the first poll goes out when they have
//! typically finished instead of on a fixed short tick: one poll per mutation in the common
//! case, where a 1 s tick costs a second of waiting and a 100 ms tick several requests.
//!
//! **Invariant:** pure; the polling loop lives in `client.rs`.

use std::collections::HashMap;
use std::time::Duration;

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationProgress {
    InFlight,
    /// `failed`: may still be retried by Neon.
    FailedRetrying,
    Succeeded,
    Failed,
}

pub(crate) fn operation_progress(status: &str) -> OperationProgress {
    match status {
        "finished" | "skipped" => OperationProgress::Succeeded,
        "error" | "cancelled" => OperationProgress::Failed,
        "failed" => OperationProgress::FailedRetrying,
        _ => OperationProgress::InFlight,
    }
}

impl super::types::Operation {
    /// Whether Neon reports it done (`finished` or `skipped`): nothing left to wait for.
    pub fn succeeded(&self) -> bool {
        operation_progress(&self.status) == OperationProgress::Succeeded
    }
}

/// Typical time a mutation's operations take to settle, per kind of mutation (the actions of
/// its operations, e.g. `create_branch+start_compute`), learned from finished operations.
#[derive(Debug, Default)]
pub(crate) struct SettleTimes {
    typical_ms: HashMap<String, f64>,
}

/// Weight of the newest observation: recent enough to follow a slowing control plane, smooth
/// enough that one slow operation does not double everyone's wait.
const SMOOTHING: f64 = 0.2;
/// The first poll waits a little longer than typical, so most mutations are done by then.
const FIRST_POLL_MARGIN: f64 = 1.2;
/// Never poll sooner than this after the answer or a previous poll.
const MIN_POLL: Duration = Duration::from_millis(10);

impl SettleTimes {
    /// The kind of a mutation, from its operations' actions.
    pub(crate) fn kind<'a>(actions: impl Iterator<Item = &'a str>) -> String {
        actions.collect::<Vec<_>>().join("+")
    }

    /// Wait before the first poll: the typical settle time of `kind` with a margin, or
    /// `fallback` (the configured interval) before this run has seen one finish.
    pub(crate) fn first_poll(&self, kind: &str, fallback: Duration) -> Duration {
        match self.typical_ms.get(kind) {
            Some(&typical) => {
                Duration::from_secs_f64(typical * FIRST_POLL_MARGIN / 1000.0).max(MIN_POLL)
            }
            None => fallback,
        }
    }

    /// How long after its request a mutation of `kind` has typically settled, with the
    /// first poll's margin; `None` before this run has seen one finish.
    pub(crate) fn settled_after(&self, kind: &str) -> Option<Duration> {
        self.typical_ms
            .get(kind)
            .map(|&typical| Duration::from_secs_f64(typical * FIRST_POLL_MARGIN / 1000.0))
    }

    /// Wait between later polls: half the typical time (the operations are late, not lost),
    /// never more than `ceiling` (the configured interval).
    pub(crate) fn next_poll(&self, kind: &str, ceiling: Duration) -> Duration {
        match self.typical_ms.get(kind) {
            Some(&typical) => Duration::from_secs_f64(typical / 2000.0)
                .max(MIN_POLL)
                .min(ceiling),
            None => ceiling,
        }
    }

    /// Record how long a mutation of `kind` took to settle, in milliseconds.
    pub(crate) fn observe(&mut self, kind: &str, settled_ms: f64) {
        let typical = self
            .typical_ms
            .entry(kind.to_string())
            .or_insert(settled_ms);
        *typical += SMOOTHING * (settled_ms - *typical);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_poll_follows_what_this_run_observed() {
        let mut times = SettleTimes::default();
        let fallback = Duration::from_secs(1);
        assert_eq!(
            times.first_poll("create_branch+start_compute", fallback),
            fallback
        );
        times.observe("create_branch+start_compute", 100.0);
        assert_eq!(
            times.first_poll("create_branch+start_compute", fallback),
            Duration::from_millis(120)
        );
        assert_eq!(
            times.next_poll("create_branch+start_compute", fallback),
            Duration::from_millis(50)
        );
        assert_eq!(
            times.settled_after("create_branch+start_compute"),
            Some(Duration::from_millis(120))
        );
        // Other kinds keep their own figure.
        assert_eq!(times.first_poll("delete_timeline", fallback), fallback);
        assert_eq!(times.settled_after("delete_timeline"), None);
        // One slow observation moves the figure a fifth of the way.
        times.observe("create_branch+start_compute", 600.0);
        assert_eq!(
            times.first_poll("create_branch+start_compute", fallback),
            Duration::from_millis(240)
        );
        assert_eq!(SettleTimes::kind(["a", "b"].into_iter()), "a+b");
    }

    #[test]
    fn statuses_map_to_the_documented_classes() {
        for status in ["scheduling", "running", "cancelling", "some_future_status"] {
            assert_eq!(operation_progress(status), OperationProgress::InFlight);
        }
        for status in ["finished", "skipped"] {
            assert_eq!(operation_progress(status), OperationProgress::Succeeded);
        }
        for status in ["error", "cancelled"] {
            assert_eq!(operation_progress(status), OperationProgress::Failed);
        }
        assert_eq!(
            operation_progress("failed"),
            OperationProgress::FailedRetrying
        );
    }
}

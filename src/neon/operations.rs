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
//! **Invariant:** pure; the polling loop lives in `client.rs`.

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

#[cfg(test)]
mod tests {
    use super::*;

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

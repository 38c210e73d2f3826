//! Errors of the Neon API client.
//!
//! **Invariant:** no variant holds the API key or a connection URI with its password; network
//! error texts pass through [`redact_uri`] before they are stored.
//! **Invariant:** every HTTP-level message names the method, the path, the status, Neon's message
//! and the request id, so a user can quote it to Neon support.

use std::time::Duration;

use crate::secret::redact_uri;

/// Anything that can go wrong talking to the Neon API.
#[derive(Debug, thiserror::Error)]
pub enum NeonError {
    /// Neon answered with a non-success status (after any retries the status allows).
    #[error("Neon API {method} {path} answered {status}: {message} (request_id {request_id})")]
    Api {
        method: String,
        path: String,
        status: u16,
        /// Neon's `code` field, usually empty.
        code: String,
        message: String,
        request_id: String,
    },
    /// 401 or 403: never retried, because a retry cannot fix a key.
    #[error(
        "Neon API {method} {path} answered {status}: {message} (request_id {request_id}); \
         check that NEON_API_KEY holds a valid API key with access to this project or organization"
    )]
    Unauthorized {
        method: String,
        path: String,
        status: u16,
        message: String,
        request_id: String,
    },
    /// No HTTP answer arrived (connect failure, reset, timeout).
    #[error(
        "Neon API {method} {path} failed without an answer: {message} \
         (check network access to NEON_API_URL)"
    )]
    Network {
        method: String,
        path: String,
        message: String,
        /// `true` when the connection was never established, so the request never reached Neon.
        connect_failure: bool,
    },
    /// A success answer whose body does not have the documented shape.
    #[error("Neon API {method} {path} answered {status} with an unexpected body: {message}")]
    Decode {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// An operation reached `error` or `cancelled`, or stayed `failed` until the deadline.
    #[error(
        "Neon operation {operation_id} ({action}) in project {project_id} ended as `{status}`: \
         {detail}"
    )]
    OperationFailed {
        project_id: String,
        operation_id: String,
        action: String,
        status: String,
        detail: String,
    },
    /// Operations were still in flight when the deadline passed.
    #[error(
        "Neon operations in project {project_id} were not finished after {waited_secs} s \
         (still pending: {pending}); raise the operation timeout or check the project in the Neon console"
    )]
    OperationTimeout {
        project_id: String,
        /// `id (action: status)` of each pending operation.
        pending: String,
        waited_secs: u64,
    },
    /// All operations finished but the branch never reached `ready`.
    #[error(
        "branch {branch_id} of project {project_id} is still `{state}` after {waited_secs} s; \
         raise the operation timeout or check the branch in the Neon console"
    )]
    BranchNotReady {
        project_id: String,
        branch_id: String,
        state: String,
        waited_secs: u64,
    },
    /// `GET /projects/{id}/branches` listed no branch with `default: true`.
    #[error("project {project_id} has no default branch in Neon's branch list")]
    NoDefaultBranch { project_id: String },
    /// A create answered 409 and the existing branch of that name is not one this call would
    /// have created (other parent), so adopting it would be wrong.
    #[error(
        "project {project_id} already has a branch named `{name}` ({existing_branch_id}) with \
         parent {existing_parent}, not the requested parent {requested_parent}; delete it or \
         choose another name"
    )]
    BranchNameTaken {
        project_id: String,
        name: String,
        existing_branch_id: String,
        existing_parent: String,
        requested_parent: String,
    },
    /// The client could not be built from its configuration.
    #[error("invalid Neon client configuration: {message}")]
    Config { message: String },
}

impl NeonError {
    /// The HTTP status Neon answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            NeonError::Api { status, .. }
            | NeonError::Unauthorized { status, .. }
            | NeonError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying the same thing again later may succeed (the client already retried as
    /// long as its budget allowed).
    pub fn is_retryable(&self) -> bool {
        match self {
            NeonError::Api {
                status, message, ..
            } => {
                matches!(status, 423 | 429 | 500 | 502 | 503 | 504 | 524)
                    || (*status == 422 && is_branch_not_ready_message(message))
            }
            NeonError::Network { .. }
            | NeonError::OperationTimeout { .. }
            | NeonError::BranchNotReady { .. } => true,
            NeonError::Unauthorized { .. }
            | NeonError::Decode { .. }
            | NeonError::OperationFailed { .. }
            | NeonError::NoDefaultBranch { .. }
            | NeonError::BranchNameTaken { .. }
            | NeonError::Config { .. } => false,
        }
    }

    /// Whether this error, returned by a mutation, leaves open whether Neon applied it.
    pub(crate) fn is_outcome_unknown(&self) -> bool {
        match self {
            NeonError::Api { status, .. } => matches!(status, 500 | 502 | 504 | 524),
            NeonError::Network {
                connect_failure, ..
            } => !connect_failure,
            _ => false,
        }
    }

    pub(crate) fn network(
        method: &str,
        path: &str,
        error: &reqwest::Error,
        timeout: Duration,
    ) -> NeonError {
        let mut message = redact_uri(&error_chain_text(error));
        if error.is_timeout() {
            message = format!("no answer within {} s ({message})", timeout.as_secs());
        }
        NeonError::Network {
            method: method.to_string(),
            path: path.to_string(),
            message,
            connect_failure: error.is_connect(),
        }
    }
}

/// Neon's 422 text while a fresh branch cannot take mutations yet.
pub(crate) fn is_branch_not_ready_message(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("branch not ready yet")
}

fn error_chain_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> NeonError {
        NeonError::Api {
            method: "POST".into(),
            path: "/projects/x/branches".into(),
            status,
            code: String::new(),
            message: message.into(),
            request_id: "req-1".into(),
        }
    }

    #[test]
    fn display_names_method_path_status_message_and_request_id() {
        assert_eq!(
            api(409, "branch with the provided name \"v\" already exists").to_string(),
            "Neon API POST /projects/x/branches answered 409: branch with the provided name \"v\" \
             already exists (request_id req-1)"
        );
    }

    #[test]
    fn unauthorized_tells_the_user_to_check_the_key_and_is_not_retryable() {
        let error = NeonError::Unauthorized {
            method: "GET".into(),
            path: "/projects".into(),
            status: 401,
            message: "authentication required".into(),
            request_id: "r".into(),
        };
        assert!(error.to_string().contains("NEON_API_KEY"));
        assert!(!error.is_retryable());
        assert_eq!(error.status(), Some(401));
    }

    #[test]
    fn retryable_follows_the_status_table() {
        for status in [423, 429, 500, 503, 524] {
            assert!(api(status, "x").is_retryable(), "{status}");
        }
        for status in [400, 404, 409] {
            assert!(!api(status, "x").is_retryable(), "{status}");
        }
        assert!(api(422, "branch not ready yet").is_retryable());
        assert!(!api(422, "BRANCHES_LIMIT_EXCEEDED").is_retryable());
    }

    #[test]
    fn outcome_unknown_only_for_answers_that_may_hide_an_applied_mutation() {
        assert!(api(500, "x").is_outcome_unknown());
        assert!(api(524, "").is_outcome_unknown());
        assert!(!api(423, "x").is_outcome_unknown());
        let connect = NeonError::Network {
            method: "POST".into(),
            path: "/p".into(),
            message: "refused".into(),
            connect_failure: true,
        };
        assert!(!connect.is_outcome_unknown());
    }
}

//! Turning driver errors into something a journal and an operator can use.
//!
//! refinery's `Display` hides the cause (`error applying migration V2__x`, `db error`); the
//! SQLSTATE lives two levels down the `source()` chain. This walks the chain once.

use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A database failure as recorded in the journal and shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbFailure {
    /// SQLSTATE when the server reported one (e.g. `23514`, `55P03`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The server's message (plus detail), or the client-side cause; secrets redacted.
    pub message: String,
    /// The migration that failed (`V3__name`), when the failure is one migration's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// The measured lock hold over the policy's `max_lock_hold`, when that failed validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_hold: Option<Box<super::lock_footprint::LockHold>>,
}

impl DbFailure {
    /// Build from any error whose cause chain may contain a `tokio_postgres::Error`.
    pub fn from_error(context: &str, error: &(dyn StdError + 'static)) -> DbFailure {
        let mut current: Option<&(dyn StdError + 'static)> = Some(error);
        let mut chain = Vec::new();
        while let Some(cause) = current {
            if let Some(pg_error) = cause.downcast_ref::<tokio_postgres::Error>()
                && let Some(db_error) = pg_error.as_db_error()
            {
                let mut message = db_error.message().to_string();
                if let Some(detail) = db_error.detail() {
                    message.push_str(&format!(" ({detail})"));
                }
                return DbFailure {
                    sqlstate: Some(db_error.code().code().to_string()),
                    message: bounded(crate::secret::redact_uri(&prefix(context, &message))),
                    migration: None,
                    lock_hold: None,
                };
            }
            chain.push(cause.to_string());
            current = cause.source();
        }
        chain.dedup();
        DbFailure {
            sqlstate: None,
            message: bounded(crate::secret::redact_uri(&prefix(
                context,
                &chain.join(": "),
            ))),
            migration: None,
            lock_hold: None,
        }
    }

    pub fn new(sqlstate: Option<&str>, message: impl Into<String>) -> DbFailure {
        DbFailure {
            sqlstate: sqlstate.map(str::to_string),
            message: bounded(crate::secret::redact_uri(&message.into())),
            migration: None,
            lock_hold: None,
        }
    }

    /// `55P03` lock_not_available (lock_timeout) and `40P01` deadlock: another session won,
    /// trying again later can succeed.
    pub fn is_lock_contention(&self) -> bool {
        matches!(self.sqlstate.as_deref(), Some("55P03") | Some("40P01"))
    }

    /// The connection went away (terminated backend, server restart, network): the transaction
    /// rolled back, so a fresh connection can safely try again.
    pub fn is_connection_loss(&self) -> bool {
        match self.sqlstate.as_deref() {
            Some(code) => {
                code.starts_with("08") || code == "57P01" || code == "57P02" || code == "57P03"
            }
            None => {
                let lower = self.message.to_lowercase();
                lower.contains("connection closed")
                    || lower.contains("connection reset")
                    || lower.contains("connection refused")
                    || lower.contains("broken pipe")
                    || lower.contains("unexpected eof")
                    || lower.contains("error communicating")
                    || lower.contains("timed out")
            }
        }
    }
}

/// The longest failure message kept: enough for any real error, and a tenant's data (an error
/// detail quoting a huge value) cannot bloat the journal, whose lines are capped.
pub const MAX_MESSAGE_BYTES: usize = 8 << 10;

fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" … (cut)");
    }
    message
}

fn prefix(context: &str, message: &str) -> String {
    if context.is_empty() {
        message.to_string()
    } else {
        format!("{context}: {message}")
    }
}

impl fmt::Display for DbFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} [SQLSTATE {code}]", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl StdError for DbFailure {}

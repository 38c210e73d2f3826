//! Secrets that must never reach a log, a journal, a plan, a report or an error message.
//!
//! **Invariant:** the only way to read a secret's value is [`SecretString::expose`] /
//! [`SecretUri::expose`]; `Debug` and `Display` always redact.

use std::fmt;

/// An opaque secret such as an API key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that must send it (an HTTP header, a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A PostgreSQL connection URI whose password is redacted whenever it is shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUri(String);

impl SecretUri {
    pub fn new(uri: impl Into<String>) -> Self {
        Self(uri.into())
    }

    /// The full URI including its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URI with the password replaced by `***`: safe to print.
    pub fn redacted(&self) -> String {
        redact_uri(&self.0)
    }
}

impl fmt::Debug for SecretUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUri({})", self.redacted())
    }
}

impl fmt::Display for SecretUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replace the password of every `scheme://user:password@host` URI inside `text` with `***`.
///
/// Error messages from drivers sometimes echo a connection string; every message that leaves
/// the process passes through this, so a password cannot leak even from a foreign error text.
pub fn redact_uri(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_idx) = rest.find("://") {
        let (before, after_scheme) = rest.split_at(scheme_idx + 3);
        out.push_str(before);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let authority_end = after_scheme
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_end];
        match authority.rfind('@') {
            Some(at_idx) => {
                let userinfo = &authority[..at_idx];
                match userinfo.find(':') {
                    Some(colon_idx) => {
                        out.push_str(&userinfo[..colon_idx]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at_idx..]);
            }
            None => out.push_str(authority),
        }
        rest = &after_scheme[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_in_uri() {
        assert_eq!(
            redact_uri(
                "postgresql://neondb_owner:npg_s3cret@ep-x.aws.neon.tech/neondb?sslmode=require"
            ),
            "postgresql://neondb_owner:***@ep-x.aws.neon.tech/neondb?sslmode=require"
        );
    }

    #[test]
    fn redacts_every_uri_in_a_message_and_keeps_the_rest() {
        let message = "could not connect to postgres://a:p1@h1/db, then postgres://b:p2@h2:5432";
        let redacted = redact_uri(message);
        assert!(
            !redacted.contains("p1") && !redacted.contains("p2"),
            "{redacted}"
        );
        assert!(redacted.starts_with("could not connect to postgres://a:***@h1/db"));
    }

    #[test]
    fn leaves_uris_without_password_alone() {
        assert_eq!(
            redact_uri("https://console.neon.tech/api/v2"),
            "https://console.neon.tech/api/v2"
        );
        assert_eq!(
            redact_uri("postgres://user@host/db"),
            "postgres://user@host/db"
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let key = SecretString::new("napi_abcdef");
        assert!(!format!("{key:?} {key}").contains("abcdef"));
        let uri = SecretUri::new("postgres://u:hunter2@h/d");
        assert!(!format!("{uri:?} {uri}").contains("hunter2"));
    }
}

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

/// Replace every password inside `text` with `***`: the userinfo password of each
/// `scheme://user:password@host` URI, and the value of each `password=…` (key=value connection
/// strings, URI query parameters, `PGPASSWORD=`).
///
/// Error messages from drivers sometimes echo a connection string; every message that leaves
/// the process passes through this, so a password cannot leak even from a foreign error text.
/// A password may hold `/`, `?`, `#` or `@` (tokio-postgres takes everything up to an `@` as
/// credentials), so the userinfo is taken to end at the *last* `@` before the URI's end
/// (whitespace): that may hide more than the password, never less.
pub fn redact_uri(text: &str) -> String {
    redact_password_values(&redact_userinfo(text))
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_idx) = rest.find("://") {
        let (before, after_scheme) = rest.split_at(scheme_idx + 3);
        out.push_str(before);
        let token_end = after_scheme
            .find(char::is_whitespace)
            .unwrap_or(after_scheme.len());
        let token = &after_scheme[..token_end];
        let Some(at_idx) = token.rfind('@') else {
            rest = after_scheme;
            continue;
        };
        let userinfo = &token[..at_idx];
        match userinfo.find(':') {
            Some(colon_idx) => {
                out.push_str(&userinfo[..colon_idx]);
                out.push_str(":***");
            }
            None => out.push_str(userinfo),
        }
        rest = &after_scheme[at_idx..];
    }
    out.push_str(rest);
    out
}

/// `password=VALUE` (any case, spaces around `=` allowed) with VALUE quoted (`'…'`, `\'`
/// escapes) or up to whitespace; inside a URI query (after `?` or `&`) also up to `&` or `#`.
fn redact_password_values(text: &str) -> String {
    const KEY: &str = "password";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search_from = 0;
    while let Some(found) = lower[search_from..].find(KEY) {
        let key_start = search_from + found;
        let key_end = key_start + KEY.len();
        search_from = key_end;
        let after_key = &text[key_end..];
        let spaces = after_key.len() - after_key.trim_start_matches(' ').len();
        if !after_key[spaces..].starts_with('=') {
            continue;
        }
        let value_start = key_end + spaces + 1;
        let value_start = value_start
            + (text[value_start..].len() - text[value_start..].trim_start_matches(' ').len());
        let in_query = text[..key_start].ends_with(['?', '&']);
        let value = &text[value_start..];
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let closing = quoted.char_indices().find(|&(_, c)| {
                let is_end = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                is_end
            });
            closing.map_or(value.len(), |(idx, _)| idx + 2)
        } else {
            value
                .find(|c: char| c.is_whitespace() || (in_query && (c == '&' || c == '#')))
                .unwrap_or(value.len())
        };
        if value_len == 0 {
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str("***");
        copied = value_start + value_len;
        search_from = copied;
    }
    out.push_str(&text[copied..]);
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
    fn redacts_passwords_holding_uri_delimiters_up_to_the_last_at() {
        for password in ["pa/ss", "pa?ss", "pa#ss", "p@ss/w?x#y"] {
            let message = format!(
                "refusing pooled connection postgresql://owner:{password}@ep-x-pooler.neon.tech/neondb?sslmode=require: why"
            );
            let redacted = redact_uri(&message);
            assert_eq!(
                redacted,
                "refusing pooled connection postgresql://owner:***@ep-x-pooler.neon.tech/neondb?sslmode=require: why",
                "{password}"
            );
            // tokio-postgres sees the same password: the redaction hides all of it.
            if !password.contains('@') {
                let config: tokio_postgres::Config = message
                    .split_whitespace()
                    .nth(3)
                    .and_then(|uri| uri.strip_suffix(':'))
                    .expect("uri")
                    .parse()
                    .expect("parses");
                assert_eq!(config.get_password(), Some(password.as_bytes()));
            }
        }
    }

    #[test]
    fn redacts_key_value_connection_strings_and_query_passwords() {
        assert_eq!(
            redact_uri("connect host=h user=u password=s3cr/t dbname=d failed"),
            "connect host=h user=u password=*** dbname=d failed"
        );
        assert_eq!(
            redact_uri("host=h password = 'it\\'s a secret' dbname=d"),
            "host=h password = *** dbname=d"
        );
        assert_eq!(
            redact_uri("postgres://u@h/db?sslmode=require&password=s3cret&x=1 then"),
            "postgres://u@h/db?sslmode=require&password=***&x=1 then"
        );
        assert_eq!(redact_uri("PGPASSWORD=hunter2 psql"), "PGPASSWORD=*** psql");
        assert_eq!(
            redact_uri("password authentication failed for user \"u\""),
            "password authentication failed for user \"u\""
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

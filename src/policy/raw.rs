//! The policy file exactly as written: serde types whose value checks run inside the YAML
//! deserializer, so serde_yaml attaches the line, column and key path to each error.
//!
//! **Invariant:** every struct denies unknown keys; every range-checked value (percent, duration,
//! concurrency, regex, label) is rejected here, not later, so its error points at the value.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::plan::model::{RestorePointKind, TransactionMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub fleet: RawFleet,
    pub database: NonEmptyString,
    pub role: NonEmptyString,
    #[serde(default)]
    pub validation: Option<RawValidation>,
    #[serde(default)]
    pub restore_point: Option<RestorePointKind>,
    #[serde(default)]
    pub transaction: Option<TransactionMode>,
    #[serde(default)]
    pub lock_timeout: Option<DurationValue>,
    #[serde(default)]
    pub statement_timeout: Option<DurationValue>,
    #[serde(default)]
    pub branch_ttl: Option<DurationValue>,
    #[serde(default)]
    pub max_lock_hold: Option<DurationValue>,
    pub salt: NonEmptyString,
    #[serde(default)]
    pub verify: Option<NonEmptyString>,
    #[serde(default)]
    pub api_rate_limit_per_min: Option<RateLimit>,
    pub waves: Vec<RawWave>,
    #[serde(default)]
    pub lint: Option<RawLint>,
    /// The schemas a schema fingerprint covers (`drift --schema`, `baseline`, `verify_schema`).
    #[serde(default)]
    pub schemas: Option<Vec<SchemaName>>,
    /// Compare each tenant's schema with the reference at its version before applying.
    #[serde(default)]
    pub verify_schema: Option<bool>,
    #[serde(default)]
    pub notify: Option<RawNotify>,
}

/// `lint: { pg_version, deny, warn, ignore }`; rule names are checked after parsing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLint {
    #[serde(default)]
    pub pg_version: Option<u32>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub warn: Vec<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFleetSource {
    Neon,
    File,
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub source: RawFleetSource,
    #[serde(default)]
    pub file: Option<NonEmptyString>,
    /// `source: postgres`: the environment variable holding the catalog database's URL.
    #[serde(default)]
    pub url_env: Option<EnvVarName>,
    /// `source: postgres`: the SQL that lists the tenants.
    #[serde(default)]
    pub query: Option<NonEmptyString>,
    #[serde(default)]
    pub org_id: Option<NonEmptyString>,
    #[serde(default)]
    pub name_prefix: Option<NonEmptyString>,
    #[serde(default)]
    pub name_regex: Option<RegexValue>,
    #[serde(default)]
    pub regions: Option<Vec<NonEmptyString>>,
    #[serde(default)]
    pub exclude: Vec<NonEmptyString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWave {
    pub name: NonEmptyString,
    #[serde(default)]
    pub tenants: Vec<NonEmptyString>,
    #[serde(default)]
    pub percent: Option<Percent>,
    pub concurrency: Concurrency,
    #[serde(default)]
    pub max_failures: Option<usize>,
    #[serde(default)]
    pub max_failure_percent: Option<Percent>,
    #[serde(default)]
    pub bake: Option<DurationValue>,
    #[serde(default, rename = "match")]
    pub match_rule: Option<RawMatch>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    #[serde(default)]
    pub approval: Option<crate::gates::spec::Approval>,
}

/// One item of a wave's `checks:`; which keys go together is checked in `policy/gates.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    #[serde(default)]
    pub name: Option<NonEmptyString>,
    #[serde(default)]
    pub sql: Option<NonEmptyString>,
    #[serde(default)]
    pub sample: Option<SampleSize>,
    #[serde(default)]
    pub sample_percent: Option<Percent>,
    #[serde(default)]
    pub threshold: Option<usize>,
    #[serde(default)]
    pub command: Option<RawCommand>,
    #[serde(default)]
    pub http: Option<NonEmptyString>,
    #[serde(default)]
    pub http_env: Option<EnvName>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub json_pointer: Option<String>,
    #[serde(default)]
    pub expect: Option<serde_json::Value>,
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    #[serde(default)]
    pub interval: Option<DurationValue>,
}

/// `notify:`, where rollout events go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    #[serde(default)]
    pub webhook_env: Option<EnvName>,
    /// Refused with a hint: a webhook URL is a secret and never belongs in a policy or plan.
    #[serde(default)]
    pub webhook: Option<RejectedSecret>,
    #[serde(default)]
    pub command: Option<RawCommand>,
    #[serde(default)]
    pub events: Vec<crate::gates::spec::NotifyEvent>,
    #[serde(default)]
    pub timeout: Option<DurationValue>,
}

/// A program: a shell line, or a non-empty list of arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawCommand(pub crate::gates::spec::CommandLine);

/// How many tenants a check samples (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SampleSize(pub usize);

/// An environment variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvName(pub String);

/// A key whose value would be a secret written in the file: always an error.
#[derive(Debug)]
pub(crate) struct RejectedSecret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub region: Option<NonEmptyString>,
    #[serde(default)]
    pub label: Option<LabelValue>,
}

/// `branch`, `none` or `{sample_percent: N}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RawValidation {
    Branch,
    None,
    SamplePercent(f64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NonEmptyString(pub String);

/// A schema name a fingerprint may cover (see [`crate::fingerprint::check_schema_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaName(pub String);

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Percent(pub f64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurationValue(pub Duration);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Concurrency(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit(pub u32);

/// The name of an environment variable (never its value: the catalog's URL is a secret and
/// the policy is committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvVarName(pub String);

#[derive(Debug, Clone)]
pub(crate) struct RegexValue(pub regex::Regex);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelValue {
    pub key: String,
    pub value: String,
}

/// Deserializes a string and checks it inside the deserializer's visitor: serde_yaml only
/// attaches a value's position to errors raised while that value is being visited.
struct CheckedString<F> {
    expecting: &'static str,
    check: F,
}

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for CheckedString<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.check)(text).map_err(E::custom)
    }
}

/// Like [`CheckedString`], for a number.
struct CheckedNumber<F> {
    expecting: &'static str,
    check: F,
}

impl<T, F: FnOnce(f64) -> Result<T, String>> Visitor<'_> for CheckedNumber<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_f64<E: de::Error>(self, number: f64) -> Result<T, E> {
        (self.check)(number).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
        (self.check)(number as f64).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, number: i64) -> Result<T, E> {
        (self.check)(number as f64).map_err(E::custom)
    }
}

/// A whole number in `minimum..=maximum`, or a message saying what is wrong.
fn whole_number(number: f64, minimum: f64, maximum: f64) -> Result<f64, String> {
    if number.fract() != 0.0 || number < minimum || number > maximum {
        return Err(format!(
            "expected a whole number from {minimum} to {maximum}, got {number}"
        ));
    }
    Ok(number)
}

impl<'de> Deserialize<'de> for NonEmptyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedString {
            expecting: "a string",
            check: |text: &str| {
                if text.trim().is_empty() {
                    return Err("must not be empty".to_string());
                }
                Ok(NonEmptyString(text.to_string()))
            },
        })
    }
}

impl<'de> Deserialize<'de> for SchemaName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedString {
            expecting: "a schema name",
            check: |text: &str| {
                crate::fingerprint::check_schema_name(text)?;
                Ok(SchemaName(text.to_string()))
            },
        })
    }
}

impl<'de> Deserialize<'de> for EnvVarName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedString {
            expecting: "the name of an environment variable",
            check: |text: &str| {
                if text.contains("://") || text.contains('@') {
                    return Err("give the NAME of the environment variable that holds the catalog's URL (e.g. CATALOG_DATABASE_URL), never the URL itself: it holds a password and the policy is committed".to_string());
                }
                let mut chars = text.chars();
                let valid = chars
                    .next()
                    .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
                    && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_');
                if !valid {
                    return Err(format!(
                        "`{text}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
                    ));
                }
                Ok(EnvVarName(text.to_string()))
            },
        })
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_f64(CheckedNumber {
            expecting: "a percent from 0 to 100",
            check: |value: f64| {
                if !(0.0..=100.0).contains(&value) {
                    return Err(format!("a percent must be between 0 and 100, got {value}"));
                }
                Ok(Percent(value))
            },
        })
    }
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(CheckedNumber {
            expecting: "a number of tenants migrated at once",
            check: |value: f64| {
                if value < 1.0 {
                    return Err(
                        "concurrency must be at least 1 (tenants migrated at once in this wave)"
                            .to_string(),
                    );
                }
                whole_number(value, 1.0, 100_000.0).map(|value| Concurrency(value as usize))
            },
        })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(CheckedNumber {
            expecting: "requests per minute",
            check: |value: f64| {
                if value < 1.0 {
                    return Err(
                        "the API rate limit must be at least 1 request per minute".to_string()
                    );
                }
                whole_number(value, 1.0, 1_000_000.0).map(|value| RateLimit(value as u32))
            },
        })
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 10m, 2h or 1d")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationValue, E> {
                parse_duration(text).map(DurationValue).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "`{number}` has no unit; write a duration with a unit such as {number}s or {number}m"
                )))
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "`{number}` is not a duration; write one such as 30s, 10m or 2h"
                )))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Parse `500ms`, `30s`, `10m`, `2h`, `1d` (a whole number and one unit).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let invalid = || {
        format!(
            "invalid duration `{text}`: write a whole number and a unit (ms, s, m, h or d), e.g. 30s, 10m, 2h"
        )
    };
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    amount
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{text}` is too long"))
}

impl<'de> Deserialize<'de> for RegexValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedString {
            expecting: "a regular expression",
            check: |pattern: &str| {
                regex::Regex::new(pattern)
                    .map(RegexValue)
                    .map_err(|error| format!("invalid regular expression: {error}"))
            },
        })
    }
}

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedString {
            expecting: "a label as key=value",
            check: |text: &str| match text.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => Ok(LabelValue {
                    key: key.trim().to_string(),
                    value: value.trim().to_string(),
                }),
                _ => Err(format!("label `{text}` is not key=value, e.g. tier=free")),
            },
        })
    }
}

impl<'de> Deserialize<'de> for RawValidation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValidationVisitor;
        impl<'de> Visitor<'de> for ValidationVisitor {
            type Value = RawValidation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`branch`, `none` or `{sample_percent: N}`")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawValidation, E> {
                match text {
                    "branch" => Ok(RawValidation::Branch),
                    "none" => Ok(RawValidation::None),
                    other => Err(E::custom(format!(
                        "unknown validation `{other}`, expected `branch`, `none` or `{{sample_percent: N}}`"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValidation, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        "empty mapping, expected `{sample_percent: N}`",
                    ));
                };
                if key != "sample_percent" {
                    return Err(de::Error::unknown_field(&key, &["sample_percent"]));
                }
                let Percent(percent) = map.next_value()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::unknown_field(&extra, &["sample_percent"]));
                }
                Ok(RawValidation::SamplePercent(percent))
            }
        }
        deserializer.deserialize_any(ValidationVisitor)
    }
}

impl<'de> Deserialize<'de> for SampleSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(CheckedNumber {
            expecting: "a number of tenants",
            check: |value: f64| {
                whole_number(value, 1.0, 1_000_000.0)
                    .map(|value| SampleSize(value as usize))
                    .map_err(|message| format!("a sample of tenants: {message}"))
            },
        })
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedString {
            expecting: "an environment variable's name",
            check: |name: &str| {
                if crate::gates::env::is_env_name(name) {
                    Ok(EnvName(name.to_string()))
                } else {
                    Err(format!(
                        "`{name}` is not an environment variable's name (letters, digits and _, not starting with a digit); give the variable's name, not its value"
                    ))
                }
            },
        })
    }
}

impl<'de> Deserialize<'de> for RejectedSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl Visitor<'_> for SecretVisitor {
            type Value = RejectedSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("no value here")
            }
            fn visit_str<E: de::Error>(self, _text: &str) -> Result<RejectedSecret, E> {
                Err(E::custom(
                    "a webhook URL is a secret and is never written in the policy or the plan; put it in an environment variable and name that with `webhook_env: SCHEMAFLEET_WEBHOOK_URL`",
                ))
            }
        }
        deserializer.deserialize_str(SecretVisitor)
    }
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use crate::gates::spec::CommandLine;
        struct CommandVisitor;
        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shell line, or a list of the program and its arguments")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawCommand, E> {
                if text.trim().is_empty() {
                    return Err(E::custom("must not be empty"));
                }
                Ok(RawCommand(CommandLine::Shell(text.to_string())))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(argument) = seq.next_element::<String>()? {
                    argv.push(argument);
                }
                if argv.first().is_none_or(|program| program.trim().is_empty()) {
                    return Err(de::Error::custom(
                        "an empty command; give the program first, e.g. [./check.sh, --strict]",
                    ));
                }
                Ok(RawCommand(CommandLine::Argv(argv)))
            }
        }
        deserializer.deserialize_any(CommandVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "1.5h", "-1s", "10 minutes", "2H"] {
            let message = parse_duration(bad).unwrap_err();
            assert!(
                message.contains("write a whole number and a unit"),
                "{bad}: {message}"
            );
        }
    }
}

//! The rollout policy (`plans/*.yaml`): the user's contract for how a release reaches the fleet.
//!
//! [`load`] reads and checks a policy file strictly and turns it into a [`Policy`] whose paths
//! are resolved against the policy file's directory. Errors name the file, line and column, the
//! key, and what to do.
//!
//! **Invariant:** a [`Policy`] has at least one wave, unique wave names, strictly increasing
//! percents of which the highest is 100, each named tenant in at most one wave, and a restore
//! point that its validation mode can provide.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fleet::{FleetFilters, Tenant};
use crate::lint::{DEFAULT_PG_VERSION, LintSettings};
use crate::migrations::sha256_hex;
use crate::plan::model::{RestorePointKind, TransactionMode, Validation};

mod gates;
pub mod locate;
mod raw;

pub(crate) use raw::parse_duration;

use locate::{FilePosition, SourcePosition, find_in_section, find_in_wave, find_top_level_key};
use raw::{RawFleetSource, RawPolicy, RawValidation};

/// Planning keeps one bit per wave for `match` results.
pub const MAX_WAVES: usize = 64;
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_BRANCH_TTL: Duration = Duration::from_secs(2 * 3600);

/// A checked rollout policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy file as given.
    pub path: PathBuf,
    /// SHA-256 of the policy file's bytes.
    pub sha256: String,
    pub fleet: FleetPolicy,
    pub database: String,
    pub role: String,
    pub validation: Validation,
    pub restore_point: RestorePointKind,
    pub transaction: TransactionMode,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub branch_ttl: Duration,
    /// The longest a migration may hold a write-blocking lock on an existing table, as
    /// measured on a tenant's validation branch; `None`: measured and reported, not enforced.
    pub max_lock_hold: Option<Duration>,
    pub salt: String,
    pub verify: Option<VerifySql>,
    /// Overrides the command line's API rate limit when set.
    pub api_rate_limit_per_min: Option<u32>,
    pub waves: Vec<WavePolicy>,
    /// The `lint:` section, or the defaults.
    pub lint: LintSettings,
    /// `schemas:`: the schemas a schema fingerprint covers; empty for the default (every
    /// schema but PostgreSQL's and Neon's own).
    pub schemas: Vec<String>,
    /// `verify_schema: true`: before applying, a tenant's schema must equal the reference at
    /// its version, or it fails untouched.
    pub verify_schema: bool,
    /// Where rollout events go (`notify:`).
    pub notify: Option<crate::gates::spec::NotifySpec>,
    /// The file's text, kept to point later errors (a named tenant not in the fleet) at a line.
    source_text: String,
}

#[derive(Debug, Clone)]
pub struct FleetPolicy {
    pub source: FleetSource,
    pub filters: FleetFilters,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetSource {
    /// Every project the API key (or `org_id`) can list.
    Neon { org_id: Option<String> },
    /// A tenants file, resolved against the policy file's directory.
    File { path: PathBuf },
    /// A query against the user's own catalog (control-plane) database, whose URL is in the
    /// environment variable `url_env` (a secret: never in the policy, plan or journal).
    Postgres { url_env: String, query: String },
}

/// The optional verification SQL run on each validation branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySql {
    /// Resolved against the policy file's directory.
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WavePolicy {
    pub name: String,
    /// Tenants named in the policy (a project id, or a project name), in the policy's order.
    pub tenants: Vec<String>,
    /// Cumulative share of the fleet reached by the end of this wave.
    pub percent: Option<f64>,
    pub concurrency: usize,
    pub max_failures: Option<usize>,
    pub max_failure_percent: Option<f64>,
    pub bake: Duration,
    pub match_rule: Option<WaveMatch>,
    /// Run after the wave's tenants finish and at the end of its bake (`checks:`).
    pub checks: Vec<crate::gates::spec::CheckSpec>,
    pub approval: crate::gates::spec::Approval,
}

/// Restricts a wave to matching tenants; every given condition must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveMatch {
    pub region: Option<String>,
    /// `(key, value)` of a tenant label.
    pub label: Option<(String, String)>,
}

impl WaveMatch {
    pub fn matches(&self, tenant: &Tenant) -> bool {
        let region_ok = self
            .region
            .as_ref()
            .is_none_or(|region| tenant.region.as_ref() == Some(region));
        let label_ok = self
            .label
            .as_ref()
            .is_none_or(|(key, value)| tenant.labels.get(key) == Some(value));
        region_ok && label_ok
    }
}

impl std::fmt::Display for WaveMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut conditions = Vec::new();
        if let Some(region) = &self.region {
            conditions.push(format!("region {region}"));
        }
        if let Some((key, value)) = &self.label {
            conditions.push(format!("label {key}={value}"));
        }
        f.write_str(&conditions.join(" and "))
    }
}

/// Why a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `location` is `path`, or `path:line:column` when known.
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

impl Policy {
    /// Where in the policy file a named tenant of a wave is written, for error messages.
    pub fn named_tenant_location(&self, wave_idx: usize, tenant: &str) -> String {
        let position = find_in_wave(&self.source_text, wave_idx, tenant);
        FilePosition {
            path: &self.path,
            position,
        }
        .to_string()
    }

    /// Where in the policy file a wave is written, for error messages.
    pub fn wave_location(&self, wave_idx: usize) -> String {
        let position = find_in_wave(&self.source_text, wave_idx, "name:");
        FilePosition {
            path: &self.path,
            position,
        }
        .to_string()
    }

    /// Where a key of the `fleet:` section is written (`query:`), for error messages.
    pub fn fleet_key_location(&self, key: &str) -> String {
        FilePosition {
            path: &self.path,
            position: find_in_section(&self.source_text, "fleet", key),
        }
        .to_string()
    }

    /// The directory paths in the policy are relative to.
    pub fn base_dir(&self) -> PathBuf {
        parent_dir(&self.path)
    }
}

/// The directory of `path`, as a path that can be joined (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Read and check the policy file at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| PolicyError::Invalid {
        location: path.display().to_string(),
        message: "not UTF-8; save the policy as UTF-8".to_string(),
    })?;
    let mut policy = parse(path, &text)?;
    policy.sha256 = sha256;
    if let Some(verify) = &mut policy.verify {
        let verify_bytes = std::fs::read(&verify.path).map_err(|error| PolicyError::Invalid {
            location: FilePosition {
                path,
                position: find_top_level_key(&text, "verify"),
            }
            .to_string(),
            message: format!(
                "verify: cannot read {}: {error}; the path is relative to the policy file",
                verify.path.display()
            ),
        })?;
        verify.sha256 = sha256_hex(&verify_bytes);
    }
    Ok(policy)
}

/// Check a policy's text. Paths are resolved against `path`'s directory but not read.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let at = |position: Option<SourcePosition>| FilePosition { path, position }.to_string();
    let mut raw: RawPolicy = serde_yaml::from_str(text).map_err(|error| {
        let (position, message) = locate::split_yaml_error(&error);
        PolicyError::Invalid {
            location: at(position),
            message: hint_for_yaml_error(message),
        }
    })?;
    let invalid = |position: Option<SourcePosition>, message: String| PolicyError::Invalid {
        location: at(position),
        message,
    };
    let base_dir = parent_dir(path);

    let source = fleet_source(text, &base_dir, &mut raw.fleet)
        .map_err(|(position, message)| invalid(position, message))?;
    let filters = FleetFilters {
        name_prefix: raw.fleet.name_prefix.map(|prefix| prefix.0),
        name_regex: raw.fleet.name_regex.map(|name_regex| name_regex.0),
        regions: raw
            .fleet
            .regions
            .map(|regions| regions.into_iter().map(|region| region.0).collect()),
        exclude: raw.fleet.exclude.into_iter().map(|id| id.0).collect(),
    };

    let validation = match raw.validation.unwrap_or(RawValidation::Branch) {
        RawValidation::Branch => Validation::Branch,
        RawValidation::None => Validation::None,
        RawValidation::SamplePercent(percent) => Validation::SamplePercent(percent),
    };
    let restore_point = match raw.restore_point {
        Some(restore_point) => restore_point,
        None if validation == Validation::Branch => RestorePointKind::BranchPoint,
        None => RestorePointKind::BackupBranch,
    };
    if restore_point == RestorePointKind::BranchPoint && validation != Validation::Branch {
        return Err(invalid(
            find_top_level_key(text, "restore_point"),
            "restore_point: `branch_point` is the validation branch's branch point, so it needs `validation: branch` (every tenant validated); with this validation mode use `restore_point: backup_branch`".to_string(),
        ));
    }

    if raw.waves.is_empty() {
        return Err(invalid(
            find_top_level_key(text, "waves"),
            "waves: at least one wave is needed, e.g. `- {name: all, percent: 100, concurrency: 8}`"
                .to_string(),
        ));
    }
    if raw.waves.len() > MAX_WAVES {
        return Err(invalid(
            find_in_wave(text, MAX_WAVES, "name:"),
            format!(
                "waves: {} waves, at most {MAX_WAVES} are supported; merge some",
                raw.waves.len()
            ),
        ));
    }
    let mut waves: Vec<WavePolicy> = Vec::with_capacity(raw.waves.len());
    let mut wave_of_named_tenant: HashMap<String, usize> = HashMap::new();
    let mut previous_percent: Option<(f64, usize)> = None;
    for (wave_idx, raw_wave) in raw.waves.into_iter().enumerate() {
        let name = raw_wave.name.0;
        if let Some(first_idx) = waves.iter().position(|wave| wave.name == name) {
            return Err(invalid(
                find_in_wave(text, wave_idx, "name:"),
                format!(
                    "waves[{wave_idx}].name: wave `{name}` is already defined (waves[{first_idx}]); give each wave its own name"
                ),
            ));
        }
        let percent = raw_wave.percent.map(|percent| percent.0);
        if let Some(percent) = percent {
            if let Some((previous, previous_idx)) = previous_percent
                && percent <= previous
            {
                return Err(invalid(
                    find_in_wave(text, wave_idx, "percent:"),
                    format!(
                        "waves[{wave_idx}].percent: {percent} is not above waves[{previous_idx}]'s {previous}; percent is the cumulative share of the fleet reached by the end of the wave, so it must increase from wave to wave"
                    ),
                ));
            }
            previous_percent = Some((percent, wave_idx));
        }
        let mut tenants = Vec::with_capacity(raw_wave.tenants.len());
        for tenant in raw_wave.tenants {
            let tenant = tenant.0;
            if let Some(&first_idx) = wave_of_named_tenant.get(&tenant) {
                let first_wave_name = waves.get(first_idx).map_or(&name, |wave| &wave.name);
                return Err(invalid(
                    find_in_wave(text, wave_idx, &tenant),
                    format!(
                        "waves[{wave_idx}].tenants: tenant {tenant} is already named in wave `{first_wave_name}`; a tenant belongs to one wave"
                    ),
                ));
            }
            wave_of_named_tenant.insert(tenant.clone(), wave_idx);
            tenants.push(tenant);
        }
        let match_rule = raw_wave.match_rule.map(|raw_match| WaveMatch {
            region: raw_match.region.map(|region| region.0),
            label: raw_match.label.map(|label| (label.key, label.value)),
        });
        if let Some(WaveMatch {
            region: None,
            label: None,
        }) = match_rule
        {
            return Err(invalid(
                find_in_wave(text, wave_idx, "match:"),
                format!(
                    "waves[{wave_idx}].match: empty; give `region: ...` and/or `label: key=value`, or remove it"
                ),
            ));
        }
        let bake = raw_wave.bake.map_or(Duration::ZERO, |bake| bake.0);
        let checks = gates::wave_checks(
            &gates::WaveAt {
                path,
                text,
                wave_idx,
                bake,
            },
            raw_wave.checks,
        )?;
        waves.push(WavePolicy {
            name,
            tenants,
            percent,
            concurrency: raw_wave.concurrency.0,
            max_failures: raw_wave.max_failures,
            max_failure_percent: raw_wave.max_failure_percent.map(|percent| percent.0),
            bake,
            match_rule,
            checks,
            approval: raw_wave.approval.unwrap_or_default(),
        });
    }
    if previous_percent.is_none_or(|(highest, _)| highest < 100.0) {
        let last_idx = waves.len() - 1;
        return Err(invalid(
            find_in_wave(text, last_idx, "percent:"),
            format!(
                "waves: no wave reaches `percent: 100`, so part of the fleet would be in no wave; set `percent: 100` on the last wave (`{}`)",
                waves[last_idx].name
            ),
        ));
    }

    let lint = match raw.lint {
        None => LintSettings::defaults(),
        Some(raw_lint) => {
            let settings = LintSettings {
                pg_version: raw_lint.pg_version.unwrap_or(DEFAULT_PG_VERSION),
                deny: raw_lint.deny,
                warn: raw_lint.warn,
                ignore: raw_lint.ignore,
            };
            if !(13..=19).contains(&settings.pg_version) {
                return Err(invalid(
                    find_in_section(text, "lint", "pg_version"),
                    format!(
                        "lint.pg_version: {} is not a PostgreSQL major version the lint knows (13 to 19)",
                        settings.pg_version
                    ),
                ));
            }
            if let Some(unknown) = settings.unknown_rule() {
                return Err(invalid(
                    find_in_section(text, "lint", unknown),
                    format!(
                        "lint: no rule is named `{unknown}`; use a Squawk rule name (e.g. changing-column-type) or one of schemafleet's (vacuum-full, cluster, access-exclusive-metadata, no-transaction-not-idempotent, syntax-error, enum-label-added-and-used)"
                    ),
                ));
            }
            settings
        }
    };

    let schemas_given_empty = raw.schemas.as_ref().is_some_and(Vec::is_empty);
    let schemas: Vec<String> = raw
        .schemas
        .unwrap_or_default()
        .into_iter()
        .map(|schema| schema.0)
        .collect();
    if let Err(message) = crate::fingerprint::check_schema_names(&schemas) {
        return Err(invalid(
            find_top_level_key(text, "schemas"),
            format!("schemas: {message}"),
        ));
    }
    if schemas_given_empty {
        return Err(invalid(
            find_top_level_key(text, "schemas"),
            "schemas: empty; list the schemas your migrations create (e.g. [public]), or remove \
             the key for every schema but PostgreSQL's and Neon's own"
                .to_string(),
        ));
    }
    let notify = raw
        .notify
        .map(|raw_notify| gates::notify(path, text, raw_notify))
        .transpose()?;

    Ok(Policy {
        notify,
        path: path.to_path_buf(),
        sha256: sha256_hex(text.as_bytes()),
        fleet: FleetPolicy { source, filters },
        database: raw.database.0,
        role: raw.role.0,
        validation,
        restore_point,
        transaction: raw.transaction.unwrap_or_default(),
        lock_timeout: raw
            .lock_timeout
            .map_or(DEFAULT_LOCK_TIMEOUT, |value| value.0),
        statement_timeout: raw
            .statement_timeout
            .map_or(DEFAULT_STATEMENT_TIMEOUT, |value| value.0),
        branch_ttl: raw.branch_ttl.map_or(DEFAULT_BRANCH_TTL, |value| value.0),
        max_lock_hold: raw.max_lock_hold.map(|value| value.0),
        salt: raw.salt.0,
        verify: raw.verify.map(|verify| VerifySql {
            path: base_dir.join(verify.0),
            sha256: String::new(),
        }),
        api_rate_limit_per_min: raw.api_rate_limit_per_min.map(|limit| limit.0),
        waves,
        lint,
        schemas,
        verify_schema: raw.verify_schema.unwrap_or(false),
        source_text: text.to_string(),
    })
}

/// The `fleet:` section's source and the keys that only one source takes.
fn fleet_source(
    text: &str,
    base_dir: &Path,
    fleet: &mut raw::RawFleet,
) -> Result<FleetSource, (Option<SourcePosition>, String)> {
    let at = |key: &str| find_in_section(text, "fleet", key);
    let source = fleet.source;
    let only = |key: &str, wanted: &str| {
        (
            at(&format!("{key}:")),
            format!(
                "fleet.{key}: only used with `source: {wanted}`; remove it or set `source: {wanted}`"
            ),
        )
    };
    if source != RawFleetSource::File && fleet.file.is_some() {
        return Err(only("file", "file"));
    }
    if source != RawFleetSource::Neon && fleet.org_id.is_some() {
        return Err(only("org_id", "neon"));
    }
    if source != RawFleetSource::Postgres {
        if fleet.url_env.is_some() {
            return Err(only("url_env", "postgres"));
        }
        if fleet.query.is_some() {
            return Err(only("query", "postgres"));
        }
    }
    Ok(match source {
        RawFleetSource::Neon => FleetSource::Neon {
            org_id: fleet.org_id.take().map(|org_id| org_id.0),
        },
        RawFleetSource::File => match fleet.file.take() {
            Some(file) => FleetSource::File {
                path: base_dir.join(file.0),
            },
            None => {
                return Err((
                    at("source:"),
                    "fleet: `source: file` needs `file: tenants.csv` (relative to the policy file)"
                        .to_string(),
                ));
            }
        },
        RawFleetSource::Postgres => match (fleet.url_env.take(), fleet.query.take()) {
            (Some(url_env), Some(query)) => FleetSource::Postgres {
                url_env: url_env.0,
                query: query.0,
            },
            (None, _) => {
                return Err((
                    at("source:"),
                    "fleet: `source: postgres` needs `url_env: NAME`, the environment variable holding your catalog database's URL".to_string(),
                ));
            }
            (Some(_), None) => {
                return Err((
                    at("source:"),
                    "fleet: `source: postgres` needs `query:`, SQL returning the columns id (required), name, region, labels, connection_uri, schema_version".to_string(),
                ));
            }
        },
    })
}

/// Add what to do to serde_yaml's terse messages where the fix is not obvious.
fn hint_for_yaml_error(message: String) -> String {
    if message.contains("unknown field") {
        format!("{message}; check the spelling against the example in plans/rollout.yaml")
    } else if message.contains("missing field") {
        format!("{message}; add it (see the example in plans/rollout.yaml)")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
fleet:
  source: file
  file: tenants.csv
  name_prefix: tenant-
  exclude: [p-9]
database: neondb
role: neondb_owner
validation: branch
restore_point: branch_point
lock_timeout: 2s
statement_timeout: 10m
branch_ttl: 2h
salt: release-1
waves:
  - name: canary
    tenants: [p-1, tenant-0002]
    percent: 2
    concurrency: 4
    max_failures: 0
    bake: 10m
  - name: early
    percent: 25
    concurrency: 16
    max_failure_percent: 2
    match: {region: aws-us-east-2}
  - name: rest
    percent: 100
    concurrency: 32
    max_failure_percent: 1
";

    fn check(text: &str) -> Result<Policy, String> {
        parse(Path::new("plans/rollout.yaml"), text).map_err(|error| error.to_string())
    }

    /// Replace the first `from` in the good policy by `to`, and return the error.
    fn error_after(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        check(&GOOD.replacen(from, to, 1)).unwrap_err()
    }

    #[test]
    fn parses_the_contract() {
        let policy = check(GOOD).unwrap();
        assert_eq!(
            policy.fleet.source,
            FleetSource::File {
                path: PathBuf::from("plans/tenants.csv")
            }
        );
        assert_eq!(policy.fleet.filters.name_prefix.as_deref(), Some("tenant-"));
        assert_eq!(policy.fleet.filters.exclude, vec!["p-9".to_string()]);
        assert_eq!(policy.database, "neondb");
        assert_eq!(policy.validation, Validation::Branch);
        assert_eq!(policy.restore_point, RestorePointKind::BranchPoint);
        assert_eq!(policy.statement_timeout, Duration::from_secs(600));
        assert_eq!(policy.waves.len(), 3);
        assert_eq!(policy.waves[0].tenants, vec!["p-1", "tenant-0002"]);
        assert_eq!(policy.waves[0].bake, Duration::from_secs(600));
        assert_eq!(policy.waves[0].max_failures, Some(0));
        assert_eq!(
            policy.waves[1].match_rule,
            Some(WaveMatch {
                region: Some("aws-us-east-2".into()),
                label: None
            })
        );
        assert_eq!(policy.waves[2].percent, Some(100.0));
        assert_eq!(policy.waves[2].max_failure_percent, Some(1.0));
    }

    #[test]
    fn schema_keys_are_checked_with_their_line() {
        let policy = check(GOOD).unwrap();
        assert!(policy.schemas.is_empty() && !policy.verify_schema);
        let with =
            |keys: &str| GOOD.replacen("salt: release-1\n", &format!("salt: release-1\n{keys}"), 1);
        let policy = check(&with("schemas: [public, billing]\nverify_schema: true\n")).unwrap();
        assert_eq!(policy.schemas, ["public", "billing"]);
        assert!(policy.verify_schema);
        for (keys, says) in [
            ("schemas: [neon_auth]\n", "never fingerprinted"),
            ("schemas: [public, public]\n", "listed twice"),
            ("schemas: []\n", "schemas: empty"),
            ("schemas: public\n", "sequence"),
            ("verify_schema: maybe\n", "verify_schema"),
        ] {
            let error = check(&with(keys)).unwrap_err();
            assert!(
                error.contains("plans/rollout.yaml:14:") && error.contains(says),
                "{keys}: {error}"
            );
        }
    }

    #[test]
    fn transaction_mode_defaults_to_per_migration() {
        assert_eq!(
            check(GOOD).unwrap().transaction,
            TransactionMode::PerMigration
        );
        let with = |mode: &str| {
            GOOD.replace(
                "lock_timeout: 2s",
                &format!("transaction: {mode}\nlock_timeout: 2s"),
            )
        };
        assert_eq!(
            check(&with("per_release")).unwrap().transaction,
            TransactionMode::PerRelease
        );
        let error = check(&with("per_statement")).unwrap_err().to_string();
        assert!(
            error
                .contains("plans/rollout.yaml:10:14: transaction: unknown variant `per_statement`"),
            "{error}"
        );
    }

    #[test]
    fn validation_modes() {
        let policy = check(&GOOD.replace(
            "validation: branch\nrestore_point: branch_point",
            "validation: {sample_percent: 10}\nrestore_point: backup_branch",
        ))
        .unwrap();
        assert_eq!(policy.validation, Validation::SamplePercent(10.0));
        let policy = check(&GOOD.replace(
            "validation: branch\nrestore_point: branch_point",
            "validation: none",
        ))
        .unwrap();
        assert_eq!(policy.validation, Validation::None);
        assert_eq!(policy.restore_point, RestorePointKind::BackupBranch);
    }

    #[test]
    fn strict_errors_name_line_column_and_fix() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "    concurrency: 16\n",
                "    concurency: 16\n",
                "plans/rollout.yaml:23:5: waves[1]: unknown field `concurency`",
            ),
            (
                "database: neondb",
                "database: [neondb]",
                "plans/rollout.yaml:6:11: database: invalid type: sequence, expected a string",
            ),
            (
                "percent: 25",
                "percent: 250",
                "plans/rollout.yaml:22:14: waves[1].percent: a percent must be between 0 and 100, got 250",
            ),
            (
                "percent: 25",
                "percent: 1",
                "plans/rollout.yaml:22:5: waves[1].percent: 1 is not above waves[0]'s 2",
            ),
            (
                "  - name: early",
                "  - name: canary",
                "plans/rollout.yaml:21:5: waves[1].name: wave `canary` is already defined (waves[0])",
            ),
            (
                "lock_timeout: 2s",
                "lock_timeout: 2",
                "plans/rollout.yaml:10:15: lock_timeout: `2` has no unit",
            ),
            (
                "branch_ttl: 2h",
                "branch_ttl: 2 hours",
                "plans/rollout.yaml:12:13: branch_ttl: invalid duration `2 hours`",
            ),
            (
                "validation: branch",
                "validation: {sample_percent: 10}",
                "plans/rollout.yaml:9:1: restore_point: `branch_point` is the validation branch's branch point, so it needs `validation: branch`",
            ),
            (
                "validation: branch",
                "validation: sometimes",
                "plans/rollout.yaml:8:13: validation: unknown validation `sometimes`",
            ),
            (
                "restore_point: branch_point",
                "restore_point: snapshot",
                "plans/rollout.yaml:9:16: restore_point: unknown variant `snapshot`",
            ),
            (
                "    concurrency: 4\n",
                "    concurrency: 0\n",
                "plans/rollout.yaml:18:18: waves[0].concurrency: concurrency must be at least 1",
            ),
            (
                "    match: {region: aws-us-east-2}",
                "    match: {label: tier}",
                "plans/rollout.yaml:25:20: waves[1].match.label: label `tier` is not key=value",
            ),
            (
                "    percent: 100\n",
                "    percent: 99\n",
                "plans/rollout.yaml:27:5: waves: no wave reaches `percent: 100`",
            ),
            (
                "  file: tenants.csv\n",
                "",
                "plans/rollout.yaml:2:3: fleet: `source: file` needs `file: tenants.csv`",
            ),
            (
                "salt: release-1",
                "salt: ''",
                "plans/rollout.yaml:13:7: salt: must not be empty",
            ),
            (
                "    tenants: [p-1, tenant-0002]",
                "    tenants: [p-1, p-1]",
                "plans/rollout.yaml:16:15: waves[0].tenants: tenant p-1 is already named in wave `canary`",
            ),
            (
                "  name_prefix: tenant-",
                "  name_regex: 'tenant-(\\d+'",
                "plans/rollout.yaml:4:15: fleet.name_regex: invalid regular expression",
            ),
        ];
        for (from, to, expected) in cases {
            let message = error_after(from, to);
            assert!(
                message.starts_with(expected),
                "{to}:\n{message}\nexpected: {expected}"
            );
        }
    }

    #[test]
    fn missing_keys_and_empty_waves() {
        let message = check(&GOOD.replace("role: neondb_owner\n", "")).unwrap_err();
        assert!(message.contains("missing field `role`"), "{message}");
        assert!(message.contains("add it"), "{message}");
        let message = check(&GOOD[..GOOD.find("waves:").unwrap()]).unwrap_err();
        assert!(message.contains("missing field `waves`"), "{message}");
        let message = check(&format!(
            "{}waves: []\n",
            &GOOD[..GOOD.find("waves:").unwrap()]
        ))
        .unwrap_err();
        assert!(
            message.contains("waves: at least one wave is needed"),
            "{message}"
        );
    }

    #[test]
    fn wave_match_needs_every_condition() {
        let tenant = Tenant {
            id: "p-1".into(),
            name: "tenant-1".into(),
            region: Some("aws-us-east-2".into()),
            labels: [("tier".to_string(), "free".to_string())].into(),
        };
        let region_and_label = WaveMatch {
            region: Some("aws-us-east-2".into()),
            label: Some(("tier".into(), "free".into())),
        };
        assert!(region_and_label.matches(&tenant));
        let paid = WaveMatch {
            region: None,
            label: Some(("tier".into(), "paid".into())),
        };
        assert!(!paid.matches(&tenant));
    }
}

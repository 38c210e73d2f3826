//! `schemafleet lint`: what each migration will lock, predicted from its SQL before a rollout.
//!
//! [`lint_set`] runs Squawk's rules ([`squawk`], the only module that knows the Squawk crates)
//! and ours over every migration and gives [`Finding`]s with a [`Level`] from the policy's
//! `lint:` section ([`LintSettings`]). `plan` and the CLI see only these types.
//!
//! **Invariant:** linting is pure (SQL text in, findings out): no database, no file IO.
//! **Invariant:** a finding silenced by `-- squawk-ignore` is never dropped silently: it is
//! listed as [`Acknowledged`], with the reason written after the rule names.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::migrations::{Migration, MigrationSet};
use crate::plan::model::TransactionMode;

pub mod squawk;

use squawk::{
    ACCESS_EXCLUSIVE_RULE, CLUSTER_RULE, RawFinding, SYNTAX_ERROR_RULE, VACUUM_FULL_RULE,
};

/// Our rule for a `-- no-transaction` migration with a statement that cannot be re-run.
pub const NO_TRANSACTION_IDEMPOTENT_RULE: &str = "no-transaction-not-idempotent";
/// Our release-level rule: an enum label used in the transaction that added it (55P04).
pub const ENUM_LABEL_RULE: &str = "enum-label-added-and-used";
/// The PostgreSQL major version rules assume when the policy does not say.
pub const DEFAULT_PG_VERSION: u32 = 16;

/// What a finding of a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Blocks `plan` and makes `lint` exit 1.
    Deny,
    /// Printed and recorded in the plan.
    Warn,
    /// Not reported.
    Off,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Deny => "deny",
            Level::Warn => "warn",
            Level::Off => "off",
        })
    }
}

/// The policy's `lint:` section: per-rule overrides of [`default_level`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintSettings {
    pub pg_version: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warn: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

impl LintSettings {
    /// The defaults, for a policy without `lint:` and for `lint` without `--policy`.
    pub fn defaults() -> LintSettings {
        LintSettings {
            pg_version: DEFAULT_PG_VERSION,
            deny: Vec::new(),
            warn: Vec::new(),
            ignore: Vec::new(),
        }
    }

    pub fn level(&self, rule: &str) -> Level {
        let named = |list: &[String]| list.iter().any(|name| name == rule);
        if named(&self.ignore) {
            Level::Off
        } else if named(&self.deny) {
            Level::Deny
        } else if named(&self.warn) {
            Level::Warn
        } else {
            default_level(rule)
        }
    }

    /// The first rule name in `deny`, `warn` or `ignore` that no rule has.
    pub fn unknown_rule(&self) -> Option<&str> {
        self.deny
            .iter()
            .chain(&self.warn)
            .chain(&self.ignore)
            .map(String::as_str)
            .find(|name| !is_known_rule(name))
    }
}

/// Rules that predict a long lock on an existing table (a rewrite, an index build or a
/// validation scan under a lock that blocks writes), or a migration that cannot run.
const DENY_BY_DEFAULT: &[&str] = &[
    "changing-column-type",
    "adding-field-with-default",
    "adding-serial-primary-key-field",
    "require-concurrent-index-creation",
    "require-concurrent-reindex",
    "disallowed-unique-constraint",
    "constraint-missing-not-valid",
    "adding-foreign-key-constraint",
    "ban-concurrent-index-creation-in-transaction",
    "transaction-nesting",
    "ban-uncommitted-transaction",
    VACUUM_FULL_RULE,
    CLUSTER_RULE,
    SYNTAX_ERROR_RULE,
    ENUM_LABEL_RULE,
];

/// Squawk's style rules: they say nothing about locks or the rollout.
const OFF_BY_DEFAULT: &[&str] = &[
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-robust-stmts",
    "prefer-text-field",
    "prefer-timestamp-tz",
    "ban-char-field",
    "identifier-too-long",
    "require-table-schema",
    "require-timeout-settings",
    "require-lock-timeout",
    "require-statement-timeout",
];

/// Changes that break the old application code still serving tenants during the rollout.
const BACKWARD_INCOMPATIBLE: &[&str] = &[
    "ban-drop-column",
    "ban-drop-table",
    "renaming-column",
    "renaming-table",
    "adding-not-nullable-field",
    "adding-required-field",
];

/// A rule's level when the policy does not name it: deny what blocks writes for long, off
/// for style, warn for the rest (backward-incompatible changes, metadata-only locks).
pub fn default_level(rule: &str) -> Level {
    if DENY_BY_DEFAULT.contains(&rule) {
        Level::Deny
    } else if OFF_BY_DEFAULT.contains(&rule) {
        Level::Off
    } else {
        Level::Warn
    }
}

fn is_known_rule(name: &str) -> bool {
    squawk::is_squawk_rule(name)
        || [
            VACUUM_FULL_RULE,
            CLUSTER_RULE,
            ACCESS_EXCLUSIVE_RULE,
            NO_TRANSACTION_IDEMPOTENT_RULE,
            SYNTAX_ERROR_RULE,
            ENUM_LABEL_RULE,
        ]
        .contains(&name)
}

/// One problem in one migration, at the line and column of the statement (or clause).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// The migration's file name.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub rule: String,
    pub level: Level,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A finding a `-- squawk-ignore` comment silenced: reviewed, so not blocking, but listed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acknowledged {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub rule: String,
    /// The text after the rule names (`-- squawk-ignore rule -- reason`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the lint found in a set of migrations, in file then line order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LintReport {
    pub findings: Vec<Finding>,
    pub acknowledged: Vec<Acknowledged>,
}

impl LintReport {
    pub fn denied(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|finding| finding.level == Level::Deny)
    }

    pub fn has_denied(&self) -> bool {
        self.denied().next().is_some()
    }
}

/// Lint every migration of the set, and the release as `transaction` groups it.
pub fn lint_set(
    set: &MigrationSet,
    settings: &LintSettings,
    transaction: TransactionMode,
) -> LintReport {
    let mut release_findings = enum_labels_used_too_early(&set.migrations, transaction);
    let mut report = LintReport::default();
    for (migration_idx, migration) in set.migrations.iter().enumerate() {
        let extra = release_findings.remove(&migration_idx).unwrap_or_default();
        let migration_report = lint_sql_with(
            &migration.file_name,
            &migration.sql,
            migration.no_transaction,
            settings,
            extra,
        );
        report.findings.extend(migration_report.findings);
        report.acknowledged.extend(migration_report.acknowledged);
    }
    report
}

/// Lint one migration alone (no release-level rule).
pub fn lint_migration(migration: &Migration, settings: &LintSettings) -> LintReport {
    lint_sql(
        &migration.file_name,
        &migration.sql,
        migration.no_transaction,
        settings,
    )
}

/// Lint one migration's SQL; `file` only names it in the findings.
pub fn lint_sql(
    file: &str,
    sql: &str,
    no_transaction: bool,
    settings: &LintSettings,
) -> LintReport {
    lint_sql_with(file, sql, no_transaction, settings, Vec::new())
}

/// The uses of an enum label in the transaction that added it, by migration index: PostgreSQL
/// refuses them (55P04 "unsafe use of new value") until that transaction commits. A migration
/// is one transaction, unless `-- no-transaction`; with `per_release` the transactional
/// migrations between two `-- no-transaction` ones share one too (a tenant pending both ends
/// of such a run pends the whole run, and a no-transaction one in it splits the release).
/// A use is a plain string literal equal to the label after the `ADD VALUE`: a coincidence
/// can be acknowledged with `-- squawk-ignore`.
fn enum_labels_used_too_early(
    migrations: &[Migration],
    transaction: TransactionMode,
) -> std::collections::BTreeMap<usize, Vec<RawFinding>> {
    let mut findings: std::collections::BTreeMap<usize, Vec<RawFinding>> = Default::default();
    for (added_idx, adder) in migrations.iter().enumerate() {
        if adder.no_transaction {
            continue;
        }
        for added in squawk::added_enum_labels(&adder.sql) {
            let mut reported_in: BTreeSet<usize> = BTreeSet::new();
            for (user_idx, user) in migrations.iter().enumerate().skip(added_idx) {
                if user.no_transaction {
                    break;
                }
                if user_idx > added_idx && transaction == TransactionMode::PerMigration {
                    break;
                }
                let same_migration = user_idx == added_idx;
                let first_use = squawk::string_literals(&user.sql)
                    .into_iter()
                    .find(|literal| {
                        literal.value == added.label
                            && (!same_migration || literal.offset >= added.end)
                    });
                let Some(literal) = first_use else {
                    continue;
                };
                if !reported_in.insert(user_idx) {
                    continue;
                }
                let (added_line, _) = line_column(&adder.sql, added.offset);
                let (message, help) = if same_migration {
                    (
                        format!(
                            "enum label '{}' is added to {} (line {added_line}) and used in the same migration: PostgreSQL refuses a new label until the transaction that added it commits (55P04 unsafe use of new value)",
                            added.label, added.type_name
                        ),
                        "add the label in one migration and use it in the next (with `transaction: per_migration`, each commits on its own)",
                    )
                } else {
                    (
                        format!(
                            "enum label '{}' is added to {} in {} (line {added_line}) and used here; with `transaction: per_release` both run in one transaction, which PostgreSQL refuses (55P04 unsafe use of new value)",
                            added.label, added.type_name, adder.file_name
                        ),
                        "use `transaction: per_migration`, or ship the `ADD VALUE` in an earlier release",
                    )
                };
                findings.entry(user_idx).or_default().push(RawFinding {
                    offset: literal.offset,
                    end: literal.end,
                    rule: ENUM_LABEL_RULE.to_string(),
                    message,
                    help: Some(help.to_string()),
                });
            }
        }
    }
    findings
}

/// Lint one migration's SQL with `extra` findings from the release-level rules, which are
/// levelled and acknowledged like the others.
fn lint_sql_with(
    file: &str,
    sql: &str,
    no_transaction: bool,
    settings: &LintSettings,
    extra: Vec<RawFinding>,
) -> LintReport {
    let opt_in: Vec<String> = settings
        .deny
        .iter()
        .chain(&settings.warn)
        .cloned()
        .collect();
    let squawk_output = squawk::lint(sql, settings.pg_version, !no_transaction, &opt_in);
    let ignores = IgnoreComment::find_all(sql);
    let mut raw_findings: Vec<RawFinding> = squawk_output
        .findings
        .into_iter()
        // Squawk reports its ignore comments naming our rules as unknown names.
        .filter(|finding| {
            !(finding.rule == "unused-ignore"
                && finding
                    .message
                    .strip_prefix("unknown name ")
                    .is_some_and(is_known_rule))
        })
        .collect();
    let mut acknowledged_raw = squawk_output.acknowledged;
    if no_transaction {
        for mut finding in squawk::non_idempotent_statements(sql, settings.pg_version) {
            finding.rule = NO_TRANSACTION_IDEMPOTENT_RULE.to_string();
            finding.message = format!(
                "a `-- no-transaction` migration is not rolled back when it fails halfway, and a re-run repeats it: {}",
                finding.message
            );
            raw_findings.push(finding);
        }
    }
    let own = squawk::own_rules(sql);
    for finding in own.into_iter().chain(extra) {
        // A metadata-only lock is worth saying only when nothing more precise was said.
        if finding.rule == ACCESS_EXCLUSIVE_RULE
            && raw_findings.iter().chain(&acknowledged_raw).any(|other| {
                other.offset >= finding.offset
                    && other.offset < finding.end
                    && settings.level(&other.rule) != Level::Off
            })
        {
            continue;
        }
        let line = line_of(sql, finding.offset);
        if ignores
            .iter()
            .any(|ignore| ignore.covers(line, &finding.rule))
        {
            acknowledged_raw.push(finding);
        } else {
            raw_findings.push(finding);
        }
    }

    let mut report = LintReport::default();
    for raw in raw_findings {
        let level = settings.level(&raw.rule);
        if level == Level::Off {
            continue;
        }
        let (line, column) = line_column(sql, raw.offset);
        let message = if BACKWARD_INCOMPATIBLE.contains(&raw.rule.as_str()) {
            format!(
                "backward-incompatible: old application code still running during the rollout may break: {}",
                raw.message
            )
        } else {
            raw.message
        };
        report.findings.push(Finding {
            file: file.to_string(),
            line,
            column,
            rule: raw.rule,
            level,
            message,
            help: raw.help,
        });
    }
    for raw in acknowledged_raw {
        let (line, column) = line_column(sql, raw.offset);
        let reason = ignores
            .iter()
            .filter(|ignore| ignore.covers(line, &raw.rule))
            .max_by_key(|ignore| ignore.line)
            .and_then(|ignore| ignore.reason.clone());
        report.acknowledged.push(Acknowledged {
            file: file.to_string(),
            line,
            column,
            rule: raw.rule,
            reason,
        });
    }
    report.findings.sort();
    report.findings.dedup();
    report.acknowledged.sort();
    report.acknowledged.dedup();
    report
}

/// A `-- squawk-ignore[-file] rule, rule -- reason` comment.
#[derive(Debug)]
struct IgnoreComment {
    /// 1-based line of the comment.
    line: usize,
    file_wide: bool,
    /// Empty: every rule.
    rules: BTreeSet<String>,
    reason: Option<String>,
}

impl IgnoreComment {
    fn find_all(sql: &str) -> Vec<IgnoreComment> {
        let mut ignores = Vec::new();
        for (line_idx, text) in sql.lines().enumerate() {
            let Some(comment_start) = text.find("--") else {
                continue;
            };
            let body = text[comment_start + 2..].trim_start();
            let (file_wide, rest) = if let Some(rest) = body.strip_prefix("squawk-ignore-file") {
                (true, rest)
            } else if let Some(rest) = body.strip_prefix("squawk-ignore") {
                (false, rest)
            } else {
                continue;
            };
            let (names, reason) = match rest.split_once("--") {
                Some((names, reason)) => (names, Some(reason.trim().to_string())),
                None => (rest, None),
            };
            ignores.push(IgnoreComment {
                line: line_idx + 1,
                file_wide,
                rules: names
                    .split(',')
                    .map(|name| name.trim().to_string())
                    .filter(|name| !name.is_empty())
                    .collect(),
                reason: reason.filter(|reason| !reason.is_empty()),
            });
        }
        ignores
    }

    /// Squawk's reading: a line comment covers the next line; a file comment, the file.
    fn covers(&self, line: usize, rule: &str) -> bool {
        let in_range = self.file_wide || line == self.line + 1 || line == self.line;
        in_range && (self.rules.is_empty() || self.rules.contains(rule))
    }
}

fn line_of(sql: &str, offset: usize) -> usize {
    line_column(sql, offset).0
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(sql: &str, offset: usize) -> (usize, usize) {
    let before = &sql[..offset.min(sql.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl fmt::Display for LintReport {
    /// Findings grouped by migration, then the acknowledged ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut current_file: Option<&str> = None;
        for finding in &self.findings {
            if current_file != Some(finding.file.as_str()) {
                writeln!(f, "{}", finding.file)?;
                current_file = Some(finding.file.as_str());
            }
            writeln!(
                f,
                "  {}:{} {} [{}] {}",
                finding.line, finding.column, finding.level, finding.rule, finding.message
            )?;
            if let Some(help) = &finding.help {
                writeln!(f, "      help: {help}")?;
            }
        }
        if !self.acknowledged.is_empty() {
            writeln!(f, "acknowledged (-- squawk-ignore):")?;
            for acknowledged in &self.acknowledged {
                write!(
                    f,
                    "  {}:{}:{} [{}]",
                    acknowledged.file, acknowledged.line, acknowledged.column, acknowledged.rule
                )?;
                match &acknowledged.reason {
                    Some(reason) => writeln!(f, " {reason}")?,
                    None => writeln!(f, " (no reason given)")?,
                }
            }
        }
        let n_denied = self.denied().count();
        writeln!(
            f,
            "{} finding(s), {} denied, {} acknowledged",
            self.findings.len(),
            n_denied,
            self.acknowledged.len()
        )
    }
}

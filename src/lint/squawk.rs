//! The only module that knows the Squawk crates: parse one migration, run Squawk's rules, and
//! hand back plain [`RawFinding`]s (byte offsets, rule names as strings).
//!
//! **Invariant:** a Squawk upgrade touches this file only; rule names leave it as the strings
//! Squawk documents (`changing-column-type`), so policies and plans never see Squawk's types.

use std::collections::HashSet;

use squawk_linter::{Linter, Rule, Version};
use squawk_syntax::SourceFile;
use squawk_syntax::ast::{self, AstNode};

/// A finding before it is placed in a file and given a level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFinding {
    /// Byte offset of the statement (or token) the finding points at.
    pub offset: usize,
    /// Byte offset where the pointed-at text ends.
    pub end: usize,
    pub rule: String,
    pub message: String,
    pub help: Option<String>,
}

/// What Squawk said about one migration.
#[derive(Debug, Default)]
pub struct SquawkOutput {
    /// Findings not silenced by a `-- squawk-ignore` comment, parse errors included.
    pub findings: Vec<RawFinding>,
    /// Findings a `-- squawk-ignore` comment silenced.
    pub acknowledged: Vec<RawFinding>,
}

/// The name of the finding a parse error gives.
pub const SYNTAX_ERROR_RULE: &str = "syntax-error";

/// Whether `name` is a rule Squawk knows.
pub fn is_squawk_rule(name: &str) -> bool {
    Rule::try_from(name).is_ok()
}

/// Lint one migration. `opt_in` names Squawk rules that are off by default in Squawk but that
/// the policy asked for; `in_transaction` is false for `-- no-transaction` migrations.
pub fn lint(sql: &str, pg_version: u32, in_transaction: bool, opt_in: &[String]) -> SquawkOutput {
    let kept = run_linter(sql, pg_version, in_transaction, opt_in);
    // Squawk drops what its ignore comments silence; linting a copy whose ignore comments are
    // defaced (same length, so offsets hold) gives the silenced ones too, to be listed.
    let defaced = sql.replace("squawk-ignore", "squawk_ignore");
    let everything = run_linter(&defaced, pg_version, in_transaction, opt_in);
    let kept_keys: HashSet<(usize, &str)> = kept
        .iter()
        .map(|finding| (finding.offset, finding.rule.as_str()))
        .collect();
    let acknowledged = everything
        .iter()
        .filter(|finding| !kept_keys.contains(&(finding.offset, finding.rule.as_str())))
        .cloned()
        .collect();
    let mut findings = kept;
    findings.extend(parse_errors(sql));
    SquawkOutput {
        findings,
        acknowledged,
    }
}

fn run_linter(
    sql: &str,
    pg_version: u32,
    in_transaction: bool,
    opt_in: &[String],
) -> Vec<RawFinding> {
    let include: Vec<Rule> = opt_in
        .iter()
        .filter_map(|name| Rule::try_from(name.as_str()).ok())
        .collect();
    run_rules(
        Linter::with_rules(&include, &[]),
        sql,
        pg_version,
        in_transaction,
    )
}

/// Run `linter`'s rules on `sql` with our settings.
fn run_rules(
    mut linter: Linter,
    sql: &str,
    pg_version: u32,
    in_transaction: bool,
) -> Vec<RawFinding> {
    linter.settings.pg_version = pg_version
        .to_string()
        .parse::<Version>()
        .unwrap_or_default();
    linter.settings.assume_in_transaction = in_transaction;
    let parse = SourceFile::parse(sql);
    linter
        .lint(&parse, sql)
        .into_iter()
        .map(|violation| RawFinding {
            offset: usize::from(violation.text_range.start()),
            end: usize::from(violation.text_range.end()),
            rule: violation.code.to_string(),
            message: violation.message,
            help: violation.help,
        })
        .collect()
}

fn parse_errors(sql: &str) -> Vec<RawFinding> {
    SourceFile::parse(sql)
        .errors()
        .into_iter()
        .map(|error| RawFinding {
            offset: usize::from(error.range().start()),
            end: usize::from(error.range().end()),
            rule: SYNTAX_ERROR_RULE.to_string(),
            message: format!("cannot parse the migration: {}", error.message()),
            help: Some("fix the SQL; an unparsed statement cannot be checked for locks".into()),
        })
        .collect()
}

/// Our rule for `VACUUM FULL`, which Squawk flags only from PostgreSQL 19 on.
pub const VACUUM_FULL_RULE: &str = "vacuum-full";
/// Our rule for `CLUSTER`, which Squawk flags only from PostgreSQL 19 on.
pub const CLUSTER_RULE: &str = "cluster";
/// Our rule for a statement that takes `ACCESS EXCLUSIVE` on an existing table for a catalog
/// change only (short, but it queues every reader behind it while it waits).
pub const ACCESS_EXCLUSIVE_RULE: &str = "access-exclusive-metadata";

/// Our statement-level rules, which Squawk is silent about on PostgreSQL 15 to 17.
/// [`ACCESS_EXCLUSIVE_RULE`] findings cover the whole statement (`offset..end`), so the caller
/// can drop them where a more precise finding already points inside the statement.
pub fn own_rules(sql: &str) -> Vec<RawFinding> {
    let file = SourceFile::parse(sql).tree();
    let mut created_tables: HashSet<String> = HashSet::new();
    let mut findings = Vec::new();
    for statement in file.stmts() {
        let range = statement_range(statement.syntax());
        let finding = |rule: &str, message: String, help: &str| RawFinding {
            offset: range.0,
            end: range.1,
            rule: rule.to_string(),
            message,
            help: Some(help.to_string()),
        };
        match &statement {
            ast::Stmt::CreateTable(create) => {
                if let Some(name) = create.table_name() {
                    created_tables.insert(normalize_name(&name.syntax().text().to_string()));
                }
            }
            ast::Stmt::Vacuum(vacuum) if vacuum.is_full() => findings.push(finding(
                VACUUM_FULL_RULE,
                "`VACUUM FULL` rewrites the table under an `ACCESS EXCLUSIVE` lock: reads and writes wait for the whole rewrite".into(),
                "use pg_repack or plain `VACUUM`; never in a migration that runs during a rollout",
            )),
            ast::Stmt::Cluster(_) => findings.push(finding(
                CLUSTER_RULE,
                "`CLUSTER` rewrites the table under an `ACCESS EXCLUSIVE` lock: reads and writes wait for the whole rewrite".into(),
                "use pg_repack, outside the rollout",
            )),
            ast::Stmt::AlterTable(alter) => {
                let table = alter
                    .table_relation_name()
                    .map(|name| normalize_name(&name.syntax().text().to_string()))
                    .unwrap_or_default();
                if !created_tables.contains(&table) {
                    findings.push(finding(
                        ACCESS_EXCLUSIVE_RULE,
                        format!("`ALTER TABLE {table}` takes an `ACCESS EXCLUSIVE` lock on an existing table; while it waits for running transactions, every query on {table} queues behind it"),
                        "keep the policy's lock_timeout short so a blocked migration fails fast instead of stalling the tenant",
                    ));
                }
            }
            ast::Stmt::Truncate(_) | ast::Stmt::Lock(_) => findings.push(finding(
                ACCESS_EXCLUSIVE_RULE,
                "the statement takes an `ACCESS EXCLUSIVE` lock (by default) on an existing table".into(),
                "keep the policy's lock_timeout short so a blocked migration fails fast instead of stalling the tenant",
            )),
            _ => {}
        }
    }
    findings
}

/// An enum label a migration adds (`ALTER TYPE t ADD VALUE 'label'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedEnumLabel {
    /// Byte offsets of the `ALTER TYPE` statement.
    pub offset: usize,
    pub end: usize,
    pub type_name: String,
    pub label: String,
}

/// A plain string literal (`'text'`), decoded, with its byte offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringLiteral {
    pub offset: usize,
    pub end: usize,
    pub value: String,
}

/// Every `ALTER TYPE … ADD VALUE '…'` of the migration, in order, except on a type the
/// migration created before it (PostgreSQL lets a transaction use the labels of a type it
/// created itself).
pub fn added_enum_labels(sql: &str) -> Vec<AddedEnumLabel> {
    let file = SourceFile::parse(sql).tree();
    let mut added = Vec::new();
    let mut created_types: HashSet<String> = HashSet::new();
    for statement in file.stmts() {
        if let ast::Stmt::CreateType(create) = &statement
            && let Some(name) = create.type_name()
        {
            created_types.insert(normalize_name(&name.syntax().text().to_string()));
        }
        let ast::Stmt::AlterType(alter) = &statement else {
            continue;
        };
        let Some(ast::AlterTypeAction::AddValue(add_value)) = alter.action() else {
            continue;
        };
        let Some(label) = add_value
            .literal()
            .and_then(|literal| plain_string(&literal.syntax().text().to_string()))
        else {
            continue;
        };
        let type_name = alter
            .type_name_ref()
            .map(|name| normalize_name(&name.syntax().text().to_string()))
            .unwrap_or_default();
        if created_types.contains(&type_name) {
            continue;
        }
        let (offset, end) = statement_range(statement.syntax());
        added.push(AddedEnumLabel {
            offset,
            end,
            type_name,
            label,
        });
    }
    added
}

/// Every plain string literal of the migration outside function bodies, in order.
pub fn string_literals(sql: &str) -> Vec<StringLiteral> {
    let parse = SourceFile::parse(sql);
    parse
        .syntax_node()
        .descendants_with_tokens()
        .filter_map(|element| element.into_token())
        .filter(|token| token.kind() == squawk_syntax::SyntaxKind::STRING)
        .filter_map(|token| {
            let value = plain_string(token.text())?;
            Some(StringLiteral {
                offset: usize::from(token.text_range().start()),
                end: usize::from(token.text_range().end()),
                value,
            })
        })
        .collect()
}

/// `'it''s'` -> `it's`; `None` for anything else (E'', U&'', dollar quoting).
fn plain_string(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// Byte offsets where each statement of `sql` ends (its `;` included), in order, so the
/// text can be cut between statements; `None` when the SQL does not parse cleanly (a cut
/// could then land inside a statement).
pub fn statement_ends(sql: &str) -> Option<Vec<usize>> {
    let parse = SourceFile::parse(sql);
    if !parse.errors().is_empty() {
        return None;
    }
    Some(
        parse
            .tree()
            .stmts()
            .map(|statement| usize::from(statement.syntax().text_range().end()))
            .collect(),
    )
}

/// Whether the migration's statements can all be re-run after a crash halfway through
/// (what a `-- no-transaction` migration needs): Squawk's `prefer-robust-stmts`, asked outside
/// a transaction.
pub fn non_idempotent_statements(sql: &str, pg_version: u32) -> Vec<RawFinding> {
    run_rules(
        Linter::from([Rule::PreferRobustStmts]),
        sql,
        pg_version,
        false,
    )
}

/// The statement's text range without leading comments and whitespace.
fn statement_range(node: &squawk_syntax::SyntaxNode) -> (usize, usize) {
    let range = node.text_range();
    let start = node
        .children_with_tokens()
        .find(|child| !child.kind().is_trivia())
        .map(|child| child.text_range().start())
        .unwrap_or_else(|| range.start());
    (usize::from(start), usize::from(range.end()))
}

fn normalize_name(name: &str) -> String {
    let trimmed = name.trim().replace('"', "");
    let unqualified = trimmed.strip_prefix("public.").unwrap_or(&trimmed);
    unqualified.to_ascii_lowercase()
}

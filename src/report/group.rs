//! Failures grouped by normalised cause, each with the next step to take.

use std::collections::BTreeMap;

use serde::Serialize;

use super::summary::{FailureEntry, Summary};

/// One distinct cause across tenants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureGroup {
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The error with tenant-specific parts (numbers, ids) folded away.
    pub cause: String,
    pub count: usize,
    /// A few of the tenants' ids, sorted.
    pub tenants: Vec<String>,
    /// The same tenants as people know them: `name (id)`, or the id when it has no name.
    pub tenant_labels: Vec<String>,
    /// What the operator should do next.
    pub next_step: String,
    /// A few of the tenants whose main committed some migrations before failing, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partly_migrated: Vec<PartlyMigrated>,
}

/// A tenant left between versions: the migrations before the failing one committed on main.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartlyMigrated {
    pub tenant: String,
    /// The project's name, when it has one of its own.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    /// main's version now.
    pub main_version: Option<i32>,
    /// The versions this release committed there.
    pub applied_on_main: Vec<i32>,
}

impl PartlyMigrated {
    /// `name (id)`, or the id when the tenant has no name of its own.
    pub fn label(&self) -> String {
        crate::plan::model::PlannedTenant {
            id: self.tenant.clone(),
            name: self.tenant_name.clone(),
            region: String::new(),
        }
        .label()
    }
}

/// How many tenant ids a group lists.
const LISTED_TENANTS: usize = 5;

/// What the other tenants say about a cause: did the migration pass elsewhere?
#[derive(Debug, Clone, Copy)]
struct Elsewhere {
    /// Tenants that applied the release.
    passed: usize,
    /// Tenants that failed in `validate` or `apply` with another cause.
    failed_otherwise: usize,
}

/// Group the summary's failures by (phase, SQLSTATE, normalised message), largest group first.
pub fn group_failures(summary: &Summary, plan_path: &str) -> Vec<FailureGroup> {
    let failures = &summary.failures;
    let n_migration_failures = failures
        .iter()
        .filter(|failure| is_migration_phase(&failure.phase))
        .count();
    let mut groups: BTreeMap<(String, Option<String>, String), Vec<&FailureEntry>> =
        BTreeMap::new();
    for failure in failures {
        let cause = normalise(&failure.error, &failure.tenant, &failure.tenant_name);
        groups
            .entry((failure.phase.clone(), failure.sqlstate.clone(), cause))
            .or_default()
            .push(failure);
    }
    let mut grouped: Vec<FailureGroup> = groups
        .into_iter()
        .map(|((phase, sqlstate, cause), members)| {
            let mut members = members;
            members.sort_by(|left, right| left.tenant.cmp(&right.tenant));
            let count = members.len();
            let main_changed = members
                .iter()
                .any(|member| !member.applied_on_main.is_empty());
            let elsewhere = Elsewhere {
                passed: summary.totals.applied,
                failed_otherwise: n_migration_failures.saturating_sub(count),
            };
            let next_step = next_step(&phase, sqlstate.as_deref(), &cause, main_changed, plan_path);
            let next_step = match migration_verdict(&phase, count, elsewhere) {
                Some(verdict) => format!("{verdict} {next_step}"),
                None => next_step,
            };
            let mut partly_migrated: Vec<PartlyMigrated> = members
                .iter()
                .filter(|member| member.phase == "apply" && !member.applied_on_main.is_empty())
                .map(|member| PartlyMigrated {
                    tenant: member.tenant.clone(),
                    tenant_name: member.tenant_name.clone(),
                    main_version: member.main_version,
                    applied_on_main: member.applied_on_main.clone(),
                })
                .collect();
            partly_migrated.sort_by(|a, b| a.tenant.cmp(&b.tenant));
            partly_migrated.truncate(LISTED_TENANTS);
            members.truncate(LISTED_TENANTS);
            FailureGroup {
                partly_migrated,
                phase,
                sqlstate,
                cause,
                count,
                tenants: members.iter().map(|member| member.tenant.clone()).collect(),
                tenant_labels: members.iter().map(|member| member.label()).collect(),
                next_step,
            }
        })
        .collect();
    grouped.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
    grouped
}

fn is_migration_phase(phase: &str) -> bool {
    matches!(phase, "validate" | "apply")
}

/// Whether a migration failure is the tenants' (it passed elsewhere) or the migration's (it
/// failed the same way on every tenant that ran it), when the rest of the rollout says so.
fn migration_verdict(phase: &str, count: usize, elsewhere: Elsewhere) -> Option<String> {
    if !is_migration_phase(phase) {
        return None;
    }
    if elsewhere.passed > 0 {
        let plural = if elsewhere.passed == 1 { "" } else { "s" };
        return Some(format!(
            "It passed on {} other tenant{plural}, so it fails on these tenants' data or schema.",
            elsewhere.passed
        ));
    }
    if elsewhere.failed_otherwise > 0 {
        return None;
    }
    Some(if count == 1 {
        "No tenant has passed it yet: check the migration itself first.".to_string()
    } else {
        format!(
            "It failed the same way on every tenant that ran it ({count}) and passed on none: the migration or the release is wrong, not these tenants' data; fix it and re-plan."
        )
    })
}

/// Fold away what differs between tenants failing for the same reason: the tenant's id and
/// name, Neon request ids, ids with digits (`br-…-123`, UUIDs) and numbers, but not an HTTP
/// status (`answered 404`) nor digits that are part of a name (`V2`, `e2e`).
fn normalise(message: &str, tenant: &str, tenant_name: &str) -> String {
    let is_word_char =
        |character: char| character.is_ascii_alphanumeric() || character == '-' || character == '_';
    let mut message = without_request_ids(message);
    // A name of several words cannot match one word below: replace it as text.
    if !tenant_name.is_empty() && !tenant_name.chars().all(is_word_char) {
        message = message.replace(tenant_name, "<tenant>");
    }
    let mut out = String::with_capacity(message.len());
    let mut word = String::new();
    let mut previous_word = String::new();
    for character in message.chars().chain(std::iter::once('\n')) {
        if is_word_char(character) {
            word.push(character);
            continue;
        }
        if word == tenant || (!tenant_name.is_empty() && word == tenant_name) {
            out.push_str("<tenant>");
            previous_word = std::mem::take(&mut word);
        } else if !word.is_empty() {
            out.push_str(&normalise_word(&word, &previous_word));
            previous_word = std::mem::take(&mut word);
        }
        out.push(character);
    }
    out.pop();
    out
}

/// ` (request_id …)` appears once per Neon error and differs on every request.
pub fn without_request_ids(message: &str) -> String {
    let mut rest = message;
    let mut out = String::with_capacity(message.len());
    while let Some(start) = rest.find(" (request_id ") {
        out.push_str(&rest[..start]);
        match rest[start..].find(')') {
            Some(end) => rest = &rest[start + end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn normalise_word(word: &str, previous_word: &str) -> String {
    let has_digit = word.chars().any(|character| character.is_ascii_digit());
    if !has_digit {
        return word.to_string();
    }
    if word.chars().all(|character| character.is_ascii_digit()) {
        // A checksum names the file's content: two different ones are two different causes.
        return if previous_word == "answered"
            || previous_word == "status"
            || previous_word == "checksum"
        {
            word.to_string()
        } else {
            "N".to_string()
        };
    }
    if word.contains('-')
        && word
            .chars()
            .any(|character| character.is_ascii_alphabetic())
    {
        return "<id>".to_string();
    }
    // Digits glued to a letter are names (`V2`, `e2e`), not per-tenant values; a number
    // starting a word takes its hex tail with it (`0x1f`, `5ab`).
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars().peekable();
    let mut previous: Option<char> = None;
    while let Some(character) = chars.next() {
        let glued_to_word = previous.is_some_and(|previous| previous.is_ascii_alphabetic());
        previous = Some(character);
        if character.is_ascii_digit() && !glued_to_word {
            while chars.peek().is_some_and(|next| next.is_ascii_hexdigit()) {
                chars.next();
            }
            out.push('N');
        } else {
            out.push(character);
        }
    }
    out
}

/// What to do about tenants whose Neon project no longer exists (`apply`, `status`, `drift`).
pub const PROJECT_GONE_NEXT_STEP: &str = "the project was deleted (or its id changed) since planning; re-run `schemafleet plan` to refresh the fleet, or leave these tenants be";

fn next_step(
    phase: &str,
    sqlstate: Option<&str>,
    cause: &str,
    main_changed: bool,
    plan_path: &str,
) -> String {
    let retry = format!("schemafleet apply {plan_path} --retry-failed");
    let step = specific_step(phase, sqlstate, cause, main_changed, plan_path, &retry);
    if phase == "apply" && main_changed {
        format!(
            "main is partly migrated: the migrations before the failing one committed (see applied_on_main); {step}"
        )
    } else {
        step
    }
}

fn specific_step(
    phase: &str,
    sqlstate: Option<&str>,
    cause: &str,
    main_changed: bool,
    plan_path: &str,
    retry: &str,
) -> String {
    match (phase, sqlstate) {
        ("diverged", _) => format!(
            "history on these tenants differs from the migrations on disk; run `schemafleet drift {plan_path}` and restore the edited or missing files (never edit an applied migration)"
        ),
        ("validate" | "apply", Some("55P04")) => format!(
            "{}a migration uses an enum label added earlier in the same transaction, which PostgreSQL allows only once the label is committed: with `transaction: per_release` in the policy, use `per_migration` (the default) and re-plan; within one file, split it in two. Then run `{retry}`",
            if phase == "validate" {
                "main was not touched. "
            } else {
                ""
            }
        ),
        // The lock budget (`max_lock_hold`, measured on the branch): the wording is
        // pg::lock_footprint::over_budget's.
        ("validate", None) if cause.contains("main would block writes that long") => {
            "main was not touched. On these tenants' data the migration holds a lock that blocks writes longer than max_lock_hold: make it cheaper (no table rewrite, `CREATE INDEX CONCURRENTLY`, constraints `NOT VALID` then `VALIDATE`) and re-plan, or migrate these tenants in a maintenance window under a policy with a higher max_lock_hold".to_string()
        }
        ("validate", _) => format!(
            "main was not touched. Fix the data or the migration (then re-plan), or fix the tenants and run `{retry}`"
        ),
        ("apply", Some("55P03" | "40P01")) => format!(
            "application sessions held locks longer than lock_timeout through every retry; run `{retry}` off-peak, or raise lock_timeout in the policy and re-plan"
        ),
        ("apply", Some("57014")) => format!(
            "a statement ran into statement_timeout; raise statement_timeout in the policy (re-plan) or make the migration cheaper, then `{retry}`"
        ),
        ("apply", _) if main_changed => format!(
            "fix the cause and run `{retry}` to continue from the failing migration, or `schemafleet rollback {plan_path} --failed` to restore main to before the release"
        ),
        ("apply", _) => format!("main was not changed; fix the cause and run `{retry}`"),
        ("probe", _) if cause.contains("not found") => PROJECT_GONE_NEXT_STEP.to_string(),
        ("probe", _) => format!(
            "could not read the tenant's history; check its compute and network, then run `{retry}`"
        ),
        ("branch", _) => format!(
            "Neon refused a branch operation (limits? run `schemafleet gc`); main was not touched; then run `{retry}`"
        ),
        ("rollback", _) => format!(
            "the restore did not finish; check the tenant in the Neon console, then `schemafleet rollback {plan_path} --tenant ID` again"
        ),
        _ => format!("see the error; then run `{retry}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(tenant: &str, phase: &str, sqlstate: Option<&str>, error: &str) -> FailureEntry {
        FailureEntry {
            tenant: tenant.into(),
            tenant_name: format!("name-of-{tenant}"),
            region: String::new(),
            wave: "w".into(),
            phase: phase.into(),
            error: error.into(),
            sqlstate: sqlstate.map(str::to_string),
            applied_on_main: Vec::new(),
            migration: None,
            main_version: None,
        }
    }

    fn summary(failures: Vec<FailureEntry>, n_applied: usize) -> Summary {
        Summary {
            plan_id: "p".into(),
            waves: Vec::new(),
            totals: super::super::Counts {
                applied: n_applied,
                failed: failures.len(),
                ..Default::default()
            },
            failures,
            restore_points: 0,
            held_back: Vec::new(),
            held_back_tenants: Vec::new(),
        }
    }

    const ENUM_ERROR: &str =
        "V3__use_label: unsafe use of new value \"shipped\" of enum type order_status";

    #[test]
    fn a_cause_every_tenant_failed_with_is_the_migration_s() {
        let failures = (1..=3)
            .map(|n| failure(&format!("t-{n}"), "validate", Some("55P04"), ENUM_ERROR))
            .collect();
        let groups = group_failures(&summary(failures, 0), "p.yaml");
        assert_eq!(groups.len(), 1);
        let next = &groups[0].next_step;
        assert!(next.contains("every tenant that ran it (3)"), "{next}");
        assert!(next.contains("per_migration"), "{next}");
        assert!(next.contains("main was not touched"), "{next}");
        assert!(!next.contains("fails on these tenants' data"), "{next}");
    }

    #[test]
    fn a_cause_other_tenants_passed_is_these_tenants_data() {
        let failures = vec![failure(
            "t-1",
            "validate",
            Some("23514"),
            "V3__check: check constraint \"c\" is violated by some row",
        )];
        let groups = group_failures(&summary(failures, 4), "p.yaml");
        let next = &groups[0].next_step;
        assert!(next.contains("passed on 4 other tenants"), "{next}");
        assert!(next.contains("these tenants' data"), "{next}");
    }

    #[test]
    fn a_partly_migrated_main_says_so_and_how_to_continue() {
        let mut partial = failure("t-1", "apply", Some("23502"), "V3__x: null value");
        partial.applied_on_main = vec![1, 2];
        let groups = group_failures(&summary(vec![partial], 1), "p.yaml");
        let next = &groups[0].next_step;
        assert!(next.starts_with("It passed on 1 other tenant,"), "{next}");
        assert!(next.contains("main is partly migrated"), "{next}");
        assert!(next.contains("--retry-failed` to continue"), "{next}");
        assert!(next.contains("rollback p.yaml --failed"), "{next}");
        assert!(!next.contains("not changed"), "{next}");
    }

    #[test]
    fn same_cause_on_different_tenants_is_one_group() {
        let failures = vec![
            failure(
                "t-1",
                "validate",
                Some("23514"),
                "check constraint \"c\" of relation \"orders\" is violated by some row",
            ),
            failure(
                "t-2",
                "validate",
                Some("23514"),
                "check constraint \"c\" of relation \"orders\" is violated by some row",
            ),
            failure(
                "t-3",
                "apply",
                Some("55P03"),
                "canceling statement due to lock timeout",
            ),
            failure(
                "t-4",
                "probe",
                None,
                "connect: connection refused to 127.0.0.1:54321 for t-4",
            ),
            failure(
                "t-5",
                "probe",
                None,
                "connect: connection refused to 127.0.0.1:54399 for t-5",
            ),
        ];
        let groups = group_failures(&summary(failures, 0), "p.yaml");
        assert_eq!(groups.len(), 3, "{groups:#?}");
        assert_eq!(groups[0].count, 2);
        assert_eq!(groups[1].count, 2);
        assert!(
            groups
                .iter()
                .any(|group| group.phase == "apply" && group.next_step.contains("lock_timeout"))
        );
        assert!(
            groups
                .iter()
                .all(|group| group.next_step.contains("p.yaml") || group.phase == "probe")
        );
    }

    #[test]
    fn checksums_stay_in_the_cause() {
        let diverged = |tenant: &str| {
            failure(
                tenant,
                "probe",
                None,
                "diverged: V3__slow was applied with checksum 1234567 but the file now has V3__bad with checksum 7654321",
            )
        };
        let groups = group_failures(
            &summary(
                vec![diverged("p-cool-123456"), diverged("p-warm-654321")],
                0,
            ),
            "p.yaml",
        );
        assert_eq!(groups.len(), 1, "{groups:#?}");
        assert_eq!(
            groups[0].cause,
            "diverged: V3__slow was applied with checksum 1234567 but the file now has V3__bad with checksum 7654321"
        );
    }

    #[test]
    fn a_vanished_project_keeps_its_status_and_loses_its_ids() {
        let gone = |tenant: &str, request_id: &str| {
            failure(
                tenant,
                "probe",
                None,
                &format!(
                    "Neon API GET /projects/{tenant}/connection_uri answered 404: project {tenant} not found (request_id {request_id})"
                ),
            )
        };
        let failures = vec![
            gone("p-cool-123456", "c7f3a1b2-b5d4-4e2f-9a1c-0d1e2f3a4b5c"),
            gone("p-warm-654321", "a1b2c3d4-0000-4e2f-9a1c-0d1e2f3a4b5c"),
        ];
        let groups = group_failures(&summary(failures, 0), "p.yaml");
        assert_eq!(groups.len(), 1, "{groups:#?}");
        assert_eq!(
            groups[0].cause,
            "Neon API GET /projects/<tenant>/connection_uri answered 404: project <tenant> not found"
        );
        assert!(groups[0].next_step.contains("re-run `schemafleet plan`"));
        assert_eq!(
            groups[0].tenant_labels,
            vec![
                "name-of-p-cool-123456 (p-cool-123456)",
                "name-of-p-warm-654321 (p-warm-654321)"
            ]
        );
        // Names with digits survive; per-tenant numbers and ids fold.
        assert_eq!(
            normalise("V2 on br-red-42 failed after 30 ms for t", "t", ""),
            "V2 on <id> failed after N ms for <tenant>"
        );
        assert_eq!(
            normalise("database of Acme Corp is read-only", "p-1", "Acme Corp"),
            "database of <tenant> is read-only"
        );
    }
}

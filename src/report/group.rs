//! Failures grouped by normalised cause, each with the next step to take.

use std::collections::BTreeMap;

use serde::Serialize;

use super::summary::FailureEntry;

/// One distinct cause across tenants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureGroup {
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The error with tenant-specific parts (numbers, ids) folded away.
    pub cause: String,
    pub count: usize,
    /// A few of the tenants, sorted.
    pub tenants: Vec<String>,
    /// What the operator should do next.
    pub next_step: String,
}

/// How many tenant ids a group lists.
const LISTED_TENANTS: usize = 5;

/// Group failures by (phase, SQLSTATE, normalised message), largest group first.
pub fn group_failures(failures: &[FailureEntry], plan_path: &str) -> Vec<FailureGroup> {
    let mut groups: BTreeMap<(String, Option<String>, String), Vec<&FailureEntry>> =
        BTreeMap::new();
    for failure in failures {
        let cause = normalise(&failure.error, &failure.tenant);
        groups
            .entry((failure.phase.clone(), failure.sqlstate.clone(), cause))
            .or_default()
            .push(failure);
    }
    let mut grouped: Vec<FailureGroup> = groups
        .into_iter()
        .map(|((phase, sqlstate, cause), members)| {
            let mut tenants: Vec<String> =
                members.iter().map(|member| member.tenant.clone()).collect();
            tenants.sort();
            let count = tenants.len();
            let main_changed = members
                .iter()
                .any(|member| !member.applied_on_main.is_empty());
            let next_step = next_step(&phase, sqlstate.as_deref(), &cause, main_changed, plan_path);
            tenants.truncate(LISTED_TENANTS);
            FailureGroup {
                phase,
                sqlstate,
                cause,
                count,
                tenants,
                next_step,
            }
        })
        .collect();
    grouped.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
    grouped
}

/// Fold away what differs between tenants failing for the same reason.
fn normalise(message: &str, tenant: &str) -> String {
    let message = message.replace(tenant, "<tenant>");
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    let mut previous: Option<char> = None;
    while let Some(character) = chars.next() {
        // Digits glued to a letter are names (`V2`, `e2e`), not per-tenant values.
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

fn next_step(
    phase: &str,
    sqlstate: Option<&str>,
    cause: &str,
    main_changed: bool,
    plan_path: &str,
) -> String {
    let retry = format!("schemafleet apply {plan_path} --retry-failed");
    match (phase, sqlstate) {
        ("diverged", _) => format!(
            "history on these tenants differs from the migrations on disk; run `schemafleet drift --plan {plan_path}` and restore the edited or missing files (never edit an applied migration)"
        ),
        ("validate", _) => format!(
            "main was not touched. The migration fails on these tenants' data or schema: fix the data or the migration (then re-plan), or fix the tenants and run `{retry}`"
        ),
        ("apply", Some("55P03" | "40P01")) => format!(
            "application sessions held locks longer than lock_timeout through every retry; run `{retry}` off-peak, or raise lock_timeout in the policy and re-plan"
        ),
        ("apply", Some("57014")) => format!(
            "a statement ran into statement_timeout; raise statement_timeout in the policy (re-plan) or make the migration cheaper, then `{retry}`"
        ),
        ("apply", _) if main_changed => format!(
            "main is partly migrated (see applied versions); `schemafleet rollback {plan_path} --failed` restores it, or fix the cause and run `{retry}`"
        ),
        ("apply", _) => format!("main was not changed; fix the cause and run `{retry}`"),
        ("probe", _) if cause.contains("not found") => {
            "the project is gone or renamed since planning; re-run `schemafleet plan` to refresh the fleet, or ignore these tenants".to_string()
        }
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
            wave: "w".into(),
            phase: phase.into(),
            error: error.into(),
            sqlstate: sqlstate.map(str::to_string),
            applied_on_main: Vec::new(),
        }
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
        let groups = group_failures(&failures, "p.yaml");
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
}

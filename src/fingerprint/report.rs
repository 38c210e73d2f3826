//! `drift --schema`: each tenant's fingerprint against the reference at its recorded version,
//! grouped by identical differences (3,000 tenants with the same hand-made index are one group).
//!
//! **Invariant:** every tenant is either compared (clean or differing) or skipped with a reason;
//! a tenant whose history disagrees with the files has no reference to compare with and is
//! skipped (the history report already names it).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Difference;
use crate::drift::tenant_list;
use crate::exit::ExitStatus;
use crate::report::render::plural;
use crate::report::render::wrap_into;

/// One tenant's schema comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantSchema {
    pub tenant: String,
    /// The project's name, when the plan or fleet gave one (see [`SchemaReport::with_names`]).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    /// The recorded version compared against (0: no history).
    pub version: Option<i32>,
    /// Empty for a clean tenant; meaningless when `skipped` is set.
    pub differences: Vec<Difference>,
    /// Why the tenant was not compared (diverged history, no fingerprint read).
    pub skipped: Option<String>,
}

/// Tenants with identical differences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaGroup {
    pub differences: Vec<Difference>,
    pub tenants: Vec<String>,
}

/// The whole schema picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaReport {
    pub compared: usize,
    pub clean: usize,
    pub differing: usize,
    /// Sorted by tenant id.
    pub tenants: Vec<TenantSchema>,
    /// Biggest group first, then by their first difference.
    pub groups: Vec<SchemaGroup>,
    /// Project names by id, for showing tenants as people know them.
    #[serde(skip)]
    pub names: HashMap<String, String>,
}

/// Count and group the tenants' comparisons.
pub fn aggregate(mut tenants: Vec<TenantSchema>) -> SchemaReport {
    tenants.sort_by(|left, right| left.tenant.cmp(&right.tenant));
    let mut grouped: BTreeMap<Vec<Difference>, Vec<String>> = BTreeMap::new();
    let (mut compared, mut clean) = (0, 0);
    for tenant in tenants.iter().filter(|tenant| tenant.skipped.is_none()) {
        compared += 1;
        if tenant.differences.is_empty() {
            clean += 1;
        } else {
            grouped
                .entry(tenant.differences.clone())
                .or_default()
                .push(tenant.tenant.clone());
        }
    }
    let mut groups: Vec<SchemaGroup> = grouped
        .into_iter()
        .map(|(differences, tenants)| SchemaGroup {
            differences,
            tenants,
        })
        .collect();
    groups.sort_by(|left, right| {
        right
            .tenants
            .len()
            .cmp(&left.tenants.len())
            .then(left.differences.cmp(&right.differences))
    });
    SchemaReport {
        compared,
        clean,
        differing: compared - clean,
        tenants,
        groups,
        names: HashMap::new(),
    }
}

impl SchemaReport {
    /// Name the tenants (project id to project name) in the text and JSON.
    pub fn with_names(mut self, names: HashMap<String, String>) -> SchemaReport {
        for tenant in &mut self.tenants {
            if let Some(name) = names.get(&tenant.tenant) {
                tenant.tenant_name = name.clone();
            }
        }
        self.names = names;
        self
    }

    /// 1 when any tenant's schema differs from its reference, else 0.
    pub fn exit_status(&self) -> ExitStatus {
        if self.differing > 0 {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "compared": self.compared,
            "clean": self.clean,
            "differing": self.differing,
            "skipped": self.tenants.iter().filter(|tenant| tenant.skipped.is_some()).count(),
            "tenants": self.tenants,
            "groups": self.groups,
        })
    }
}

/// The schema section of `drift --schema`'s text output.
pub fn render_text(report: &SchemaReport) -> String {
    let mut out = String::new();
    let skipped = report.tenants.len() - report.compared;
    wrap_into(
        &mut out,
        &format!(
            "schema: {} compared with the reference at their recorded version: {} clean, {} differing{}",
            plural(report.compared, "tenant"),
            report.clean,
            report.differing,
            if skipped > 0 {
                format!(", {skipped} not compared (history diverged or unreadable)")
            } else {
                String::new()
            }
        ),
        "",
        "  ",
    );
    for group in &report.groups {
        out.push('\n');
        wrap_into(
            &mut out,
            &format!(
                "{} with {}:",
                plural(group.tenants.len(), "tenant"),
                plural(group.differences.len(), "difference")
            ),
            "",
            "  ",
        );
        for difference in &group.differences {
            wrap_into(
                &mut out,
                &format!("- {}", difference.describe()),
                "  ",
                "    ",
            );
        }
        wrap_into(
            &mut out,
            &tenant_list(&group.tenants, &report.names),
            "    ",
            "    ",
        );
    }
    if report.differing > 0 {
        out.push('\n');
        wrap_into(
            &mut out,
            "next: a difference is a hand edit the migrations do not know of; undo it on the tenant, or write a migration that makes it for the whole fleet.",
            "",
            "  ",
        );
    }
    crate::terminal::escape_controls(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::ObjectKind;

    fn extra_index(name: &str) -> Difference {
        Difference {
            kind: ObjectKind::Index,
            name: name.to_string(),
            expected: None,
            found: Some(format!("CREATE INDEX {name} ...")),
        }
    }

    fn tenant(id: &str, differences: Vec<Difference>) -> TenantSchema {
        TenantSchema {
            tenant: id.to_string(),
            tenant_name: String::new(),
            version: Some(3),
            differences,
            skipped: None,
        }
    }

    #[test]
    fn identical_differences_are_one_group_biggest_first() {
        let mut tenants: Vec<TenantSchema> = (0..5)
            .map(|index| tenant(&format!("t-{index}"), vec![extra_index("public.x")]))
            .collect();
        tenants.push(tenant("t-9", vec![extra_index("public.y")]));
        tenants.push(tenant("t-8", Vec::new()));
        tenants.push(TenantSchema {
            skipped: Some("history diverged".into()),
            ..tenant("t-7", Vec::new())
        });
        let names = HashMap::from([("t-9".to_string(), "acme".to_string())]);
        let report = aggregate(tenants).with_names(names);
        let named: Vec<(&str, &str)> = report
            .tenants
            .iter()
            .filter(|tenant| !tenant.tenant_name.is_empty())
            .map(|tenant| (tenant.tenant.as_str(), tenant.tenant_name.as_str()))
            .collect();
        assert_eq!(named, [("t-9", "acme")]);
        assert_eq!((report.compared, report.clean, report.differing), (7, 1, 6));
        assert_eq!(report.groups.len(), 2);
        assert_eq!(report.groups[0].tenants.len(), 5);
        assert_eq!(report.groups[1].tenants, vec!["t-9"]);
        assert_eq!(report.exit_status(), ExitStatus::Failure);
        let text = render_text(&report);
        assert!(text.contains("5 tenants with 1 difference:"), "{text}");
        assert!(text.contains("- extra index public.x"), "{text}");
        assert!(
            text.contains("acme (t-9)"),
            "groups name their tenants: {text}"
        );
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        let clean = aggregate(vec![tenant("t-1", Vec::new())]);
        assert_eq!(clean.exit_status(), ExitStatus::Success);
    }
}

//! Drift: where every tenant's migration history stands against the migrations on disk.
//!
//! Pure: `cmd/drift.rs` probes the tenants and hands each outcome to [`classify`]; [`aggregate`]
//! counts tenants per version and state and groups the problems by reason; [`render_text`] and
//! [`DriftReport::to_json`] present the result. Nothing here does I/O.
//!
//! **Invariant:** every probed tenant appears in the report exactly once, in exactly one state.
//! **Invariant:** a tenant is `diverged` exactly when [`crate::pg::compare_history`] says so, and
//! its reason is the compare's own; nothing here second-guesses the history comparison.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::exit::ExitStatus;
use crate::pg::{AppliedMigration, HistoryComparison, PlannedVersion, compare_history};
use crate::report::render::{plural, wrap_into};

/// Tenants named per line of the text table before "and N more" (JSON always lists all).
const TENANTS_SHOWN: usize = 8;

/// What probing one tenant produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The tenant's history rows (empty when it never ran a migration).
    History(Vec<AppliedMigration>),
    /// The API, the connection or the history read failed; `reason` is already redacted.
    Unreachable { reason: String },
}

/// The state of one tenant against the migrations on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftState {
    UpToDate,
    /// History agrees with the files so far; newer versions are pending.
    Behind,
    /// Every file is applied, and versions newer than all of them too: the files are older
    /// than the fleet (an old checkout or plan).
    Ahead,
    /// History disagrees with the files (edited or missing files, out-of-order gaps).
    Diverged,
    Unreachable,
}

impl DriftState {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::UpToDate => "up_to_date",
            DriftState::Behind => "behind",
            DriftState::Ahead => "ahead",
            DriftState::Diverged => "diverged",
            DriftState::Unreachable => "unreachable",
        }
    }
}

/// One tenant's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantDrift {
    pub tenant: String,
    /// The project's name, when the plan or fleet gave one (see [`DriftReport::with_names`]).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant_name: String,
    /// The highest applied version; `None` for no history (or an unreachable tenant).
    pub version: Option<i32>,
    pub state: DriftState,
    /// Versions on disk not yet applied (only for `behind`).
    pub pending: Vec<i32>,
    /// Why a tenant is diverged or unreachable.
    pub reason: Option<String>,
}

/// Classify one probe against the migrations on disk (sorted by version).
pub fn classify(tenant: &str, probe: Probe, planned: &[PlannedVersion]) -> TenantDrift {
    match probe {
        Probe::Unreachable { reason } => TenantDrift {
            tenant: tenant.to_string(),
            tenant_name: String::new(),
            version: None,
            state: DriftState::Unreachable,
            pending: Vec::new(),
            reason: Some(reason),
        },
        Probe::History(applied) => {
            let highest_applied = applied.iter().map(|row| row.version).max();
            let (state, pending, reason) = match compare_history(&applied, planned) {
                HistoryComparison::UpToDate { .. } => (DriftState::UpToDate, Vec::new(), None),
                HistoryComparison::Pending { pending, .. } => (DriftState::Behind, pending, None),
                HistoryComparison::Ahead { extra, .. } => (
                    DriftState::Ahead,
                    Vec::new(),
                    Some(format!(
                        "{} applied, newer than every migration here",
                        format_versions(&extra)
                    )),
                ),
                HistoryComparison::Diverged { reason } => {
                    (DriftState::Diverged, Vec::new(), Some(reason))
                }
            };
            TenantDrift {
                tenant: tenant.to_string(),
                tenant_name: String::new(),
                version: highest_applied,
                state,
                pending,
                reason,
            }
        }
    }
}

/// Tenants in each state. `by_version` counts the tenants that agree with the files
/// (up to date or behind) by their highest applied version (`none` for no history).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DriftCounts {
    pub total: usize,
    pub up_to_date: usize,
    pub behind: usize,
    pub ahead: usize,
    pub diverged: usize,
    pub unreachable: usize,
    pub by_version: BTreeMap<String, usize>,
}

/// Tenants that agree with the files and stand at the same version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRow {
    pub version: Option<i32>,
    pub state: DriftState,
    pub pending: Vec<i32>,
    pub tenants: Vec<String>,
}

/// Diverged or unreachable tenants that share a reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProblemGroup {
    pub state: DriftState,
    /// The reason with the tenant's own id replaced by `<tenant>`, so one cause is one group.
    pub reason: String,
    pub tenants: Vec<String>,
}

/// The whole drift picture.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftReport {
    /// The highest version on disk (`None` for an empty migrations directory).
    pub latest: Option<i32>,
    pub migration_count: usize,
    /// Sorted by tenant id.
    pub tenants: Vec<TenantDrift>,
    pub counts: DriftCounts,
    /// Newest version first, tenants without history last.
    pub versions: Vec<VersionRow>,
    /// Ahead groups, then diverged, then unreachable; within a state, biggest group first.
    pub problems: Vec<ProblemGroup>,
    /// Project names by id, for showing tenants as people know them.
    pub names: HashMap<String, String>,
}

/// Count and group classified tenants.
pub fn aggregate(planned: &[PlannedVersion], mut tenants: Vec<TenantDrift>) -> DriftReport {
    tenants.sort_by(|left, right| left.tenant.cmp(&right.tenant));
    let mut counts = DriftCounts {
        total: tenants.len(),
        ..DriftCounts::default()
    };
    let mut rows: BTreeMap<Option<i32>, VersionRow> = BTreeMap::new();
    let mut groups: BTreeMap<(DriftState, String), Vec<String>> = BTreeMap::new();
    for tenant in &tenants {
        match tenant.state {
            DriftState::UpToDate => counts.up_to_date += 1,
            DriftState::Behind => counts.behind += 1,
            DriftState::Ahead => counts.ahead += 1,
            DriftState::Diverged => counts.diverged += 1,
            DriftState::Unreachable => counts.unreachable += 1,
        }
        match tenant.state {
            DriftState::UpToDate | DriftState::Behind => {
                *counts
                    .by_version
                    .entry(version_key(tenant.version))
                    .or_default() += 1;
                // Agreeing tenants at one version share their pending list (every file above
                // it), so one row per version holds them all.
                rows.entry(tenant.version)
                    .or_insert_with(|| VersionRow {
                        version: tenant.version,
                        state: tenant.state,
                        pending: tenant.pending.clone(),
                        tenants: Vec::new(),
                    })
                    .tenants
                    .push(tenant.tenant.clone());
            }
            DriftState::Ahead | DriftState::Diverged | DriftState::Unreachable => {
                let reason = crate::report::group::without_request_ids(
                    tenant.reason.as_deref().unwrap_or("no reason recorded"),
                )
                .replace(tenant.tenant.as_str(), "<tenant>");
                groups
                    .entry((tenant.state, reason))
                    .or_default()
                    .push(tenant.tenant.clone());
            }
        }
    }
    let versions: Vec<VersionRow> = rows.into_values().rev().collect();
    let mut problems: Vec<ProblemGroup> = groups
        .into_iter()
        .map(|((state, reason), tenants)| ProblemGroup {
            state,
            reason,
            tenants,
        })
        .collect();
    problems.sort_by(|left, right| {
        left.state
            .cmp(&right.state)
            .then(right.tenants.len().cmp(&left.tenants.len()))
            .then(left.reason.cmp(&right.reason))
    });
    DriftReport {
        latest: planned.iter().map(|migration| migration.version).max(),
        migration_count: planned.len(),
        tenants,
        counts,
        versions,
        problems,
        names: HashMap::new(),
    }
}

fn version_key(version: Option<i32>) -> String {
    version.map_or_else(|| "none".to_string(), |version| version.to_string())
}

impl DriftReport {
    /// Name the tenants (project id to project name) in the text and JSON.
    pub fn with_names(mut self, names: HashMap<String, String>) -> DriftReport {
        for tenant in &mut self.tenants {
            if let Some(name) = names.get(&tenant.tenant) {
                tenant.tenant_name = name.clone();
            }
        }
        self.names = names;
        self
    }

    /// 1 when any tenant diverges, is ahead of the files, or cannot be probed (drift cannot be
    /// ruled out), else 0. Tenants that are merely behind are the normal state between rollouts.
    pub fn exit_status(&self) -> ExitStatus {
        if self.counts.diverged + self.counts.ahead + self.counts.unreachable > 0 {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        }
    }

    /// The `--output json` document.
    pub fn to_json(&self, migrations_dir: &str) -> serde_json::Value {
        serde_json::json!({
            "migrations": {
                "dir": migrations_dir,
                "latest": self.latest,
                "count": self.migration_count,
            },
            "tenants": self.tenants,
            "counts": self.counts,
            "problems": self.problems,
        })
    }
}

/// `V3, V4` for short lists, `V1..V9 (9 versions)` for one long contiguous run.
pub fn format_versions(versions: &[i32]) -> String {
    let contiguous = versions.windows(2).all(|pair| pair[1] == pair[0] + 1);
    match versions {
        [] => "none".to_string(),
        [first, .., last] if versions.len() > 3 && contiguous => {
            format!("V{first}..V{last} ({} versions)", versions.len())
        }
        _ => versions
            .iter()
            .map(|version| format!("V{version}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub(crate) fn tenant_list(tenants: &[String], names: &HashMap<String, String>) -> String {
    let shown: Vec<String> = tenants
        .iter()
        .take(TENANTS_SHOWN)
        .map(|tenant| match names.get(tenant) {
            Some(name) if !name.is_empty() && name != tenant => format!("{name} ({tenant})"),
            _ => tenant.clone(),
        })
        .collect();
    let mut text = shown.join(", ");
    if tenants.len() > TENANTS_SHOWN {
        text.push_str(&format!(
            " and {} more (--output json lists all)",
            tenants.len() - TENANTS_SHOWN
        ));
    }
    text
}

/// The 80-column table: counts per version, then the diverged and unreachable tenants grouped
/// by reason, each with what to do next.
pub fn render_text(report: &DriftReport, migrations_dir: &str) -> String {
    let mut out = String::new();
    let latest = report.latest.map_or_else(
        || "no migrations".to_string(),
        |version| format!("latest V{version}"),
    );
    wrap_into(
        &mut out,
        &format!(
            "drift: {} against {} in {migrations_dir} ({latest})",
            plural(report.counts.total, "tenant"),
            plural(report.migration_count, "migration"),
        ),
        "",
        "  ",
    );
    out.push('\n');
    out.push_str(&format!(
        "  {:<14}{:>8}  {}\n",
        "version", "tenants", "state"
    ));
    for row in &report.versions {
        let label = row
            .version
            .map_or_else(|| "no history".to_string(), |version| format!("V{version}"));
        let state = match row.state {
            DriftState::Behind => format!("behind, pending {}", format_versions(&row.pending)),
            _ => "up to date".to_string(),
        };
        out.push_str(&format!("  {label:<14}{:>8}  {state}\n", row.tenants.len()));
        if row.state == DriftState::Behind {
            wrap_into(
                &mut out,
                &tenant_list(&row.tenants, &report.names),
                &" ".repeat(26),
                &" ".repeat(26),
            );
        }
    }
    out.push_str(&format!("  {:<14}{:>8}\n", "ahead", report.counts.ahead));
    out.push_str(&format!(
        "  {:<14}{:>8}\n",
        "diverged", report.counts.diverged
    ));
    out.push_str(&format!(
        "  {:<14}{:>8}\n",
        "unreachable", report.counts.unreachable
    ));

    let sections = [
        (
            DriftState::Diverged,
            report.counts.diverged,
            format!(
                "DIVERGED: {} whose history disagrees with {migrations_dir} (`apply` will not touch them):",
                plural(report.counts.diverged, "tenant")
            ),
            "next: restore the edited or deleted migration files from version control (the history table records what ran), or repair these tenants by hand; then run drift again.",
        ),
        (
            DriftState::Ahead,
            report.counts.ahead,
            format!(
                "AHEAD: {} already {} migrations newer than {migrations_dir} (a later release reached them):",
                plural(report.counts.ahead, "tenant"),
                if report.counts.ahead == 1 {
                    "has"
                } else {
                    "have"
                }
            ),
            "next: compare against the newer migrations (pull the branch that has them, or pass the newer plan); `apply` of this older plan leaves these tenants alone.",
        ),
        (
            DriftState::Unreachable,
            report.counts.unreachable,
            format!(
                "UNREACHABLE: {} could not be probed (drift not ruled out):",
                plural(report.counts.unreachable, "tenant")
            ),
            "next: a project deleted since planning needs a new plan (`schemafleet plan`); otherwise check NEON_API_KEY, the tenant ids and the database and role (a suspended compute can take seconds to wake: run drift again first).",
        ),
    ];
    for (state, count, heading, next) in sections {
        if count == 0 {
            continue;
        }
        out.push('\n');
        wrap_into(&mut out, &heading, "", "  ");
        render_groups(&mut out, report, state);
        wrap_into(&mut out, next, "  ", "    ");
    }
    crate::terminal::escape_controls(&out)
}

fn render_groups(out: &mut String, report: &DriftReport, state: DriftState) {
    for group in report.problems.iter().filter(|group| group.state == state) {
        wrap_into(out, &format!("- {}", group.reason), "  ", "    ");
        wrap_into(
            out,
            &format!(
                "{}: {}",
                plural(group.tenants.len(), "tenant"),
                tenant_list(&group.tenants, &report.names)
            ),
            "    ",
            "      ",
        );
        if group.state == DriftState::Unreachable && group.reason.contains("not found") {
            wrap_into(
                out,
                &format!("next: {}", crate::report::group::PROJECT_GONE_NEXT_STEP),
                "    ",
                "      ",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::fixtures::{applied, planned};

    fn files() -> Vec<PlannedVersion> {
        vec![planned(1, "a"), planned(2, "b"), planned(3, "c")]
    }

    fn history(versions: &[i32]) -> Probe {
        let checksums = ["", "a", "b", "c"];
        Probe::History(
            versions
                .iter()
                .map(|&version| applied(version, checksums[version as usize]))
                .collect(),
        )
    }

    #[test]
    fn classifies_each_state_with_version_and_pending() {
        let planned = files();
        let up = classify("t-up", history(&[1, 2, 3]), &planned);
        assert_eq!((up.state, up.version), (DriftState::UpToDate, Some(3)));
        assert!(up.pending.is_empty() && up.reason.is_none());

        let behind = classify("t-behind", history(&[1]), &planned);
        assert_eq!(
            (behind.state, behind.version, behind.pending.clone()),
            (DriftState::Behind, Some(1), vec![2, 3])
        );

        let fresh = classify("t-fresh", history(&[]), &planned);
        assert_eq!(
            (fresh.state, fresh.version, fresh.pending.clone()),
            (DriftState::Behind, None, vec![1, 2, 3])
        );

        let edited = classify(
            "t-edit",
            Probe::History(vec![applied(1, "a"), applied(2, "zzz")]),
            &planned,
        );
        assert_eq!(
            (edited.state, edited.version),
            (DriftState::Diverged, Some(2))
        );
        assert!(edited.reason.as_deref().unwrap_or("").contains("V2__m2"));

        let missing = classify(
            "t-missing",
            Probe::History(vec![applied(0, "x"), applied(1, "a")]),
            &planned,
        );
        assert_eq!(missing.state, DriftState::Diverged);
        assert!(missing.reason.as_deref().unwrap_or("").contains("missing"));

        let ahead = classify(
            "t-ahead",
            Probe::History(vec![
                applied(1, "a"),
                applied(2, "b"),
                applied(3, "c"),
                applied(9, "x"),
            ]),
            &planned,
        );
        assert_eq!((ahead.state, ahead.version), (DriftState::Ahead, Some(9)));
        assert!(ahead.reason.as_deref().unwrap_or("").contains("V9 applied"));

        let gone = classify(
            "t-gone",
            Probe::Unreachable {
                reason: "connect: timed out".into(),
            },
            &planned,
        );
        assert_eq!((gone.state, gone.version), (DriftState::Unreachable, None));
        assert_eq!(gone.reason.as_deref(), Some("connect: timed out"));
    }

    fn sample_report() -> DriftReport {
        let planned = files();
        let probes = vec![
            ("t-05", history(&[1, 2, 3])),
            ("t-04", history(&[1, 2, 3])),
            ("t-03", history(&[1])),
            ("t-02", history(&[1])),
            ("t-01", history(&[])),
            (
                "t-06",
                Probe::History(vec![applied(1, "a"), applied(2, "edited")]),
            ),
            (
                "t-07",
                Probe::History(vec![applied(1, "a"), applied(2, "edited")]),
            ),
            (
                "t-08",
                Probe::Unreachable {
                    reason: "GET /projects/t-08/connection_uri: 404 project not found (request_id 1a2b-3c)".into(),
                },
            ),
            (
                "t-09",
                Probe::Unreachable {
                    reason: "GET /projects/t-09/connection_uri: 404 project not found (request_id 9f8e-7d)".into(),
                },
            ),
        ];
        let tenants = probes
            .into_iter()
            .map(|(tenant, probe)| classify(tenant, probe, &planned))
            .collect();
        aggregate(&planned, tenants)
    }

    #[test]
    fn aggregates_counts_rows_and_groups() {
        let report = sample_report();
        assert_eq!(report.latest, Some(3));
        assert_eq!(report.migration_count, 3);
        assert_eq!(
            (
                report.counts.total,
                report.counts.up_to_date,
                report.counts.behind,
                report.counts.diverged,
                report.counts.unreachable
            ),
            (9, 2, 3, 2, 2)
        );
        assert_eq!(report.counts.by_version.get("3"), Some(&2));
        assert_eq!(report.counts.by_version.get("1"), Some(&2));
        assert_eq!(report.counts.by_version.get("none"), Some(&1));
        assert!(
            report
                .tenants
                .windows(2)
                .all(|pair| pair[0].tenant < pair[1].tenant)
        );
        let row_versions: Vec<Option<i32>> =
            report.versions.iter().map(|row| row.version).collect();
        assert_eq!(row_versions, vec![Some(3), Some(1), None]);
        assert_eq!(report.versions[1].tenants, vec!["t-02", "t-03"]);
        assert_eq!(report.versions[1].pending, vec![2, 3]);
        // One edit on two tenants is one group; the per-tenant 404s are one group too.
        assert_eq!(report.problems.len(), 2);
        assert_eq!(report.problems[0].state, DriftState::Diverged);
        assert_eq!(report.problems[0].tenants, vec!["t-06", "t-07"]);
        assert_eq!(report.problems[1].state, DriftState::Unreachable);
        assert!(report.problems[1].reason.contains("/projects/<tenant>/"));
        assert_eq!(report.problems[1].tenants, vec!["t-08", "t-09"]);
        assert_eq!(report.exit_status(), ExitStatus::Failure);
    }

    #[test]
    fn behind_alone_exits_zero_and_empty_fleet_too() {
        let planned = files();
        let report = aggregate(&planned, vec![classify("t", history(&[1]), &planned)]);
        assert_eq!(report.exit_status(), ExitStatus::Success);
        let empty = aggregate(&planned, Vec::new());
        assert_eq!(empty.exit_status(), ExitStatus::Success);
        assert_eq!(empty.counts.total, 0);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json = sample_report().to_json("migrations");
        assert_eq!(json["migrations"]["latest"], 3);
        assert_eq!(json["counts"]["diverged"], 2);
        assert_eq!(json["counts"]["by_version"]["none"], 1);
        let tenants = json["tenants"].as_array().unwrap();
        assert_eq!(tenants.len(), 9);
        let behind = &tenants[2];
        assert_eq!(behind["tenant"], "t-03");
        assert_eq!(behind["state"], "behind");
        assert_eq!(behind["version"], 1);
        assert_eq!(behind["pending"], serde_json::json!([2, 3]));
        assert!(behind["reason"].is_null());
    }

    #[test]
    fn text_fits_80_columns_and_names_problems() {
        let text = render_text(&sample_report(), "migrations");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        assert!(text.contains("behind, pending V2, V3"), "{text}");
        assert!(text.contains("t-02, t-03"), "{text}");
        assert!(text.contains("DIVERGED: 2 tenants"), "{text}");
        assert!(text.contains("2 tenants: t-06, t-07"), "{text}");
        assert!(text.contains("UNREACHABLE: 2 tenants"), "{text}");
        // A deleted project gets the same next step as in `apply`'s report.
        let flowing = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flowing.contains("re-run `schemafleet plan` to refresh the fleet"),
            "{text}"
        );
        // Tenants with a name are shown by it, with the id beside.
        let names = HashMap::from([("t-06".to_string(), "acme".to_string())]);
        let named = sample_report().with_names(names);
        assert!(render_text(&named, "migrations").contains("acme (t-06), t-07"));
        assert_eq!(named.to_json("m")["tenants"][5]["tenant_name"], "acme");
    }

    #[test]
    fn long_tenant_lists_are_cut_with_a_count() {
        let planned = files();
        let tenants = (0..20)
            .map(|index| classify(&format!("t-{index:02}"), history(&[1]), &planned))
            .collect();
        let text = render_text(&aggregate(&planned, tenants), "m");
        let flowing = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flowing.contains("t-07 and 12 more"), "{text}");
        assert!(!flowing.contains("t-08"), "{text}");
    }

    #[test]
    fn version_lists_collapse_long_runs() {
        assert_eq!(format_versions(&[]), "none");
        assert_eq!(format_versions(&[2, 3]), "V2, V3");
        assert_eq!(format_versions(&[1, 2, 3, 4, 5]), "V1..V5 (5 versions)");
        assert_eq!(format_versions(&[1, 3, 4, 5]), "V1, V3, V4, V5");
    }
}

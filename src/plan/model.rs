//! The plan file: the reviewable contract between `schemafleet plan` and `schemafleet apply`.
//!
//! These types are a serialization boundary (a file a release pipeline commits), so they are
//! kept apart from the policy types and change only with [`PLAN_FORMAT_VERSION`].
//!
//! **Invariant:** every tenant appears in exactly one wave; waves keep the policy's order.

use serde::{Deserialize, Serialize};

/// Bumped when the plan file's meaning changes; `apply` refuses other versions.
///
/// Version 2: each wave's tenants carry their project name and region beside the id.
pub const PLAN_FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format_version: u32,
    /// Digest of everything that decides what `apply` does (migrations, policy, waves), so the
    /// same inputs always give the same id, whatever the creation time.
    pub plan_id: String,
    /// RFC 3339, UTC. The only field that differs between two plans of the same inputs.
    pub created_at: String,
    pub policy: PlannedPolicy,
    pub migrations: PlannedMigrations,
    pub fleet: FleetSummary,
    pub waves: Vec<PlannedWave>,
    /// What the lint predicted when the plan was written (warnings and acknowledgements: a
    /// plan with denied findings is never written). Part of the plan id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lint: Option<PlannedLint>,
}

/// The lint's settings and its findings over the plan's migrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedLint {
    pub settings: crate::lint::LintSettings,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<crate::lint::Finding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acknowledged: Vec<crate::lint::Acknowledged>,
}

impl PlannedLint {
    pub fn new(
        settings: &crate::lint::LintSettings,
        report: crate::lint::LintReport,
    ) -> PlannedLint {
        PlannedLint {
            settings: settings.clone(),
            findings: report.findings,
            acknowledged: report.acknowledged,
        }
    }

    pub fn report(&self) -> crate::lint::LintReport {
        crate::lint::LintReport {
            findings: self.findings.clone(),
            acknowledged: self.acknowledged.clone(),
        }
    }
}

/// The policy settings `apply` needs, copied into the plan so the plan alone decides the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedPolicy {
    /// The policy file as given on the command line, for humans.
    pub path: String,
    /// SHA-256 of the policy file's bytes.
    pub sha256: String,
    pub database: String,
    pub role: String,
    pub validation: Validation,
    pub restore_point: RestorePointKind,
    /// How a tenant's pending migrations are grouped into transactions.
    pub transaction: TransactionMode,
    pub lock_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub branch_ttl_s: u64,
    /// `max_lock_hold`: a validation branch that holds a write-blocking lock on an existing
    /// table longer than this fails the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lock_hold_ms: Option<u64>,
    /// Seeds the stable hash used for wave assignment and validation sampling.
    pub salt: String,
    /// Optional verification SQL run on each validation branch after migrating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyFile>,
    /// The policy's Neon API rate limit (requests per minute), when it sets one; it overrides
    /// the command line's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_limit_per_min: Option<u32>,
    /// The schemas a schema fingerprint covers (policy `schemas:`); empty for the default.
    /// Absent from plans that leave it at the default, so their plan ids do not change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// Policy `verify_schema: true`: a tenant whose schema differs from the reference at its
    /// version fails before anything is applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify_schema: bool,
    /// Where rollout events go (webhook by environment variable, command). Part of the plan id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::gates::spec::NotifySpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyFile {
    /// Relative to the plan file's directory.
    pub path: String,
    pub sha256: String,
}

/// How tenants are validated before their main branch changes. Written in the plan as the
/// policy spells it: `branch`, `none` or `{sample_percent: N}` (serde_yaml would otherwise
/// write the sample as a `!sample_percent N` tag).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "ValidationSpelling", into = "ValidationSpelling")]
pub enum Validation {
    /// Every tenant with pending migrations is validated on a throwaway branch.
    Branch,
    /// No validation branch.
    None,
    /// A stable sample of tenants (by hash of salt and tenant id) is validated.
    SamplePercent(f64),
}

/// [`Validation`] as plan files spell it. The JSON the plan id hashes is the same as before
/// (`"branch"`, `"none"`, `{"sample_percent":N}`), so plan ids do not change.
#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum ValidationSpelling {
    Word(ValidationWord),
    Sample { sample_percent: f64 },
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ValidationWord {
    Branch,
    None,
}

impl From<ValidationSpelling> for Validation {
    fn from(spelling: ValidationSpelling) -> Validation {
        match spelling {
            ValidationSpelling::Word(ValidationWord::Branch) => Validation::Branch,
            ValidationSpelling::Word(ValidationWord::None) => Validation::None,
            ValidationSpelling::Sample { sample_percent } => {
                Validation::SamplePercent(sample_percent)
            }
        }
    }
}

impl From<Validation> for ValidationSpelling {
    fn from(validation: Validation) -> ValidationSpelling {
        match validation {
            Validation::Branch => ValidationSpelling::Word(ValidationWord::Branch),
            Validation::None => ValidationSpelling::Word(ValidationWord::None),
            Validation::SamplePercent(sample_percent) => {
                ValidationSpelling::Sample { sample_percent }
            }
        }
    }
}

/// What the journal records as the point a rollback restores main to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestorePointKind {
    /// The validation branch's branch point on main (`parent_lsn`): no extra API call.
    BranchPoint,
    /// An explicit backup branch of main created just before applying: one extra API call,
    /// survives a short history window.
    BackupBranch,
    /// No restore point: rollback is refused for this plan.
    None,
}

/// How a tenant's pending migrations are grouped into transactions, on the validation branch
/// and on main alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionMode {
    /// One transaction per migration, each with its history row: how migration authors run
    /// their files (refinery's, sqlx's and `psql -1 -f`'s semantics). A failure leaves the
    /// migrations before it committed.
    #[default]
    PerMigration,
    /// All of a tenant's pending migrations in one transaction: never half-migrated, but a
    /// migration cannot use what an earlier one of the release must commit first (an enum
    /// label added with `ALTER TYPE … ADD VALUE`).
    PerRelease,
}

impl TransactionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionMode::PerMigration => "per_migration",
            TransactionMode::PerRelease => "per_release",
        }
    }
}

impl RestorePointKind {
    /// As the policy and the plan spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RestorePointKind::BranchPoint => "branch_point",
            RestorePointKind::BackupBranch => "backup_branch",
            RestorePointKind::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedMigrations {
    /// The migrations directory, relative to the plan file's directory.
    pub dir: String,
    pub items: Vec<PlannedMigration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedMigration {
    pub version: i32,
    pub name: String,
    /// SHA-256 of the file's bytes: schemafleet's identity of the migration.
    pub sha256: String,
    /// refinery's checksum (SipHash-1-3 of name, version and SQL), as stored in its history table.
    pub checksum: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_transaction: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSummary {
    /// `neon` or `file:<path>`.
    pub source: String,
    pub discovered: usize,
    pub planned: usize,
    #[serde(default)]
    pub excluded: Vec<ExcludedTenant>,
    /// Projects the Neon API could not list (`unavailable_project_ids`): never silently dropped.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// `source: postgres`: how `apply` reads the catalog again for main's connection URIs.
    /// Neither this nor `connection_uris` is part of the plan id: they say how to reach the
    /// tenants, not what to do to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<PlannedCatalog>,
    /// How many planned tenants the source gave a connection URI (connected to without an API
    /// call); the URIs themselves are never in the plan.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connection_uris: usize,
}

/// The catalog query of `fleet.source: postgres`, as `apply` runs it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedCatalog {
    /// The environment variable holding the catalog database's URL (the name, never the URL).
    pub url_env: String,
    pub query: String,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExcludedTenant {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedWave {
    pub name: String,
    pub concurrency: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_percent: Option<f64>,
    /// Seconds to wait after this wave before the next starts.
    #[serde(default)]
    pub bake_s: u64,
    /// Run after the wave's tenants finish and at the end of its bake; a failing one halts
    /// the rollout. Part of the plan id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::gates::spec::CheckSpec>,
    /// `required`: `apply` stops before this wave until `schemafleet approve` records it.
    #[serde(default, skip_serializing_if = "crate::gates::spec::Approval::is_none")]
    pub approval: crate::gates::spec::Approval,
    /// Sorted by id.
    pub tenants: Vec<PlannedTenant>,
}

/// A tenant as the plan lists it: the Neon project id `apply` works on, and the name and
/// region a reviewer recognises it by (labels only: they do not change the plan id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedTenant {
    pub id: String,
    /// The project name; empty when the fleet's source has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
}

impl PlannedTenant {
    /// A tenant known only by its id (tests, and plans of sources without names).
    pub fn from_id(id: impl Into<String>) -> PlannedTenant {
        PlannedTenant {
            id: id.into(),
            name: String::new(),
            region: String::new(),
        }
    }

    /// `name (id)` for people, or the id alone when the tenant has no name of its own. Names
    /// come from the fleet (a Neon project's name is anyone's text), so control characters are
    /// escaped here, wherever the label is printed.
    pub fn label(&self) -> String {
        let label = if self.name.is_empty() || self.name == self.id {
            self.id.clone()
        } else {
            format!("{} ({})", self.name, self.id)
        };
        crate::terminal::escape_controls(&label)
    }
}

impl Plan {
    /// Total number of tenants across all waves.
    pub fn tenant_count(&self) -> usize {
        self.waves.iter().map(|wave| wave.tenants.len()).sum()
    }

    pub fn wave(&self, name: &str) -> Option<&PlannedWave> {
        self.waves.iter().find(|wave| wave.name == name)
    }

    /// The planned tenant with this id, and its wave.
    pub fn tenant(&self, tenant_id: &str) -> Option<(&PlannedTenant, &PlannedWave)> {
        self.waves
            .iter()
            .find_map(|wave| wave.tenant(tenant_id).map(|tenant| (tenant, wave)))
    }

    /// `name (id)` of a planned tenant, or the id alone (also for an id the plan lacks).
    pub fn tenant_label(&self, tenant_id: &str) -> String {
        self.tenant(tenant_id)
            .map_or_else(|| tenant_id.to_string(), |(tenant, _)| tenant.label())
    }

    /// Every planned tenant with its wave, in plan order.
    pub fn tenants(&self) -> impl Iterator<Item = (&PlannedTenant, &PlannedWave)> {
        self.waves
            .iter()
            .flat_map(|wave| wave.tenants.iter().map(move |tenant| (tenant, wave)))
    }

    /// The ids of the tenants an operator means by `reference`: a project id of the plan, or
    /// the name of one or more of its tenants (several when projects share a name).
    pub fn resolve_tenant(&self, reference: &str) -> Vec<&PlannedTenant> {
        if let Some((tenant, _)) = self.tenant(reference) {
            return vec![tenant];
        }
        self.tenants()
            .map(|(tenant, _)| tenant)
            .filter(|tenant| tenant.name == reference)
            .collect()
    }
}

impl PlannedWave {
    /// This wave's tenant with this id (`load_plan` checks that waves are sorted by id).
    pub fn tenant(&self, tenant_id: &str) -> Option<&PlannedTenant> {
        self.tenants
            .binary_search_by(|tenant| tenant.id.as_str().cmp(tenant_id))
            .ok()
            .map(|idx| &self.tenants[idx])
    }

    /// This wave's tenant ids, in order.
    pub fn tenant_ids(&self) -> impl Iterator<Item = &str> {
        self.tenants.iter().map(|tenant| tenant.id.as_str())
    }

    /// Whether `n_failed` failures of `n_tenants` exceed this wave's failure budget.
    ///
    /// With neither budget set, any failure exceeds it: a wave without a budget is strict.
    pub fn budget_exceeded(&self, n_failed: usize) -> bool {
        let n_tenants = self.tenants.len();
        let over_absolute = self.max_failures.map(|max| n_failed > max);
        let over_percent = self
            .max_failure_percent
            .map(|percent| (n_failed as f64) > (percent / 100.0) * n_tenants as f64);
        match (over_absolute, over_percent) {
            (None, None) => n_failed > 0,
            (Some(a), None) => a,
            (None, Some(p)) => p,
            (Some(a), Some(p)) => a || p,
        }
    }
}

/// A plan of these waves with placeholder settings, for unit tests of its readers.
#[cfg(test)]
pub fn test_plan(waves: Vec<PlannedWave>) -> Plan {
    let n_tenants = waves.iter().map(|wave| wave.tenants.len()).sum();
    Plan {
        lint: None,
        format_version: PLAN_FORMAT_VERSION,
        plan_id: "0123456789abcdef".into(),
        created_at: "2026-12-01T00:00:00Z".into(),
        policy: PlannedPolicy {
            path: "p.yaml".into(),
            sha256: "0".into(),
            database: "neondb".into(),
            role: "owner".into(),
            validation: Validation::Branch,
            restore_point: RestorePointKind::BranchPoint,
            transaction: TransactionMode::PerMigration,
            lock_timeout_ms: 1,
            statement_timeout_ms: 1,
            branch_ttl_s: 1,
            max_lock_hold_ms: None,
            salt: "s".into(),
            verify: None,
            api_rate_limit_per_min: None,
            schemas: Vec::new(),
            verify_schema: false,
            notify: None,
        },
        migrations: PlannedMigrations {
            dir: "m".into(),
            items: Vec::new(),
        },
        fleet: FleetSummary {
            source: "neon".into(),
            discovered: n_tenants,
            planned: n_tenants,
            excluded: Vec::new(),
            unavailable: Vec::new(),
            catalog: None,
            connection_uris: 0,
        },
        waves,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_found_by_id_or_by_name() {
        let named = |id: &str, name: &str| PlannedTenant {
            id: id.into(),
            name: name.into(),
            region: "aws-us-east-2".into(),
        };
        let mut canary = wave(None, None, 0);
        canary.tenants = vec![named("p-1", "acme"), named("p-2", "twin")];
        let mut rest = wave(None, None, 0);
        rest.name = "rest".into();
        rest.tenants = vec![named("p-3", "twin"), PlannedTenant::from_id("p-4")];
        let plan = test_plan(vec![canary, rest]);
        let ids = |reference: &str| -> Vec<String> {
            plan.resolve_tenant(reference)
                .iter()
                .map(|tenant| tenant.id.clone())
                .collect()
        };
        assert_eq!(ids("p-1"), vec!["p-1"]);
        assert_eq!(ids("acme"), vec!["p-1"]);
        assert_eq!(ids("twin"), vec!["p-2", "p-3"]);
        assert!(ids("nobody").is_empty());
        assert_eq!(plan.tenant_label("p-3"), "twin (p-3)");
        assert_eq!(plan.tenant_label("p-4"), "p-4");
        let hostile = named("p-5", "evil\u{1b}]0;pwned\u{7}");
        assert_eq!(hostile.label(), "evil\\x1b]0;pwned\\x07 (p-5)");
        assert_eq!(plan.tenant("p-3").unwrap().1.name, "rest");
    }

    fn wave(
        max_failures: Option<usize>,
        max_failure_percent: Option<f64>,
        n: usize,
    ) -> PlannedWave {
        PlannedWave {
            name: "w".into(),
            concurrency: 1,
            max_failures,
            max_failure_percent,
            bake_s: 0,
            checks: Vec::new(),
            approval: Default::default(),
            tenants: (0..n)
                .map(|i| PlannedTenant::from_id(format!("t{i}")))
                .collect(),
        }
    }

    #[test]
    fn budget_absolute_and_relative() {
        assert!(!wave(Some(0), None, 10).budget_exceeded(0));
        assert!(wave(Some(0), None, 10).budget_exceeded(1));
        assert!(!wave(Some(2), None, 10).budget_exceeded(2));
        assert!(wave(Some(2), None, 10).budget_exceeded(3));
        // 1% of 200 tenants is 2 failures.
        assert!(!wave(None, Some(1.0), 200).budget_exceeded(2));
        assert!(wave(None, Some(1.0), 200).budget_exceeded(3));
        // Either budget trips the wave.
        assert!(wave(Some(5), Some(1.0), 200).budget_exceeded(3));
        assert!(wave(None, None, 10).budget_exceeded(1));
    }
}

#[cfg(test)]
mod validation_spelling_tests {
    use super::Validation;

    #[test]
    fn plans_spell_validation_as_policies_do() {
        for (validation, text) in [
            (Validation::Branch, "branch\n"),
            (Validation::None, "none\n"),
            (Validation::SamplePercent(12.5), "sample_percent: 12.5\n"),
        ] {
            assert_eq!(serde_yaml::to_string(&validation).unwrap(), text);
            assert_eq!(
                serde_yaml::from_str::<Validation>(text).unwrap(),
                validation
            );
        }
        for bad in [
            "sample_percent: 10\nextra: 1\n",
            "sometimes\n",
            "!sample_percent 10\n",
        ] {
            assert!(serde_yaml::from_str::<Validation>(bad).is_err(), "{bad}");
        }
    }
}

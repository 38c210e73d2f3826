//! The plan file: the reviewable contract between `schemafleet plan` and `schemafleet apply`.
//!
//! These types are a serialization boundary (a file a release pipeline commits), so they are
//! kept apart from the policy types and change only with [`PLAN_FORMAT_VERSION`].
//!
//! **Invariant:** every tenant appears in exactly one wave; waves keep the policy's order.

use serde::{Deserialize, Serialize};

/// Bumped when the plan file's meaning changes; `apply` refuses other versions.
pub const PLAN_FORMAT_VERSION: u32 = 1;

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
    pub lock_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub branch_ttl_s: u64,
    /// Seeds the stable hash used for wave assignment and validation sampling.
    pub salt: String,
    /// Optional verification SQL run on each validation branch after migrating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyFile>,
    /// The policy's Neon API rate limit (requests per minute), when it sets one; it overrides
    /// the command line's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_rate_limit_per_min: Option<u32>,
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
    /// Neon project ids, sorted.
    pub tenants: Vec<String>,
}

impl Plan {
    /// Total number of tenants across all waves.
    pub fn tenant_count(&self) -> usize {
        self.waves.iter().map(|wave| wave.tenants.len()).sum()
    }

    pub fn wave(&self, name: &str) -> Option<&PlannedWave> {
        self.waves.iter().find(|wave| wave.name == name)
    }
}

impl PlannedWave {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            tenants: (0..n).map(|i| format!("t{i}")).collect(),
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

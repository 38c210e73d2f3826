//! The summary `schemafleet plan` prints: waves and sizes, migrations, what was left out, and
//! what the rollout will cost in Neon API calls and time at the rate limit.
//!
//! **Invariant:** the summary is computed from the plan alone (plus the rate limit), so it says
//! what `apply` will do with this file.

use std::fmt;

use serde::Serialize;

use super::cost;
use super::model::{Plan, PlannedTenant, RestorePointKind, TransactionMode, Validation};
use super::sampled_for_validation;
use crate::report::render::{plural, wrap_into};

/// Waves this small list their tenants in the summary, so a reviewer sees who the canaries are.
const LISTED_WAVE_TENANTS: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    pub plan_id: String,
    pub plan_path: String,
    pub fleet_source: String,
    pub discovered: usize,
    pub planned: usize,
    pub excluded: usize,
    /// Projects the Neon API could not list: not in any wave, and named here so nobody assumes
    /// they were migrated.
    pub unavailable: Vec<String>,
    pub migrations: Vec<SummaryMigration>,
    /// `per_migration` or `per_release`: how each tenant's migrations commit.
    pub transaction: TransactionMode,
    /// Policy `verify_schema`: each tenant's schema is checked before it is migrated.
    pub verify_schema: bool,
    /// Policy `schemas:` (empty: every schema but PostgreSQL's and Neon's own).
    pub schemas: Vec<String>,
    pub waves: Vec<SummaryWave>,
    pub validated_tenants: usize,
    pub api_calls: ApiCallEstimate,
    /// The account's limit the estimate assumes: the policy's `api_rate_limit_per_min`, else
    /// Neon's 700.
    pub api_rate_limit_per_min: u32,
    /// Minutes the estimated calls take at the rate limit (a lower bound on the run's length).
    pub estimated_api_minutes: f64,
    /// The client's own limit (`--api-rate-limit-per-min`) when it is lower: apply is paced
    /// by it, so the run takes this long instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_rate_limit_per_min: Option<u32>,
    /// Planned tenants connected to without an API call (the source gave their URI).
    pub connection_uris_from_source: usize,
    /// For a long run: what sampling the validation would bring it down to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::gates::spec::NotifySpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryMigration {
    pub version: i32,
    pub name: String,
    pub no_transaction: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryWave {
    pub name: String,
    pub tenants: usize,
    pub concurrency: usize,
    pub bake_s: u64,
    /// The wave's tenants when it has at most [`LISTED_WAVE_TENANTS`] (the canaries, usually).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listed_tenants: Vec<PlannedTenant>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::gates::spec::CheckSpec>,
    #[serde(skip_serializing_if = "crate::gates::spec::Approval::is_none")]
    pub approval: crate::gates::spec::Approval,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiCallEstimate {
    pub connection: usize,
    pub validation: usize,
    pub backup_branch: usize,
    pub total: usize,
}

/// Summarize `plan` (written at `plan_path`) at `api_rate_limit_per_min` requests per minute
/// (the account's limit).
pub fn summarize(plan: &Plan, plan_path: &str, api_rate_limit_per_min: u32) -> PlanSummary {
    summarize_paced(plan, plan_path, api_rate_limit_per_min, None)
}

/// [`summarize`], also saying how long the run takes when the client's own rate limit
/// (`client_rate_limit_per_min`) is below the account's.
pub fn summarize_paced(
    plan: &Plan,
    plan_path: &str,
    api_rate_limit_per_min: u32,
    client_rate_limit_per_min: Option<u32>,
) -> PlanSummary {
    let n_tenants = plan.tenant_count();
    let validated_tenants = match plan.policy.validation {
        Validation::Branch => n_tenants,
        Validation::None => 0,
        Validation::SamplePercent(_) => plan
            .waves
            .iter()
            .flat_map(|wave| wave.tenant_ids())
            .filter(|tenant_id| sampled_for_validation(plan, tenant_id))
            .count(),
    };
    let backup_branches = match plan.policy.restore_point {
        RestorePointKind::BackupBranch => n_tenants,
        RestorePointKind::BranchPoint | RestorePointKind::None => 0,
    };
    let from_source = plan.fleet.connection_uris.min(n_tenants);
    let needs = cost::TenantNeeds {
        connection_uri: n_tenants - from_source,
        validation: validated_tenants,
        backup_branch: backup_branches,
    };
    let requests = cost::estimate(needs, cost::REQUESTS_PER_TENANT);
    let (connection, validation, backup_branch) = (
        requests.connection_uri.round() as usize,
        requests.validation.round() as usize,
        requests.backup_branch.round() as usize,
    );
    let total = requests.total().round() as usize;
    let minutes = requests.minutes_at(api_rate_limit_per_min);
    let client_rate_limit_per_min =
        client_rate_limit_per_min.filter(|client| *client < api_rate_limit_per_min);
    let suggestion = (minutes > cost::LONG_RUN_MINUTES && validated_tenants > 0).then(|| {
        let sampled = cost::estimate(
            cost::TenantNeeds {
                validation: (validated_tenants as f64 * cost::SUGGESTED_SAMPLE_PERCENT / 100.0)
                    .ceil() as usize,
                ..needs
            },
            cost::REQUESTS_PER_TENANT,
        );
        format!(
            "that is a long run: validating a sample (`validation: {{sample_percent: {}}}`) takes {}; or run it a few waves at a time (`apply --until-wave`)",
            cost::SUGGESTED_SAMPLE_PERCENT,
            cost::approximate_duration(sampled.minutes_at(api_rate_limit_per_min))
        )
    });

    let mut warnings = Vec::new();
    for (wave_idx, wave) in plan.waves.iter().enumerate() {
        if wave.tenants.is_empty() {
            let purpose = if wave_idx == 0 {
                "to have a canary"
            } else {
                "to give it some"
            };
            warnings.push(format!(
                "wave `{}` is empty: its percent takes no tenant of this {}-tenant fleet (places are a stable hash, so shares are rough on small fleets); name tenants in it {purpose}",
                wave.name, n_tenants
            ));
        }
    }
    if let Some(warning) = shared_names_warning(plan) {
        warnings.push(warning);
    }
    if !plan.fleet.unavailable.is_empty() {
        let n_unavailable = plan.fleet.unavailable.len();
        warnings.push(format!(
            "{} could not be listed by the Neon API and {} in no wave: re-run `schemafleet plan` when they are available",
            plural(n_unavailable, "project"),
            if n_unavailable == 1 { "is" } else { "are" }
        ));
    }

    PlanSummary {
        plan_id: plan.plan_id.clone(),
        plan_path: plan_path.to_string(),
        fleet_source: plan.fleet.source.clone(),
        discovered: plan.fleet.discovered,
        planned: plan.fleet.planned,
        excluded: plan.fleet.excluded.len(),
        unavailable: plan.fleet.unavailable.clone(),
        migrations: plan
            .migrations
            .items
            .iter()
            .map(|migration| SummaryMigration {
                version: migration.version,
                name: migration.name.clone(),
                no_transaction: migration.no_transaction,
            })
            .collect(),
        transaction: plan.policy.transaction,
        verify_schema: plan.policy.verify_schema,
        schemas: plan.policy.schemas.clone(),
        waves: plan
            .waves
            .iter()
            .map(|wave| SummaryWave {
                name: wave.name.clone(),
                tenants: wave.tenants.len(),
                concurrency: wave.concurrency,
                bake_s: wave.bake_s,
                listed_tenants: if wave.tenants.len() <= LISTED_WAVE_TENANTS {
                    wave.tenants.clone()
                } else {
                    Vec::new()
                },
                checks: wave.checks.clone(),
                approval: wave.approval,
            })
            .collect(),
        validated_tenants,
        api_calls: ApiCallEstimate {
            connection,
            validation,
            backup_branch,
            total,
        },
        api_rate_limit_per_min,
        estimated_api_minutes: minutes,
        client_rate_limit_per_min,
        connection_uris_from_source: from_source,
        suggestion,
        warnings,
        notify: plan.policy.notify.clone(),
    }
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan {} written to {}", self.plan_id, self.plan_path)?;
        writeln!(
            f,
            "fleet: {} planned from {} ({} discovered, {} excluded, {} unavailable)",
            plural(self.planned, "tenant"),
            self.fleet_source,
            self.discovered,
            self.excluded,
            self.unavailable.len()
        )?;
        let transactions = match self.transaction {
            TransactionMode::PerMigration => "one transaction per migration",
            TransactionMode::PerRelease => "one transaction per tenant for the release",
        };
        writeln!(
            f,
            "migrations ({}, {transactions}, `transaction: {}`):",
            self.migrations.len(),
            self.transaction.as_str()
        )?;
        for migration in &self.migrations {
            let marker = if migration.no_transaction {
                "  (no transaction)"
            } else {
                ""
            };
            writeln!(f, "  V{}__{}{marker}", migration.version, migration.name)?;
        }
        if self.verify_schema {
            let schemas = if self.schemas.is_empty() {
                "every schema but PostgreSQL's and Neon's own".to_string()
            } else {
                format!("schemas {}", self.schemas.join(", "))
            };
            writeln!(
                f,
                "verify_schema: each tenant's schema ({schemas}) must equal the reference at its\n  version before it is migrated"
            )?;
        }
        writeln!(f, "waves:")?;
        let name_width = self
            .waves
            .iter()
            .map(|wave| wave.name.len())
            .max()
            .unwrap_or(0);
        for wave in &self.waves {
            let bake = if wave.bake_s > 0 {
                format!(", then bake {}", format_seconds(wave.bake_s))
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:<name_width$}  {:>16}  concurrency {}{bake}",
                wave.name,
                plural(wave.tenants, "tenant"),
                wave.concurrency
            )?;
            for tenant in &wave.listed_tenants {
                let region = if tenant.region.is_empty() {
                    String::new()
                } else {
                    format!("  {}", tenant.region)
                };
                writeln!(f, "  {:<name_width$}    {}{region}", "", tenant.label())?;
            }
            if wave.approval == crate::gates::spec::Approval::Required {
                writeln!(
                    f,
                    "  {:<name_width$}    approval required before it starts (`schemafleet approve`)",
                    ""
                )?;
            }
            for check in &wave.checks {
                let mut line = String::new();
                wrap_into(
                    &mut line,
                    &format!("check {}: {}", check.name, check.describe()),
                    &format!("  {:<name_width$}    ", ""),
                    &format!("  {:<name_width$}      ", ""),
                );
                f.write_str(&line)?;
            }
        }
        if let Some(notify) = &self.notify {
            writeln!(f, "notify: {}", notify.describe())?;
        }
        let mut text = String::new();
        let from_source = if self.connection_uris_from_source > 0 {
            format!(
                "; none for the connection URIs of {}, which {} gives",
                plural(self.connection_uris_from_source, "tenant"),
                self.fleet_source
            )
        } else {
            String::new()
        };
        let paced = self
            .client_rate_limit_per_min
            .map(|client| {
                format!(
                    " ({} at this client's --api-rate-limit-per-min {client})",
                    cost::approximate_duration(
                        self.api_calls.total as f64 / f64::from(client.max(1))
                    )
                )
            })
            .unwrap_or_default();
        wrap_into(
            &mut text,
            &format!(
                "Neon API: ~{} requests ({} connection, {} validation for {}, {} backup branch{from_source}), {} at {} requests/min{paced}, if every tenant has migrations pending",
                self.api_calls.total,
                self.api_calls.connection,
                self.api_calls.validation,
                plural(self.validated_tenants, "tenant"),
                self.api_calls.backup_branch,
                cost::approximate_duration(self.estimated_api_minutes),
                self.api_rate_limit_per_min
            ),
            "",
            "  ",
        );
        if let Some(suggestion) = &self.suggestion {
            wrap_into(&mut text, &format!("note: {suggestion}"), "", "  ");
        }
        for project_id in self.unavailable.iter().take(20) {
            text.push_str(&format!("unavailable: {project_id}\n"));
        }
        for warning in &self.warnings {
            wrap_into(&mut text, &format!("warning: {warning}"), "", "  ");
        }
        f.write_str(&text)
    }
}

/// `90` → `1m30s`, `7200` → `2h`.
fn format_seconds(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || text.is_empty() {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// Names several tenants share: `--tenant NAME` refuses them, and a reviewer reading the plan
/// cannot tell them apart, so say so while the plan is reviewed.
fn shared_names_warning(plan: &Plan) -> Option<String> {
    let mut ids_by_name: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for tenant in plan.waves.iter().flat_map(|wave| wave.tenants.iter()) {
        if !tenant.name.is_empty() {
            ids_by_name
                .entry(&tenant.name)
                .or_default()
                .push(&tenant.id);
        }
    }
    let shared: Vec<String> = ids_by_name
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(name, ids)| format!("{name} ({})", ids.join(", ")))
        .collect();
    if shared.is_empty() {
        return None;
    }
    let shown = shared
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    let more = if shared.len() > 5 {
        format!(" and {} more", shared.len() - 5)
    } else {
        String::new()
    };
    Some(format!(
        "{} shared by several tenants: {shown}{more}; name them by id in `--tenant` and in the policy",
        if shared.len() == 1 {
            "1 name is".to_string()
        } else {
            format!("{} names are", shared.len())
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(format_seconds(0), "0s");
        assert_eq!(format_seconds(90), "1m30s");
        assert_eq!(format_seconds(7200), "2h");
        assert_eq!(format_seconds(3725), "1h2m5s");
    }
}

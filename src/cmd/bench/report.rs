//! Benchmark results and their rendering: one `mode=…` line per measured mode, the ratio lines
//! last, or one JSON document. Also the breakdown of a validated run's time, from its journal.
//!
//! **Invariant:** pure: functions of measured values, no I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::journal::{Event, Record};

/// One measured mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub tenants: usize,
    pub concurrency: usize,
    pub wall_s: f64,
    pub tenants_per_s: f64,
    pub peak_rss_mb: f64,
    /// Every HTTP request the client sent (operation polls and the preflight included), per tenant.
    pub api_calls_per_tenant: f64,
    /// Requests other than GET, per tenant.
    pub mutating_calls_per_tenant: f64,
    /// Requests the emulator answered, per tenant (the server's count of the same thing).
    pub emulator_requests_per_tenant: f64,
    /// 429 answers the client got (each retried).
    pub rate_limited: u64,
    /// Connections the server logged for the tool, per tenant.
    pub connections_per_tenant: f64,
    /// Tenants that ended as the mode expects (applied, up to date, or planned).
    pub succeeded: usize,
    pub failed: usize,
    /// Tenants whose history held the whole release when the fleet was reset after this mode
    /// (None when the mode leaves nothing to check).
    pub verified_complete: Option<usize>,
    pub note: Option<String>,
}

impl ModeResult {
    pub fn line(&self) -> String {
        format!(
            "mode={} tenants={} concurrency={} wall_s={:.3} tenants_per_s={:.2} peak_rss_mb={:.1} api_calls_per_tenant={:.2} connections_per_tenant={:.2}",
            self.mode,
            self.tenants,
            self.concurrency,
            self.wall_s,
            self.tenants_per_s,
            self.peak_rss_mb,
            self.api_calls_per_tenant,
            self.connections_per_tenant
        )
    }
}

/// Throughput of `mode` over raw's at the same concurrency.
pub fn ratio(results: &[ModeResult], mode: &str, concurrency: usize) -> Option<f64> {
    let throughput = |name: &str| {
        results
            .iter()
            .find(|result| result.mode == name && result.concurrency == concurrency)
            .map(|result| result.tenants_per_s)
    };
    let raw = throughput("raw").filter(|raw| *raw > 0.0)?;
    Some(throughput(mode)? / raw)
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub concurrency: usize,
    pub apply_vs_raw: Option<f64>,
    pub validated_vs_raw: Option<f64>,
}

impl Ratios {
    pub fn line(&self) -> String {
        let show =
            |value: Option<f64>| value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
        format!(
            "apply_vs_raw={} validated_vs_raw={} concurrency={}",
            show(self.apply_vs_raw),
            show(self.validated_vs_raw),
            self.concurrency
        )
    }
}

/// Mean time per tenant between consecutive steps of a validated run, from journal timestamps.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Breakdown {
    /// Tenants that went through every step.
    pub tenants: usize,
    /// probed → branch_created: the create call, the emulator's branch copies, operation polls.
    pub create_branch_ms: f64,
    /// branch_created → branch_deleted: connect to the branch, migrate it, the delete call.
    pub migrate_branch_and_delete_ms: f64,
    /// branch_deleted → apply_started: journal records, connect and lock main.
    pub connect_lock_main_ms: f64,
    /// apply_started → applied: migrate main.
    pub migrate_main_ms: f64,
    /// Mean time a tenant is in flight (concurrency × wall / tenants, Little's law) minus the
    /// steps above: the connection-URI lookup and probe before `tenant_probed`.
    pub probe_and_rest_ms: f64,
    /// One copy of a tenant's database timed alone on the cluster after the run.
    pub one_branch_copy_alone_ms: f64,
}

impl Breakdown {
    pub fn line(&self, concurrency: usize) -> String {
        format!(
            "validated_breakdown concurrency={concurrency} tenants={} probe_and_rest_ms={:.1} create_branch_ms={:.1} migrate_branch_and_delete_ms={:.1} connect_lock_main_ms={:.1} migrate_main_ms={:.1} one_branch_copy_alone_ms={:.1}",
            self.tenants,
            self.probe_and_rest_ms,
            self.create_branch_ms,
            self.migrate_branch_and_delete_ms,
            self.connect_lock_main_ms,
            self.migrate_main_ms,
            self.one_branch_copy_alone_ms
        )
    }
}

/// Step timings of every tenant that was probed, branched, validated and applied in `records`.
pub fn breakdown(records: &[Record], mean_in_flight_ms: f64) -> Breakdown {
    #[derive(Default)]
    struct Steps {
        probed: Option<f64>,
        branch_created: Option<f64>,
        branch_deleted: Option<f64>,
        apply_started: Option<f64>,
        applied: Option<f64>,
    }
    let mut steps: BTreeMap<&str, Steps> = BTreeMap::new();
    for record in records {
        let Some(at) = crate::clock::parse_rfc3339(&record.at) else {
            continue;
        };
        let at_ms = (at.unix_timestamp_nanos() / 1_000) as f64 / 1000.0;
        let (tenant, slot): (&str, fn(&mut Steps) -> &mut Option<f64>) = match &record.event {
            Event::TenantProbed { tenant, .. } => (tenant, |steps| &mut steps.probed),
            Event::BranchCreated { tenant, .. } => (tenant, |steps| &mut steps.branch_created),
            Event::BranchDeleted { tenant, .. } => (tenant, |steps| &mut steps.branch_deleted),
            Event::ApplyStarted { tenant, .. } => (tenant, |steps| &mut steps.apply_started),
            Event::Applied { tenant, .. } => (tenant, |steps| &mut steps.applied),
            _ => continue,
        };
        *slot(steps.entry(tenant).or_default()) = Some(at_ms);
    }
    let mut sums = [0.0f64; 4];
    let mut complete = 0usize;
    for step in steps.values() {
        let (Some(probed), Some(created), Some(deleted), Some(started), Some(applied)) = (
            step.probed,
            step.branch_created,
            step.branch_deleted,
            step.apply_started,
            step.applied,
        ) else {
            continue;
        };
        complete += 1;
        sums[0] += created - probed;
        sums[1] += deleted - created;
        sums[2] += started - deleted;
        sums[3] += applied - started;
    }
    if complete == 0 {
        return Breakdown::default();
    }
    let mean = |sum: f64| sum / complete as f64;
    let measured: f64 = sums.iter().map(|sum| mean(*sum)).sum();
    Breakdown {
        tenants: complete,
        create_branch_ms: mean(sums[0]),
        migrate_branch_and_delete_ms: mean(sums[1]),
        connect_lock_main_ms: mean(sums[2]),
        migrate_main_ms: mean(sums[3]),
        probe_and_rest_ms: (mean_in_flight_ms - measured).max(0.0),
        one_branch_copy_alone_ms: 0.0,
    }
}

/// The rate-limited validated run against what the limit allows.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitedRun {
    pub limit_per_min: u32,
    pub client_limit_per_min: u32,
    pub result: ModeResult,
    /// `limit / 60 / api_calls_per_tenant`: the throughput the limit allows for the calls this
    /// run made per tenant.
    pub allowed_tenants_per_s: f64,
    pub fraction_of_allowed: f64,
}

impl RateLimitedRun {
    pub fn line(&self) -> String {
        format!(
            "rate_limited limit_per_min={} client_limit_per_min={} api_calls_per_tenant={:.2} allowed_tenants_per_s={:.3} tenants_per_s={:.3} fraction_of_allowed={:.3} rate_limited_answers={} failed={}",
            self.limit_per_min,
            self.client_limit_per_min,
            self.result.api_calls_per_tenant,
            self.allowed_tenants_per_s,
            self.result.tenants_per_s,
            self.fraction_of_allowed,
            self.result.rate_limited,
            self.result.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, at: &str, event: Event) -> Record {
        Record {
            v: 1,
            seq,
            at: at.to_string(),
            event,
        }
    }

    fn result(mode: &str, concurrency: usize, tenants_per_s: f64) -> ModeResult {
        ModeResult {
            mode: mode.into(),
            tenants: 10,
            concurrency,
            wall_s: 1.0,
            tenants_per_s,
            peak_rss_mb: 12.0,
            api_calls_per_tenant: 1.0,
            mutating_calls_per_tenant: 0.0,
            emulator_requests_per_tenant: 1.0,
            rate_limited: 0,
            connections_per_tenant: 2.0,
            succeeded: 10,
            failed: 0,
            verified_complete: None,
            note: None,
        }
    }

    #[test]
    fn ratios_compare_throughput_at_the_same_concurrency() {
        let results = vec![
            result("raw", 16, 80.0),
            result("apply", 16, 72.0),
            result("raw", 32, 90.0),
            result("validated", 32, 9.0),
        ];
        assert_eq!(ratio(&results, "apply", 16), Some(0.9));
        assert_eq!(ratio(&results, "validated", 32), Some(0.1));
        assert_eq!(ratio(&results, "validated", 16), None);
        let line = Ratios {
            concurrency: 16,
            apply_vs_raw: Some(0.9),
            validated_vs_raw: None,
        }
        .line();
        assert_eq!(
            line,
            "apply_vs_raw=0.900 validated_vs_raw=n/a concurrency=16"
        );
        assert_eq!(
            results[0].line(),
            "mode=raw tenants=10 concurrency=16 wall_s=1.000 tenants_per_s=80.00 peak_rss_mb=12.0 api_calls_per_tenant=1.00 connections_per_tenant=2.00"
        );
    }

    #[test]
    fn breakdown_averages_complete_tenants_only() {
        let tenant = |name: &str| name.to_string();
        let records = vec![
            record(
                1,
                "2026-01-01T00:00:00.000Z",
                Event::TenantProbed {
                    tenant: tenant("a"),
                    wave: "all".into(),
                    current_version: None,
                    pending: vec![1],
                },
            ),
            record(
                2,
                "2026-01-01T00:00:00.100Z",
                Event::BranchCreated {
                    tenant: tenant("a"),
                    wave: "all".into(),
                    purpose: "validate".into(),
                    branch_id: "br".into(),
                    branch_name: "n".into(),
                    parent_branch_id: None,
                    parent_lsn: None,
                    expires_at: None,
                },
            ),
            record(
                3,
                "2026-01-01T00:00:00.300Z",
                Event::BranchDeleted {
                    tenant: tenant("a"),
                    branch_id: "br".into(),
                },
            ),
            record(
                4,
                "2026-01-01T00:00:00.310Z",
                Event::ApplyStarted {
                    tenant: tenant("a"),
                    wave: "all".into(),
                    versions: vec![1],
                },
            ),
            record(
                5,
                "2026-01-01T00:00:00.350Z",
                Event::Applied {
                    tenant: tenant("a"),
                    wave: "all".into(),
                    versions: vec![1],
                    lock_retries: 0,
                },
            ),
            record(
                6,
                "2026-01-01T00:00:00.000Z",
                Event::TenantProbed {
                    tenant: tenant("b"),
                    wave: "all".into(),
                    current_version: None,
                    pending: vec![1],
                },
            ),
        ];
        let breakdown = breakdown(&records, 500.0);
        assert_eq!(breakdown.tenants, 1);
        assert!(
            (breakdown.create_branch_ms - 100.0).abs() < 1e-6,
            "{breakdown:?}"
        );
        assert!((breakdown.migrate_branch_and_delete_ms - 200.0).abs() < 1e-6);
        assert!((breakdown.connect_lock_main_ms - 10.0).abs() < 1e-6);
        assert!((breakdown.migrate_main_ms - 40.0).abs() < 1e-6);
        assert!((breakdown.probe_and_rest_ms - 150.0).abs() < 1e-6);
    }
}

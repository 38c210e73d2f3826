//! Benchmark results and their rendering: one `mode=…` line per measured mode, the ratio lines
//! last, or one JSON document. Also the breakdown of a validated run's time, from the executor's
//! step timings.
//!
//! **Invariant:** pure: functions of measured values, no I/O.

use serde::Serialize;

use crate::executor::timings::StepTiming;

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
    /// Of those, reads of operations (`GET …/operations[/{id}]`), per tenant: the polls.
    pub operation_reads_per_tenant: f64,
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
    /// What the mode cost the endpoints behind the emulator's proxy.
    #[serde(flatten)]
    pub compute: ComputeUse,
    /// The executor's step timings (`apply` modes only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timings: Vec<StepTiming>,
}

/// The proxy's and the computes' counters over one mode, per tenant (main and branches).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ComputeUse {
    /// Client-visible round trips through the proxy (each one paid the round-trip time).
    pub round_trips_per_tenant: f64,
    /// Suspended endpoints the mode woke (every tenant is suspended before a mode starts).
    pub cold_starts_per_tenant: f64,
    /// Seconds computes ran during the mode (from each wake to its suspension or the mode's end).
    pub compute_s_per_tenant: f64,
    /// Round trips on the tenants' main endpoints alone, connection set-ups included.
    pub main_round_trips_per_tenant: f64,
    /// Connections to the tenants' main endpoints.
    pub main_connections_per_tenant: f64,
    /// Main's round trips after its connections were set up: each set-up costs
    /// [`SETUP_ROUND_TRIPS`] (startup, then SCRAM's two exchanges; no TLS behind the proxy).
    pub main_round_trips_after_connect_per_tenant: f64,
    /// Top-level statements tenants' sessions ran (main and branches; PostgreSQL's own count,
    /// `pg_stat_statements`, so a failed statement is not counted).
    pub statements_per_tenant: f64,
}

/// Round trips a connection's set-up costs through the emulator's proxy with `sslmode=disable`:
/// the startup message (answered by the SCRAM challenge request), SCRAM's client-first and
/// client-final messages. Checked against the proxy's counters in `tests/it/economy.rs`.
pub const SETUP_ROUND_TRIPS: u64 = 3;

impl ModeResult {
    pub fn line(&self) -> String {
        format!(
            "mode={} tenants={} concurrency={} wall_s={:.3} tenants_per_s={:.2} peak_rss_mb={:.1} api_calls_per_tenant={:.2} connections_per_tenant={:.2} round_trips_per_tenant={:.1} main_round_trips_after_connect_per_tenant={:.2} main_connections_per_tenant={:.2} statements_per_tenant={:.1} cold_starts_per_tenant={:.2} compute_s_per_tenant={:.2}",
            self.mode,
            self.tenants,
            self.concurrency,
            self.wall_s,
            self.tenants_per_s,
            self.peak_rss_mb,
            self.api_calls_per_tenant,
            self.connections_per_tenant,
            self.compute.round_trips_per_tenant,
            self.compute.main_round_trips_after_connect_per_tenant,
            self.compute.main_connections_per_tenant,
            self.compute.statements_per_tenant,
            self.compute.cold_starts_per_tenant,
            self.compute.compute_s_per_tenant
        )
    }
}

impl ComputeUse {
    /// The counters' growth from `before` (taken with every endpoint suspended) to `after`.
    /// `main_endpoints` are the tenants' main endpoints; `statements` what they ran.
    pub fn between(
        before: &crate::emulator::ComputeStats,
        after: &crate::emulator::ComputeStats,
        main_endpoints: &std::collections::HashSet<&str>,
        statements: u64,
        tenants: usize,
    ) -> ComputeUse {
        let per_tenant = |value: f64| {
            if tenants == 0 {
                0.0
            } else {
                value / tenants as f64
            }
        };
        // Endpoints counted before the mode started their counters there; new ones from 0.
        let grown = |pick: fn(&crate::emulator::EndpointStats) -> u64| -> u64 {
            after
                .endpoints
                .iter()
                .filter(|(id, _)| main_endpoints.contains(id.as_str()))
                .map(|(id, stats)| {
                    let earlier = before.endpoints.get(id).map_or(0, pick);
                    pick(stats).saturating_sub(earlier)
                })
                .sum()
        };
        let main_round_trips = grown(|stats| stats.round_trips);
        let main_connections = grown(|stats| stats.connections);
        ComputeUse {
            round_trips_per_tenant: per_tenant(
                after.round_trips.saturating_sub(before.round_trips) as f64,
            ),
            cold_starts_per_tenant: per_tenant(
                after.cold_starts.saturating_sub(before.cold_starts) as f64,
            ),
            compute_s_per_tenant: per_tenant((after.compute_s - before.compute_s).max(0.0)),
            main_round_trips_per_tenant: per_tenant(main_round_trips as f64),
            main_connections_per_tenant: per_tenant(main_connections as f64),
            main_round_trips_after_connect_per_tenant: per_tenant(
                main_round_trips.saturating_sub(SETUP_ROUND_TRIPS * main_connections) as f64,
            ),
            statements_per_tenant: per_tenant(statements as f64),
        }
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

/// Throughput of `mode` at `concurrency` over the `sequential` baseline's (one tenant at a
/// time, so measured once whatever the concurrencies).
pub fn ratio_to_sequential(results: &[ModeResult], mode: &str, concurrency: usize) -> Option<f64> {
    let sequential = results
        .iter()
        .find(|result| result.mode == "sequential")
        .map(|result| result.tenants_per_s)
        .filter(|throughput| *throughput > 0.0)?;
    let throughput = results
        .iter()
        .find(|result| result.mode == mode && result.concurrency == concurrency)?
        .tenants_per_s;
    Some(throughput / sequential)
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub concurrency: usize,
    pub apply_vs_raw: Option<f64>,
    pub apply_vs_sequential: Option<f64>,
    pub validated_vs_raw: Option<f64>,
}

impl Ratios {
    pub fn line(&self) -> String {
        let show =
            |value: Option<f64>| value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
        format!(
            "apply_vs_raw={} apply_vs_sequential={} validated_vs_raw={} concurrency={}",
            show(self.apply_vs_raw),
            show(self.apply_vs_sequential),
            show(self.validated_vs_raw),
            self.concurrency
        )
    }
}

/// Where a validated run's time went: the executor's own step timings (`timings` of
/// `apply --output json`), per tenant.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Breakdown {
    /// Tenants the run applied: the divisor of every figure.
    pub tenants: usize,
    /// Mean time a tenant is in flight: concurrency × wall / tenants (Little's law).
    pub in_flight_ms: f64,
    /// Each step's summed time over the run divided by `tenants`, in pipeline order.
    pub steps: Vec<(String, f64)>,
    /// `in_flight_ms` minus the steps: waits for a connection slot, the rate limiter's pauses
    /// before a call, task scheduling.
    pub unaccounted_ms: f64,
    /// Neon API steps (connection URI, create and delete branch with their operations).
    pub api_ms: f64,
    /// Migrating the branch and main (connects, locks and probes not included).
    pub migration_ms: f64,
    /// One copy of a tenant's database timed alone on the cluster after the run: the work
    /// behind each emulated branch creation (the bench fleet keeps no restore-window copies).
    pub one_branch_copy_alone_ms: f64,
}

impl Breakdown {
    pub fn line(&self, concurrency: usize) -> String {
        let steps: String = self
            .steps
            .iter()
            .map(|(step, ms)| format!(" {step}_ms={ms:.1}"))
            .collect();
        format!(
            "validated_breakdown concurrency={concurrency} tenants={} in_flight_ms={:.1}{steps} unaccounted_ms={:.1} api_ms={:.1} migration_ms={:.1} one_branch_copy_alone_ms={:.1}",
            self.tenants,
            self.in_flight_ms,
            self.unaccounted_ms,
            self.api_ms,
            self.migration_ms,
            self.one_branch_copy_alone_ms
        )
    }
}

/// Per-tenant step times of a run that applied `tenants` tenants, from its `timings`.
pub fn breakdown(timings: &[StepTiming], tenants: usize, in_flight_ms: f64) -> Breakdown {
    if tenants == 0 {
        return Breakdown::default();
    }
    let per_tenant = |timing: &StepTiming| timing.total_ms / tenants as f64;
    let sum_of = |names: &[&str]| -> f64 {
        timings
            .iter()
            .filter(|timing| names.contains(&timing.step.as_str()))
            .map(per_tenant)
            .sum()
    };
    let steps: Vec<(String, f64)> = timings
        .iter()
        .map(|timing| (timing.step.clone(), per_tenant(timing)))
        .collect();
    let measured: f64 = steps.iter().map(|(_, ms)| ms).sum();
    Breakdown {
        tenants,
        in_flight_ms,
        unaccounted_ms: (in_flight_ms - measured).max(0.0),
        api_ms: sum_of(&[
            "connection_uri",
            "create_branch",
            "delete_branch",
            "settle_branch",
        ]),
        migration_ms: sum_of(&["migrate_branch", "migrate_main"]),
        steps,
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
            operation_reads_per_tenant: 0.0,
            rate_limited: 0,
            connections_per_tenant: 2.0,
            succeeded: 10,
            failed: 0,
            verified_complete: None,
            note: None,
            compute: ComputeUse::default(),
            timings: Vec::new(),
        }
    }

    #[test]
    fn ratios_compare_throughput_at_the_same_concurrency() {
        let results = vec![
            result("raw", 16, 80.0),
            result("apply", 16, 72.0),
            result("raw", 32, 90.0),
            result("validated", 32, 9.0),
            result("sequential", 1, 8.0),
        ];
        assert_eq!(ratio_to_sequential(&results, "apply", 16), Some(9.0));
        assert_eq!(ratio_to_sequential(&results, "apply", 32), None);
        assert_eq!(ratio(&results, "apply", 16), Some(0.9));
        assert_eq!(ratio(&results, "validated", 32), Some(0.1));
        assert_eq!(ratio(&results, "validated", 16), None);
        let line = Ratios {
            concurrency: 16,
            apply_vs_raw: Some(0.9),
            apply_vs_sequential: Some(9.0),
            validated_vs_raw: None,
        }
        .line();
        assert_eq!(
            line,
            "apply_vs_raw=0.900 apply_vs_sequential=9.000 validated_vs_raw=n/a concurrency=16"
        );
        assert_eq!(
            results[0].line(),
            "mode=raw tenants=10 concurrency=16 wall_s=1.000 tenants_per_s=80.00 peak_rss_mb=12.0 api_calls_per_tenant=1.00 connections_per_tenant=2.00 round_trips_per_tenant=0.0 main_round_trips_after_connect_per_tenant=0.00 main_connections_per_tenant=0.00 statements_per_tenant=0.0 cold_starts_per_tenant=0.00 compute_s_per_tenant=0.00"
        );
    }

    #[test]
    fn breakdown_divides_step_totals_by_tenants_and_groups_them() {
        let timing = |step: &str, total_ms: f64| StepTiming {
            step: step.into(),
            count: 4,
            total_ms,
            mean_ms: total_ms / 4.0,
        };
        let timings = vec![
            timing("connection_uri", 20.0),
            timing("create_branch", 400.0),
            timing("migrate_branch", 200.0),
            timing("delete_branch", 100.0),
            timing("migrate_main", 80.0),
            timing("journal", 40.0),
        ];
        let breakdown = super::breakdown(&timings, 4, 250.0);
        assert_eq!(breakdown.tenants, 4);
        assert_eq!(breakdown.steps[1], ("create_branch".to_string(), 100.0));
        assert!((breakdown.api_ms - 130.0).abs() < 1e-9, "{breakdown:?}");
        assert!((breakdown.migration_ms - 70.0).abs() < 1e-9);
        assert!((breakdown.unaccounted_ms - 40.0).abs() < 1e-9);
        assert!(
            breakdown
                .line(16)
                .contains(" create_branch_ms=100.0 migrate_branch_ms=50.0 "),
            "{}",
            breakdown.line(16)
        );
        assert_eq!(super::breakdown(&timings, 0, 1.0), Breakdown::default());
    }
}

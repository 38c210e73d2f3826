//! The parent side of `schemafleet bench`: one fresh fleet per concurrency, the modes in order
//! (raw, apply, noop from the journal and from a fresh plan, validated), a reset after each
//! mode that changed the fleet, an optional rate-limited validated run, the plan mode, output.
//!
//! **Invariant:** each measured mode runs in its own child process; the parent only prepares
//! files, resets and counts, so nothing it does lands in a mode's wall time or peak RSS.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use super::assets;
use super::child::{CHILD_MARKER, ChildReport, Job};
use super::fleet::{BenchFleet, FleetOptions};
use super::report::{self, Breakdown, ComputeUse, ModeResult, RateLimitedRun, Ratios};
use crate::cli::BenchArgs;
use crate::emulator::EmulatorStats;
use crate::exit::ExitStatus;

/// The client's own limit in unlimited runs: far above anything the emulator serves.
const UNLIMITED_CLIENT_RATE_PER_MIN: u32 = 1_000_000;

/// Copies timed alone for the validated breakdown.
const COPY_PROBES: usize = 5;

/// Target length of an automatically sized rate-limited run.
const RATE_LIMITED_RUN_S: f64 = 40.0;

#[derive(Debug, Clone, Copy, Default)]
struct Selection {
    raw: bool,
    raw_probe: bool,
    sequential: bool,
    apply: bool,
    validated: bool,
    noop: bool,
    plan: bool,
    journal: bool,
}

impl Selection {
    fn parse(modes: &[String]) -> anyhow::Result<Selection> {
        let mut selection = Selection::default();
        for mode in modes {
            match mode.trim() {
                "raw" => selection.raw = true,
                "raw-probe" => selection.raw_probe = true,
                "sequential" => selection.sequential = true,
                "apply" => selection.apply = true,
                "validated" => selection.validated = true,
                "noop" => selection.noop = true,
                "plan" => selection.plan = true,
                "journal" => selection.journal = true,
                other => bail!(
                    "--modes: unknown mode `{other}`; the modes are raw, sequential, apply, validated, noop, plan, journal (and raw-probe)"
                ),
            }
        }
        Ok(selection)
    }

    fn needs_fleet(self) -> bool {
        self.raw || self.raw_probe || self.sequential || self.apply || self.validated || self.noop
    }
}

/// Where the benchmark's files go; a temporary directory is removed at the end.
struct Workdir {
    path: PathBuf,
    remove: bool,
}

impl Workdir {
    fn new(requested: Option<PathBuf>) -> anyhow::Result<Workdir> {
        let (path, remove) = match requested {
            Some(path) => (path, false),
            None => (
                std::env::temp_dir().join(format!("schemafleet-bench-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the work directory {}", path.display()))?;
        Ok(Workdir { path, remove })
    }

    fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Everything measured, in the order it was measured.
#[derive(Debug, Default, serde::Serialize)]
struct Document {
    local_fleet: FleetDescription,
    methods: Methods,
    results: Vec<ModeResult>,
    validated_breakdown: Vec<BreakdownAt>,
    rate_limited: Option<RateLimitedRun>,
    journal: Option<super::journal::JournalBench>,
    ratios: Vec<Ratios>,
}

#[derive(Debug, Default, serde::Serialize)]
struct FleetDescription {
    tuned_for_benchmark: bool,
    cluster_settings: String,
    op_delay_ms: u64,
    operation_poll_ms: u64,
    /// Seconds to seed each fleet.
    seed_s: Vec<f64>,
}

#[derive(Debug, serde::Serialize)]
struct Methods {
    connections: &'static str,
    peak_rss: &'static str,
    api_calls: &'static str,
    reset: &'static str,
}

impl Default for Methods {
    fn default() -> Methods {
        Methods {
            connections: "server log with log_connections=on: `connection authorized` lines of sessions named schemafleet*, between the start and the end of the mode's child process",
            peak_rss: "VmHWM of the child process that ran only this mode (bench --internal)",
            api_calls: "the Neon client's request counter (every attempt, operation polls and the preflight included); the emulator's own count is emulator_requests_per_tenant",
            reset: "one fleet for the run (the rate-limited run has its own); between modes every tenant's release is undone as superuser (history table dropped, schema back to the seed) and its history row count checked first; then a CHECKPOINT (also after seeding) so no mode pays for the previous one's dirty pages",
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct BreakdownAt {
    concurrency: usize,
    #[serde(flatten)]
    breakdown: Breakdown,
}

/// Prints text lines as they are measured (JSON waits for the end).
struct Output {
    json: bool,
}

impl Output {
    fn line(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }
}

pub(super) fn progress(text: &str) {
    eprintln!("bench: {text}");
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitStatus> {
    let selection = Selection::parse(&args.modes)?;
    if args.concurrency.contains(&0) {
        bail!("--concurrency must be at least 1");
    }
    if selection.needs_fleet() && args.tenants == 0 {
        bail!("--tenants must be at least 1 for the raw, apply, validated and noop modes");
    }
    let workdir = Workdir::new(args.workdir.clone())?;
    let migrations_dir = workdir.dir("migrations")?;
    assets::write_migrations(&migrations_dir)?;
    let output = Output {
        json: args.output == crate::cli::OutputFormat::Json,
    };
    let mut document = Document {
        local_fleet: FleetDescription {
            tuned_for_benchmark: true,
            op_delay_ms: args.op_delay_ms,
            operation_poll_ms: args.operation_poll_ms,
            ..FleetDescription::default()
        },
        ..Document::default()
    };
    let mut all_succeeded = true;

    if selection.needs_fleet() {
        // One fleet for every concurrency: the modes leave it reset, and removing gigabytes of
        // tenant databases is slow (every unlink discards on this kind of disk).
        progress(&format!(
            "starting a local fleet and seeding {} tenants",
            args.tenants
        ));
        let fleet = BenchFleet::start(&FleetOptions {
            tenants: args.tenants,
            op_delay: Duration::from_millis(args.op_delay_ms),
            rate_limit_per_min: None,
            name_prefix: "bench".into(),
            api_latency: Duration::from_millis(args.api_latency_ms),
            compute: compute_config(&args)?,
        })
        .await?;
        document.local_fleet.cluster_settings = fleet.cluster_settings();
        document.local_fleet.seed_s.push(fleet.seed_s);
        let methods = Methods::default();
        output.line(&format!(
            "# local fleet: emulator over a throwaway PostgreSQL tuned for benchmarking ({}); op_delay_ms={} operation_poll_ms={}",
            document.local_fleet.cluster_settings, args.op_delay_ms, args.operation_poll_ms
        ));
        output.line(&format!(
            "# regime: pg_rtt_ms={} pg_rtt_jitter_ms={} cold_start_ms={} api_latency_ms={} suspend_after={}; every tenant is suspended before each mode",
            args.compute.pg_rtt_ms,
            args.compute.pg_rtt_jitter_ms,
            args.compute.cold_start_ms,
            args.api_latency_ms,
            args.suspend_after,
        ));
        output.line(&format!("# connections: {}", methods.connections));
        output.line(&format!("# peak_rss_mb: {}", methods.peak_rss));
        output.line(&format!("# api_calls: {}", methods.api_calls));
        output.line(&format!("# reset: {}", methods.reset));
        output.line(&format!(
            "# seeded {} tenants in {:.1} s",
            args.tenants, fleet.seed_s
        ));
        let mut result: anyhow::Result<()> = Ok(());
        for (concurrency_idx, &concurrency) in args.concurrency.iter().enumerate() {
            let context = FleetRun {
                args: &args,
                // One tenant at a time whatever the concurrency: measured once.
                selection: Selection {
                    sequential: selection.sequential && concurrency_idx == 0,
                    ..selection
                },
                fleet: &fleet,
                concurrency,
                workdir: &workdir,
                migrations_dir: &migrations_dir,
                output: &output,
            };
            match context.run_modes(&mut document).await {
                Ok(succeeded) => all_succeeded &= succeeded,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        progress("stopping the local fleet and removing its databases");
        fleet.stop().await;
        result?;
        if args.rate_limit_per_min > 0 && selection.validated {
            let run = rate_limited_run(&args, &document, &workdir, &migrations_dir).await?;
            output.line(&run.line());
            all_succeeded &= run.result.failed == 0;
            document.rate_limited = Some(run);
        }
    }

    if selection.plan {
        progress(&format!(
            "planning {} tenants from a tenants file",
            args.plan_tenants
        ));
        let result = plan_mode(args.plan_tenants, &workdir, &migrations_dir).await?;
        output.line(&result.line());
        all_succeeded &= report_failures(&output, &result);
        document.results.push(result);
    }

    if selection.journal {
        progress(&format!(
            "planning {} tenants and writing their rollout's journal",
            args.plan_tenants
        ));
        let dir = workdir.dir("journal")?;
        let bench =
            super::journal::run(args.plan_tenants, &dir, &migrations_dir, PLAN_POLICY).await?;
        output.line(&bench.line());
        if !bench.succeeded() {
            output.line(&format!(
                "# WARNING mode=journal: a child did not finish as expected: {:?}",
                [
                    &bench.status.error,
                    &bench.apply_finished.error,
                    &bench.resume_killed.error,
                    &bench.replay.error
                ]
            ));
            all_succeeded = false;
        }
        document.journal = Some(bench);
    }

    for &concurrency in &args.concurrency {
        let ratios = Ratios {
            concurrency,
            apply_vs_raw: report::ratio(&document.results, "apply", concurrency),
            apply_vs_sequential: report::ratio_to_sequential(
                &document.results,
                "apply",
                concurrency,
            ),
            validated_vs_raw: report::ratio(&document.results, "validated", concurrency),
        };
        if ratios.apply_vs_raw.is_some()
            || ratios.apply_vs_sequential.is_some()
            || ratios.validated_vs_raw.is_some()
        {
            document.ratios.push(ratios);
        }
    }
    if args.output == crate::cli::OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        for ratios in &document.ratios {
            println!("{}", ratios.line());
        }
    }
    Ok(if all_succeeded {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// Say (on a `#` line) when a mode did not finish every tenant as expected. True when it did.
fn report_failures(output: &Output, result: &ModeResult) -> bool {
    let incomplete = result
        .verified_complete
        .is_some_and(|complete| complete != result.tenants);
    if result.failed == 0 && !incomplete {
        return true;
    }
    let message = format!(
        "# WARNING mode={} concurrency={}: {} of {} tenants failed, {} had the whole release afterwards{}",
        result.mode,
        result.concurrency,
        result.failed,
        result.tenants,
        result
            .verified_complete
            .map_or_else(|| "n/a".to_string(), |complete| complete.to_string()),
        result
            .note
            .as_ref()
            .map(|note| format!(": {note}"))
            .unwrap_or_default()
    );
    output.line(&message);
    eprintln!("{message}");
    false
}

/// The modes at one concurrency on one fleet.
struct FleetRun<'a> {
    args: &'a BenchArgs,
    selection: Selection,
    fleet: &'a BenchFleet,
    concurrency: usize,
    workdir: &'a Workdir,
    migrations_dir: &'a Path,
    output: &'a Output,
}

impl FleetRun<'_> {
    /// Run the selected modes; true when every tenant of every mode ended as expected.
    async fn run_modes(&self, document: &mut Document) -> anyhow::Result<bool> {
        let release_len = assets::MIGRATIONS.len() as i64;
        let mut all_succeeded = true;
        let mut record = |document: &mut Document, result: ModeResult| {
            self.output.line(&result.line());
            all_succeeded &= report_failures(self.output, &result);
            document.results.push(result);
        };

        if self.selection.raw {
            progress(&format!("raw at concurrency {}", self.concurrency));
            let mut result = self.raw(false).await?;
            result.verified_complete = Some(self.fleet.reset(release_len).await?);
            record(document, result);
        }

        if self.selection.raw_probe {
            progress(&format!("raw-probe at concurrency {}", self.concurrency));
            let mut result = self.raw(true).await?;
            result.verified_complete = Some(self.fleet.reset(release_len).await?);
            record(document, result);
        }

        if self.selection.sequential {
            progress("sequential (one tenant at a time)");
            let mut result = self.sequential().await?;
            result.verified_complete = Some(self.fleet.reset(release_len).await?);
            record(document, result);
        }

        if self.selection.apply || self.selection.noop {
            progress(&format!("apply at concurrency {}", self.concurrency));
            let dir = self.mode_dir("apply")?;
            let plan = self.write_plan(&dir, "none", "none")?;
            let journal = dir.join("plan.journal.jsonl");
            let mut apply = self
                .apply("apply", &plan, &journal, Expect::Applied)
                .await?;
            if self.selection.noop {
                progress(&format!("noop at concurrency {}", self.concurrency));
                let from_journal = self
                    .apply("noop-journal", &plan, &journal, Expect::Finished)
                    .await?;
                let fresh_dir = self.mode_dir("noop-fresh")?;
                let fresh_plan = self.write_plan(&fresh_dir, "none", "none")?;
                let fresh_journal = fresh_dir.join("plan.journal.jsonl");
                let fresh = self
                    .apply("noop-fresh", &fresh_plan, &fresh_journal, Expect::UpToDate)
                    .await?;
                // A fresh plan again, skipping by the first plan's journal: no compute woken.
                let recorded_dir = self.mode_dir("noop-recorded")?;
                let recorded_plan = self.write_plan(&recorded_dir, "none", "none")?;
                let recorded = self
                    .apply_recorded(
                        "noop-recorded",
                        &recorded_plan,
                        &recorded_dir.join("plan.journal.jsonl"),
                        Expect::SkippedRecorded,
                        Some(&plan),
                    )
                    .await?;
                apply.verified_complete = Some(self.fleet.reset(release_len).await?);
                if self.selection.apply {
                    record(document, apply);
                }
                record(document, from_journal);
                record(document, fresh);
                record(document, recorded);
            } else {
                apply.verified_complete = Some(self.fleet.reset(release_len).await?);
                record(document, apply);
            }
        }

        if self.selection.validated {
            progress(&format!("validated at concurrency {}", self.concurrency));
            let dir = self.mode_dir("validated")?;
            let plan = self.write_plan(&dir, "branch", "branch_point")?;
            let journal = dir.join("plan.journal.jsonl");
            let mut result = self
                .apply("validated", &plan, &journal, Expect::Applied)
                .await?;
            // Little's law: tenants in flight on average × wall time / tenants.
            let mean_in_flight_ms = if result.tenants > 0 {
                self.concurrency.min(result.tenants) as f64 * result.wall_s * 1000.0
                    / result.tenants as f64
            } else {
                0.0
            };
            let mut breakdown =
                report::breakdown(&result.timings, result.succeeded, mean_in_flight_ms);
            breakdown.one_branch_copy_alone_ms = self.fleet.time_branch_copy(COPY_PROBES).await?;
            result.verified_complete = Some(self.fleet.reset(release_len).await?);
            let api_line = format!(
                "validated_api concurrency={} mutating_calls_per_tenant={:.2} api_calls_per_tenant={:.2} emulator_requests_per_tenant={:.2} operation_reads_per_tenant={:.3} rate_limited_answers={}",
                self.concurrency,
                result.mutating_calls_per_tenant,
                result.api_calls_per_tenant,
                result.emulator_requests_per_tenant,
                result.operation_reads_per_tenant,
                result.rate_limited
            );
            record(document, result);
            self.output.line(&breakdown.line(self.concurrency));
            self.output.line(&api_line);

            document.validated_breakdown.push(BreakdownAt {
                concurrency: self.concurrency,
                breakdown,
            });
        }
        Ok(all_succeeded)
    }

    /// An empty directory for one mode's files: a journal left by an earlier benchmark in the
    /// same --workdir would belong to another plan (and `apply` rightly refuses it).
    fn mode_dir(&self, mode: &str) -> anyhow::Result<PathBuf> {
        let name = format!("c{}-{mode}", self.concurrency);
        let stale = self.workdir.path.join(&name);
        if stale.exists() {
            std::fs::remove_dir_all(&stale)
                .with_context(|| format!("cannot clear {}", stale.display()))?;
        }
        self.workdir.dir(&name)
    }

    /// A one-wave policy over this fleet's tenants, planned (unmeasured) into `dir/plan.yaml`.
    fn write_plan(
        &self,
        dir: &Path,
        validation: &str,
        restore_point: &str,
    ) -> anyhow::Result<PathBuf> {
        let tenants_file = dir.join("tenants.csv");
        self.fleet
            .write_tenants_file(&tenants_file, &self.fleet.tenants)?;
        let policy_path = dir.join("policy.yaml");
        std::fs::write(
            &policy_path,
            fleet_policy(
                validation,
                restore_point,
                self.concurrency,
                self.fleet.tenants.len(),
            ),
        )
        .with_context(|| format!("cannot write {}", policy_path.display()))?;
        let out = dir.join("plan.yaml");
        crate::plan::pipeline::plan_from_tenants_file(
            &policy_path,
            self.migrations_dir,
            None,
            Some(&out),
        )
        .with_context(|| format!("planning the benchmark fleet in {}", dir.display()))?;
        Ok(out)
    }

    async fn raw(&self, probe_connection: bool) -> anyhow::Result<ModeResult> {
        let job = Job::Raw {
            concurrency: self.concurrency,
            probe_connection,
            migrations_dir: self.migrations_dir.to_path_buf(),
            tenant_uris: self
                .fleet
                .tenants
                .iter()
                .map(|tenant| tenant.connection_uri.expose().to_string())
                .collect(),
        };
        let compute_before = self.fleet.begin_measure().await?;
        let offset = self.fleet.log_offset()?;
        let (_, child) = run_child(&job).await?;
        let connections = self.fleet.connections_since(offset)?;
        let compute = self.fleet.end_measure(&compute_before).await?;
        let tenants = self.fleet.tenants.len();
        Ok(ModeResult {
            compute,
            mode: if probe_connection { "raw-probe" } else { "raw" }.into(),
            tenants,
            concurrency: self.concurrency,
            wall_s: child.wall_s,
            tenants_per_s: per_second(tenants, child.wall_s),
            peak_rss_mb: child.peak_rss_kb as f64 / 1024.0,
            api_calls_per_tenant: 0.0,
            mutating_calls_per_tenant: 0.0,
            emulator_requests_per_tenant: 0.0,
            operation_reads_per_tenant: 0.0,
            rate_limited: 0,
            connections_per_tenant: per_tenant(connections as u64, tenants),
            succeeded: child.succeeded,
            failed: child.failed,
            verified_complete: None,
            note: child.first_error,
            timings: Vec::new(),
        })
    }

    async fn sequential(&self) -> anyhow::Result<ModeResult> {
        let job = Job::Sequential {
            api_url: self.fleet.api_url().to_string(),
            api_key: self.fleet.api_key().to_string(),
            migrations_dir: self.migrations_dir.to_path_buf(),
            project_ids: self
                .fleet
                .tenants
                .iter()
                .map(|tenant| tenant.project_id.clone())
                .collect(),
        };
        let compute_before = self.fleet.begin_measure().await?;
        let offset = self.fleet.log_offset()?;
        let emulator_before = self.fleet.emulator_stats();
        let (_, child) = run_child(&job).await?;
        let emulator_after = self.fleet.emulator_stats();
        let connections = self.fleet.connections_since(offset)?;
        let compute = self.fleet.end_measure(&compute_before).await?;
        let tenants = self.fleet.tenants.len();
        let requests = emulator_after.requests - emulator_before.requests;
        Ok(ModeResult {
            mode: "sequential".into(),
            tenants,
            concurrency: 1,
            wall_s: child.wall_s,
            tenants_per_s: per_second(tenants, child.wall_s),
            peak_rss_mb: child.peak_rss_kb as f64 / 1024.0,
            // One GET connection_uri per tenant; the emulator's count is the client's here.
            api_calls_per_tenant: per_tenant(requests, tenants),
            mutating_calls_per_tenant: 0.0,
            emulator_requests_per_tenant: per_tenant(requests, tenants),
            operation_reads_per_tenant: per_tenant(
                operation_reads(&emulator_before, &emulator_after),
                tenants,
            ),
            rate_limited: 0,
            connections_per_tenant: per_tenant(connections as u64, tenants),
            succeeded: child.succeeded,
            failed: child.failed,
            verified_complete: None,
            note: child.first_error,
            compute,
            timings: Vec::new(),
        })
    }

    async fn apply(
        &self,
        mode: &str,
        plan: &Path,
        journal: &Path,
        expect: Expect,
    ) -> anyhow::Result<ModeResult> {
        self.apply_recorded(mode, plan, journal, expect, None).await
    }

    /// [`FleetRun::apply`], with `--skip-recorded --recorded-from recorded_from` when given.
    async fn apply_recorded(
        &self,
        mode: &str,
        plan: &Path,
        journal: &Path,
        expect: Expect,
        recorded_from: Option<&Path>,
    ) -> anyhow::Result<ModeResult> {
        measure_apply(
            self.fleet,
            ApplyRun {
                mode,
                plan,
                journal,
                concurrency: self.concurrency,
                client_rate_limit_per_min: UNLIMITED_CLIENT_RATE_PER_MIN,
                operation_poll_ms: self.args.operation_poll_ms,
                expect,
                recorded_from,
            },
        )
        .await
    }
}

/// Operation reads (`GET …/operations` and `GET …/operations/{id}`) the emulator answered
/// between two snapshots of its counters: the polls of a run.
fn operation_reads(before: &EmulatorStats, after: &EmulatorStats) -> u64 {
    [
        "GET /projects/{id}/operations",
        "GET /projects/{id}/operations/{id}",
    ]
    .iter()
    .map(|route| {
        let count = |stats: &EmulatorStats| stats.by_route.get(*route).copied().unwrap_or(0);
        count(after) - count(before)
    })
    .sum()
}

/// What an `apply` child should leave every tenant as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Applied in this run.
    Applied,
    /// Up to date (a fresh plan over a migrated fleet).
    UpToDate,
    /// Finished in the journal already (applied or up to date).
    Finished,
    /// Skipped without connecting: an earlier plan's journal records them up to date.
    SkippedRecorded,
}

struct ApplyRun<'a> {
    mode: &'a str,
    plan: &'a Path,
    journal: &'a Path,
    concurrency: usize,
    client_rate_limit_per_min: u32,
    operation_poll_ms: u64,
    expect: Expect,
    /// `--skip-recorded --recorded-from` this plan.
    recorded_from: Option<&'a Path>,
}

async fn measure_apply(fleet: &BenchFleet, run: ApplyRun<'_>) -> anyhow::Result<ModeResult> {
    let job = Job::Apply {
        plan: run.plan.to_path_buf(),
        journal: run.journal.to_path_buf(),
        api_url: fleet.api_url().to_string(),
        api_key: fleet.api_key().to_string(),
        api_rate_limit_per_min: run.client_rate_limit_per_min,
        operation_poll_ms: run.operation_poll_ms,
        recorded_from: run.recorded_from.map(Path::to_path_buf),
        until_wave: None,
    };
    let compute_before = fleet.begin_measure().await?;
    let offset = fleet.log_offset()?;
    let emulator_before = fleet.emulator_stats();
    let (apply_stdout, child) = run_child(&job).await?;
    let connections = fleet.connections_since(offset)?;
    let compute = fleet.end_measure(&compute_before).await?;
    let emulator_after = fleet.emulator_stats();
    let tenants = fleet.tenants.len();
    let document: serde_json::Value = serde_json::from_str(&apply_stdout).map_err(|error| {
        anyhow::anyhow!(
            "mode {}: `apply` did not print its JSON document ({error}); exit code {}: {}",
            run.mode,
            child.exit_code,
            child.first_error.clone().unwrap_or_default()
        )
    })?;
    let count = |path: &[&str]| -> u64 {
        path.iter()
            .fold(&document, |value, key| &value[*key])
            .as_u64()
            .unwrap_or(0)
    };
    let applied = count(&["totals", "applied"]) as usize;
    let up_to_date = count(&["totals", "up_to_date"]) as usize;
    let succeeded = match run.expect {
        Expect::Applied => applied,
        Expect::UpToDate => up_to_date,
        Expect::SkippedRecorded => count(&["totals", "skipped_recorded"]) as usize,
        Expect::Finished => applied + up_to_date,
    };
    let note = match (&child.first_error, child.exit_code) {
        (Some(error), _) => Some(error.clone()),
        (None, 0) => None,
        (None, code) => Some(format!(
            "apply exited with {code}: {}",
            document["failures"]
                .get(0)
                .map(|failure| failure.to_string())
                .unwrap_or_default()
        )),
    };
    Ok(ModeResult {
        mode: run.mode.to_string(),
        tenants,
        concurrency: run.concurrency,
        wall_s: child.wall_s,
        tenants_per_s: per_second(tenants, child.wall_s),
        peak_rss_mb: child.peak_rss_kb as f64 / 1024.0,
        api_calls_per_tenant: per_tenant(count(&["api", "requests"]), tenants),
        mutating_calls_per_tenant: per_tenant(count(&["api", "mutations"]), tenants),
        emulator_requests_per_tenant: per_tenant(
            emulator_after.requests - emulator_before.requests,
            tenants,
        ),
        operation_reads_per_tenant: per_tenant(
            operation_reads(&emulator_before, &emulator_after),
            tenants,
        ),
        rate_limited: count(&["api", "rate_limited"]),
        connections_per_tenant: per_tenant(connections as u64, tenants),
        succeeded,
        failed: tenants.saturating_sub(succeeded),
        verified_complete: None,
        note,
        compute,
        timings: serde_json::from_value(document["timings"].clone()).unwrap_or_default(),
    })
}

/// A separate fleet whose emulator answers 429 past `--rate-limit-per-min`, a client limited
/// just under it, and a validated run long enough for the limit to dominate.
async fn rate_limited_run(
    args: &BenchArgs,
    document: &Document,
    workdir: &Workdir,
    migrations_dir: &Path,
) -> anyhow::Result<RateLimitedRun> {
    let limit = args.rate_limit_per_min;
    let client_limit = (u64::from(limit) * 97 / 100).max(1) as u32;
    let concurrency = args.concurrency.iter().copied().max().unwrap_or(16);
    let tenants = if args.rate_limited_tenants > 0 {
        args.rate_limited_tenants
    } else {
        let calls_per_tenant = document
            .results
            .iter()
            .rev()
            .find(|result| result.mode == "validated")
            .map_or(10.0, |result| result.api_calls_per_tenant.max(1.0));
        let per_second = f64::from(client_limit) / 60.0 / calls_per_tenant;
        ((per_second * RATE_LIMITED_RUN_S).ceil() as usize).clamp(5, args.tenants.max(5))
    };
    progress(&format!(
        "rate-limited validated run: {tenants} tenants, emulator limit {limit}/min, client limit {client_limit}/min"
    ));
    let fleet = BenchFleet::start(&FleetOptions {
        tenants,
        op_delay: Duration::from_millis(args.op_delay_ms),
        rate_limit_per_min: Some(limit),
        name_prefix: "ratelimited".into(),
        api_latency: Duration::from_millis(args.api_latency_ms),
        compute: compute_config(args)?,
    })
    .await?;
    let result = async {
        let dir = workdir.path.join("rate-limited");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        let dir = workdir.dir("rate-limited")?;
        let tenants_file = dir.join("tenants.csv");
        fleet.write_tenants_file(&tenants_file, &fleet.tenants)?;
        let policy_path = dir.join("policy.yaml");
        std::fs::write(
            &policy_path,
            fleet_policy("branch", "branch_point", concurrency, fleet.tenants.len()),
        )?;
        let plan = dir.join("plan.yaml");
        crate::plan::pipeline::plan_from_tenants_file(
            &policy_path,
            migrations_dir,
            None,
            Some(&plan),
        )?;
        let journal = dir.join("plan.journal.jsonl");
        let mut result = measure_apply(
            &fleet,
            ApplyRun {
                mode: "validated-rate-limited",
                plan: &plan,
                journal: &journal,
                concurrency,
                client_rate_limit_per_min: client_limit,
                operation_poll_ms: args.operation_poll_ms,
                expect: Expect::Applied,
                recorded_from: None,
            },
        )
        .await?;
        result.verified_complete = Some(fleet.reset(assets::MIGRATIONS.len() as i64).await?);
        anyhow::Ok(result)
    }
    .await;
    fleet.stop().await;
    let result = result?;
    let allowed = if result.api_calls_per_tenant > 0.0 {
        f64::from(limit) / 60.0 / result.api_calls_per_tenant
    } else {
        0.0
    };
    Ok(RateLimitedRun {
        limit_per_min: limit,
        client_limit_per_min: client_limit,
        fraction_of_allowed: if allowed > 0.0 {
            result.tenants_per_s / allowed
        } else {
            0.0
        },
        allowed_tenants_per_s: allowed,
        result,
    })
}

/// Plan `plan_tenants` tenants from a tenants file (written beforehand, not timed).
async fn plan_mode(
    plan_tenants: usize,
    workdir: &Workdir,
    migrations_dir: &Path,
) -> anyhow::Result<ModeResult> {
    let dir = workdir.dir("plan")?;
    let _ = std::fs::remove_file(dir.join("plan.yaml"));
    let tenants_file = dir.join("tenants.csv");
    let mut csv = String::with_capacity(plan_tenants * 40 + 16);
    csv.push_str("id,name\n");
    for tenant_idx in 1..=plan_tenants {
        csv.push_str(&format!(
            "bench-plan-{tenant_idx:07},tenant-{tenant_idx:07}\n"
        ));
    }
    std::fs::write(&tenants_file, csv)
        .with_context(|| format!("cannot write {}", tenants_file.display()))?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, PLAN_POLICY)
        .with_context(|| format!("cannot write {}", policy.display()))?;
    let job = Job::Plan {
        policy,
        migrations_dir: migrations_dir.to_path_buf(),
        tenants_file,
        out: dir.join("plan.yaml"),
    };
    let (_, child) = run_child(&job).await?;
    Ok(ModeResult {
        mode: "plan".into(),
        tenants: plan_tenants,
        concurrency: 1,
        wall_s: child.wall_s,
        tenants_per_s: per_second(plan_tenants, child.wall_s),
        peak_rss_mb: child.peak_rss_kb as f64 / 1024.0,
        api_calls_per_tenant: 0.0,
        mutating_calls_per_tenant: 0.0,
        emulator_requests_per_tenant: 0.0,
        operation_reads_per_tenant: 0.0,
        rate_limited: 0,
        connections_per_tenant: 0.0,
        succeeded: child.succeeded,
        failed: plan_tenants.saturating_sub(child.succeeded),
        verified_complete: None,
        note: child.first_error.or_else(|| {
            Some("plans from a file: no fleet, no API, no connections by construction".into())
        }),
        compute: ComputeUse::default(),
        timings: Vec::new(),
    })
}

/// The example rollout's three waves, over a tenants file.
const PLAN_POLICY: &str = "fleet:
  source: file
  file: tenants.csv
database: neondb
role: neondb_owner
validation: branch
restore_point: branch_point
lock_timeout: 2s
statement_timeout: 10m
branch_ttl: 2h
salt: bench-plan
waves:
  - name: canary
    percent: 2
    concurrency: 4
    max_failures: 0
    bake: 10m
  - name: early
    percent: 25
    concurrency: 16
    max_failure_percent: 5
    bake: 5m
  - name: rest
    percent: 100
    concurrency: 32
    max_failures: 20
    max_failure_percent: 2
";

/// One wave with everything at `concurrency`, a budget that never halts it.
fn fleet_policy(
    validation: &str,
    restore_point: &str,
    concurrency: usize,
    tenants: usize,
) -> String {
    format!(
        "fleet:
  source: file
  file: tenants.csv
database: neondb
role: neondb_owner
validation: {validation}
restore_point: {restore_point}
lock_timeout: 2s
statement_timeout: 1m
branch_ttl: 1h
salt: bench
waves:
  - name: all
    percent: 100
    concurrency: {concurrency}
    max_failures: {tenants}
"
    )
}

/// The regime the fleet's endpoints run in, from the bench's flags.
fn compute_config(args: &BenchArgs) -> anyhow::Result<crate::emulator::ComputeConfig> {
    crate::cmd::emulator::compute_config(&args.compute, &args.suspend_after)
}

/// Run `job` in a child process of this binary; its stdout before the marker line, and the report.
pub(super) async fn run_child(job: &Job) -> anyhow::Result<(String, ChildReport)> {
    let exe =
        std::env::current_exe().context("cannot find this program to run a benchmark child")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "--internal"])
        .env("SCHEMAFLEET_NO_PROGRESS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a benchmark child process")?;
    let job_text = serde_json::to_vec(job)?;
    let mut stdin = child
        .stdin
        .take()
        .context("the benchmark child has no stdin")?;
    stdin
        .write_all(&job_text)
        .await
        .context("cannot hand the job to the benchmark child")?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .context("the benchmark child did not finish")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    split_child_output(&stdout).with_context(|| {
        format!(
            "the benchmark child exited with {} without its result line (its errors are above)",
            output.status
        )
    })
}

fn split_child_output(stdout: &str) -> anyhow::Result<(String, ChildReport)> {
    let Some(marker_at) = stdout.rfind(CHILD_MARKER) else {
        bail!("no `{}` line on stdout", CHILD_MARKER.trim());
    };
    let report_text = stdout[marker_at + CHILD_MARKER.len()..].trim();
    let report: ChildReport =
        serde_json::from_str(report_text).context("the child's result line is not JSON")?;
    Ok((stdout[..marker_at].trim().to_string(), report))
}

fn per_second(tenants: usize, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        tenants as f64 / wall_s
    } else {
        0.0
    }
}

fn per_tenant(count: u64, tenants: usize) -> f64 {
    if tenants == 0 {
        0.0
    } else {
        count as f64 / tenants as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_modes_are_refused_by_name() {
        let error = Selection::parse(&["raw".into(), "aply".into()]).expect_err("a typo");
        assert!(error.to_string().contains("unknown mode `aply`"), "{error}");
        let selection = Selection::parse(&["plan".into()]).expect("plan alone");
        assert!(selection.plan && !selection.needs_fleet());
    }

    #[test]
    fn the_child_output_splits_at_the_last_marker() {
        let stdout = format!(
            "{{\"totals\": {{\"applied\": 3}}}}\n{CHILD_MARKER}{{\"wall_s\":1.5,\"peak_rss_kb\":2048,\"exit_code\":0,\"succeeded\":3,\"failed\":0,\"first_error\":null}}\n"
        );
        let (before, report) = split_child_output(&stdout).expect("splits");
        assert_eq!(before, "{\"totals\": {\"applied\": 3}}");
        assert_eq!(report.peak_rss_kb, 2048);
        assert!(split_child_output("no marker").is_err());
    }

    #[test]
    fn the_fleet_policy_plans() {
        let dir =
            std::env::temp_dir().join(format!("schemafleet-bench-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assets::write_migrations(&dir.join("migrations")).expect("release");
        std::fs::write(
            dir.join("tenants.csv"),
            "id,name\np-1,bench-0001\np-2,bench-0002\n",
        )
        .expect("tenants");
        std::fs::write(dir.join("policy.yaml"), fleet_policy("none", "none", 16, 2))
            .expect("policy");
        let outcome = crate::plan::pipeline::plan_from_tenants_file(
            &dir.join("policy.yaml"),
            &dir.join("migrations"),
            None,
            Some(&dir.join("plan.yaml")),
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
        let outcome = outcome.expect("the benchmark's policy plans");
        assert_eq!(outcome.plan.waves.len(), 1);
        assert_eq!(outcome.plan.waves[0].tenants.len(), 2);
        assert_eq!(outcome.plan.waves[0].concurrency, 16);
    }
}

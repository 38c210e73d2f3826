//! The child side of a measured mode (`schemafleet bench --internal`): read one [`Job`] from
//! stdin, run it timed, then print one [`CHILD_MARKER`] line with the wall time and this
//! process's peak RSS (VmHWM), which only this mode's work has touched.
//!
//! **Invariant:** the marker line is the last line on stdout; anything before it (the `apply`
//! command's own JSON document) belongs to the mode.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::{ApiArgs, ApplyArgs, OutputFormat};
use crate::exit::ExitStatus;
use crate::secret::SecretUri;

/// Starts the child's result line on stdout.
pub const CHILD_MARKER: &str = "schemafleet-bench-child ";

/// One measured mode. Holds secrets (API key, tenant URIs): no `Debug`, never written to a file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Job {
    Raw {
        concurrency: usize,
        /// Open a separate probe connection first (the `raw-probe` variant).
        probe_connection: bool,
        migrations_dir: PathBuf,
        tenant_uris: Vec<String>,
    },
    /// `schemafleet apply PLAN --output json`, in process.
    Apply {
        plan: PathBuf,
        journal: PathBuf,
        api_url: String,
        api_key: String,
        api_rate_limit_per_min: u32,
        operation_poll_ms: u64,
        /// `--skip-recorded --recorded-from PLAN` (the `noop-recorded` mode).
        #[serde(default)]
        recorded_from: Option<PathBuf>,
        /// `--until-wave` (the journal mode's resume stops after the waves a kill left done).
        #[serde(default)]
        until_wave: Option<String>,
    },
    /// `schemafleet status PLAN`, in process (the journal mode).
    Status { plan: PathBuf, journal: PathBuf },
    /// Replay a journal and weigh the state it leaves (the journal mode).
    JournalReplay { journal: PathBuf },
    /// Neon's guide, one tenant at a time: its URI from the API, refinery's `Runner` with its
    /// defaults, disconnect.
    Sequential {
        api_url: String,
        api_key: String,
        migrations_dir: PathBuf,
        project_ids: Vec<String>,
    },
    /// The `schemafleet plan` pipeline from a tenants file.
    Plan {
        policy: PathBuf,
        migrations_dir: PathBuf,
        tenants_file: PathBuf,
        out: PathBuf,
    },
}

/// What the child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    pub wall_s: f64,
    pub peak_rss_kb: u64,
    /// The mode's exit code (the `apply` command's for apply jobs).
    pub exit_code: u8,
    /// Raw jobs: tenants done and failed; plan jobs: tenants planned.
    pub succeeded: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Journal replay jobs: live heap bytes the replayed state holds.
    #[serde(default)]
    pub state_bytes: Option<u64>,
}

impl ChildReport {
    /// A per-tenant loop's report (raw, sequential): failed when any tenant failed.
    fn of_outcome(outcome: super::raw::RawOutcome, wall_s: f64) -> ChildReport {
        ChildReport {
            wall_s,
            peak_rss_kb: peak_rss_kb(),
            exit_code: u8::from(outcome.failed > 0),
            succeeded: outcome.succeeded,
            failed: outcome.failed,
            first_error: outcome.first_error,
            state_bytes: None,
        }
    }
}

pub async fn run() -> anyhow::Result<ExitStatus> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("the benchmark child cannot read its job from stdin")?;
    let job: Job = serde_json::from_str(&input)
        .context("the benchmark child got a malformed job on stdin (run `schemafleet bench` without --internal)")?;
    drop(input);
    let report = run_job(job).await?;
    println!("{CHILD_MARKER}{}", serde_json::to_string(&report)?);
    Ok(ExitStatus::Success)
}

async fn run_job(job: Job) -> anyhow::Result<ChildReport> {
    match job {
        Job::Raw {
            concurrency,
            probe_connection,
            migrations_dir,
            tenant_uris,
        } => {
            let set = crate::migrations::load(&migrations_dir)
                .with_context(|| format!("loading {}", migrations_dir.display()))?;
            let batch = super::raw::release_batch(&set, &crate::clock::now_rfc3339());
            let tenants: Vec<SecretUri> = tenant_uris.into_iter().map(SecretUri::new).collect();
            let started = Instant::now();
            let outcome = super::raw::run(&tenants, &batch, concurrency, probe_connection).await;
            Ok(ChildReport::of_outcome(
                outcome,
                started.elapsed().as_secs_f64(),
            ))
        }
        Job::Apply {
            plan,
            journal,
            api_url,
            api_key,
            api_rate_limit_per_min,
            operation_poll_ms,
            recorded_from,
            until_wave,
        } => {
            let args = ApplyArgs {
                plan,
                migrations: None,
                journal: Some(journal),
                until_wave,
                retry_failed: false,
                retry_checks: false,
                include_rolled_back: None,
                skip_bake: true,
                max_connections: 64,
                skip_recorded: recorded_from.is_some(),
                recorded_from: recorded_from.into_iter().collect(),
                output: OutputFormat::Json,
                no_progress: true,
                reference_url: None,
                reference_cache: None,
                api: ApiArgs {
                    api_url,
                    api_key: Some(api_key),
                    api_rate_limit_per_min,
                    operation_poll_ms,
                },
                runners: crate::cli::RunnerArgs::default(),
            };
            let started = Instant::now();
            let result = crate::cmd::apply::run(args).await;
            let wall_s = started.elapsed().as_secs_f64();
            let (exit_code, first_error) = match result {
                Ok(status) => (status.code(), None),
                Err(error) => (
                    ExitStatus::Error.code(),
                    Some(crate::secret::redact_uri(&format!("{error:#}"))),
                ),
            };
            Ok(ChildReport {
                wall_s,
                peak_rss_kb: peak_rss_kb(),
                exit_code,
                succeeded: 0,
                failed: 0,
                first_error,
                state_bytes: None,
            })
        }
        Job::Status { plan, journal } => {
            let args = crate::cli::StatusArgs {
                plan,
                journal: Some(journal),
                state: crate::cli::StateArgs { state: None },
                live: false,
                concurrency: 1,
                output: OutputFormat::Text,
                all_restore_points: false,
                api: ApiArgs {
                    api_url: String::new(),
                    api_key: None,
                    api_rate_limit_per_min: 1,
                    operation_poll_ms: 1000,
                },
            };
            let started = Instant::now();
            let result = crate::cmd::status::run(args).await;
            let wall_s = started.elapsed().as_secs_f64();
            let (exit_code, first_error) = match result {
                Ok(status) => (status.code(), None),
                Err(error) => (ExitStatus::Error.code(), Some(format!("{error:#}"))),
            };
            Ok(ChildReport {
                wall_s,
                peak_rss_kb: peak_rss_kb(),
                exit_code,
                succeeded: 0,
                failed: 0,
                first_error,
                state_bytes: None,
            })
        }
        Job::JournalReplay { journal } => {
            // Synchronous on purpose: the job runs on the runtime's main thread, whose heap
            // arena the allocator's count covers.
            let before = super::journal::live_heap_bytes();
            let started = Instant::now();
            let result = crate::journal::Journal::read(&journal);
            let wall_s = started.elapsed().as_secs_f64();
            let (state_bytes, tenants, first_error) = match result {
                Ok(read) => {
                    let bytes = super::journal::live_heap_bytes().saturating_sub(before);
                    (Some(bytes), read.state.tenant_count(), None)
                }
                Err(error) => (None, 0, Some(error.to_string())),
            };
            Ok(ChildReport {
                wall_s,
                peak_rss_kb: peak_rss_kb(),
                exit_code: u8::from(first_error.is_some()),
                succeeded: tenants,
                failed: 0,
                first_error,
                state_bytes,
            })
        }
        Job::Sequential {
            api_url,
            api_key,
            migrations_dir,
            project_ids,
        } => {
            let set = crate::migrations::load(&migrations_dir)
                .with_context(|| format!("loading {}", migrations_dir.display()))?;
            let client = crate::cmd::api::client(&ApiArgs {
                api_url,
                api_key: Some(api_key),
                api_rate_limit_per_min: 1_000_000,
                operation_poll_ms: 100,
            })?;
            let started = Instant::now();
            let outcome = super::sequential::run(&client, &project_ids, &set.to_refinery()).await;
            Ok(ChildReport::of_outcome(
                outcome,
                started.elapsed().as_secs_f64(),
            ))
        }
        Job::Plan {
            policy,
            migrations_dir,
            tenants_file,
            out,
        } => {
            let started = Instant::now();
            let result = crate::plan::pipeline::plan_from_tenants_file(
                &policy,
                &migrations_dir,
                Some(&tenants_file),
                Some(&out),
            );
            let wall_s = started.elapsed().as_secs_f64();
            let (succeeded, exit_code, first_error) = match result {
                Ok(outcome) => (
                    outcome
                        .plan
                        .waves
                        .iter()
                        .map(|wave| wave.tenants.len())
                        .sum(),
                    0,
                    None,
                ),
                Err(error) => (0, ExitStatus::Error.code(), Some(format!("{error:#}"))),
            };
            Ok(ChildReport {
                wall_s,
                peak_rss_kb: peak_rss_kb(),
                exit_code,
                succeeded,
                failed: 0,
                first_error,
                state_bytes: None,
            })
        }
    }
}

/// This process's peak resident set (VmHWM) in KiB; 0 where /proc is not available.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_vm_hwm_kb(&status))
        .unwrap_or(0)
}

fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status =
            "Name:\tschemafleet\nVmPeak:\t  900000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(12_345));
        assert_eq!(parse_vm_hwm_kb("Name: x\n"), None);
        assert!(peak_rss_kb() > 0, "this test process has a peak RSS");
    }
}

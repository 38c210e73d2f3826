//! Where a run's time went, step by step, summed over its tenants: measured where each step
//! runs, so a slow rollout can be blamed on the API, branch copies, migrations or the journal
//! without guessing from timestamps.
//!
//! Sums of concurrent steps: with 32 tenants in flight a step's total can exceed the wall time.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One timed step of the tenant pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedStep {
    /// Neon API: main's (or a branch's) connection URI. Like every API step, this includes
    /// time waiting in the client's own rate limiter (`api.rate_limiter_wait_ms` in the report).
    ConnectionUri,
    /// Opening a connection to main (TLS and authentication included).
    ConnectMain,
    /// Reading main's history table.
    ProbeMain,
    /// Neon API: creating a branch and waiting for its operations (the copy, on the emulator).
    CreateBranch,
    /// Connecting to the validation branch, migrating it, running the verify SQL.
    MigrateBranch,
    /// Neon API: requesting a branch's delete (its operations are not waited for here).
    DeleteBranch,
    /// Neon API: at the end of the run, the one read each of the validation branches' create
    /// and delete operations whose delete was still young then (`settle`).
    SettleBranch,
    /// Taking main's advisory lock apart from the probe and the release (after a lost
    /// connection), and polling it while another runner holds it.
    LockMain,
    /// Applying the pending migrations to main, lock-timeout retries included.
    MigrateMain,
    /// Appending journal records (durable before the step they announce).
    Journal,
}

impl TimedStep {
    const ALL: [TimedStep; 10] = [
        TimedStep::ConnectionUri,
        TimedStep::ConnectMain,
        TimedStep::ProbeMain,
        TimedStep::CreateBranch,
        TimedStep::MigrateBranch,
        TimedStep::DeleteBranch,
        TimedStep::SettleBranch,
        TimedStep::LockMain,
        TimedStep::MigrateMain,
        TimedStep::Journal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TimedStep::ConnectionUri => "connection_uri",
            TimedStep::ConnectMain => "connect_main",
            TimedStep::ProbeMain => "probe_main",
            TimedStep::CreateBranch => "create_branch",
            TimedStep::MigrateBranch => "migrate_branch",
            TimedStep::DeleteBranch => "delete_branch",
            TimedStep::SettleBranch => "settle_branch",
            TimedStep::LockMain => "lock_main",
            TimedStep::MigrateMain => "migrate_main",
            TimedStep::Journal => "journal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Running totals, shared by every tenant task of a run.
#[derive(Debug, Default)]
pub struct StepTimings {
    micros: [AtomicU64; TimedStep::ALL.len()],
    counts: [AtomicU64; TimedStep::ALL.len()],
}

/// One step's figures in a run's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: String,
    /// How many times the step ran.
    pub count: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
}

impl StepTimings {
    pub fn add(&self, step: TimedStep, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.micros[step.index()].fetch_add(micros, Ordering::Relaxed);
        self.counts[step.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Run `work` and add its duration to `step`, whatever it returns.
    pub async fn time<T>(&self, step: TimedStep, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let output = work.await;
        self.add(step, started.elapsed());
        output
    }

    /// The steps that ran, in pipeline order.
    pub fn summary(&self) -> Vec<StepTiming> {
        TimedStep::ALL
            .iter()
            .filter_map(|step| {
                let count = self.counts[step.index()].load(Ordering::Relaxed);
                let total_ms = self.micros[step.index()].load(Ordering::Relaxed) as f64 / 1000.0;
                (count > 0).then(|| StepTiming {
                    step: step.as_str().to_string(),
                    count,
                    total_ms: tenth(total_ms),
                    mean_ms: tenth(total_ms / count as f64),
                })
            })
            .collect()
    }
}

/// Rounded to 0.1 ms: finer is noise, and reports stay readable.
fn tenth(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_sum_and_average_and_unused_steps_are_left_out() {
        let timings = StepTimings::default();
        timings.add(TimedStep::MigrateMain, Duration::from_millis(30));
        timings.add(TimedStep::MigrateMain, Duration::from_micros(10_012));
        timings.add(TimedStep::ConnectionUri, Duration::from_micros(1500));
        let summary = timings.summary();
        assert_eq!(
            summary,
            vec![
                StepTiming {
                    step: "connection_uri".into(),
                    count: 1,
                    total_ms: 1.5,
                    mean_ms: 1.5
                },
                StepTiming {
                    step: "migrate_main".into(),
                    count: 2,
                    total_ms: 40.0,
                    mean_ms: 20.0
                },
            ]
        );
    }

    #[tokio::test]
    async fn timing_a_future_counts_it_once_and_passes_its_output_through() {
        let timings = StepTimings::default();
        let output = timings
            .time(TimedStep::Journal, async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                7
            })
            .await;
        assert_eq!(output, 7);
        let summary = timings.summary();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].step, "journal");
        assert!(summary[0].total_ms >= 5.0, "{summary:?}");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = TimedStep::ALL.iter().map(|step| step.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TimedStep::ALL.len());
    }
}

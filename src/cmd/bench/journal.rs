//! The `journal` mode (issue 23): what reading a large rollout's journal costs.
//!
//! The parent plans N tenants from a tenants file with the example rollout's three waves, then
//! writes, through the real journal writer ([`Journal::append`], so the records, their
//! serializer and the writer's own checkpoints are exactly what `apply` writes), the journal of
//! a full validated rollout of that plan: eight records per tenant (probed, branch requested,
//! created and deleted, validated, restore point, apply started, applied), tenants interleaved
//! by their wave's concurrency as a run interleaves them, the run closed cleanly. A second
//! journal stops at half of those records and is dropped without a close: what a kill leaves.
//!
//! Each measurement is a child process (its own peak RSS): `status` of the finished rollout,
//! `apply` of the finished rollout (against a local emulator, for the API preflight only: no
//! tenant is left to touch), `apply --until-wave early` on the killed journal (a resume whose
//! replay is all the work: the waves it stops after are done), and a bare replay whose state
//! is weighed with the allocator's own count.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::child::{ChildReport, Job};
use crate::journal::{Event, Journal, RestorePoint};
use crate::plan::model::{Plan, PlannedTenant};

/// Appends handed to the writer at once: one group commit each.
const APPEND_BATCH: usize = 8192;

/// Records per tenant of a validated rollout with a branch-point restore point.
pub const RECORDS_PER_TENANT: usize = 8;

/// One child's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub wall_s: f64,
    pub peak_rss_mb: f64,
    pub exit_code: u8,
    pub error: Option<String>,
}

impl Measured {
    fn of(child: &ChildReport) -> Measured {
        Measured {
            wall_s: child.wall_s,
            peak_rss_mb: child.peak_rss_kb as f64 / 1024.0,
            exit_code: child.exit_code,
            error: child.first_error.clone(),
        }
    }
}

/// What the `journal` mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct JournalBench {
    pub tenants: usize,
    /// Records of the finished rollout's journal (checkpoints included), and its size.
    pub records: u64,
    pub journal_mb: f64,
    pub killed_journal_mb: f64,
    /// Seconds the parent took to write both journals (not a measured mode).
    pub write_s: f64,
    pub status: Measured,
    pub apply_finished: Measured,
    pub resume_killed: Measured,
    pub replay: Measured,
    /// Heap bytes of the replayed state of the finished rollout, per tenant (the allocator's
    /// count of live bytes before and after the replay, on the thread that replayed).
    pub state_bytes_per_tenant: f64,
}

impl JournalBench {
    pub fn line(&self) -> String {
        format!(
            "mode=journal tenants={} records={} journal_mb={:.1} status_s={:.3} status_rss_mb={:.1} apply_finished_s={:.3} apply_finished_rss_mb={:.1} resume_at_50pct_s={:.3} resume_at_50pct_rss_mb={:.1} replay_s={:.3} replay_rss_mb={:.1} state_bytes_per_tenant={:.0}",
            self.tenants,
            self.records,
            self.journal_mb,
            self.status.wall_s,
            self.status.peak_rss_mb,
            self.apply_finished.wall_s,
            self.apply_finished.peak_rss_mb,
            self.resume_killed.wall_s,
            self.resume_killed.peak_rss_mb,
            self.replay.wall_s,
            self.replay.peak_rss_mb,
            self.state_bytes_per_tenant,
        )
    }

    /// Every child ran to its end as expected.
    pub fn succeeded(&self) -> bool {
        [
            &self.status,
            &self.apply_finished,
            &self.resume_killed,
            &self.replay,
        ]
        .iter()
        .all(|measured| measured.exit_code == 0 && measured.error.is_none())
    }
}

/// Plan `tenants` tenants in `dir`, write both journals, measure the children.
pub async fn run(
    tenants: usize,
    dir: &Path,
    migrations_dir: &Path,
    policy_text: &str,
) -> anyhow::Result<JournalBench> {
    let plan = plan_tenants(tenants, dir, migrations_dir, policy_text)?;
    let plan_path = dir.join("plan.yaml");
    let journal = dir.join("finished.journal.jsonl");
    let killed = dir.join("killed.journal.jsonl");
    for path in [&journal, &killed] {
        let _ = std::fs::remove_file(path);
    }
    super::modes::progress(&format!(
        "writing the journal of a validated rollout of {tenants} tenants (and one killed at 50%)"
    ));
    let started = std::time::Instant::now();
    let all_records = rollout_events(&plan, usize::MAX).count() as u64;
    write_journal(&journal, &plan, usize::MAX, true).await?;
    write_journal(&killed, &plan, (all_records / 2) as usize, false).await?;
    let write_s = started.elapsed().as_secs_f64();
    let records = count_lines(&journal)?;
    let journal_mb = file_mb(&journal)?;
    let killed_journal_mb = file_mb(&killed)?;
    drop(plan);

    let (_, replay) = super::modes::run_child(&Job::JournalReplay {
        journal: journal.clone(),
    })
    .await?;
    let (_, status) = super::modes::run_child(&Job::Status {
        plan: plan_path.clone(),
        journal: journal.clone(),
    })
    .await?;
    super::modes::progress("starting a local emulator for `apply`'s API preflight");
    let mut config = crate::emulator::LocalFleetConfig::for_tests();
    config.tuned_for_benchmark = true;
    let fleet = crate::emulator::LocalFleet::start(config).await?;
    let apply_job = |journal: &Path, until_wave: Option<&str>| Job::Apply {
        plan: plan_path.clone(),
        journal: journal.to_path_buf(),
        api_url: fleet.api_url().to_string(),
        api_key: fleet.api_key().expose().to_string(),
        api_rate_limit_per_min: 1_000_000,
        operation_poll_ms: 20,
        until_wave: until_wave.map(str::to_string),
        recorded_from: None,
    };
    let apply_finished = super::modes::run_child(&apply_job(&journal, None)).await;
    let resume_killed = super::modes::run_child(&apply_job(&killed, Some("early"))).await;
    let _ = fleet.stop().await;
    let (_, apply_finished) = apply_finished?;
    let (_, resume_killed) = resume_killed?;
    Ok(JournalBench {
        tenants,
        records,
        journal_mb,
        killed_journal_mb,
        write_s,
        status: Measured::of(&status),
        apply_finished: Measured::of(&apply_finished),
        resume_killed: Measured::of(&resume_killed),
        replay: Measured::of(&replay),
        state_bytes_per_tenant: replay.state_bytes.unwrap_or(0) as f64 / tenants.max(1) as f64,
    })
}

/// The plan of `tenants` tenants from a tenants file (written beforehand).
fn plan_tenants(
    tenants: usize,
    dir: &Path,
    migrations_dir: &Path,
    policy_text: &str,
) -> anyhow::Result<Plan> {
    let _ = std::fs::remove_file(dir.join("plan.yaml"));
    let tenants_file = dir.join("tenants.csv");
    let mut csv = String::with_capacity(tenants * 48 + 16);
    csv.push_str("id,name\n");
    for tenant_idx in 1..=tenants {
        csv.push_str(&format!(
            "p-bench-journal-{tenant_idx:07},tenant-{tenant_idx:07}\n"
        ));
    }
    std::fs::write(&tenants_file, csv)
        .with_context(|| format!("cannot write {}", tenants_file.display()))?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, policy_text)
        .with_context(|| format!("cannot write {}", policy.display()))?;
    let outcome = crate::plan::pipeline::plan_from_tenants_file(
        &policy,
        migrations_dir,
        Some(&tenants_file),
        Some(&dir.join("plan.yaml")),
    )?;
    Ok(outcome.plan)
}

/// Write the first `limit` events of the plan's rollout through the real writer; `close` ends
/// it as a finished run does, otherwise the handle is dropped as a kill leaves it.
async fn write_journal(path: &Path, plan: &Plan, limit: usize, close: bool) -> anyhow::Result<()> {
    let (journal, _) = Journal::open(path, &plan.plan_id)?;
    let mut events = rollout_events(plan, limit);
    loop {
        let batch: Vec<Event> = events.by_ref().take(APPEND_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let appends = batch.into_iter().map(|event| journal.append(event));
        for result in futures::future::join_all(appends).await {
            result?;
        }
    }
    if close {
        journal.close().await;
    } else {
        drop(journal);
        // The writer thread notices the dropped handle and releases the lock; wait for that so
        // the measured child does not find the journal locked.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while Journal::open(path, &plan.plan_id).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the killed journal stayed locked"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The events of a full validated rollout of `plan`, as the executor appends them, cut after
/// `limit` events.
fn rollout_events(plan: &Plan, limit: usize) -> impl Iterator<Item = Event> + '_ {
    let facts = std::rc::Rc::new(RolloutFacts {
        versions: plan
            .migrations
            .items
            .iter()
            .map(|item| item.version)
            .collect(),
        plan_prefix: plan.plan_id.chars().take(12).collect(),
        now: crate::clock::now_rfc3339(),
        expires: crate::clock::rfc3339_seconds_from_now(std::time::Duration::from_secs(7200)),
    });
    let run_id = format!("run-{}", crate::clock::compact_stamp());
    let start = std::iter::once(Event::RunStarted {
        plan_id: plan.plan_id.clone(),
        run_id: run_id.clone(),
        pid: std::process::id(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    let last_wave = plan.waves.len().saturating_sub(1);
    let waves = plan
        .waves
        .iter()
        .enumerate()
        .flat_map(move |(wave_idx, wave)| {
            let facts = facts.clone();
            let body = wave
                .tenants
                .chunks(wave.concurrency.max(1))
                .flat_map(move |group| facts.group_events(&wave.name, group));
            let bake_until = (wave_idx != last_wave && wave.bake_s > 0).then(|| {
                crate::clock::rfc3339_seconds_from_now(std::time::Duration::from_secs(wave.bake_s))
            });
            std::iter::once(Event::WaveStarted {
                wave: wave.name.clone(),
            })
            .chain(body)
            .chain(std::iter::once(Event::WaveFinished {
                wave: wave.name.clone(),
                halted: false,
                bake_until,
            }))
        });
    let finish = std::iter::once(Event::RunFinished {
        run_id,
        outcome: "completed".into(),
    });
    start.chain(waves).chain(finish).take(limit)
}

/// What every tenant's records share.
struct RolloutFacts {
    versions: Vec<i32>,
    plan_prefix: String,
    now: String,
    expires: String,
}

impl RolloutFacts {
    /// The records of tenants migrated together, step by step, as concurrent tasks leave them.
    fn group_events(&self, wave: &str, group: &[PlannedTenant]) -> Vec<Event> {
        let mut events = Vec::with_capacity(group.len() * RECORDS_PER_TENANT);
        for step in 0..RECORDS_PER_TENANT {
            for tenant in group {
                events.push(self.tenant_event(step, wave, &tenant.id));
            }
        }
        events
    }

    /// The `step`th record of one tenant's validated apply, with ids shaped like Neon's.
    fn tenant_event(&self, step: usize, wave: &str, tenant_id: &str) -> Event {
        let number = tenant_number(tenant_id);
        let tenant = tenant_id.to_string();
        let wave = wave.to_string();
        let branch_name = format!(
            "schemafleet-validate-{}-20261202t101500z-{:04x}",
            self.plan_prefix,
            number % 0xffff
        );
        let branch_id = format!("br-bench-validate-{number:08x}");
        let main_branch_id = format!("br-bench-main-{number:08x}");
        let lsn = format!("0/{:X}", 0x0150_0000 + number * 0x1000);
        let versions = self.versions.clone();
        match step {
            0 => Event::TenantProbed {
                tenant,
                wave,
                current_version: None,
                pending: versions,
            },
            1 => Event::BranchRequested {
                tenant,
                wave,
                purpose: "validate".into(),
                branch_name,
            },
            2 => Event::BranchCreated {
                tenant,
                wave,
                purpose: "validate".into(),
                branch_id,
                branch_name,
                parent_branch_id: Some(main_branch_id),
                parent_lsn: Some(lsn),
                expires_at: Some(self.expires.clone()),
            },
            3 => Event::BranchDeleted { tenant, branch_id },
            4 => Event::Validated {
                tenant,
                wave,
                versions,
                lock_holds: Vec::new(),
            },
            5 => Event::RestorePointRecorded {
                tenant,
                wave,
                point: RestorePoint::BranchPoint {
                    main_branch_id,
                    lsn,
                    timestamp: Some(self.now.clone()),
                },
            },
            6 => Event::ApplyStarted {
                tenant,
                wave,
                versions,
            },
            _ => Event::Applied {
                tenant,
                wave,
                versions,
                lock_retries: 0,
            },
        }
    }
}

/// The number in a bench tenant's id (`p-bench-journal-0000042` → 42).
fn tenant_number(id: &str) -> usize {
    id.rsplit('-')
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

fn file_mb(path: &Path) -> anyhow::Result<f64> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    Ok(len as f64 / (1024.0 * 1024.0))
}

fn count_lines(path: &PathBuf) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        lines += buffer[..read].iter().filter(|byte| **byte == b'\n').count() as u64;
    }
    Ok(lines)
}

/// Live heap bytes the allocator counts for this thread's arena (glibc: the main thread's,
/// where the benchmark child replays); 0 where that count is not available.
pub fn live_heap_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        (info.uordblks + info.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_tenant_number_is_read_from_its_id() {
        assert_eq!(tenant_number("p-bench-journal-0000042"), 42);
        assert_eq!(tenant_number("other"), 0);
    }
}

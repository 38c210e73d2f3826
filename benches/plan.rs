//! Plans a 300,000-tenant fleet from a tenants file and reports wall time and peak memory.
//!
//! `cargo bench --bench plan` (release). Targets on this project's 2-core machine: load, plan
//! and write under 1 s, peak RSS under 150 MB. Set `SCHEMAFLEET_BENCH_TENANTS` to change the
//! fleet size.
//!
//! The tenants file is generated first (streamed, so it does not raise the peak); the timed part
//! is exactly what `schemafleet plan --tenants FILE` does: read the policy and migrations, read
//! and filter the fleet, assign waves, digest, write the plan atomically, summarize.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use schemafleet::plan::plan_from_tenants_file;

const TARGET_SECONDS: f64 = 1.0;
const TARGET_PEAK_MB: f64 = 150.0;

const POLICY: &str = "\
fleet:
  source: file
  file: tenants.csv
  name_prefix: tenant-
  exclude: [p-0000010, p-0000020]
database: neondb
role: neondb_owner
validation: branch
restore_point: branch_point
salt: bench-release
waves:
  - name: canary
    tenants: [p-0000001, tenant-0000002]
    percent: 2
    concurrency: 4
    max_failures: 0
    bake: 10m
  - name: free-early
    percent: 25
    concurrency: 16
    max_failure_percent: 5
    match: {label: tier=free}
  - name: rest
    percent: 100
    concurrency: 32
    max_failure_percent: 1
";

fn main() -> anyhow::Result<()> {
    let n_tenants: usize = std::env::var("SCHEMAFLEET_BENCH_TENANTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300_000);
    let dir = tempfile::tempdir()?;
    let policy_path = dir.path().join("rollout.yaml");
    let tenants_path = dir.path().join("tenants.csv");
    let plan_path = dir.path().join("rollout.plan.yaml");
    fs::write(&policy_path, POLICY)?;
    write_tenants(&tenants_path, n_tenants)?;
    let migrations_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let rss_before_mb = status_kib("VmRSS:").unwrap_or(0) as f64 / 1024.0;

    let started = Instant::now();
    let outcome = plan_from_tenants_file(&policy_path, &migrations_dir, None, Some(&plan_path))?;
    let seconds = started.elapsed().as_secs_f64();

    let peak_mb = status_kib("VmHWM:").unwrap_or(0) as f64 / 1024.0;
    let plan_mb = fs::metadata(&plan_path)?.len() as f64 / (1024.0 * 1024.0);
    let waves: Vec<String> = outcome
        .summary
        .waves
        .iter()
        .map(|wave| format!("{}={}", wave.name, wave.tenants))
        .collect();
    println!(
        "plan bench: {n_tenants} tenants ({} planned, {} excluded), waves [{}]",
        outcome.summary.planned,
        outcome.summary.excluded,
        waves.join(", ")
    );
    println!(
        "plan bench: load+plan+write {seconds:.3} s (target < {TARGET_SECONDS} s), peak RSS {peak_mb:.1} MB (VmHWM; {rss_before_mb:.1} MB before; target < {TARGET_PEAK_MB} MB), plan file {plan_mb:.1} MB"
    );
    let met = seconds < TARGET_SECONDS && peak_mb < TARGET_PEAK_MB;
    println!("plan bench: targets {}", if met { "met" } else { "MISSED" });
    Ok(())
}

/// `tenant-NNNNNNN` projects, one in ten on the paid tier, spread over two regions.
fn write_tenants(path: &Path, n_tenants: usize) -> std::io::Result<()> {
    let mut writer = BufWriter::with_capacity(1 << 16, fs::File::create(path)?);
    writeln!(writer, "id,name,region,labels")?;
    for number in 1..=n_tenants {
        let region = if number % 3 == 0 {
            "aws-eu-central-1"
        } else {
            "aws-us-east-2"
        };
        let tier = if number % 10 == 0 { "paid" } else { "free" };
        writeln!(
            writer,
            "p-{number:07},tenant-{number:07},{region},tier={tier}"
        )?;
    }
    writer.flush()
}

/// A `/proc/self/status` field in KiB (Linux).
fn status_kib(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

//! One local fleet for the benchmark: an emulator over a PostgreSQL cluster started with
//! `tuned_for_benchmark`, seeded tenants, and the server log with `log_connections = on`, which
//! is how connections are counted: every `connection authorized` line whose application name
//! starts with `schemafleet` (the name [`crate::pg::connect`] sets) is one connection the tool
//! opened; the emulator's own sessions are named `neon-emulator` and are not counted.
//!
//! **Invariant:** the cluster's data directory is created here and removed (by a detached
//! `rm -rf`) when the fleet stops or is dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;

use super::assets;
use super::report::ComputeUse;
use crate::emulator::{
    ComputeConfig, ComputeStats, EmulatorStats, LocalFleet, LocalFleetConfig, SeededTenant,
};
use crate::secret::SecretUri;

/// How the fleet is started.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub tenants: usize,
    pub op_delay: Duration,
    pub rate_limit_per_min: Option<u32>,
    /// Prefix of the tenants' names (tenants files and plans show it).
    pub name_prefix: String,
    /// Added to every API request (the emulator's `--latency-ms`).
    pub api_latency: Duration,
    /// Round-trip time, cold starts and scale to zero behind the emulator's proxy.
    pub compute: ComputeConfig,
}

pub struct BenchFleet {
    /// Always `Some` until [`BenchFleet::stop`] or drop takes it.
    fleet: Option<LocalFleet>,
    pub tenants: Vec<SeededTenant>,
    data_dir: PathBuf,
    /// How long seeding took, for the report.
    pub seed_s: f64,
}

impl BenchFleet {
    pub async fn start(options: &FleetOptions) -> anyhow::Result<BenchFleet> {
        static FLEETS_STARTED: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(0);
        let fleet_idx = FLEETS_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Under the system temp directory, not the workdir: the server runs as `postgres` when
        // we are root, and must be able to reach its data directory.
        let data_dir = std::env::temp_dir().join(format!(
            "schemafleet-bench-{}-pg{fleet_idx}",
            std::process::id()
        ));
        let mut config = LocalFleetConfig::for_tests();
        config.data_dir = Some(data_dir.clone());
        config.tuned_for_benchmark = true;
        // The emulator's restore window costs a full copy of main per branch, kept for a day:
        // an emulation artifact (Neon's branches are copy-on-write) that would fill the disk
        // (~8 MB per validated tenant and mode) and is not what the benchmark measures.
        config.history_retention_seconds = 0;
        config.op_delay = options.op_delay;
        config.rate_limit_per_min = options.rate_limit_per_min;
        config.latency = options.api_latency;
        config.compute = options.compute.clone();
        let fleet = match LocalFleet::start(config).await {
            Ok(fleet) => fleet,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(error);
            }
        };
        let mut bench_fleet = BenchFleet {
            fleet: Some(fleet),
            tenants: Vec::new(),
            data_dir,
            seed_s: 0.0,
        };
        if let Err(error) = bench_fleet.prepare(options).await {
            bench_fleet.stop().await;
            return Err(error);
        }
        Ok(bench_fleet)
    }

    async fn prepare(&mut self, options: &FleetOptions) -> anyhow::Result<()> {
        self.enable_log_connections().await?;
        self.admin()
            .await?
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .context(
                "cannot create pg_stat_statements (the benchmark counts statements with it)",
            )?;
        let started = Instant::now();
        self.tenants = self
            .fleet()
            .seed(options.tenants, assets::SEED_SQL, &options.name_prefix)
            .await
            .with_context(|| format!("cannot seed {} benchmark tenants", options.tenants))?;
        self.seed_s = started.elapsed().as_secs_f64();
        self.settle().await
    }

    /// Write out what seeding or a reset left dirty, so the next measured mode does not pay for
    /// it: without this the first mode after seeding (always `raw`) ran a fifth slower.
    pub async fn settle(&self) -> anyhow::Result<()> {
        self.admin()
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .context("cannot checkpoint the benchmark cluster")
    }

    async fn enable_log_connections(&self) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        // ALTER SYSTEM refuses to run in a transaction block: one statement per call.
        for statement in [
            "ALTER SYSTEM SET log_connections = on",
            "SELECT pg_reload_conf()",
        ] {
            admin
                .batch_execute(statement)
                .await
                .with_context(|| format!("cannot turn on connection logging ({statement})"))?;
        }
        // The postmaster applies the reload asynchronously; new sessions must see it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = self.admin().await?;
            let row = probe.query_one("SHOW log_connections", &[]).await?;
            if row.get::<_, String>(0) == "on" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("log_connections did not turn on within 10 s after pg_reload_conf()");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        crate::pg::connect(self.fleet().database_url(), Duration::from_secs(30))
            .await
            .map_err(|failure| anyhow::anyhow!("cannot connect to the fleet's cluster: {failure}"))
    }

    fn fleet(&self) -> &LocalFleet {
        self.fleet
            .as_ref()
            .expect("invariant: the fleet is only taken by stop() and drop, which consume self")
    }

    pub fn api_url(&self) -> &str {
        self.fleet().api_url()
    }

    pub fn api_key(&self) -> &str {
        self.fleet().api_key().expose()
    }

    pub fn cluster_settings(&self) -> String {
        self.fleet().cluster_settings().to_string()
    }

    pub fn emulator_stats(&self) -> EmulatorStats {
        self.fleet().stats()
    }

    /// Suspend every tenant's endpoints, as a fleet mostly is before a rollout, and return the
    /// compute counters from there.
    pub fn suspend_all(&self) -> ComputeStats {
        self.fleet().suspend_all_endpoints();
        self.fleet().compute_stats()
    }

    pub fn compute_stats(&self) -> ComputeStats {
        self.fleet().compute_stats()
    }

    /// Start measuring a mode: every endpoint suspended, the statement counts zeroed.
    pub async fn begin_measure(&self) -> anyhow::Result<ComputeStats> {
        self.admin()
            .await?
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .context("cannot reset pg_stat_statements")?;
        Ok(self.suspend_all())
    }

    /// What the mode cost the computes since [`BenchFleet::begin_measure`] returned `before`.
    pub async fn end_measure(&self, before: &ComputeStats) -> anyhow::Result<ComputeUse> {
        let after = self.compute_stats();
        // Statements of tenants' roles only: the emulator and this benchmark work as superuser.
        let row = self
            .admin()
            .await?
            .query_one(
                "SELECT coalesce(sum(s.calls), 0)::int8 FROM pg_stat_statements s \
                 JOIN pg_roles r ON r.oid = s.userid WHERE NOT r.rolsuper",
                &[],
            )
            .await
            .context("cannot read pg_stat_statements")?;
        let statements: i64 = row.get(0);
        let main_endpoints: std::collections::HashSet<&str> = self
            .tenants
            .iter()
            .filter_map(|tenant| endpoint_of(tenant.connection_uri.expose()))
            .collect();
        Ok(ComputeUse::between(
            before,
            &after,
            &main_endpoints,
            statements.max(0) as u64,
            self.tenants.len(),
        ))
    }

    fn server_log(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }

    /// Where the server log ends now; [`BenchFleet::connections_since`] counts from here.
    pub fn log_offset(&self) -> anyhow::Result<u64> {
        let path = self.server_log();
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("cannot read the server log {}", path.display()))?
            .len())
    }

    /// Connections the tool opened since `offset` (see the module header).
    pub fn connections_since(&self, offset: u64) -> anyhow::Result<usize> {
        let path = self.server_log();
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the server log {}", path.display()))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        Ok(count_tool_connections(&String::from_utf8_lossy(
            &bytes[start..],
        )))
    }

    /// Tenants in a tenants file for `schemafleet plan`.
    pub fn write_tenants_file(&self, path: &Path, tenants: &[SeededTenant]) -> anyhow::Result<()> {
        let mut csv = String::from("id,name\n");
        for tenant in tenants {
            csv.push_str(&format!("{},{}\n", tenant.project_id, tenant.name));
        }
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Undo the release on every tenant's main (as superuser, behind the API). Returns how many
    /// tenants had the whole release recorded in their history before the reset.
    pub async fn reset(&self, release_len: i64) -> anyhow::Result<usize> {
        let uris: Vec<SecretUri> = self
            .tenants
            .iter()
            .map(|tenant| {
                self.fleet()
                    .branch_superuser_uri(&tenant.project_id, &tenant.branch_id)
                    .ok_or_else(|| anyhow::anyhow!("tenant {} has no main database", tenant.name))
            })
            .collect::<anyhow::Result<_>>()?;
        let results: Vec<anyhow::Result<bool>> = futures::stream::iter(uris)
            .map(|uri| async move {
                let client = crate::pg::connect(&uri, Duration::from_secs(30))
                    .await
                    .map_err(|failure| anyhow::anyhow!("reset: {failure}"))?;
                let recorded: i64 = match client
                    .query_one("SELECT count(*) FROM refinery_schema_history", &[])
                    .await
                {
                    Ok(row) => row.get(0),
                    Err(_) => 0,
                };
                client
                    .batch_execute(assets::RESET_SQL)
                    .await
                    .map_err(|error| anyhow::anyhow!("reset: {error:#}"))?;
                Ok(recorded == release_len)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut complete = 0;
        for result in results {
            if result? {
                complete += 1;
            }
        }
        self.settle().await?;
        Ok(complete)
    }

    /// Time `copies` sequential copies of one tenant's main (what the emulator does per branch;
    /// with no restore window, no second copy for a snapshot), alone on the cluster.
    /// Milliseconds each.
    pub async fn time_branch_copy(&self, copies: usize) -> anyhow::Result<f64> {
        let Some(tenant) = self.tenants.first() else {
            return Ok(0.0);
        };
        let uri = self
            .fleet()
            .branch_superuser_uri(&tenant.project_id, &tenant.branch_id)
            .ok_or_else(|| anyhow::anyhow!("tenant {} has no main database", tenant.name))?;
        let database = url::Url::parse(uri.expose())
            .map(|url| url.path().trim_start_matches('/').to_string())
            .context("the main database's URI does not parse")?;
        let admin = self.admin().await?;
        let mut total = Duration::ZERO;
        for copy_idx in 0..copies.max(1) {
            let copy = format!("bench_copy_probe_{copy_idx}");
            let started = Instant::now();
            admin
                .batch_execute(&format!(
                    "CREATE DATABASE {copy} TEMPLATE {database} STRATEGY WAL_LOG"
                ))
                .await
                .context("cannot time a branch copy")?;
            total += started.elapsed();
            admin
                .batch_execute(&format!("DROP DATABASE {copy}"))
                .await
                .context("cannot drop the timing copy")?;
        }
        Ok(total.as_secs_f64() * 1000.0 / copies.max(1) as f64)
    }

    pub async fn stop(mut self) {
        if let Some(fleet) = self.fleet.take()
            && let Err(error) = fleet.stop().await
        {
            eprintln!("warning: {error:#}");
        }
        remove_in_background(&self.data_dir);
    }
}

/// Removing gigabytes of databases takes minutes where every unlink issues a discard, so a
/// detached `rm -rf` does it (it outlives this process); removing in place is the fallback.
fn remove_in_background(dir: &Path) {
    let spawned = std::process::Command::new("rm")
        .arg("-rf")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_err()
        && let Err(error) = std::fs::remove_dir_all(dir)
    {
        eprintln!(
            "warning: cannot remove the benchmark cluster {}: {error}",
            dir.display()
        );
    }
}

impl Drop for BenchFleet {
    /// An interrupted benchmark (Ctrl-C drops the run) still stops its server and removes its
    /// data directory; the cluster's own drop stops the server first.
    fn drop(&mut self) {
        if let Some(fleet) = self.fleet.take() {
            drop(fleet);
            remove_in_background(&self.data_dir);
        }
    }
}

/// `connection authorized` lines of sessions named `schemafleet…`.
/// The endpoint a proxy URI names (`options=endpoint%3D<id>`).
fn endpoint_of(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once("endpoint%3D")?;
    Some(rest.split(['&', '%', '#']).next().unwrap_or(rest))
}

pub fn count_tool_connections(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("connection authorized:"))
        .filter(|line| line.contains("application_name=schemafleet"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tools_authorized_connections_count() {
        let log = "\
2026-01-01 00:00:00.000 UTC [10] LOG:  connection received: host=127.0.0.1 port=5000
2026-01-01 00:00:00.001 UTC [10] LOG:  connection authorized: user=p_abc database=b_main application_name=schemafleet
2026-01-01 00:00:00.002 UTC [11] LOG:  connection authorized: user=postgres database=postgres application_name=neon-emulator
2026-01-01 00:00:00.003 UTC [12] LOG:  connection authorized: user=p_abc database=b_x application_name=schemafleet
2026-01-01 00:00:00.004 UTC [12] LOG:  disconnection: session time: 0:00:00.010 user=p_abc database=b_x host=127.0.0.1 port=5001
";
        assert_eq!(count_tool_connections(log), 2);
        assert_eq!(count_tool_connections(""), 0);
    }
}

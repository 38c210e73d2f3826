//! A Neon-API-compatible local emulator over a real PostgreSQL server: the same JSON shapes,
//! status codes and error bodies for the v2 subset schemafleet uses, with tenants' databases as
//! real databases that migrations run against.
//!
//! # Layout
//! - [`LocalFleet`]: the library entry point (start, seed, stop) for tests, the demo and the
//!   benchmark; `schemafleet emulator` is a thin wrapper around it.
//! - `service`: the behaviour of each API call, free of HTTP; `http`: routes and the request
//!   gate (auth, rate limit, faults, latency, counters); `faults`: the knobs' machinery.
//! - `physical`: databases and roles in the backing cluster; `store`: the emulator's own state,
//!   persisted in that cluster; `state`/`model`: records and their JSON rendering.
//! - `seed`: fast fleet creation from one template; `reaper`: expiry and history clean-up.
//! - `proxy`: the PostgreSQL wire-protocol proxy every connection URI points at; `compute`:
//!   endpoints' lifecycle (cold starts, scale to zero), round-trip time and counters; `tls`,
//!   `proxy_auth`, `scram`: the proxy's TLS (certificate, SNI) and its own SCRAM on TLS.
//!
//! **Invariant:** each branch is exactly one physical database named after its branch id; each
//! project has its own login role that owns its branches' objects; the API reports that role as
//! `neondb_owner` while connection URIs carry the physical names.
//! **Invariant:** the emulator's state lives in the backing cluster (database `neon_emulator`), so
//! restarting over the same data directory serves the same fleet.

mod compute;
mod error;
mod faults;
mod http;
mod ids;
mod model;
mod physical;
mod proxy;
mod proxy_auth;
mod reaper;
mod scram;
mod seed;
mod service;
mod state;
mod store;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::task::JoinHandle;

pub use compute::{ComputeConfig, ComputeStats, EndpointStats, parse_suspend_after};
pub use faults::EmulatorStats;
pub use physical::CopyStrategy;
pub use proxy::{MISSING_ENDPOINT_MESSAGE, UNKNOWN_ENDPOINT_MESSAGE};
pub use seed::SeededTenant;

use crate::pgcluster::{PgCluster, PgClusterConfig};
use crate::secret::{SecretString, SecretUri};

/// Neon's per-project branch limit on paid plans.
const MAX_BRANCHES_PER_PROJECT: usize = 5000;

/// How to run a local fleet. Built explicitly (see [`LocalFleetConfig::for_tests`]).
#[derive(Debug, Clone)]
pub struct LocalFleetConfig {
    /// Keep the backing cluster here across restarts; `None` = a temporary cluster.
    pub data_dir: Option<PathBuf>,
    /// Use this existing server (superuser URL) instead of starting one.
    pub attach: Option<SecretUri>,
    /// Where to serve the API; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The key clients must present; `None` = a random one (see [`LocalFleet::api_key`]).
    pub api_key: Option<String>,
    /// Answer 429 past this many requests per minute.
    pub rate_limit_per_min: Option<u32>,
    /// Fraction of requests answered with a retryable 423/429/500/503/524.
    pub fault_rate: f64,
    /// How long operations run before they finish.
    pub op_delay: Duration,
    /// Added to every request.
    pub latency: Duration,
    /// Start the cluster with durability traded for speed (see [`PgClusterConfig`]).
    pub tuned_for_benchmark: bool,
    /// Restore window of projects created without one (seeded ones included). Every branch
    /// creation inside a window copies the parent's database, kept until the window passes.
    pub history_retention_seconds: i64,
    /// Fraction of operations that report `failed` for a while (Neon's control plane retries
    /// them) before they run again and finish.
    pub failed_operation_rate: f64,
    /// Where the PostgreSQL proxy listens; every connection URI the emulator hands out names it.
    pub proxy_listen: SocketAddr,
    /// Round-trip time, cold starts and scale to zero of the endpoints behind the proxy.
    pub compute: ComputeConfig,
}

impl LocalFleetConfig {
    /// A temporary cluster on 127.0.0.1, port 0, short operations, no faults, no rate limit.
    pub fn for_tests() -> Self {
        Self {
            data_dir: None,
            attach: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            rate_limit_per_min: None,
            fault_rate: 0.0,
            op_delay: Duration::from_millis(20),
            latency: Duration::ZERO,
            tuned_for_benchmark: false,
            history_retention_seconds: model::DEFAULT_HISTORY_RETENTION_SECONDS,
            failed_operation_rate: 0.0,
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            compute: ComputeConfig::off(),
        }
    }
}

/// Where the API key of a started emulator came from. The key is kept with the emulator's state,
/// so a restart over the same data directory (or attached server) serves the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeySource {
    /// Random, for state that had none (a new data directory).
    New,
    /// The one the state already had.
    Kept,
    /// Given by the caller, and the state had it or none.
    Given,
    /// Given by the caller and different from the one the state had: clients of the old one
    /// are refused from now on.
    Replaced,
}

/// A running emulator and the PostgreSQL cluster behind it.
pub struct LocalFleet {
    cluster: Option<PgCluster>,
    emulator: Arc<service::Emulator>,
    context: Arc<http::HttpContext>,
    api_url: String,
    api_key: SecretString,
    api_key_source: ApiKeySource,
    database_url: SecretUri,
    shutdown: StdMutex<Option<tokio::sync::oneshot::Sender<()>>>,
    server_task: Option<JoinHandle<()>>,
    reaper_task: Option<JoinHandle<()>>,
    proxy_task: Option<JoinHandle<()>>,
    proxy_address: SocketAddr,
}

impl std::fmt::Debug for LocalFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFleet")
            .field("api_url", &self.api_url)
            .field("database_url", &self.database_url)
            .finish()
    }
}

impl LocalFleet {
    pub async fn start(config: LocalFleetConfig) -> anyhow::Result<LocalFleet> {
        if config.api_key.as_deref().is_some_and(str::is_empty) {
            anyhow::bail!(
                "the emulator's API key is empty, which would let any request in; pass a \
                 non-empty --api-key (EMULATOR_API_KEY) or none for a random one"
            );
        }
        let cluster = match &config.attach {
            Some(url) => PgCluster::attach(url.clone())
                .await
                .context("cannot attach the emulator to the PostgreSQL server")?,
            None => PgCluster::start(PgClusterConfig {
                data_dir: config.data_dir.clone(),
                tuned_for_benchmark: config.tuned_for_benchmark,
                max_connections: 400,
            })
            .await
            .context("cannot start the emulator's PostgreSQL cluster")?,
        };
        let physical = physical::Physical::new(
            cluster.superuser_url().clone(),
            cluster.socket_dir().map(PathBuf::from),
            cluster.port(),
            cluster.bin_dir().map(PathBuf::from),
        )?;
        let server_major_version = physical
            .server_major_version()
            .await
            .context("cannot read the backing server's version")?;
        let store = store::Store::open(physical.clone())
            .await
            .context("cannot open the emulator's state in the backing cluster")?;
        let proxy_listener = tokio::net::TcpListener::bind(config.proxy_listen)
            .await
            .with_context(|| format!("cannot listen on {} for the proxy", config.proxy_listen))?;
        let proxy_address = proxy_listener.local_addr()?;
        let proxy_security = Arc::new(proxy::Security::new(
            tls::ProxyTls::generate().context("cannot make the proxy's TLS certificate")?,
        ));
        let mut initial_state = state::State::default();
        for document in store
            .load()
            .await
            .context("cannot load the emulator's state")?
        {
            initial_state.insert(document);
        }
        let emulator = Arc::new(service::Emulator {
            state: StdMutex::new(initial_state),
            store,
            physical,
            target: model::ConnectionTarget {
                host: proxy_address.ip().to_string(),
                port: proxy_address.port(),
            },
            computes: Arc::new(compute::Computes::new(config.compute.clone())),
            op_delay: config.op_delay,
            default_history_retention_seconds: config.history_retention_seconds,
            failed_operation_rate: config.failed_operation_rate.clamp(0.0, 1.0),
            max_branches_per_project: MAX_BRANCHES_PER_PROJECT,
            server_major_version,
        });

        let stored_key = emulator
            .store
            .api_key()
            .await
            .context("cannot read the emulator's API key")?
            .filter(|key| !key.is_empty());
        let (api_key, api_key_source) = match (config.api_key.clone(), stored_key) {
            (Some(given), Some(stored)) if given != stored => (given, ApiKeySource::Replaced),
            (Some(given), _) => (given, ApiKeySource::Given),
            (None, Some(stored)) => (stored, ApiKeySource::Kept),
            (None, None) => (random_api_key(), ApiKeySource::New),
        };
        emulator
            .store
            .set_api_key(&api_key)
            .await
            .context("cannot record the emulator's API key")?;
        let api_key = SecretString::new(api_key);
        let context = Arc::new(http::HttpContext {
            emulator: emulator.clone(),
            api_key: api_key.clone(),
            rate_limiter: config.rate_limit_per_min.map(faults::RateLimiter::new),
            faults: faults::FaultInjector::new(config.fault_rate),
            latency: config.latency,
            stats: faults::StatsRecorder::default(),
        });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        let (shutdown_sender, shutdown_receiver) = tokio::sync::oneshot::channel::<()>();
        let router = http::router(context.clone());
        let server_task = tokio::spawn(async move {
            let served = axum::serve(http::GuardedListener::new(listener), router)
                .with_graceful_shutdown(async move {
                    let _ = shutdown_receiver.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!("the emulator's HTTP server stopped: {error}");
            }
        });
        let reaper_task = tokio::spawn(reaper::run(emulator.clone()));
        let proxy_task = tokio::spawn(proxy::serve(
            proxy_listener,
            emulator.clone(),
            proxy::Backend {
                host: cluster.host().to_string(),
                port: cluster.port(),
            },
            proxy_security,
        ));
        Ok(LocalFleet {
            database_url: cluster.superuser_url().clone(),
            cluster: Some(cluster),
            emulator,
            context,
            api_url: format!("http://{address}/api/v2"),
            api_key,
            api_key_source,
            shutdown: StdMutex::new(Some(shutdown_sender)),
            server_task: Some(server_task),
            reaper_task: Some(reaper_task),
            proxy_task: Some(proxy_task),
            proxy_address,
        })
    }

    /// `http://127.0.0.1:PORT/api/v2`, the value for `NEON_API_URL`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn api_key(&self) -> &SecretString {
        &self.api_key
    }

    pub fn api_key_source(&self) -> ApiKeySource {
        self.api_key_source
    }

    /// How many projects are named `{name_prefix}-…` (those [`LocalFleet::seed`] made with it).
    pub fn count_tenants(&self, name_prefix: &str) -> usize {
        seed::count_seeded(&self.emulator, name_prefix)
    }

    /// The backing cluster's superuser URL.
    pub fn database_url(&self) -> &SecretUri {
        &self.database_url
    }

    /// The backing cluster's settings, for benchmark reports.
    pub fn cluster_settings(&self) -> &str {
        self.cluster
            .as_ref()
            .map(PgCluster::settings_summary)
            .unwrap_or("")
    }

    /// Create `tenants` projects whose main holds the schema and data of `seed_sql`, named
    /// `{name_prefix}-0001`, `{name_prefix}-0002`, … (numbering continues after earlier seeds).
    pub async fn seed(
        &self,
        tenants: usize,
        seed_sql: &str,
        name_prefix: &str,
    ) -> anyhow::Result<Vec<SeededTenant>> {
        seed::seed(&self.emulator, tenants, seed_sql, name_prefix).await
    }

    /// Change the fraction of requests answered with an injected fault, effective at once.
    pub fn set_fault_rate(&self, fault_rate: f64) {
        self.context.faults.set_rate(fault_rate);
    }

    pub fn stats(&self) -> EmulatorStats {
        self.context.stats.snapshot()
    }

    /// Connections, round trips, cold starts and compute seconds of every endpoint so far.
    pub fn compute_stats(&self) -> ComputeStats {
        self.emulator.computes.stats()
    }

    /// The PostgreSQL proxy's address (what every connection URI names).
    pub fn proxy_address(&self) -> SocketAddr {
        self.proxy_address
    }

    /// The directory the backing PostgreSQL cluster lives in; `None` when attached to a server.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.cluster.as_ref()?.root_dir()
    }

    /// Suspend every endpoint now, as a fleet left alone for a while is; returns how many were
    /// running.
    pub fn suspend_all_endpoints(&self) -> usize {
        let endpoints: Vec<model::EndpointRecord> = {
            let state = self.emulator.lock_state();
            state
                .projects
                .values()
                .flat_map(|entry| entry.document.endpoints.iter().cloned())
                .collect()
        };
        endpoints
            .iter()
            .filter(|endpoint| self.emulator.computes.suspend(endpoint))
            .count()
    }

    /// The tenant's own connection URI of a branch (the one the API hands out), if it exists.
    pub fn branch_connection_uri(&self, project_id: &str, branch_id: &str) -> Option<SecretUri> {
        let state = self.emulator.lock_state();
        let document = &state.projects.get(project_id)?.document;
        let branch = document.branch(branch_id)?;
        Some(SecretUri::new(model::connection_uri(
            &document.project,
            branch,
            document.connection_endpoint_id(branch_id),
            &self.emulator.target,
        )))
    }

    /// A superuser URI to a branch's physical database, for inspecting it behind the API.
    pub fn branch_superuser_uri(&self, project_id: &str, branch_id: &str) -> Option<SecretUri> {
        let database = self.emulator.branch_database(project_id, branch_id)?;
        let mut url = url::Url::parse(self.database_url.expose()).ok()?;
        url.set_path(&format!("/{database}"));
        Some(SecretUri::new(url.to_string()))
    }

    /// Stop serving, then stop the cluster (if we started it).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(sender) = self
            .shutdown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = sender.send(());
        }
        if let Some(task) = self.reaper_task.take() {
            task.abort();
        }
        if let Some(task) = self.proxy_task.take() {
            task.abort();
        }
        if let Some(task) = self.server_task.take() {
            // Graceful shutdown waits for open keep-alive connections; do not wait forever.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("the emulator's HTTP server did not stop within 5 s");
            }
        }
        if let Some(cluster) = self.cluster.take() {
            cluster
                .stop()
                .await
                .context("cannot stop the emulator's PostgreSQL cluster")?;
        }
        Ok(())
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        for task in [
            self.reaper_task.take(),
            self.proxy_task.take(),
            self.server_task.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
        // The cluster's own drop stops PostgreSQL and removes a temporary directory.
    }
}

fn random_api_key() -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("napi_{suffix}")
}

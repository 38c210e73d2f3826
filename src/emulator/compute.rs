//! Compute endpoints as Neon runs them: a lifecycle per endpoint (starting, active, idle,
//! suspended), the network between client and compute (round-trip time), and the counters the
//! benchmark and the tests read (connections, round trips, cold starts, compute seconds).
//!
//! The proxy ([`super::proxy`]) opens a [`Session`] per client connection; the API renders an
//! endpoint's [`ComputeView`] and serves `start` / `suspend`. Nothing here sleeps on its own:
//! a session returns the instant it may proceed and the proxy waits for it.
//!
//! **Invariant:** concurrent connections to a suspended endpoint share one wake: the first one
//! moves it to `Starting` with a ready instant; the others wait for that same instant, and only
//! the first counts a cold start.
//! **Invariant:** suspension is computed lazily from the clock (`last_active + suspend_after`),
//! so there is no timer task and the reported `suspended_at` is exact.
//! **Invariant:** compute time runs from a start (a wake, or the endpoint's creation) to its
//! suspension (or to now while running), per endpoint; a deleted endpoint's figures stay in the
//! totals.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use super::model::{EndpointRecord, Millis, now_ms, rfc3339_seconds};

/// The compute layer's knobs; all off (zero / never) by default so tests and the demo stay fast.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    /// Added to every client-visible round trip through the proxy.
    pub round_trip: Duration,
    /// Up to this much more, at random, per round trip.
    pub round_trip_jitter: Duration,
    /// What the connection that wakes a suspended endpoint waits.
    pub cold_start: Duration,
    /// Suspend an endpoint this long after its last connection closed; `None` = never.
    pub suspend_after: Option<Duration>,
}

impl ComputeConfig {
    /// No latency, instant starts, never suspended: the emulator as fast as the machine.
    pub fn off() -> ComputeConfig {
        ComputeConfig {
            round_trip: Duration::ZERO,
            round_trip_jitter: Duration::ZERO,
            cold_start: Duration::ZERO,
            suspend_after: None,
        }
    }
}

/// An endpoint's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeState {
    /// Waking up (or being created); connections wait for `ready_at`.
    Starting,
    /// Running with at least one open connection.
    Active,
    /// Running, no connection; suspends after `suspend_after`.
    Idle,
    /// Scaled to zero; the next connection wakes it.
    Suspended,
}

impl ComputeState {
    /// Neon's `EndpointState`: a running compute is `active`, a suspended one `idle`.
    pub fn neon_state(self) -> &'static str {
        match self {
            ComputeState::Starting => "init",
            ComputeState::Active | ComputeState::Idle => "active",
            ComputeState::Suspended => "idle",
        }
    }
}

/// What the API reports about an endpoint's compute.
#[derive(Debug, Clone)]
pub struct ComputeView {
    pub state: ComputeState,
    pub started_at: Option<Millis>,
    pub last_active: Option<Millis>,
    pub suspended_at: Option<Millis>,
}

impl ComputeView {
    /// Neon's endpoint fields for this state, written over a rendered endpoint.
    pub fn render_into(&self, endpoint: &mut serde_json::Value) {
        let Some(object) = endpoint.as_object_mut() else {
            return;
        };
        object.insert("current_state".into(), self.state.neon_state().into());
        object.remove("pending_state");
        if self.state == ComputeState::Starting {
            object.insert("pending_state".into(), "active".into());
        }
        for (field, value) in [
            ("started_at", self.started_at),
            ("last_active", self.last_active),
            ("suspended_at", self.suspended_at),
        ] {
            match value {
                Some(at) => {
                    object.insert(field.into(), rfc3339_seconds(at).into());
                }
                None => {
                    object.remove(field);
                }
            }
        }
    }
}

/// Counters of one endpoint, as `GET /emulator/stats` reports them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct EndpointStats {
    pub state: String,
    pub connections: u64,
    pub round_trips: u64,
    pub cold_starts: u64,
    pub compute_s: f64,
}

/// Totals over every endpoint the emulator has served, and each one's own counters.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ComputeStats {
    pub connections: u64,
    pub round_trips: u64,
    pub cold_starts: u64,
    pub compute_s: f64,
    /// Endpoints by state now (`starting`, `active`, `idle`, `suspended`, `deleted`).
    pub by_state: BTreeMap<String, u64>,
    pub endpoints: BTreeMap<String, EndpointStats>,
}

impl ComputeStats {
    /// One line for the emulator's log.
    pub fn summary(&self) -> String {
        format!(
            "compute: {} connections, {} round trips, {} cold starts, {:.1} compute-seconds over {} endpoints",
            self.connections,
            self.round_trips,
            self.cold_starts,
            self.compute_s,
            self.endpoints.len()
        )
    }
}

/// Every endpoint's compute, created on first use from its [`EndpointRecord`].
pub struct Computes {
    pub config: ComputeConfig,
    computes: StdMutex<HashMap<String, Compute>>,
}

struct Compute {
    state: ComputeState,
    /// When `Starting` ends.
    ready_at: Millis,
    open_connections: usize,
    started_at: Option<Millis>,
    last_active: Option<Millis>,
    suspended_at: Option<Millis>,
    /// Start of the running interval not yet added to `compute_ms`.
    running_since: Option<Millis>,
    compute_ms: u64,
    connections: u64,
    cold_starts: u64,
    deleted: bool,
    /// Shared with the proxy's sessions, which count as bytes flow.
    round_trips: Arc<AtomicU64>,
    /// Bumped on suspension: open sessions end, as a suspended compute drops its connections.
    suspended: tokio::sync::watch::Sender<u64>,
}

impl Compute {
    /// A new endpoint's compute starts with its create operation and is ready when it finishes.
    fn new(endpoint: &EndpointRecord) -> Compute {
        Compute {
            state: ComputeState::Starting,
            ready_at: endpoint.ready_at,
            open_connections: 0,
            started_at: Some(endpoint.created_at),
            last_active: None,
            suspended_at: None,
            running_since: Some(endpoint.created_at),
            compute_ms: 0,
            connections: 0,
            cold_starts: 0,
            deleted: false,
            round_trips: Arc::new(AtomicU64::new(0)),
            suspended: tokio::sync::watch::channel(0).0,
        }
    }

    /// Bring the state up to `now`: finish a start, suspend after the idle timeout.
    fn refresh(&mut self, now: Millis, suspend_after: Option<Duration>) {
        if self.state == ComputeState::Starting && now >= self.ready_at {
            self.state = if self.open_connections > 0 {
                ComputeState::Active
            } else {
                ComputeState::Idle
            };
            self.last_active = Some(self.last_active.unwrap_or(self.ready_at).max(self.ready_at));
        }
        if self.state == ComputeState::Idle
            && let Some(suspend_after) = suspend_after
        {
            let idle_since = self.last_active.unwrap_or(self.ready_at);
            let due = idle_since + suspend_after.as_millis() as Millis;
            if now >= due {
                self.suspend(due);
            }
        }
    }

    fn suspend(&mut self, at: Millis) {
        if let Some(since) = self.running_since.take() {
            self.compute_ms += at.saturating_sub(since) as u64;
        }
        self.state = ComputeState::Suspended;
        self.suspended_at = Some(at);
        self.suspended.send_modify(|generation| *generation += 1);
    }

    fn wake(&mut self, now: Millis, cold_start: Duration) {
        self.state = ComputeState::Starting;
        self.ready_at = now + cold_start.as_millis() as Millis;
        self.started_at = Some(now);
        self.running_since = Some(now);
        self.cold_starts += 1;
    }

    fn compute_ms_at(&self, now: Millis) -> u64 {
        self.compute_ms
            + self
                .running_since
                .map_or(0, |since| now.saturating_sub(since) as u64)
    }
}

impl Computes {
    pub fn new(config: ComputeConfig) -> Computes {
        Computes {
            config,
            computes: StdMutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Compute>> {
        // A panic while holding the lock leaves plain counters behind; keep serving them.
        self.computes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_compute<T>(
        &self,
        endpoint: &EndpointRecord,
        now: Millis,
        work: impl FnOnce(&mut Compute) -> T,
    ) -> T {
        let mut computes = self.lock();
        let compute = computes
            .entry(endpoint.id.clone())
            .or_insert_with(|| Compute::new(endpoint));
        compute.refresh(now, self.config.suspend_after);
        work(compute)
    }

    /// The endpoint's state for the API.
    pub fn view(&self, endpoint: &EndpointRecord) -> ComputeView {
        self.with_compute(endpoint, now_ms(), |compute| ComputeView {
            state: compute.state,
            started_at: compute.started_at,
            last_active: compute.last_active,
            suspended_at: compute.suspended_at,
        })
    }

    /// A client connection to the endpoint: wakes it when suspended (one cold start however
    /// many connections arrive meanwhile). Wait for [`Session::ready_at`] before connecting on.
    pub fn open_session(self: &Arc<Self>, endpoint: &EndpointRecord) -> Session {
        let now = now_ms();
        let cold_start = self.config.cold_start;
        let (ready_at, round_trips, suspended) = self.with_compute(endpoint, now, |compute| {
            if compute.state == ComputeState::Suspended {
                compute.wake(now, cold_start);
            }
            compute.open_connections += 1;
            compute.connections += 1;
            compute.last_active = Some(now);
            if compute.state == ComputeState::Idle {
                compute.state = ComputeState::Active;
            }
            (
                compute.ready_at,
                compute.round_trips.clone(),
                compute.suspended.subscribe(),
            )
        });
        Session {
            computes: self.clone(),
            endpoint: endpoint.clone(),
            ready_at,
            round_trips,
            client_spoke: AtomicBool::new(false),
            suspended,
        }
    }

    fn close_session(&self, endpoint: &EndpointRecord) {
        let now = now_ms();
        self.with_compute(endpoint, now, |compute| {
            compute.open_connections = compute.open_connections.saturating_sub(1);
            compute.last_active = Some(now);
            if compute.open_connections == 0 && compute.state == ComputeState::Active {
                compute.state = ComputeState::Idle;
            }
        });
    }

    /// `POST …/endpoints/{id}/start`: wake a suspended endpoint. True when it was suspended.
    pub fn start(&self, endpoint: &EndpointRecord) -> bool {
        let now = now_ms();
        let cold_start = self.config.cold_start;
        self.with_compute(endpoint, now, |compute| {
            let was_suspended = compute.state == ComputeState::Suspended;
            if was_suspended {
                compute.wake(now, cold_start);
                compute.last_active = Some(now);
            }
            was_suspended
        })
    }

    /// `POST …/endpoints/{id}/suspend`: suspend now, dropping open connections. True when it
    /// was running.
    pub fn suspend(&self, endpoint: &EndpointRecord) -> bool {
        let now = now_ms();
        self.with_compute(endpoint, now, |compute| {
            let was_running = compute.state != ComputeState::Suspended;
            if was_running {
                compute.suspend(now);
            }
            was_running
        })
    }

    /// The endpoint is gone: stop its compute, keep its counters in the totals.
    pub fn retire(&self, endpoint: &EndpointRecord) {
        let now = now_ms();
        self.with_compute(endpoint, now, |compute| {
            if compute.state != ComputeState::Suspended {
                compute.suspend(now);
            }
            compute.deleted = true;
        });
    }

    pub fn stats(&self) -> ComputeStats {
        let now = now_ms();
        let mut computes = self.lock();
        let mut stats = ComputeStats::default();
        for (endpoint_id, compute) in computes.iter_mut() {
            compute.refresh(now, self.config.suspend_after);
            let state = if compute.deleted {
                "deleted".to_string()
            } else {
                serde_json::to_value(compute.state)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let endpoint = EndpointStats {
                state: state.clone(),
                connections: compute.connections,
                round_trips: compute.round_trips.load(Ordering::Relaxed),
                cold_starts: compute.cold_starts,
                compute_s: compute.compute_ms_at(now) as f64 / 1000.0,
            };
            stats.connections += endpoint.connections;
            stats.round_trips += endpoint.round_trips;
            stats.cold_starts += endpoint.cold_starts;
            stats.compute_s += endpoint.compute_s;
            *stats.by_state.entry(state).or_default() += 1;
            stats.endpoints.insert(endpoint_id.clone(), endpoint);
        }
        stats
    }
}

/// One client connection through the proxy, counted against its endpoint until dropped.
pub struct Session {
    computes: Arc<Computes>,
    endpoint: EndpointRecord,
    /// The compute accepts connections from this instant (a wake or a create in progress).
    pub ready_at: Millis,
    round_trips: Arc<AtomicU64>,
    /// Set when the client sent bytes the server has not answered yet.
    client_spoke: AtomicBool,
    suspended: tokio::sync::watch::Receiver<u64>,
}

impl Session {
    /// How long until the compute accepts the connection.
    pub fn wait(&self) -> Duration {
        Duration::from_millis(self.ready_at.saturating_sub(now_ms()).max(0) as u64)
    }

    /// The client sent bytes.
    pub fn client_sent(&self) {
        self.client_spoke.store(true, Ordering::Relaxed);
    }

    /// The server sent bytes: the first reply after the client spoke ends one round trip, and
    /// the proxy charges the round-trip time for it. True when this chunk ended a round trip.
    pub fn server_sent(&self) -> bool {
        let ended_round_trip = self.client_spoke.swap(false, Ordering::Relaxed);
        if ended_round_trip {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        ended_round_trip
    }

    /// A round trip the proxy answered itself (an `SSLRequest` refused, an error).
    pub fn count_round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes when the endpoint is suspended (its connections are then dropped).
    pub fn suspended_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.suspended.clone()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.computes.close_session(&self.endpoint);
    }
}

/// Parse `300s`, `5m`, `1h`, `250ms` or a bare number of seconds; `0` and `off` mean never.
pub fn parse_suspend_after(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text == "off" || text == "never" {
        return Ok(None);
    }
    let (number, unit_ms) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1_000)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60_000)
    } else if let Some(number) = text.strip_suffix('h') {
        (number, 3_600_000)
    } else {
        (text, 1_000)
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 300s, 5m, 1h, 250ms or off"))?;
    Ok((value > 0).then(|| Duration::from_millis(value * unit_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ready_at: Millis) -> EndpointRecord {
        EndpointRecord {
            id: "ep-test".into(),
            project_id: "p".into(),
            branch_id: "br".into(),
            read_write: true,
            created_at: ready_at,
            ready_at,
        }
    }

    fn computes(cold_start_ms: u64, suspend_after: Option<Duration>) -> Arc<Computes> {
        Arc::new(Computes::new(ComputeConfig {
            cold_start: Duration::from_millis(cold_start_ms),
            suspend_after,
            ..ComputeConfig::off()
        }))
    }

    #[test]
    fn concurrent_connections_to_a_suspended_endpoint_share_one_wake() {
        let computes = computes(10_000, None);
        let endpoint = endpoint(now_ms() - 1000);
        assert_eq!(computes.view(&endpoint).state, ComputeState::Idle);
        assert!(computes.suspend(&endpoint));
        assert_eq!(computes.view(&endpoint).state.neon_state(), "idle");
        let first = computes.open_session(&endpoint);
        let second = computes.open_session(&endpoint);
        assert_eq!(first.ready_at, second.ready_at);
        assert!(first.wait() > Duration::from_secs(9));
        assert_eq!(computes.view(&endpoint).state, ComputeState::Starting);
        drop((first, second));
        let stats = computes.stats();
        assert_eq!(stats.cold_starts, 1);
        assert_eq!(stats.connections, 2);
    }

    #[test]
    fn an_idle_endpoint_suspends_after_the_timeout_and_stops_counting_compute_time() {
        let computes = computes(0, Some(Duration::from_millis(500)));
        let endpoint = endpoint(now_ms() - 2_000);
        let view = computes.view(&endpoint);
        assert_eq!(view.state, ComputeState::Suspended);
        assert_eq!(view.suspended_at, Some(endpoint.ready_at + 500));
        let stats = computes.stats();
        assert!((stats.compute_s - 0.5).abs() < 0.01, "{stats:?}");
        // An open connection keeps it running past the timeout.
        let session = computes.open_session(&endpoint);
        assert_eq!(session.wait(), Duration::ZERO);
        assert_eq!(computes.view(&endpoint).state, ComputeState::Active);
        drop(session);
        assert_eq!(computes.view(&endpoint).state, ComputeState::Idle);
        assert_eq!(computes.stats().cold_starts, 1);
    }

    #[test]
    fn round_trips_count_the_first_reply_after_the_client_spoke() {
        let computes = computes(0, None);
        let session = computes.open_session(&endpoint(now_ms()));
        session.client_sent();
        session.client_sent();
        assert!(session.server_sent());
        assert!(!session.server_sent());
        session.client_sent();
        assert!(session.server_sent());
        drop(session);
        assert_eq!(computes.stats().round_trips, 2);
    }

    #[test]
    fn suspend_after_accepts_neon_style_durations() {
        assert_eq!(
            parse_suspend_after("300s"),
            Ok(Some(Duration::from_secs(300)))
        );
        assert_eq!(
            parse_suspend_after("5m"),
            Ok(Some(Duration::from_secs(300)))
        );
        assert_eq!(
            parse_suspend_after("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_suspend_after("0"), Ok(None));
        assert_eq!(parse_suspend_after("off"), Ok(None));
        assert!(parse_suspend_after("5 minutes").is_err());
    }
}

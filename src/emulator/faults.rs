//! What stands between a client and the emulator's behaviour, as on the real service: the API
//! key, a token-bucket rate limit, injected retryable faults, added latency, and the counters
//! that let tests and benchmarks see what happened.
//!
//! **Invariant:** an injected 500 or 524 on a mutation may be answered after the mutation was
//! applied (that is what forces a real client to re-read state); an injected 423, 429 or 503 is
//! always answered without applying anything, as those statuses promise.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

/// Counters of what the emulator answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    /// Every request answered (including injected faults and 401/429).
    pub requests: u64,
    /// Requests by the HTTP status they were answered with.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests answered with an injected fault.
    pub injected_faults: u64,
    /// Injected faults by status.
    pub injected_by_status: BTreeMap<u16, u64>,
    /// Injected 500/524 answers to mutations that had been applied first.
    pub applied_then_failed: u64,
    /// Requests refused by the rate limit (not counting injected 429s).
    pub rate_limited: u64,
    /// Requests by method and path shape, ids replaced ([`route_shape`]): what a client's
    /// run cost, call by call.
    pub by_route: BTreeMap<String, u64>,
}

/// Segments after which the next one is an id, unless it is one of [`NAMED_SEGMENTS`].
const COLLECTIONS: [&str; 6] = [
    "projects",
    "branches",
    "operations",
    "endpoints",
    "roles",
    "databases",
];
const NAMED_SEGMENTS: [&str; 2] = ["count", "shared"];

/// `GET /api/v2/projects/p-1/branches/br-2` as `GET /projects/{id}/branches/{id}`: one key
/// per kind of call, whatever the fleet's size.
pub fn route_shape(method: &str, path: &str) -> String {
    let path = path.strip_prefix("/api/v2").unwrap_or(path);
    let mut shape = String::with_capacity(path.len());
    let mut previous = "";
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        shape.push('/');
        if COLLECTIONS.contains(&previous) && !NAMED_SEGMENTS.contains(&segment) {
            shape.push_str("{id}");
        } else {
            shape.push_str(segment);
        }
        previous = segment;
    }
    format!("{method} {shape}")
}

/// The statuses a fault can take; all are ones Neon clients are told to retry or re-check.
pub const FAULT_STATUSES: [u16; 5] = [423, 429, 500, 503, 524];

pub struct FaultInjector {
    /// `f64` bits, so the rate can change while requests are served.
    rate_bits: AtomicU64,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    /// Run the mutation, then answer the fault anyway.
    pub apply_first: bool,
}

impl FaultInjector {
    pub fn new(rate: f64) -> Self {
        Self {
            rate_bits: AtomicU64::new(clamp_rate(rate).to_bits()),
        }
    }

    pub fn set_rate(&self, rate: f64) {
        self.rate_bits
            .store(clamp_rate(rate).to_bits(), Ordering::Relaxed);
    }

    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    pub fn decide(&self, is_mutation: bool) -> Option<Fault> {
        let rate = self.rate();
        if rate <= 0.0 {
            return None;
        }
        let mut rng = rand::rng();
        if rng.random::<f64>() >= rate {
            return None;
        }
        let status = FAULT_STATUSES[rng.random_range(0..FAULT_STATUSES.len())];
        let apply_first = is_mutation && matches!(status, 500 | 524) && rng.random_bool(0.5);
        Some(Fault {
            status,
            apply_first,
        })
    }
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

/// A token bucket refilled at `per_minute / 60` tokens a second, holding at most a burst of
/// `min(per_minute, 40)` (Neon allows 40 requests a second per route).
pub struct RateLimiter {
    per_minute: u32,
    capacity: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let capacity = f64::from(per_minute.min(40));
        Self {
            per_minute,
            capacity,
            bucket: Mutex::new((capacity, Instant::now())),
        }
    }

    /// `Ok(())` to serve the request, `Err(wait)` to refuse it with `Retry-After: wait`.
    pub fn take(&self) -> Result<(), Duration> {
        let refill_per_second = f64::from(self.per_minute) / 60.0;
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, last) = &mut *bucket;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * refill_per_second)
            .min(self.capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - *tokens;
            Err(Duration::from_secs_f64(missing / refill_per_second))
        }
    }
}

#[derive(Default)]
pub struct StatsRecorder {
    stats: Mutex<EmulatorStats>,
}

impl StatsRecorder {
    pub fn record(
        &self,
        route: String,
        status: u16,
        injected: bool,
        applied_first: bool,
        rate_limited: bool,
    ) {
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stats.requests += 1;
        *stats.by_route.entry(route).or_default() += 1;
        *stats.by_status.entry(status).or_default() += 1;
        if injected {
            stats.injected_faults += 1;
            *stats.injected_by_status.entry(status).or_default() += 1;
        }
        if applied_first {
            stats.applied_then_failed += 1;
        }
        if rate_limited {
            stats.rate_limited += 1;
        }
    }

    pub fn snapshot(&self) -> EmulatorStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_counted_by_shape() {
        assert_eq!(
            route_shape("GET", "/api/v2/projects/p-1/connection_uri"),
            "GET /projects/{id}/connection_uri"
        );
        assert_eq!(
            route_shape("DELETE", "/api/v2/projects/p-1/branches/br-2"),
            "DELETE /projects/{id}/branches/{id}"
        );
        assert_eq!(
            route_shape("GET", "/api/v2/projects/p-1/branches/count"),
            "GET /projects/{id}/branches/count"
        );
        assert_eq!(route_shape("GET", "/api/v2/projects"), "GET /projects");
        assert_eq!(
            route_shape("GET", "/api/v2/projects/shared"),
            "GET /projects/shared"
        );
    }

    #[test]
    fn bucket_allows_a_burst_then_refuses_with_a_wait() {
        let limiter = RateLimiter::new(6);
        for _ in 0..6 {
            assert!(limiter.take().is_ok());
        }
        let wait = limiter
            .take()
            .expect_err("the seventh request exceeds 6/min");
        assert!(
            wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
    }

    #[test]
    fn fault_rate_zero_and_one_are_exact() {
        let injector = FaultInjector::new(0.0);
        assert!((0..1000).all(|_| injector.decide(true).is_none()));
        injector.set_rate(1.0);
        let faults: Vec<Fault> = (0..1000).filter_map(|_| injector.decide(true)).collect();
        assert_eq!(faults.len(), 1000);
        assert!(
            faults
                .iter()
                .all(|fault| FAULT_STATUSES.contains(&fault.status))
        );
        assert!(faults.iter().any(|fault| fault.apply_first));
        assert!(
            faults
                .iter()
                .filter(|fault| fault.apply_first)
                .all(|fault| matches!(fault.status, 500 | 524))
        );
        assert!(
            (0..1000)
                .filter_map(|_| injector.decide(false))
                .all(|fault| !fault.apply_first)
        );
    }
}

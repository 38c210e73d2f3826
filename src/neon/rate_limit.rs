//! The client-wide token bucket that keeps a fleet run under Neon's account limit
//! (700 requests per minute, neon-api.md §9), so it never turns into a 429 storm.
//!
//! Callers reserve a slot and sleep until it comes due. Reservations queue in arrival order: the
//! token count may go negative, and each caller waits for its own debt to refill, so a hundred
//! concurrent tenants are paced evenly instead of waking together and racing.
//!
//! Several runners of one plan (`apply --state`) also draw from a bucket in the state store, so
//! the *sum* of their requests stays under the account's limit ([`SharedTokens`]). They take
//! its tokens in small batches: a runner pays one store round trip per batch, not per request.
//! The trade-off: a batch one runner holds is not available to the others, so a larger batch
//! means fewer round trips but burstier, less even sharing; tokens not used within
//! [`HOLD_LIMIT`] are dropped (they were counted, so dropping never lets the sum exceed the
//! limit). In any window of W seconds the runners together send at most the burst plus
//! `per_minute / 60 × (W + HOLD_LIMIT)` requests.
//!
//! **Invariant:** the long-run rate never exceeds `per_minute`; at most `burst` requests go out
//! back to back after an idle period.
//! **Invariant:** the local bucket's lock is never held across an `.await`; the shared tokens'
//! lock is (a tokio lock, on purpose: one task fetches a batch while the others queue in
//! arrival order behind it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

/// How long tokens taken from a shared bucket may wait for their requests before they are
/// dropped: bounds how far a runner's requests can lag the grants that counted them.
pub const HOLD_LIMIT: Duration = Duration::from_secs(1);

/// The part of a second's worth of tokens one runner takes from a shared bucket at a time.
const BATCH_SPAN_SECONDS: f64 = 0.5;

/// What a shared bucket granted: `granted` tokens, or none and how long until one is there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub granted: u32,
    pub retry_in: Duration,
}

/// A token bucket several processes share (the state store's), seen from one of them.
pub trait TokenSource: Send + Sync {
    /// Take up to `want` tokens of a bucket refilled at `per_minute` and holding at most
    /// `capacity`. An error when the bucket cannot be reached.
    fn take(
        &self,
        want: u32,
        per_minute: u32,
        capacity: u32,
    ) -> BoxFuture<'_, Result<Grant, String>>;
}

/// How many tokens a runner takes from a shared bucket at once: half a second's worth, at
/// least 1 and at most the burst (700/min: 5; 120/min: 1).
pub fn batch_size(per_minute: u32) -> u32 {
    let per_second = f64::from(per_minute.max(1)) / 60.0;
    let capacity = burst(per_minute);
    ((per_second * BATCH_SPAN_SECONDS).floor() as u32).clamp(1, capacity)
}

/// One second's worth of requests, at least 1 and at most 20: small enough that a burst cannot
/// trip Neon's per-route limit of 40/s.
pub fn burst(per_minute: u32) -> u32 {
    let per_second = f64::from(per_minute.max(1)) / 60.0;
    per_second.clamp(1.0, 20.0).floor() as u32
}

/// Tokens this process took from a shared bucket and has not used yet.
struct Held {
    count: u32,
    taken_at: Instant,
}

/// A shared bucket as one runner draws from it.
pub(crate) struct SharedTokens {
    source: Arc<dyn TokenSource>,
    per_minute: u32,
    held: tokio::sync::Mutex<Held>,
    /// The bucket could not be reached (the store gone past its patience): the local bucket
    /// paces alone, and the run stops on its own when its journal cannot be written.
    unreachable: AtomicBool,
}

impl SharedTokens {
    async fn acquire(&self) {
        let mut held = self.held.lock().await;
        loop {
            if held.count > 0 && held.taken_at.elapsed() < HOLD_LIMIT {
                held.count -= 1;
                return;
            }
            if self.unreachable.load(Ordering::Relaxed) {
                return;
            }
            let want = batch_size(self.per_minute);
            match self
                .source
                .take(want, self.per_minute, burst(self.per_minute))
                .await
            {
                Ok(grant) if grant.granted > 0 => {
                    *held = Held {
                        count: grant.granted,
                        taken_at: Instant::now(),
                    };
                }
                Ok(grant) => {
                    tokio::time::sleep(
                        grant
                            .retry_in
                            .clamp(Duration::from_millis(5), Duration::from_secs(5)),
                    )
                    .await;
                }
                Err(error) => {
                    eprintln!(
                        "warning: the shared API budget in the state store cannot be reached ({error}); this runner paces itself alone"
                    );
                    self.unreachable.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A token bucket shared by every clone of a [`crate::neon::NeonClient`].
pub(crate) struct RateLimiter {
    state: Mutex<BucketState>,
    /// With `apply --state`: the bucket all runners of the account share, on top of this one.
    shared: OnceLock<SharedTokens>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("shared", &self.shared.get().is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            state: Mutex::new(BucketState::new(per_minute, Instant::now())),
            shared: OnceLock::new(),
        }
    }

    /// Draw from `source` too, a bucket refilled at `per_minute` that other processes share.
    /// Only the first call counts.
    pub fn share(&self, source: Arc<dyn TokenSource>, per_minute: u32) {
        let _ = self.shared.set(SharedTokens {
            source,
            per_minute,
            held: tokio::sync::Mutex::new(Held {
                count: 0,
                taken_at: Instant::now(),
            }),
            unreachable: AtomicBool::new(false),
        });
    }

    /// Wait for a slot; returns how long the caller waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        self.acquire_local().await;
        if let Some(shared) = self.shared.get() {
            shared.acquire().await;
        }
        started.elapsed()
    }

    async fn acquire_local(&self) {
        let wait = {
            // A poisoned lock only means another task panicked mid-update of two floats; the
            // bucket is still usable, so take it back rather than stopping every request.
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            state.reserve(Instant::now())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The pure bucket arithmetic, driven by explicit instants so it can be tested without a clock.
#[derive(Debug, Clone)]
pub(crate) struct BucketState {
    /// May be negative: the debt of callers already waiting.
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last_refill: Instant,
}

impl BucketState {
    pub fn new(per_minute: u32, now: Instant) -> BucketState {
        let per_second = f64::from(per_minute.max(1)) / 60.0;
        // One second's worth of requests, at least 1 and at most 20: small enough that a burst
        // cannot trip Neon's per-route limit of 40/s.
        let capacity = per_second.clamp(1.0, 20.0);
        BucketState {
            tokens: capacity,
            capacity,
            per_second,
            last_refill: now,
        }
    }

    /// Take one token and return how long the caller must wait before using it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last_refill = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_goes_out_at_once_then_requests_are_paced() {
        let start = Instant::now();
        let mut bucket = BucketState::new(600, start);
        for _ in 0..10 {
            assert_eq!(bucket.reserve(start), Duration::ZERO);
        }
        let eleventh = bucket.reserve(start);
        let twelfth = bucket.reserve(start);
        assert!((eleventh.as_secs_f64() - 0.1).abs() < 1e-6, "{eleventh:?}");
        assert!((twelfth.as_secs_f64() - 0.2).abs() < 1e-6, "{twelfth:?}");
    }

    #[test]
    fn long_run_rate_never_exceeds_the_limit() {
        let start = Instant::now();
        let mut bucket = BucketState::new(600, start);
        // 2,000 callers arriving at once: the last must wait about (2000 - burst) / 10 s.
        let mut last_wait = Duration::ZERO;
        for _ in 0..2_000 {
            last_wait = bucket.reserve(start);
        }
        let expected = (2_000.0 - 10.0) / 10.0;
        assert!(
            (last_wait.as_secs_f64() - expected).abs() < 1e-3,
            "{last_wait:?}"
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let start = Instant::now();
        let mut bucket = BucketState::new(600, start);
        let later = start + Duration::from_secs(3_600);
        for _ in 0..10 {
            assert_eq!(bucket.reserve(later), Duration::ZERO);
        }
        assert!(bucket.reserve(later) > Duration::ZERO);
    }

    #[test]
    fn tiny_limits_still_allow_one_request() {
        let start = Instant::now();
        let mut bucket = BucketState::new(0, start);
        assert_eq!(bucket.reserve(start), Duration::ZERO);
        assert_eq!(bucket.reserve(start), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn shared_limiter_holds_back_requests_beyond_the_burst() {
        // 100/s with a burst of 20: 25 requests cannot finish in less than 5 / 100 s.
        let limiter = RateLimiter::new(6_000);
        let started = Instant::now();
        for _ in 0..25 {
            limiter.acquire().await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(49), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
}

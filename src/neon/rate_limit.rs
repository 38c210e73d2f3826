//! The client-wide token bucket that keeps a fleet run under Neon's account limit
//! (700 requests per minute, neon-api.md §9), so it never turns into a 429 storm.
//!
//! Callers reserve a slot and sleep until it comes due. Reservations queue in arrival order: the
//! token count may go negative, and each caller waits for its own debt to refill, so a hundred
//! concurrent tenants are paced evenly instead of waking together and racing.
//!
//! **Invariant:** the long-run rate never exceeds `per_minute`; at most `burst` requests go out
//! back to back after an idle period.
//! **Invariant:** the lock is never held across an `.await`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket shared by every clone of a [`crate::neon::NeonClient`].
#[derive(Debug)]
pub(crate) struct RateLimiter {
    state: Mutex<BucketState>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            state: Mutex::new(BucketState::new(per_minute, Instant::now())),
        }
    }

    /// Wait for a slot; returns how long the caller waited.
    pub async fn acquire(&self) -> Duration {
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
        wait
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

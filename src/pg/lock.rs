//! One runner per tenant: a session advisory lock, polled, never blocking.
//!
//! refinery takes no lock (crates-and-refinery.md §2.8); two runners on one tenant fail loudly
//! at best. The lock is taken on the same connection refinery then uses, so it covers all of
//! refinery's transactions, and it is released when the session ends even if we crash.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::error::DbFailure;

/// Advisory lock key: an arbitrary constant (it is not derived from anything; an earlier
/// comment called it the first bytes of SHA-256("schemafleet"), which begins 0x2350351b), fixed
/// forever so that two versions of the tool exclude each other too.
pub const LOCK_KEY: i64 = 0x5c8f_1e7a_3b2d_6c41;

/// Try to take the lock until `wait` has passed, polling; `Ok(false)` if another runner holds it.
pub async fn try_lock_for(client: &Client, wait: Duration) -> Result<bool, DbFailure> {
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(50);
    // A literal key and the simple protocol: one round trip per try, not a prepare and a bind.
    let try_lock = format!("SELECT pg_try_advisory_lock({LOCK_KEY})");
    loop {
        let messages = client
            .simple_query(&try_lock)
            .await
            .map_err(|error| DbFailure::from_error("advisory lock", &error))?;
        let taken = messages.iter().any(
            |message| matches!(message, SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
        );
        if taken {
            return Ok(true);
        }
        if Instant::now() + delay > deadline {
            return Ok(false);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

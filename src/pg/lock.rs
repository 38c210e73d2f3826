//! One runner per tenant: a session advisory lock, polled, never blocking.
//!
//! refinery takes no lock (crates-and-refinery.md §2.8); two runners on one tenant fail loudly
//! at best. The lock is taken on the same connection refinery then uses, so it covers all of
//! refinery's transactions, and it is released when the session ends even if we crash.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::error::DbFailure;

/// Advisory lock key: the first 8 bytes of SHA-256("schemafleet"), fixed forever so that two
/// versions of the tool exclude each other too.
pub const LOCK_KEY: i64 = 0x5c8f_1e7a_3b2d_6c41;

/// Try to take the lock until `wait` has passed, polling; `Ok(false)` if another runner holds it.
pub async fn try_lock_for(client: &Client, wait: Duration) -> Result<bool, DbFailure> {
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(50);
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(|error| DbFailure::from_error("advisory lock", &error))?;
        if row.get::<_, bool>(0) {
            return Ok(true);
        }
        if Instant::now() + delay > deadline {
            return Ok(false);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

pub async fn unlock(client: &Client) -> Result<(), DbFailure> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(|error| DbFailure::from_error("advisory unlock", &error))?;
    Ok(())
}

//! One runner per tenant: a session advisory lock, polled, never blocking.
//!
//! refinery takes no lock (crates-and-refinery.md §2.8); two runners on one tenant fail loudly
//! at best. The lock is taken on the same connection refinery then uses, so it covers all of
//! refinery's transactions, and it is released when the session ends even if we crash.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::error::DbFailure;
use super::history::{HistoryRead, history_from_answer, history_query};

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

/// A try of the lock and a read of the history table, in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedRead {
    /// This session took the lock (or already held it).
    pub locked: bool,
    /// Read after the lock was tried: when `locked`, no other runner can change it from here.
    pub history: HistoryRead,
}

/// Try the lock and read the history, pipelined: two simple queries sent back to back, so the
/// probe of a tenant costs one round trip and, when it has something pending, the apply needs
/// no further read or lock. Separate queries, so a missing history table (42P01) fails only
/// the read. An up-to-date tenant's lock is released when the session ends, a moment later.
pub async fn try_lock_and_read_history(client: &Client) -> Result<LockedRead, DbFailure> {
    let try_lock = format!("SELECT pg_try_advisory_lock({LOCK_KEY})");
    let history = history_query();
    // tokio-postgres sends each query when its future is first polled; join! polls in order.
    let (locked, history) = futures::join!(
        client.simple_query(&try_lock),
        client.simple_query(&history)
    );
    let locked = locked.map_err(|error| DbFailure::from_error("advisory lock", &error))?;
    Ok(LockedRead {
        locked: locked.iter().any(
            |message| matches!(message, SimpleQueryMessage::Row(row) if row.get(0) == Some("t")),
        ),
        history: history_from_answer(history)?,
    })
}

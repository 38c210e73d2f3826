//! One runner per tenant: a session advisory lock, polled, never blocking.
//!
//! refinery takes no lock (crates-and-refinery.md §2.8); two runners on one tenant fail loudly
//! at best. The lock is taken on the same connection refinery then uses, so it covers all of
//! refinery's transactions, and it is released when the session ends even if we crash. It is
//! taken with the probe's read of the history ([`try_lock_and_read_history`]), or, on the
//! first session after a branch, by the release's own first statement ([`release_guard`]).
//! A session-level advisory lock survives the rollback of the transaction that took it.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::HISTORY_TABLE;
use super::error::DbFailure;
use super::history::{AppliedMigration, HistoryRead, history_from_answer, history_query};

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

/// SQLSTATE of the release guard's refusal ([`release_guard`]). Class `SF` is none of
/// PostgreSQL's, so no server error is mistaken for it.
pub const GUARD_REFUSED: &str = "SF001";

/// The session setting the release guard leaves behind when it passes: a transaction of the
/// release that finds it tells "the guard's transaction committed" from "another runner wrote
/// the row I check" (set_config is rolled back with its transaction; the advisory lock is not).
const GUARD_SETTING: &str = "schemafleet.release_guard";

/// A statement for the head of a release whose session did not read the history under the
/// lock (the probe's session was closed for a branch): it takes the lock and checks that the
/// history still is what `probed` found, in the release's own round trip. It fails with
/// [`GUARD_REFUSED`] when another runner holds the lock or the history moved; the caller then
/// waits for the lock and reads the history as a session without a probe does. The history is
/// compared as a digest of its versions and checksums (what refinery verifies), so the
/// statement's size does not grow with the history.
pub fn release_guard(probed: &HistoryRead, marker: &str) -> String {
    let expected = if probed.table_exists {
        format!("'{}'", history_digest(&probed.rows))
    } else {
        "NULL".to_string()
    };
    format!(
        "DO $guard$ DECLARE seen text; BEGIN \
         IF NOT pg_try_advisory_lock({LOCK_KEY}) THEN RAISE EXCEPTION USING ERRCODE = '{GUARD_REFUSED}', \
         MESSAGE = 'another runner holds this tenant''s migration lock'; END IF; \
         IF to_regclass('{HISTORY_TABLE}') IS NOT NULL THEN \
         SELECT encode(sha256(convert_to(coalesce(string_agg(version::text || ':' || checksum, ',' ORDER BY version), ''), 'UTF8')), 'hex') \
         INTO seen FROM {HISTORY_TABLE}; END IF; \
         IF seen IS DISTINCT FROM {expected} THEN RAISE EXCEPTION USING ERRCODE = '{GUARD_REFUSED}', \
         MESSAGE = '{HISTORY_TABLE} changed since the probe read it'; END IF; \
         PERFORM set_config('{GUARD_SETTING}', '{marker}', false); END $guard$"
    )
}

/// A condition true unless this session's [`release_guard`] with `marker` passed and committed.
pub fn release_guard_missed(marker: &str) -> String {
    format!("current_setting('{GUARD_SETTING}', true) IS DISTINCT FROM '{marker}'")
}

/// A fresh marker for [`release_guard`]: a setting left by an earlier release on the same
/// session cannot pass for this one's.
pub fn release_guard_marker() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether `failure` is the release guard's refusal (nothing of the release ran).
pub fn refused_by_guard(failure: &DbFailure) -> bool {
    failure.sqlstate.as_deref() == Some(GUARD_REFUSED)
}

/// What [`release_guard`] computes on the server: SHA-256 (hex) of `version:checksum` of each
/// row in version order, joined by commas.
fn history_digest(rows: &[AppliedMigration]) -> String {
    let mut rows: Vec<&AppliedMigration> = rows.iter().collect();
    rows.sort_by_key(|row| row.version);
    let joined = rows
        .iter()
        .map(|row| format!("{}:{}", row.version, row.checksum))
        .collect::<Vec<_>>()
        .join(",");
    crate::migrations::sha256_hex(joined.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::fixtures::applied;

    #[test]
    fn the_digest_is_of_versions_and_checksums_in_order() {
        let rows = [applied(2, "22"), applied(1, "11")];
        assert_eq!(
            history_digest(&rows),
            crate::migrations::sha256_hex(b"1:11,2:22")
        );
        assert_eq!(history_digest(&[]), crate::migrations::sha256_hex(b""));
    }

    #[test]
    fn a_missing_table_is_expected_missing() {
        let missing = HistoryRead {
            rows: Vec::new(),
            table_exists: false,
        };
        let guard = release_guard(&missing, "00ff");
        assert!(guard.contains("IS DISTINCT FROM NULL"), "{guard}");
        assert!(
            guard.contains(&format!("pg_try_advisory_lock({LOCK_KEY})")),
            "{guard}"
        );
        let empty = HistoryRead {
            rows: Vec::new(),
            table_exists: true,
        };
        let guard = release_guard(&empty, "00ff");
        assert!(
            guard.contains(&format!("'{}'", crate::migrations::sha256_hex(b""))),
            "{guard}"
        );
    }
}

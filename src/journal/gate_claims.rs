//! Which runner of a shared plan runs a gate between waves (a wave's checks after it, at the
//! end of its bake or in a retry; asking for an approval): one runner, elected in the store
//! under a lease it renews, while the others wait for its verdict.
//!
//! **Invariant:** a gate `(plan, wave, gate)` has at most one holder with a live lease, and its
//! verdict, once set, is final for that key; a holder that died (its lease lapsed) is replaced
//! by the next runner that asks, which runs the gate again from the records.
//! Kept on its own connection so a long check never holds up claims or heartbeats.

use std::time::Duration;

use tokio_postgres::Client;

use super::file::JournalError;
use super::reconnect::{StoreConnection, retried};
use super::store::{StateStore, store_error};

/// What asking for a gate found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTurn {
    /// This runner holds the gate: it runs it, then [`GateClaims::decide`]s.
    Run,
    /// Another runner holds it under a live lease.
    Wait,
    /// It was decided: whether it let the rollout on.
    Decided { passed: bool },
}

/// This runner's handle on the plan's gate rows.
pub struct GateClaims {
    conn: StoreConnection,
    plan_id: String,
    runner_id: String,
    lease: Duration,
}

impl GateClaims {
    pub async fn new(
        store: &StateStore,
        plan_id: &str,
        runner_id: &str,
        lease: Duration,
    ) -> Result<GateClaims, JournalError> {
        Ok(GateClaims {
            conn: store.connection().await?,
            plan_id: plan_id.to_string(),
            runner_id: runner_id.to_string(),
            lease,
        })
    }

    fn error(&self, what: &str, error: &tokio_postgres::Error) -> JournalError {
        store_error(self.conn.uri(), what, error)
    }

    /// A lost connection is waited for and replaced (every operation here is harmless to run
    /// again: a claim by the same runner renews it, a verdict is set once).
    async fn recover(
        &self,
        client: &mut tokio::sync::MutexGuard<'_, Client>,
        error: &tokio_postgres::Error,
    ) -> Result<bool, JournalError> {
        self.conn.recover(client, error).await
    }

    /// Take the gate when nobody holds it (or its holder's lease lapsed, or the holder is this
    /// runner id in an earlier process), else say who decides.
    pub async fn claim(&self, wave: &str, gate: &str) -> Result<GateTurn, JournalError> {
        retried!(self, "claiming a gate", |client| async {
            let taken = client
                .query_opt(
                    "INSERT INTO schemafleet_gate AS g (plan_id, wave, gate, runner_id, lease_until)
                     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
                     ON CONFLICT (plan_id, wave, gate) DO UPDATE
                       SET runner_id = EXCLUDED.runner_id, lease_until = EXCLUDED.lease_until, claims = g.claims + 1
                       WHERE g.passed IS NULL
                         AND (g.runner_id IS NULL OR g.lease_until < now() OR g.runner_id = EXCLUDED.runner_id)
                     RETURNING 1",
                    &[
                        &self.plan_id,
                        &wave,
                        &gate,
                        &self.runner_id,
                        &self.lease.as_secs_f64(),
                    ],
                )
                .await?;
            if taken.is_some() {
                return Ok(GateTurn::Run);
            }
            let passed: Option<bool> = client
                .query_opt(
                    "SELECT passed FROM schemafleet_gate WHERE plan_id = $1 AND wave = $2 AND gate = $3",
                    &[&self.plan_id, &wave, &gate],
                )
                .await?
                .and_then(|row| row.get(0));
            Ok(passed.map_or(GateTurn::Wait, |passed| GateTurn::Decided { passed }))
        })
    }

    /// Whether some runner took the gate (it runs, or ran).
    pub async fn exists(&self, wave: &str, gate: &str) -> Result<bool, JournalError> {
        retried!(self, "reading a gate", |client| async {
            let row = client
                .query_opt(
                    "SELECT 1 FROM schemafleet_gate WHERE plan_id = $1 AND wave = $2 AND gate = $3",
                    &[&self.plan_id, &wave, &gate],
                )
                .await?;
            Ok(row.is_some())
        })
    }

    /// Record the verdict of a gate this runner holds.
    pub async fn decide(&self, wave: &str, gate: &str, passed: bool) -> Result<(), JournalError> {
        retried!(self, "deciding a gate", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_gate SET passed = $5, decided_at = now(), lease_until = NULL
                     WHERE plan_id = $1 AND wave = $2 AND gate = $3 AND runner_id = $4 AND passed IS NULL",
                    &[&self.plan_id, &wave, &gate, &self.runner_id, &passed],
                )
                .await
                .map(drop)
        })
    }

    /// Let an undecided gate go (Ctrl-C while it ran): the next runner that asks takes it.
    pub async fn release(&self) -> Result<(), JournalError> {
        retried!(self, "releasing a gate", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_gate SET runner_id = NULL, lease_until = NULL
                     WHERE plan_id = $1 AND runner_id = $2 AND passed IS NULL",
                    &[&self.plan_id, &self.runner_id],
                )
                .await
                .map(drop)
        })
    }

    /// Renew the leases of the gates this runner runs (a bake with its checks can take hours).
    pub async fn renew(&self) -> Result<(), JournalError> {
        retried!(self, "renewing a gate's lease", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_gate SET lease_until = now() + make_interval(secs => $3)
                     WHERE plan_id = $1 AND runner_id = $2 AND passed IS NULL",
                    &[&self.plan_id, &self.runner_id, &self.lease.as_secs_f64()],
                )
                .await
                .map(drop)
        })
    }

    /// Forget the verdicts of waves that run again (reopened by `--retry-failed`): their
    /// checks must run again once they end. Waves not started keep theirs (an approval asked).
    pub async fn forget_reopened(&self) -> Result<(), JournalError> {
        retried!(self, "forgetting reopened waves' gates", |client| async {
            client
                .execute(
                    "DELETE FROM schemafleet_gate g USING schemafleet_wave w
                     WHERE g.plan_id = $1 AND w.plan_id = g.plan_id AND w.wave = g.wave
                       AND w.started AND NOT w.finished",
                    &[&self.plan_id],
                )
                .await
                .map(drop)
        })
    }
}

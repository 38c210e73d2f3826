//! What several runners of one plan share in the state store, besides the records: which
//! tenant each works on (a claim under a lease it renews), each wave's failure budget and end,
//! the runners themselves, and the rollout's pause/abort switches.
//!
//! **Invariant:** a tenant is claimed in a transaction that takes its row `FOR UPDATE SKIP
//! LOCKED` and reads the wave's and the plan's rows `FOR SHARE`; a failure that spends the budget,
//! a pause and an abort update those rows, so once one of them commits no claim starts a tenant.
//! **Invariant:** a claim whose lease ran out belongs to nobody; the next runner to claim it
//! resumes the tenant from the records (re-probe, sweep requested branches), exactly like a
//! killed run's resume.
//! **Invariant:** every operation survives the store's restart: a lost connection is waited
//! out and the operation run again ([`super::reconnect`]), and each is harmless to run again
//! when its first answer was lost (a claim looks for the tenant it may already hold, a finish
//! finds the tenant no longer held, a wave's start and end are marked with this process).
//! After a reconnect no lapsed claim is taken over for one lease, so runners still waiting for
//! the store keep their tenants.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::file::JournalError;
use super::reconnect::{StoreConnection, retried};
use super::store::{StateStore, store_error};
use crate::secret::SecretUri;

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This runner now holds `tenant`; `resumed` when an earlier claim of it lapsed.
    Tenant {
        tenant: String,
        resumed: bool,
    },
    /// Tenants are left but others hold them (or they are outside this runner's regions).
    Wait,
    /// Every tenant of the wave is finished.
    WaveDone,
    /// The wave's failure budget is spent.
    Halted,
    Paused {
        by: String,
    },
    Aborted {
        by: String,
        reason: String,
    },
}

/// One tenant as the runner that seeds the store sees it.
pub struct SeedTenant<'a> {
    pub tenant: &'a str,
    pub wave: &'a str,
    pub region: &'a str,
    /// Finished per the records (and not being retried).
    pub done: bool,
    pub outcome: Option<&'a str>,
}

/// One wave as the records left it.
pub struct SeedWave<'a> {
    pub wave: &'a str,
    pub started: bool,
    pub finished: bool,
    pub halted: bool,
    pub bake_until: Option<&'a str>,
}

/// A wave's row.
#[derive(Debug, Clone, Default)]
pub struct WaveRow {
    pub failures: i32,
    pub halted: bool,
    pub started: bool,
    pub finished: bool,
    pub bake_until: Option<String>,
}

/// A runner as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunnerRow {
    pub runner_id: String,
    pub regions: String,
    pub last_seen: String,
    pub seconds_since_seen: f64,
    pub in_flight: i64,
    pub finished: bool,
}

/// The plan's switches.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ControlRow {
    pub paused_by: Option<String>,
    pub paused_at: Option<String>,
    pub aborted_by: Option<String>,
    pub abort_reason: Option<String>,
    /// When the abort was asked (absent in control files written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<String>,
}

impl ControlRow {
    /// What the switches say to a runner about starting a tenant.
    pub fn switch(&self) -> Option<Claim> {
        if let Some(by) = &self.aborted_by {
            return Some(Claim::Aborted {
                by: by.clone(),
                reason: self.abort_reason.clone().unwrap_or_default(),
            });
        }
        self.paused_by
            .as_ref()
            .map(|by| Claim::Paused { by: by.clone() })
    }
}

/// This runner's handle on the shared state of one plan.
pub struct Coordinator {
    conn: StoreConnection,
    plan_id: String,
    runner_id: String,
    /// This process among all that ever ran as `runner_id`: it marks the waves it starts and
    /// ends, so asking again after a lost answer still finds it was this process.
    instance: String,
    regions: Vec<String>,
    lease: Duration,
    /// The tenants this process knows it holds; only their leases are renewed, so a claim whose
    /// answer was lost is found again (see [`Coordinator::claim`]) or lapses.
    held: std::sync::Mutex<BTreeSet<String>>,
    /// After the store came back, lapsed claims are not taken over before this: every runner
    /// gets one lease to reconnect and renew its own before another resumes their tenants.
    no_takeover_until: std::sync::Mutex<Option<Instant>>,
}

impl Coordinator {
    pub async fn new(
        store: &StateStore,
        plan_id: &str,
        runner_id: &str,
        regions: Vec<String>,
        lease: Duration,
    ) -> Result<Coordinator, JournalError> {
        Ok(Coordinator {
            conn: store.connection().await?,
            plan_id: plan_id.to_string(),
            runner_id: runner_id.to_string(),
            instance: format!("{runner_id}/{:016x}", rand::random::<u64>()),
            regions,
            lease,
            held: std::sync::Mutex::new(BTreeSet::new()),
            no_takeover_until: std::sync::Mutex::new(None),
        })
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn error(&self, what: &str, error: &tokio_postgres::Error) -> JournalError {
        store_error(self.conn.uri(), what, error)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn held_list(&self) -> Vec<String> {
        self.held().iter().cloned().collect()
    }

    /// After a lost connection: wait for the store and reconnect; then renew this runner's
    /// leases at once (they may have run out while the store was away) and hold off taking
    /// over lapsed claims for one lease, so runners still reconnecting keep their tenants.
    async fn recover(
        &self,
        client: &mut tokio::sync::MutexGuard<'_, Client>,
        error: &tokio_postgres::Error,
    ) -> Result<bool, JournalError> {
        if !self.conn.recover(client, error).await? {
            return Ok(false);
        }
        *self
            .no_takeover_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(Instant::now() + self.lease);
        if let Err(error) = renew_leases(
            client,
            &self.plan_id,
            &self.runner_id,
            &self.held_list(),
            self.lease,
        )
        .await
        {
            tracing::warn!(error = %error, "cannot renew the leases after reconnecting");
        }
        Ok(true)
    }

    fn may_take_over(&self) -> bool {
        self.no_takeover_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .is_none_or(|until| Instant::now() >= until)
    }

    /// Register this runner (a runner id reused by a new process takes over its old claims'
    /// tenants: they are released for whoever claims first).
    pub async fn register(&self) -> Result<(), JournalError> {
        retried!(self, "registering the runner", |client| async {
            client
                .execute(
                    "INSERT INTO schemafleet_runner (plan_id, runner_id, regions) VALUES ($1, $2, $3)
                     ON CONFLICT (plan_id, runner_id) DO UPDATE SET regions = $3, started_at = now(), last_seen = now(), in_flight = 0, finished = false",
                    &[&self.plan_id, &self.runner_id, &self.regions.join(",")],
                )
                .await?;
            client
                .execute(
                    "UPDATE schemafleet_tenant SET runner_id = NULL, lease_until = NULL WHERE plan_id = $1 AND runner_id = $2 AND NOT done",
                    &[&self.plan_id, &self.runner_id],
                )
                .await
        })?;
        Ok(())
    }

    /// Put the plan's waves and tenants in the store (the first runner does; later ones find
    /// them), and reopen the tenants this runner was asked to retry (`reopen`), un-ending
    /// their waves.
    pub async fn seed(
        &self,
        waves: &[SeedWave<'_>],
        tenants: &[SeedTenant<'_>],
        reopen: &[&str],
    ) -> Result<(), JournalError> {
        let names: Vec<&str> = tenants.iter().map(|tenant| tenant.tenant).collect();
        let wave_names: Vec<&str> = tenants.iter().map(|tenant| tenant.wave).collect();
        let ords: Vec<i32> = (0..tenants.len() as i32).collect();
        let regions: Vec<&str> = tenants.iter().map(|tenant| tenant.region).collect();
        let done: Vec<bool> = tenants.iter().map(|tenant| tenant.done).collect();
        let outcomes: Vec<Option<&str>> = tenants.iter().map(|tenant| tenant.outcome).collect();
        retried!(self, "seeding", |client| async {
            let transaction = client.transaction().await?;
            for (ord, wave) in waves.iter().enumerate() {
                let failures = tenants
                    .iter()
                    .filter(|tenant| {
                        tenant.wave == wave.wave
                            && tenant.done
                            && matches!(tenant.outcome, Some("failed" | "diverged"))
                    })
                    .count() as i32;
                transaction
                    .execute(
                        "INSERT INTO schemafleet_wave (plan_id, wave, ord, failures, halted, started, finished, bake_until)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                        &[
                            &self.plan_id,
                            &wave.wave,
                            &(ord as i32),
                            &failures,
                            &wave.halted,
                            &wave.started,
                            &wave.finished,
                            &wave.bake_until,
                        ],
                    )
                    .await?;
            }
            transaction
                .execute(
                    "INSERT INTO schemafleet_tenant (plan_id, tenant, wave, ord, region, done, outcome)
                     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::bool[], $7::text[])
                     ON CONFLICT DO NOTHING",
                    &[&self.plan_id, &names, &wave_names, &ords, &regions, &done, &outcomes],
                )
                .await?;
            if !reopen.is_empty() {
                transaction
                    .execute(
                        "UPDATE schemafleet_tenant SET done = false, outcome = NULL, runner_id = NULL, lease_until = NULL
                         WHERE plan_id = $1 AND tenant = ANY($2) AND done",
                        &[&self.plan_id, &reopen],
                    )
                    .await?;
                transaction
                    .execute(
                        "UPDATE schemafleet_wave w SET halted = false, finished = false,
                           failures = (SELECT count(*) FROM schemafleet_tenant t WHERE t.plan_id = w.plan_id AND t.wave = w.wave AND t.done AND t.outcome IN ('failed', 'diverged'))
                         WHERE plan_id = $1 AND EXISTS (SELECT 1 FROM schemafleet_tenant t WHERE t.plan_id = w.plan_id AND t.wave = w.wave AND NOT t.done)",
                        &[&self.plan_id],
                    )
                    .await?;
            }
            transaction.commit().await
        })
    }

    /// Claim the next unclaimed (or lapsed) tenant of `wave`. When the answer to a claim was
    /// lost with the connection, the retry first looks for a tenant this runner holds without
    /// knowing it (that claim committed) and returns it, so no claim is stranded.
    pub async fn claim(&self, wave: &str) -> Result<Claim, JournalError> {
        let mut retrying = false;
        let claim = retried!(self, "claiming", |client| {
            let lost_answer = std::mem::replace(&mut retrying, true);
            self.try_claim(client, wave, lost_answer)
        })?;
        if let Claim::Tenant { tenant, .. } = &claim {
            self.held().insert(tenant.clone());
        }
        Ok(claim)
    }

    async fn try_claim(
        &self,
        client: &mut Client,
        wave: &str,
        lost_answer: bool,
    ) -> Result<Claim, tokio_postgres::Error> {
        let transaction = client.transaction().await?;
        let control = transaction
            .query_one(
                "SELECT paused_by, aborted_by, abort_reason FROM schemafleet_plan WHERE plan_id = $1 FOR SHARE",
                &[&self.plan_id],
            )
            .await?;
        if let Some(by) = control.get::<_, Option<String>>(1) {
            return Ok(Claim::Aborted {
                by,
                reason: control.get::<_, Option<String>>(2).unwrap_or_default(),
            });
        }
        if let Some(by) = control.get::<_, Option<String>>(0) {
            return Ok(Claim::Paused { by });
        }
        let halted: bool = transaction
            .query_one(
                "SELECT halted FROM schemafleet_wave WHERE plan_id = $1 AND wave = $2 FOR SHARE",
                &[&self.plan_id, &wave],
            )
            .await?
            .get(0);
        if halted {
            return Ok(Claim::Halted);
        }
        if lost_answer
            && let Some(row) = transaction
                .query_opt(
                    "SELECT tenant, claims FROM schemafleet_tenant
                     WHERE plan_id = $1 AND wave = $2 AND runner_id = $3 AND NOT done AND NOT (tenant = ANY($4))
                     ORDER BY ord LIMIT 1",
                    &[&self.plan_id, &wave, &self.runner_id, &self.held_list()],
                )
                .await?
        {
            transaction.commit().await?;
            return Ok(Claim::Tenant {
                tenant: row.get(0),
                resumed: row.get::<_, i32>(1) > 1,
            });
        }
        let claimed = transaction
            .query_opt(
                "UPDATE schemafleet_tenant SET runner_id = $3, lease_until = now() + make_interval(secs => $4), claims = claims + 1
                 WHERE plan_id = $1 AND tenant = (
                   SELECT tenant FROM schemafleet_tenant
                   WHERE plan_id = $1 AND wave = $2 AND NOT done
                     AND (runner_id IS NULL OR ($6 AND lease_until < now()))
                     AND (cardinality($5::text[]) = 0 OR region = ANY($5))
                   ORDER BY ord LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING tenant, claims",
                &[
                    &self.plan_id,
                    &wave,
                    &self.runner_id,
                    &self.lease.as_secs_f64(),
                    &self.regions,
                    &self.may_take_over(),
                ],
            )
            .await?;
        let claim = match claimed {
            Some(row) => Claim::Tenant {
                tenant: row.get(0),
                resumed: row.get::<_, i32>(1) > 1,
            },
            None => {
                let left: i64 = transaction
                    .query_one(
                        "SELECT count(*) FROM schemafleet_tenant WHERE plan_id = $1 AND wave = $2 AND NOT done",
                        &[&self.plan_id, &wave],
                    )
                    .await?
                    .get(0);
                if left == 0 {
                    Claim::WaveDone
                } else {
                    Claim::Wait
                }
            }
        };
        transaction.commit().await?;
        Ok(claim)
    }

    /// Mark a claimed tenant finished; a failure counts against its wave's budget in the same
    /// transaction, halting the wave when `exceeded(failures)`. Returns whether the wave is
    /// halted now. A tenant whose claim lapsed and was taken over is left to its new holder; so
    /// is one this runner already finished (a retry after a lost answer counts nothing twice).
    pub async fn finish(
        &self,
        tenant: &str,
        outcome: &str,
        exceeded: impl Fn(usize) -> bool,
    ) -> Result<bool, JournalError> {
        let halted = retried!(self, "finishing a tenant", |client| async {
            let transaction = client.transaction().await?;
            let wave: Option<String> = transaction
                .query_opt(
                    "UPDATE schemafleet_tenant SET done = true, outcome = $3, runner_id = NULL, lease_until = NULL
                     WHERE plan_id = $1 AND tenant = $2 AND runner_id = $4 RETURNING wave",
                    &[&self.plan_id, &tenant, &outcome, &self.runner_id],
                )
                .await?
                .map(|row| row.get(0));
            let halted = match wave {
                Some(wave) => {
                    let counts = matches!(outcome, "failed" | "diverged");
                    let row = transaction
                        .query_one(
                            "UPDATE schemafleet_wave SET failures = failures + $3 WHERE plan_id = $1 AND wave = $2 RETURNING failures, halted",
                            &[&self.plan_id, &wave, &i32::from(counts)],
                        )
                        .await?;
                    let failures: i32 = row.get(0);
                    let halted: bool = row.get(1);
                    if !halted && exceeded(failures as usize) {
                        transaction
                            .execute(
                                "UPDATE schemafleet_wave SET halted = true WHERE plan_id = $1 AND wave = $2",
                                &[&self.plan_id, &wave],
                            )
                            .await?;
                        true
                    } else {
                        halted
                    }
                }
                None => transaction
                    .query_one(
                        "SELECT w.halted FROM schemafleet_wave w JOIN schemafleet_tenant t
                           ON t.plan_id = w.plan_id AND t.wave = w.wave
                         WHERE t.plan_id = $1 AND t.tenant = $2",
                        &[&self.plan_id, &tenant],
                    )
                    .await?
                    .get(0),
            };
            transaction.commit().await?;
            Ok(halted)
        })?;
        self.held().remove(tenant);
        Ok(halted)
    }

    /// Let a claim go without finishing it (Ctrl-C, time up): another runner may take it now.
    pub async fn release(&self, tenant: &str) -> Result<(), JournalError> {
        retried!(self, "releasing a claim", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_tenant SET runner_id = NULL, lease_until = NULL WHERE plan_id = $1 AND tenant = $2 AND runner_id = $3 AND NOT done",
                    &[&self.plan_id, &tenant, &self.runner_id],
                )
                .await
        })?;
        self.held().remove(tenant);
        Ok(())
    }

    pub async fn wave(&self, wave: &str) -> Result<WaveRow, JournalError> {
        let row = retried!(self, "reading a wave", |client| async {
            client
                .query_one(
                    "SELECT failures, halted, started, finished, bake_until FROM schemafleet_wave WHERE plan_id = $1 AND wave = $2",
                    &[&self.plan_id, &wave],
                )
                .await
        })?;
        Ok(WaveRow {
            failures: row.get(0),
            halted: row.get(1),
            started: row.get(2),
            finished: row.get(3),
            bake_until: row.get(4),
        })
    }

    /// Mark the wave started; true for the one process that did (it journals `wave_started`),
    /// also when it asks again after a lost answer.
    pub async fn start_wave(&self, wave: &str) -> Result<bool, JournalError> {
        let changed = retried!(self, "starting a wave", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_wave SET started = true, started_by = $3
                     WHERE plan_id = $1 AND wave = $2 AND (NOT started OR started_by = $3)",
                    &[&self.plan_id, &wave, &self.instance],
                )
                .await
        })?;
        Ok(changed == 1)
    }

    /// Mark the wave ended; true for the one process that did (it journals `wave_finished`),
    /// also when it asks again after a lost answer.
    pub async fn finish_wave(
        &self,
        wave: &str,
        bake_until: Option<&str>,
    ) -> Result<bool, JournalError> {
        let changed = retried!(self, "ending a wave", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_wave SET finished = true, finished_by = $4, bake_until = coalesce(CASE WHEN finished THEN bake_until END, $3)
                     WHERE plan_id = $1 AND wave = $2 AND (NOT finished OR finished_by = $4)",
                    &[&self.plan_id, &wave, &bake_until, &self.instance],
                )
                .await
        })?;
        Ok(changed == 1)
    }

    /// Renew this runner's leases and say it is alive, with how many tenants it works on.
    pub async fn heartbeat(&self, in_flight: usize) -> Result<(), JournalError> {
        let held = self.held_list();
        retried!(self, "renewing leases", |client| async {
            renew_leases(client, &self.plan_id, &self.runner_id, &held, self.lease).await?;
            client
                .execute(
                    "UPDATE schemafleet_runner SET last_seen = now(), in_flight = $3 WHERE plan_id = $1 AND runner_id = $2",
                    &[&self.plan_id, &self.runner_id, &(in_flight as i32)],
                )
                .await
        })?;
        Ok(())
    }

    /// The runner stops: its unfinished claims are released, its row says it finished.
    pub async fn retire(&self) -> Result<(), JournalError> {
        retried!(self, "retiring the runner", |client| async {
            client
                .execute(
                    "UPDATE schemafleet_tenant SET runner_id = NULL, lease_until = NULL WHERE plan_id = $1 AND runner_id = $2 AND NOT done",
                    &[&self.plan_id, &self.runner_id],
                )
                .await?;
            client
                .execute(
                    "UPDATE schemafleet_runner SET last_seen = now(), in_flight = 0, finished = true WHERE plan_id = $1 AND runner_id = $2",
                    &[&self.plan_id, &self.runner_id],
                )
                .await
        })?;
        self.held().clear();
        Ok(())
    }
}

/// Extend the leases of `tenants` (those this runner knows it holds).
async fn renew_leases(
    client: &Client,
    plan_id: &str,
    runner_id: &str,
    tenants: &[String],
    lease: Duration,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE schemafleet_tenant SET lease_until = now() + make_interval(secs => $4)
             WHERE plan_id = $1 AND runner_id = $2 AND tenant = ANY($3) AND NOT done",
            &[&plan_id, &runner_id, &tenants, &lease.as_secs_f64()],
        )
        .await
}

/// The plan's runners, most recently seen first (for `status`).
pub async fn runners(
    client: &Client,
    uri: &SecretUri,
    plan_id: &str,
) -> Result<Vec<RunnerRow>, JournalError> {
    let rows = client
        .query(
            "SELECT r.runner_id, r.regions, to_char(r.last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    extract(epoch FROM now() - r.last_seen)::float8,
                    (SELECT count(*) FROM schemafleet_tenant t WHERE t.plan_id = r.plan_id AND t.runner_id = r.runner_id AND NOT t.done AND t.lease_until >= now()),
                    r.finished
             FROM schemafleet_runner r WHERE r.plan_id = $1 ORDER BY r.last_seen DESC",
            &[&plan_id],
        )
        .await
        .map_err(|error| store_error(uri, "reading runners", &error))?;
    Ok(rows
        .iter()
        .map(|row| RunnerRow {
            runner_id: row.get(0),
            regions: row.get(1),
            last_seen: row.get(2),
            seconds_since_seen: row.get(3),
            in_flight: row.get(4),
            finished: row.get(5),
        })
        .collect())
}

/// The plan's pause/abort switches (all empty for a plan the store does not know).
pub async fn control(
    client: &Client,
    uri: &SecretUri,
    plan_id: &str,
) -> Result<ControlRow, JournalError> {
    let row = client
        .query_opt(
            "SELECT paused_by, to_char(paused_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), aborted_by, abort_reason,
                    to_char(aborted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM schemafleet_plan WHERE plan_id = $1",
            &[&plan_id],
        )
        .await
        .map_err(|error| store_error(uri, "reading the plan's switches", &error))?;
    Ok(row.map_or_else(ControlRow::default, |row| ControlRow {
        paused_by: row.get(0),
        paused_at: row.get(1),
        aborted_by: row.get(2),
        abort_reason: row.get(3),
        aborted_at: row.get(4),
    }))
}

/// Set the plan's switches: pause (`Some(by)`) or resume (`None`, which also lifts an abort);
/// abort with who and why. The plan's row is created when the store does not know it yet.
pub async fn set_control(
    client: &Client,
    uri: &SecretUri,
    plan_id: &str,
    change: &ControlChange,
) -> Result<(), JournalError> {
    client
        .execute(
            "INSERT INTO schemafleet_plan (plan_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&plan_id],
        )
        .await
        .map_err(|error| store_error(uri, "registering the plan", &error))?;
    let result = match change {
        ControlChange::Pause { by } => {
            client
                .execute(
                    "UPDATE schemafleet_plan SET paused_by = $2, paused_at = now() WHERE plan_id = $1",
                    &[&plan_id, by],
                )
                .await
        }
        ControlChange::Resume => {
            client
                .execute(
                    "UPDATE schemafleet_plan SET paused_by = NULL, paused_at = NULL, aborted_by = NULL, abort_reason = NULL, aborted_at = NULL WHERE plan_id = $1",
                    &[&plan_id],
                )
                .await
        }
        ControlChange::Abort { by, reason } => {
            client
                .execute(
                    "UPDATE schemafleet_plan SET aborted_by = $2, abort_reason = $3, aborted_at = now() WHERE plan_id = $1",
                    &[&plan_id, by, reason],
                )
                .await
        }
    };
    result.map_err(|error| store_error(uri, "changing the plan's switches", &error))?;
    Ok(())
}

/// A change of a plan's switches (`pause`, `resume`, `abort`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ControlChange {
    Pause { by: String },
    Resume,
    Abort { by: String, reason: String },
}

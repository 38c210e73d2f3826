//! A connection to the state store that rides out the store going away (a restart, a failover,
//! a dropped network path): an operation that finds its connection lost waits for the store to
//! come back, connects again and is tried again, for at most the store's patience.
//!
//! **Invariant:** only a *lost connection* is retried (the session is gone, so whatever the
//! operation did either committed whole or not at all); a statement the store refused is an
//! error at once. Callers whose operation may have committed without the answer arriving make
//! the retry harmless themselves (the journal's appends carry their writer's own sequence
//! number, claims are looked up again; see `store.rs` and `coordination.rs`).
//! **Invariant:** one message per outage, however many connections of the process notice it;
//! a reconnect that succeeds at once prints nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;

use super::file::JournalError;
use super::store::connect;
use crate::secret::SecretUri;

/// How long a runner waits for its store to come back before it stops, unless told otherwise.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(120);

/// First pause between connection attempts; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// How often a long wait says it is still waiting.
const REMINDER_EVERY: Duration = Duration::from_secs(15);

/// What every connection of one process to the store shares about an outage: how long to wait
/// and whether the operator has been told.
pub struct Outage {
    label: String,
    patience: Duration,
    /// When the announced wait began, and when it last said so.
    announced: std::sync::Mutex<Option<(Instant, Instant)>>,
    /// A connection waited the whole patience in vain: the run is stopping, so the others
    /// (releasing claims, reading the last records) try once instead of waiting again.
    gave_up: AtomicBool,
}

impl Outage {
    pub fn new(label: String, patience: Duration) -> Arc<Outage> {
        Arc::new(Outage {
            label,
            patience,
            announced: std::sync::Mutex::new(None),
            gave_up: AtomicBool::new(false),
        })
    }

    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// A connection cannot reach the store: say so once per outage, and remind now and then.
    fn waiting(&self, reason: &str) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = Instant::now();
        match &mut *announced {
            None => {
                *announced = Some((now, now));
                eprintln!(
                    "note: state store {} is unreachable ({reason}); waiting up to {} for it to come back: no tenant starts meanwhile, tenants in flight wait for their records",
                    self.label,
                    shown(self.patience)
                );
            }
            Some((since, last_said)) if now.duration_since(*last_said) >= REMINDER_EVERY => {
                *last_said = now;
                eprintln!(
                    "note: still waiting for state store {} ({} of {})",
                    self.label,
                    shown(now.duration_since(*since)),
                    shown(self.patience)
                );
            }
            Some(_) => {}
        }
    }

    /// A connection reached the store again: end an announced wait.
    fn back(&self) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some((since, _)) = announced.take() {
            eprintln!(
                "note: state store {} is back after {:.1}s; continuing",
                self.label,
                since.elapsed().as_secs_f64()
            );
        }
    }
}

/// Whether `error` means the session is gone (so a new connection may succeed), rather than a
/// statement the store refused.
pub fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        // 57P01 admin_shutdown (a fast or smart shutdown, a restart), 57P02 crash_shutdown,
        // 57P03 cannot_connect_now (still starting up), class 08 connection exceptions.
        let code = code.code();
        return matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08");
    }
    // No SQLSTATE: the socket itself failed (reset, broken pipe, end of stream).
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// One connection to the store, replaced when it is lost.
pub struct StoreConnection {
    uri: SecretUri,
    outage: Arc<Outage>,
    client: Mutex<Client>,
    /// The plan locks this connection holds (`plan_id`, exclusive), taken again on a new one.
    plan_locks: std::sync::Mutex<Vec<(String, bool)>>,
}

impl StoreConnection {
    pub async fn open(
        uri: &SecretUri,
        outage: &Arc<Outage>,
    ) -> Result<StoreConnection, JournalError> {
        Ok(StoreConnection {
            uri: uri.clone(),
            outage: outage.clone(),
            client: Mutex::new(connect(uri).await?),
            plan_locks: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn uri(&self) -> &SecretUri {
        &self.uri
    }

    /// The connection, for one operation (others of this process wait their turn).
    pub async fn lock(&self) -> MutexGuard<'_, Client> {
        self.client.lock().await
    }

    /// Remember that this connection holds `plan_id`'s lock, so a new one takes it again.
    pub fn holds_plan_lock(&self, plan_id: &str, exclusive: bool) {
        self.plan_locks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((plan_id.to_string(), exclusive));
    }

    /// After `error` from an operation on `client`: when the connection was lost, wait for the
    /// store, put a new connection in its place and answer true (try the operation again);
    /// false for any other error. An error when the store stays away past the patience.
    pub async fn recover(
        &self,
        client: &mut MutexGuard<'_, Client>,
        error: &tokio_postgres::Error,
    ) -> Result<bool, JournalError> {
        if !is_connection_lost(error) {
            return Ok(false);
        }
        let reason = crate::secret::redact_uri(&error.to_string());
        tracing::info!(%reason, "the state store connection was lost; reconnecting");
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut last_failure;
        loop {
            match self.reconnect().await {
                Ok(new_client) => {
                    **client = new_client;
                    self.outage.gave_up.store(false, Ordering::Relaxed);
                    self.outage.back();
                    return Ok(true);
                }
                Err(failure) => last_failure = failure,
            }
            let gave_up_before = self.outage.gave_up.load(Ordering::Relaxed);
            if gave_up_before || started.elapsed() >= self.outage.patience {
                self.outage.gave_up.store(true, Ordering::Relaxed);
                let how_long = if gave_up_before {
                    format!(
                        "still unreachable after waiting its patience ({})",
                        shown(self.outage.patience)
                    )
                } else {
                    format!(
                        "unreachable for {} (its patience)",
                        shown(started.elapsed())
                    )
                };
                return Err(JournalError::Store {
                    store: self.uri.redacted(),
                    reason: format!(
                        "{how_long}; stopping. Nothing committed is lost: run `apply` again to resume. Last error: {last_failure}"
                    ),
                });
            }
            self.outage.waiting(&reason);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// A new connection holding the plan locks the lost one held.
    async fn reconnect(&self) -> Result<Client, String> {
        let client = connect(&self.uri)
            .await
            .map_err(|error| error.to_string())?;
        let locks = self
            .plan_locks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        for (plan_id, exclusive) in locks {
            if !super::store::take_plan_lock(&client, &plan_id, exclusive)
                .await
                .map_err(|error| crate::secret::redact_uri(&error.to_string()))?
            {
                // Someone took the plan's lock while the store was away (a rollback or gc
                // that started on the fresh server): this runner must not continue beside it.
                return Err(format!(
                    "after the store came back, another command holds plan {plan_id}'s lock"
                ));
            }
        }
        Ok(client)
    }
}

/// `45s`, `2m`, `1m30s`: how long, for the waiting messages.
fn shown(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 60, seconds % 60) {
        (0, seconds) => format!("{seconds}s"),
        (minutes, 0) => format!("{minutes}m"),
        (minutes, seconds) => format!("{minutes}m{seconds}s"),
    }
}

/// Run `$body` (an async block using `$client: &mut Client`) on `$self.conn`, a
/// [`StoreConnection`]; when the connection was lost, `$self.recover` waits for the store and
/// the body runs again. Every body must be harmless to run again after a lost answer.
macro_rules! retried {
    ($self:ident, $what:expr, |$client:ident| $body:expr) => {{
        let mut guard = $self.conn.lock().await;
        loop {
            let result = {
                let $client: &mut ::tokio_postgres::Client = &mut guard;
                $body.await
            };
            match result {
                Ok(value) => break Ok(value),
                Err(error) => {
                    if !$self.recover(&mut guard, &error).await? {
                        break Err($self.error($what, &error));
                    }
                }
            }
        }
    }};
}
pub(crate) use retried;

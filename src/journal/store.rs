//! The journal in PostgreSQL (`--state URL`): the same records as the file, one row each, so a
//! rollout outlives its runner's machine and several runners can share it.
//!
//! **Invariant:** an append is acknowledged only after the transaction holding its row
//! committed (group commit, as the file's fsync); its seq is allocated under the plan row's lock,
//! so seq order is commit order and a reader following `seq > cursor` skips nothing.
//! **Invariant:** the store's URI is a secret: it is held as a [`SecretUri`] and shown redacted.
//! The state schema is created and upgraded by refinery from `state_migrations/`, embedded in
//! the binary, under an advisory lock so runners starting together do not race.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{MutexGuard, mpsc};
use tokio_postgres::Client;

use super::file::{
    Ack, Journal, JournalError, Location, ReadJournal, RecordCount, Request, next_batch,
};
use super::reconnect::{DEFAULT_PATIENCE, Outage, StoreConnection, retried};
use super::record::{Event, RECORD_VERSION, Record};
use super::state::JournalState;
use crate::secret::SecretUri;

mod embedded {
    refinery::embed_migrations!("state_migrations");
}

/// refinery's history table for the state schema (not the tenants' `refinery_schema_history`).
const HISTORY_TABLE: &str = "schemafleet_state_history";
/// Advisory lock key held while the state schema is migrated ("sfstate" in ASCII).
const MIGRATE_LOCK_KEY: i64 = 0x0073_6673_7461_7465;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the state store, its schema current. Its connections (this one, the
/// journal's writer, a runner's coordination, the shared API bucket) ride out the store's
/// restart together: see [`super::reconnect`].
pub struct StateStore {
    uri: SecretUri,
    outage: Arc<Outage>,
    conn: StoreConnection,
}

impl StateStore {
    /// Connect and bring the state schema up to date. A store that cannot be reached, read or
    /// written is an error here, before any tenant is touched. A store lost later is waited
    /// for up to [`DEFAULT_PATIENCE`].
    pub async fn connect(uri: &SecretUri) -> Result<StateStore, JournalError> {
        StateStore::connect_with_patience(uri, DEFAULT_PATIENCE).await
    }

    /// [`StateStore::connect`], waiting up to `patience` for a store that went away mid-run.
    pub async fn connect_with_patience(
        uri: &SecretUri,
        patience: Duration,
    ) -> Result<StateStore, JournalError> {
        let outage = Outage::new(uri.redacted(), patience);
        let conn = StoreConnection::open(uri, &outage).await?;
        let store = StateStore {
            uri: uri.clone(),
            outage,
            conn,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The store as it may be shown.
    pub fn label(&self) -> String {
        self.uri.redacted()
    }

    pub fn uri(&self) -> &SecretUri {
        &self.uri
    }

    /// This store's own connection, for one operation.
    pub async fn client(&self) -> MutexGuard<'_, Client> {
        self.conn.lock().await
    }

    /// Another connection to the store, waiting out the same outages as this one.
    pub async fn connection(&self) -> Result<StoreConnection, JournalError> {
        StoreConnection::open(&self.uri, &self.outage).await
    }

    /// After `error` on this store's own connection: see [`StoreConnection::recover`] (for
    /// [`retried!`]).
    async fn recover(
        &self,
        client: &mut MutexGuard<'_, Client>,
        error: &tokio_postgres::Error,
    ) -> Result<bool, JournalError> {
        self.conn.recover(client, error).await
    }

    pub fn error(&self, what: &str, error: &tokio_postgres::Error) -> JournalError {
        store_error(&self.uri, what, error)
    }

    async fn migrate(&self) -> Result<(), JournalError> {
        let fail = |what: &str, error: &tokio_postgres::Error| self.error(what, error);
        let client = self.client().await;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
            .await
            .map_err(|error| fail("taking the schema lock", &error))?;
        let mut runner = embedded::migrations::runner();
        runner.set_migration_table_name(HISTORY_TABLE);
        // refinery wants `&mut Client`; a second connection keeps this one free for the lock.
        let mut migrate_client = connect(&self.uri).await?;
        let result = runner.run_async(&mut migrate_client).await;
        let unlock = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
            .await;
        result.map_err(|error| JournalError::Store {
            store: self.label(),
            reason: format!(
                "cannot create or upgrade the state schema: {}",
                crate::secret::redact_uri(&error.to_string())
            ),
        })?;
        unlock.map_err(|error| fail("releasing the schema lock", &error))?;
        Ok(())
    }

    /// Take the plan's advisory lock on this connection, without waiting: shared for each
    /// runner of `apply`, exclusive for `rollback` and `gc`, so those never run beside a runner
    /// (the lock of the file journal, in the store). Held until this store is dropped; taken
    /// again when the connection is replaced after the store restarted.
    pub async fn try_lock_plan(
        &self,
        plan_id: &str,
        exclusive: bool,
    ) -> Result<bool, JournalError> {
        let taken = take_plan_lock(&*self.client().await, plan_id, exclusive)
            .await
            .map_err(|error| self.error("taking the plan's lock", &error))?;
        if taken {
            self.conn.holds_plan_lock(plan_id, exclusive);
        }
        Ok(taken)
    }

    /// Every record of `plan_id`, in seq order, replayed (no lock: for `status` and friends).
    /// Rows are folded in as they arrive, so a large rollout is never held whole; a connection
    /// lost on the way is waited for and the replay starts again.
    pub async fn read(&self, plan_id: &str) -> Result<ReadJournal, JournalError> {
        // The store's name is only for errors: redacted once, not once per row.
        let store = self.label();
        let state = retried!(self, "reading records", |client| replay_rows(
            client,
            plan_id,
            |seq, text| decode_record(&store, plan_id, seq, text)
        ))??;
        Ok(ReadJournal {
            records: RecordCount(state.records),
            state,
            torn_tail: None,
        })
    }

    /// Records of `plan_id` with seq above `after`, in seq order, each with its writer.
    pub async fn records_after(
        &self,
        plan_id: &str,
        after: u64,
    ) -> Result<Vec<(String, Record)>, JournalError> {
        let rows = retried!(self, "reading records", |client| async {
            client
                .query(
                    "SELECT seq, writer, record FROM schemafleet_record WHERE plan_id = $1 AND seq > $2 ORDER BY seq",
                    &[&plan_id, &(after as i64)],
                )
                .await
        })?;
        let store = self.label();
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let record = decode_record(&store, plan_id, seq, row.get(2))?;
                Ok((row.get::<_, String>(1), record))
            })
            .collect()
    }

    /// Open the journal of `plan_id` for appends by `writer` (this process), creating the plan's
    /// row. A store whose records for this id belong to another plan is refused.
    pub async fn open_journal(
        &self,
        plan_id: &str,
        writer: &str,
    ) -> Result<(Journal, ReadJournal), JournalError> {
        let next_writer_seq: i64 = {
            let client = self.client().await;
            client
                .execute(
                    "INSERT INTO schemafleet_plan (plan_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&plan_id],
                )
                .await
                .map_err(|error| self.error("registering the plan", &error))?;
            // A writer name seen before (the same runner id within the same second) continues
            // its numbering, so its appends never look like ones already written.
            client
                .query_one(
                    "SELECT coalesce(max(writer_seq), 0) + 1 FROM schemafleet_record WHERE plan_id = $1 AND writer = $2",
                    &[&plan_id, &writer],
                )
                .await
                .map_err(|error| self.error("reading the writer's records", &error))?
                .get(0)
        };
        let read = self.read(plan_id).await?;
        self.check_plan(&read.state, plan_id)?;
        let conn = self.connection().await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            conn,
            plan_id.to_string(),
            writer.to_string(),
            next_writer_seq,
            receiver,
        ));
        Ok((
            Journal::with_writer(Location::Store(self.label()), sender),
            read,
        ))
    }

    /// Move a rollout begun with a file journal into the store (`state import`): its records,
    /// seqs kept, in one transaction. Returns how many were imported; none when the store holds
    /// exactly these records already. A store holding a different history of the plan is refused.
    pub async fn import(&self, plan_id: &str, records: &[Record]) -> Result<usize, JournalError> {
        let existing: Vec<Record> = self
            .records_after(plan_id, 0)
            .await?
            .into_iter()
            .map(|(_, record)| record)
            .collect();
        if !existing.is_empty() {
            if existing == records {
                return Ok(0);
            }
            return Err(JournalError::Store {
                store: self.label(),
                reason: format!(
                    "it already holds a different history of plan {plan_id} ({} records, the journal has {}); refusing to import over it",
                    existing.len(),
                    records.len()
                ),
            });
        }
        let mut seqs = Vec::with_capacity(records.len());
        let mut texts = Vec::with_capacity(records.len());
        for record in records {
            seqs.push(record.seq as i64);
            texts.push(
                serde_json::to_string(record).map_err(|error| JournalError::Store {
                    store: self.label(),
                    reason: format!("cannot encode record {}: {error}", record.seq),
                })?,
            );
        }
        let last = seqs.iter().copied().max().unwrap_or(0);
        let fail = |error: tokio_postgres::Error| self.error("importing", &error);
        let client = self.client().await;
        client.batch_execute("BEGIN").await.map_err(fail)?;
        let result = async {
            client
                .execute(
                    "INSERT INTO schemafleet_plan (plan_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&plan_id],
                )
                .await?;
            client
                .execute(
                    "UPDATE schemafleet_plan SET last_seq = greatest(last_seq, $2) WHERE plan_id = $1",
                    &[&plan_id, &last],
                )
                .await?;
            // An imported record's writer sequence is its seq: unique, as the writer's must be.
            client
                .execute(
                    "INSERT INTO schemafleet_record (plan_id, seq, writer, writer_seq, record) SELECT $1, s, 'import', s, r FROM unnest($2::bigint[], $3::text[]) AS i(s, r)",
                    &[&plan_id, &seqs, &texts],
                )
                .await?;
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(error) = result {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(fail(error));
        }
        Ok(records.len())
    }

    /// The records under `plan_id` must be that plan's own (see `journal::file`'s check).
    pub fn check_plan(&self, state: &JournalState, plan_id: &str) -> Result<(), JournalError> {
        match &state.plan_id {
            Some(found) if found != plan_id => Err(JournalError::Store {
                store: self.label(),
                reason: format!(
                    "the history stored under plan {plan_id} belongs to plan {found}; refusing to mix them (use another database or schema for this plan)"
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Connect to the store (the same TLS policy as a tenant: verified TLS unless loopback).
pub async fn connect(uri: &SecretUri) -> Result<Client, JournalError> {
    crate::pg::connect(uri, CONNECT_TIMEOUT)
        .await
        .map_err(|failure| JournalError::Store {
            store: uri.redacted(),
            reason: format!(
                "cannot connect: {}",
                crate::secret::redact_uri(&failure.to_string())
            ),
        })
}

pub fn store_error(uri: &SecretUri, what: &str, error: &tokio_postgres::Error) -> JournalError {
    let failure = crate::pg::DbFailure::from_error(what, error);
    JournalError::Store {
        store: uri.redacted(),
        reason: crate::secret::redact_uri(&failure.to_string()),
    }
}

/// Take `plan_id`'s advisory lock on `client` without waiting (see [`StateStore::try_lock_plan`]).
pub(super) async fn take_plan_lock(
    client: &Client,
    plan_id: &str,
    exclusive: bool,
) -> Result<bool, tokio_postgres::Error> {
    let sql = if exclusive {
        "SELECT pg_try_advisory_lock(29544, hashtext($1))"
    } else {
        "SELECT pg_try_advisory_lock_shared(29544, hashtext($1))"
    };
    Ok(client.query_one(sql, &[&plan_id]).await?.get(0))
}

/// Fold `plan_id`'s rows into a replayed state as they stream in: the outer error is the
/// connection's, the inner one a row that is not a record.
async fn replay_rows(
    client: &Client,
    plan_id: &str,
    decode: impl Fn(i64, &str) -> Result<Record, JournalError>,
) -> Result<Result<JournalState, JournalError>, tokio_postgres::Error> {
    use futures::TryStreamExt;
    let rows = client
        .query_raw(
            "SELECT seq, record FROM schemafleet_record WHERE plan_id = $1 ORDER BY seq",
            [plan_id],
        )
        .await?;
    futures::pin_mut!(rows);
    let mut state = JournalState::default();
    while let Some(row) = rows.try_next().await? {
        match decode(row.get(0), row.get(1)) {
            Ok(record) => state.apply(&record),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    state.shrink();
    Ok(Ok(state))
}

/// A stored record's text as a [`Record`] of this format version.
fn decode_record(store: &str, plan_id: &str, seq: i64, text: &str) -> Result<Record, JournalError> {
    let record: Record = serde_json::from_str(text).map_err(|error| JournalError::Store {
        store: store.to_string(),
        reason: format!(
            "record {seq} of plan {plan_id} is not a journal record ({error}); the store was changed by something else than schemafleet"
        ),
    })?;
    if record.v != RECORD_VERSION {
        return Err(JournalError::Store {
            store: store.to_string(),
            reason: format!(
                "record {seq} has format v{} (expected v{RECORD_VERSION})",
                record.v
            ),
        });
    }
    Ok(record)
}

/// The store's writer: every waiting append goes into one transaction, acknowledged after its
/// COMMIT. A lost connection is waited out and the batch written again, at most once (see
/// [`write_batch`]). After any other error nothing more is written (as the file writer): the
/// run stops and a re-run resumes from what committed.
async fn write_loop(
    conn: StoreConnection,
    plan_id: String,
    writer: String,
    mut next_writer_seq: i64,
    mut receiver: mpsc::UnboundedReceiver<Request>,
) {
    let mut failed: Option<String> = None;
    let mut close_ack = None;
    while let Some(first) = receiver.recv().await {
        let (batch, close) = next_batch(first, &mut receiver);
        if close.is_some() {
            close_ack = close;
        }
        if let Some(message) = &failed {
            for (_, ack) in batch {
                let _ = ack.send(Err(message.clone()));
            }
            // A close after a failure is still answered, or `Journal::close` would wait forever.
            if close_ack.is_some() {
                break;
            }
            continue;
        }
        if !batch.is_empty() {
            let (events, acks): (Vec<Event>, Vec<Ack>) = batch.into_iter().unzip();
            let first_writer_seq = next_writer_seq;
            next_writer_seq += events.len() as i64;
            match write_batch(&conn, &plan_id, &writer, first_writer_seq, &events).await {
                Ok(records) => {
                    for (record, ack) in records.into_iter().zip(acks) {
                        let _ = ack.send(Ok(record));
                    }
                }
                Err(message) => {
                    failed = Some(message.clone());
                    for ack in acks {
                        let _ = ack.send(Err(message.clone()));
                    }
                }
            }
        }
        if close_ack.is_some() {
            break;
        }
    }
    if let Some(ack) = close_ack {
        let _ = ack.send(());
    }
}

/// Why a batch did not commit.
enum BatchError {
    Db(tokio_postgres::Error),
    /// Not the database's doing (a record that cannot be encoded, a half-present batch).
    Other(String),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(error: tokio_postgres::Error) -> BatchError {
        BatchError::Db(error)
    }
}

/// Write one batch and return its records as stored, exactly once even when a COMMIT's answer
/// is lost with the connection: every record carries this writer's own sequence number
/// (`writer_seq`, unique with the writer), so after a reconnect the batch is looked up first,
/// and a retry that meets a row of the lost attempt (committed after all) inserts nothing and
/// rolls back, returning the stored rows.
async fn write_batch(
    conn: &StoreConnection,
    plan_id: &str,
    writer: &str,
    first_writer_seq: i64,
    events: &[Event],
) -> Result<Vec<Record>, String> {
    let store = conn.uri().redacted();
    let mut client = conn.lock().await;
    let mut retrying = false;
    loop {
        let attempt = async {
            if retrying
                && let Some(records) =
                    stored_batch(&client, &store, plan_id, writer, first_writer_seq, events.len())
                        .await?
            {
                return Ok(records);
            }
            match commit_batch(&client, plan_id, writer, first_writer_seq, events).await? {
                Some(records) => Ok(records),
                None => {
                    stored_batch(&client, &store, plan_id, writer, first_writer_seq, events.len())
                        .await?
                        .ok_or_else(|| {
                            BatchError::Other(format!(
                                "records {first_writer_seq}.. of writer {writer} are partly in the store; refusing to write them again"
                            ))
                        })
                }
            }
        }
        .await;
        match attempt {
            Ok(records) => return Ok(records),
            Err(BatchError::Other(message)) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(message);
            }
            Err(BatchError::Db(error)) => {
                let _ = client.batch_execute("ROLLBACK").await;
                match conn.recover(&mut client, &error).await {
                    Ok(true) => retrying = true,
                    Ok(false) => {
                        return Err(crate::secret::redact_uri(&format!(
                            "{}: {error}",
                            conn.uri()
                        )));
                    }
                    Err(JournalError::Store { reason, .. }) => return Err(reason),
                    Err(other) => return Err(other.to_string()),
                }
            }
        }
    }
}

/// The batch's records when an earlier attempt committed it; `None` when none of them is there.
async fn stored_batch(
    client: &Client,
    store: &str,
    plan_id: &str,
    writer: &str,
    first_writer_seq: i64,
    count: usize,
) -> Result<Option<Vec<Record>>, BatchError> {
    let rows = client
        .query(
            "SELECT seq, record FROM schemafleet_record WHERE plan_id = $1 AND writer = $2 AND writer_seq >= $3 AND writer_seq < $3 + $4 ORDER BY writer_seq",
            &[&plan_id, &writer, &first_writer_seq, &(count as i64)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    if rows.len() != count {
        return Err(BatchError::Other(format!(
            "records {first_writer_seq}.. of writer {writer}: {} of {count} are in the store; refusing to write them again",
            rows.len()
        )));
    }
    rows.iter()
        .map(|row| {
            decode_record(store, plan_id, row.get(0), row.get(1))
                .map_err(|error| BatchError::Other(error.to_string()))
        })
        .collect::<Result<Vec<Record>, BatchError>>()
        .map(Some)
}

/// One transaction: seqs allocated under the plan row's lock, the rows inserted unless a row
/// of this writer's batch is already there (then nothing is kept: `Ok(None)`).
async fn commit_batch(
    client: &Client,
    plan_id: &str,
    writer: &str,
    first_writer_seq: i64,
    events: &[Event],
) -> Result<Option<Vec<Record>>, BatchError> {
    let count = events.len() as i64;
    client.batch_execute("BEGIN").await?;
    let last: i64 = client
        .query_one(
            "UPDATE schemafleet_plan SET last_seq = last_seq + $2 WHERE plan_id = $1 RETURNING last_seq",
            &[&plan_id, &count],
        )
        .await?
        .get(0);
    let at = crate::clock::now_rfc3339();
    let mut records = Vec::with_capacity(events.len());
    let mut seqs = Vec::with_capacity(events.len());
    let mut writer_seqs = Vec::with_capacity(events.len());
    let mut texts = Vec::with_capacity(events.len());
    for (idx, event) in events.iter().enumerate() {
        let seq = last - count + 1 + idx as i64;
        let record = Record {
            v: RECORD_VERSION,
            seq: seq as u64,
            at: at.clone(),
            event: event.clone(),
        };
        texts.push(
            serde_json::to_string(&record)
                .map_err(|error| BatchError::Other(format!("cannot encode record: {error}")))?,
        );
        seqs.push(seq);
        writer_seqs.push(first_writer_seq + idx as i64);
        records.push(record);
    }
    let inserted = client
        .execute(
            "INSERT INTO schemafleet_record (plan_id, seq, writer, writer_seq, record)
             SELECT $1, s, $3, w, r FROM unnest($2::bigint[], $4::bigint[], $5::text[]) AS b(s, w, r)
             ON CONFLICT (plan_id, writer, writer_seq) DO NOTHING",
            &[&plan_id, &seqs, &writer, &writer_seqs, &texts],
        )
        .await?;
    if inserted != count as u64 {
        client.batch_execute("ROLLBACK").await?;
        return Ok(None);
    }
    client.batch_execute("COMMIT").await?;
    Ok(Some(records))
}

/// Where a command keeps a plan's journal: the file beside the plan, or a state store.
pub enum JournalSource {
    File(std::path::PathBuf),
    Store(SecretUri),
}

impl JournalSource {
    /// `--state` (or `SCHEMAFLEET_STATE_URL`) wins over the file; `--journal` with it is refused
    /// by clap.
    pub fn choose(
        state: Option<&str>,
        journal: Option<&std::path::Path>,
        plan: &std::path::Path,
    ) -> JournalSource {
        match state {
            Some(url) if !url.trim().is_empty() => JournalSource::Store(SecretUri::new(url)),
            _ => JournalSource::File(
                journal
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_else(|| super::default_journal_path(plan)),
            ),
        }
    }

    /// For messages: the file's path or the store's redacted URI.
    pub fn describe(&self) -> String {
        match self {
            JournalSource::File(path) => path.display().to_string(),
            JournalSource::Store(uri) => format!("state store {}", uri.redacted()),
        }
    }
}

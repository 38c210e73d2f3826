//! The journal in PostgreSQL (`--state URL`): the same records as the file, one row each, so a
//! rollout outlives its runner's machine and several runners can share it.
//!
//! **Invariant:** an append is acknowledged only after the transaction holding its row
//! committed (group commit, as the file's fsync); its seq is allocated under the plan row's lock,
//! so seq order is commit order and a reader following `seq > cursor` skips nothing.
//! **Invariant:** the store's URI is a secret: it is held as a [`SecretUri`] and shown redacted.
//! The state schema is created and upgraded by refinery from `state_migrations/`, embedded in
//! the binary, under an advisory lock so runners starting together do not race.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::file::{
    Ack, Journal, JournalError, Location, ReadJournal, RecordCount, Request, next_batch,
};
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

/// A connection to the state store, its schema current.
pub struct StateStore {
    uri: SecretUri,
    client: Client,
}

impl StateStore {
    /// Connect and bring the state schema up to date. A store that cannot be reached, read or
    /// written is an error here, before any tenant is touched.
    pub async fn connect(uri: &SecretUri) -> Result<StateStore, JournalError> {
        let client = connect(uri).await?;
        let store = StateStore {
            uri: uri.clone(),
            client,
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

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn error(&self, what: &str, error: &tokio_postgres::Error) -> JournalError {
        store_error(&self.uri, what, error)
    }

    async fn migrate(&self) -> Result<(), JournalError> {
        let fail = |what: &str, error: &tokio_postgres::Error| self.error(what, error);
        self.client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
            .await
            .map_err(|error| fail("taking the schema lock", &error))?;
        let mut runner = embedded::migrations::runner();
        runner.set_migration_table_name(HISTORY_TABLE);
        // refinery wants `&mut Client`; a second connection keeps this one free for the lock.
        let mut migrate_client = connect(&self.uri).await?;
        let result = runner.run_async(&mut migrate_client).await;
        let unlock = self
            .client
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
    /// (the lock of the file journal, in the store). Held until this connection closes.
    pub async fn try_lock_plan(
        &self,
        plan_id: &str,
        exclusive: bool,
    ) -> Result<bool, JournalError> {
        let sql = if exclusive {
            "SELECT pg_try_advisory_lock(29544, hashtext($1))"
        } else {
            "SELECT pg_try_advisory_lock_shared(29544, hashtext($1))"
        };
        let row = self
            .client
            .query_one(sql, &[&plan_id])
            .await
            .map_err(|error| self.error("taking the plan's lock", &error))?;
        Ok(row.get(0))
    }

    /// Every record of `plan_id`, in seq order, replayed (no lock: for `status` and friends).
    /// Rows are folded in as they arrive, so a large rollout is never held whole.
    pub async fn read(&self, plan_id: &str) -> Result<ReadJournal, JournalError> {
        use futures::TryStreamExt;
        let rows = self
            .client
            .query_raw(
                "SELECT seq, record FROM schemafleet_record WHERE plan_id = $1 ORDER BY seq",
                [plan_id],
            )
            .await
            .map_err(|error| self.error("reading records", &error))?;
        futures::pin_mut!(rows);
        let mut state = JournalState::default();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|error| self.error("reading records", &error))?
        {
            state.apply(&self.decode(plan_id, row.get(0), row.get(1))?);
        }
        state.shrink();
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
        let rows = self
            .client
            .query(
                "SELECT seq, writer, record FROM schemafleet_record WHERE plan_id = $1 AND seq > $2 ORDER BY seq",
                &[&plan_id, &(after as i64)],
            )
            .await
            .map_err(|error| self.error("reading records", &error))?;
        rows.iter()
            .map(|row| {
                let record = self.decode(plan_id, row.get(0), row.get(2))?;
                Ok((row.get::<_, String>(1), record))
            })
            .collect()
    }

    /// One row's record, refused when it is not a record of this format.
    fn decode(&self, plan_id: &str, seq: i64, text: &str) -> Result<Record, JournalError> {
        let record: Record = serde_json::from_str(text).map_err(|error| JournalError::Store {
            store: self.label(),
            reason: format!(
                "record {seq} of plan {plan_id} is not a journal record ({error}); the store was changed by something else than schemafleet"
            ),
        })?;
        if record.v != RECORD_VERSION {
            return Err(JournalError::Store {
                store: self.label(),
                reason: format!(
                    "record {seq} has format v{} (expected v{RECORD_VERSION})",
                    record.v
                ),
            });
        }
        Ok(record)
    }

    /// Open the journal of `plan_id` for appends by `writer` (this process), creating the plan's
    /// row. A store whose records for this id belong to another plan is refused.
    pub async fn open_journal(
        &self,
        plan_id: &str,
        writer: &str,
    ) -> Result<(Journal, ReadJournal), JournalError> {
        self.client
            .execute(
                "INSERT INTO schemafleet_plan (plan_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&plan_id],
            )
            .await
            .map_err(|error| self.error("registering the plan", &error))?;
        let read = self.read(plan_id).await?;
        self.check_plan(&read.state, plan_id)?;
        let client = connect(&self.uri).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            client,
            self.uri.clone(),
            plan_id.to_string(),
            writer.to_string(),
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
        self.client.batch_execute("BEGIN").await.map_err(fail)?;
        let result = async {
            self.client
                .execute(
                    "INSERT INTO schemafleet_plan (plan_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&plan_id],
                )
                .await?;
            self.client
                .execute(
                    "UPDATE schemafleet_plan SET last_seq = greatest(last_seq, $2) WHERE plan_id = $1",
                    &[&plan_id, &last],
                )
                .await?;
            self.client
                .execute(
                    "INSERT INTO schemafleet_record (plan_id, seq, writer, record) SELECT $1, unnest($2::bigint[]), 'import', unnest($3::text[])",
                    &[&plan_id, &seqs, &texts],
                )
                .await?;
            self.client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(error) = result {
            let _ = self.client.batch_execute("ROLLBACK").await;
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

/// The store's writer: every waiting append goes into one transaction, acknowledged after its
/// COMMIT. After an error nothing more is written (as the file writer): the run stops and a
/// re-run resumes from what committed.
async fn write_loop(
    client: Client,
    uri: SecretUri,
    plan_id: String,
    writer: String,
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
            continue;
        }
        if !batch.is_empty() {
            let (events, acks): (Vec<Event>, Vec<Ack>) = batch.into_iter().unzip();
            match commit_batch(&client, &plan_id, &writer, events).await {
                Ok(records) => {
                    for (record, ack) in records.into_iter().zip(acks) {
                        let _ = ack.send(Ok(record));
                    }
                }
                Err(error) => {
                    let message = crate::secret::redact_uri(&format!("{}: {error}", uri));
                    failed = Some(message.clone());
                    let _ = client.batch_execute("ROLLBACK").await;
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

async fn commit_batch(
    client: &Client,
    plan_id: &str,
    writer: &str,
    events: Vec<Event>,
) -> Result<Vec<Record>, String> {
    let count = events.len() as i64;
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|error| error.to_string())?;
    let last: i64 = client
        .query_one(
            "UPDATE schemafleet_plan SET last_seq = last_seq + $2 WHERE plan_id = $1 RETURNING last_seq",
            &[&plan_id, &count],
        )
        .await
        .map_err(|error| error.to_string())?
        .get(0);
    let at = crate::clock::now_rfc3339();
    let mut records = Vec::with_capacity(events.len());
    let mut seqs = Vec::with_capacity(events.len());
    let mut texts = Vec::with_capacity(events.len());
    for (idx, event) in events.into_iter().enumerate() {
        let seq = last - count + 1 + idx as i64;
        let record = Record {
            v: RECORD_VERSION,
            seq: seq as u64,
            at: at.clone(),
            event,
        };
        texts.push(
            serde_json::to_string(&record)
                .map_err(|error| format!("cannot encode record: {error}"))?,
        );
        seqs.push(seq);
        records.push(record);
    }
    client
        .execute(
            "INSERT INTO schemafleet_record (plan_id, seq, writer, record) SELECT $1, unnest($2::bigint[]), $3, unnest($4::text[])",
            &[&plan_id, &seqs, &writer, &texts],
        )
        .await
        .map_err(|error| error.to_string())?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|error| error.to_string())?;
    Ok(records)
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

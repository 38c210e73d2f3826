//! The journal file: exclusive lock, torn-tail repair, group-committed durable appends.
//!
//! **Invariant:** only what a crash can leave of a record we were writing is ever cut (a prefix
//! of a record, or zeros); any other line that is not a record makes the file "not a journal"
//! and it is left unchanged. The journal is never opened through a symbolic link, so `--journal`
//! cannot be pointed at another file to overwrite it.
//!
//! Appends from all tenants in flight go to one writer thread, which writes every record that
//! is waiting, calls `fsync` once, and only then acknowledges them all (group commit): each
//! caller still waits for its own record to be durable, but a busy wave pays one fsync per
//! batch instead of one per record.
//!
//! Reading streams: each line is folded into the compact state as it is read, nothing else is
//! kept. A read starts from the last complete checkpoint (found by searching backwards from the
//! end for its end record) and replays only what follows it; a journal without one replays
//! from its first line. The writer appends a checkpoint every so many records and on a clean
//! close (see [`CheckpointPolicy`]), built by re-reading the file itself, so a checkpoint is
//! always exactly the replay of the lines before it. A writer whose `open` found a long tail
//! after the last checkpoint (a killed run's) keeps a mirror of the replayed state instead,
//! current with every append, and builds its checkpoints from that: the same replay, without
//! reading the same records a second time on close.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{self, CHECKPOINT_VERSION, END_MARKER, PART_MARKER};
use super::record::{Event, RECORD_VERSION, Record};
use super::state::JournalState;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "journal {path} is locked by another `schemafleet apply` (or rollback) of this plan; wait for it to finish, or if it was killed, the lock is released with its process"
    )]
    Locked { path: PathBuf },
    #[error(
        "journal {path}, line {line}: {reason}; the journal is damaged before its last line, so it cannot be trusted: restore it from a backup, or move it away and re-run (tenants' history tables are the truth)"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{path} is not a schemafleet journal (line {line} is not a journal record); it was left unchanged: pass another file with --journal"
    )]
    NotAJournal { path: PathBuf, line: usize },
    #[error(
        "journal {path} is a symbolic link; journals are never written through one: pass the file it points to with --journal"
    )]
    Symlink { path: PathBuf },
    #[error(
        "journal {path} belongs to plan {found}, not to plan {expected}; use --journal to pick another file"
    )]
    WrongPlan {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "journal {path}: the writer stopped after an earlier error; nothing more can be recorded"
    )]
    WriterGone { path: PathBuf },
    /// The journal in a PostgreSQL state store (`--state`); `store` is its redacted URI.
    #[error("state store {store}: {reason}")]
    Store { store: String, reason: String },
}

/// The conventional journal path: beside the plan, `<plan-stem>.journal.jsonl`.
pub fn default_journal_path(plan_path: &Path) -> PathBuf {
    let file_name = plan_path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("plan.yaml");
    let stem = file_name
        .strip_suffix(".yaml")
        .or_else(|| file_name.strip_suffix(".yml"))
        .unwrap_or(file_name);
    let stem = stem.strip_suffix(".plan").unwrap_or(stem);
    plan_path.with_file_name(format!("{stem}.journal.jsonl"))
}

/// The longest line a journal may hold. Records are far smaller (failure messages are cut at
/// [`crate::pg::error::MAX_MESSAGE_BYTES`]); the cap keeps a damaged or hostile file from
/// making `status` or `apply` read an unbounded line into memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// When the writer appends a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// During a run: once this many records follow the last checkpoint (0 = never).
    pub every: u64,
    /// Wait for half the journal's records instead when that is more, so checkpoints stay a
    /// bounded share of a growing journal.
    pub grow: bool,
    /// On a clean close: when at least this many records follow the last checkpoint (0 = never).
    pub on_close: u64,
}

impl CheckpointPolicy {
    pub const STANDARD: CheckpointPolicy = CheckpointPolicy {
        every: 50_000,
        grow: true,
        on_close: 1_000,
    };

    /// The environment variable that sets a fixed interval (and a checkpoint on every close
    /// after at least one record): for tests that cut journals around checkpoints.
    pub const ENV: &str = "SCHEMAFLEET_JOURNAL_CHECKPOINT_EVERY";

    pub fn from_env() -> CheckpointPolicy {
        match std::env::var(Self::ENV)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            Some(every) => CheckpointPolicy {
                every,
                grow: false,
                on_close: u64::from(every > 0),
            },
            None => CheckpointPolicy::STANDARD,
        }
    }

    /// Whether the writer keeps a mirror of the state from `open` on: when so many records
    /// follow the last checkpoint (at least `on_close`, and half as many as the state holds
    /// tenants, so a short tail of a large journal does not double its memory) that the close
    /// writes a checkpoint however short the run.
    fn due_on_open(self, since: u64, tenants: usize) -> bool {
        self.on_close > 0 && since >= self.on_close.max(tenants as u64 / 2)
    }

    fn due(self, since: u64, records: u64) -> bool {
        let interval = if self.grow {
            self.every.max(records / 2)
        } else {
            self.every
        };
        self.every > 0 && since >= interval
    }
}

pub(super) type Ack = oneshot::Sender<Result<Record, String>>;

/// A request to the writer (the file's thread, or the state store's task).
pub(super) enum Request {
    Append(Event, Ack),
    /// Stop and release the file (and its lock) once everything before is durable.
    Close(oneshot::Sender<()>),
}

/// One group commit: `first` and every request already queued behind it, up to a `Close`
/// (returned apart: it is answered once everything before it is durable). Shared by the file
/// writer and the state store's writer.
pub(super) fn next_batch(
    first: Request,
    receiver: &mut mpsc::UnboundedReceiver<Request>,
) -> (Vec<(Event, Ack)>, Option<oneshot::Sender<()>>) {
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(request) = next.take() {
        match request {
            Request::Append(event, ack) => batch.push((event, ack)),
            Request::Close(ack) => return (batch, Some(ack)),
        }
        next = receiver.try_recv().ok();
    }
    (batch, None)
}

/// An open, locked journal accepting appends: a file, or a PostgreSQL state store
/// ([`super::store`]); both take the same records through the same group-committing writer
/// protocol, so the executor cannot tell them apart.
#[derive(Clone)]
pub struct Journal {
    location: Location,
    sender: mpsc::UnboundedSender<Request>,
    appended: Arc<AtomicU64>,
}

/// Where a journal lives, for messages.
#[derive(Clone, Debug)]
pub(super) enum Location {
    File(PathBuf),
    /// A state store, by its redacted URI.
    Store(String),
}

/// Who holds a journal's lock (see [`Journal::lock_holder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHolder {
    Nobody,
    /// The `apply` whose run is still open in the journal.
    Apply {
        pid: u32,
    },
    /// A `rollback`, or a process that has not journaled its run yet.
    Other,
}

/// How many event records a read folded into its state: the records themselves are never
/// kept (a checkpoint counts for the records it stands for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCount(pub u64);

impl RecordCount {
    pub fn len(&self) -> usize {
        self.0 as usize
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// What reading a journal found.
#[derive(Default)]
pub struct ReadJournal {
    pub records: RecordCount,
    pub state: JournalState,
    /// Set when the last line was torn (a crash mid-write) and was dropped.
    pub torn_tail: Option<String>,
}

impl Journal {
    /// Open (creating if needed) and lock the journal of `plan_id`, repairing a torn last line.
    pub fn open(path: &Path, plan_id: &str) -> Result<(Journal, ReadJournal), JournalError> {
        Journal::open_with(path, plan_id, CheckpointPolicy::from_env())
    }

    /// [`Journal::open`] with the writer's checkpoints as `policy` says.
    pub fn open_with(
        path: &Path,
        plan_id: &str,
        policy: CheckpointPolicy,
    ) -> Result<(Journal, ReadJournal), JournalError> {
        let io_error = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        use std::os::unix::fs::OpenOptionsExt;
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::ELOOP) {
                    JournalError::Symlink {
                        path: path.to_path_buf(),
                    }
                } else {
                    io_error(source)
                }
            })?;
        if !existed {
            sync_parent_directory(path).map_err(io_error)?;
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io_error(source)),
        }
        let parsed = parse(path, &file)?;
        if let Some(valid_len) = parsed.valid_len {
            // Drop the torn tail so the next append starts on a clean line.
            file.set_len(valid_len).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        check_plan(path, &parsed.read.state, plan_id)?;
        // A run that was killed left many records after the last checkpoint, so this one's
        // close will write one: keep a copy of the state just replayed, kept current with each
        // append, so that checkpoint does not replay the same records a second time.
        let mirror = policy
            .due_on_open(parsed.since_checkpoint, parsed.read.state.tenant_count())
            .then(|| parsed.read.state.clone());
        let writer = WriterState {
            next_seq: parsed.read.state.last_seq + 1,
            lines: parsed.lines,
            since_checkpoint: parsed.since_checkpoint,
            records: parsed.read.state.records,
            policy,
            mirror,
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let writer_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(file, writer_path, writer, receiver))
            .map_err(io_error)?;
        Ok((
            Journal::with_writer(Location::File(path.to_path_buf()), sender),
            parsed.read,
        ))
    }

    /// A journal whose records go to `sender`'s writer.
    pub(super) fn with_writer(
        location: Location,
        sender: mpsc::UnboundedSender<Request>,
    ) -> Journal {
        Journal {
            location,
            sender,
            appended: Arc::new(AtomicU64::new(0)),
        }
    }

    /// [`Journal::read`], refused when the journal holds another plan's records (a journal
    /// with no records yet belongs to any plan).
    pub fn read_for_plan(path: &Path, plan_id: &str) -> Result<ReadJournal, JournalError> {
        let read = Journal::read(path)?;
        match &read.state.plan_id {
            Some(found) if found != plan_id => Err(JournalError::WrongPlan {
                path: path.to_path_buf(),
                expected: plan_id.to_string(),
                found: found.clone(),
            }),
            _ => Ok(read),
        }
    }

    /// Read a journal without locking it (for `status` while an `apply` runs). A torn last line
    /// is reported and skipped, not repaired. A missing file reads as empty.
    pub fn read(path: &Path) -> Result<ReadJournal, JournalError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(ReadJournal {
                    records: RecordCount(0),
                    state: JournalState::default(),
                    torn_tail: None,
                });
            }
            Err(source) => {
                return Err(JournalError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(parse(path, &file)?.read)
    }

    /// Every event record of the journal at `path`, in order, checkpoints left out (`state
    /// import` moves them into a state store). Holds them all: for that one-off move only, never
    /// for a replay. A torn last line is left out as [`Journal::read`] leaves it.
    pub fn event_records(path: &Path) -> Result<Vec<Record>, JournalError> {
        let io_error = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error(source)),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut records = Vec::new();
        let mut buffer = Vec::new();
        let mut line_number = 0usize;
        loop {
            buffer.clear();
            let read = (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buffer)
                .map_err(io_error)?;
            if read == 0 {
                break;
            }
            line_number += 1;
            if buffer.last() != Some(&b'\n') {
                break; // a torn tail
            }
            let line = &buffer[..buffer.len() - 1];
            if memchr::memmem::find(line, PART_MARKER).is_some()
                || memchr::memmem::find(line, END_MARKER).is_some()
            {
                continue;
            }
            let record =
                serde_json::from_slice::<Record>(line).map_err(|error| JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_number,
                    reason: error.to_string(),
                })?;
            records.push(record);
        }
        Ok(records)
    }

    /// Who holds this journal's lock now; `read` is the journal as just read, whose last
    /// unfinished run names the holder's process.
    ///
    /// Probing takes a shared lock for an instant; an `apply` starting in that instant is
    /// refused as if another run held the journal, and says so.
    pub fn lock_holder(path: &Path, read: &ReadJournal) -> Result<LockHolder, JournalError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(LockHolder::Nobody),
            Err(source) => {
                return Err(JournalError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(LockHolder::Nobody),
            Err(std::fs::TryLockError::WouldBlock) => Ok(match read.state.open_run_pid {
                Some(pid) => LockHolder::Apply { pid },
                None => LockHolder::Other,
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The state store's redacted URI, when this journal lives in one.
    pub fn store(&self) -> Option<&str> {
        match &self.location {
            Location::File(_) => None,
            Location::Store(store) => Some(store),
        }
    }

    fn writer_gone(&self) -> JournalError {
        match &self.location {
            Location::File(path) => JournalError::WriterGone { path: path.clone() },
            Location::Store(store) => JournalError::Store {
                store: store.clone(),
                reason: "the writer stopped after an earlier error; nothing more can be recorded"
                    .into(),
            },
        }
    }

    /// Number of records this handle appended.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Stop the writer and release the lock, after every earlier append is durable (and a
    /// checkpoint written when the policy asks for one on a clean close).
    /// Appends through other clones fail afterwards.
    pub async fn close(self) {
        let (done_sender, done_receiver) = oneshot::channel();
        if self.sender.send(Request::Close(done_sender)).is_ok() {
            let _ = done_receiver.await;
        }
    }

    /// Append one event and wait until it is durable on disk.
    pub async fn append(&self, event: Event) -> Result<Record, JournalError> {
        let (ack_sender, ack_receiver) = oneshot::channel();
        self.sender
            .send(Request::Append(event, ack_sender))
            .map_err(|_| self.writer_gone())?;
        match ack_receiver.await {
            Ok(Ok(record)) => {
                self.appended.fetch_add(1, Ordering::Relaxed);
                Ok(record)
            }
            Ok(Err(message)) => Err(match &self.location {
                Location::File(path) => JournalError::Io {
                    path: path.clone(),
                    source: io::Error::other(message),
                },
                Location::Store(store) => JournalError::Store {
                    store: store.clone(),
                    reason: message,
                },
            }),
            Err(_) => Err(self.writer_gone()),
        }
    }
}

/// Make a new file's directory entry durable: `fsync` of the file covers its data, not its
/// name, so after a power loss a journal whose records were all acknowledged could be gone.
fn sync_parent_directory(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

fn check_plan(path: &Path, state: &JournalState, plan_id: &str) -> Result<(), JournalError> {
    match &state.plan_id {
        Some(found) if found != plan_id => Err(JournalError::WrongPlan {
            path: path.to_path_buf(),
            expected: plan_id.to_string(),
            found: found.clone(),
        }),
        _ => Ok(()),
    }
}

struct Parsed {
    read: ReadJournal,
    /// Length of the well-formed prefix when a torn tail must be cut.
    valid_len: Option<u64>,
    /// Complete lines kept (a torn tail not counted).
    lines: u64,
    /// Event records after the last complete checkpoint.
    since_checkpoint: u64,
}

/// Where a scan starts.
enum Start {
    Beginning,
    Checkpoint(checkpoint::End),
}

enum ScanError {
    Journal(JournalError),
    /// The checkpoint the scan started from cannot be used (the reason): replay from the start.
    Checkpoint(String),
}

impl From<JournalError> for ScanError {
    fn from(error: JournalError) -> ScanError {
        ScanError::Journal(error)
    }
}

/// Read the journal in `file`: from its last complete checkpoint when it has one, else whole.
fn parse(path: &Path, file: &File) -> Result<Parsed, JournalError> {
    let io_error = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io_error)?.len();
    if let Some(end) = find_last_checkpoint(file, len).map_err(io_error)? {
        let mut reader = file;
        reader.seek(SeekFrom::Start(end.start)).map_err(io_error)?;
        match scan(
            path,
            &mut BufReader::with_capacity(1 << 20, reader),
            Start::Checkpoint(end),
        ) {
            Ok(parsed) => return Ok(parsed),
            Err(ScanError::Journal(error)) => return Err(error),
            Err(ScanError::Checkpoint(reason)) => {
                tracing::warn!(
                    "journal {}: its last checkpoint cannot be used ({reason}); replaying it from the start",
                    path.display()
                );
            }
        }
    }
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).map_err(io_error)?;
    match scan(
        path,
        &mut BufReader::with_capacity(1 << 20, reader),
        Start::Beginning,
    ) {
        Ok(parsed) => Ok(parsed),
        Err(ScanError::Journal(error)) => Err(error),
        Err(ScanError::Checkpoint(reason)) => Err(JournalError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(reason),
        }),
    }
}

/// The end record of the last complete checkpoint, searching backwards from `len`.
fn find_last_checkpoint(file: &File, len: u64) -> io::Result<Option<checkpoint::End>> {
    const CHUNK: u64 = 1 << 20;
    // End records are a few hundred bytes: a chunk read this far past its end holds whole any
    // end record that starts inside it.
    const OVERLAP: u64 = 16 * 1024;
    let mut buffer = Vec::new();
    let mut high = len;
    while high > 0 {
        let low = high.saturating_sub(CHUNK);
        let read_high = (high + OVERLAP).min(len);
        buffer.resize((read_high - low) as usize, 0);
        file.read_exact_at(&mut buffer, low)?;
        let mut search_end = buffer.len();
        while let Some(found) = memchr::memmem::rfind(&buffer[..search_end], END_MARKER) {
            search_end = found;
            let line_start = buffer[..found]
                .iter()
                .rposition(|byte| *byte == b'\n')
                .map_or(0, |idx| idx + 1);
            if line_start == 0 && low > 0 {
                // It starts in the previous chunk, which holds it whole.
                continue;
            }
            // A line without its newline is a torn tail, not a checkpoint.
            let Some(line_len) = buffer[found..].iter().position(|byte| *byte == b'\n') else {
                continue;
            };
            let line = &buffer[line_start..found + line_len];
            if let Ok(end) = serde_json::from_slice::<checkpoint::End>(line)
                && end.v == CHECKPOINT_VERSION
                && end.event == "checkpoint_end"
                && end.start < low + line_start as u64
                && end.line > 0
            {
                return Ok(Some(end));
            }
        }
        high = low;
    }
    Ok(None)
}

/// Fold the lines `reader` holds into a state, line by line.
fn scan(path: &Path, reader: &mut impl BufRead, start: Start) -> Result<Parsed, ScanError> {
    let io_error = |source| {
        ScanError::Journal(JournalError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut state = JournalState::default();
    let (mut offset, mut line_number, mut loading) = match start {
        Start::Beginning => (0, 0, None),
        Start::Checkpoint(end) => (
            end.start,
            end.line - 1,
            Some((checkpoint::Loader::default(), end)),
        ),
    };
    let mut torn_tail = None;
    let mut valid_len = None;
    let mut since_checkpoint = 0;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        // One byte over the cap tells a line at the cap from a longer one, without reading more.
        let read = (&mut *reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer)
            .map_err(io_error)?;
        if read == 0 {
            break;
        }
        line_number += 1;
        let line_end = (buffer.last() == Some(&b'\n')).then_some(buffer.len() - 1);
        if line_end.is_none() && buffer.len() > MAX_LINE_BYTES {
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                line: line_number as usize,
                reason: format!(
                    "the line is longer than {} MiB, which no record is",
                    MAX_LINE_BYTES >> 20
                ),
            }
            .into());
        }
        let line = &buffer[..line_end.unwrap_or(buffer.len())];
        let is_last = reader.fill_buf().map_err(io_error)?.is_empty();
        let checkpoint_line =
            line_end.is_some() && memchr::memmem::find(line, PART_MARKER).is_some();
        let checkpoint_end = line_end.is_some() && memchr::memmem::find(line, END_MARKER).is_some();
        if let Some((loader, end)) = &mut loading {
            // Starting from a checkpoint: its parts, then its end, nothing else.
            if checkpoint_line {
                let part =
                    serde_json::from_slice::<checkpoint::Part<'_>>(line).map_err(|error| {
                        ScanError::Checkpoint(format!("line {line_number}: {error}"))
                    })?;
                loader
                    .part(&mut state, part)
                    .map_err(ScanError::Checkpoint)?;
            } else if checkpoint_end {
                let found = serde_json::from_slice::<checkpoint::End>(line).map_err(|error| {
                    ScanError::Checkpoint(format!("line {line_number}: {error}"))
                })?;
                if found != *end || found.covers != loader.covers || found.parts != loader.parts {
                    return Err(ScanError::Checkpoint(format!(
                        "line {line_number}: the checkpoint's end does not match its parts"
                    )));
                }
                state.last_seq = state.last_seq.max(found.seq);
                loading = None;
            } else {
                return Err(ScanError::Checkpoint(format!(
                    "line {line_number} is not part of the checkpoint"
                )));
            }
            offset += read as u64;
            continue;
        }
        if checkpoint_line || checkpoint_end {
            // Already replayed what it stands for: only its seq counts.
            match serde_json::from_slice::<checkpoint::Head>(line) {
                Ok(head) if head.v == CHECKPOINT_VERSION => {
                    state.last_seq = state.last_seq.max(head.seq);
                    if checkpoint_end {
                        since_checkpoint = 0;
                    }
                    offset += read as u64;
                    continue;
                }
                Ok(head) => {
                    return Err(JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_number as usize,
                        reason: format!(
                            "checkpoint format v{} is not supported (expected v{CHECKPOINT_VERSION})",
                            head.v
                        ),
                    }
                    .into());
                }
                Err(_) => {}
            }
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|error| error.to_string())
            .and_then(|text| {
                serde_json::from_str::<Record>(text).map_err(|error| error.to_string())
            });
        match parsed {
            Ok(record) if record.v == RECORD_VERSION => {
                if line_end.is_none() {
                    // A complete record missing only its newline: cut it with the line.
                    torn_tail = Some(format!("line {line_number} had no newline"));
                    valid_len = Some(offset);
                } else {
                    state.apply(&record);
                    since_checkpoint += 1;
                }
            }
            Ok(record) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_number as usize,
                    reason: format!(
                        "record format v{} is not supported (expected v{RECORD_VERSION})",
                        record.v
                    ),
                }
                .into());
            }
            Err(_) if (is_last || line_number == 1) && !could_be_torn_record(line) => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    line: line_number as usize,
                }
                .into());
            }
            Err(reason) if is_last => {
                torn_tail = Some(format!(
                    "line {line_number} was torn ({reason}) and was dropped"
                ));
                valid_len = Some(offset);
            }
            Err(reason) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_number as usize,
                    reason,
                }
                .into());
            }
        }
        offset += read as u64;
    }
    if loading.is_some() {
        return Err(ScanError::Checkpoint("the checkpoint has no end".into()));
    }
    state.shrink();
    let lines = if torn_tail.is_some() {
        line_number - 1
    } else {
        line_number
    };
    Ok(Parsed {
        read: ReadJournal {
            records: RecordCount(state.records),
            state,
            torn_tail,
        },
        valid_len,
        lines,
        since_checkpoint,
    })
}

/// Whether `line` can be what a crash left of a record being appended: a prefix of one (every
/// record starts `{"v":`), maybe followed by the zeros some file systems leave after power loss.
fn could_be_torn_record(line: &[u8]) -> bool {
    const RECORD_START: &[u8] = br#"{"v":"#;
    let end = line
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |idx| idx + 1);
    let line = &line[..end];
    line.starts_with(RECORD_START) || RECORD_START.starts_with(line)
}

/// What the writer thread knows of the file it appends to.
struct WriterState {
    next_seq: u64,
    /// Complete lines in the file.
    lines: u64,
    /// Event records after the last complete checkpoint, and in all.
    since_checkpoint: u64,
    records: u64,
    policy: CheckpointPolicy,
    /// The replay of every line written so far, when kept (see
    /// [`CheckpointPolicy::due_on_open`]): checkpoints are written from it instead of from a
    /// re-read of the file.
    mirror: Option<JournalState>,
}

fn write_loop(
    mut file: File,
    path: PathBuf,
    mut writer: WriterState,
    mut receiver: mpsc::UnboundedReceiver<Request>,
) {
    let mut failed: Option<String> = None;
    let mut close_ack = None;
    while let Some(first) = receiver.blocking_recv() {
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
        let mut buffer = Vec::with_capacity(batch.len() * 256);
        let mut written = Vec::with_capacity(batch.len());
        for (event, ack) in batch {
            let record = Record {
                v: RECORD_VERSION,
                seq: writer.next_seq,
                at: crate::clock::now_rfc3339(),
                event,
            };
            writer.next_seq += 1;
            match serde_json::to_writer(&mut buffer, &record) {
                Ok(()) => {
                    buffer.push(b'\n');
                    written.push((record, ack));
                }
                Err(error) => {
                    let _ = ack.send(Err(format!("cannot encode record: {error}")));
                }
            }
        }
        let result = file.write_all(&buffer).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                let count = written.len() as u64;
                writer.lines += count;
                writer.since_checkpoint += count;
                writer.records += count;
                if let Some(mirror) = &mut writer.mirror {
                    for (record, _) in &written {
                        mirror.apply(record);
                    }
                }
                for (record, ack) in written {
                    let _ = ack.send(Ok(record));
                }
            }
            Err(error) => {
                let message = format!("{}: {error}", path.display());
                failed = Some(message.clone());
                for (_, ack) in written {
                    let _ = ack.send(Err(message.clone()));
                }
            }
        }
        let closing = close_ack.is_some();
        let due = if closing {
            writer.policy.on_close > 0 && writer.since_checkpoint >= writer.policy.on_close
        } else {
            writer.policy.due(writer.since_checkpoint, writer.records)
        };
        if failed.is_none()
            && due
            && let Err(message) = write_checkpoint(&mut file, &path, &mut writer)
        {
            failed = Some(message);
        }
        if closing {
            break;
        }
    }
    drop(file);
    if let Some(ack) = close_ack {
        let _ = ack.send(());
    }
}

/// Append a checkpoint of the file as it stands. Err (the writer stops) only when the file
/// could not be written; a checkpoint that cannot be built is skipped.
fn write_checkpoint(file: &mut File, path: &Path, writer: &mut WriterState) -> Result<(), String> {
    if let Some(mut mirror) = writer.mirror.take() {
        let result = append_checkpoint(file, path, writer, &mirror);
        // As a re-read would: the checkpoint's lines count for their seq only.
        mirror.last_seq = writer.next_seq - 1;
        writer.mirror = Some(mirror);
        return result;
    }
    let parsed = match parse(path, file) {
        Ok(parsed) if parsed.lines == writer.lines && parsed.valid_len.is_none() => parsed,
        Ok(_) => {
            tracing::warn!(
                "journal {}: it changed under its writer; no checkpoint written",
                path.display()
            );
            return Ok(());
        }
        Err(error) => {
            tracing::warn!("journal {}: no checkpoint written: {error}", path.display());
            return Ok(());
        }
    };
    append_checkpoint(file, path, writer, &parsed.read.state)
}

/// Append a checkpoint of `state`, the replay of every line of `file`, and make it durable.
fn append_checkpoint(
    file: &mut File,
    path: &Path,
    writer: &mut WriterState,
    state: &JournalState,
) -> Result<(), String> {
    let start = file
        .metadata()
        .map_err(|error| format!("{}: {error}", path.display()))?
        .len();
    let mut out = io::BufWriter::with_capacity(1 << 20, &*file);
    let result = checkpoint::write(
        &mut out,
        state,
        writer.next_seq,
        &crate::clock::now_rfc3339(),
        start,
        writer.lines + 1,
    )
    .and_then(|lines| out.flush().map(|()| lines));
    drop(out);
    let lines = result
        .and_then(|lines| file.sync_data().map(|()| lines))
        .map_err(|error| format!("{}: {error}", path.display()))?;
    writer.next_seq += lines;
    writer.lines += lines;
    writer.since_checkpoint = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_sits_beside_the_plan() {
        assert_eq!(
            default_journal_path(Path::new("plans/rollout.plan.yaml")),
            PathBuf::from("plans/rollout.journal.jsonl")
        );
        assert_eq!(
            default_journal_path(Path::new("x.yaml")),
            PathBuf::from("x.journal.jsonl")
        );
    }

    #[tokio::test]
    async fn appends_replay_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        {
            let (journal, read) = Journal::open(&path, "plan-a").expect("open");
            assert!(read.records.is_empty());
            journal
                .append(Event::RunStarted {
                    plan_id: "plan-a".into(),
                    run_id: "r".into(),
                    pid: 1,
                    tool_version: "t".into(),
                })
                .await
                .expect("append");
            journal
                .append(Event::WaveStarted {
                    wave: "canary".into(),
                })
                .await
                .expect("append");
            // A second open of the same journal is refused while this one holds the lock.
            assert!(matches!(
                Journal::open(&path, "plan-a"),
                Err(JournalError::Locked { .. })
            ));
            journal.close().await;
        }
        // Power loss mid-write: half a record at the end.
        let mut file = OpenOptions::new().append(true).open(&path).expect("reopen");
        file.write_all(br#"{"v":1,"seq":3,"at":"2026-"#)
            .expect("write torn");
        drop(file);
        let read = Journal::read(&path).expect("read");
        assert_eq!(read.records.len(), 2);
        assert!(read.torn_tail.is_some());
        assert_eq!(
            Journal::read_for_plan(&path, "plan-a")
                .expect("this plan's")
                .records
                .len(),
            2
        );
        assert!(matches!(
            Journal::read_for_plan(&path, "plan-b"),
            Err(JournalError::WrongPlan { ref found, .. }) if found == "plan-a"
        ));
        let (journal, read) = Journal::open(&path, "plan-a").expect("open repairs");
        assert_eq!(read.records.len(), 2);
        let record = journal
            .append(Event::WaveFinished {
                wave: "canary".into(),
                halted: false,
                bake_until: None,
            })
            .await
            .expect("append");
        assert_eq!(record.seq, 3);
        journal.close().await;
        let text = std::fs::read_to_string(&path).expect("read text");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(Journal::read(&path).expect("read").torn_tail.is_none());
    }

    #[tokio::test]
    async fn a_damaged_middle_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        std::fs::write(&path, "not json\n{\"v\":1,\"seq\":2,\"at\":\"x\",\"event\":\"wave_started\",\"wave\":\"w\"}\n").expect("write");
        let error = Journal::read(&path).err().expect("corrupt");
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[tokio::test]
    async fn a_file_that_never_held_a_journal_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id_ed25519.pub");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx operator@laptop";
        for content in [
            key.to_string(),
            format!("{key}\n"),
            format!("{key}\nmore\n"),
        ] {
            std::fs::write(&path, &content).expect("write");
            let error = Journal::open(&path, "plan-a").err().expect("refused");
            assert!(
                matches!(error, JournalError::NotAJournal { line: 1, .. }),
                "{error}"
            );
            assert!(Journal::read(&path).is_err(), "status refuses it too");
            assert_eq!(std::fs::read_to_string(&path).expect("read"), content);
        }
    }

    #[tokio::test]
    async fn a_symlinked_journal_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("authorized_keys");
        std::fs::write(&target, "").expect("write");
        let link = dir.path().join("rollout.journal.jsonl");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let error = Journal::open(&link, "plan-a").err().expect("refused");
        assert!(matches!(error, JournalError::Symlink { .. }), "{error}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "");
    }

    #[test]
    fn a_line_over_the_cap_is_an_error_before_it_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        let record = r#"{"v":1,"seq":1,"at":"x","event":"wave_started","wave":"w"}"#;
        let mut text = format!("{record}\n");
        text.push_str(&"x".repeat(MAX_LINE_BYTES + 10));
        text.push('\n');
        std::fs::write(&path, &text).expect("write");
        let error = Journal::read(&path).err().expect("refused");
        assert!(
            matches!(error, JournalError::Corrupt { line: 2, .. })
                && error.to_string().contains("longer than 1 MiB"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("read").len(),
            text.len()
        );
    }

    #[test]
    fn only_prefixes_of_records_count_as_torn() {
        assert!(could_be_torn_record(br#"{"v":1,"seq":3,"at":"2026-"#));
        assert!(could_be_torn_record(b"{\"v"));
        assert!(could_be_torn_record(b"{\"v\":1,\0\0\0"));
        assert!(could_be_torn_record(b"\0\0"));
        assert!(!could_be_torn_record(b"ssh-ed25519 AAAA"));
        assert!(!could_be_torn_record(b"{\"other\": 1}"));
    }

    #[tokio::test]
    async fn a_journal_of_another_plan_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.journal.jsonl");
        {
            let (journal, _) = Journal::open(&path, "plan-a").expect("open");
            journal
                .append(Event::RunStarted {
                    plan_id: "plan-a".into(),
                    run_id: "r".into(),
                    pid: 1,
                    tool_version: "t".into(),
                })
                .await
                .expect("append");
            journal.close().await;
        }
        assert!(matches!(
            Journal::open(&path, "plan-b"),
            Err(JournalError::WrongPlan { .. })
        ));
    }
}

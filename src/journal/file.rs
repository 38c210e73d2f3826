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

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

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

pub(super) type Ack = oneshot::Sender<Result<Record, String>>;

/// A request to the writer (the file's thread, or the state store's task).
pub(super) enum Request {
    Append(Event, Ack),
    /// Stop and release the file (and its lock) once everything before is durable.
    Close(oneshot::Sender<()>),
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

/// What reading a journal found.
#[derive(Default)]
pub struct ReadJournal {
    pub records: Vec<Record>,
    pub state: JournalState,
    /// Set when the last line was torn (a crash mid-write) and was dropped.
    pub torn_tail: Option<String>,
}

impl Journal {
    /// Open (creating if needed) and lock the journal of `plan_id`, repairing a torn last line.
    pub fn open(path: &Path, plan_id: &str) -> Result<(Journal, ReadJournal), JournalError> {
        let io_error = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        use std::os::unix::fs::OpenOptionsExt;
        let existed = path.exists();
        let mut file = OpenOptions::new()
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
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        let parsed = parse(path, &mut BufReader::new(&file))?;
        if let Some(valid_len) = parsed.valid_len {
            // Drop the torn tail so the next append starts on a clean line.
            file.set_len(valid_len as u64).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        check_plan(path, &parsed.read.state, plan_id)?;
        let next_seq = parsed.read.state.last_seq + 1;
        let (sender, receiver) = mpsc::unbounded_channel();
        let writer_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(file, writer_path, next_seq, receiver))
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

    /// Read a journal without locking it (for `status` while an `apply` runs). A torn last line
    /// is reported and skipped, not repaired. A missing file reads as empty.
    pub fn read(path: &Path) -> Result<ReadJournal, JournalError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(ReadJournal {
                    records: Vec::new(),
                    state: JournalState::replay(&[]),
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
        Ok(parse(path, &mut BufReader::new(file))?.read)
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
            Err(std::fs::TryLockError::WouldBlock) => Ok(read
                .records
                .iter()
                .rev()
                .find_map(|record| match &record.event {
                    Event::RunStarted { pid, .. } => Some(LockHolder::Apply { pid: *pid }),
                    Event::RunFinished { .. } => Some(LockHolder::Other),
                    _ => None,
                })
                .unwrap_or(LockHolder::Other)),
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

    /// Stop the writer and release the lock, after every earlier append is durable.
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
    valid_len: Option<usize>,
}

fn parse(path: &Path, reader: &mut impl BufRead) -> Result<Parsed, JournalError> {
    let io_error = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut records = Vec::new();
    let mut offset = 0;
    let mut line_number = 0;
    let mut torn_tail = None;
    let mut valid_len = None;
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
                line: line_number,
                reason: format!(
                    "the line is longer than {} MiB, which no record is",
                    MAX_LINE_BYTES >> 20
                ),
            });
        }
        let line = &buffer[..line_end.unwrap_or(buffer.len())];
        let is_last = reader.fill_buf().map_err(io_error)?.is_empty();
        let parsed = std::str::from_utf8(line)
            .map_err(|error| error.to_string())
            .and_then(|text| {
                serde_json::from_str::<Record>(text).map_err(|error| error.to_string())
            });
        match parsed {
            Ok(record) if record.v == RECORD_VERSION => {
                records.push(record);
                if line_end.is_none() {
                    // A complete record missing only its newline: keep it, terminate the line.
                    torn_tail = Some(format!("line {line_number} had no newline"));
                    valid_len = Some(offset);
                    records.pop();
                }
            }
            Ok(record) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_number,
                    reason: format!(
                        "record format v{} is not supported (expected v{RECORD_VERSION})",
                        record.v
                    ),
                });
            }
            Err(_) if (is_last || line_number == 1) && !could_be_torn_record(line) => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    line: line_number,
                });
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
                    line: line_number,
                    reason,
                });
            }
        }
        offset += read;
    }
    let state = JournalState::replay(&records);
    Ok(Parsed {
        read: ReadJournal {
            records,
            state,
            torn_tail,
        },
        valid_len,
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

fn write_loop(
    mut file: File,
    path: PathBuf,
    mut next_seq: u64,
    mut receiver: mpsc::UnboundedReceiver<Request>,
) {
    let mut failed: Option<String> = None;
    let mut close_ack = None;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Append(event, ack) => batch.push((event, ack)),
                Request::Close(ack) => {
                    close_ack = Some(ack);
                    break;
                }
            }
            next = receiver.try_recv().ok();
        }
        if let Some(message) = &failed {
            for (_, ack) in batch {
                let _ = ack.send(Err(message.clone()));
            }
            continue;
        }
        let mut buffer = Vec::with_capacity(batch.len() * 256);
        let mut written = Vec::with_capacity(batch.len());
        for (event, ack) in batch {
            let record = Record {
                v: RECORD_VERSION,
                seq: next_seq,
                at: crate::clock::now_rfc3339(),
                event,
            };
            next_seq += 1;
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
        if close_ack.is_some() {
            break;
        }
    }
    drop(file);
    if let Some(ack) = close_ack {
        let _ = ack.send(());
    }
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

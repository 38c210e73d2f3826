//! The pause/abort switches of a plan whose journal is a file: a small JSON file beside the
//! journal (`<plan-stem>.control.json`), written atomically by `pause`/`resume`/`abort` and
//! read by the running `apply` before it starts each tenant. A state store keeps the same
//! switches in its plan row ([`super::coordination`]).

use std::io;
use std::path::{Path, PathBuf};

use super::coordination::{ControlChange, ControlRow};

/// `<plan-stem>.control.json` beside the journal `<plan-stem>.journal.jsonl`.
pub fn control_path(journal_path: &Path) -> PathBuf {
    let name = journal_path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("plan.journal.jsonl");
    let stem = name.strip_suffix(".journal.jsonl").unwrap_or(name);
    journal_path.with_file_name(format!("{stem}.control.json"))
}

/// The switches; a missing file is "running".
pub fn read(path: &Path) -> io::Result<ControlRow> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            io::Error::other(format!(
                "{} is not a schemafleet control file: {error}",
                path.display()
            ))
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(ControlRow::default()),
        Err(error) => Err(error),
    }
}

/// Apply `change` and write the file atomically (temporary file, fsync, rename).
pub fn write(path: &Path, change: &ControlChange) -> io::Result<ControlRow> {
    let mut row = read(path)?;
    match change {
        ControlChange::Pause { by } => {
            row.paused_by = Some(by.clone());
            row.paused_at = Some(crate::clock::now_rfc3339());
        }
        ControlChange::Resume => row = ControlRow::default(),
        ControlChange::Abort { by, reason } => {
            row.aborted_by = Some(by.clone());
            row.abort_reason = Some(reason.clone());
            row.aborted_at = Some(crate::clock::now_rfc3339());
        }
    }
    let temporary = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(serde_json::to_string_pretty(&row)?.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_abort_and_resume_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = control_path(&dir.path().join("rollout.journal.jsonl"));
        assert!(path.ends_with("rollout.control.json"));
        assert!(read(&path).expect("missing reads").paused_by.is_none());
        write(&path, &ControlChange::Pause { by: "ana".into() }).expect("pause");
        assert_eq!(read(&path).expect("read").paused_by.as_deref(), Some("ana"));
        let row = write(
            &path,
            &ControlChange::Abort {
                by: "bo".into(),
                reason: "bad index".into(),
            },
        )
        .expect("abort");
        assert_eq!(row.abort_reason.as_deref(), Some("bad index"));
        assert!(row.aborted_at.is_some(), "when it was asked is kept");
        // A control file written before `aborted_at` existed still reads.
        std::fs::write(
            &path,
            r#"{"paused_by":null,"paused_at":null,"aborted_by":"bo","abort_reason":"x"}"#,
        )
        .expect("old file");
        assert!(read(&path).expect("old reads").aborted_at.is_none());
        assert_eq!(row.paused_by.as_deref(), Some("ana"));
        let row = write(&path, &ControlChange::Resume).expect("resume");
        assert!(row.paused_by.is_none() && row.aborted_by.is_none());
    }
}

//! `schemafleet pause|resume|abort PLAN`: flip a rollout's switches, in its state store or
//! beside its journal file. Running `apply`s read them before each tenant starts. And
//! `state import`: a file journal's records into the store.

use crate::cli::{AbortArgs, ControlArgs, StateImportArgs};
use crate::exit::ExitStatus;
use crate::journal::coordination::{self, ControlChange};
use crate::journal::store::{JournalSource, StateStore};
use crate::journal::{Event, Journal, JournalError};

pub async fn pause(args: ControlArgs) -> anyhow::Result<ExitStatus> {
    let by = who(args.by.as_deref());
    change(&args, ControlChange::Pause { by }).await
}

pub async fn resume(args: ControlArgs) -> anyhow::Result<ExitStatus> {
    change(&args, ControlChange::Resume).await
}

pub async fn abort(args: AbortArgs) -> anyhow::Result<ExitStatus> {
    if args.reason.trim().is_empty() {
        anyhow::bail!("--reason is empty: say why the rollout is aborted, it is recorded");
    }
    let by = who(args.control.by.as_deref());
    change(
        &args.control,
        ControlChange::Abort {
            by,
            reason: args.reason.clone(),
        },
    )
    .await
}

/// `--by`, else `$USER@host`.
pub fn who(given: Option<&str>) -> String {
    given.map_or_else(
        || {
            let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
            format!("{user}@{}", host_name())
        },
        str::to_string,
    )
}

/// This machine's host name (for runner ids and who paused).
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return "localhost".into();
    }
    let end = buffer
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

async fn change(args: &ControlArgs, change: ControlChange) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let source = JournalSource::choose(
        args.state.state.as_deref(),
        args.journal.as_deref(),
        &args.plan,
    );
    let mut recorded = String::new();
    match &source {
        JournalSource::Store(uri) => {
            let store = StateStore::connect(uri).await?;
            coordination::set_control(&*store.client().await, uri, &plan.plan_id, &change).await?;
            if let ControlChange::Abort { by, reason } = &change {
                // Runners read the store's records: they see the abort's record as it is.
                let writer = format!("abort/{}", crate::clock::compact_stamp());
                let (journal, _) = store.open_journal(&plan.plan_id, &writer).await?;
                append_abort(journal, by, reason, None).await?;
                recorded = "; recorded in the store's journal".into();
            }
        }
        JournalSource::File(journal) => {
            let path = crate::journal::control::control_path(journal);
            let row = crate::journal::control::write(&path, &change).map_err(|error| {
                anyhow::anyhow!("cannot write the switches {}: {error}", path.display())
            })?;
            if let ControlChange::Abort { by, reason } = &change {
                recorded = record_abort_in_file(journal, &plan.plan_id, by, reason, &row).await?;
            }
        }
    }
    let what = match &change {
        ControlChange::Pause { by } => format!(
            "paused by {by}: runners start no new tenant (within 2 s); `schemafleet resume {}` continues",
            args.plan.display()
        ),
        ControlChange::Resume => "resumed: runners start tenants again".to_string(),
        ControlChange::Abort { by, reason } => format!(
            "aborted by {by} ({reason}): runners start no new tenant and exit 1; `schemafleet resume {}` lifts it",
            args.plan.display()
        ),
    };
    println!(
        "plan {} ({}): {}{recorded}",
        plan.plan_id,
        crate::terminal::escape_controls(&source.describe()),
        crate::terminal::escape_controls(&what)
    );
    Ok(ExitStatus::Success)
}

/// Journal an abort in a journal file nobody holds. While an `apply` holds it, that `apply`
/// journals the abort when it stops on it (it reads who, why and when from the switches). A
/// plan without a journal has nothing to abort yet: the first `apply` stops on the switch and
/// journals it. Returns what to tell the operator.
async fn record_abort_in_file(
    journal: &std::path::Path,
    plan_id: &str,
    by: &str,
    reason: &str,
    row: &coordination::ControlRow,
) -> anyhow::Result<String> {
    if !journal.exists() {
        return Ok("; the first `apply` journals it".into());
    }
    match Journal::open(journal, plan_id) {
        Ok((file, _)) => {
            append_abort(file, by, reason, row.aborted_at.clone()).await?;
            Ok("; recorded in the journal".into())
        }
        Err(JournalError::Locked { .. }) => {
            Ok("; the running `apply` journals it when it stops".into())
        }
        Err(error) => Err(error.into()),
    }
}

/// The `aborted` record, appended and made durable; the journal is closed either way.
async fn append_abort(
    journal: Journal,
    by: &str,
    reason: &str,
    requested_at: Option<String>,
) -> Result<(), JournalError> {
    let result = journal
        .append(Event::Aborted {
            by: by.to_string(),
            reason: reason.to_string(),
            requested_at,
        })
        .await;
    journal.close().await;
    result.map(drop)
}

pub async fn import(args: StateImportArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let journal = args
        .journal
        .clone()
        .unwrap_or_else(|| crate::journal::default_journal_path(&args.plan));
    // The lock: no apply may append to the file while its records move.
    let (file, read) = crate::journal::Journal::open(&journal, &plan.plan_id)?;
    let uri = crate::secret::SecretUri::new(args.state.clone());
    let store = StateStore::connect(&uri).await?;
    drop(read);
    let records = crate::journal::Journal::event_records(&journal);
    let result = match records {
        Ok(records) => store.import(&plan.plan_id, &records).await,
        Err(error) => Err(error),
    };
    file.close().await;
    let imported = result?;
    let what = if imported == 0 {
        "the store already holds these records".to_string()
    } else {
        format!("imported {imported} records")
    };
    println!(
        "plan {}: {what} from {} into state store {}; `schemafleet apply {} --state …` continues it",
        plan.plan_id,
        journal.display(),
        uri.redacted(),
        args.plan.display()
    );
    Ok(ExitStatus::Success)
}

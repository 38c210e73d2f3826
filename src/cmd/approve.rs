//! `schemafleet approve PLAN WAVE`: record a person's approval of a wave in the journal, so
//! the next `apply` starts it.

use anyhow::bail;

use crate::cli::ApproveArgs;
use crate::exit::ExitStatus;
use crate::gates::approve::{ApproveDecision, decide};
use crate::journal::store::{JournalSource, StateStore};
use crate::journal::{Event, Journal};

pub async fn run(args: ApproveArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let source = JournalSource::choose(
        args.state.state.as_deref(),
        args.journal.as_deref(),
        &args.plan,
    );
    let (journal, read) = match &source {
        // Locked like `apply`: an approval is a decision about the run, not written beside one.
        JournalSource::File(path) => Journal::open(path, &plan.plan_id)?,
        // Runners stopped before the wave (exit 3); each reads the record when it runs again.
        JournalSource::Store(uri) => {
            let store = StateStore::connect(uri).await?;
            let writer = format!("approve/{}", crate::clock::compact_stamp());
            store.open_journal(&plan.plan_id, &writer).await?
        }
    };
    let plan_display = args.plan.display();
    let decision = match decide(&plan, &read.state, &args.wave) {
        Ok(decision) => decision,
        Err(reason) => {
            journal.close().await;
            bail!("cannot approve: {reason}");
        }
    };
    match decision {
        ApproveDecision::AlreadyApproved { by, at } => {
            println!(
                "wave {} of plan {} was already approved by {} at {at}; `schemafleet apply {plan_display}` continues with it",
                args.wave,
                plan.plan_id,
                by.as_deref().unwrap_or("someone")
            );
        }
        ApproveDecision::Record => {
            let by = args
                .by
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .filter(|name| !name.trim().is_empty());
            let result = journal
                .append(Event::Approved {
                    wave: args.wave.clone(),
                    by: by.clone(),
                    note: args.note.clone(),
                })
                .await;
            journal.close().await;
            result?;
            println!(
                "approved wave {} of plan {}{}; `schemafleet apply {plan_display}` continues with it",
                args.wave,
                plan.plan_id,
                by.map(|by| format!(" (by {})", crate::terminal::escape_controls(&by)))
                    .unwrap_or_default()
            );
            return Ok(ExitStatus::Success);
        }
    }
    journal.close().await;
    Ok(ExitStatus::Success)
}

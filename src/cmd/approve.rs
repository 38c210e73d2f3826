//! `schemafleet approve PLAN WAVE`: record a person's approval of a wave in the journal, so
//! the next `apply` starts it.

use anyhow::bail;

use crate::cli::ApproveArgs;
use crate::exit::ExitStatus;
use crate::gates::approve::{ApproveDecision, decide};
use crate::journal::{Event, Journal, default_journal_path};

pub async fn run(args: ApproveArgs) -> anyhow::Result<ExitStatus> {
    let plan = crate::plan::load_plan(&args.plan)?;
    let journal_path = args
        .journal
        .clone()
        .unwrap_or_else(|| default_journal_path(&args.plan));
    // Locked like `apply`: an approval is a decision about the run, not written beside one.
    let (journal, read) = Journal::open(&journal_path, &plan.plan_id)?;
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

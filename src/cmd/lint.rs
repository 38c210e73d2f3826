//! `schemafleet lint`: print what each migration will lock and pick the exit code.
//!
//! **Invariant:** the findings (data) go to stdout; errors go to stderr. Exit 0 no denied
//! finding, 1 a denied finding, 2 bad input.

use crate::cli::{LintArgs, OutputFormat};
use crate::exit::ExitStatus;
use crate::lint::{self, LintSettings};
use crate::plan::model::TransactionMode;
use crate::{migrations, policy};

pub fn run(args: &LintArgs) -> anyhow::Result<ExitStatus> {
    // The policy's transaction mode decides which migrations share a transaction.
    let (settings, transaction) = match &args.policy {
        Some(policy_path) => {
            let policy = policy::load(policy_path)?;
            (policy.lint, policy.transaction)
        }
        None => (LintSettings::defaults(), TransactionMode::default()),
    };
    let set = migrations::load(&args.migrations)?;
    let report = lint::lint_set(&set, &settings, transaction);
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print!("{}", crate::terminal::escape_controls(&report.to_string())),
    }
    Ok(if report.has_denied() {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

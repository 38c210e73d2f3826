//! `schemafleet lint`: print what each migration will lock and pick the exit code.
//!
//! **Invariant:** the findings (data) go to stdout; errors go to stderr. Exit 0 no denied
//! finding, 1 a denied finding, 2 bad input.

use crate::cli::{LintArgs, OutputFormat};
use crate::exit::ExitStatus;
use crate::lint::{self, LintSettings};
use crate::{migrations, policy};

pub fn run(args: &LintArgs) -> anyhow::Result<ExitStatus> {
    let settings = match &args.policy {
        Some(policy_path) => policy::load(policy_path)?.lint,
        None => LintSettings::defaults(),
    };
    let set = migrations::load(&args.migrations)?;
    let report = lint::lint_set(&set, &settings);
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

//! One module per subcommand: turns clap arguments into config, runs, prints, picks the exit code.
//!
//! **Invariant:** errors are printed here, once, with their whole cause chain, and passed
//! through [`crate::secret::redact_uri`] first.

use crate::cli::{Cli, Command};
use crate::exit::ExitStatus;

pub mod api;
pub mod apply;
pub mod approve;
pub mod baseline;
pub mod bench;
pub mod control;
pub mod demo;
pub mod drift;
pub mod emulator;
pub mod gc;
pub mod lint;
pub mod plan;
pub mod reference;
pub mod rollback;
pub mod status;

/// Run one subcommand to completion and say how it ended.
pub async fn run(cli: Cli) -> ExitStatus {
    let result = match cli.command {
        Command::Plan(args) => plan::run(args).await,
        Command::Lint(args) => lint::run(&args),
        Command::Apply(args) => apply::run(args).await,
        Command::Approve(args) => approve::run(args).await,
        Command::Rollback(args) => rollback::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Pause(args) => control::pause(args).await,
        Command::Resume(args) => control::resume(args).await,
        Command::Abort(args) => control::abort(args).await,
        Command::State(crate::cli::StateCommand::Import(args)) => control::import(args).await,
        Command::Drift(args) => drift::run(args).await,
        Command::Baseline(args) => baseline::run(args).await,
        Command::Gc(args) => gc::run(args).await,
        Command::Emulator(args) => emulator::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    };
    match result {
        Ok(status) => status,
        Err(error) => {
            print_error(&error);
            ExitStatus::Error
        }
    }
}

/// Print an error with its cause chain, secrets redacted, as the last thing the user reads;
/// on a terminal, wrapped at the CLI's 100 columns.
pub fn print_error(error: &anyhow::Error) {
    let text = crate::terminal::escape_controls(&crate::secret::redact_uri(&format!("{error:#}")));
    let message = format!("error: {text}");
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!(
            "{}",
            crate::terminal::wrap_lines(&message, crate::terminal::ERROR_WIDTH)
        );
    } else {
        eprintln!("{message}");
    }
}

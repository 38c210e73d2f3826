//! What may stop `apply` from starting the next tenant besides its budget and Ctrl-C: the
//! plan's pause/abort switches (`pause`, `resume`, `abort`), and `--max-duration`.
//!
//! **Invariant:** the switches are read before every tenant starts, and at least every
//! [`GATE_POLL`] while paused, so a pause stops new tenants on every runner within 2 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::SharedRun;
use crate::journal::coordination::Claim;

/// How often a paused runner looks at the switches again.
pub const GATE_POLL: Duration = Duration::from_millis(250);

/// A run's switches and clock.
#[derive(Default)]
pub struct RunControl {
    /// The control file beside a file journal (`None`: no switches, e.g. library callers).
    pub file: Option<PathBuf>,
    /// Runners sharing a state store: the switches live there, and claims replace the queue.
    pub shared: Option<Arc<SharedRun>>,
    /// No tenant starts after this instant (`--max-duration`).
    pub deadline: Option<Instant>,
}

/// Whether the next tenant may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Go,
    Paused { by: String },
    Aborted { by: String, reason: String },
    OutOfTime,
}

impl RunControl {
    pub fn out_of_time(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The gate of a file journal's run. An unreadable control file stops nothing (a warning):
    /// the switches are for operators, and a run must not halt on a stray file.
    pub fn file_gate(&self) -> Gate {
        if self.out_of_time() {
            return Gate::OutOfTime;
        }
        let Some(path) = &self.file else {
            return Gate::Go;
        };
        match crate::journal::control::read(path) {
            Ok(row) => match row.switch() {
                Some(Claim::Aborted { by, reason }) => Gate::Aborted { by, reason },
                Some(Claim::Paused { by }) => Gate::Paused { by },
                _ => Gate::Go,
            },
            Err(error) => {
                tracing::warn!(%error, "the control file cannot be read; carrying on");
                Gate::Go
            }
        }
    }
}

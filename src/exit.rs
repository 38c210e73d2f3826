//! Process exit codes, the contract with release pipelines: 0, 1, 2, 3 (waiting for an
//! approval), 75 (stopped on time, more to do) and 130.

use std::process::ExitCode;

/// What a command's outcome means to a pipeline. Documented in `--help` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything asked for was done.
    Success,
    /// The run finished but some tenant failed, a wave halted, or drift was found.
    Failure,
    /// Bad input, or an error that stopped the command before or while it ran.
    Error,
    /// Interrupted by Ctrl-C; the journal is consistent and a re-run resumes.
    Interrupted,
    /// `apply` stopped before a wave with `approval: required`: nothing failed, a person must
    /// run `schemafleet approve`, then `apply` again. `status` of such a rollout says the same.
    AwaitingApproval,
    /// `apply --max-duration` ran out: no tenant started after it, tenants remain; the next
    /// `apply` continues (CI jobs chain on this code). 75 is sysexits' EX_TEMPFAIL.
    StoppedOnTime,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Error => 2,
            ExitStatus::Interrupted => 130,
            ExitStatus::AwaitingApproval => 3,
            ExitStatus::StoppedOnTime => 75,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

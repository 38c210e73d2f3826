//! `schemafleet status`.

use crate::cli::StatusArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: StatusArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet status` is not built yet")
}

//! `schemafleet rollback`.

use crate::cli::RollbackArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: RollbackArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet rollback` is not built yet")
}

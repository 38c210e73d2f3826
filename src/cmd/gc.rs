//! `schemafleet gc`.

use crate::cli::GcArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: GcArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet gc` is not built yet")
}

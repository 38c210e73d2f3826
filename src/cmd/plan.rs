//! `schemafleet plan`.

use crate::cli::PlanArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: PlanArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet plan` is not built yet")
}

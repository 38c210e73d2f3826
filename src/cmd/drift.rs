//! `schemafleet drift`.

use crate::cli::DriftArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: DriftArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet drift` is not built yet")
}

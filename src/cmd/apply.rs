//! `schemafleet apply`.

use crate::cli::ApplyArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: ApplyArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet apply` is not built yet")
}

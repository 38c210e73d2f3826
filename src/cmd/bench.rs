//! `schemafleet bench`.

use crate::cli::BenchArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: BenchArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet bench` is not built yet")
}

//! `schemafleet demo`.

use crate::cli::DemoArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: DemoArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet demo` is not built yet")
}

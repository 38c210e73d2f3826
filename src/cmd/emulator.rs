//! `schemafleet emulator`.

use crate::cli::EmulatorArgs;
use crate::exit::ExitStatus;

pub async fn run(_args: EmulatorArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("`schemafleet emulator` is not built yet")
}

//! The schemafleet binary: parse, set up logging, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = schemafleet::cli::Cli::parse();
    schemafleet::logging::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return schemafleet::exit::ExitStatus::Error.into();
        }
    };
    let status = runtime.block_on(schemafleet::cmd::run(cli));
    status.into()
}

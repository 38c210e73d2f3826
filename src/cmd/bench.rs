//! `schemafleet bench`: fleet throughput against a raw floor, API calls, connections and memory,
//! measured on a local fleet in one run (issue 8).
//!
//! The parent process owns the fleet (emulator over a PostgreSQL tuned for benchmarking, seeded
//! tenants, resets between modes) and runs every measured mode in a child process of the same
//! binary (`bench --internal`, job on stdin), so each mode's peak RSS is its own process's VmHWM.
//!
//! - `assets`: the benchmark's seed SQL and release (files under `benches/fleet/`).
//! - `fleet`: one local fleet: start, seed, count connections in the server log, reset.
//! - `child`: the child side: one mode, timed, then its peak RSS.
//! - `raw`: the floor: connect, one transaction with the release and its history rows, disconnect.
//! - `sequential`: Neon's guide: one tenant at a time, URI from the API, refinery's defaults.
//! - `journal`: the journal mode: a large rollout's journal written by the real writer, then
//!   `status`, `apply` of the finished rollout and a resume of a killed one, each timed alone.
//! - `modes`: the parent side of each mode: files, child process, counters.
//! - `report`: results, text lines, the JSON document, the validated-time breakdown.
//!
//! **Invariant:** every number printed was measured in this run; derived figures (ratios,
//! per-tenant values, the breakdown) say what they were derived from.
//! **Invariant:** secrets (API key, tenant URIs) reach the child only on its stdin, never in a
//! file, an argument or an environment variable.

mod assets;
mod child;
mod fleet;
mod journal;
mod modes;
mod raw;
mod report;
mod sequential;

use crate::cli::BenchArgs;
use crate::exit::ExitStatus;

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitStatus> {
    if args.internal {
        return child::run().await;
    }
    // Ctrl-C (or SIGTERM, SIGHUP) drops the run: child processes are killed (kill_on_drop) and
    // each fleet's drop stops its server and removes its data directory.
    let mut signals = crate::executor::shutdown::TerminationSignals::new();
    tokio::select! {
        result = modes::run(args) => result,
        _ = signals.recv() => {
            eprintln!("bench: interrupted; the local fleet is stopped and removed");
            Ok(ExitStatus::Interrupted)
        }
    }
}

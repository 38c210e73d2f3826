//! schemafleet rolls versioned SQL schema migrations across fleets of Neon tenant databases.
//!
//! See `ARCHITECTURE.md` for the map of modules, the data flow and the invariants.

pub mod cli;
pub mod clock;
pub mod cmd;
pub mod drift;
pub mod emulator;
pub mod executor;
pub mod exit;
pub mod fingerprint;
pub mod fleet;
pub mod gates;
pub mod gc;
pub mod journal;
pub mod lint;
pub mod logging;
pub mod migrations;
pub mod neon;
pub mod pg;
pub mod pgcluster;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod report;
pub mod rollback;
pub mod secret;
pub mod terminal;

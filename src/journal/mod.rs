//! The journal: an append-only JSON-lines record of every state change of every tenant.
//!
//! - [`record`]: the record types (a serialization boundary, versioned with `"v": 1`).
//! - [`state`]: pure replay of records into per-tenant and per-wave state.
//! - [`file`]: the file itself: exclusive lock, torn-tail repair, group-committed fsync'd appends,
//!   a streaming read that starts from the last checkpoint.
//! - [`checkpoint`]: checkpoint records, the replayed state written into the journal so a later
//!   replay skips what precedes it; `compact`: the compact per-tenant table the state keeps.
//! - [`store`]: the same journal in PostgreSQL (`--state URL`), one row per record, its schema
//!   embedded refinery migrations (`state_migrations/`); [`coordination`]: what several runners
//!   of a plan share there (claims under leases, wave budgets, runners, pause/abort);
//!   [`gate_claims`]: which runner runs a gate between waves (checks, asking approval);
//!   [`control`]: the pause/abort switches of a file journal.
//!
//! **Invariant:** a record is on disk (fsync'd) before any step that depends on it starts, and
//! no record claims work that was not done: intents (`apply_started`) are written before the
//! work, facts (`applied`) after it.
//! **Invariant:** the journal never holds a secret; URIs are not recorded at all.

pub mod checkpoint;
mod compact;
pub mod control;
pub mod coordination;
pub mod file;
pub mod gate_claims;
pub mod record;
pub mod state;
pub mod store;

pub use file::{Journal, JournalError, LockHolder, default_journal_path};
pub use record::{CheckFailure, Event, Phase, Record, RestorePoint};
pub use state::{JournalState, TenantState, TenantStatus, WaveStatus};

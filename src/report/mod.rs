//! Summaries of a rollout, from journal state alone: counts per wave, failures grouped by cause
//! with the next step to take, rendered as text or JSON.
//!
//! **Invariant:** pure: a summary is a function of the plan and the replayed journal, so
//! `apply`'s final report and `status` always agree.

pub mod group;
pub mod lock_holds;
pub mod render;
pub mod summary;

pub use group::{FailureGroup, group_failures};
pub use summary::{Counts, FailureEntry, Summary, WaveSummary, summarize};

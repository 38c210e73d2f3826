//! The Neon API v2 boundary: the only module that knows HTTP, JSON and Neon's API shapes.
//!
//! - `client.rs`: [`NeonClient`], requests, retries, operation polling, idempotent mutations;
//! - `types.rs`: the API objects and request bodies (lenient serde);
//! - `error.rs`: [`NeonError`];
//! - `retry.rs`, `pagination.rs`, `operations.rs`, `rate_limit.rs`: the pure policies the client
//!   applies (retry classes and backoff, end of paging, operation states, token bucket).
//!
//! Facts about the real API it follows are in `/work/shared/neon-api.md` (§1–§6, §9, §10, §13).
//!
//! **Invariant:** nothing outside this module builds a Neon URL or parses a Neon body.
//! **Invariant:** the API key and connection-URI passwords never reach a log line, an error or
//! `Debug` output ([`crate::secret`]).

mod client;
mod error;
mod operations;
mod pagination;
mod rate_limit;
mod retry;
mod types;

pub use client::{ClientConfig, ClientStats, MAX_PROJECT_PAGE_SIZE, NeonClient};
pub use error::NeonError;
pub use rate_limit::{Grant, HOLD_LIMIT, TokenSource, batch_size, burst};
pub use types::{
    Branch, CreateBranch, CreatedBranch, Operation, ProjectFilter, ProjectListing, ProjectSummary,
    RestoreBranch,
};

//! The fleet: which tenants (Neon projects) a rollout covers, from a tenants file, the Neon API
//! or the user's own catalog database (`postgres.rs`),
//! and the policy's filters over them.
//!
//! **Invariant:** a tenant is never dropped silently: every tenant a source returned is either
//! kept or listed in [`FilteredFleet::excluded`] with its reason, and projects the API could not
//! list are carried in [`FleetInventory::unavailable`].

use std::collections::BTreeMap;

pub mod connections;
pub mod file;
pub mod filter;
pub mod neon;
pub mod postgres;

pub use connections::{ConnectionBook, SourceEntry};
pub use file::{TenantPlace, load_tenants_file, read_tenants_file, read_tenants_file_with_sources};
pub use filter::{FilteredFleet, FleetFilter, FleetFilters, apply_filters};

/// One tenant: a Neon project whose database the rollout migrates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The Neon project id.
    pub id: String,
    /// The project name (the id when the source has no name).
    pub name: String,
    pub region: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The tenants one source returned, before the policy's filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetInventory {
    /// `neon` or `file:<path>`, as recorded in the plan.
    pub source: String,
    pub tenants: Vec<Tenant>,
    /// Projects the source knows of but could not list (Neon's `unavailable_project_ids`).
    pub unavailable: Vec<String>,
}

/// Why a fleet could not be read. Each names the file (and line) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read the tenants file {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: unknown tenants file type; name it *.csv (header row with an `id` column) or *.yaml / *.yml (a list of tenants)",
        path.display()
    )]
    UnknownFormat { path: std::path::PathBuf },
    /// A problem at one place of a tenants file; `location` is `path`, `path:line` or
    /// `path:line:column`.
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
    #[error("cannot list the fleet's Neon projects")]
    Discovery {
        #[source]
        source: Box<crate::neon::NeonError>,
    },
}

//! What a fleet source knows of each tenant beyond the plan: main's connection URI and the
//! schema version the source records. `apply` reads it once at its start (the catalog query or
//! the tenants file again), keeps it in memory only, and then connects to those tenants without a Neon API call.
//!
//! **Invariant:** the URIs here are [`SecretUri`]s and are never written anywhere; a tenant the
//! source gives no URI falls back to the Neon API's `connection_uri`.

use std::collections::HashMap;

use super::FleetError;
use super::postgres::{CatalogQuery, read_catalog};
use crate::secret::SecretUri;

/// One tenant's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub connection_uri: Option<SecretUri>,
    /// The version the source records (the catalog's `schema_version`).
    pub schema_version: Option<i32>,
}

/// Entries by tenant id.
#[derive(Debug, Clone, Default)]
pub struct ConnectionBook {
    /// `postgres:<VARIABLE>`, for messages.
    pub source: String,
    entries: HashMap<String, SourceEntry>,
}

impl ConnectionBook {
    pub fn new(source: impl Into<String>) -> ConnectionBook {
        ConnectionBook {
            source: source.into(),
            entries: HashMap::new(),
        }
    }

    pub fn insert(&mut self, tenant_id: String, entry: SourceEntry) {
        self.entries.insert(tenant_id, entry);
    }

    /// Main's connection URI, when the source gave one.
    pub fn connection_uri(&self, tenant_id: &str) -> Option<&SecretUri> {
        self.entries.get(tenant_id)?.connection_uri.as_ref()
    }

    /// The version the source records for the tenant.
    pub fn schema_version(&self, tenant_id: &str) -> Option<i32> {
        self.entries.get(tenant_id)?.schema_version
    }

    /// How many tenants have a connection URI.
    pub fn n_connection_uris(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| entry.connection_uri.is_some())
            .count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Read the tenants file again and keep the entries of the tenants `wanted` accepts.
pub fn load_tenants_file(
    path: &std::path::Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<ConnectionBook, FleetError> {
    let mut book = ConnectionBook::new(format!("file:{}", path.display()));
    super::read_tenants_file_with_sources(path, |tenant, _place, entry| {
        if wanted(&tenant.id) {
            book.insert(tenant.id, entry);
        }
        Ok(())
    })?;
    Ok(book)
}

/// Run the catalog query again and keep the entries of the tenants `wanted` accepts (the plan's).
pub async fn load_catalog(
    catalog: &CatalogQuery<'_>,
    wanted: impl Fn(&str) -> bool,
) -> Result<ConnectionBook, FleetError> {
    let mut book = ConnectionBook::new(catalog.source_label());
    read_catalog(catalog, |row, _place| {
        if wanted(&row.tenant.id) {
            book.insert(
                row.tenant.id,
                SourceEntry {
                    connection_uri: row.connection_uri,
                    schema_version: row.schema_version,
                },
            );
        }
        Ok(())
    })
    .await?;
    Ok(book)
}

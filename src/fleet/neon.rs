//! Fleet discovery through the Neon API: every project the key (or an organization) can list.
//!
//! **Invariant:** projects Neon could not list (`unavailable_project_ids` that a direct fetch
//! did not recover) are returned in [`FleetInventory::unavailable`], never dropped.

use super::{FleetError, FleetInventory, Tenant};
use crate::neon::{NeonClient, ProjectFilter};

/// List the fleet. `name_prefix` is also sent as Neon's `search` (a substring match on name or
/// id), which narrows the listing; the policy's filters still decide who is kept.
pub async fn discover(
    client: &NeonClient,
    org_id: Option<&str>,
    name_prefix: Option<&str>,
) -> Result<FleetInventory, FleetError> {
    let filter = ProjectFilter {
        org_id: org_id.map(str::to_string),
        search: name_prefix.map(str::to_string),
    };
    let listing = client
        .list_projects(&filter)
        .await
        .map_err(|source| FleetError::Discovery {
            source: Box::new(source),
        })?;
    let tenants = listing
        .projects
        .into_iter()
        .map(|project| Tenant {
            id: project.id,
            name: project.name,
            region: Some(project.region_id).filter(|region| !region.is_empty()),
            labels: Default::default(),
        })
        .collect();
    let mut unavailable = listing.unavailable_project_ids;
    unavailable.sort();
    unavailable.dedup();
    Ok(FleetInventory {
        source: "neon".to_string(),
        tenants,
        unavailable,
    })
}

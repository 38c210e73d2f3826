//! Gathers the fleet for planning one tenant at a time, keeping only what planning needs.
//!
//! A [`Tenant`] carries its name, region and label map; at 300,000 tenants those would take
//! hundreds of megabytes. Planning needs only each kept tenant's id, name and region (the plan
//! shows them to reviewers), which waves' `match` rejects it, and the names the policy refers
//! to, so each tenant is judged as it arrives and reduced to a [`CompactTenant`].
//!
//! **Invariant:** every tenant added is either in [`CollectedFleet::tenants`] (sorted by id,
//! unique) or in [`CollectedFleet::excluded`] with its reason.

use std::collections::{HashMap, HashSet};

use super::build::PlanBuildError;
use super::model::ExcludedTenant;
use super::waves::WaveCandidate;
use crate::fleet::{FleetFilter, FleetInventory, Tenant, TenantPlace};
use crate::policy::Policy;

/// A kept tenant as planning sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactTenant {
    pub id: String,
    /// Empty when the project has no name of its own (the source gave the id).
    pub name: String,
    pub region: String,
    /// Bit `w` is set when wave `w`'s `match` rejects this tenant (the policy has at most 64
    /// waves).
    rejected_by: u64,
    /// Where a tenants file listed it, for duplicate-id messages.
    place: Option<TenantPlace>,
}

impl WaveCandidate for CompactTenant {
    fn id(&self) -> &str {
        &self.id
    }
    fn accepted_by(&self, wave_idx: usize) -> bool {
        self.rejected_by & (1u64 << wave_idx) == 0
    }
}

/// The fleet, filtered and reduced for planning.
#[derive(Debug, Clone)]
pub struct CollectedFleet {
    /// `neon` or `file:<path>`.
    pub source: String,
    pub n_discovered: usize,
    /// Sorted by id, unique.
    pub tenants: Vec<CompactTenant>,
    /// Sorted by id.
    pub excluded: Vec<ExcludedTenant>,
    pub unavailable: Vec<String>,
    /// `source: postgres`: the query `apply` runs again for connection URIs.
    pub catalog: Option<super::model::PlannedCatalog>,
    /// Kept tenants whose source gave them a connection URI.
    pub connection_uris: usize,
    /// For names the policy's waves refer to: the ids of kept tenants with that name.
    ids_by_referenced_name: HashMap<String, Vec<String>>,
    /// For ids and names the policy's waves refer to: why that tenant was excluded.
    excluded_references: HashMap<String, String>,
}

impl CollectedFleet {
    /// The index of the kept tenant with this id.
    pub fn position_of_id(&self, tenant_id: &str) -> Option<usize> {
        self.tenants
            .binary_search_by(|tenant| tenant.id.as_str().cmp(tenant_id))
            .ok()
    }

    /// The ids of kept tenants whose name is `name` (only for names the policy refers to).
    pub fn ids_named(&self, name: &str) -> &[String] {
        self.ids_by_referenced_name
            .get(name)
            .map_or(&[], Vec::as_slice)
    }

    /// Why the tenant the policy refers to as `reference` (id or name) was excluded.
    pub fn exclusion_of_reference(&self, reference: &str) -> Option<&str> {
        self.excluded_references.get(reference).map(String::as_str)
    }
}

/// Judges tenants as they arrive; see the module docs.
pub struct FleetCollector<'p> {
    policy: &'p Policy,
    filter: FleetFilter<'p>,
    references: HashSet<&'p str>,
    fleet: CollectedFleet,
}

impl<'p> FleetCollector<'p> {
    pub fn new(policy: &'p Policy, source: String) -> Self {
        FleetCollector {
            policy,
            filter: FleetFilter::new(&policy.fleet.filters),
            references: policy
                .waves
                .iter()
                .flat_map(|wave| wave.tenants.iter().map(String::as_str))
                .collect(),
            fleet: CollectedFleet {
                source,
                n_discovered: 0,
                tenants: Vec::new(),
                excluded: Vec::new(),
                unavailable: Vec::new(),
                catalog: None,
                connection_uris: 0,
                ids_by_referenced_name: HashMap::new(),
                excluded_references: HashMap::new(),
            },
        }
    }

    /// Count a kept tenant that came with a connection URI (call after [`FleetCollector::add`]
    /// returned true).
    pub fn count_connection_uri(&mut self) {
        self.fleet.connection_uris += 1;
    }

    /// Judge one tenant; true when it is kept.
    pub fn add(&mut self, tenant: Tenant, place: Option<TenantPlace>) -> bool {
        self.fleet.n_discovered += 1;
        if let Some(reason) = self.filter.exclusion_reason(&tenant) {
            for reference in [&tenant.id, &tenant.name] {
                if self.references.contains(reference.as_str()) {
                    self.fleet
                        .excluded_references
                        .insert(reference.clone(), reason.clone());
                }
            }
            self.fleet.excluded.push(ExcludedTenant {
                id: tenant.id,
                reason,
            });
            return false;
        }
        let mut rejected_by = 0u64;
        for (wave_idx, wave) in self.policy.waves.iter().enumerate() {
            if wave
                .match_rule
                .as_ref()
                .is_some_and(|rule| !rule.matches(&tenant))
            {
                rejected_by |= 1u64 << wave_idx;
            }
        }
        if self.references.contains(tenant.name.as_str()) {
            self.fleet
                .ids_by_referenced_name
                .entry(tenant.name.clone())
                .or_default()
                .push(tenant.id.clone());
        }
        let name = if tenant.name == tenant.id {
            String::new()
        } else {
            tenant.name
        };
        self.fleet.tenants.push(CompactTenant {
            id: tenant.id,
            name,
            region: tenant.region.unwrap_or_default(),
            rejected_by,
            place,
        });
        true
    }

    /// Sort, check for duplicate ids and an empty fleet, and hand the fleet over.
    pub fn finish(self, unavailable: Vec<String>) -> Result<CollectedFleet, PlanBuildError> {
        self.finish_with(unavailable, None)
    }

    /// [`FleetCollector::finish`] for a catalog source, which `apply` reads again.
    pub fn finish_with(
        self,
        unavailable: Vec<String>,
        catalog: Option<super::model::PlannedCatalog>,
    ) -> Result<CollectedFleet, PlanBuildError> {
        let mut fleet = self.fleet;
        fleet.catalog = catalog;
        fleet.unavailable = unavailable;
        fleet.tenants.sort_unstable_by(|left, right| {
            left.id.cmp(&right.id).then(left.place.cmp(&right.place))
        });
        fleet.tenants.shrink_to_fit();
        if let Some(pair) = fleet
            .tenants
            .windows(2)
            .find(|pair| pair[0].id == pair[1].id)
        {
            let file_path = fleet.source.strip_prefix("file:").unwrap_or(&fleet.source);
            let location = match pair[1].place {
                Some(TenantPlace::Line(line)) => format!("{file_path}:{line}"),
                Some(TenantPlace::Row(row)) => {
                    format!("{file_path} (the catalog query's row {row})")
                }
                _ => file_path.to_string(),
            };
            return Err(PlanBuildError::DuplicateTenant {
                location,
                id: pair[0].id.clone(),
                first_place: pair[0]
                    .place
                    .map_or_else(|| "another place".to_string(), |place| place.to_string()),
            });
        }
        fleet.excluded.sort_by(|left, right| left.id.cmp(&right.id));
        if fleet.tenants.is_empty() {
            return Err(PlanBuildError::EmptyFleet {
                fleet_source: fleet.source,
                discovered: fleet.n_discovered,
                excluded: fleet.excluded.len(),
            });
        }
        Ok(fleet)
    }
}

/// Collect a fleet that is already in memory (the Neon API's listing).
pub fn collect_inventory(
    policy: &Policy,
    inventory: FleetInventory,
) -> Result<CollectedFleet, PlanBuildError> {
    let mut collector = FleetCollector::new(policy, inventory.source);
    for tenant in inventory.tenants {
        collector.add(tenant, None);
    }
    collector.finish(inventory.unavailable)
}

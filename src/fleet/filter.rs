//! The policy's fleet filters: name prefix, name regex, regions and an explicit exclude list.
//!
//! **Invariant:** every input tenant ends up in exactly one of `kept` and `excluded`, and each
//! excluded tenant carries the first filter that rejected it.

use std::collections::HashSet;

use super::Tenant;
use crate::plan::model::ExcludedTenant;

/// Which discovered tenants the rollout covers. An unset filter keeps everyone.
#[derive(Debug, Clone, Default)]
pub struct FleetFilters {
    pub name_prefix: Option<String>,
    pub name_regex: Option<regex::Regex>,
    /// Keep only tenants in one of these regions.
    pub regions: Option<Vec<String>>,
    /// Neon project ids never to touch.
    pub exclude: Vec<String>,
}

/// The result of [`apply_filters`].
#[derive(Debug, Clone, PartialEq)]
pub struct FilteredFleet {
    pub kept: Vec<Tenant>,
    pub excluded: Vec<ExcludedTenant>,
}

/// [`FleetFilters`] ready to judge one tenant at a time.
#[derive(Debug, Clone)]
pub struct FleetFilter<'a> {
    filters: &'a FleetFilters,
    excluded_ids: HashSet<&'a str>,
}

impl<'a> FleetFilter<'a> {
    pub fn new(filters: &'a FleetFilters) -> Self {
        FleetFilter {
            filters,
            excluded_ids: filters.exclude.iter().map(String::as_str).collect(),
        }
    }

    /// Why the filters exclude `tenant`, or `None` when they keep it.
    pub fn exclusion_reason(&self, tenant: &Tenant) -> Option<String> {
        exclusion_reason(tenant, self.filters, &self.excluded_ids)
    }
}

/// Split `tenants` into those the filters keep and those they exclude (with the reason).
pub fn apply_filters(tenants: Vec<Tenant>, filters: &FleetFilters) -> FilteredFleet {
    let filter = FleetFilter::new(filters);
    let mut kept = Vec::with_capacity(tenants.len());
    let mut excluded = Vec::new();
    for tenant in tenants {
        match filter.exclusion_reason(&tenant) {
            Some(reason) => excluded.push(ExcludedTenant {
                id: tenant.id,
                reason,
            }),
            None => kept.push(tenant),
        }
    }
    excluded.sort_by(|left, right| left.id.cmp(&right.id));
    FilteredFleet { kept, excluded }
}

fn exclusion_reason(
    tenant: &Tenant,
    filters: &FleetFilters,
    excluded_ids: &HashSet<&str>,
) -> Option<String> {
    if excluded_ids.contains(tenant.id.as_str()) {
        return Some("listed in fleet.exclude".to_string());
    }
    if let Some(prefix) = &filters.name_prefix
        && !tenant.name.starts_with(prefix.as_str())
    {
        return Some(format!(
            "name `{}` does not start with fleet.name_prefix `{prefix}`",
            tenant.name
        ));
    }
    if let Some(name_regex) = &filters.name_regex
        && !name_regex.is_match(&tenant.name)
    {
        return Some(format!(
            "name `{}` does not match fleet.name_regex `{}`",
            tenant.name,
            name_regex.as_str()
        ));
    }
    if let Some(regions) = &filters.regions {
        match &tenant.region {
            Some(region) if regions.contains(region) => {}
            Some(region) => {
                return Some(format!(
                    "region `{region}` is not in fleet.regions [{}]",
                    regions.join(", ")
                ));
            }
            None => {
                return Some(format!(
                    "no region known, and fleet.regions [{}] is set",
                    regions.join(", ")
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, name: &str, region: Option<&str>) -> Tenant {
        Tenant {
            id: id.into(),
            name: name.into(),
            region: region.map(str::to_string),
            labels: Default::default(),
        }
    }

    #[test]
    fn each_tenant_is_kept_or_excluded_with_a_reason() {
        let tenants = vec![
            tenant("p-1", "tenant-0001", Some("aws-us-east-2")),
            tenant("p-2", "tenant-0002", Some("aws-eu-central-1")),
            tenant("p-3", "internal-tools", Some("aws-us-east-2")),
            tenant("p-4", "tenant-0004", Some("aws-us-east-2")),
            tenant("p-5", "tenant-x", None),
            tenant("p-6", "tenant-0006", Some("aws-us-east-2")),
        ];
        let filters = FleetFilters {
            name_prefix: Some("tenant-".into()),
            name_regex: Some(regex::Regex::new(r"^tenant-\d+$").unwrap()),
            regions: Some(vec!["aws-us-east-2".into()]),
            exclude: vec!["p-4".into(), "p-unknown".into()],
        };
        let filtered = apply_filters(tenants, &filters);
        let kept: Vec<&str> = filtered.kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, vec!["p-1", "p-6"]);
        let excluded: Vec<(&str, &str)> = filtered
            .excluded
            .iter()
            .map(|e| (e.id.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            excluded,
            vec![
                (
                    "p-2",
                    "region `aws-eu-central-1` is not in fleet.regions [aws-us-east-2]"
                ),
                (
                    "p-3",
                    "name `internal-tools` does not start with fleet.name_prefix `tenant-`"
                ),
                ("p-4", "listed in fleet.exclude"),
                (
                    "p-5",
                    "name `tenant-x` does not match fleet.name_regex `^tenant-\\d+$`"
                ),
            ]
        );
    }
}

//! What a rollout costs in Neon API requests, and how long those take at the account's rate
//! limit: the estimate `plan` prints before anyone starts a 300,000-tenant run.
//!
//! **Invariant:** the per-tenant figures live here and nowhere else; they are what `schemafleet
//! bench` measures (`api_calls_per_tenant` of the `apply` and `validated` modes), so a change
//! to the client's request economy updates this one table. Pure: no I/O.

/// Neon's limit: 700 requests per minute per account, console traffic included
/// (neon-api.md §9). The estimate's rate when the policy sets no `api_rate_limit_per_min`.
pub const ACCOUNT_RATE_LIMIT_PER_MIN: u32 = 700;

/// A run longer than this gets a suggestion to sample or spread it.
pub const LONG_RUN_MINUTES: f64 = 120.0;

/// The share of tenants a suggested sampled validation covers.
pub const SUGGESTED_SAMPLE_PERCENT: f64 = 10.0;

/// Neon API requests per tenant, by what the tenant needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestsPerTenant {
    /// main's connection URI (`GET …/connection_uri`); none when the fleet's source gives it.
    pub connection_uri: f64,
    /// A validation branch: create and delete, neither waited for (the branch answering the
    /// connection proves the create). The end of a run reads the operations of the deletes
    /// still young then, about a wave's concurrency per run: nothing per tenant at scale.
    /// `bench` measured 3.01 requests per validated tenant in all at 200 tenants, the URI,
    /// the run's preflight and its one end read included.
    pub validation: f64,
    /// A backup branch (`restore_point: backup_branch`): create, about one poll of its
    /// operations and the read that finds it ready (a restore point is waited for).
    pub backup_branch: f64,
}

/// The figures the estimate uses (see the module's invariant).
pub const REQUESTS_PER_TENANT: RequestsPerTenant = RequestsPerTenant {
    connection_uri: 1.0,
    validation: 2.0,
    backup_branch: 3.0,
};

/// How many tenants need each kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantNeeds {
    /// Tenants whose connection URI comes from the Neon API.
    pub connection_uri: usize,
    pub validation: usize,
    pub backup_branch: usize,
}

/// Requests by kind, and in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestEstimate {
    pub connection_uri: f64,
    pub validation: f64,
    pub backup_branch: f64,
}

impl RequestEstimate {
    pub fn total(&self) -> f64 {
        self.connection_uri + self.validation + self.backup_branch
    }

    /// Minutes at `per_min` requests per minute.
    pub fn minutes_at(&self, per_min: u32) -> f64 {
        self.total() / f64::from(per_min.max(1))
    }
}

/// The requests `needs` cost with `figures`.
pub fn estimate(needs: TenantNeeds, figures: RequestsPerTenant) -> RequestEstimate {
    RequestEstimate {
        connection_uri: needs.connection_uri as f64 * figures.connection_uri,
        validation: needs.validation as f64 * figures.validation,
        backup_branch: needs.backup_branch as f64 * figures.backup_branch,
    }
}

/// `≈ 58 h`, `≈ 2.5 h`, `≈ 12 min`, `≈ 40 s`: as precise as a rough estimate deserves.
pub fn approximate_duration(minutes: f64) -> String {
    if minutes <= 0.0 {
        "no time".to_string()
    } else if minutes >= 600.0 {
        format!("≈ {:.0} h", minutes / 60.0)
    } else if minutes >= 60.0 {
        format!("≈ {:.1} h", minutes / 60.0)
    } else if minutes >= 1.0 {
        format!("≈ {:.0} min", minutes)
    } else {
        format!("≈ {:.0} s", (minutes * 60.0).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_fleet_takes_most_of_a_day_validated() {
        // 300,000 validated tenants at 3 requests each (URI, create, delete), 700 per minute.
        let needs = TenantNeeds {
            connection_uri: 300_000,
            validation: 300_000,
            backup_branch: 0,
        };
        let cost = estimate(needs, REQUESTS_PER_TENANT);
        assert_eq!(cost.total(), 900_000.0);
        let minutes = cost.minutes_at(ACCOUNT_RATE_LIMIT_PER_MIN);
        assert_eq!(approximate_duration(minutes), "≈ 21 h");
        // A catalog with URIs and no validation: no request at all.
        let none = TenantNeeds {
            connection_uri: 0,
            validation: 0,
            backup_branch: 0,
        };
        assert_eq!(estimate(none, REQUESTS_PER_TENANT).total(), 0.0);
    }

    #[test]
    fn durations_round_to_what_matters() {
        assert_eq!(approximate_duration(150.0), "≈ 2.5 h");
        assert_eq!(approximate_duration(12.2), "≈ 12 min");
        assert_eq!(approximate_duration(0.5), "≈ 30 s");
        assert_eq!(approximate_duration(0.001), "≈ 1 s");
        assert_eq!(approximate_duration(0.0), "no time");
    }
}

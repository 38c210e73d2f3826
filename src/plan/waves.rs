//! Wave assignment: which wave each tenant is migrated in. Pure: no I/O, no clock, no async.
//!
//! Named tenants go to their wave. Every other tenant gets a stable position in `[0, 1)` from a
//! hash of the policy's salt and its id, and goes to the first wave whose cumulative percent
//! covers that position; if that wave's `match` rejects it, it falls to the next wave that
//! accepts it. Because a position depends only on the salt and the id, adding tenants never
//! moves an existing tenant to another wave.
//!
//! **Invariant:** every tenant is in exactly one wave, or [`assign_waves`] fails naming the
//! tenants no wave accepts; each wave's tenants are sorted by id.

use sha2::{Digest, Sha256};

/// Hash domain for wave positions; validation sampling uses another so the two are independent.
const WAVE_DOMAIN: &str = "wave";
/// Hash domain for [`Validation::SamplePercent`](crate::plan::model::Validation::SamplePercent).
pub const VALIDATION_SAMPLE_DOMAIN: &str = "validation-sample";

/// One wave's assignment rules (its `match`, if any, is answered by [`WaveCandidate`]).
#[derive(Debug, Clone, Default)]
pub struct WaveSpec {
    /// Cumulative share (0..=100) of the fleet reached by the end of this wave.
    pub percent: Option<f64>,
    /// Indexes (into the tenants slice) of the tenants the policy names for this wave.
    pub named_tenants: Vec<usize>,
}

/// What wave assignment needs to know of a tenant.
pub trait WaveCandidate {
    fn id(&self) -> &str;
    /// Whether wave `wave_idx`'s `match` (if it has one) accepts this tenant.
    fn accepted_by(&self, wave_idx: usize) -> bool;
}

/// Tenants no wave accepts (their position falls past every percent, or every wave from their
/// position on has a `match` they fail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unassigned {
    pub tenant_idxs: Vec<usize>,
}

/// A stable position in `[0, 1)` for `tenant_id` under `salt`, independent per `domain`.
pub fn hash_position(salt: &str, domain: &str, tenant_id: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update([0]);
    hasher.update(domain.as_bytes());
    hasher.update([0]);
    hasher.update(tenant_id.as_bytes());
    let digest = hasher.finalize();
    let mut first_eight = [0u8; 8];
    first_eight.copy_from_slice(&digest[..8]);
    // 53 bits fill an f64 mantissa exactly, so the position is exact and strictly below 1.
    (u64::from_be_bytes(first_eight) >> 11) as f64 / (1u64 << 53) as f64
}

/// The stable position used for wave assignment.
pub fn wave_position(salt: &str, tenant_id: &str) -> f64 {
    hash_position(salt, WAVE_DOMAIN, tenant_id)
}

/// Assign every tenant to one wave; returns, per wave, tenant indexes sorted by tenant id.
///
/// Named tenants must be distinct across waves (the policy checks it).
pub fn assign_waves<T: WaveCandidate>(
    tenants: &[T],
    specs: &[WaveSpec],
    salt: &str,
) -> Result<Vec<Vec<usize>>, Unassigned> {
    let mut wave_members: Vec<Vec<usize>> = vec![Vec::new(); specs.len()];
    let mut is_named = vec![false; tenants.len()];
    for (wave_idx, spec) in specs.iter().enumerate() {
        for &tenant_idx in &spec.named_tenants {
            is_named[tenant_idx] = true;
            wave_members[wave_idx].push(tenant_idx);
        }
    }

    // A wave without a percent reaches as far as the waves before it.
    let mut cumulative_fraction = Vec::with_capacity(specs.len());
    let mut reached = 0.0_f64;
    for spec in specs {
        if let Some(percent) = spec.percent {
            reached = reached.max(percent / 100.0);
        }
        cumulative_fraction.push(reached);
    }

    let mut unassigned = Vec::new();
    for (tenant_idx, tenant) in tenants.iter().enumerate() {
        if is_named[tenant_idx] {
            continue;
        }
        let position = wave_position(salt, tenant.id());
        let natural_wave = cumulative_fraction
            .iter()
            .position(|&fraction| position < fraction);
        let accepting_wave = natural_wave.and_then(|first_idx| {
            (first_idx..specs.len()).find(|&wave_idx| tenant.accepted_by(wave_idx))
        });
        match accepting_wave {
            Some(wave_idx) => wave_members[wave_idx].push(tenant_idx),
            None => unassigned.push(tenant_idx),
        }
    }
    if !unassigned.is_empty() {
        unassigned.sort_by(|&left, &right| tenants[left].id().cmp(tenants[right].id()));
        return Err(Unassigned {
            tenant_idxs: unassigned,
        });
    }
    for members in &mut wave_members {
        members.sort_unstable_by(|&left, &right| tenants[left].id().cmp(tenants[right].id()));
    }
    Ok(wave_members)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A tenant with a region; waves may accept only one region.
    #[derive(Debug, Clone)]
    struct Tenant {
        id: String,
        region: String,
        /// Per wave, the region it is restricted to.
        wave_regions: Vec<Option<&'static str>>,
    }

    impl WaveCandidate for Tenant {
        fn id(&self) -> &str {
            &self.id
        }
        fn accepted_by(&self, wave_idx: usize) -> bool {
            self.wave_regions
                .get(wave_idx)
                .copied()
                .flatten()
                .is_none_or(|region| region == self.region)
        }
    }

    fn tenant(id: &str, region: &str) -> Tenant {
        Tenant {
            id: id.to_string(),
            region: region.to_string(),
            wave_regions: Vec::new(),
        }
    }

    /// Restrict waves to regions (by index) for every tenant.
    fn restrict(tenants: &[Tenant], wave_regions: &[Option<&'static str>]) -> Vec<Tenant> {
        tenants
            .iter()
            .map(|tenant| Tenant {
                wave_regions: wave_regions.to_vec(),
                ..tenant.clone()
            })
            .collect()
    }

    fn fleet(n_tenants: usize) -> Vec<Tenant> {
        (0..n_tenants)
            .map(|tenant_idx| {
                let region = if tenant_idx % 3 == 0 { "eu" } else { "us" };
                tenant(&format!("p-{tenant_idx:06}"), region)
            })
            .collect()
    }

    fn spec(percent: Option<f64>) -> WaveSpec {
        WaveSpec {
            percent,
            named_tenants: Vec::new(),
        }
    }

    fn ids(tenants: &[Tenant], waves: &[Vec<usize>]) -> Vec<Vec<String>> {
        waves
            .iter()
            .map(|members| members.iter().map(|&idx| tenants[idx].id.clone()).collect())
            .collect()
    }

    #[test]
    fn positions_are_stable_and_in_range() {
        let position = wave_position("salt", "p-1");
        assert_eq!(position, wave_position("salt", "p-1"));
        assert_ne!(position, wave_position("other-salt", "p-1"));
        assert_ne!(
            position,
            hash_position("salt", VALIDATION_SAMPLE_DOMAIN, "p-1")
        );
        assert!((0.0..1.0).contains(&position));
    }

    #[test]
    fn edge_sizes() {
        let specs = [spec(Some(1.0)), spec(Some(25.0)), spec(Some(100.0))];
        // No tenants: every wave empty.
        let no_tenants: &[Tenant] = &[];
        assert_eq!(
            assign_waves(no_tenants, &specs, "s").unwrap(),
            vec![Vec::<usize>::new(); 3]
        );
        // One and two tenants: each in exactly one wave.
        for n_tenants in [1, 2] {
            let tenants = fleet(n_tenants);
            let waves = assign_waves(&tenants, &specs, "s").unwrap();
            let mut all: Vec<usize> = waves.concat();
            all.sort_unstable();
            assert_eq!(all, (0..n_tenants).collect::<Vec<_>>());
        }
        // A single 100% wave takes everyone, sorted by id.
        let tenants = fleet(5);
        let waves = assign_waves(&tenants, &[spec(Some(100.0))], "s").unwrap();
        assert_eq!(waves, vec![vec![0, 1, 2, 3, 4]]);
        // A 0% wave and a wave without percent are empty unless tenants are named.
        let waves = assign_waves(
            &tenants,
            &[spec(Some(0.0)), spec(None), spec(Some(100.0))],
            "s",
        )
        .unwrap();
        assert!(waves[0].is_empty() && waves[1].is_empty());
        assert_eq!(waves[2].len(), 5);
        // 100% first: later waves are empty.
        let waves = assign_waves(&tenants, &[spec(Some(100.0)), spec(None)], "s").unwrap();
        assert_eq!((waves[0].len(), waves[1].len()), (5, 0));
    }

    #[test]
    fn named_tenants_go_to_their_wave_first() {
        let tenants = fleet(50);
        let specs = [
            WaveSpec {
                percent: Some(0.0),
                named_tenants: vec![7, 3],
            },
            spec(Some(100.0)),
        ];
        let waves = assign_waves(&tenants, &specs, "s").unwrap();
        assert_eq!(waves[0], vec![3, 7]);
        assert_eq!(waves[1].len(), 48);
        assert!(!waves[1].contains(&3) && !waves[1].contains(&7));
    }

    #[test]
    fn match_restricted_waves_pass_tenants_on() {
        let tenants = restrict(&fleet(300), &[Some("eu"), None]);
        let specs = [spec(Some(100.0)), spec(None)];
        let waves = assign_waves(&tenants, &specs, "s").unwrap();
        assert_eq!(waves[0].len(), 100);
        assert!(waves[0].iter().all(|&idx| tenants[idx].region == "eu"));
        assert_eq!(waves[1].len(), 200);

        // When no wave after a rejecting one accepts, the tenants are named, sorted by id.
        let only_eu = restrict(&fleet(4), &[Some("eu")]);
        let unassigned = assign_waves(&only_eu, &[spec(Some(100.0))], "s").unwrap_err();
        assert_eq!(unassigned.tenant_idxs, vec![1, 2]);
        // No wave reaching 100%: the tenants past the highest percent are unassigned.
        let unassigned = assign_waves(&tenants, &[spec(Some(50.0))], "s").unwrap_err();
        assert!(!unassigned.tenant_idxs.is_empty() && unassigned.tenant_idxs.len() < 300);
    }

    #[test]
    fn shares_approach_the_percents_on_a_large_fleet() {
        let tenants = fleet(20_000);
        let specs = [spec(Some(1.0)), spec(Some(25.0)), spec(Some(100.0))];
        let waves = assign_waves(&tenants, &specs, "release-1").unwrap();
        let shares: Vec<f64> = waves.iter().map(|w| w.len() as f64 / 20_000.0).collect();
        assert!((shares[0] - 0.01).abs() < 0.004, "{shares:?}");
        assert!((shares[1] - 0.24).abs() < 0.02, "{shares:?}");
        assert!((shares[2] - 0.75).abs() < 0.02, "{shares:?}");
    }

    fn fleet_strategy() -> impl Strategy<Value = Vec<Tenant>> {
        proptest::collection::btree_set("[a-z0-9-]{1,12}", 0..120).prop_map(|ids| {
            ids.into_iter()
                .enumerate()
                .map(|(idx, id)| tenant(&id, if idx % 2 == 0 { "eu" } else { "us" }))
                .collect()
        })
    }

    fn percents_strategy() -> impl Strategy<Value = Vec<f64>> {
        proptest::collection::btree_set(0u32..100, 0..4).prop_map(|set| {
            let mut percents: Vec<f64> = set.into_iter().map(f64::from).collect();
            percents.push(100.0);
            percents
        })
    }

    proptest! {
        #[test]
        fn every_tenant_in_exactly_one_wave(
            tenants in fleet_strategy(),
            percents in percents_strategy(),
            salt in "[a-z]{0,8}",
        ) {
            let specs: Vec<WaveSpec> = percents.iter().map(|&p| spec(Some(p))).collect();
            let waves = assign_waves(&tenants, &specs, &salt).unwrap();
            let mut seen = vec![0usize; tenants.len()];
            for members in &waves {
                for &idx in members {
                    seen[idx] += 1;
                }
                let member_ids: Vec<&str> = members.iter().map(|&idx| tenants[idx].id.as_str()).collect();
                let mut sorted = member_ids.clone();
                sorted.sort_unstable();
                prop_assert_eq!(member_ids, sorted);
            }
            prop_assert!(seen.iter().all(|&count| count == 1));
        }

        #[test]
        fn deterministic_and_independent_of_input_order(
            tenants in fleet_strategy(),
            percents in percents_strategy(),
        ) {
            let specs: Vec<WaveSpec> = percents.iter().map(|&p| spec(Some(p))).collect();
            let first = ids(&tenants, &assign_waves(&tenants, &specs, "s").unwrap());
            let mut reversed = tenants.clone();
            reversed.reverse();
            let second = ids(&reversed, &assign_waves(&reversed, &specs, "s").unwrap());
            prop_assert_eq!(first, second);
        }

        #[test]
        fn stable_under_fleet_growth(
            tenants in fleet_strategy(),
            extra in fleet_strategy(),
            percents in percents_strategy(),
            with_match in any::<bool>(),
        ) {
            let specs: Vec<WaveSpec> = percents.iter().map(|&p| spec(Some(p))).collect();
            let mut wave_regions: Vec<Option<&'static str>> = vec![None; specs.len()];
            if with_match && specs.len() > 1 {
                wave_regions[0] = Some("eu");
            }
            let tenants = restrict(&tenants, &wave_regions);
            let extra = restrict(&extra, &wave_regions);
            let wave_of = |fleet: &[Tenant]| -> HashMap<String, usize> {
                let waves = assign_waves(fleet, &specs, "grow").unwrap();
                waves.iter().enumerate().flat_map(|(wave_idx, members)| {
                    members.iter().map(move |&idx| (fleet[idx].id.clone(), wave_idx))
                }).collect()
            };
            let before = wave_of(&tenants);
            let mut grown = tenants.clone();
            // A tenant keeps its attributes when the fleet grows; only new ids are added.
            grown.extend(extra.into_iter().filter(|t| !before.contains_key(&t.id)));
            let after = wave_of(&grown);
            for (id, wave_idx) in &before {
                prop_assert_eq!(after.get(id), Some(wave_idx));
            }
        }
    }
}

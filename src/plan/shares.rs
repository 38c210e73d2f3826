//! How far each wave's size landed from what its `percent` asks, for a note from `plan` when
//! the gap would surprise a reader. Pure.
//!
//! The rule it explains (README, "The policy"): a wave takes the tenants it names, plus every
//! other tenant whose stable hash place falls between the percent of the wave before and its
//! own. Named tenants come on top of the percent, and each place is drawn per tenant, so the
//! hashed part of a wave is a count of coin tosses: about right on a large fleet, and often
//! far off on a small one (a 10% canary of 12 tenants gets 0 to 3 by hash, sometimes 5). Exact
//! quotas would fix small fleets, but then a grown fleet would move planned tenants between
//! waves; the stable place is kept and `plan` says when it landed far from the share.

/// What the note needs to know of one wave.
#[derive(Debug, Clone)]
pub struct WaveShare<'a> {
    pub name: &'a str,
    /// The policy's cumulative percent (`None`: as far as the wave before).
    pub percent: Option<f64>,
    /// Tenants the policy names for this wave.
    pub n_named: usize,
    /// Tenants planned in the wave (named ones included).
    pub n_members: usize,
    /// The wave has a `match`: tenants it rejects fall to later waves, so no share is
    /// expected of it or of the waves after it.
    pub has_match: bool,
}

/// A gap smaller than this many tenants is never surprising.
const MIN_GAP_TENANTS: f64 = 2.0;
/// A gap is surprising past this many times √expected, the spread of a per-tenant draw: a fair
/// draw lands that far off about once in a hundred plans, so a large fleet is rarely noted
/// (2% of 1,000 is noted below 9 or above 31) while a small one is whenever its wave is far
/// from its share (5 of 11 at 10% is).
const SURPRISING_SPREADS: f64 = 2.5;

/// One note per wave whose hashed part is far from its percent's share of the fleet's
/// unnamed tenants.
pub fn surprising_shares(waves: &[WaveShare<'_>], n_tenants: usize) -> Vec<String> {
    let n_named_total: usize = waves.iter().map(|wave| wave.n_named).sum();
    let n_unnamed = n_tenants.saturating_sub(n_named_total) as f64;
    let mut notes = Vec::new();
    let mut reached = 0.0_f64;
    for wave in waves {
        if wave.has_match {
            break;
        }
        let from = reached;
        reached = wave.percent.map_or(reached, |percent| reached.max(percent));
        let expected = (reached - from) / 100.0 * n_unnamed;
        let n_hashed = wave.n_members.saturating_sub(wave.n_named);
        let gap = (n_hashed as f64 - expected).abs();
        // An empty wave has its own warning in the plan's summary.
        if wave.n_members == 0 || gap < MIN_GAP_TENANTS.max(SURPRISING_SPREADS * expected.sqrt()) {
            continue;
        }
        let named = if wave.n_named > 0 {
            format!(
                "{} named (named tenants come on top of the percent) and ",
                wave.n_named
            )
        } else {
            String::new()
        };
        notes.push(format!(
            "wave `{}` has {} of {n_tenants} tenants ({:.0}%): {named}{n_hashed} of the {} others by their hash place, where its share ({} to {}%) expects about {:.1}; places are drawn per tenant, so a fleet this small lands far from the percent. For an exact wave, name its tenants and give it the percent of the wave before (0 for the first), or change `salt`",
            wave.name,
            wave.n_members,
            100.0 * wave.n_members as f64 / n_tenants.max(1) as f64,
            n_unnamed,
            trim_percent(from),
            trim_percent(reached),
            expected,
        ));
    }
    notes
}

/// `10`, `2.5`: a percent as a policy writes it.
fn trim_percent(percent: f64) -> String {
    if percent.fract() == 0.0 {
        format!("{percent:.0}")
    } else {
        format!("{percent}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(name: &str, percent: f64, n_named: usize, n_members: usize) -> WaveShare<'_> {
        WaveShare {
            name,
            percent: Some(percent),
            n_named,
            n_members,
            has_match: false,
        }
    }

    #[test]
    fn a_canary_far_over_its_share_on_a_small_fleet_is_noted() {
        // The 12-tenant fleet of the report: one named canary and 5 of 11 by hash at 10%.
        let notes = surprising_shares(&[wave("canary", 10.0, 1, 6), wave("rest", 100.0, 0, 6)], 12);
        // The last wave's 6 of an expected 9.9 is within a fair draw's spread.
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("wave `canary` has 6 of 12 tenants (50%): 1 named (named tenants come on top of the percent) and 5 of the 11 others by their hash place, where its share (0 to 10%) expects about 1.1;"),
            "{}",
            notes[0]
        );
        // A wave far under its share is said too.
        let notes = surprising_shares(
            &[wave("canary", 10.0, 1, 11), wave("rest", 100.0, 0, 1)],
            12,
        );
        assert!(
            notes[1].starts_with("wave `rest` has 1 of 12 tenants (8%): 1 of the 11 others by their hash place, where its share (10 to 100%) expects about 9.9;"),
            "{notes:?}"
        );
    }

    #[test]
    fn shares_near_the_percent_and_waves_after_a_match_are_not_noted() {
        // 1 named + 1 by hash of 11 at 10%: as close as 12 tenants allow.
        assert!(
            surprising_shares(
                &[wave("canary", 10.0, 1, 2), wave("rest", 100.0, 0, 10)],
                12
            )
            .is_empty()
        );
        // A large fleet: 2% of 1,000 drawn as 27 is within a fair draw's spread.
        assert!(
            surprising_shares(
                &[wave("canary", 2.0, 2, 29), wave("rest", 100.0, 0, 971)],
                1000
            )
            .is_empty()
        );
        // Named tenants alone in a 0% canary: exactly what was asked.
        assert!(
            surprising_shares(&[wave("canary", 0.0, 2, 2), wave("rest", 100.0, 0, 10)], 12)
                .is_empty()
        );
        let mut by_region = wave("eu", 50.0, 0, 1);
        by_region.has_match = true;
        assert!(surprising_shares(&[by_region, wave("rest", 100.0, 0, 11)], 12).is_empty());
    }
}

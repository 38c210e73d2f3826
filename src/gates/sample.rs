//! The stable sample of a wave's tenants a SQL check reads. Pure.
//!
//! **Invariant:** the sample depends only on the plan id, the tenant ids and the size asked:
//! re-running a check (a resume, `--retry-checks`) reads the same tenants, and another plan
//! picks others.

use sha2::{Digest, Sha256};

use super::spec::Sample;

/// The tenants of `tenants` a check with `sample` reads, in their hash order.
pub fn stable_sample<'a>(plan_id: &str, tenants: &[&'a str], sample: Sample) -> Vec<&'a str> {
    let n_wanted = match sample {
        Sample::All => tenants.len(),
        Sample::Count(count) => count.min(tenants.len()),
        Sample::Percent(percent) => {
            (((percent / 100.0) * tenants.len() as f64).ceil() as usize).min(tenants.len())
        }
    };
    let mut keyed: Vec<([u8; 8], &'a str)> = tenants
        .iter()
        .map(|tenant| {
            let digest = Sha256::new()
                .chain_update(plan_id.as_bytes())
                .chain_update(b"\0")
                .chain_update(tenant.as_bytes())
                .finalize();
            let mut key = [0u8; 8];
            key.copy_from_slice(&digest[..8]);
            (key, *tenant)
        })
        .collect();
    keyed.sort_unstable();
    keyed
        .into_iter()
        .take(n_wanted)
        .map(|(_, tenant)| tenant)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_stable_sized_and_plan_specific() {
        let ids: Vec<String> = (0..100).map(|i| format!("p-{i}")).collect();
        let tenants: Vec<&str> = ids.iter().map(String::as_str).collect();
        let first = stable_sample("plan-a", &tenants, Sample::Count(20));
        assert_eq!(first.len(), 20);
        let mut reversed = tenants.clone();
        reversed.reverse();
        assert_eq!(stable_sample("plan-a", &reversed, Sample::Count(20)), first);
        assert_ne!(stable_sample("plan-b", &tenants, Sample::Count(20)), first);
        assert_eq!(
            stable_sample("plan-a", &tenants, Sample::Percent(10.0)).len(),
            10
        );
        assert_eq!(
            stable_sample("plan-a", &tenants[..3], Sample::Percent(10.0)).len(),
            1
        );
        assert_eq!(stable_sample("plan-a", &tenants, Sample::All).len(), 100);
        assert_eq!(
            stable_sample("plan-a", &tenants[..5], Sample::Count(20)).len(),
            5
        );
        // A smaller sample is the start of a larger one: growing `sample` keeps who was read.
        let ten = stable_sample("plan-a", &tenants, Sample::Count(10));
        assert_eq!(&first[..10], &ten[..]);
    }
}

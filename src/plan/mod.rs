//! Plans: the wave assignment (pure) and the plan file.

pub mod model;

/// TEMPORARY stub until branch `plan` lands.
pub fn sampled_for_validation(_plan: &model::Plan, _tenant_id: &str) -> bool {
    true
}

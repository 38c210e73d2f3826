//! Plans: the wave assignment (pure) and the plan file.

pub mod model;

/// TEMPORARY stub until branch `plan` lands.
pub fn sampled_for_validation(_plan: &model::Plan, _tenant_id: &str) -> bool {
    true
}

/// TEMPORARY stub until branch `plan` lands.
pub fn load_plan(path: &std::path::Path) -> anyhow::Result<model::Plan> {
    let text = std::fs::read_to_string(path)?;
    Ok(serde_yaml::from_str(&text)?)
}

/// TEMPORARY stub until branch `plan` lands.
pub fn check_migrations(
    _plan: &model::Plan,
    _set: &crate::migrations::MigrationSet,
) -> anyhow::Result<()> {
    Ok(())
}

/// TEMPORARY stub until branch `plan` lands.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

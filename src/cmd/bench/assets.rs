//! The benchmark's tenants and release: seed SQL and four migrations, compiled in so the
//! benchmark runs from any directory.
//!
//! **Invariant:** [`RESET_SQL`] undoes exactly what [`MIGRATIONS`] do, so a reset tenant has the
//! seeded schema again and the whole release pending.

use std::path::Path;

use anyhow::Context;

/// plans/demo-seed.sql's schema extended to five tables and a few hundred rows.
pub const SEED_SQL: &str = include_str!("../../../benches/fleet/seed.sql");

/// The release every mode applies: (file name, SQL).
pub const MIGRATIONS: [(&str, &str); 4] = [
    (
        "V1__add_account_plan.sql",
        include_str!("../../../benches/fleet/migrations/V1__add_account_plan.sql"),
    ),
    (
        "V2__orders_status_check.sql",
        include_str!("../../../benches/fleet/migrations/V2__orders_status_check.sql"),
    ),
    (
        "V3__index_orders_account.sql",
        include_str!("../../../benches/fleet/migrations/V3__index_orders_account.sql"),
    ),
    (
        "V4__create_audit_log.sql",
        include_str!("../../../benches/fleet/migrations/V4__create_audit_log.sql"),
    ),
];

/// Run as superuser on a tenant's main: counts the history rows, then undoes the release.
pub const RESET_SQL: &str = "DROP TABLE IF EXISTS refinery_schema_history, audit_log;
DROP INDEX IF EXISTS orders_account_id_idx;
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_status_check;
ALTER TABLE accounts DROP COLUMN IF EXISTS plan;";

/// Write the release into `dir` (created if missing).
pub fn write_migrations(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    for (file_name, sql) in MIGRATIONS {
        let path = dir.join(file_name);
        std::fs::write(&path, sql).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_loads_as_four_transactional_migrations() {
        let dir =
            std::env::temp_dir().join(format!("schemafleet-bench-assets-{}", std::process::id()));
        write_migrations(&dir).expect("write the release");
        let set = crate::migrations::load(&dir).expect("the release loads");
        std::fs::remove_dir_all(&dir).expect("clean up");
        let versions: Vec<i32> = set
            .migrations
            .iter()
            .map(|migration| migration.version)
            .collect();
        assert_eq!(versions, vec![1, 2, 3, 4]);
        assert!(
            set.migrations
                .iter()
                .all(|migration| !migration.no_transaction)
        );
    }
}

//! The plan id: a digest of everything in a plan that decides what `apply` does.
//!
//! Excluded from the digest: the creation time, and the paths that only say where files were
//! when the plan was written (the policy path as typed, the migrations and verify paths relative
//! to the plan, the tenants file's path, the policy file's bytes, whose comments do not change a run). So the same inputs
//! give the same id from any working directory, and any edit to waves, tenants, migrations or
//! settings gives another.
//!
//! **Invariant:** [`compute_plan_id`] ignores `plan.plan_id`, so an id can be recomputed from a
//! loaded plan and compared with the recorded one.

use std::io;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::{FleetSummary, Plan, PlannedLint, PlannedMigration, PlannedPolicy, PlannedWave};
use crate::migrations::hex_lower;

/// Hex digits kept: 64 bits, plenty to tell plans of one repository apart.
const PLAN_ID_HEX_LEN: usize = 16;

#[derive(Serialize)]
struct IdContent<'a> {
    format_version: u32,
    policy: &'a PlannedPolicy,
    migrations: &'a [PlannedMigration],
    fleet: &'a FleetSummary,
    waves: &'a [PlannedWave],
    #[serde(skip_serializing_if = "Option::is_none")]
    lint: Option<&'a PlannedLint>,
}

/// Streams serialized bytes into the hasher, so a 300,000-tenant plan is never held twice.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The id `plan` should carry, whatever its `plan_id` field says now.
pub fn compute_plan_id(plan: &Plan) -> String {
    let mut policy = plan.policy.clone();
    policy.path = String::new();
    policy.sha256 = String::new();
    if let Some(verify) = &mut policy.verify {
        verify.path = String::new();
    }
    let mut fleet = plan.fleet.clone();
    fleet.source = String::new();
    let content = IdContent {
        format_version: plan.format_version,
        policy: &policy,
        migrations: &plan.migrations.items,
        fleet: &fleet,
        waves: &plan.waves,
        lint: plan.lint.as_ref(),
    };
    let mut writer = HashWriter(Sha256::new());
    serde_json::to_writer(&mut writer, &content)
        .expect("invariant: plan types serialize to JSON (strings, integers, finite floats)");
    let digest = writer.0.finalize();
    let mut id = hex_lower(&digest);
    id.truncate(PLAN_ID_HEX_LEN);
    id
}

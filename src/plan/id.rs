//! The plan id: a digest of everything in a plan that decides what `apply` does.
//!
//! Excluded from the digest: the creation time, and the paths that only say where files were
//! when the plan was written (the policy path as typed, the migrations and verify paths relative
//! to the plan, the tenants file's path, the policy file's bytes, whose comments do not change a run). So the same inputs
//! give the same id from any working directory, and any edit to waves, tenants, migrations or
//! settings gives another.
//!
//! Tenants' names and regions are labels for reviewers and are left out too, so renaming a
//! project does not make its rollout another plan; what is digested has not changed since plan
//! format 1 ([`ID_CONTENT_VERSION`]), so re-planning after an upgrade keeps the plan id and its
//! journal.
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

/// The version of what the id digests: bumped only when that content changes, not when the
/// plan file gains labels.
const ID_CONTENT_VERSION: u32 = 1;

#[derive(Serialize)]
struct IdContent<'a> {
    format_version: u32,
    policy: &'a PlannedPolicy,
    migrations: &'a [PlannedMigration],
    fleet: &'a FleetSummary,
    waves: Vec<IdWave<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lint: Option<&'a PlannedLint>,
}

/// A [`PlannedWave`] as digested: serialized exactly as format 1 wrote it, tenants as ids.
#[derive(Serialize)]
struct IdWave<'a> {
    name: &'a str,
    concurrency: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_failures: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_failure_percent: Option<f64>,
    bake_s: u64,
    /// Absent when empty, so plans without gates keep the ids they had.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    checks: &'a [crate::gates::spec::CheckSpec],
    #[serde(skip_serializing_if = "crate::gates::spec::Approval::is_none")]
    approval: crate::gates::spec::Approval,
    #[serde(serialize_with = "serialize_ids")]
    tenants: &'a PlannedWave,
}

fn serialize_ids<S: serde::Serializer>(
    wave: &&PlannedWave,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(wave.tenant_ids())
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
    fleet.catalog = None;
    fleet.connection_uris = 0;
    let content = IdContent {
        format_version: ID_CONTENT_VERSION,
        policy: &policy,
        migrations: &plan.migrations.items,
        fleet: &fleet,
        waves: plan
            .waves
            .iter()
            .map(|wave| IdWave {
                name: &wave.name,
                concurrency: wave.concurrency,
                max_failures: wave.max_failures,
                max_failure_percent: wave.max_failure_percent,
                bake_s: wave.bake_s,
                checks: &wave.checks,
                approval: wave.approval,
                tenants: wave,
            })
            .collect(),
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

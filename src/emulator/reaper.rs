//! Background clean-up, like Neon's own jobs: branches past `expires_at` are deleted with their
//! databases, and snapshots older than the project's restore window are dropped.
//!
//! **Invariant:** the reaper mutates a project only under that project's lock, so it never races
//! a request; it never deletes a default branch or a branch that has children.

use std::sync::Arc;
use std::time::Duration;

use super::model::{Millis, now_ms};
use super::service::Emulator;

/// How often the reaper looks; expiry is "not exact" on Neon either.
pub const REAPER_INTERVAL: Duration = Duration::from_millis(200);

pub async fn run(emulator: Arc<Emulator>) {
    loop {
        tokio::time::sleep(REAPER_INTERVAL).await;
        if let Err(error) = reap_once(&emulator).await {
            tracing::warn!("emulator reaper: {error}");
        }
    }
}

/// One pass; public to the module so tests of the emulator can force it.
pub async fn reap_once(emulator: &Emulator) -> Result<(), super::error::ApiError> {
    let now = now_ms();
    for project_id in projects_with_work(emulator, now) {
        let Some(mut mutation) = emulator.begin_background_mutation(&project_id).await else {
            continue;
        };
        let now = now_ms();
        let document = &mut mutation.document;
        let window_start: Millis = now - document.project.history_retention_seconds * 1000;
        let expired: Vec<String> = document
            .branches
            .iter()
            .filter(|branch| branch.expires_at.is_some_and(|at| at <= now) && !branch.default)
            .filter(|branch| !document.has_children(&branch.id))
            .map(|branch| branch.id.clone())
            .collect();
        for branch_id in &expired {
            emulator.drop_branch_storage(document, branch_id).await?;
            for endpoint in document.endpoints_of(branch_id) {
                emulator.computes.retire(endpoint);
            }
            document.branches.retain(|branch| &branch.id != branch_id);
            document
                .endpoints
                .retain(|endpoint| &endpoint.branch_id != branch_id);
        }
        let (stale, fresh): (Vec<_>, Vec<_>) = document
            .snapshots
            .drain(..)
            .partition(|snapshot| snapshot.taken_at < window_start);
        document.snapshots = fresh;
        for snapshot in &stale {
            if let Err(error) = emulator
                .physical
                .drop_database(&snapshot.physical_database)
                .await
            {
                document.snapshots.push(snapshot.clone());
                tracing::warn!("emulator reaper: cannot drop an expired snapshot: {error}");
            }
        }
        if !expired.is_empty() || !stale.is_empty() {
            emulator.commit(mutation).await?;
        }
    }
    Ok(())
}

fn projects_with_work(emulator: &Emulator, now: Millis) -> Vec<String> {
    let state = emulator.lock_state();
    state
        .projects
        .values()
        .filter(|entry| {
            let document = &entry.document;
            let window_start = now - document.project.history_retention_seconds * 1000;
            document
                .branches
                .iter()
                .any(|branch| branch.expires_at.is_some_and(|at| at <= now) && !branch.default)
                || document
                    .snapshots
                    .iter()
                    .any(|snapshot| snapshot.taken_at < window_start)
        })
        .map(|entry| entry.document.project.id.clone())
        .collect()
}

//! The run's validation branches whose delete was requested and not waited for (journaled
//! `branch_delete_requested`), checked once at the end of the run instead of once per tenant.
//!
//! A delete decides nothing that follows it, so a tenant's slot goes to the next tenant as soon
//! as Neon accepts the delete. When the run ends, a delete requested longer ago than this run's
//! deletes typically take has had its time and is not read; a younger one (the last tenants'
//! deletes, about a wave's concurrency of them) gets one read of its operations, with its
//! create's, so the run leaves none of its own operations running when it exits. The first
//! delete of a kind this run has not seen finish is read alone first: its reported duration is
//! what "typically" means for the rest. A delete that failed leaves a branch that expires on
//! its own and that `gc` removes; the create was proven by the branch answering the connection.
//!
//! **Cost:** about one read per run for every delete still young at its end, instead of one
//! per validated tenant.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::StreamExt;
use tokio::time::Instant;

use super::timings::{StepTimings, TimedStep};
use crate::neon::{NeonClient, Operation};

/// Reads of young deletes in flight at once at the end of a run.
const READS_AT_ONCE: usize = 16;

/// The newest deletes kept for the end of the run; older ones are dropped as newer come, so a
/// 300,000-tenant run holds a few hundred kilobytes here, not one entry per tenant. Only the
/// deletes of the run's last seconds are ever read, and more than this many of them would
/// mean hundreds of tenants a second.
const KEPT: usize = 1024;

/// A validation branch whose create and delete operations were not waited for.
pub struct RequestedDelete {
    pub tenant_id: String,
    pub branch_name: String,
    /// The create's operations, as its answer reported them.
    pub created: Vec<Operation>,
    /// The delete's operations, as its answer reported them.
    pub deleted: Vec<Operation>,
    pub requested_at: Instant,
}

impl RequestedDelete {
    fn all_succeeded(&self) -> bool {
        self.created
            .iter()
            .chain(&self.deleted)
            .all(Operation::succeeded)
    }
}

/// The run's newest requested deletes, kept until the end of the run.
#[derive(Default)]
pub struct RequestedDeletes {
    /// In the order they were requested (near enough: pushed right after the answer).
    deletes: Mutex<VecDeque<RequestedDelete>>,
}

impl RequestedDeletes {
    /// Keep `delete` for the end of the run, unless Neon answered it already done.
    pub fn push(&self, delete: RequestedDelete) {
        if delete.all_succeeded() {
            return;
        }
        let mut deletes = self.lock();
        if deletes.len() == KEPT {
            deletes.pop_front();
        }
        deletes.push_back(delete);
    }

    fn take(&self) -> Vec<RequestedDelete> {
        std::mem::take(&mut *self.lock()).into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RequestedDelete>> {
        // A plain list: a poisoned lock is still usable.
        self.deletes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// At the end of a run: read the deletes still too young to have typically finished, once each
/// (see the module's doc). Best effort: every tenant's outcome is journaled already.
pub async fn settle_young_deletes(
    client: &NeonClient,
    deletes: &RequestedDeletes,
    timings: &StepTimings,
) {
    let mut deletes = deletes.take();
    // Youngest first: the first read of an unseen kind should be of one likely still running.
    deletes.sort_by_key(|delete| std::cmp::Reverse(delete.requested_at));
    let mut young = Vec::new();
    let mut learning_failed = false;
    for delete in deletes {
        match client.typically_settled_after(&delete.deleted) {
            None if learning_failed => {}
            None => learning_failed = !settle(client, &delete, timings).await,
            Some(typical) if delete.requested_at.elapsed() < typical => young.push(delete),
            Some(_) => {}
        }
    }
    futures::stream::iter(young)
        .for_each_concurrent(READS_AT_ONCE, |delete| async move {
            settle(client, &delete, timings).await;
        })
        .await;
}

/// Wait for one branch's create and delete operations; false when they did not finish.
async fn settle(client: &NeonClient, delete: &RequestedDelete, timings: &StepTimings) -> bool {
    let settled = timings
        .time(
            TimedStep::SettleBranch,
            client.settle_operations(
                &delete.tenant_id,
                &delete.deleted,
                &delete.created,
                delete.requested_at,
            ),
        )
        .await;
    match settled {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(tenant = %delete.tenant_id, branch = %delete.branch_name, error = %error, "the validation branch's operations did not finish; it expires on its own");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(action: &str, status: &str) -> Operation {
        Operation {
            id: format!("op-{action}-{status}"),
            project_id: "p-1".into(),
            branch_id: Some("br-1".into()),
            action: action.into(),
            status: status.into(),
            error: None,
            total_duration_ms: None,
        }
    }

    fn delete(tenant: usize, status: &str) -> RequestedDelete {
        RequestedDelete {
            tenant_id: format!("p-{tenant}"),
            branch_name: "schemafleet-validate-x".into(),
            created: vec![operation("create_branch", "finished")],
            deleted: vec![operation("delete_timeline", status)],
            requested_at: Instant::now(),
        }
    }

    #[test]
    fn only_the_newest_unfinished_deletes_are_kept() {
        let deletes = RequestedDeletes::default();
        // Answered done already: nothing to read at the end.
        deletes.push(delete(0, "finished"));
        assert!(deletes.take().is_empty());
        for tenant in 0..KEPT + 10 {
            deletes.push(delete(tenant, "running"));
        }
        let kept = deletes.take();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].tenant_id, "p-10", "the oldest ten made room");
        assert_eq!(kept[KEPT - 1].tenant_id, format!("p-{}", KEPT + 9));
        assert!(deletes.take().is_empty(), "taken once");
    }
}

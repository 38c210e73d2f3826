//! The in-memory fleet: one [`ProjectDocument`] per project plus that project's mutation lock.
//!
//! **Invariant:** the `std` mutex around [`State`] is never held across an `.await`; long work
//! (copies, drops) happens under the project's own async lock with a cloned document, which is
//! written back (memory, then store) before that lock is released.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::{
    BranchRecord, EndpointRecord, Millis, OperationRecord, ProjectRecord, SnapshotRecord,
};

/// Operations kept per project; older finished ones are forgotten like Neon's 6-month purge.
const MAX_OPERATIONS_KEPT: usize = 500;

/// Everything the emulator knows about one project; the unit of persistence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectDocument {
    pub project: ProjectRecord,
    pub branches: Vec<BranchRecord>,
    pub endpoints: Vec<EndpointRecord>,
    pub operations: Vec<OperationRecord>,
    pub snapshots: Vec<SnapshotRecord>,
}

impl ProjectDocument {
    pub fn branch(&self, branch_id: &str) -> Option<&BranchRecord> {
        self.branches.iter().find(|branch| branch.id == branch_id)
    }

    pub fn branch_mut(&mut self, branch_id: &str) -> Option<&mut BranchRecord> {
        self.branches
            .iter_mut()
            .find(|branch| branch.id == branch_id)
    }

    pub fn branch_by_name(&self, name: &str) -> Option<&BranchRecord> {
        self.branches.iter().find(|branch| branch.name == name)
    }

    pub fn default_branch(&self) -> Option<&BranchRecord> {
        self.branch(&self.project.default_branch_id)
    }

    pub fn has_children(&self, branch_id: &str) -> bool {
        self.branches
            .iter()
            .any(|branch| branch.parent_id.as_deref() == Some(branch_id))
    }

    pub fn has_running_operations(&self, now: Millis) -> bool {
        self.operations
            .iter()
            .any(|operation| operation.is_running(now))
    }

    /// The endpoint a branch's connection URI names: its read-write one, else any.
    pub fn connection_endpoint_id(&self, branch_id: &str) -> Option<&str> {
        let endpoints = self.endpoints_of(branch_id);
        endpoints
            .iter()
            .find(|endpoint| endpoint.read_write)
            .or(endpoints.first())
            .map(|endpoint| endpoint.id.as_str())
    }

    pub fn endpoints_of(&self, branch_id: &str) -> Vec<&EndpointRecord> {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.branch_id == branch_id)
            .collect()
    }

    pub fn add_operations(&mut self, operations: &[OperationRecord]) {
        self.operations.extend_from_slice(operations);
        if self.operations.len() > MAX_OPERATIONS_KEPT {
            let excess = self.operations.len() - MAX_OPERATIONS_KEPT;
            self.operations.drain(..excess);
        }
    }
}

pub struct ProjectEntry {
    pub document: ProjectDocument,
    /// Held for the whole of a mutation; a second mutation meanwhile gets 423.
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
pub struct State {
    pub projects: HashMap<String, ProjectEntry>,
    pub next_seq: i64,
}

impl State {
    pub fn insert(&mut self, document: ProjectDocument) {
        self.next_seq = self.next_seq.max(document.project.seq + 1);
        let id = document.project.id.clone();
        match self.projects.get_mut(&id) {
            Some(entry) => entry.document = document,
            None => {
                self.projects.insert(
                    id,
                    ProjectEntry {
                        document,
                        lock: Arc::new(tokio::sync::Mutex::new(())),
                    },
                );
            }
        }
    }

    pub fn take_seq(&mut self) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Projects in creation order.
    pub fn ordered_projects(&self) -> Vec<&ProjectDocument> {
        let mut documents: Vec<&ProjectDocument> = self
            .projects
            .values()
            .map(|entry| &entry.document)
            .collect();
        documents.sort_by_key(|document| document.project.seq);
        documents
    }
}

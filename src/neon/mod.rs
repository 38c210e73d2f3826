//! TEMPORARY interface stub so the executor compiles while the real client lands (branch `client`).
#![allow(dead_code, unused_variables)]
use std::time::Duration;

use crate::secret::{SecretString, SecretUri};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub api_key: SecretString,
    pub rate_limit_per_min: u32,
    pub max_attempts: u32,
    pub operation_timeout: Duration,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
}
impl ClientConfig {
    pub fn new(
        base_url: impl Into<String>,
        api_key: SecretString,
        rate_limit_per_min: u32,
    ) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            rate_limit_per_min,
            max_attempts: 8,
            operation_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(60),
        }
    }
}
#[derive(Debug, thiserror::Error)]
pub enum NeonError {
    #[error("stub")]
    Stub,
}
impl NeonError {
    pub fn is_retryable(&self) -> bool {
        false
    }
    pub fn status(&self) -> Option<u16> {
        None
    }
}
#[derive(Clone)]
pub struct NeonClient;
#[derive(Debug, Clone, Default)]
pub struct ProjectFilter {
    pub org_id: Option<String>,
    pub search: Option<String>,
}
#[derive(Debug, Clone)]
pub struct ProjectListing {
    pub projects: Vec<ProjectSummary>,
    pub unavailable_project_ids: Vec<String>,
}
#[derive(Debug, Clone)]
pub struct ProjectSummary {
    pub id: String,
    pub name: String,
    pub region_id: String,
    pub org_id: Option<String>,
    pub history_retention_seconds: Option<u64>,
}
#[derive(Debug, Clone)]
pub struct CreateBranch {
    pub name: String,
    pub parent_id: Option<String>,
    pub expires_at: Option<String>,
}
#[derive(Debug, Clone)]
pub struct CreatedBranch {
    pub branch: Branch,
    pub connection_uri: Option<SecretUri>,
}
#[derive(Debug, Clone)]
pub struct RestoreBranch {
    pub source_branch_id: String,
    pub source_lsn: Option<String>,
    pub source_timestamp: Option<String>,
    pub preserve_under_name: Option<String>,
}
#[derive(Debug, Clone)]
pub struct Branch {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub parent_lsn: Option<String>,
    pub parent_timestamp: Option<String>,
    pub current_state: String,
    pub default: bool,
    pub protected: bool,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub last_reset_at: Option<String>,
}
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub project_id: String,
    pub branch_id: Option<String>,
    pub action: String,
    pub status: String,
    pub error: Option<String>,
}
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub mutations: u64,
    pub rate_limited: u64,
    pub rate_limiter_wait_ms: u64,
}
impl NeonClient {
    pub fn new(config: ClientConfig) -> Result<NeonClient, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn list_projects(&self, filter: &ProjectFilter) -> Result<ProjectListing, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn get_project(&self, project_id: &str) -> Result<ProjectSummary, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn list_branches(&self, project_id: &str) -> Result<Vec<Branch>, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn default_branch(&self, project_id: &str) -> Result<Branch, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn get_branch(&self, project_id: &str, branch_id: &str) -> Result<Branch, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn create_branch(
        &self,
        project_id: &str,
        request: &CreateBranch,
    ) -> Result<CreatedBranch, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn delete_branch(&self, project_id: &str, branch_id: &str) -> Result<(), NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn restore_branch(
        &self,
        project_id: &str,
        branch_id: &str,
        request: &RestoreBranch,
    ) -> Result<Branch, NeonError> {
        Err(NeonError::Stub)
    }
    pub async fn connection_uri(
        &self,
        project_id: &str,
        branch_id: Option<&str>,
        database: &str,
        role: &str,
    ) -> Result<SecretUri, NeonError> {
        Err(NeonError::Stub)
    }
    pub fn stats(&self) -> ClientStats {
        ClientStats::default()
    }
}

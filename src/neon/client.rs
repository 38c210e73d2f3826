//! The typed async Neon API v2 client: one HTTP boundary with rate limiting, retries that follow
//! the real API, operation polling, and idempotent branch mutations.
//!
//! Every request goes through [`NeonClient::call`]: it takes a token from the shared
//! [`RateLimiter`], sends the request with `Authorization: Bearer`, classifies the answer with
//! `retry.rs`, and retries what is safe to retry. Mutations whose outcome is unknown (no answer,
//! 500, 524) come back to the mutation method, which re-reads the state on Neon before deciding
//! to send again: a branch name exists or not, a branch still exists or not, `last_reset_at`
//! moved or not.
//!
//! **Invariant:** every HTTP request (first tries, retries, polls, re-reads) passes the rate
//! limiter and is counted in [`ClientStats`].
//! **Invariant:** the API key is only ever read to build the `Authorization` header; it is in no
//! log line, error or `Debug` output.
//! **Invariant:** a mutating request is re-sent only after a connect failure (never reached
//! Neon), an answer that says it was not applied (423, 429, 503, 422 `branch not ready yet`), or
//! a re-read that shows it did not take effect.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio::time::Instant;
use url::Url;

use super::error::NeonError;
use super::operations::{OperationProgress, SettleTimes, operation_progress};
use super::pagination::{PageStep, next_page};
use super::rate_limit::RateLimiter;
use super::retry::{
    BRIEF_ATTEMPTS, Backoff, Disposition, RequestKind, RetryBudget, classify_network_failure,
    classify_status, parse_retry_after, retry_delay,
};
use super::types::{
    Branch, BranchOperationsResponse, BranchResponse, BranchesPage, ConnectionUriResponse,
    CreateBranch, CreatedBranch, CreatedBranchResponse, GeneralError, Operation, OperationResponse,
    ProjectFilter, ProjectListing, ProjectResponse, ProjectSummary, ProjectsPage, RestoreBranch,
    create_branch_body,
};
use crate::secret::{SecretString, SecretUri, redact_uri};

/// Neon's documented maximum page size for `GET /projects`.
pub const MAX_PROJECT_PAGE_SIZE: u32 = 400;

/// How the client talks to Neon. Build it with [`ClientConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://console.neon.tech/api/v2` for real Neon; the emulator's URL in tests.
    pub base_url: String,
    pub api_key: SecretString,
    /// Client-wide cap; Neon allows 700 per minute per account, shared with every other tool.
    pub rate_limit_per_min: u32,
    /// Attempts per request for retryable answers (423, 429, 503, network errors on reads).
    pub max_attempts: u32,
    /// Deadline for a mutation's operations to finish and its branch to become `ready`.
    pub operation_timeout: Duration,
    /// Pause between operation polls (jittered by ±20 %).
    pub poll_interval: Duration,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
    /// First backoff ceiling; doubles per retry up to `backoff_cap` (full jitter).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A `Retry-After` longer than this is not waited out; the error is returned instead.
    pub max_retry_after: Duration,
    /// `limit` of paged listings (1..=400 for projects).
    pub page_size: u32,
}

impl ClientConfig {
    /// Defaults fit real Neon: 1 s polls, a 5 min operation deadline, 8 attempts, 60 s requests.
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
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            page_size: MAX_PROJECT_PAGE_SIZE,
        }
    }
}

/// Counters since the client was built, shared by all clones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    /// HTTP requests sent, every attempt included.
    pub requests: u64,
    /// Requests sent again after a retryable answer, plus mutations re-sent after a re-read.
    pub retries: u64,
    /// HTTP requests with a method other than GET, every attempt included.
    pub mutations: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Total time requests waited in the client-side rate limiter.
    pub rate_limiter_wait_ms: u64,
}

/// The Neon API client. Cheap to clone; clones share the connection pool, the rate limiter and
/// the stats.
#[derive(Clone)]
pub struct NeonClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    config: ClientConfig,
    limiter: RateLimiter,
    stats: StatCounters,
    /// The API has answered at least once. Until then a host that cannot be reached at all is
    /// far more likely a wrong NEON_API_URL than a blip: it gets the brief retry budget, so the
    /// operator hears of it in seconds rather than after the full backoff.
    answered: AtomicBool,
    /// How long this run's mutations took to settle, for the first poll's timing.
    settle_times: std::sync::Mutex<SettleTimes>,
}

#[derive(Default)]
struct StatCounters {
    requests: AtomicU64,
    retries: AtomicU64,
    mutations: AtomicU64,
    rate_limited: AtomicU64,
    rate_limiter_wait_ms: AtomicU64,
}

impl fmt::Debug for NeonClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeonClient")
            .field("base_url", &self.inner.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// One logical API request; `call` may send it several times.
struct ApiCall {
    method: Method,
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
    /// A read right after a create, where Neon may briefly answer 404.
    retry_not_found: bool,
}

impl ApiCall {
    fn new(method: Method, segments: &[&str]) -> ApiCall {
        ApiCall {
            method,
            segments: segments.iter().map(|segment| segment.to_string()).collect(),
            query: Vec::new(),
            body: None,
            retry_not_found: false,
        }
    }

    fn query(mut self, name: &'static str, value: impl Into<String>) -> ApiCall {
        self.query.push((name, value.into()));
        self
    }

    fn body(mut self, body: serde_json::Value) -> ApiCall {
        self.body = Some(body);
        self
    }

    fn retry_not_found(mut self) -> ApiCall {
        self.retry_not_found = true;
        self
    }

    fn kind(&self) -> RequestKind {
        if self.method == Method::GET {
            RequestKind::Read
        } else {
            RequestKind::Mutation
        }
    }

    /// The path as error messages show it (no host, no query).
    fn display_path(&self) -> String {
        format!("/{}", self.segments.join("/"))
    }
}

/// A success answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Any answer, before classification.
struct RawAnswer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
    request_id: String,
}

/// The largest answer body read (the biggest Neon answers, project pages, are far smaller): a
/// misdirected or hostile endpoint cannot make the client buffer without bound.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

impl NeonClient {
    pub fn new(config: ClientConfig) -> Result<NeonClient, NeonError> {
        if config.api_key.is_empty() {
            return Err(NeonError::Config {
                message: "the API key is empty; set NEON_API_KEY".into(),
            });
        }
        let base_url = Url::parse(config.base_url.trim_end_matches('/')).map_err(|error| {
            NeonError::Config {
                message: format!(
                    "base URL `{}` is not a URL ({error}); check NEON_API_URL",
                    redact_uri(&config.base_url)
                ),
            }
        })?;
        if base_url.cannot_be_a_base() || !matches!(base_url.scheme(), "http" | "https") {
            return Err(NeonError::Config {
                message: format!(
                    "base URL `{}` must be an http(s) URL such as https://console.neon.tech/api/v2; \
                     check NEON_API_URL",
                    redact_uri(&config.base_url)
                ),
            });
        }
        if base_url.scheme() == "http" && !is_loopback_url(&base_url) {
            return Err(NeonError::Config {
                message: format!(
                    "base URL `{}` is plain http to a host that is not loopback: the API key \
                     would travel in cleartext; use https:// (http is accepted only for a local \
                     emulator); check NEON_API_URL",
                    redact_uri(&config.base_url)
                ),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("schemafleet/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|error| NeonError::Config {
                message: format!("cannot build the HTTP client: {error}"),
            })?;
        let limiter = RateLimiter::new(config.rate_limit_per_min);
        Ok(NeonClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                config,
                limiter,
                stats: StatCounters::default(),
                answered: AtomicBool::new(false),
                settle_times: std::sync::Mutex::new(SettleTimes::default()),
            }),
        })
    }

    /// Take every request's token also from `source`, a bucket refilled at `per_minute` that
    /// other processes share (`apply --state`: the account's budget in the state store).
    pub fn share_rate_limit(&self, source: Arc<dyn super::TokenSource>, per_minute: u32) {
        self.inner.limiter.share(source, per_minute);
    }

    /// One cheap read that every healthy Neon API answers with 200 (`GET /projects?limit=1`):
    /// a wrong base URL (404), an unreachable host or a rejected key shows up here, before
    /// anything is written.
    pub async fn check_access(&self) -> Result<(), NeonError> {
        let call = ApiCall::new(Method::GET, &["projects"]).query("limit", "1");
        let _page: ProjectsPage = self.fetch(&call).await?;
        Ok(())
    }

    /// Every project visible to the key, following all pages at up to 400 per page. Projects
    /// Neon reports as unavailable are fetched one by one; those that still fail are returned in
    /// [`ProjectListing::unavailable_project_ids`].
    pub async fn list_projects(&self, filter: &ProjectFilter) -> Result<ProjectListing, NeonError> {
        let limit = self.page_size();
        let mut projects = Vec::new();
        let mut seen_ids = HashSet::new();
        let mut unavailable_ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut call =
                ApiCall::new(Method::GET, &["projects"]).query("limit", limit.to_string());
            if let Some(org_id) = &filter.org_id {
                call = call.query("org_id", org_id.clone());
            }
            if let Some(search) = &filter.search {
                call = call.query("search", search.clone());
            }
            if let Some(cursor) = &cursor {
                call = call.query("cursor", cursor.clone());
            }
            let page: ProjectsPage = self.fetch(&call).await?;
            let items_on_page = page.projects.len();
            for project in page.projects {
                if seen_ids.insert(project.id.clone()) {
                    projects.push(project);
                }
            }
            unavailable_ids.extend(page.unavailable_project_ids);
            let page_cursor = page.pagination.and_then(|pagination| pagination.cursor);
            match next_page(
                items_on_page,
                limit,
                page_cursor.as_deref(),
                cursor.as_deref(),
            ) {
                PageStep::Stop => break,
                PageStep::Continue(next) => cursor = Some(next),
            }
        }

        let mut still_unavailable = Vec::new();
        for project_id in unavailable_ids {
            if !seen_ids.insert(project_id.clone()) {
                continue;
            }
            match self.get_project(&project_id).await {
                Ok(project) => projects.push(project),
                Err(error @ NeonError::Unauthorized { .. }) => return Err(error),
                Err(error) => {
                    tracing::warn!(project_id, %error, "Neon listed a project as unavailable and it could not be fetched");
                    still_unavailable.push(project_id);
                }
            }
        }
        Ok(ProjectListing {
            projects,
            unavailable_project_ids: still_unavailable,
        })
    }

    pub async fn get_project(&self, project_id: &str) -> Result<ProjectSummary, NeonError> {
        let call = ApiCall::new(Method::GET, &["projects", project_id]);
        let answer: ProjectResponse = self.fetch(&call).await?;
        Ok(answer.project)
    }

    /// Every branch of the project, following `pagination.next`.
    pub async fn list_branches(&self, project_id: &str) -> Result<Vec<Branch>, NeonError> {
        self.list_branches_matching(project_id, None).await
    }

    /// The branch with `default: true`.
    pub async fn default_branch(&self, project_id: &str) -> Result<Branch, NeonError> {
        self.list_branches(project_id)
            .await?
            .into_iter()
            .find(|branch| branch.default)
            .ok_or_else(|| NeonError::NoDefaultBranch {
                project_id: project_id.to_string(),
            })
    }

    pub async fn get_branch(&self, project_id: &str, branch_id: &str) -> Result<Branch, NeonError> {
        let call = ApiCall::new(
            Method::GET,
            &["projects", project_id, "branches", branch_id],
        );
        let answer: BranchResponse = self.fetch(&call).await?;
        Ok(answer.branch)
    }

    /// Creates a branch with a read_write endpoint and waits until every returned operation is
    /// terminal and the branch is `ready`. Idempotent by name: when the POST's outcome is unknown
    /// (network error, 500, 524) or it answers 409 for our own name, re-read the branches by
    /// name and adopt the existing one.
    ///
    /// An adopted branch must have the requested parent (the default branch when none was
    /// requested), otherwise [`NeonError::BranchNameTaken`].
    pub async fn create_branch(
        &self,
        project_id: &str,
        request: &CreateBranch,
    ) -> Result<CreatedBranch, NeonError> {
        self.create_branch_then(project_id, request, true).await
    }

    /// [`NeonClient::create_branch`] for a branch that is connected to at once: when the
    /// answer carries the branch point and a connection URI, it returns without waiting for the
    /// operations (`unsettled`): a connection to the new endpoint waits for its compute, and
    /// the caller may check the operations later with [`NeonClient::settle_operations`], in
    /// the same read as the delete's. Otherwise it waits as `create_branch` does.
    pub async fn create_branch_unsettled(
        &self,
        project_id: &str,
        request: &CreateBranch,
    ) -> Result<CreatedBranch, NeonError> {
        self.create_branch_then(project_id, request, false).await
    }

    async fn create_branch_then(
        &self,
        project_id: &str,
        request: &CreateBranch,
        settle: bool,
    ) -> Result<CreatedBranch, NeonError> {
        let deadline = Instant::now() + self.inner.config.operation_timeout;
        let body = create_branch_body(request);
        let mut unknown_outcomes: u32 = 0;
        loop {
            let call = ApiCall::new(Method::POST, &["projects", project_id, "branches"])
                .body(body.clone());
            let error = match self.call(&call).await {
                Ok(answer) => {
                    let created: CreatedBranchResponse = self.decode(&call, &answer)?;
                    let connection_uri = created
                        .connection_uris
                        .into_iter()
                        .next()
                        .map(|details| SecretUri::new(details.connection_uri));
                    if !settle && connection_uri.is_some() && created.branch.parent_lsn.is_some() {
                        if let Some(failed) = created.operations.iter().find(|operation| {
                            operation_progress(&operation.status) == OperationProgress::Failed
                        }) {
                            return Err(operation_failed(project_id, failed));
                        }
                        return Ok(CreatedBranch {
                            branch: created.branch,
                            connection_uri,
                            unsettled: created.operations,
                        });
                    }
                    self.wait_for_operations(project_id, &created.operations)
                        .await?;
                    // A branch waited for is returned `ready`, as Neon reports it then.
                    let branch = self
                        .wait_until_branch_ready(project_id, &created.branch.id, deadline)
                        .await?;
                    return Ok(CreatedBranch {
                        branch,
                        connection_uri,
                        unsettled: Vec::new(),
                    });
                }
                Err(error) if error.status() == Some(409) || error.is_outcome_unknown() => error,
                Err(error) => return Err(error),
            };

            let mut branches = self.list_branches(project_id).await?;
            if error.status() == Some(409) && unknown_outcomes > 0 {
                // Our earlier POST, whose answer was lost, took the name: Neon refuses a second
                // branch of one name, so it exists even if the list (its reads lag) hides it.
                // Read again until it shows; never POST a third time.
                branches = self
                    .list_until_named(project_id, &request.name, branches, deadline)
                    .await?;
            }
            if let Some(existing) = branches.iter().find(|branch| branch.name == request.name) {
                let requested_parent = match &request.parent_id {
                    Some(parent_id) => Some(parent_id.clone()),
                    None => branches
                        .iter()
                        .find(|branch| branch.default)
                        .map(|branch| branch.id.clone()),
                };
                if existing.parent_id != requested_parent {
                    return Err(NeonError::BranchNameTaken {
                        project_id: project_id.to_string(),
                        name: request.name.clone(),
                        existing_branch_id: existing.id.clone(),
                        existing_parent: existing
                            .parent_id
                            .clone()
                            .unwrap_or_else(|| "none".into()),
                        requested_parent: requested_parent.unwrap_or_else(|| "none".into()),
                    });
                }
                tracing::info!(
                    project_id,
                    branch_id = %existing.id,
                    branch_name = %existing.name,
                    cause = %error,
                    "adopting the existing branch of the requested name"
                );
                let branch = self
                    .settle_branch(project_id, &existing.id, deadline)
                    .await?;
                return Ok(CreatedBranch {
                    branch,
                    connection_uri: None,
                    unsettled: Vec::new(),
                });
            }
            if error.status() == Some(409) {
                return Err(error);
            }
            unknown_outcomes += 1;
            self.pause_before_resend(&call, &error, unknown_outcomes)
                .await
                .map_err(|()| error)?;
        }
    }

    /// Sets a branch's `expires_at` (RFC 3339, at most 30 days ahead on Neon) and waits for its
    /// operations. Setting the same expiry twice is harmless, so an unknown outcome is resent.
    pub async fn set_branch_expiry(
        &self,
        project_id: &str,
        branch_id: &str,
        expires_at: &str,
    ) -> Result<(), NeonError> {
        let body = serde_json::json!({"branch": {"expires_at": expires_at}});
        let mut unknown_outcomes: u32 = 0;
        loop {
            let call = ApiCall::new(
                Method::PATCH,
                &["projects", project_id, "branches", branch_id],
            )
            .body(body.clone());
            let error = match self.call(&call).await {
                Ok(answer) => {
                    let updated: BranchOperationsResponse = self.decode(&call, &answer)?;
                    return self
                        .wait_for_operations(project_id, &updated.operations)
                        .await;
                }
                Err(error) if error.is_outcome_unknown() => error,
                Err(error) => return Err(error),
            };
            unknown_outcomes += 1;
            self.pause_before_resend(&call, &error, unknown_outcomes)
                .await
                .map_err(|()| error)?;
        }
    }

    /// The project's branches, re-read until one is named `name` or `deadline` passes (then the
    /// last list is returned as it is).
    async fn list_until_named(
        &self,
        project_id: &str,
        name: &str,
        mut branches: Vec<Branch>,
        deadline: Instant,
    ) -> Result<Vec<Branch>, NeonError> {
        while !branches.iter().any(|branch| branch.name == name) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(self.jittered_poll_interval().min(deadline - now)).await;
            branches = self.list_branches(project_id).await?;
        }
        Ok(branches)
    }

    /// Waits for its operations; 204/404 count as already deleted.
    pub async fn delete_branch(&self, project_id: &str, branch_id: &str) -> Result<(), NeonError> {
        self.delete_branch_then(project_id, branch_id, true)
            .await
            .map(|_| ())
    }

    /// Asks Neon to delete the branch and returns once Neon accepted it, without waiting for
    /// its operations: a throwaway branch's deletion decides nothing that follows, and its
    /// expiry (and `gc`) remove it should the operation fail. 204/404 count as already deleted.
    pub async fn request_branch_delete(
        &self,
        project_id: &str,
        branch_id: &str,
    ) -> Result<Vec<Operation>, NeonError> {
        self.delete_branch_then(project_id, branch_id, false).await
    }

    /// Deletes; with `wait`, waits for the operations and returns none, otherwise returns them.
    async fn delete_branch_then(
        &self,
        project_id: &str,
        branch_id: &str,
        wait: bool,
    ) -> Result<Vec<Operation>, NeonError> {
        let mut unknown_outcomes: u32 = 0;
        loop {
            let call = ApiCall::new(
                Method::DELETE,
                &["projects", project_id, "branches", branch_id],
            );
            let error = match self.call(&call).await {
                Ok(answer) if answer.status == 204 || answer.body.is_empty() => {
                    return Ok(Vec::new());
                }
                Ok(answer) => {
                    let deleted: BranchOperationsResponse = self.decode(&call, &answer)?;
                    if !wait {
                        return Ok(deleted.operations);
                    }
                    self.wait_for_operations(project_id, &deleted.operations)
                        .await?;
                    return Ok(Vec::new());
                }
                Err(error) if error.status() == Some(404) => return Ok(Vec::new()),
                Err(error) if error.is_outcome_unknown() => error,
                Err(error) => return Err(error),
            };
            match self.get_branch(project_id, branch_id).await {
                Err(reread) if reread.status() == Some(404) => return Ok(Vec::new()),
                Err(reread) => return Err(reread),
                Ok(_still_there) => {}
            }
            unknown_outcomes += 1;
            self.pause_before_resend(&call, &error, unknown_outcomes)
                .await
                .map_err(|()| error)?;
        }
    }

    /// A mutation that took effect although its answer was lost: wait for whatever operations
    /// it started on the branch, then for the branch to be ready.
    async fn settle_branch(
        &self,
        project_id: &str,
        branch_id: &str,
        deadline: Instant,
    ) -> Result<Branch, NeonError> {
        let in_flight = self
            .in_flight_operations_of_branch(project_id, branch_id)
            .await?;
        self.wait_for_operations(project_id, &in_flight).await?;
        self.wait_until_branch_ready(project_id, branch_id, deadline)
            .await
    }

    /// Waits for its operations and returns the restored branch.
    pub async fn restore_branch(
        &self,
        project_id: &str,
        branch_id: &str,
        request: &RestoreBranch,
    ) -> Result<Branch, NeonError> {
        let deadline = Instant::now() + self.inner.config.operation_timeout;
        // The reset stamp before the restore lets an unknown outcome be settled by a re-read.
        let before = self.get_branch(project_id, branch_id).await?;
        let body = serde_json::to_value(request).map_err(|error| NeonError::Config {
            message: format!("cannot encode the restore request: {error}"),
        })?;
        let mut unknown_outcomes: u32 = 0;
        loop {
            let call = ApiCall::new(
                Method::POST,
                &["projects", project_id, "branches", branch_id, "restore"],
            )
            .body(body.clone());
            let error = match self.call(&call).await {
                Ok(answer) => {
                    let restored: BranchOperationsResponse = self.decode(&call, &answer)?;
                    self.wait_for_operations(project_id, &restored.operations)
                        .await?;
                    return self
                        .wait_until_branch_ready(project_id, branch_id, deadline)
                        .await;
                }
                Err(error) if error.is_outcome_unknown() => error,
                // A resend refused because `preserve_under_name` is taken: by the first POST,
                // whose answer was lost while the reads lagged. It did take effect.
                Err(error)
                    if error.status() == Some(409)
                        && unknown_outcomes > 0
                        && request.preserve_under_name.is_some() =>
                {
                    tracing::info!(
                        project_id,
                        branch_id,
                        "the first restore took effect (its preserved branch holds the name)"
                    );
                    return self.settle_branch(project_id, branch_id, deadline).await;
                }
                Err(error) => return Err(error),
            };
            if self
                .restore_took_effect(project_id, branch_id, &before, request)
                .await?
            {
                tracing::info!(project_id, branch_id, cause = %error, "the restore took effect despite the failed answer");
                return self.settle_branch(project_id, branch_id, deadline).await;
            }
            unknown_outcomes += 1;
            self.pause_before_resend(&call, &error, unknown_outcomes)
                .await
                .map_err(|()| error)?;
        }
    }

    /// Whether a restore whose answer was lost took effect: the branch's `last_reset_at` moved,
    /// or (when that read lags) the branch it preserves the old state under exists.
    async fn restore_took_effect(
        &self,
        project_id: &str,
        branch_id: &str,
        before: &Branch,
        request: &RestoreBranch,
    ) -> Result<bool, NeonError> {
        let now = self.get_branch(project_id, branch_id).await?;
        if now.last_reset_at.is_some() && now.last_reset_at != before.last_reset_at {
            return Ok(true);
        }
        let Some(preserved) = &request.preserve_under_name else {
            return Ok(false);
        };
        let branches = self.list_branches(project_id).await?;
        Ok(branches.iter().any(|branch| &branch.name == preserved))
    }

    /// Direct (never pooled) URI; branch_id None = the default branch.
    pub async fn connection_uri(
        &self,
        project_id: &str,
        branch_id: Option<&str>,
        database: &str,
        role: &str,
    ) -> Result<SecretUri, NeonError> {
        let mut call = ApiCall::new(Method::GET, &["projects", project_id, "connection_uri"])
            .query("database_name", database)
            .query("role_name", role)
            .query("pooled", "false");
        if let Some(branch_id) = branch_id {
            call = call.query("branch_id", branch_id);
        }
        let answer: ConnectionUriResponse = self.fetch(&call).await?;
        Ok(SecretUri::new(answer.uri))
    }

    /// Poll until every operation is terminal: `finished`/`skipped` succeed, `error`/`cancelled`
    /// fail at once, `failed` is given until the deadline to recover (Neon retries it).
    ///
    /// The first poll goes out when this run's mutations of the same kind have typically
    /// settled ([`SettleTimes`]), later ones at half that; each round reads every pending
    /// operation in one request (the project's operation list, newest first), so a create's
    /// `create_branch` and `start_compute` cost one poll together.
    pub async fn wait_for_operations(
        &self,
        project_id: &str,
        operations: &[Operation],
    ) -> Result<(), NeonError> {
        self.settle_operations(project_id, operations, &[], Instant::now())
            .await
    }

    /// Wait for `operations`, started by a mutation answered at `since`: the first poll goes
    /// out when this run's mutations of their kind have typically settled since then. The
    /// `earlier` ones (of a mutation before, never polled: a create whose branch was used at
    /// once) are checked in the same reads, so a create and its delete settle in one request.
    pub async fn settle_operations(
        &self,
        project_id: &str,
        operations: &[Operation],
        earlier: &[Operation],
        since: Instant,
    ) -> Result<(), NeonError> {
        let started = since;
        let deadline = started + self.inner.config.operation_timeout;
        let kind = SettleTimes::kind(operations.iter().map(|operation| operation.action.as_str()));
        let timed: HashSet<&str> = operations
            .iter()
            .map(|operation| operation.id.as_str())
            .collect();
        let mut durations: HashMap<String, Option<u64>> = HashMap::new();
        let mut pending = Vec::new();
        for operation in earlier.iter().chain(operations) {
            match operation_progress(&operation.status) {
                OperationProgress::Succeeded => {
                    if timed.contains(operation.id.as_str()) {
                        durations.insert(operation.id.clone(), operation.total_duration_ms);
                    }
                }
                OperationProgress::Failed => return Err(operation_failed(project_id, operation)),
                OperationProgress::InFlight | OperationProgress::FailedRetrying => {
                    pending.push(operation.clone());
                }
            }
        }
        let mut first = true;
        while !pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return Err(operations_timed_out(project_id, &pending, now - started));
            }
            let wait = {
                let times = self.settle_times();
                let interval = self.jittered_poll_interval();
                if first {
                    times
                        .first_poll(&kind, interval)
                        .saturating_sub(started.elapsed())
                } else {
                    times.next_poll(&kind, interval)
                }
            };
            first = false;
            tokio::time::sleep(wait.min(deadline - now)).await;
            for fresh in self.read_operations(project_id, &pending).await? {
                match operation_progress(&fresh.status) {
                    OperationProgress::Succeeded => {
                        if timed.contains(fresh.id.as_str()) {
                            durations.insert(fresh.id.clone(), fresh.total_duration_ms);
                        }
                        pending.retain(|operation| operation.id != fresh.id);
                    }
                    OperationProgress::Failed => {
                        return Err(operation_failed(project_id, &fresh));
                    }
                    OperationProgress::InFlight | OperationProgress::FailedRetrying => {
                        if let Some(slot) = pending.iter_mut().find(|op| op.id == fresh.id) {
                            *slot = fresh;
                        }
                    }
                }
            }
        }
        if !durations.is_empty() {
            // The chain's own run time when Neon reports it, else what we waited (an upper
            // bound, which only errs towards one poll).
            let reported: Option<u64> = durations.values().copied().sum();
            let settled_ms = reported.map_or_else(
                || started.elapsed().as_secs_f64() * 1000.0,
                |total| total as f64,
            );
            self.settle_times().observe(&kind, settled_ms);
        }
        Ok(())
    }

    /// How long after it was answered a mutation that started `operations` has typically
    /// settled in this run (with the first poll's margin); `None` before this run has seen a
    /// mutation of its kind finish.
    pub fn typically_settled_after(&self, operations: &[Operation]) -> Option<Duration> {
        let kind = SettleTimes::kind(operations.iter().map(|operation| operation.action.as_str()));
        self.settle_times().settled_after(&kind)
    }

    fn settle_times(&self) -> std::sync::MutexGuard<'_, SettleTimes> {
        // A plain table of numbers: a poisoned lock is still usable.
        self.inner
            .settle_times
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current state of `pending` operations in one request: one `GET` of the operation
    /// when there is one, else the project's newest operations (those of a mutation just made
    /// are on the first page); any the page does not show are read one by one.
    async fn read_operations(
        &self,
        project_id: &str,
        pending: &[Operation],
    ) -> Result<Vec<Operation>, NeonError> {
        let read_one = |id: &str| {
            let call = ApiCall::new(Method::GET, &["projects", project_id, "operations", id])
                .retry_not_found();
            async move {
                let fresh: OperationResponse = self.fetch(&call).await?;
                Ok::<Operation, NeonError>(fresh.operation)
            }
        };
        if let [only] = pending {
            return Ok(vec![read_one(&only.id).await?]);
        }
        #[derive(serde::Deserialize)]
        struct OperationsPage {
            #[serde(default)]
            operations: Vec<Operation>,
        }
        let limit = (pending.len() * 4).clamp(10, 100);
        let call = ApiCall::new(Method::GET, &["projects", project_id, "operations"])
            .query("limit", limit.to_string());
        let page: OperationsPage = self.fetch(&call).await?;
        let mut fresh = Vec::with_capacity(pending.len());
        for operation in pending {
            match page
                .operations
                .iter()
                .find(|listed| listed.id == operation.id)
            {
                Some(listed) => fresh.push(listed.clone()),
                None => fresh.push(read_one(&operation.id).await?),
            }
        }
        Ok(fresh)
    }

    pub fn stats(&self) -> ClientStats {
        let stats = &self.inner.stats;
        ClientStats {
            requests: stats.requests.load(Ordering::Relaxed),
            retries: stats.retries.load(Ordering::Relaxed),
            mutations: stats.mutations.load(Ordering::Relaxed),
            rate_limited: stats.rate_limited.load(Ordering::Relaxed),
            rate_limiter_wait_ms: stats.rate_limiter_wait_ms.load(Ordering::Relaxed),
        }
    }

    // ---- internals ---------------------------------------------------------------------------

    fn page_size(&self) -> u32 {
        self.inner.config.page_size.clamp(1, MAX_PROJECT_PAGE_SIZE)
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.inner.config.backoff_base,
            cap: self.inner.config.backoff_cap,
        }
    }

    fn jittered_poll_interval(&self) -> Duration {
        self.inner
            .config
            .poll_interval
            .mul_f64(0.8 + 0.4 * rand::random::<f64>())
    }

    async fn list_branches_matching(
        &self,
        project_id: &str,
        search: Option<&str>,
    ) -> Result<Vec<Branch>, NeonError> {
        let limit = self.page_size();
        let mut branches = Vec::new();
        let mut seen_ids = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut call = ApiCall::new(Method::GET, &["projects", project_id, "branches"])
                .query("limit", limit.to_string());
            if let Some(search) = search {
                call = call.query("search", search);
            }
            if let Some(cursor) = &cursor {
                call = call.query("cursor", cursor.clone());
            }
            let page: BranchesPage = self.fetch(&call).await?;
            let items_on_page = page.branches.len();
            for branch in page.branches {
                if seen_ids.insert(branch.id.clone()) {
                    branches.push(branch);
                }
            }
            let page_cursor = page.pagination.and_then(|pagination| pagination.next);
            match next_page(
                items_on_page,
                limit,
                page_cursor.as_deref(),
                cursor.as_deref(),
            ) {
                PageStep::Stop => break,
                PageStep::Continue(next) => cursor = Some(next),
            }
        }
        Ok(branches)
    }

    /// Operations of one branch that are not terminal yet: what an adopted create or restore
    /// still has running.
    async fn in_flight_operations_of_branch(
        &self,
        project_id: &str,
        branch_id: &str,
    ) -> Result<Vec<Operation>, NeonError> {
        #[derive(serde::Deserialize)]
        struct OperationsPage {
            #[serde(default)]
            operations: Vec<Operation>,
        }
        let call = ApiCall::new(Method::GET, &["projects", project_id, "operations"])
            .query("limit", "100");
        let page: OperationsPage = self.fetch(&call).await?;
        let mut in_flight: Vec<Operation> = page
            .operations
            .into_iter()
            .filter(|operation| operation.branch_id.as_deref() == Some(branch_id))
            .filter(|operation| {
                operation_progress(&operation.status) != OperationProgress::Succeeded
            })
            .collect();
        // The listing is newest first; polling goes oldest first, in chain order.
        in_flight.reverse();
        Ok(in_flight)
    }

    /// Poll the branch until it is `ready`; 404s just after a create are retried briefly.
    async fn wait_until_branch_ready(
        &self,
        project_id: &str,
        branch_id: &str,
        deadline: Instant,
    ) -> Result<Branch, NeonError> {
        let started = Instant::now();
        loop {
            let call = ApiCall::new(
                Method::GET,
                &["projects", project_id, "branches", branch_id],
            )
            .retry_not_found();
            let answer: BranchResponse = self.fetch(&call).await?;
            if answer.branch.is_ready() {
                return Ok(answer.branch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NeonError::BranchNotReady {
                    project_id: project_id.to_string(),
                    branch_id: branch_id.to_string(),
                    state: answer.branch.current_state,
                    waited_secs: (now - started).as_secs(),
                });
            }
            tokio::time::sleep(self.jittered_poll_interval().min(deadline - now)).await;
        }
    }

    /// Backoff before re-sending a mutation whose earlier outcome a re-read showed did not take
    /// effect. `Err(())` when the attempt budget is spent.
    async fn pause_before_resend(
        &self,
        call: &ApiCall,
        error: &NeonError,
        unknown_outcomes: u32,
    ) -> Result<(), ()> {
        if unknown_outcomes >= self.inner.config.max_attempts.max(1) {
            return Err(());
        }
        let delay = self
            .backoff()
            .delay(unknown_outcomes - 1, rand::random::<f64>());
        self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            method = %call.method,
            path = %call.display_path(),
            %error,
            delay_ms = delay.as_millis() as u64,
            "the mutation did not take effect; sending it again"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn fetch<T: DeserializeOwned>(&self, call: &ApiCall) -> Result<T, NeonError> {
        let answer = self.call(call).await?;
        self.decode(call, &answer)
    }

    fn decode<T: DeserializeOwned>(&self, call: &ApiCall, answer: &Answer) -> Result<T, NeonError> {
        serde_json::from_slice(&answer.body).map_err(|error| NeonError::Decode {
            method: call.method.to_string(),
            path: call.display_path(),
            status: answer.status,
            // serde quotes offending values, which could be a connection URI.
            message: redact_uri(&error.to_string()),
        })
    }

    /// Send `call`, retrying what the retry policy allows; see the module header.
    async fn call(&self, call: &ApiCall) -> Result<Answer, NeonError> {
        let kind = call.kind();
        let path = call.display_path();
        let method_name = call.method.to_string();
        let url = self.url(call)?;
        let config = &self.inner.config;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let sent = self.send_once(call, &url, &path).await;
            if sent.is_ok() {
                self.inner.answered.store(true, Ordering::Relaxed);
            }
            let (disposition, retry_after, error) = match sent {
                Ok(raw) if (200..300).contains(&raw.status) => {
                    return Ok(Answer {
                        status: raw.status,
                        body: raw.body,
                    });
                }
                Ok(raw) => {
                    let (message, code, request_id) = error_details(&raw);
                    if raw.status == 429 {
                        self.inner
                            .stats
                            .rate_limited
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let disposition =
                        classify_status(raw.status, kind, &message, call.retry_not_found);
                    let error = if disposition == Disposition::Unauthorized {
                        NeonError::Unauthorized {
                            method: method_name.clone(),
                            path: path.clone(),
                            status: raw.status,
                            message,
                            request_id,
                        }
                    } else {
                        NeonError::Api {
                            method: method_name.clone(),
                            path: path.clone(),
                            status: raw.status,
                            code,
                            message,
                            request_id,
                        }
                    };
                    (disposition, raw.retry_after, error)
                }
                Err(error) => {
                    let connect_failure = matches!(
                        error,
                        NeonError::Network {
                            connect_failure: true,
                            ..
                        }
                    );
                    let disposition = match classify_network_failure(kind, connect_failure) {
                        Disposition::Retry(_)
                            if connect_failure && !self.inner.answered.load(Ordering::Relaxed) =>
                        {
                            Disposition::Retry(RetryBudget::Brief)
                        }
                        disposition => disposition,
                    };
                    (disposition, None, error)
                }
            };
            let budget = match disposition {
                Disposition::Retry(budget) => budget,
                Disposition::Success
                | Disposition::OutcomeUnknown
                | Disposition::Unauthorized
                | Disposition::Fail => return Err(error),
            };
            let attempt_limit = match budget {
                RetryBudget::Full => config.max_attempts.max(1),
                RetryBudget::Brief => config.max_attempts.clamp(1, BRIEF_ATTEMPTS),
            };
            if attempt >= attempt_limit {
                return Err(error);
            }
            if retry_after.is_some_and(|asked| asked > config.max_retry_after) {
                return Err(error);
            }
            let delay = retry_delay(
                &self.backoff(),
                attempt - 1,
                rand::random::<f64>(),
                retry_after,
            );
            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                method = %method_name,
                path = %path,
                attempt,
                delay_ms = delay.as_millis() as u64,
                %error,
                "retrying Neon API request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One HTTP exchange, through the rate limiter.
    async fn send_once(
        &self,
        call: &ApiCall,
        url: &Url,
        path: &str,
    ) -> Result<RawAnswer, NeonError> {
        let inner = &self.inner;
        let waited = inner.limiter.acquire().await;
        inner
            .stats
            .rate_limiter_wait_ms
            .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        if call.kind() == RequestKind::Mutation {
            inner.stats.mutations.fetch_add(1, Ordering::Relaxed);
        }

        let request_id = new_request_id();
        let mut request = inner
            .http
            .request(call.method.clone(), url.clone())
            .bearer_auth(inner.config.api_key.expose())
            .header(ACCEPT, "application/json")
            .header("X-Request-ID", &request_id);
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let method = call.method.as_str();
        let timeout = inner.config.request_timeout;
        let response = request
            .send()
            .await
            .map_err(|error| NeonError::network(method, path, &error, timeout))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, OffsetDateTime::now_utc()));
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| NeonError::network(method, path, &error, timeout))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(NeonError::Decode {
                    method: method.to_string(),
                    path: path.to_string(),
                    status,
                    message: format!(
                        "the body is larger than {} MiB, more than any Neon API answer; check \
                         that NEON_API_URL points at the Neon API",
                        MAX_RESPONSE_BYTES >> 20
                    ),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawAnswer {
            status,
            retry_after,
            body,
            request_id,
        })
    }

    fn url(&self, call: &ApiCall) -> Result<Url, NeonError> {
        let mut url = self.inner.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| NeonError::Config {
                message: format!("base URL `{}` cannot take a path", self.inner.base_url),
            })?
            .pop_if_empty()
            .extend(&call.segments);
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }
        Ok(url)
    }
}

/// `(message, code, request_id)` of an error answer; bodies that are not Neon's `GeneralError`
/// (Cloudflare's 524 page, a proxy's text) become a short description.
fn error_details(raw: &RawAnswer) -> (String, String, String) {
    let parsed: Option<GeneralError> = serde_json::from_slice(&raw.body).ok();
    match parsed {
        Some(general) if !general.message.is_empty() => (
            redact_uri(&general.message),
            general.code,
            general.request_id.unwrap_or_else(|| raw.request_id.clone()),
        ),
        _ => (
            describe_foreign_body(&raw.body),
            String::new(),
            raw.request_id.clone(),
        ),
    }
}

fn describe_foreign_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no error message in the answer".to_string()
    } else if text.starts_with('<') {
        "an HTML error page (a proxy or Cloudflare answered instead of Neon)".to_string()
    } else {
        let one_line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        redact_uri(&one_line)
    }
}

fn operation_failed(project_id: &str, operation: &Operation) -> NeonError {
    NeonError::OperationFailed {
        project_id: project_id.to_string(),
        operation_id: operation.id.clone(),
        action: operation.action.clone(),
        status: operation.status.clone(),
        detail: operation
            .error
            .as_deref()
            .map(redact_uri)
            .unwrap_or_else(|| "Neon gave no error text".into()),
    }
}

fn operations_timed_out(project_id: &str, pending: &[Operation], waited: Duration) -> NeonError {
    // An operation still `failed` at the deadline is a failure, not a slow operation.
    if let Some(failed) = pending.iter().find(|operation| {
        operation_progress(&operation.status) == OperationProgress::FailedRetrying
    }) {
        return operation_failed(project_id, failed);
    }
    NeonError::OperationTimeout {
        project_id: project_id.to_string(),
        pending: pending
            .iter()
            .map(|operation| {
                format!(
                    "{} ({}: {})",
                    operation.id, operation.action, operation.status
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        waited_secs: waited.as_secs(),
    }
}

/// A random UUID v4 for `X-Request-ID`, so a failed call can be traced in Neon's logs.
fn new_request_id() -> String {
    let random: u128 = rand::random();
    let version_cleared = random & !(0xF_u128 << 76) & !(0x3_u128 << 62);
    let bits = version_cleared | (0x4_u128 << 76) | (0x2_u128 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base_url: &str) -> NeonClient {
        NeonClient::new(ClientConfig::new(
            base_url,
            SecretString::new("napi_supersecretkey"),
            600,
        ))
        .unwrap()
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn urls_join_the_base_path_and_encode_segments_and_query() {
        let client = client("https://console.neon.tech/api/v2/");
        let call = ApiCall::new(Method::GET, &["projects", "p 1", "connection_uri"])
            .query("role_name", "neondb_owner")
            .query("database_name", "a&b");
        assert_eq!(
            client.url(&call).unwrap().as_str(),
            "https://console.neon.tech/api/v2/projects/p%201/connection_uri?role_name=neondb_owner&database_name=a%26b"
        );
        assert_eq!(call.display_path(), "/projects/p 1/connection_uri");
    }

    #[test]
    fn config_errors_name_the_variable_to_fix() {
        let empty_key = NeonClient::new(ClientConfig::new(
            "https://console.neon.tech/api/v2",
            SecretString::new(""),
            600,
        ))
        .unwrap_err();
        assert!(
            empty_key.to_string().contains("NEON_API_KEY"),
            "{empty_key}"
        );
        let bad_url = NeonClient::new(ClientConfig::new(
            "console.neon.tech",
            SecretString::new("k"),
            600,
        ))
        .unwrap_err();
        assert!(bad_url.to_string().contains("NEON_API_URL"), "{bad_url}");
        let cleartext = NeonClient::new(ClientConfig::new(
            "http://neon.example.com/api/v2",
            SecretString::new("k"),
            600,
        ))
        .unwrap_err();
        assert!(cleartext.to_string().contains("cleartext"), "{cleartext}");
        for local in [
            "http://127.0.0.1:4000/api/v2",
            "http://localhost:4000/api/v2",
            "http://[::1]:4000/api/v2",
        ] {
            NeonClient::new(ClientConfig::new(local, SecretString::new("k"), 600))
                .unwrap_or_else(|error| panic!("{local}: {error}"));
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let client = client("https://console.neon.tech/api/v2");
        let config = ClientConfig::new(
            "https://console.neon.tech/api/v2",
            SecretString::new("napi_supersecretkey"),
            600,
        );
        let shown = format!("{client:?} {config:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
    }

    #[test]
    fn foreign_error_bodies_are_summarised_without_secrets() {
        assert!(describe_foreign_body(b"<html><body>524 timeout</body></html>").contains("HTML"));
        assert_eq!(
            describe_foreign_body(b"  "),
            "no error message in the answer"
        );
        let text = describe_foreign_body(b"bad gateway for postgres://u:pw@h/db");
        assert!(!text.contains("pw@"), "{text}");
    }

    #[test]
    fn error_details_prefer_neon_fields_and_fall_back_to_our_request_id() {
        let raw = RawAnswer {
            status: 423,
            retry_after: None,
            body: br#"{"code":"","message":"project already has running conflicting operations, scheduling of new ones is prohibited"}"#.to_vec(),
            request_id: "ours".into(),
        };
        let (message, code, request_id) = error_details(&raw);
        assert!(message.starts_with("project already has running"));
        assert_eq!(code, "");
        assert_eq!(request_id, "ours");
    }

    #[test]
    fn timeout_reports_pending_operations_or_a_persistent_failure() {
        let running = Operation {
            id: "op-1".into(),
            action: "create_branch".into(),
            status: "running".into(),
            ..Operation::default()
        };
        let pending = vec![running.clone()];
        let error = operations_timed_out("p", &pending, Duration::from_secs(300));
        assert!(
            error.to_string().contains("op-1 (create_branch: running)"),
            "{error}"
        );
        let failed = Operation {
            status: "failed".into(),
            error: Some("storage timeout".into()),
            ..running
        };
        let pending = vec![failed];
        let error = operations_timed_out("p", &pending, Duration::from_secs(300));
        assert!(
            matches!(error, NeonError::OperationFailed { .. }),
            "{error}"
        );
        assert!(!error.is_retryable());
    }

    /// A client of a port that was just free: connecting to it is refused.
    fn refused_client(key: &str, max_attempts: u32) -> NeonClient {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = ClientConfig::new(
            format!("http://127.0.0.1:{port}/api/v2"),
            SecretString::new(key),
            60_000,
        );
        config.max_attempts = max_attempts;
        config.backoff_base = Duration::from_millis(1);
        NeonClient::new(config).unwrap()
    }

    #[tokio::test]
    async fn an_endless_answer_body_is_cut_at_the_cap() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 1 << 20];
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            // Endless unless the client stops reading: it must give up at the cap.
            while socket.write_all(&framed).await.is_ok() {}
        });
        let mut config = ClientConfig::new(
            format!("http://127.0.0.1:{port}/api/v2"),
            SecretString::new("k"),
            60_000,
        );
        config.max_attempts = 1;
        let error = NeonClient::new(config)
            .unwrap()
            .get_project("p")
            .await
            .unwrap_err();
        assert!(
            matches!(error, NeonError::Decode { .. }) && error.to_string().contains("32 MiB"),
            "{error}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn network_errors_never_show_the_key() {
        let client = refused_client("napi_supersecretkey", 2);
        let error = client.get_project("p").await.unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("GET /projects/p"), "{shown}");
        assert!(error.is_retryable());
        let stats = client.stats();
        assert_eq!((stats.requests, stats.retries), (2, 1));
    }

    #[tokio::test]
    async fn a_host_never_reached_gets_the_brief_retry_budget() {
        let client = refused_client("napi_key", 8);
        let error = client.check_access().await.unwrap_err();
        assert!(
            error.to_string().contains("check network access"),
            "{error}"
        );
        // A wrong URL is reported after BRIEF_ATTEMPTS tries, not the full eight.
        assert_eq!(client.stats().requests, u64::from(BRIEF_ATTEMPTS));
    }
}

//! The Neon API v2 subset over HTTP (axum), all under `/api/v2`.
//!
//! **Invariant:** a mutation runs in a task of its own, so a client that hangs up mid-request
//! cannot leave a database copied but unrecorded.
//! **Invariant:** every error body is a `GeneralError` carrying the request's `request_id` (the
//! client's `X-Request-ID`, else a fresh UUID), except an injected 524, which is Cloudflare's HTML.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::faults::{FaultInjector, RateLimiter, StatsRecorder, route_shape};
use super::ids;
use super::service::{
    BranchListQuery, ConnectionUriQuery, CreateBranchRequest, CreateProjectFields, Emulator,
    RestoreBranchRequest, UpdateBranchRequest,
};
use crate::secret::SecretString;

pub struct HttpContext {
    pub emulator: Arc<Emulator>,
    pub api_key: SecretString,
    pub rate_limiter: Option<RateLimiter>,
    pub faults: FaultInjector,
    pub latency: Duration,
    pub stats: StatsRecorder,
}

type Shared = Arc<HttpContext>;

pub fn router(context: Shared) -> Router {
    let api = Router::new()
        .route("/projects", get(list_projects).post(create_project))
        .route(
            "/projects/{project_id}",
            get(get_project).delete(delete_project),
        )
        .route(
            "/projects/{project_id}/branches",
            get(list_branches).post(create_branch),
        )
        .route("/projects/{project_id}/branches/count", get(count_branches))
        .route(
            "/projects/{project_id}/branches/{branch_id}",
            get(get_branch).patch(update_branch).delete(delete_branch),
        )
        .route(
            "/projects/{project_id}/branches/{branch_id}/restore",
            post(restore_branch),
        )
        .route(
            "/projects/{project_id}/branches/{branch_id}/endpoints",
            get(branch_endpoints),
        )
        .route(
            "/projects/{project_id}/branches/{branch_id}/databases",
            get(branch_databases),
        )
        .route(
            "/projects/{project_id}/branches/{branch_id}/roles",
            get(branch_roles),
        )
        .route(
            "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reveal_password",
            get(reveal_role_password),
        )
        .route("/projects/shared", get(list_shared_projects))
        .route("/projects/{project_id}/endpoints", get(project_endpoints))
        .route(
            "/projects/{project_id}/endpoints/{endpoint_id}/start",
            post(start_endpoint),
        )
        .route(
            "/projects/{project_id}/endpoints/{endpoint_id}/suspend",
            post(suspend_endpoint),
        )
        .route("/projects/{project_id}/operations", get(list_operations))
        .route(
            "/projects/{project_id}/operations/{operation_id}",
            get(get_operation),
        )
        .route("/projects/{project_id}/connection_uri", get(connection_uri))
        .fallback(not_found);
    Router::new()
        .nest("/api/v2", api)
        .route("/emulator/stats", get(emulator_stats))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(context.clone(), gate))
        .with_state(context)
}

/// Authentication, rate limit, faults, latency, `request_id` and counting, for every request.
async fn gate(State(context): State<Shared>, request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(ids::operation_id);
    if !context.latency.is_zero() {
        tokio::time::sleep(context.latency).await;
    }
    let is_mutation = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut injected = false;
    let mut applied_first = false;
    let mut rate_limited = false;

    let mut response = if !authorized(&request, &context.api_key) {
        ApiError::unauthorized("authentication required: send Authorization: Bearer <API key>")
            .into_response()
    } else if let Some(wait) = context
        .rate_limiter
        .as_ref()
        .and_then(|limiter| limiter.take().err())
    {
        rate_limited = true;
        too_many_requests(wait)
    } else if let Some(fault) = context.faults.decide(is_mutation) {
        injected = true;
        if fault.apply_first {
            applied_first = true;
            let _applied = next.run(request).await;
        }
        fault_response(fault.status)
    } else {
        next.run(request).await
    };

    if let Some(error) = response.extensions().get::<ErrorBody>().cloned() {
        let status = response.status();
        let headers = response.headers().clone();
        let body = serde_json::json!({
            "code": error.code,
            "message": error.message,
            "request_id": request_id,
        });
        response = (status, axum::Json(body)).into_response();
        for name in [header::RETRY_AFTER] {
            if let Some(value) = headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        injected,
        "emulator request"
    );
    context.stats.record(
        route_shape(method.as_str(), &path),
        response.status().as_u16(),
        injected,
        applied_first,
        rate_limited,
    );
    response
}

fn authorized(request: &Request, api_key: &SecretString) -> bool {
    let Some(value) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let presented = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or("");
    // An empty key would match an empty presentation: never let that through.
    !api_key.is_empty() && constant_time_eq(presented.as_bytes(), api_key.expose().as_bytes())
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn too_many_requests(wait: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "",
        "rate limit exceeded, please retry later",
    )
    .into_response();
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn fault_response(status: u16) -> Response {
    match status {
        423 => ApiError::locked(
            "project already has running conflicting operations, scheduling of new ones is \
             prohibited",
        )
        .into_response(),
        429 => too_many_requests(Duration::from_secs(1)),
        503 => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "service temporarily unavailable, please retry",
        )
        .into_response(),
        524 => {
            let status = StatusCode::from_u16(524).unwrap_or(StatusCode::GATEWAY_TIMEOUT);
            let body = "<!DOCTYPE html>\n<html><head><title>console.neon.tech | 524: A timeout \
                        occurred</title></head><body><h1>A timeout occurred</h1><p>Error code \
                        524</p><p>The origin web server timed out responding to this request.\
                        </p><p>Cloudflare</p></body></html>\n";
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
                body,
            )
                .into_response()
        }
        _ => ApiError::internal("internal server error").into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::not_found("not found").into_response()
}

fn respond(status: StatusCode, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(body) => (status, axum::Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Bodies are optional where Neon allows it: an empty body is the type's default.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("request body is not valid: {error}")))
}

/// Run a mutation to completion even if the client goes away.
async fn run_detached<F>(work: F) -> Result<Value, ApiError>
where
    F: std::future::Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .unwrap_or_else(|error| Err(ApiError::internal(format!("the request failed: {error}"))))
}

async fn list_projects(
    State(context): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = context.emulator.list_projects(
        query.get("cursor").map(String::as_str),
        query.get("limit").map(String::as_str),
        query.get("search").map(String::as_str),
        query.get("org_id").map(String::as_str),
    );
    respond(StatusCode::OK, result)
}

#[derive(Debug, Default, serde::Deserialize)]
struct CreateProjectRequest {
    project: Option<CreateProjectFields>,
}

async fn create_project(State(context): State<Shared>, body: Bytes) -> Response {
    let request: CreateProjectRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let emulator = context.emulator.clone();
    let result = run_detached(async move {
        emulator
            .create_project(request.project.unwrap_or_default())
            .await
    })
    .await;
    respond(StatusCode::CREATED, result)
}

async fn get_project(State(context): State<Shared>, Path(project_id): Path<String>) -> Response {
    respond(StatusCode::OK, context.emulator.get_project(&project_id))
}

async fn delete_project(State(context): State<Shared>, Path(project_id): Path<String>) -> Response {
    let emulator = context.emulator.clone();
    let result = run_detached(async move { emulator.delete_project(&project_id).await }).await;
    respond(StatusCode::OK, result)
}

async fn list_branches(
    State(context): State<Shared>,
    Path(project_id): Path<String>,
    Query(query): Query<BranchListQuery>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.list_branches(&project_id, &query),
    )
}

async fn count_branches(
    State(context): State<Shared>,
    Path(project_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    respond(
        StatusCode::OK,
        context
            .emulator
            .count_branches(&project_id, query.get("search").map(String::as_str)),
    )
}

async fn create_branch(
    State(context): State<Shared>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Response {
    let request: CreateBranchRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let emulator = context.emulator.clone();
    let result =
        run_detached(async move { emulator.create_branch(&project_id, request).await }).await;
    respond(StatusCode::CREATED, result)
}

async fn get_branch(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.get_branch(&project_id, &branch_id),
    )
}

async fn update_branch(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request: UpdateBranchRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let emulator = context.emulator.clone();
    let result = run_detached(async move {
        emulator
            .update_branch(&project_id, &branch_id, request)
            .await
    })
    .await;
    respond(StatusCode::OK, result)
}

async fn delete_branch(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Response {
    let emulator = context.emulator.clone();
    let result = tokio::spawn(async move { emulator.delete_branch(&project_id, &branch_id).await })
        .await
        .unwrap_or_else(|error| Err(ApiError::internal(format!("the request failed: {error}"))));
    match result {
        Ok(Some(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn restore_branch(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request: RestoreBranchRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let emulator = context.emulator.clone();
    let result = run_detached(async move {
        emulator
            .restore_branch(&project_id, &branch_id, request)
            .await
    })
    .await;
    respond(StatusCode::OK, result)
}

async fn branch_endpoints(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.branch_endpoints(&project_id, &branch_id),
    )
}

async fn branch_databases(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.branch_databases(&project_id, &branch_id),
    )
}

async fn branch_roles(
    State(context): State<Shared>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.branch_roles(&project_id, &branch_id),
    )
}

async fn reveal_role_password(
    State(context): State<Shared>,
    Path((project_id, branch_id, role_name)): Path<(String, String, String)>,
) -> Response {
    respond(
        StatusCode::OK,
        context
            .emulator
            .reveal_role_password(&project_id, &branch_id, &role_name),
    )
}

async fn project_endpoints(
    State(context): State<Shared>,
    Path(project_id): Path<String>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.project_endpoints(&project_id),
    )
}

async fn list_operations(
    State(context): State<Shared>,
    Path(project_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.list_operations(
            &project_id,
            query.get("cursor").map(String::as_str),
            query.get("limit").map(String::as_str),
        ),
    )
}

async fn get_operation(
    State(context): State<Shared>,
    Path((project_id, operation_id)): Path<(String, String)>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.get_operation(&project_id, &operation_id),
    )
}

async fn connection_uri(
    State(context): State<Shared>,
    Path(project_id): Path<String>,
    Query(query): Query<ConnectionUriQuery>,
) -> Response {
    respond(
        StatusCode::OK,
        context.emulator.connection_uri(&project_id, &query),
    )
}

async fn list_shared_projects(State(context): State<Shared>) -> Response {
    respond(StatusCode::OK, Ok(context.emulator.list_shared_projects()))
}

async fn start_endpoint(
    State(context): State<Shared>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Response {
    change_endpoint_state(context, project_id, endpoint_id, true).await
}

async fn suspend_endpoint(
    State(context): State<Shared>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Response {
    change_endpoint_state(context, project_id, endpoint_id, false).await
}

async fn change_endpoint_state(
    context: Shared,
    project_id: String,
    endpoint_id: String,
    start: bool,
) -> Response {
    let emulator = context.emulator.clone();
    let result = run_detached(async move {
        emulator
            .change_endpoint_state(&project_id, &endpoint_id, start)
            .await
    })
    .await;
    respond(StatusCode::OK, result)
}

/// Emulator-only, outside `/api/v2`: the API's request counters and the compute layer's
/// connections, round trips, cold starts and compute seconds (per endpoint and in total).
async fn emulator_stats(State(context): State<Shared>) -> Response {
    let api = context.stats.snapshot();
    let body = serde_json::json!({
        "api": {
            "requests": api.requests,
            "rate_limited": api.rate_limited,
            "injected_faults": api.injected_faults,
            "by_route": api.by_route,
        },
        "compute": context.emulator.computes.stats(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// At most this many client connections are served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 512;

/// A connection that sends nothing for this long is closed: a slow or stalled client cannot
/// hold one of the [`MAX_CONNECTIONS`] forever. Longer than HTTP clients keep idle pooled
/// connections (reqwest: 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The emulator's listener: a cap on open connections and an idle timeout on each, so many or
/// slow clients cannot exhaust its file descriptors and tasks.
pub struct GuardedListener {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
    idle_timeout: Duration,
}

impl GuardedListener {
    pub fn new(inner: tokio::net::TcpListener) -> Self {
        Self::with_limits(inner, MAX_CONNECTIONS, IDLE_TIMEOUT)
    }

    fn with_limits(
        inner: tokio::net::TcpListener,
        max_connections: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            permits: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            idle_timeout,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let permit = loop {
            if let Ok(permit) = self.permits.clone().acquire_owned().await {
                break permit;
            }
        };
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        let stream = GuardedStream {
            stream,
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
            idle_timeout: self.idle_timeout,
            _permit: permit,
        };
        (stream, address)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A client connection holding one of the listener's permits until it is dropped.
pub struct GuardedStream {
    stream: tokio::net::TcpStream,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for GuardedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let deadline = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(result)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl tokio::io::AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Past the cap, a new connection is not served until an earlier one closes.
    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = inner.local_addr().unwrap();
        let mut listener = GuardedListener::with_limits(inner, 1, IDLE_TIMEOUT);
        let first = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut served, _) = listener.accept().await;
        let _second = tokio::net::TcpStream::connect(address).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(
            waiting.is_err(),
            "a second connection was accepted past the cap"
        );
        drop(first);
        let mut byte = [0u8; 1];
        assert_eq!(served.read(&mut byte).await.unwrap(), 0, "the first closed");
        drop(served);
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the freed slot serves the second");
    }

    /// A client that stalls is cut after the idle timeout.
    #[tokio::test]
    async fn a_stalled_client_is_cut_after_the_idle_timeout() {
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = inner.local_addr().unwrap();
        let mut listener = GuardedListener::with_limits(inner, 4, Duration::from_millis(50));
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut served, _) = listener.accept().await;
        client.write_all(b"GET").await.unwrap();
        let mut buffer = [0u8; 16];
        assert_eq!(served.read(&mut buffer).await.unwrap(), 3);
        let error = served.read(&mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    }
}

//! The Config Mapper's HTTP API (DESIGN.md, "Interfaces"). Errors are JSON: `{"error": "..."}`
//! naming the problem.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::auth::{Scope, Tokens, Verdict};
use super::store::{Removed, Store, StoredEntry};
use crate::clock::now_ms;
use crate::environment;

/// Largest request body accepted; a whitelist entry is a few hundred bytes.
pub const MAX_BODY: usize = 16 * 1024;
pub const MAX_SERVICES: usize = 64;

pub struct AppState {
    pub store: Store,
    pub tokens: Tokens,
    pub max_ttl_seconds: i64,
    pub metrics: crate::metrics::MapperMetrics,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/whitelist", get(snapshot))
        .route("/v1/whitelist/{user}", get(get_user).put(put_user).delete(delete_user))
        .route("/v1/whitelist/{user}/{service}", axum::routing::delete(delete_service))
        .route("/v1/envs", get(envs))
        .route("/v1/envs/{env}", axum::routing::delete(end_env))
        .route("/v1/audit", get(audit))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every request by its route template (never the user in the path) and status.
async fn count_request(
    State(state): State<Arc<AppState>>,
    path: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = path.as_ref().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    state.metrics.requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    resp
}

async fn metrics(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    let (version, entries) = blocking(&state, |s| s.snapshot(now_ms())).await?;
    state.metrics.whitelist_version.set(version as i64);
    state.metrics.whitelist_entries.set(entries.len() as i64);
    let text = crate::metrics::encode(&state.metrics.registry);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> Self {
        match e {
            super::store::StoreError::OutOfScope { reason } => return Self::new(StatusCode::FORBIDDEN, reason),
            super::store::StoreError::Held { .. } => return Self::new(StatusCode::CONFLICT, e.to_string()),
            _ => {}
        }
        tracing::error!(error = %e, "config mapper database error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("database error: {e}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs a database call off the async workers.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&Store) -> Result<T, super::store::StoreError> + Send + 'static,
) -> ApiResult<T> {
    let s = state.clone();
    match tokio::task::spawn_blocking(move || f(&s.store)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("database task failed: {e}"))),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    blocking(&state, |s| s.ping()).await?;
    Ok(axum::Json(serde_json::json!({"status": "ok"})))
}

#[derive(Serialize)]
struct SnapshotBody<'a> {
    version: u64,
    entries: &'a [StoredEntry],
}

async fn snapshot(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    let (version, entries) = blocking(&state, |s| s.snapshot(now_ms())).await?;
    let body = serde_json::to_vec(&SnapshotBody { version, entries: &entries })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The version changes with every write, the body also when an entry expires: tag the body.
    let etag = format!("\"{version}-{:016x}\"", fnv1a(&body));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::ETAG, etag_value), (header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

async fn get_user(State(state): State<Arc<AppState>>, Path(user): Path<String>) -> ApiResult<Response> {
    check_user(&user)?;
    let u = user.clone();
    let placements = blocking(&state, move |s| s.get(&u, now_ms())).await?;
    if placements.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("user {user:?} is not whitelisted")));
    }
    // The old form (one entry: services and expiry) for clients from before environments,
    // every placement under `entries` for the others.
    let mut services: Vec<&str> = placements.iter().flat_map(|p| p.services.iter().map(String::as_str)).collect();
    services.sort_unstable();
    services.dedup();
    let last = placements.iter().max_by_key(|p| p.expires_at_ms).map(|p| p.expires_at.clone());
    Ok(axum::Json(serde_json::json!({
        "user": user, "services": services, "expires_at": last, "entries": placements,
    }))
    .into_response())
}

async fn envs(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let envs = blocking(&state, |s| s.envs(now_ms())).await?;
    Ok(axum::Json(serde_json::json!({ "envs": envs })).into_response())
}

async fn end_env(
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (who, scope) = authorize(&state, &headers)?;
    environment::check(&env).map_err(|e| ApiError::bad(format!("env: {e}")))?;
    let e = env.clone();
    let users = blocking(&state, move |s| s.end_env(&e, &who, q.reason.as_deref(), &scope)).await?;
    if users.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("environment {env:?} has no live entries")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    services: Vec<String>,
    ttl_seconds: Option<i64>,
    reason: Option<String>,
    /// Absent: the default environment.
    env: Option<String>,
}

/// Who wrote (the token's name, for the audit), and what the token is scoped to.
fn authorize(state: &AppState, headers: &HeaderMap) -> ApiResult<(String, Scope)> {
    if state.tokens.is_empty() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "writes are disabled: the server has no token configured"));
    }
    match state.tokens.check(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Verdict::Allowed { who, scope } => Ok((who.to_owned(), scope.clone())),
        Verdict::Missing => Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <token>")),
        Verdict::Wrong => Err(ApiError::new(StatusCode::FORBIDDEN, "token not accepted")),
    }
}

async fn put_user(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let (who, scope) = authorize(&state, &headers)?;
    check_user(&user)?;
    let body =
        body.map_err(|e| ApiError::new(e.status(), format!("body: {} (limit {MAX_BODY} bytes)", e.body_text())))?;
    let body: PutBody = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("body: {e}")))?;
    if body.services.is_empty() {
        return Err(ApiError::bad("services: must list at least one service"));
    }
    if body.services.len() > MAX_SERVICES {
        return Err(ApiError::bad(format!("services: at most {MAX_SERVICES}")));
    }
    for s in &body.services {
        if !valid_name(s) {
            return Err(ApiError::bad(format!(
                "services: {s:?} is not a service name (letters, digits, '.', '-', '_')"
            )));
        }
    }
    let ttl = body.ttl_seconds.ok_or_else(|| ApiError::bad("ttl_seconds: required (entries always expire)"))?;
    if ttl <= 0 {
        return Err(ApiError::bad("ttl_seconds: must be greater than 0"));
    }
    if ttl > state.max_ttl_seconds {
        return Err(ApiError::bad(format!("ttl_seconds: {ttl} is over the maximum of {}", state.max_ttl_seconds)));
    }
    let env = body.env.unwrap_or_else(|| environment::DEFAULT.to_owned());
    environment::check(&env).map_err(|e| ApiError::bad(format!("env: {e}")))?;
    let mut services = body.services;
    services.sort();
    services.dedup();
    let reason = body.reason;
    let e = blocking(&state, move |s| s.put(&user, &env, &services, ttl, &who, reason.as_deref(), &scope)).await?;
    Ok((StatusCode::OK, axum::Json(e)).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    reason: Option<String>,
}

async fn delete_user(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    remove(state, headers, user, None, q.reason).await
}

async fn delete_service(
    State(state): State<Arc<AppState>>,
    Path((user, service)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    remove(state, headers, user, Some(service), q.reason).await
}

async fn remove(
    state: Arc<AppState>,
    headers: HeaderMap,
    user: String,
    service: Option<String>,
    reason: Option<String>,
) -> ApiResult<Response> {
    let (who, scope) = authorize(&state, &headers)?;
    check_user(&user)?;
    let u = user.clone();
    let svc = service.clone();
    match blocking(&state, move |s| s.remove(&u, svc.as_deref(), &who, reason.as_deref(), &scope)).await? {
        Removed::Nothing => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            match service {
                Some(s) => format!("user {user:?} is not whitelisted for {s:?}"),
                None => format!("user {user:?} is not whitelisted"),
            },
        )),
        Removed::Entry | Removed::Services(_) => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(State(state): State<Arc<AppState>>, Query(q): Query<AuditQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(10_000).min(100_000);
    let log = blocking(&state, move |s| s.audit_log(limit)).await?;
    Ok(axum::Json(serde_json::json!({ "records": log })).into_response())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// User ids are opaque to us but travel in URLs, headers and logs: printable, no separators.
fn check_user(user: &str) -> ApiResult<()> {
    let ok = !user.is_empty()
        && user.len() <= crate::extract::MAX_USER_LEN
        && user.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'@' | b':' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "user: {user:?} is malformed (1-256 of letters, digits, '.', '_', '-', '@', ':', '+')"
        )))
    }
}

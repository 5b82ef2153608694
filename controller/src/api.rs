//! The HTTP API (docs/api.md): the [`Controller`] every handler shares, its
//! per-project turns, the request bodies (strict: unknown fields are a
//! `400`) and answers as types, the routes, and the idle loop. Requests
//! reach it through [`crate::gateway`], which owns the listener.

use crate::error::{ApiError, ApiResult, Step};
use crate::gateway::{host_name, request_host};
use crate::history::{FileVersion, HistoryPage, RestoreResult};
use crate::projects::{Project, Projects, Template};
use crate::runtime::{Runtime, RuntimeError, StartSpec, State, Status};
use axum::body::Body;
use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub struct Controller {
    pub projects: Projects,
    pub templates: Vec<Template>,
    pub runtime: Box<dyn Runtime>,
    pub token_secret: String,
    /// `localhost:7070`: the UI and API host, and the base of workspace hosts.
    pub host: String,
    pub domain: String,
    /// Forwards workspace hosts to the workspace's listeners with the
    /// preview's rules, so both hops behave the same.
    pub proxy: cove_pty::proxy::Proxy,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Stop a workspace after this long without activity (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Per project, the turn that changing requests take one after the
    /// other (api.md §1); tokio's mutex queues waiters in arrival order.
    pub turns: Turns,
    /// The built browser UI, served for the other `GET`s on `host` (§6).
    pub ui: crate::ui::Ui,
}

pub type Shared = Arc<Controller>;

type Turns = parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A project's turn ([`Controller::turn`]). The last one out removes the
/// project's entry, so requests for ids that never existed leave nothing
/// behind (the map grew without bound before).
pub struct Turn<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    id: String,
    turns: &'a Turns,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = self.turns.lock();
        // Nobody waits or holds it: only the map's own reference is left,
        // and no one can take another while the map is locked.
        if turns
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            turns.remove(&self.id);
        }
    }
}

impl Controller {
    /// Waits for `id`'s turn: rename, delete, fork (of it), start, stop and
    /// restore of one project run one at a time, in arrival order. Reads
    /// never wait.
    pub async fn turn(&self, id: &str) -> Turn<'_> {
        let m = self.turns.lock().entry(id.to_string()).or_default().clone();
        Turn {
            guard: Some(m.lock_owned().await),
            id: id.to_string(),
            turns: &self.turns,
        }
    }

    /// Stops `id`'s workspace, in its turn.
    pub async fn stop(&self, id: &str, reason: Option<String>) -> ApiResult<Status> {
        let _turn = self.turn(id).await;
        self.runtime
            .stop(id, reason)
            .await
            .map_err(|e| ApiError::runtime(Step::Lifecycle, e))
    }

    fn port_suffix(&self) -> String {
        self.host
            .rsplit_once(':')
            .map(|(_, p)| format!(":{p}"))
            .unwrap_or_default()
    }

    fn workspace_json(&self, id: &str, s: &Status, with_token: bool) -> WorkspaceJson {
        let sfx = self.port_suffix();
        let d = &self.domain;
        let (token, token_expires_ms) = if with_token {
            let now = cove_sync::journal::now_ms() / 1000;
            let t = cove_pty::token::sign(self.token_secret.as_bytes(), id, now, 300, None);
            (Some(t), Some((now + 300) * 1000))
        } else {
            (None, None)
        };
        WorkspaceJson {
            project: id.to_string(),
            state: s.state,
            reason: s.reason.clone(),
            mode: s.mode.clone(),
            hydration: s.hydration.clone(),
            app_port: s.app_port,
            started_ms: s.started_ms,
            urls: Urls {
                ide_socket: format!("ws://{id}.ide.{d}{sfx}/ws"),
                preview: format!("http://{id}.app.{d}{sfx}/"),
                preview_port: format!("http://{{port}}--{id}.app.{d}{sfx}/"),
            },
            token,
            token_expires_ms,
        }
    }

    fn project_json(&self, p: &Project) -> ProjectJson {
        ProjectJson {
            project: p.clone(),
            workspace_state: self.runtime.status(&p.id).state,
        }
    }

    /// Starts `id`'s workspace, in its turn, with a new fencing epoch.
    pub async fn start(&self, id: &str) -> ApiResult<Status> {
        self.projects.get(id).await?;
        let _turn = self.turn(id).await;
        let st = self.runtime.status(id);
        if matches!(st.state, State::Starting | State::Ready) {
            return Ok(st);
        }
        if st.state == State::Stopping {
            let busy = RuntimeError::Busy { state: st.state };
            return Err(ApiError::runtime(Step::Lifecycle, busy));
        }
        // A new epoch above every earlier claim fences any older writer.
        let epoch = self
            .projects
            .journal(id)
            .max_claim()
            .await
            .map_err(ApiError::store)?
            + 1;
        let _ = self.projects.touch_opened(id).await;
        self.runtime
            .start(StartSpec {
                project: id.to_string(),
                epoch: Some(epoch),
            })
            .await
            .map_err(|e| ApiError::runtime(Step::Lifecycle, e))
    }
}

/// A workspace's status as the API answers it (api.md §5.1).
#[derive(Debug, Serialize)]
pub struct WorkspaceJson {
    pub project: String,
    pub state: State,
    pub reason: Option<String>,
    pub mode: Option<String>,
    pub hydration: Option<Value>,
    pub app_port: Option<u16>,
    pub started_ms: Option<u64>,
    pub urls: Urls,
    /// Only in the answers of start and token.
    pub token: Option<String>,
    pub token_expires_ms: Option<u64>,
}

/// Where the browser reaches a workspace, through the gateway.
#[derive(Debug, Serialize)]
pub struct Urls {
    pub ide_socket: String,
    pub preview: String,
    /// With `{port}` for the client to fill in.
    pub preview_port: String,
}

/// A project with its workspace's state (api.md §4.1).
#[derive(Debug, Serialize)]
pub struct ProjectJson {
    #[serde(flatten)]
    pub project: Project,
    pub workspace_state: State,
}

#[derive(Debug, Serialize)]
struct ProjectList {
    projects: Vec<ProjectJson>,
}

#[derive(Debug, Serialize)]
struct TemplateList<'a> {
    templates: &'a [Template],
}

/// `POST /api/projects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    template: String,
}

/// `PATCH /api/projects/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    name: String,
}

/// `POST /api/projects/{id}/fork`; no body is no name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForkBody {
    name: Option<String>,
}

/// `POST …/history/{commit}/restore`; `{}` restores everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    path: Option<String>,
}

async fn parse_body(req: Request) -> ApiResult<Value> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(req.into_body(), 64 << 10)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "body over 64 KiB",
            )
            .with(json!({"limit": 65536}))
        })?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    if !ct.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be application/json",
        ));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("invalid JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "the body must be a JSON object",
        ));
    }
    Ok(v)
}

/// A request body as `T`, with the API's `bad_request` for an unknown,
/// missing or wrong-typed field (`details.field` names it). Every field of
/// the API's bodies is a string, which the messages say. No body at all
/// reads as `{}`.
fn typed<T: DeserializeOwned>(v: Value) -> ApiResult<T> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde's own wording: "unknown field `k`, expected …" (or ", there
        // are no fields"), and "missing field `k`" with one of ours.
        let named = |prefix: &str, end: &str| {
            let rest = inner.strip_prefix(prefix)?;
            rest.split_once(end).map(|(k, _)| k.to_string())
        };
        if let Some(k) = named("unknown field `", "`, ") {
            ApiError::bad_request(&k, format!("unknown field `{k}`"))
        } else {
            let k = named("missing field `", "`").unwrap_or(at);
            ApiError::bad_request(&k, format!("`{k}` must be a string"))
        }
    })
}

async fn list_templates(AxState(c): AxState<Shared>) -> Response {
    Json(TemplateList {
        templates: &c.templates,
    })
    .into_response()
}

async fn list_projects(AxState(c): AxState<Shared>) -> ApiResult<Json<ProjectList>> {
    let ps = c.projects.list().await?;
    Ok(Json(ProjectList {
        projects: ps.iter().map(|p| c.project_json(p)).collect(),
    }))
}

async fn create_project(AxState(c): AxState<Shared>, req: Request) -> ApiResult<Response> {
    let body: CreateBody = typed(parse_body(req).await?)?;
    let (name, tname) = (body.name.as_str(), body.template.as_str());
    let t = c
        .templates
        .iter()
        .find(|t| t.name == tname)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_template",
                format!("no template {tname:?}"),
            )
            .with(json!({"template": tname}))
        })?;
    let p = c.projects.create(name, t).await?;
    let mut r = (StatusCode::CREATED, Json(c.project_json(&p))).into_response();
    if let Ok(v) = format!("/api/projects/{}", p.id).parse() {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn get_project(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<ProjectJson>> {
    let p = c.projects.get(&id).await?;
    Ok(Json(c.project_json(&p)))
}

async fn patch_project(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<ProjectJson>> {
    let body: RenameBody = typed(parse_body(req).await?)?;
    let _turn = c.turn(&id).await;
    let p = c.projects.rename(&id, &body.name).await?;
    Ok(Json(c.project_json(&p)))
}

async fn delete_project(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.projects.get(&id).await?;
    let _turn = c.turn(&id).await;
    let _ = c.runtime.stop(&id, Some("project deleted".into())).await;
    c.projects.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn fork_project(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let body: ForkBody = typed(parse_body(req).await?)?;
    let name = body.name.as_deref();
    let src = c.projects.get(&id).await?;
    // In the source's turn: a stop that came first has finished (its final
    // flush included), and no start or restore runs meanwhile.
    let _turn = c.turn(&id).await;
    if c.runtime.status(&id).state == State::Ready {
        // Everything saved before this request goes into the fork.
        flush_running(&c, &id).await?;
    }
    let p = c.projects.fork(&src, name).await?;
    Ok((StatusCode::CREATED, Json(c.project_json(&p))).into_response())
}

async fn workspace_status(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceJson>> {
    c.projects.get(&id).await?;
    Ok(Json(c.workspace_json(&id, &c.runtime.status(&id), false)))
}

async fn workspace_start(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceJson>> {
    let st = c.start(&id).await?;
    Ok(Json(c.workspace_json(&id, &st, true)))
}

/// How long a flush of a running workspace may take (api.md §5.2).
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Flushes a running workspace: everything in the store, or an error.
async fn flush_running(c: &Controller, id: &str) -> ApiResult<()> {
    c.runtime
        .sidecar_post(id, "/flush", json!({}), FLUSH_WAIT)
        .await
        .map(drop)
        .map_err(|e| ApiError::runtime(Step::Flush { wait: FLUSH_WAIT }, e))
}

async fn workspace_stop(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceJson>> {
    c.projects.get(&id).await?;
    let st = c.stop(&id, None).await?;
    Ok(Json(c.workspace_json(&id, &st, false)))
}

async fn workspace_token(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkspaceJson>> {
    c.projects.get(&id).await?;
    let st = c.runtime.status(&id);
    if !matches!(st.state, State::Starting | State::Ready) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "workspace_not_running",
            "start the workspace before asking for a token",
        )
        .with(json!({"state": st.state})));
    }
    Ok(Json(c.workspace_json(&id, &st, true)))
}

async fn history(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<HistoryPage>> {
    let p = c.projects.get(&id).await?;
    if let Some(k) = q
        .keys()
        .find(|k| !["limit", "before", "path"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(
            k,
            format!("unknown query parameter `{k}`"),
        ));
    }
    let num = |k: &str| -> ApiResult<Option<u64>> {
        q.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(k, format!("`{k}` must be an integer")))
            })
            .transpose()
    };
    let limit = num("limit")?.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit", "`limit` must be 1–200"));
    }
    let before = num("before")?;
    let filter = q.get("path").map(String::as_str);
    if let Some(f) = filter {
        crate::history::check_path(f, false)?;
    }
    let page = crate::history::list(
        &c.projects.journal(&id),
        p.created_ms,
        limit as usize,
        before,
        filter,
    )
    .await?;
    Ok(Json(page))
}

fn commit_param(s: &str) -> ApiResult<cove_sync::format::CommitId> {
    crate::history::parse_commit(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_commit",
            format!("{s:?} is not a commit"),
        )
        .with(json!({ "commit": s }))
    })
}

async fn past_version(
    AxState(c): AxState<Shared>,
    Path((id, commit)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<FileVersion>> {
    c.projects.get(&id).await?;
    let at = commit_param(&commit)?;
    if let Some(k) = q.keys().find(|k| k.as_str() != "path") {
        return Err(ApiError::bad_request(
            k,
            format!("unknown query parameter `{k}`"),
        ));
    }
    let path = q
        .get("path")
        .ok_or_else(|| ApiError::bad_request("path", "`path` is required"))?;
    Ok(Json(
        crate::history::file_version(&c.projects.journal(&id), at, path).await?,
    ))
}

async fn restore(
    AxState(c): AxState<Shared>,
    Path((id, commit)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Json<RestoreResult>> {
    let v = parse_body(req).await?;
    if v.is_null() {
        return Err(ApiError::bad_request(
            "path",
            "a body is required: {} restores everything",
        ));
    }
    let body: RestoreBody = typed(v)?;
    let path = body.path.as_deref().unwrap_or("");
    c.projects.get(&id).await?;
    let at = commit_param(&commit)?;
    crate::history::check_path(path, true)?;
    let _turn = c.turn(&id).await;
    match c.runtime.status(&id).state {
        // The sidecar holds the project: it restores, through the files.
        State::Ready => restore_running(&c, &id, at, path).await,
        // Nobody holds it: commit the restore as a writer of a new epoch.
        State::Stopped | State::Failed => Ok(Json(
            crate::history::restore_stopped(&c.projects.journal(&id), at, path).await?,
        )),
        st => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the workspace is {}: restore once it is ready or stopped",
                st.as_str()
            ),
        )
        .with(json!({ "state": st }))),
    }
}

/// How long a running workspace's restore waits for its final flush before
/// answering `durable: false` (api.md §5.5).
const RESTORE_FLUSH_WAIT: Duration = Duration::from_secs(30);

async fn restore_running(
    c: &Controller,
    id: &str,
    at: cove_sync::format::CommitId,
    path: &str,
) -> ApiResult<Json<RestoreResult>> {
    let body = json!({
        "commit": at.to_string(),
        "path": path,
        "wait_ms": RESTORE_FLUSH_WAIT.as_millis() as u64,
    });
    // The first flush and the writes come before the bounded final flush.
    let commit = at.to_string();
    let answer = |e| {
        ApiError::runtime(
            Step::Restore {
                commit: &commit,
                path,
            },
            e,
        )
    };
    let v = c
        .runtime
        .sidecar_post(id, "/restore", body, RESTORE_FLUSH_WAIT * 2)
        .await
        .map_err(answer)?;
    serde_json::from_value(v).map(Json).map_err(|e| {
        answer(RuntimeError::BadAnswer {
            path: "/restore".into(),
            reason: e.to_string(),
        })
    })
}

pub fn api_router(c: Shared) -> Router {
    Router::new()
        .route("/api/templates", get(list_templates))
        .route("/api/projects", get(list_projects).post(create_project))
        .route(
            "/api/projects/{id}",
            get(get_project).patch(patch_project).delete(delete_project),
        )
        .route("/api/projects/{id}/fork", post(fork_project))
        .route("/api/projects/{id}/workspace", get(workspace_status))
        .route("/api/projects/{id}/workspace/start", post(workspace_start))
        .route("/api/projects/{id}/workspace/stop", post(workspace_stop))
        .route("/api/projects/{id}/workspace/token", post(workspace_token))
        .route("/api/projects/{id}/history", get(history))
        .route(
            "/api/projects/{id}/history/{commit}/file",
            get(past_version),
        )
        .route("/api/projects/{id}/history/{commit}/restore", post(restore))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        })
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(c.clone(), observe))
        .with_state(c)
}

/// Paths no route took: under `/api`, and with other methods than `GET` and
/// `HEAD`, the API's `404`; otherwise the UI (§6) on the controller's host,
/// a `308` to it from `127.0.0.1` and `[::1]` (the UI has one origin, the
/// one the Origin check of §7 accepts), and the `404` on any other host.
async fn fallback(AxState(c): AxState<Shared>, req: Request) -> Response {
    let path = req.uri().path();
    if path == "/api"
        || path.starts_with("/api/")
        || !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return ApiError::not_found().into_response();
    }
    let host = request_host(&req);
    if host == host_name(&c.host) {
        return c.ui.serve(req.method(), req.uri(), req.headers()).await;
    }
    if host == "127.0.0.1" || host == "[::1]" {
        let to = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = header::HeaderValue::from_str(&format!("http://{}{to}", c.host)) {
            return (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, v)],
                Body::empty(),
            )
                .into_response();
        }
    }
    ApiError::not_found().into_response()
}

/// The request's id (api.md §1): the client's `X-Request-Id` if it is a
/// short token (so a proxy's id carries through), else a new random one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

/// Headers every answer of the controller's own origin carries (the API
/// and the UI; api.md §1):
/// - no page of another site may frame it (`frame-ancestors 'none'`, and
///   `X-Frame-Options` for older browsers): inside a hostile frame, two
///   clicks on the projects page deleted a project;
/// - JSON is never cached (tokens are JSON), unless a handler said
///   otherwise;
/// - no content sniffing.
fn protect(h: &mut header::HeaderMap) {
    use header::HeaderValue;
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if json && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Counts and times every API request by its route pattern.
async fn observe(
    AxState(c): AxState<Shared>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let t = std::time::Instant::now();
    let rid = request_id(&req);
    let span = tracing::info_span!("request", id = %rid, method = %req.method(), %route);
    // §7: a browser request from another origin (an app in a preview, any
    // web page) never reaches the API, whatever its method.
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let resp = match origin {
        Some(o) if o != format!("http://{}", c.host) => ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_forbidden",
            format!("requests from {o} are not allowed"),
        )
        .with(json!({ "origin": o }))
        .into_response(),
        _ => tracing::Instrument::instrument(next.run(req), span.clone()).await,
    };
    let mut resp = resp;
    if let Ok(v) = header::HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    protect(resp.headers_mut());
    if resp.status().is_server_error() {
        span.in_scope(|| tracing::warn!(status = resp.status().as_u16(), "request failed"));
    }
    c.metrics
        .api_requests
        .get_or_create(&crate::metrics::RouteLabel {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    c.metrics.api_seconds.observe(t.elapsed().as_secs_f64());
    resp
}

async fn metrics(AxState(c): AxState<Shared>) -> Response {
    let mut counts = std::collections::BTreeMap::new();
    for p in c.runtime.running() {
        let st = c.runtime.status(&p).state;
        *counts
            .entry(format!("{st:?}").to_lowercase())
            .or_insert(0usize) += 1;
    }
    let states: Vec<(&str, usize)> = ["starting", "ready"]
        .iter()
        .map(|s| (*s, counts.get(*s).copied().unwrap_or(0)))
        .collect();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics.render(&states),
    )
        .into_response()
}

/// Idle shutdown: a running workspace whose cove-pty reports no activity
/// (requests, keystrokes, preview traffic, and terminal output, so a long
/// job that prints counts) and no open connection for `idle_timeout` is
/// stopped, with the reason in its status.
pub async fn idle_loop(c: Shared) {
    let Some(limit) = c.idle_timeout else { return };
    let every = (limit / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        for p in c.runtime.running() {
            if c.runtime.status(&p).state != State::Ready {
                continue;
            }
            let Some(a) = c.runtime.activity(&p).await else {
                continue;
            };
            if a["connections"].as_u64().unwrap_or(0) > 0 {
                continue;
            }
            let last = a["last_active_ms"]
                .as_u64()
                .unwrap_or(0)
                .max(a["last_output_ms"].as_u64().unwrap_or(0));
            let idle = cove_sync::journal::now_ms().saturating_sub(last);
            if idle >= limit.as_millis() as u64 {
                let reason = format!("idle for {} s", limit.as_secs());
                tracing::info!(project = %p, %reason, "stopping an idle workspace");
                c.metrics.idle_stops.inc();
                let _ = c.stop(&p, Some(reason)).await;
            }
        }
    }
}

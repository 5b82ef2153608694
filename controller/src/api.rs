//! The HTTP API (docs/api.md) and the gateway (§6) on one listener.

use crate::error::{ApiError, ApiResult};
use crate::projects::{Project, Projects, Template};
use crate::runtime::{Runtime, StartSpec, State, Status};
use axum::body::Body;
use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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
    pub upstream: cove_pty::preview::Upstream,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Stop a workspace after this long without activity (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Per project, the turn that changing requests take one after the
    /// other (api.md §1); tokio's mutex queues waiters in arrival order.
    pub turns: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The built browser UI, served for the other `GET`s on `host` (§6).
    pub ui: crate::ui::Ui,
}

pub type Shared = Arc<Controller>;

impl Controller {
    /// Waits for `id`'s turn: rename, delete, fork (of it), start, stop and
    /// restore of one project run one at a time, in arrival order. Reads
    /// never wait.
    pub async fn turn(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self.turns.lock().entry(id.to_string()).or_default().clone();
        m.lock_owned().await
    }

    /// Stops `id`'s workspace, in its turn.
    pub async fn stop(&self, id: &str, reason: Option<String>) -> ApiResult<Status> {
        let _turn = self.turn(id).await;
        self.runtime
            .stop(id, reason)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "workspace_failed", e.to_string()))
    }

    fn port_suffix(&self) -> String {
        self.host
            .rsplit_once(':')
            .map(|(_, p)| format!(":{p}"))
            .unwrap_or_default()
    }

    fn workspace_json(&self, id: &str, s: &Status, with_token: bool) -> Value {
        let sfx = self.port_suffix();
        let d = &self.domain;
        let (token, exp) = if with_token {
            let now = cove_sync::journal::now_ms() / 1000;
            let t = cove_pty::token::sign(self.token_secret.as_bytes(), id, now, 300, None);
            (Some(t), Some((now + 300) * 1000))
        } else {
            (None, None)
        };
        json!({
            "project": id,
            "state": s.state,
            "reason": s.reason,
            "mode": s.mode,
            "hydration": s.hydration,
            "app_port": s.app_port,
            "started_ms": s.started_ms,
            "urls": {
                "ide_socket": format!("ws://{id}.ide.{d}{sfx}/ws"),
                "preview": format!("http://{id}.app.{d}{sfx}/"),
                "preview_port": format!("http://{{port}}--{id}.app.{d}{sfx}/"),
            },
            "token": token,
            "token_expires_ms": exp,
        })
    }

    fn project_json(&self, p: &Project) -> Value {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        v["workspace_state"] = json!(self.runtime.status(&p.id).state);
        v
    }

    async fn start(&self, id: &str) -> ApiResult<Status> {
        self.projects.get(id).await?;
        let _turn = self.turn(id).await;
        let st = self.runtime.status(id);
        if matches!(st.state, State::Starting | State::Ready) {
            return Ok(st);
        }
        if st.state == State::Stopping {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the workspace is stopping",
            )
            .with(json!({"state": st.state})));
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
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "workspace_failed", e.to_string()))
    }
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

fn only_fields(v: &Value, allowed: &[&str]) -> ApiResult<()> {
    if let Value::Object(m) = v {
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(k, format!("unknown field `{k}`")));
        }
    }
    Ok(())
}

fn string_field<'a>(v: &'a Value, f: &str) -> ApiResult<&'a str> {
    v.get(f)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(f, format!("`{f}` must be a string")))
}

async fn list_templates(AxState(c): AxState<Shared>) -> Json<Value> {
    Json(json!({ "templates": c.templates }))
}

async fn list_projects(AxState(c): AxState<Shared>) -> ApiResult<Json<Value>> {
    let ps = c.projects.list().await?;
    Ok(Json(
        json!({"projects": ps.iter().map(|p| c.project_json(p)).collect::<Vec<_>>()}),
    ))
}

async fn create_project(AxState(c): AxState<Shared>, req: Request) -> ApiResult<Response> {
    let v = parse_body(req).await?;
    only_fields(&v, &["name", "template"])?;
    let name = string_field(&v, "name")?;
    let tname = string_field(&v, "template")?;
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
) -> ApiResult<Json<Value>> {
    let p = c.projects.get(&id).await?;
    Ok(Json(c.project_json(&p)))
}

async fn patch_project(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let v = parse_body(req).await?;
    only_fields(&v, &["name"])?;
    let _turn = c.turn(&id).await;
    let p = c.projects.rename(&id, string_field(&v, "name")?).await?;
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
    c.turns.lock().remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn fork_project(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let v = parse_body(req).await?;
    only_fields(&v, &["name"])?;
    let name = match v.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        _ => return Err(ApiError::bad_request("name", "`name` must be a string")),
    };
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
) -> ApiResult<Json<Value>> {
    c.projects.get(&id).await?;
    Ok(Json(c.workspace_json(&id, &c.runtime.status(&id), false)))
}

async fn workspace_start(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let st = c.start(&id).await?;
    Ok(Json(c.workspace_json(&id, &st, true)))
}

/// How long a flush of a running workspace may take (api.md §5.2).
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Flushes a running workspace: everything in the store, or an error.
async fn flush_running(c: &Controller, id: &str) -> ApiResult<()> {
    let (status, v) = c
        .runtime
        .sidecar_post(id, "/flush", json!({}), FLUSH_WAIT)
        .await
        .map_err(|e| {
            ApiError::store(format!(
                "the workspace did not flush within {FLUSH_WAIT:?}: {e}"
            ))
        })?;
    match status {
        200 => Ok(()),
        409 => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "workspace_failed",
            format!(
                "the workspace's flush was refused: {}",
                v["error"]["message"]
            ),
        )
        .with(json!({"reason": v["error"]["message"]}))),
        _ => Err(ApiError::store(format!(
            "the workspace's flush failed: {}",
            v["error"]["message"]
        ))),
    }
}

async fn workspace_stop(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    c.projects.get(&id).await?;
    let st = c.stop(&id, None).await?;
    Ok(Json(c.workspace_json(&id, &st, false)))
}

async fn workspace_token(
    AxState(c): AxState<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
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
) -> ApiResult<Json<Value>> {
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
) -> ApiResult<Json<Value>> {
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
) -> ApiResult<Json<Value>> {
    let v = parse_body(req).await?;
    if v.is_null() {
        return Err(ApiError::bad_request(
            "path",
            "a body is required: {} restores everything",
        ));
    }
    only_fields(&v, &["path"])?;
    let path = match v.get("path") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(ApiError::bad_request("path", "`path` must be a string")),
    };
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
                json!(st).as_str().unwrap_or("busy")
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
) -> ApiResult<Json<Value>> {
    let body = json!({
        "commit": at.to_string(),
        "path": path,
        "wait_ms": RESTORE_FLUSH_WAIT.as_millis() as u64,
    });
    // The first flush and the writes come before the bounded final flush.
    let (status, v) = c
        .runtime
        .sidecar_post(id, "/restore", body, RESTORE_FLUSH_WAIT * 2)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "workspace_failed", e.to_string()))?;
    if status == 200 {
        return Ok(Json(v));
    }
    let code = v["error"]["code"].as_str().unwrap_or("");
    let msg = v["error"]["message"].as_str().unwrap_or("").to_string();
    Err(match code {
        "unknown_commit" => ApiError::new(StatusCode::NOT_FOUND, "unknown_commit", msg)
            .with(json!({"commit": at.to_string()})),
        "path_not_found" => ApiError::new(StatusCode::NOT_FOUND, "path_not_found", msg)
            .with(json!({ "path": path })),
        "bad_path" => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_path", msg).with(json!({ "path": path }))
        }
        "not_ready" => {
            ApiError::new(StatusCode::CONFLICT, "conflict", msg).with(json!({"state": "starting"}))
        }
        "unavailable" => ApiError::store(msg),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "workspace_failed",
            format!("the workspace could not restore: {msg}"),
        )
        .with(json!({ "reason": msg })),
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

/// Which workspace host a request is for (§6).
enum Route {
    Api,
    Ide(String),
    App(String),
    /// A name that is none of ours: someone pointed it at this address
    /// (DNS rebinding), so it reaches nothing.
    Unknown,
}

/// A host without its port: `[::1]:7070` and `[::1]` keep their brackets,
/// `name:7070` loses the port.
fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.ends_with(']') => h,
        _ => host,
    }
}

/// The request's host name, lowercased and without a port: `Host`, or the
/// URI's authority (HTTP/2).
fn request_host(req: &Request) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    host_name(&host).to_string()
}

fn route(c: &Controller, req: &Request) -> Route {
    let host = request_host(req);
    let name = host.as_str();
    if let Some(label) = name.strip_suffix(&format!(".ide.{}", c.domain)) {
        return Route::Ide(label.to_string());
    }
    if let Some(label) = name.strip_suffix(&format!(".app.{}", c.domain)) {
        // `<port>--<id>`: the id is after the first `--` of a digits prefix.
        let id = match label.split_once("--") {
            Some((p, id)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => id,
            _ => label,
        };
        return Route::App(id.to_string());
    }
    if name == host_name(&c.host) || name == c.domain || name == "127.0.0.1" || name == "[::1]" {
        return Route::Api;
    }
    Route::Unknown
}

/// The whole listener: API for the controller's host, the gateway for
/// workspace hosts.
pub async fn gateway(AxState((c, api)): AxState<(Shared, Router)>, req: Request) -> Response {
    use tower::ServiceExt;
    match route(&c, &req) {
        Route::Api => api.oneshot(req).await.unwrap_or_else(|e| match e {}),
        Route::Unknown => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "unknown host\n",
        )
            .into_response(),
        Route::Ide(id) => match ensure_started(&c, &id, Duration::from_secs(120)).await {
            Ok(st) => match st.ide_port {
                Some(port) => c.upstream.forward(req, port).await,
                None => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "starting",
                    "the workspace is starting",
                )
                .into_response(),
            },
            Err(e) => e.into_response(),
        },
        Route::App(id) => match ensure_started(&c, &id, Duration::ZERO).await {
            Ok(st) if st.state == State::Ready && st.preview_port.is_some() => {
                c.upstream
                    .forward(req, st.preview_port.unwrap_or_default())
                    .await
            }
            Ok(st) => starting_page(&id, &st),
            Err(e) => e.into_response(),
        },
    }
}

/// Starts a stopped workspace; waits up to `wait` for it to be ready.
async fn ensure_started(c: &Controller, id: &str, wait: Duration) -> ApiResult<Status> {
    let mut st = c.runtime.status(id);
    if st.state == State::Failed {
        return Ok(st);
    }
    if st.state != State::Ready {
        st = c.start(id).await?;
    }
    let deadline = tokio::time::Instant::now() + wait;
    while st.state == State::Starting && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = c.runtime.status(id);
    }
    Ok(st)
}

fn starting_page(id: &str, st: &Status) -> Response {
    let what = match (st.state, &st.reason) {
        (State::Failed, Some(r)) => format!("The workspace failed: {r}"),
        _ => "Starting the workspace…".to_string(),
    };
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"1\">\
         <title>{id}</title><body style=\"font-family:system-ui;margin:3rem\"><h1>{what}</h1>\
         <p>This page reloads by itself.</p></body>"
    );
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Body::from(html),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

//! The gateway (docs/api.md §6): one listener for everything. The
//! controller's own host goes to the API and UI ([`crate::api`]);
//! `<id>.ide.<domain>` and `<id>.app.<domain>` (and `<port>--<id>.app.…`)
//! are forwarded, WebSocket upgrades included, to that workspace's cove-pty
//! listeners, starting the workspace first if it is stopped. Preview
//! requests to a workspace that is not ready yet get a page that reloads
//! itself; other host names reach nothing (DNS rebinding).

use crate::api::{Controller, Shared};
use crate::error::{ApiError, ApiResult};
use crate::runtime::{State, Status};
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::time::Duration;

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
pub(crate) fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.ends_with(']') => h,
        _ => host,
    }
}

/// The request's host name, lowercased and without a port: `Host`, or the
/// URI's authority (HTTP/2).
pub(crate) fn request_host(req: &Request) -> String {
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
                Some(port) => forward(&c, req, port).await,
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
                forward(&c, req, st.preview_port.unwrap_or_default()).await
            }
            Ok(st) => starting_page(&id, &st),
            Err(e) => e.into_response(),
        },
    }
}

/// Forwards `req` to a workspace listener on loopback `port`; a failure
/// gets the preview's status page (`X-Cove-Preview`), as from cove-pty.
async fn forward(c: &Controller, req: Request, port: u16) -> Response {
    let html = cove_pty::preview::accepts_html(req.headers());
    let raw = cove_pty::proxy::raw_host(&req).unwrap_or_default();
    match c.proxy.forward(req, port, &raw).await {
        Ok(r) => r,
        Err(e) => cove_pty::preview::failure_page(e, html, port),
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

/// The whole listener's app: the API router for the controller's host
/// behind [`gateway`], which routes workspace hosts itself.
pub fn app(c: Shared) -> Router {
    let api = crate::api::api_router(c.clone());
    Router::new().fallback(gateway).with_state((c, api))
}

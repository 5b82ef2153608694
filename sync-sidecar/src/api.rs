//! The sidecar's local control API (loopback HTTP or a unix socket), used
//! by cove-pty and the controller. Documented in docs/sync-api.md.
//!
//! - `GET  /healthz`  — the process is up.
//! - `GET  /readyz`   — 200 once hydration finished, else 503 with progress.
//! - `GET  /status`   — hydration, dirty count, last commit, store health, lag.
//! - `POST /flush`    — `{"paths": [...]}` (omit for everything); answers once
//!   durable with the commit that holds it.
//! - `GET  /changes`  — change feed, one JSON event per line (`?prefix=`).
//! - `POST /restore`  — `{"commit": "E.S", "path": "..."}`: make the path
//!   (omitted: everything) what it was at that commit; answers once durable.
//! - `GET  /metrics`  — Prometheus text format.

use crate::restore::{RestoreError, Target};
use crate::workspace::{ChangeEvent, ChangeKind, FlushError, SyncEngine};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;

/// Largest flush request body we accept.
const MAX_BODY: usize = 1 << 20;

/// The API of `ws`; `restore` is where it can restore (`None`: it cannot,
/// `/restore` answers 501).
pub fn router(ws: Arc<SyncEngine>, restore: Option<Arc<Target>>) -> Router {
    let restoring = Router::new()
        .route("/restore", post(restore_handler))
        .with_state((ws.clone(), restore));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/flush", post(flush))
        .route("/changes", get(changes))
        .route("/metrics", get(metrics))
        .with_state(ws)
        .merge(restoring)
        .fallback(|| async { err(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(not_from_a_browser))
}

/// The API's callers are cove-pty, the controller and operators' tools,
/// never a browser. A browser that reaches the port (every page can send
/// to loopback) is stopped here (sync-api.md "Callers"):
/// - any request with an `Origin` header: browsers send one on every
///   cross-site request that is not a plain `GET`, so a page cannot post
///   to `/restore` or `/flush`, nor read anything with `fetch`;
/// - a request body that is not `application/json`: the one kind a page
///   can send without asking (a form's or `text/plain` "simple request")
///   never parses as a command.
async fn not_from_a_browser(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(o) = req.headers().get(header::ORIGIN) {
        tracing::warn!(origin = ?o, path = %req.uri().path(), "refused a request from a browser");
        return err(
            StatusCode::FORBIDDEN,
            "origin_forbidden",
            "the control API does not answer browsers",
        );
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|n| n != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if has_body && !json {
        return err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be application/json",
        );
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreReq {
    commit: String,
    path: Option<String>,
    /// Longest wait for the final flush; absent: until durable.
    wait_ms: Option<u64>,
}

async fn restore_handler(
    State((ws, target)): State<(Arc<SyncEngine>, Option<Arc<Target>>)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(target) = target else {
        return err(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this sidecar was started without a restore target",
        );
    };
    let req: RestoreReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("invalid restore request: {e}"),
            )
        }
    };
    let Ok(at) = req.commit.parse() else {
        return err(
            StatusCode::NOT_FOUND,
            "unknown_commit",
            &format!("{:?} is not a commit id (EPOCH.SEQ)", req.commit),
        );
    };
    let path = req.path.as_deref().unwrap_or("").trim_matches('/');
    if !ws.is_ready() {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "hydration has not finished",
        );
    }
    // On its own task: a client that hangs up must not cut a restore off
    // halfway (hyper drops the handler's future with the connection).
    let path = path.to_owned();
    let wait = req.wait_ms.map(std::time::Duration::from_millis);
    let task =
        tokio::spawn(async move { crate::restore::restore(&ws, &target, at, &path, wait).await });
    let result = match task.await {
        Ok(r) => r,
        Err(e) => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("the restore task failed: {e}"),
            )
        }
    };
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            let (status, code) = match &e {
                RestoreError::UnknownCommit(_) => (StatusCode::NOT_FOUND, "unknown_commit"),
                RestoreError::PathNotFound { .. } => (StatusCode::NOT_FOUND, "path_not_found"),
                RestoreError::BadPath(_) | RestoreError::Flush(FlushError::BadPath(_)) => {
                    (StatusCode::BAD_REQUEST, "bad_path")
                }
                RestoreError::Flush(FlushError::Fenced) => (StatusCode::CONFLICT, "fenced"),
                RestoreError::Flush(_) | RestoreError::Journal(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                RestoreError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
            };
            tracing::warn!(error = %e, "restore failed");
            err(status, code, &e.to_string())
        }
    }
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn readyz(State(ws): State<Arc<SyncEngine>>) -> Response {
    if ws.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"hydration": ws.progress.view()})),
        )
            .into_response()
    }
}

async fn status(State(ws): State<Arc<SyncEngine>>) -> Response {
    Json(ws.status()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlushReq {
    paths: Option<Vec<String>>,
}

async fn flush(State(ws): State<Arc<SyncEngine>>, body: axum::body::Bytes) -> Response {
    let req: FlushReq = if body.is_empty() {
        FlushReq { paths: None }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("invalid flush request: {e}"),
                )
            }
        }
    };
    if let Some(ps) = &req.paths {
        for p in ps {
            let p = p.trim_matches('/');
            if !p.is_empty() && !crate::tree::valid(p) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "bad_path",
                    &format!("invalid path {p:?}"),
                );
            }
        }
    }
    let paths: Option<Vec<String>> = req.paths.map(|ps| {
        ps.into_iter()
            .map(|p| p.trim_matches('/').to_owned())
            .collect()
    });
    let flushed = match &paths {
        None => ws.flush_all().await,
        Some(p) => ws.flush(Some(p)).await,
    };
    match flushed {
        Ok(c) => Json(json!({"durable": true, "commit": c})).into_response(),
        Err(e @ FlushError::Fenced) => err(StatusCode::CONFLICT, "fenced", &e.to_string()),
        Err(e @ FlushError::BadPath(_)) => err(StatusCode::BAD_REQUEST, "bad_path", &e.to_string()),
        Err(e) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct ChangesQuery {
    prefix: Option<String>,
}

async fn changes(State(ws): State<Arc<SyncEngine>>, Query(q): Query<ChangesQuery>) -> Response {
    let prefix = q.prefix.unwrap_or_default().trim_matches('/').to_owned();
    let rx = ws.subscribe();
    let stream = BroadcastStream::new(rx).filter_map(move |ev| {
        let prefix = prefix.clone();
        async move {
            let ev = match ev {
                Ok(ev) => ev,
                // A slow reader lost events: say so, so it can re-read.
                Err(_) => ChangeEvent {
                    path: String::new(),
                    kind: ChangeKind::Overflow,
                    from: None,
                },
            };
            let relevant = ev.kind == ChangeKind::Overflow
                || crate::tree::is_within(&ev.path, &prefix)
                || ev
                    .from
                    .as_deref()
                    .is_some_and(|f| crate::tree::is_within(f, &prefix));
            if !relevant {
                return None;
            }
            let mut line = serde_json::to_vec(&ev).ok()?;
            line.push(b'\n');
            Some(Ok::<_, std::convert::Infallible>(line))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "internal", "response"))
}

async fn metrics(State(ws): State<Arc<SyncEngine>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ws.metrics.render(),
    )
        .into_response()
}

/// Serve the API on `addr`: `host:port` or `unix:/path/to.sock`.
pub async fn serve(
    ws: Arc<SyncEngine>,
    restore: Option<Arc<Target>>,
    addr: &str,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let app = router(ws, restore);
    if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "control API stopped");
            }
        }))
    } else {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "control API listening");
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "control API stopped");
            }
        }))
    }
}

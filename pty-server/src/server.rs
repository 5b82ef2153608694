//! The server: shared state, the upgrade checks (§2.3), the workspace
//! status poller (§11), the admin endpoints (§17), and the connection
//! handlers a stop waits for ([`Handlers`]).

use crate::activity::{now_ms, Activity};
use crate::changes::Feed;
use crate::files::Files;
use crate::metrics::Metrics;
use crate::protocol::{self, Limits};
use crate::sidecar::Sidecar;
use crate::terminal::Terminals;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Config {
    pub project: String,
    pub secrets: Vec<Vec<u8>>,
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub preview_url: Option<String>,
    pub preview_port_url: Option<String>,
    pub app_port: u16,
}

pub struct App {
    pub cfg: Config,
    pub instance: String,
    pub files: Files,
    pub terms: Arc<Terminals>,
    pub feed: Arc<Feed>,
    pub sidecar: Sidecar,
    pub metrics: Arc<Metrics>,
    pub activity: Arc<Activity>,
    pub status: Mutex<Value>,
    pub ready: AtomicBool,
    pub fenced: AtomicBool,
    pub stopping: AtomicBool,
    pub connections: AtomicUsize,
    pub next_conn: AtomicU64,
    /// Open connections, to close them all on stop or fencing.
    pub conns: Mutex<HashMap<u64, crate::outbox::Outbox>>,
    /// Every connection's handler, from the upgrade to its end.
    pub handlers: Handlers,
}

/// The IDE socket's connection handlers that are still running. A stop
/// closes every connection (4004, through its outbox) and then waits here
/// until their handlers have finished the closing handshake, as
/// mini-redis's server waits for its handlers to drop their completion
/// senders, instead of sleeping and hoping the close frames went out.
pub struct Handlers {
    running: tokio::sync::watch::Sender<usize>,
}

impl Default for Handlers {
    fn default() -> Self {
        Handlers {
            running: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Counts one handler while it lives (also when its task is dropped).
struct Running(tokio::sync::watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Handlers {
    /// `f`, counted as a running handler from now until it ends.
    pub fn track<F: std::future::Future>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = F::Output> {
        self.running.send_modify(|n| *n += 1);
        let running = Running(self.running.clone());
        async move {
            let _running = running;
            f.await
        }
    }

    /// How many handlers are running.
    pub fn count(&self) -> usize {
        *self.running.borrow()
    }

    /// Waits until no handler runs, `limit` at most; whether they all
    /// ended. (A client that never answers the close holds its handler
    /// until the heartbeat gives up on it; a stop does not wait that long.)
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut rx = self.running.subscribe();
        let all_ended = async move { rx.wait_for(|n| *n == 0).await.is_ok() };
        tokio::time::timeout(limit, all_ended)
            .await
            .unwrap_or(false)
    }
}

fn reject(status: StatusCode, code: &str, message: &str, extra: Option<Value>) -> Response {
    let mut err = json!({"code": code, "message": message});
    if let Some(Value::Object(m)) = extra {
        for (k, v) in m {
            err[k] = v;
        }
    }
    let mut r = (status, axum::Json(json!({ "error": err }))).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    }
    r
}

/// GET /ws: the checks of §2.3, in order, before anything of the workspace
/// runs.
async fn ws_upgrade(State(app): State<Arc<App>>, req: Request<axum::body::Body>) -> Response {
    let (mut parts, _) = req.into_parts();
    let headers = parts.headers.clone();
    let r = check_upgrade(&app, &headers);
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(_) => {
            let v13 = headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_none_or(|v| v.as_bytes() == b"13");
            app.metrics.upgrade("bad_upgrade");
            return if v13 {
                reject(
                    StatusCode::BAD_REQUEST,
                    "bad_upgrade",
                    "not a valid WebSocket upgrade",
                    None,
                )
            } else {
                reject(
                    StatusCode::UPGRADE_REQUIRED,
                    "bad_upgrade",
                    "only WebSocket version 13 is supported",
                    None,
                )
            };
        }
    };
    if let Err((status, code, msg, extra)) = r {
        app.metrics.upgrade(code);
        return reject(status, code, &msg, extra);
    }
    app.metrics.upgrade("ok");
    app.activity.touch();
    let limits = &app.cfg.limits;
    ws.protocols([protocol::SUBPROTOCOL])
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| app.handlers.track(crate::conn::run(app.clone(), socket)))
}

type Rejection = (StatusCode, &'static str, String, Option<Value>);

fn check_upgrade(app: &App, h: &HeaderMap) -> Result<(), Rejection> {
    let origin = h
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if origin.is_empty() || !app.cfg.allowed_origins.iter().any(|o| o == origin) {
        return Err((
            StatusCode::FORBIDDEN,
            "origin_forbidden",
            format!("origin {origin:?} is not allowed"),
            None,
        ));
    }
    let entries: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    if !entries.iter().any(|e| e == protocol::SUBPROTOCOL) {
        return Err((
            StatusCode::BAD_REQUEST,
            "unsupported_version",
            "no protocol version this server speaks was offered".into(),
            Some(json!({"supported": [protocol::SUBPROTOCOL]})),
        ));
    }
    let token = entries
        .iter()
        .find_map(|e| e.strip_prefix(protocol::TOKEN_PREFIX));
    let Some(token) = token else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "no token was offered".into(),
            None,
        ));
    };
    if let Err(e) = crate::token::verify(token, &app.cfg.secrets, &app.cfg.project, now_ms() / 1000)
    {
        let status = if matches!(e, crate::token::TokenError::WrongProject(_)) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        return Err((status, e.code(), e.to_string(), None));
    }
    if app.fenced.load(Ordering::Relaxed) {
        return Err((
            StatusCode::CONFLICT,
            "superseded",
            "a newer workspace owns this project".into(),
            None,
        ));
    }
    if app.connections.load(Ordering::Relaxed) >= app.cfg.limits.max_connections {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!("at most {} connections", app.cfg.limits.max_connections),
            None,
        ));
    }
    if app.stopping.load(Ordering::Relaxed) {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the workspace is stopping".into(),
            None,
        ));
    }
    Ok(())
}

fn not_found() -> Response {
    reject(StatusCode::NOT_FOUND, "not_found", "no such endpoint", None)
}

pub fn ide_router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/ws",
            get(ws_upgrade).fallback(|| async {
                reject(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET",
                    None,
                )
            }),
        )
        .fallback(|| async { not_found() })
        .with_state(app)
}

pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(app): State<Arc<App>>| async move {
                if app.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n").into_response()
                } else {
                    let s = app.status.lock()["sidecar"].clone();
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({ "sidecar": s })),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/activity",
            get(|State(app): State<Arc<App>>| async move {
                let (all, running) = app.terms.counts();
                axum::Json(json!({
                    "last_active_ms": app.activity.last_active_ms(),
                    "connections": app.connections.load(Ordering::Relaxed),
                    "terminals": all,
                    "running_terminals": running,
                    "last_preview_ms": app.activity.last_preview_ms(),
                    "last_output_ms": app.activity.last_output_ms(),
                }))
            }),
        )
        .route(
            "/metrics",
            get(|State(app): State<Arc<App>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    app.metrics.render(app.activity.last_active_ms()),
                )
            }),
        )
        .fallback(|| async { not_found() })
        .with_state(app)
}

/// The Status object of §11, from the sidecar's /status (`None`: down).
pub fn status_from(sidecar: Option<&Value>) -> Value {
    let Some(s) = sidecar else {
        return json!({
            "ready": false,
            "hydration": null,
            "sync": {"state": "offline", "dirty": null, "store_healthy": false, "fenced": false, "last_commit": null, "commit_lag_ms": null},
            "sidecar": "unreachable",
        });
    };
    let fenced = s["fenced"].as_bool().unwrap_or(false);
    let pending = s["pending"].as_bool().unwrap_or(false);
    let healthy = s["store"]["healthy"].as_bool().unwrap_or(false);
    let state = if fenced {
        "fenced"
    } else if pending && !healthy {
        "offline"
    } else if pending {
        "pending"
    } else {
        "saved"
    };
    let mut h = s["hydration"].clone();
    if let Value::Object(m) = &mut h {
        m.remove("damaged");
    }
    json!({
        "ready": s["ready"].as_bool().unwrap_or(false),
        "hydration": h,
        "sync": {
            "state": state,
            "dirty": s["dirty"],
            "store_healthy": healthy,
            "fenced": fenced,
            "last_commit": s["last_commit"],
            "commit_lag_ms": s["commit_lag_ms"],
        },
    })
}

impl App {
    pub fn public_status(&self) -> Value {
        let mut s = self.status.lock().clone();
        if let Value::Object(m) = &mut s {
            m.remove("sidecar");
        }
        s
    }

    fn broadcast(&self, msg: String) {
        for o in self.conns.lock().values() {
            o.text(msg.clone());
        }
    }

    pub fn close_all(&self, code: u16, reason: &str) {
        for o in self.conns.lock().values() {
            o.send(crate::outbox::Out::Close(code, reason.to_string()));
        }
    }

    /// Polls the sidecar every second; tells every connection when the
    /// status changes, at most once per second.
    pub async fn poll_status(self: Arc<Self>) {
        let mut last_key = String::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let raw = self.sidecar.status().await;
            let s = status_from(raw.as_ref());
            // Ready stays ready: a sidecar hiccup is "offline", not a
            // workspace that has to hydrate again.
            if s["ready"].as_bool() == Some(true) {
                self.ready.store(true, Ordering::Relaxed);
            }
            if s["sync"]["fenced"].as_bool() == Some(true)
                && !self.fenced.swap(true, Ordering::Relaxed)
            {
                tracing::warn!("the sidecar is fenced: closing every connection");
                self.close_all(
                    protocol::close::SUPERSEDED,
                    "a newer workspace owns this project",
                );
            }
            let key = format!(
                "{}{}{}{}",
                s["ready"], s["sync"]["state"], s["sync"]["last_commit"], s["hydration"]["done"]
            );
            *self.status.lock() = s;
            if key != last_key {
                last_key = key;
                self.broadcast(
                    json!({"type": "status", "status": self.public_status()}).to_string(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_waits_for_every_handler_and_no_longer_than_its_limit() {
        let handlers = Handlers::default();
        assert!(
            handlers.wait(Duration::from_millis(1)).await,
            "none to wait for"
        );
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let quick = tokio::spawn(handlers.track(async move {
            let _ = done_rx.await;
        }));
        let stuck = tokio::spawn(handlers.track(std::future::pending::<()>()));
        assert_eq!(handlers.count(), 2);
        // One handler never ends: the wait gives up at its limit.
        let t0 = std::time::Instant::now();
        assert!(!handlers.wait(Duration::from_millis(50)).await);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // A handler's task cut short still counts as ended.
        stuck.abort();
        let _ = stuck.await;
        assert_eq!(handlers.count(), 1);
        let _ = done_tx.send(());
        assert!(handlers.wait(Duration::from_secs(5)).await);
        quick.await.unwrap();
        assert_eq!(handlers.count(), 0);
    }
}

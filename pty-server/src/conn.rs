//! One WebSocket connection: hello, requests, binary frames, heartbeat,
//! rate limits (protocol.md §3, §4, §12, §13).

use crate::files::Entry;
use crate::outbox::{self, Out, Outbox};
use crate::protocol::{
    self, close, ApiError, ApiResult, Code, ReadEncoding, Request, TermCreate, WriteEncoding,
};
use crate::server::App;
use crate::sidecar::FlushError;
use crate::terminal::CreateRequest;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const HELLO_DEADLINE: Duration = Duration::from_secs(10);

struct Conn {
    app: Arc<App>,
    id: u64,
    out: Outbox,
    in_flight: Mutex<HashSet<u64>>,
    fs_queue: mpsc::UnboundedSender<(u64, String, Request)>,
}

/// Token bucket over text and INPUT frames (§13). Waiting here stops
/// reading the socket, which is TCP backpressure, not an error.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    async fn take(&mut self) {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
                .min(self.burst);
            self.at = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)).await;
        }
    }
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.chars().take(120).collect::<String>().into(),
    }))
}

pub async fn run(app: Arc<App>, socket: WebSocket) {
    let id = app.next_conn.fetch_add(1, Ordering::Relaxed);
    app.connections.fetch_add(1, Ordering::Relaxed);
    app.metrics.connections.inc();
    let (out, mut inbox) = outbox::channel(id);
    let (mut sink, mut stream) = socket.split();

    // Writer: everything queued for this connection, in order.
    let metrics = app.metrics.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = inbox.recv().await {
            let (msg, last) = match o {
                Out::Text(s) => (Message::Text(s.into()), false),
                Out::Binary(b) => (Message::Binary(b.into()), false),
                Out::Ping => (Message::Ping(Vec::new().into()), false),
                Out::Close(code, reason) => {
                    metrics
                        .closes
                        .get_or_create(&crate::metrics::CodeLabel {
                            code: code.to_string(),
                        })
                        .inc();
                    (close_msg(code, &reason), true)
                }
            };
            if sink.send(msg).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let (fs_tx, fs_rx) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        app: app.clone(),
        id,
        out: out.clone(),
        in_flight: Mutex::new(HashSet::new()),
        fs_queue: fs_tx,
    });
    let fs_task = tokio::spawn(fs_worker(conn.clone(), fs_rx));
    let reason = read_loop(&conn, &mut stream).await;
    // Leave at once: attachments and subscriptions end; terminals keep
    // running. The closing handshake below may take a while.
    app.terms.leave(id);
    app.feed.leave(id);
    app.conns.lock().remove(&id);
    if let Some((code, why)) = reason {
        out.send(Out::Close(code, why));
        // Closing handshake: read (and drop) until the client answers the
        // close. Closing the socket with its frames unread would make the
        // kernel send a reset, and the client would lose the close frame.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    fs_task.abort();
    drop(conn);
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    app.connections.fetch_sub(1, Ordering::Relaxed);
    app.metrics.connections.dec();
    app.activity.touch();
}

/// Reads until the connection ends; returns the close to send, if any.
async fn read_loop(
    conn: &Arc<Conn>,
    stream: &mut futures::stream::SplitStream<WebSocket>,
) -> Option<(u16, String)> {
    let app = &conn.app;
    let limits = &app.cfg.limits;
    // §3: the first frame must be hello, within the deadline.
    let first = match tokio::time::timeout(HELLO_DEADLINE, next_data(stream)).await {
        Err(_) => return Some((close::HELLO_REQUIRED, "no hello within 10 s".into())),
        Ok(None) => return None,
        Ok(Some(m)) => m,
    };
    let Message::Text(t) = first else {
        return Some((
            close::HELLO_REQUIRED,
            "the first message must be hello".into(),
        ));
    };
    let Some((hid, ty, req)) = envelope(&t) else {
        return Some((close::PROTOCOL_ERROR, "malformed message".into()));
    };
    if ty != "hello" {
        return Some((
            close::HELLO_REQUIRED,
            "the first message must be hello".into(),
        ));
    }
    if req["protocol"].as_u64() != Some(protocol::PROTOCOL_VERSION as u64) {
        return Some((
            close::UNSUPPORTED_VERSION,
            "hello.protocol does not match cove.v1".into(),
        ));
    }
    // Join before answering so no event is missed between welcome and now.
    app.conns.lock().insert(conn.id, conn.out.clone());
    app.terms.join(conn.out.clone());
    let welcome = json!({
        "protocol": protocol::PROTOCOL_VERSION,
        "server": concat!("cove-pty/", env!("CARGO_PKG_VERSION")),
        "project": app.cfg.project,
        "instance": app.instance,
        "connection": format!("c{}", conn.id),
        "features": [],
        "limits": limits,
        "preview": {"default_port": app.cfg.app_port, "url": app.cfg.preview_url, "port_url": app.cfg.preview_port_url},
        "status": app.public_status(),
        "terminals": app.terms.list(),
    });
    conn.out.text(protocol::result_json(hid, welcome));

    let mut bucket = Bucket {
        tokens: limits.rate_burst as f64,
        rate: limits.rate_messages_per_sec.max(1) as f64,
        burst: limits.rate_burst.max(1) as f64,
        at: Instant::now(),
    };
    let mut ping = tokio::time::interval(Duration::from_millis(limits.ping_interval_ms));
    ping.tick().await;
    let mut last_seen = Instant::now();
    let dead_after = Duration::from_millis(limits.dead_after_ms);
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = ping.tick() => {
                if last_seen.elapsed() >= dead_after {
                    return Some((close::HEARTBEAT_TIMEOUT, "no message for too long".into()));
                }
                conn.out.send(Out::Text(json!({"type": "heartbeat", "time_ms": crate::activity::now_ms()}).to_string()));
                // A WebSocket ping, answered by the browser itself.
                conn.out.send(Out::Ping);
                continue;
            }
        };
        let msg = match msg {
            None => return None,
            Some(Err(e)) => {
                tracing::debug!(conn = conn.id, error = %e, "connection error");
                let too_big = e.to_string().to_lowercase().contains("too long")
                    || e.to_string().to_lowercase().contains("too big");
                return too_big.then(|| (close::MESSAGE_TOO_BIG, "message too big".into()));
            }
            Some(Ok(m)) => m,
        };
        last_seen = Instant::now();
        match msg {
            Message::Text(t) => {
                bucket.take().await;
                let Some((id, ty, req)) = envelope(&t) else {
                    return Some((close::PROTOCOL_ERROR, "malformed message".into()));
                };
                // §13: no new request while too much waits to be written.
                while conn.out.backlog() > outbox::BACKLOG_LIMIT {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                dispatch(conn, id, ty, req).await;
            }
            Message::Binary(b) => {
                let Some(f) = protocol::decode_client_frame(&b) else {
                    return Some((close::PROTOCOL_ERROR, "bad binary frame".into()));
                };
                if f.kind == protocol::KIND_INPUT {
                    bucket.take().await;
                    if let Some(e) = app.terms.input(f.terminal, conn.id, f.payload) {
                        conn.out.text(e.to_json(None));
                    }
                } else if !app.terms.ack(f.terminal, conn.id, f.offset) {
                    return Some((close::PROTOCOL_ERROR, "ACK beyond the output sent".into()));
                }
            }
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

async fn next_data(stream: &mut futures::stream::SplitStream<WebSocket>) -> Option<Message> {
    loop {
        match stream.next().await? {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

/// `(id, type, object)` of a request, or None for §4.2's close 4000.
fn envelope(t: &str) -> Option<(u64, String, Value)> {
    let v: Value = serde_json::from_str(t).ok()?;
    let ty = v.get("type")?.as_str()?.to_string();
    let id = v.get("id")?.as_u64()?;
    if id >= 1 << 53 {
        return None;
    }
    Some((id, ty, v))
}

/// §6.2: `cols` 1–1000, `rows` 1–500.
fn size(v: u16, f: &str, max: u16) -> ApiResult<u16> {
    if v == 0 || v > max {
        return Err(ApiError::bad_request(f, format!("`{f}` must be 1–{max}")));
    }
    Ok(v)
}

impl Conn {
    fn begin(&self, id: u64) -> ApiResult<()> {
        let mut f = self.in_flight.lock();
        if f.contains(&id) {
            return Err(ApiError::new(
                Code::DuplicateId,
                format!("request {id} is still in flight"),
            ));
        }
        if f.len() >= self.app.cfg.limits.max_in_flight {
            return Err(ApiError::new(Code::Busy, "too many requests in flight")
                .with(json!({"limit": self.app.cfg.limits.max_in_flight})));
        }
        f.insert(id);
        Ok(())
    }

    fn finish(&self, id: u64, ty: &str, started: Instant, r: ApiResult<Value>) {
        self.in_flight.lock().remove(&id);
        let code = match &r {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.app
            .metrics
            .request(ty, code, started.elapsed().as_secs_f64());
        match r {
            Ok(v) => self.out.text(protocol::result_json(id, v)),
            Err(e) => self.out.text(e.to_json(Some(id))),
        };
    }

    fn ready(&self) -> ApiResult<()> {
        if !self.app.ready.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                Code::NotReady,
                "the workspace is still loading",
            ));
        }
        Ok(())
    }

    fn not_stopping(&self) -> ApiResult<()> {
        if self.app.stopping.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                Code::ShuttingDown,
                "the workspace is stopping",
            ));
        }
        Ok(())
    }
}

async fn dispatch(conn: &Arc<Conn>, id: u64, ty: String, raw: Value) {
    let started = Instant::now();
    if let Err(e) = conn.begin(id) {
        // Not in flight: answer without touching the in-flight set.
        conn.out.text(e.to_json(Some(id)));
        return;
    }
    if ty != "hello" {
        conn.app.activity.touch();
    }
    let req = match Request::parse(&ty, &raw) {
        Ok(r) => r,
        Err(e) => return conn.finish(id, &ty, started, Err(e)),
    };
    let app = &conn.app;
    let terms = &app.terms;
    // Requests whose answer comes later (a terminal's result goes out
    // before its output) remove themselves from the in-flight set.
    let answered_by_terminal = |r: ApiResult<()>| match r {
        Ok(()) => {
            conn.in_flight.lock().remove(&id);
            app.metrics
                .request(&ty, "ok", started.elapsed().as_secs_f64());
            None
        }
        Err(e) => Some(Err(e)),
    };
    let r: Option<ApiResult<Value>> = match req {
        Request::Hello(_) => Some(Err(ApiError::new(
            Code::BadRequest,
            "hello was already sent",
        ))),
        Request::TermList => Some(Ok(json!({"terminals": terms.list()}))),
        Request::TermCreate(t) => answered_by_terminal(
            term_create(conn, t).and_then(|cr| terms.create(cr, &conn.out, id)),
        ),
        Request::TermAttach(t) => answered_by_terminal(terms.attach(t.terminal, &conn.out, id)),
        Request::TermDetach(t) => Some(terms.detach(t.terminal, conn.id).map(|_| json!({}))),
        Request::TermResize(t) => Some((|| {
            let cols = size(t.cols, "cols", 1000)?;
            let rows = size(t.rows, "rows", 500)?;
            terms
                .resize(t.terminal, conn.id, cols, rows)
                .map(|_| json!({}))
        })()),
        Request::TermClose(t) => {
            let c = conn.clone();
            let ty = ty.clone();
            tokio::spawn(async move {
                let r = c
                    .app
                    .terms
                    .close(t.terminal)
                    .await
                    .map(|exit| json!({ "exit": exit }));
                c.finish(id, &ty, started, r);
            });
            None
        }
        Request::FsSubscribe(p) => Some((|| {
            app.files.check(&p.path)?;
            let max = app.cfg.limits.max_subscriptions;
            if app.feed.count(conn.id) >= max {
                return Err(ApiError::new(
                    Code::LimitExceeded,
                    format!("at most {max} subscriptions"),
                )
                .with(json!({ "limit": max })));
            }
            Ok(json!({"subscription": app.feed.subscribe(&conn.out, &p.path)}))
        })()),
        Request::FsUnsubscribe(s) => Some(if app.feed.unsubscribe(conn.id, s.subscription) {
            Ok(json!({}))
        } else {
            Err(ApiError::new(
                Code::NotFound,
                format!("no subscription {}", s.subscription),
            )
            .with(json!({ "subscription": s.subscription })))
        }),
        fs => {
            // §4.4: fs requests start in order, one after the other.
            let _ = conn.fs_queue.send((id, ty.clone(), fs));
            None
        }
    };
    if let Some(r) = r {
        conn.finish(id, &ty, started, r);
    }
}

fn term_create(conn: &Conn, t: TermCreate) -> ApiResult<CreateRequest> {
    conn.ready()?;
    conn.not_stopping()?;
    if t.command.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "command",
            "`command` must be a non-empty array of strings",
        ));
    }
    let cwd_rel = t.cwd.unwrap_or_default();
    let cwd = conn.app.files.resolve_dir(&cwd_rel)?;
    let mut env = Vec::new();
    for (k, v) in t.env.unwrap_or_default() {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::bad_request(
                "env",
                format!("invalid environment variable {k:?}"),
            ));
        }
        env.push((k, v));
    }
    let name = t.name.unwrap_or_default();
    if name.len() > 64 {
        return Err(ApiError::bad_request(
            "name",
            "`name` must be a string of at most 64 bytes",
        ));
    }
    Ok(CreateRequest {
        command: t.command,
        cwd,
        cwd_rel,
        env,
        cols: size(t.cols, "cols", 1000)?,
        rows: size(t.rows, "rows", 500)?,
        name,
        attach: t.attach.unwrap_or(true),
    })
}

/// Runs a connection's fs requests one at a time; waiting for durability
/// happens beside it, so a slow store does not hold up reads.
async fn fs_worker(conn: Arc<Conn>, mut rx: mpsc::UnboundedReceiver<(u64, String, Request)>) {
    while let Some((id, ty, req)) = rx.recv().await {
        let started = Instant::now();
        let c = conn.clone();
        let r = tokio::task::spawn_blocking(move || fs_effect(&c, req))
            .await
            .unwrap_or_else(|e| {
                Err(ApiError::new(
                    Code::Internal,
                    format!("internal error: {e}"),
                ))
            });
        match r {
            Ok((result, None)) => conn.finish(id, &ty, started, Ok(result)),
            Err(e) => conn.finish(id, &ty, started, Err(e)),
            Ok((result, Some(paths))) => {
                let c = conn.clone();
                tokio::spawn(async move {
                    let result = durable(&c, id, result, paths).await;
                    c.finish(id, &ty, started, Ok(result));
                });
            }
        }
    }
}

/// The file system effect of one request; `Some(paths)` for mutations,
/// which are answered once those paths are durable.
fn fs_effect(conn: &Conn, req: Request) -> ApiResult<(Value, Option<Vec<String>>)> {
    conn.ready()?;
    let files = &conn.app.files;
    let entry = |e: Entry| json!({ "entry": e });
    let flag = |b: Option<bool>| b.unwrap_or(false);
    match req {
        Request::FsStat(r) => Ok((
            entry(files.stat(&r.path, flag(r.follow), flag(r.version))?),
            None,
        )),
        Request::FsList(r) => {
            let (entries, truncated, skipped) = files.list(&r.path)?;
            Ok((
                json!({"entries": entries, "truncated": truncated, "skipped": skipped}),
                None,
            ))
        }
        Request::FsRead(r) => {
            let base64 = r.encoding == Some(ReadEncoding::Base64);
            let (bytes, st) = files.read_bytes(&r.path)?;
            let version = crate::files::version_of(&bytes);
            let (content, enc) = match (base64, String::from_utf8(bytes)) {
                (false, Ok(s)) if !s.contains('\0') => (s, "utf8"),
                (_, Ok(s)) => (B64.encode(s.as_bytes()), "base64"),
                (_, Err(e)) => (B64.encode(e.as_bytes()), "base64"),
            };
            let mtime = crate::files::mtime_ms(&st);
            Ok((
                json!({"content": content, "encoding": enc, "version": version, "size": st.st_size, "mtime_ms": mtime}),
                None,
            ))
        }
        Request::FsWrite(r) => {
            conn.not_stopping()?;
            let bytes = match r.encoding {
                WriteEncoding::Utf8 => r.content.into_bytes(),
                WriteEncoding::Base64 => B64.decode(&r.content).map_err(|_| {
                    ApiError::bad_request("content", "`content` is not valid base64")
                })?,
            };
            let (w, target) =
                files.write(&r.path, &bytes, r.base_version.as_deref(), flag(r.parents))?;
            Ok((
                serde_json::to_value(w).unwrap_or_default(),
                Some(vec![target]),
            ))
        }
        Request::FsCreate(r) => {
            conn.not_stopping()?;
            let e = files.create(&r.path, r.mode.unwrap_or(0o644))?;
            Ok((entry(e), Some(vec![r.path])))
        }
        Request::FsMkdir(r) => {
            conn.not_stopping()?;
            let e = files.mkdir(&r.path, flag(r.parents))?;
            Ok((entry(e), Some(vec![r.path])))
        }
        Request::FsRename(r) => {
            conn.not_stopping()?;
            files.rename(&r.from, &r.to, flag(r.overwrite))?;
            Ok((json!({}), Some(vec![r.from, r.to])))
        }
        Request::FsDelete(r) => {
            conn.not_stopping()?;
            files.delete(&r.path, flag(r.recursive))?;
            Ok((json!({}), Some(vec![r.path])))
        }
        other => Err(ApiError::new(
            Code::Internal,
            format!("{} is not a file request", other.type_name()),
        )),
    }
}

/// §9.6: adds the durability fields once the sidecar has flushed `paths`,
/// or after `flush_timeout_ms` with `durable: false`; then keeps trying in
/// the background and sends `fs.durable` when it succeeds.
async fn durable(conn: &Arc<Conn>, id: u64, mut result: Value, paths: Vec<String>) -> Value {
    let app = conn.app.clone();
    let timeout = Duration::from_millis(app.cfg.limits.flush_timeout_ms);
    let (tx, mut rx) =
        tokio::sync::watch::channel(None::<Result<protocol::CommitId, &'static str>>);
    let started = Instant::now();
    let app2 = app.clone();
    tokio::spawn(async move {
        loop {
            match app2.sidecar.flush(&paths).await {
                Ok(c) => {
                    app2.metrics
                        .flush_seconds
                        .observe(started.elapsed().as_secs_f64());
                    let _ = tx.send(Some(Ok(c)));
                    return;
                }
                Err(FlushError::Fenced) => {
                    let _ = tx.send(Some(Err("fenced")));
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "flush failed; retrying");
                    let _ = tx.send(Some(Err("unavailable")));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let v = *rx.borrow();
            if let Some(Ok(c)) = v {
                return Some(Ok(c));
            }
            if let Some(Err("fenced")) = v {
                return Some(Err("fenced"));
            }
        }
    })
    .await;
    let m = result.as_object_mut();
    let set = |m: Option<&mut serde_json::Map<String, Value>>,
               durable: bool,
               commit: Value,
               reason: Option<&str>| {
        if let Some(m) = m {
            m.insert("durable".into(), json!(durable));
            m.insert("commit".into(), commit);
            if let Some(r) = reason {
                m.insert("pending_reason".into(), json!(r));
            }
        }
    };
    match outcome {
        Ok(Some(Ok(c))) => set(m, true, json!(c), None),
        Ok(Some(Err(_))) => set(m, false, Value::Null, Some("fenced")),
        _ => {
            let reason = if matches!(*rx.borrow(), Some(Err("unavailable"))) {
                "unavailable"
            } else {
                "timeout"
            };
            set(m, false, Value::Null, Some(reason));
            // Tell this connection later, when it becomes durable.
            let out = conn.out.clone();
            tokio::spawn(async move {
                loop {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    let v = *rx.borrow();
                    match v {
                        Some(Ok(c)) => {
                            out.text(
                                json!({"type": "fs.durable", "request": id, "commit": c})
                                    .to_string(),
                            );
                            return;
                        }
                        Some(Err("fenced")) => return,
                        _ => {}
                    }
                }
            });
        }
    }
    result
}

//! The preview proxy (docs/protocol.md §16): `<id>.<domain>` and
//! `<port>--<id>.<domain>` are forwarded to the app on 127.0.0.1 (or ::1),
//! WebSocket upgrades included. Whatever cannot be forwarded gets a small
//! status page with an `X-Cove-Preview` header the IDE's preview pane reads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::PathAndQuery;
use axum::http::{Response, StatusCode, Uri, Version};
use axum::Router;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::activity::Activity;
use crate::metrics::Metrics;

pub struct PreviewConfig {
    /// This workspace's project id, e.g. "demo".
    pub project: String,
    /// The preview domain, e.g. "app.localhost" or "app.example.com".
    pub domain: String,
    /// `$PORT` of the workspace, e.g. 3000.
    pub default_port: u16,
    /// Cove's own ports, never proxied (403).
    pub reserved_ports: Vec<u16>,
    /// "http" or "https", for X-Forwarded-Proto when the request has none.
    pub forwarded_proto: String,
}

/// How long connecting, and then waiting for response headers, may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

const X_COVE_PREVIEW: HeaderName = HeaderName::from_static("x-cove-preview");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the non-standard ones still
/// seen in the wild.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

struct Shared {
    cfg: Arc<PreviewConfig>,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    /// Lowercased once: `.<domain>` and the project id.
    suffix: String,
    project: String,
    timeout: Duration,
}

/// The preview listener's whole app: every path, every method.
pub fn router(cfg: Arc<PreviewConfig>, activity: Arc<Activity>, metrics: Arc<Metrics>) -> Router {
    router_with_timeout(cfg, activity, metrics, UPSTREAM_TIMEOUT)
}

/// `router` with a shorter timeout, so tests need not wait 30 s.
fn router_with_timeout(
    cfg: Arc<PreviewConfig>,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    timeout: Duration,
) -> Router {
    let shared = Arc::new(Shared {
        suffix: format!(".{}", cfg.domain.trim_matches('.').to_ascii_lowercase()),
        project: cfg.project.to_ascii_lowercase(),
        cfg,
        activity,
        metrics,
        timeout,
    });
    Router::new().fallback(handle).with_state(shared)
}

/// Why a request was not forwarded; each is one status page.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reject {
    BadHost,
    /// The port as written in the host, which may not fit in a u16.
    BadPort(String),
    UnknownWorkspace,
    ReservedPort(u16),
    NotListening(u16),
    NoResponse(u16),
    UpstreamError(u16),
}

impl Reject {
    /// The `X-Cove-Preview` value, also the metrics label.
    fn kind(&self) -> &'static str {
        match self {
            Reject::BadHost => "bad-host",
            Reject::BadPort(_) => "bad-port",
            Reject::UnknownWorkspace => "unknown-workspace",
            Reject::ReservedPort(_) => "reserved-port",
            Reject::NotListening(_) => "not-listening",
            Reject::NoResponse(_) => "no-response",
            Reject::UpstreamError(_) => "upstream-error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Reject::BadHost | Reject::BadPort(_) => StatusCode::BAD_REQUEST,
            Reject::UnknownWorkspace => StatusCode::NOT_FOUND,
            Reject::ReservedPort(_) => StatusCode::FORBIDDEN,
            Reject::NotListening(_) | Reject::UpstreamError(_) => StatusCode::BAD_GATEWAY,
            Reject::NoResponse(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn headline(&self) -> String {
        match self {
            Reject::BadHost => "This is not a Cove preview address.".to_string(),
            Reject::BadPort(p) => format!("Port {p} is not a valid port."),
            Reject::UnknownWorkspace => "No such workspace here.".to_string(),
            Reject::ReservedPort(p) => {
                format!("Port {p} is used by Cove and cannot be previewed.")
            }
            Reject::NotListening(p) => format!("Nothing is listening on port {p} yet."),
            Reject::NoResponse(p) => format!("The app on port {p} is not responding."),
            Reject::UpstreamError(p) => format!("The app on port {p} closed the connection."),
        }
    }

    /// What to do about it, for the not-listening page. `$PORT` is only
    /// mentioned when it is the port asked for, or it would mislead.
    fn hint(&self, default_port: u16) -> Option<String> {
        match self {
            Reject::NotListening(p) => {
                let env = if *p == default_port { " ($PORT)" } else { "" };
                Some(format!(
                    "Start your app so that it listens on port {p}{env}."
                ))
            }
            _ => None,
        }
    }

    fn into_response(self, html: bool, default_port: u16) -> Response<Body> {
        let headline = self.headline();
        let hint = self.hint(default_port);
        let retry = matches!(self, Reject::NotListening(_));
        let (content_type, body) = if html {
            let refresh = if retry {
                "<meta http-equiv=\"refresh\" content=\"2\">\n"
            } else {
                ""
            };
            let detail = match &hint {
                Some(h) => format!(
                    "<p>{}</p>\n<p>This page reloads by itself.</p>\n",
                    escape_html(h).replace("$PORT", "<code>$PORT</code>")
                ),
                None => String::new(),
            };
            let h = escape_html(&headline);
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html>\n<html><head>\n<meta charset=\"utf-8\">\n{refresh}\
                     <meta name=\"viewport\" content=\"width=device-width\">\n\
                     <title>{h}</title>\n\
                     <style>body{{font-family:system-ui,sans-serif;max-width:40em;\
                     margin:4em auto;padding:0 1em;color:#333}}</style>\n\
                     </head><body>\n<h1>{h}</h1>\n{detail}</body></html>\n"
                ),
            )
        } else {
            let line = match &hint {
                Some(h) => format!("{headline} {h}\n"),
                None => format!("{headline}\n"),
            };
            ("text/plain; charset=utf-8", line)
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(X_COVE_PREVIEW, HeaderValue::from_static(self.kind()));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response<Body> {
    sh.activity.touch_preview();
    let html = accepts_html(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_host = raw_host(&req);
    let outcome = match raw_host.as_deref() {
        None => Err(Reject::BadHost),
        Some(raw) => match target(&sh, &host_name(raw)) {
            Ok(port) => forward(&sh, req, port, raw).await,
            Err(rej) => Err(rej),
        },
    };
    let (result, resp) = match outcome {
        Ok(resp) => ("forwarded", resp),
        Err(rej) => (rej.kind(), rej.into_response(html, sh.cfg.default_port)),
    };
    sh.metrics.preview_request(result);
    debug!(
        %method,
        host = raw_host.as_deref().unwrap_or(""),
        path,
        result,
        status = resp.status().as_u16(),
        "preview request"
    );
    resp
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// The host as the client sent it: `Host`, else the URI's authority (h2's
/// `:authority`, or an absolute-form request line).
fn raw_host(req: &Request) -> Option<String> {
    match req.headers().get(header::HOST) {
        Some(v) => v.to_str().ok().map(str::to_string),
        None => {
            let a = req.uri().authority()?;
            // Not `a.as_str()`: that would keep any `user@`.
            Some(match a.port() {
                Some(p) => format!("{}:{}", a.host(), p),
                None => a.host().to_string(),
            })
        }
    }
}

/// Lowercased, without `:port`, and without the trailing dot of a fully
/// qualified name (browsers send it as typed).
fn host_name(raw: &str) -> String {
    let name = raw.trim();
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The port a host name is previewed on, or why it is not.
fn target(sh: &Shared, host: &str) -> Result<u16, Reject> {
    let label = host.strip_suffix(&sh.suffix).ok_or(Reject::BadHost)?;
    if label.is_empty() || label.contains('.') {
        return Err(Reject::BadHost);
    }
    let (port, id) = match split_port_form(label) {
        Some((digits, id)) => (Some(digits), id),
        None => (None, label),
    };
    if id.is_empty() {
        return Err(Reject::BadHost);
    }
    let port = match port {
        Some(digits) => parse_port(digits).ok_or_else(|| Reject::BadPort(digits.to_string()))?,
        None => sh.cfg.default_port,
    };
    if id != sh.project {
        return Err(Reject::UnknownWorkspace);
    }
    if sh.cfg.reserved_ports.contains(&port) {
        return Err(Reject::ReservedPort(port));
    }
    Ok(port)
}

/// `^[0-9]+--` means the port form, always: `(digits, rest after "--")`.
fn split_port_form(label: &str) -> Option<(&str, &str)> {
    let n = label.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    let rest = label[n..].strip_prefix("--")?;
    Some((&label[..n], rest))
}

/// 1–65535, decimal, no leading zero.
fn parse_port(digits: &str) -> Option<u16> {
    if digits.starts_with('0') || digits.len() > 5 {
        return None;
    }
    digits.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `Connection: upgrade` (WebSocket or otherwise) asks to switch protocols.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that only concern one hop. For an upgrade request
/// `Upgrade` is kept and `Connection` reduced to `upgrade`, which is what
/// asks the upstream to switch.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn add_forwarded(headers: &mut HeaderMap, raw_host: &str, proto: &str, peer: Option<IpAddr>) {
    if let Ok(v) = HeaderValue::from_str(raw_host) {
        headers.insert(X_FORWARDED_HOST, v);
    }
    // The ingress knows whether the browser used https; we only guess.
    if !headers.contains_key(X_FORWARDED_PROTO) {
        if let Ok(v) = HeaderValue::from_str(proto) {
            headers.insert(X_FORWARDED_PROTO, v);
        }
    }
    if let Some(ip) = peer {
        let prior: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let value = if prior.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
}

/// Connects to the app: 127.0.0.1 first, then ::1 if that was refused
/// (Node ≥ 17 binds `localhost` to ::1). `Ok(None)` means nothing listens.
async fn connect(port: u16) -> io::Result<Option<TcpStream>> {
    match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
        Ok(s) => return Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(e) => return Err(e),
    }
    match TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await {
        Ok(s) => Ok(Some(s)),
        // Refused, or no IPv6 loopback at all: either way nothing is there.
        Err(e) => {
            debug!(port, error = %e, "preview: [::1] not reachable either");
            Ok(None)
        }
    }
}

async fn forward(
    sh: &Shared,
    mut req: Request,
    port: u16,
    raw_host: &str,
) -> Result<Response<Body>, Reject> {
    let upgrade = wants_upgrade(req.headers());
    // Must be taken before the request is consumed: it is hyper's only way
    // of handing us the client's connection after the 101.
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    // h2 clients send no Host; HTTP/1.1 upstreams require one.
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(raw_host) {
            headers.insert(header::HOST, v);
        }
    }
    add_forwarded(&mut headers, raw_host, &sh.cfg.forwarded_proto, peer);

    // Each request body frame counts as progress, so a slow upload is not
    // mistaken for an app that does not answer.
    let progress = Arc::new(Notify::new());
    let notify = progress.clone();
    let body = body.map_frame(move |frame| {
        notify.notify_one();
        frame
    });
    let mut up = hyper::Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = parts
        .uri
        .path_and_query()
        .cloned()
        .map(Uri::from)
        .unwrap_or_else(|| Uri::from(PathAndQuery::from_static("/")));
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;

    let stream = match tokio::time::timeout(sh.timeout, connect(port)).await {
        Err(_) => return Err(Reject::NoResponse(port)),
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return Err(Reject::NotListening(port)),
        Ok(Err(e)) => {
            warn!(port, error = %e, "preview: cannot connect to the app");
            return Err(Reject::UpstreamError(port));
        }
    };
    // Small writes (HMR messages, keystrokes) should not wait for Nagle.
    let _ = stream.set_nodelay(true);

    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            warn!(port, error = %e, "preview: HTTP handshake with the app failed");
            return Err(Reject::UpstreamError(port));
        }
    };
    // The connection task streams both bodies; it ends when the response
    // body is done or dropped (a browser leaving an SSE stream closes it).
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(port, error = %e, "preview: app connection ended with an error");
        }
    });

    let sent = sender.send_request(up);
    tokio::pin!(sent);
    let result = loop {
        tokio::select! {
            r = &mut sent => break r,
            waited = tokio::time::timeout(sh.timeout, progress.notified()) => {
                if waited.is_err() {
                    return Err(Reject::NoResponse(port));
                }
            }
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            debug!(port, error = %e, "preview: app closed before answering");
            return Err(Reject::UpstreamError(port));
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            warn!(port, "preview: app switched protocols without being asked");
            return Err(Reject::UpstreamError(port));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(
            client_upgrade,
            upstream_upgrade,
            sh.activity.clone(),
            port,
        ));
        // The upstream's own headers (Upgrade, Sec-WebSocket-Accept, ...)
        // are what the client must see.
        let mut out = Response::new(Body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = std::mem::take(resp.headers_mut());
        return Ok(out);
    }

    let (parts, body) = resp.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, false);
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Copies bytes both ways between the upgraded client and app connections.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, activity: Arc<Activity>, port: u16) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            warn!(port, error = %e, "preview: upgrade failed after 101");
            return;
        }
    };
    let mut client = Touching {
        io: TokioIo::new(client),
        activity: activity.clone(),
    };
    let mut upstream = Touching {
        io: TokioIo::new(upstream),
        activity,
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_app, to_client)) => {
            debug!(
                port,
                to_app, to_client, "preview: upgraded connection closed"
            )
        }
        Err(e) => debug!(port, error = %e, "preview: upgraded connection ended"),
    }
}

/// An upgraded connection whose traffic counts as preview activity: every
/// successful read touches `Activity` (two relaxed atomics, cheap).
struct Touching<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Touching<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch_preview();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touching<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A reverse proxy to one local port with the preview's forwarding rules:
/// hop-by-hop headers, `X-Forwarded-*`, WebSocket tunnels and the status
/// pages. The controller's gateway uses it to reach a workspace's
/// listeners, so both hops behave the same.
pub struct Upstream {
    shared: Arc<Shared>,
}

impl Upstream {
    pub fn new(forwarded_proto: &str) -> Self {
        let cfg = Arc::new(PreviewConfig {
            project: String::new(),
            domain: String::new(),
            default_port: 0,
            reserved_ports: Vec::new(),
            forwarded_proto: forwarded_proto.to_string(),
        });
        Upstream {
            shared: Arc::new(Shared {
                suffix: String::new(),
                project: String::new(),
                cfg,
                activity: Arc::new(Activity::new()),
                metrics: Arc::new(Metrics::new()),
                timeout: UPSTREAM_TIMEOUT,
            }),
        }
    }

    /// Forwards `req` to 127.0.0.1:`port` (or [::1]); a status page when
    /// nothing answers there.
    pub async fn forward(&self, req: Request, port: u16) -> Response<Body> {
        let html = accepts_html(req.headers());
        let raw = raw_host(&req).unwrap_or_default();
        match forward(&self.shared, req, port, &raw).await {
            Ok(r) => r,
            Err(rej) => rej.into_response(html, port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ResultLabel;
    use axum::routing::post;
    use futures::{SinkExt, StreamExt};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    /// Only a guard against hanging forever; no test depends on timing.
    const GUARD: Duration = Duration::from_secs(20);
    const HOST: &str = "demo.app.localhost";

    struct Proxy {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
    }

    impl Proxy {
        fn url(&self, path: &str) -> String {
            format!("http://{}{}", self.addr, path)
        }

        fn count(&self, result: &str) -> u64 {
            self.metrics
                .preview_requests
                .get_or_create(&ResultLabel {
                    result: result.to_string(),
                })
                .get()
        }
    }

    async fn spawn_proxy(default_port: u16) -> Proxy {
        spawn_proxy_with_timeout(default_port, UPSTREAM_TIMEOUT).await
    }

    async fn spawn_proxy_with_timeout(default_port: u16, timeout: Duration) -> Proxy {
        let cfg = Arc::new(PreviewConfig {
            project: "demo".to_string(),
            domain: "app.localhost".to_string(),
            default_port,
            reserved_ports: vec![7080, 7081, 7082, 7083],
            forwarded_proto: "https".to_string(),
        });
        let activity = Arc::new(Activity::new());
        let metrics = Arc::new(Metrics::new());
        let app = router_with_timeout(cfg, activity.clone(), metrics.clone(), timeout);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Proxy {
            addr,
            metrics,
            activity,
        }
    }

    /// An upstream that answers every request with what it received.
    fn echo_app(name: &'static str) -> Router {
        Router::new()
            .route(
                "/stream",
                post(|req: Request| async move { Response::new(Body::new(req.into_body())) }),
            )
            .fallback(move |req: Request| async move {
                let mut out = format!("app: {name}\n{} {}\n", req.method(), req.uri());
                for (k, v) in req.headers() {
                    out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
                }
                out
            })
    }

    async fn spawn_app(app: Router) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    /// A port nothing listens on (bound, then released).
    async fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    /// The echoed request: its request line, and its headers by name.
    fn parse_echo(body: &str) -> (String, Vec<(String, String)>) {
        let mut lines = body.lines();
        let _app = lines.next().unwrap();
        let request_line = lines.next().unwrap().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (request_line, headers)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    async fn get(proxy: &Proxy, host: &str, accept: &str) -> reqwest::Response {
        tokio::time::timeout(
            GUARD,
            client()
                .get(proxy.url("/"))
                .header("host", host)
                .header("accept", accept)
                .send(),
        )
        .await
        .unwrap()
        .unwrap()
    }

    /// Sends raw bytes and reads one response with a Content-Length body.
    async fn raw_exchange(addr: SocketAddr, request: &str) -> (String, String) {
        tokio::time::timeout(GUARD, async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let head_end = read_until(&mut s, &mut buf, b"\r\n\r\n").await + 4;
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("content-length");
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap();
            (head, body)
        })
        .await
        .unwrap()
    }

    /// Reads until `needle` has arrived; returns where it starts.
    async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> usize {
        loop {
            if let Some(i) = buf.windows(needle.len()).position(|w| w == needle) {
                return i;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn host_parsing() {
        let sh = Shared {
            cfg: Arc::new(PreviewConfig {
                project: "Demo".to_string(),
                domain: "app.example.com".to_string(),
                default_port: 3000,
                reserved_ports: vec![7080],
                forwarded_proto: "https".to_string(),
            }),
            activity: Arc::new(Activity::new()),
            metrics: Arc::new(Metrics::new()),
            suffix: ".app.example.com".to_string(),
            project: "demo".to_string(),
            timeout: UPSTREAM_TIMEOUT,
        };
        let t = |raw: &str| target(&sh, &host_name(raw));
        assert_eq!(t("demo.app.example.com"), Ok(3000));
        assert_eq!(t("DEMO.App.Example.com:443"), Ok(3000));
        assert_eq!(t("demo.app.example.com."), Ok(3000));
        assert_eq!(t("5173--demo.app.example.com"), Ok(5173));
        assert_eq!(t("65535--demo.app.example.com"), Ok(65535));
        assert_eq!(t("1--demo.app.example.com"), Ok(1));
        assert_eq!(t("app.example.com"), Err(Reject::BadHost));
        assert_eq!(t("demo.app.example.org"), Err(Reject::BadHost));
        assert_eq!(t("x.demo.app.example.com"), Err(Reject::BadHost));
        assert_eq!(t(".app.example.com"), Err(Reject::BadHost));
        assert_eq!(t("3000--.app.example.com"), Err(Reject::BadHost));
        assert_eq!(t("evildemo.app.example.com.evil"), Err(Reject::BadHost));
        assert_eq!(
            t("0--demo.app.example.com"),
            Err(Reject::BadPort("0".into()))
        );
        assert_eq!(
            t("0123--demo.app.example.com"),
            Err(Reject::BadPort("0123".into()))
        );
        assert_eq!(
            t("70000--demo.app.example.com"),
            Err(Reject::BadPort("70000".into()))
        );
        assert_eq!(
            t("99999999999999999999--demo.app.example.com"),
            Err(Reject::BadPort("99999999999999999999".into()))
        );
        assert_eq!(t("other.app.example.com"), Err(Reject::UnknownWorkspace));
        assert_eq!(
            t("3000-demo.app.example.com"),
            Err(Reject::UnknownWorkspace)
        );
        // `^[0-9]+--` is always the port form, whatever follows.
        assert_eq!(
            t("3000--3000--demo.app.example.com"),
            Err(Reject::UnknownWorkspace)
        );
        assert_eq!(
            t("7080--demo.app.example.com"),
            Err(Reject::ReservedPort(7080))
        );
    }

    #[tokio::test]
    async fn forwards_get_with_path_query_and_forwarded_headers() {
        let port = spawn_app(echo_app("main")).await;
        let proxy = spawn_proxy(port).await;
        let resp = client()
            .get(proxy.url("/some/path?q=1&r=two%20words"))
            .header("host", HOST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("x-cove-preview").is_none());
        let body = resp.text().await.unwrap();
        let (line, headers) = parse_echo(&body);
        assert!(body.starts_with("app: main\n"), "{body}");
        assert_eq!(line, "GET /some/path?q=1&r=two%20words");
        assert_eq!(header(&headers, "host"), Some(HOST));
        assert_eq!(header(&headers, "x-forwarded-host"), Some(HOST));
        assert_eq!(header(&headers, "x-forwarded-proto"), Some("https"));
        assert_eq!(header(&headers, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(proxy.count("forwarded"), 1);
        assert!(proxy.activity.last_preview_ms() > 0);
    }

    #[tokio::test]
    async fn keeps_incoming_proto_appends_for_and_strips_hop_by_hop() {
        let port = spawn_app(echo_app("main")).await;
        let proxy = spawn_proxy(port).await;
        let (head, body) = raw_exchange(
            proxy.addr,
            "GET /hop HTTP/1.1\r\nHost: demo.app.localhost:8080\r\n\
             Connection: close, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nProxy-Connection: keep-alive\r\nX-Keep: 2\r\n\
             X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (line, headers) = parse_echo(&body);
        assert_eq!(line, "GET /hop");
        assert_eq!(header(&headers, "host"), Some("demo.app.localhost:8080"));
        assert_eq!(
            header(&headers, "x-forwarded-host"),
            Some("demo.app.localhost:8080")
        );
        assert_eq!(header(&headers, "x-forwarded-proto"), Some("http"));
        assert_eq!(
            header(&headers, "x-forwarded-for"),
            Some("10.0.0.1, 127.0.0.1")
        );
        assert_eq!(header(&headers, "x-keep"), Some("2"));
        for gone in ["x-drop", "keep-alive", "te", "proxy-connection", "upgrade"] {
            assert_eq!(header(&headers, gone), None, "{gone} was forwarded: {body}");
        }
        // hyper may add its own Connection header towards the app, never ours.
        assert_ne!(header(&headers, "connection"), Some("close, X-Drop"));
    }

    #[tokio::test]
    async fn post_bodies_stream_both_ways() {
        let port = spawn_app(echo_app("main")).await;
        let proxy = spawn_proxy(port).await;
        tokio::time::timeout(GUARD, async {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            s.write_all(
                b"POST /stream HTTP/1.1\r\nHost: demo.app.localhost\r\n\
                  Transfer-Encoding: chunked\r\n\r\n7\r\nhello-1\r\n",
            )
            .await
            .unwrap();
            // The first chunk comes back before the request body is finished:
            // neither direction is buffered.
            let mut buf = Vec::new();
            let head = read_until(&mut s, &mut buf, b"\r\n\r\n").await;
            let head = String::from_utf8_lossy(&buf[..head]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            read_until(&mut s, &mut buf, b"hello-1").await;
            assert!(!buf.windows(7).any(|w| w == b"hello-2"));
            s.write_all(b"7\r\nhello-2\r\n0\r\n\r\n").await.unwrap();
            read_until(&mut s, &mut buf, b"hello-2").await;
            read_until(&mut s, &mut buf, b"0\r\n\r\n").await;
        })
        .await
        .unwrap();

        // A large body arrives intact.
        let big: String = (0..200_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let resp = client()
            .post(proxy.url("/stream"))
            .header("host", HOST)
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), big);
    }

    #[tokio::test]
    async fn response_streams_before_the_app_finishes() {
        let gate: Arc<Mutex<Option<oneshot::Receiver<()>>>> = Arc::new(Mutex::new(None));
        let (tx, rx) = oneshot::channel();
        *gate.lock().unwrap() = Some(rx);
        let app = Router::new().fallback(move || {
            let rx = gate.lock().unwrap().take();
            async move {
                let first = futures::stream::once(async { Ok::<_, io::Error>("data: one\n\n") });
                let second = futures::stream::once(async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    Ok("data: two\n\n")
                });
                let mut resp = Response::new(Body::from_stream(first.chain(second)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                resp
            }
        });
        let port = spawn_app(app).await;
        let proxy = spawn_proxy(port).await;
        let mut resp = client()
            .get(proxy.url("/events"))
            .header("host", HOST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let first = tokio::time::timeout(GUARD, resp.chunk())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.as_deref(), Some(&b"data: one\n\n"[..]));
        tx.send(()).unwrap();
        let mut rest = Vec::new();
        while let Some(c) = tokio::time::timeout(GUARD, resp.chunk())
            .await
            .unwrap()
            .unwrap()
        {
            rest.extend_from_slice(&c);
        }
        assert_eq!(rest, b"data: two\n\n");
    }

    #[tokio::test]
    async fn port_form_reaches_that_port() {
        let main = spawn_app(echo_app("main")).await;
        let other = spawn_app(echo_app("other")).await;
        let proxy = spawn_proxy(main).await;
        let host = format!("{other}--Demo.App.Localhost:8443");
        let resp = get(&proxy, &host, "*/*").await;
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.starts_with("app: other\n"), "{body}");
        let (_, headers) = parse_echo(&body);
        assert_eq!(header(&headers, "host"), Some(host.as_str()));

        let body = get(&proxy, HOST, "*/*").await.text().await.unwrap();
        assert!(body.starts_with("app: main\n"), "{body}");
    }

    #[tokio::test]
    async fn falls_back_to_ipv6_loopback() {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, echo_app("v6")).await.unwrap() });
        let proxy = spawn_proxy(port).await;
        let resp = get(&proxy, HOST, "*/*").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().starts_with("app: v6\n"));
    }

    #[tokio::test]
    async fn nothing_listening_page() {
        let port = free_port().await;
        let proxy = spawn_proxy(port).await;

        let resp = get(&proxy, HOST, "text/html,application/xhtml+xml,*/*;q=0.8").await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-cove-preview"], "not-listening");
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("<meta http-equiv=\"refresh\" content=\"2\">"),
            "{html}"
        );
        assert!(
            html.contains(&format!("Nothing is listening on port {port} yet.")),
            "{html}"
        );
        assert!(
            html.contains(&format!("listens on port {port} (<code>$PORT</code>)")),
            "{html}"
        );

        let resp = get(&proxy, HOST, "*/*").await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-cove-preview"], "not-listening");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = resp.text().await.unwrap();
        assert!(text.starts_with(&format!("Nothing is listening on port {port} yet.")));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(proxy.count("not-listening"), 2);
        assert_eq!(proxy.count("forwarded"), 0);
    }

    #[tokio::test]
    async fn status_pages_for_bad_addresses() {
        let port = spawn_app(echo_app("main")).await;
        let proxy = spawn_proxy(port).await;
        let cases = [
            (
                "demo.other.localhost",
                400,
                "bad-host",
                "This is not a Cove preview address.",
            ),
            (
                "a.demo.app.localhost",
                400,
                "bad-host",
                "This is not a Cove preview address.",
            ),
            (
                "app.localhost",
                400,
                "bad-host",
                "This is not a Cove preview address.",
            ),
            (
                "0--demo.app.localhost",
                400,
                "bad-port",
                "Port 0 is not a valid port.",
            ),
            (
                "70000--demo.app.localhost",
                400,
                "bad-port",
                "Port 70000 is not a valid port.",
            ),
            (
                "0123--demo.app.localhost",
                400,
                "bad-port",
                "Port 0123 is not a valid port.",
            ),
            (
                "other.app.localhost",
                404,
                "unknown-workspace",
                "No such workspace here.",
            ),
            (
                "7081--demo.app.localhost",
                403,
                "reserved-port",
                "Port 7081 is used by Cove and cannot be previewed.",
            ),
        ];
        for (host, status, kind, text) in cases {
            let resp = get(&proxy, host, "application/json").await;
            assert_eq!(resp.status(), status, "{host}");
            assert_eq!(resp.headers()["x-cove-preview"], kind, "{host}");
            assert_eq!(resp.headers()["cache-control"], "no-store", "{host}");
            assert!(resp.headers().get("retry-after").is_none());
            assert_eq!(resp.text().await.unwrap(), format!("{text}\n"), "{host}");

            let resp = get(&proxy, host, "text/html").await;
            assert_eq!(resp.status(), status, "{host}");
            let html = resp.text().await.unwrap();
            assert!(html.contains(&format!("<h1>{text}</h1>")), "{host}: {html}");
            assert!(!html.contains("refresh"), "{host}: {html}");
        }
        assert_eq!(proxy.count("bad-host"), 6);
        assert_eq!(proxy.count("bad-port"), 6);
        assert_eq!(proxy.count("unknown-workspace"), 2);
        assert_eq!(proxy.count("reserved-port"), 2);
        assert_eq!(proxy.count("forwarded"), 0);

        // No Host at all (HTTP/1.0).
        let (head, body) = raw_exchange(proxy.addr, "GET / HTTP/1.0\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.0 400"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-cove-preview: bad-host"),
            "{head}"
        );
        assert_eq!(body, "This is not a Cove preview address.\n");
    }

    #[tokio::test]
    async fn app_closing_without_answer_is_upstream_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        });
        let proxy = spawn_proxy(port).await;
        let resp = get(&proxy, HOST, "*/*").await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-cove-preview"], "upstream-error");
        assert_eq!(
            resp.text().await.unwrap(),
            format!("The app on port {port} closed the connection.\n")
        );
        assert_eq!(proxy.count("upstream-error"), 1);
    }

    #[tokio::test]
    async fn app_that_never_answers_is_no_response() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // Holds the connection open, silent, until the test is over.
            let (_s, _) = listener.accept().await.unwrap();
            let _ = done_rx.await;
        });
        let proxy = spawn_proxy_with_timeout(port, Duration::from_millis(200)).await;
        let resp = get(&proxy, HOST, "*/*").await;
        assert_eq!(resp.status(), 504);
        assert_eq!(resp.headers()["x-cove-preview"], "no-response");
        assert_eq!(
            resp.text().await.unwrap(),
            format!("The app on port {port} is not responding.\n")
        );
        drop(done_tx);
    }

    /// A WebSocket echo app; sends the path and Host it saw to `seen`.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    async fn spawn_ws_echo() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let callback =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            let host = req.headers()["host"].to_str().unwrap().to_string();
                            let _ = seen_tx.send((req.uri().to_string(), host));
                            Ok(resp)
                        };
                    let mut ws = tokio_tungstenite::accept_hdr_async(s, callback)
                        .await
                        .unwrap();
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() || m.is_binary() {
                            ws.send(m).await.unwrap();
                        }
                    }
                });
            }
        });
        (port, seen_rx)
    }

    #[tokio::test]
    async fn websocket_echo_through_the_proxy() {
        let (port, mut seen) = spawn_ws_echo().await;
        let proxy = spawn_proxy(port).await;
        tokio::time::timeout(GUARD, async {
            let req = "ws://demo.app.localhost/socket?token=abc"
                .into_client_request()
                .unwrap();
            let stream = TcpStream::connect(proxy.addr).await.unwrap();
            let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
            assert_eq!(resp.status(), 101);
            let (path, host) = seen.recv().await.unwrap();
            assert_eq!(path, "/socket?token=abc");
            assert_eq!(host, HOST);

            for i in 0..3 {
                ws.send(Message::text(format!("hello {i}"))).await.unwrap();
                let m = ws.next().await.unwrap().unwrap();
                assert_eq!(m, Message::text(format!("hello {i}")));
            }
            let big = vec![7u8; 300_000];
            ws.send(Message::binary(big.clone())).await.unwrap();
            let m = ws.next().await.unwrap().unwrap();
            assert_eq!(m, Message::binary(big));
            ws.close(None).await.unwrap();
        })
        .await
        .unwrap();
        assert_eq!(proxy.count("forwarded"), 1);
    }

    #[tokio::test]
    async fn websocket_to_nothing_gets_the_status_page() {
        let port = free_port().await;
        let proxy = spawn_proxy(port).await;
        let req = "ws://demo.app.localhost/hmr".into_client_request().unwrap();
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let err = tokio::time::timeout(GUARD, tokio_tungstenite::client_async(req, stream))
            .await
            .unwrap()
            .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 502);
                assert_eq!(resp.headers()["x-cove-preview"], "not-listening");
            }
            other => panic!("expected an HTTP error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tunnel_reads_count_as_preview_activity() {
        let activity = Arc::new(Activity::new());
        assert_eq!(activity.last_preview_ms(), 0);
        let (a, mut b) = tokio::io::duplex(64);
        let mut touching = Touching {
            io: a,
            activity: activity.clone(),
        };
        touching.write_all(b"out").await.unwrap();
        assert_eq!(activity.last_preview_ms(), 0, "writes alone do not count");
        b.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        touching.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(activity.last_preview_ms() > 0);
    }

    #[tokio::test]
    async fn upgrade_refused_by_the_app_is_returned_as_is() {
        let port = spawn_app(echo_app("main")).await;
        let proxy = spawn_proxy(port).await;
        let (head, body) = raw_exchange(
            proxy.addr,
            "GET /plain HTTP/1.1\r\nHost: demo.app.localhost\r\n\
             Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let (line, headers) = parse_echo(&body);
        assert_eq!(line, "GET /plain");
        assert_eq!(header(&headers, "upgrade"), Some("websocket"));
        assert_eq!(header(&headers, "connection"), Some("upgrade"));
    }
}

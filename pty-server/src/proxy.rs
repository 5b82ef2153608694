//! A reverse proxy to one local port, as both of Cove's hops use it: the
//! preview listener of cove-pty ([`crate::preview`]) and the controller's
//! gateway. It drops hop-by-hop headers (RFC 9110 §7.6.1), adds
//! `X-Forwarded-*`, streams bodies both ways, and tunnels upgrades
//! (WebSocket) after the app's `101`. What it cannot forward it reports as
//! a [`ProxyError`]; the caller picks the page.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::PathAndQuery;
use axum::http::{Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::activity::Activity;

/// How long connecting, and then waiting for response headers (or the
/// next request body frame), may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Why a request was not forwarded to `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("nothing is listening on port {0}")]
    NotListening(u16),
    /// No connection, or no answer, within the timeout.
    #[error("the app on port {0} is not responding")]
    NoResponse(u16),
    /// The app closed the connection or broke HTTP.
    #[error("the app on port {0} closed the connection")]
    Upstream(u16),
}

/// The forwarding rules and where traffic counts as activity.
#[derive(Clone)]
pub struct Proxy {
    /// "http" or "https", for X-Forwarded-Proto when the request has none.
    forwarded_proto: String,
    timeout: Duration,
    /// Touched by every read of a tunnelled connection (cove-pty's idle
    /// tracking); `None` where nobody tracks it.
    activity: Option<Arc<Activity>>,
}

impl Proxy {
    pub fn new(forwarded_proto: &str) -> Self {
        Proxy {
            forwarded_proto: forwarded_proto.to_string(),
            timeout: UPSTREAM_TIMEOUT,
            activity: None,
        }
    }

    /// A shorter timeout than [`UPSTREAM_TIMEOUT`], e.g. for tests.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Forwards `req` to 127.0.0.1:`port` (or [::1]). `raw_host` is the
    /// host the client asked for ([`raw_host`]), sent on as
    /// `X-Forwarded-Host` (and as `Host` to an h2 client's app).
    pub async fn forward(
        &self,
        mut req: Request,
        port: u16,
        raw_host: &str,
    ) -> Result<Response<Body>, ProxyError> {
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
        add_forwarded(&mut headers, raw_host, &self.forwarded_proto, peer);

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

        let stream = match tokio::time::timeout(self.timeout, connect(port)).await {
            Err(_) => return Err(ProxyError::NoResponse(port)),
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return Err(ProxyError::NotListening(port)),
            Ok(Err(e)) => {
                warn!(port, error = %e, "preview: cannot connect to the app");
                return Err(ProxyError::Upstream(port));
            }
        };
        // Small writes (HMR messages, keystrokes) should not wait for Nagle.
        let _ = stream.set_nodelay(true);

        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(port, error = %e, "preview: HTTP handshake with the app failed");
                    return Err(ProxyError::Upstream(port));
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
                waited = tokio::time::timeout(self.timeout, progress.notified()) => {
                    if waited.is_err() {
                        return Err(ProxyError::NoResponse(port));
                    }
                }
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                debug!(port, error = %e, "preview: app closed before answering");
                return Err(ProxyError::Upstream(port));
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                warn!(port, "preview: app switched protocols without being asked");
                return Err(ProxyError::Upstream(port));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                self.activity.clone(),
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
}

/// The host as the client sent it: `Host`, else the URI's authority (h2's
/// `:authority`, or an absolute-form request line).
pub fn raw_host(req: &Request) -> Option<String> {
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

/// Copies bytes both ways between the upgraded client and app connections.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    activity: Option<Arc<Activity>>,
    port: u16,
) {
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
    activity: Option<Arc<Activity>>,
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
            if let Some(a) = &self.activity {
                a.touch_preview();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tunnel_reads_count_as_preview_activity() {
        let activity = Arc::new(Activity::new());
        assert_eq!(activity.last_preview_ms(), 0);
        let (a, mut b) = tokio::io::duplex(64);
        let mut touching = Touching {
            io: a,
            activity: Some(activity.clone()),
        };
        touching.write_all(b"out").await.unwrap();
        assert_eq!(activity.last_preview_ms(), 0, "writes alone do not count");
        b.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        touching.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert!(activity.last_preview_ms() > 0);
    }
}

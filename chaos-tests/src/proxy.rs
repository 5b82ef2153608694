//! Fault-injecting HTTP/1.1 reverse proxy between cove-sync's S3 client and Garage.
//!
//! The chaos harness points cove-sync's S3 endpoint at [`FaultProxy`] and changes
//! [`Faults`] while the workload runs. With no faults set the proxy is transparent:
//! method, request target, headers and body are forwarded byte-for-byte, so SigV4
//! signatures (which cover the Host header the client signed, i.e. the proxy's
//! address) still verify at Garage, and the upstream's response comes back unchanged.
//!
//! The fault kinds are the failure modes an S3 client actually meets:
//!
//! - **latency**: a slow network or an overloaded store. It shakes out timeouts that are
//!   too tight and races between concurrent uploads.
//! - **error_before** (503 SlowDown, never forwarded): the store refused the request, so
//!   a retry is always safe. Tests that throttling is retried rather than surfaced.
//! - **error_after** (forwarded, then 500 InternalError): the write *did* take effect but
//!   the client is told it failed. Tests that the client's retries are idempotent, and
//!   that a write reported as failed is not assumed absent.
//! - **drop_after** (forwarded, then the connection is closed without a response): the
//!   same ambiguity as `error_after`, but seen as a dead connection rather than an
//!   error status, which takes a different path through the SDK's retry logic.
//! - **outage**: the store is unreachable. New connections are accepted and closed at
//!   once, and requests on connections that are already open get no response. Tests
//!   that nothing is acknowledged as durable while the store is down, and that sync
//!   recovers once the store returns.
//!
//! Request and response bodies are buffered in memory (objects are at most a few MiB).
//! Buffering keeps fault decisions simple: a request counts as forwarded only once the
//! upstream has produced its complete response.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

/// Faults applied to requests from now on. Default: none (a transparent proxy).
///
/// `error_before`, `error_after` and `drop_after` are mutually exclusive per request:
/// one uniform roll picks at most one of them, so each happens with exactly its
/// probability as long as their sum is at most 1 (later ones are cut short otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Extra delay before forwarding each request, uniform in [min, max].
    pub latency: Option<(Duration, Duration)>,
    /// Probability that a request is answered 503 (S3 "SlowDown" XML error body) without being forwarded.
    pub error_before: f64,
    /// Probability that a request IS forwarded (so it may take effect in the store) but its response is replaced by a 500 InternalError.
    pub error_after: f64,
    /// Probability that a request is forwarded and then the client connection is closed without any response.
    pub drop_after: f64,
    /// Full outage: every new connection is accepted and closed at once, and requests on open connections are dropped without a response.
    pub outage: bool,
}

/// What the proxy has done so far, so a run report can show that faults were really hit.
#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    /// Every request received, whatever happened to it.
    pub requests: u64,
    /// Requests answered 503 without forwarding.
    pub errors_before: u64,
    /// Requests forwarded whose response was replaced by a 500.
    pub errors_after: u64,
    /// Requests forwarded whose client connection was then closed without a response.
    pub dropped: u64,
    /// Connections closed on accept plus requests dropped unforwarded, both due to an outage.
    pub refused: u64,
}

/// A running proxy. Dropping it stops accepting and closes every client connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (e.g. 127.0.0.1:3900). `seed` seeds the fault RNG (rand::rngs::StdRng) so a run is reproducible in its fault decisions.
    pub async fn start(upstream: SocketAddr, seed: u64) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the fault proxy listener")?;
        let addr = listener
            .local_addr()
            .context("reading the fault proxy address")?;
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        debug!(%addr, %upstream, seed, "fault proxy started");
        Ok(FaultProxy {
            addr,
            shared,
            accept_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the faults (takes effect for the next request/connection).
    pub fn set(&self, f: Faults) {
        debug!(faults = ?f, "fault proxy faults changed");
        *lock(&self.shared.faults) = f;
    }

    pub fn faults(&self) -> Faults {
        lock(&self.shared.faults).clone()
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            requests: c.requests.load(Ordering::Relaxed),
            errors_before: c.errors_before.load(Ordering::Relaxed),
            errors_after: c.errors_after.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    /// Aborting the accept task also drops its `JoinSet`, which aborts every client
    /// connection, so a dropped proxy looks like a store that went away.
    fn drop(&mut self) {
        self.accept_task.abort();
        debug!(addr = %self.addr, "fault proxy stopped");
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors_before: AtomicU64,
    errors_after: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
}

/// A panic elsewhere must not take the proxy down with it; the guarded data is
/// plain values that stay consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Forward,
    ErrorBefore,
    ErrorAfter,
    DropAfter,
    Outage,
}

struct Plan {
    delay: Option<Duration>,
    action: Action,
}

impl Shared {
    /// Decides a request's fate up front, from one snapshot of the faults. Exactly two
    /// numbers are drawn per (non-outage) request whatever the faults are, so the
    /// sequence of decisions depends only on the seed and the order of requests.
    fn plan(&self) -> Plan {
        let faults = lock(&self.faults).clone();
        if faults.outage {
            return Plan {
                delay: None,
                action: Action::Outage,
            };
        }
        let (roll, frac): (f64, f64) = {
            let mut rng = lock(&self.rng);
            (rng.random(), rng.random())
        };
        let delay = faults.latency.map(|(a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            lo + (hi - lo).mul_f64(frac)
        });
        let mut threshold = 0.0;
        let mut action = Action::Forward;
        for (p, candidate) in [
            (faults.error_before, Action::ErrorBefore),
            (faults.error_after, Action::ErrorAfter),
            (faults.drop_after, Action::DropAfter),
        ] {
            threshold += probability(p);
            if roll < threshold {
                action = candidate;
                break;
            }
        }
        Plan { delay, action }
    }
}

/// NaN counts as "never" rather than poisoning the cumulative threshold.
fn probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connections here means aborting this task closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if lock(&shared.faults).outage {
                        bump(&shared.counters.refused);
                        debug!(%peer, "outage: closing new connection at once");
                        drop(stream);
                        continue;
                    }
                    conns.spawn(serve_connection(stream, peer, shared.clone()));
                }
                Err(e) => {
                    // Usually fd exhaustion; back off instead of spinning.
                    debug!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "set_nodelay failed on client connection");
    }
    let service = service_fn(move |req| handle(shared.clone(), req));
    // Header case is preserved on both sides so the upstream sees the client's exact bytes.
    let result = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        // Includes every injected drop: a service error makes hyper close the
        // connection without writing a response.
        debug!(%peer, error = %e, "client connection ended with error");
    }
}

/// Returned by the service to make hyper close the client connection with no response.
#[derive(Debug)]
enum Dropped {
    Outage,
    AfterForward,
    ClientBody(hyper::Error),
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::Outage => f.write_str("request dropped: injected outage"),
            Dropped::AfterForward => f.write_str("request dropped after forwarding: injected"),
            Dropped::ClientBody(e) => write!(f, "reading the client's request body failed: {e}"),
        }
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    bump(&shared.counters.requests);
    let plan = shared.plan();
    let method = req.method().clone();
    let target = req.uri().clone();

    if plan.action == Action::Outage {
        bump(&shared.counters.refused);
        debug!(%method, %target, "outage: dropping request without a response");
        return Err(Dropped::Outage);
    }

    // Read the whole body even for requests we are about to refuse, so the client
    // sees a clean error response rather than a reset while it is still uploading.
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(Dropped::ClientBody)?
        .to_bytes();

    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }

    if plan.action == Action::ErrorBefore {
        bump(&shared.counters.errors_before);
        debug!(%method, %target, "injecting 503 SlowDown without forwarding");
        return Ok(s3_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "injected by cove-chaos",
        ));
    }

    let response = match forward(shared.upstream, Request::from_parts(parts, Full::new(body))).await
    {
        Ok(response) => response,
        Err(e) => {
            debug!(%method, %target, upstream = %shared.upstream, error = %format!("{e:#}"), "upstream failed; answering 502");
            return Ok(s3_error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "upstream unreachable (cove-chaos)",
            ));
        }
    };

    match plan.action {
        Action::ErrorAfter => {
            bump(&shared.counters.errors_after);
            debug!(%method, %target, upstream_status = %response.status(), "forwarded; replacing response with 500");
            Ok(s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "injected by cove-chaos",
            ))
        }
        Action::DropAfter => {
            bump(&shared.counters.dropped);
            debug!(%method, %target, upstream_status = %response.status(), "forwarded; dropping client connection");
            Err(Dropped::AfterForward)
        }
        _ => Ok(response),
    }
}

/// One upstream connection per request: nothing to go stale between faults, and a
/// failure affects exactly one request.
async fn forward(
    upstream: SocketAddr,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let stream = TcpStream::connect(upstream)
        .await
        .context("connecting to upstream")?;
    stream
        .set_nodelay(true)
        .context("set_nodelay on upstream connection")?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(stream))
        .await
        .context("upstream handshake")?;
    // The connection task ends by itself once the response is read and `sender` is dropped.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream connection ended with error");
        }
    });
    // The request URI is forwarded as received (origin-form), and hyper's client conn
    // API adds no headers of its own, so the signed request reaches Garage intact.
    let response = sender
        .send_request(req)
        .await
        .context("sending request upstream")?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .context("reading upstream response body")?
        .to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::client::conn::http1::SendRequest;
    use hyper::http::response::Parts;
    use hyper::Method;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in for Garage that echoes what it received, so tests can see exactly
    /// what crossed the proxy.
    struct Upstream {
        addr: SocketAddr,
        seen: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo(
        seen: Arc<AtomicUsize>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        seen.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("<none>"))
        };
        let text = format!("{} {} {}", parts.method, parts.uri, body.len());
        let is_head = parts.method == Method::HEAD;
        let mut resp = Response::new(Full::new(if is_head {
            Bytes::new()
        } else {
            Bytes::from(text)
        }));
        *resp.status_mut() = StatusCode::CREATED;
        let h = resp.headers_mut();
        h.insert("x-echo-host", header("host"));
        h.insert("x-echo-custom", header("x-custom"));
        h.insert("x-upstream", HeaderValue::from_static("echo"));
        if is_head {
            h.insert("content-length", HeaderValue::from_static("42"));
        }
        Ok(resp)
    }

    async fn upstream() -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| echo(seen.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    async fn client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    async fn send(
        sender: &mut SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> Result<(Parts, Bytes), hyper::Error> {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        Ok((parts, body.collect().await?.to_bytes()))
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "s3.test:9000")
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    async fn get_once(addr: SocketAddr, path: &str) -> Result<(Parts, Bytes), hyper::Error> {
        send(&mut client(addr).await, get(path)).await
    }

    /// Raw bytes the proxy sends back for one request; empty means "closed without a response".
    async fn raw_exchange(addr: SocketAddr) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream
            .write_all(b"GET /raw HTTP/1.1\r\nHost: s3.test\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        // A reset instead of a clean close is just as much "no response".
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
            .await
            .expect("proxy should close the connection");
        buf
    }

    #[tokio::test]
    async fn forwards_transparently() {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr, 1).await.expect("start");
        let mut c = client(proxy.addr()).await;

        let target = "/bucket/a%20b%2Fc?x-id=PutObject&list-type=2&prefix=x%3Dy";
        let req = Request::builder()
            .method(Method::PUT)
            .uri(target)
            .header("Host", "signed-host.test:1234")
            .header("x-custom", "abc")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("request");
        let (parts, body) = send(&mut c, req).await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(body, format!("PUT {target} 5"));
        assert_eq!(parts.headers["x-echo-host"], "signed-host.test:1234");
        assert_eq!(parts.headers["x-echo-custom"], "abc");
        assert_eq!(parts.headers["x-upstream"], "echo");

        // Same keep-alive connection; HEAD keeps the upstream's content-length.
        let req = Request::builder()
            .method(Method::HEAD)
            .uri("/bucket/key")
            .header("host", "signed-host.test:1234")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (parts, body) = send(&mut c, req).await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(parts.headers["content-length"], "42");
        assert!(body.is_empty());

        assert_eq!(up.seen.load(Ordering::SeqCst), 2);
        let stats = proxy.stats();
        assert_eq!(stats.requests, 2);
        assert_eq!(
            (
                stats.errors_before,
                stats.errors_after,
                stats.dropped,
                stats.refused
            ),
            (0, 0, 0, 0)
        );
    }

    #[tokio::test]
    async fn error_before_is_not_forwarded() {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr, 2).await.expect("start");
        proxy.set(Faults {
            error_before: 1.0,
            ..Faults::default()
        });
        let (parts, body) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(parts.headers[CONTENT_TYPE], "application/xml");
        assert!(String::from_utf8_lossy(&body).contains("<Code>SlowDown</Code>"));
        assert_eq!(up.seen.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.stats().errors_before, 1);

        proxy.set(Faults::default());
        let (parts, _) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(up.seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn error_after_is_forwarded() {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr, 3).await.expect("start");
        proxy.set(Faults {
            error_after: 1.0,
            ..Faults::default()
        });
        let (parts, body) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(String::from_utf8_lossy(&body).contains("<Code>InternalError</Code>"));
        assert_eq!(up.seen.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.stats().errors_after, 1);
    }

    #[tokio::test]
    async fn drop_after_closes_without_response() {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr, 4).await.expect("start");
        proxy.set(Faults {
            drop_after: 1.0,
            ..Faults::default()
        });
        assert!(get_once(proxy.addr(), "/b/k").await.is_err());
        assert_eq!(up.seen.load(Ordering::SeqCst), 1);
        // Not a single byte of response, not even a status line.
        assert!(raw_exchange(proxy.addr()).await.is_empty());
        assert_eq!(up.seen.load(Ordering::SeqCst), 2);
        assert_eq!(proxy.stats().dropped, 2);

        proxy.set(Faults::default());
        let (parts, _) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn outage_refuses_new_and_open_connections() {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr, 5).await.expect("start");
        let mut open = client(proxy.addr()).await;
        let (parts, _) = send(&mut open, get("/b/k")).await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);

        proxy.set(Faults {
            outage: true,
            ..Faults::default()
        });
        assert!(raw_exchange(proxy.addr()).await.is_empty());
        assert!(get_once(proxy.addr(), "/b/k").await.is_err());
        assert!(send(&mut open, get("/b/k")).await.is_err());
        assert_eq!(up.seen.load(Ordering::SeqCst), 1);
        let stats = proxy.stats();
        assert!(stats.refused >= 3, "{stats:?}");

        proxy.set(Faults::default());
        assert_eq!(proxy.faults(), Faults::default());
        let (parts, _) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(up.seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn unreachable_upstream_is_502() {
        let dead = {
            let l = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
            l.local_addr().expect("addr")
        };
        let proxy = FaultProxy::start(dead, 6).await.expect("start");
        let (parts, _) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn latency_delays_requests() {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr, 7).await.expect("start");
        let d = Duration::from_millis(80);
        proxy.set(Faults {
            latency: Some((d, d)),
            ..Faults::default()
        });
        let started = Instant::now();
        let (parts, _) = get_once(proxy.addr(), "/b/k").await.expect("response");
        assert_eq!(parts.status, StatusCode::CREATED);
        assert!(started.elapsed() >= d);
    }

    #[tokio::test]
    async fn same_seed_same_decisions() {
        let up = upstream().await;
        let mut runs = Vec::new();
        for _ in 0..2 {
            let proxy = FaultProxy::start(up.addr, 42).await.expect("start");
            proxy.set(Faults {
                error_before: 0.5,
                ..Faults::default()
            });
            let mut statuses = Vec::new();
            for _ in 0..20 {
                let (parts, _) = get_once(proxy.addr(), "/b/k").await.expect("response");
                statuses.push(parts.status.as_u16());
            }
            runs.push(statuses);
        }
        assert_eq!(runs[0], runs[1]);
        assert!(
            runs[0].contains(&503) && runs[0].contains(&201),
            "{:?}",
            runs[0]
        );
    }
}

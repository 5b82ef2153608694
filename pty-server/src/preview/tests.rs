//! The preview end to end: a real listener in front of small apps.

use super::*;
use crate::metrics::ResultLabel;
use axum::routing::post;
use futures::{SinkExt, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
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
        proxy: crate::proxy::Proxy::new("https"),
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

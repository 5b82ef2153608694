//! Test fixtures: a real cove-sync (watch mode, directory store) and a real
//! cove-pty as child processes, and a WebSocket client that speaks the
//! protocol the way the browser does.

#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const ORIGIN: &str = "http://localhost:7070";

pub fn bin(name: &str) -> PathBuf {
    let pty = PathBuf::from(env!("CARGO_BIN_EXE_cove-pty"));
    let p = pty.with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One workspace: a sidecar over a directory and cove-pty in front of it.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub project: String,
    sidecar: Child,
    pub pty: Option<Child>,
    pub ide: String,
    pub preview: String,
    pub admin: String,
    pub sidecar_api: String,
}

pub fn wait_line(child: &mut Child, prefix: &str) -> String {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(&prefix) {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no expected line on stdout: {:?}", child.try_wait()))
}

impl Workspace {
    pub fn start(extra: &[&str]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        let project = "demo".to_string();
        let api = format!("127.0.0.1:{}", free_port());
        let mut sidecar = Command::new(bin("cove-sync"))
            .args(["--store", &format!("file://{}", store.display()), "serve"])
            .args(["--project", &project, "--workspace"])
            .arg(&root)
            .args(["--mode", "watch", "--api", &api, "--create"])
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("COVE_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("starting cove-sync");
        wait_line(&mut sidecar, "ready");
        let mut ws = Workspace {
            dir,
            root,
            project,
            sidecar,
            pty: None,
            ide: String::new(),
            preview: String::new(),
            admin: String::new(),
            sidecar_api: api,
        };
        ws.start_pty(extra);
        ws
    }

    pub fn start_pty(&mut self, extra: &[&str]) {
        let mut pty = Command::new(bin("cove-pty"))
            .args(["--project", &self.project, "--root"])
            .arg(&self.root)
            .args(["--sidecar", &format!("http://{}", self.sidecar_api)])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--preview-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--allowed-origin",
                ORIGIN,
                "--shell",
                "/bin/bash --noprofile --norc",
            ])
            .args(extra)
            .env("COVE_TOKEN_SECRET", SECRET)
            .env("PS1", "$ ")
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("COVE_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("starting cove-pty");
        let line = wait_line(&mut pty, "listening");
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        self.ide = get("ide");
        self.preview = get("preview");
        self.admin = get("admin");
        self.pty = Some(pty);
        // Ready once the sidecar says so (polled every second).
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(&self.admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "cove-pty never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pty_pid(&self) -> i32 {
        self.pty.as_ref().unwrap().id() as i32
    }

    pub fn token(&self) -> String {
        cove_pty::token::sign(SECRET.as_bytes(), &self.project, now(), 300, None)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ide, &self.token(), ORIGIN)
            .await
            .expect("connect")
    }

    pub fn stop_pty(&mut self) -> std::process::ExitStatus {
        let mut c = self.pty.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(mut p) = self.pty.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = self.sidecar.kill();
        let _ = self.sidecar.wait();
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Minimal blocking HTTP/1.1 GET.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "")
}

pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    ws: Ws,
    next_id: u64,
    pub welcome: Value,
    pub events: Vec<Value>,
    /// Per terminal: output bytes (after the last snapshot) and the offset
    /// after them.
    pub output: HashMap<u32, Vec<u8>>,
    pub end: HashMap<u32, u64>,
    pub snapshots: HashMap<u32, Vec<u8>>,
    /// Complete snapshots received per terminal.
    pub snapshot_count: HashMap<u32, usize>,
    pub auto_ack: bool,
    pub closed: Option<(u16, String)>,
    pub output_bytes: u64,
}

/// Upgrade refused: the HTTP status and body.
pub async fn try_connect(
    ide: &str,
    protocols: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{ide}/ws").into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

impl Client {
    pub async fn connect(ide: &str, token: &str, origin: &str) -> Result<Client, (u16, String)> {
        let ws = try_connect(
            ide,
            Some(&format!("cove.v1, cove.token.{token}")),
            Some(origin),
        )
        .await?;
        let mut c = Client::raw(ws);
        c.welcome = c
            .request(json!({"type": "hello", "protocol": 1, "client": "test"}))
            .await
            .expect("welcome");
        Ok(c)
    }

    pub fn raw(ws: Ws) -> Client {
        Client {
            ws,
            next_id: 1,
            welcome: Value::Null,
            events: Vec::new(),
            output: HashMap::new(),
            end: HashMap::new(),
            snapshots: HashMap::new(),
            snapshot_count: HashMap::new(),
            auto_ack: true,
            closed: None,
            output_bytes: 0,
        }
    }

    pub async fn send_text(&mut self, s: String) {
        let _ = self.ws.send(Message::Text(s.into())).await;
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(b.into())).await;
    }

    pub async fn input(&mut self, term: u32, s: &str) {
        self.send_binary(cove_pty::protocol::encode_frame(
            3,
            0,
            term,
            0,
            s.as_bytes(),
        ))
        .await;
    }

    pub async fn ack(&mut self, term: u32, off: u64) {
        self.send_binary(cove_pty::protocol::encode_frame(4, 0, term, off, b""))
            .await;
    }

    /// Sends a request and waits for its answer; Err is the error object.
    pub async fn request(&mut self, mut v: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send_text(v.to_string()).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no answer to {v}");
            let Some(m) = self.next(left).await else {
                panic!(
                    "connection ended before the answer to {v}: {:?}",
                    self.closed
                )
            };
            if m["id"] == json!(id) {
                return if m["type"] == "result" {
                    Ok(m["result"].clone())
                } else {
                    Err(m["error"].clone())
                };
            }
            self.events.push(m);
        }
    }

    /// Reads one message; binary frames are filed, JSON is returned.
    /// None when the connection ended or the time ran out.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return None,
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Binary(b) => self.file_frame(&b).await,
                Message::Close(f) => {
                    self.closed = Some(
                        f.map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return None;
                }
                _ => {}
            }
        }
    }

    async fn file_frame(&mut self, b: &[u8]) {
        let kind = b[0];
        let flags = b[1];
        let term = u32::from_be_bytes(b[2..6].try_into().unwrap());
        let off = u64::from_be_bytes(b[6..14].try_into().unwrap());
        let payload = &b[14..];
        match kind {
            1 => {
                let end = self.end.entry(term).or_insert(off);
                assert_eq!(*end, off, "output offsets must be contiguous");
                *end = off + payload.len() as u64;
                self.output
                    .entry(term)
                    .or_default()
                    .extend_from_slice(payload);
                self.output_bytes += payload.len() as u64;
                if self.auto_ack {
                    let e = self.end[&term];
                    self.ack(term, e).await;
                }
            }
            2 => {
                let s = self.snapshots.entry(term).or_default();
                if flags & 1 != 0 {
                    s.clear();
                }
                s.extend_from_slice(payload);
                if flags & 2 != 0 {
                    *self.snapshot_count.entry(term).or_default() += 1;
                    self.end.insert(term, off);
                    self.output.insert(term, Vec::new());
                }
            }
            k => panic!("unexpected frame kind {k}"),
        }
    }

    pub fn text(&self, term: u32) -> String {
        String::from_utf8_lossy(self.output.get(&term).map(Vec::as_slice).unwrap_or(&[]))
            .into_owned()
    }

    /// Reads until the terminal's output contains `needle`.
    pub async fn wait_output(&mut self, term: u32, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text(term).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{needle:?} never appeared in {:?}",
                self.text(term)
            );
            if let Some(m) = self.next(left.min(Duration::from_millis(200))).await {
                self.events.push(m);
            } else if self.closed.is_some() {
                panic!("closed while waiting for {needle:?}: {:?}", self.closed);
            }
        }
        self.text(term)
    }

    /// Reads until an event matches (events seen earlier count too).
    pub async fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&pred) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} event; saw {:?}", self.events);
            match self.next(left).await {
                Some(m) if pred(&m) => return m,
                Some(m) => self.events.push(m),
                None if self.closed.is_some() => {
                    panic!("closed while waiting for {what}: {:?}", self.closed)
                }
                None => {}
            }
        }
    }

    /// Waits for the server to close the connection; its close code.
    pub async fn wait_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(m) = self.next(left).await {
                self.events.push(m);
            } else if self.closed.is_none() {
                // Stream ended without a close frame.
                return Some(1006);
            }
        }
        self.closed.as_ref().map(|c| c.0)
    }

    pub async fn create(&mut self, extra: Value) -> u32 {
        let mut req = json!({"type": "term.create", "cols": 80, "rows": 24});
        if let (Some(r), Value::Object(e)) = (req.as_object_mut(), extra) {
            r.extend(e);
        }
        let r = self.request(req).await.expect("term.create");
        let id = r["terminal"]["id"].as_u64().unwrap() as u32;
        self.end.insert(id, 0);
        id
    }

    pub async fn close_ws(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// Children of `pid` that are zombies.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 1 && f[0] == "Z" && f[1].parse::<i32>().ok() == Some(pid) {
            out.push(p);
        }
    }
    out
}

pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn write(root: &Path, rel: &str, content: &str) {
    std::fs::write(root.join(rel), content).unwrap();
}

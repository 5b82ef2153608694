//! A client of the cove-pty protocol (docs/protocol.md), as the browser IDE
//! speaks it: the upgrade with Origin and token, hello, requests matched
//! to their answers by id, binary frames through [`crate::protocol`]'s
//! encoder, flow-control acknowledgements, and per-terminal output
//! buffers.
//!
//! One client for everything in Rust that talks to cove-pty: the tests,
//! the benchmarks and cove-chaos. It has two levels:
//!
//! - [`Client::recv`] returns each message as it comes ([`Incoming`]), for
//!   callers that handle output themselves (cove-chaos reads a worker's
//!   records off its terminal and acknowledges as it goes);
//! - [`Client::request`], [`Client::next`] and the `wait_*` helpers file
//!   output and snapshots per terminal, keep events for later and
//!   acknowledge output (when [`Client::auto_ack`] is on, the default), as
//!   the IDE does.
//!
//! Errors are [`ClientError`]: a refused upgrade with its HTTP status, the
//! server's own error answer ([`ClientError::Server`], its `code` for
//! branching), a closed connection with its close code, or a timeout.

use crate::protocol::{self, Request, KIND_ACK, KIND_INPUT, KIND_OUTPUT, KIND_SNAPSHOT};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The socket under a [`Client`].
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long [`Client::request`] and the `wait_*` helpers wait by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The upgrade was answered with an HTTP status (protocol.md §2.3).
    #[error("upgrade refused: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("{0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The server answered the request with an error (§14). The whole
    /// `error` object is kept: `code`, `message` and `details`.
    #[error("{}: {}", .0["code"].as_str().unwrap_or("?"), .0["message"].as_str().unwrap_or(""))]
    Server(Value),
    /// The connection closed: the close code (1005 without one, 1006 when
    /// the stream ended without a close frame) and reason.
    #[error("connection closed ({code} {reason:?})")]
    Closed { code: u16, reason: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("malformed message from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error `code` (§14), for an error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server(e) => e["code"].as_str(),
            _ => None,
        }
    }

    /// The server's `error` object (`code`, `message`, `details`); `null`
    /// for any other failure.
    pub fn body(&self) -> &Value {
        match self {
            ClientError::Server(e) => e,
            _ => &Value::Null,
        }
    }
}

/// `e["code"]`, `e["details"]`: the server's error object's fields, `null`
/// for other failures (as with [`ClientError::body`]).
impl std::ops::Index<&str> for ClientError {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.body()[key]
    }
}

/// One message from the server, as [`Client::recv`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A JSON message: a result, an error or an event (§4.1).
    Json(Value),
    /// An OUTPUT frame (§5): terminal output at `offset`.
    Output {
        terminal: u32,
        offset: u64,
        data: Bytes,
    },
    /// A SNAPSHOT frame (§6.5): part of a screen snapshot; `start` on its
    /// first part, `end` on its last, whose `offset` is where output
    /// resumes.
    Snapshot {
        terminal: u32,
        offset: u64,
        start: bool,
        end: bool,
        data: Bytes,
    },
}

/// How to reach a cove-pty.
#[derive(Debug, Clone)]
pub struct Connect {
    /// `ws://host:port/ws`, or a gateway's `ws://<id>.ide.localhost:7070/ws`.
    pub url: String,
    /// The `Origin` header; cove-pty accepts only its configured IDE origin.
    pub origin: Option<String>,
    /// The token (§2.2), sent in the subprotocol list.
    pub token: Option<String>,
    /// The address to open the TCP connection to, when it is not the URL's
    /// host (the local gateway, for `*.localhost` names that need no DNS).
    /// The URL's host still goes in the `Host` header.
    pub via: Option<String>,
    /// `Sec-WebSocket-Protocol` as sent, overriding the one built from
    /// `token` (to test refused upgrades).
    pub protocols: Option<String>,
    /// `hello.client`.
    pub client: String,
}

impl Connect {
    /// A cove-pty listening at `addr` (`host:port`), with token and origin.
    pub fn new(addr: &str, token: &str, origin: &str) -> Connect {
        Connect::url(&format!("ws://{addr}/ws"), token, origin)
    }

    pub fn url(url: &str, token: &str, origin: &str) -> Connect {
        Connect {
            url: url.to_string(),
            origin: Some(origin.to_string()),
            token: Some(token.to_string()),
            via: None,
            protocols: None,
            client: concat!("cove-pty-client/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    pub fn via(mut self, addr: Option<&str>) -> Connect {
        self.via = addr.map(str::to_string);
        self
    }

    pub fn client(mut self, name: &str) -> Connect {
        self.client = name.to_string();
        self
    }

    /// Only the WebSocket upgrade, without hello: the socket, or the
    /// upgrade's refusal.
    pub async fn upgrade(&self) -> Result<Socket, ClientError> {
        let mut req = self.url.as_str().into_client_request()?;
        let h = req.headers_mut();
        let protocols = match (&self.protocols, &self.token) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(t)) => Some(format!(
                "{}, {}{t}",
                protocol::SUBPROTOCOL,
                protocol::TOKEN_PREFIX
            )),
            (None, None) => None,
        };
        let header = |v: &str| {
            v.parse()
                .map_err(|_| ClientError::Invalid(format!("bad header value {v:?}")))
        };
        if let Some(p) = protocols {
            h.insert("sec-websocket-protocol", header(&p)?);
        }
        if let Some(o) = &self.origin {
            h.insert("origin", header(o)?);
        }
        let r = match &self.via {
            Some(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                    ClientError::Connect {
                        addr: addr.clone(),
                        source: e,
                    }
                })?;
                tcp.set_nodelay(true).map_err(|e| ClientError::Connect {
                    addr: addr.clone(),
                    source: e,
                })?;
                tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                    .await
            }
            // Browsers disable Nagle on WebSockets: a keystroke or an ACK
            // goes out at once, not after the previous segment's ACK.
            None => tokio_tungstenite::connect_async_with_config(req, None, true).await,
        };
        match r {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ClientError::Refused {
                    status: resp.status().as_u16(),
                    body,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Upgrade and hello (§3): a client ready for requests.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let mut c = Client::from_socket(self.upgrade().await?);
        c.hello(&self.client).await?;
        Ok(c)
    }
}

/// A connection to cove-pty. See the module's doc.
pub struct Client {
    ws: Socket,
    next_id: u64,
    /// The welcome (§3), once [`Client::hello`] has run.
    pub welcome: Value,
    /// JSON events and answers read while waiting for something else, in
    /// order; the `wait_*` helpers look here first.
    pub events: VecDeque<Value>,
    /// Per terminal: output since the last complete snapshot.
    pub output: HashMap<u32, Vec<u8>>,
    /// Per terminal: the offset after the output received (§7).
    pub end: HashMap<u32, u64>,
    /// Per terminal: the last snapshot, as far as received.
    pub snapshots: HashMap<u32, Vec<u8>>,
    /// Per terminal: complete snapshots received.
    pub snapshot_count: HashMap<u32, usize>,
    /// Acknowledge each OUTPUT frame as it is filed (§7), as the IDE does.
    pub auto_ack: bool,
    /// Output bytes filed, over all terminals.
    pub output_bytes: u64,
    /// The server's close, once the connection has closed.
    pub closed: Option<(u16, String)>,
}

impl Client {
    pub fn from_socket(ws: Socket) -> Client {
        Client {
            ws,
            next_id: 1,
            welcome: Value::Null,
            events: VecDeque::new(),
            output: HashMap::new(),
            end: HashMap::new(),
            snapshots: HashMap::new(),
            snapshot_count: HashMap::new(),
            auto_ack: true,
            output_bytes: 0,
            closed: None,
        }
    }

    /// Says hello; keeps and returns the welcome.
    pub async fn hello(&mut self, client: &str) -> Result<Value, ClientError> {
        let w = self
            .request(
                json!({"type": "hello", "protocol": protocol::PROTOCOL_VERSION, "client": client}),
            )
            .await?;
        self.welcome = w.clone();
        Ok(w)
    }

    /// Sends a typed request and waits for its answer.
    pub async fn call(&mut self, req: Request) -> Result<Value, ClientError> {
        let id = self.take_id();
        self.send_text(req.to_message(id).to_string()).await?;
        self.answer(id, req.type_name(), DEFAULT_TIMEOUT).await
    }

    /// Sends a request given as JSON (any fields, malformed ones included:
    /// the tests of §4.2 need them) with the next id; waits for its answer.
    pub async fn request(&mut self, v: Value) -> Result<Value, ClientError> {
        let id = self.send_request(v.clone()).await?;
        let what = v["type"].as_str().unwrap_or("request").to_string();
        self.answer(id, &what, DEFAULT_TIMEOUT).await
    }

    /// Sends a JSON request with the next id without waiting; returns the
    /// id, for [`Client::answer`].
    pub async fn send_request(&mut self, mut v: Value) -> Result<u64, ClientError> {
        if !v.is_object() {
            return Err(ClientError::Invalid(format!("{v} is not an object")));
        }
        let id = self.take_id();
        v["id"] = json!(id);
        self.send_text(v.to_string()).await?;
        Ok(id)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Waits for the answer to request `id`; other messages go to
    /// [`Client::events`], output to the terminals' buffers.
    pub async fn answer(
        &mut self,
        id: u64,
        what: &str,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let m = self
            .wait_message(&format!("the answer to {what}"), timeout, |m| {
                m["id"] == json!(id)
            })
            .await?;
        if m["type"] == "result" {
            Ok(m["result"].clone())
        } else {
            Err(ClientError::Server(m["error"].clone()))
        }
    }

    pub async fn send_text(&mut self, s: String) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::Text(s.into())).await?)
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::Binary(b.into())).await?)
    }

    /// An INPUT frame (§5).
    pub async fn input(&mut self, terminal: u32, data: &[u8]) -> Result<(), ClientError> {
        self.send_binary(protocol::encode_frame(KIND_INPUT, 0, terminal, 0, data))
            .await
    }

    /// An ACK frame (§7): everything before `offset` has been shown.
    pub async fn ack(&mut self, terminal: u32, offset: u64) -> Result<(), ClientError> {
        self.send_binary(protocol::encode_frame(KIND_ACK, 0, terminal, offset, b""))
            .await
    }

    /// The next message as it comes: nothing is filed or acknowledged.
    /// Pings are answered by the socket. A close is
    /// [`ClientError::Closed`].
    pub async fn recv(&mut self) -> Result<Incoming, ClientError> {
        loop {
            let m = match self.ws.next().await {
                None => return Err(self.closed_by(None)),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection error");
                    return Err(self.closed_by(None));
                }
                Some(Ok(m)) => m,
            };
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(&t)
                        .map(Incoming::Json)
                        .map_err(|e| ClientError::Protocol(format!("{e}: {t}")))
                }
                Message::Binary(b) => return decode_server_frame(b),
                Message::Close(f) => {
                    let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return Err(self.closed_by(Some(f.unwrap_or((1005, String::new())))));
                }
                _ => {}
            }
        }
    }

    fn closed_by(&mut self, close: Option<(u16, String)>) -> ClientError {
        let (code, reason) = close
            .or_else(|| self.closed.clone())
            .unwrap_or((1006, String::new()));
        self.closed = Some((code, reason.clone()));
        ClientError::Closed { code, reason }
    }

    /// Reads until the next JSON message, filing binary frames; `Ok(None)`
    /// when `timeout` passes first.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Value>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, self.recv()).await {
                Err(_) => return Ok(None),
                Ok(m) => m?,
            };
            match m {
                Incoming::Json(v) => return Ok(Some(v)),
                frame => self.file(frame).await?,
            }
        }
    }

    /// Files a binary frame into its terminal's buffers; acknowledges
    /// output when [`Client::auto_ack`] is on.
    pub async fn file(&mut self, frame: Incoming) -> Result<(), ClientError> {
        match frame {
            Incoming::Json(v) => self.events.push_back(v),
            Incoming::Output {
                terminal,
                offset,
                data,
            } => {
                let end = self.end.entry(terminal).or_insert(offset);
                if *end != offset {
                    return Err(ClientError::Protocol(format!(
                        "terminal {terminal}: output at {offset}, expected {end}"
                    )));
                }
                *end = offset + data.len() as u64;
                let end = *end;
                self.output
                    .entry(terminal)
                    .or_default()
                    .extend_from_slice(&data);
                self.output_bytes += data.len() as u64;
                if self.auto_ack {
                    // The server may have closed the connection after this
                    // frame: a failed ACK must not hide the close code still
                    // to be read (the next `recv` reports the closure).
                    if let Err(e) = self.ack(terminal, end).await {
                        tracing::debug!(error = %e, terminal, "acknowledging output");
                    }
                }
            }
            Incoming::Snapshot {
                terminal,
                offset,
                start,
                end,
                data,
            } => {
                let s = self.snapshots.entry(terminal).or_default();
                if start {
                    s.clear();
                }
                s.extend_from_slice(&data);
                if end {
                    *self.snapshot_count.entry(terminal).or_default() += 1;
                    self.end.insert(terminal, offset);
                    self.output.insert(terminal, Vec::new());
                }
            }
        }
        Ok(())
    }

    /// A terminal's output since its last snapshot, as text.
    pub fn text(&self, terminal: u32) -> String {
        String::from_utf8_lossy(self.output.get(&terminal).map(Vec::as_slice).unwrap_or(&[]))
            .into_owned()
    }

    /// The first message `pred` accepts: from [`Client::events`] (removed
    /// there), or read from the socket within `timeout`.
    pub async fn wait_message(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, ClientError> {
        if let Some(i) = self.events.iter().position(&pred) {
            return Ok(self.events.remove(i).unwrap_or_default());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(what.to_string()));
            }
            match self.next(left).await? {
                Some(m) if pred(&m) => return Ok(m),
                Some(m) => self.events.push_back(m),
                None => {}
            }
        }
    }

    /// Reads until the terminal's output contains `needle`; the output.
    pub async fn wait_output(
        &mut self,
        terminal: u32,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        let what = format!("{needle:?} in terminal {terminal}'s output");
        self.wait_until(&what, timeout, |c| c.text(terminal).contains(needle))
            .await?;
        Ok(self.text(terminal))
    }

    /// Reads until `done` holds, checking it after every message, so the
    /// moment output arrives is the moment this returns (benchmarks time
    /// it). JSON messages go to [`Client::events`], frames are filed.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Client) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, self.recv()).await {
                Err(_) => return Err(ClientError::Timeout(what.to_string())),
                Ok(m) => m?,
            };
            match m {
                Incoming::Json(v) => self.events.push_back(v),
                frame => self.file(frame).await?,
            }
        }
        Ok(())
    }

    /// Waits for the server to close the connection; its close code.
    pub async fn wait_close(&mut self, timeout: Duration) -> Result<u16, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((code, _)) = &self.closed {
                return Ok(*code);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout("the connection to close".into()));
            }
            match self.next(left).await {
                Ok(Some(m)) => self.events.push_back(m),
                Ok(None) => {}
                Err(ClientError::Closed { code, .. }) => return Ok(code),
                Err(e) => return Err(e),
            }
        }
    }

    /// `term.create` with `extra` fields over 80×24; the terminal's id.
    pub async fn create_terminal(&mut self, extra: Value) -> Result<u32, ClientError> {
        let mut req = json!({"type": "term.create", "cols": 80, "rows": 24});
        if let (Some(r), Value::Object(e)) = (req.as_object_mut(), extra) {
            r.extend(e);
        }
        let r = self.request(req).await?;
        let id = r["terminal"]["id"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| ClientError::Protocol(format!("term.create answered {r}")))?;
        self.end.insert(id, 0);
        Ok(id)
    }

    /// Closes the connection with 1000 and waits briefly for the server's
    /// answer.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A server → client frame (§5); anything else is a protocol error.
pub fn decode_server_frame(b: Bytes) -> Result<Incoming, ClientError> {
    if b.len() < protocol::HEADER_LEN {
        return Err(ClientError::Protocol(format!(
            "a binary frame of {} bytes",
            b.len()
        )));
    }
    let terminal = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&b[6..14]);
    let offset = u64::from_be_bytes(off);
    let flags = b[1];
    let data = b.slice(protocol::HEADER_LEN..);
    match b[0] {
        KIND_OUTPUT => Ok(Incoming::Output {
            terminal,
            offset,
            data,
        }),
        KIND_SNAPSHOT => Ok(Incoming::Snapshot {
            terminal,
            offset,
            start: flags & protocol::FLAG_START != 0,
            end: flags & protocol::FLAG_END != 0,
            data,
        }),
        k => Err(ClientError::Protocol(format!("frame kind {k:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_decode() {
        let f = protocol::encode_frame(KIND_OUTPUT, 0, 7, 42, b"hi");
        assert_eq!(
            decode_server_frame(f.into()).unwrap(),
            Incoming::Output {
                terminal: 7,
                offset: 42,
                data: Bytes::from_static(b"hi")
            }
        );
        let f = protocol::encode_frame(
            KIND_SNAPSHOT,
            protocol::FLAG_START | protocol::FLAG_END,
            1,
            9,
            b"s",
        );
        assert!(matches!(
            decode_server_frame(f.into()).unwrap(),
            Incoming::Snapshot {
                start: true,
                end: true,
                offset: 9,
                ..
            }
        ));
        let input = protocol::encode_frame(KIND_INPUT, 0, 1, 0, b"x");
        assert!(
            decode_server_frame(input.into()).is_err(),
            "wrong direction"
        );
        assert!(decode_server_frame(Bytes::from_static(b"\x01\x00")).is_err());
    }

    #[test]
    fn errors_keep_the_server_code() {
        let e = ClientError::Server(json!({"code": "bad_path", "message": "no"}));
        assert_eq!(e.code(), Some("bad_path"));
        assert_eq!(e.to_string(), "bad_path: no");
        assert_eq!(e["code"], "bad_path");
        assert_eq!(e["details"], Value::Null);
        assert_eq!(ClientError::Timeout("x".into()).code(), None);
    }
}

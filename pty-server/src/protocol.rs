//! Wire types of the cove-pty protocol, v1 (docs/protocol.md). Change this
//! file and that page together.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const PROTOCOL_VERSION: u32 = 1;
pub const SUBPROTOCOL: &str = "cove.v1";
pub const TOKEN_PREFIX: &str = "cove.token.";

/// Binary frame kinds (§5).
pub const KIND_OUTPUT: u8 = 0x01;
pub const KIND_SNAPSHOT: u8 = 0x02;
pub const KIND_INPUT: u8 = 0x03;
pub const KIND_ACK: u8 = 0x04;
pub const FLAG_START: u8 = 0x01;
pub const FLAG_END: u8 = 0x02;
pub const HEADER_LEN: usize = 14;

/// Close codes (§15).
pub mod close {
    pub const PROTOCOL_ERROR: u16 = 4000;
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    pub const HELLO_REQUIRED: u16 = 4002;
    pub const UNSUPPORTED_VERSION: u16 = 4003;
    pub const WORKSPACE_STOPPING: u16 = 4004;
    pub const SUPERSEDED: u16 = 4005;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// A binary frame's header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub terminal: u32,
    pub offset: u64,
    pub payload: &'a [u8],
}

pub fn encode_frame(kind: u8, flags: u8, terminal: u32, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&terminal.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Parses a client frame; `None` for anything §5 says closes with 4000.
pub fn decode_client_frame(b: &[u8]) -> Option<Frame<'_>> {
    if b.len() < HEADER_LEN {
        return None;
    }
    let f = Frame {
        kind: b[0],
        flags: b[1],
        terminal: u32::from_be_bytes(b[2..6].try_into().ok()?),
        offset: u64::from_be_bytes(b[6..14].try_into().ok()?),
        payload: &b[HEADER_LEN..],
    };
    match f.kind {
        KIND_INPUT if !f.payload.is_empty() => Some(f),
        KIND_ACK => Some(f),
        _ => None,
    }
}

/// Error codes (§14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    UnknownType,
    DuplicateId,
    Busy,
    NotReady,
    ShuttingDown,
    BadPath,
    OutsideWorkspace,
    NotFound,
    AlreadyExists,
    NotADirectory,
    NotAFile,
    NotEmpty,
    Conflict,
    TooLarge,
    PermissionDenied,
    NoSpace,
    IoError,
    SpawnFailed,
    LimitExceeded,
    NotAttached,
    InputDropped,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            BadRequest => "bad_request",
            UnknownType => "unknown_type",
            DuplicateId => "duplicate_id",
            Busy => "busy",
            NotReady => "not_ready",
            ShuttingDown => "shutting_down",
            BadPath => "bad_path",
            OutsideWorkspace => "outside_workspace",
            NotFound => "not_found",
            AlreadyExists => "already_exists",
            NotADirectory => "not_a_directory",
            NotAFile => "not_a_file",
            NotEmpty => "not_empty",
            Conflict => "conflict",
            TooLarge => "too_large",
            PermissionDenied => "permission_denied",
            NoSpace => "no_space",
            IoError => "io_error",
            SpawnFailed => "spawn_failed",
            LimitExceeded => "limit_exceeded",
            NotAttached => "not_attached",
            InputDropped => "input_dropped",
            Internal => "internal",
        }
    }
}

/// An error answer to one request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(Code::BadRequest, message).with(json!({ "field": field }))
    }

    pub fn to_json(&self, id: Option<u64>) -> String {
        let mut err = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(d) = &self.details {
            err["details"] = d.clone();
        }
        json!({"type": "error", "id": id, "error": err}).to_string()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The limits announced in the welcome (§13). All are configurable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_file_bytes: u64,
    pub max_list_entries: usize,
    pub max_path_bytes: usize,
    pub max_in_flight: usize,
    pub rate_messages_per_sec: u32,
    pub rate_burst: u32,
    pub max_terminals: usize,
    pub max_subscriptions: usize,
    pub window_bytes: u64,
    pub ack_bytes: u64,
    pub input_buffer_bytes: usize,
    pub scrollback_lines: usize,
    pub ping_interval_ms: u64,
    pub dead_after_ms: u64,
    pub coalesce_ms: u64,
    pub max_batch_events: usize,
    pub flush_timeout_ms: u64,
    /// Not in the welcome's v1 table but announced so clients can show it.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_file_bytes: 10 << 20,
            max_list_entries: 10_000,
            max_path_bytes: 4096,
            max_in_flight: 64,
            rate_messages_per_sec: 200,
            rate_burst: 1000,
            max_terminals: 32,
            max_subscriptions: 64,
            window_bytes: 1 << 20,
            ack_bytes: 64 << 10,
            input_buffer_bytes: 1 << 20,
            scrollback_lines: 1000,
            ping_interval_ms: 15_000,
            dead_after_ms: 45_000,
            coalesce_ms: 100,
            max_batch_events: 256,
            flush_timeout_ms: 10_000,
            max_connections: 32,
        }
    }
}

/// How a terminal's leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<&'static str>,
}

/// A commit as the sidecar names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitId {
    pub epoch: u64,
    pub seq: u64,
}

/// A client request (§4.3, §6.2, §9.4, §10): the one definition of every
/// request's fields. The server parses with [`Request::parse`]; clients
/// (the Rust [`crate::client`] and, mirrored by hand, frontend's
/// protocol/types.ts) serialize it, `type` as the tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Request {
    #[serde(rename = "hello")]
    Hello(Hello),
    #[serde(rename = "term.list")]
    TermList,
    #[serde(rename = "term.create")]
    TermCreate(TermCreate),
    #[serde(rename = "term.attach")]
    TermAttach(TerminalRef),
    #[serde(rename = "term.detach")]
    TermDetach(TerminalRef),
    #[serde(rename = "term.resize")]
    TermResize(TermResize),
    #[serde(rename = "term.close")]
    TermClose(TerminalRef),
    #[serde(rename = "fs.subscribe")]
    FsSubscribe(PathRef),
    #[serde(rename = "fs.unsubscribe")]
    FsUnsubscribe(SubscriptionRef),
    #[serde(rename = "fs.stat")]
    FsStat(FsStat),
    #[serde(rename = "fs.list")]
    FsList(PathRef),
    #[serde(rename = "fs.read")]
    FsRead(FsRead),
    #[serde(rename = "fs.write")]
    FsWrite(FsWrite),
    #[serde(rename = "fs.create")]
    FsCreate(FsCreate),
    #[serde(rename = "fs.mkdir")]
    FsMkdir(FsMkdir),
    #[serde(rename = "fs.rename")]
    FsRename(FsRename),
    #[serde(rename = "fs.delete")]
    FsDelete(FsDelete),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `term.create` as sent; [`crate::terminal::CreateRequest`] is the checked
/// form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TermCreate {
    pub cols: u16,
    pub rows: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRef {
    pub terminal: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermResize {
    pub terminal: u32,
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRef {
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRef {
    pub subscription: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStat {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadEncoding {
    Auto,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRead {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<ReadEncoding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteEncoding {
    Utf8,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsWrite {
    pub path: String,
    pub content: String,
    pub encoding: WriteEncoding,
    /// Required, `null` for "the file must not exist" (§9.3): a missing
    /// field is a bad request, not a blind overwrite.
    #[serde(deserialize_with = "Option::deserialize")]
    pub base_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCreate {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMkdir {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRename {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsDelete {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
}

/// Every request `type` of v1, in the order of §4.3.
pub const REQUEST_TYPES: [&str; 17] = [
    "hello",
    "term.list",
    "term.create",
    "term.attach",
    "term.detach",
    "term.resize",
    "term.close",
    "fs.stat",
    "fs.list",
    "fs.read",
    "fs.write",
    "fs.create",
    "fs.mkdir",
    "fs.rename",
    "fs.delete",
    "fs.subscribe",
    "fs.unsubscribe",
];

impl Request {
    /// The request of type `ty` from its message `v` (the envelope's other
    /// fields, `id` included, are ignored). §4.2: an unknown type is
    /// `unknown_type`; a missing or wrong-typed field is `bad_request` with
    /// `details.field`.
    pub fn parse(ty: &str, v: &Value) -> ApiResult<Request> {
        fn body<T: serde::de::DeserializeOwned>(v: &Value) -> ApiResult<T> {
            serde_path_to_error::deserialize(v).map_err(bad_field)
        }
        Ok(match ty {
            "hello" => Request::Hello(body(v)?),
            "term.list" => Request::TermList,
            "term.create" => Request::TermCreate(body(v)?),
            "term.attach" => Request::TermAttach(body(v)?),
            "term.detach" => Request::TermDetach(body(v)?),
            "term.resize" => Request::TermResize(body(v)?),
            "term.close" => Request::TermClose(body(v)?),
            "fs.subscribe" => Request::FsSubscribe(body(v)?),
            "fs.unsubscribe" => Request::FsUnsubscribe(body(v)?),
            "fs.stat" => Request::FsStat(body(v)?),
            "fs.list" => Request::FsList(body(v)?),
            "fs.read" => Request::FsRead(body(v)?),
            "fs.write" => Request::FsWrite(body(v)?),
            "fs.create" => Request::FsCreate(body(v)?),
            "fs.mkdir" => Request::FsMkdir(body(v)?),
            "fs.rename" => Request::FsRename(body(v)?),
            "fs.delete" => Request::FsDelete(body(v)?),
            _ => {
                return Err(ApiError::new(
                    Code::UnknownType,
                    format!("unknown request type {ty:?}"),
                )
                .with(json!({ "type": ty })))
            }
        })
    }

    /// The wire name, as in `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::TermList => "term.list",
            Request::TermCreate(_) => "term.create",
            Request::TermAttach(_) => "term.attach",
            Request::TermDetach(_) => "term.detach",
            Request::TermResize(_) => "term.resize",
            Request::TermClose(_) => "term.close",
            Request::FsSubscribe(_) => "fs.subscribe",
            Request::FsUnsubscribe(_) => "fs.unsubscribe",
            Request::FsStat(_) => "fs.stat",
            Request::FsList(_) => "fs.list",
            Request::FsRead(_) => "fs.read",
            Request::FsWrite(_) => "fs.write",
            Request::FsCreate(_) => "fs.create",
            Request::FsMkdir(_) => "fs.mkdir",
            Request::FsRename(_) => "fs.rename",
            Request::FsDelete(_) => "fs.delete",
        }
    }

    /// The message to send: this request with `id`.
    pub fn to_message(&self, id: u64) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        v["id"] = json!(id);
        v
    }
}

/// A serde error as §4.2's `bad_request`, naming the field when serde
/// knows it (a wrong type names its path; a missing field only its name,
/// in the message).
fn bad_field(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let field = if path != "." {
        Some(
            path.split(['.', '['])
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    } else {
        inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string)
    };
    // serde's text ends with " at line 1 column 9", meaningless here.
    let inner = inner
        .split(" at line ")
        .next()
        .unwrap_or_default()
        .to_string();
    match field {
        Some(f) if !f.is_empty() => ApiError::bad_request(&f, format!("`{f}`: {inner}")),
        _ => ApiError::new(Code::BadRequest, inner),
    }
}

pub fn result_json(id: u64, result: Value) -> String {
    json!({"type": "result", "id": id, "result": result}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_big_endian() {
        let f = encode_frame(KIND_ACK, 0, 7, 0x0102_0304_0506_0708, b"");
        assert_eq!(f, [4, 0, 0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8]);
        let d = decode_client_frame(&f).unwrap();
        assert_eq!(
            (d.kind, d.terminal, d.offset),
            (KIND_ACK, 7, 0x0102_0304_0506_0708)
        );
        let i = encode_frame(KIND_INPUT, 0, 1, 0, b"ls\r");
        assert_eq!(decode_client_frame(&i).unwrap().payload, b"ls\r");
    }

    #[test]
    fn requests_round_trip_through_their_wire_form() {
        let reqs = [
            Request::TermList,
            Request::TermCreate(TermCreate {
                cols: 80,
                rows: 24,
                command: Some(vec!["bash".into()]),
                env: Some([("A".to_string(), "b".to_string())].into()),
                ..TermCreate::default()
            }),
            Request::TermResize(TermResize {
                terminal: 3,
                cols: 100,
                rows: 40,
            }),
            Request::FsWrite(FsWrite {
                path: "a.txt".into(),
                content: "hi".into(),
                encoding: WriteEncoding::Utf8,
                base_version: None,
                parents: Some(true),
            }),
            Request::FsRead(FsRead {
                path: "a".into(),
                encoding: Some(ReadEncoding::Base64),
            }),
            Request::FsUnsubscribe(SubscriptionRef { subscription: 9 }),
        ];
        for r in reqs {
            let m = r.to_message(7);
            assert_eq!(m["id"], 7);
            assert_eq!(m["type"], r.type_name());
            let back = Request::parse(m["type"].as_str().unwrap(), &m).unwrap();
            assert_eq!(back, r, "{m}");
        }
        // A write's base_version is sent even when null.
        let m = Request::FsWrite(FsWrite {
            path: "a".into(),
            content: String::new(),
            encoding: WriteEncoding::Base64,
            base_version: None,
            parents: None,
        })
        .to_message(1);
        assert!(m.as_object().unwrap().contains_key("base_version"), "{m}");
    }

    #[test]
    fn malformed_requests_name_their_field() {
        let field = |ty: &str, v: Value| {
            let e = Request::parse(ty, &v).unwrap_err();
            assert_eq!(e.code, Code::BadRequest, "{v}: {e}");
            e.details.map(|d| d["field"].clone()).unwrap_or(Value::Null)
        };
        assert_eq!(field("fs.read", json!({})), "path");
        assert_eq!(field("fs.read", json!({"path": 5})), "path");
        assert_eq!(
            field("fs.read", json!({"path": "a", "encoding": "utf7"})),
            "encoding"
        );
        assert_eq!(
            field("term.attach", json!({"terminal": 1u64 << 40})),
            "terminal"
        );
        assert_eq!(
            field(
                "term.create",
                json!({"cols": 80, "rows": 24, "env": {"A": 1}})
            ),
            "env"
        );
        assert_eq!(
            field(
                "fs.write",
                json!({"path": "x", "content": "", "encoding": "utf8"})
            ),
            "base_version"
        );
        assert_eq!(
            field(
                "fs.write",
                json!({"path": "x", "encoding": "utf8", "base_version": null})
            ),
            "content"
        );
        let e = Request::parse("nope", &json!({})).unwrap_err();
        assert_eq!(e.code, Code::UnknownType);
        assert_eq!(e.details.unwrap()["type"], "nope");
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(decode_client_frame(&[3, 0, 0]).is_none(), "short");
        assert!(
            decode_client_frame(&encode_frame(KIND_INPUT, 0, 1, 0, b"")).is_none(),
            "empty input"
        );
        assert!(
            decode_client_frame(&encode_frame(KIND_OUTPUT, 0, 1, 0, b"x")).is_none(),
            "wrong direction"
        );
        assert!(
            decode_client_frame(&encode_frame(9, 0, 1, 0, b"x")).is_none(),
            "unknown kind"
        );
    }
}

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

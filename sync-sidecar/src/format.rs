//! The on-store format: keys, records and their encoding. `docs/storage.md`
//! is the prose version of this file; change them together.
//!
//! A project (or template) lives under a *root* key, `projects/<id>` or
//! `templates/<name>`:
//!
//! ```text
//! blobs/<sha256>                          chunk bodies, shared by every root
//! <root>/meta.json                        name, template, created (JSON)
//! <root>/claims/<epoch>                   "a writer of this epoch is starting"
//! <root>/epochs/<epoch>-<bepoch>-<bseq>   writer epoch continues from (bepoch, bseq)
//! <root>/log/<epoch>/<seq>                one journal segment = one commit
//! <root>/snap/<epoch>/<seq>               checkpoint: the whole tree as of seq
//! ```
//!
//! Numbers in keys are zero-padded to 20 digits so that key order is numeric
//! order. Segments and checkpoints share one encoding: the 8-byte magic,
//! then one zstd frame holding a sequence of records, each a little-endian
//! `u32` length followed by that many bytes of CBOR. The first record is a
//! header; the rest are [`Op`]s. A checkpoint is the list of ops that builds
//! its tree from nothing (mkdir, write, symlink only, parents first).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::io::{Read, Write};

/// Files up to this size are stored inside segments and checkpoints.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Larger files are cut into chunks of this size, each a content-addressed
/// blob. (This replaces multipart upload: chunks are single PUTs, a chunk
/// already in the store is never sent again — an append to a large file
/// uploads only its last chunk — and a sparse file's holes cost one
/// zero-chunk blob.)
pub const CHUNK_SIZE: u64 = 8 << 20;
/// Biggest record we accept when decoding; guards against corrupt lengths.
pub const MAX_RECORD: u32 = 64 << 20;

pub const SEGMENT_MAGIC: &[u8; 8] = b"CoveSeg1";
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"CoveChk1";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{key}: not a Cove {what} (bad magic)")]
    BadMagic { key: String, what: &'static str },
    #[error("{key}: corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{key}: unsupported format version {version}")]
    Version { key: String, version: u32 },
    #[error("invalid path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("unrecognised key {0}")]
    BadKey(String),
}

/// A reference to one chunk of a large file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Lowercase hex SHA-256 of the chunk's bytes; the blob key is
    /// `blobs/<hash>`.
    pub hash: String,
    /// Length of the chunk in bytes (CHUNK_SIZE except for the last one).
    pub len: u64,
}

/// One change to the tree. Paths are relative to the workspace root,
/// `/`-separated UTF-8 with no empty, `.` or `..` component.
///
/// Applying ops is lenient by design (see `tree::Tree::apply`): a rename of a
/// missing path is a no-op, a write creates missing parents, a delete of a
/// missing path is a no-op. That makes a segment valid whatever the order in
/// which the sidecar saw events, and lets readers replay blindly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Mkdir {
        path: String,
        mode: u32,
    },
    Write {
        path: String,
        mode: u32,
        /// Modification time, nanoseconds since the Unix epoch.
        mtime: i64,
        size: u64,
        /// The whole body when `size <= INLINE_MAX`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inline: Option<ByteBuf>,
        /// Otherwise the chunks, in order; their lengths sum to `size`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        path: String,
        target: String,
        mtime: i64,
    },
    SetAttr {
        path: String,
        mode: u32,
        mtime: i64,
    },
    Rename {
        from: String,
        to: String,
    },
    Delete {
        path: String,
    },
}

impl Op {
    /// The path this op changes (the destination of a rename).
    pub fn path(&self) -> &str {
        match self {
            Op::Mkdir { path, .. }
            | Op::Write { path, .. }
            | Op::Symlink { path, .. }
            | Op::SetAttr { path, .. }
            | Op::Delete { path } => path,
            Op::Rename { to, .. } => to,
        }
    }

    /// Every path the op names, for validation.
    fn paths(&self) -> Vec<&str> {
        match self {
            Op::Rename { from, to } => vec![from, to],
            other => vec![other.path()],
        }
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        for p in self.paths() {
            check_path(p)?;
        }
        if let Op::Write {
            size,
            inline,
            chunks,
            ..
        } = self
        {
            let ok = match inline {
                Some(b) => b.len() as u64 == *size && chunks.is_empty(),
                None => chunks.iter().map(|c| c.len).sum::<u64>() == *size,
            };
            if !ok {
                return Err(FormatError::Corrupt {
                    key: self.path().to_owned(),
                    reason: "write op: size does not match its body".into(),
                });
            }
            for c in chunks {
                check_hash(&c.hash).map_err(|reason| FormatError::Corrupt {
                    key: self.path().to_owned(),
                    reason: reason.into(),
                })?;
            }
        }
        Ok(())
    }
}

/// Paths inside a workspace: the one check every path from the store, a
/// client or the kernel passes before it touches the cache directory.
pub fn check_path(path: &str) -> Result<(), FormatError> {
    let bad = |reason| {
        Err(FormatError::BadPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.len() > 4096 {
        return bad("longer than PATH_MAX");
    }
    if path.contains('\0') {
        return bad("NUL byte");
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return bad("empty, '.' or '..' component");
        }
        if c.len() > 255 {
            return bad("component longer than NAME_MAX");
        }
    }
    Ok(())
}

pub fn check_hash(h: &str) -> Result<(), &'static str> {
    if h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err("chunk hash is not 64 lowercase hex digits")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub v: u32,
    pub epoch: u64,
    pub seq: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub ops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    pub v: u32,
    pub time_ms: u64,
    pub entries: u64,
}

/// A decoded segment: one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub header: SegmentHeader,
    pub ops: Vec<Op>,
}

/// Streaming encoder shared by segments and checkpoints.
pub struct RecordWriter<W: Write> {
    enc: zstd::Encoder<'static, W>,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(mut out: W, magic: &[u8; 8]) -> std::io::Result<Self> {
        out.write_all(magic)?;
        Ok(Self {
            enc: zstd::Encoder::new(out, 3)?,
            buf: Vec::new(),
        })
    }

    pub fn record<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        self.buf.clear();
        ciborium::into_writer(value, &mut self.buf).map_err(std::io::Error::other)?;
        self.enc.write_all(&(self.buf.len() as u32).to_le_bytes())?;
        self.enc.write_all(&self.buf)
    }

    pub fn finish(self) -> std::io::Result<W> {
        self.enc.finish()
    }
}

/// Streaming decoder; `key` names the object in every error.
pub struct RecordReader<R: Read> {
    dec: zstd::Decoder<'static, std::io::BufReader<R>>,
    key: String,
    buf: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    pub fn new(
        mut input: R,
        magic: &[u8; 8],
        what: &'static str,
        key: &str,
    ) -> Result<Self, FormatError> {
        let mut m = [0u8; 8];
        input
            .read_exact(&mut m)
            .map_err(|_| FormatError::BadMagic {
                key: key.to_owned(),
                what,
            })?;
        if &m != magic {
            return Err(FormatError::BadMagic {
                key: key.to_owned(),
                what,
            });
        }
        let dec = zstd::Decoder::new(input).map_err(|e| corrupt(key, e))?;
        Ok(Self {
            dec,
            key: key.to_owned(),
            buf: Vec::new(),
        })
    }

    /// The next record, or `None` at a clean end of the stream.
    pub fn read_record<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, FormatError> {
        let mut len = [0u8; 4];
        match read_full(&mut self.dec, &mut len) {
            Ok(0) => return Ok(None),
            Ok(4) => {}
            Ok(_) => return Err(corrupt(&self.key, "truncated record length")),
            Err(e) => return Err(corrupt(&self.key, e)),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            return Err(corrupt(&self.key, format!("record of {len} bytes")));
        }
        self.buf.resize(len as usize, 0);
        self.dec
            .read_exact(&mut self.buf)
            .map_err(|e| corrupt(&self.key, e))?;
        ciborium::from_reader(&self.buf[..])
            .map(Some)
            .map_err(|e| corrupt(&self.key, e))
    }

    /// The next record, which must exist.
    pub fn expect<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T, FormatError> {
        self.read_record()?
            .ok_or_else(|| corrupt(&self.key, format!("missing {what}")))
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> FormatError {
    FormatError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

pub fn encode_segment(seg: &Segment) -> Bytes {
    let mut w = RecordWriter::new(Vec::new(), SEGMENT_MAGIC).expect("writing to a Vec");
    w.record(&seg.header).expect("writing to a Vec");
    for op in &seg.ops {
        w.record(op).expect("writing to a Vec");
    }
    Bytes::from(w.finish().expect("writing to a Vec"))
}

pub fn decode_segment(key: &str, bytes: &[u8]) -> Result<Segment, FormatError> {
    let mut r = RecordReader::new(bytes, SEGMENT_MAGIC, "segment", key)?;
    let header: SegmentHeader = r.expect("header")?;
    if header.v != FORMAT_VERSION {
        return Err(FormatError::Version {
            key: key.to_owned(),
            version: header.v,
        });
    }
    let mut ops = Vec::with_capacity(header.ops.min(1 << 16) as usize);
    while let Some(op) = r.read_record::<Op>()? {
        op.validate()?;
        ops.push(op);
    }
    if ops.len() as u64 != header.ops {
        return Err(corrupt(
            key,
            format!("header says {} ops, found {}", header.ops, ops.len()),
        ));
    }
    Ok(Segment { header, ops })
}

/// Open a checkpoint for streaming; returns the header and a reader whose
/// remaining records are the checkpoint's ops.
pub fn open_checkpoint<R: Read>(
    key: &str,
    input: R,
) -> Result<(CheckpointHeader, RecordReader<R>), FormatError> {
    let mut r = RecordReader::new(input, CHECKPOINT_MAGIC, "checkpoint", key)?;
    let header: CheckpointHeader = r.expect("header")?;
    if header.v != FORMAT_VERSION {
        return Err(FormatError::Version {
            key: key.to_owned(),
            version: header.v,
        });
    }
    Ok((header, r))
}

/// Position of a commit in a project's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommitId {
    pub epoch: u64,
    pub seq: u64,
}

impl std::str::FromStr for CommitId {
    type Err = &'static str;

    /// `EPOCH.SEQ`, as `Display` writes it (and `cove-sync history` prints).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (e, q) = s.split_once('.').ok_or("commit must be EPOCH.SEQ")?;
        Ok(CommitId {
            epoch: e.parse().map_err(|_| "bad epoch")?,
            seq: q.parse().map_err(|_| "bad seq")?,
        })
    }
}

impl std::fmt::Display for CommitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

pub mod keys {
    //! Key construction and parsing; the only place key shapes are spelled.
    use super::FormatError;

    /// Project and template ids (storage.md §1): 1–63 of `[a-z0-9-]`, no
    /// `-` at either end, so they are safe in keys, paths and host names.
    pub fn valid_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 63
            && !id.starts_with('-')
            && !id.ends_with('-')
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    pub fn project_root(id: &str) -> String {
        format!("projects/{id}")
    }
    pub fn template_root(name: &str) -> String {
        format!("templates/{name}")
    }
    pub fn blob(hash: &str) -> String {
        format!("blobs/{hash}")
    }
    pub fn meta(root: &str) -> String {
        format!("{root}/meta.json")
    }
    pub fn claims(root: &str) -> String {
        format!("{root}/claims/")
    }
    pub fn claim(root: &str, epoch: u64) -> String {
        format!("{root}/claims/{epoch:020}")
    }
    pub fn markers(root: &str) -> String {
        format!("{root}/epochs/")
    }
    pub fn marker(root: &str, epoch: u64, base: Option<super::CommitId>) -> String {
        let b = base.unwrap_or(super::CommitId { epoch: 0, seq: 0 });
        let tag = if base.is_some() { "" } else { "g" };
        format!(
            "{root}/epochs/{epoch:020}-{:020}-{:020}{tag}",
            b.epoch, b.seq
        )
    }
    pub fn log(root: &str, epoch: u64) -> String {
        format!("{root}/log/{epoch:020}/")
    }
    pub fn segment(root: &str, epoch: u64, seq: u64) -> String {
        format!("{root}/log/{epoch:020}/{seq:020}")
    }
    pub fn snaps(root: &str) -> String {
        format!("{root}/snap/")
    }
    pub fn checkpoint(root: &str, epoch: u64, seq: u64) -> String {
        format!("{root}/snap/{epoch:020}/{seq:020}")
    }

    fn num(key: &str, s: &str) -> Result<u64, FormatError> {
        if s.len() != 20 {
            return Err(FormatError::BadKey(key.to_owned()));
        }
        s.parse().map_err(|_| FormatError::BadKey(key.to_owned()))
    }

    /// The last component of a claim key, as an epoch.
    pub fn parse_claim(key: &str) -> Result<u64, FormatError> {
        num(key, key.rsplit('/').next().unwrap_or(""))
    }

    /// `(epoch, base)` of a marker key; base `None` for a genesis epoch.
    pub fn parse_marker(key: &str) -> Result<(u64, Option<super::CommitId>), FormatError> {
        let last = key.rsplit('/').next().unwrap_or("");
        let (last, genesis) = match last.strip_suffix('g') {
            Some(l) => (l, true),
            None => (last, false),
        };
        let mut it = last.split('-');
        let (Some(e), Some(be), Some(bs), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(FormatError::BadKey(key.to_owned()));
        };
        let epoch = num(key, e)?;
        let base = super::CommitId {
            epoch: num(key, be)?,
            seq: num(key, bs)?,
        };
        Ok((epoch, if genesis { None } else { Some(base) }))
    }

    /// `(epoch, seq)` of a segment or checkpoint key.
    pub fn parse_pos(key: &str) -> Result<super::CommitId, FormatError> {
        let mut it = key.rsplit('/');
        let (Some(s), Some(e)) = (it.next(), it.next()) else {
            return Err(FormatError::BadKey(key.to_owned()));
        };
        Ok(super::CommitId {
            epoch: num(key, e)?,
            seq: num(key, s)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_round_trip() {
        let seg = Segment {
            header: SegmentHeader {
                v: FORMAT_VERSION,
                epoch: 3,
                seq: 7,
                time_ms: 1,
                ops: 3,
            },
            ops: vec![
                Op::Mkdir {
                    path: "a b/ü\nx".into(),
                    mode: 0o755,
                },
                Op::Write {
                    path: "a b/ü\nx/f".into(),
                    mode: 0o644,
                    mtime: 5,
                    size: 3,
                    inline: Some(ByteBuf::from(b"hi\0".to_vec())),
                    chunks: vec![],
                },
                Op::Rename {
                    from: "x".into(),
                    to: "y".into(),
                },
            ],
        };
        let bytes = encode_segment(&seg);
        assert_eq!(decode_segment("k", &bytes).unwrap(), seg);
    }

    #[test]
    fn corrupt_segments_are_named_errors() {
        let err = decode_segment("projects/p/log/1/2", b"nonsense").unwrap_err();
        assert!(err.to_string().contains("projects/p/log/1/2"), "{err}");
        let mut good = encode_segment(&Segment {
            header: SegmentHeader {
                v: 1,
                epoch: 1,
                seq: 1,
                time_ms: 0,
                ops: 0,
            },
            ops: vec![],
        })
        .to_vec();
        let n = good.len();
        good.truncate(n - 3);
        assert!(decode_segment("k", &good).is_err());
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a\0b",
            "a/",
        ] {
            assert!(check_path(p).is_err(), "{p:?} accepted");
        }
        for p in ["a", "a b/c", "ü/🦀", "new\nline", ".hidden/..x"] {
            check_path(p).unwrap();
        }
        let op = Op::Write {
            path: "f".into(),
            mode: 0o644,
            mtime: 0,
            size: 10,
            inline: Some(ByteBuf::from(vec![1])),
            chunks: vec![],
        };
        assert!(op.validate().is_err());
    }

    #[test]
    fn keys_parse_back() {
        let k = keys::marker("projects/x", 5, Some(CommitId { epoch: 4, seq: 99 }));
        assert_eq!(
            keys::parse_marker(&k).unwrap(),
            (5, Some(CommitId { epoch: 4, seq: 99 }))
        );
        let g = keys::marker("projects/x", 1, None);
        assert_eq!(keys::parse_marker(&g).unwrap(), (1, None));
        let s = keys::segment("projects/x", 2, 10);
        assert_eq!(keys::parse_pos(&s).unwrap(), CommitId { epoch: 2, seq: 10 });
        assert!(keys::parse_pos("projects/x/log/zz/1").is_err());
    }
}

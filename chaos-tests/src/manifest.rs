//! The record of what the workload did, kept outside the workspace (as
//! JuiceFS's crash-consistency test does): one JSON line per step, appended
//! with a single `write(2)`, `begin` before an operation and `done` after
//! it returned (after its fsync when `sync`). A `done` with `sync` is an
//! acknowledged write: it must survive any kill.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// In place: `O_TRUNC`, one `write`.
    Write,
    /// Editor save pattern: a temporary file renamed over the path.
    Replace,
    /// `version` is the line number appended.
    Append,
    Delete,
    /// The directory pair moved so that `path` is its name now.
    DirMove,
    /// A tar archive of `count` files extracted into `path`.
    Tar,
    /// `path` (a tar directory) removed.
    Untar,
    /// `lineage` is the commit's hash.
    Git,
    /// An acknowledged save through cove-pty's protocol.
    Save,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Begin,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rec {
    /// Unix ms.
    pub t: u64,
    pub op: Op,
    pub phase: Phase,
    pub path: String,
    #[serde(default)]
    pub lineage: String,
    #[serde(default)]
    pub version: u64,
    /// The operation was made durable (fsync, or a durable ack).
    #[serde(default)]
    pub sync: bool,
    #[serde(default)]
    pub count: u64,
    /// Which kill cycle it belongs to.
    #[serde(default)]
    pub cycle: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Appends one record with one `write(2)`; the page cache is enough (the
/// machine does not crash, the workspace does).
pub struct Writer(std::fs::File);

impl Writer {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ))
    }

    pub fn put(&mut self, r: &Rec) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.0.write_all(&line)
    }
}

/// Every whole record in `path` (a line cut by a kill is dropped).
pub fn read(path: &Path) -> std::io::Result<Vec<Rec>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

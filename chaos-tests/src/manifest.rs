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

/// The marker of a record line on a terminal (`--manifest -`): other
/// output (errors, a shell's noise) is told apart by it.
pub const TERMINAL_MARK: &str = "@cove-chaos-rec ";

/// Where a worker records its steps.
pub enum Sink {
    /// A file outside the workspace (the harness and the workspace share
    /// a machine).
    File(Writer),
    /// Its terminal, when the workspace is somewhere else (a pod): each
    /// record is a line on stdout, and before an operation starts (after
    /// its `begin`) the worker waits for the harness to say, with a `k` on
    /// stdin, that the record is safe outside the workspace. A `done` is
    /// not waited for: one lost in a kill only leaves a write unchecked.
    Terminal,
}

impl Sink {
    pub fn put(&mut self, r: &Rec) -> std::io::Result<()> {
        match self {
            Sink::File(w) => w.put(r),
            Sink::Terminal => {
                use std::io::Read as _;
                let mut line = TERMINAL_MARK.as_bytes().to_vec();
                line.extend(serde_json::to_vec(r).map_err(std::io::Error::other)?);
                line.push(b'\n');
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()?;
                if r.phase == Phase::Begin {
                    let mut b = [0u8; 1];
                    loop {
                        match std::io::stdin().lock().read(&mut b) {
                            Ok(0) => {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "the harness is gone",
                                ))
                            }
                            Ok(_) if b[0] == b'k' => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            }
        }
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

//! Past versions and restore (docs/api.md §5.5), read from and written to
//! the store with cove-sync's journal.
//!
//! A restore is a new commit whose content at the path equals the old
//! commit's: history stays append-only and a restore can be undone by
//! another. A stopped project's restore is written here as a writer with a
//! new epoch, fenced like any other writer; a running one is done by its
//! sidecar through the workspace's files (cove_sync::restore), since a new
//! epoch would fence that sidecar.

use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use base64::Engine as _;
use cove_sync::format::{CommitId, FormatError, Op};
use cove_sync::journal::{Journal, JournalError, Writer};
use cove_sync::tree::{is_within, Content, Node, Tree};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A past version of a file or symlink (api.md §4.5, FileVersion).
#[derive(Debug, Serialize)]
pub struct FileVersion {
    pub path: String,
    pub commit: CommitId,
    /// `file` or `symlink`.
    pub kind: &'static str,
    pub mode: u32,
    pub size: u64,
    pub mtime_ms: i64,
    /// `utf8` or `base64` for a file, `None` for a symlink.
    pub encoding: Option<&'static str>,
    pub content: Option<String>,
    pub version: Option<String>,
    /// A symlink's target.
    pub target: Option<String>,
}

/// One commit of a history page.
#[derive(Debug, Serialize)]
pub struct CommitEntry {
    pub epoch: u64,
    pub seq: u64,
    pub time_ms: u64,
    pub files_changed: usize,
    /// The first 100, sorted.
    pub paths: Vec<String>,
    pub paths_truncated: bool,
    /// The project's first state (its template or fork source).
    pub initial: bool,
}

/// A page of history, newest first.
#[derive(Debug, Serialize)]
pub struct HistoryPage {
    pub commits: Vec<CommitEntry>,
    /// `before` of the next page; `None` after the last.
    pub next_before: Option<u64>,
}

/// What a restore did (RestoreResult). A running workspace's sidecar
/// answers the same (sync-api.md); read leniently, answered exactly.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreResult {
    pub files_changed: u64,
    /// Whether the restore is in the store; `commit` is `None` when not.
    pub durable: bool,
    pub commit: Option<CommitId>,
}

/// Past versions larger than this are refused (`too_large`).
pub const MAX_VERSION_BYTES: u64 = 10 << 20;

pub fn parse_commit(s: &str) -> Option<CommitId> {
    s.parse().ok()
}

pub fn check_path(path: &str, allow_root: bool) -> ApiResult<()> {
    if (path.is_empty() && allow_root) || cove_sync::tree::valid(path) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_path",
        format!("invalid path {path:?}"),
    )
    .with(json!({ "path": path })))
}

fn journal_err(e: JournalError, at: CommitId) -> ApiError {
    match e {
        JournalError::NoCommit(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_commit",
            format!("{at} is not in this project's history"),
        )
        .with(json!({"commit": at.to_string()})),
        e => journal_store_err(e),
    }
}

/// A store that answered with damage (a blob or segment the history names
/// is missing or fails its hash) is not an outage: it gets its own code.
fn journal_store_err(e: JournalError) -> ApiError {
    match e {
        JournalError::Missing { ref key }
        | JournalError::Corrupt { ref key }
        | JournalError::Format(FormatError::Corrupt { ref key, .. }) => {
            let key = key.clone();
            tracing::error!(error = %e, "the store's data is damaged");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_damaged",
                e.to_string(),
            )
            .with(json!({ "key": key }))
        }
        e => ApiError::store(e),
    }
}

async fn tree_at(j: &Journal, at: Option<CommitId>) -> ApiResult<(Tree, CommitId)> {
    let fallback = at.unwrap_or(CommitId { epoch: 0, seq: 0 });
    j.load_tree(true, at)
        .await
        .map_err(|e| journal_err(e, fallback))
}

async fn bytes_of(j: &Journal, node: &Node) -> ApiResult<Vec<u8>> {
    match &node.content {
        Content::Inline { body, .. } => Ok(body.as_ref().map(|b| b.to_vec()).unwrap_or_default()),
        Content::Chunks(chunks) => {
            let mut out = Vec::with_capacity(node.size as usize);
            for c in chunks {
                out.extend_from_slice(&j.chunk(c).await.map_err(journal_store_err)?);
            }
            Ok(out)
        }
        _ => Ok(Vec::new()),
    }
}

/// FileVersion (§4.5) of `path` at `at`.
pub async fn file_version(j: &Journal, at: CommitId, path: &str) -> ApiResult<FileVersion> {
    check_path(path, false)?;
    let (tree, _) = tree_at(j, Some(at)).await?;
    let node = tree.get(path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "path_not_found",
            format!("{path} did not exist at {at}"),
        )
        .with(json!({ "path": path }))
    })?;
    let mut v = FileVersion {
        path: path.to_string(),
        commit: at,
        kind: "file",
        mode: node.mode,
        size: node.size,
        mtime_ms: node.mtime / 1_000_000,
        encoding: None,
        content: None,
        version: None,
        target: None,
    };
    match &node.content {
        Content::Dir => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_file",
            format!("{path} was a directory at {at}"),
        )
        .with(json!({"path": path, "kind": "dir"}))),
        Content::Symlink(t) => {
            v.kind = "symlink";
            v.mode = 0o777;
            v.size = t.len() as u64;
            v.target = Some(t.clone());
            Ok(v)
        }
        _ if node.size > MAX_VERSION_BYTES => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_large",
            format!(
                "{path} was {} bytes at {at}; the limit is {MAX_VERSION_BYTES}",
                node.size
            ),
        )
        .with(json!({"path": path, "size": node.size, "limit": MAX_VERSION_BYTES}))),
        _ => {
            let bytes = bytes_of(j, node).await?;
            v.version = Some(cove_pty::files::version_of(&bytes));
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let (encoding, content) = match String::from_utf8(bytes) {
                Ok(s) if !s.contains('\0') => ("utf8", s),
                Ok(s) => ("base64", b64(s.as_bytes())),
                Err(e) => ("base64", b64(e.as_bytes())),
            };
            v.encoding = Some(encoding);
            v.content = Some(content);
            Ok(v)
        }
    }
}

/// A page of history (§5.5), newest first; the initial state ends the
/// whole list. A filtered page reads at most [`SCAN`] commits.
pub async fn list(
    j: &Journal,
    created_ms: u64,
    limit: usize,
    before: Option<u64>,
    filter: Option<&str>,
) -> ApiResult<HistoryPage> {
    const SCAN: usize = 1000;
    let chain = j.chain().await.map_err(journal_store_err)?;
    let ids: Vec<CommitId> = chain
        .commits()
        .filter(|c| c.seq > 0 && before.is_none_or(|b| c.seq < b))
        .collect();
    let mut out = Vec::new();
    let mut next_before = None;
    for (scanned, c) in ids.iter().rev().enumerate() {
        if out.len() == limit || scanned == SCAN {
            next_before = Some(c.seq + 1);
            break;
        }
        let seg = j.read_segment(*c).await.map_err(journal_store_err)?;
        let mut paths: Vec<String> = Vec::new();
        for op in &seg.ops {
            if let Op::Rename { from, .. } = op {
                paths.push(from.clone());
            }
            paths.push(op.path().to_string());
        }
        paths.sort();
        paths.dedup();
        if let Some(f) = filter {
            if !paths.iter().any(|p| is_within(p, f)) {
                continue;
            }
        }
        let n = paths.len();
        paths.truncate(100);
        out.push(CommitEntry {
            epoch: c.epoch,
            seq: c.seq,
            time_ms: seg.header.time_ms,
            files_changed: n,
            paths,
            paths_truncated: n > 100,
            initial: false,
        });
    }
    if next_before.is_none() && out.len() < limit {
        let initial_has = match filter {
            None => true,
            Some(f) => {
                let (t, _) = tree_at(j, Some(CommitId { epoch: 1, seq: 0 })).await?;
                t.get(f).is_some()
            }
        };
        if initial_has {
            out.push(CommitEntry {
                epoch: 1,
                seq: 0,
                time_ms: created_ms,
                files_changed: 0,
                paths: Vec::new(),
                paths_truncated: false,
                initial: true,
            });
        }
    } else if next_before.is_none() && out.len() == limit {
        // Full page exactly at the end of the commits: the initial state
        // is on the next page.
        next_before = Some(1);
    }
    Ok(HistoryPage {
        commits: out,
        next_before,
    })
}

/// Restores `path` (`""`: everything) of a stopped project to `at`.
pub async fn restore_stopped(j: &Journal, at: CommitId, path: &str) -> ApiResult<RestoreResult> {
    check_path(path, true)?;
    let (old, _) = tree_at(j, Some(at)).await?;
    if !path.is_empty() && old.get(path).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "path_not_found",
            format!("{path} did not exist at {at}"),
        )
        .with(json!({ "path": path })));
    }
    let (cur, head) = tree_at(j, None).await?;
    let ops = cove_sync::restore::restore_ops(&cur, &old, path).map_err(ApiError::internal)?;
    let changed = ops.len();
    if changed == 0 {
        return Ok(RestoreResult {
            files_changed: 0,
            durable: true,
            commit: Some(head),
        });
    }
    let epoch = j.max_claim().await.map_err(journal_store_err)? + 1;
    let (mut w, _) = Writer::open(j.clone(), Some(epoch))
        .await
        .map_err(journal_store_err)?;
    let commit = w.append(ops).await.map_err(journal_store_err)?;
    Ok(RestoreResult {
        files_changed: changed as u64,
        durable: true,
        commit: Some(commit),
    })
}

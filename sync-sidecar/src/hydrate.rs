//! Hydration: turn a project's history into files in the cache directory.
//!
//! Reads the newest checkpoint on the chain as a stream (bodies go straight
//! to disk, never all in memory), replays the tail of segments, then fills
//! in large files from their chunks (holes stay holes), and finally sets
//! directory modes (last, so a read-only directory can still be filled).
//! Returns the index — the committed tree without bodies — that the sidecar
//! compares the cache against from then on.

use crate::format::{open_checkpoint, ChunkRef, CommitId, Op, CHUNK_SIZE};
use crate::fsutil::{self, split, Root};
use crate::journal::{Chain, JResult, Journal, JournalError};
use crate::tree::{Content, Tree};
use futures::{StreamExt, TryStreamExt};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Serialize;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Hydration progress, shared with the status API.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub bytes: AtomicU64,
    pub finished: AtomicBool,
    /// The cache was adopted as a clean stop left it: nothing was fetched.
    pub warm: AtomicBool,
    /// Files whose content could not be restored (a chunk missing or
    /// corrupt in the store), with the reason. They keep their size, with
    /// zeros where data is missing, and are not committed unless edited.
    pub damaged: parking_lot::Mutex<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct ProgressView {
    pub total: u64,
    pub done: u64,
    pub bytes: u64,
    pub finished: bool,
    pub warm: bool,
    pub damaged: Vec<String>,
}

impl Progress {
    pub fn view(&self) -> ProgressView {
        ProgressView {
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            warm: self.warm.load(Ordering::Relaxed),
            damaged: self.damaged.lock().clone(),
        }
    }
}

/// Who owns hydrated files (the workspace user), if not the sidecar's user.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn jerr(e: impl std::fmt::Display) -> JournalError {
    JournalError::Other(e.to_string())
}

fn io_err(path: &str, e: io::Error) -> JournalError {
    JournalError::Other(format!("hydrating {path}: {e}"))
}

/// Apply one op to the directory under `root` and to `index`. Mirrors
/// `Tree::apply`, so disk and index agree. Large files are created at their
/// full size (sparse) and filled later.
pub fn materialize(root: &Root, index: &mut Tree, op: &Op, owner: Option<Owner>) -> JResult<()> {
    op.validate()?;
    let chown = |rel: &str| -> io::Result<()> {
        if let Some(o) = owner {
            let (p, n) = split(rel);
            let dir = root.dir(p)?;
            nix::unistd::fchownat(
                &dir,
                n,
                Some(o.uid.into()),
                Some(o.gid.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(())
    };
    let parents = |rel: &str| -> io::Result<()> {
        let (p, _) = split(rel);
        root.force_dirs(p, 0o755)
    };
    let res: io::Result<()> = (|| {
        match op {
            Op::Mkdir { path, .. } => match root.lstat_opt(path)? {
                Some(st) if fsutil::is_dir(&st) => {}
                _ => {
                    root.remove_all(path)?;
                    root.force_dirs(path, 0o755)?;
                    chown(path)?;
                }
            },
            Op::Write {
                path,
                mode,
                mtime,
                size,
                inline,
                ..
            } => {
                match root.lstat_opt(path)? {
                    Some(st) if fsutil::is_file(&st) => {}
                    Some(_) => root.remove_all(path)?,
                    None => parents(path)?,
                }
                let mut f = root.open_file(
                    path,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW,
                    0o600,
                )?;
                match inline {
                    Some(body) => f.write_all(body)?,
                    None => f.set_len(*size)?,
                }
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(*mode & 0o7777))?;
                set_mtime(&f, *mtime)?;
                drop(f);
                chown(path)?;
            }
            Op::Symlink {
                path,
                target,
                mtime,
            } => {
                root.remove_all(path)?;
                parents(path)?;
                let (p, n) = split(path);
                let dir = root.dir(p)?;
                nix::unistd::symlinkat(target.as_str(), &dir, n)?;
                set_mtime_at(&dir, n, *mtime)?;
                chown(path)?;
            }
            Op::SetAttr { path, mode, mtime } => {
                if let Some(st) = root.lstat_opt(path)? {
                    if !fsutil::is_symlink(&st) {
                        let (p, n) = split(path);
                        let dir = root.dir(p)?;
                        nix::sys::stat::fchmodat(
                            &dir,
                            n,
                            Mode::from_bits_truncate(*mode & 0o7777),
                            nix::sys::stat::FchmodatFlags::FollowSymlink,
                        )?;
                        if !fsutil::is_dir(&st) {
                            set_mtime_at(&dir, n, *mtime)?;
                        }
                    }
                }
            }
            Op::Rename { from, to } => {
                if from != to && index.get(from).is_some() && !to.starts_with(&format!("{from}/")) {
                    root.remove_all(to)?;
                    parents(to)?;
                    let (fp, fname) = split(from);
                    let (tp, tname) = split(to);
                    let fd = root.dir(fp)?;
                    let td = root.dir(tp)?;
                    nix::fcntl::renameat(&fd, fname, &td, tname)?;
                }
            }
            Op::Delete { path } => root.remove_all(path)?,
        }
        Ok(())
    })();
    res.map_err(|e| io_err(op.path(), e))?;
    index.apply(op)?;
    Ok(())
}

/// Set atime and mtime of `name` in `dir` (never following a symlink).
fn set_mtime_at(dir: &std::os::fd::OwnedFd, name: &str, mtime: i64) -> io::Result<()> {
    let ts = nix::sys::time::TimeSpec::new(
        mtime.div_euclid(1_000_000_000),
        mtime.rem_euclid(1_000_000_000),
    );
    nix::sys::stat::utimensat(
        dir,
        name,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

pub(crate) fn set_mtime(f: &std::fs::File, mtime: i64) -> io::Result<()> {
    let (secs, nanos) = (
        mtime.div_euclid(1_000_000_000),
        mtime.rem_euclid(1_000_000_000) as u32,
    );
    let t = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::new(secs.unsigned_abs(), 0)
            + std::time::Duration::new(0, nanos)
    };
    f.set_modified(t)
}

/// Empty the directory (the cache is ours; whatever is in it is stale).
pub fn clear(root: &Root) -> io::Result<()> {
    for name in root.list("")? {
        root.remove_all(&name)?;
    }
    Ok(())
}

/// Hydrate `root` (emptied first) with the state at the head of `chain`.
pub async fn hydrate(
    journal: &Journal,
    chain: &Chain,
    root: Arc<Root>,
    owner: Option<Owner>,
    progress: Arc<Progress>,
) -> JResult<(Tree, CommitId)> {
    let head = chain.head();
    {
        let r = root.clone();
        tokio::task::spawn_blocking(move || clear(&r))
            .await
            .map_err(jerr)?
            .map_err(|e| io_err("(clearing the cache)", e))?;
    }
    let ckpt = journal.latest_checkpoint(chain, head).await?;
    let tail_len = chain
        .commits()
        .filter(|c| ckpt.is_none_or(|k| c.seq > k.seq))
        .count() as u64;
    let mut index = Tree::new(false);
    if let Some(c) = ckpt {
        let (key, bytes) = journal.read_checkpoint(c).await?;
        progress
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let (r, p) = (root.clone(), progress.clone());
        index = tokio::task::spawn_blocking(move || -> JResult<Tree> {
            let (header, mut rd) = open_checkpoint(&key, &bytes[..])?;
            p.total
                .fetch_add(header.entries + tail_len, Ordering::Relaxed);
            while let Some(op) = rd.read_record::<Op>()? {
                materialize(&r, &mut index, &op, owner)?;
                p.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(index)
        })
        .await
        .map_err(jerr)??;
    } else {
        progress.total.fetch_add(tail_len, Ordering::Relaxed);
    }
    let mut tail = std::pin::pin!(journal.tail(chain, ckpt, head));
    while let Some(seg) = tail.try_next().await? {
        let (r, mut idx) = (root.clone(), index);
        index = tokio::task::spawn_blocking(move || -> JResult<Tree> {
            for op in &seg.ops {
                materialize(&r, &mut idx, op, owner)?;
            }
            Ok(idx)
        })
        .await
        .map_err(jerr)??;
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    fill_chunks(journal, &root, &index, &progress).await?;
    let (r, idx) = (root.clone(), index);
    let index = tokio::task::spawn_blocking(move || -> JResult<Tree> {
        // Deepest first, so a read-only parent is set after its children.
        let dirs: Vec<(String, u32)> = idx
            .iter()
            .filter(|(_, n)| n.is_dir())
            .map(|(p, n)| (p.clone(), n.mode))
            .collect();
        for (p, mode) in dirs.iter().rev() {
            let (pp, n) = split(p);
            let dir = r.dir(pp).map_err(|e| io_err(p, e))?;
            nix::sys::stat::fchmodat(
                &dir,
                n,
                Mode::from_bits_truncate(*mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err(p, e.into()))?;
        }
        Ok(idx)
    })
    .await
    .map_err(jerr)??;
    progress.finished.store(true, Ordering::Relaxed);
    Ok((index, head))
}

/// SHA-256 of `len` zero bytes, for recognising holes.
pub fn zero_hash(len: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let zeros = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        left -= n as u64;
    }
    hex::encode(h.finalize())
}

/// Download every large file's chunks into its (already sized) file.
async fn fill_chunks(
    journal: &Journal,
    root: &Arc<Root>,
    index: &Tree,
    progress: &Progress,
) -> JResult<()> {
    let zero_full = zero_hash(CHUNK_SIZE);
    let mut jobs: Vec<(String, u64, ChunkRef)> = Vec::new();
    let mut mtimes: Vec<(String, i64)> = Vec::new();
    for (path, node) in index.iter() {
        if let Content::Chunks(chunks) = &node.content {
            let mut off = 0;
            for c in chunks {
                if !(c.len == CHUNK_SIZE && c.hash == zero_full) {
                    jobs.push((path.clone(), off, c.clone()));
                }
                off += c.len;
            }
            mtimes.push((path.clone(), node.mtime));
        }
    }
    futures::stream::iter(jobs)
        .map(|(path, off, c)| {
            let root = root.clone();
            async move {
                let body = match journal.chunk(&c).await {
                    Ok(b) => b,
                    // One bad blob damages one file, not the workspace.
                    Err(e @ (JournalError::Missing { .. } | JournalError::Corrupt { .. })) => {
                        let msg = format!("{path}: {e}");
                        tracing::error!("{msg}");
                        progress.damaged.lock().push(msg);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                progress.bytes.fetch_add(c.len, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || -> JResult<()> {
                    let f = root
                        .open_file(&path, OFlag::O_WRONLY | OFlag::O_NOFOLLOW, 0)
                        .map_err(|e| io_err(&path, e))?;
                    f.write_all_at(&body, off).map_err(|e| io_err(&path, e))
                })
                .await
                .map_err(jerr)?
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    let root = root.clone();
    tokio::task::spawn_blocking(move || -> JResult<()> {
        for (path, mtime) in mtimes {
            let f = root
                .open_file(&path, OFlag::O_WRONLY | OFlag::O_NOFOLLOW, 0)
                .map_err(|e| io_err(&path, e))?;
            set_mtime(&f, mtime).map_err(|e| io_err(&path, e))?;
        }
        Ok(())
    })
    .await
    .map_err(jerr)?
}

/// What a sidecar leaves after a clean stop, for the next start on the same
/// cache (`--state-file`): the cache then holds exactly the tree at `head`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CleanStop {
    pub project: String,
    pub head: CommitId,
    /// The directory the state describes (the cache, or the watched
    /// workspace), canonical.
    pub dir: std::path::PathBuf,
    /// When the state was recorded (Unix ns): an entry changed later (its
    /// ctime) is not the stopped state.
    #[serde(default)]
    pub stopped_ns: i64,
}

impl CleanStop {
    /// Writes `self` to `file` atomically (temp, fsync, rename, fsync dir).
    pub fn save(&self, file: &std::path::Path) -> io::Result<()> {
        let tmp = file.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        fsutil::sync_parent(file)
    }

    /// Reads and **removes** the state in `file`: from here on the cache may
    /// change, so the state must not survive this run (a crash would
    /// otherwise leave a claim the cache no longer meets). `None` if there
    /// is none, it is unreadable, or it cannot be removed.
    pub fn take(file: &std::path::Path) -> Option<CleanStop> {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the clean-stop state");
                return None;
            }
        };
        if let Err(e) = std::fs::remove_file(file).and_then(|_| fsutil::sync_parent(file)) {
            tracing::warn!(file = %file.display(), error = %e, "cannot remove the clean-stop state; not using it");
            return None;
        }
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring a malformed clean-stop state");
                None
            }
        }
    }
}

/// Warm start: if the cache under `root` is exactly the tree at `head`
/// (every entry's kind, size, mode, mtime and link target; nothing more,
/// nothing less), returns that tree and skips the download. Anything else
/// — a file touched while stopped, a leftover, a missing entry — returns
/// `None` with the reason logged, and the caller hydrates cold.
pub async fn adopt(
    journal: &Journal,
    root: Arc<Root>,
    head: CommitId,
    stopped_ns: i64,
    progress: Arc<Progress>,
) -> JResult<Option<Tree>> {
    let (index, _) = journal.load_tree(false, Some(head)).await?;
    let n = index.len() as u64;
    let (index, verdict) = tokio::task::spawn_blocking(move || {
        let v = cache_matches(&root, &index, stopped_ns);
        (index, v)
    })
    .await
    .map_err(jerr)?;
    match verdict {
        Ok(()) => {
            progress.total.store(n, Ordering::Relaxed);
            progress.done.store(n, Ordering::Relaxed);
            progress.warm.store(true, Ordering::Relaxed);
            progress.finished.store(true, Ordering::Relaxed);
            Ok(Some(index))
        }
        Err(why) => {
            tracing::info!(%why, "the cache is not the stopped state: hydrating from the store");
            Ok(None)
        }
    }
}

/// Compares the directory under `root` with `index`, entry by entry; an
/// entry changed after `stopped_ns` (ctime), or a file with a second name
/// (a hard link, which a cold start would split), does not match.
fn cache_matches(root: &Root, index: &Tree, stopped_ns: i64) -> Result<(), String> {
    let mut seen = 0usize;
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let names = root
            .list(&dir)
            .map_err(|e| format!("listing {dir:?}: {e}"))?;
        for name in names {
            let p = crate::fsutil::join(&dir, &name);
            let st = root.lstat(&p).map_err(|e| format!("{p}: {e}"))?;
            let node = index
                .get(&p)
                .ok_or_else(|| format!("{p} is not in the stored tree"))?;
            seen += 1;
            let ctime = st.st_ctime * 1_000_000_000 + st.st_ctime_nsec;
            if ctime > stopped_ns {
                return Err(format!("{p} changed after the clean stop"));
            }
            if !fsutil::is_dir(&st) && st.st_nlink > 1 {
                return Err(format!("{p} has {} names (a hard link)", st.st_nlink));
            }
            let mode_ok = st.st_mode & 0o7777 == node.mode & 0o7777;
            let ok = match &node.content {
                Content::Dir => {
                    stack.push(p.clone());
                    fsutil::is_dir(&st) && mode_ok
                }
                Content::Symlink(t) => {
                    fsutil::is_symlink(&st)
                        && root.readlink(&p).ok().as_deref() == Some(std::ffi::OsStr::new(t))
                }
                Content::Inline { .. } | Content::Chunks(_) => {
                    fsutil::is_file(&st)
                        && mode_ok
                        && st.st_size as u64 == node.size
                        && fsutil::mtime_ns(&st) == node.mtime
                }
            };
            if !ok {
                return Err(format!("{p} differs from the stored tree"));
            }
        }
    }
    if seen != index.len() {
        return Err(format!(
            "{} of the stored tree's {} entries are missing",
            index.len() - seen,
            index.len()
        ));
    }
    Ok(())
}

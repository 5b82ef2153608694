//! Restore: make a path (or the whole project) what it was at an earlier
//! commit (docs/sync-api.md, `POST /restore`).
//!
//! A stopped project is restored by appending one commit as a new writer
//! ([`restore_ops`] is shared with that path, in the controller). A running
//! one cannot be: a new epoch would fence the sidecar that holds it. So the
//! holder restores, and it does so through the workspace as programs see it
//! (the FUSE mount or the watched directory), like any editor would: the
//! kernel's caches stay coherent, cove-pty's change feed tells the IDE which
//! files changed, and the ordinary commit path records the result. Each file
//! is written to a temporary name and renamed over the old one, so no
//! program ever reads a half-restored file.
//!
//! A restore races with the user's own writes like two editors do: a file
//! written during the restore keeps whichever write landed last. It is not
//! one commit: the committer keeps running, so a long restore can reach the
//! store in several commits (the final flush covers all of them). An error
//! halfway (a missing blob, a full disk) leaves the operations before it
//! applied; the error says so.
//!
//! The sidecar may run as root while the user does not: every name is
//! resolved with `RESOLVE_NO_SYMLINKS` (a symlink swapped in by the user is
//! never followed), modes are set through a descriptor, restored entries get
//! the workspace owner (`--owner`), and directory modes are applied last,
//! deepest first, so a read-only directory does not stop its children.

use crate::format::{CommitId, Op};
use crate::fsutil::{self, split, Root};
use crate::journal::{Journal, JournalError};
use crate::tree::{is_within, valid, Tree};
use crate::workspace::{FlushError, SyncEngine};
use nix::fcntl::OFlag;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Marks temporary files, as cove-pty's do, so the change feed hides them.
const TMP_MARKER: &str = ".cove-tmp-";

/// What a running sidecar needs to restore: its project's journal and where
/// the workspace appears.
pub struct Target {
    pub journal: Journal,
    pub visible: PathBuf,
    /// Owner of restored entries (`serve --owner`).
    pub owner: Option<crate::hydrate::Owner>,
    /// One restore at a time: two would interleave their files.
    lock: tokio::sync::Mutex<()>,
}

impl Target {
    pub fn new(journal: Journal, visible: PathBuf, owner: Option<crate::hydrate::Owner>) -> Self {
        Self {
            journal,
            visible,
            owner,
            lock: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("commit {0} is not part of this project's history")]
    UnknownCommit(CommitId),
    #[error("{path} did not exist at {at}")]
    PathNotFound { path: String, at: CommitId },
    #[error("invalid path {0:?}")]
    BadPath(String),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Journal(JournalError),
    #[error("restoring {path}: {source}")]
    Io { path: String, source: io::Error },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub files_changed: usize,
    /// The restored state is in the store (`false`: the final flush did
    /// not finish in time; the files are restored and will be committed).
    pub durable: bool,
    /// The commit holding it; `None` when not durable.
    pub commit: Option<CommitId>,
}

/// The ops that make `cur` equal `old` at and below `prefix` (`""`: all):
/// deletions of what did not exist then (deepest first), then the old
/// nodes that differ (parents first). Modification times are the
/// restore's, so build tools see the change.
pub fn restore_ops(cur: &Tree, old: &Tree, prefix: &str) -> Result<Vec<Op>, String> {
    let now_ns = crate::journal::now_ms() as i64 * 1_000_000;
    let mut ops = Vec::new();
    let mut gone: Vec<&String> = cur
        .iter()
        .map(|(p, _)| p)
        .filter(|p| is_within(p, prefix) && old.get(p).is_none())
        .collect();
    gone.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for p in gone {
        ops.push(Op::Delete { path: p.clone() });
    }
    for (p, n) in old.iter().filter(|(p, _)| is_within(p, prefix)) {
        let same = cur
            .get(p)
            .is_some_and(|c| c.content == n.content && c.mode == n.mode);
        if same {
            continue;
        }
        let mut n = n.clone();
        n.mtime = now_ns;
        // A file replaced by a directory (or the reverse) goes first.
        if cur.get(p).is_some_and(|c| c.is_dir() != n.is_dir()) {
            ops.push(Op::Delete { path: p.clone() });
        }
        ops.push(crate::tree::node_op(p, &n).ok_or_else(|| format!("no body for {p}"))?);
    }
    Ok(ops)
}

fn journal_err(e: JournalError, at: CommitId) -> RestoreError {
    match e {
        JournalError::NoCommit(_) => RestoreError::UnknownCommit(at),
        e => RestoreError::Journal(e),
    }
}

/// Restores `path` (`""`: everything) of the running workspace `ws` to
/// commit `at`; returns once the result is durable, or after `wait` (then
/// not durable yet).
pub async fn restore(
    ws: &Arc<SyncEngine>,
    target: &Target,
    at: CommitId,
    path: &str,
    wait: Option<std::time::Duration>,
) -> Result<Restored, RestoreError> {
    if !path.is_empty() && !valid(path) {
        return Err(RestoreError::BadPath(path.to_owned()));
    }
    let _one = target.lock.lock().await;
    let (old, _) = target
        .journal
        .load_tree(true, Some(at))
        .await
        .map_err(|e| journal_err(e, at))?;
    if !path.is_empty() && old.get(path).is_none() {
        return Err(RestoreError::PathNotFound {
            path: path.to_owned(),
            at,
        });
    }
    // Commit what is on disk now, so the store's head is what the restore
    // compares against.
    ws.flush_all().await?;
    let (cur, head) = target
        .journal
        .load_tree(true, None)
        .await
        .map_err(RestoreError::Journal)?;
    let ops = restore_ops(&cur, &old, path)
        .map_err(|e| RestoreError::Journal(JournalError::Other(format!("reading {at}: {e}"))))?;
    if ops.is_empty() {
        return Ok(Restored {
            files_changed: 0,
            durable: true,
            commit: Some(head),
        });
    }
    let visible = target.visible.clone();
    let shown = target.visible.display().to_string();
    // The mount is served by this process: its I/O never runs on the
    // runtime's workers (a FUSE callback may need one).
    let root = Arc::new(blocking(move || Root::open(&visible), &shown).await?);
    let mut dir_modes = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = apply(&target.journal, &root, op, target.owner, &mut dir_modes).await {
            tracing::warn!(%at, path, applied = i, of = ops.len(), error = %e, "restore stopped halfway");
            return Err(e);
        }
    }
    // Deepest first: a read-only directory gets its mode after its children.
    let r = root.clone();
    blocking(
        move || {
            for (p, mode) in dir_modes.iter().rev() {
                set_mode(&r, p, *mode)?;
            }
            Ok(())
        },
        path,
    )
    .await?;
    let commit = match wait {
        Some(w) => tokio::time::timeout(w, ws.flush_all()).await.ok(),
        None => Some(ws.flush_all().await),
    }
    .transpose()?;
    tracing::info!(%at, path, files = ops.len(), ?commit, "restored");
    Ok(Restored {
        files_changed: ops.len(),
        durable: commit.is_some(),
        commit,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
    path: &str,
) -> Result<T, RestoreError> {
    let io_err = |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err(io::Error::other(e)))?
        .map_err(io_err)
}

/// Sets the mode of directory `rel` through a descriptor opened without
/// following symlinks (the user could swap one in).
fn set_mode(r: &Root, rel: &str, mode: u32) -> io::Result<()> {
    let f = r.open_file(
        rel,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        0,
    )?;
    nix::sys::stat::fchmod(&f, nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777))?;
    Ok(())
}

/// Gives `name` in `dir` to the workspace owner, if there is one.
fn chown_at(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    owner: Option<crate::hydrate::Owner>,
) -> io::Result<()> {
    if let Some(o) = owner {
        nix::unistd::fchownat(
            dir,
            name,
            Some(o.uid.into()),
            Some(o.gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}

/// Makes `rel` and its missing ancestors directories, owned by `owner`.
fn make_dirs(r: &Root, rel: &str, owner: Option<crate::hydrate::Owner>) -> io::Result<()> {
    let mut cur = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        let parent = cur.clone();
        cur = fsutil::join(&parent, comp);
        let existed = matches!(r.lstat_opt(&cur)?, Some(st) if fsutil::is_dir(&st));
        if !existed {
            r.force_dirs(&cur, 0o755)?;
            chown_at(&r.dir(&parent)?, comp, owner)?;
        }
    }
    Ok(())
}

/// One op, applied to the visible workspace. Directory modes are collected
/// in `dir_modes` and set at the end.
async fn apply(
    journal: &Journal,
    root: &Arc<Root>,
    op: &Op,
    owner: Option<crate::hydrate::Owner>,
    dir_modes: &mut Vec<(String, u32)>,
) -> Result<(), RestoreError> {
    let r = root.clone();
    let p = op.path().to_owned();
    match op.clone() {
        Op::Delete { path } => blocking(move || r.remove_all(&path), &p).await,
        Op::Mkdir { path, mode } => {
            dir_modes.push((path.clone(), mode));
            blocking(
                move || {
                    match r.lstat_opt(&path)? {
                        Some(st) if fsutil::is_dir(&st) => {}
                        Some(_) => r.remove_all(&path)?,
                        None => {}
                    }
                    make_dirs(&r, &path, owner)
                },
                &p,
            )
            .await
        }
        Op::Symlink { path, target, .. } => {
            blocking(
                move || {
                    let (parent, name) = split(&path);
                    make_dirs(&r, parent, owner)?;
                    let dir = r.dir(parent)?;
                    let tmp = tmp_name(name);
                    nix::unistd::symlinkat(target.as_str(), &dir, tmp.as_str())?;
                    let done = chown_at(&dir, &tmp, owner)
                        .and_then(|_| rename_over(&r, parent, &tmp, name));
                    if done.is_err() {
                        let _ = nix::unistd::unlinkat(
                            &dir,
                            tmp.as_str(),
                            nix::unistd::UnlinkatFlags::NoRemoveDir,
                        );
                    }
                    done
                },
                &p,
            )
            .await
        }
        Op::Write {
            path,
            mode,
            mtime,
            inline,
            chunks,
            ..
        } => {
            let (parent, name) = split(&path);
            let (parent, name) = (parent.to_owned(), name.to_owned());
            let tmp = tmp_name(&name);
            let rel = fsutil::join(&parent, &tmp);
            let (r2, rel2, parent2) = (r.clone(), rel.clone(), parent.clone());
            let mut file = blocking(
                move || {
                    make_dirs(&r2, &parent2, owner)?;
                    r2.open_file(
                        &rel2,
                        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                        0o600,
                    )
                },
                &p,
            )
            .await?;
            let written: Result<(), RestoreError> = async {
                if let Some(body) = inline {
                    file = blocking(move || file.write_all(&body).map(|_| file), &p).await?;
                } else {
                    for c in chunks {
                        let body = journal.chunk(&c).await.map_err(RestoreError::Journal)?;
                        file = blocking(move || file.write_all(&body).map(|_| file), &p).await?;
                    }
                }
                let r3 = r.clone();
                blocking(
                    move || {
                        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                            mode & 0o7777,
                        ))?;
                        crate::hydrate::set_mtime(&file, mtime)?;
                        if let Some(o) = owner {
                            nix::unistd::fchown(&file, Some(o.uid.into()), Some(o.gid.into()))?;
                        }
                        drop(file);
                        rename_over(&r3, &parent, &tmp, &name)
                    },
                    &p,
                )
                .await
            }
            .await;
            if written.is_err() {
                let _ = blocking(move || r.remove_all(&rel), &p).await;
            }
            written
        }
        // restore_ops makes neither.
        Op::SetAttr { .. } | Op::Rename { .. } => Ok(()),
    }
}

fn tmp_name(name: &str) -> String {
    let tmp = format!(".{name}{TMP_MARKER}{:016x}", rand::random::<u64>());
    if tmp.len() > 255 {
        format!(".cove{TMP_MARKER}{:016x}", rand::random::<u64>())
    } else {
        tmp
    }
}

/// Renames `tmp` over `name` in `parent`; a directory in the way (the
/// user made one since) is removed first.
fn rename_over(root: &Root, parent: &str, tmp: &str, name: &str) -> io::Result<()> {
    let dir = root.dir(parent)?;
    match nix::fcntl::renameat(&dir, tmp, &dir, name) {
        Err(nix::errno::Errno::EISDIR | nix::errno::Errno::ENOTEMPTY) => {
            root.remove_all(&fsutil::join(parent, name))?;
            Ok(nix::fcntl::renameat(&dir, tmp, &dir, name)?)
        }
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;
    use serde_bytes::ByteBuf;

    fn write(path: &str, body: &str) -> Op {
        Op::Write {
            path: path.into(),
            mode: 0o644,
            mtime: 1,
            size: body.len() as u64,
            inline: Some(ByteBuf::from(body.as_bytes().to_vec())),
            chunks: vec![],
        }
    }

    fn tree(ops: &[Op]) -> Tree {
        let mut t = Tree::new(true);
        for op in ops {
            t.apply(op).unwrap();
        }
        t
    }

    #[test]
    fn restoring_a_directory_makes_it_exactly_what_it_was() {
        let mkdir = |p: &str| Op::Mkdir {
            path: p.into(),
            mode: 0o755,
        };
        let old = tree(&[
            mkdir("src"),
            write("src/a", "old a"),
            write("src/b", "b"),
            write("top", "t"),
        ]);
        let cur = tree(&[
            mkdir("src"),
            write("src/a", "new a"),
            write("src/b", "b"),
            mkdir("src/new"),
            write("src/new/x", "x"),
            write("top", "changed"),
        ]);
        let ops = restore_ops(&cur, &old, "src").unwrap();
        let mut after = cur.clone();
        for op in &ops {
            after.apply(op).unwrap();
        }
        let paths = |t: &Tree, p: &str| -> Vec<(String, Content)> {
            t.iter()
                .filter(|(k, _)| is_within(k, p))
                .map(|(k, n)| (k.clone(), n.content.clone()))
                .collect()
        };
        assert_eq!(paths(&after, "src"), paths(&old, "src"));
        // Outside the path nothing moves; unchanged files are not rewritten.
        assert_eq!(after.get("top"), cur.get("top"));
        assert!(!ops.iter().any(|o| o.path() == "src/b"), "{ops:?}");
        assert!(restore_ops(&after, &old, "src").unwrap().is_empty());
    }
}

//! The reconciliation scan: compare the whole cache with the committed
//! index and mark every difference dirty. It catches what the fronts'
//! events missed (inotify overflow, changes made before the watcher
//! started, writes through FUSE passthrough to a hard link's other names).
//! Run once at start, on a watcher overflow, before a watch-mode flush of
//! everything, and every `scan_interval`.
//!
//! A path is the same as its index entry when kind and mode match, and for
//! a file size and mtime, for a symlink the target: the committer reads
//! what differs and decides what actually changed.

use super::SyncEngine;
use crate::fsutil::{is_dir, is_file, is_symlink, join, mtime_ns, Root};
use crate::tree::{Content, Tree};
use std::collections::HashSet;
use std::sync::Arc;

impl SyncEngine {
    /// Compare the whole cache with the index and mark every difference
    /// dirty. Returns how many paths it marked.
    pub async fn scan(self: &Arc<Self>) -> usize {
        let me = self.clone();
        let found = tokio::task::spawn_blocking(move || {
            let index = me.index_snapshot();
            differences(&me.root, &index)
        })
        .await;
        let found = found.unwrap_or_default();
        let n = found.len();
        if n > 0 {
            tracing::info!(paths = n, "reconciliation scan found changes");
            for p in &found {
                self.mark_dirty(p);
            }
        }
        n
    }
}

/// Every path where the cache under `root` and `index` differ: in the
/// cache but not the index or not the same, or in the index but gone. Only
/// what the journal can store counts (files, directories, symlinks), unless
/// the index has the path (then it is a change of kind).
pub fn differences(root: &Root, index: &Tree) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let Ok(names) = root.list(&dir) else {
            continue;
        };
        for name in names {
            let path = join(&dir, &name);
            let Ok(Some(st)) = root.lstat_opt(&path) else {
                continue;
            };
            seen.insert(path.clone());
            let mode = st.st_mode & 0o7777;
            let same = match index.get(&path) {
                None => false,
                Some(n) => match &n.content {
                    Content::Dir => is_dir(&st) && n.mode == mode,
                    Content::Symlink(t) => {
                        is_symlink(&st)
                            && root
                                .readlink(&path)
                                .ok()
                                .and_then(|l| l.into_string().ok())
                                .as_deref()
                                == Some(t.as_str())
                    }
                    _ => {
                        is_file(&st)
                            && n.mode == mode
                            && n.size == st.st_size as u64
                            && n.mtime == mtime_ns(&st)
                    }
                },
            };
            if is_dir(&st) {
                stack.push(path.clone());
            }
            let storable = is_file(&st) || is_dir(&st) || is_symlink(&st);
            if !same && (storable || index.get(&path).is_some()) {
                out.push(path);
            }
        }
    }
    for (p, _) in index.iter() {
        if !seen.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Op;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// The index entry that matches the cache's `path` as it is now.
    fn as_in_cache(root: &Root, path: &str) -> Op {
        let st = root.lstat(path).unwrap();
        let mode = st.st_mode & 0o7777;
        if is_dir(&st) {
            Op::Mkdir {
                path: path.into(),
                mode,
            }
        } else if is_symlink(&st) {
            let target = root.readlink(path).unwrap().into_string().unwrap();
            Op::Symlink {
                path: path.into(),
                target,
                mtime: mtime_ns(&st),
            }
        } else {
            Op::Write {
                path: path.into(),
                mode,
                mtime: mtime_ns(&st),
                size: st.st_size as u64,
                inline: Some(serde_bytes::ByteBuf::from(vec![0; st.st_size as usize])),
                chunks: Vec::new(),
            }
        }
    }

    #[test]
    fn the_scan_finds_every_difference_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let p = |r: &str| dir.path().join(r);
        let root = Root::open(dir.path()).unwrap();
        fs::create_dir_all(p("d/sub")).unwrap();
        fs::create_dir(p("m")).unwrap();
        for f in ["same.txt", "grown.txt", "chmod.txt", "d/sub/deep.txt"] {
            fs::write(p(f), "body").unwrap();
        }
        symlink("same.txt", p("link")).unwrap();
        symlink("same.txt", p("relinked")).unwrap();
        let mut index = Tree::new(false);
        for path in [
            "d",
            "d/sub",
            "m",
            "same.txt",
            "grown.txt",
            "chmod.txt",
            "d/sub/deep.txt",
            "link",
            "relinked",
        ] {
            index.apply(&as_in_cache(&root, path)).unwrap();
        }
        index
            .apply(&Op::Write {
                path: "gone.txt".into(),
                mode: 0o644,
                mtime: 0,
                size: 1,
                inline: Some(serde_bytes::ByteBuf::from(b"x".to_vec())),
                chunks: Vec::new(),
            })
            .unwrap();
        // Only the entry the cache no longer has.
        assert_eq!(differences(&root, &index), ["gone.txt"]);

        // Now change the cache behind the index's back.
        fs::write(p("grown.txt"), "a longer body").unwrap();
        fs::set_permissions(p("chmod.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(p("m"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(p("new.txt"), "new").unwrap();
        fs::write(p("d/sub/new-deep.txt"), "new").unwrap();
        fs::remove_file(p("relinked")).unwrap();
        symlink("grown.txt", p("relinked")).unwrap();
        nix::unistd::mkfifo(&p("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();

        let mut found = differences(&root, &index);
        found.sort();
        assert_eq!(
            found,
            [
                "chmod.txt",
                "d/sub/new-deep.txt",
                "gone.txt",
                "grown.txt",
                "m",
                "new.txt",
                "relinked"
            ]
        );
    }
}

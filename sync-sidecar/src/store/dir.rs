//! A directory as an object store: key `a/b/c` is the file `<root>/a/b/c`.
//!
//! Writes go to a temporary file, are fsync'd and renamed into place (and the
//! parent directory fsync'd), so an object is either whole or absent after a
//! crash: the same atomicity S3 gives a PUT. `put_if_absent` uses link(2),
//! which fails atomically when the name exists, so this store really does
//! conditional creation.
//!
//! The store is private to the user that runs Cove: directories are created
//! 0700 and objects 0600, whatever the process's umask (cove-sync in FUSE
//! mode runs with umask 0, so the modes the kernel asks for reach the
//! cache exactly). Anyone who can write a segment or a checkpoint decides
//! what a workspace's files contain, so nobody else may.

use super::{check_key, ObjectStore, StoreError, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const TMP_DIR: &str = ".tmp";
/// Modes of what the store creates (see the module's doc).
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// `mkdir -p` with [`DIR_MODE`] for every directory it creates.
fn create_dirs(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

#[derive(Debug, Clone)]
pub struct DirStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    counter: AtomicU64,
    /// Makes staging names unique across processes (and PID namespaces).
    nonce: u64,
}

impl DirStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> StoreResult<Self> {
        let root = root.as_ref().to_path_buf();
        let tmp = root.join(TMP_DIR);
        create_dirs(&tmp).map_err(|source| StoreError::Io {
            key: root.display().to_string(),
            source,
        })?;
        // Leftovers of a crash mid-put are garbage: nothing refers to them.
        // Other processes may share the store (local mode runs a sidecar
        // per workspace), so only files old enough to be abandoned go.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if old {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                counter: AtomicU64::new(0),
                nonce: rand::random(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        check_key(key)?;
        if key == TMP_DIR || key.starts_with(".tmp/") {
            return Err(StoreError::InvalidKey {
                key: key.to_owned(),
                reason: "reserved prefix .tmp",
            });
        }
        Ok(self.inner.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&Inner) -> io::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        let k = key.to_owned();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
            .map_err(|source| StoreError::Io { key: k, source })
    }
}

impl Inner {
    /// Write `body` to a fresh fsync'd temporary file and return its path.
    fn stage(&self, body: &[u8]) -> io::Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp =
            self.root
                .join(TMP_DIR)
                .join(format!("{}-{:x}-{n}", std::process::id(), self.nonce));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        Ok(tmp)
    }

    fn ensure_parent(path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            create_dirs(parent)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for DirStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let path = self.path(key)?;
        self.blocking(key, move |_| match fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A "directory" key (a prefix) is not an object.
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        let path = self.path(key)?;
        self.blocking(key, move |inner| {
            Inner::ensure_parent(&path)?;
            let tmp = inner.stage(&body)?;
            fs::rename(&tmp, &path)?;
            crate::fsutil::sync_parent(&path)
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<bool> {
        let path = self.path(key)?;
        self.blocking(key, move |inner| {
            Inner::ensure_parent(&path)?;
            let tmp = inner.stage(&body)?;
            let res = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match res {
                Ok(()) => crate::fsutil::sync_parent(&path).map(|_| true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn exists(&self, key: &str) -> StoreResult<bool> {
        let path = self.path(key)?;
        self.blocking(key, move |_| match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<Vec<String>> {
        // Walk only the deepest directory the prefix fully names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !dir_part.is_empty() {
            check_key(dir_part)?;
        }
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        let dir_part = dir_part.to_owned();
        self.blocking(&prefix.clone(), move |inner| {
            let base = inner.root.join(&dir_part);
            let mut out = Vec::new();
            if !base.is_dir() {
                return Ok(out);
            }
            for entry in walkdir::WalkDir::new(&base).follow_links(false) {
                let entry = entry.map_err(io::Error::other)?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let rel = match entry.path().strip_prefix(&inner.root) {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let Some(key) = rel.to_str() else { continue };
                if key.starts_with(".tmp/") || !key.starts_with(prefix.as_str()) {
                    continue;
                }
                if let Some(sa) = &start_after {
                    if key <= sa.as_str() {
                        continue;
                    }
                }
                out.push(key.to_owned());
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        self.blocking(key, move |_| match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.inner.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Under cove-sync's FUSE umask (0) nothing the store writes may be
    /// writable, or even readable, by other users: a review rewrote a
    /// project's checkpoint as another user when segments were 0666 and
    /// directories 0777.
    #[tokio::test]
    async fn objects_and_directories_are_private_under_umask_0() {
        let d = tempfile::tempdir().unwrap();
        // The umask is the process's: the mode check below stands whatever
        // other tests in this binary do meanwhile.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let s = DirStore::open(d.path().join("store")).unwrap();
        s.put("projects/p/log/1/1", Bytes::from_static(b"segment"))
            .await
            .unwrap();
        assert!(s
            .put_if_absent("blobs/ab/cd", Bytes::from_static(b"blob"))
            .await
            .unwrap());
        nix::sys::stat::umask(old);
        for e in walkdir::WalkDir::new(d.path().join("store")).min_depth(1) {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            let want = if e.file_type().is_dir() {
                DIR_MODE
            } else {
                FILE_MODE
            };
            assert_eq!(mode, want, "{}: {mode:o}", e.path().display());
        }
    }
}

//! Reading the cache directory into journal ops: what a commit records for
//! each dirty path, and checkpoints built from the cache.
//!
//! A file's content is recorded only if it did not change while it was read
//! (size, mtime and ctime are compared before and after), so a commit never
//! captures a half-written file; a file caught mid-write stays dirty and is
//! read again on the next commit.

use crate::format::{ChunkRef, Op, CHUNK_SIZE, INLINE_MAX};
use crate::fsutil::{self, Root};
use crate::hydrate::zero_hash;
use crate::journal::{JResult, JournalError};
use crate::store::{DynStore, StoreError};
use crate::tree::{sha256, Content, Node, Tree};
use bytes::Bytes;
use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;
use parking_lot::Mutex;
use serde_bytes::ByteBuf;
use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub fn hash_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// Why a path could not be recorded this time.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0} changed while it was being read")]
    Changed(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Uploads chunk blobs from blocking code, skipping ones known to exist.
#[derive(Clone)]
pub struct BlobSink {
    store: DynStore,
    rt: tokio::runtime::Handle,
    known: Arc<Mutex<HashSet<String>>>,
    pub uploaded_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl BlobSink {
    pub fn new(store: DynStore, rt: tokio::runtime::Handle) -> Self {
        Self {
            store,
            rt,
            known: Arc::default(),
            uploaded_bytes: Arc::default(),
        }
    }

    /// Remember blobs the index already refers to.
    pub fn learn(&self, tree: &Tree) {
        let mut k = self.known.lock();
        for (_, n) in tree.iter() {
            if let Content::Chunks(c) = &n.content {
                k.extend(c.iter().map(|c| c.hash.clone()));
            }
        }
    }

    fn upload(&self, hash: &str, data: Bytes) -> Result<(), StoreError> {
        if self.known.lock().contains(hash) {
            return Ok(());
        }
        let key = crate::format::keys::blob(hash);
        let store = self.store.clone();
        let len = data.len() as u64;
        let uploaded = self.rt.block_on(async move {
            if store.exists(&key).await? {
                return Ok::<_, StoreError>(false);
            }
            store.put(&key, data).await?;
            Ok(true)
        })?;
        if uploaded {
            self.uploaded_bytes
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
        self.known.lock().insert(hash.to_owned());
        Ok(())
    }
}

fn io_at(path: &str) -> impl FnOnce(io::Error) -> ReadError + '_ {
    move |source| ReadError::Io {
        path: path.to_owned(),
        source,
    }
}

fn same_version(a: &FileStat, b: &FileStat) -> bool {
    a.st_size == b.st_size
        && a.st_mtime == b.st_mtime
        && a.st_mtime_nsec == b.st_mtime_nsec
        && a.st_ctime == b.st_ctime
        && a.st_ctime_nsec == b.st_ctime_nsec
        && a.st_ino == b.st_ino
}

/// What to record for `path` given the committed node `prev`: `None` when
/// nothing changed. Reads the cache; may upload chunks of large files.
pub fn read_change(
    root: &Root,
    path: &str,
    prev: Option<&Node>,
    blobs: &BlobSink,
) -> Result<Option<Op>, ReadError> {
    let Some(st) = root.lstat_opt(path).map_err(io_at(path))? else {
        return Ok(prev.map(|_| Op::Delete {
            path: path.to_owned(),
        }));
    };
    let mode = st.st_mode & 0o7777;
    let mtime = fsutil::mtime_ns(&st);
    if fsutil::is_dir(&st) {
        return Ok(match prev {
            Some(n) if n.is_dir() && n.mode == mode => None,
            _ => Some(Op::Mkdir {
                path: path.to_owned(),
                mode,
            }),
        });
    }
    if fsutil::is_symlink(&st) {
        let target = root.readlink(path).map_err(io_at(path))?;
        let target = target.into_string().map_err(|_| {
            io_at(path)(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink target is not UTF-8",
            ))
        })?;
        return Ok(match prev {
            Some(Node {
                content: Content::Symlink(t),
                ..
            }) if *t == target => None,
            _ => Some(Op::Symlink {
                path: path.to_owned(),
                target,
                mtime,
            }),
        });
    }
    if !fsutil::is_file(&st) {
        // FIFOs, sockets, devices live only in the cache: they have no
        // content to keep. A stored node at this path is gone.
        return Ok(prev.map(|_| Op::Delete {
            path: path.to_owned(),
        }));
    }
    let f = root
        .open_file(path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0)
        .map_err(io_at(path))?;
    let before = nix::sys::stat::fstat(&f).map_err(|e| io_at(path)(e.into()))?;
    let size = before.st_size as u64;
    let setattr = || Op::SetAttr {
        path: path.to_owned(),
        mode,
        mtime,
    };
    let op = if size <= INLINE_MAX {
        let mut body = Vec::with_capacity(size as usize);
        (&f).take(INLINE_MAX + 1)
            .read_to_end(&mut body)
            .map_err(io_at(path))?;
        let after = nix::sys::stat::fstat(&f).map_err(|e| io_at(path)(e.into()))?;
        if !same_version(&before, &after) || body.len() as u64 != size {
            return Err(ReadError::Changed(path.to_owned()));
        }
        match prev {
            Some(
                n @ Node {
                    content: Content::Inline { hash, .. },
                    ..
                },
            ) if *hash == sha256(&body) => {
                if n.mode == mode && n.mtime == mtime {
                    None
                } else {
                    Some(setattr())
                }
            }
            _ => Some(Op::Write {
                path: path.to_owned(),
                mode,
                mtime,
                size,
                inline: Some(ByteBuf::from(body)),
                chunks: vec![],
            }),
        }
    } else {
        if let Some(
            n @ Node {
                content: Content::Chunks(_),
                ..
            },
        ) = prev
        {
            // Large files: size and mtime equal means unchanged (as make,
            // rsync and git assume); only metadata may differ.
            if n.size == size && n.mtime == mtime {
                return Ok((n.mode != mode).then(setattr));
            }
        }
        let chunks = read_chunks(&f, path, size, blobs)?;
        let after = nix::sys::stat::fstat(&f).map_err(|e| io_at(path)(e.into()))?;
        if !same_version(&before, &after) {
            return Err(ReadError::Changed(path.to_owned()));
        }
        Some(Op::Write {
            path: path.to_owned(),
            mode,
            mtime,
            size,
            inline: None,
            chunks,
        })
    };
    Ok(op)
}

/// Hash and upload a large file chunk by chunk. Holes (found with
/// SEEK_DATA) are not read: they are the zero chunk.
fn read_chunks(
    f: &std::fs::File,
    path: &str,
    size: u64,
    blobs: &BlobSink,
) -> Result<Vec<ChunkRef>, ReadError> {
    let full_zero = zero_hash(CHUNK_SIZE);
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(CHUNK_SIZE);
        let data_at = unsafe { libc::lseek(f.as_raw_fd(), off as i64, libc::SEEK_DATA) };
        let hole = (data_at < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO))
            || (data_at >= 0 && data_at as u64 >= off + len);
        let hash = if hole {
            let hash = if len == CHUNK_SIZE {
                full_zero.clone()
            } else {
                zero_hash(len)
            };
            blobs.upload(&hash, Bytes::from(vec![0u8; len as usize]))?;
            hash
        } else {
            let b = &mut buf[..len as usize];
            f.read_exact_at(b, off).map_err(io_at(path))?;
            let hash = hash_hex(b);
            blobs.upload(&hash, Bytes::copy_from_slice(b))?;
            hash
        };
        chunks.push(ChunkRef { hash, len });
        off += len;
    }
    Ok(chunks)
}

/// Build a checkpoint of `index` from the cache. Fails (and names the path)
/// if a small file's content no longer matches the index: the caller then
/// tries again after the next commit.
pub fn checkpoint_from_cache(root: &Root, index: &Tree) -> JResult<Bytes> {
    use crate::format::{CheckpointHeader, RecordWriter, CHECKPOINT_MAGIC, FORMAT_VERSION};
    let other = |e: io::Error| JournalError::Other(format!("checkpoint: {e}"));
    let mut w = RecordWriter::new(Vec::new(), CHECKPOINT_MAGIC).map_err(other)?;
    w.record(&CheckpointHeader {
        v: FORMAT_VERSION,
        time_ms: crate::journal::now_ms(),
        entries: index.len() as u64,
    })
    .map_err(other)?;
    for (path, n) in index.iter() {
        let op = match &n.content {
            Content::Inline { hash, .. } => {
                let body = root
                    .read(path)
                    .map_err(|e| JournalError::Other(format!("checkpoint: {path}: {e}")))?;
                if sha256(&body) != *hash {
                    return Err(JournalError::Other(format!(
                        "checkpoint: {path} changed since its commit"
                    )));
                }
                Op::Write {
                    path: path.clone(),
                    mode: n.mode,
                    mtime: n.mtime,
                    size: n.size,
                    inline: Some(ByteBuf::from(body)),
                    chunks: vec![],
                }
            }
            _ => crate::tree::node_op(path, n).expect("non-inline nodes need no body"),
        };
        w.record(&op).map_err(other)?;
    }
    Ok(Bytes::from(w.finish().map_err(other)?))
}

/// Build a tree (with bodies) from a plain directory: template import and
/// tests. Uploads large files' chunks through `blobs`.
pub fn tree_from_dir(root: &Root, blobs: &BlobSink) -> Result<Tree, ReadError> {
    let mut tree = Tree::new(true);
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let mut names = root.list(&dir).map_err(io_at(&dir))?;
        names.sort();
        for name in names {
            let path = fsutil::join(&dir, &name);
            if let Some(op) = read_change(root, &path, None, blobs)? {
                if matches!(op, Op::Mkdir { .. }) {
                    stack.push(path.clone());
                }
                tree.apply(&op)
                    .map_err(|e| io_at(&path)(io::Error::other(e)))?;
            }
        }
    }
    Ok(tree)
}

/// Reads a whole directory into a tree, uploading large files' chunks to
/// `store` on the way (the import of `create --from-dir`, templates, the
/// controller). The walk runs on the blocking pool.
pub async fn tree_of_dir(store: &DynStore, dir: &std::path::Path) -> Result<Tree, ReadError> {
    let root = crate::fsutil::Root::open(dir).map_err(|source| ReadError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let blobs = BlobSink::new(store.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || tree_from_dir(&root, &blobs))
        .await
        .map_err(|e| ReadError::Io {
            path: "(walk)".into(),
            source: io::Error::other(e),
        })?
}

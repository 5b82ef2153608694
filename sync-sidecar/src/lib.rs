//! cove-sync: the workspace filesystem.
//!
//! A workspace's files live in a local cache directory; every change is
//! committed to an object store as a journal, so whatever was saved survives
//! the pod. Where a save goes, layer by layer:
//!
//! - [`fuse`] / [`watch`]: the two fronts. FUSE sees every operation (its
//!   inode table, file handles with passthrough, and counted error replies
//!   are submodules); watch mode (no /dev/fuse) learns from inotify and a
//!   reconciliation scan.
//! - [`workspace`]: the sync engine ([`workspace::SyncEngine`]): dirty
//!   tracking, group commit (`workspace/commit.rs`, step by step), the
//!   durability contract (flush and fsync wait for the store;
//!   `workspace/waiters.rs`), the reconciliation scan
//!   (`workspace/scan.rs`), checkpoints, store outages.
//! - [`snapshot`]: reads the cache into journal ops without torn reads.
//! - [`journal`]: the chain of writer epochs, fencing, history, fork.
//! - [`format`]: keys and the byte format (see docs/storage.md).
//! - [`tree`]: the tree a journal describes (the sidecar's index).
//! - [`hydrate`]: history → files in the cache, with progress.
//! - [`store`]: the object store trait (directory, S3, fault injection).
//! - [`restore`]: a path or the project back to an earlier commit.
//! - [`api`]: the local control API (flush, status, change feed, metrics).
//! - [`fsutil`]: symlink-safe path operations confined to the cache.

pub mod api;
pub mod format;
pub mod fsutil;
pub mod fuse;
pub mod hydrate;
pub mod journal;
pub mod metrics;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod tree;
pub mod watch;
pub mod workspace;

/// Whether this process can serve a FUSE mount: `/dev/fuse` opens
/// read-write and we are root (cove-sync mounts without fusermount3).
/// The one check for `--mode auto` here, in the controller and in tests.
pub fn fuse_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
        && nix::unistd::geteuid().is_root()
}

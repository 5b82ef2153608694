//! Error replies. Every FUSE error the mount sends goes through [`reply`],
//! which logs it and counts it by operation and errno in
//! `cove_sync_fuse_errors_total`, so a mount that fails requests shows it.
//!
//! Errnos that tools meet in normal work (a missing name, a name that
//! exists, a directory that is not empty, a permission the caller lacks)
//! are logged at debug; anything else (EIO, ESTALE, EBADF, ENOSPC, ...)
//! means the cache, the inode table or the store is in trouble, and is
//! logged at warn.

use crate::metrics::{FuseErrorLabels, Metrics};
use fuser::{
    Errno, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};

/// A reply that can carry an error (each `fuser` reply type has its own
/// `error` method; this makes them one).
pub trait ErrorReply {
    fn send_error(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {
        $(impl ErrorReply for $t {
            fn send_error(self, e: Errno) {
                self.error(e)
            }
        })*
    };
}

error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// Whether `code` is an answer a caller expects to get sometimes.
fn expected(code: i32) -> bool {
    matches!(
        code,
        libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::ENAMETOOLONG
            | libc::EACCES
            | libc::EPERM
            | libc::EINVAL
            | libc::ELOOP
            | libc::EXDEV
            | libc::EMLINK
            | libc::EFBIG
            | libc::ETXTBSY
            | libc::ENOTSUP
            | libc::ENODATA
            | libc::ENOTTY
    )
}

/// The errno's symbolic name, or its number if it has none.
fn name(code: i32) -> String {
    match nix::errno::Errno::from_raw(code) {
        nix::errno::Errno::UnknownErrno => code.to_string(),
        e => format!("{e:?}"),
    }
}

/// Reply `e` to request `op` on inode `ino`: logged and counted.
pub fn reply(metrics: &Metrics, reply: impl ErrorReply, op: &'static str, ino: u64, e: Errno) {
    let code = e.code();
    let errno = name(code);
    if expected(code) {
        tracing::debug!(op, ino, errno = %errno, "FUSE request failed");
    } else {
        tracing::warn!(op, ino, errno = %errno, "FUSE request failed");
    }
    metrics
        .fuse_errors
        .get_or_create(&FuseErrorLabels { op, errno })
        .inc();
    reply.send_error(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Records the errno it was sent.
    struct Sent<'a>(&'a Cell<Option<i32>>);

    impl ErrorReply for Sent<'_> {
        fn send_error(self, e: Errno) {
            self.0.set(Some(e.code()));
        }
    }

    fn count(m: &Metrics, op: &'static str, errno: &str) -> u64 {
        let errno = errno.to_owned();
        m.fuse_errors
            .get_or_create(&FuseErrorLabels { op, errno })
            .get()
    }

    #[test]
    fn every_error_reply_is_sent_and_counted_by_operation_and_errno() {
        let m = Metrics::new();
        let sent = Cell::new(None);
        reply(&m, Sent(&sent), "lookup", 5, Errno::ENOENT);
        assert_eq!(sent.get(), Some(libc::ENOENT));
        reply(&m, Sent(&sent), "lookup", 6, Errno::ENOENT);
        reply(&m, Sent(&sent), "rmdir", 5, Errno::ENOTEMPTY);
        reply(&m, Sent(&sent), "fsync", 7, Errno::EIO);
        assert_eq!(sent.get(), Some(libc::EIO));
        assert_eq!(count(&m, "lookup", "ENOENT"), 2);
        assert_eq!(count(&m, "rmdir", "ENOTEMPTY"), 1);
        assert_eq!(count(&m, "fsync", "EIO"), 1);
        assert_eq!(count(&m, "lookup", "EIO"), 0);
        let text = m.render();
        assert!(
            text.contains(r#"cove_sync_fuse_errors_total{op="lookup",errno="ENOENT"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"cove_sync_fuse_errors_total{op="fsync",errno="EIO"} 1"#));
    }

    #[test]
    fn errnos_are_named_and_sorted_into_expected_and_not() {
        assert_eq!(name(libc::ENOENT), "ENOENT");
        assert_eq!(name(libc::ENOTEMPTY), "ENOTEMPTY");
        assert_eq!(name(9999), "9999");
        for e in [libc::ENOENT, libc::EEXIST, libc::ENOTEMPTY, libc::EACCES] {
            assert!(expected(e), "{}", name(e));
        }
        for e in [libc::EIO, libc::ESTALE, libc::EBADF, libc::ENOSPC] {
            assert!(!expected(e), "{}", name(e));
        }
    }
}

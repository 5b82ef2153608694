//! From FUSE's (parent inode, name) to paths in the cache, and the replies
//! that teach the kernel names: entries for lookups and new nodes, and
//! the removal of names. Each name the kernel learns is remembered in the
//! inode table here, and each one removed is dropped from it.

use super::attr::{dir_kind, errno, nerr};
use super::{CoveFs, R};
use crate::fsutil::{self, join, split};
use crate::workspace::ChangeKind;
use fuser::{Errno, FileAttr, FileType, Generation, INodeNo, ReplyEmpty, ReplyEntry, Request};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::FileStat;
use std::ffi::OsStr;
use std::time::Duration;

fn name_str(name: &OsStr) -> R<&str> {
    // The journal stores UTF-8 paths; refuse other names up front.
    name.to_str().ok_or(Errno::EINVAL)
}

impl CoveFs {
    pub(super) fn path_of(&self, ino: INodeNo) -> R<String> {
        self.inodes.path_of(ino.0).ok_or(Errno::ESTALE)
    }

    pub(super) fn paths_of(&self, ino: INodeNo) -> Vec<String> {
        self.inodes.paths_of(ino.0)
    }

    pub(super) fn child(&self, parent: INodeNo, name: &OsStr) -> R<String> {
        let p = self.path_of(parent)?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let n = name_str(name)?;
        let path = join(&p, n);
        if path.len() > 4095 {
            return Err(Errno::ENAMETOOLONG);
        }
        if !crate::tree::valid(&path) {
            return Err(Errno::EINVAL);
        }
        Ok(path)
    }

    /// Record that the kernel now knows `path` as the inode of `st`.
    pub(super) fn remember(&self, st: &FileStat, path: &str) -> FileAttr {
        let attr = self.attr(st);
        self.inodes.remember(attr.ino.0, path);
        attr
    }

    pub(super) fn entry(&self, path: &str, reply: ReplyEntry, op: &'static str, ino: INodeNo) {
        self.entry_from(path, self.root.lstat(path), reply, op, ino)
    }

    /// Reply with the entry for `path` given its `lstat` result.
    pub(super) fn entry_from(
        &self,
        path: &str,
        st: std::io::Result<FileStat>,
        reply: ReplyEntry,
        op: &'static str,
        ino: INodeNo,
    ) {
        match st {
            Ok(st) => {
                let attr = self.remember(&st, path);
                reply.entry_with_ttls(
                    &self.cfg.attr_ttl,
                    &self.cfg.entry_ttl,
                    &attr,
                    Generation(0),
                );
            }
            Err(e) => self.fail(reply, op, ino, errno(e)),
        }
    }

    /// Like `entry`, but "no such name" is cached by the kernel too (inode
    /// 0 with a TTL): every create is preceded by a lookup of the new name,
    /// and only this sidecar can make the name appear (the kernel replaces
    /// the negative entry itself when it does).
    pub(super) fn lookup_entry(&self, path: &str, reply: ReplyEntry, parent: INodeNo) {
        match self.root.lstat(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match nix::sys::stat::fstat(self.root.fd()) {
                    Ok(st) => {
                        let mut attr = self.attr(&st);
                        attr.ino = INodeNo(0);
                        reply.entry_with_ttls(
                            &Duration::ZERO,
                            &self.cfg.entry_ttl,
                            &attr,
                            Generation(0),
                        );
                    }
                    Err(_) => self.fail(reply, "lookup", parent, Errno::ENOENT),
                }
            }
            other => self.entry_from(path, other, reply, "lookup", parent),
        }
    }

    /// Reply to mknod/mkdir/symlink in `parent`: the new node is dirty and
    /// announced.
    pub(super) fn created(
        &self,
        res: R<String>,
        reply: ReplyEntry,
        op: &'static str,
        parent: INodeNo,
    ) {
        match res {
            Ok(path) => {
                self.ws.mark_dirty(&path);
                self.ws.emit(&path, ChangeKind::Create, None);
                self.entry(&path, reply, op, parent)
            }
            Err(e) => self.fail(reply, op, parent, e),
        }
    }

    /// Give a new node to the caller (and the setgid directory's group).
    pub(super) fn chown_new(&self, req: &Request, path: &str) -> R<()> {
        let (p, n) = split(path);
        let pst = self.root.lstat(p).map_err(errno)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            req.gid()
        };
        let dir = self.root.dir(p).map_err(errno)?;
        nix::unistd::fchownat(
            &dir,
            n,
            Some(req.uid().into()),
            Some(gid.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nerr)
    }

    pub(super) fn parent_dir(&self, path: &str) -> R<(std::os::fd::OwnedFd, String)> {
        let (p, n) = split(path);
        Ok((self.root.dir(p).map_err(errno)?, n.to_owned()))
    }

    /// Mark `path` and everything below it dirty.
    pub(super) fn mark_tree(&self, path: &str) {
        self.ws.mark_dirty(path);
        if let Ok(st) = self.root.lstat(path) {
            if fsutil::is_dir(&st) {
                for n in self.root.list(path).unwrap_or_default() {
                    self.mark_tree(&join(path, &n));
                }
            }
        }
    }

    /// unlink or rmdir (`dir`) `name` in `parent`.
    pub(super) fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let res = (|| -> R<(String, FileStat)> {
            let path = self.child(parent, name)?;
            let (d, n) = self.parent_dir(&path)?;
            let st = self.root.lstat(&path).map_err(errno)?;
            let flag = if dir {
                nix::unistd::UnlinkatFlags::RemoveDir
            } else {
                nix::unistd::UnlinkatFlags::NoRemoveDir
            };
            nix::unistd::unlinkat(&d, n.as_str(), flag).map_err(nerr)?;
            Ok((path, st))
        })();
        match res {
            Ok((path, st)) => {
                self.inodes.unlinked(self.ino_of(st.st_ino), &path);
                self.ws.mark_dirty(&path);
                self.ws.emit(&path, ChangeKind::Delete, None);
                reply.ok()
            }
            Err(e) => self.fail(reply, if dir { "rmdir" } else { "unlink" }, parent, e),
        }
    }

    /// The entries of the directory `path`, for a directory handle (names
    /// that are not UTF-8 are left out, as the journal cannot hold them).
    pub(super) fn listing(&self, path: &str) -> R<Vec<(u64, FileType, String)>> {
        let fd = self
            .root
            .open_file(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
            .map_err(errno)?;
        let mut d = nix::dir::Dir::from_fd(fd.into()).map_err(nerr)?;
        let mut entries = Vec::new();
        for e in d.iter() {
            let e = e.map_err(nerr)?;
            let Ok(n) = e.file_name().to_str() else {
                continue;
            };
            entries.push((self.ino_of(e.ino()), dir_kind(e.file_type()), n.to_owned()));
        }
        Ok(entries)
    }
}

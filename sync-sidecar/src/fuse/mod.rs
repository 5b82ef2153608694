//! FUSE front: /workspace as a passthrough filesystem over the cache.
//!
//! A thin adapter, in the spirit of mountpoint-s3's `fuse.rs`: each
//! `fuser::Filesystem` method does the operation on the cache directory
//! (always through [`Root`], never following a symlink out of it), tells the
//! [`SyncEngine`] what changed, and replies. All durability logic lives in
//! the engine, which is tested without a mount.
//!
//! - `inodes`: inode numbers and the paths the kernel knows them by.
//! - `handles`: open files and directory listings, and passthrough.
//! - `errors`: every error reply, logged and counted.
//!
//! Design points:
//! - Inode numbers are the cache files' own inode numbers (root swapped with
//!   1), so hard links share an inode and nothing needs a table on disk.
//! - With kernel passthrough (Linux 6.9+), reads and writes go straight to
//!   the cache file and never reach us; open, close, fsync and every
//!   metadata operation still do, which is all dirty tracking needs.
//! - fsync replies from a tokio task once the commit is in the store, so a
//!   slow store blocks the caller, never a FUSE thread.
//! - The sidecar is the only writer of the cache, so entries are cached by
//!   the kernel for long (`entry_ttl`).

mod attr;
mod config;
mod errors;
mod handles;
mod inodes;
mod paths;

use crate::fsutil::{self, join, split, Root};
use crate::workspace::{ChangeKind, SyncEngine};
use attr::{errno, nerr};
use errors::ErrorReply;
use fuser::{
    Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use handles::{Handle, Handles, Shared};
use inodes::InodeTable;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use config::FuseConfig;

pub struct CoveFs {
    ws: Arc<SyncEngine>,
    root: Arc<Root>,
    inodes: InodeTable,
    handles: Handles,
    cfg: FuseConfig,
    rt: tokio::runtime::Handle,
}

type R<T> = Result<T, Errno>;

impl CoveFs {
    pub fn new(
        ws: Arc<SyncEngine>,
        cfg: FuseConfig,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let root = ws.root().clone();
        let root_ino = root.lstat("")?.st_ino;
        Ok(Self {
            ws,
            root,
            inodes: InodeTable::new(root_ino),
            handles: Handles::new(cfg.passthrough_min_size),
            cfg,
            rt,
        })
    }

    fn ino_of(&self, st_ino: u64) -> u64 {
        self.inodes.ino_of(st_ino)
    }

    fn attr(&self, st: &FileStat) -> FileAttr {
        attr::file_attr(st, self.ino_of(st.st_ino))
    }

    /// Reply `e` to `op` on `ino`; every error reply goes through here.
    fn fail(&self, reply: impl ErrorReply, op: &'static str, ino: INodeNo, e: Errno) {
        errors::reply(&self.ws.metrics, reply, op, ino.0, e)
    }

    fn handle(&self, fh: FileHandle) -> R<Shared<fuser::BackingId>> {
        self.handles.get(fh.0).ok_or(Errno::EBADF)
    }

    /// Register a handle for a file opened for a FUSE open/create; returns
    /// the handle number and a second fd of the file for passthrough setup.
    fn open_handle(&self, ino: u64, path: &str, file: File, flags: i32) -> R<(u64, File)> {
        let dup = file.try_clone().map_err(errno)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let writer = writable.then(|| self.ws.open_writer(path));
        Ok((self.handles.insert_file(ino, file, writer), dup))
    }
}

impl fuser::Filesystem for CoveFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.cfg.passthrough && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            let _ = config.set_max_stack_depth(2);
            self.handles.enable_passthrough();
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        tracing::info!(
            passthrough = self.handles.passthrough(),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(path) => self.lookup_entry(&path, reply, parent),
            Err(e) => self.fail(reply, "lookup", parent, e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            if let Ok(h) = self.handle(fh) {
                if let Handle::File(f) = &*h.lock() {
                    match nix::sys::stat::fstat(&f.file) {
                        Ok(st) => return reply.attr(&self.cfg.attr_ttl, &self.attr(&st)),
                        Err(e) => return self.fail(reply, "getattr", ino, nerr(e)),
                    }
                }
            }
        }
        let res = self
            .path_of(ino)
            .and_then(|p| self.root.lstat(&p).map_err(errno))
            // Unlinked but still open: the open file still has attributes.
            .or_else(|e| {
                let f = self.handles.file_of(ino.0).ok_or(e)?;
                nix::sys::stat::fstat(&f).map_err(nerr)
            });
        match res {
            Ok(st) => reply.attr(&self.cfg.attr_ttl, &self.attr(&st)),
            Err(e) => self.fail(reply, "getattr", ino, e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = (|| -> R<FileStat> {
            let path = self.path_of(ino)?;
            let (dir, name) = if path.is_empty() {
                (self.root.dir("").map_err(errno)?, ".".to_owned())
            } else {
                self.parent_dir(&path)?
            };
            let handle = fh.and_then(|fh| self.handle(fh).ok());
            if let Some(size) = size {
                let done = handle.as_ref().and_then(|h| match &*h.lock() {
                    Handle::File(f) => Some(f.file.set_len(size).map_err(errno)),
                    Handle::Dir(_) => None,
                });
                match done {
                    Some(r) => r?,
                    None => self
                        .root
                        .open_file(&path, OFlag::O_WRONLY | OFlag::O_NOFOLLOW, 0)
                        .and_then(|f| f.set_len(size))
                        .map_err(errno)?,
                }
            }
            if let Some(mode) = mode {
                nix::sys::stat::fchmodat(
                    &dir,
                    name.as_str(),
                    Mode::from_bits_truncate(mode & 0o7777),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(nerr)?;
            }
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchownat(
                    &dir,
                    name.as_str(),
                    uid.map(Into::into),
                    gid.map(Into::into),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(nerr)?;
            }
            if atime.is_some() || mtime.is_some() {
                nix::sys::stat::utimensat(
                    &dir,
                    name.as_str(),
                    &attr::timespec(atime),
                    &attr::timespec(mtime),
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(nerr)?;
            }
            if size.is_some() || mode.is_some() || mtime.is_some() {
                for p in self.paths_of(ino) {
                    self.ws.mark_dirty(&p);
                    self.ws.emit(&p, ChangeKind::Modify, None);
                }
            }
            self.root.lstat(&path).map_err(errno)
        })();
        match res {
            Ok(st) => reply.attr(&self.cfg.attr_ttl, &self.attr(&st)),
            Err(e) => self.fail(reply, "setattr", ino, e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path_of(ino)
            .and_then(|p| self.root.readlink(&p).map_err(errno))
        {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => self.fail(reply, "readlink", ino, e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let res = (|| -> R<String> {
            let path = self.child(parent, name)?;
            let (dir, n) = self.parent_dir(&path)?;
            let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
            nix::sys::stat::mknodat(
                &dir,
                n.as_str(),
                kind,
                Mode::from_bits_truncate(mode & !umask & 0o7777),
                rdev as u64,
            )
            .map_err(nerr)?;
            self.chown_new(req, &path)?;
            Ok(path)
        })();
        self.created(res, reply, "mknod", parent)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let res = (|| -> R<String> {
            let path = self.child(parent, name)?;
            let (dir, n) = self.parent_dir(&path)?;
            nix::sys::stat::mkdirat(
                &dir,
                n.as_str(),
                Mode::from_bits_truncate(mode & !umask & 0o7777),
            )
            .map_err(nerr)?;
            self.chown_new(req, &path)?;
            Ok(path)
        })();
        self.created(res, reply, "mkdir", parent)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let res = (|| -> R<String> {
            let path = self.child(parent, link_name)?;
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            let (dir, n) = self.parent_dir(&path)?;
            nix::unistd::symlinkat(target, &dir, n.as_str()).map_err(nerr)?;
            self.chown_new(req, &path)?;
            Ok(path)
        })();
        self.created(res, reply, "symlink", parent)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> R<(String, String, FileStat, Option<FileStat>)> {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            let from_st = self.root.lstat(&from).map_err(errno)?;
            let to_st = self.root.lstat_opt(&to).map_err(errno)?;
            let (fd, fname) = self.parent_dir(&from)?;
            let (td, tname) = self.parent_dir(&to)?;
            let mut rf = nix::fcntl::RenameFlags::empty();
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                rf |= nix::fcntl::RenameFlags::RENAME_NOREPLACE;
            }
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                rf |= nix::fcntl::RenameFlags::RENAME_EXCHANGE;
            }
            nix::fcntl::renameat2(&fd, fname.as_str(), &td, tname.as_str(), rf).map_err(nerr)?;
            Ok((from, to, from_st, to_st))
        })();
        match res {
            Ok((from, to, from_st, to_st)) => {
                if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                    // Both names now hold the other's tree: re-read both.
                    self.inodes.exchanged(&from, &to);
                    for p in [&from, &to] {
                        self.mark_tree(p);
                        self.ws.emit(p, ChangeKind::Modify, None);
                    }
                } else {
                    self.inodes.renamed(
                        &from,
                        &to,
                        self.ino_of(from_st.st_ino),
                        fsutil::is_dir(&from_st),
                        to_st.map(|st| self.ino_of(st.st_ino)),
                    );
                    self.ws.rename(&from, &to);
                    self.ws.emit(&to, ChangeKind::Rename, Some(&from));
                }
                reply.ok()
            }
            Err(e) => self.fail(reply, "rename", parent, e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = (|| -> R<String> {
            let src = self.path_of(ino)?;
            let dst = self.child(newparent, newname)?;
            let (sd, sn) = self.parent_dir(&src)?;
            let (dd, dn) = self.parent_dir(&dst)?;
            nix::unistd::linkat(&sd, sn.as_str(), &dd, dn.as_str(), AtFlags::empty())
                .map_err(nerr)?;
            Ok(dst)
        })();
        match res {
            Ok(dst) => {
                self.ws.mark_dirty(&dst);
                self.ws.emit(&dst, ChangeKind::Create, None);
                self.entry(&dst, reply, "link", ino)
            }
            Err(e) => self.fail(reply, "link", ino, e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| -> R<(u64, File)> {
            let path = self.path_of(ino)?;
            let file = self
                .root
                .open_file(&path, attr::open_flags(flags.0), 0)
                .map_err(errno)?;
            let (fh, dup) = self.open_handle(ino.0, &path, file, flags.0)?;
            if flags.0 & libc::O_TRUNC != 0 {
                self.ws.emit(&path, ChangeKind::Modify, None);
            }
            Ok((fh, dup))
        })();
        match res {
            Ok((fh, file)) => {
                let size = file.metadata().map_or(0, |m| m.len());
                if let Some(id) = self
                    .handles
                    .backing_for(ino.0, fh, size, || reply.open_backing(&file))
                {
                    self.handles.set_backing(fh, &id);
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
                } else {
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH);
                }
            }
            Err(e) => self.fail(reply, "open", ino, e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res = (|| -> R<Vec<u8>> {
            let h = self.handle(fh)?;
            let g = h.lock();
            let Handle::File(f) = &*g else {
                return Err(Errno::EISDIR);
            };
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.file.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        })();
        match res {
            Ok(b) => reply.data(&b),
            Err(e) => self.fail(reply, "read", ino, e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let res = (|| -> R<usize> {
            let h = self.handle(fh)?;
            let g = h.lock();
            let Handle::File(f) = &*g else {
                return Err(Errno::EISDIR);
            };
            f.file.write_all_at(data, offset).map_err(errno)?;
            Ok(data.len())
        })();
        match res {
            Ok(n) => reply.written(n as u32),
            Err(e) => self.fail(reply, "write", ino, e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(h) = self.handles.remove(fh.0) {
            if let Handle::File(f) = &*h.lock() {
                if let Some(w) = f.writer {
                    self.ws.close_writer(w);
                    // Every name of a hard-linked file changed.
                    for p in self.paths_of(ino) {
                        self.ws.mark_dirty(&p);
                    }
                    if let Some(p) = self.paths_of(ino).first() {
                        self.ws.emit(p, ChangeKind::Modify, None);
                    }
                }
            }
        }
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let paths = self.paths_of(ino);
        for p in &paths {
            self.ws.mark_dirty(p);
        }
        let ws = self.ws.clone();
        self.rt.spawn(async move {
            match ws.flush(Some(&paths)).await {
                Ok(_) => reply.ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "fsync could not be made durable");
                    errors::reply(&ws.metrics, reply, "fsync", ino.0, Errno::EIO)
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| -> R<u64> {
            let entries = self.listing(&self.path_of(ino)?)?;
            Ok(self.handles.insert(Handle::Dir(entries)))
        })();
        match res {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => self.fail(reply, "opendir", ino, e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(h) = self.handle(fh) else {
            return self.fail(reply, "readdir", ino, Errno::EBADF);
        };
        let g = h.lock();
        let Handle::Dir(entries) = &*g else {
            return self.fail(reply, "readdir", ino, Errno::ENOTDIR);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Ok(dir) = self.path_of(ino) else {
            return self.fail(reply, "readdirplus", ino, Errno::ESTALE);
        };
        let Ok(h) = self.handle(fh) else {
            return self.fail(reply, "readdirplus", ino, Errno::EBADF);
        };
        let g = h.lock();
        let Handle::Dir(entries) = &*g else {
            return self.fail(reply, "readdirplus", ino, Errno::ENOTDIR);
        };
        for (i, (_, _, name)) in entries.iter().enumerate().skip(offset as usize) {
            if name == "." || name == ".." {
                // The kernel does not count lookups for these.
                let st = if name == "." {
                    self.root.lstat(&dir)
                } else {
                    self.root.lstat(split(&dir).0)
                };
                let Ok(st) = st else { continue };
                let attr = self.attr(&st);
                if reply.add(
                    attr.ino,
                    (i + 1) as u64,
                    name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let path = join(&dir, name);
            let Ok(st) = self.root.lstat(&path) else {
                continue;
            };
            let attr = self.attr(&st);
            if reply.add(
                attr.ino,
                (i + 1) as u64,
                name,
                &self.cfg.entry_ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
            // Counted only once the entry is in the reply.
            self.remember(&st, &path);
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A directory's entries are its children's names: make its whole
        // subtree durable.
        let ws = self.ws.clone();
        let path = self.path_of(ino).unwrap_or_default();
        self.rt.spawn(async move {
            let paths = [path];
            match ws.flush(Some(&paths)).await {
                Ok(_) => reply.ok(),
                Err(_) => errors::reply(&ws.metrics, reply, "fsyncdir", ino.0, Errno::EIO),
            }
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(self.root.path()) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(e) => self.fail(reply, "statfs", ino, nerr(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // Extended attributes are not part of the journal: refuse rather
        // than keep something that would not survive a restart.
        self.fail(reply, "setxattr", ino, Errno::ENOTSUP)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        self.fail(reply, "getxattr", ino, Errno::NO_XATTR)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.fail(reply, "removexattr", ino, Errno::NO_XATTR)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked; only existence is ours.
        match self.path_of(ino) {
            Ok(_) => reply.ok(),
            Err(e) => self.fail(reply, "access", ino, e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = (|| -> R<(String, FileStat, u64, File)> {
            let path = self.child(parent, name)?;
            let fl = attr::open_flags(flags)
                | OFlag::O_CREAT
                | OFlag::from_bits_truncate(flags & libc::O_EXCL);
            let file = self
                .root
                .open_file(&path, fl, mode & !umask & 0o7777)
                .map_err(errno)?;
            self.chown_new(req, &path)?;
            let st = nix::sys::stat::fstat(&file).map_err(nerr)?;
            let ino = self.ino_of(st.st_ino);
            let (fh, dup) = self.open_handle(ino, &path, file, flags)?;
            Ok((path, st, fh, dup))
        })();
        match res {
            Ok((path, st, fh, dup)) => {
                let attr = self.remember(&st, &path);
                // Even a file created read-only exists now.
                self.ws.mark_dirty(&path);
                self.ws.emit(&path, ChangeKind::Create, None);
                let size = st.st_size as u64;
                if let Some(id) = self
                    .handles
                    .backing_for(attr.ino.0, fh, size, || reply.open_backing(&dup))
                {
                    self.handles.set_backing(fh, &id);
                    reply.created_passthrough(
                        &self.cfg.entry_ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::FOPEN_NOFLUSH,
                        &id,
                    );
                } else {
                    reply.created(
                        &self.cfg.entry_ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::FOPEN_NOFLUSH,
                    );
                }
            }
            Err(e) => self.fail(reply, "create", parent, e),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Tools probe with ioctls (FS_IOC_GETFLAGS, ...); none apply here.
        self.fail(reply, "ioctl", ino, Errno::ENOTTY)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = (|| -> R<()> {
            let h = self.handle(fh)?;
            let g = h.lock();
            let Handle::File(f) = &*g else {
                return Err(Errno::EISDIR);
            };
            let r =
                unsafe { libc::fallocate(f.file.as_raw_fd(), mode, offset as i64, length as i64) };
            if r != 0 {
                return Err(errno(std::io::Error::last_os_error()));
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                for p in self.paths_of(ino) {
                    self.ws.mark_dirty(&p);
                }
                reply.ok()
            }
            Err(e) => self.fail(reply, "fallocate", ino, e),
        }
    }
}

/// Mount `ws` at `mountpoint` and serve it on background threads until the
/// returned session is dropped or unmounted.
pub fn mount(
    ws: Arc<SyncEngine>,
    mountpoint: &Path,
    cfg: FuseConfig,
    rt: tokio::runtime::Handle,
) -> std::io::Result<fuser::BackgroundSession> {
    // Modes from the kernel are final (it applied the caller's umask).
    unsafe { libc::umask(0) };
    let threads = cfg.threads;
    let fs = CoveFs::new(ws, cfg, rt)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("cove".into()),
        fuser::MountOption::Subtype("cove".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    fuser::Session::new(fs, mountpoint, &config)?.spawn()
}

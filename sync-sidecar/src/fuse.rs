//! FUSE front: /workspace as a passthrough filesystem over the cache.
//!
//! A thin adapter, in the spirit of mountpoint-s3's `fuse.rs`: each
//! `fuser::Filesystem` method does the operation on the cache directory
//! (always through [`Root`], never following a symlink out of it), tells the
//! [`SyncEngine`] what changed, and replies. All durability logic lives in
//! the engine, which is tested without a mount.
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

use crate::fsutil::{self, join, split, Root};
use crate::workspace::{ChangeKind, SyncEngine};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct FuseConfig {
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
    /// Use kernel passthrough for reads and writes when the kernel has it.
    pub passthrough: bool,
    /// ...for files at least this large when opened. Setting up a backing
    /// file costs two ioctls, more than a small file's one read through
    /// the daemon (measured: reading the 20k-file tree is 16% faster
    /// without passthrough), so small and new files go through the daemon.
    pub passthrough_min_size: u64,
    pub threads: usize,
}

impl Default for FuseConfig {
    fn default() -> Self {
        Self {
            // The sidecar is the only writer of the cache and the kernel
            // updates size and times itself on writes through the mount.
            entry_ttl: Duration::from_secs(60),
            attr_ttl: Duration::from_secs(60),
            passthrough: true,
            passthrough_min_size: 256 * 1024,
            threads: 4,
        }
    }
}

struct Inode {
    /// Known names of this inode (several for hard links), newest first.
    paths: Vec<String>,
    nlookup: u64,
}

struct FileH {
    ino: u64,
    file: File,
    writer: Option<u64>,
    _backing: Option<Arc<BackingId>>,
}

enum Handle {
    File(FileH),
    Dir(Vec<(u64, FileType, String)>),
}

pub struct CoveFs {
    ws: Arc<SyncEngine>,
    root: Arc<Root>,
    root_ino: u64,
    inodes: RwLock<HashMap<u64, Inode>>,
    handles: Mutex<HashMap<u64, Arc<Mutex<Handle>>>>,
    next_fh: AtomicU64,
    backing: Mutex<HashMap<u64, Weak<BackingId>>>,
    passthrough: AtomicBool,
    cfg: FuseConfig,
    rt: tokio::runtime::Handle,
}

type R<T> = Result<T, Errno>;

fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}
fn nerr(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn name_str(name: &OsStr) -> R<&str> {
    // The journal stores UTF-8 paths; refuse other names up front.
    name.to_str().ok_or(Errno::EINVAL)
}

fn ts(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::new(0, nsec as u32)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

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
            root_ino,
            inodes: RwLock::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            backing: Mutex::new(HashMap::new()),
            passthrough: AtomicBool::new(false),
            cfg,
            rt,
        })
    }

    fn ino_of(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else if st_ino == 1 {
            self.root_ino
        } else {
            st_ino
        }
    }

    fn attr(&self, st: &FileStat) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.ino_of(st.st_ino)),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            crtime: ts(st.st_ctime, st.st_ctime_nsec),
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn path_of(&self, ino: INodeNo) -> R<String> {
        if ino.0 == 1 {
            return Ok(String::new());
        }
        self.inodes
            .read()
            .get(&ino.0)
            .and_then(|i| i.paths.first().cloned())
            .ok_or(Errno::ESTALE)
    }

    fn paths_of(&self, ino: INodeNo) -> Vec<String> {
        if ino.0 == 1 {
            return vec![];
        }
        self.inodes
            .read()
            .get(&ino.0)
            .map(|i| i.paths.clone())
            .unwrap_or_default()
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> R<String> {
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
    fn remember(&self, st: &FileStat, path: &str) -> FileAttr {
        let attr = self.attr(st);
        if attr.ino.0 != 1 {
            let mut t = self.inodes.write();
            let e = t.entry(attr.ino.0).or_insert(Inode {
                paths: vec![],
                nlookup: 0,
            });
            e.nlookup += 1;
            if let Some(i) = e.paths.iter().position(|p| p == path) {
                e.paths.remove(i);
            }
            e.paths.insert(0, path.to_owned());
        }
        attr
    }

    /// `path` no longer names the inode `st` (unlink, rmdir: a removed
    /// directory is empty, so only its own inode is affected).
    fn forget_path(&self, path: &str, st: &FileStat) {
        let ino = self.ino_of(st.st_ino);
        if let Some(i) = self.inodes.write().get_mut(&ino) {
            i.paths.retain(|p| p != path);
        }
    }

    /// `from` was renamed over `to`. A file rename touches two inodes; a
    /// directory rename renames every known path below it.
    fn move_paths(&self, from: &str, to: &str, from_st: &FileStat, to_st: Option<&FileStat>) {
        let mut t = self.inodes.write();
        if let Some(ts) = to_st {
            let replaced = self.ino_of(ts.st_ino);
            if let Some(i) = t.get_mut(&replaced) {
                i.paths.retain(|p| p != to);
            }
        }
        if !fsutil::is_dir(from_st) {
            if let Some(i) = t.get_mut(&self.ino_of(from_st.st_ino)) {
                for p in i.paths.iter_mut() {
                    if p == from {
                        *p = to.to_owned();
                    }
                }
            }
            return;
        }
        let fp = format!("{from}/");
        for i in t.values_mut() {
            for p in i.paths.iter_mut() {
                if p == from || p.starts_with(&fp) {
                    *p = format!("{to}{}", &p[from.len()..]);
                }
            }
        }
    }

    fn entry(&self, path: &str, reply: ReplyEntry) {
        self.entry_from(path, self.root.lstat(path), reply)
    }

    /// Reply with the entry for `path` given its `lstat` result.
    fn entry_from(&self, path: &str, st: std::io::Result<FileStat>, reply: ReplyEntry) {
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
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Like `entry`, but "no such name" is cached by the kernel too (inode
    /// 0 with a TTL): every create is preceded by a lookup of the new name,
    /// and only this sidecar can make the name appear (the kernel replaces
    /// the negative entry itself when it does).
    fn lookup_entry(&self, path: &str, reply: ReplyEntry) {
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
                    Err(_) => reply.error(Errno::ENOENT),
                }
            }
            other => self.entry_from(path, other, reply),
        }
    }

    /// Reply to mknod/mkdir/symlink: the new node is dirty and announced.
    fn created(&self, res: R<String>, reply: ReplyEntry) {
        match res {
            Ok(path) => {
                self.ws.mark_dirty(&path);
                self.ws.emit(&path, ChangeKind::Create, None);
                self.entry(&path, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    /// Give a new node to the caller (and the setgid directory's group).
    fn chown_new(&self, req: &Request, path: &str) -> R<()> {
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

    fn parent_dir(&self, path: &str) -> R<(std::os::fd::OwnedFd, String)> {
        let (p, n) = split(path);
        Ok((self.root.dir(p).map_err(errno)?, n.to_owned()))
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(Mutex::new(h)));
        fh
    }

    fn handle(&self, fh: FileHandle) -> R<Arc<Mutex<Handle>>> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Register a handle for a file opened for a FUSE open/create; returns
    /// the handle number and a second fd of the file for passthrough setup.
    fn open_handle(&self, ino: u64, path: &str, file: File, flags: i32) -> R<(u64, File)> {
        let dup = file.try_clone().map_err(errno)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let writer = writable.then(|| self.ws.open_writer(path));
        let fh = self.new_fh(Handle::File(FileH {
            ino,
            file,
            writer,
            _backing: None,
        }));
        Ok((fh, dup))
    }

    /// A second fd of some open handle of `ino` (for unlinked files).
    fn open_file_of(&self, ino: u64) -> Option<File> {
        let hs: Vec<_> = self.handles.lock().values().cloned().collect();
        hs.iter().find_map(|h| match &*h.lock() {
            Handle::File(f) if f.ino == ino => f.file.try_clone().ok(),
            _ => None,
        })
    }

    /// The backing file to pass reads and writes through to, if this open
    /// should use passthrough. The kernel refuses to mix passthrough and
    /// cached opens of one inode (ETXTBSY), so an inode keeps the mode of
    /// its open handles; a first open decides by size. The backing lock
    /// makes decide-and-register atomic.
    fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        size: u64,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut b = self.backing.lock();
        if let Some(id) = b.get(&ino).and_then(Weak::upgrade) {
            return Some(id);
        }
        let cached_open = self.handles.lock().iter().any(|(h, handle)| {
            *h != fh && matches!(&*handle.lock(), Handle::File(f) if f.ino == ino)
        });
        if cached_open || size < self.cfg.passthrough_min_size {
            return None;
        }
        match make() {
            Ok(id) => {
                let id = Arc::new(id);
                b.insert(ino, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                tracing::debug!(error = %e, "passthrough unavailable for this file");
                None
            }
        }
    }

    fn set_backing(&self, fh: u64, id: &Arc<BackingId>) {
        if let Some(h) = self.handles.lock().get(&fh) {
            if let Handle::File(f) = &mut *h.lock() {
                f._backing = Some(id.clone());
            }
        }
    }

    fn open_flags(flags: i32) -> OFlag {
        // The kernel already did O_CREAT/O_EXCL/O_TRUNC handling where it
        // had to; O_DIRECT is dropped (the cache may not support it).
        let keep = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
        OFlag::from_bits_truncate(keep) | OFlag::O_NOFOLLOW
    }
}

impl fuser::Filesystem for CoveFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.cfg.passthrough && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            let _ = config.set_max_stack_depth(2);
            self.passthrough.store(true, Ordering::Relaxed);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        tracing::info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(path) => self.lookup_entry(&path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut t = self.inodes.write();
        if let Some(i) = t.get_mut(&ino.0) {
            i.nlookup = i.nlookup.saturating_sub(nlookup);
            if i.nlookup == 0 {
                t.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            if let Ok(h) = self.handle(fh) {
                if let Handle::File(f) = &*h.lock() {
                    match nix::sys::stat::fstat(&f.file) {
                        Ok(st) => return reply.attr(&self.cfg.attr_ttl, &self.attr(&st)),
                        Err(e) => return reply.error(nerr(e)),
                    }
                }
            }
        }
        let res = self
            .path_of(ino)
            .and_then(|p| self.root.lstat(&p).map_err(errno))
            // Unlinked but still open: the open file still has attributes.
            .or_else(|e| {
                let f = self.open_file_of(ino.0).ok_or(e)?;
                nix::sys::stat::fstat(&f).map_err(nerr)
            });
        match res {
            Ok(st) => reply.attr(&self.cfg.attr_ttl, &self.attr(&st)),
            Err(e) => reply.error(e),
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
                let conv = |t: Option<TimeOrNow>| match t {
                    None => nix::sys::time::TimeSpec::UTIME_OMIT,
                    Some(TimeOrNow::Now) => nix::sys::time::TimeSpec::UTIME_NOW,
                    Some(TimeOrNow::SpecificTime(t)) => {
                        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                        nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
                    }
                };
                nix::sys::stat::utimensat(
                    &dir,
                    name.as_str(),
                    &conv(atime),
                    &conv(mtime),
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
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path_of(ino)
            .and_then(|p| self.root.readlink(&p).map_err(errno))
        {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(e),
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
        self.created(res, reply)
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
        self.created(res, reply)
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
        self.created(res, reply)
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
                    let mut t = self.inodes.write();
                    for i in t.values_mut() {
                        for p in i.paths.iter_mut() {
                            for (a, b) in [(&from, &to), (&to, &from)] {
                                if p == a || p.starts_with(&format!("{a}/")) {
                                    *p = format!("{b}{}", &p[a.len()..]);
                                    break;
                                }
                            }
                        }
                    }
                    drop(t);
                    for p in [&from, &to] {
                        self.mark_tree(p);
                        self.ws.emit(p, ChangeKind::Modify, None);
                    }
                } else {
                    self.move_paths(&from, &to, &from_st, to_st.as_ref());
                    self.ws.rename(&from, &to);
                    self.ws.emit(&to, ChangeKind::Rename, Some(&from));
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
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
                self.entry(&dst, reply)
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| -> R<(u64, File)> {
            let path = self.path_of(ino)?;
            let file = self
                .root
                .open_file(&path, Self::open_flags(flags.0), 0)
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
                if let Some(id) = self.backing_for(ino.0, fh, size, || reply.open_backing(&file)) {
                    self.set_backing(fh, &id);
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
                } else {
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
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
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
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
            Err(e) => reply.error(e),
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
        let h = self.handles.lock().remove(&fh.0);
        if let Some(h) = h {
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
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| -> R<u64> {
            let path = self.path_of(ino)?;
            let fd = self
                .root
                .open_file(&path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
                .map_err(errno)?;
            let mut d = nix::dir::Dir::from_fd(fd.into()).map_err(nerr)?;
            let mut entries = Vec::new();
            for e in d.iter() {
                let e = e.map_err(nerr)?;
                let Ok(n) = e.file_name().to_str() else {
                    continue;
                };
                let kind = match e.file_type() {
                    Some(nix::dir::Type::Directory) => FileType::Directory,
                    Some(nix::dir::Type::Symlink) => FileType::Symlink,
                    Some(nix::dir::Type::Fifo) => FileType::NamedPipe,
                    Some(nix::dir::Type::Socket) => FileType::Socket,
                    Some(nix::dir::Type::CharacterDevice) => FileType::CharDevice,
                    Some(nix::dir::Type::BlockDevice) => FileType::BlockDevice,
                    _ => FileType::RegularFile,
                };
                entries.push((self.ino_of(e.ino()), kind, n.to_owned()));
            }
            Ok(self.new_fh(Handle::Dir(entries)))
        })();
        match res {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let g = h.lock();
        let Handle::Dir(entries) = &*g else {
            return reply.error(Errno::ENOTDIR);
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
            return reply.error(Errno::ESTALE);
        };
        let Ok(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let g = h.lock();
        let Handle::Dir(entries) = &*g else {
            return reply.error(Errno::ENOTDIR);
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
        self.handles.lock().remove(&fh.0);
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
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
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
            Err(e) => reply.error(nerr(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // Extended attributes are not part of the journal: refuse rather
        // than keep something that would not survive a restart.
        reply.error(Errno::ENOTSUP)
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::NO_XATTR)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked; only existence is ours.
        match self.path_of(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
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
            let fl = Self::open_flags(flags)
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
                if let Some(id) =
                    self.backing_for(attr.ino.0, fh, size, || reply.open_backing(&dup))
                {
                    self.set_backing(fh, &id);
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
            Err(e) => reply.error(e),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Tools probe with ioctls (FS_IOC_GETFLAGS, ...); none apply here.
        reply.error(Errno::ENOTTY)
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
            Err(e) => reply.error(e),
        }
    }
}

impl CoveFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
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
                self.forget_path(&path, &st);
                self.ws.mark_dirty(&path);
                self.ws.emit(&path, ChangeKind::Delete, None);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    /// Mark `path` and everything below it dirty.
    fn mark_tree(&self, path: &str) {
        self.ws.mark_dirty(path);
        if let Ok(st) = self.root.lstat(path) {
            if fsutil::is_dir(&st) {
                for n in self.root.list(path).unwrap_or_default() {
                    self.mark_tree(&join(path, &n));
                }
            }
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

//! File operations of the protocol (§9), confined to the workspace root.
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` from a descriptor of the root, so neither `..`
//! nor a symlink (absolute, or relative and climbing out) can leave it: the
//! kernel refuses with `EXDEV`, which becomes `outside_workspace`. Symlinks
//! that stay inside are followed, as a shell in the terminal would. These
//! functions block; callers run them on the blocking pool.

use crate::protocol::{ApiError, ApiResult, Code};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Marks cove-pty's own temporary files; the change feed hides them.
pub const TMP_MARKER: &str = ".cove-tmp-";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: &'static str,
    pub size: u64,
    pub mtime_ms: u64,
    pub mode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub version: String,
    pub size: u64,
    pub mtime_ms: u64,
}

pub struct Files {
    root: OwnedFd,
    root_path: PathBuf,
    pub max_file_bytes: u64,
    pub max_list_entries: usize,
    pub max_path_bytes: usize,
    /// Serializes cove-pty's own mutations, so two clients' writes to one
    /// path are checked and replaced one after the other.
    write_lock: parking_lot::Mutex<()>,
}

pub fn version_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn kind_of(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "file",
        SFlag::S_IFDIR => "dir",
        SFlag::S_IFLNK => "symlink",
        _ => "other",
    }
}

/// Modification time in ms since the epoch (0 before it), as entries report it.
pub fn mtime_ms(st: &FileStat) -> u64 {
    (st.st_mtime.max(0) as u64) * 1000 + (st.st_mtime_nsec.max(0) as u64) / 1_000_000
}

/// Maps an OS error on `path` to the protocol's codes (§14).
pub fn os_error(e: Errno, path: &str) -> ApiError {
    let d = json!({ "path": path });
    match e {
        Errno::EXDEV | Errno::ELOOP => ApiError::new(
            Code::OutsideWorkspace,
            format!("{path:?} resolves outside the workspace"),
        )
        .with(d),
        Errno::ENOENT => ApiError::new(Code::NotFound, format!("{path:?} does not exist")).with(d),
        Errno::ENOTDIR => ApiError::new(
            Code::NotADirectory,
            format!("a component of {path:?} is not a directory"),
        )
        .with(d),
        Errno::EEXIST => {
            ApiError::new(Code::AlreadyExists, format!("{path:?} already exists")).with(d)
        }
        Errno::ENOTEMPTY => ApiError::new(Code::NotEmpty, format!("{path:?} is not empty")).with(d),
        Errno::EACCES | Errno::EPERM | Errno::EROFS => {
            ApiError::new(Code::PermissionDenied, format!("{path:?}: {}", e.desc())).with(d)
        }
        Errno::ENOSPC | Errno::EDQUOT => {
            ApiError::new(Code::NoSpace, format!("no space left for {path:?}")).with(d)
        }
        Errno::EINVAL => ApiError::new(Code::BadRequest, format!("{path:?}: {}", e.desc())).with(d),
        _ => ApiError::new(Code::IoError, format!("{path:?}: {}", e.desc()))
            .with(json!({"path": path, "errno": format!("{e:?}")})),
    }
}

fn io_error(e: std::io::Error, path: &str) -> ApiError {
    os_error(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)), path)
}

/// Checks a path against §9.1; `""` is the root.
pub fn validate(path: &str, max: usize) -> ApiResult<()> {
    let bad = |why: &str| {
        Err(
            ApiError::new(Code::BadPath, format!("invalid path {path:?}: {why}"))
                .with(json!({ "path": path })),
        )
    };
    if path.is_empty() {
        return Ok(());
    }
    if path.len() > max {
        return bad("too long");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.starts_with('/') {
        return bad("absolute paths are not allowed");
    }
    for c in path.split('/') {
        match c {
            "" => return bad("empty component"),
            "." | ".." => return bad("`.` and `..` are not allowed"),
            c if c.len() > 255 => return bad("component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn not_root(path: &str) -> ApiResult<()> {
    if path.is_empty() {
        return Err(
            ApiError::new(Code::BadPath, "the workspace root cannot be used here")
                .with(json!({"path": ""})),
        );
    }
    Ok(())
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

impl Files {
    pub fn open(root: &Path, limits: &crate::protocol::Limits) -> std::io::Result<Self> {
        let f = File::open(root)?;
        Ok(Files {
            root: f.into(),
            root_path: root.canonicalize()?,
            max_file_bytes: limits.max_file_bytes,
            max_list_entries: limits.max_list_entries,
            max_path_bytes: limits.max_path_bytes,
            write_lock: parking_lot::Mutex::new(()),
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    pub fn check(&self, path: &str) -> ApiResult<()> {
        validate(path, self.max_path_bytes)
    }

    fn rel(p: &str) -> &str {
        if p.is_empty() {
            "."
        } else {
            p
        }
    }

    /// Opens `path` (following symlinks that stay inside) with `flags`.
    fn open_at(&self, path: &str, flags: OFlag) -> ApiResult<OwnedFd> {
        nix::fcntl::openat2(self.root.as_fd(), Self::rel(path), how(flags))
            .map_err(|e| os_error(e, path))
    }

    /// The directory that holds `path`'s last component.
    fn parent(&self, path: &str) -> ApiResult<(OwnedFd, String)> {
        let (dir, name) = split(path);
        let fd = self.open_at(dir, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        Ok((fd, name.to_string()))
    }

    /// A working directory for a terminal: must be a directory inside.
    pub fn resolve_dir(&self, path: &str) -> ApiResult<PathBuf> {
        self.check(path)?;
        let fd = self.open_at(path, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        self.real_path(&fd, path)
    }

    fn real_path(&self, fd: &OwnedFd, path: &str) -> ApiResult<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| io_error(e, path))
    }

    fn entry(&self, name: &str, st: &FileStat, dir: Option<&OwnedFd>) -> Entry {
        let kind = kind_of(st);
        let target = if kind == "symlink" {
            dir.and_then(|d| nix::fcntl::readlinkat(d.as_fd(), name).ok())
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        };
        Entry {
            name: name.to_string(),
            kind,
            size: st.st_size.max(0) as u64,
            mtime_ms: mtime_ms(st),
            mode: st.st_mode & 0o7777,
            target,
            version: None,
        }
    }

    pub fn stat(&self, path: &str, follow: bool, want_version: bool) -> ApiResult<Entry> {
        self.check(path)?;
        let (_, name) = split(path);
        let mut e = if follow || path.is_empty() {
            let fd = self.open_at(path, OFlag::O_PATH)?;
            let st = nix::sys::stat::fstat(&fd).map_err(|e| os_error(e, path))?;
            self.entry(name, &st, None)
        } else {
            let (dir, name) = self.parent(path)?;
            let st = nix::sys::stat::fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| os_error(e, path))?;
            self.entry(&name, &st, Some(&dir))
        };
        if want_version && e.kind == "file" && e.size <= self.max_file_bytes {
            if let Ok((bytes, _)) = self.read_bytes(path) {
                e.version = Some(version_of(&bytes));
            }
        }
        Ok(e)
    }

    pub fn list(&self, path: &str) -> ApiResult<(Vec<Entry>, bool, usize)> {
        self.check(path)?;
        let fd = self.open_at(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let dup = fd.try_clone().map_err(|e| io_error(e, path))?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| os_error(e, path))?;
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut truncated = false;
        let mut names = Vec::new();
        for ent in dir.iter() {
            let ent = ent.map_err(|e| os_error(e, path))?;
            let raw = ent.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            match std::str::from_utf8(raw) {
                Ok(n) => names.push(n.to_string()),
                Err(_) => skipped += 1,
            }
        }
        names.sort();
        if names.len() > self.max_list_entries {
            names.truncate(self.max_list_entries);
            truncated = true;
        }
        for n in names {
            // A name can vanish between readdir and stat: skip it.
            if let Ok(st) = nix::sys::stat::fstatat(&fd, n.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                out.push(self.entry(&n, &st, Some(&fd)));
            }
        }
        Ok((out, truncated, skipped))
    }

    /// Reads a regular file whole; `too_large` above the limit.
    pub fn read_bytes(&self, path: &str) -> ApiResult<(Vec<u8>, FileStat)> {
        self.check(path)?;
        not_root(path).map_err(|_| {
            ApiError::new(Code::NotAFile, "the root is a directory")
                .with(json!({"path": "", "kind": "dir"}))
        })?;
        // O_NONBLOCK: opening a FIFO for reading must not hang the server.
        let fd = self.open_at(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| os_error(e, path))?;
        let kind = kind_of(&st);
        if kind != "file" {
            return Err(
                ApiError::new(Code::NotAFile, format!("{path:?} is not a regular file"))
                    .with(json!({"path": path, "kind": kind})),
            );
        }
        let size = st.st_size.max(0) as u64;
        if size > self.max_file_bytes {
            return Err(too_large(path, size, self.max_file_bytes));
        }
        let mut f = File::from(fd);
        let mut buf = Vec::with_capacity(size as usize);
        // Read at most one byte over the limit, in case the file grew.
        (&mut f)
            .take(self.max_file_bytes + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(e, path))?;
        if buf.len() as u64 > self.max_file_bytes {
            return Err(too_large(path, buf.len() as u64, self.max_file_bytes));
        }
        Ok((buf, st))
    }

    /// The path a write to `path` replaces: the target if `path` is a
    /// symlink that resolves inside, else `path` itself.
    fn write_target(&self, path: &str) -> ApiResult<String> {
        match self.open_at(path, OFlag::O_PATH) {
            Ok(fd) => {
                let real = self.real_path(&fd, path)?;
                let rel = real
                    .strip_prefix(&self.root_path)
                    .map_err(|_| os_error(Errno::EXDEV, path))?;
                Ok(rel.to_string_lossy().into_owned())
            }
            Err(e) if e.code == Code::NotFound => Ok(path.to_string()),
            Err(e) => Err(e),
        }
    }

    /// §9.4 fs.write: version check, then an atomic replace. Returns the
    /// path actually written (the symlink's target when `path` is a link).
    pub fn write(
        &self,
        path: &str,
        content: &[u8],
        base_version: Option<&str>,
        parents: bool,
    ) -> ApiResult<(Written, String)> {
        self.check(path)?;
        not_root(path)?;
        if content.len() as u64 > self.max_file_bytes {
            return Err(too_large(path, content.len() as u64, self.max_file_bytes));
        }
        let _g = self.write_lock.lock();
        if parents {
            let (dir, _) = split(path);
            if !dir.is_empty() {
                self.mkdir_all(dir)?;
            }
        }
        let target = self.write_target(path)?;
        let current = match self.read_bytes(&target) {
            Ok((b, st)) => Some((b, st)),
            Err(e) if e.code == Code::NotFound => None,
            Err(e) => return Err(e),
        };
        let new_version = version_of(content);
        if let Some((b, st)) = &current {
            if b.as_slice() == content {
                // Idempotent: a retried write succeeds without touching.
                return Ok((
                    Written {
                        version: new_version,
                        size: st.st_size as u64,
                        mtime_ms: mtime_ms(st),
                    },
                    target,
                ));
            }
        }
        let current_version = current.as_ref().map(|(b, _)| version_of(b));
        if current_version.as_deref() != base_version {
            let msg = match (&base_version, &current_version) {
                (None, _) => format!("{path} already exists"),
                (Some(_), None) => format!("{path} no longer exists"),
                (Some(b), Some(_)) => format!("{path} changed since version {b}"),
            };
            return Err(ApiError::new(Code::Conflict, msg)
                .with(json!({"path": path, "current_version": current_version})));
        }
        let mode = current
            .as_ref()
            .map(|(_, st)| st.st_mode & 0o7777)
            .unwrap_or(0o644);
        let (dir, name) = self.parent(&target)?;
        remove_leftovers(&dir, &name);
        let tmp = format!(".{}{}{:016x}", name, TMP_MARKER, rand::random::<u64>());
        let tmp = if tmp.len() > 255 {
            format!(".cove{}{:016x}", TMP_MARKER, rand::random::<u64>())
        } else {
            tmp
        };
        let fd = nix::fcntl::openat(
            &dir,
            tmp.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| os_error(e, path))?;
        let result = (|| {
            let mut f = File::from(fd);
            f.write_all(content).map_err(|e| io_error(e, path))?;
            nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(mode))
                .map_err(|e| os_error(e, path))?;
            f.sync_all().map_err(|e| io_error(e, path))?;
            nix::fcntl::renameat(&dir, tmp.as_str(), &dir, name.as_str())
                .map_err(|e| os_error(e, path))?;
            let st = nix::sys::stat::fstat(&f).map_err(|e| os_error(e, path))?;
            Ok(Written {
                version: new_version,
                size: st.st_size as u64,
                mtime_ms: mtime_ms(&st),
            })
        })();
        if result.is_err() {
            let _ =
                nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        result.map(|w| (w, target))
    }

    pub fn create(&self, path: &str, mode: u32) -> ApiResult<Entry> {
        self.check(path)?;
        not_root(path)?;
        let _g = self.write_lock.lock();
        let (dir, name) = self.parent(path)?;
        let fd = nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            // Permission bits only: the IDE makes no setuid, setgid or
            // sticky files.
            Mode::from_bits_truncate(mode & 0o777),
        )
        .map_err(|e| os_error(e, path))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| os_error(e, path))?;
        Ok(self.entry(&name, &st, None))
    }

    fn mkdir_all(&self, path: &str) -> ApiResult<()> {
        let mut cur = String::new();
        for c in path.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            let (dir, name) = self.parent(&cur)?;
            match nix::sys::stat::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(os_error(e, &cur)),
            }
        }
        // The last component must be a directory (or a link to one inside).
        self.open_at(path, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map(|_| ())
    }

    pub fn mkdir(&self, path: &str, parents: bool) -> ApiResult<Entry> {
        self.check(path)?;
        not_root(path)?;
        let _g = self.write_lock.lock();
        if parents {
            self.mkdir_all(path)?;
        } else {
            let (dir, name) = self.parent(path)?;
            nix::sys::stat::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755))
                .map_err(|e| os_error(e, path))?;
        }
        drop(_g);
        self.stat(path, false, false)
    }

    pub fn rename(&self, from: &str, to: &str, overwrite: bool) -> ApiResult<()> {
        self.check(from)?;
        self.check(to)?;
        not_root(from)?;
        not_root(to)?;
        if to.starts_with(&format!("{from}/")) {
            return Err(ApiError::bad_request(
                "to",
                format!("cannot move {from} into itself"),
            ));
        }
        let _g = self.write_lock.lock();
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        let flags = if overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        nix::fcntl::renameat2(&fd, fname.as_str(), &td, tname.as_str(), flags).map_err(
            |e| match e {
                Errno::ENOENT => {
                    // Which side is missing? The source, unless the target's
                    // parent vanished.
                    if nix::sys::stat::fstatat(&fd, fname.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_err()
                    {
                        os_error(e, from)
                    } else {
                        os_error(e, to)
                    }
                }
                Errno::EEXIST | Errno::ENOTEMPTY | Errno::EISDIR | Errno::ENOTDIR => {
                    os_error(e, to)
                }
                e => os_error(e, from),
            },
        )
    }

    pub fn delete(&self, path: &str, recursive: bool) -> ApiResult<()> {
        self.check(path)?;
        not_root(path)?;
        let _g = self.write_lock.lock();
        let (dir, name) = self.parent(path)?;
        let st = nix::sys::stat::fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| os_error(e, path))?;
        if kind_of(&st) == "dir" {
            if recursive {
                remove_tree(&dir, &name).map_err(|e| os_error(e, path))
            } else {
                nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir)
                    .map_err(|e| os_error(e, path))
            }
        } else {
            nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(|e| os_error(e, path))
        }
    }
}

fn too_large(path: &str, size: u64, limit: u64) -> ApiError {
    ApiError::new(
        Code::TooLarge,
        format!("{path} is {size} bytes; the limit is {limit}"),
    )
    .with(json!({"path": path, "size": size, "limit": limit}))
}

/// Removes `name` under `parent` and everything below it, without ever
/// following a symlink (each level is opened with O_NOFOLLOW).
fn remove_tree(parent: &OwnedFd, name: &str) -> Result<(), Errno> {
    let fd = nix::fcntl::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    {
        let mut d = nix::dir::Dir::from_fd(fd.try_clone().map_err(|_| Errno::EIO)?)?;
        for ent in d.iter() {
            let ent = ent?;
            let n = ent.file_name().to_owned();
            if n.as_bytes() == b"." || n.as_bytes() == b".." {
                continue;
            }
            children.push(n);
        }
    }
    for c in children {
        let st = nix::sys::stat::fstatat(&fd, c.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if kind_of(&st) == "dir" {
            let s = c.to_str().map_err(|_| Errno::EINVAL)?;
            remove_tree(&fd, s)?;
        } else {
            nix::unistd::unlinkat(&fd, c.as_c_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        }
    }
    nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::RemoveDir)
}

/// Removes `.<name>.cove-tmp-<16 hex>` files in `dir`: what saves of
/// `name` left when the workspace was killed between creating their
/// temporary file and renaming it (the chaos harness found hundreds after
/// a long run). cove-pty's writes are serialized, so none of them is in
/// flight. Temporary files of other names, and a long name's
/// `.cove.cove-tmp-…`, wait for a save of their own file.
fn remove_leftovers(dir: &OwnedFd, name: &str) {
    let prefix = format!(".{name}{TMP_MARKER}");
    let Ok(mut d) = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let stale: Vec<std::ffi::CString> = d
        .iter()
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_ok_and(|n| {
                n.strip_prefix(prefix.as_str())
                    .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            })
        })
        .map(|e| e.file_name().to_owned())
        .collect();
    for n in stale {
        let _ = nix::unistd::unlinkat(dir, n.as_c_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;

    #[test]
    fn a_save_removes_what_killed_saves_of_the_file_left() {
        let (d, f) = files();
        std::fs::create_dir(d.path().join("src")).unwrap();
        let left = d.path().join("src/.a.txt.cove-tmp-0123456789abcdef");
        let other = d.path().join("src/.b.txt.cove-tmp-0123456789abcdef");
        let mine = d.path().join("src/.a.txt.cove-tmp-notours");
        for p in [&left, &other, &mine] {
            std::fs::write(p, "half a save").unwrap();
        }
        f.write("src/a.txt", b"one", None, false).unwrap();
        assert!(!left.exists(), "the leftover of a.txt's save stays");
        assert!(
            other.exists() && mine.exists(),
            "only a.txt's own leftovers go"
        );
        assert_eq!(std::fs::read(d.path().join("src/a.txt")).unwrap(), b"one");
        let names: Vec<_> = std::fs::read_dir(d.path().join("src"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    fn files() -> (tempfile::TempDir, Files) {
        let d = tempfile::tempdir().unwrap();
        let f = Files::open(d.path(), &Limits::default()).unwrap();
        (d, f)
    }

    #[test]
    fn path_rules() {
        for ok in ["", "a", "a/b", "a b/ü", "x.txt"] {
            assert!(validate(ok, 4096).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "/etc/passwd",
            "a/../b",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "..",
            ".",
            long.as_str(),
        ] {
            assert_eq!(
                validate(bad, 4096).unwrap_err().code,
                Code::BadPath,
                "{bad:?}"
            );
        }
        assert_eq!(
            validate(&"a/".repeat(3000), 4096).unwrap_err().code,
            Code::BadPath
        );
    }

    #[test]
    fn symlinks_that_leave_the_root_are_refused() {
        let (d, f) = files();
        std::os::unix::fs::symlink("/etc", d.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", d.path().join("up")).unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("src", d.path().join("inside")).unwrap();
        std::os::unix::fs::symlink(d.path().join("src"), d.path().join("absinside")).unwrap();
        for p in ["abs/passwd", "up/etc/passwd", "absinside/a.txt"] {
            assert_eq!(
                f.read_bytes(p).unwrap_err().code,
                Code::OutsideWorkspace,
                "{p}"
            );
            assert_eq!(
                f.write(p, b"x", None, false).unwrap_err().code,
                Code::OutsideWorkspace,
                "{p}"
            );
        }
        assert_eq!(f.list("abs").unwrap_err().code, Code::OutsideWorkspace);
        assert_eq!(f.read_bytes("inside/a.txt").unwrap().0, b"a");
        // The link itself can be inspected and removed.
        assert_eq!(
            f.stat("abs", false, false).unwrap().target.as_deref(),
            Some("/etc")
        );
        f.delete("abs", false).unwrap();
        assert!(std::fs::symlink_metadata("/etc/passwd").is_ok());
    }

    #[test]
    fn writes_check_versions_and_replace_atomically() {
        let (d, f) = files();
        let (w, _) = f.write("a.txt", b"one", None, false).unwrap();
        assert_eq!(w.version, version_of(b"one"));
        let e = f.write("a.txt", b"two", None, false).unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        assert_eq!(e.details.unwrap()["current_version"], version_of(b"one"));
        f.write("a.txt", b"two", Some(&w.version), false).unwrap();
        // A stale writer gets a conflict, never an overwrite.
        let e = f
            .write("a.txt", b"three", Some(&w.version), false)
            .unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        assert_eq!(std::fs::read(d.path().join("a.txt")).unwrap(), b"two");
        // Retrying a write that already happened succeeds.
        f.write("a.txt", b"two", Some(&w.version), false).unwrap();
        // Mode survives, no temp file is left.
        std::fs::set_permissions(
            d.path().join("a.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        f.write("a.txt", b"four", Some(&version_of(b"two")), false)
            .unwrap();
        assert_eq!(f.stat("a.txt", false, false).unwrap().mode, 0o755);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // Through a symlink: the target is replaced, the link stays.
        std::os::unix::fs::symlink("a.txt", d.path().join("l")).unwrap();
        let (_, t) = f
            .write("l", b"five", Some(&version_of(b"four")), false)
            .unwrap();
        assert_eq!(t, "a.txt");
        assert_eq!(f.stat("l", false, false).unwrap().kind, "symlink");
        assert_eq!(std::fs::read(d.path().join("a.txt")).unwrap(), b"five");
        // Parents.
        f.write("deep/er/x", b"x", None, true).unwrap();
        assert_eq!(
            f.write("nope/x", b"x", None, false).unwrap_err().code,
            Code::NotFound
        );
    }

    #[test]
    fn sizes_kinds_and_tree_operations() {
        let (d, mut f) = files();
        f.max_file_bytes = 10;
        assert_eq!(
            f.write("big", &[0u8; 11], None, false).unwrap_err().code,
            Code::TooLarge
        );
        std::fs::write(d.path().join("big"), [1u8; 20]).unwrap();
        assert_eq!(f.read_bytes("big").unwrap_err().code, Code::TooLarge);
        assert_eq!(f.stat("big", false, true).unwrap().version, None);
        nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(f.read_bytes("fifo").unwrap_err().code, Code::NotAFile);
        assert_eq!(f.read_bytes("").unwrap_err().code, Code::NotAFile);
        f.mkdir("a/b/c", true).unwrap();
        assert_eq!(f.mkdir("a", false).unwrap_err().code, Code::AlreadyExists);
        f.create("a/b/c/f", 0o644).unwrap();
        assert_eq!(
            f.create("a/b/c/f", 0o644).unwrap_err().code,
            Code::AlreadyExists
        );
        assert_eq!(f.delete("a", false).unwrap_err().code, Code::NotEmpty);
        assert_eq!(
            f.rename("a", "a/b/x", false).unwrap_err().code,
            Code::BadRequest
        );
        f.mkdir("z", false).unwrap();
        assert_eq!(
            f.rename("a", "z", false).unwrap_err().code,
            Code::AlreadyExists
        );
        f.rename("a", "y", false).unwrap();
        assert_eq!(f.rename("a", "q", false).unwrap_err().code, Code::NotFound);
        let (list, truncated, _) = f.list("").unwrap();
        let names: Vec<_> = list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["big", "fifo", "y", "z"]);
        assert!(!truncated);
        f.delete("y", true).unwrap();
        assert_eq!(f.stat("y", false, false).unwrap_err().code, Code::NotFound);
        assert_eq!(f.delete("", true).unwrap_err().code, Code::BadPath);
        assert_eq!(f.list("big").unwrap_err().code, Code::NotADirectory);
    }
}

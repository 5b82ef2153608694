//! Path operations confined to a root directory.
//!
//! Every access the sidecar makes to the cache directory goes through
//! [`Root`]: paths are resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so no symlink a user (or a corrupt journal) puts in
//! the tree can make the sidecar read or write outside it. Operations on a
//! name are done with the `*at` calls relative to the parent directory's fd.

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Split `a/b/c` into (`a/b`, `c`); the parent of a top-level name is "".
pub fn split(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// fsyncs the directory holding `path`, so a rename or unlink in it is
/// durable (a bare name's directory is the current one).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => File::open(".")?.sync_all(),
        Some(p) => File::open(p)?.sync_all(),
        None => Ok(()),
    }
}

pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

impl Root {
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// An `O_PATH` fd of the directory `rel` ("" is the root).
    pub fn dir(&self, rel: &str) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        Ok(nix::fcntl::openat2(
            self.fd.as_fd(),
            rel,
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(resolve()),
        )?)
    }

    /// Open `rel` (never through a symlink; a symlink as the last component
    /// fails with `ELOOP`).
    pub fn open_file(&self, rel: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        let fd = nix::fcntl::openat2(
            self.fd.as_fd(),
            if rel.is_empty() { "." } else { rel },
            OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC)
                .mode(Mode::from_bits_truncate(mode))
                .resolve(resolve()),
        )?;
        Ok(File::from(fd))
    }

    /// `lstat` of `rel`.
    pub fn lstat(&self, rel: &str) -> io::Result<FileStat> {
        if rel.is_empty() {
            return Ok(nix::sys::stat::fstat(self.fd.as_fd())?);
        }
        let (parent, name) = split(rel);
        let dir = self.dir(parent)?;
        Ok(nix::sys::stat::fstatat(
            &dir,
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// `lstat`, with "does not exist" as `None`.
    pub fn lstat_opt(&self, rel: &str) -> io::Result<Option<FileStat>> {
        match self.lstat(rel) {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            // A symlink where a directory is expected: the path does not
            // exist as a path inside the tree.
            Err(e)
                if e.raw_os_error() == Some(libc::ELOOP)
                    || e.raw_os_error() == Some(libc::EXDEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn readlink(&self, rel: &str) -> io::Result<std::ffi::OsString> {
        let (parent, name) = split(rel);
        let dir = self.dir(parent)?;
        Ok(nix::fcntl::readlinkat(&dir, name)?)
    }

    pub fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = self.open_file(rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Remove `rel` whatever it is (a directory recursively); missing is fine.
    pub fn remove_all(&self, rel: &str) -> io::Result<()> {
        let Some(st) = self.lstat_opt(rel)? else {
            return Ok(());
        };
        let (parent, name) = split(rel);
        let dir = self.dir(parent)?;
        if is_dir(&st) {
            for child in self.list(rel)? {
                self.remove_all(&join(rel, &child))?;
            }
            nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::RemoveDir)?;
        } else {
            nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        }
        Ok(())
    }

    /// Names in directory `rel` (UTF-8 names only; others cannot be stored).
    pub fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let fd = self.open_file(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let mut d = nix::dir::Dir::from_fd(fd.into())?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            match std::str::from_utf8(n) {
                Ok(s) => out.push(s.to_owned()),
                Err(_) => tracing::warn!(
                    name = ?OsStr::from_bytes(n),
                    dir = rel,
                    "skipping a name that is not UTF-8"
                ),
            }
        }
        Ok(out)
    }

    /// Make `rel` and its ancestors directories, replacing anything else
    /// (a file or symlink) in the way. Used where the tree is ours alone
    /// (hydration, restore).
    pub fn force_dirs(&self, rel: &str, mode: u32) -> io::Result<()> {
        if rel.is_empty() {
            return Ok(());
        }
        let mut cur = String::new();
        for comp in rel.split('/') {
            let parent = cur.clone();
            cur = join(&parent, comp);
            match self.lstat_opt(&cur)? {
                Some(st) if is_dir(&st) => continue,
                Some(_) => self.remove_all(&cur)?,
                None => {}
            }
            let dir = self.dir(&parent)?;
            match nix::sys::stat::mkdirat(&dir, comp, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}
pub fn is_file(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}
pub fn is_symlink(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}
pub fn mtime_ns(st: &FileStat) -> i64 {
    st.st_mtime * 1_000_000_000 + st.st_mtime_nsec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_never_lead_outside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("pw")).unwrap();
        let root = Root::open(t.path()).unwrap();
        assert!(root.read("link/secret").is_err());
        assert!(root.read("pw").is_err());
        assert!(root.read("../etc/passwd").is_err());
        assert!(root.lstat_opt("link/secret").unwrap().is_none());
        // lstat of the link itself works and says symlink.
        assert!(is_symlink(&root.lstat("link").unwrap()));
        // force_dirs replaces the symlink instead of following it.
        root.force_dirs("link/sub", 0o755).unwrap();
        assert!(is_dir(&root.lstat("link").unwrap()));
        assert!(outside.path().join("secret").exists());
        assert!(!outside.path().join("sub").exists());
    }
}

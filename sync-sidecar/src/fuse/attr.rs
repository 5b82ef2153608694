//! Conversions between the cache's Unix view and FUSE's: `stat` to
//! attributes, open and time arguments to their syscall forms, and errors
//! to errnos.

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};
use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;
use nix::sys::time::TimeSpec;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub fn nerr(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
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

/// The kind of a directory entry as listed (regular if the cache's file
/// system does not say).
pub fn dir_kind(t: Option<nix::dir::Type>) -> FileType {
    match t {
        Some(nix::dir::Type::Directory) => FileType::Directory,
        Some(nix::dir::Type::Symlink) => FileType::Symlink,
        Some(nix::dir::Type::Fifo) => FileType::NamedPipe,
        Some(nix::dir::Type::Socket) => FileType::Socket,
        Some(nix::dir::Type::CharacterDevice) => FileType::CharDevice,
        Some(nix::dir::Type::BlockDevice) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The attributes of the cache file `st`, which FUSE knows as `ino`.
pub fn file_attr(st: &FileStat, ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
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

/// The flags to open a cache file with for a FUSE open with `flags`.
pub fn open_flags(flags: i32) -> OFlag {
    // The kernel already did O_CREAT/O_EXCL/O_TRUNC handling where it
    // had to; O_DIRECT is dropped (the cache may not support it).
    let keep = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
    OFlag::from_bits_truncate(keep) | OFlag::O_NOFOLLOW
}

/// A setattr time as `utimensat` takes it (`None`: leave it).
pub fn timespec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        assert_eq!(ts(5, 7), UNIX_EPOCH + Duration::new(5, 7));
        // -2 s + 0.25 s = -1.75 s, as stat reports it.
        assert_eq!(
            ts(-2, 250_000_000),
            UNIX_EPOCH - Duration::from_millis(1750)
        );
        let t = UNIX_EPOCH + Duration::new(12, 34);
        let s = timespec(Some(TimeOrNow::SpecificTime(t)));
        assert_eq!((s.tv_sec(), s.tv_nsec()), (12, 34));
        assert_eq!(timespec(None).tv_nsec(), TimeSpec::UTIME_OMIT.tv_nsec());
    }

    #[test]
    fn opens_never_follow_symlinks_nor_recreate() {
        let f = open_flags(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND);
        assert!(f.contains(OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_NOFOLLOW));
        assert!(!f.intersects(OFlag::O_CREAT | OFlag::O_EXCL));
    }

    #[test]
    fn kinds_and_errnos_convert() {
        assert_eq!(kind_of(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(kind_of(libc::S_IFLNK), FileType::Symlink);
        assert_eq!(kind_of(libc::S_IFREG | 0o644), FileType::RegularFile);
        let e = std::io::Error::from_raw_os_error(libc::ENOTEMPTY);
        assert_eq!(errno(e), Errno::ENOTEMPTY);
        assert_eq!(errno(std::io::Error::other("no errno")), Errno::EIO);
        assert_eq!(nerr(nix::errno::Errno::EEXIST), Errno::EEXIST);
    }
}

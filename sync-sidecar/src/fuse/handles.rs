//! The file-handle table: what each FUSE handle number refers to (an open
//! cache file, or a directory listing taken at opendir), and the passthrough
//! decision for each open.
//!
//! With kernel passthrough (Linux 6.9+) reads and writes of a file go
//! straight to its backing cache file and never reach the sidecar. The
//! kernel refuses to mix passthrough and cached opens of one inode
//! (ETXTBSY), so an inode keeps the mode of its open handles: the first
//! open decides by size, later ones follow while any handle is open.
//!
//! Generic over the backing type only so the decision can be tested
//! without a kernel; the mount uses `fuser::BackingId`.

use fuser::{BackingId, FileType};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

pub struct FileH<B = BackingId> {
    pub ino: u64,
    pub file: File,
    /// The workspace's writer id while open for writing.
    pub writer: Option<u64>,
    /// Keeps the backing registered while this handle is open.
    _backing: Option<Arc<B>>,
}

pub enum Handle<B = BackingId> {
    File(FileH<B>),
    /// (inode, kind, name) of each entry, as listed at opendir.
    Dir(Vec<(u64, FileType, String)>),
}

pub type Shared<B> = Arc<Mutex<Handle<B>>>;

pub struct Handles<B = BackingId> {
    map: Mutex<HashMap<u64, Shared<B>>>,
    next: AtomicU64,
    /// Backing of each inode opened with passthrough, while any handle
    /// holds it.
    backing: Mutex<HashMap<u64, Weak<B>>>,
    passthrough: AtomicBool,
    min_size: u64,
}

impl<B> Handles<B> {
    /// Files smaller than `min_size` when opened go through the daemon:
    /// setting up a backing file costs more than a small file's read.
    pub fn new(min_size: u64) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            backing: Mutex::new(HashMap::new()),
            passthrough: AtomicBool::new(false),
            min_size,
        }
    }

    /// The kernel agreed to passthrough (at init).
    pub fn enable_passthrough(&self) {
        self.passthrough.store(true, Ordering::Relaxed);
    }

    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub fn insert(&self, h: Handle<B>) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().insert(fh, Arc::new(Mutex::new(h)));
        fh
    }

    /// Register an open cache file of `ino`.
    pub fn insert_file(&self, ino: u64, file: File, writer: Option<u64>) -> u64 {
        self.insert(Handle::File(FileH {
            ino,
            file,
            writer,
            _backing: None,
        }))
    }

    pub fn get(&self, fh: u64) -> Option<Shared<B>> {
        self.map.lock().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Shared<B>> {
        self.map.lock().remove(&fh)
    }

    /// A second fd of some open handle of `ino` (for unlinked files).
    pub fn file_of(&self, ino: u64) -> Option<File> {
        let hs: Vec<_> = self.map.lock().values().cloned().collect();
        hs.iter().find_map(|h| match &*h.lock() {
            Handle::File(f) if f.ino == ino => f.file.try_clone().ok(),
            _ => None,
        })
    }

    /// The backing file to pass the reads and writes of handle `fh` (of
    /// `ino`, `size` bytes when opened) through to, if it should use
    /// passthrough; `make` registers one with the kernel. The backing lock
    /// makes decide-and-register atomic. The caller then gives the handle
    /// its backing with [`Handles::set_backing`].
    pub fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        size: u64,
        make: impl FnOnce() -> std::io::Result<B>,
    ) -> Option<Arc<B>> {
        if !self.passthrough() {
            return None;
        }
        let mut b = self.backing.lock();
        if let Some(id) = b.get(&ino).and_then(Weak::upgrade) {
            return Some(id);
        }
        let cached_open = self.map.lock().iter().any(|(h, handle)| {
            *h != fh && matches!(&*handle.lock(), Handle::File(f) if f.ino == ino)
        });
        if cached_open || size < self.min_size {
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

    pub fn set_backing(&self, fh: u64, id: &Arc<B>) {
        if let Some(h) = self.map.lock().get(&fh) {
            if let Handle::File(f) = &mut *h.lock() {
                f._backing = Some(id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIN: u64 = 1000;

    fn file() -> File {
        tempfile::tempfile().unwrap()
    }

    /// Open `ino` as the mount does: register, decide, attach.
    fn open(h: &Handles<u32>, ino: u64, size: u64, made: &mut u32) -> (u64, Option<Arc<u32>>) {
        let fh = h.insert_file(ino, file(), None);
        let id = h.backing_for(ino, fh, size, || {
            *made += 1;
            Ok(*made)
        });
        if let Some(id) = &id {
            h.set_backing(fh, id);
        }
        (fh, id)
    }

    #[test]
    fn without_kernel_support_nothing_is_passed_through() {
        let h = Handles::<u32>::new(MIN);
        let mut made = 0;
        assert!(open(&h, 7, 1 << 20, &mut made).1.is_none());
        assert_eq!(made, 0);
    }

    #[test]
    fn large_files_pass_through_small_ones_do_not() {
        let h = Handles::<u32>::new(MIN);
        h.enable_passthrough();
        let mut made = 0;
        assert!(open(&h, 7, MIN - 1, &mut made).1.is_none());
        assert_eq!(open(&h, 8, MIN, &mut made).1.as_deref(), Some(&1));
        assert_eq!(made, 1);
    }

    #[test]
    fn an_inode_keeps_the_mode_of_its_open_handles() {
        let h = Handles::<u32>::new(MIN);
        h.enable_passthrough();
        let mut made = 0;
        // Passthrough first: later opens share the backing, whatever size
        // the file has now.
        let (a, id) = open(&h, 7, MIN, &mut made);
        let (b, again) = open(&h, 7, 0, &mut made);
        assert!(Arc::ptr_eq(id.as_ref().unwrap(), again.as_ref().unwrap()));
        assert_eq!(made, 1);
        drop((id, again));
        // Once every handle is closed the backing goes, and the next open
        // decides afresh: small now, so cached.
        h.remove(a);
        h.remove(b);
        let (c, none) = open(&h, 7, 10, &mut made);
        assert!(none.is_none());
        // Cached first: a large open of the same inode stays cached.
        assert!(open(&h, 7, 1 << 30, &mut made).1.is_none());
        assert_eq!(made, 1);
        // Other inodes are not affected.
        assert!(open(&h, 9, 1 << 30, &mut made).1.is_some());
        h.remove(c);
    }

    #[test]
    fn a_refused_backing_falls_back_to_a_cached_open() {
        let h = Handles::<u32>::new(MIN);
        h.enable_passthrough();
        let fh = h.insert_file(7, file(), None);
        let id = h.backing_for(7, fh, MIN, || Err(std::io::Error::other("refused")));
        assert!(id.is_none());
    }

    #[test]
    fn handles_are_found_by_number_and_inode() {
        let h = Handles::<u32>::new(MIN);
        let mut f = file();
        f.write_all(b"hello").unwrap();
        let fh = h.insert_file(7, f, Some(3));
        let dir = h.insert(Handle::Dir(vec![]));
        assert_ne!(fh, dir);
        assert!(matches!(&*h.get(dir).unwrap().lock(), Handle::Dir(_)));
        match &*h.get(fh).unwrap().lock() {
            Handle::File(f) => assert_eq!((f.ino, f.writer), (7, Some(3))),
            Handle::Dir(_) => panic!("a file handle"),
        }
        // Another fd of the same open file (getattr of an unlinked file).
        let dup = h.file_of(7).unwrap();
        assert_eq!(dup.metadata().unwrap().len(), 5);
        assert!(h.file_of(8).is_none());
        assert!(h.remove(fh).is_some());
        assert!(h.get(fh).is_none() && h.remove(fh).is_none());
        assert!(h.file_of(7).is_none());
    }
}

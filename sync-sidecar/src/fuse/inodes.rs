//! The inode table: which paths the kernel knows each inode by.
//!
//! FUSE addresses nodes by inode number; the cache is addressed by path. An
//! inode number is the cache file's own (root swapped with 1, the number
//! FUSE reserves for the root), so hard links share one entry and nothing
//! is kept on disk. The table holds, for each inode the kernel has looked
//! up, the names it was told (several for hard links, newest first) and the
//! lookup count; `forget` drops an entry when the count reaches zero.
//!
//! The table must never name a path that no longer leads to its inode (an
//! operation on the inode would reach another file), so every name change
//! the mount makes is reported here: unlink/rmdir drop one name, a file
//! rename moves one name, a directory rename or exchange moves every known
//! path below it.

use parking_lot::RwLock;
use std::collections::HashMap;

/// FUSE's inode number of the root directory.
pub const ROOT: u64 = 1;

struct Inode {
    /// Known names of this inode (several for hard links), newest first.
    paths: Vec<String>,
    nlookup: u64,
}

pub struct InodeTable {
    /// The cache root's own inode number (it becomes [`ROOT`]).
    root_st_ino: u64,
    map: RwLock<HashMap<u64, Inode>>,
}

/// Replace the prefix `from` of `p` (the path itself or a path below it)
/// with `to`; `None` if `p` is not under `from`.
fn moved(p: &str, from: &str, to: &str) -> Option<String> {
    let rest = p.strip_prefix(from)?;
    (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
}

impl InodeTable {
    pub fn new(root_st_ino: u64) -> Self {
        Self {
            root_st_ino,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The FUSE inode number of the cache file with inode `st_ino`.
    pub fn ino_of(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_st_ino {
            ROOT
        } else if st_ino == ROOT {
            self.root_st_ino
        } else {
            st_ino
        }
    }

    /// The newest known name of `ino` ("" for the root).
    pub fn path_of(&self, ino: u64) -> Option<String> {
        if ino == ROOT {
            return Some(String::new());
        }
        self.map
            .read()
            .get(&ino)
            .and_then(|i| i.paths.first().cloned())
    }

    /// Every known name of `ino` (none for the root, which has no name).
    pub fn paths_of(&self, ino: u64) -> Vec<String> {
        if ino == ROOT {
            return vec![];
        }
        self.map
            .read()
            .get(&ino)
            .map(|i| i.paths.clone())
            .unwrap_or_default()
    }

    /// The kernel now knows `path` as `ino` (one more lookup to forget).
    pub fn remember(&self, ino: u64, path: &str) {
        if ino == ROOT {
            return;
        }
        let mut t = self.map.write();
        let e = t.entry(ino).or_insert(Inode {
            paths: vec![],
            nlookup: 0,
        });
        e.nlookup += 1;
        if let Some(i) = e.paths.iter().position(|p| p == path) {
            e.paths.remove(i);
        }
        e.paths.insert(0, path.to_owned());
    }

    /// The kernel dropped `nlookup` lookups of `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let mut t = self.map.write();
        if let Some(i) = t.get_mut(&ino) {
            i.nlookup = i.nlookup.saturating_sub(nlookup);
            if i.nlookup == 0 {
                t.remove(&ino);
            }
        }
    }

    /// `path` no longer names `ino` (unlink, rmdir: a removed directory is
    /// empty, so only its own inode is affected).
    pub fn unlinked(&self, ino: u64, path: &str) {
        if let Some(i) = self.map.write().get_mut(&ino) {
            i.paths.retain(|p| p != path);
        }
    }

    /// `from` (inode `ino`, a directory if `is_dir`) was renamed over `to`
    /// (which was inode `replaced`, if it existed). A file rename touches
    /// two inodes; a directory rename renames every known path below it.
    /// The kernel never sends a rename between two names of one inode.
    pub fn renamed(&self, from: &str, to: &str, ino: u64, is_dir: bool, replaced: Option<u64>) {
        let mut t = self.map.write();
        if let Some(r) = replaced {
            if let Some(i) = t.get_mut(&r) {
                i.paths.retain(|p| p != to);
            }
        }
        if !is_dir {
            if let Some(i) = t.get_mut(&ino) {
                for p in i.paths.iter_mut() {
                    if p == from {
                        *p = to.to_owned();
                    }
                }
            }
            return;
        }
        for i in t.values_mut() {
            for p in i.paths.iter_mut() {
                if let Some(n) = moved(p, from, to) {
                    *p = n;
                }
            }
        }
    }

    /// `a` and `b` were exchanged (RENAME_EXCHANGE): each name, and every
    /// path below it, now leads to what the other did.
    pub fn exchanged(&self, a: &str, b: &str) {
        let mut t = self.map.write();
        for i in t.values_mut() {
            for p in i.paths.iter_mut() {
                if let Some(n) = moved(p, a, b).or_else(|| moved(p, b, a)) {
                    *p = n;
                }
            }
        }
    }

    #[cfg(test)]
    fn lookups(&self, ino: u64) -> u64 {
        self.map.read().get(&ino).map_or(0, |i| i.nlookup)
    }

    #[cfg(test)]
    fn inodes(&self) -> Vec<u64> {
        self.map.read().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn names(t: &InodeTable, ino: u64) -> BTreeSet<String> {
        t.paths_of(ino).into_iter().collect()
    }

    #[test]
    fn the_root_swaps_numbers_with_inode_one() {
        let t = InodeTable::new(4711);
        assert_eq!(t.ino_of(4711), ROOT);
        assert_eq!(t.ino_of(ROOT), 4711);
        assert_eq!(t.ino_of(99), 99);
        assert_eq!(t.path_of(ROOT).as_deref(), Some(""));
        assert!(t.paths_of(ROOT).is_empty());
        // The root is never an entry, so it is never forgotten.
        t.remember(ROOT, "");
        t.forget(ROOT, 5);
        assert!(t.inodes().is_empty());
        assert_eq!(t.path_of(ROOT).as_deref(), Some(""));
    }

    #[test]
    fn lookups_count_until_forgotten_and_the_newest_name_wins() {
        let t = InodeTable::new(2);
        assert_eq!(t.path_of(10), None);
        t.remember(10, "a");
        t.remember(10, "b"); // a hard link
        t.remember(10, "a");
        assert_eq!(t.path_of(10).as_deref(), Some("a"));
        assert_eq!(t.paths_of(10), ["a", "b"]);
        assert_eq!(t.lookups(10), 3);
        t.forget(10, 2);
        assert_eq!(t.path_of(10).as_deref(), Some("a"));
        t.forget(10, 7); // more than known: saturates, and the entry goes
        assert_eq!(t.path_of(10), None);
        assert!(t.inodes().is_empty());
        t.forget(10, 1); // unknown inodes are ignored
    }

    #[test]
    fn unlink_drops_one_name_of_a_hard_linked_file() {
        let t = InodeTable::new(2);
        t.remember(10, "a");
        t.remember(10, "d/b");
        t.unlinked(10, "d/b");
        assert_eq!(t.paths_of(10), ["a"]);
        t.unlinked(10, "a");
        // Still open or looked up: the entry stays until forgotten.
        assert_eq!(t.path_of(10), None);
        assert_eq!(t.lookups(10), 2);
    }

    #[test]
    fn a_file_rename_moves_one_name_and_unnames_the_replaced_file() {
        let t = InodeTable::new(2);
        t.remember(10, "a");
        t.remember(10, "link");
        t.remember(11, "b");
        t.renamed("a", "b", 10, false, Some(11));
        assert_eq!(names(&t, 10), set(&["b", "link"]));
        assert_eq!(t.path_of(11), None);
        // A file named like a directory prefix is not below it.
        t.remember(12, "bb");
        t.renamed("b", "c", 10, false, None);
        assert_eq!(names(&t, 10), set(&["c", "link"]));
        assert_eq!(t.paths_of(12), ["bb"]);
    }

    #[test]
    fn a_directory_rename_moves_its_whole_subtree_and_nothing_beside_it() {
        let t = InodeTable::new(2);
        t.remember(10, "src");
        t.remember(11, "src/a");
        t.remember(12, "src/deep/b");
        t.remember(12, "other/b"); // a hard link outside the tree
        t.remember(13, "srcs");
        t.remember(14, "dst"); // an empty directory, replaced
        t.renamed("src", "dst", 10, true, Some(14));
        assert_eq!(t.paths_of(10), ["dst"]);
        assert_eq!(t.paths_of(11), ["dst/a"]);
        assert_eq!(names(&t, 12), set(&["dst/deep/b", "other/b"]));
        assert_eq!(t.paths_of(13), ["srcs"]);
        assert_eq!(t.path_of(14), None);
    }

    #[test]
    fn an_exchange_swaps_both_subtrees() {
        let t = InodeTable::new(2);
        t.remember(10, "x");
        t.remember(11, "x/in-x");
        t.remember(12, "y");
        t.remember(13, "y/in-y");
        t.remember(14, "xy");
        t.exchanged("x", "y");
        assert_eq!(t.paths_of(10), ["y"]);
        assert_eq!(t.paths_of(11), ["y/in-x"]);
        assert_eq!(t.paths_of(12), ["x"]);
        assert_eq!(t.paths_of(13), ["x/in-y"]);
        assert_eq!(t.paths_of(14), ["xy"]);
    }

    // ---- property test against a model -------------------------------

    /// A name in the model: the node it leads to, and whether the kernel
    /// holds it (looked up and not forgotten since).
    #[derive(Debug, Clone, Copy)]
    struct Name {
        ino: u64,
        dir: bool,
        known: bool,
    }

    /// A plain model of the cache and the kernel: every path and what it
    /// names, and each node's lookup count.
    struct Model {
        names: BTreeMap<String, Name>,
        lookups: BTreeMap<u64, u64>,
        next: u64,
    }

    #[derive(Debug, Clone)]
    enum FsOp {
        Create(String),
        Mkdir(String),
        Link(String, String),
        Rename(String, String),
        Exchange(String, String),
        Unlink(String),
        Rmdir(String),
        Lookup(String),
        Forget(String, u64),
    }

    fn parent(p: &str) -> &str {
        crate::fsutil::split(p).0
    }

    fn under(p: &str, dir: &str) -> bool {
        p.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
    }

    /// Move `from` and every path below it to `to`.
    fn rewrite(m: &mut BTreeMap<String, Name>, from: &str, to: &str) {
        let keys: Vec<String> = m
            .keys()
            .filter(|k| moved(k, from, to).is_some())
            .cloned()
            .collect();
        let vals: Vec<(String, Name)> = keys
            .into_iter()
            .map(|k| (k.clone(), m.remove(&k).unwrap()))
            .collect();
        for (k, v) in vals {
            m.insert(moved(&k, from, to).unwrap(), v);
        }
    }

    impl Model {
        fn new() -> Self {
            Self {
                names: BTreeMap::new(),
                lookups: BTreeMap::new(),
                next: 2,
            }
        }

        fn is_dir(&self, p: &str) -> bool {
            p.is_empty() || self.names.get(p).is_some_and(|n| n.dir)
        }

        fn is_empty_dir(&self, p: &str) -> bool {
            self.is_dir(p) && !self.names.keys().any(|k| under(k, p))
        }

        /// The kernel walks to `p`: every name on the way it does not hold
        /// is looked up (and counted) first.
        fn walk(&mut self, t: &InodeTable, p: &str) {
            if p.is_empty() {
                return;
            }
            let mut at = String::new();
            for part in p.split('/') {
                at = crate::fsutil::join(&at, part);
                if !self.names[&at].known {
                    self.lookup(t, &at);
                }
            }
        }

        fn lookup(&mut self, t: &InodeTable, p: &str) {
            let n = self.names.get_mut(p).unwrap();
            n.known = true;
            *self.lookups.entry(n.ino).or_default() += 1;
            t.remember(n.ino, p);
        }

        fn make(&mut self, t: &InodeTable, p: &str, dir: bool) {
            if self.names.contains_key(p) || !self.is_dir(parent(p)) {
                return;
            }
            self.walk(t, parent(p));
            let ino = self.next;
            self.next += 1;
            let known = false;
            self.names.insert(p.to_owned(), Name { ino, dir, known });
            self.lookup(t, p);
        }

        fn apply(&mut self, t: &InodeTable, op: &FsOp) {
            match op {
                FsOp::Create(p) => self.make(t, p, false),
                FsOp::Mkdir(p) => self.make(t, p, true),
                FsOp::Link(src, dst) => {
                    let Some(&Name {
                        ino, dir: false, ..
                    }) = self.names.get(src)
                    else {
                        return;
                    };
                    if self.names.contains_key(dst) || !self.is_dir(parent(dst)) {
                        return;
                    }
                    self.walk(t, src);
                    self.walk(t, parent(dst));
                    let (dir, known) = (false, false);
                    self.names.insert(dst.clone(), Name { ino, dir, known });
                    self.lookup(t, dst);
                }
                FsOp::Rename(from, to) => {
                    let Some(&Name { ino, dir, .. }) = self.names.get(from) else {
                        return;
                    };
                    if !self.is_dir(parent(to)) || under(to, from) || under(from, to) {
                        return;
                    }
                    let replaced = self.names.get(to).copied();
                    match replaced {
                        Some(r) if r.ino == ino => return, // the VFS does nothing
                        Some(r) if r.dir != dir => return, // EISDIR, ENOTDIR
                        Some(_) if dir && !self.is_empty_dir(to) => return,
                        _ => {}
                    }
                    self.walk(t, from);
                    if replaced.is_some() {
                        self.walk(t, to);
                    } else {
                        self.walk(t, parent(to));
                    }
                    self.names.remove(to);
                    rewrite(&mut self.names, from, to);
                    t.renamed(from, to, ino, dir, replaced.map(|r| r.ino));
                }
                FsOp::Exchange(a, b) => {
                    if a == b || under(a, b) || under(b, a) {
                        return;
                    }
                    if !self.names.contains_key(a) || !self.names.contains_key(b) {
                        return;
                    }
                    self.walk(t, a);
                    self.walk(t, b);
                    let tmp = "\u{0}swap"; // no path starts with NUL
                    rewrite(&mut self.names, a, tmp);
                    rewrite(&mut self.names, b, a);
                    rewrite(&mut self.names, tmp, b);
                    t.exchanged(a, b);
                }
                FsOp::Unlink(p) | FsOp::Rmdir(p) => {
                    let Some(&Name { ino, dir, .. }) = self.names.get(p) else {
                        return;
                    };
                    if dir != matches!(op, FsOp::Rmdir(_)) || (dir && !self.is_empty_dir(p)) {
                        return;
                    }
                    self.walk(t, p);
                    self.names.remove(p);
                    t.unlinked(ino, p);
                }
                FsOp::Lookup(p) => {
                    if self.names.contains_key(p) {
                        self.walk(t, parent(p));
                        self.lookup(t, p);
                    }
                }
                FsOp::Forget(p, n) => {
                    let Some(&Name { ino, .. }) = self.names.get(p) else {
                        return;
                    };
                    let Some(&have) = self.lookups.get(&ino) else {
                        return; // the kernel forgets only what it holds
                    };
                    if have > *n {
                        self.lookups.insert(ino, have - n);
                        t.forget(ino, *n);
                        return;
                    }
                    // The last lookup: the kernel drops every name of the
                    // node, which it cannot while one pins a child.
                    let mine: Vec<String> = self
                        .names
                        .iter()
                        .filter(|(_, v)| v.ino == ino && v.known)
                        .map(|(k, _)| k.clone())
                        .collect();
                    let pinned = self
                        .names
                        .iter()
                        .any(|(k, v)| v.known && mine.iter().any(|m| under(k, m)));
                    if pinned {
                        return;
                    }
                    for m in &mine {
                        self.names.get_mut(m).unwrap().known = false;
                    }
                    self.lookups.remove(&ino);
                    t.forget(ino, *n);
                }
            }
        }

        /// The table holds exactly the names the kernel holds, each for the
        /// node it leads to, with the kernel's lookup counts.
        fn check(&self, t: &InodeTable) {
            let mut want: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
            for (k, v) in &self.names {
                if v.known {
                    want.entry(v.ino).or_default().insert(k.clone());
                }
            }
            for (&ino, &n) in &self.lookups {
                assert_eq!(t.lookups(ino), n, "lookups of {ino}");
                let paths = want.remove(&ino).unwrap_or_default();
                assert_eq!(names(t, ino), paths, "names of {ino}");
                match t.path_of(ino) {
                    Some(p) => assert!(paths.contains(&p), "{ino} is not at {p}"),
                    None => assert!(paths.is_empty(), "{ino} has no path"),
                }
            }
            assert!(want.is_empty(), "names of forgotten nodes: {want:?}");
            let mut inodes = t.inodes();
            inodes.sort();
            assert_eq!(inodes, self.lookups.keys().copied().collect::<Vec<_>>());
        }
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        /// Paths over a few names, two levels deep, so that operations
        /// collide: replace, move into, exchange, link across directories.
        fn path() -> impl Strategy<Value = String> {
            let name = prop::sample::select(vec!["a", "b", "ab"]);
            prop::collection::vec(name, 1..=3).prop_map(|v| v.join("/"))
        }

        fn op() -> impl Strategy<Value = FsOp> {
            prop_oneof![
                3 => path().prop_map(FsOp::Create),
                3 => path().prop_map(FsOp::Mkdir),
                2 => (path(), path()).prop_map(|(a, b)| FsOp::Link(a, b)),
                4 => (path(), path()).prop_map(|(a, b)| FsOp::Rename(a, b)),
                1 => (path(), path()).prop_map(|(a, b)| FsOp::Exchange(a, b)),
                2 => path().prop_map(FsOp::Unlink),
                2 => path().prop_map(FsOp::Rmdir),
                2 => path().prop_map(FsOp::Lookup),
                2 => (path(), 1..4u64).prop_map(|(p, n)| FsOp::Forget(p, n)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_table_matches_a_model_of_paths(ops in prop::collection::vec(op(), 1..80)) {
                let t = InodeTable::new(1_000_000);
                let mut m = Model::new();
                for op in &ops {
                    m.apply(&t, op);
                    m.check(&t);
                }
            }
        }
    }
}

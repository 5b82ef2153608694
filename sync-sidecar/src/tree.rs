//! The tree a journal describes: path → node, built by replaying ops.
//!
//! The sidecar keeps one of these as its *index*: the last committed state,
//! without file bodies (a hash stands in for small files), so 20,000 files
//! cost a few MB. Hydration, fork and restore build one with bodies.
//!
//! Paths are keys of a `BTreeMap`, so a directory's subtree is the key range
//! `dir/` .. `dir0` (`'0'` is the byte after `'/'`), which makes renames and
//! deletes of whole directories range operations.

use crate::format::{check_path, ChunkRef, FormatError, Op};
use bytes::Bytes;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Dir,
    /// A small file: its hash, and its body when the tree keeps bodies.
    Inline {
        hash: [u8; 32],
        body: Option<Bytes>,
    },
    Chunks(Vec<ChunkRef>),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Permission bits (`0o7777`); the kind is in `content`.
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
    pub content: Content,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir)
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    keep_bodies: bool,
}

/// Key range of everything strictly below `dir`.
fn below(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

impl Tree {
    /// An empty tree; `keep_bodies` keeps inline bodies (hydration, fork).
    pub fn new(keep_bodies: bool) -> Self {
        Self {
            nodes: BTreeMap::new(),
            keep_bodies,
        }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All nodes in path order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Paths strictly below `dir` (all of them when `dir` is empty).
    pub fn subtree<'a>(
        &'a self,
        dir: &str,
    ) -> Box<dyn Iterator<Item = (&'a String, &'a Node)> + 'a> {
        if dir.is_empty() {
            return Box::new(self.nodes.iter());
        }
        let (lo, hi) = below(dir);
        Box::new(self.nodes.range(lo..hi))
    }

    fn remove_subtree(&mut self, path: &str) {
        self.nodes.remove(path);
        let (lo, hi) = below(path);
        let keys: Vec<String> = self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.nodes.remove(&k);
        }
    }

    /// Make every ancestor of `path` a directory (a file in the way is
    /// replaced, as the op that needs the directory is newer).
    fn ensure_parents(&mut self, path: &str) {
        let mut idx = 0;
        while let Some(i) = path[idx..].find('/') {
            let parent = &path[..idx + i];
            match self.nodes.get(parent) {
                Some(n) if n.is_dir() => {}
                _ => {
                    self.nodes.insert(
                        parent.to_owned(),
                        Node {
                            mode: 0o755,
                            mtime: 0,
                            size: 0,
                            content: Content::Dir,
                        },
                    );
                }
            }
            idx += i + 1;
        }
    }

    /// Put a non-directory node at `path`, replacing whatever was there.
    fn put_leaf(&mut self, path: &str, node: Node) {
        if self.nodes.get(path).is_some_and(Node::is_dir) {
            self.remove_subtree(path);
        }
        self.ensure_parents(path);
        self.nodes.insert(path.to_owned(), node);
    }

    /// Whether a rename from `from` to `to` changes this tree: not when
    /// the names are equal, `from` does not exist, or `to` is inside
    /// `from` (refused, as the kernel does). Otherwise [`Tree::apply`]
    /// moves the subtree.
    pub fn rename_moves(&self, from: &str, to: &str) -> bool {
        from != to
            && self.nodes.contains_key(from)
            && !(to.len() > from.len() && to.starts_with(from) && to.as_bytes()[from.len()] == b'/')
    }

    /// Apply one op with the lenient semantics documented on [`Op`].
    pub fn apply(&mut self, op: &Op) -> Result<(), FormatError> {
        op.validate()?;
        match op {
            Op::Mkdir { path, mode } => match self.nodes.get_mut(path) {
                Some(n) if n.is_dir() => n.mode = mode & 0o7777,
                _ => {
                    self.ensure_parents(path);
                    self.nodes.insert(
                        path.clone(),
                        Node {
                            mode: mode & 0o7777,
                            mtime: 0,
                            size: 0,
                            content: Content::Dir,
                        },
                    );
                }
            },
            Op::Write {
                path,
                mode,
                mtime,
                size,
                inline,
                chunks,
            } => {
                let content = match inline {
                    Some(b) => Content::Inline {
                        hash: sha256(b),
                        body: self.keep_bodies.then(|| Bytes::copy_from_slice(b)),
                    },
                    None => Content::Chunks(chunks.clone()),
                };
                self.put_leaf(
                    path,
                    Node {
                        mode: mode & 0o7777,
                        mtime: *mtime,
                        size: *size,
                        content,
                    },
                );
            }
            Op::Symlink {
                path,
                target,
                mtime,
            } => self.put_leaf(
                path,
                Node {
                    mode: 0o777,
                    mtime: *mtime,
                    size: target.len() as u64,
                    content: Content::Symlink(target.clone()),
                },
            ),
            Op::SetAttr { path, mode, mtime } => {
                if let Some(n) = self.nodes.get_mut(path) {
                    if !matches!(n.content, Content::Symlink(_)) {
                        n.mode = mode & 0o7777;
                    }
                    if !n.is_dir() {
                        n.mtime = *mtime;
                    }
                }
            }
            Op::Rename { from, to } => {
                if !self.rename_moves(from, to) {
                    return Ok(());
                }
                let (lo, hi) = below(from);
                let moved: Vec<(String, Node)> = std::iter::once(from.clone())
                    .chain(self.nodes.range(lo..hi).map(|(k, _)| k.clone()))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .filter_map(|k| self.nodes.remove(&k).map(|n| (k, n)))
                    .collect();
                self.remove_subtree(to);
                self.ensure_parents(to);
                for (k, n) in moved {
                    let nk = format!("{to}{}", &k[from.len()..]);
                    self.nodes.insert(nk, n);
                }
            }
            Op::Delete { path } => self.remove_subtree(path),
        }
        Ok(())
    }

    /// The ops that rebuild this tree from nothing, parents first: the body
    /// of a checkpoint. Needs a tree that kept its bodies.
    pub fn to_ops(&self) -> impl Iterator<Item = Result<Op, &String>> + '_ {
        self.nodes
            .iter()
            .map(|(path, n)| node_op(path, n).ok_or(path))
    }
}

/// The op that creates `node` at `path`; `None` for an inline file whose body
/// was not kept.
pub fn node_op(path: &str, n: &Node) -> Option<Op> {
    Some(match &n.content {
        Content::Dir => Op::Mkdir {
            path: path.to_owned(),
            mode: n.mode,
        },
        Content::Symlink(t) => Op::Symlink {
            path: path.to_owned(),
            target: t.clone(),
            mtime: n.mtime,
        },
        Content::Inline { body, .. } => Op::Write {
            path: path.to_owned(),
            mode: n.mode,
            mtime: n.mtime,
            size: n.size,
            inline: Some(ByteBuf::from(body.as_ref()?.to_vec())),
            chunks: vec![],
        },
        Content::Chunks(c) => Op::Write {
            path: path.to_owned(),
            mode: n.mode,
            mtime: n.mtime,
            size: n.size,
            inline: None,
            chunks: c.clone(),
        },
    })
}

/// `path` is `dir` or lies below it (`""` holds everything).
pub fn is_within(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Validate a path from any source (kernel, client, store).
pub fn valid(path: &str) -> bool {
    check_path(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(path: &str, body: &[u8]) -> Op {
        Op::Write {
            path: path.into(),
            mode: 0o644,
            mtime: 1,
            size: body.len() as u64,
            inline: Some(ByteBuf::from(body.to_vec())),
            chunks: vec![],
        }
    }

    fn paths(t: &Tree) -> Vec<&str> {
        t.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn directory_rename_moves_the_subtree_and_not_its_siblings() {
        let mut t = Tree::new(true);
        for op in [
            w("a/x", b"1"),
            w("a/y/z", b"2"),
            w("a0", b"3"),
            w("a.b", b"4"),
        ] {
            t.apply(&op).unwrap();
        }
        t.apply(&Op::Rename {
            from: "a".into(),
            to: "b/c".into(),
        })
        .unwrap();
        assert_eq!(
            paths(&t),
            ["a.b", "a0", "b", "b/c", "b/c/x", "b/c/y", "b/c/y/z"]
        );
    }

    #[test]
    fn lenient_ops() {
        let mut t = Tree::new(false);
        t.apply(&Op::Rename {
            from: "missing".into(),
            to: "x".into(),
        })
        .unwrap();
        t.apply(&Op::Delete {
            path: "nope".into(),
        })
        .unwrap();
        assert!(t.is_empty());
        t.apply(&w("d/f", b"x")).unwrap();
        // A file replaces a directory and its subtree.
        t.apply(&w("d", b"now a file")).unwrap();
        assert_eq!(paths(&t), ["d"]);
        // Rename into its own subtree is refused (as the kernel does).
        t.apply(&Op::Mkdir {
            path: "e".into(),
            mode: 0o755,
        })
        .unwrap();
        t.apply(&Op::Rename {
            from: "e".into(),
            to: "e/f".into(),
        })
        .unwrap();
        assert_eq!(paths(&t), ["d", "e"]);
        assert!(t.apply(&w("../x", b"")).is_err());
    }
}

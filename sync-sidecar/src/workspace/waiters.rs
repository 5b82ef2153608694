//! Who waits for durability: each flush (an `fsync`, an API flush, a
//! shutdown) is a waiter for certain paths at certain generations, and for
//! a batch taken after it asked. The committer settles waiters after each
//! batch: a waiter is answered with the new head once every path it needs
//! was committed at its generation or later (or is no longer dirty at all:
//! committed by an earlier batch, renamed away, deleted, unreadable) and a
//! batch taken after the request has landed (which carries renames, which
//! are not paths). Fencing or the committer's end fails every waiter.

use super::FlushError;
use crate::format::CommitId;
use std::collections::{HashMap, HashSet};
use tokio::sync::oneshot;

pub type Answer = Result<CommitId, FlushError>;

struct Waiter {
    /// Path → generation that must be committed (or later).
    need: HashMap<String, u64>,
    /// A batch taken after the request must succeed (carries renames).
    min_batch: u64,
    /// Wants everything, files still open for writing included.
    all: bool,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
pub struct Waiters(Vec<Waiter>);

/// What a flush of `paths` (everything, if `None`) waits for: every dirty
/// path it covers at its current generation. A path covers itself and
/// everything below it; "" covers everything.
pub fn need(
    dirty: &HashMap<String, u64>,
    paths: Option<&[String]>,
) -> Result<HashMap<String, u64>, FlushError> {
    let Some(ps) = paths else {
        return Ok(dirty.clone());
    };
    let mut need = HashMap::new();
    for p in ps {
        if !crate::tree::valid(p) && !p.is_empty() {
            return Err(FlushError::BadPath(p.clone()));
        }
        let prefix = format!("{p}/");
        for (k, g) in dirty.iter() {
            if p.is_empty() || k == p || k.starts_with(&prefix) {
                need.insert(k.clone(), *g);
            }
        }
    }
    Ok(need)
}

impl Waiters {
    /// Wait for `need` and for batch `min_batch`; `all`: for everything.
    pub fn add(
        &mut self,
        need: HashMap<String, u64>,
        min_batch: u64,
        all: bool,
    ) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.0.push(Waiter {
            need,
            min_batch,
            all,
            tx,
        });
        rx
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Some waiter wants everything, files open for writing included.
    pub fn want_all(&self) -> bool {
        self.0.iter().any(|w| w.all)
    }

    /// The paths some waiter needs: committed even while open for writing.
    pub fn forced(&self) -> HashSet<&String> {
        self.0.iter().flat_map(|w| w.need.keys()).collect()
    }

    /// Batch `batch_no` landed, leaving the tree at `head`: it committed
    /// `committed` (path, generation read), and `dirty` is what is still
    /// dirty. Answer every waiter this satisfies.
    pub fn settle(
        &mut self,
        batch_no: u64,
        head: CommitId,
        committed: &[(String, u64)],
        dirty: &HashMap<String, u64>,
    ) {
        let committed: HashMap<&String, u64> = committed.iter().map(|(p, g)| (p, *g)).collect();
        let mut keep = Vec::new();
        for mut w in std::mem::take(&mut self.0) {
            w.need.retain(|p, need| {
                let done_now = committed.get(p).is_some_and(|g| g >= need);
                let gone = !dirty.contains_key(p);
                !(done_now || gone)
            });
            if w.need.is_empty() && batch_no >= w.min_batch {
                let _ = w.tx.send(Ok(head));
            } else {
                keep.push(w);
            }
        }
        self.0 = keep;
    }

    /// Answer every waiter with `e`.
    pub fn fail(&mut self, e: &FlushError) {
        for w in std::mem::take(&mut self.0) {
            let _ = w.tx.send(Err(e.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    fn map(v: &[(&str, u64)]) -> HashMap<String, u64> {
        v.iter().map(|(p, g)| (p.to_string(), *g)).collect()
    }

    fn list(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(p, g)| (p.to_string(), *g)).collect()
    }

    fn at(seq: u64) -> CommitId {
        CommitId { epoch: 1, seq }
    }

    fn paths(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_flush_needs_the_dirty_paths_it_covers_at_their_generation() {
        let dirty = map(&[("src/a.rs", 3), ("src/deep/b.rs", 5), ("srcs", 6), ("c", 7)]);
        assert_eq!(need(&dirty, None).unwrap(), dirty);
        assert_eq!(
            need(&dirty, Some(&paths(&["src"]))).unwrap(),
            map(&[("src/a.rs", 3), ("src/deep/b.rs", 5)])
        );
        assert_eq!(
            need(&dirty, Some(&paths(&["c", "nothing"]))).unwrap(),
            map(&[("c", 7)])
        );
        assert_eq!(need(&dirty, Some(&paths(&[""]))).unwrap(), dirty);
        assert!(matches!(
            need(&dirty, Some(&paths(&["c", "../x"]))),
            Err(FlushError::BadPath(p)) if p == "../x"
        ));
    }

    #[test]
    fn a_waiter_is_answered_once_its_generations_are_committed() {
        let mut w = Waiters::default();
        let mut rx = w.add(map(&[("a", 3), ("b", 4)]), 1, false);
        let dirty = map(&[("a", 3), ("b", 4)]);
        assert_eq!(w.forced().len(), 2);
        // "a" committed at an older generation than needed: still waiting.
        w.settle(1, at(1), &list(&[("a", 2)]), &dirty);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // "a" now; "b" still dirty.
        w.settle(2, at(2), &list(&[("a", 3)]), &map(&[("b", 4)]));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // "b" at a later generation than needed also satisfies it.
        w.settle(3, at(3), &list(&[("b", 9)]), &HashMap::new());
        assert_eq!(rx.try_recv().unwrap().unwrap(), at(3));
        assert!(w.is_empty());
    }

    #[test]
    fn a_path_no_longer_dirty_counts_as_done() {
        // Renamed away, deleted, reported unreadable, or committed by a
        // batch taken before the waiter: nothing left to wait for.
        let mut w = Waiters::default();
        let mut rx = w.add(map(&[("old-name", 3)]), 1, false);
        w.settle(1, at(7), &[], &map(&[("new-name", 4)]));
        assert_eq!(rx.try_recv().unwrap().unwrap(), at(7));
    }

    #[test]
    fn a_waiter_waits_for_a_batch_taken_after_it_asked() {
        // Nothing dirty (a flush right after a rename, say): it still needs
        // the next batch, which carries the rename.
        let mut w = Waiters::default();
        let mut rx = w.add(HashMap::new(), 5, true);
        assert!(w.want_all());
        w.settle(4, at(4), &[], &HashMap::new());
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        w.settle(5, at(5), &[], &HashMap::new());
        assert_eq!(rx.try_recv().unwrap().unwrap(), at(5));
        assert!(!w.want_all());
    }

    #[test]
    fn only_the_satisfied_waiters_are_answered() {
        let mut w = Waiters::default();
        let mut a = w.add(map(&[("a", 1)]), 1, false);
        let mut b = w.add(map(&[("b", 2)]), 1, false);
        w.settle(1, at(1), &list(&[("a", 1)]), &map(&[("b", 2)]));
        assert_eq!(a.try_recv().unwrap().unwrap(), at(1));
        assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(w.forced().into_iter().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn fencing_fails_every_waiter() {
        let mut w = Waiters::default();
        let mut a = w.add(map(&[("a", 1)]), 1, false);
        let mut b = w.add(HashMap::new(), 1, true);
        w.fail(&FlushError::Fenced);
        assert!(matches!(a.try_recv(), Ok(Err(FlushError::Fenced))));
        assert!(matches!(b.try_recv(), Ok(Err(FlushError::Fenced))));
        assert!(w.is_empty());
        // A waiter that gave up (its flush was cancelled) is no obstacle.
        drop(w.add(map(&[("a", 1)]), 1, false));
        w.settle(1, at(1), &list(&[("a", 1)]), &HashMap::new());
        assert!(w.is_empty());
    }
}

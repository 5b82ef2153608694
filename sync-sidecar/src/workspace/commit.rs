//! The commit cycle, one batch at a time, in six steps:
//!
//! 1. take a batch of dirty paths and the pending renames ([`State::take_batch`]);
//! 2. read the paths from the cache, off the runtime ([`SyncEngine::read_batch`]);
//! 3. keep only what did not change while it was read ([`State::keep_unchanged`]);
//! 4. publish the segment, retrying while the store is down ([`SyncEngine::publish`]);
//! 5. apply it to the index ([`State::apply`]);
//! 6. settle: clear what was committed and wake the flushes it satisfied
//!    ([`State::settle`]).
//!
//! Steps 1, 3, 5 and 6 are bookkeeping on [`State`] under its lock, tested
//! here without a store; 2 and 4 do the I/O. A checkpoint follows every
//! `checkpoint_every` commits.

use super::{release_memory, State, SyncEngine};
use crate::format::Op;
use crate::journal::{JournalError, Prepared, Writer};
use crate::metrics::Metrics;
use crate::snapshot::{self, ReadError};
use crate::tree::{Node, Tree};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch taken from the dirty set.
pub(super) struct Batch {
    no: u64,
    /// (path, generation when taken, its node in the committed tree as
    /// this batch's renames leave it), by path.
    items: Vec<(String, u64, Option<Node>)>,
    /// The renames taken, given back if the batch cannot be read.
    renames: Vec<(String, String)>,
    /// The ops of those renames that change the committed tree.
    rename_ops: Vec<Op>,
}

/// What a batch read: (path, generation, op; `None`: nothing to record)
/// and the paths that could not be read, with the error.
type Read = (Vec<(String, u64, Option<Op>)>, Vec<(String, String)>);

impl SyncEngine {
    pub(super) async fn commit_once(
        self: &Arc<Self>,
        writer: &mut Writer,
    ) -> Result<(), JournalError> {
        let t0 = Instant::now();
        // 1. Take a batch.
        let batch = self.state.lock().take_batch(&self.metrics);

        // 2. Read them, off the runtime.
        let read = match self.read_batch(batch.items).await? {
            Ok(r) => r,
            Err(e) => {
                self.restore_renames(batch.renames);
                self.metrics.commit_failures.inc();
                self.set_health(Err(e.to_string()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
        };

        // 3. Keep only what did not change while it was read.
        if read.0.is_empty() && read.1.is_empty() && batch.rename_ops.is_empty() {
            // Everything changed while it was read: let the writer finish.
            tokio::time::sleep(self.cfg.debounce).await;
        }
        let (committed, ops) =
            self.state
                .lock()
                .keep_unchanged(read, batch.rename_ops, &self.metrics);

        // 4. Publish, retrying while the store is unreachable; 5. apply.
        let published = !ops.is_empty();
        if published {
            let prepared = self.publish(writer, ops).await?;
            self.state.lock().apply(&prepared);
        }
        if let Some(b) = self.blobs.lock().as_ref() {
            let up = b.uploaded_bytes.swap(0, Ordering::Relaxed);
            self.metrics.blob_bytes.inc_by(up);
        }

        // 6. Settle: clear what was committed, wake satisfied flushes.
        let ready_ckpt = {
            let mut st = self.state.lock();
            let due = st.settle(batch.no, &committed, self.cfg.checkpoint_every);
            self.metrics.dirty_paths.set(st.dirty.len() as i64);
            due
        };
        if published {
            self.metrics.commits.inc();
            self.metrics
                .commit_seconds
                .observe(t0.elapsed().as_secs_f64());
        }
        if ready_ckpt {
            self.try_checkpoint(writer, false).await;
        }
        Ok(())
    }

    /// Step 2: read the batch's paths from the cache, off the runtime, up
    /// to `batch_bytes` of inline data (the rest stays dirty). The outer
    /// error is the read task failing, the inner one the store failing (a
    /// blob upload); a path that changed while it was read is left out.
    async fn read_batch(
        &self,
        items: Vec<(String, u64, Option<Node>)>,
    ) -> Result<Result<Read, JournalError>, JournalError> {
        let blobs = self
            .blobs
            .lock()
            .clone()
            .ok_or(JournalError::Other("not hydrated".into()))?;
        let root = self.root.clone();
        let budget = self.cfg.batch_bytes;
        tokio::task::spawn_blocking(move || {
            let mut out: Vec<(String, u64, Option<Op>)> = Vec::new();
            let mut failed: Vec<(String, String)> = Vec::new();
            let mut bytes = 0u64;
            for (path, gen, prev) in items {
                if bytes > budget {
                    break; // the rest stays dirty for the next batch
                }
                match snapshot::read_change(&root, &path, prev.as_ref(), &blobs) {
                    Ok(op) => {
                        if let Some(Op::Write { size, .. }) = &op {
                            bytes += (*size).min(crate::format::INLINE_MAX);
                        }
                        out.push((path, gen, op));
                    }
                    Err(ReadError::Changed(_)) => {}
                    Err(ReadError::Store(e)) => return Err(JournalError::Store(e)),
                    Err(e @ ReadError::Io { .. }) => {
                        tracing::warn!(error = %e, "cannot record a path; skipping it");
                        failed.push((path, e.to_string()));
                    }
                }
            }
            Ok((out, failed))
        })
        .await
        .map_err(|e| JournalError::Other(e.to_string()))
    }

    /// Step 4: publish `ops` as the next commit, retrying with backoff
    /// while the store is unreachable. Only fencing ends it.
    async fn publish(&self, writer: &mut Writer, ops: Vec<Op>) -> Result<Prepared, JournalError> {
        let prepared = writer.prepare(ops);
        let mut backoff = Duration::from_millis(50);
        loop {
            match writer.publish(&prepared).await {
                Ok(_) => {
                    self.set_health(Ok(()));
                    self.metrics
                        .segment_bytes
                        .inc_by(prepared.bytes.len() as u64);
                    self.metrics.ops_committed.inc_by(prepared.ops.len() as u64);
                    return Ok(prepared);
                }
                Err(e @ JournalError::Fenced { .. }) | Err(e @ JournalError::EpochTaken(_)) => {
                    self.set_health(Err(e.to_string()));
                    return Err(match e {
                        JournalError::EpochTaken(ours) => {
                            JournalError::Fenced { ours, newer: ours }
                        }
                        e => e,
                    });
                }
                Err(e) => {
                    self.metrics.commit_failures.inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "commit not published; retrying");
                    self.set_health(Err(e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn restore_renames(&self, mut renames: Vec<(String, String)>) {
        let mut st = self.state.lock();
        renames.append(&mut st.renames);
        st.renames = renames;
    }

    /// Write a checkpoint of the committed state if the cache matches it
    /// (nothing dirty); otherwise try again later.
    pub(super) async fn try_checkpoint(&self, writer: &Writer, last: bool) {
        let (index, at) = {
            let st = self.state.lock();
            if !st.dirty.is_empty() || !st.renames.is_empty() || st.since_checkpoint == 0 {
                return;
            }
            (st.index.clone(), st.head)
        };
        let root = self.root.clone();
        let built =
            tokio::task::spawn_blocking(move || snapshot::checkpoint_from_cache(&root, &index))
                .await;
        match built {
            Ok(Ok(bytes)) => match writer.put_checkpoint(at, bytes).await {
                Ok(()) => {
                    self.metrics.checkpoints.inc();
                    let mut st = self.state.lock();
                    if st.head == at {
                        st.since_checkpoint = 0;
                    }
                    tracing::debug!(at = %at, last, "checkpoint written");
                    release_memory();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint not written");
                    self.postpone_checkpoint();
                }
            },
            Ok(Err(e)) => {
                // A file changed between its commit and this read: try again
                // after more commits, not after every one (each attempt reads
                // the whole cache while commits wait).
                tracing::info!(error = %e, "checkpoint postponed");
                self.postpone_checkpoint();
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint task failed");
                self.postpone_checkpoint();
            }
        }
    }

    fn postpone_checkpoint(&self) {
        let mut st = self.state.lock();
        st.since_checkpoint = st.since_checkpoint.min(self.cfg.checkpoint_every / 2);
    }
}

impl State {
    /// Step 1: take a batch. Files still open for writing wait for their
    /// close, unless a flush asks for them (or for everything, or the
    /// engine is shutting down). Paths the format cannot hold (over
    /// PATH_MAX) are reported and dropped, never written into a segment
    /// readers would refuse.
    pub(super) fn take_batch(&mut self, metrics: &Metrics) -> Batch {
        self.batches_taken += 1;
        let invalid: Vec<String> = self
            .dirty
            .keys()
            .filter(|p| !crate::tree::valid(p))
            .cloned()
            .collect();
        for p in invalid {
            tracing::warn!(path = %p, "not storable (longer than PATH_MAX); left out of the store");
            self.dirty.remove(&p);
            metrics.read_errors.inc();
        }
        let taken = std::mem::take(&mut self.renames);
        let force_all = self.shutdown || self.waiters.want_all();
        let forced = self.waiters.forced();
        let writing: HashSet<&String> = self.writers.values().collect();
        // Paths are compared with the committed tree as it will be once
        // this batch's renames are applied.
        let (rename_ops, renamed) = effective_renames(&self.index, &taken);
        let base = renamed.as_ref().unwrap_or(&self.index);
        let mut items: Vec<(String, u64, Option<Node>)> = self
            .dirty
            .iter()
            .filter(|(p, _)| force_all || forced.contains(p) || !writing.contains(p))
            .map(|(p, g)| (p.clone(), *g, base.get(p).cloned()))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        if self.dirty.is_empty() {
            self.first_dirty = None;
        }
        // All of them go back if the batch cannot be read: the index is
        // unchanged until it is, so they are weighed again.
        Batch {
            no: self.batches_taken,
            items,
            renames: taken,
            rename_ops,
        }
    }

    /// Step 3: of what was read, keep what is still at the generation it
    /// was read at, and give the commit's ops (renames first). Unreadable
    /// paths leave the dirty set, not silently: status lists them until a
    /// later change to the same path is recorded.
    pub(super) fn keep_unchanged(
        &mut self,
        (results, failed): Read,
        rename_ops: Vec<Op>,
        metrics: &Metrics,
    ) -> (Vec<(String, u64)>, Vec<Op>) {
        for (p, e) in &failed {
            self.dirty.remove(p);
            self.unreadable.insert(p.clone(), e.clone());
            metrics.read_errors.inc();
        }
        let mut ops: Vec<Op> = rename_ops;
        let mut committed = Vec::new();
        for (path, gen, op) in results {
            if self.dirty.get(&path) != Some(&gen) {
                continue;
            }
            if let Some(op) = op {
                ops.push(op);
            }
            committed.push((path, gen));
        }
        (committed, ops)
    }

    /// Step 5: a published commit becomes the index and the head.
    pub(super) fn apply(&mut self, prepared: &Prepared) {
        for op in &prepared.ops {
            if let Err(e) = self.index.apply(op) {
                tracing::error!(error = %e, "index apply failed");
            }
        }
        self.head = prepared.id;
        self.head_time_ms = crate::journal::now_ms();
        self.since_checkpoint += 1;
    }

    /// Step 6: batch `batch_no` is done, having committed `committed`
    /// (path, generation): those leave the dirty set unless they changed
    /// again, and the flushes now satisfied are answered. Returns whether a
    /// checkpoint is due.
    pub(super) fn settle(
        &mut self,
        batch_no: u64,
        committed: &[(String, u64)],
        checkpoint_every: u64,
    ) -> bool {
        for (p, g) in committed {
            self.unreadable.remove(p);
            if self.dirty.get(p) == Some(g) {
                self.dirty.remove(p);
            }
        }
        if self.dirty.is_empty() && self.renames.is_empty() {
            self.first_dirty = None;
        } else {
            // What is left changed after this batch was taken (or is held
            // open): its window starts now.
            self.first_dirty = Some(Instant::now());
        }
        self.batches_done = batch_no;
        self.waiters
            .settle(batch_no, self.head, committed, &self.dirty);
        self.since_checkpoint >= checkpoint_every
    }
}

/// The ops for a batch's renames (`(from, to)`, in order) that change the
/// committed tree `index`, and the tree as they leave it (`None` if none
/// do). A rename whose source the committed tree does not have is a no-op
/// on replay: a file created and renamed within one commit window, which is
/// how editors and cove-pty save (a temporary file, then a rename over the
/// target). Such a rename is left out of the segment, so a commit's ops,
/// and the history that lists them, name only what the commit changes; the
/// file itself is dirty under its new name and written by the same or a
/// later batch. A rename to a path the format cannot hold (over PATH_MAX)
/// becomes a delete of its source: the entry left the storable tree, and a
/// segment naming that path would be refused by every reader.
fn effective_renames(index: &Tree, renames: &[(String, String)]) -> (Vec<Op>, Option<Tree>) {
    let mut tree: Option<Tree> = None;
    let mut ops = Vec::new();
    for (from, to) in renames {
        if !tree.as_ref().unwrap_or(index).rename_moves(from, to) {
            continue;
        }
        let op = if crate::tree::valid(to) {
            Op::Rename {
                from: from.clone(),
                to: to.clone(),
            }
        } else {
            tracing::warn!(path = %from, "renamed to a path longer than PATH_MAX; recorded as deleted");
            Op::Delete { path: from.clone() }
        };
        let t = tree.get_or_insert_with(|| index.clone());
        if let Err(e) = t.apply(&op) {
            // Cannot happen for valid paths; never publish what the index
            // could not take.
            tracing::error!(error = %e, "rename left out of the commit");
            continue;
        }
        ops.push(op);
    }
    (ops, tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::CommitId;
    use tokio::sync::oneshot;

    fn file(path: &str) -> Op {
        Op::Write {
            path: path.into(),
            mode: 0o644,
            mtime: 0,
            size: 1,
            inline: Some(serde_bytes::ByteBuf::from(b"x".to_vec())),
            chunks: Vec::new(),
        }
    }

    fn renames(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect()
    }

    fn nodes(t: &Tree) -> Vec<(String, crate::tree::Node)> {
        t.iter().map(|(p, n)| (p.clone(), n.clone())).collect()
    }

    #[test]
    fn renames_of_uncommitted_sources_are_left_out() {
        let mut index = Tree::new(false);
        index.apply(&file("notes.txt")).unwrap();
        index.apply(&file("a")).unwrap();
        index.apply(&file("x")).unwrap();
        let deep = vec!["d"; 2100].join("/");
        // A save through a temporary file never committed, a rename of a
        // committed file, a chain through a name only the batch knew, a
        // rename into itself, one from a name that is gone, and one to a
        // path the format cannot hold.
        let batch = renames(&[
            (".notes.txt.cove-tmp-0123456789abcdef", "notes.txt"),
            ("a", "b"),
            ("b", "c"),
            ("c", "c/d"),
            ("gone", "c"),
            ("x", &deep),
        ]);
        let (ops, tree) = effective_renames(&index, &batch);
        assert_eq!(
            ops,
            [
                Op::Rename {
                    from: "a".into(),
                    to: "b".into()
                },
                Op::Rename {
                    from: "b".into(),
                    to: "c".into()
                },
                Op::Delete { path: "x".into() },
            ]
        );
        // Replaying the ops gives the tree the helper reports...
        let mut replayed = index.clone();
        for op in &ops {
            replayed.apply(op).unwrap();
        }
        let tree = tree.expect("the renamed tree");
        assert_eq!(nodes(&replayed), nodes(&tree));
        // ...which is what replaying every rename gives, except the one the
        // format cannot hold (a reader refuses it, so it is a delete).
        let mut all = index.clone();
        for (from, to) in &batch[..5] {
            all.apply(&Op::Rename {
                from: from.clone(),
                to: to.clone(),
            })
            .unwrap();
        }
        all.apply(&Op::Delete { path: "x".into() }).unwrap();
        assert_eq!(nodes(&all), nodes(&tree));
        assert_eq!(
            tree.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["c", "notes.txt"]
        );

        let (ops, tree) = effective_renames(&index, &renames(&[("y", "z")]));
        assert!(ops.is_empty() && tree.is_none());
    }

    // ---- the cycle's bookkeeping, without a store -----------------------

    fn paths(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Steps 2 and 4 as if every path read fine and the store took the
    /// commit: returns what the batch committed.
    fn run_batch(st: &mut State, m: &Metrics) -> Vec<(String, u64)> {
        let batch = st.take_batch(m);
        let read = batch
            .items
            .iter()
            .map(|(p, g, _)| (p.clone(), *g, Some(file(p))))
            .collect();
        let (committed, ops) = st.keep_unchanged((read, Vec::new()), batch.rename_ops, m);
        if !ops.is_empty() {
            let id = CommitId {
                epoch: 1,
                seq: st.head.seq + 1,
            };
            let bytes = bytes::Bytes::new();
            st.apply(&Prepared { id, bytes, ops });
        }
        st.settle(batch.no, &committed, 256);
        committed
    }

    fn answered(rx: &mut oneshot::Receiver<crate::workspace::waiters::Answer>) -> Option<CommitId> {
        match rx.try_recv() {
            Ok(Ok(id)) => Some(id),
            Ok(Err(e)) => panic!("flush failed: {e}"),
            Err(_) => None,
        }
    }

    #[test]
    fn a_flush_is_answered_by_the_batch_that_commits_its_paths() {
        let m = Metrics::new();
        let mut st = State::new();
        st.touch("a");
        st.touch("b");
        let mut rx = st.request_flush(Some(&paths(&["a"]))).unwrap();
        let committed = run_batch(&mut st, &m);
        assert_eq!(
            committed.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(answered(&mut rx), Some(CommitId { epoch: 1, seq: 1 }));
        assert!(st.dirty.is_empty() && st.first_dirty.is_none());
        assert!(st.index.get("a").is_some() && st.index.get("b").is_some());
        assert_eq!(st.since_checkpoint, 1);
    }

    #[test]
    fn a_change_while_a_path_is_read_keeps_it_dirty_and_its_flush_waiting() {
        let m = Metrics::new();
        let mut st = State::new();
        st.touch("a");
        let mut rx = st.request_flush(Some(&paths(&["a"]))).unwrap();
        let batch = st.take_batch(&m);
        let gen = batch.items[0].1;
        // The file is written again while the committer reads it.
        st.touch("a");
        let read = (vec![("a".to_string(), gen, Some(file("a")))], Vec::new());
        let (committed, ops) = st.keep_unchanged(read, batch.rename_ops, &m);
        assert!(committed.is_empty() && ops.is_empty());
        st.settle(batch.no, &committed, 256);
        assert_eq!(answered(&mut rx), None);
        assert!(st.dirty.contains_key("a") && st.first_dirty.is_some());
        // The next batch reads the newer generation, which satisfies it.
        run_batch(&mut st, &m);
        assert!(answered(&mut rx).is_some());
    }

    #[test]
    fn files_open_for_writing_wait_for_their_close_unless_a_flush_asks() {
        let m = Metrics::new();
        let mut st = State::new();
        st.writers.insert(1, "open".into());
        st.touch("open");
        st.touch("closed");
        let taken = |b: &Batch| b.items.iter().map(|i| i.0.clone()).collect::<Vec<_>>();
        assert_eq!(taken(&st.take_batch(&m)), ["closed"]);
        // A flush of that file takes it while open...
        let _rx = st.request_flush(Some(&paths(&["open"]))).unwrap();
        assert_eq!(taken(&st.take_batch(&m)), ["closed", "open"]);
        // ...and so do a flush of everything and a shutdown.
        let mut st = State::new();
        st.writers.insert(1, "open".into());
        st.touch("open");
        let _rx = st.request_flush(None).unwrap();
        assert_eq!(taken(&st.take_batch(&m)), ["open"]);
        let mut st = State::new();
        st.writers.insert(1, "open".into());
        st.touch("open");
        st.shutdown = true;
        assert_eq!(taken(&st.take_batch(&m)), ["open"]);
    }

    #[test]
    fn a_flush_with_nothing_dirty_waits_for_the_next_batch() {
        // A rename is not a dirty path: the flush after it must wait for
        // the batch that carries it.
        let m = Metrics::new();
        let mut st = State::new();
        st.index.apply(&file("a")).unwrap();
        st.renames.push(("a".into(), "b".into()));
        let mut rx = st.request_flush(None).unwrap();
        assert_eq!(answered(&mut rx), None);
        run_batch(&mut st, &m);
        assert!(answered(&mut rx).is_some());
        assert!(st.index.get("b").is_some() && st.index.get("a").is_none());
    }

    #[test]
    fn unreadable_and_unstorable_paths_leave_the_dirty_set_visibly() {
        let m = Metrics::new();
        let mut st = State::new();
        let deep = vec!["d"; 2100].join("/");
        st.touch(&deep);
        st.touch("locked");
        let mut rx = st.request_flush(Some(&paths(&["locked"]))).unwrap();
        let batch = st.take_batch(&m);
        assert_eq!(batch.items.len(), 1, "the unstorable path is dropped");
        let failed = vec![("locked".to_string(), "permission denied".to_string())];
        let (committed, _) = st.keep_unchanged((Vec::new(), failed), Vec::new(), &m);
        st.settle(batch.no, &committed, 256);
        assert_eq!(m.read_errors.get(), 2);
        assert!(st.dirty.is_empty());
        assert_eq!(st.unreadable["locked"], "permission denied");
        // The flush is answered (there is nothing it could wait for); the
        // status keeps naming the path until it is committed.
        assert!(answered(&mut rx).is_some());
        st.touch("locked");
        run_batch(&mut st, &m);
        assert!(st.unreadable.is_empty());
    }
}

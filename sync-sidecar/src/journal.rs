//! A project's history in the store: the chain of writer epochs, reading it
//! back, and appending to it with single-writer fencing.
//!
//! # Fencing without conditional writes
//!
//! Every start of a workspace is a *writer* with a fresh epoch (from the
//! controller, or one more than any claimed). Opening a writer:
//!
//! 1. PUT `claims/<E>` ("E is starting");
//! 2. read the chain (markers + the newest epoch's segments) to find the head;
//! 3. PUT `epochs/<E>-<head>` ("E continues from head").
//!
//! Committing seq `s` at epoch `E`: PUT `log/E/s`, then LIST `claims/` after
//! `E`. If a newer claim exists the writer is *fenced*: it reports the commit
//! as failed and stops. Otherwise it acknowledges.
//!
//! Why that is enough: if the stale writer saw no newer claim, its PUT came
//! before the newer writer's claim, hence before that writer read the chain
//! (step 2), so the segment is part of the head the newer writer continues
//! from. If the newer writer's read missed the segment, the claim was already
//! there when the stale writer listed, so it never acknowledged. Readers
//! follow markers from the newest epoch backwards and cut each older epoch at
//! the seq its successor continued from, so whatever a stale writer appended
//! later is simply not history. This needs only read-after-write consistency
//! (S3, Garage, MinIO, a directory all have it) — no `If-None-Match`, which
//! Garage 2.5 ignores, and no lease or clock. It costs one LIST per commit,
//! amortised by group commit.

use crate::format::{
    self, decode_segment, keys, open_checkpoint, CommitId, FormatError, Op, RecordWriter, Segment,
    SegmentHeader, CHECKPOINT_MAGIC, FORMAT_VERSION,
};
use crate::store::{DynStore, StoreError};
use crate::tree::{node_op, Tree};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{key} is missing from the store (referenced by the project's history)")]
    Missing { key: String },
    #[error("{key} is corrupt (its length or SHA-256 is not the one the history records)")]
    Corrupt { key: String },
    #[error(
        "fenced: a newer writer (epoch {newer}) has taken over this project from epoch {ours}"
    )]
    Fenced { ours: u64, newer: u64 },
    #[error("epoch {0} is already claimed for this project")]
    EpochTaken(u64),
    #[error("project {0} does not exist")]
    NoProject(String),
    #[error("project {0} already exists")]
    Exists(String),
    #[error("commit {0} is not part of this project's history")]
    NoCommit(CommitId),
    #[error("{0}")]
    Other(String),
}

impl JournalError {
    pub fn is_transient(&self) -> bool {
        match self {
            JournalError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

pub type JResult<T> = Result<T, JournalError>;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The segments one epoch contributes to history: `first..=last` (empty when
/// `last < first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochRange {
    pub epoch: u64,
    pub first: u64,
    pub last: u64,
}

/// The history of a project: epochs oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub ranges: Vec<EpochRange>,
}

impl Chain {
    /// The newest commit, or the genesis state `(epoch, 0)`.
    pub fn head(&self) -> CommitId {
        for r in self.ranges.iter().rev() {
            if r.last >= r.first {
                return CommitId {
                    epoch: r.epoch,
                    seq: r.last,
                };
            }
        }
        match self.ranges.first() {
            Some(r) => CommitId {
                epoch: r.epoch,
                seq: r.first - 1,
            },
            None => CommitId { epoch: 0, seq: 0 },
        }
    }

    /// Whether the state after `c` is a point of this history (a checkpoint
    /// at `c` may be used).
    pub fn contains_state(&self, c: CommitId) -> bool {
        self.ranges
            .iter()
            .any(|r| r.epoch == c.epoch && c.seq + 1 >= r.first && c.seq <= r.last)
    }

    /// Every commit on the chain, oldest first.
    pub fn commits(&self) -> impl Iterator<Item = CommitId> + '_ {
        self.ranges.iter().flat_map(|r| {
            (r.first..=r.last).map(move |seq| CommitId {
                epoch: r.epoch,
                seq,
            })
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The chain as it was right after `at` (which must be a state of it).
    pub fn cut(&self, at: CommitId) -> Option<Chain> {
        let i = self
            .ranges
            .iter()
            .position(|r| r.epoch == at.epoch && at.seq + 1 >= r.first && at.seq <= r.last)?;
        let mut ranges = self.ranges[..=i].to_vec();
        ranges[i].last = at.seq;
        Some(Chain { ranges })
    }
}

/// Human-readable body of a marker or claim (the key carries what readers
/// need; this is for operators).
#[derive(Debug, Serialize, Deserialize)]
struct MarkerBody {
    epoch: u64,
    base: Option<CommitId>,
    time_ms: u64,
    host: String,
}

/// Summary of one commit, for history views.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: CommitId,
    pub time_ms: u64,
    pub paths: Vec<String>,
}

/// Read access to one project (or template) root.
#[derive(Clone)]
pub struct Journal {
    store: DynStore,
    root: String,
}

impl Journal {
    pub fn new(store: DynStore, root: impl Into<String>) -> Self {
        Self {
            store,
            root: root.into(),
        }
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// One chunk of a large file, checked against the length and SHA-256
    /// its reference records, so a damaged blob is never taken for the
    /// file. A missing zero chunk reads as zeros (its hash says what it
    /// holds). Hydration, restores and the history API all read chunks
    /// through this.
    pub async fn chunk(&self, c: &format::ChunkRef) -> JResult<Bytes> {
        let key = keys::blob(&c.hash);
        match self.store.get(&key).await? {
            Some(b) if b.len() as u64 == c.len && crate::snapshot::hash_hex(&b) == c.hash => Ok(b),
            Some(_) => Err(JournalError::Corrupt { key }),
            None if c.hash == crate::hydrate::zero_hash(c.len) => {
                Ok(Bytes::from(vec![0; c.len as usize]))
            }
            None => Err(JournalError::Missing { key }),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    async fn markers(&self) -> JResult<BTreeMap<u64, Option<CommitId>>> {
        let mut out = BTreeMap::new();
        for k in self.store.list(&keys::markers(&self.root), None).await? {
            let (epoch, base) = keys::parse_marker(&k)?;
            out.insert(epoch, base);
        }
        Ok(out)
    }

    /// Whether the project has any history at all.
    pub async fn exists(&self) -> JResult<bool> {
        Ok(!self.markers().await?.is_empty())
    }

    /// The chain as seen now, from the newest marker.
    pub async fn chain(&self) -> JResult<Chain> {
        self.chain_below(u64::MAX).await
    }

    /// The chain from the newest marker older than `epoch`.
    pub async fn chain_below(&self, epoch: u64) -> JResult<Chain> {
        let markers = self.markers().await?;
        let Some((&newest, _)) = markers.range(..epoch).next_back() else {
            return Ok(Chain::default());
        };
        let mut ranges = Vec::new();
        let mut cur = newest;
        let mut limit: Option<u64> = None;
        loop {
            let base = *markers.get(&cur).ok_or_else(|| JournalError::Missing {
                key: format!("{}epoch {cur} (named as a base)", keys::markers(&self.root)),
            })?;
            let first = base.map_or(1, |b| b.seq + 1);
            let last = match limit {
                // An older epoch ends where its successor continued from.
                Some(l) => l,
                // The newest epoch ends at its last contiguous segment.
                None => {
                    let mut last = first - 1;
                    for k in self.store.list(&keys::log(&self.root, cur), None).await? {
                        let pos = keys::parse_pos(&k)?;
                        if pos.seq == last + 1 {
                            last = pos.seq;
                        } else if pos.seq > last + 1 {
                            tracing::warn!(key = %k, "gap in the journal; history ends before it");
                            break;
                        }
                    }
                    last
                }
            };
            ranges.push(EpochRange {
                epoch: cur,
                first,
                last,
            });
            match base {
                None => break,
                Some(b) => {
                    if b.epoch >= cur {
                        return Err(FormatError::BadKey(format!(
                            "{}: epoch {cur} continues from a later epoch {}",
                            self.root, b.epoch
                        ))
                        .into());
                    }
                    limit = Some(b.seq);
                    cur = b.epoch;
                }
            }
        }
        ranges.reverse();
        Ok(Chain { ranges })
    }

    /// The newest checkpoint that is a state of `chain` and not after `upto`.
    pub async fn latest_checkpoint(
        &self,
        chain: &Chain,
        upto: CommitId,
    ) -> JResult<Option<CommitId>> {
        let mut best: Option<CommitId> = None;
        for k in self.store.list(&keys::snaps(&self.root), None).await? {
            let Ok(pos) = keys::parse_pos(&k) else {
                continue;
            };
            if chain.contains_state(pos)
                && pos.seq <= upto.seq
                && best.is_none_or(|b| pos.seq > b.seq)
            {
                best = Some(pos);
            }
        }
        Ok(best)
    }

    async fn get_required(&self, key: &str) -> JResult<Bytes> {
        self.store
            .get(key)
            .await?
            .ok_or_else(|| JournalError::Missing {
                key: key.to_owned(),
            })
    }

    pub async fn read_segment(&self, c: CommitId) -> JResult<Segment> {
        let key = keys::segment(&self.root, c.epoch, c.seq);
        let bytes = self.get_required(&key).await?;
        let k = key.clone();
        let seg = tokio::task::spawn_blocking(move || decode_segment(&k, &bytes))
            .await
            .map_err(|e| JournalError::Other(e.to_string()))??;
        if seg.header.epoch != c.epoch || seg.header.seq != c.seq {
            return Err(FormatError::Corrupt {
                key,
                reason: format!("header says commit {}.{}", seg.header.epoch, seg.header.seq),
            }
            .into());
        }
        Ok(seg)
    }

    pub async fn read_checkpoint(&self, c: CommitId) -> JResult<(String, Bytes)> {
        let key = keys::checkpoint(&self.root, c.epoch, c.seq);
        let bytes = self.get_required(&key).await?;
        Ok((key, bytes))
    }

    /// The segments after `after` up to `upto` along the chain, fetched a
    /// few at a time, in order.
    pub fn tail<'a>(
        &'a self,
        chain: &'a Chain,
        after: Option<CommitId>,
        upto: CommitId,
    ) -> impl futures::Stream<Item = JResult<Segment>> + 'a {
        let after_seq = after.map(|a| a.seq);
        let ids: Vec<CommitId> = chain
            .commits()
            .filter(|c| after_seq.is_none_or(|s| c.seq > s) && c.seq <= upto.seq)
            .collect();
        futures::stream::iter(ids)
            .map(move |c| self.read_segment(c))
            .buffered(8)
    }

    /// Replay history into a tree (with or without bodies), up to `upto`
    /// (default: the head). Returns the tree and the commit it is at.
    pub async fn load_tree(
        &self,
        keep_bodies: bool,
        upto: Option<CommitId>,
    ) -> JResult<(Tree, CommitId)> {
        let chain = self.chain().await?;
        if chain.is_empty() {
            return Err(JournalError::NoProject(self.root.clone()));
        }
        let head = chain.head();
        let upto = upto.unwrap_or(head);
        if upto != head && !chain.contains_state(upto) {
            return Err(JournalError::NoCommit(upto));
        }
        let ckpt = self.latest_checkpoint(&chain, upto).await?;
        let mut tree = Tree::new(keep_bodies);
        if let Some(c) = ckpt {
            let (key, bytes) = self.read_checkpoint(c).await?;
            tree = tokio::task::spawn_blocking(move || -> JResult<Tree> {
                let (_, mut r) = open_checkpoint(&key, &bytes[..])?;
                while let Some(op) = r.read_record::<Op>()? {
                    tree.apply(&op)?;
                }
                Ok(tree)
            })
            .await
            .map_err(|e| JournalError::Other(e.to_string()))??;
        }
        let mut tail = std::pin::pin!(self.tail(&chain, ckpt, upto));
        while let Some(seg) = tail.try_next().await? {
            for op in &seg.ops {
                tree.apply(op)?;
            }
        }
        Ok((tree, upto))
    }

    /// Commits on the chain, newest first, at most `limit`.
    pub async fn history(&self, limit: usize) -> JResult<Vec<CommitInfo>> {
        let chain = self.chain().await?;
        let ids: Vec<CommitId> = chain.commits().collect();
        let ids: Vec<CommitId> = ids.into_iter().rev().take(limit).collect();
        futures::stream::iter(ids)
            .map(|c| async move {
                let seg = self.read_segment(c).await?;
                let mut paths: Vec<String> = seg.ops.iter().map(|o| o.path().to_owned()).collect();
                paths.dedup();
                Ok::<_, JournalError>(CommitInfo {
                    id: c,
                    time_ms: seg.header.time_ms,
                    paths,
                })
            })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Create a new root whose genesis state is `tree` (which must have
    /// kept its bodies): writes the checkpoint, then the genesis marker.
    pub async fn create_from_tree(&self, tree: &Tree) -> JResult<()> {
        if self.exists().await? {
            return Err(JournalError::Exists(self.root.clone()));
        }
        let bytes = encode_checkpoint(tree)?;
        self.store
            .put(&keys::checkpoint(&self.root, 1, 0), bytes)
            .await?;
        self.put_marker(1, None).await
    }

    /// Create a new root from the head of `src`: O(1) requests when the head
    /// is a checkpoint (a server-side copy), otherwise one replay.
    pub async fn create_from(&self, src: &Journal) -> JResult<()> {
        if self.exists().await? {
            return Err(JournalError::Exists(self.root.clone()));
        }
        let chain = src.chain().await?;
        if chain.is_empty() {
            return Err(JournalError::NoProject(src.root.clone()));
        }
        let head = chain.head();
        match src.latest_checkpoint(&chain, head).await? {
            Some(c) if c == head => {
                self.store
                    .copy(
                        &keys::checkpoint(&src.root, c.epoch, c.seq),
                        &keys::checkpoint(&self.root, 1, 0),
                    )
                    .await?;
                self.put_marker(1, None).await
            }
            _ => {
                let (tree, _) = src.load_tree(true, Some(head)).await?;
                self.create_from_tree(&tree).await
            }
        }
    }

    async fn put_marker(&self, epoch: u64, base: Option<CommitId>) -> JResult<()> {
        let body = serde_json::to_vec(&MarkerBody {
            epoch,
            base,
            time_ms: now_ms(),
            host: hostname(),
        })
        .map_err(|e| JournalError::Other(e.to_string()))?;
        self.store
            .put(&keys::marker(&self.root, epoch, base), Bytes::from(body))
            .await?;
        Ok(())
    }

    /// Highest epoch claimed so far (0 if none).
    pub async fn max_claim(&self) -> JResult<u64> {
        let mut max = 0;
        for k in self.store.list(&keys::claims(&self.root), None).await? {
            max = max.max(keys::parse_claim(&k)?);
        }
        for (e, _) in self.markers().await? {
            max = max.max(e);
        }
        Ok(max)
    }

    /// Delete everything under this root (blobs are shared and left to GC).
    pub async fn delete_all(&self) -> JResult<usize> {
        let keys = self.store.list(&format!("{}/", self.root), None).await?;
        let n = keys.len();
        futures::stream::iter(keys)
            .map(|k| async move { self.store.delete(&k).await })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(n)
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Encode a tree (with bodies) as a checkpoint object.
pub fn encode_checkpoint(tree: &Tree) -> JResult<Bytes> {
    let mut w = RecordWriter::new(Vec::new(), CHECKPOINT_MAGIC).map_err(other)?;
    w.record(&format::CheckpointHeader {
        v: FORMAT_VERSION,
        time_ms: now_ms(),
        entries: tree.len() as u64,
    })
    .map_err(other)?;
    for (path, node) in tree.iter() {
        let op = node_op(path, node)
            .ok_or_else(|| JournalError::Other(format!("checkpoint: no body kept for {path}")))?;
        w.record(&op).map_err(other)?;
    }
    Ok(Bytes::from(w.finish().map_err(other)?))
}

fn other(e: impl std::fmt::Display) -> JournalError {
    JournalError::Other(e.to_string())
}

/// A commit encoded and ready to publish.
pub struct Prepared {
    pub id: CommitId,
    pub bytes: Bytes,
    pub ops: Vec<Op>,
}

/// The single writer of one project for one epoch.
pub struct Writer {
    journal: Journal,
    epoch: u64,
    base: CommitId,
    next_seq: u64,
}

impl Writer {
    /// Claim `epoch` (or the next free one) and continue from the head.
    /// Returns the writer and the chain it continues (for hydration).
    pub async fn open(journal: Journal, epoch: Option<u64>) -> JResult<(Writer, Chain)> {
        let claimed = journal.max_claim().await?;
        let epoch = match epoch {
            Some(e) if e <= claimed => {
                return Err(JournalError::Fenced {
                    ours: e,
                    newer: claimed,
                })
            }
            Some(e) => e,
            None => claimed + 1,
        };
        let body = Bytes::from(
            serde_json::json!({"epoch": epoch, "host": hostname(), "time_ms": now_ms()})
                .to_string(),
        );
        if !journal
            .store
            .put_if_absent(&keys::claim(&journal.root, epoch), body)
            .await?
        {
            return Err(JournalError::EpochTaken(epoch));
        }
        let chain = journal.chain_below(epoch).await?;
        if chain.is_empty() {
            return Err(JournalError::NoProject(journal.root.clone()));
        }
        let base = chain.head();
        journal.put_marker(epoch, Some(base)).await?;
        let w = Writer {
            journal,
            epoch,
            base,
            next_seq: base.seq + 1,
        };
        w.check_fence().await?;
        Ok((w, chain))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn base(&self) -> CommitId {
        self.base
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The last commit this writer made (or its base).
    pub fn head(&self) -> CommitId {
        if self.next_seq == self.base.seq + 1 {
            self.base
        } else {
            CommitId {
                epoch: self.epoch,
                seq: self.next_seq - 1,
            }
        }
    }

    async fn check_fence(&self) -> JResult<()> {
        let after = keys::claim(&self.journal.root, self.epoch);
        let newer = self
            .journal
            .store
            .list(&keys::claims(&self.journal.root), Some(&after))
            .await?;
        if let Some(k) = newer.last() {
            return Err(JournalError::Fenced {
                ours: self.epoch,
                newer: keys::parse_claim(k)?,
            });
        }
        Ok(())
    }

    /// Encode the next commit. The result is published (and retried) with
    /// [`Writer::publish`]; encoding once keeps retries byte-identical.
    pub fn prepare(&self, ops: Vec<Op>) -> Prepared {
        let seq = self.next_seq;
        let seg = Segment {
            header: SegmentHeader {
                v: FORMAT_VERSION,
                epoch: self.epoch,
                seq,
                time_ms: now_ms(),
                ops: ops.len() as u64,
            },
            ops,
        };
        Prepared {
            id: CommitId {
                epoch: self.epoch,
                seq,
            },
            bytes: format::encode_segment(&seg),
            ops: seg.ops,
        }
    }

    /// Make a prepared commit part of history. Returns only once the segment
    /// is in the store and this writer is still the project's writer; on
    /// `Fenced` the commit must not be acknowledged. On a transient error,
    /// call again with the same `Prepared`.
    pub async fn publish(&mut self, p: &Prepared) -> JResult<CommitId> {
        if p.id.seq != self.next_seq || p.id.epoch != self.epoch {
            return Err(other("publish: commit prepared for another position"));
        }
        let key = keys::segment(&self.journal.root, self.epoch, p.id.seq);
        // Conditional where the store honours it (a second writer of the
        // same epoch is then refused); safety does not depend on it.
        if !self
            .journal
            .store
            .put_if_absent(&key, p.bytes.clone())
            .await?
        {
            // Our own earlier attempt may have landed before a timeout.
            let existing = self.journal.store.get(&key).await?;
            if existing.as_deref() != Some(&p.bytes[..]) {
                return Err(JournalError::EpochTaken(self.epoch));
            }
        }
        self.check_fence().await?;
        self.next_seq += 1;
        Ok(p.id)
    }

    /// Prepare and publish in one step (no retry).
    pub async fn append(&mut self, ops: Vec<Op>) -> JResult<CommitId> {
        let p = self.prepare(ops);
        self.publish(&p).await
    }

    /// Store a checkpoint of the state after `at` (one of this writer's
    /// commits, or its base).
    pub async fn put_checkpoint(&self, at: CommitId, bytes: Bytes) -> JResult<()> {
        self.journal
            .store
            .put(
                &keys::checkpoint(&self.journal.root, at.epoch, at.seq),
                bytes,
            )
            .await?;
        Ok(())
    }
}

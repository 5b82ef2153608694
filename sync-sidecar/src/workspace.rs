//! The workspace engine: what is dirty, when to commit, and who is waiting
//! for durability. FUSE and watch mode are thin fronts that report changes
//! here (`mark_dirty`, `rename`, `open_writer`/`close_writer`); everything
//! else — group commit, the durability contract, checkpoints, retries — is
//! plain async Rust, tested without a mount.
//!
//! # Commit cycle
//!
//! A single committer task loops: wait until something is due (a flush is
//! waiting, or changes have been quiet for `debounce`, or the oldest change
//! is `max_delay` old); take a batch of dirty paths (files still open for
//! writing wait for their close, unless a flush asked for them); read them
//! from the cache off the runtime; drop any path that changed while it was
//! read (its generation moved), so a commit never records a torn file;
//! publish the segment (retrying with backoff while the store is down);
//! apply it to the index and wake the flushes it satisfied.

use crate::format::{CommitId, Op};
use crate::fsutil::Root;
use crate::hydrate::{self, Owner, Progress};
use crate::journal::{Journal, JournalError, Writer};
use crate::metrics::Metrics;
use crate::snapshot::{self, BlobSink, ReadError};
use crate::tree::Tree;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, Notify};

#[derive(Debug, Clone)]
pub struct Config {
    /// Commit once changes have been quiet this long...
    pub debounce: Duration,
    /// ...or once the oldest uncommitted change is this old.
    pub max_delay: Duration,
    /// Inline bytes read into one commit at most (bounds memory).
    pub batch_bytes: u64,
    /// Write a checkpoint after this many commits.
    pub checkpoint_every: u64,
    /// Reconciliation scan period (None: only on demand).
    pub scan_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
            batch_bytes: 16 << 20,
            checkpoint_every: 256,
            scan_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// A change to the tree, for the change feed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChangeEvent {
    pub path: String,
    pub kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Modify,
    Delete,
    Rename,
    /// Events were lost (a slow reader): re-read what you show.
    Overflow,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    #[error(
        "fenced: another writer owns this project now; this workspace's changes cannot be saved"
    )]
    Fenced,
    #[error("the workspace is shutting down")]
    ShuttingDown,
    #[error("invalid path {0:?}")]
    BadPath(String),
    #[error("not ready: hydration has not finished")]
    NotReady,
}

struct Waiter {
    /// Path → generation that must be committed (or later).
    need: HashMap<String, u64>,
    /// A batch taken after the request must succeed (carries renames).
    min_batch: u64,
    all: bool,
    tx: oneshot::Sender<Result<CommitId, FlushError>>,
}

struct State {
    index: Tree,
    dirty: HashMap<String, u64>,
    writers: HashMap<u64, String>,
    next_writer: u64,
    renames: Vec<(String, String)>,
    gen: u64,
    first_dirty: Option<Instant>,
    last_change: Instant,
    waiters: Vec<Waiter>,
    batches_taken: u64,
    batches_done: u64,
    head: CommitId,
    head_time_ms: u64,
    since_checkpoint: u64,
    shutdown: bool,
    /// Changed paths that could not be read (path → error), for status.
    unreadable: std::collections::BTreeMap<String, String>,
}

impl State {
    fn touch(&mut self, path: &str) -> u64 {
        self.gen += 1;
        self.dirty.insert(path.to_owned(), self.gen);
        let now = Instant::now();
        self.first_dirty.get_or_insert(now);
        self.last_change = now;
        self.gen
    }
}

/// Store health as last seen by the committer.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StoreHealth {
    pub healthy: bool,
    pub error: Option<String>,
    pub url: String,
}

/// What `/status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub mode: &'static str,
    pub project: String,
    pub epoch: u64,
    pub hydrated: bool,
    /// Hydrated and the mount (or watcher) is up.
    pub ready: bool,
    pub hydration: hydrate::ProgressView,
    pub dirty: usize,
    /// Changes exist that are not yet in the store.
    pub pending: bool,
    pub last_commit: CommitId,
    pub last_commit_time_ms: u64,
    /// Age of the oldest uncommitted change.
    pub commit_lag_ms: u64,
    pub store: StoreHealth,
    pub fenced: bool,
    pub files: usize,
    /// Changes that could not be saved because the path cannot be read
    /// (at most 100 listed), with the error.
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub path: String,
    pub error: String,
}

pub struct Workspace {
    root: Arc<Root>,
    cfg: Config,
    mode: &'static str,
    project: String,
    state: Mutex<State>,
    wake: Notify,
    events: broadcast::Sender<ChangeEvent>,
    health: Mutex<StoreHealth>,
    epoch: std::sync::atomic::AtomicU64,
    fenced: AtomicBool,
    hydrated: AtomicBool,
    ready: AtomicBool,
    stopped: AtomicBool,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    blobs: Mutex<Option<BlobSink>>,
}

impl Workspace {
    /// A workspace over the cache directory `root`, not yet hydrated.
    pub fn new(root: Root, mode: &'static str, project: &str, cfg: Config) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            root: Arc::new(root),
            cfg,
            mode,
            project: project.to_owned(),
            state: Mutex::new(State {
                index: Tree::new(false),
                dirty: HashMap::new(),
                writers: HashMap::new(),
                next_writer: 0,
                renames: Vec::new(),
                gen: 0,
                first_dirty: None,
                last_change: Instant::now(),
                waiters: Vec::new(),
                batches_taken: 0,
                batches_done: 0,
                head: CommitId { epoch: 0, seq: 0 },
                head_time_ms: 0,
                since_checkpoint: 0,
                shutdown: false,
                unreadable: Default::default(),
            }),
            wake: Notify::new(),
            events,
            health: Mutex::new(StoreHealth::default()),
            epoch: Default::default(),
            fenced: AtomicBool::new(false),
            hydrated: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            progress: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            blobs: Mutex::new(None),
        })
    }

    pub fn root(&self) -> &Arc<Root> {
        &self.root
    }

    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Claim the project, hydrate the cache and start committing. Returns the
    /// committer task, which ends after [`Workspace::shutdown`] (or fencing).
    pub async fn start(
        self: &Arc<Self>,
        journal: Journal,
        epoch: Option<u64>,
        owner: Option<Owner>,
        warm: Option<(CommitId, i64)>,
    ) -> Result<tokio::task::JoinHandle<()>, JournalError> {
        let t0 = Instant::now();
        self.health.lock().url = journal.store().describe();
        let (writer, chain) = Writer::open(journal.clone(), epoch).await?;
        self.epoch.store(writer.epoch(), Ordering::Relaxed);
        // `warm`: the head a clean stop left this cache at. If the store is
        // still there and the cache checks out, there is nothing to fetch.
        let adopted = match warm {
            Some((h, stopped_ns)) if h == chain.head() => {
                hydrate::adopt(
                    &journal,
                    self.root.clone(),
                    h,
                    stopped_ns,
                    self.progress.clone(),
                )
                .await?
            }
            Some((h, _)) => {
                tracing::info!(stopped_at = %h, head = %chain.head(), "the project changed since the clean stop: hydrating");
                None
            }
            None => None,
        };
        let how = if adopted.is_some() { "warm" } else { "cold" };
        let (index, head) = match adopted {
            Some(index) => (index, chain.head()),
            None => {
                hydrate::hydrate(
                    &journal,
                    &chain,
                    self.root.clone(),
                    owner,
                    self.progress.clone(),
                )
                .await?
            }
        };
        let blobs = BlobSink::new(journal.store().clone(), tokio::runtime::Handle::current());
        blobs.learn(&index);
        *self.blobs.lock() = Some(blobs);
        {
            let mut st = self.state.lock();
            st.index = index;
            st.head = head;
        }
        self.set_health(Ok(()));
        self.metrics
            .hydration_seconds
            .set(t0.elapsed().as_secs_f64());
        release_memory();
        self.hydrated.store(true, Ordering::SeqCst);
        tracing::info!(
            project = %self.project,
            epoch = writer.epoch(),
            head = %head,
            files = self.state.lock().index.len(),
            ms = t0.elapsed().as_millis() as u64,
            start = how,
            "hydrated"
        );
        let me = self.clone();
        Ok(tokio::spawn(async move { me.run(writer).await }))
    }

    pub fn is_hydrated(&self) -> bool {
        self.hydrated.load(Ordering::SeqCst)
    }

    /// Called by the binary once the front (mount or watcher) is up: from
    /// then on the workspace may be used, and `/readyz` says so.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    // ---- what the fronts report -------------------------------------

    /// `path` (relative) may have changed: commit it after the debounce.
    pub fn mark_dirty(&self, path: &str) {
        if path.is_empty() {
            return;
        }
        let n = {
            let mut st = self.state.lock();
            st.touch(path);
            st.dirty.len()
        };
        self.metrics.dirty_paths.set(n as i64);
        self.wake.notify_one();
    }

    /// `from` was renamed to `to` (atomically, as the kernel did it).
    pub fn rename(&self, from: &str, to: &str) {
        {
            let mut st = self.state.lock();
            st.renames.push((from.to_owned(), to.to_owned()));
            let prefix = format!("{from}/");
            let moved: Vec<String> = st
                .dirty
                .keys()
                .filter(|k| *k == from || k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in moved {
                st.dirty.remove(&k);
                let nk = format!("{to}{}", &k[from.len()..]);
                st.touch(&nk);
            }
            for p in st.writers.values_mut() {
                if p == from || p.starts_with(&prefix) {
                    *p = format!("{to}{}", &p[from.len()..]);
                }
            }
            st.touch(to);
        }
        self.wake.notify_one();
    }

    /// A handle open for writing on `path`: its content is not committed
    /// before the handle closes (or a flush asks for it).
    pub fn open_writer(&self, path: &str) -> u64 {
        let mut st = self.state.lock();
        st.next_writer += 1;
        let id = st.next_writer;
        st.writers.insert(id, path.to_owned());
        st.touch(path);
        id
    }

    pub fn close_writer(&self, id: u64) {
        {
            let mut st = self.state.lock();
            if let Some(p) = st.writers.remove(&id) {
                st.touch(&p);
            }
        }
        self.wake.notify_one();
    }

    /// Publish a change-feed event.
    pub fn emit(&self, path: &str, kind: ChangeKind, from: Option<&str>) {
        let _ = self.events.send(ChangeEvent {
            path: path.to_owned(),
            kind,
            from: from.map(str::to_owned),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.events.subscribe()
    }

    // ---- durability ---------------------------------------------------

    /// Everything in the store: in watch mode a scan first, since inotify
    /// may not have delivered every event yet.
    pub async fn flush_all(self: &Arc<Self>) -> Result<CommitId, FlushError> {
        if self.mode == "watch" {
            self.scan().await;
        }
        self.flush(None).await
    }

    /// Wait until the current content of `paths` (everything, if `None`) is
    /// in the store. Returns the commit that holds it.
    pub async fn flush(&self, paths: Option<&[String]>) -> Result<CommitId, FlushError> {
        if !self.is_hydrated() {
            return Err(FlushError::NotReady);
        }
        if self.fenced.load(Ordering::SeqCst) {
            return Err(FlushError::Fenced);
        }
        let t0 = Instant::now();
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state.lock();
            if st.shutdown && self.stopped.load(Ordering::SeqCst) {
                return Err(FlushError::ShuttingDown);
            }
            // What is asked about is re-read whatever events said: writes
            // through passthrough or missed by inotify are not lost.
            let open: Vec<String> = st.writers.values().cloned().collect();
            for p in open {
                if paths.is_none() {
                    st.touch(&p);
                }
            }
            if let Some(ps) = paths {
                for p in ps {
                    if !p.is_empty() && crate::tree::valid(p) {
                        st.touch(p);
                    }
                }
            }
            let need: HashMap<String, u64> = match paths {
                None => st.dirty.clone(),
                Some(ps) => {
                    let mut need = HashMap::new();
                    for p in ps {
                        if !crate::tree::valid(p) && !p.is_empty() {
                            return Err(FlushError::BadPath(p.clone()));
                        }
                        let prefix = format!("{p}/");
                        for (k, g) in st.dirty.iter() {
                            if p.is_empty() || k == p || k.starts_with(&prefix) {
                                need.insert(k.clone(), *g);
                            }
                        }
                    }
                    need
                }
            };
            let min_batch = st.batches_taken + 1;
            st.waiters.push(Waiter {
                need,
                min_batch,
                all: paths.is_none(),
                tx,
            });
        }
        self.wake.notify_one();
        let res = rx.await.unwrap_or(Err(FlushError::ShuttingDown));
        self.metrics
            .flush_seconds
            .observe(t0.elapsed().as_secs_f64());
        res
    }

    /// Flush everything, write a final checkpoint and stop the committer.
    pub async fn shutdown(&self) -> Result<CommitId, FlushError> {
        let res = if self.is_hydrated() {
            self.flush(None).await
        } else {
            Err(FlushError::NotReady)
        };
        self.state.lock().shutdown = true;
        self.wake.notify_one();
        res
    }

    // ---- status -------------------------------------------------------

    pub fn status(&self) -> Status {
        let st = self.state.lock();
        let lag = st
            .first_dirty
            .filter(|_| !st.dirty.is_empty() || !st.renames.is_empty())
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        Status {
            mode: self.mode,
            project: self.project.clone(),
            epoch: self.epoch.load(Ordering::Relaxed),
            hydrated: self.is_hydrated(),
            ready: self.is_ready(),
            hydration: self.progress.view(),
            dirty: st.dirty.len(),
            pending: !st.dirty.is_empty() || !st.renames.is_empty(),
            last_commit: st.head,
            last_commit_time_ms: st.head_time_ms,
            commit_lag_ms: lag,
            store: self.health.lock().clone(),
            fenced: self.fenced.load(Ordering::SeqCst),
            files: st.index.len(),
            unreadable: st
                .unreadable
                .iter()
                .take(100)
                .map(|(p, e)| Unreadable {
                    path: p.clone(),
                    error: e.clone(),
                })
                .collect(),
        }
    }

    /// A copy of the committed index (tests, scans).
    pub fn index_snapshot(&self) -> Tree {
        self.state.lock().index.clone()
    }

    fn set_health(&self, r: Result<(), String>) {
        let mut h = self.health.lock();
        match r {
            Ok(()) => {
                h.healthy = true;
                h.error = None;
                self.metrics.store_up.set(1);
            }
            Err(e) => {
                h.healthy = false;
                h.error = Some(e);
                self.metrics.store_up.set(0);
            }
        }
    }

    // ---- reconciliation -------------------------------------------------

    /// Compare the whole cache with the index and mark every difference
    /// dirty: catches what events missed (watch-mode overflow, hard links).
    /// Returns how many paths it marked.
    pub async fn scan(self: &Arc<Self>) -> usize {
        let me = self.clone();
        let found = tokio::task::spawn_blocking(move || me.scan_blocking()).await;
        let found = found.unwrap_or_default();
        let n = found.len();
        if n > 0 {
            tracing::info!(paths = n, "reconciliation scan found changes");
            for p in &found {
                self.mark_dirty(p);
            }
        }
        n
    }

    fn scan_blocking(&self) -> Vec<String> {
        use crate::fsutil::{is_dir, is_symlink, join, mtime_ns};
        use crate::tree::Content;
        let index = self.state.lock().index.clone();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let Ok(names) = self.root.list(&dir) else {
                continue;
            };
            for name in names {
                let path = join(&dir, &name);
                let Ok(Some(st)) = self.root.lstat_opt(&path) else {
                    continue;
                };
                seen.insert(path.clone());
                let mode = st.st_mode & 0o7777;
                let same = match index.get(&path) {
                    None => false,
                    Some(n) => match &n.content {
                        Content::Dir => is_dir(&st) && n.mode == mode,
                        Content::Symlink(t) => {
                            is_symlink(&st)
                                && self
                                    .root
                                    .readlink(&path)
                                    .ok()
                                    .and_then(|l| l.into_string().ok())
                                    .as_deref()
                                    == Some(t.as_str())
                        }
                        _ => {
                            crate::fsutil::is_file(&st)
                                && n.mode == mode
                                && n.size == st.st_size as u64
                                && n.mtime == mtime_ns(&st)
                        }
                    },
                };
                if is_dir(&st) {
                    stack.push(path.clone());
                }
                let storable = crate::fsutil::is_file(&st) || is_dir(&st) || is_symlink(&st);
                if !same && (storable || index.get(&path).is_some()) {
                    out.push(path);
                }
            }
        }
        for (p, _) in index.iter() {
            if !seen.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    // ---- the committer --------------------------------------------------

    async fn run(self: Arc<Self>, mut writer: Writer) {
        let mut last_scan = Instant::now();
        loop {
            // Wait until something is due.
            let due = loop {
                let (due, wait, quit) = self.readiness();
                if quit {
                    break None;
                }
                if due {
                    break Some(());
                }
                if let Some(iv) = self.cfg.scan_interval {
                    if last_scan.elapsed() >= iv {
                        last_scan = Instant::now();
                        self.scan().await;
                        continue;
                    }
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            };
            if due.is_none() {
                break;
            }
            match self.commit_once(&mut writer).await {
                Ok(()) => {}
                Err(JournalError::Fenced { ours, newer }) => {
                    tracing::error!(ours, newer, "fenced by a newer writer; no further commits");
                    self.fenced.store(true, Ordering::SeqCst);
                    self.fail_waiters(FlushError::Fenced);
                    break;
                }
                Err(e) => {
                    // commit_once retries transient errors itself; anything
                    // else is logged and the paths stay dirty.
                    tracing::error!(error = %e, "commit failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Final checkpoint so the next start reads one object.
        if !self.fenced.load(Ordering::SeqCst) {
            self.try_checkpoint(&writer, true).await;
        }
        self.stopped.store(true, Ordering::SeqCst);
        self.fail_waiters(FlushError::ShuttingDown);
    }

    fn fail_waiters(&self, e: FlushError) {
        let waiters = std::mem::take(&mut self.state.lock().waiters);
        for w in waiters {
            let _ = w.tx.send(Err(e.clone()));
        }
    }

    /// (due now, how long to wait otherwise, quit).
    fn readiness(&self) -> (bool, Duration, bool) {
        let st = self.state.lock();
        let idle = Duration::from_secs(1);
        if !st.waiters.is_empty() {
            return (true, idle, false);
        }
        if st.shutdown {
            // Everything goes now, open files included; then stop.
            let work = !st.dirty.is_empty() || !st.renames.is_empty();
            return (work, idle, !work);
        }
        let writing: HashSet<&String> = st.writers.values().collect();
        let eligible = !st.renames.is_empty() || st.dirty.keys().any(|p| !writing.contains(p));
        if !eligible {
            return (false, idle, false);
        }
        let quiet = st.last_change.elapsed();
        let oldest = st.first_dirty.map_or(Duration::ZERO, |t| t.elapsed());
        if quiet >= self.cfg.debounce || oldest >= self.cfg.max_delay {
            return (true, idle, false);
        }
        let wait = (self.cfg.debounce - quiet).min(self.cfg.max_delay.saturating_sub(oldest));
        (false, wait.max(Duration::from_millis(1)), false)
    }

    async fn commit_once(self: &Arc<Self>, writer: &mut Writer) -> Result<(), JournalError> {
        let t0 = Instant::now();
        // 1. Take a batch.
        let (batch_no, items, renames, rename_ops) = {
            let mut st = self.state.lock();
            st.batches_taken += 1;
            // A path the format cannot hold (over PATH_MAX) is reported and
            // left out, never written into a segment readers would refuse.
            let invalid: Vec<String> = st
                .dirty
                .keys()
                .filter(|p| !crate::tree::valid(p))
                .cloned()
                .collect();
            for p in invalid {
                tracing::warn!(path = %p, "not storable (longer than PATH_MAX); left out of the store");
                st.dirty.remove(&p);
                self.metrics.read_errors.inc();
            }
            let taken = std::mem::take(&mut st.renames);
            let force_all = st.shutdown || st.waiters.iter().any(|w| w.all);
            let forced: HashSet<&String> = st.waiters.iter().flat_map(|w| w.need.keys()).collect();
            let writing: HashSet<&String> = st.writers.values().collect();
            // Paths are compared with the committed tree as it will be once
            // this batch's renames are applied.
            let (rename_ops, renamed) = effective_renames(&st.index, &taken);
            let base = renamed.as_ref().unwrap_or(&st.index);
            let mut items: Vec<(String, u64, Option<crate::tree::Node>)> = st
                .dirty
                .iter()
                .filter(|(p, _)| force_all || forced.contains(p) || !writing.contains(p))
                .map(|(p, g)| (p.clone(), *g, base.get(p).cloned()))
                .collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            if st.dirty.is_empty() {
                st.first_dirty = None;
            }
            // All of them go back if the batch cannot be read: the index
            // is unchanged until it is, so they are weighed again.
            (st.batches_taken, items, taken, rename_ops)
        };

        // 2. Read them, off the runtime.
        let blobs = self
            .blobs
            .lock()
            .clone()
            .ok_or(JournalError::Other("not hydrated".into()))?;
        let root = self.root.clone();
        let budget = self.cfg.batch_bytes;
        let read = tokio::task::spawn_blocking(move || {
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
        .map_err(|e| JournalError::Other(e.to_string()))?;
        let (results, failed) = match read {
            Ok(r) => r,
            Err(e) => {
                self.restore_renames(renames);
                self.metrics.commit_failures.inc();
                self.set_health(Err(e.to_string()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
        };

        // 3. Keep only what did not change while it was read.
        if results.is_empty() && failed.is_empty() && rename_ops.is_empty() {
            // Everything changed while it was read: let the writer finish.
            tokio::time::sleep(self.cfg.debounce).await;
        }
        let (committed, ops) = {
            let mut st = self.state.lock();
            // Not silently: status lists them until a later change to the
            // same path is recorded.
            for (p, e) in &failed {
                st.dirty.remove(p);
                st.unreadable.insert(p.clone(), e.clone());
                self.metrics.read_errors.inc();
            }
            let mut ops: Vec<Op> = rename_ops;
            let mut committed = Vec::new();
            for (path, gen, op) in results {
                if st.dirty.get(&path) != Some(&gen) {
                    continue;
                }
                if let Some(op) = op {
                    ops.push(op);
                }
                committed.push((path, gen));
            }
            (committed, ops)
        };

        // 4. Publish, retrying while the store is unreachable.
        let mut head = None;
        if !ops.is_empty() {
            let prepared = writer.prepare(ops);
            let mut backoff = Duration::from_millis(50);
            loop {
                match writer.publish(&prepared).await {
                    Ok(id) => {
                        head = Some(id);
                        self.set_health(Ok(()));
                        self.metrics
                            .segment_bytes
                            .inc_by(prepared.bytes.len() as u64);
                        self.metrics.ops_committed.inc_by(prepared.ops.len() as u64);
                        break;
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
            // 5. Apply to the index.
            let mut st = self.state.lock();
            for op in &prepared.ops {
                if let Err(e) = st.index.apply(op) {
                    tracing::error!(error = %e, "index apply failed");
                }
            }
            st.head = prepared.id;
            st.head_time_ms = crate::journal::now_ms();
            st.since_checkpoint += 1;
        }
        if let Some(b) = self.blobs.lock().as_ref() {
            let up = b.uploaded_bytes.swap(0, Ordering::Relaxed);
            self.metrics.blob_bytes.inc_by(up);
        }

        // 6. Settle: clear what was committed, wake satisfied flushes.
        let ready_ckpt;
        {
            let mut st = self.state.lock();
            for (p, g) in &committed {
                st.unreadable.remove(p);
                if st.dirty.get(p) == Some(g) {
                    st.dirty.remove(p);
                }
            }
            if st.dirty.is_empty() && st.renames.is_empty() {
                st.first_dirty = None;
            } else {
                // What is left changed after this batch was taken (or is
                // held open): its window starts now.
                st.first_dirty = Some(Instant::now());
            }
            st.batches_done = batch_no;
            let head_now = st.head;
            let committed_map: HashMap<&String, u64> =
                committed.iter().map(|(p, g)| (p, *g)).collect();
            let mut waiters = std::mem::take(&mut st.waiters);
            let dirty = &st.dirty;
            waiters.retain_mut(|w| {
                w.need.retain(|p, need| {
                    let done_now = committed_map.get(p).is_some_and(|g| g >= need);
                    let gone = !dirty.contains_key(p);
                    !(done_now || gone)
                });
                true
            });
            let mut keep = Vec::new();
            for w in waiters {
                if w.need.is_empty() && batch_no >= w.min_batch {
                    let _ = w.tx.send(Ok(head_now));
                } else {
                    keep.push(w);
                }
            }
            st.waiters = keep;
            self.metrics.dirty_paths.set(st.dirty.len() as i64);
            ready_ckpt = st.since_checkpoint >= self.cfg.checkpoint_every;
        }
        if head.is_some() {
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

    fn restore_renames(&self, mut renames: Vec<(String, String)>) {
        let mut st = self.state.lock();
        renames.append(&mut st.renames);
        st.renames = renames;
    }

    /// Write a checkpoint of the committed state if the cache matches it
    /// (nothing dirty); otherwise try again later.
    async fn try_checkpoint(&self, writer: &Writer, last: bool) {
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

/// Hydration and checkpoints decode and build tens of MB in many small
/// allocations; hand the freed pages back to the OS so a long-running
/// sidecar's RSS reflects what it holds (the index), not its peak.
fn release_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's arenas.
    unsafe {
        libc::malloc_trim(0);
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
}

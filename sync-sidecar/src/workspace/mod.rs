//! The sync engine ([`SyncEngine`]): what is dirty, when to commit, and who
//! is waiting for durability. FUSE and watch mode are thin fronts that
//! report changes here (`mark_dirty`, `rename`, `open_writer`/
//! `close_writer`); everything else — group commit, the durability
//! contract, checkpoints, retries — is plain async Rust, tested without a
//! mount.
//!
//! - `commit`: one commit cycle, step by step, and checkpoints.
//! - `waiters`: which flushes wait for which paths, and when they are
//!   answered.
//! - `scan`: the reconciliation scan (the cache against the index).
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

mod commit;
mod scan;
mod waiters;

use crate::format::CommitId;
use crate::fsutil::Root;
use crate::hydrate::{self, Owner, Progress};
use crate::journal::{Journal, JournalError, Writer};
use crate::metrics::Metrics;
use crate::snapshot::BlobSink;
use crate::tree::Tree;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, Notify};
use waiters::Waiters;

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

struct State {
    index: Tree,
    dirty: HashMap<String, u64>,
    writers: HashMap<u64, String>,
    next_writer: u64,
    renames: Vec<(String, String)>,
    gen: u64,
    first_dirty: Option<Instant>,
    last_change: Instant,
    waiters: Waiters,
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
    fn new() -> Self {
        Self {
            index: Tree::new(false),
            dirty: HashMap::new(),
            writers: HashMap::new(),
            next_writer: 0,
            renames: Vec::new(),
            gen: 0,
            first_dirty: None,
            last_change: Instant::now(),
            waiters: Waiters::default(),
            batches_taken: 0,
            batches_done: 0,
            head: CommitId { epoch: 0, seq: 0 },
            head_time_ms: 0,
            since_checkpoint: 0,
            shutdown: false,
            unreadable: Default::default(),
        }
    }

    fn touch(&mut self, path: &str) -> u64 {
        self.gen += 1;
        self.dirty.insert(path.to_owned(), self.gen);
        let now = Instant::now();
        self.first_dirty.get_or_insert(now);
        self.last_change = now;
        self.gen
    }

    /// A flush of `paths` (everything, if `None`) starts waiting. What is
    /// asked about is re-read whatever events said: writes through
    /// passthrough or missed by inotify are not lost.
    fn request_flush(
        &mut self,
        paths: Option<&[String]>,
    ) -> Result<oneshot::Receiver<waiters::Answer>, FlushError> {
        let open: Vec<String> = self.writers.values().cloned().collect();
        for p in open {
            if paths.is_none() {
                self.touch(&p);
            }
        }
        if let Some(ps) = paths {
            for p in ps {
                if !p.is_empty() && crate::tree::valid(p) {
                    self.touch(p);
                }
            }
        }
        let need = waiters::need(&self.dirty, paths)?;
        let min_batch = self.batches_taken + 1;
        Ok(self.waiters.add(need, min_batch, paths.is_none()))
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

pub struct SyncEngine {
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

impl SyncEngine {
    /// A workspace over the cache directory `root`, not yet hydrated.
    pub fn new(root: Root, mode: &'static str, project: &str, cfg: Config) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            root: Arc::new(root),
            cfg,
            mode,
            project: project.to_owned(),
            state: Mutex::new(State::new()),
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
    /// committer task, which ends after [`SyncEngine::shutdown`] (or fencing).
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
        let rx = {
            let mut st = self.state.lock();
            if st.shutdown && self.stopped.load(Ordering::SeqCst) {
                return Err(FlushError::ShuttingDown);
            }
            st.request_flush(paths)?
        };
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
        let mut waiters = std::mem::take(&mut self.state.lock().waiters);
        waiters.fail(&e);
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

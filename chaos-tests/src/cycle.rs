//! The kill cycle, written once for both targets: process mode
//! (processes.rs, workspaces the harness starts itself) and controller
//! mode (remote.rs, workspaces through the controller's API). A target
//! implements `Target`'s hooks (start, workload, kill, recovery, check);
//! `cycle` and `lane_loop` put them in order.
//!
//! One cycle: pick the fault and the kill time from the cycle's own
//! random numbers; start the worker in a terminal and the editor's saves
//! over the socket; wait for the worker's first record; let the workload
//! run (under store faults, in process mode); kill as the fault says; stop
//! the editor; recover the workspace (from an empty cache; killed again
//! during hydration if the fault says so); check it against everything the
//! lane's manifest recorded.
//!
//! Also here: what lanes share (`Shared`), the lines of `cycles.jsonl`
//! (`Line`) and the helpers both targets use.

use crate::check;
use crate::editor::{self, Ws};
use crate::ledger::Ledger;
use crate::manifest::{self, now_ms};
use crate::proxy::ProxyStats;
use crate::report::{Cycle, Violation};
use crate::run::RunFile;
use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lane's manifest, shared by the editor and (in controller mode) the
/// worker's records.
pub(crate) type Records = Arc<Mutex<manifest::Writer>>;
/// The next version of each editor lineage, kept across cycles.
pub(crate) type Versions = Arc<Mutex<HashMap<String, u64>>>;

/// Where a lane's workspace runs and how it is killed and brought back.
/// The hooks are called in the order listed, by [`cycle`] (one kill
/// cycle) and [`lane_loop`] (a lane's start, its cycles, its final stop).
pub(crate) trait Target {
    /// The faults this target can bring on.
    type Fault: Copy;
    /// What a cycle's workload leaves for the kill and the recovery: a
    /// terminal pump, an intruder, a stop in flight.
    type Work;
    /// How long the worker may take to write its first record.
    const WORKER_PATIENCE: Duration;

    /// The lane's number.
    fn lane(&self) -> u64;
    /// Everything the lane's manifest recorded.
    fn ledger(&mut self) -> &mut Ledger;
    /// Where the editor records its saves (the lane's manifest) and the
    /// versions it saves from, kept across cycles.
    fn editor(&self) -> (Records, Versions);
    /// Where the worker's errors go.
    fn worker_log(&self) -> PathBuf;
    /// What the lane's fault proxy has done so far (process mode only).
    fn counters(&self) -> Counters {
        Counters::default()
    }

    /// Brings the lane's workspace up for its first cycle.
    async fn first_start(&mut self, sh: &Shared) -> Result<()>;
    /// After `--resume`: kills what the stopped harness left running and
    /// recovers the workspace; how long the recovery took.
    async fn resume(&mut self, sh: &Shared) -> Result<Duration>;

    /// The fault of cycle `n`, from the cycle's random numbers.
    fn pick(n: u64, rng: &mut StdRng) -> Self::Fault;
    /// The fault as the report names it.
    fn fault_name(&self, sh: &Shared, fault: Self::Fault) -> String;
    /// Starts the worker of cycle `n` in a terminal; returns a socket for
    /// the editor's saves.
    async fn start_workload(
        &mut self,
        sh: &Shared,
        n: u64,
        worker_seed: u64,
    ) -> Result<(Ws, Self::Work)>;
    /// Whether the way to the worker is still open.
    fn worker_alive(_work: &Self::Work) -> bool {
        true
    }
    /// Brings on the fault's store side and lets the workload run until
    /// the kill; how long it ran.
    async fn run_workload(
        &mut self,
        sh: &Shared,
        fault: Self::Fault,
        kill_after: Duration,
        work: &Self::Work,
    ) -> Result<Duration>;
    /// The kill the fault calls for.
    async fn kill(
        &mut self,
        fault: Self::Fault,
        rng: &mut StdRng,
        work: &mut Self::Work,
    ) -> Result<()>;
    /// Store faults end with the kill.
    fn clear_faults(&self) {}
    /// Waits for what the kill left in flight (the editor is stopped).
    async fn settle(&mut self, work: &mut Self::Work) -> Result<()>;
    /// Brings the workspace back, killing it again during hydration if the
    /// fault says so; the recovery's own violations (a failed first try).
    async fn recover(
        &mut self,
        n: u64,
        seed: u64,
        fault: Self::Fault,
        rng: &mut StdRng,
        work: &mut Self::Work,
    ) -> Result<Vec<Violation>>;
    /// Checks the recovered workspace against everything the lane's
    /// manifest recorded; `t_kill` (Unix ms) bounds the RPO.
    async fn check(&mut self, n: u64, seed: u64, t_kill: u64) -> Result<check::Outcome>;
    /// Stops the workspace cleanly at the end of the run.
    async fn finish(&mut self) -> Result<()>;
}

/// One kill cycle on the lane's running workspace, which is recovered.
pub(crate) async fn cycle<T: Target>(
    t: &mut T,
    sh: &Shared,
    n: u64,
) -> Result<(Cycle, Vec<Violation>)> {
    let seed = sh.cfg.seed;
    let mut rng = cycle_rng(seed, n);
    let fault = T::pick(n, &mut rng);
    let kill_after = Duration::from_millis(rng.random_range(300..2500));
    // Workload: the worker in a terminal, the editor over the socket.
    let worker_seed = worker_seed(seed, n);
    let (sock, mut work) = t.start_workload(sh, n, worker_seed).await?;
    let (recs, versions) = t.editor();
    let editor = tokio::spawn(editor::save_loop(
        sock,
        worker_seed.rotate_left(17),
        n,
        versions,
        recs,
    ));
    let log = t.worker_log();
    wait_for_worker(
        t.ledger(),
        n,
        T::WORKER_PATIENCE,
        || T::worker_alive(&work),
        &log,
    )
    .await?;
    let ran = t.run_workload(sh, fault, kill_after, &work).await?;

    // The fault, ending in the kill.
    t.kill(fault, &mut rng, &mut work).await?;
    let t_kill = now_ms();
    let killed = Instant::now();
    t.clear_faults();
    editor.abort();
    let _ = editor.await;
    t.settle(&mut work).await?;

    // Recovery, then the checks against everything ever recorded.
    let mut violations = t.recover(n, seed, fault, &mut rng, &mut work).await?;
    let recovery_ms = killed.elapsed().as_millis() as u64;
    let o = t.check(n, seed, t_kill).await?;
    violations.extend(o.violations);
    let c = Cycle {
        n,
        lane: t.lane(),
        fault: t.fault_name(sh, fault),
        kill_after_ms: ran.as_millis() as u64,
        acked: o.acked,
        unsynced: o.unsynced,
        lost_unsynced: o.lost_unsynced,
        rpo_ms: o.rpo_ms,
        recovery_ms,
        violations: violations.len() as u64,
    };
    Ok((c, violations))
}

/// Starts the lane's workspace. After a resume, the target first kills
/// what the dead harness left; the recovered workspace is checked against
/// the lane's whole manifest (a kill at an unknown moment).
async fn start_lane<T: Target>(t: &mut T, sh: &Shared, resumed: bool) -> Result<Option<Line>> {
    if !resumed {
        t.first_start(sh).await?;
        return Ok(None);
    }
    let recovery = t.resume(sh).await?;
    let n = t.ledger().max_cycle.unwrap_or(0);
    let t_kill = t.ledger().last_t;
    let o = t.check(n, sh.cfg.seed, t_kill).await?;
    Ok(Some(Line::Resume {
        lane: t.lane(),
        recovery_ms: recovery.as_millis() as u64,
        acked: o.acked,
        violations: o.violations,
    }))
}

/// A lane: its start, then cycles until the run has its count, then a
/// clean stop. Every outcome goes to `tx`.
pub(crate) async fn lane_loop<T: Target>(
    mut t: T,
    sh: Arc<Shared>,
    resumed: bool,
    tx: tokio::sync::mpsc::UnboundedSender<Line>,
) {
    let fail = |n: u64, kind: &str, lane: u64, e: anyhow::Error| Line::Error {
        violation: Violation::new(n, sh.cfg.seed, kind, "", format!("lane {lane}: {e:#}")),
    };
    match start_lane(&mut t, &sh, resumed).await {
        Ok(Some(l)) => {
            let _ = tx.send(l);
        }
        Ok(None) => {}
        Err(e) => {
            let n = t.ledger().max_cycle.unwrap_or(0);
            let _ = tx.send(fail(n, "harness_error", t.lane(), e));
            sh.stop.store(true, Ordering::SeqCst);
            return;
        }
    }
    while !sh.stop.load(Ordering::SeqCst)
        && sh
            .to_start
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
            .is_ok()
    {
        let n = sh.next_n.fetch_add(1, Ordering::SeqCst);
        let before = t.counters();
        match cycle(&mut t, &sh, n).await {
            Ok((cycle, violations)) => {
                let proxy = t.counters().since(before);
                let _ = tx.send(Line::Cycle {
                    cycle,
                    violations,
                    proxy,
                });
            }
            Err(e) => {
                // The harness could not go on (a workspace that does not
                // come back, a hang): that is a failure too, and the
                // report of the cycles so far is still written.
                let _ = tx.send(fail(n, "harness_error", t.lane(), e));
                sh.stop.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    if let Err(e) = t.finish().await {
        let n = sh.next_n.load(Ordering::SeqCst);
        let _ = tx.send(fail(n, "final_stop", t.lane(), e));
    }
}

/// One line of `cycles.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Line {
    Cycle {
        cycle: Cycle,
        violations: Vec<Violation>,
        /// What the lane's fault proxy did during the cycle.
        proxy: Counters,
    },
    /// A lane's check after a resume. Its violations count; it is not a
    /// cycle.
    Resume {
        lane: u64,
        recovery_ms: u64,
        acked: u64,
        violations: Vec<Violation>,
    },
    /// The harness could not go on (or a final stop failed): a failure.
    Error { violation: Violation },
}

/// What a fault proxy did (process mode; zero in controller mode).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) requests: u64,
    pub(crate) errors_before: u64,
    pub(crate) errors_after: u64,
    pub(crate) dropped: u64,
    pub(crate) refused: u64,
}

impl Counters {
    pub(crate) fn of(s: &ProxyStats) -> Self {
        Counters {
            requests: s.requests,
            errors_before: s.errors_before,
            errors_after: s.errors_after,
            dropped: s.dropped,
            refused: s.refused,
        }
    }

    fn since(self, before: Counters) -> Self {
        Counters {
            requests: self.requests - before.requests,
            errors_before: self.errors_before - before.errors_before,
            errors_after: self.errors_after - before.errors_after,
            dropped: self.dropped - before.dropped,
            refused: self.refused - before.refused,
        }
    }

    pub(crate) fn add(&mut self, o: Counters) {
        self.requests += o.requests;
        self.errors_before += o.errors_before;
        self.errors_after += o.errors_after;
        self.dropped += o.dropped;
        self.refused += o.refused;
    }
}

/// What all lanes share.
pub(crate) struct Shared {
    pub(crate) cfg: RunFile,
    pub(crate) out: PathBuf,
    /// The tar archive the worker extracts (process mode).
    pub(crate) tarball: PathBuf,
    /// This binary: the worker's command in process mode.
    pub(crate) me: PathBuf,
    pub(crate) outage: Duration,
    /// The next cycle number.
    pub(crate) next_n: AtomicU64,
    /// Cycles still to start.
    pub(crate) to_start: AtomicU64,
    pub(crate) stop: AtomicBool,
}

/// Bounds an await that must not hang a CI run.
pub(crate) async fn within<T>(
    what: &str,
    d: Duration,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {d:?}"))?
}

/// The random choices of cycle `n`: a function of the seed and `n` only.
pub(crate) fn cycle_rng(seed: u64, n: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ n.wrapping_mul(0xa076_1d64_78bd_642f) ^ 0x5eed)
}

/// The worker's seed in cycle `n` (the editor's is derived from it).
pub(crate) fn worker_seed(seed: u64, n: u64) -> u64 {
    seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The worker's command line in cycle `n`; `place` says where it works and
/// where its records and state are, which differs between the targets.
pub(crate) fn worker_command(
    exe: String,
    worker_seed: u64,
    n: u64,
    tar_files: u64,
    place: &[(&str, String)],
) -> Vec<String> {
    let mut c = vec![exe, "worker".into()];
    for (flag, value) in place {
        c.push((*flag).into());
        c.push(value.clone());
    }
    for (flag, value) in [
        ("--seed", worker_seed),
        ("--cycle", n),
        ("--tar-files", tar_files),
    ] {
        c.push(flag.into());
        c.push(value.to_string());
    }
    c
}

/// Waits for the worker of cycle `n` to be at work: its first record (the
/// editor's records share the manifest and do not count). The kill clock
/// starts there, so no cycle is spent on start-up alone. `alive` says
/// whether the way to the worker is still open.
pub(crate) async fn wait_for_worker(
    ledger: &mut Ledger,
    n: u64,
    patience: Duration,
    alive: impl Fn() -> bool,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        ledger.refresh()?;
        if ledger.worker_cycle.is_some_and(|c| c >= n) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline && alive(),
            "the worker wrote nothing within {} s (see {})",
            patience.as_secs(),
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the tree at `root` against everything `ledger` recorded, then
/// forgets what later checks cannot need. Off the runtime's threads (the
/// checks read thousands of files), so the ledger goes with them and comes
/// back; an error stops the run, so a ledger lost with it is never used.
pub(crate) async fn check_ledger(
    ledger: &mut Ledger,
    root: PathBuf,
    n: u64,
    seed: u64,
    t_kill: u64,
) -> Result<check::Outcome> {
    ledger.refresh()?;
    let taken = std::mem::take(ledger);
    let (o, mut back) = within("the checks", Duration::from_secs(180), async move {
        Ok(tokio::task::spawn_blocking(move || {
            let o = check::check(&root, &taken, n, seed, t_kill);
            (o, taken)
        })
        .await?)
    })
    .await?;
    back.compact();
    *ledger = back;
    Ok(o)
}

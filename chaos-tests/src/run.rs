//! The run: lanes of kill cycles (workload, fault, kill, recovery with an
//! empty cache, checks), the record of finished cycles, resuming a stopped
//! run, and the report.
//!
//! A lane is one workspace with its own project, fault proxy and manifest;
//! lanes run at once on one Garage and take cycle numbers from one counter,
//! so a cycle's choices (fault, delays, the workload's seed) depend only on
//! the run's seed and its number, whichever lane runs it. On two cores,
//! two or three lanes finish a 10,000-cycle release run in a fraction of
//! the time one does: a cycle mostly waits (for the kill, for the store).
//!
//! Every finished cycle is appended to `cycles.jsonl`, and `run.json`
//! holds what the run was started with, so a run whose harness was killed
//! (or stopped with SIGINT/SIGTERM) goes on with `--resume`: each lane
//! kills what the dead harness left running, recovers its workspace from
//! the store with an empty cache and checks it against its whole manifest
//! (a kill at an unknown moment, so no RPO) before the cycles go on.

use crate::check;
use crate::editor;
use crate::ledger::Ledger;
use crate::manifest::{self, now_ms};
use crate::proxy::{FaultProxy, Faults, ProxyStats};
use crate::remote::{self, RemoteConfig, RemoteLane};
use crate::report::{self, Cycle, Summary, Violation};
use crate::workspace::{Setup, Workspace};
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Config {
    pub profile: String,
    pub cycles: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    /// Length of the long store outage (tens of seconds in both profiles).
    pub outage: Duration,
    /// Files in the tar archive the workload extracts.
    pub tar_files: u64,
    /// Workspaces killed at once.
    pub lanes: u64,
    /// Go on with the run in `out` (its run.json decides everything else).
    pub resume: bool,
    /// Controller mode (remote.rs): workspaces through the controller's
    /// API instead of processes the harness starts.
    pub remote: Option<RemoteConfig>,
}

/// Where the S3 store is: Garage from the test command's environment.
struct S3 {
    endpoint: std::net::SocketAddr,
    region: String,
    bucket: String,
    key: String,
    secret: String,
}

fn s3_from_env() -> Result<S3> {
    let var = |k: &str| {
        std::env::var(k).with_context(|| format!("{k} is not set (run through scripts/test.sh or scripts/chaos.sh, which start Garage)"))
    };
    let ep = var("COVE_TEST_S3_ENDPOINT")?;
    let hostport = ep
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    Ok(S3 {
        endpoint: hostport
            .parse()
            .with_context(|| format!("the chaos proxy needs an ip:port endpoint, not {ep}"))?,
        region: std::env::var("COVE_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        bucket: std::env::var("COVE_TEST_S3_BUCKET").unwrap_or_else(|_| "cove-test".into()),
        key: var("COVE_TEST_S3_ACCESS_KEY")?,
        secret: var("COVE_TEST_S3_SECRET_KEY")?,
    })
}

/// What happens in a cycle besides the workload.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    KillDuringStop,
    KillDuringHydration,
    StaleWriter,
    Latency,
    Errors,
    Drops,
    Outage,
}

impl Fault {
    fn name(self, outage: Duration) -> String {
        match self {
            Fault::Kill => "kill during the workload".into(),
            Fault::KillDuringStop => "kill during a graceful stop".into(),
            Fault::KillDuringHydration => "kill during hydration".into(),
            Fault::StaleWriter => "stale writer (a second sidecar takes over)".into(),
            Fault::Latency => "store latency 20-300 ms".into(),
            Fault::Errors => "store 5xx (before and after the write)".into(),
            Fault::Drops => "store drops connections".into(),
            Fault::Outage => format!("store outage {} s", outage.as_secs()),
        }
    }

    fn pick(n: u64, rng: &mut impl Rng) -> Fault {
        if n % 25 == 12 {
            return Fault::StaleWriter;
        }
        if n % 50 == 30 {
            return Fault::Outage;
        }
        match rng.random_range(0..100) {
            0..35 => Fault::Kill,
            35..47 => Fault::KillDuringStop,
            47..59 => Fault::KillDuringHydration,
            59..73 => Fault::Latency,
            73..88 => Fault::Errors,
            _ => Fault::Drops,
        }
    }

    fn faults(self) -> Faults {
        match self {
            Fault::Latency => Faults {
                latency: Some((Duration::from_millis(20), Duration::from_millis(300))),
                ..Default::default()
            },
            Fault::Errors => Faults {
                error_before: 0.15,
                error_after: 0.1,
                ..Default::default()
            },
            Fault::Drops => Faults {
                drop_after: 0.15,
                ..Default::default()
            },
            Fault::Outage => Faults {
                outage: true,
                ..Default::default()
            },
            _ => Faults::default(),
        }
    }
}

/// Detaches the harness's FUSE mounts when a run ends, also on an error
/// (a killed sidecar leaves its mount behind).
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Detaches the mounts a killed harness left under its work directory
/// (their sidecars are gone: dead mounts, ENOTCONN to anything that looks)
/// and removes the directory. Only a `cove-chaos-*` directory is touched.
fn remove_stale_work(old: &Path) {
    let is_ours = old
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("cove-chaos-"));
    if !is_ours || !old.is_absolute() {
        return;
    }
    // (Paths with spaces are octal-escaped there; ours have none.)
    let mut mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(old))
        .collect();
    // Deepest first, so no mount is detached from under another.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in &mounts {
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "detaching a stale mount");
        }
    }
    match std::fs::remove_dir_all(old) {
        Ok(()) => tracing::info!(
            dir = %old.display(),
            mounts = mounts.len(),
            "removed the stopped harness's work directory"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %old.display(), error = %e, "removing a stale work directory")
        }
    }
}

/// What a run was started with (`run.json`); a resumed run reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunFile {
    profile: String,
    pub(crate) seed: u64,
    cycles: u64,
    lanes: u64,
    pub(crate) tar_files: u64,
    outage_secs: u64,
    /// The store prefix: `s3://<bucket>/<prefix>`, projects `chaos-<lane>`.
    prefix: String,
    started_ms: u64,
    /// Seconds the run was at work before this session of it.
    elapsed_s: f64,
    resumes: u64,
    /// Controller mode's settings; none in process mode.
    #[serde(default)]
    remote: Option<RemoteConfig>,
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

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    requests: u64,
    errors_before: u64,
    errors_after: u64,
    dropped: u64,
    refused: u64,
}

impl Counters {
    fn of(s: &ProxyStats) -> Self {
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

    fn add(&mut self, o: Counters) {
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
    out: PathBuf,
    tarball: PathBuf,
    me: PathBuf,
    outage: Duration,
    /// The next cycle number.
    pub(crate) next_n: AtomicU64,
    /// Cycles still to start.
    pub(crate) to_start: AtomicU64,
    pub(crate) stop: AtomicBool,
}

/// One workspace of the run and what its cycles use.
struct Lane {
    i: u64,
    setup: Setup,
    proxy: FaultProxy,
    mount: PathBuf,
    intruder_mount: PathBuf,
    manifest: PathBuf,
    state_file: PathBuf,
    worker_log: PathBuf,
    ledger: Ledger,
    editor_log: Arc<Mutex<manifest::Writer>>,
    editor_versions: Arc<Mutex<HashMap<String, u64>>>,
    ws: Option<Workspace>,
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
pub(crate) fn cycle_rng(seed: u64, n: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ n.wrapping_mul(0xa076_1d64_78bd_642f) ^ 0x5eed)
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

impl Lane {
    /// Checks the recovered workspace against everything the lane's
    /// manifest recorded.
    async fn check(&mut self, n: u64, seed: u64, t_kill: u64) -> Result<check::Outcome> {
        check_ledger(&mut self.ledger, self.mount.clone(), n, seed, t_kill).await
    }

    /// Where the next worker continues from.
    fn write_state(&self) -> Result<()> {
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self.ledger.worker_state())?)?;
        std::fs::rename(&tmp, &self.state_file)?;
        Ok(())
    }
}

/// One kill cycle on the lane's running workspace, which it replaces with
/// the recovered one.
async fn cycle(lane: &mut Lane, sh: &Shared, n: u64) -> Result<(Cycle, Vec<Violation>)> {
    let seed = sh.cfg.seed;
    let mut rng = cycle_rng(seed, n);
    let fault = Fault::pick(n, &mut rng);
    let kill_after = Duration::from_millis(rng.random_range(300..2500));
    let w = lane.ws.as_ref().context("no workspace")?;
    // Workload: the worker in a terminal, the editor over the socket.
    let mut sock = within(
        "connecting",
        Duration::from_secs(20),
        editor::connect(&w.ide, &lane.setup.token()),
    )
    .await?;
    let worker_seed = worker_seed(seed, n);
    lane.write_state()?;
    let command = worker_command(
        sh.me.display().to_string(),
        worker_seed,
        n,
        sh.cfg.tar_files,
        &[
            ("--root", lane.mount.display().to_string()),
            ("--manifest", lane.manifest.display().to_string()),
            ("--state", lane.state_file.display().to_string()),
            ("--tar", sh.tarball.display().to_string()),
            ("--log", lane.worker_log.display().to_string()),
        ],
    );
    within(
        "starting the worker",
        Duration::from_secs(20),
        editor::start_worker(&mut sock, command),
    )
    .await?;
    let editor = tokio::spawn(editor::save_loop(
        sock,
        worker_seed.rotate_left(17),
        n,
        lane.editor_versions.clone(),
        lane.editor_log.clone(),
    ));
    wait_for_worker(
        &mut lane.ledger,
        n,
        Duration::from_secs(30),
        || true,
        &lane.worker_log,
    )
    .await?;
    lane.proxy.set(fault.faults());
    let wait = if fault == Fault::Outage {
        // The outage, then the store back and the work going on (fsyncs
        // held during the outage now complete), then the kill.
        tokio::time::sleep(sh.outage).await;
        lane.proxy.set(Faults::default());
        tokio::time::sleep(Duration::from_secs(3)).await;
        sh.outage + Duration::from_secs(3)
    } else {
        tokio::time::sleep(kill_after).await;
        kill_after
    };

    // The fault, ending in the kill.
    let mut intruder = None;
    let w = lane.ws.take().context("no workspace")?;
    match fault {
        Fault::KillDuringStop => {
            let grace = Duration::from_millis(rng.random_range(0..400));
            w.term_then_kill(grace).await;
        }
        Fault::StaleWriter => {
            // A second sidecar claims the project while the first goes on
            // writing: none of the first's later writes may be
            // acknowledged.
            let i = within(
                "the intruder's start",
                Duration::from_secs(120),
                lane.setup.sidecar(&lane.intruder_mount, "intruder", true),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            w.kill().await;
            intruder = Some(i?);
        }
        _ => w.kill().await,
    }
    let t_kill = now_ms();
    let killed = Instant::now();
    lane.proxy.set(Faults::default());
    editor.abort();
    let _ = editor.await;
    if let Some(i) = intruder {
        within("stopping the intruder", Duration::from_secs(120), i.stop()).await?;
    }

    // Recovery, with an empty cache.
    let mut violations = Vec::new();
    if fault == Fault::KillDuringHydration {
        let s = lane.setup.sidecar(&lane.mount, "hydrating", false).await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        s.kill().await;
    }
    let recovered = match within(
        "recovery",
        Duration::from_secs(180),
        lane.setup.start(&lane.mount),
    )
    .await
    {
        Ok(w) => w,
        Err(e) => {
            // A workspace must come back at the first try; a second one
            // tells whether the damage is lasting.
            violations.push(Violation::new(
                n,
                seed,
                "recovery_failed",
                "",
                format!("{e:#}"),
            ));
            within(
                "recovery, second try",
                Duration::from_secs(180),
                lane.setup.start(&lane.mount),
            )
            .await?
        }
    };
    let recovery_ms = killed.elapsed().as_millis() as u64;
    lane.ws = Some(recovered);

    // Checks, against everything ever recorded.
    let o = lane.check(n, seed, t_kill).await?;
    violations.extend(o.violations);
    let c = Cycle {
        n,
        lane: lane.i,
        fault: fault.name(sh.outage),
        kill_after_ms: wait.as_millis() as u64,
        acked: o.acked,
        unsynced: o.unsynced,
        lost_unsynced: o.lost_unsynced,
        rpo_ms: o.rpo_ms,
        recovery_ms,
        violations: violations.len() as u64,
    };
    Ok((c, violations))
}

/// Starts the lane's workspace. After a resume, it first kills what the
/// dead harness left, and checks the recovered workspace.
async fn start_lane(lane: &mut Lane, sh: &Shared, resumed: bool) -> Result<Option<Line>> {
    if !resumed {
        lane.ws = Some(lane.setup.start(&lane.mount).await.context("first start")?);
        return Ok(None);
    }
    let t0 = Instant::now();
    lane.ws = Some(
        within(
            "recovery after the resume",
            Duration::from_secs(180),
            lane.setup.start(&lane.mount),
        )
        .await?,
    );
    let recovery_ms = t0.elapsed().as_millis() as u64;
    let n = lane.ledger.max_cycle.unwrap_or(0);
    let t_kill = lane.ledger.last_t;
    let o = lane.check(n, sh.cfg.seed, t_kill).await?;
    Ok(Some(Line::Resume {
        lane: lane.i,
        recovery_ms,
        acked: o.acked,
        violations: o.violations,
    }))
}

async fn lane_loop(
    mut lane: Lane,
    sh: Arc<Shared>,
    resumed: bool,
    tx: tokio::sync::mpsc::UnboundedSender<Line>,
) {
    match start_lane(&mut lane, &sh, resumed).await {
        Ok(Some(l)) => {
            let _ = tx.send(l);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = tx.send(Line::Error {
                violation: Violation::new(
                    lane.ledger.max_cycle.unwrap_or(0),
                    sh.cfg.seed,
                    "harness_error",
                    "",
                    format!("lane {}: {e:#}", lane.i),
                ),
            });
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
        let before = Counters::of(&lane.proxy.stats());
        match cycle(&mut lane, &sh, n).await {
            Ok((cycle, violations)) => {
                let proxy = Counters::of(&lane.proxy.stats()).since(before);
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
                let _ = tx.send(Line::Error {
                    violation: Violation::new(
                        n,
                        sh.cfg.seed,
                        "harness_error",
                        "",
                        format!("lane {}: {e:#}", lane.i),
                    ),
                });
                sh.stop.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    if let Some(w) = lane.ws.take() {
        if let Err(e) = within("the final stop", Duration::from_secs(120), w.stop()).await {
            let _ = tx.send(Line::Error {
                violation: Violation::new(
                    sh.next_n.load(Ordering::SeqCst),
                    sh.cfg.seed,
                    "final_stop",
                    "",
                    format!("lane {}: {e:#}", lane.i),
                ),
            });
        }
    }
}

/// Everything `cycles.jsonl` holds, added up.
#[derive(Default)]
struct Tally {
    cycles: Vec<Cycle>,
    violations: Vec<Violation>,
    proxy: Counters,
    resume_checks: u64,
    resume_acked: u64,
}

impl Tally {
    fn add(&mut self, l: Line) {
        match l {
            Line::Cycle {
                cycle,
                violations,
                proxy,
            } => {
                self.cycles.push(cycle);
                self.violations.extend(violations);
                self.proxy.add(proxy);
            }
            Line::Resume {
                acked, violations, ..
            } => {
                self.resume_checks += 1;
                self.resume_acked += acked;
                self.violations.extend(violations);
            }
            Line::Error { violation } => self.violations.push(violation),
        }
    }

    fn read(path: &Path) -> Result<Tally> {
        let mut t = Tally::default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // A last line cut by a kill is dropped: that cycle runs again.
        for l in text.lines() {
            if let Ok(l) = serde_json::from_str(l) {
                t.add(l);
            }
        }
        Ok(t)
    }
}

fn summarize(rf: &RunFile, sh_elapsed: f64, store: &str, t: &Tally) -> Summary {
    let mut notes = match &rf.remote {
        None => vec![
            "Every kill is a SIGKILL of the sidecar, cove-pty and every process in the workspace at once (stopped first, so none forks or writes in between); every recovery starts a new sidecar with an empty cache that hydrates from the store.".to_string(),
            "Commits are debounced 100 ms and a checkpoint is written every 8 commits, so random kill times fall during commits and checkpoints.".into(),
            "Process mode: for pod deletion through the Kubernetes API, run controller mode (--target controller --kill pods) against a cluster's controller.".into(),
        ],
        Some(r) => vec![
            format!("Controller mode: workspaces created and started through the controller at {}, killed with --kill {} ({}), recovered by the controller; the checks read an export of the store's head, which is what every recovery hydrates.", r.controller, r.kill,
                if r.kill == "pods" { "the workspace's pods deleted with a grace period of 0" } else { "SIGKILL of the workspace's processes" }),
            "The worker's records travel over its terminal; each operation starts only after the harness has its record.".into(),
            "Store faults need process mode's fault proxy; none here.".into(),
        ],
    };
    if rf.lanes > 1 {
        notes.push(format!(
            "{} lanes: that many workspaces (projects chaos-0 … chaos-{}), each with its own fault proxy and manifest, killed independently on the same Garage.",
            rf.lanes,
            rf.lanes - 1
        ));
    }
    if rf.resumes > 0 {
        notes.push(format!(
            "Resumed {} time(s): the harness was stopped and started again with --resume. Each time, every lane's workspace was recovered from the store with an empty cache and checked against its whole manifest ({} checks, {} acknowledged writes checked) before the cycles went on.",
            rf.resumes, t.resume_checks, t.resume_acked
        ));
    }
    if (t.cycles.len() as u64) < rf.cycles {
        notes.push(format!(
            "Partial: {} of {} cycles so far (the report is rewritten every 10 cycles; `--resume` goes on).",
            t.cycles.len(),
            rf.cycles
        ));
    }
    let mut cycles = t.cycles.clone();
    cycles.sort_by_key(|c| c.n);
    Summary {
        profile: rf.profile.clone(),
        seed: rf.seed,
        lanes: rf.lanes,
        started: format!("{} (Unix ms)", rf.started_ms),
        duration_s: rf.elapsed_s + sh_elapsed,
        mode: if rf.remote.is_some() {
            "as the controller runs it".into()
        } else {
            "fuse".into()
        },
        store: store.to_string(),
        cycles,
        violations: t.violations.clone(),
        proxy: vec![
            ("requests".into(), t.proxy.requests),
            ("503 before forwarding".into(), t.proxy.errors_before),
            ("500 after forwarding".into(), t.proxy.errors_after),
            ("dropped after forwarding".into(), t.proxy.dropped),
            ("refused (outage)".into(), t.proxy.refused),
        ],
        notes,
    }
}

fn write_run_file(out: &Path, rf: &RunFile) -> Result<()> {
    let tmp = out.join("run.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rf)?)?;
    std::fs::rename(&tmp, out.join("run.json"))?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut i), Ok(mut t)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = i.recv() => {}
        _ = t.recv() => {}
    }
}

pub async fn run(mut cfg: Config) -> Result<bool> {
    // Absolute: the worker runs with the workspace as its directory.
    cfg.out = std::path::absolute(&cfg.out)?;
    cfg.bin_dir = std::path::absolute(&cfg.bin_dir)?;
    let t_start = Instant::now();
    std::fs::create_dir_all(&cfg.out)?;
    let cycles_path = cfg.out.join("cycles.jsonl");
    let mut rf = if cfg.resume {
        let p = cfg.out.join("run.json");
        let mut rf: RunFile = serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("--resume: reading {}", p.display()))?,
        )
        .with_context(|| format!("--resume: {} is damaged", p.display()))?;
        rf.resumes += 1;
        rf
    } else {
        if cfg.lanes == 0 {
            bail!("--lanes must be at least 1");
        }
        for stale in [
            "run.json",
            "cycles.jsonl",
            "report.md",
            "report.json",
            "plot.png",
        ] {
            let _ = std::fs::remove_file(cfg.out.join(stale));
        }
        for i in 0..cfg.lanes.max(16) {
            let _ = std::fs::remove_dir_all(cfg.out.join(format!("lane-{i}")));
        }
        RunFile {
            profile: cfg.profile.clone(),
            seed: cfg.seed,
            cycles: cfg.cycles,
            lanes: cfg.lanes,
            tar_files: cfg.tar_files,
            outage_secs: cfg.outage.as_secs(),
            prefix: format!("chaos-{}-{}", cfg.seed, now_ms()),
            started_ms: now_ms(),
            elapsed_s: 0.0,
            resumes: 0,
            remote: cfg.remote.clone(),
        }
    };
    write_run_file(&cfg.out, &rf)?;
    // Process mode runs its own sidecars on Garage; controller mode's
    // store is the controller's.
    let s3 = match &rf.remote {
        None => Some(s3_from_env()?),
        Some(_) => None,
    };
    let store = match (&s3, &rf.remote) {
        (Some(s3), _) => format!(
            "Garage at {} through a fault proxy per lane, s3://{}/{}",
            s3.endpoint, s3.bucket, rf.prefix
        ),
        (None, Some(r)) => format!("the controller's store, {}", r.store),
        (None, None) => String::new(),
    };
    let mut tally = Tally::read(&cycles_path)?;
    let done = tally.cycles.len() as u64;
    if cfg.resume {
        eprintln!(
            "cove-chaos: resuming seed {} after {done} of {} cycles ({} lanes)",
            rf.seed, rf.cycles, rf.lanes
        );
    }

    let work = tempfile::Builder::new().prefix("cove-chaos-").tempdir()?;
    let tarball = match &s3 {
        Some(_) => crate::worker::make_tarball(work.path(), rf.tar_files)?,
        None => PathBuf::new(),
    };
    let secret = format!("{:032x}", rand::random::<u128>());
    let mut lanes = Vec::new();
    let mut remote_lanes = Vec::new();
    let mut mounts = Vec::new();
    let mut max_n = tally.cycles.iter().map(|c| c.n + 1).max().unwrap_or(0);
    if let Some(r) = &rf.remote {
        let killer = Arc::new(remote::Killer::from_config(r, &cfg.bin_dir).await?);
        for i in 0..rf.lanes {
            let lane = RemoteLane::new(
                i,
                r.clone(),
                killer.clone(),
                cfg.bin_dir.clone(),
                cfg.out.join(format!("lane-{i}")),
            )?;
            max_n = max_n.max(lane.ledger.max_cycle.map_or(0, |c| c + 1));
            remote_lanes.push(lane);
        }
    }
    for i in 0..s3.as_ref().map_or(0, |_| rf.lanes) {
        let Some(s3) = &s3 else { break };
        let dir = cfg.out.join(format!("lane-{i}"));
        std::fs::create_dir_all(dir.join("logs"))?;
        let proxy = FaultProxy::start(s3.endpoint, rf.seed ^ i ^ rf.resumes << 32).await?;
        let setup = Setup {
            bin_dir: cfg.bin_dir.clone(),
            store_url: format!("s3://{}/{}", s3.bucket, rf.prefix),
            env: vec![
                (
                    "COVE_S3_ENDPOINT".into(),
                    format!("http://{}", proxy.addr()),
                ),
                ("COVE_S3_REGION".into(), s3.region.clone()),
                ("COVE_S3_PATH_STYLE".into(), "true".into()),
                ("AWS_ACCESS_KEY_ID".into(), s3.key.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), s3.secret.clone()),
            ],
            project: format!("chaos-{i}"),
            secret: secret.clone(),
            dir: dir.join("logs"),
            pids: dir.join("pids"),
        };
        let manifest = dir.join("manifest.jsonl");
        let ledger = Ledger::open(&manifest)?;
        max_n = max_n.max(ledger.max_cycle.map_or(0, |c| c + 1));
        let editor_versions: HashMap<String, u64> = ledger
            .worker_state()
            .next
            .iter()
            .filter(|(k, _)| k.starts_with('e'))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mount = work.path().join(format!("lane-{i}/workspace"));
        let intruder_mount = work.path().join(format!("lane-{i}/intruder"));
        mounts.push(mount.clone());
        mounts.push(intruder_mount.clone());
        lanes.push(Lane {
            i,
            setup,
            proxy,
            mount,
            intruder_mount,
            editor_log: Arc::new(Mutex::new(manifest::Writer::open(&manifest)?)),
            state_file: dir.join("worker-state.json"),
            worker_log: dir.join("logs/worker.log"),
            manifest,
            ledger,
            editor_versions: Arc::new(Mutex::new(editor_versions)),
            ws: None,
        });
    }
    let _mounts = Mounts(mounts);
    if cfg.resume {
        // Every lane's leftovers first: a lane's new processes must not be
        // taken for another's.
        for lane in &lanes {
            let killed = lane.setup.kill_leftovers(&lane.manifest);
            if killed > 0 {
                tracing::info!(
                    lane = lane.i,
                    killed,
                    "killed what the stopped harness left running"
                );
            }
            lane.ledger.seal()?;
        }
        if let Ok(old) = std::fs::read_to_string(cfg.out.join("work-dir")) {
            remove_stale_work(Path::new(old.trim()));
        }
    }
    // Where this harness mounts, recorded once the last one's is cleaned
    // and before any mount: a resume after this harness is killed detaches
    // its dead mounts and removes the directory.
    std::fs::write(
        cfg.out.join("work-dir"),
        work.path().as_os_str().as_encoded_bytes(),
    )?;
    let sh = Arc::new(Shared {
        out: cfg.out.clone(),
        tarball,
        me: std::env::current_exe()?,
        outage: Duration::from_secs(rf.outage_secs),
        next_n: AtomicU64::new(max_n),
        to_start: AtomicU64::new(rf.cycles.saturating_sub(done)),
        stop: AtomicBool::new(false),
        cfg: rf.clone(),
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for lane in lanes {
        tasks.push(tokio::spawn(lane_loop(
            lane,
            sh.clone(),
            cfg.resume,
            tx.clone(),
        )));
    }
    for lane in remote_lanes {
        tasks.push(tokio::spawn(remote::lane_loop(
            lane,
            sh.clone(),
            cfg.resume,
            tx.clone(),
        )));
    }
    drop(tx);

    crate::ledger::seal(&cycles_path)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cycles_path)?;
    let mut interrupted = false;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = &mut stop => {
                interrupted = true;
                None
            }
        };
        let Some(line) = line else { break };
        let mut text = serde_json::to_vec(&line)?;
        text.push(b'\n');
        log.write_all(&text)?;
        match &line {
            Line::Cycle {
                cycle: c,
                violations,
                ..
            } => {
                eprintln!(
                    "cycle {:>5} lane {} {:<45} killed after {:>5} ms · recovered in {:>5} ms · acked {:>3} · unsynced {:>3} lost {:>3} · {}",
                    c.n,
                    c.lane,
                    c.fault,
                    c.kill_after_ms,
                    c.recovery_ms,
                    c.acked,
                    c.unsynced,
                    c.lost_unsynced,
                    if c.violations == 0 { "ok".to_string() } else { format!("{} VIOLATIONS", c.violations) }
                );
                for v in violations {
                    tracing::error!(cycle = v.cycle, kind = %v.kind, path = %v.path, detail = %v.detail, "violation");
                }
            }
            Line::Resume {
                lane,
                recovery_ms,
                acked,
                violations,
            } => {
                eprintln!(
                    "lane {lane}: recovered after the resume in {recovery_ms} ms · acked {acked} · {}",
                    if violations.is_empty() { "ok".to_string() } else { format!("{} VIOLATIONS", violations.len()) }
                );
                for v in violations {
                    tracing::error!(cycle = v.cycle, kind = %v.kind, path = %v.path, detail = %v.detail, "violation");
                }
            }
            Line::Error { violation: v } => {
                tracing::error!(cycle = v.cycle, kind = %v.kind, detail = %v.detail, "the run stopped");
            }
        }
        let is_cycle = matches!(line, Line::Cycle { .. });
        tally.add(line);
        // A long run stopped by hand keeps its report.
        if is_cycle && tally.cycles.len() % 10 == 0 && (tally.cycles.len() as u64) < rf.cycles {
            let partial = summarize(&rf, t_start.elapsed().as_secs_f64(), &store, &tally);
            if let Err(e) = report::write(&cfg.out, &partial) {
                tracing::warn!(error = %format!("{e:#}"), "writing the partial report");
            }
            let now = RunFile {
                elapsed_s: rf.elapsed_s + t_start.elapsed().as_secs_f64(),
                ..rf.clone()
            };
            if let Err(e) = write_run_file(&cfg.out, &now) {
                tracing::warn!(error = %format!("{e:#}"), "writing run.json");
            }
        }
    }
    if interrupted {
        // The lanes first (so none starts a process after the kill), then
        // everything the harness started: workspaces, their terminals'
        // processes, intruders.
        sh.stop.store(true, Ordering::SeqCst);
        for t in &tasks {
            t.abort();
        }
        for t in std::mem::take(&mut tasks) {
            let _ = t.await;
        }
        let me = std::process::id() as i32;
        crate::workspace::kill_tree(&crate::workspace::descendants(me));
        // Cycles that finished before the signal are kept.
        while let Ok(line) = rx.try_recv() {
            let mut text = serde_json::to_vec(&line)?;
            text.push(b'\n');
            log.write_all(&text)?;
            tally.add(line);
        }
        eprintln!(
            "cove-chaos: stopped after {} of {} cycles; go on with: cove-chaos run --resume --out {}",
            tally.cycles.len(),
            rf.cycles,
            sh.out.display()
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    rf.elapsed_s += t_start.elapsed().as_secs_f64();
    write_run_file(&cfg.out, &rf)?;
    let summary = summarize(&rf, 0.0, &store, &tally);
    report::write(&cfg.out, &summary)?;
    let line = report::closing_line(&summary);
    println!("{line}");
    Ok(summary.violations.is_empty() && !interrupted)
}

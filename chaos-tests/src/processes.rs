//! Process mode (`--target processes`, the default): workspaces the
//! harness starts itself, a cove-sync (FUSE) and a cove-pty per lane, on
//! Garage behind a fault proxy per lane ([`crate::proxy`]), killed with
//! SIGKILL of every process at once and recovered from an empty cache.
//!
//! Its faults: kills during the workload, a graceful stop, and hydration;
//! a stale writer (a second sidecar claims the project while the first
//! goes on writing); and store faults through the proxy (latency, 5xx,
//! dropped connections, a long outage), each ending in a kill.

use crate::check;
use crate::cycle::{
    check_ledger, within, worker_command, Counters, Records, Shared, Target, Versions,
};
use crate::editor::{self, Ws};
use crate::ledger::Ledger;
use crate::manifest;
use crate::proxy::{FaultProxy, Faults};
use crate::report::Violation;
use crate::run::RunFile;
use crate::workspace::{Setup, Sidecar, Workspace};
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the S3 store is: Garage from the test command's environment.
pub(crate) struct S3 {
    pub(crate) endpoint: std::net::SocketAddr,
    region: String,
    pub(crate) bucket: String,
    key: String,
    secret: String,
}

pub(crate) fn s3_from_env() -> Result<S3> {
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
pub(crate) enum Fault {
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
pub(crate) struct Mounts(pub(crate) Vec<PathBuf>);

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
pub(crate) fn remove_stale_work(old: &Path) {
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

/// One workspace of a process-mode run and what its cycles use.
pub(crate) struct ProcessLane {
    i: u64,
    setup: Setup,
    proxy: FaultProxy,
    mount: PathBuf,
    intruder_mount: PathBuf,
    manifest: PathBuf,
    state_file: PathBuf,
    worker_log: PathBuf,
    pub(crate) ledger: Ledger,
    editor_log: Arc<Mutex<manifest::Writer>>,
    editor_versions: Arc<Mutex<HashMap<String, u64>>>,
    ws: Option<Workspace>,
}

impl ProcessLane {
    /// Lane `i`: its fault proxy in front of Garage, its records under
    /// `out/lane-<i>`, its mounts under `work/lane-<i>`.
    pub(crate) async fn new(
        i: u64,
        s3: &S3,
        rf: &RunFile,
        bin_dir: &Path,
        out: &Path,
        work: &Path,
        secret: &str,
    ) -> Result<Self> {
        let dir = out.join(format!("lane-{i}"));
        std::fs::create_dir_all(dir.join("logs"))?;
        let proxy = FaultProxy::start(s3.endpoint, rf.seed ^ i ^ rf.resumes << 32).await?;
        let setup = Setup {
            bin_dir: bin_dir.to_path_buf(),
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
            secret: secret.to_string(),
            dir: dir.join("logs"),
            pids: dir.join("pids"),
        };
        let manifest = dir.join("manifest.jsonl");
        let ledger = Ledger::open(&manifest)?;
        let editor_versions: HashMap<String, u64> = ledger
            .worker_state()
            .next
            .iter()
            .filter(|(k, _)| k.starts_with('e'))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Ok(ProcessLane {
            i,
            setup,
            proxy,
            mount: work.join(format!("lane-{i}/workspace")),
            intruder_mount: work.join(format!("lane-{i}/intruder")),
            editor_log: Arc::new(Mutex::new(manifest::Writer::open(&manifest)?)),
            state_file: dir.join("worker-state.json"),
            worker_log: dir.join("logs/worker.log"),
            manifest,
            ledger,
            editor_versions: Arc::new(Mutex::new(editor_versions)),
            ws: None,
        })
    }

    /// Where the lane mounts (the workspace and the stale writer's).
    pub(crate) fn mounts(&self) -> [PathBuf; 2] {
        [self.mount.clone(), self.intruder_mount.clone()]
    }

    /// After a resume: kills what the stopped harness left running of
    /// this lane, and seals its manifest (a record cut by the kill ends).
    pub(crate) fn kill_leftovers(&self) -> Result<()> {
        let killed = self.setup.kill_leftovers(&self.manifest);
        if killed > 0 {
            tracing::info!(
                lane = self.i,
                killed,
                "killed what the stopped harness left running"
            );
        }
        self.ledger.seal()?;
        Ok(())
    }

    /// Where the next worker continues from.
    fn write_state(&self) -> Result<()> {
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self.ledger.worker_state())?)?;
        std::fs::rename(&tmp, &self.state_file)?;
        Ok(())
    }
}

/// What a process-mode cycle's kill leaves behind: the stale writer.
pub(crate) struct Work {
    intruder: Option<Sidecar>,
}

impl Target for ProcessLane {
    type Fault = Fault;
    type Work = Work;
    const WORKER_PATIENCE: Duration = Duration::from_secs(30);

    fn lane(&self) -> u64 {
        self.i
    }

    fn ledger(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    fn editor(&self) -> (Records, Versions) {
        (self.editor_log.clone(), self.editor_versions.clone())
    }

    fn worker_log(&self) -> PathBuf {
        self.worker_log.clone()
    }

    fn counters(&self) -> Counters {
        Counters::of(&self.proxy.stats())
    }

    async fn first_start(&mut self, _sh: &Shared) -> Result<()> {
        self.ws = Some(self.setup.start(&self.mount).await.context("first start")?);
        Ok(())
    }

    async fn resume(&mut self, _sh: &Shared) -> Result<Duration> {
        // What the stopped harness left was killed before any lane started
        // (run.rs): a lane's new processes must not be taken for another's.
        let t0 = Instant::now();
        self.ws = Some(
            within(
                "recovery after the resume",
                Duration::from_secs(180),
                self.setup.start(&self.mount),
            )
            .await?,
        );
        Ok(t0.elapsed())
    }

    fn pick(n: u64, rng: &mut StdRng) -> Fault {
        Fault::pick(n, rng)
    }

    fn fault_name(&self, sh: &Shared, fault: Fault) -> String {
        fault.name(sh.outage)
    }

    async fn start_workload(
        &mut self,
        sh: &Shared,
        n: u64,
        worker_seed: u64,
    ) -> Result<(Ws, Work)> {
        let w = self.ws.as_ref().context("no workspace")?;
        let mut sock = within(
            "connecting",
            Duration::from_secs(20),
            editor::connect(&w.ide, &self.setup.token()),
        )
        .await?;
        self.write_state()?;
        let command = worker_command(
            sh.me.display().to_string(),
            worker_seed,
            n,
            sh.cfg.tar_files,
            &[
                ("--root", self.mount.display().to_string()),
                ("--manifest", self.manifest.display().to_string()),
                ("--state", self.state_file.display().to_string()),
                ("--tar", sh.tarball.display().to_string()),
                ("--log", self.worker_log.display().to_string()),
            ],
        );
        within(
            "starting the worker",
            Duration::from_secs(20),
            editor::start_worker(&mut sock, command),
        )
        .await?;
        Ok((sock, Work { intruder: None }))
    }

    async fn run_workload(
        &mut self,
        sh: &Shared,
        fault: Fault,
        kill_after: Duration,
        _work: &Work,
    ) -> Result<Duration> {
        self.proxy.set(fault.faults());
        Ok(if fault == Fault::Outage {
            // The outage, then the store back and the work going on (fsyncs
            // held during the outage now complete), then the kill.
            tokio::time::sleep(sh.outage).await;
            self.proxy.set(Faults::default());
            tokio::time::sleep(Duration::from_secs(3)).await;
            sh.outage + Duration::from_secs(3)
        } else {
            tokio::time::sleep(kill_after).await;
            kill_after
        })
    }

    async fn kill(&mut self, fault: Fault, rng: &mut StdRng, work: &mut Work) -> Result<()> {
        let w = self.ws.take().context("no workspace")?;
        match fault {
            Fault::KillDuringStop => {
                let grace = Duration::from_millis(rng.random_range(0..400));
                w.term_then_kill(grace).await;
            }
            Fault::StaleWriter => {
                // A second sidecar claims the project while the first goes
                // on writing: none of the first's later writes may be
                // acknowledged.
                let i = within(
                    "the intruder's start",
                    Duration::from_secs(120),
                    self.setup.sidecar(&self.intruder_mount, "intruder", true),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(700)).await;
                w.kill().await;
                work.intruder = Some(i?);
            }
            _ => w.kill().await,
        }
        Ok(())
    }

    fn clear_faults(&self) {
        self.proxy.set(Faults::default());
    }

    async fn settle(&mut self, work: &mut Work) -> Result<()> {
        if let Some(i) = work.intruder.take() {
            within("stopping the intruder", Duration::from_secs(120), i.stop()).await?;
        }
        Ok(())
    }

    async fn recover(
        &mut self,
        n: u64,
        seed: u64,
        fault: Fault,
        rng: &mut StdRng,
        _work: &mut Work,
    ) -> Result<Vec<Violation>> {
        // With an empty cache: every start hydrates from the store.
        let mut violations = Vec::new();
        if fault == Fault::KillDuringHydration {
            let s = self.setup.sidecar(&self.mount, "hydrating", false).await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            s.kill().await;
        }
        let recovered = match within(
            "recovery",
            Duration::from_secs(180),
            self.setup.start(&self.mount),
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
                    self.setup.start(&self.mount),
                )
                .await?
            }
        };
        self.ws = Some(recovered);
        Ok(violations)
    }

    async fn check(&mut self, n: u64, seed: u64, t_kill: u64) -> Result<check::Outcome> {
        check_ledger(&mut self.ledger, self.mount.clone(), n, seed, t_kill).await
    }

    async fn finish(&mut self) -> Result<()> {
        match self.ws.take() {
            Some(w) => within("the final stop", Duration::from_secs(120), w.stop()).await,
            None => Ok(()),
        }
    }
}

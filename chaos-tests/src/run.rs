//! The kill cycles: workload, fault, kill, recovery with an empty cache,
//! checks; then the report.

use crate::check;
use crate::editor;
use crate::manifest::{self, now_ms, Rec};
use crate::proxy::{FaultProxy, Faults};
use crate::report::{self, Cycle, Summary, Violation};
use crate::workspace::{Setup, Workspace};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
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

/// What every cycle uses.
struct Ctx<'a> {
    setup: &'a Setup,
    proxy: &'a FaultProxy,
    mount: PathBuf,
    intruder_mount: PathBuf,
    manifest: PathBuf,
    worker_log: PathBuf,
    tarball: PathBuf,
    me: PathBuf,
    editor_versions: Arc<Mutex<HashMap<String, u64>>>,
    editor_recs: Arc<Mutex<Vec<Rec>>>,
}

/// Bounds an await that must not hang a CI run.
async fn within<T>(
    what: &str,
    d: Duration,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {d:?}"))?
}

/// The length of the manifest file (the worker appends to it).
fn manifest_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// One kill cycle on the running workspace `ws`, which it replaces with the
/// recovered one.
async fn cycle(
    ctx: &Ctx<'_>,
    cfg: &Config,
    n: u64,
    rng: &mut rand::rngs::StdRng,
    ws: &mut Option<Workspace>,
) -> Result<(Cycle, Vec<Violation>)> {
    let setup = ctx.setup;
    let fault = Fault::pick(n, rng);
    let kill_after = Duration::from_millis(rng.random_range(300..2500));
    let w = ws.as_ref().context("no workspace")?;
    // Workload: the worker in a terminal, the editor over the socket.
    let mut sock = within(
        "connecting",
        Duration::from_secs(20),
        editor::connect(&w.ide, &setup.token()),
    )
    .await?;
    let worker_seed = cfg.seed ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let before = manifest_len(&ctx.manifest);
    let command = vec![
        ctx.me.display().to_string(),
        "worker".into(),
        "--root".into(),
        ctx.mount.display().to_string(),
        "--manifest".into(),
        ctx.manifest.display().to_string(),
        "--seed".into(),
        worker_seed.to_string(),
        "--cycle".into(),
        n.to_string(),
        "--tar".into(),
        ctx.tarball.display().to_string(),
        "--tar-files".into(),
        cfg.tar_files.to_string(),
        "--log".into(),
        ctx.worker_log.display().to_string(),
    ];
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
        ctx.editor_versions.clone(),
        ctx.editor_recs.clone(),
    ));
    // The kill clock starts when the worker is at work (its first record),
    // so no cycle is spent on start-up alone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while manifest_len(&ctx.manifest) == before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker wrote nothing within 30 s (see logs/worker.log)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.proxy.set(fault.faults());
    let wait = if fault == Fault::Outage {
        // The outage, then the store back and the work going on (fsyncs
        // held during the outage now complete), then the kill.
        tokio::time::sleep(cfg.outage).await;
        ctx.proxy.set(Faults::default());
        tokio::time::sleep(Duration::from_secs(3)).await;
        cfg.outage + Duration::from_secs(3)
    } else {
        tokio::time::sleep(kill_after).await;
        kill_after
    };

    // The fault, ending in the kill.
    let mut intruder = None;
    let w = ws.take().context("no workspace")?;
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
                setup.sidecar(&ctx.intruder_mount, "intruder", true),
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
    ctx.proxy.set(Faults::default());
    editor.abort();
    let _ = editor.await;
    if let Some(i) = intruder {
        within("stopping the intruder", Duration::from_secs(120), i.stop()).await?;
    }

    // Recovery, with an empty cache.
    let mut violations = Vec::new();
    if fault == Fault::KillDuringHydration {
        let s = setup.sidecar(&ctx.mount, "hydrating", false).await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        s.kill().await;
    }
    let recovered = match within(
        "recovery",
        Duration::from_secs(180),
        setup.start(&ctx.mount),
    )
    .await
    {
        Ok(w) => w,
        Err(e) => {
            // A workspace must come back at the first try; a second one
            // tells whether the damage is lasting.
            violations.push(Violation::new(
                n,
                cfg.seed,
                "recovery_failed",
                "",
                format!("{e:#}"),
            ));
            within(
                "recovery, second try",
                Duration::from_secs(180),
                setup.start(&ctx.mount),
            )
            .await?
        }
    };
    let recovery_ms = killed.elapsed().as_millis() as u64;
    *ws = Some(recovered);

    // Checks, against everything ever recorded.
    let mut recs = manifest::read(&ctx.manifest)?;
    recs.extend(
        ctx.editor_recs
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
    );
    let m = ctx.mount.clone();
    let seed = cfg.seed;
    let o = within("the checks", Duration::from_secs(120), async move {
        Ok(tokio::task::spawn_blocking(move || check::check(&m, &recs, n, seed, t_kill)).await?)
    })
    .await?;
    violations.extend(o.violations);
    let c = Cycle {
        n,
        fault: fault.name(cfg.outage),
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

/// The run so far, as the report shows it.
#[allow(clippy::too_many_arguments)]
fn summarize(
    cfg: &Config,
    started: &str,
    t_start: Instant,
    s3: &S3,
    prefix: &str,
    proxy: &FaultProxy,
    cycles: &[Cycle],
    violations: &[Violation],
) -> Summary {
    let st = proxy.stats();
    let mut notes = vec![
        "Every kill is a SIGKILL of the sidecar, cove-pty and every process in the workspace at once (stopped first, so none forks or writes in between); every recovery starts a new sidecar with an empty cache that hydrates from the store.".to_string(),
        "Commits are debounced 100 ms and a checkpoint is written every 8 commits, so random kill times fall during commits and checkpoints.".into(),
        "Cluster mode (pod deletion through the Kubernetes API): there is no cluster runtime yet; not run.".into(),
    ];
    if (cycles.len() as u64) < cfg.cycles {
        notes.push(format!(
            "Partial: {} of {} cycles so far (the report is rewritten every 10 cycles).",
            cycles.len(),
            cfg.cycles
        ));
    }
    Summary {
        profile: cfg.profile.clone(),
        seed: cfg.seed,
        started: started.to_string(),
        duration_s: t_start.elapsed().as_secs_f64(),
        mode: "fuse".into(),
        store: format!(
            "Garage at {} through the fault proxy, s3://{}/{prefix}",
            s3.endpoint, s3.bucket
        ),
        cycles: cycles.to_vec(),
        violations: violations.to_vec(),
        proxy: vec![
            ("requests".into(), st.requests),
            ("503 before forwarding".into(), st.errors_before),
            ("500 after forwarding".into(), st.errors_after),
            ("dropped after forwarding".into(), st.dropped),
            ("refused (outage)".into(), st.refused),
        ],
        notes,
    }
}

pub async fn run(mut cfg: Config) -> Result<bool> {
    // Absolute: the worker runs with the workspace as its directory.
    cfg.out = std::path::absolute(&cfg.out)?;
    cfg.bin_dir = std::path::absolute(&cfg.bin_dir)?;
    let t_start = Instant::now();
    let started = format!("{} (Unix ms)", now_ms());
    std::fs::create_dir_all(&cfg.out)?;
    let s3 = s3_from_env()?;
    let proxy = FaultProxy::start(s3.endpoint, cfg.seed).await?;
    let work = tempfile::Builder::new().prefix("cove-chaos-").tempdir()?;
    let prefix = format!("chaos-{}-{}", cfg.seed, now_ms());
    let setup = Setup {
        bin_dir: cfg.bin_dir.clone(),
        store_url: format!("s3://{}/{prefix}", s3.bucket),
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
        project: "chaos".into(),
        secret: format!("{:032x}", rand::random::<u128>()),
        dir: cfg.out.join("logs"),
    };
    std::fs::create_dir_all(&setup.dir)?;
    let manifest_path = cfg.out.join("manifest.jsonl");
    let _ = std::fs::remove_file(&manifest_path);
    let tarball = crate::worker::make_tarball(work.path(), cfg.tar_files)?;
    let mount = work.path().join("workspace");
    let _mounts = Mounts(vec![mount.clone(), work.path().join("intruder")]);

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let ctx = Ctx {
        setup: &setup,
        proxy: &proxy,
        mount: mount.clone(),
        intruder_mount: work.path().join("intruder"),
        manifest: manifest_path.clone(),
        worker_log: cfg.out.join("logs/worker.log"),
        tarball,
        me: std::env::current_exe()?,
        editor_versions: Default::default(),
        editor_recs: Default::default(),
    };
    // The report of the cycles so far: every 10 cycles and at the end.
    let summary_of = |cycles: &[Cycle], violations: &[Violation]| {
        summarize(
            &cfg, &started, t_start, &s3, &prefix, &proxy, cycles, violations,
        )
    };
    let mut cycles = Vec::new();
    let mut violations = Vec::new();
    let mut ws = Some(setup.start(&mount).await.context("first start")?);
    for n in 0..cfg.cycles {
        match cycle(&ctx, &cfg, n, &mut rng, &mut ws).await {
            Ok((c, v)) => {
                eprintln!(
                    "cycle {n:>5} {:<45} killed after {:>5} ms · recovered in {:>5} ms · acked {:>3} · unsynced {:>3} lost {:>3} · {}",
                    c.fault,
                    c.kill_after_ms,
                    c.recovery_ms,
                    c.acked,
                    c.unsynced,
                    c.lost_unsynced,
                    if c.violations == 0 { "ok".to_string() } else { format!("{} VIOLATIONS", c.violations) }
                );
                for v in &v {
                    tracing::error!(cycle = n, kind = %v.kind, path = %v.path, detail = %v.detail, "violation");
                }
                cycles.push(c);
                violations.extend(v);
                // A long run stopped by hand keeps its report.
                if cycles.len() % 10 == 0 && (cycles.len() as u64) < cfg.cycles {
                    let partial = summary_of(&cycles, &violations);
                    if let Err(e) = report::write(&cfg.out, &partial) {
                        tracing::warn!(error = %format!("{e:#}"), "writing the partial report");
                    }
                }
            }
            Err(e) => {
                // The harness could not go on (a workspace that does not
                // come back, a hang): that is a failure too, and the report
                // of the cycles so far is still written.
                let detail = format!("{e:#}");
                tracing::error!(cycle = n, %detail, "the run stopped");
                violations.push(Violation::new(n, cfg.seed, "harness_error", "", detail));
                break;
            }
        }
    }
    if let Some(w) = ws.take() {
        if let Err(e) = w.stop().await {
            violations.push(Violation::new(
                cfg.cycles,
                cfg.seed,
                "final_stop",
                "",
                format!("{e:#}"),
            ));
        }
    }
    let summary = summary_of(&cycles, &violations);
    report::write(&cfg.out, &summary)?;
    let line = report::closing_line(&summary);
    println!("{line}");
    Ok(summary.violations.is_empty())
}

//! The kill cycles: workload, fault, kill, recovery with an empty cache,
//! checks; then the report.

use crate::check;
use crate::editor;
use crate::manifest::{self, now_ms, Rec};
use crate::proxy::{FaultProxy, Faults};
use crate::report::{self, Cycle, Summary};
use crate::workspace::Setup;
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

pub async fn run(cfg: Config) -> Result<bool> {
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
    let me = std::env::current_exe()?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let editor_versions: Arc<Mutex<HashMap<String, u64>>> = Default::default();
    let editor_recs: Arc<Mutex<Vec<Rec>>> = Default::default();
    let mut cycles = Vec::new();
    let mut violations = Vec::new();
    let mut ws = setup.start(&mount).await.context("first start")?;
    for n in 0..cfg.cycles {
        let fault = Fault::pick(n, &mut rng);
        let kill_after = Duration::from_millis(rng.random_range(300..2500));
        // Workload: the worker in a terminal, the editor over the socket.
        let mut sock = editor::connect(&ws.ide, &setup.token()).await?;
        let worker_seed = cfg.seed ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        editor::start_worker(
            &mut sock,
            vec![
                me.display().to_string(),
                "worker".into(),
                "--root".into(),
                mount.display().to_string(),
                "--manifest".into(),
                manifest_path.display().to_string(),
                "--seed".into(),
                worker_seed.to_string(),
                "--cycle".into(),
                n.to_string(),
                "--tar".into(),
                tarball.display().to_string(),
                "--tar-files".into(),
                cfg.tar_files.to_string(),
            ],
        )
        .await?;
        let editor = tokio::spawn(editor::save_loop(
            sock,
            worker_seed.rotate_left(17),
            n,
            editor_versions.clone(),
            editor_recs.clone(),
        ));
        proxy.set(fault.faults());
        let wait = if fault == Fault::Outage {
            cfg.outage
        } else {
            kill_after
        };
        tokio::time::sleep(wait).await;

        // The fault, ending in the kill.
        let mut intruder = None;
        match fault {
            Fault::KillDuringStop => {
                let grace = Duration::from_millis(rng.random_range(0..400));
                ws.term_then_kill(grace).await;
            }
            Fault::StaleWriter => {
                // A second sidecar claims the project while the first goes
                // on writing: none of the first's later writes may be
                // acknowledged.
                let m2 = work.path().join("intruder");
                intruder = Some(setup.sidecar(&m2, "intruder", true).await?);
                tokio::time::sleep(Duration::from_millis(700)).await;
                ws.kill().await;
            }
            _ => ws.kill().await,
        }
        let t_kill = now_ms();
        let killed = Instant::now();
        proxy.set(Faults::default());
        editor.abort();
        let _ = editor.await;
        if let Some(i) = intruder {
            i.stop().await.context("stopping the intruder")?;
        }

        // Recovery, with an empty cache.
        if fault == Fault::KillDuringHydration {
            let s = setup.sidecar(&mount, "hydrating", false).await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            s.kill().await;
        }
        ws = match setup.start(&mount).await {
            Ok(w) => w,
            Err(e) => {
                // One more try; a workspace that cannot come back is a
                // failure of its own.
                tracing::warn!(error = %format!("{e:#}"), "recovery failed; retrying");
                setup.start(&mount).await.context("recovery")?
            }
        };
        let recovery_ms = killed.elapsed().as_millis() as u64;

        // Checks, against everything ever recorded.
        let mut recs = manifest::read(&manifest_path)?;
        recs.extend(editor_recs.lock().map(|v| v.clone()).unwrap_or_default());
        let m = mount.clone();
        let seed = cfg.seed;
        let o =
            tokio::task::spawn_blocking(move || check::check(&m, &recs, n, seed, t_kill)).await?;
        let nv = o.violations.len() as u64;
        for v in &o.violations {
            tracing::error!(cycle = n, kind = %v.kind, path = %v.path, detail = %v.detail, "violation");
        }
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
            violations: nv,
        };
        eprintln!(
            "cycle {n:>5} {:<45} killed after {:>5} ms · recovered in {:>5} ms · acked {:>3} · unsynced {:>3} lost {:>3} · {}",
            c.fault,
            c.kill_after_ms,
            c.recovery_ms,
            c.acked,
            c.unsynced,
            c.lost_unsynced,
            if nv == 0 { "ok".to_string() } else { format!("{nv} VIOLATIONS") }
        );
        cycles.push(c);
    }
    ws.stop().await.context("the final stop")?;
    let st = proxy.stats();
    let summary = Summary {
        profile: cfg.profile.clone(),
        seed: cfg.seed,
        started,
        duration_s: t_start.elapsed().as_secs_f64(),
        mode: "fuse".into(),
        store: format!(
            "Garage at {} through the fault proxy, s3://{}/{prefix}",
            s3.endpoint, s3.bucket
        ),
        cycles,
        violations,
        proxy: vec![
            ("requests".into(), st.requests),
            ("503 before forwarding".into(), st.errors_before),
            ("500 after forwarding".into(), st.errors_after),
            ("dropped after forwarding".into(), st.dropped),
            ("refused (outage)".into(), st.refused),
        ],
        notes: vec![
            "Every kill is a SIGKILL of the sidecar, cove-pty and every process in the workspace at once (stopped first, so none forks or writes in between); every recovery starts a new sidecar with an empty cache that hydrates from the store.".into(),
            "Commits are debounced 100 ms and a checkpoint is written every 8 commits, so random kill times fall during commits and checkpoints.".into(),
            "Cluster mode (pod deletion through the Kubernetes API): there is no cluster runtime yet; not run.".into(),
        ],
    };
    report::write(&cfg.out, &summary)?;
    let line = report::closing_line(&summary);
    println!("{line}");
    Ok(summary.violations.is_empty())
}

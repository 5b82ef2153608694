//! The run: lanes of kill cycles (cycle.rs; process mode in processes.rs,
//! controller mode in remote.rs), the record of finished cycles, resuming
//! a stopped run, and the report.
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

use crate::cycle::{lane_loop, Counters, Line, Shared};
use crate::manifest::now_ms;
use crate::processes::{remove_stale_work, s3_from_env, Mounts, ProcessLane};
use crate::remote::{self, RemoteConfig, RemoteLane};
use crate::report::{self, Cycle, Summary, Violation};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    pub(crate) prefix: String,
    started_ms: u64,
    /// Seconds the run was at work before this session of it.
    elapsed_s: f64,
    pub(crate) resumes: u64,
    /// Controller mode's settings; none in process mode.
    #[serde(default)]
    remote: Option<RemoteConfig>,
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
    if let Some(s3) = &s3 {
        for i in 0..rf.lanes {
            let lane =
                ProcessLane::new(i, s3, &rf, &cfg.bin_dir, &cfg.out, work.path(), &secret).await?;
            max_n = max_n.max(lane.ledger.max_cycle.map_or(0, |c| c + 1));
            mounts.extend(lane.mounts());
            lanes.push(lane);
        }
    }
    let _mounts = Mounts(mounts);
    if cfg.resume {
        // Every lane's leftovers first: a lane's new processes must not be
        // taken for another's.
        for lane in &lanes {
            lane.kill_leftovers()?;
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
        tasks.push(tokio::spawn(lane_loop(
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

//! Controller mode (`--target controller`): the same kill cycles, driven
//! through the controller's API and gateway instead of processes the
//! harness starts itself, so they run against whatever runtime the
//! controller has: local processes, or pods on a cluster.
//!
//! - **Workspaces** are projects the harness creates from a template and
//!   starts through the API; the editor and the worker's terminal connect
//!   through the IDE socket URL the API returns, with its token.
//! - **The manifest travels over the worker's terminal**: a workspace in a
//!   pod shares no disk with the harness, and the manifest must be outside
//!   the workspace. The worker prints each record (`--manifest -`) and,
//!   before each operation, waits for the harness to acknowledge the
//!   operation's `begin` on its stdin, which the harness does once the
//!   record is in the lane's manifest file. So every operation that can
//!   have touched the workspace is known before it starts, as with a
//!   manifest file. A `done` lost in the kill only leaves a write
//!   unchecked.
//! - **The kill** is `--kill processes` (the local runtime: SIGKILL of the
//!   workspace's cove-sync and cove-pty and everything under them, found by
//!   their `--project`), or `--kill pods`: the workspace's pods deleted
//!   through the Kubernetes API with a grace period of 0, as a node failure
//!   or `kubectl delete pod --grace-period=0 --force` does.
//! - **Recovery** is whatever the controller does (its supervisor restarts
//!   the workspace, or it is `failed` and the harness starts it again),
//!   until a new cove-pty (another `instance`) answers: that time is the
//!   recovery time.
//! - **The checks** read an export of the project's head from the store
//!   (`cove-sync export`, with `--store`): that is what every recovery
//!   hydrates, wherever it runs.
//!
//! Store faults need the fault proxy between the sidecars and the store,
//! which only process mode has; here the faults are kills: during the
//! workload, during a graceful stop, and during the recovery's hydration.

use crate::check;
use crate::cycle::{check_ledger, within, worker_command, Records, Shared, Target, Versions};
use crate::editor::{self, Ws};
use crate::ledger::Ledger;
use crate::manifest::{self, Phase, Rec, TERMINAL_MARK};
use crate::report::Violation;
use anyhow::{bail, Context, Result};
use cove_pty::client::{ClientError, Incoming};
use k8s_openapi::api::core::v1::Pod;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What controller mode needs; kept in run.json for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteConfig {
    /// The controller's base URL, e.g. `http://127.0.0.1:7070`.
    pub controller: String,
    /// Open IDE-socket connections to this address instead of the URL's
    /// host (the local gateway serves `<id>.ide.localhost`, which needs no
    /// DNS). Default: the controller's address when the host ends in
    /// `.localhost`.
    pub connect_to: Option<String>,
    /// The controller's store URL: the checks read an export of its head.
    pub store: String,
    /// `processes` or `pods`.
    pub kill: String,
    /// `pods`: the namespace (default: the kubeconfig's).
    pub namespace: Option<String>,
    /// `pods`: the label selector of a workspace's pods; `{project}` is
    /// replaced by the project id.
    pub pod_selector: String,
    /// The template the lanes' projects are created from.
    pub template: String,
    /// The worker's command inside the workspace (default: this binary,
    /// which a local runtime can run; an image must have it on PATH).
    pub worker: String,
}

/// The controller's HTTP API (docs/api.md), what the harness uses of it.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Result<Self> {
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status}: {v}");
        }
        Ok(v)
    }

    /// Creates a project; returns its id.
    pub async fn create(&self, name: &str, template: &str) -> Result<String> {
        let p = self
            .call(
                reqwest::Method::POST,
                "/api/projects",
                Some(json!({"name": name, "template": template})),
            )
            .await?;
        p["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no id in {p}"))
    }

    /// Starts the workspace (idempotent); the Workspace, with a token.
    pub async fn start(&self, id: &str) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/projects/{id}/workspace/start"),
            None,
        )
        .await
    }

    pub async fn status(&self, id: &str) -> Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/projects/{id}/workspace"),
            None,
        )
        .await
    }

    pub async fn stop(&self, id: &str) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            &format!("/api/projects/{id}/workspace/stop"),
            None,
        )
        .await
    }

    /// The origin of the controller's own pages, which cove-pty accepts.
    fn origin(&self) -> String {
        let hostport = self
            .base
            .split("://")
            .nth(1)
            .unwrap_or(&self.base)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let port = hostport.rsplit_once(':').map(|(_, p)| p.to_string());
        let scheme = self.base.split("://").next().unwrap_or("http");
        match port {
            // Local mode's UI origin is `localhost`, whatever address the
            // harness uses for the API.
            Some(p) if hostport.starts_with("127.0.0.1") || hostport.starts_with("[::1]") => {
                format!("{scheme}://localhost:{p}")
            }
            _ => format!("{scheme}://{hostport}"),
        }
    }

    /// `host:port` of the controller.
    fn addr(&self) -> String {
        self.base
            .split("://")
            .nth(1)
            .unwrap_or(&self.base)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// How a workspace is killed.
pub enum Killer {
    /// The local runtime's processes: cove-sync and cove-pty of `bin_dir`
    /// whose `--project` is the project, with everything under them.
    Processes { bin_dir: PathBuf },
    /// Pods matching `selector` (with `{project}` replaced), deleted with
    /// a grace period of 0.
    Pods {
        api: Box<kube::Api<Pod>>,
        selector: String,
    },
}

impl Killer {
    pub async fn from_config(rc: &RemoteConfig, bin_dir: &Path) -> Result<Killer> {
        match rc.kill.as_str() {
            "processes" => Ok(Killer::Processes {
                bin_dir: bin_dir.to_path_buf(),
            }),
            "pods" => {
                let client = kube::Client::try_default().await.context(
                    "--kill pods: no Kubernetes API reachable (kubeconfig or in-cluster)",
                )?;
                let api = match &rc.namespace {
                    Some(ns) => kube::Api::namespaced(client, ns),
                    None => kube::Api::default_namespaced(client),
                };
                Ok(Killer::Pods {
                    api: Box::new(api),
                    selector: rc.pod_selector.clone(),
                })
            }
            k => bail!("--kill {k:?}: processes or pods"),
        }
    }

    /// Kills the workspace of `project`; how many processes or pods.
    pub async fn kill(&self, project: &str) -> Result<usize> {
        match self {
            Killer::Processes { bin_dir } => {
                let roots = workspace_processes(bin_dir, project);
                crate::workspace::kill_tree(&roots);
                Ok(roots.len())
            }
            Killer::Pods { api, selector } => {
                delete_pods(api, &selector.replace("{project}", project)).await
            }
        }
    }
}

/// Deletes the pods `selector` matches with a grace period of 0 (the
/// role needs `deletecollection` on pods). The API object goes at once;
/// the kubelet still sends SIGTERM and, after its minimal window, SIGKILL.
pub async fn delete_pods(api: &kube::Api<Pod>, selector: &str) -> Result<usize> {
    let lp = kube::api::ListParams::default().labels(selector);
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let r = api
        .delete_collection(&dp, &lp)
        .await
        .with_context(|| format!("deleting the pods {selector}"))?;
    Ok(match r {
        either::Either::Left(list) => list.items.len(),
        either::Either::Right(_) => 0,
    })
}

/// The local runtime's processes of `project`: cove-sync and cove-pty of
/// `bin_dir` started with `--project <project>`.
pub fn workspace_processes(bin_dir: &Path, project: &str) -> Vec<i32> {
    let ours = [bin_dir.join("cove-sync"), bin_dir.join("cove-pty")];
    let needle = format!("\0--project\0{project}\0");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !crate::workspace::exe_of(pid).is_some_and(|exe| ours.contains(&exe)) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// One workspace of a controller-mode run.
pub struct RemoteLane {
    pub i: u64,
    pub api: Api,
    pub rc: RemoteConfig,
    pub killer: Arc<Killer>,
    pub bin_dir: PathBuf,
    /// The lane's directory (manifest, logs, exports).
    pub dir: PathBuf,
    pub manifest: PathBuf,
    pub ledger: Ledger,
    pub writer: Arc<Mutex<manifest::Writer>>,
    pub editor_versions: Arc<Mutex<HashMap<String, u64>>>,
    /// The project, once created (also in `dir/project`).
    pub project: Option<String>,
    /// The cove-pty instance the last connection saw.
    instance: Option<String>,
}

impl RemoteLane {
    pub fn new(
        i: u64,
        rc: RemoteConfig,
        killer: Arc<Killer>,
        bin_dir: PathBuf,
        dir: PathBuf,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let manifest = dir.join("manifest.jsonl");
        let ledger = Ledger::open(&manifest)?;
        let editor_versions = ledger
            .worker_state()
            .next
            .iter()
            .filter(|(k, _)| k.starts_with('e'))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let project = std::fs::read_to_string(dir.join("project"))
            .ok()
            .map(|s| s.trim().to_string());
        Ok(RemoteLane {
            i,
            api: Api::new(&rc.controller)?,
            rc,
            killer,
            bin_dir,
            writer: Arc::new(Mutex::new(manifest::Writer::open(&manifest)?)),
            manifest,
            ledger,
            editor_versions: Arc::new(Mutex::new(editor_versions)),
            dir,
            project,
            instance: None,
        })
    }

    fn project(&self) -> Result<&str> {
        self.project.as_deref().context("no project yet")
    }

    /// Where the TCP connection for `url` goes.
    fn via(&self, url: &str) -> Option<String> {
        if let Some(c) = &self.rc.connect_to {
            return Some(c.clone());
        }
        let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
        host.ends_with(".localhost").then(|| self.api.addr())
    }

    /// A new connection to the workspace: start (idempotent, and the
    /// token), then the socket. `None` while it is not up.
    async fn connect(&mut self) -> Result<Option<(Ws, Value)>> {
        let id = self.project()?.to_string();
        let w = match self.api.start(&id).await {
            Ok(w) => w,
            // 409 while stopping, 503 while the store is away: later.
            Err(_) => return Ok(None),
        };
        let (Some(url), Some(token)) = (w["urls"]["ide_socket"].as_str(), w["token"].as_str())
        else {
            return Ok(None);
        };
        if w["state"] != "ready" {
            return Ok(None);
        }
        // Watch mode cannot hold fsync (docs/durability.md): its fsync'd
        // writes are not acknowledged ones, and the checks would cry wolf.
        if w["mode"] == "watch" {
            bail!("the controller runs {id} in watch mode; controller mode needs FUSE workspaces (run the controller as root with /dev/fuse, --mode fuse)");
        }
        let via = self.via(url);
        match editor::connect_url(url, via.as_deref(), &self.api.origin(), token).await {
            Ok(c) => Ok(Some(c)),
            Err(_) => Ok(None),
        }
    }

    /// Waits until a cove-pty other than `old` answers (the workspace came
    /// back); returns its connection.
    async fn reconnect(&mut self, old: Option<String>) -> Result<(Ws, Value)> {
        loop {
            if let Some((ws, welcome)) = self.connect().await? {
                let inst = welcome["instance"].as_str().map(str::to_string);
                if old.is_none() || inst != old {
                    self.instance = inst;
                    return Ok((ws, welcome));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Exports the project's head and checks it against the ledger.
    async fn check_export(&mut self, n: u64, seed: u64, t_kill: u64) -> Result<check::Outcome> {
        let export = self.dir.join("export");
        let _ = std::fs::remove_dir_all(&export);
        let out = tokio::process::Command::new(self.bin_dir.join("cove-sync"))
            .args([
                "--store",
                &self.rc.store,
                "export",
                "--project",
                self.project()?,
            ])
            .arg("--out")
            .arg(&export)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .context("running cove-sync export")?;
        anyhow::ensure!(
            out.status.success(),
            "cove-sync export: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let o = check_ledger(&mut self.ledger, export.clone(), n, seed, t_kill).await;
        let _ = std::fs::remove_dir_all(&export);
        o
    }
}

/// Kills the workspace, retrying for up to `patience` until there is
/// something to kill (a restart may not have spawned its processes yet);
/// how many processes or pods.
async fn kill_now(lane: &RemoteLane, id: &str, patience: Duration) -> Result<usize> {
    let until = Instant::now() + patience;
    loop {
        let n = within("the kill", Duration::from_secs(60), lane.killer.kill(id)).await?;
        if n > 0 || Instant::now() >= until {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The faults of controller mode: kills only (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Fault {
    Kill,
    KillDuringStop,
    KillDuringHydration,
}

impl Fault {
    fn pick(rng: &mut impl Rng) -> Fault {
        match rng.random_range(0..100) {
            0..60 => Fault::Kill,
            60..80 => Fault::KillDuringStop,
            _ => Fault::KillDuringHydration,
        }
    }

    fn name(self, kill: &str) -> String {
        let what = if kill == "pods" {
            "pod deletion (grace 0)"
        } else {
            "kill"
        };
        // With grace 0 the pod object goes at once, but the kubelet still
        // stops its containers with SIGTERM and a minimal window before
        // SIGKILL: a lost pod, not a power cut (docs/durability.md).
        match self {
            Fault::Kill => format!("controller: {what} during the workload"),
            Fault::KillDuringStop => format!("controller: {what} during a graceful stop"),
            Fault::KillDuringHydration => format!("controller: {what} during hydration"),
        }
    }
}

/// Reads the worker's records from its terminal (`ws`, attached to
/// `term`) into the lane's manifest, answers each `begin` with a `k` once
/// it is written, and acknowledges the output (protocol.md §7). Other
/// output goes to `noise`. Ends with the connection.
async fn pump(
    mut ws: Ws,
    term: u32,
    early: Vec<Incoming>,
    writer: Arc<Mutex<manifest::Writer>>,
    noise: PathBuf,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(noise)?;
    let mut early = early.into_iter();
    loop {
        let m = match early.next() {
            Some(m) => m,
            None => match ws.recv().await {
                Ok(m) => m,
                // The kill: the pump's work is done.
                Err(ClientError::Closed { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        let Incoming::Output {
            terminal,
            offset,
            data,
        } = m
        else {
            continue;
        };
        if terminal != term {
            continue;
        }
        let end = offset + data.len() as u64;
        buf.extend_from_slice(&data);
        let mut acks = 0;
        while let Some(i) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let rec = line
                .strip_prefix(TERMINAL_MARK.as_bytes())
                .and_then(|j| serde_json::from_slice::<Rec>(j).ok());
            match rec {
                Some(r) => {
                    writer
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .put(&r)?;
                    if r.phase == Phase::Begin {
                        acks += 1;
                    }
                }
                None => {
                    log.write_all(line)?;
                    log.write_all(b"\n")?;
                }
            }
        }
        if acks > 0 {
            ws.input(term, &b"k".repeat(acks)).await?;
        }
        ws.ack(term, end).await?;
    }
}

/// `term.create` of the worker, attached. Output may come before the
/// result (protocol.md §4.4): it is kept for the pump.
async fn create_terminal(ws: &mut Ws, command: Vec<String>) -> Result<(u32, Vec<Incoming>)> {
    let id = ws
        .send_request(
            json!({"type":"term.create","cols":200,"rows":50,"attach":true,"command":command}),
        )
        .await?;
    let mut early = Vec::new();
    loop {
        match ws.recv().await? {
            Incoming::Json(v) if v["id"] == id => {
                let t = v["result"]["terminal"]["id"]
                    .as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .with_context(|| format!("term.create refused: {v}"))?;
                return Ok((t, early));
            }
            Incoming::Json(_) => {}
            frame => early.push(frame),
        }
    }
}

/// What a controller-mode cycle's workload leaves for the kill and the
/// recovery.
pub(crate) struct Work {
    /// Reads the worker's records from its terminal.
    pump: tokio::task::JoinHandle<Result<()>>,
    /// A graceful stop the kill cuts short.
    stop: Option<tokio::task::JoinHandle<Result<Value>>>,
    /// The cove-pty instance before the kill: recovery waits for another.
    before: Option<String>,
}

impl RemoteLane {
    /// Creates the lane's project unless it has one (in `dir/project`).
    async fn ensure_project(&mut self, sh: &Shared) -> Result<()> {
        if self.project.is_none() {
            let name = format!("chaos {} lane {}", sh.cfg.seed % 100_000, self.i);
            let id = self.api.create(&name, &self.rc.template).await?;
            std::fs::write(self.dir.join("project"), &id)?;
            self.project = Some(id);
        }
        Ok(())
    }
}

impl Target for RemoteLane {
    type Fault = Fault;
    type Work = Work;
    const WORKER_PATIENCE: Duration = Duration::from_secs(60);

    fn lane(&self) -> u64 {
        self.i
    }

    fn ledger(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    fn editor(&self) -> (Records, Versions) {
        (self.writer.clone(), self.editor_versions.clone())
    }

    fn worker_log(&self) -> PathBuf {
        self.dir.join("logs/worker.log")
    }

    async fn first_start(&mut self, sh: &Shared) -> Result<()> {
        self.ensure_project(sh).await?;
        let (ws, _) = within(
            "the first start",
            Duration::from_secs(180),
            self.reconnect(None),
        )
        .await?;
        drop(ws);
        Ok(())
    }

    /// Kills and recovers the project's workspace: a resumed run's worker
    /// may still be at work.
    async fn resume(&mut self, sh: &Shared) -> Result<Duration> {
        self.ensure_project(sh).await?;
        let id = self.project()?.to_string();
        self.ledger.seal()?;
        // The instance running now (a deleted pod may answer for a moment
        // after the kill: recovery waits for another one).
        let (ws, _) = within("connecting", Duration::from_secs(180), self.reconnect(None)).await?;
        drop(ws);
        let old = self.instance.clone();
        let t0 = Instant::now();
        kill_now(self, &id, Duration::ZERO).await?;
        let (ws, _) = within(
            "recovery after the resume",
            Duration::from_secs(180),
            self.reconnect(old),
        )
        .await?;
        drop(ws);
        Ok(t0.elapsed())
    }

    fn pick(_n: u64, rng: &mut StdRng) -> Fault {
        Fault::pick(rng)
    }

    fn fault_name(&self, _sh: &Shared, fault: Fault) -> String {
        fault.name(&self.rc.kill)
    }

    async fn start_workload(
        &mut self,
        sh: &Shared,
        n: u64,
        worker_seed: u64,
    ) -> Result<(Ws, Work)> {
        self.project()?;
        // Two connections: one attached to the worker's terminal, one for
        // the editor's saves.
        let (mut term_ws, _) =
            within("connecting", Duration::from_secs(60), self.reconnect(None)).await?;
        let (editor_ws, _) =
            within("connecting", Duration::from_secs(60), self.reconnect(None)).await?;

        // The worker, on a terminal this connection is attached to.
        let command = worker_command(
            self.rc.worker.clone(),
            worker_seed,
            n,
            sh.cfg.tar_files,
            &[
                ("--root", ".".into()),
                ("--manifest", "-".into()),
                (
                    "--state-json",
                    serde_json::to_string(self.ledger.worker_state())?,
                ),
            ],
        );
        let (term, early) = within(
            "starting the worker",
            Duration::from_secs(20),
            create_terminal(&mut term_ws, command),
        )
        .await?;
        let pump = tokio::spawn(pump(
            term_ws,
            term,
            early,
            self.writer.clone(),
            self.dir.join("logs/worker.log"),
        ));
        let work = Work {
            pump,
            stop: None,
            before: None,
        };
        Ok((editor_ws, work))
    }

    fn worker_alive(work: &Work) -> bool {
        !work.pump.is_finished()
    }

    async fn run_workload(
        &mut self,
        _sh: &Shared,
        _fault: Fault,
        kill_after: Duration,
        work: &Work,
    ) -> Result<Duration> {
        tokio::time::sleep(kill_after).await;
        // A pump that ended early leaves the worker blocked at its next
        // begin: the cycle would pass with no workload.
        anyhow::ensure!(
            !work.pump.is_finished(),
            "the worker's terminal closed before the kill (see {})",
            self.dir.join("logs/worker.log").display()
        );
        Ok(kill_after)
    }

    async fn kill(&mut self, fault: Fault, rng: &mut StdRng, work: &mut Work) -> Result<()> {
        let id = self.project()?.to_string();
        work.before = self.instance.clone();
        let found = match fault {
            Fault::Kill | Fault::KillDuringHydration => kill_now(self, &id, Duration::ZERO).await?,
            Fault::KillDuringStop => {
                let api = self.api.clone();
                let p = id.clone();
                work.stop = Some(tokio::spawn(async move { api.stop(&p).await }));
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
                // The stop may have won: then there is nothing left to kill.
                kill_now(self, &id, Duration::ZERO).await?
            }
        };
        anyhow::ensure!(
            found > 0 || fault == Fault::KillDuringStop,
            "nothing to kill for {id}: with --kill processes, --bin-dir must be the controller's"
        );
        Ok(())
    }

    async fn settle(&mut self, work: &mut Work) -> Result<()> {
        // The records already on their way (the `done`s of the last
        // writes) are still read: the socket closes with the workspace.
        if tokio::time::timeout(Duration::from_secs(3), &mut work.pump)
            .await
            .is_err()
        {
            work.pump.abort();
        }
        if let Some(t) = work.stop.take() {
            // Its answer does not matter: stopped, failed, or cut short.
            let _ = within("the stop", Duration::from_secs(60), async { Ok(t.await?) }).await;
        }
        Ok(())
    }

    async fn recover(
        &mut self,
        _n: u64,
        _seed: u64,
        fault: Fault,
        rng: &mut StdRng,
        work: &mut Work,
    ) -> Result<Vec<Violation>> {
        let id = self.project()?.to_string();
        if fault == Fault::KillDuringHydration {
            // Once the workspace is coming back (the supervisor's restart,
            // or ours), kill it again 0-150 ms in.
            // A restart that is already over by the time we look (a small
            // tree hydrates fast) is killed once up, after 10 s at most.
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                let w = self.api.start(&id).await.unwrap_or(Value::Null);
                if w["state"] == "starting" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            // The controller says `starting` before it spawns the sidecar.
            kill_now(self, &id, Duration::from_secs(10)).await?;
        }
        let before = work.before.take();
        let (ws, _) = within("recovery", Duration::from_secs(180), self.reconnect(before)).await?;
        drop(ws);
        // No violations of its own: the harness waits for whatever the
        // controller does, 180 s at most.
        Ok(Vec::new())
    }

    async fn check(&mut self, n: u64, seed: u64, t_kill: u64) -> Result<check::Outcome> {
        self.check_export(n, seed, t_kill).await
    }

    /// The workspace stays as the controller has it: stopped cleanly.
    async fn finish(&mut self) -> Result<()> {
        if let Ok(id) = self.project() {
            self.api.stop(id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;

    /// `--kill pods` asks the API server for exactly this: a DELETE of
    /// the pod collection that the selector names, grace period 0.
    #[tokio::test]
    async fn pods_are_deleted_with_grace_zero() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), Method::DELETE);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/cove/pods");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("labelSelector=cove.dev%2Fproject%3Dmy-app-k3x9qa"),
                "{q}"
            );
            let body = req.into_body().collect_bytes().await.unwrap();
            let opts: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(opts["gracePeriodSeconds"], 0, "{opts}");
            let list = json!({"apiVersion":"v1","kind":"PodList","metadata":{},
                "items":[{"metadata":{"name":"ws-my-app-k3x9qa","namespace":"cove"}}]});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&list).unwrap()))
                    .unwrap(),
            );
        });
        let client = kube::Client::new(svc, "cove");
        let killer = Killer::Pods {
            api: Box::new(kube::Api::namespaced(client, "cove")),
            selector: "cove.dev/project={project}".into(),
        };
        assert_eq!(killer.kill("my-app-k3x9qa").await.unwrap(), 1);
        server.await.unwrap();
    }

    #[test]
    fn the_local_gateway_origin_is_localhost() {
        let api = Api::new("http://127.0.0.1:7070/").unwrap();
        assert_eq!(api.origin(), "http://localhost:7070");
        assert_eq!(api.addr(), "127.0.0.1:7070");
        let api = Api::new("https://cove.example.com").unwrap();
        assert_eq!(api.origin(), "https://cove.example.com");
    }
}

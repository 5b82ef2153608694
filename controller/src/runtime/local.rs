//! The local runtime: each workspace is two child processes, cove-sync (the
//! sidecar, which mounts or watches the workspace directory) and cove-pty
//! (terminals, files, preview), on loopback ports picked per start. A
//! supervisor restarts a pair whose child exits, within a budget; a stop
//! ends cove-pty, then waits for the sidecar's final flush.

use super::{Runtime, RuntimeError, StartSpec, State, Status};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct LocalConfig {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub store_url: String,
    pub mode: String,
    pub token_secret: String,
    pub allowed_origin: String,
    pub preview_domain: String,
    pub preview_url: String,
    pub preview_port_url: String,
}

struct Running {
    /// Which start this is. A supervisor or a launch left over from an
    /// earlier start (stop, then start again within its sleep) sees another
    /// number and leaves the new run alone.
    run: u64,
    status: Status,
    sidecar: Option<Child>,
    pty: Option<Child>,
    /// Unexpected exits, for the restart budget.
    crashes: Vec<std::time::Instant>,
}

/// A child that exits on its own is restarted (with its partner) up to this
/// many times within [`CRASH_WINDOW`]; the next exit marks the workspace
/// failed.
const MAX_RESTARTS: usize = 3;
const CRASH_WINDOW: Duration = Duration::from_secs(300);

/// Children get SIGTERM if the controller dies, so a killed controller
/// leaves no workspace behind (and its sidecars still flush).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            Ok(())
        });
    }
}

pub struct LocalRuntime {
    cfg: LocalConfig,
    ws: parking_lot::Mutex<HashMap<String, Running>>,
    /// Serializes start and stop per controller: they are rare and short.
    ops: tokio::sync::Mutex<()>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Ports handed to running workspaces: a port found free by binding
    /// and releasing it is not handed out twice while another workspace
    /// may not have bound it yet.
    ports: parking_lot::Mutex<std::collections::HashSet<u16>>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn term(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGTERM,
        );
    }
}

/// Waits for a line starting with `prefix` on the child's stdout.
async fn wait_line(child: &mut Child, prefix: &str, timeout: Duration) -> Option<String> {
    let out = child.stdout.take()?;
    let mut lines = BufReader::new(out).lines();
    let r = tokio::time::timeout(timeout, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with(prefix) {
                return Some(l);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    r
}

impl LocalRuntime {
    pub fn new(cfg: LocalConfig, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Arc::new(LocalRuntime {
            cfg,
            ws: parking_lot::Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            metrics,
            ports: Default::default(),
        })
    }

    /// Changes the status of `run` of `project`, if that run is current.
    fn set(&self, project: &str, run: u64, f: impl FnOnce(&mut Status)) {
        if let Some(r) = self.ws.lock().get_mut(project).filter(|r| r.run == run) {
            f(&mut r.status);
        }
    }

    /// `launch` behind a box: launch spawns `supervise`, which may call
    /// launch again, and the compiler cannot see through that cycle.
    fn launch_boxed(
        self: Arc<Self>,
        spec: StartSpec,
        run: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RuntimeError>> + Send>> {
        Box::pin(self.launch(spec, run))
    }

    async fn launch(self: Arc<Self>, spec: StartSpec, run: u64) -> Result<(), RuntimeError> {
        let p = spec.project.clone();
        let dir = self.cfg.data_dir.join("workspaces").join(&p);
        let (cache, root) = (dir.join("cache"), dir.join("workspace"));
        std::fs::create_dir_all(&cache)?;
        match std::fs::create_dir_all(&root) {
            // A sidecar that was killed leaves a dead FUSE mount here, which
            // answers ENOTCONN once the kernel's attribute cache has
            // expired, and create_dir_all then reports "File exists".
            // cove-sync detaches a stale mount itself before it mounts.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            r => r?,
        }
        let (api, ide, preview, admin, app) = {
            let mut taken = self.ports.lock();
            let mut pick = || -> Result<u16, RuntimeError> {
                for _ in 0..100 {
                    let p = free_port()?;
                    if taken.insert(p) {
                        return Ok(p);
                    }
                }
                Err(RuntimeError::NoFreePort)
            };
            (pick()?, pick()?, pick()?, pick()?, pick()?)
        };
        let started = std::time::Instant::now();
        let mut cmd = Command::new(self.cfg.bin_dir.join("cove-sync"));
        cmd.args(["--store", &self.cfg.store_url, "serve", "--project", &p])
            .arg("--workspace")
            .arg(&root)
            .arg("--cache")
            .arg(&cache)
            .args(["--mode", &self.cfg.mode])
            .args(["--api", &format!("127.0.0.1:{api}")])
            // A clean stop lets the next start keep this cache (warm start).
            .arg("--state-file")
            .arg(dir.join("sidecar.state"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(e) = spec.epoch {
            cmd.args(["--epoch", &e.to_string()]);
        }
        die_with_parent(&mut cmd);
        let mut sidecar = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            program: "cove-sync",
            source,
        })?;
        let ready = wait_line(&mut sidecar, "ready", Duration::from_secs(600)).await;
        if ready.is_none() {
            let st = sidecar.try_wait().ok().flatten();
            let _ = sidecar.kill().await;
            return Err(RuntimeError::NotReady(format!(
                "cove-sync did not become ready ({st:?})"
            )));
        }
        let mut cmd = Command::new(self.cfg.bin_dir.join("cove-pty"));
        cmd.args(["--project", &p])
            .arg("--root")
            .arg(&root)
            .args(["--sidecar", &format!("http://127.0.0.1:{api}")])
            .args(["--listen", &format!("127.0.0.1:{ide}")])
            .args(["--preview-listen", &format!("127.0.0.1:{preview}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--allowed-origin", &self.cfg.allowed_origin])
            .args(["--preview-domain", &self.cfg.preview_domain])
            .args(["--preview-url", &self.cfg.preview_url.replace("{id}", &p)])
            .args([
                "--preview-port-url",
                &self.cfg.preview_port_url.replace("{id}", &p),
            ])
            .args(["--app-port", &app.to_string()])
            .current_dir(&root)
            .env("COVE_TOKEN_SECRET", &self.cfg.token_secret)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut pty = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            program: "cove-pty",
            source,
        })?;
        if wait_line(&mut pty, "listening", Duration::from_secs(30))
            .await
            .is_none()
        {
            term(&sidecar);
            let _ = pty.kill().await;
            let _ = sidecar.wait().await;
            return Err(RuntimeError::NotReady("cove-pty did not start".into()));
        }
        let mode = if self.cfg.mode == "watch" {
            "watch"
        } else {
            "fuse"
        };
        {
            let mut ws = self.ws.lock();
            let Some(r) = ws.get_mut(&p).filter(|r| r.run == run) else {
                // Stopped (and maybe started again) meanwhile: these
                // children belong to no run; dropping them kills them.
                return Err(RuntimeError::Superseded);
            };
            r.status.mode = Some(mode.into());
            r.status.app_port = Some(app);
            r.status.ide_port = Some(ide);
            r.status.preview_port = Some(preview);
            r.status.admin_port = Some(admin);
            r.status.sidecar_port = Some(api);
            r.sidecar = Some(sidecar);
            r.pty = Some(pty);
        }
        // Ready when cove-pty says so (it follows the sidecar's readiness).
        let http = reqwest::Client::new();
        for _ in 0..600 {
            let ok = http
                .get(format!("http://127.0.0.1:{admin}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                self.set(&p, run, |s| {
                    if s.state == State::Starting {
                        s.state = State::Ready;
                        s.reason = None;
                    }
                });
                self.metrics
                    .start_seconds
                    .observe(started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::spawn(self.clone().supervise(p, run));
        Ok(())
    }

    /// Watches the children. One that exits on its own takes its partner
    /// down and both are started again, within the restart budget; after
    /// that the workspace is failed, with the reason.
    async fn supervise(self: Arc<Self>, p: String, run: u64) {
        let http = reqwest::Client::new();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            // While starting, show the sidecar's hydration progress.
            let sidecar = {
                let ws = self.ws.lock();
                ws.get(&p)
                    .filter(|r| r.run == run && r.status.state == State::Starting)
                    .and_then(|r| r.status.sidecar_port)
            };
            if let Some(port) = sidecar {
                let st: Option<serde_json::Value> = match http
                    .get(format!("http://127.0.0.1:{port}/status"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
                if let Some(mut h) = st.map(|s| s["hydration"].clone()) {
                    if let Some(m) = h.as_object_mut() {
                        m.remove("damaged");
                    }
                    self.set(&p, run, |s| s.hydration = Some(h));
                }
            }
            let restart = {
                let mut ws = self.ws.lock();
                let Some(r) = ws.get_mut(&p) else { return };
                if r.run != run || !matches!(r.status.state, State::Starting | State::Ready) {
                    return;
                }
                let mut died = None;
                if let Some(Ok(Some(st))) = r.sidecar.as_mut().map(Child::try_wait) {
                    died = Some(format!("cove-sync exited ({st})"));
                } else if let Some(Ok(Some(st))) = r.pty.as_mut().map(Child::try_wait) {
                    died = Some(format!("cove-pty exited ({st})"));
                }
                let Some(why) = died else { continue };
                let st = &r.status;
                let mut taken = self.ports.lock();
                for port in [
                    st.sidecar_port,
                    st.ide_port,
                    st.preview_port,
                    st.admin_port,
                    st.app_port,
                ]
                .into_iter()
                .flatten()
                {
                    taken.remove(&port);
                }
                drop(taken);
                for c in [r.pty.as_ref(), r.sidecar.as_ref()].into_iter().flatten() {
                    term(c);
                }
                let now = std::time::Instant::now();
                r.crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
                r.crashes.push(now);
                tracing::warn!(project = %p, reason = %why, crashes = r.crashes.len(), "workspace child exited");
                if r.crashes.len() > MAX_RESTARTS {
                    r.status.state = State::Failed;
                    r.status.reason = Some(format!("{why}; gave up after {MAX_RESTARTS} restarts"));
                    None
                } else {
                    r.status.state = State::Starting;
                    r.status.reason = Some(format!("{why}; restarting"));
                    Some((r.pty.take(), r.sidecar.take()))
                }
            };
            let Some((pty, sidecar)) = restart else {
                return;
            };
            // Wait for both to be gone (the sidecar flushes what it can).
            for mut c in [pty, sidecar].into_iter().flatten() {
                let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
                let _ = c.kill().await;
            }
            let spec = StartSpec {
                project: p.clone(),
                epoch: None,
            };
            if let Err(e) = self.clone().launch_boxed(spec, run).await {
                self.set(&p, run, |s| {
                    s.state = State::Failed;
                    s.reason = Some(e.to_string());
                });
            }
            // launch started a new supervisor.
            return;
        }
    }
}

#[async_trait::async_trait]
impl Runtime for Arc<LocalRuntime> {
    async fn start(&self, spec: StartSpec) -> Result<Status, RuntimeError> {
        let _g = self.ops.lock().await;
        let p = spec.project.clone();
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut ws = self.ws.lock();
            if let Some(r) = ws.get(&p) {
                match r.status.state {
                    State::Starting | State::Ready => return Ok(r.status.clone()),
                    // Its final flush is under way; a start now would
                    // race it for the project's directories.
                    State::Stopping => {
                        return Err(RuntimeError::Busy {
                            state: State::Stopping,
                        })
                    }
                    State::Stopped | State::Failed => {}
                }
            }
            let mut status = Status::stopped(None);
            status.state = State::Starting;
            status.started_ms = Some(cove_sync::journal::now_ms());
            ws.insert(
                p.clone(),
                Running {
                    run,
                    status,
                    sidecar: None,
                    pty: None,
                    crashes: Vec::new(),
                },
            );
        }
        let me = self.clone();
        let project = p.clone();
        tokio::spawn(async move {
            let p = project;
            if let Err(e) = me.clone().launch(spec, run).await {
                tracing::warn!(project = %p, reason = %e, "workspace failed to start");
                me.set(&p, run, |s| {
                    s.state = State::Failed;
                    s.reason = Some(e.to_string());
                });
            }
        });
        Ok(self.status(&p))
    }

    async fn stop(&self, project: &str, reason: Option<String>) -> Result<Status, RuntimeError> {
        // The lock covers the state change only: stops (each waiting for a
        // final flush) run side by side.
        let g = self.ops.lock().await;
        let (pty, sidecar, ports) = {
            let mut ws = self.ws.lock();
            let Some(r) = ws.get_mut(project) else {
                return Ok(Status::stopped(reason));
            };
            if r.status.state == State::Stopped {
                return Ok(r.status.clone());
            }
            r.status.state = State::Stopping;
            let s = &r.status;
            let ports = [
                s.sidecar_port,
                s.ide_port,
                s.preview_port,
                s.admin_port,
                s.app_port,
            ];
            (r.pty.take(), r.sidecar.take(), ports)
        };
        drop(g);
        // Terminals end first, then the sidecar's final flush.
        if let Some(mut c) = pty {
            term(&c);
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            let _ = c.kill().await;
        }
        let mut result = Status::stopped(reason);
        if let Some(mut c) = sidecar {
            term(&c);
            match c.wait().await {
                Ok(st) if st.success() => {}
                Ok(st) => {
                    result.state = State::Failed;
                    result.reason =
                        Some(format!("the final flush failed: cove-sync exited ({st})"));
                }
                Err(e) => {
                    result.state = State::Failed;
                    result.reason = Some(format!("waiting for cove-sync: {e}"));
                }
            }
        }
        if let Some(r) = self.ws.lock().get_mut(project) {
            r.status = result.clone();
        }
        let mut taken = self.ports.lock();
        for p in ports.into_iter().flatten() {
            taken.remove(&p);
        }
        Ok(result)
    }

    fn status(&self, project: &str) -> Status {
        self.ws
            .lock()
            .get(project)
            .map(|r| r.status.clone())
            .unwrap_or_else(|| Status::stopped(None))
    }

    fn running(&self) -> Vec<String> {
        self.ws
            .lock()
            .iter()
            .filter(|(_, r)| matches!(r.status.state, State::Starting | State::Ready))
            .map(|(k, _)| k.clone())
            .collect()
    }

    async fn activity(&self, project: &str) -> Option<serde_json::Value> {
        let port = self.ws.lock().get(project)?.status.admin_port?;
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/activity"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    async fn sidecar_post(
        &self,
        project: &str,
        path: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, RuntimeError> {
        let port = {
            let ws = self.ws.lock();
            let st = ws.get(project).map(|r| &r.status);
            match st {
                Some(s) if s.state == State::Ready && s.sidecar_port.is_some() => s.sidecar_port,
                _ => None,
            }
            .ok_or(RuntimeError::NotRunning {
                state: st.map_or(State::Stopped, |s| s.state),
            })?
        };
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .json(&body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| RuntimeError::Unreachable {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        let status = r.status().as_u16();
        let v = r.json().await.map_err(|e| RuntimeError::BadAnswer {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if !(200..300).contains(&status) {
            return Err(RuntimeError::Sidecar {
                path: path.to_string(),
                status,
                body: v,
            });
        }
        Ok(v)
    }

    async fn shutdown(&self) {
        for p in self.running() {
            let _ = self.stop(&p, Some("controller shut down".into())).await;
        }
    }
}

//! Benchmark of cove-controller: the real controller binary (watch mode,
//! directory store) with real cove-sync and cove-pty children, driven
//! through its API and its gateway the way the browser does.
//!
//! 1. Create a node project → shell prompt over the IDE WebSocket (create,
//!    start, upgrade + hello through the gateway, term.create, first prompt).
//! 2. Restart of a stopped project of about 20,000 files (a real
//!    node_modules) → `ready`.
//! 3. Gateway overhead on a preview request: a tiny HTTP server in this
//!    process, reached directly and through `<port>--<id>.app.localhost`.
//! 4. Controller RSS idle, with 100 stopped projects and 20 running
//!    workspaces; errors and the time until all 20 are ready.
//!
//! Build first (scripts/bench-controller.sh does): cove-sync and cove-pty
//! must be next to cove-controller in target/release.
//!
//! Environment:
//! - `BENCH_QUICK=1`: fewer samples, smaller fleet (to test the harness).
//! - `BENCH_OUT=file`: also write the Markdown report there.
//! - `BENCH_CACHE=dir`: where the reference tree is kept (default
//!   /tmp/cove-bench-cache, shared with scripts/bench-sync.sh).
//! - `BENCH_LOG=1`: the controller's (and its children's) logs on stderr
//!   instead of a file.
//!
//! Exits non-zero only when the harness itself fails; a missed goal is
//! printed as `MISSED`.

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const KIND_OUTPUT: u8 = 1;

// ---------------------------------------------------------------------------
// Configuration

struct Config {
    quick: bool,
    /// Part 1: create → prompt samples.
    prompt_samples: usize,
    /// Part 2: restart samples.
    restart_samples: usize,
    /// Part 3: requests each way, and warm-up requests each way.
    preview_requests: usize,
    preview_warmup: usize,
    /// Part 4: stopped projects and running workspaces.
    fleet_projects: usize,
    fleet_running: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Config {
                quick,
                prompt_samples: 5,
                restart_samples: 1,
                preview_requests: 500,
                preview_warmup: 50,
                fleet_projects: 20,
                fleet_running: 5,
            }
        } else {
            Config {
                quick,
                prompt_samples: 20,
                restart_samples: 3,
                preview_requests: 2000,
                preview_warmup: 200,
                fleet_projects: 100,
                fleet_running: 20,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Processes

fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    p.canonicalize().unwrap_or(p)
}

fn bin(name: &str) -> Result<PathBuf> {
    // target/release/examples/<bench> -> target/release
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run cargo build --release -p cove-sync -p cove-pty -p cove-controller --examples",
            p.display()
        );
    }
    Ok(p)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The child gets SIGTERM if the bench dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            Ok(())
        });
    }
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every process whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        // After the command: state, ppid, ...
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(ppid) {
            v.push(pid);
        }
    }
    v
}

/// Processes (other than this one) whose command line mentions `needle`.
fn procs_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            v.push((pid, cmd.trim().to_string()));
        }
    }
    v
}

fn sigterm(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
}

/// A running cove-controller over its own data directory.
struct Controller {
    child: Child,
    pid: i32,
    port: u16,
    data: PathBuf,
    log: Option<PathBuf>,
    label: &'static str,
    http: reqwest::Client,
}

impl Controller {
    fn start(dir: &Path, label: &'static str) -> Result<Controller> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let data = data.canonicalize()?;
        let port = free_port()?;
        let (stderr, log) = if std::env::var_os("BENCH_LOG").is_some() {
            (Stdio::inherit(), None)
        } else {
            let log = dir.join("controller.log");
            (Stdio::from(std::fs::File::create(&log)?), Some(log))
        };
        let mut cmd = Command::new(bin("cove-controller")?);
        cmd.args(["--port", &port.to_string(), "--mode", "watch", "--data-dir"])
            .arg(&data)
            .arg("--templates")
            .arg(repo_root().join("templates"))
            // Long enough that nothing stops for being idle during a run.
            .args(["--idle-timeout-secs", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting cove-controller")?;
        let pid = child.id() as i32;
        let out = child.stdout.take().context("stdout not piped")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()?;
        let mut c = Controller {
            child,
            pid,
            port,
            data,
            log,
            label,
            http,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining stdout after the first line.
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("cove-controller did not start ({:?})", c.child.try_wait()))
            .with_context(|| c.log_tail())?;
        if !line.starts_with("listening") {
            bail!("unexpected first line from cove-controller: {line:?}");
        }
        Ok(c)
    }

    /// The last lines of the controller's log, for error messages.
    fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return "controller log on stderr (BENCH_LOG)".into();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("last lines of {}:\n{tail}", log.display())
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    fn workspace_dir(&self, id: &str) -> PathBuf {
        self.data.join("workspaces").join(id).join("workspace")
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, Value)> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = self
            .http
            .request(method.parse()?, url)
            .header("host", format!("localhost:{}", self.port))
            .timeout(timeout);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value> {
        let (s, v) = self
            .call(method, path, body, Duration::from_secs(60))
            .await?;
        if s != want {
            bail!("{method} {path}: {s} {v}");
        }
        Ok(v)
    }

    async fn create(&self, name: &str) -> Result<String> {
        let p = self
            .expect(
                "POST",
                "/api/projects",
                Some(json!({"name": name, "template": "node"})),
                201,
            )
            .await?;
        p["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {p}"))
    }

    async fn start_ws(&self, id: &str) -> Result<Value> {
        self.expect(
            "POST",
            &format!("/api/projects/{id}/workspace/start"),
            None,
            200,
        )
        .await
    }

    async fn workspace(&self, id: &str) -> Result<Value> {
        self.expect("GET", &format!("/api/projects/{id}/workspace"), None, 200)
            .await
    }

    /// Polls the status every `poll` until `ready`.
    async fn wait_ready(&self, id: &str, poll: Duration, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.workspace(id).await?;
            match w["state"].as_str() {
                Some("ready") => return Ok(w),
                Some("failed") => bail!("workspace {id} failed: {w}"),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("workspace {id} not ready after {timeout:?}: {w}");
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Stop; the answer comes once the sidecar has flushed and exited.
    async fn stop_ws(&self, id: &str) -> Result<Value> {
        let path = format!("/api/projects/{id}/workspace/stop");
        let (s, w) = self
            .call("POST", &path, None, Duration::from_secs(900))
            .await?;
        if s != 200 || w["state"] != "stopped" {
            bail!("POST {path}: {s} {w}");
        }
        Ok(w)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.expect("DELETE", &format!("/api/projects/{id}"), None, 204)
            .await
            .map(drop)
    }

    /// SIGTERM (the controller stops its workspaces), then SIGKILL after
    /// `grace`. Returns how long it took and whether it exited cleanly.
    fn shutdown(&mut self, grace: Duration) -> (Duration, String) {
        let t0 = Instant::now();
        if let Ok(Some(st)) = self.child.try_wait() {
            return (t0.elapsed(), format!("had already exited: {st}"));
        }
        sigterm(self.pid);
        while t0.elapsed() < grace {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (t0.elapsed(), st.to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (t0.elapsed(), format!("killed after {grace:?}"))
    }

    /// Shuts down, then ends (by pid) any workspace process of this data
    /// directory that outlived it; returns those.
    fn shutdown_and_check(&mut self) -> (Duration, String, Vec<String>) {
        let (d, how) = self.shutdown(Duration::from_secs(180));
        let left = procs_mentioning(&self.data.to_string_lossy());
        for (pid, _) in &left {
            sigterm(*pid);
        }
        // Keep the log: the data directory goes away with the run.
        if let Some(log) = &self.log {
            let _ = std::fs::copy(log, self.kept_log());
        }
        (d, how, left.into_iter().map(|(_, c)| c).collect())
    }

    /// Where the log is kept after the run.
    fn kept_log(&self) -> PathBuf {
        std::env::temp_dir().join(format!("cove-ctl-bench-{}.log", self.label))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown_and_check();
    }
}

// ---------------------------------------------------------------------------
// IDE WebSocket through the gateway

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_next(ws: &mut Ws, deadline: Instant) -> Result<Message> {
    let m = tokio::time::timeout_at(deadline.into(), ws.next())
        .await
        .map_err(|_| anyhow!("timed out waiting for the server"))?
        .ok_or_else(|| anyhow!("connection ended"))??;
    if let Message::Close(f) = &m {
        bail!("server closed the connection: {f:?}");
    }
    Ok(m)
}

/// The error of a failed request, kept apart so callers can retry some.
#[derive(Debug)]
struct WsError(Value);

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request failed: {}", self.0)
    }
}

impl std::error::Error for WsError {}

/// Sends a request and waits for its answer; OUTPUT payloads that arrive
/// meanwhile are appended to `out`.
async fn ws_request(ws: &mut Ws, id: u64, mut req: Value, out: &mut Vec<u8>) -> Result<Value> {
    req["id"] = json!(id);
    ws.send(Message::Text(req.to_string().into())).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ws_next(ws, deadline).await? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == json!(id) {
                    if v["type"] == "result" {
                        return Ok(v["result"].clone());
                    }
                    return Err(WsError(v["error"].clone()).into());
                }
            }
            Message::Binary(b) if b.len() >= 14 && b[0] == KIND_OUTPUT => {
                out.extend_from_slice(&b[14..]);
            }
            _ => {}
        }
    }
}

/// Upgrade through the gateway and hello.
async fn ws_open(port: u16, id: &str, token: &str) -> Result<Ws> {
    let mut req = format!("ws://127.0.0.1:{port}/ws").into_client_request()?;
    let h = req.headers_mut();
    h.insert("host", format!("{id}.ide.localhost:{port}").parse()?);
    h.insert("origin", format!("http://localhost:{port}").parse()?);
    h.insert(
        "sec-websocket-protocol",
        format!("cove.v1, cove.token.{token}").parse()?,
    );
    // Browsers disable Nagle on WebSockets too.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .context("upgrade through the gateway")?;
    let w = ws_request(
        &mut ws,
        1,
        json!({"type": "hello", "protocol": 1, "client": "cove-controller-bench"}),
        &mut Vec::new(),
    )
    .await
    .context("hello")?;
    if w["project"] != id {
        bail!("welcome for another project: {w}");
    }
    Ok(ws)
}

// ---------------------------------------------------------------------------
// Statistics

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(v: &[u64]) -> Vec<u64> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn ms3(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn list_ms(v: &[u64]) -> String {
    v.iter().map(|&u| ms(u)).collect::<Vec<_>>().join(" ")
}

fn status(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn us_since(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

// ---------------------------------------------------------------------------
// 1. Create → prompt

#[derive(Default)]
struct PromptSample {
    total: u64,
    create: u64,
    start: u64,
    hello: u64,
    term: u64,
    prompt: u64,
    upgrades: u32,
    stop: u64,
    delete: u64,
}

async fn create_to_prompt(c: &Controller, i: usize) -> Result<PromptSample> {
    let mut s = PromptSample::default();
    let t0 = Instant::now();
    let id = c.create(&format!("bench prompt {i}")).await?;
    s.create = us_since(t0);
    let t = Instant::now();
    let w = c.start_ws(&id).await?;
    s.start = us_since(t);
    let token = w["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in {w}"))?
        .to_string();

    // The gateway holds the upgrade while the workspace starts; retry in
    // case it still refuses one.
    let t = Instant::now();
    let mut ws = loop {
        s.upgrades += 1;
        match tokio::time::timeout(Duration::from_secs(30), ws_open(c.port, &id, &token)).await {
            Ok(Ok(ws)) => break ws,
            Ok(Err(e)) if t.elapsed() < Duration::from_secs(60) => {
                tracing_note(&format!("upgrade attempt {} for {id}: {e:#}", s.upgrades));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(e.context(format!("no hello through the gateway for {id}"))),
            Err(_) => bail!("upgrade + hello for {id} took over 30 s"),
        }
    };
    s.hello = us_since(t);

    let t = Instant::now();
    let mut out = Vec::new();
    let mut next_id = 2;
    loop {
        let r = ws_request(
            &mut ws,
            next_id,
            json!({"type": "term.create", "cols": 80, "rows": 24, "attach": true}),
            &mut out,
        )
        .await;
        next_id += 1;
        match r {
            Ok(_) => break,
            Err(e)
                if e.downcast_ref::<WsError>()
                    .is_some_and(|w| w.0["code"] == "not_ready")
                    && t.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.context("term.create")),
        }
    }
    s.term = us_since(t);
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.iter().any(|&b| b == b'$' || b == b'#') {
        match ws_next(&mut ws, deadline).await.with_context(|| {
            format!(
                "waiting for a prompt; output so far {:?}",
                String::from_utf8_lossy(&out)
            )
        })? {
            Message::Binary(b) if b.len() >= 14 && b[0] == KIND_OUTPUT => {
                out.extend_from_slice(&b[14..]);
            }
            _ => {}
        }
    }
    s.prompt = us_since(t);
    s.total = us_since(t0);
    let _ = ws.close(None).await;
    drop(ws);

    let t = Instant::now();
    c.stop_ws(&id).await?;
    s.stop = us_since(t);
    let t = Instant::now();
    c.delete(&id).await?;
    s.delete = us_since(t);
    Ok(s)
}

/// Progress and oddities go to stderr; the report goes to stdout.
fn tracing_note(msg: &str) {
    eprintln!("bench: {msg}");
}

// ---------------------------------------------------------------------------
// 2. Restart of a 20,000-file project

fn cache_dir() -> PathBuf {
    std::env::var_os("BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cove-bench-cache"))
}

/// (regular files, symlinks, directories) under `dir`.
fn count_tree(dir: &Path) -> Result<(u64, u64, u64)> {
    let mut n = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                n.2 += 1;
                stack.push(e.path());
            } else if ft.is_symlink() {
                n.1 += 1;
            } else if ft.is_file() {
                n.0 += 1;
            }
        }
    }
    Ok(n)
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// The reference node_modules, built once with
/// ../shared/bench/make-node-modules.sh and kept in the cache.
fn reference_tree() -> Result<PathBuf> {
    let nm_dir = cache_dir().join("nm");
    let nm = nm_dir.join("node_modules");
    if nm.join(".package-lock.json").exists() {
        return Ok(nm);
    }
    let tar = nm_dir.join("node-modules.tar");
    if tar.exists() {
        tracing_note(&format!("extracting {}", tar.display()));
        let _ = std::fs::remove_dir_all(&nm);
        run(Command::new("tar").arg("xf").arg(&tar).current_dir(&nm_dir))?;
        return Ok(nm);
    }
    let script = repo_root().join("../shared/bench/make-node-modules.sh");
    let tmp = cache_dir().join("nm.tmp");
    tracing_note(&format!(
        "building the reference tree with {} (npm ci)",
        script.display()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(cache_dir())?;
    run(Command::new("bash")
        .arg(&script)
        .arg(&tmp)
        .current_dir(repo_root()))?;
    let _ = std::fs::remove_dir_all(&nm_dir);
    std::fs::rename(&tmp, &nm_dir)?;
    Ok(nm)
}

struct Restart {
    files: (u64, u64, u64),
    import_ready: u64,
    copy: u64,
    import_stop: u64,
    /// Commits after the initial state, and the paths they changed.
    commits: usize,
    committed_paths: u64,
    /// Regular files under node_modules in the workspace after a restart.
    files_after: u64,
    samples: Vec<u64>,
    hydration: Vec<Value>,
    stops: Vec<u64>,
    delete: u64,
}

async fn restart_big(c: &Controller, cfg: &Config) -> Result<Restart> {
    let tree = reference_tree()?;
    let files = count_tree(&tree)?;
    let id = c.create("bench restart 20k").await?;
    let t = Instant::now();
    c.start_ws(&id).await?;
    c.wait_ready(&id, Duration::from_millis(100), Duration::from_secs(120))
        .await?;
    let import_ready = us_since(t);
    let dst = c.workspace_dir(&id);
    if !dst.join("package.json").exists() {
        bail!("{} does not look like the workspace of {id}", dst.display());
    }
    tracing_note(&format!("copying {} files into {}", files.0, dst.display()));
    let t = Instant::now();
    run(Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(dst.join("node_modules")))?;
    let copy = us_since(t);
    let t = Instant::now();
    c.stop_ws(&id).await.context("stop after the import")?;
    let import_stop = us_since(t);
    tracing_note(&format!("import flushed in {} ms", ms(import_stop)));
    // What the store got: the history of the project.
    let h = c
        .expect("GET", &format!("/api/projects/{id}/history"), None, 200)
        .await?;
    let later: Vec<&Value> = h["commits"]
        .as_array()
        .map(|v| v.iter().filter(|c| c["seq"] != 0).collect())
        .unwrap_or_default();
    let commits = later.len();
    let committed_paths = later
        .iter()
        .map(|c| c["files_changed"].as_u64().unwrap_or(0))
        .sum();

    let mut samples = Vec::new();
    let mut hydration = Vec::new();
    let mut stops = Vec::new();
    let mut files_after = 0;
    for i in 0..cfg.restart_samples {
        let t = Instant::now();
        c.start_ws(&id).await?;
        let w = c
            .wait_ready(&id, Duration::from_millis(20), Duration::from_secs(600))
            .await?;
        samples.push(us_since(t));
        hydration.push(w["hydration"].clone());
        tracing_note(&format!(
            "restart {}: {} ms, hydration {}",
            i + 1,
            ms(*samples.last().unwrap_or(&0)),
            w["hydration"]
        ));
        if i == 0 {
            files_after = count_tree(&dst.join("node_modules"))?.0;
        }
        let t = Instant::now();
        c.stop_ws(&id).await?;
        stops.push(us_since(t));
    }
    let t = Instant::now();
    c.delete(&id).await?;
    Ok(Restart {
        files,
        import_ready,
        copy,
        import_stop,
        commits,
        committed_paths,
        files_after,
        samples,
        hydration,
        stops,
        delete: us_since(t),
    })
}

// ---------------------------------------------------------------------------
// 3. Gateway overhead on a preview request

struct Preview {
    direct: Vec<u64>,
    gateway: Vec<u64>,
}

async fn get_ok(client: &reqwest::Client, url: &str, host: Option<&str>) -> Result<u64> {
    let t0 = Instant::now();
    let mut rb = client.get(url);
    if let Some(h) = host {
        rb = rb.header("host", h);
    }
    let r = rb.send().await.with_context(|| format!("GET {url}"))?;
    let st = r.status();
    let body = r.bytes().await?;
    let us = us_since(t0);
    if st != 200 || &body[..] != b"ok" {
        bail!(
            "GET {url} (host {host:?}): {st} {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(us)
}

async fn preview_overhead(c: &Controller, cfg: &Config) -> Result<Preview> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let app = axum::Router::new().fallback(|| async { "ok" });
        let _ = axum::serve(listener, app).await;
    });

    let id = c.create("bench preview").await?;
    c.start_ws(&id).await?;
    c.wait_ready(&id, Duration::from_millis(100), Duration::from_secs(120))
        .await?;

    let client = || {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .build()
    };
    let (direct_c, gw_c) = (client()?, client()?);
    let direct_url = format!("http://127.0.0.1:{app_port}/");
    let gw_url = format!("http://127.0.0.1:{}/", c.port);
    let gw_host = format!("{app_port}--{id}.app.localhost:{}", c.port);
    let mut p = Preview {
        direct: Vec::with_capacity(cfg.preview_requests),
        gateway: Vec::with_capacity(cfg.preview_requests),
    };
    // Alternating, so both see the same moments of a busy machine.
    for i in 0..cfg.preview_warmup + cfg.preview_requests {
        let d = get_ok(&direct_c, &direct_url, None).await?;
        let g = get_ok(&gw_c, &gw_url, Some(&gw_host)).await?;
        if i >= cfg.preview_warmup {
            p.direct.push(d);
            p.gateway.push(g);
        }
    }
    server.abort();
    c.stop_ws(&id).await?;
    c.delete(&id).await?;
    Ok(p)
}

// ---------------------------------------------------------------------------
// 4. RSS and a fleet of workspaces

struct Fleet {
    idle_kib: u64,
    create_errors: usize,
    create_time: u64,
    stopped_kib: u64,
    start_errors: Vec<String>,
    all_ready: u64,
    ready_each: Vec<u64>,
    running_kib: u64,
    children: usize,
    children_kib: u64,
    stop_time: u64,
    stop_errors: Vec<String>,
    after_stop_kib: u64,
    children_after_stop: usize,
    shutdown: Duration,
    shutdown_how: String,
    left_behind: Vec<String>,
    log: PathBuf,
}

async fn fleet(cfg: &Config) -> Result<Fleet> {
    let dir = tempfile::Builder::new()
        .prefix("cove-ctl-bench-fleet.")
        .tempdir()?;
    let mut c = Controller::start(dir.path(), "fleet")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = c.rss_kib();

    let t = Instant::now();
    let mut ids = Vec::new();
    let mut create_errors = 0;
    for i in 0..cfg.fleet_projects {
        match c.create(&format!("fleet {i}")).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                create_errors += 1;
                tracing_note(&format!("create {i}: {e:#}"));
            }
        }
    }
    let create_time = us_since(t);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_kib = c.rss_kib();

    let run: Vec<String> = ids.iter().take(cfg.fleet_running).cloned().collect();
    let t = Instant::now();
    let starts = futures::future::join_all(run.iter().map(|id| c.start_ws(id))).await;
    let mut start_errors = Vec::new();
    let mut waiting: Vec<&String> = Vec::new();
    for (id, r) in run.iter().zip(starts) {
        match r {
            Ok(_) => waiting.push(id),
            Err(e) => start_errors.push(format!("start {id}: {e:#}")),
        }
    }
    let mut ready_each = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for id in waiting {
            let w = c.workspace(id).await;
            match w.as_ref().map(|w| w["state"].as_str()) {
                Ok(Some("ready")) => ready_each.push(us_since(t)),
                Ok(Some("failed")) => start_errors.push(format!("{id} failed: {:?}", w.ok())),
                Err(e) => start_errors.push(format!("status of {id}: {e:#}")),
                _ if Instant::now() > deadline => {
                    start_errors.push(format!("{id} not ready after 300 s"));
                }
                _ => still.push(id),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all_ready = us_since(t);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running_kib = c.rss_kib();
    let kids = children_of(c.pid);
    let children_kib = kids.iter().map(|&p| rss_kib(p)).sum();

    let t = Instant::now();
    let stops = futures::future::join_all(run.iter().map(|id| c.stop_ws(id))).await;
    let stop_time = us_since(t);
    let stop_errors: Vec<String> = run
        .iter()
        .zip(stops)
        .filter_map(|(id, r)| r.err().map(|e| format!("stop {id}: {e:#}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_stop_kib = c.rss_kib();
    let children_after_stop = children_of(c.pid).len();
    let (shutdown, shutdown_how, left_behind) = c.shutdown_and_check();
    Ok(Fleet {
        idle_kib,
        create_errors,
        create_time,
        stopped_kib,
        start_errors,
        all_ready,
        ready_each,
        running_kib,
        children: kids.len(),
        children_kib,
        stop_time,
        stop_errors,
        after_stop_kib,
        children_after_stop,
        shutdown,
        shutdown_how,
        left_behind,
        log: c.kept_log(),
    })
}

// ---------------------------------------------------------------------------
// Report

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn bench(cfg: &Config) -> Result<String> {
    for b in ["cove-controller", "cove-sync", "cove-pty"] {
        bin(b)?;
    }
    let started = Instant::now();

    // Parts 1-3 on one controller.
    let dir = tempfile::Builder::new()
        .prefix("cove-ctl-bench.")
        .tempdir()?;
    let mut c = Controller::start(dir.path(), "parts1-3")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_idle_kib = c.rss_kib();

    tracing_note(&format!(
        "1. create → prompt, {} samples",
        cfg.prompt_samples
    ));
    let mut prompts = Vec::new();
    for i in 0..cfg.prompt_samples {
        let s = create_to_prompt(&c, i)
            .await
            .with_context(|| format!("create → prompt, sample {}\n{}", i + 1, c.log_tail()))?;
        tracing_note(&format!("  sample {}: {} ms", i + 1, ms(s.total)));
        prompts.push(s);
    }
    let after_part1_kib = c.rss_kib();

    tracing_note(&format!(
        "2. restart of a 20,000-file project, {} samples",
        cfg.restart_samples
    ));
    let restart = restart_big(&c, cfg)
        .await
        .with_context(|| format!("restart\n{}", c.log_tail()))?;
    let after_part2_kib = c.rss_kib();

    tracing_note(&format!(
        "3. preview overhead, {} requests each way",
        cfg.preview_requests
    ));
    let preview = preview_overhead(&c, cfg)
        .await
        .with_context(|| format!("preview overhead\n{}", c.log_tail()))?;
    let after_parts_kib = c.rss_kib();
    let (first_shutdown, first_how, first_left) = c.shutdown_and_check();
    let first_log = c.kept_log();
    drop(c);
    drop(dir);

    tracing_note(&format!(
        "4. fleet: {} projects, {} running",
        cfg.fleet_projects, cfg.fleet_running
    ));
    let f = fleet(cfg).await.context("fleet")?;

    // ----- the table
    let total = sorted(&prompts.iter().map(|s| s.total).collect::<Vec<_>>());
    let (p50, p99, max) = (pct(&total, 0.5), pct(&total, 0.99), pct(&total, 1.0));
    let rs = sorted(&restart.samples);
    let (r50, rmax) = (pct(&rs, 0.5), pct(&rs, 1.0));
    let d = sorted(&preview.direct);
    let g = sorted(&preview.gateway);
    let (d50, d99, g50, g99) = (pct(&d, 0.5), pct(&d, 0.99), pct(&g, 0.5), pct(&g, 0.99));
    let diff = g50 as i64 - d50 as i64;
    let errors = f.create_errors + f.start_errors.len() + f.stop_errors.len();

    let mut o = String::new();
    let _ = writeln!(o, "# cove-controller benchmark\n");
    let _ = writeln!(
        o,
        "{} · commit {} · {} CPUs · {}{}\n",
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cmd_out(
            "git",
            &[
                "-C",
                &repo_root().to_string_lossy(),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        ),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd_out("uname", &["-r"]),
        if cfg.quick { " · **BENCH_QUICK**" } else { "" }
    );
    let _ = writeln!(o, "| # | Measurement | Result | Goal | |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    let _ = writeln!(
        o,
        "| 1 | create (node) → shell prompt over the WebSocket, p50 (n={}) | {} ms | ≤ 500 ms | {} |",
        total.len(),
        ms(p50),
        status(p50 <= 500_000)
    );
    let _ = writeln!(
        o,
        "| 1 | create → prompt, p99 / max | {} / {} ms | p99 ≤ 1500 ms | {} |",
        ms(p99),
        ms(max),
        status(p99 <= 1_500_000)
    );
    let _ = writeln!(
        o,
        "| 2 | restart of a stopped {}-file project → ready, p50 / max (n={}) | {} / {} ms | ≤ 3000 ms | {} |",
        restart.files.0,
        rs.len(),
        ms(r50),
        ms(rmax),
        status(rmax <= 3_000_000)
    );
    let _ = writeln!(
        o,
        "| 3 | preview GET direct, p50 / p99 (n={}) | {} / {} ms | | |",
        d.len(),
        ms3(d50),
        ms3(d99)
    );
    let _ = writeln!(
        o,
        "| 3 | preview GET through the gateway, p50 / p99 | {} / {} ms | | |",
        ms3(g50),
        ms3(g99)
    );
    let _ = writeln!(
        o,
        "| 3 | gateway overhead (p50 difference) | {:.3} ms | ≤ 1 ms | {} |",
        diff as f64 / 1000.0,
        status(diff <= 1000)
    );
    let _ = writeln!(
        o,
        "| 4 | controller RSS idle, no workspace | {:.1} MiB | ≤ 30 MiB | {} |",
        mib(f.idle_kib),
        status(f.idle_kib <= 30 * 1024)
    );
    let _ = writeln!(
        o,
        "| 4 | errors with {} projects, {} running | {} | 0 | {} |",
        cfg.fleet_projects,
        cfg.fleet_running,
        errors,
        status(errors == 0)
    );
    let _ = writeln!(
        o,
        "| 4 | controller RSS, {} stopped + {} running | {:.1} MiB | | |",
        cfg.fleet_projects - cfg.fleet_running,
        cfg.fleet_running,
        mib(f.running_kib)
    );
    let _ = writeln!(
        o,
        "| 4 | {} concurrent starts → all ready | {} ms | | |",
        cfg.fleet_running,
        ms(f.all_ready)
    );

    // ----- raw numbers
    let col = |f: fn(&PromptSample) -> u64| -> String {
        let v = sorted(&prompts.iter().map(f).collect::<Vec<_>>());
        format!("p50 {} · max {}", ms(pct(&v, 0.5)), ms(pct(&v, 1.0)))
    };
    let _ = writeln!(o, "\n## Raw numbers\n");
    let _ = writeln!(o, "Times in ms; RSS is VmRSS (MiB = 1024 KiB).\n");
    let _ = writeln!(o, "**1. Create → prompt** (each sample: POST /api/projects, POST start, WebSocket upgrade + hello through the gateway, term.create attach, OUTPUT until `$` or `#`; then stop and delete)\n");
    let _ = writeln!(
        o,
        "- total, in order: {}",
        list_ms(&prompts.iter().map(|s| s.total).collect::<Vec<_>>())
    );
    let _ = writeln!(o, "- POST /api/projects: {}", col(|s| s.create));
    let _ = writeln!(o, "- POST …/workspace/start: {}", col(|s| s.start));
    let _ = writeln!(
        o,
        "- upgrade + hello (gateway holds it while starting): {}",
        col(|s| s.hello)
    );
    let _ = writeln!(
        o,
        "- upgrade attempts: {}",
        prompts
            .iter()
            .map(|s| s.upgrades.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(o, "- term.create → result: {}", col(|s| s.term));
    let _ = writeln!(o, "- result → prompt: {}", col(|s| s.prompt));
    let _ = writeln!(
        o,
        "- stop afterwards: {} · delete: {}",
        col(|s| s.stop),
        col(|s| s.delete)
    );
    let _ = writeln!(
        o,
        "\n**2. Restart** (reference tree {} files, {} symlinks, {} directories, from {})\n",
        restart.files.0,
        restart.files.1,
        restart.files.2,
        cache_dir().join("nm/node_modules").display()
    );
    let _ = writeln!(
        o,
        "- import: first start → ready {} · `cp -a` into the workspace {} · stop (final flush) {}",
        ms(restart.import_ready),
        ms(restart.copy),
        ms(restart.import_stop)
    );
    let _ = writeln!(
        o,
        "- restart → ready, in order: {} (status polled every 20 ms)",
        list_ms(&restart.samples)
    );
    let _ = writeln!(o, "- history after the import: {} commits after the initial state, {} paths changed in all (files_changed; at most 100 commits listed)",
        restart.commits, restart.committed_paths);
    let _ = writeln!(
        o,
        "- files under node_modules in the workspace after the first restart: {}",
        restart.files_after
    );
    let _ = writeln!(
        o,
        "- `hydration` in the status at ready: {}",
        restart
            .hydration
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        o,
        "- stop after each restart: {} · delete: {}",
        list_ms(&restart.stops),
        ms(restart.delete)
    );
    let _ = writeln!(o, "\n**3. Preview** ({} sequential keep-alive GETs each way, alternating, after {} warm-up each)\n",
        d.len(), cfg.preview_warmup);
    for (name, v) in [("direct", &d), ("gateway", &g)] {
        let _ = writeln!(
            o,
            "- {name}: min {} · p50 {} · p90 {} · p99 {} · max {}",
            ms3(pct(v, 0.0)),
            ms3(pct(v, 0.5)),
            ms3(pct(v, 0.9)),
            ms3(pct(v, 0.99)),
            ms3(pct(v, 1.0))
        );
    }
    let _ = writeln!(
        o,
        "- p99 difference: {:.3}",
        (g99 as i64 - d99 as i64) as f64 / 1000.0
    );
    let _ = writeln!(o, "\n**4. Fleet** (a fresh controller)\n");
    let _ = writeln!(o, "- RSS idle {:.1} MiB · after {} creates {:.1} MiB · with {} running {:.1} MiB · after stopping them {:.1} MiB",
        mib(f.idle_kib), cfg.fleet_projects, mib(f.stopped_kib), cfg.fleet_running, mib(f.running_kib), mib(f.after_stop_kib));
    let _ = writeln!(
        o,
        "- {} creates (sequential): {} · {} errors",
        cfg.fleet_projects,
        ms(f.create_time),
        f.create_errors
    );
    let re = sorted(&f.ready_each);
    let _ = writeln!(
        o,
        "- {} starts (concurrent) → ready: first {} · p50 {} · all {} · {} errors",
        cfg.fleet_running,
        ms(pct(&re, 0.0)),
        ms(pct(&re, 0.5)),
        ms(f.all_ready),
        f.start_errors.len()
    );
    for e in f.start_errors.iter().chain(&f.stop_errors) {
        let _ = writeln!(o, "  - {e}");
    }
    let _ = writeln!(o, "- workspace processes while running: {} (cove-sync + cove-pty), {:.1} MiB RSS in all, {:.1} MiB per workspace",
        f.children, mib(f.children_kib), mib(f.children_kib) / cfg.fleet_running.max(1) as f64);
    let _ = writeln!(
        o,
        "- stop all (concurrent requests): {} · {} errors · children left after: {}",
        ms(f.stop_time),
        f.stop_errors.len(),
        f.children_after_stop
    );
    let _ = writeln!(
        o,
        "- controller shutdown (SIGTERM): {} ms, {} · processes left behind: {}",
        f.shutdown.as_millis(),
        f.shutdown_how,
        f.left_behind.len()
    );
    let _ = writeln!(o, "\n**Controller of parts 1-3**: RSS idle {:.1} MiB · after part 1 {:.1} MiB · after part 2 {:.1} MiB · after part 3 {:.1} MiB; shutdown {} ms, {}; processes left behind: {}",
        mib(first_idle_kib), mib(after_part1_kib), mib(after_part2_kib), mib(after_parts_kib), first_shutdown.as_millis(), first_how, first_left.len());
    for l in first_left.iter().chain(&f.left_behind) {
        let _ = writeln!(o, "  - left behind (sent SIGTERM): {l}");
    }
    let _ = writeln!(
        o,
        "\nWhole run: {:.0} s. Logs of the controllers and their workspaces: {}, {}.",
        started.elapsed().as_secs_f64(),
        first_log.display(),
        f.log.display()
    );
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cfg = Config::from_env();
    match bench(&cfg).await {
        Ok(report) => {
            println!("{report}");
            if let Some(path) = std::env::var_os("BENCH_OUT") {
                if let Err(e) = std::fs::write(&path, &report) {
                    eprintln!("bench: cannot write {}: {e}", Path::new(&path).display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: harness failure: {e:#}");
            ExitCode::FAILURE
        }
    }
}

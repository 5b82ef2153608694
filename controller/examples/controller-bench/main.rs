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
use cove_pty::client::{Client, Connect};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod report;
mod scenarios;

use report::bench;

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

/// Upgrade through the gateway and hello.
async fn ws_open(port: u16, id: &str, token: &str) -> Result<Client> {
    let c = Connect::url(
        &format!("ws://{id}.ide.localhost:{port}/ws"),
        token,
        &format!("http://localhost:{port}"),
    )
    .via(Some(&format!("127.0.0.1:{port}")))
    .client("cove-controller-bench")
    .connect()
    .await
    .context("upgrade and hello through the gateway")?;
    if c.welcome["project"] != id {
        bail!("welcome for another project: {}", c.welcome);
    }
    Ok(c)
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

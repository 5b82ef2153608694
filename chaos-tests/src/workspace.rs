//! One workspace as the harness runs it: a cove-sync sidecar (FUSE, on the
//! S3 store through the fault proxy) and a cove-pty server beside it, and
//! the whole-workspace SIGKILL.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub const ORIGIN: &str = "http://chaos.cove.invalid";

/// What every start needs.
pub struct Setup {
    pub bin_dir: PathBuf,
    pub store_url: String,
    /// S3 environment for cove-sync (endpoint = the fault proxy).
    pub env: Vec<(String, String)>,
    pub project: String,
    pub secret: String,
    /// Where caches and logs go.
    pub dir: PathBuf,
    /// Every process started is listed here (one pid a line), so that a
    /// resumed run can kill what a killed harness left running.
    pub pids: PathBuf,
}

pub struct Sidecar {
    pub child: Child,
    pub api: String,
    pub mount: PathBuf,
    pub cache: PathBuf,
}

pub struct Workspace {
    pub sidecar: Sidecar,
    pub pty: Child,
    pub ide: String,
    pub admin: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Reads `child`'s stdout until a line starting with `prefix`.
async fn wait_line(child: &mut Child, prefix: &str, timeout: Duration) -> Result<String> {
    let out = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let found = tokio::time::timeout(timeout, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.starts_with(prefix) {
                return Some(l);
            }
        }
        None
    })
    .await;
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match found {
        Ok(Some(l)) => Ok(l),
        Ok(None) => bail!("exited before printing {prefix:?}: {:?}", child.try_wait()),
        Err(_) => bail!("no {prefix:?} within {timeout:?}"),
    }
}

/// A minimal HTTP GET on loopback: the status code.
pub async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await.ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}

impl Setup {
    fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?)
    }

    /// Starts a sidecar on `mount` with a fresh, empty cache and waits for
    /// `ready` (hydration done, mounted) unless `wait` is false.
    pub async fn sidecar(&self, mount: &Path, tag: &str, wait: bool) -> Result<Sidecar> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cache = self.dir.join(format!("cache-{tag}-{n}"));
        // Empty even when a killed harness left a cache of that name (the
        // numbers start again in every harness process).
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache)?;
        // Not the mount point: after a kill it is a dead mount (ENOTCONN),
        // which cove-sync detaches and creates itself.
        let api = format!("127.0.0.1:{}", free_port()?);
        let mut child = Command::new(self.bin_dir.join("cove-sync"))
            .args([
                "--store",
                &self.store_url,
                "serve",
                "--project",
                &self.project,
            ])
            .arg("--workspace")
            .arg(mount)
            .arg("--cache")
            .arg(&cache)
            .args(["--mode", "fuse", "--create", "--api", &api])
            .args(["--debounce-ms", "100", "--checkpoint-every", "8"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(self.log("sidecar")?)
            .kill_on_drop(true)
            .spawn()
            .context("starting cove-sync")?;
        self.track(&child);
        if wait {
            wait_line(&mut child, "ready", Duration::from_secs(120))
                .await
                .context("cove-sync")?;
        }
        Ok(Sidecar {
            child,
            api,
            mount: mount.to_path_buf(),
            cache,
        })
    }

    /// A whole workspace: sidecar, then cove-pty, then both ready.
    pub async fn start(&self, mount: &Path) -> Result<Workspace> {
        let sidecar = self.sidecar(mount, "ws", true).await?;
        let mut pty = Command::new(self.bin_dir.join("cove-pty"))
            .args(["--project", &self.project, "--root"])
            .arg(mount)
            .args(["--sidecar", &format!("http://{}", sidecar.api)])
            .args(["--listen", "127.0.0.1:0", "--preview-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", "--allowed-origin", ORIGIN])
            .args(["--shell", "/bin/sh"])
            .current_dir(mount)
            .env("COVE_TOKEN_SECRET", &self.secret)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(self.log("pty")?)
            .kill_on_drop(true)
            .spawn()
            .context("starting cove-pty")?;
        self.track(&pty);
        let line = wait_line(&mut pty, "listening", Duration::from_secs(30))
            .await
            .context("cove-pty")?;
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .with_context(|| format!("no {k}= in {line:?}"))
        };
        let (ide, admin) = (get("ide")?, get("admin")?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_status(&admin, "/readyz").await != Some(200) {
            if Instant::now() > deadline {
                bail!("cove-pty never became ready");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Workspace {
            sidecar,
            pty,
            ide,
            admin,
        })
    }

    fn track(&self, child: &Child) {
        use std::io::Write as _;
        let Some(pid) = child.id().map(|p| p as i32) else {
            return;
        };
        // With its start time: pids are reused (pid_max is 32,768 here, and
        // a long run starts tens of thousands of processes).
        let Some(t) = start_time(pid) else { return };
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pids)
            .and_then(|mut f| writeln!(f, "{pid} {t}"));
        if let Err(e) = r {
            tracing::warn!(error = %e, "recording a pid");
        }
    }

    /// Kills what an earlier harness of this lane left running (it was
    /// killed itself, so nothing stopped its workspace): the processes of
    /// the pid list that are still the same cove-sync or cove-pty (same
    /// start time), with everything below them, and any `cove-chaos
    /// worker` writing to `manifest`; then removes their caches. Run it for
    /// every lane before any lane starts a process.
    pub fn kill_leftovers(&self, manifest: &Path) -> usize {
        let mut roots = Vec::new();
        let ours = [
            self.bin_dir.join("cove-sync"),
            self.bin_dir.join("cove-pty"),
        ];
        for line in std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
        {
            let mut w = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(pid)), Some(Ok(t))) = (w.next(), w.next()) else {
                continue;
            };
            let pid = pid as i32;
            if start_time(pid) == Some(t) && exe_of(pid).is_some_and(|e| ours.contains(&e)) {
                roots.push(pid);
            }
        }
        let me = std::env::current_exe().ok();
        let needle = manifest.as_os_str().as_encoded_bytes();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid as u32 == std::process::id() || exe_of(pid) != me {
                continue;
            }
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmd.windows(needle.len()).any(|w| w == needle) {
                roots.push(pid);
            }
        }
        let _ = std::fs::remove_file(&self.pids);
        if !roots.is_empty() {
            kill_tree(&roots);
        }
        // Their caches: nothing runs on them any more.
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("cache-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        roots.len()
    }

    pub fn token(&self) -> String {
        let now = crate::manifest::now_ms() / 1000;
        cove_pty::token::sign(self.secret.as_bytes(), &self.project, now, 3600, None)
    }
}

/// A process's start time (clock ticks since boot, /proc/<pid>/stat
/// field 22): with the pid, it names one process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and ')')
    // start with field 3.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The executable of `pid`, also when it was replaced on disk since
/// (a rebuilt binary: the kernel adds " (deleted)").
pub(crate) fn exe_of(pid: i32) -> Option<PathBuf> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = p.to_string_lossy();
    Some(match s.strip_suffix(" (deleted)") {
        Some(stripped) => PathBuf::from(stripped),
        None => p,
    })
}

/// Every descendant of `roots` (and the roots), from /proc.
fn process_tree(roots: &[i32]) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut out: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Every descendant of `pid` (not `pid` itself).
pub fn descendants(pid: i32) -> Vec<i32> {
    process_tree(&[pid])
        .into_iter()
        .filter(|p| *p != pid)
        .collect()
}

/// SIGKILL of the whole workspace at once: every process of the sidecar
/// and of cove-pty, the terminals' processes included. They are stopped
/// first so none can fork or write in between.
pub fn kill_tree(roots: &[i32]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut all = process_tree(roots);
    for _ in 0..3 {
        for p in &all {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        // Anything forked meanwhile is caught by a second look.
        let again = process_tree(roots);
        if again.iter().all(|p| all.contains(p)) {
            break;
        }
        all = again;
    }
    for p in &all {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
}

impl Workspace {
    pub fn pids(&self) -> Vec<i32> {
        [self.sidecar.child.id(), self.pty.id()]
            .into_iter()
            .flatten()
            .map(|p| p as i32)
            .collect()
    }

    pub async fn kill(mut self) {
        kill_tree(&self.pids());
        let _ = self.pty.wait().await;
        self.sidecar.kill().await;
    }

    /// A graceful stop (SIGTERM to both, as a pod deletion does), cut
    /// short by SIGKILL after `grace`.
    pub async fn term_then_kill(mut self, grace: Duration) {
        for p in self.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGTERM);
        }
        tokio::time::sleep(grace).await;
        kill_tree(&self.pids());
        let _ = self.pty.wait().await;
        self.sidecar.kill().await;
    }

    /// Stops cleanly: cove-pty, then the sidecar's final flush.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(p) = self.pty.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.pty.wait()).await;
        kill_tree(&self.pids().into_iter().skip(1).collect::<Vec<_>>());
        self.sidecar.stop().await
    }
}

impl Sidecar {
    pub async fn kill(mut self) {
        if let Some(p) = self.child.id() {
            kill_tree(&[p as i32]);
        }
        let _ = self.child.wait().await;
        // The next start detaches the dead mount itself; the cache is
        // never reused.
        let _ = std::fs::remove_dir_all(&self.cache);
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(p) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::SIGTERM,
            );
        }
        let st = self.child.wait().await?;
        let _ = std::fs::remove_dir_all(&self.cache);
        if !st.success() {
            bail!("cove-sync exited with {st} after SIGTERM");
        }
        Ok(())
    }
}

//! The servers under test and what the bench reads of them in /proc:
//! cove-sync (watch mode, directory store) and cove-pty instances in front
//! of it, started as [`cove_testkit::Proc`]s from the bench's own target
//! directory; RSS and CPU time of a process.

use crate::{ORIGIN, PROJECT, SECRET};
use anyhow::{anyhow, bail, Result};
use cove_testkit::{bin_dir, free_port, Proc};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a server may take to print its start-up line.
const START: Duration = Duration::from_secs(60);

fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run cargo build --release -p cove-sync -p cove-pty --examples",
            p.display()
        );
    }
    Ok(p)
}

/// The child gets SIGTERM if the bench dies (spawned from the main thread:
/// the signal follows the thread that forked).
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd
}

/// The first line of `p`'s log starting with `prefix`, or an error with the
/// log's tail.
fn wait_line(p: &mut Proc, prefix: &str) -> Result<String> {
    p.try_wait_line(prefix, START)
        .map_err(|why| anyhow!("{}: no {prefix:?} line: {why}\n{}", p.name, p.tail()))
}

/// SIGTERM, then SIGKILL after `grace`. With `BENCH_LOG` set, the server's
/// log then goes to stderr.
fn stop(p: &mut Proc, grace: Duration) {
    // A process already reaped must not be signalled: its pid may be reused.
    if !matches!(p.child.try_wait(), Ok(Some(_))) {
        p.terminate(grace);
    }
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("--- log of {} ---\n{}---", p.name, p.log());
    }
}

/// cove-sync over a temporary directory; cove-pty instances in front of it.
pub struct Sidecar {
    proc: Proc,
    root: PathBuf,
    api: String,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    pub fn start() -> Result<Sidecar> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("ws");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&store)?;
        let api = format!("127.0.0.1:{}", free_port());
        let mut proc = Proc::spawn(
            "cove-sync",
            die_with_parent(
                Command::new(bin("cove-sync")?)
                    .args(["--store", &format!("file://{}", store.display()), "serve"])
                    .args(["--project", PROJECT, "--workspace"])
                    .arg(&root)
                    .args(["--mode", "watch", "--api", &api, "--create"]),
            ),
        );
        wait_line(&mut proc, "ready")?;
        Ok(Sidecar {
            proc,
            root,
            api,
            _dir: dir,
        })
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        stop(&mut self.proc, Duration::from_secs(5));
    }
}

pub struct Pty {
    /// `None` once stopped.
    proc: Option<Proc>,
    pub ide: String,
    pub pid: i32,
}

impl Pty {
    pub fn start(sc: &Sidecar, extra: &[&str]) -> Result<Pty> {
        let mut proc = Proc::spawn(
            "cove-pty",
            die_with_parent(
                Command::new(bin("cove-pty")?)
                    .args(["--project", PROJECT, "--root"])
                    .arg(&sc.root)
                    .args(["--sidecar", &format!("http://{}", sc.api)])
                    .args([
                        "--listen",
                        "127.0.0.1:0",
                        "--preview-listen",
                        "127.0.0.1:0",
                        "--admin-listen",
                        "127.0.0.1:0",
                    ])
                    .args([
                        "--allowed-origin",
                        ORIGIN,
                        "--shell",
                        "/bin/bash --noprofile --norc",
                    ])
                    .args(extra)
                    .env("COVE_TOKEN_SECRET", SECRET)
                    .env("PS1", "$ "),
            ),
        );
        let line = wait_line(&mut proc, "listening")?;
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {k}= in {line:?}"))
        };
        let ide = get("ide")?;
        let admin = get("admin")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(&admin, "/readyz") != 200 {
            if Instant::now() > deadline {
                bail!("cove-pty never became ready\n{}", proc.tail());
            }
            if let Ok(Some(st)) = proc.child.try_wait() {
                bail!("cove-pty exited during start-up: {st}\n{}", proc.tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = proc.pid();
        Ok(Pty {
            proc: Some(proc),
            ide,
            pid,
        })
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            stop(&mut p, Duration::from_secs(15));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of a process: (user, system, reaped children user+system).
pub fn cpu_secs(pid: &str) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0) / hz;
    // After ')': state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    (at(11), at(12), at(13) + at(14))
}

pub fn cpu_delta(a: (f64, f64, f64), b: (f64, f64, f64)) -> (f64, f64, f64) {
    (b.0 - a.0, b.1 - a.1, b.2 - a.2)
}

/// Samples a process's VmRSS every 20 ms until stopped; yields the maximum.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: i32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            loop {
                max = max.max(rss_kib(pid));
                if s.load(Ordering::Relaxed) {
                    return max;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { stop, handle }
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

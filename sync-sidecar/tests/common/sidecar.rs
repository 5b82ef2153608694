//! A real `cove-sync serve` process, as the controller runs it.
#![allow(dead_code)]

use cove_testkit::{free_port, Proc};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cove-sync");

/// Where a test's project lives: a store URL and the environment to reach it.
#[derive(Clone)]
pub struct Store {
    pub url: String,
    pub env: Vec<(&'static str, String)>,
    pub name: &'static str,
}

/// The directory store always, Garage when available; the guard keeps the
/// directory alive.
pub fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let d = tempfile::tempdir().unwrap();
    let mut v = vec![(
        Store {
            url: format!("file://{}", d.path().join("store").display()),
            env: vec![],
            name: "dir",
        },
        Some(d),
    )];
    if let Some(cfg) = super::s3_config() {
        let (url, env) = super::s3_env(&cfg);
        v.push((
            Store {
                url,
                env,
                name: "s3",
            },
            None,
        ));
    }
    v
}

pub struct Sidecar {
    /// The process; its log's tail is printed when a test fails.
    pub proc: Proc,
    pub mount: PathBuf,
    pub cache: PathBuf,
    pub api: String,
    pub mode: &'static str,
    /// Holds the mount, the cache and `sidecar.state`; `None` once handed
    /// back by [`Sidecar::stop_keeping_dir`].
    dir: Option<tempfile::TempDir>,
}

pub fn cmd(store: &Store) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--store").arg(&store.url);
    for (k, v) in &store.env {
        c.env(k, v);
    }
    c.env("RUST_LOG", "warn,cove_sync=info");
    c
}

impl Sidecar {
    /// Start serving `project` (created if missing) and wait until ready.
    pub fn start(store: &Store, project: &str, mode: &'static str, extra: &[&str]) -> Sidecar {
        Self::start_in(tempfile::tempdir().unwrap(), store, project, mode, extra)
    }

    /// Start in `dir` (its `workspace/` and `cache/`, maybe left by an
    /// earlier run), with `--state-file dir/sidecar.state`.
    pub fn start_in(
        dir: tempfile::TempDir,
        store: &Store,
        project: &str,
        mode: &'static str,
        extra: &[&str],
    ) -> Sidecar {
        let mount = dir.path().join("workspace");
        let cache = dir.path().join("cache");
        let api = format!("127.0.0.1:{}", free_port());
        let mut c = cmd(store);
        c.args([
            "serve",
            "--create",
            "--project",
            project,
            "--mode",
            mode,
            "--debounce-ms",
            "100",
        ])
        .arg("--workspace")
        .arg(&mount)
        .arg("--cache")
        .arg(&cache)
        .args(["--api", &api])
        .arg("--state-file")
        .arg(dir.path().join("sidecar.state"))
        .args(extra);
        let mut proc = Proc::spawn("cove-sync", &mut c);
        proc.wait_line("ready", Duration::from_secs(60));
        Sidecar {
            proc,
            mount,
            cache,
            api,
            mode,
            dir: Some(dir),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mount.join(rel)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(&self.api, "GET", path, "")
    }

    pub fn flush(&self, body: &str) -> (u16, String) {
        http(&self.api, "POST", "/flush", body)
    }

    /// Graceful stop (pod deletion): everything is flushed first.
    pub fn terminate(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.proc.pid()),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let st = self.proc.child.wait().unwrap();
        assert!(st.success(), "cove-sync exited with {st:?}");
    }

    /// Graceful stop, handing back the directory for a restart in it.
    pub fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        let dir = self.dir.take().unwrap();
        self.terminate();
        dir
    }

    /// Crash, handing back the directory for a restart in it.
    pub fn kill_keeping_dir(mut self) -> tempfile::TempDir {
        let dir = self.dir.take().unwrap();
        self.kill();
        dir
    }

    /// Crash: SIGKILL, then detach the dead mount as the next start would.
    pub fn kill(mut self) {
        self.proc.child.kill().unwrap();
        let _ = self.proc.child.wait();
        if self.mode == "fuse" {
            let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.proc.child.try_wait() {
            let _ = self.proc.child.kill();
            let _ = self.proc.child.wait();
        }
        if self.mode == "fuse" {
            let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A minimal HTTP/1.1 client: enough for the control API, no extra crates.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

pub use cove_testkit::http as http_with;

/// Write the project's files at its head into a fresh directory.
pub fn export(store: &Store, project: &str) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let o = cmd(store)
        .args(["export", "--project", project, "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// What a tree looks like to a developer tool: kinds, contents, modes,
/// symlink targets and file mtimes.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        content: Vec<u8>,
    },
    Symlink {
        target: PathBuf,
    },
}

pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let entry = if m.file_type().is_symlink() {
                Entry::Symlink {
                    target: std::fs::read_link(&p).unwrap(),
                }
            } else if m.is_dir() {
                walk(root, &p, out);
                Entry::Dir {
                    mode: m.permissions().mode() & 0o7777,
                }
            } else if m.is_file() {
                Entry::File {
                    mode: m.permissions().mode() & 0o7777,
                    mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    content: std::fs::read(&p).unwrap(),
                }
            } else {
                continue;
            };
            out.insert(rel, entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Compare two snapshots with a readable message on the first difference.
pub fn assert_same(what: &str, a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) {
    let ka: Vec<&String> = a.keys().collect();
    let kb: Vec<&String> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different paths");
    for (k, va) in a {
        let vb = &b[k];
        if va != vb {
            let short = |e: &Entry| match e {
                Entry::File {
                    mode,
                    mtime,
                    content,
                } => format!(
                    "file mode {mode:o} mtime {mtime} {} bytes {:?}",
                    content.len(),
                    String::from_utf8_lossy(&content[..content.len().min(40)])
                ),
                other => format!("{other:?}"),
            };
            panic!("{what}: {k} differs:\n  {}\n  {}", short(va), short(vb));
        }
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

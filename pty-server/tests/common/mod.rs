//! Test fixtures: a real cove-sync (watch mode, directory store) and a real
//! cove-pty as child processes ([`cove_testkit::Proc`]: their logs' tails
//! are printed when a test fails), reached through the protocol client
//! [`cove_pty::client`].

#![allow(dead_code)]

pub use cove_pty::client::{Client, Connect};
use cove_testkit::{bin, free_port, Proc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";
pub const ORIGIN: &str = "http://localhost:7070";

/// How long a test waits for output, an event or a close it expects.
pub const T: Duration = Duration::from_secs(20);

/// How long a server may take to start.
const START: Duration = Duration::from_secs(60);

/// One workspace: a sidecar over a directory and cove-pty in front of it.
pub struct Workspace {
    // Fields drop in order: the servers stop before their directory goes.
    pub pty: Option<Proc>,
    sidecar: Proc,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub project: String,
    pub ide: String,
    pub preview: String,
    pub admin: String,
    pub sidecar_api: String,
}

impl Workspace {
    pub fn start(extra: &[&str]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&store).unwrap();
        let project = "demo".to_string();
        let api = format!("127.0.0.1:{}", free_port());
        let mut sidecar = Proc::spawn(
            "cove-sync",
            Command::new(bin("cove-sync"))
                .args(["--store", &format!("file://{}", store.display()), "serve"])
                .args(["--project", &project, "--workspace"])
                .arg(&root)
                .args(["--mode", "watch", "--api", &api, "--create"]),
        );
        sidecar.wait_line("ready", START);
        let mut ws = Workspace {
            dir,
            root,
            project,
            sidecar,
            pty: None,
            ide: String::new(),
            preview: String::new(),
            admin: String::new(),
            sidecar_api: api,
        };
        ws.start_pty(extra);
        ws
    }

    pub fn start_pty(&mut self, extra: &[&str]) {
        let mut pty = Proc::spawn(
            "cove-pty",
            Command::new(bin("cove-pty"))
                .args(["--project", &self.project, "--root"])
                .arg(&self.root)
                .args(["--sidecar", &format!("http://{}", self.sidecar_api)])
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
                .env("PS1", "$ ")
                // The tests read its warnings in its log.
                .env("RUST_LOG", "cove_pty=info"),
        );
        let line = pty.wait_line("listening", START);
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        self.ide = get("ide");
        self.preview = get("preview");
        self.admin = get("admin");
        self.pty = Some(pty);
        // Ready once the sidecar says so (polled every second).
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(&self.admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "cove-pty never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pty_pid(&self) -> i32 {
        self.pty.as_ref().unwrap().pid()
    }

    pub fn token(&self) -> String {
        cove_pty::token::sign(SECRET.as_bytes(), &self.project, now(), 300, None)
    }

    /// How to connect to this workspace's cove-pty, as the IDE does.
    pub fn endpoint(&self) -> Connect {
        Connect::new(&self.ide, &self.token(), ORIGIN).client("test")
    }

    /// A connection that has said hello.
    pub async fn connect(&self) -> Client {
        self.endpoint().connect().await.expect("connect")
    }

    /// SIGTERM; the exit status. A graceful stop that takes longer than a
    /// minute ends in SIGKILL, which fails the caller's check of the status.
    pub fn stop_pty(&mut self) -> std::process::ExitStatus {
        let mut p = self.pty.take().unwrap();
        p.terminate(Duration::from_secs(60))
            .expect("cove-pty's exit status")
    }
}

/// The upgrade request with `Sec-WebSocket-Protocol` and `Origin` exactly as
/// given (`None`: no such header), to test refusals.
pub fn upgrade_request(ide: &str, protocols: Option<&str>, origin: Option<&str>) -> Connect {
    Connect {
        origin: origin.map(str::to_string),
        token: None,
        protocols: protocols.map(str::to_string),
        ..Connect::new(ide, "", ORIGIN)
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Minimal blocking HTTP/1.1 GET.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "")
}

pub use cove_testkit::http;

/// Children of `pid` that are zombies.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 1 && f[0] == "Z" && f[1].parse::<i32>().ok() == Some(pid) {
            out.push(p);
        }
    }
    out
}

pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn write(root: &Path, rel: &str, content: &str) {
    std::fs::write(root.join(rel), content).unwrap();
}

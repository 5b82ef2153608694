//! Controller mode end to end: a real cove-controller (local runtime, FUSE
//! workspaces, a directory store), the harness creating its projects and
//! driving them through the API and the gateway, the worker's records
//! coming back over its terminal, kills of the workspace's processes, and
//! the checks on an export of the store's head.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binaries' directory, when everything this test needs is here:
/// root and /dev/fuse and the workspace's binaries. Skipped otherwise,
/// except under CI (cove_testkit::require).
fn ready() -> Option<PathBuf> {
    let fuse = cove_testkit::require_fuse();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_cove-chaos"))
        .parent()
        .map(Path::to_path_buf)?;
    let bins = ["cove-sync", "cove-pty", "cove-controller"]
        .iter()
        .all(|b| bin_dir.join(b).exists());
    let bins = cove_testkit::require("the workspace's binaries (cargo build --workspace)", bins);
    (fuse && bins).then_some(bin_dir)
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        // SIGTERM: it stops its workspaces (final flush) and exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

#[test]
fn controller_mode_kills_and_checks_through_the_api() {
    let Some(bin_dir) = ready() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A HOME of its own (see controller/tests/local_mode.rs: login shells
    // must not run this machine's dotfiles).
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let mut child = Command::new(bin_dir.join("cove-controller"))
        .args(["--port", &port.to_string(), "--mode", "fuse"])
        .args(["--idle-timeout-secs", "0", "--data-dir"])
        .arg(&data)
        .arg("--templates")
        .arg(&templates)
        .env("HOME", &home)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _controller = Controller(child);
    assert!(line.starts_with("listening"), "{line}");

    let out = dir.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_cove-chaos"))
        .args([
            "run",
            "--target",
            "controller",
            "--cycles",
            "6",
            "--lanes",
            "1",
        ])
        .args(["--seed", "77", "--controller"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--store")
        .arg(format!("file://{}", data.join("store").display()))
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "{stdout}\n{stderr}\ncontroller:\n{log}"
    );
    assert_eq!(stdout.trim(), "6 passed, 0 failed", "{stderr}");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Controller mode"), "{report}");
    // The records came over the terminal, and the checks had something to
    // check: acknowledged writes, in every cycle.
    let cycles: Vec<serde_json::Value> = std::fs::read_to_string(out.join("cycles.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(cycles.len(), 6);
    for c in &cycles {
        assert!(c["cycle"]["acked"].as_u64().unwrap() > 0, "{c}");
        assert!(
            c["cycle"]["fault"]
                .as_str()
                .unwrap()
                .starts_with("controller: kill"),
            "{c}"
        );
    }
    let manifest = std::fs::read_to_string(out.join("lane-0/manifest.jsonl")).unwrap();
    for op in ["write", "save"] {
        assert!(
            manifest.contains(&format!("\"op\":\"{op}\"")),
            "no {op} recorded"
        );
    }
}

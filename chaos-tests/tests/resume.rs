//! A run whose harness is SIGKILLed goes on with `--resume`: what the dead
//! harness left running is killed, every lane is recovered and checked,
//! and the report covers the whole run. Real Garage (from the test
//! command), real FUSE, two lanes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binaries' directory, when everything this test needs is here:
/// root and /dev/fuse, Garage and the workspace's binaries. Skipped otherwise,
/// except under CI (cove_testkit::require).
fn ready() -> Option<PathBuf> {
    let fuse = cove_testkit::require_fuse();
    let s3 = cove_testkit::S3Env::from_env().is_some();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_cove-chaos"))
        .parent()
        .map(Path::to_path_buf)?;
    let bins = ["cove-sync", "cove-pty"]
        .iter()
        .all(|b| bin_dir.join(b).exists());
    let bins = cove_testkit::require("the workspace's binaries (cargo build --workspace)", bins);
    (fuse && s3 && bins).then_some(bin_dir)
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        // Zombies have an empty command line.
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_killed_run_resumes_and_checks_every_lane() {
    let Some(bin_dir) = ready() else { return };
    let exe = env!("CARGO_BIN_EXE_cove-chaos");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut first = Command::new(exe)
        .args(["run", "--cycles", "8", "--lanes", "2", "--seed", "4242"])
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cycles = out.join("cycles.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(&cycles).len() < 3 {
        assert!(Instant::now() < deadline, "no 3 cycles within 120 s");
        assert!(first.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The harness dies; its workspaces and workers go on, as after a
    // crash of the machine's session.
    first.kill().unwrap();
    first.wait().unwrap();
    let before = lines(&cycles).len();
    assert!(
        !processes_with(&out.display().to_string()).is_empty(),
        "the killed harness's workspaces should still be running"
    );
    let old_work = PathBuf::from(std::fs::read_to_string(out.join("work-dir")).unwrap());
    assert!(
        !mounts_under(&old_work).is_empty(),
        "the killed harness's mounts should still be there"
    );

    let second = Command::new(exe)
        .args(["run", "--resume"])
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        second.status.success(),
        "resume failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), "8 passed, 0 failed", "{stderr}");

    let all = lines(&cycles);
    let resumes: Vec<_> = all.iter().filter(|l| l["kind"] == "resume").collect();
    assert_eq!(resumes.len(), 2, "one recovery check per lane: {all:?}");
    assert!(resumes
        .iter()
        .all(|r| r["violations"].as_array().unwrap().is_empty()));
    let n: Vec<u64> = all
        .iter()
        .filter(|l| l["kind"] == "cycle")
        .map(|l| l["cycle"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(n.len(), 8, "{all:?}");
    assert!(all.len() > before);
    // Cycle numbers never repeat: an interrupted cycle's records stay in
    // the manifest under its number.
    let mut sorted = n.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 8, "{n:?}");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Resumed 1 time"), "{report}");
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["resumes"], 1);
    assert!(
        processes_with(&out.display().to_string()).is_empty(),
        "processes of the run are left"
    );
    // The dead harness's mounts were detached and its directory removed;
    // no cache was left behind.
    assert_eq!(mounts_under(&old_work), Vec::<PathBuf>::new());
    assert!(!old_work.exists(), "{} is left", old_work.display());
    for lane in ["lane-0", "lane-1"] {
        let caches: Vec<_> = std::fs::read_dir(out.join(lane).join("logs"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("cache-"))
            .map(|e| e.path())
            .collect();
        assert!(caches.is_empty(), "caches left: {caches:?}");
    }
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

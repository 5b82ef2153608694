//! The worker works from inside its root, as a user's process does: when
//! the directory is taken away from under it (a sidecar's graceful stop
//! detaches its mount lazily), nothing it does afterwards may land in
//! whatever is at the old path. The release run found the opposite: a
//! worker naming files by absolute path wrote into the bare mount point on
//! the local disk, and its fsyncs succeeded there without Cove.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn records(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn a_worker_keeps_to_its_directory_when_the_path_changes() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let manifest = d.path().join("manifest.jsonl");
    let mut w = Command::new(env!("CARGO_BIN_EXE_cove-chaos"))
        .arg("worker")
        .arg("--root")
        .arg(&root)
        .arg("--manifest")
        .arg(&manifest)
        .args(["--seed", "7", "--cycle", "0", "--tar-files", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while records(&manifest) < 50 {
        assert!(Instant::now() < deadline, "the worker wrote no records");
        assert!(w.try_wait().unwrap().is_none(), "the worker ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The directory goes away under the running worker; another takes its
    // path, as the bare mount point does after a lazy unmount. It has the
    // worker's directory already: in the release run, one stray operation
    // had created it in the bare mount point, and from then on writes
    // succeeded there.
    let moved = d.path().join("moved");
    std::fs::rename(&root, &moved).unwrap();
    std::fs::create_dir_all(root.join("w")).unwrap();
    let before = records(&manifest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while records(&manifest) < before + 200 {
        assert!(Instant::now() < deadline, "the worker stopped writing");
        assert!(w.try_wait().unwrap().is_none(), "the worker ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.kill().unwrap();
    w.wait().unwrap();
    let stray: Vec<_> = std::fs::read_dir(root.join("w"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        stray.is_empty(),
        "the worker wrote at the old path: {:?}",
        stray.iter().map(|e| e.path()).collect::<Vec<_>>()
    );
    assert!(moved.join("w").is_dir());
}

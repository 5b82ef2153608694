//! The sidecar as a process over a real FUSE mount (and in watch mode),
//! against the directory store and Garage: POSIX semantics developer tools
//! rely on, the durability contract under SIGKILL, and a differential test
//! of random operation sequences against a plain directory.

mod common;

use common::sidecar::{
    assert_same, export, http, http_with, snapshot, stores, wait_until, Entry, Sidecar, Store,
};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

fn fuse_available() -> bool {
    cove_testkit::require_fuse()
}

/// A developer's day in miniature: every pattern below is one that a real
/// tool uses (editors, git, compilers, package managers, shells).
fn developer_session(root: &Path) {
    let p = |r: &str| root.join(r);
    fs::create_dir_all(p("src/nested/deep")).unwrap();
    fs::write(p("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(p("src/nested/deep/mod.rs"), "// deep\n").unwrap();
    fs::write(p("name with spaces.txt"), "spaces").unwrap();
    fs::write(p("ünïcödé 🦀.md"), "# unicode").unwrap();
    fs::write(p("new\nline"), "newline in the name").unwrap();
    let long: String = (0..12)
        .map(|i| format!("{}{i}/", "d".repeat(200)))
        .collect();
    fs::create_dir_all(p(&long)).unwrap();
    fs::write(p(&format!("{long}file.txt")), "far away").unwrap();
    fs::write(p("empty"), "").unwrap();
    fs::write(p("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(p("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/main.rs", p("link-to-main")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p("absolute-link")).unwrap();
    fs::hard_link(p("src/main.rs"), p("hardlink.rs")).unwrap();
    // Append, like a log.
    for i in 0..3 {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(p("log.txt"))
            .unwrap();
        writeln!(f, "line {i}").unwrap();
    }
    // Write at an offset past the end (a hole), and truncate.
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(p("offset.bin"))
            .unwrap();
        f.write_all_at(b"XY", 100).unwrap();
        fs::write(p("trunc.txt"), vec![b'a'; 1000]).unwrap();
        OpenOptions::new()
            .write(true)
            .open(p("trunc.txt"))
            .unwrap()
            .set_len(10)
            .unwrap();
    }
    // An editor's atomic save: write a temp file, rename it over.
    fs::write(
        p("src/.main.rs.swp"),
        "fn main() { println!(\"saved\"); }\n",
    )
    .unwrap();
    fs::rename(p("src/.main.rs.swp"), p("src/main.rs")).unwrap();
    // git's lock-file protocol.
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("index.lock"))
            .unwrap();
        f.write_all(b"git index v2").unwrap();
        assert!(OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("index.lock"))
            .is_err());
    }
    fs::rename(p("index.lock"), p("index")).unwrap();
    // In-place rewrite of a hard-linked file changes both names.
    fs::write(p("hardlink.rs"), "rewritten in place\n").unwrap();
    // Directory rename, rmdir, unlink, chmod, an explicit mtime.
    fs::rename(p("src/nested"), p("src/moved")).unwrap();
    fs::create_dir(p("gone")).unwrap();
    fs::remove_dir(p("gone")).unwrap();
    fs::write(p("tmp"), "temporary").unwrap();
    fs::remove_file(p("tmp")).unwrap();
    fs::set_permissions(p("name with spaces.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let t = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(p("empty"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    // A file above the inline limit (stored as chunks).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(p("big.bin"), &big).unwrap();
    // Passthrough and cached opens of one inode must not collide (the
    // kernel refuses to mix them): a large file reopened while another
    // handle is open, and a small file that grows while open.
    {
        use std::io::Read;
        fs::write(p("blob.bin"), vec![7u8; 1 << 20]).unwrap();
        let mut a = OpenOptions::new().append(true).open(p("blob.bin")).unwrap();
        let mut r = fs::File::open(p("blob.bin")).unwrap();
        a.write_all(b"tail").unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), (1 << 20) + 4);
        let mut g = fs::File::create(p("grow.bin")).unwrap();
        g.write_all(&vec![1u8; 300_000]).unwrap();
        let mut r2 = fs::File::open(p("grow.bin")).unwrap();
        let mut got = Vec::new();
        r2.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 300_000);
        g.write_all(b"more").unwrap();
    }
    // Read-only directory with content.
    fs::create_dir(p("ro")).unwrap();
    fs::write(p("ro/kept"), "inside a read-only dir").unwrap();
    fs::set_permissions(p("ro"), fs::Permissions::from_mode(0o555)).unwrap();
}

fn without_mtimes(
    s: &std::collections::BTreeMap<String, Entry>,
) -> std::collections::BTreeMap<String, Entry> {
    s.iter()
        .map(|(k, v)| {
            let v = match v {
                Entry::File { mode, content, .. } => Entry::File {
                    mode: *mode,
                    mtime: 0,
                    content: content.clone(),
                },
                o => o.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

#[test]
fn posix_semantics_round_trip_through_the_store() {
    if !fuse_available() {
        return;
    }
    for (store, _g) in stores() {
        let project = common::unique("posix");
        let sc = Sidecar::start(&store, &project, "fuse", &[]);
        developer_session(&sc.mount);
        let plain = tempfile::tempdir().unwrap();
        developer_session(plain.path());
        let mounted = snapshot(&sc.mount);
        assert_same(
            &format!("[{}] mount vs plain directory", store.name),
            &without_mtimes(&mounted),
            &without_mtimes(&snapshot(plain.path())),
        );
        // statfs works (df, package managers check free space).
        nix::sys::statvfs::statvfs(&sc.mount).unwrap();
        sc.terminate();

        // Everything, mtimes included, comes back from the store.
        let out = export(&store, &project);
        assert_same(
            &format!("[{}] store vs mount", store.name),
            &snapshot(out.path()),
            &mounted,
        );

        // And a new workspace hydrates the same tree.
        let sc2 = Sidecar::start(&store, &project, "fuse", &[]);
        assert_same(
            &format!("[{}] rehydrated", store.name),
            &snapshot(&sc2.mount),
            &mounted,
        );
        sc2.terminate();
    }
}

/// Self-verifying content: a file carries its own name, version and length.
fn versioned(name: &str, v: u32, len: usize) -> Vec<u8> {
    let head = format!("{name} v{v} len {len}\n");
    let mut b = head.clone().into_bytes();
    while b.len() < len {
        b.extend_from_slice(format!("{v:08}").as_bytes());
    }
    b.truncate(len);
    b
}

fn version_of(name: &str, b: &[u8]) -> Option<u32> {
    let s = String::from_utf8_lossy(&b[..b.len().min(80)]);
    let line = s.lines().next()?;
    let mut it = line.split(' ');
    let (n, v, _, len) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let v: u32 = v.strip_prefix('v')?.parse().ok()?;
    let len: usize = len.parse().ok()?;
    (n == name && b == versioned(name, v, len).as_slice()).then_some(v)
}

#[test]
fn fsync_is_durable_and_nothing_is_torn_after_sigkill() {
    if !fuse_available() {
        return;
    }
    for (store, _g) in stores() {
        let project = common::unique("crash");
        for round in 0..3u32 {
            let sc = Sidecar::start(&store, &project, "fuse", &[]);
            // Hydration gave back every file a previous round fsync'd.
            for r in 0..round {
                let b = fs::read(sc.path(&format!("fsynced-{r}"))).unwrap_or_default();
                assert_eq!(
                    version_of(&format!("fsynced-{r}"), &b),
                    Some(r),
                    "[{}] round {round}",
                    store.name
                );
            }
            // A writer rewrites two files (one small, one chunked) as fast as it can...
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = {
                let (m, stop) = (sc.mount.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut v = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        v += 1;
                        for (name, len) in [("small", 3000), ("large", 200_000)] {
                            let _ = fs::write(m.join(name), versioned(name, v, len));
                        }
                    }
                })
            };
            // ...while another fsyncs a file and we kill everything right after.
            std::thread::sleep(Duration::from_millis(150 + 100 * round as u64));
            let name = format!("fsynced-{round}");
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o644)
                .open(sc.path(&name))
                .unwrap();
            f.write_all(&versioned(&name, round, 5000)).unwrap();
            f.sync_all().unwrap();
            sc.kill();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = writer.join();

            let out = export(&store, &project);
            let b = fs::read(out.path().join(&name)).expect("fsync'd file lost");
            assert_eq!(
                version_of(&name, &b),
                Some(round),
                "[{}] fsync'd content",
                store.name
            );
            for n in ["small", "large"] {
                if let Ok(b) = fs::read(out.path().join(n)) {
                    assert!(
                        version_of(n, &b).is_some(),
                        "[{}] {n} is torn ({} bytes)",
                        store.name,
                        b.len()
                    );
                }
            }
        }
    }
}

#[test]
fn the_control_api_reports_and_flushes() {
    if !fuse_available() {
        return;
    }
    let (store, _g) = stores().remove(0);
    let sc = Sidecar::start(&store, "api-test", "fuse", &[]);
    let (code, body) = sc.get("/readyz");
    assert_eq!(code, 200, "{body}");
    fs::write(sc.path("x.txt"), "x").unwrap();
    let (code, body) = sc.flush(r#"{"paths":["x.txt"]}"#);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"durable\":true"), "{body}");
    // close(2) returns before the kernel's asynchronous RELEASE reaches the
    // sidecar, which then re-checks the file: wait for that to settle.
    wait_until("status to settle", Duration::from_secs(10), || {
        sc.get("/status").1.contains("\"pending\":false")
    });
    let (_, status) = sc.get("/status");
    for field in [
        "\"mode\":\"fuse\"",
        "\"hydrated\":true",
        "\"pending\":false",
        "\"healthy\":true",
    ] {
        assert!(status.contains(field), "{field} missing in {status}");
    }
    let (code, body) = sc.flush(r#"{"paths":["../etc"]}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad_path"));
    let (code, _) = sc.flush("{not json");
    assert_eq!(code, 400);
    let (code, _) = sc.get("/nope");
    assert_eq!(code, 404);
    let (code, m) = sc.get("/metrics");
    assert_eq!(code, 200);
    assert!(m.contains("cove_sync_commits_total"), "{m}");
    sc.terminate();
}

/// Every web page can send requests to loopback. A review rewound a
/// workspace with a blind cross-site `text/plain` POST to `/restore`; the
/// API now answers no request that comes from a browser.
#[test]
fn the_control_api_answers_no_browser() {
    let (store, _g) = stores().remove(0);
    let sc = Sidecar::start(&store, "browser-test", "watch", &[]);
    let flush = r#"{"paths":[]}"#;
    // A page's fetch, or a form, sends its Origin.
    let (code, body) = http_with(
        &sc.api,
        "POST",
        "/flush",
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "application/json"),
        ],
        flush,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("origin_forbidden"), "{body}");
    let (code, _) = http_with(
        &sc.api,
        "GET",
        "/status",
        &[("Origin", "https://evil.example")],
        "",
    );
    assert_eq!(code, 403);
    // A "simple request" body (no preflight) is not a command, with or
    // without an Origin (some clients strip it).
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let (code, body) = http_with(
            &sc.api,
            "POST",
            "/restore",
            &[("Content-Type", ct)],
            r#"{"commit":"1.1"}"#,
        );
        assert_eq!(code, 415, "{ct}: {body}");
        let (code, _) = http_with(&sc.api, "POST", "/flush", &[("Content-Type", ct)], flush);
        assert_eq!(code, 415, "{ct}");
    }
    // The callers' requests still work: JSON, and an empty flush.
    let (code, body) = sc.flush(flush);
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_with(&sc.api, "POST", "/flush", &[], "");
    assert_eq!(code, 200, "{body}");
    sc.terminate();
}

#[test]
fn watch_mode_round_trips_and_catches_what_events_miss() {
    let (store, _g) = stores().remove(0);
    let sc = Sidecar::start(&store, "watch-test", "watch", &[]);
    developer_session(&sc.mount);
    let before = snapshot(&sc.mount);
    let (code, body) = sc.flush("");
    assert_eq!(code, 200, "{body}");
    sc.terminate();
    let out = export(&store, "watch-test");
    assert_same(
        "watch mode: store vs directory",
        &snapshot(out.path()),
        &before,
    );
}

#[test]
fn bad_starts_fail_clearly() {
    let (store, _g) = stores().remove(0);
    // Unknown project without --create.
    let o = common::sidecar::cmd(&store)
        .args([
            "serve",
            "--project",
            "does-not-exist",
            "--workspace",
            "/tmp/cove-nope",
            "--mode",
            "watch",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Bad project ids.
    for bad in ["../x", "UPPER", "a b", "-x", ""] {
        let o = common::sidecar::cmd(&store)
            .arg("history")
            .arg(format!("--project={bad}"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{bad:?} accepted");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid project id"),
            "{bad:?}"
        );
    }
    // Unknown template.
    let o = common::sidecar::cmd(&store)
        .args(["create", "--project", "p", "--template", "no-such-template"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-template"));
    // Wrong S3 credentials: a clear error at start, not later.
    if let Some(mut cfg) = common::s3_config() {
        cfg.secret_key = Some("wrong".into());
        let (url, env) = common::s3_env(&cfg);
        let s = Store {
            url,
            env,
            name: "s3",
        };
        let o = common::sidecar::cmd(&s)
            .args(["history", "--project", "p"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("access denied") && err.contains("credentials"),
            "{err}"
        );
    }
}

#[test]
fn two_sidecar_processes_on_one_project_only_the_newer_saves() {
    if !fuse_available() {
        return;
    }
    for (store, _g) in stores() {
        let project = common::unique("fence");
        let old = Sidecar::start(&store, &project, "fuse", &[]);
        fs::write(old.path("f.txt"), "old").unwrap();
        assert_eq!(old.flush("").0, 200);
        // A second sidecar starts while the first is still alive.
        let new = Sidecar::start(&store, &project, "fuse", &[]);
        assert_eq!(fs::read_to_string(new.path("f.txt")).unwrap(), "old");
        fs::write(old.path("f.txt"), "stale").unwrap();
        let (code, body) = old.flush("");
        assert_eq!(
            code, 409,
            "[{}] stale sidecar acknowledged: {body}",
            store.name
        );
        assert!(body.contains("fenced"));
        // fsync on the stale mount fails instead of lying.
        let f = OpenOptions::new()
            .write(true)
            .open(old.path("f.txt"))
            .unwrap();
        assert!(
            f.sync_all().is_err(),
            "[{}] fsync succeeded on a fenced workspace",
            store.name
        );
        fs::write(new.path("f.txt"), "new").unwrap();
        assert_eq!(new.flush("").0, 200);
        old.kill();
        new.terminate();
        let out = export(&store, &project);
        assert_eq!(
            fs::read_to_string(out.path().join("f.txt")).unwrap(),
            "new",
            "[{}]",
            store.name
        );
    }
}

mod differential {
    //! Random operation sequences applied to a plain directory and to the
    //! mount must give the same results and the same tree; the store must
    //! then hold exactly the mount's tree.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum FsOp {
        Write(usize, u8, usize),
        Append(usize, u8),
        Truncate(usize, usize),
        Mkdir(usize),
        Rmdir(usize),
        Unlink(usize),
        Rename(usize, usize),
        Symlink(usize, usize),
        Chmod(usize, u32),
        Link(usize, usize),
    }

    const PATHS: &[&str] = &["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "f", "f/a"];

    fn op() -> impl Strategy<Value = FsOp> {
        let p = 0..PATHS.len();
        prop_oneof![
            4 => (p.clone(), any::<u8>(), 0usize..70_000).prop_map(|(a, b, c)| FsOp::Write(a, b, c)),
            2 => (p.clone(), any::<u8>()).prop_map(|(a, b)| FsOp::Append(a, b)),
            1 => (p.clone(), 0usize..100).prop_map(|(a, b)| FsOp::Truncate(a, b)),
            3 => p.clone().prop_map(FsOp::Mkdir),
            1 => p.clone().prop_map(FsOp::Rmdir),
            2 => p.clone().prop_map(FsOp::Unlink),
            3 => (p.clone(), p.clone()).prop_map(|(a, b)| FsOp::Rename(a, b)),
            1 => (p.clone(), p.clone()).prop_map(|(a, b)| FsOp::Symlink(a, b)),
            1 => (p.clone(), prop_oneof![Just(0o644u32), Just(0o755), Just(0o600)]).prop_map(|(a, b)| FsOp::Chmod(a, b)),
            1 => (p.clone(), p).prop_map(|(a, b)| FsOp::Link(a, b)),
        ]
    }

    fn apply(root: &Path, op: &FsOp) -> Result<(), std::io::ErrorKind> {
        let p = |i: usize| root.join(PATHS[i]);
        let r = match op {
            FsOp::Write(i, b, n) => fs::write(p(*i), vec![*b; *n]),
            FsOp::Append(i, b) => OpenOptions::new()
                .append(true)
                .open(p(*i))
                .and_then(|mut f| f.write_all(&[*b; 7])),
            FsOp::Truncate(i, n) => OpenOptions::new()
                .write(true)
                .open(p(*i))
                .and_then(|f| f.set_len(*n as u64)),
            FsOp::Mkdir(i) => fs::create_dir(p(*i)),
            FsOp::Rmdir(i) => fs::remove_dir(p(*i)),
            FsOp::Unlink(i) => fs::remove_file(p(*i)),
            FsOp::Rename(a, b) => fs::rename(p(*a), p(*b)),
            FsOp::Symlink(a, b) => std::os::unix::fs::symlink(PATHS[*a], p(*b)),
            FsOp::Chmod(i, m) => {
                // Only regular files and dirs (chmod follows symlinks).
                match fs::symlink_metadata(p(*i)) {
                    Ok(md) if !md.file_type().is_symlink() => {
                        fs::set_permissions(p(*i), fs::Permissions::from_mode(*m))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            FsOp::Link(a, b) => fs::hard_link(p(*a), p(*b)),
        };
        r.map_err(|e| e.kind())
    }

    fn clear(root: &Path) {
        for e in fs::read_dir(root).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
    }

    #[test]
    fn random_sequences_match_a_plain_directory_and_the_store() {
        if !fuse_available() {
            return;
        }
        let (store, _g) = stores().remove(0);
        let sc = Sidecar::start(&store, "differential", "fuse", &[]);
        let plain = tempfile::tempdir().unwrap();
        let cases = std::env::var("COVE_PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(24);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 1..30), |ops| {
                clear(&sc.mount);
                clear(plain.path());
                for (i, o) in ops.iter().enumerate() {
                    let a = apply(plain.path(), o);
                    let b = apply(&sc.mount, o);
                    prop_assert_eq!(a, b, "step {} {:?} diverged", i, o);
                }
                let m = snapshot(&sc.mount);
                prop_assert_eq!(
                    &without_mtimes(&m),
                    &without_mtimes(&snapshot(plain.path()))
                );
                let (code, body) = sc.flush("");
                prop_assert_eq!(code, 200, "{}", body);
                let out = export(&store, "differential");
                prop_assert_eq!(&snapshot(out.path()), &m, "store differs from the mount");
                Ok(())
            })
            .unwrap();
        sc.terminate();
        wait_until("nothing", Duration::from_secs(1), || true);
    }
}

fn commit_of(flush_body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(flush_body).unwrap();
    format!("{}.{}", v["commit"]["epoch"], v["commit"]["seq"])
}

/// A running workspace is restored by its own sidecar, through the mount:
/// files, a multi-chunk file, a directory that replaced a file, deletions;
/// one path alone; and bad requests answered clearly, changing nothing.
fn restore_running(mode: &'static str) {
    let (store, _g) = stores().remove(0);
    // Restored entries belong to the workspace user, not to the sidecar.
    let sc = Sidecar::start(
        &store,
        &format!("restore-{mode}"),
        mode,
        &["--owner", "4321:4321"],
    );
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(sc.path("a.txt"), "a1").unwrap();
    fs::write(sc.path("big.bin"), &big).unwrap();
    fs::write(sc.path("thing"), "a file").unwrap();
    fs::create_dir(sc.path("src")).unwrap();
    fs::write(sc.path("src/keep.rs"), "k1").unwrap();
    let (code, body) = sc.flush("");
    assert_eq!(code, 200, "{body}");
    let first = commit_of(&body);
    let then = snapshot(&sc.mount);

    fs::write(sc.path("a.txt"), "a2").unwrap();
    fs::write(sc.path("big.bin"), b"small now").unwrap();
    fs::remove_file(sc.path("thing")).unwrap();
    fs::create_dir_all(sc.path("thing/inside")).unwrap();
    fs::write(sc.path("thing/inside/x"), "x").unwrap();
    fs::write(sc.path("src/keep.rs"), "k2").unwrap();
    fs::write(sc.path("new.txt"), "new").unwrap();
    let (code, body) = sc.flush("");
    assert_eq!(code, 200, "{body}");

    // One path only: the rest stays as it is.
    let (code, body) = http(
        &sc.api,
        "POST",
        "/restore",
        &format!(r#"{{"commit":"{first}","path":"src/keep.rs"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"files_changed\":1"), "{body}");
    assert_eq!(fs::read_to_string(sc.path("src/keep.rs")).unwrap(), "k1");
    assert_eq!(fs::read_to_string(sc.path("a.txt")).unwrap(), "a2");

    for (req, status, code) in [
        (r#"{"commit":"99.99"}"#.to_string(), 404, "unknown_commit"),
        (
            r#"{"commit":"nonsense"}"#.to_string(),
            404,
            "unknown_commit",
        ),
        (
            format!(r#"{{"commit":"{first}","path":"new.txt"}}"#),
            404,
            "path_not_found",
        ),
        (
            format!(r#"{{"commit":"{first}","path":"../etc"}}"#),
            400,
            "bad_path",
        ),
        ("{not json".to_string(), 400, "bad_request"),
        (r#"{"path":"a.txt"}"#.to_string(), 400, "bad_request"),
    ] {
        let (s, body) = http(&sc.api, "POST", "/restore", &req);
        assert_eq!(s, status, "{req}: {body}");
        assert!(body.contains(code), "{req}: {body}");
    }
    assert_eq!(fs::read_to_string(sc.path("a.txt")).unwrap(), "a2");

    // Everything: the workspace is exactly what it was, and so is the store.
    let (code, body) = http(
        &sc.api,
        "POST",
        "/restore",
        &format!(r#"{{"commit":"{first}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_same(
        &format!("{mode}: restored workspace vs then"),
        &without_mtimes(&snapshot(&sc.mount)),
        &without_mtimes(&then),
    );
    assert_eq!(fs::read(sc.path("big.bin")).unwrap(), big);
    for p in ["a.txt", "big.bin", "thing", "src/keep.rs"] {
        let uid = std::os::unix::fs::MetadataExt::uid(&fs::symlink_metadata(sc.path(p)).unwrap());
        assert_eq!(uid, 4321, "{mode}: owner of restored {p}");
    }
    let (code, body) = http(
        &sc.api,
        "POST",
        "/restore",
        &format!(r#"{{"commit":"{first}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"files_changed\":0"), "again: {body}");
    sc.terminate();
    let out = export(&store, &format!("restore-{mode}"));
    assert_same(
        &format!("{mode}: store after restore vs then"),
        &without_mtimes(&snapshot(out.path())),
        &without_mtimes(&then),
    );
}

#[test]
fn a_running_workspace_restores_through_its_mount() {
    if fuse_available() {
        restore_running("fuse");
    }
}

#[test]
fn a_watched_workspace_restores_too() {
    restore_running("watch");
}

fn hydration(sc: &Sidecar) -> serde_json::Value {
    let (code, body) = sc.get("/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["hydration"].clone()
}

/// A clean stop lets the next start on the same cache skip hydration; a
/// cache touched while stopped, a crash, or a project that moved on since
/// all hydrate from the store, which stays the truth.
fn warm_restarts(mode: &'static str) {
    let (store, _g) = stores().remove(0);
    let project = format!("warm-{mode}");
    let sc = Sidecar::start(&store, &project, mode, &[]);
    assert_eq!(hydration(&sc)["warm"], false);
    fs::create_dir_all(sc.path("src/deep")).unwrap();
    fs::write(sc.path("src/deep/a.rs"), "fn a() {}").unwrap();
    fs::write(sc.path("big.bin"), vec![7u8; 200_000]).unwrap();
    std::os::unix::fs::symlink("src/deep/a.rs", sc.path("link")).unwrap();
    fs::set_permissions(sc.path("src/deep/a.rs"), fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(&sc.mount);
    let dir = sc.stop_keeping_dir();

    // Clean stop, nothing changed: warm, and the same files.
    let sc = Sidecar::start_in(dir, &store, &project, mode, &[]);
    let h = hydration(&sc);
    assert_eq!(
        (h["warm"].as_bool(), h["finished"].as_bool()),
        (Some(true), Some(true)),
        "{h}"
    );
    assert_same(
        &format!("{mode}: warm start"),
        &snapshot(&sc.mount),
        &before,
    );
    let dir = sc.stop_keeping_dir();

    // The cache changed while stopped: the store wins, cold.
    let cached = |rel: &str| {
        if mode == "fuse" {
            dir.path().join("cache").join(rel)
        } else {
            dir.path().join("workspace").join(rel)
        }
    };
    fs::write(cached("src/deep/a.rs"), "tampered").unwrap();
    fs::write(cached("stray.txt"), "never saved").unwrap();
    let sc = Sidecar::start_in(dir, &store, &project, mode, &[]);
    assert_eq!(hydration(&sc)["warm"], false);
    assert_same(
        &format!("{mode}: after tampering"),
        &snapshot(&sc.mount),
        &before,
    );

    // A crash leaves no clean state behind: cold.
    let dir = sc.kill_keeping_dir();
    let sc = Sidecar::start_in(dir, &store, &project, mode, &[]);
    assert_eq!(hydration(&sc)["warm"], false);
    let dir = sc.stop_keeping_dir();

    // Another writer moved the project on: cold, with its change.
    let other = Sidecar::start(&store, &project, mode, &[]);
    fs::write(other.path("from-elsewhere.txt"), "hi").unwrap();
    other.terminate();
    let sc = Sidecar::start_in(dir, &store, &project, mode, &[]);
    assert_eq!(hydration(&sc)["warm"], false);
    assert_eq!(
        fs::read_to_string(sc.path("from-elsewhere.txt")).unwrap(),
        "hi"
    );
    sc.terminate();
}

#[test]
fn a_clean_stop_allows_a_warm_start_over_fuse() {
    if fuse_available() {
        warm_restarts("fuse");
    }
}

#[test]
fn a_clean_stop_allows_a_warm_start_when_watched() {
    warm_restarts("watch");
}

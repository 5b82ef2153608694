//! The templates' apps, run as a workspace runs them: each one that serves
//! HTTP listens on loopback only. The preview proxy reaches it there; the
//! network must not (the static template served the whole project,
//! dotfiles included, to the LAN).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Addresses in LISTEN state on `port`, from /proc/net/tcp and tcp6, as
/// the kernel writes them (hex, e.g. `0100007F` for 127.0.0.1).
fn listening_on(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(t) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in t.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let Some((addr, p)) = local.split_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(p, 16).ok() == Some(port) {
                out.push(addr.to_string());
            }
        }
    }
    out
}

const LOOPBACK: [&str; 2] = [
    "0100007F",
    // ::1
    "00000000000000000000000001000000",
];

#[test]
fn every_templates_app_listens_on_loopback_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    for name in ["node", "python", "static"] {
        let t = root.join(name);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(t.join("template.json")).unwrap())
                .unwrap();
        let run = meta["run"].as_str().unwrap();
        let work = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(t.join("files")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), work.path().join(e.file_name())).unwrap();
        }
        let port = cove_testkit::free_port();
        let mut app = cove_testkit::Proc::spawn(
            name,
            Command::new("sh")
                .args(["-c", &format!("exec {run}")])
                .current_dir(work.path())
                .env("PORT", port.to_string())
                .stdin(Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name}: `{run}` never listened on {port}\n{}",
                app.tail()
            );
            assert!(
                app.child.try_wait().unwrap().is_none(),
                "{name}: `{run}` exited\n{}",
                app.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let addrs = listening_on(port);
        assert!(!addrs.is_empty(), "{name}: no listener found for {port}");
        for a in &addrs {
            assert!(
                LOOPBACK.contains(&a.as_str()),
                "{name}: `{run}` listens on {a} (not loopback)"
            );
        }
        app.terminate(Duration::from_secs(5));
    }
}

//! cove-testkit: what every Cove test suite needs around the code under
//! test, written once. Dev-only: no binary links it.
//!
//! - [`bin`]: the workspace's binaries, next to the test executable;
//! - [`free_port`]: a loopback port nobody listens on;
//! - [`Proc`]: a child process whose stdout and stderr go to a log file,
//!   that waits for a line on it, and that prints the log's tail when the
//!   test fails (a failed test says why the process misbehaved);
//! - [`http`]: one blocking HTTP/1.1 request with exactly the headers a
//!   test gives (the checks of Host, Origin and Content-Type need that);
//! - [`S3Env`]: the test S3 server (Garage) that `scripts/test.sh` starts,
//!   from `COVE_TEST_S3_*`;
//! - [`require_fuse`] / [`require`]: skip a case that needs root, FUSE or
//!   Garage on a developer's machine, but fail it under CI, where a
//!   skipped case would hide a broken setup.
//!
//! The protocol client is not here: it is `cove_pty::client`, shipped with
//! the protocol it speaks.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether this run is CI's (`CI` set), where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Where the workspace's binaries are: `COVE_BIN_DIR`, else the profile
/// directory the running test executable was built into
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COVE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// A binary of the workspace (`cove-sync`, `cove-pty`, `cove-controller`,
/// `cove-chaos`); panics with the build command when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace, with --release for a release test run)",
        p.display()
    );
    p
}

/// A loopback port that was free a moment ago. Another process may take
/// it before the caller binds; tests that can pass port 0 should.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// A random name with `prefix`, for projects, buckets' prefixes and such.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// One HTTP/1.1 request to `addr` with `headers` (and `Host: addr` unless
/// they name one) and `body`; the status and body. `(0, why)` when nothing
/// answers. Blocking and dependency-free on purpose: tests use it to send
/// what a well-behaved client library would not.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::Write;
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    // Long enough for a flush that waits for the store.
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if let Err(e) = s.write_all(req.as_bytes()) {
        return (0, e.to_string());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Skips (returns false, saying why on stderr) or, under CI, fails.
pub fn require(what: &str, available: bool) -> bool {
    if !available {
        assert!(
            !under_ci(),
            "CI must run this case, but {what} is not available here (run the tests through scripts/test.sh, as root)"
        );
        eprintln!("skipping: needs {what}");
    }
    available
}

/// [`require`] of a usable `/dev/fuse` as root ([`cove_sync::fuse_usable`]).
pub fn require_fuse() -> bool {
    require("root and /dev/fuse", cove_sync::fuse_usable())
}

/// The test S3 server's settings, from the variables `scripts/test.sh`
/// exports after starting Garage.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Env {
    /// `None` (the S3 case is skipped) without `COVE_TEST_S3_ENDPOINT`;
    /// under CI that fails instead.
    pub fn from_env() -> Option<S3Env> {
        let endpoint = std::env::var("COVE_TEST_S3_ENDPOINT").ok();
        if !require("Garage (COVE_TEST_S3_*)", endpoint.is_some()) {
            return None;
        }
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        Some(S3Env {
            endpoint: endpoint.unwrap_or_default(),
            region: var("COVE_TEST_S3_REGION", "garage"),
            bucket: var("COVE_TEST_S3_BUCKET", "cove-test"),
            access_key: var("COVE_TEST_S3_ACCESS_KEY", ""),
            secret_key: var("COVE_TEST_S3_SECRET_KEY", ""),
        })
    }

    /// A store URL under a fresh prefix of the test bucket.
    pub fn fresh_url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, unique(prefix))
    }

    /// The environment a Cove binary reads to reach this server.
    pub fn process_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("COVE_S3_ENDPOINT", self.endpoint.clone()),
            ("COVE_S3_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

/// A child process with its output in a log file. Dropping it kills the
/// process; if the test is failing then, the log's last lines are printed,
/// so the failure says what the process said. With `COVE_TEST_LOG` set the
/// output goes to the test's own stderr as well (at the end).
pub struct Proc {
    pub name: String,
    pub child: Child,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// Lines of the log printed when a test fails.
const TAIL_LINES: usize = 40;

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to a log file in a
    /// temporary directory of its own.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let dir = tempfile::tempdir().expect("a temporary directory for a log");
        let log = dir.path().join(format!("{name}.log"));
        let mut p = Proc::spawn_logging_to(name, cmd, &log);
        p._dir = Some(dir);
        p
    }

    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn_logging_to(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let f = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let f2 = f.try_clone().expect("duplicating the log's descriptor");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            _dir: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line that starts with `prefix`, waiting for it up to
    /// `timeout`; panics with the log's tail if the process exits first or
    /// the time runs out.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.try_wait_line(prefix, timeout) {
            Ok(l) => l,
            Err(why) => panic!(
                "{}: no line starting with {prefix:?}: {why}\n{}",
                self.name,
                self.tail()
            ),
        }
    }

    /// [`Proc::wait_line`] that returns why instead of panicking.
    pub fn try_wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut f = File::open(&self.log).map_err(|e| e.to_string())?;
        let mut pending = String::new();
        loop {
            let mut chunk = String::new();
            let _ = f.read_to_string(&mut chunk);
            pending.push_str(&chunk);
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                if line.starts_with(prefix) {
                    return Ok(line.trim_end().to_string());
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Whatever it wrote before exiting is in the file now.
                let mut rest = String::new();
                let _ = f.read_to_string(&mut rest);
                pending.push_str(&rest);
                if let Some(l) = pending.lines().find(|l| l.starts_with(prefix)) {
                    return Ok(l.to_string());
                }
                return Err(format!("it exited ({st})"));
            }
            if Instant::now() >= deadline {
                return Err(format!("not within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log's last lines, for a failure message.
    pub fn tail(&self) -> String {
        let Ok(mut f) = File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        format!(
            "--- last lines of {} ({}) ---\n{}\n---",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL; the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        // Reaped already: its pid may be another process's by now.
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        // SAFETY: kill(2) of our own child, which we have not reaped yet.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("COVE_TEST_LOG").is_some() {
            eprintln!("{}", self.tail());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_waits_for_its_line_and_reports_an_early_exit() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args([
                "-c",
                "echo starting; echo >&2 warming; sleep 0.2; echo ready at 1; sleep 30",
            ]),
        );
        assert_eq!(p.wait_line("ready", Duration::from_secs(10)), "ready at 1");
        assert!(p.log().contains("warming"), "stderr goes to the log too");
        let st = p.terminate(Duration::from_secs(5)).unwrap();
        assert!(!st.success());

        let mut q = Proc::spawn("sh", Command::new("sh").args(["-c", "echo bye; exit 3"]));
        let e = q
            .try_wait_line("ready", Duration::from_secs(10))
            .unwrap_err();
        assert!(e.contains("exited"), "{e}");
        assert!(q.tail().contains("bye"));
    }

    #[test]
    fn http_sends_what_it_is_given() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut c, &mut buf).unwrap();
            std::io::Write::write_all(
                &mut c,
                b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 2\r\n\r\nhi",
            )
            .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let (code, body) = http(
            &addr,
            "POST",
            "/x",
            &[("Origin", "https://e.example")],
            "{}",
        );
        assert_eq!((code, body.as_str()), (418, "hi"));
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /x HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");
        assert!(req.contains("Origin: https://e.example\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{}"), "{req}");
        drop(std::net::TcpListener::bind(&addr));
        assert_eq!(http("127.0.0.1:1", "GET", "/", &[], "").0, 0);
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port();
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}

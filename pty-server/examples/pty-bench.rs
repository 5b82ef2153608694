//! Benchmark of cove-pty: keystroke echo latency, output flood throughput
//! against the raw PTY rate, memory per terminal and 100 concurrent clients.
//!
//! It starts a real cove-sync (watch mode, directory store) and real cove-pty
//! processes from the same target directory (build them first, see
//! scripts/bench-pty.sh) and speaks the protocol of docs/protocol.md over
//! loopback, the way the browser does (TCP_NODELAY, acks per §7 F2).
//!
//! Prints a Markdown table and the raw numbers. Environment:
//! - `BENCH_QUICK=1`: smaller flood, fewer latency samples.
//! - `BENCH_OUT=file`: also write the Markdown there.
//!
//! Exits non-zero only when the harness itself fails; a missed goal is
//! printed as `MISSED`.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const ORIGIN: &str = "http://localhost:7070";
const PROJECT: &str = "bench";

const KIND_OUTPUT: u8 = 1;
const KIND_SNAPSHOT: u8 = 2;
const KIND_INPUT: u8 = 3;
const KIND_ACK: u8 = 4;
/// §7 F2: ack at least every `ack_bytes`.
const ACK_BYTES: u64 = 64 << 10;
/// Latency samples are paced: INPUT frames count against the server's
/// message rate limit (200/s, burst 1000, §13), so faster sending would
/// measure the limiter.
const KEY_INTERVAL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------
// Processes

fn bin_dir() -> Result<PathBuf> {
    // target/release/examples/<bench> -> target/release
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    Ok(dir.to_path_buf())
}

fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run cargo build --release -p cove-sync -p cove-pty --examples",
            p.display()
        );
    }
    Ok(p)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The child gets SIGTERM if the bench dies (spawned from the main thread).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Waits for a stdout line starting with `prefix`; keeps draining stdout.
fn wait_line(child: &mut Child, prefix: &str) -> Result<String> {
    let out = child.stdout.take().context("stdout not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let want = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(&want) {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("no {prefix:?} line on stdout ({:?})", child.try_wait()))
}

fn stderr_sink() -> Stdio {
    if std::env::var_os("BENCH_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop_child(c: &mut Child, grace: Duration) {
    if matches!(c.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// cove-sync over a temporary directory; cove-pty instances in front of it.
struct Sidecar {
    _dir: tempfile::TempDir,
    root: PathBuf,
    api: String,
    child: Child,
}

impl Sidecar {
    fn start() -> Result<Sidecar> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("ws");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&store)?;
        let api = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(bin("cove-sync")?);
        cmd.args(["--store", &format!("file://{}", store.display()), "serve"])
            .args(["--project", PROJECT, "--workspace"])
            .arg(&root)
            .args(["--mode", "watch", "--api", &api, "--create"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_sink());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting cove-sync")?;
        let mut s = Sidecar {
            _dir: dir,
            root,
            api,
            child,
        };
        wait_line(&mut s.child, "ready").context("cove-sync")?;
        Ok(s)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

struct Pty {
    child: Child,
    ide: String,
    pid: i32,
}

impl Pty {
    fn start(sc: &Sidecar, extra: &[&str]) -> Result<Pty> {
        let mut cmd = Command::new(bin("cove-pty")?);
        cmd.args(["--project", PROJECT, "--root"])
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
            .env("PS1", "$ ")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_sink());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting cove-pty")?;
        let pid = child.id() as i32;
        let mut p = Pty {
            child,
            ide: String::new(),
            pid,
        };
        let line = wait_line(&mut p.child, "listening").context("cove-pty")?;
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {k}= in {line:?}"))
        };
        p.ide = get("ide")?;
        let admin = get("admin")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(&admin, "/readyz") != 200 {
            if Instant::now() > deadline {
                bail!("cove-pty never became ready");
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!("cove-pty exited during start-up: {st}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(15));
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

// ---------------------------------------------------------------------------
// /proc

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds of a process: (user, system, reaped children user+system).
fn cpu_secs(pid: &str) -> (f64, f64, f64) {
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

fn cpu_delta(a: (f64, f64, f64), b: (f64, f64, f64)) -> (f64, f64, f64) {
    (b.0 - a.0, b.1 - a.1, b.2 - a.2)
}

/// Samples a process's VmRSS every 20 ms until stopped; yields the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: i32) -> RssSampler {
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

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Protocol client

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Got {
    Json(Value),
    Output { term: u32, data: Bytes },
    Other,
}

struct Client {
    ws: Ws,
    next_id: u64,
    events: Vec<Value>,
    /// Output kept per terminal (only when `keep`).
    out: HashMap<u32, Vec<u8>>,
    keep: bool,
    /// Per terminal: offset after the last OUTPUT byte, and the last ACK.
    end: HashMap<u32, u64>,
    acked: HashMap<u32, u64>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Client {
    async fn connect(ide: &str) -> Result<Client> {
        let token = cove_pty::token::sign(SECRET.as_bytes(), PROJECT, now_secs(), 300, None);
        let mut req = format!("ws://{ide}/ws").into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("cove.v1, cove.token.{token}").parse()?,
        );
        req.headers_mut().insert("origin", ORIGIN.parse()?);
        // Browsers disable Nagle on WebSocket connections too.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .context("WebSocket upgrade")?;
        let mut c = Client {
            ws,
            next_id: 1,
            events: Vec::new(),
            out: HashMap::new(),
            keep: true,
            end: HashMap::new(),
            acked: HashMap::new(),
        };
        c.request(json!({"type": "hello", "protocol": 1, "client": "cove-bench"}))
            .await
            .context("hello")?;
        Ok(c)
    }

    async fn send_bin(&mut self, b: Vec<u8>) -> Result<()> {
        self.ws.send(Message::Binary(b.into())).await?;
        Ok(())
    }

    async fn input(&mut self, term: u32, data: &[u8]) -> Result<()> {
        self.send_bin(cove_pty::protocol::encode_frame(
            KIND_INPUT, 0, term, 0, data,
        ))
        .await
    }

    /// Acks everything received on `term`, if anything is unacked.
    async fn ack(&mut self, term: u32) -> Result<()> {
        let end = self.end.get(&term).copied().unwrap_or(0);
        if end > self.acked.get(&term).copied().unwrap_or(0) {
            self.acked.insert(term, end);
            self.send_bin(cove_pty::protocol::encode_frame(
                KIND_ACK, 0, term, end, b"",
            ))
            .await?;
        }
        Ok(())
    }

    fn unacked(&self, term: u32) -> u64 {
        self.end.get(&term).copied().unwrap_or(0) - self.acked.get(&term).copied().unwrap_or(0)
    }

    fn on_message(&mut self, m: Message) -> Result<Got> {
        match m {
            Message::Text(t) => Ok(Got::Json(serde_json::from_str(&t)?)),
            Message::Binary(b) => {
                if b.len() < 14 {
                    bail!("binary frame of {} bytes", b.len());
                }
                let term = u32::from_be_bytes(b[2..6].try_into()?);
                let off = u64::from_be_bytes(b[6..14].try_into()?);
                match b[0] {
                    KIND_OUTPUT => {
                        let data = b.slice(14..);
                        let end = self.end.entry(term).or_insert(off);
                        if *end != off {
                            bail!("terminal {term}: output at {off}, expected {end}");
                        }
                        *end += data.len() as u64;
                        if self.keep {
                            self.out.entry(term).or_default().extend_from_slice(&data);
                        }
                        Ok(Got::Output { term, data })
                    }
                    KIND_SNAPSHOT => {
                        if b[1] & 2 != 0 {
                            self.end.insert(term, off);
                            self.acked.insert(term, off);
                        }
                        Ok(Got::Other)
                    }
                    k => bail!("unexpected frame kind {k}"),
                }
            }
            Message::Close(f) => bail!("server closed the connection: {f:?}"),
            _ => Ok(Got::Other),
        }
    }

    async fn recv(&mut self, deadline: Instant) -> Result<Got> {
        let m = tokio::time::timeout_at(deadline.into(), self.ws.next())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?
            .ok_or_else(|| anyhow!("connection ended"))??;
        self.on_message(m)
    }

    /// A message that has already arrived, without waiting.
    fn try_recv_now(&mut self) -> Result<Option<Got>> {
        match self.ws.next().now_or_never() {
            None => Ok(None),
            Some(None) => bail!("connection ended"),
            Some(Some(m)) => Ok(Some(self.on_message(m?)?)),
        }
    }

    /// Files a message received while waiting for something else: events
    /// are kept, output is acked at once.
    async fn file(&mut self, g: Got) -> Result<()> {
        match g {
            Got::Json(v) => self.events.push(v),
            Got::Output { term, .. } => self.ack(term).await?,
            Got::Other => {}
        }
        Ok(())
    }

    async fn request(&mut self, mut v: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.ws.send(Message::Text(v.to_string().into())).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .recv(deadline)
                .await
                .with_context(|| format!("waiting for the answer to {v}"))?
            {
                Got::Json(m) if m["id"] == json!(id) => {
                    if m["type"] == "result" {
                        return Ok(m["result"].clone());
                    }
                    bail!("{} failed: {}", v["type"], m["error"]);
                }
                g => self.file(g).await?,
            }
        }
    }

    async fn create(&mut self, extra: Value) -> Result<u32> {
        let mut req = json!({"type": "term.create", "cols": 80, "rows": 24});
        if let (Some(r), Value::Object(e)) = (req.as_object_mut(), extra) {
            r.extend(e);
        }
        let r = self.request(req).await?;
        let id = r["terminal"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no terminal id in {r}"))? as u32;
        self.end.entry(id).or_insert(0);
        Ok(id)
    }

    fn count_output(&self, term: u32, needle: &[u8]) -> usize {
        self.out.get(&term).map_or(0, |o| {
            o.windows(needle.len()).filter(|w| *w == needle).count()
        })
    }

    /// Reads until `needle` has appeared `times` times in the output.
    async fn wait_output(
        &mut self,
        term: u32,
        needle: &str,
        times: usize,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count_output(term, needle.as_bytes()) < times {
            let g = self.recv(deadline).await.with_context(|| {
                format!(
                    "waiting for {needle:?} on terminal {term}; got {:?}",
                    String::from_utf8_lossy(self.out.get(&term).map_or(&[][..], |v| v))
                )
            })?;
            self.file(g).await?;
        }
        Ok(())
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

// ---------------------------------------------------------------------------
// Measurements

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A PTY held by the bench itself, with the same line discipline settings
/// as the kernel-echo terminal (`-icanon`, echo on): the echo latency of the
/// machine without cove-pty and the WebSocket, measured in the same time
/// slots, so that noise from a busy host shows in both.
struct DirectPty {
    master: std::os::fd::OwnedFd,
    slave: std::os::fd::OwnedFd,
}

impl DirectPty {
    fn open() -> Result<DirectPty> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let p = nix::pty::openpty(None, None).context("openpty")?;
        let mut t = tcgetattr(&p.slave)?;
        t.local_flags.remove(LocalFlags::ICANON);
        t.local_flags.insert(LocalFlags::ECHO);
        tcsetattr(&p.slave, SetArg::TCSANOW, &t)?;
        for fd in [&p.master, &p.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
        }
        Ok(DirectPty {
            master: p.master,
            slave: p.slave,
        })
    }

    /// Writes one byte to the master and waits for its echo; µs.
    fn sample(&self, ch: u8) -> Result<u64> {
        use std::os::fd::AsRawFd;
        let (m, sl) = (self.master.as_raw_fd(), self.slave.as_raw_fd());
        let mut buf = [0u8; 4096];
        let t0 = Instant::now();
        // SAFETY: one byte from a live stack variable to our own fd.
        if unsafe { libc::write(m, [ch].as_ptr().cast(), 1) } != 1 {
            bail!("write to the PTY: {}", std::io::Error::last_os_error());
        }
        loop {
            let mut pfd = libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd that outlives the call.
            if unsafe { libc::poll(&mut pfd, 1, 10_000) } <= 0 {
                bail!("no echo from the bench's own PTY");
            }
            // SAFETY: reads into a buffer we own, of its length.
            let n = unsafe { libc::read(m, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 && buf[..n as usize].contains(&ch) {
                break;
            }
        }
        let dt = t0.elapsed().as_micros() as u64;
        // Consume the input on the slave side, as cat does.
        // SAFETY: as above.
        while unsafe { libc::read(sl, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        Ok(dt)
    }
}

/// Sends one byte per sample and times the OUTPUT frame that echoes it.
/// With `direct`, a sample of the bench's own PTY precedes each one, in
/// the same slot; those samples are returned second.
async fn echo_latency(
    c: &mut Client,
    term: u32,
    direct: Option<&DirectPty>,
    warmup: usize,
    n: usize,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut samples = Vec::with_capacity(n);
    let mut base = Vec::new();
    let mut next_at = Instant::now();
    for i in 0..warmup + n {
        tokio::time::sleep_until(next_at.into()).await;
        // Let nothing queued from before count against this sample.
        while let Some(g) = c.try_recv_now()? {
            c.file(g).await?;
        }
        next_at = Instant::now() + KEY_INTERVAL;
        let ch = b'a' + (i % 26) as u8;
        if let Some(d) = direct {
            let us = d.sample(ch)?;
            if i >= warmup {
                base.push(us);
            }
        }
        let t0 = Instant::now();
        c.input(term, &[ch]).await?;
        let deadline = t0 + Duration::from_secs(10);
        let dt = loop {
            match c.recv(deadline).await.context("waiting for an echo")? {
                Got::Output { term: t, data } if t == term => {
                    let hit = data.contains(&ch);
                    let dt = t0.elapsed();
                    // The browser acks once xterm.js has written the bytes.
                    c.ack(term).await?;
                    if hit {
                        break dt;
                    }
                }
                g => c.file(g).await?,
            }
        };
        if i >= warmup {
            samples.push(dt.as_micros() as u64);
        }
    }
    samples.sort_unstable();
    base.sort_unstable();
    Ok((samples, base))
}

struct Flood {
    bytes: u64,
    secs: f64,
    max_rss_kib: u64,
    frames: u64,
    acks: u64,
    pty_cpu: (f64, f64, f64),
    client_cpu: (f64, f64, f64),
}

/// Creates a terminal running `cmd` and reads it to the end, acking per
/// §7 F2: every 64 KiB, and whenever everything received is processed.
async fn flood(ide: &str, pid: i32, cmd: &str) -> Result<Flood> {
    let mut c = Client::connect(ide).await?;
    c.keep = false;
    let sampler = RssSampler::start(pid);
    let (pty0, me0) = (cpu_secs(&pid.to_string()), cpu_secs("self"));
    let t0 = Instant::now();
    let term = c.create(json!({"command": ["sh", "-c", cmd]})).await?;
    let deadline = t0 + Duration::from_secs(900);
    let mut exit_end: Option<u64> = None;
    let (mut frames, mut acks) = (0u64, 0u64);
    loop {
        for e in std::mem::take(&mut c.events) {
            if e["type"] == "term.exited" && e["terminal"] == json!(term) {
                exit_end = e["end_offset"].as_u64();
            }
        }
        let end = c.end.get(&term).copied().unwrap_or(0);
        if exit_end.is_some_and(|e| end >= e) {
            break;
        }
        let mut g = Some(c.recv(deadline).await.context("flood")?);
        while let Some(m) = g {
            match m {
                Got::Output { term: t, .. } if t == term => {
                    frames += 1;
                    if c.unacked(term) >= ACK_BYTES {
                        c.ack(term).await?;
                        acks += 1;
                    }
                }
                Got::Json(v) => c.events.push(v),
                Got::Output { term: t, .. } => c.ack(t).await?,
                Got::Other => {}
            }
            g = c.try_recv_now()?;
        }
        if c.unacked(term) > 0 {
            c.ack(term).await?;
            acks += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // Exited terminals are removed at once; the sh/head/base64 children
    // have been reaped, so their CPU shows in cove-pty's cutime.
    c.request(json!({"type": "term.close", "terminal": term}))
        .await?;
    let pty_cpu = cpu_delta(pty0, cpu_secs(&pid.to_string()));
    let client_cpu = cpu_delta(me0, cpu_secs("self"));
    let max_rss_kib = sampler.finish();
    let bytes = c.end.get(&term).copied().unwrap_or(0);
    c.close().await;
    Ok(Flood {
        bytes,
        secs,
        max_rss_kib,
        frames,
        acks,
        pty_cpu,
        client_cpu,
    })
}

/// One of the concurrent clients: connect, create a shell, run an echo.
async fn one_client(ide: &str, n: usize) -> Result<(Client, Duration)> {
    let t0 = Instant::now();
    let mut c = Client::connect(ide).await?;
    let term = c.create(json!({})).await?;
    c.wait_output(term, "$ ", 1, Duration::from_secs(60))
        .await?;
    c.input(term, format!("echo client-{n}\r").as_bytes())
        .await?;
    // Once in the echoed command line, once as its output.
    c.wait_output(term, &format!("client-{n}\r\n"), 2, Duration::from_secs(60))
        .await?;
    Ok((c, t0.elapsed()))
}

// ---------------------------------------------------------------------------
// Report

struct Report {
    rows: Vec<[String; 4]>,
    raw: Vec<(String, String)>,
}

impl Report {
    fn row(&mut self, metric: &str, value: String, goal: &str, ok: Option<bool>) {
        let status = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        self.rows.push([
            metric.to_string(),
            value,
            goal.to_string(),
            status.to_string(),
        ]);
    }

    fn raw(&mut self, k: &str, v: impl ToString) {
        self.raw.push((k.to_string(), v.to_string()));
    }

    fn markdown(&self, title: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{title}\n");
        let _ = writeln!(s, "| Metric | Result | Goal | |");
        let _ = writeln!(s, "|---|---:|---|---|");
        for r in &self.rows {
            let _ = writeln!(s, "| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
        }
        let _ = writeln!(s, "\nRaw numbers:\n\n```");
        for (k, v) in &self.raw {
            let _ = writeln!(s, "{k}={v}");
        }
        let _ = writeln!(s, "```");
        s
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn sh_output(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn latency_rows(r: &mut Report, name: &str, key: &str, s: &[u64]) {
    let (p50, p90, p99, max) = (pct(s, 0.5), pct(s, 0.9), pct(s, 0.99), pct(s, 1.0));
    r.row(
        &format!("Echo latency p50, {name}"),
        format!("{p50} µs"),
        "≤ 1000 µs",
        Some(p50 <= 1000),
    );
    r.row(
        &format!("Echo latency p90, {name}"),
        format!("{p90} µs"),
        "",
        None,
    );
    r.row(
        &format!("Echo latency p99, {name}"),
        format!("{p99} µs"),
        "≤ 5000 µs",
        Some(p99 <= 5000),
    );
    r.row(
        &format!("Echo latency max, {name}"),
        format!("{max} µs"),
        "",
        None,
    );
    let mean = s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    r.raw(
        &format!("{key}_us"),
        format!(
            "n={} min={} p50={p50} p90={p90} p99={p99} p999={} max={max} mean={mean:.1}",
            s.len(),
            pct(s, 0.0),
            pct(s, 0.999)
        ),
    );
    let slow = s.iter().filter(|&&x| x > 5000).count();
    r.raw(&format!("{key}_over_5ms"), slow);
}

async fn run(quick: bool) -> Result<Report> {
    let (warmup, samples) = if quick { (50, 500) } else { (100, 2000) };
    let flood_in: u64 = if quick { 50_000_000 } else { 200_000_000 };
    let n_terms = 20;
    let n_clients = 100;
    let mut r = Report {
        rows: Vec::new(),
        raw: Vec::new(),
    };
    r.raw("mode", if quick { "quick" } else { "full" });
    r.raw("kernel", sh_output("uname -r"));
    r.raw("nproc", sh_output("nproc"));
    r.raw("loadavg_start", sh_output("cat /proc/loadavg"));
    r.raw(
        "cpu_pressure_start",
        sh_output("head -1 /proc/pressure/cpu 2>/dev/null"),
    );
    r.raw(
        "commit",
        sh_output("git rev-parse --short HEAD 2>/dev/null"),
    );

    eprintln!("bench: starting cove-sync and cove-pty");
    let sc = Sidecar::start()?;
    let mut pty = Pty::start(&sc, &[])?;

    // 3. Memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pty.pid);
    let mut c = Client::connect(&pty.ide).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one_conn = rss_kib(pty.pid);
    eprintln!("bench: memory, {n_terms} shells");
    for _ in 0..n_terms {
        let t = c.create(json!({})).await?;
        c.wait_output(t, "$ ", 1, Duration::from_secs(30)).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_terms = rss_kib(pty.pid);
    let per_term = with_terms.saturating_sub(one_conn) as f64 / n_terms as f64;
    r.raw("rss_idle_kib", idle);
    r.raw("rss_one_connection_kib", one_conn);
    r.raw(&format!("rss_{n_terms}_terminals_kib"), with_terms);
    r.raw("rss_per_terminal_kib", format!("{per_term:.1}"));

    // 1. Echo latency.
    eprintln!("bench: echo latency, {samples} samples x 2");
    let kernel = c
        .create(json!({"command": ["sh", "-c", "stty -icanon && exec cat >/dev/null"]}))
        .await?;
    let process = c
        .create(json!({"command": ["sh", "-c", "stty raw -echo && exec cat"]}))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let direct = DirectPty::open()?;
    let (lat_kernel, lat_direct) =
        echo_latency(&mut c, kernel, Some(&direct), warmup, samples).await?;
    let (lat_process, _) = echo_latency(&mut c, process, None, warmup, samples).await?;
    drop(direct);

    // 2. Flood: raw PTY rate first, then through cove-pty.
    let cmd = format!("head -c {flood_in} /dev/zero | base64");
    let wc = sh_output(&format!("{cmd} | wc -lc"));
    let mut it = wc.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    let (lines, bytes) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    // The PTY's onlcr turns every \n into \r\n.
    let pty_bytes = bytes + lines;
    eprintln!("bench: raw PTY rate (script), {pty_bytes} bytes");
    let me0 = cpu_secs("self");
    let t0 = Instant::now();
    let st = Command::new("script")
        .args(["-q", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running script(1) (util-linux/bsdutils)")?;
    let raw_secs = t0.elapsed().as_secs_f64();
    let raw_cpu = cpu_delta(me0, cpu_secs("self"));
    if !st.success() {
        bail!("script -c {cmd:?} failed: {st}");
    }
    eprintln!("bench: flood through cove-pty");
    let f = flood(&pty.ide, pty.pid, &cmd).await?;
    let raw_mbs = pty_bytes as f64 / raw_secs / 1e6;
    let cove_mbs = f.bytes as f64 / f.secs / 1e6;
    let ratio = cove_mbs / raw_mbs;
    r.raw("flood_command", &cmd);
    r.raw("flood_pty_bytes_expected", pty_bytes);
    r.raw("flood_raw_secs", format!("{raw_secs:.3}"));
    r.raw(
        "flood_raw_cpu_secs",
        format!("script+children user+sys={:.2}", raw_cpu.2),
    );
    r.raw("flood_cove_bytes", f.bytes);
    r.raw("flood_cove_secs", format!("{:.3}", f.secs));
    r.raw("flood_cove_frames", f.frames);
    r.raw("flood_cove_acks", f.acks);
    r.raw("flood_cove_avg_frame_bytes", f.bytes / f.frames.max(1));
    r.raw(
        "flood_cove_pty_cpu_secs",
        format!(
            "user={:.2} sys={:.2} children(sh,head,base64)={:.2}",
            f.pty_cpu.0, f.pty_cpu.1, f.pty_cpu.2
        ),
    );
    r.raw(
        "flood_bench_client_cpu_secs",
        format!("user={:.2} sys={:.2}", f.client_cpu.0, f.client_cpu.1),
    );
    r.raw("flood_max_rss_kib", f.max_rss_kib);
    if f.bytes != pty_bytes {
        r.raw(
            "flood_note",
            format!("received {} bytes, expected {pty_bytes}", f.bytes),
        );
    }

    c.close().await;
    pty.stop();
    drop(pty);

    // 4. 100 clients.
    eprintln!("bench: {n_clients} concurrent clients");
    let pty = Pty::start(&sc, &["--max-connections", "200", "--max-terminals", "200"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_b = rss_kib(pty.pid);
    let t0 = Instant::now();
    let results = futures::future::join_all((0..n_clients).map(|n| {
        let ide = pty.ide.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(90), one_client(&ide, n))
                .await
                .map_err(|_| anyhow!("client {n} timed out"))?
        }
    }))
    .await;
    let wall = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_clients = rss_kib(pty.pid);
    let mut times = Vec::new();
    let mut errors = Vec::new();
    let mut clients = Vec::new();
    for res in results {
        match res {
            Ok((cl, d)) => {
                clients.push(cl);
                times.push(d.as_millis() as u64);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    times.sort_unstable();
    r.raw("clients", n_clients);
    r.raw("clients_errors", errors.len());
    if let Some(e) = errors.first() {
        r.raw("clients_first_error", e);
    }
    r.raw("clients_wall_secs", format!("{wall:.3}"));
    r.raw(
        "clients_time_to_echo_ms",
        format!(
            "p50={} p90={} max={}",
            pct(&times, 0.5),
            pct(&times, 0.9),
            pct(&times, 1.0)
        ),
    );
    r.raw("clients_rss_before_kib", idle_b);
    r.raw("clients_rss_after_kib", rss_clients);
    for cl in clients {
        cl.close().await;
    }
    drop(pty);
    drop(sc);
    r.raw("loadavg_end", sh_output("cat /proc/loadavg"));
    r.raw(
        "cpu_pressure_end",
        sh_output("head -1 /proc/pressure/cpu 2>/dev/null"),
    );

    // The table, in the brief's order.
    latency_rows(
        &mut r,
        "kernel echo (cat, -icanon)",
        "latency_kernel_echo",
        &lat_kernel,
    );
    let (b50, b99) = (pct(&lat_direct, 0.5), pct(&lat_direct, 0.99));
    r.row(
        "Baseline: bench's own PTY echo p50 / p99 / max (no cove-pty)",
        format!("{b50} / {b99} / {} µs", pct(&lat_direct, 1.0)),
        "",
        None,
    );
    r.raw(
        "latency_direct_pty_us",
        format!(
            "n={} min={} p50={b50} p90={} p99={b99} p999={} max={}",
            lat_direct.len(),
            pct(&lat_direct, 0.0),
            pct(&lat_direct, 0.9),
            pct(&lat_direct, 0.999),
            pct(&lat_direct, 1.0)
        ),
    );
    latency_rows(
        &mut r,
        "process echo (cat, raw -echo)",
        "latency_process_echo",
        &lat_process,
    );
    r.row(
        "Flood throughput through cove-pty",
        format!("{cove_mbs:.1} MB/s"),
        "",
        None,
    );
    r.row(
        "Flood throughput, raw PTY (script)",
        format!("{raw_mbs:.1} MB/s"),
        "",
        None,
    );
    r.row(
        "Flood ratio cove-pty / raw",
        format!("{ratio:.2}"),
        "≥ 0.80",
        Some(ratio >= 0.8),
    );
    r.row(
        "cove-pty max RSS during flood",
        mib(f.max_rss_kib),
        "",
        None,
    );
    r.row(
        "cove-pty idle RSS (no connection)",
        mib(idle),
        "≤ 10 MiB",
        Some(idle <= 10 * 1024),
    );
    r.row("cove-pty RSS, one connection", mib(one_conn), "", None);
    r.row(
        &format!("cove-pty RSS per terminal ({n_terms} bash)"),
        format!("{:.2} MiB", per_term / 1024.0),
        "≤ 2 MiB",
        Some(per_term <= 2048.0),
    );
    r.row(
        &format!("{n_clients} clients: errors"),
        errors.len().to_string(),
        "0",
        Some(errors.is_empty()),
    );
    r.row(
        &format!("{n_clients} clients: wall time"),
        format!("{wall:.2} s"),
        "",
        None,
    );
    r.row(
        &format!("{n_clients} clients: cove-pty RSS after"),
        mib(rss_clients),
        "",
        None,
    );
    Ok(r)
}

fn main() -> ExitCode {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: harness failure: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let report = match rt.block_on(run(quick)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: harness failure: {e:#}");
            return ExitCode::from(2);
        }
    };
    let title = format!(
        "## cove-pty benchmark ({}, {:.0} s)",
        if quick { "BENCH_QUICK" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    let md = report.markdown(&title);
    print!("{md}");
    if let Some(path) = std::env::var_os("BENCH_OUT") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("bench: writing {}: {e}", PathBuf::from(path).display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

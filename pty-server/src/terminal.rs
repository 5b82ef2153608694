//! Terminals: PTYs, their processes, emulators, attachments and flow control
//! (protocol.md §6 and §7).
//!
//! A terminal belongs to the workspace, not to a connection. Per terminal
//! one task reads the PTY into a ring of the last `window + 64 KiB` bytes
//! and pumps output to each attachment within its window of unacknowledged
//! bytes. The emulator runs on a thread of its own, beside the reader: it
//! costs more CPU per byte than everything else together, and with it in
//! the read loop a flood was read at half the PTY's rate. Snapshots are
//! taken at the emulator's offset, which the reader never lets fall more
//! than a window behind, so the ring always still holds what follows it. When every attachment is a full window
//! behind, the task stops reading: the kernel's PTY buffer fills and the
//! child blocks in write(2). That is the only bound needed: memory per
//! terminal is the ring plus the emulator, whatever the clients do.

use crate::outbox::Outbox;
use crate::protocol::{self, ApiError, ApiResult, Code, Exit, Limits};
use crate::reaper::{self, Reaper};
use crate::screen::{incomplete_suffix, Emulator};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Notify};

const FRAME_MAX: usize = 64 << 10;
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// How far back a snapshot may start to avoid cutting a sequence (§6.5).
const SEQUENCE_LOOKBACK: u64 = 64 << 10;
/// SIGHUP first, SIGKILL after this (§6.4).
const KILL_GRACE: Duration = Duration::from_secs(2);

pub struct TermConfig {
    pub shell: Vec<String>,
    pub project: String,
    pub app_port: u16,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize)]
pub struct TerminalInfo {
    pub id: u32,
    pub name: String,
    pub command: Vec<String>,
    pub cwd: String,
    pub cols: u16,
    pub rows: u16,
    pub title: String,
    pub state: &'static str,
    pub exit: Option<Exit>,
    pub pid: i32,
    pub created_ms: u64,
    pub end_offset: u64,
    pub attached: usize,
}

struct Att {
    out: Outbox,
    sent: u64,
    acked: u64,
    /// Fell behind the ring (§7 F5): waits to ack what it has, then gets a
    /// fresh snapshot.
    lagging: bool,
}

/// The emulator and how much of the stream it has processed.
pub struct EmuState {
    emu: Emulator,
    offset: u64,
}

struct State {
    cols: u16,
    rows: u16,
    ring: VecDeque<u8>,
    ring_start: u64,
    end: u64,
    atts: HashMap<u64, Att>,
    /// Attach order, most recent last; picks the next responder.
    order: Vec<u64>,
    responder: Option<u64>,
    exit: Option<Exit>,
    eof: bool,
    exited_sent: bool,
    paused: bool,
    closing: bool,
}

pub struct Terminal {
    pub id: u32,
    name: String,
    command: Vec<String>,
    cwd: String,
    pid: i32,
    created_ms: u64,
    pty: Arc<AsyncFd<OwnedFd>>,
    st: Mutex<State>,
    /// Lock order: `st` before `emu`. The emulator thread takes only `emu`.
    emu: Arc<Mutex<EmuState>>,
    emu_tx: std::sync::mpsc::Sender<Vec<u8>>,
    gate: Notify,
    input: mpsc::UnboundedSender<Vec<u8>>,
    input_queued: Arc<AtomicUsize>,
    last_drop_report: Mutex<Option<std::time::Instant>>,
    exit_notify: Notify,
    window: u64,
    ring_cap: usize,
    input_cap: usize,
}

pub struct Terminals {
    cfg: TermConfig,
    reaper: Arc<Reaper>,
    metrics: Arc<crate::metrics::Metrics>,
    activity: Arc<crate::activity::Activity>,
    inner: Mutex<Registry>,
    /// Every connection that said hello, for workspace-wide events.
    conns: Mutex<HashMap<u64, Outbox>>,
}

#[derive(Default)]
struct Registry {
    next_id: u32,
    terms: std::collections::BTreeMap<u32, Arc<Terminal>>,
}

pub struct CreateRequest {
    pub command: Option<Vec<String>>,
    pub cwd: PathBuf,
    pub cwd_rel: String,
    pub env: Vec<(String, String)>,
    pub cols: u16,
    pub rows: u16,
    pub name: String,
    pub attach: bool,
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that outlives the call.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

impl Terminals {
    pub fn new(
        cfg: TermConfig,
        reaper: Arc<Reaper>,
        metrics: Arc<crate::metrics::Metrics>,
        activity: Arc<crate::activity::Activity>,
    ) -> Arc<Self> {
        Arc::new(Terminals {
            cfg,
            reaper,
            metrics,
            activity,
            inner: Mutex::new(Registry {
                next_id: 1,
                ..Default::default()
            }),
            conns: Mutex::new(HashMap::new()),
        })
    }

    pub fn join(&self, out: Outbox) {
        self.conns.lock().insert(out.conn, out);
    }

    /// A connection went away: its attachments end, terminals keep running.
    pub fn leave(&self, conn: u64) {
        self.conns.lock().remove(&conn);
        let terms: Vec<_> = self.inner.lock().terms.values().cloned().collect();
        for t in terms {
            t.detach_conn(conn);
        }
    }

    fn broadcast(&self, msg: &Value, except: Option<u64>) {
        let s = msg.to_string();
        for (id, o) in self.conns.lock().iter() {
            if Some(*id) != except {
                o.text(s.clone());
            }
        }
    }

    pub fn get(&self, id: u32) -> ApiResult<Arc<Terminal>> {
        self.inner.lock().terms.get(&id).cloned().ok_or_else(|| {
            ApiError::new(Code::NotFound, format!("no terminal {id}"))
                .with(json!({ "terminal": id }))
        })
    }

    pub fn list(&self) -> Vec<TerminalInfo> {
        self.inner.lock().terms.values().map(|t| t.info()).collect()
    }

    pub fn counts(&self) -> (usize, usize) {
        let r = self.inner.lock();
        let running = r
            .terms
            .values()
            .filter(|t| t.st.lock().exit.is_none())
            .count();
        (r.terms.len(), running)
    }

    fn update_gauges(&self) {
        let (all, running) = self.counts();
        let g = &self.metrics.terminals;
        g.get_or_create(&crate::metrics::StateLabel {
            state: "running".into(),
        })
        .set(running as i64);
        g.get_or_create(&crate::metrics::StateLabel {
            state: "exited".into(),
        })
        .set((all - running) as i64);
    }

    /// §6.2 term.create. With `attach`, the result (with `reply_id`) is sent
    /// here, before any output.
    pub fn create(
        self: &Arc<Self>,
        req: CreateRequest,
        out: &Outbox,
        reply_id: u64,
    ) -> ApiResult<()> {
        // Make room: the oldest exited terminal with nobody attached goes.
        {
            let r = self.inner.lock();
            if r.terms.len() >= self.cfg.limits.max_terminals {
                let victim = r
                    .terms
                    .values()
                    .find(|t| {
                        let s = t.st.lock();
                        s.exit.is_some() && s.atts.is_empty()
                    })
                    .map(|t| t.id);
                drop(r);
                match victim {
                    Some(v) => self.remove(v),
                    None => {
                        return Err(ApiError::new(
                            Code::LimitExceeded,
                            format!(
                                "at most {} terminals per workspace",
                                self.cfg.limits.max_terminals
                            ),
                        )
                        .with(json!({"limit": self.cfg.limits.max_terminals})))
                    }
                }
            }
        }
        let command = req
            .command
            .clone()
            .unwrap_or_else(|| self.cfg.shell.clone());
        if command.is_empty() || command[0].is_empty() {
            return Err(ApiError::bad_request(
                "command",
                "command must not be empty",
            ));
        }
        let id = {
            let mut r = self.inner.lock();
            let id = r.next_id;
            r.next_id += 1;
            id
        };
        let spawn_err = |e: std::io::Error| {
            ApiError::new(Code::SpawnFailed, format!("cannot start {:?}: {e}", command[0]))
                .with(json!({"errno": nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)).to_string()}))
        };
        let (pty, pts) =
            pty_process::blocking::open().map_err(|e| spawn_err(std::io::Error::other(e)))?;
        pty.resize(pty_process::Size::new(req.rows, req.cols))
            .map_err(|e| spawn_err(std::io::Error::other(e)))?;
        let mut cmd = pty_process::blocking::Command::new(&command[0])
            .args(&command[1..])
            .current_dir(&req.cwd)
            .env_clear();
        for (k, v) in std::env::vars_os() {
            if k != "COVE_TOKEN_SECRET" {
                cmd = cmd.env(k, v);
            }
        }
        cmd = cmd
            .env("TERM", "xterm-256color")
            .env("COLORTERM", "truecolor")
            .env("PORT", self.cfg.app_port.to_string())
            .env("COVE_PROJECT", &self.cfg.project)
            .env("COVE_TERMINAL", id.to_string());
        if std::env::var_os("LANG").is_none() {
            cmd = cmd.env("LANG", "C.UTF-8");
        }
        for (k, v) in &req.env {
            cmd = cmd.env(k, v);
        }
        let (pid, exit_rx) = self
            .reaper
            .spawn(|| cmd.spawn(pts).map(|c| c.id()))
            .map_err(|e| match e {
                pty_process::Error::Io(io) => spawn_err(io),
                other => spawn_err(std::io::Error::other(other)),
            })?;
        let fd: OwnedFd = pty.into();
        set_nonblocking(&fd).map_err(spawn_err)?;
        // SAFETY: an OwnedFd is a valid descriptor that stays open, and refers to
        // the same file, for as long as the AsyncFd owns it.
        let afd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| spawn_err(std::io::Error::other(e.to_string())))?;
        let afd = Arc::new(afd);
        let limits = &self.cfg.limits;
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let emu = Arc::new(Mutex::new(EmuState {
            emu: Emulator::new(req.rows, req.cols, limits.scrollback_lines),
            offset: 0,
        }));
        let (emu_tx, emu_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let t = Arc::new(Terminal {
            id,
            name: req.name,
            command,
            cwd: req.cwd_rel,
            pid,
            created_ms: crate::activity::now_ms(),
            pty: afd,
            emu: emu.clone(),
            emu_tx,
            st: Mutex::new(State {
                cols: req.cols,
                rows: req.rows,
                ring: VecDeque::new(),
                ring_start: 0,
                end: 0,
                atts: HashMap::new(),
                order: Vec::new(),
                responder: None,
                exit: None,
                eof: false,
                exited_sent: false,
                paused: false,
                closing: false,
            }),
            gate: Notify::new(),
            input: input_tx,
            input_queued: Arc::new(AtomicUsize::new(0)),
            last_drop_report: Mutex::new(None),
            exit_notify: Notify::new(),
            window: limits.window_bytes,
            ring_cap: (limits.window_bytes + SEQUENCE_LOOKBACK) as usize,
            input_cap: limits.input_buffer_bytes,
        });
        // The emulator thread ends when the terminal (its sender) is dropped.
        let weak = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name(format!("emu-{id}"))
            .spawn(move || {
                while let Ok(first) = emu_rx.recv() {
                    // Take everything queued at once: one lock and one
                    // wake-up of the reader per batch, not per read.
                    let mut batch = vec![first];
                    while let Ok(more) = emu_rx.try_recv() {
                        batch.push(more);
                    }
                    {
                        let mut e = emu.lock();
                        for chunk in &batch {
                            e.emu.process(chunk);
                            e.offset += chunk.len() as u64;
                        }
                    }
                    // The reader may wait for the emulator to catch up.
                    match weak.upgrade() {
                        Some(t) => t.gate.notify_one(),
                        None => break,
                    }
                }
            })
            .map_err(|e| {
                // No emulator, no terminal: do not leave its process behind.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
                ApiError::new(
                    Code::Internal,
                    format!("cannot start the terminal's emulator thread: {e}"),
                )
            })?;
        self.inner.lock().terms.insert(id, t.clone());
        if req.attach {
            let mut s = t.st.lock();
            s.atts.insert(
                out.conn,
                Att {
                    out: out.clone(),
                    sent: 0,
                    acked: 0,
                    lagging: false,
                },
            );
            s.order.push(out.conn);
            s.responder = Some(out.conn);
            out.text(protocol::result_json(
                reply_id,
                json!({"terminal": t.info_locked(&s), "offset": 0, "responder": true}),
            ));
        } else {
            out.text(protocol::result_json(
                reply_id,
                json!({"terminal": t.info()}),
            ));
        }
        self.broadcast(
            &json!({"type": "term.created", "terminal": t.info()}),
            Some(out.conn),
        );
        self.update_gauges();
        tokio::spawn(reader(self.clone(), t.clone()));
        // The writer holds no reference to the terminal: dropping the terminal
        // drops the input sender, which ends the writer.
        tokio::spawn(writer(
            t.pty.clone(),
            t.input_queued.clone(),
            input_rx,
            self.metrics.clone(),
        ));
        tokio::spawn(lifecycle(self.clone(), t.clone(), exit_rx));
        Ok(())
    }

    /// §6.2 term.attach: the result, then a snapshot, then output.
    pub fn attach(&self, id: u32, out: &Outbox, reply_id: u64) -> ApiResult<()> {
        let t = self.get(id)?;
        let mut s = t.st.lock();
        let (off, snap) = snapshot(&s, &t.emu.lock());
        if !s.atts.contains_key(&out.conn) {
            s.order.push(out.conn);
        }
        let responder = match s.responder {
            None => {
                s.responder = Some(out.conn);
                true
            }
            Some(r) => r == out.conn,
        };
        s.atts.insert(
            out.conn,
            Att {
                out: out.clone(),
                sent: off,
                acked: off,
                lagging: false,
            },
        );
        out.text(protocol::result_json(
            reply_id,
            json!({"terminal": t.info_locked(&s), "offset": off, "responder": responder}),
        ));
        send_snapshot(t.id, out, off, &snap);
        pump(&mut s, &t.emu, t.id, out.conn, t.window);
        drop(s);
        t.gate.notify_one();
        Ok(())
    }

    pub fn detach(&self, id: u32, conn: u64) -> ApiResult<()> {
        let t = self.get(id)?;
        if !t.st.lock().atts.contains_key(&conn) {
            return Err(not_attached(id));
        }
        t.detach_conn(conn);
        Ok(())
    }

    pub fn resize(&self, id: u32, conn: u64, cols: u16, rows: u16) -> ApiResult<()> {
        let t = self.get(id)?;
        let mut s = t.st.lock();
        if !s.atts.contains_key(&conn) {
            return Err(not_attached(id));
        }
        if s.exit.is_some() {
            return Ok(());
        }
        s.cols = cols;
        s.rows = rows;
        set_winsize(t.pty.get_ref(), rows, cols);
        t.emu.lock().emu.resize(rows, cols);
        let msg =
            json!({"type": "term.resized", "terminal": id, "cols": cols, "rows": rows}).to_string();
        for a in s.atts.values() {
            a.out.text(msg.clone());
        }
        Ok(())
    }

    /// An `INPUT` frame. Errors are unsolicited (`id: null`).
    pub fn input(&self, id: u32, conn: u64, data: &[u8]) -> Option<ApiError> {
        let t = match self.get(id) {
            Ok(t) => t,
            Err(e) => return Some(e),
        };
        {
            let mut s = t.st.lock();
            if !s.atts.contains_key(&conn) {
                return Some(not_attached(id));
            }
            if s.exit.is_some() {
                return None;
            }
            // The connection that types answers the terminal's queries.
            if s.responder != Some(conn) {
                let old = s.responder.replace(conn);
                if let Some(o) = old.and_then(|o| s.atts.get(&o)) {
                    o.out.text(
                        json!({"type": "term.responder", "terminal": id, "responder": false})
                            .to_string(),
                    );
                }
                if let Some(a) = s.atts.get(&conn) {
                    a.out.text(
                        json!({"type": "term.responder", "terminal": id, "responder": true})
                            .to_string(),
                    );
                }
            }
        }
        self.activity.touch();
        if t.input_queued.load(Ordering::Relaxed) + data.len() > t.input_cap {
            let mut last = t.last_drop_report.lock();
            if last.is_none_or(|l| l.elapsed() >= Duration::from_secs(1)) {
                *last = Some(std::time::Instant::now());
                return Some(
                    ApiError::new(
                        Code::InputDropped,
                        "the terminal is not reading its input; input was discarded",
                    )
                    .with(json!({"terminal": id, "bytes": data.len()})),
                );
            }
            return None;
        }
        t.input_queued.fetch_add(data.len(), Ordering::Relaxed);
        let _ = t.input.send(data.to_vec());
        None
    }

    /// An `ACK` frame; false when the offset is beyond what was sent
    /// (a protocol error).
    pub fn ack(&self, id: u32, conn: u64, offset: u64) -> bool {
        let Ok(t) = self.get(id) else { return true };
        let mut s = t.st.lock();
        let Some(a) = s.atts.get_mut(&conn) else {
            return true;
        };
        if offset > a.sent {
            return false;
        }
        if offset <= a.acked {
            return true;
        }
        a.acked = offset;
        pump(&mut s, &t.emu, t.id, conn, t.window);
        drop(s);
        t.gate.notify_one();
        true
    }

    /// §6.4 term.close: the session is hung up, then killed; answers with
    /// the leader's exit once it has been reaped.
    pub async fn close(self: &Arc<Self>, id: u32) -> ApiResult<Exit> {
        let t = self.get(id)?;
        let running = {
            let mut s = t.st.lock();
            s.closing = true;
            s.exit.is_none()
        };
        if running {
            reaper::kill_session(t.pid, KILL_GRACE).await;
            loop {
                let notified = t.exit_notify.notified();
                if t.st.lock().exit.is_some() {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        }
        let exit = t.st.lock().exit.unwrap_or(Exit {
            code: None,
            signal: Some("SIGKILL"),
        });
        self.remove(id);
        Ok(exit)
    }

    fn remove(&self, id: u32) {
        let t = self.inner.lock().terms.remove(&id);
        if let Some(t) = t {
            {
                let mut s = t.st.lock();
                s.closing = true;
                s.atts.clear();
            }
            t.gate.notify_one();
            self.broadcast(&json!({"type": "term.closed", "terminal": id}), None);
        }
        self.update_gauges();
    }

    /// Workspace stop: every session is hung up, then killed.
    pub async fn shutdown(self: &Arc<Self>) {
        let ids: Vec<u32> = self.inner.lock().terms.keys().copied().collect();
        let mut tasks = Vec::new();
        for id in ids {
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.close(id).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn not_attached(id: u32) -> ApiError {
    ApiError::new(Code::NotAttached, format!("not attached to terminal {id}"))
        .with(json!({ "terminal": id }))
}

/// A snapshot and the offset it stands at: where the emulator is, or the
/// start of a sequence it has only partly seen there.
fn snapshot(s: &State, e: &EmuState) -> (u64, Vec<u8>) {
    // The ring holds [ring_start, end); the emulator is at most a window
    // behind `end`, so the lookback before its offset is still there.
    let at = e.offset.clamp(s.ring_start, s.end);
    let keep = (at - s.ring_start).min(SEQUENCE_LOOKBACK) as usize;
    let to = (at - s.ring_start) as usize;
    let tail: Vec<u8> = s.ring.range(to - keep..to).copied().collect();
    let off = match incomplete_suffix(&tail) {
        Some(b) => at - (tail.len() - b) as u64,
        None => at,
    };
    (off, e.emu.snapshot())
}

fn send_snapshot(id: u32, out: &Outbox, off: u64, snap: &[u8]) {
    let chunks: Vec<&[u8]> = if snap.is_empty() {
        vec![&[][..]]
    } else {
        snap.chunks(SNAPSHOT_CHUNK).collect()
    };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let mut flags = 0;
        if i == 0 {
            flags |= protocol::FLAG_START;
        }
        if i + 1 == n {
            flags |= protocol::FLAG_END;
        }
        out.binary(protocol::encode_frame(
            protocol::KIND_SNAPSHOT,
            flags,
            id,
            off,
            c,
        ));
    }
}

/// Sends one attachment what its window allows (§7 F1, F5).
fn pump(s: &mut State, emu: &Mutex<EmuState>, id: u32, conn: u64, window: u64) {
    let ring_start = s.ring_start;
    let end = s.end;
    let Some(a) = s.atts.get(&conn) else { return };
    let (mut sent, acked, lagging) = (a.sent, a.acked, a.lagging);
    if sent < ring_start || lagging {
        // The bytes it needs are gone. Once it has processed what it has,
        // a snapshot puts its screen right again.
        if acked >= sent {
            let (off, snap) = snapshot(s, &emu.lock());
            let out = s.atts[&conn].out.clone();
            send_snapshot(id, &out, off, &snap);
            if let Some(a) = s.atts.get_mut(&conn) {
                a.sent = off;
                a.acked = off;
                a.lagging = false;
            }
            sent = off;
        } else {
            if let Some(a) = s.atts.get_mut(&conn) {
                a.lagging = true;
            }
            return;
        }
    }
    let acked = s.atts[&conn].acked;
    let limit = end.min(acked + window);
    let out = s.atts[&conn].out.clone();
    while sent < limit {
        let n = ((limit - sent) as usize).min(FRAME_MAX);
        let from = (sent - s.ring_start) as usize;
        let mut frame = Vec::with_capacity(protocol::HEADER_LEN + n);
        frame.push(protocol::KIND_OUTPUT);
        frame.push(0);
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&sent.to_be_bytes());
        frame.extend(s.ring.range(from..from + n));
        out.binary(frame);
        sent += n as u64;
    }
    if let Some(a) = s.atts.get_mut(&conn) {
        a.sent = sent;
    }
}

impl Terminal {
    fn info_locked(&self, s: &State) -> TerminalInfo {
        TerminalInfo {
            id: self.id,
            name: self.name.clone(),
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            cols: s.cols,
            rows: s.rows,
            title: self.emu.lock().emu.title().to_string(),
            state: if s.exit.is_some() {
                "exited"
            } else {
                "running"
            },
            exit: s.exit,
            pid: self.pid,
            created_ms: self.created_ms,
            end_offset: s.end,
            attached: s.atts.len(),
        }
    }

    pub fn info(&self) -> TerminalInfo {
        self.info_locked(&self.st.lock())
    }

    fn detach_conn(&self, conn: u64) {
        let mut s = self.st.lock();
        if s.atts.remove(&conn).is_none() {
            return;
        }
        s.order.retain(|c| *c != conn);
        if s.responder == Some(conn) {
            s.responder = s.order.last().copied();
            if let Some(a) = s.responder.and_then(|r| s.atts.get(&r)) {
                a.out.text(
                    json!({"type": "term.responder", "terminal": self.id, "responder": true})
                        .to_string(),
                );
            }
        }
        drop(s);
        self.gate.notify_one();
    }

    /// §7 F3: read while nobody is attached or someone has window left,
    /// and while the emulator is less than a window behind.
    fn may_read(&self, s: &State) -> bool {
        let emu_behind = s.end - self.emu.lock().offset.min(s.end);
        emu_behind < self.window
            && (s.atts.is_empty()
                || s.atts
                    .values()
                    .any(|a| s.end - a.acked.min(s.end) < self.window))
    }
}

async fn reader(terms: Arc<Terminals>, t: Arc<Terminal>) {
    let mut buf = vec![0u8; FRAME_MAX];
    loop {
        // Wait for the gate without losing a wake-up between check and wait.
        loop {
            let notified = t.gate.notified();
            {
                let mut s = t.st.lock();
                if s.closing && s.exit.is_some() {
                    return;
                }
                let ok = t.may_read(&s);
                if ok == s.paused {
                    s.paused = !ok;
                    terms
                        .metrics
                        .terminals_paused
                        .inc_by(if ok { -1 } else { 1 });
                }
                if ok {
                    break;
                }
            }
            notified.await;
        }
        let r = loop {
            let mut guard = match t.pty.readable().await {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            match guard.try_io(|fd| {
                // SAFETY: reads into a buffer we own, of its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(r) => break r,
                Err(_would_block) => continue,
            }
        };
        let n = match r {
            Ok(0) | Err(_) => break, // EIO: every slave descriptor is closed
            Ok(n) => n,
        };
        terms
            .metrics
            .terminal_bytes
            .get_or_create(&crate::metrics::DirLabel {
                dir: "output".into(),
            })
            .inc_by(n as u64);
        terms.activity.touch_output();
        let mut s = t.st.lock();
        let data = &buf[..n];
        // A send fails only if the emulator thread is gone (terminal dropped).
        let _ = t.emu_tx.send(data.to_vec());
        s.ring.extend(data);
        s.end += n as u64;
        if s.ring.len() > t.ring_cap {
            let drop_n = s.ring.len() - t.ring_cap;
            s.ring.drain(..drop_n);
            s.ring_start += drop_n as u64;
        }
        let conns: Vec<u64> = s.atts.keys().copied().collect();
        for c in conns {
            pump(&mut s, &t.emu, t.id, c, t.window);
        }
    }
    {
        let mut s = t.st.lock();
        s.eof = true;
        if s.paused {
            s.paused = false;
            terms.metrics.terminals_paused.dec();
        }
    }
    maybe_exited(&terms, &t);
}

async fn writer(
    pty: Arc<AsyncFd<OwnedFd>>,
    queued: Arc<AtomicUsize>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut broken = false;
    while let Some(data) = rx.recv().await {
        let len = data.len();
        let mut off = 0;
        while off < data.len() && !broken {
            let mut guard = match pty.writable().await {
                Ok(g) => g,
                Err(_) => {
                    broken = true;
                    break;
                }
            };
            match guard.try_io(|fd| {
                // SAFETY: writes from a buffer we own, within its length.
                let n = unsafe {
                    libc::write(
                        fd.as_raw_fd(),
                        data[off..].as_ptr().cast(),
                        data.len() - off,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => off += n,
                Ok(Err(_)) => broken = true,
                Err(_would_block) => continue,
            }
        }
        metrics
            .terminal_bytes
            .get_or_create(&crate::metrics::DirLabel {
                dir: "input".into(),
            })
            .inc_by(off as u64);
        queued.fetch_sub(len, Ordering::Relaxed);
    }
}

/// Waits for the leader's exit, then hangs up what is left of its session.
async fn lifecycle(
    terms: Arc<Terminals>,
    t: Arc<Terminal>,
    exit_rx: tokio::sync::oneshot::Receiver<Exit>,
) {
    let exit = exit_rx.await.unwrap_or(Exit {
        code: None,
        signal: Some("SIGKILL"),
    });
    t.st.lock().exit = Some(exit);
    t.exit_notify.notify_waiters();
    t.gate.notify_one();
    terms.update_gauges();
    reaper::kill_session(t.pid, KILL_GRACE).await;
    // A process that left the session can keep the PTY open forever; the
    // exit is reported anyway after a grace period.
    for _ in 0..20 {
        if t.st.lock().eof {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.st.lock().eof = true;
    maybe_exited(&terms, &t);
}

fn maybe_exited(terms: &Terminals, t: &Terminal) {
    let msg = {
        let mut s = t.st.lock();
        let Some(exit) = s.exit else { return };
        if !s.eof || s.exited_sent {
            return;
        }
        s.exited_sent = true;
        json!({"type": "term.exited", "terminal": t.id, "exit": exit, "end_offset": s.end})
    };
    terms.broadcast(&msg, None);
}

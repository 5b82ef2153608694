//! Terminals: the workspace's registry of terminal sessions and the
//! requests on them (protocol.md §6): create (PTY, process, emulator),
//! attach, detach, resize, input, ack, close, and the workspace-wide
//! events (`term.created`, `term.closed`, `term.exited`).
//!
//! A terminal belongs to the workspace, not to a connection: a connection
//! that goes only ends its attachments. One terminal's I/O and flow
//! control (the PTY reader, the input writer, the emulator thread,
//! snapshots, the window per attachment; §7) are in terminal/io.rs, whose
//! tasks [`Terminals::create`] starts.

use crate::outbox::Outbox;
use crate::protocol::{self, ApiError, ApiResult, Code, Exit, Limits};
use crate::reaper::{self, Reaper};
use crate::screen::Emulator;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Notify};

mod io;

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
        io::set_nonblocking(&fd).map_err(spawn_err)?;
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
        io::spawn_emulator(id, emu, emu_rx, Arc::downgrade(&t)).map_err(|e| {
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
        tokio::spawn(io::reader(self.clone(), t.clone()));
        // The writer holds no reference to the terminal: dropping the terminal
        // drops the input sender, which ends the writer.
        tokio::spawn(io::writer(
            t.pty.clone(),
            t.input_queued.clone(),
            input_rx,
            self.metrics.clone(),
        ));
        tokio::spawn(io::lifecycle(self.clone(), t.clone(), exit_rx));
        Ok(())
    }

    /// §6.2 term.attach: the result, then a snapshot, then output.
    pub fn attach(&self, id: u32, out: &Outbox, reply_id: u64) -> ApiResult<()> {
        let t = self.get(id)?;
        let mut s = t.st.lock();
        let (off, snap) = io::snapshot(&s, &t.emu.lock());
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
        io::send_snapshot(t.id, out, off, &snap);
        io::pump(&mut s, &t.emu, t.id, out.conn, t.window);
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
        io::set_winsize(t.pty.get_ref(), rows, cols);
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
        io::pump(&mut s, &t.emu, t.id, conn, t.window);
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
}

//! One terminal's I/O and flow control (protocol.md §6.5, §7).
//!
//! Per terminal one task reads the PTY into a ring of the last `window +
//! 64 KiB` bytes and pumps output to each attachment within its window of
//! unacknowledged bytes. The emulator runs on a thread of its own, beside
//! the reader: it costs more CPU per byte than everything else together,
//! and with it in the read loop a flood was read at half the PTY's rate.
//! Snapshots are taken at the emulator's offset, which the reader never
//! lets fall more than a window behind, so the ring always still holds
//! what follows it. When every attachment is a full window behind, the
//! task stops reading: the kernel's PTY buffer fills and the child blocks
//! in write(2). That is the only bound needed: memory per terminal is the
//! ring plus the emulator, whatever the clients do.
//!
//! A second task writes input to the PTY; a third waits for the leader's
//! exit, hangs up what is left of its session and reports `term.exited`.

use super::{EmuState, State, Terminal, Terminals, KILL_GRACE, SEQUENCE_LOOKBACK};
use crate::outbox::Outbox;
use crate::protocol::{self, Exit};
use crate::reaper;
use crate::screen::incomplete_suffix;
use parking_lot::Mutex;
use serde_json::json;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

const FRAME_MAX: usize = 64 << 10;
const SNAPSHOT_CHUNK: usize = 1 << 20;

pub(super) fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

pub(super) fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that outlives the call.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// A snapshot and the offset it stands at: where the emulator is, or the
/// start of a sequence it has only partly seen there.
pub(super) fn snapshot(s: &State, e: &EmuState) -> (u64, Vec<u8>) {
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

pub(super) fn send_snapshot(id: u32, out: &Outbox, off: u64, snap: &[u8]) {
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
pub(super) fn pump(s: &mut State, emu: &Mutex<EmuState>, id: u32, conn: u64, window: u64) {
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

/// The emulator's thread: feeds it what the reader read, in batches.
pub(super) fn spawn_emulator(
    id: u32,
    emu: Arc<Mutex<EmuState>>,
    emu_rx: std::sync::mpsc::Receiver<Vec<u8>>,
    weak: Weak<Terminal>,
) -> std::io::Result<()> {
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
        .map(|_| ())
}

pub(super) async fn reader(terms: Arc<Terminals>, t: Arc<Terminal>) {
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

pub(super) async fn writer(
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
pub(super) async fn lifecycle(
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

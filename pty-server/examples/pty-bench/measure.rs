//! The measurements: keystroke echo latency (through cove-pty and on the
//! bench's own PTY, in the same time slots), output flood throughput with
//! the browser's acknowledgements, and one of the concurrent clients.

use crate::conn::{Conn, Got};
use crate::procs::{cpu_delta, cpu_secs, RssSampler};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};

/// §7 F2: ack at least every `ack_bytes`.
const ACK_BYTES: u64 = 64 << 10;
/// Latency samples are paced: INPUT frames count against the server's
/// message rate limit (200/s, burst 1000, §13), so faster sending would
/// measure the limiter.
const KEY_INTERVAL: Duration = Duration::from_millis(5);

/// A PTY held by the bench itself, with the same line discipline settings
/// as the kernel-echo terminal (`-icanon`, echo on): the echo latency of the
/// machine without cove-pty and the WebSocket, measured in the same time
/// slots, so that noise from a busy host shows in both.
pub struct DirectPty {
    master: std::os::fd::OwnedFd,
    slave: std::os::fd::OwnedFd,
}

impl DirectPty {
    pub fn open() -> Result<DirectPty> {
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
pub async fn echo_latency(
    c: &mut Conn,
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
                other => c.file(other).await?,
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

pub struct Flood {
    pub bytes: u64,
    pub secs: f64,
    pub max_rss_kib: u64,
    pub frames: u64,
    pub acks: u64,
    pub pty_cpu: (f64, f64, f64),
    pub client_cpu: (f64, f64, f64),
}

/// Creates a terminal running `cmd` and reads it to the end, acking per
/// §7 F2: every 64 KiB, and whenever everything received is processed.
pub async fn flood(ide: &str, pid: i32, cmd: &str) -> Result<Flood> {
    let mut c = Conn::connect(ide).await?;
    c.keep = false;
    let sampler = RssSampler::start(pid);
    let (pty0, me0) = (cpu_secs(&pid.to_string()), cpu_secs("self"));
    let t0 = Instant::now();
    let term = c.create(json!({"command": ["sh", "-c", cmd]})).await?;
    let deadline = t0 + Duration::from_secs(900);
    let mut exit_end: Option<u64> = None;
    let (mut frames, mut acks) = (0u64, 0u64);
    loop {
        for e in c.take_events() {
            if e["type"] == "term.exited" && e["terminal"] == json!(term) {
                exit_end = e["end_offset"].as_u64();
            }
        }
        let end = c.end(term);
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
                // Events are kept, other terminals' output acked at once.
                other => c.file(other).await?,
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
    c.close_terminal(term).await?;
    let pty_cpu = cpu_delta(pty0, cpu_secs(&pid.to_string()));
    let client_cpu = cpu_delta(me0, cpu_secs("self"));
    let max_rss_kib = sampler.finish();
    let bytes = c.end(term);
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
pub async fn one_client(ide: &str, n: usize) -> Result<(Conn, Duration)> {
    let t0 = Instant::now();
    let mut c = Conn::connect(ide).await?;
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

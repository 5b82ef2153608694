//! The bench's connection to cove-pty: [`cove_pty::client`] at its `recv`
//! level, so that the latency and flood loops see each message as it
//! arrives and acknowledge output as the browser does (§7 F2: once it is
//! processed, and at least every 64 KiB), not once per frame.

use crate::{ORIGIN, PROJECT, SECRET};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use cove_pty::client::{Client, Connect, Incoming};
use cove_pty::protocol::{Request, TerminalRef};
use futures::FutureExt;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A message as the bench handles it.
pub enum Got {
    Json(Value),
    Output { term: u32, data: Bytes },
    Other,
}

pub struct Conn {
    /// Its `end` (per terminal, the offset after the last output byte),
    /// `output` (when `keep`) and `events` are the bench's bookkeeping; it
    /// acknowledges nothing by itself.
    c: Client,
    /// Keep output per terminal (not for the flood, which only counts it).
    pub keep: bool,
    /// Per terminal: the offset of the last ACK.
    acked: HashMap<u32, u64>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Conn {
    pub async fn connect(ide: &str) -> Result<Conn> {
        let token = cove_pty::token::sign(SECRET.as_bytes(), PROJECT, now_secs(), 300, None);
        let mut c = Connect::new(ide, &token, ORIGIN)
            .client("cove-bench")
            .connect()
            .await
            .context("connecting")?;
        c.auto_ack = false;
        Ok(Conn {
            c,
            keep: true,
            acked: HashMap::new(),
        })
    }

    pub async fn input(&mut self, term: u32, data: &[u8]) -> Result<()> {
        Ok(self.c.input(term, data).await?)
    }

    /// The offset after the last output byte received on `term`.
    pub fn end(&self, term: u32) -> u64 {
        self.c.end.get(&term).copied().unwrap_or(0)
    }

    /// Acks everything received on `term`, if anything is unacked.
    pub async fn ack(&mut self, term: u32) -> Result<()> {
        let end = self.end(term);
        if end > self.acked.get(&term).copied().unwrap_or(0) {
            self.acked.insert(term, end);
            self.c.ack(term, end).await?;
        }
        Ok(())
    }

    pub fn unacked(&self, term: u32) -> u64 {
        self.end(term) - self.acked.get(&term).copied().unwrap_or(0)
    }

    /// Events received and not handled yet.
    pub fn take_events(&mut self) -> VecDeque<Value> {
        std::mem::take(&mut self.c.events)
    }

    /// Advances the terminal's offsets, keeping output when `keep`.
    fn track(&mut self, m: Incoming) -> Result<Got> {
        match m {
            Incoming::Json(v) => Ok(Got::Json(v)),
            Incoming::Output {
                terminal,
                offset,
                data,
            } => {
                let end = self.c.end.entry(terminal).or_insert(offset);
                if *end != offset {
                    bail!("terminal {terminal}: output at {offset}, expected {end}");
                }
                *end += data.len() as u64;
                if self.keep {
                    self.c
                        .output
                        .entry(terminal)
                        .or_default()
                        .extend_from_slice(&data);
                }
                Ok(Got::Output {
                    term: terminal,
                    data,
                })
            }
            Incoming::Snapshot {
                terminal,
                offset,
                end: true,
                ..
            } => {
                self.c.end.insert(terminal, offset);
                self.acked.insert(terminal, offset);
                Ok(Got::Other)
            }
            Incoming::Snapshot { .. } => Ok(Got::Other),
        }
    }

    pub async fn recv(&mut self, deadline: Instant) -> Result<Got> {
        let m = tokio::time::timeout_at(deadline.into(), self.c.recv())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))??;
        self.track(m)
    }

    /// A message that has already arrived, without waiting.
    pub fn try_recv_now(&mut self) -> Result<Option<Got>> {
        // `recv` loses nothing when dropped before it is ready.
        match self.c.recv().now_or_never() {
            None => Ok(None),
            Some(m) => Ok(Some(self.track(m?)?)),
        }
    }

    /// Files a message received while waiting for something else: events
    /// are kept, output is acked at once.
    pub async fn file(&mut self, g: Got) -> Result<()> {
        match g {
            Got::Json(v) => self.c.events.push_back(v),
            Got::Output { term, .. } => self.ack(term).await?,
            Got::Other => {}
        }
        Ok(())
    }

    /// `term.create` over 80×24 with `extra` fields; the terminal's id.
    /// (Output filed while waiting for the answer is acked with the next
    /// [`Conn::ack`].)
    pub async fn create(&mut self, extra: Value) -> Result<u32> {
        self.c.create_terminal(extra).await.context("term.create")
    }

    pub async fn close_terminal(&mut self, term: u32) -> Result<Value> {
        self.c
            .call(Request::TermClose(TerminalRef { terminal: term }))
            .await
            .context("term.close")
    }

    fn count_output(&self, term: u32, needle: &[u8]) -> usize {
        self.c.output.get(&term).map_or(0, |o| {
            o.windows(needle.len()).filter(|w| *w == needle).count()
        })
    }

    /// Reads until `needle` has appeared `times` times in the output.
    pub async fn wait_output(
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
                    self.c.text(term)
                )
            })?;
            self.file(g).await?;
        }
        Ok(())
    }

    pub async fn close(self) {
        self.c.close().await;
    }
}

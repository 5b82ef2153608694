//! Owns every child process of the server and reaps them all.
//!
//! cove-pty may be PID 1 of its container and is made a child subreaper
//! otherwise, so processes that a terminal's shell left behind are
//! re-parented to it. One loop calls `waitpid(-1)` on SIGCHLD and hands each
//! exit status to the terminal waiting for that pid; unknown pids (orphans)
//! are reaped and dropped, so no zombie stays. Spawning happens under the
//! same lock as reaping, so a child that dies at once is never reaped before
//! its waiter is registered, and `std::process::Command` can still collect a
//! child whose `exec` failed.

use crate::protocol::Exit;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

pub fn exit_of(status: WaitStatus) -> Option<(i32, Exit)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((
            pid.as_raw(),
            Exit {
                code: Some(code),
                signal: None,
            },
        )),
        WaitStatus::Signaled(pid, sig, _) => Some((
            pid.as_raw(),
            Exit {
                code: None,
                signal: Some(sig.as_str()),
            },
        )),
        _ => None,
    }
}

impl Reaper {
    /// Starts the reaping loop on the current runtime.
    pub fn start() -> std::io::Result<Arc<Self>> {
        // SAFETY: prctl with integer arguments has no memory effects.
        let _ = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let r = Arc::new(Reaper::default());
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                me.reap_all();
                // SIGCHLD can coalesce; the timeout is a safety net.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sig.recv()).await;
            }
        });
        Ok(r)
    }

    fn reap_all(&self) {
        let mut w = self.waiters.lock();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if let Some((pid, exit)) = exit_of(st) {
                        match w.remove(&pid) {
                            Some(tx) => {
                                let _ = tx.send(exit);
                            }
                            None => tracing::debug!(pid, ?exit, "reaped an orphan"),
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: nothing left
            }
        }
    }

    /// Runs `spawn` (which returns the child's pid) so that the child's exit
    /// goes to the returned receiver.
    pub fn spawn<E>(
        &self,
        spawn: impl FnOnce() -> Result<u32, E>,
    ) -> Result<(i32, oneshot::Receiver<Exit>), E> {
        let mut w = self.waiters.lock();
        let pid = spawn()? as i32;
        let (tx, rx) = oneshot::channel();
        w.insert(pid, tx);
        Ok((pid, rx))
    }
}

/// Pids of live (non-zombie) processes whose session id is `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which may itself contain ") ".
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 3 && f[0] != "Z" && f[3].parse::<i32>().ok() == Some(sid) {
            out.push(pid);
        }
    }
    out
}

/// SIGHUP to every process of the session, SIGKILL after `grace` to those
/// still alive. Processes that left the session are not touched.
pub async fn kill_session(sid: i32, grace: std::time::Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let members = tokio::task::spawn_blocking(move || session_members(sid))
        .await
        .unwrap_or_default();
    for p in &members {
        let _ = kill(Pid::from_raw(*p), Signal::SIGHUP);
        let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let left = tokio::task::spawn_blocking(move || session_members(sid))
            .await
            .unwrap_or_default();
        if left.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            for p in left {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

//! Where workspaces run. The API and the gateway only see [`Runtime`]; the
//! local runtime ([`local`]) runs each workspace as two child processes
//! (cove-sync and cove-pty), and a Kubernetes runtime will create pods
//! behind the same trait (a `kube` module beside `local`). `fake`, built
//! for tests only (feature `testing`), scripts a runtime's answers so the
//! API's scenarios run without processes.

use serde::Serialize;
use std::time::Duration;

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod local;

pub use local::{LocalConfig, LocalRuntime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Ready,
    Stopping,
    Failed,
}

impl State {
    /// The wire name, as in the API's `state` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping => "stopping",
            State::Failed => "failed",
        }
    }
}

/// What the API reports about one workspace.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    pub reason: Option<String>,
    pub mode: Option<String>,
    pub hydration: Option<serde_json::Value>,
    pub app_port: Option<u16>,
    pub started_ms: Option<u64>,
    /// Where the gateway sends `<id>.ide.*` and `<id>.app.*`.
    #[serde(skip)]
    pub ide_port: Option<u16>,
    #[serde(skip)]
    pub preview_port: Option<u16>,
    #[serde(skip)]
    pub admin_port: Option<u16>,
    #[serde(skip)]
    pub sidecar_port: Option<u16>,
}

impl Status {
    pub fn stopped(reason: Option<String>) -> Self {
        Status {
            state: State::Stopped,
            reason,
            mode: None,
            hydration: None,
            app_port: None,
            started_ms: None,
            ide_port: None,
            preview_port: None,
            admin_port: None,
            sidecar_port: None,
        }
    }
}

/// Why a runtime could not do what it was asked. The API maps each to a
/// status and an error code in one place (`crate::error`); a failed start
/// in the background shows its error as the workspace's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The request needs a `ready` workspace (a sidecar to talk to).
    #[error("the workspace is not running")]
    NotRunning { state: State },
    /// The workspace is in a transition the request cannot act in, e.g. a
    /// start while the final flush of a stop is under way.
    #[error("the workspace is {}", state.as_str())]
    Busy { state: State },
    /// A child process could not be spawned.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    /// A child was spawned but never said it was ready; `0` says which and
    /// how it ended.
    #[error("{0}")]
    NotReady(String),
    /// Preparing the workspace's directories or ports failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no free port")]
    NoFreePort,
    /// The workspace was stopped (and maybe started again) while this start
    /// was under way; its children were dropped.
    #[error("stopped while starting")]
    Superseded,
    /// The sidecar's control API did not answer (refused, reset, or not
    /// within the request's timeout).
    #[error("the sidecar's {path}: {reason}")]
    Unreachable { path: String, reason: String },
    /// The sidecar answered something that is not JSON.
    #[error("the sidecar's {path} answer: {reason}")]
    BadAnswer { path: String, reason: String },
    /// The sidecar answered with an error status; `body` is its JSON error
    /// (sync-api.md: `{"error": {"code", "message"}}`).
    #[error("the sidecar's {path} answered {status}: {}", body["error"]["message"])]
    Sidecar {
        path: String,
        status: u16,
        body: serde_json::Value,
    },
}

pub struct StartSpec {
    pub project: String,
    /// Fencing epoch for the sidecar, above every earlier one (storage.md).
    /// `None` on a supervisor restart: the sidecar then claims the next
    /// epoch itself.
    pub epoch: Option<u64>,
}

#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Starts the workspace if it is not running; returns at once, with
    /// the workspace `starting` (or already `ready`). A workspace that is
    /// `stopping` is [`RuntimeError::Busy`].
    async fn start(&self, spec: StartSpec) -> Result<Status, RuntimeError>;
    /// Stops it: cove-pty first (terminals end), then the sidecar, whose
    /// final flush puts every change in the store. Returns when stopped.
    async fn stop(&self, project: &str, reason: Option<String>) -> Result<Status, RuntimeError>;
    fn status(&self, project: &str) -> Status;
    fn running(&self) -> Vec<String>;
    /// cove-pty's `/activity` of a running workspace (protocol.md §17).
    async fn activity(&self, project: &str) -> Option<serde_json::Value>;
    /// `POST path` with a JSON `body` to the control API of the running
    /// workspace's sidecar (sync-api.md: `/flush`, `/restore`); returns its
    /// JSON answer when the status is 2xx, else [`RuntimeError::Sidecar`].
    /// Only the runtime knows how to reach the sidecar (loopback here, the
    /// pod in a cluster).
    async fn sidecar_post(
        &self,
        project: &str,
        path: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, RuntimeError>;
    /// Controller shutdown: stop everything.
    async fn shutdown(&self);
}

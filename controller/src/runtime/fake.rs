//! A scripted [`Runtime`] for tests (feature `testing`): no processes, every
//! call recorded, and outcomes set by the test. A workspace is `ready` as
//! soon as it starts and `stopped` as soon as it stops, unless the test
//! holds that step behind a [`Gate`] (it then stays `starting` or
//! `stopping` until the gate opens) or queues an error for it. The
//! sidecar's answers come from [`FakeRuntime::answer`]; without one a
//! `POST` answers `{}`.

use super::{Runtime, RuntimeError, StartSpec, State, Status};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// One call the runtime received, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Start {
        project: String,
        epoch: Option<u64>,
    },
    Stop {
        project: String,
        reason: Option<String>,
    },
    SidecarPost {
        project: String,
        path: String,
        body: Value,
    },
    Activity {
        project: String,
    },
}

impl Call {
    pub fn project(&self) -> &str {
        match self {
            Call::Start { project, .. }
            | Call::Stop { project, .. }
            | Call::SidecarPost { project, .. }
            | Call::Activity { project } => project,
        }
    }
}

/// Which step of a workspace a gate or a queued error is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Start,
    Stop,
}

/// Holds a step until [`Gate::open`]; dropping the gate does not open it.
#[derive(Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut rx = self.0.subscribe();
        // Err only if the sender is gone, and this gate holds it.
        let _ = rx.wait_for(|open| *open).await;
    }
}

type Answer = Box<dyn Fn(&str, &Value) -> Result<Value, RuntimeError> + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// Per project: the status and which start it belongs to.
    ws: HashMap<String, (u64, Status)>,
    runs: u64,
    calls: Vec<Call>,
    gates: HashMap<(Op, String), Gate>,
    errors: HashMap<(Op, String), VecDeque<RuntimeError>>,
    answers: HashMap<String, Arc<Answer>>,
    activity: HashMap<String, Value>,
}

/// The fake; clones share one state, so a test keeps one to script and
/// inspect while the controller owns another.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    /// Woken on every call, for [`FakeRuntime::wait_for_call`].
    called: Arc<tokio::sync::Notify>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        FakeRuntime::default()
    }

    /// Holds `op` of `project` until the returned gate opens: a start stays
    /// `starting` (the API has answered), a stop stays `stopping` and does
    /// not return.
    pub fn hold(&self, op: Op, project: &str) -> Gate {
        let g = Gate::new();
        self.inner
            .lock()
            .gates
            .insert((op, project.to_string()), g.clone());
        g
    }

    /// The next `op` of `project` fails with `e` (errors queue up).
    pub fn fail_next(&self, op: Op, project: &str, e: RuntimeError) {
        self.inner
            .lock()
            .errors
            .entry((op, project.to_string()))
            .or_default()
            .push_back(e);
    }

    /// How the sidecar of a ready workspace answers `POST path`:
    /// `f(project, body)`.
    pub fn answer(
        &self,
        path: &str,
        f: impl Fn(&str, &Value) -> Result<Value, RuntimeError> + Send + Sync + 'static,
    ) {
        self.inner
            .lock()
            .answers
            .insert(path.to_string(), Arc::new(Box::new(f)));
    }

    /// What `activity` reports for `project` (cove-pty's `/activity`).
    pub fn set_activity(&self, project: &str, v: Value) {
        self.inner.lock().activity.insert(project.to_string(), v);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().calls.clone()
    }

    /// The calls for one project.
    pub fn calls_for(&self, project: &str) -> Vec<Call> {
        let mut c = self.calls();
        c.retain(|c| c.project() == project);
        c
    }

    /// Waits up to `within` for a call that `pred` accepts; panics without
    /// one (this is for tests).
    pub async fn wait_for_call(&self, within: Duration, pred: impl Fn(&Call) -> bool) -> Call {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let woken = self.called.notified();
            if let Some(c) = self.calls().into_iter().find(&pred) {
                return c;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                panic!("no such call within {within:?}: {:?}", self.calls());
            }
        }
    }

    fn record(&self, c: Call) {
        self.inner.lock().calls.push(c);
        self.called.notify_waiters();
    }

    fn take_error(&self, op: Op, project: &str) -> Option<RuntimeError> {
        self.inner
            .lock()
            .errors
            .get_mut(&(op, project.to_string()))?
            .pop_front()
    }

    fn gate(&self, op: Op, project: &str) -> Option<Gate> {
        self.inner
            .lock()
            .gates
            .get(&(op, project.to_string()))
            .cloned()
    }

    /// Sets `project`'s status if `run` is still its current start.
    fn set(&self, project: &str, run: u64, f: impl FnOnce(&mut Status)) {
        if let Some((r, s)) = self.inner.lock().ws.get_mut(project) {
            if *r == run {
                f(s);
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, spec: StartSpec) -> Result<Status, RuntimeError> {
        let p = spec.project.clone();
        self.record(Call::Start {
            project: p.clone(),
            epoch: spec.epoch,
        });
        if let Some(e) = self.take_error(Op::Start, &p) {
            return Err(e);
        }
        let gate = self.gate(Op::Start, &p);
        let run = {
            let mut inner = self.inner.lock();
            if let Some((_, s)) = inner.ws.get(&p) {
                match s.state {
                    State::Starting | State::Ready => return Ok(s.clone()),
                    State::Stopping => return Err(RuntimeError::Busy { state: s.state }),
                    State::Stopped | State::Failed => {}
                }
            }
            inner.runs += 1;
            let run = inner.runs;
            let mut s = Status::stopped(None);
            s.state = if gate.is_some() {
                State::Starting
            } else {
                State::Ready
            };
            s.mode = Some("watch".into());
            s.started_ms = Some(cove_sync::journal::now_ms());
            inner.ws.insert(p.clone(), (run, s));
            run
        };
        if let Some(g) = gate {
            let me = self.clone();
            let project = p.clone();
            tokio::spawn(async move {
                g.passed().await;
                // A stop meanwhile ended this run: it stays stopped.
                me.set(&project, run, |s| {
                    if s.state == State::Starting {
                        s.state = State::Ready;
                    }
                });
            });
        }
        Ok(self.status(&p))
    }

    async fn stop(&self, project: &str, reason: Option<String>) -> Result<Status, RuntimeError> {
        self.record(Call::Stop {
            project: project.to_string(),
            reason: reason.clone(),
        });
        if let Some(e) = self.take_error(Op::Stop, project) {
            return Err(e);
        }
        let run = {
            let mut inner = self.inner.lock();
            let Some((run, s)) = inner.ws.get_mut(project) else {
                return Ok(Status::stopped(reason));
            };
            if s.state == State::Stopped {
                return Ok(s.clone());
            }
            s.state = State::Stopping;
            *run
        };
        if let Some(g) = self.gate(Op::Stop, project) {
            g.passed().await;
        }
        let done = Status::stopped(reason);
        self.set(project, run, |s| *s = done.clone());
        Ok(done)
    }

    fn status(&self, project: &str) -> Status {
        self.inner
            .lock()
            .ws
            .get(project)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Status::stopped(None))
    }

    fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .lock()
            .ws
            .iter()
            .filter(|(_, (_, s))| matches!(s.state, State::Starting | State::Ready))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    async fn activity(&self, project: &str) -> Option<Value> {
        self.record(Call::Activity {
            project: project.to_string(),
        });
        self.inner.lock().activity.get(project).cloned()
    }

    async fn sidecar_post(
        &self,
        project: &str,
        path: &str,
        body: Value,
        _timeout: Duration,
    ) -> Result<Value, RuntimeError> {
        self.record(Call::SidecarPost {
            project: project.to_string(),
            path: path.to_string(),
            body: body.clone(),
        });
        let state = self.status(project).state;
        if state != State::Ready {
            return Err(RuntimeError::NotRunning { state });
        }
        let answer = self.inner.lock().answers.get(path).cloned();
        match answer {
            Some(f) => f(project, &body),
            None => Ok(json!({})),
        }
    }

    async fn shutdown(&self) {
        for p in self.running() {
            let _ = self.stop(&p, Some("controller shut down".into())).await;
        }
    }
}

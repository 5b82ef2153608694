//! cove-controller: the API, templates, workspace runtimes and, in local
//! mode, the gateway that routes `<id>.ide.*` and `<id>.app.*` to each
//! workspace. Where a request goes, layer by layer:
//!
//! - [`gateway`]: the listener's app. Routes by host: the controller's own
//!   host to the API and UI, workspace hosts to the workspace (starting it
//!   first), everything else to a `404`. Start here.
//! - [`api`]: the HTTP API of docs/api.md: the shared [`api::Controller`],
//!   per-project turns (one changing request at a time), request bodies
//!   and answers as types, the idle loop.
//! - [`error`]: the API's error shape and the one mapping from
//!   [`runtime::RuntimeError`] to statuses and codes.
//! - [`runtime`]: where workspaces run, behind the [`runtime::Runtime`]
//!   trait: [`runtime::local`] runs two processes per workspace;
//!   `runtime::fake` (feature `testing`) scripts a runtime for tests.
//! - [`projects`]: templates and projects in the store.
//! - [`history`]: a project's history, past versions and restores of a
//!   stopped workspace, read from its journal.
//! - [`ui`]: the built browser UI, served on the controller's host.
//! - [`metrics`]: the controller's Prometheus metrics.

pub mod api;
pub mod error;
pub mod gateway;
pub mod history;
pub mod metrics;
pub mod projects;
pub mod runtime;
pub mod ui;

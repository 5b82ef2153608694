//! cove-chaos: kills Cove workspaces mid-work and checks the durability
//! contract (docs/durability.md): no acknowledged write is ever lost, no
//! file is ever torn.
//!
//! Start at [`run`] (the run: lanes, resume, report), then [`cycle`]: one
//! kill cycle, written once over the `Target` hooks that the two
//! targets implement. Module by module:
//!
//! - [`run`]: `cove-chaos run`: `run.json`, the lanes, `cycles.jsonl`,
//!   `--resume`, SIGINT/SIGTERM, the report at the end (and every 10
//!   cycles).
//! - [`cycle`]: the kill cycle and a lane's loop over the `Target` trait;
//!   what lanes share; helpers (timeouts, per-cycle seeds, the worker's
//!   command line, the checks off the runtime).
//! - [`processes`]: process mode (`--target processes`): cove-sync and
//!   cove-pty started by the harness on Garage behind a fault proxy;
//!   kills, graceful stops, hydration, stale writers, store faults.
//! - [`remote`]: controller mode (`--target controller`): projects
//!   through the controller's API, killed as processes or as pods, the
//!   worker's records over its terminal, checks on an export of the store.
//! - [`workspace`]: one process-mode workspace (the sidecar and cove-pty
//!   processes), the whole-workspace SIGKILL, leftovers after a resume.
//! - [`proxy`]: the fault proxy between the sidecars and the store.
//! - [`worker`]: `cove-chaos worker`, the workload inside a workspace's
//!   terminal (rewrites, appends, renames, tar extractions, git commits;
//!   about half fsync'd), recording each step before and after it.
//! - [`editor`]: the IDE-socket client (protocol.md): the editor's saves,
//!   each recorded in the manifest, and the worker's terminal.
//! - [`manifest`]: the records the worker and the editor write;
//!   [`ledger`]: the manifest read back, incrementally, and what the
//!   checks still need of it.
//! - [`content`]: the content of every write, derived from its seed, so
//!   a file can be checked without a copy.
//! - [`check`]: the checks after a recovery (acknowledged writes there,
//!   no torn file, the loss window of unsynced writes).
//! - [`report`]: `report.md`, `report.json` and the plot.

pub mod check;
pub mod content;
pub mod cycle;
pub mod editor;
pub mod ledger;
pub mod manifest;
pub mod processes;
pub mod proxy;
pub mod remote;
pub mod report;
pub mod run;
pub mod worker;
pub mod workspace;

//! cove-controller: the API, templates, workspace runtimes and, in local
//! mode, the gateway that routes `<id>.ide.*` and `<id>.app.*` to each
//! workspace. The runtime is a trait ([`runtime::Runtime`]) so that a
//! Kubernetes runtime can be added without touching the API.

pub mod api;
pub mod error;
pub mod history;
pub mod metrics;
pub mod projects;
pub mod runtime;
pub mod ui;

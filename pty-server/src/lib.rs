//! cove-pty: the per-workspace server the browser IDE talks to.
//!
//! One WebSocket per tab carries terminals (binary frames, flow-controlled
//! by acknowledged bytes, restored from a server-side emulator on
//! reconnect), file operations confined to the workspace and acknowledged
//! once the sync sidecar says they are durable, and a coalesced change feed.
//! A second listener proxies the app preview; a third serves health,
//! readiness, activity and metrics. The wire protocol is docs/protocol.md.
//!
//! | module | what |
//! |---|---|
//! | [`protocol`] | wire types: requests, frame header, error and close codes, limits |
//! | [`client`] | the protocol's Rust client (tests, benchmarks, cove-chaos) |
//! | [`token`] | HMAC tokens the controller signs and the upgrade verifies |
//! | [`server`] | shared state, upgrade checks, status poller, admin endpoints, the handlers a stop waits for |
//! | [`conn`] | one connection: hello, requests, frames, heartbeat, rate limit |
//! | [`terminal`] | the terminal sessions and their requests; one terminal's I/O and flow control in `terminal/io.rs` |
//! | [`screen`] | the server-side emulator and its snapshots |
//! | [`reaper`] | reaps every child and orphan; kills sessions |
//! | [`files`] | confined file operations |
//! | [`changes`] | the change feed's fan-out and coalescing |
//! | [`sidecar`] | client of cove-sync's control API |
//! | [`preview`] | the app preview: where a host goes, status pages |
//! | [`proxy`] | the reverse proxy both hops use: headers, bodies, upgrades |

pub mod activity;
pub mod changes;
pub mod client;
pub mod conn;
pub mod files;
pub mod metrics;
pub mod outbox;
pub mod preview;
pub mod protocol;
pub mod proxy;
pub mod reaper;
pub mod screen;
pub mod server;
pub mod sidecar;
pub mod terminal;
pub mod token;

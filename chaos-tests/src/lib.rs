//! cove-chaos: kills Cove workspaces mid-work and checks ARCHITECTURE.md's
//! durability contract (docs/durability.md).

pub mod check;
pub mod content;
pub mod editor;
pub mod ledger;
pub mod manifest;
pub mod proxy;
pub mod remote;
pub mod report;
pub mod run;
pub mod worker;
pub mod workspace;

//! The object store: the one place Cove's bytes are durable.
//!
//! One small trait, [`ObjectStore`], with three implementations that share a
//! conformance suite (`tests/store_conformance.rs`):
//!
//! - [`DirStore`]: a local directory (local mode, and the fastest tests);
//! - [`S3Store`]: any S3-compatible service through aws-sdk-s3 (AWS, Garage,
//!   MinIO, R2, ...);
//! - [`FaultStore`]: a wrapper that injects outages and latency, so the
//!   journal's retry and "pending" paths are tested without a real network
//!   fault.
//!
//! The trait is deliberately key/value shaped (get, put, list, delete): the
//! journal above it never needs partial reads, and anything richer would not
//! be portable across stores. Conditional creation ([`ObjectStore::put_if_absent`])
//! is best effort: some stores (Garage 2.5) ignore `If-None-Match`, so nothing
//! in Cove relies on it for safety: fencing is claims plus a LIST (see
//! "Fencing without conditional writes" in [`crate::journal`]; the check is
//! `Writer::check_fence`, run when a writer opens and after each publish).

mod dir;
mod fault;
mod s3;

pub use dir::DirStore;
pub use fault::FaultStore;
pub use s3::{S3Config, S3Store};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// Errors from a store. `NotFound` is not an error of `get` (it returns
/// `None`); it appears only where an object was required.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("store access denied ({0}); check the credentials and bucket permissions")]
    AccessDenied(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store I/O error on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether retrying later can help (outage, timeout) or not (bad
    /// credentials, bad key).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Io { .. } | StoreError::Other(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A flat key/value object store with strong read-after-write consistency
/// (AWS S3 since 2020, Garage, MinIO and a local directory all give it).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The whole object, or `None` when there is no such key.
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>>;
    /// Create or replace an object; visible to every reader when this returns.
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()>;
    /// Create an object only if the key is free. Returns `false` when the key
    /// exists *and the store could tell*; stores that ignore conditional
    /// writes return `true` and overwrite. Never rely on it for safety.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<bool>;
    /// Whether the key exists.
    async fn exists(&self, key: &str) -> StoreResult<bool>;
    /// Every key that starts with `prefix`, in byte order, optionally only the
    /// ones after `start_after`.
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<Vec<String>>;
    /// Remove an object; removing a missing key is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// Copy an object inside the store (server-side where the store can).
    async fn copy(&self, from: &str, to: &str) -> StoreResult<()> {
        let body = self.get(from).await?.ok_or_else(|| StoreError::NotFound {
            key: from.to_owned(),
        })?;
        self.put(to, body).await
    }
    /// A short human description for logs and status ("s3://bucket/prefix").
    fn describe(&self) -> String;
}

pub type DynStore = Arc<dyn ObjectStore>;

/// Keys are relative, `/`-separated, printable and never escape upwards; the
/// directory store maps them to paths, so this check is its safety.
pub fn check_key(key: &str) -> StoreResult<()> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return bad("leading or trailing '/'");
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("empty, '.' or '..' component");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("control character");
    }
    Ok(())
}

/// Open a store from a URL: `file:///abs/dir` or `dir:/abs/dir` for a
/// directory store, `s3://bucket/prefix` for S3 (endpoint, region and
/// credentials from [`S3Config::from_env`]).
pub async fn open_url(url: &str) -> StoreResult<DynStore> {
    if let Some(path) = url
        .strip_prefix("file://")
        .or_else(|| url.strip_prefix("dir:"))
    {
        return Ok(Arc::new(DirStore::open(path)?));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut cfg = S3Config::from_env(bucket);
        cfg.prefix = prefix.trim_end_matches('/').to_owned();
        return Ok(Arc::new(S3Store::connect(cfg).await?));
    }
    Err(StoreError::Other(format!(
        "unknown store URL {url:?}: use file:///path or s3://bucket/prefix"
    )))
}

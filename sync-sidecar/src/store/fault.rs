//! A store wrapper that fails on command: outages, latency and failures of
//! one kind of request. Used by the journal's tests (retry, "pending",
//! recovery) and by the chaos harness; never in production paths.

use super::{DynStore, ObjectStore, StoreError, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct FaultStore {
    inner: DynStore,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct Faults {
    down: AtomicBool,
    fail_puts: AtomicBool,
    latency_ms: AtomicU64,
    calls: AtomicU64,
}

impl FaultStore {
    pub fn new(inner: DynStore) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }
    /// Every request fails as if the store were unreachable.
    pub fn set_down(&self, down: bool) {
        self.faults.down.store(down, Ordering::SeqCst);
    }
    /// Writes fail, reads work (a full or read-only bucket).
    pub fn set_fail_puts(&self, fail: bool) {
        self.faults.fail_puts.store(fail, Ordering::SeqCst);
    }
    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
    /// Requests seen so far (including failed ones).
    pub fn calls(&self) -> u64 {
        self.faults.calls.load(Ordering::SeqCst)
    }

    async fn gate(&self, write: bool) -> StoreResult<()> {
        self.faults.calls.fetch_add(1, Ordering::SeqCst);
        let ms = self.faults.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.faults.down.load(Ordering::SeqCst)
            || (write && self.faults.fail_puts.load(Ordering::SeqCst))
        {
            return Err(StoreError::Unavailable("injected fault".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        self.gate(false).await?;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        self.gate(true).await?;
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<bool> {
        self.gate(true).await?;
        self.inner.put_if_absent(key, body).await
    }
    async fn exists(&self, key: &str) -> StoreResult<bool> {
        self.gate(false).await?;
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<Vec<String>> {
        self.gate(false).await?;
        self.inner.list(prefix, start_after).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.gate(true).await?;
        self.inner.delete(key).await
    }
    async fn copy(&self, from: &str, to: &str) -> StoreResult<()> {
        self.gate(true).await?;
        self.inner.copy(from, to).await
    }
    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}

//! Prometheus metrics of one sidecar, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub struct Metrics {
    registry: Registry,
    pub commits: Counter,
    pub commit_failures: Counter,
    pub ops_committed: Counter,
    pub segment_bytes: Counter,
    pub blob_bytes: Counter<u64, AtomicU64>,
    pub checkpoints: Counter,
    pub commit_seconds: Histogram,
    pub flush_seconds: Histogram,
    pub dirty_paths: Gauge,
    pub store_up: Gauge,
    pub hydration_seconds: Gauge<f64, AtomicU64>,
    pub read_errors: Counter,
    pub fuse_errors: Family<FuseErrorLabels, Counter>,
}

/// Labels of `cove_sync_fuse_errors_total`: the FUSE operation and the
/// errno's name (`ENOENT`, or the number if it has none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FuseErrorLabels {
    pub op: &'static str,
    pub errno: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cove_sync");
        let m = Self {
            commits: Counter::default(),
            commit_failures: Counter::default(),
            ops_committed: Counter::default(),
            segment_bytes: Counter::default(),
            blob_bytes: Counter::default(),
            checkpoints: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            dirty_paths: Gauge::default(),
            store_up: Gauge::default(),
            hydration_seconds: Gauge::default(),
            read_errors: Counter::default(),
            fuse_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "commits",
            "Commits made durable in the store",
            m.commits.clone(),
        );
        registry.register(
            "commit_failures",
            "Failed attempts to publish a commit",
            m.commit_failures.clone(),
        );
        registry.register(
            "ops_committed",
            "Journal operations committed",
            m.ops_committed.clone(),
        );
        registry.register(
            "segment_bytes",
            "Bytes of journal segments written",
            m.segment_bytes.clone(),
        );
        registry.register(
            "blob_bytes",
            "Bytes of chunk blobs uploaded",
            m.blob_bytes.clone(),
        );
        registry.register("checkpoints", "Checkpoints written", m.checkpoints.clone());
        registry.register(
            "commit_seconds",
            "Time to publish one commit",
            m.commit_seconds.clone(),
        );
        registry.register(
            "flush_seconds",
            "Time a flush (fsync, API flush) waited",
            m.flush_seconds.clone(),
        );
        registry.register(
            "dirty_paths",
            "Paths changed but not yet committed",
            m.dirty_paths.clone(),
        );
        registry.register(
            "store_up",
            "1 when the last store request succeeded",
            m.store_up.clone(),
        );
        registry.register(
            "hydration_seconds",
            "Duration of the last hydration",
            m.hydration_seconds.clone(),
        );
        registry.register(
            "read_errors",
            "Paths that could not be read for a commit",
            m.read_errors.clone(),
        );
        registry.register(
            "fuse_errors",
            "Error replies to FUSE requests, by operation and errno",
            m.fuse_errors.clone(),
        );
        Self { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

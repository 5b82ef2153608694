//! Prometheus metrics of one cove-pty, served on the admin listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabel {
    pub dir: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub r#type: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub upgrades: Family<ResultLabel, Counter>,
    pub closes: Family<CodeLabel, Counter>,
    pub terminals: Family<StateLabel, Gauge>,
    pub terminal_bytes: Family<DirLabel, Counter>,
    pub terminals_paused: Gauge,
    pub requests: Family<RequestLabel, Counter>,
    pub request_seconds: Histogram,
    pub flush_seconds: Histogram,
    pub change_events: Family<KindLabel, Counter>,
    pub preview_requests: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("cove_pty");
        let m = Metrics {
            connections: Gauge::default(),
            upgrades: Family::default(),
            closes: Family::default(),
            terminals: Family::default(),
            terminal_bytes: Family::default(),
            terminals_paused: Gauge::default(),
            requests: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            change_events: Family::default(),
            preview_requests: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "upgrades",
            "WebSocket upgrade attempts by result",
            m.upgrades.clone(),
        );
        r.register(
            "close",
            "Connections closed, by close code",
            m.closes.clone(),
        );
        r.register("terminals", "Terminals by state", m.terminals.clone());
        r.register(
            "terminal_bytes",
            "Terminal bytes by direction",
            m.terminal_bytes.clone(),
        );
        r.register(
            "terminals_paused",
            "Terminals not being read because every client is a full window behind",
            m.terminals_paused.clone(),
        );
        r.register(
            "requests",
            "Requests by type and result code",
            m.requests.clone(),
        );
        r.register(
            "request_seconds",
            "Time to answer a request",
            m.request_seconds.clone(),
        );
        r.register(
            "flush_seconds",
            "Time mutating file requests waited for the sidecar's flush",
            m.flush_seconds.clone(),
        );
        r.register(
            "change_events",
            "Change-feed events sent, after coalescing",
            m.change_events.clone(),
        );
        r.register(
            "preview_requests",
            "Preview proxy requests by result",
            m.preview_requests.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn preview_request(&self, result: &str) {
        self.preview_requests
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn upgrade(&self, result: &str) {
        self.upgrades
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn request(&self, ty: &str, code: &str, secs: f64) {
        self.requests
            .get_or_create(&RequestLabel {
                r#type: ty.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.request_seconds.observe(secs);
    }

    pub fn render(&self, last_activity_ms: u64) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        // Added by hand: a gauge derived from Activity at render time.
        let body = out.trim_end_matches("# EOF\n");
        format!(
            "{body}# HELP cove_pty_last_activity_seconds Unix time of the last activity.\n\
             # TYPE cove_pty_last_activity_seconds gauge\n\
             cove_pty_last_activity_seconds {:.3}\n# EOF\n",
            last_activity_ms as f64 / 1000.0
        )
    }
}

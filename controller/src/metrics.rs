//! Prometheus metrics of the controller, at `/metrics` on the controller's
//! host.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt::Write as _;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub start_seconds: Histogram,
    pub api_requests: Family<RouteLabel, Counter>,
    pub api_seconds: Histogram,
    pub idle_stops: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("cove_controller");
        let m = Metrics {
            start_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            api_requests: Family::default(),
            api_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            idle_stops: Counter::default(),
            registry: Registry::default(),
        };
        r.register(
            "workspace_start_seconds",
            "Time from start to ready",
            m.start_seconds.clone(),
        );
        r.register(
            "api_requests",
            "API requests by route and status",
            m.api_requests.clone(),
        );
        r.register("api_seconds", "API request latency", m.api_seconds.clone());
        r.register(
            "idle_stops",
            "Workspaces stopped for being idle",
            m.idle_stops.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The registry plus a gauge of workspaces by state, counted now.
    pub fn render(&self, states: &[(&str, usize)]) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        let body = out.trim_end_matches("# EOF\n").to_string();
        let mut s = body;
        s.push_str("# HELP cove_controller_workspaces Workspaces by state.\n");
        s.push_str("# TYPE cove_controller_workspaces gauge\n");
        for (state, n) in states {
            let _ = writeln!(s, "cove_controller_workspaces{{state=\"{state}\"}} {n}");
        }
        s.push_str("# EOF\n");
        s
    }
}

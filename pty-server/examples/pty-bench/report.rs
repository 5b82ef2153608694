//! The report: a Markdown table of results against their goals, and the
//! raw numbers under it.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 4]>,
    raw: Vec<(String, String)>,
}

impl Report {
    pub fn row(&mut self, metric: &str, value: String, goal: &str, ok: Option<bool>) {
        let status = match ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        self.rows.push([
            metric.to_string(),
            value,
            goal.to_string(),
            status.to_string(),
        ]);
    }

    pub fn raw(&mut self, k: &str, v: impl ToString) {
        self.raw.push((k.to_string(), v.to_string()));
    }

    pub fn markdown(&self, title: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{title}\n");
        let _ = writeln!(s, "| Metric | Result | Goal | |");
        let _ = writeln!(s, "|---|---:|---|---|");
        for r in &self.rows {
            let _ = writeln!(s, "| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
        }
        let _ = writeln!(s, "\nRaw numbers:\n\n```");
        for (k, v) in &self.raw {
            let _ = writeln!(s, "{k}={v}");
        }
        let _ = writeln!(s, "```");
        s
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn sh_output(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn latency_rows(r: &mut Report, name: &str, key: &str, s: &[u64]) {
    let (p50, p90, p99, max) = (pct(s, 0.5), pct(s, 0.9), pct(s, 0.99), pct(s, 1.0));
    r.row(
        &format!("Echo latency p50, {name}"),
        format!("{p50} µs"),
        "≤ 1000 µs",
        Some(p50 <= 1000),
    );
    r.row(
        &format!("Echo latency p90, {name}"),
        format!("{p90} µs"),
        "",
        None,
    );
    r.row(
        &format!("Echo latency p99, {name}"),
        format!("{p99} µs"),
        "≤ 5000 µs",
        Some(p99 <= 5000),
    );
    r.row(
        &format!("Echo latency max, {name}"),
        format!("{max} µs"),
        "",
        None,
    );
    let mean = s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    r.raw(
        &format!("{key}_us"),
        format!(
            "n={} min={} p50={p50} p90={p90} p99={p99} p999={} max={max} mean={mean:.1}",
            s.len(),
            pct(s, 0.0),
            pct(s, 0.999)
        ),
    );
    let slow = s.iter().filter(|&&x| x > 5000).count();
    r.raw(&format!("{key}_over_5ms"), slow);
}

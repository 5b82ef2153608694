//! Run report: `report.md` (for engineers), `report.json` (the raw [`Summary`]) and
//! `plot.png` (RPO and recovery-time histograms).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub cycle: u64,
    pub seed: u64,    // the run's seed
    pub kind: String, // e.g. "lost_ack", "torn", "resurrected", "wrong_content", "fence"
    pub path: String,
    pub detail: String, // expected vs found, enough to reproduce
}

impl Violation {
    pub fn new(cycle: u64, seed: u64, kind: &str, path: &str, detail: String) -> Self {
        Self {
            cycle,
            seed,
            kind: kind.into(),
            path: path.into(),
            detail,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cycle {
    pub n: u64,
    #[serde(default)]
    pub lane: u64, // which workspace of the run (lanes run at once)
    pub fault: String, // e.g. "kill during workload", "kill during hydration", "stale writer", ...
    pub kill_after_ms: u64, // workload time before the kill
    pub acked: u64,    // acknowledged writes checked this cycle
    pub unsynced: u64, // un-fsynced writes issued this cycle
    pub lost_unsynced: u64, // of those, lost (allowed by the contract)
    pub rpo_ms: Option<u64>, // age at the kill of the oldest lost un-fsynced write; None if nothing was lost
    pub recovery_ms: u64,    // kill -> workspace ready again
    pub violations: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub profile: String,
    pub seed: u64,
    pub lanes: u64, // workspaces killed at once, each its own project and fault proxy
    pub started: String, // human-readable UTC time
    pub duration_s: f64,
    pub mode: String,  // "fuse"
    pub store: String, // e.g. "Garage at http://127.0.0.1:3900 through the fault proxy"
    pub cycles: Vec<Cycle>,
    pub violations: Vec<Violation>,
    pub proxy: Vec<(String, u64)>, // fault-proxy counters, name -> count
    pub notes: Vec<String>,        // free-form lines
}

const PLOT_SIZE: (u32, u32) = (1200, 500);
const BINS: u64 = 20;
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/lato/Lato-Regular.ttf",
];

/// Writes `dir/report.md`, `dir/report.json` (the Summary as JSON) and `dir/plot.png`.
/// Returns the markdown text.
///
/// The markdown and JSON are written before the plot, so they survive a plotting
/// failure (e.g. no font installed); the error is still returned in that case.
pub fn write(dir: &Path, s: &Summary) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let md = markdown(s);
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;

    let json = serde_json::to_string_pretty(s).context("serializing the summary")?;
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;

    let png_path = dir.join("plot.png");
    plot(&png_path, s).with_context(|| {
        format!(
            "drawing {} (report.md and report.json were written)",
            png_path.display()
        )
    })?;
    Ok(md)
}

/// The closing line: "N passed, M failed" where N = cycles without violations and
/// M = cycles with at least one.
///
/// A cycle counts as failed if its `violations` counter is non-zero or any entry of
/// `s.violations` names it. A violation naming a cycle number absent from `s.cycles`
/// still counts as a failed cycle, so a run with violations never reads "0 failed".
pub fn closing_line(s: &Summary) -> String {
    let failed = failed_cycles(s);
    let passed = s.cycles.iter().filter(|c| !failed.contains(&c.n)).count();
    format!("{passed} passed, {} failed", failed.len())
}

/// p-th percentile (0..=100) of a sample by nearest-rank on a sorted copy; None for an empty sample.
///
/// `p` is clamped to 0..=100 (NaN behaves like 0); p = 0 yields the minimum.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    // p * n is exact for integral p and any realistic n; dividing afterwards avoids
    // rounding artefacts such as 0.99 * 100 = 98.99999999999999.
    let rank = (p * n as f64 / 100.0).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

// ---------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------

/// Cycle numbers with at least one violation (counter or listed entry).
fn failed_cycles(s: &Summary) -> BTreeSet<u64> {
    s.cycles
        .iter()
        .filter(|c| c.violations > 0)
        .map(|c| c.n)
        .chain(s.violations.iter().map(|v| v.cycle))
        .collect()
}

/// Violations attributed to a cycle: the larger of its counter and the listed entries.
fn cycle_violations(c: &Cycle, listed: &BTreeMap<u64, u64>) -> u64 {
    c.violations.max(listed.get(&c.n).copied().unwrap_or(0))
}

#[derive(Default)]
struct FaultRow {
    cycles: u64,
    failed: u64,
    violations: u64,
    acked: u64,
    unsynced: u64,
    lost_unsynced: u64,
}

fn markdown(s: &Summary) -> String {
    let mut md = String::new();
    // `write!` into a String cannot fail; the results are ignored deliberately.
    let _ = writeln!(md, "# Cove chaos report: {} profile\n", s.profile);
    let _ = writeln!(md, "- Profile: `{}`", s.profile);
    let _ = writeln!(md, "- Seed: `{}`", s.seed);
    let _ = writeln!(md, "- Started: {}", s.started);
    let _ = writeln!(md, "- Duration: {}", fmt_duration(s.duration_s));
    let _ = writeln!(md, "- Mode: {}", s.mode);
    let _ = writeln!(md, "- Store: {}", s.store);
    let _ = writeln!(md, "- Cycles: {}", s.cycles.len());
    let _ = writeln!(md);
    let _ = writeln!(md, "Reproduce:\n");
    let _ = writeln!(md, "```sh");
    let _ = writeln!(
        md,
        "cove-chaos run --profile {} --seed {} --lanes {}",
        shell_word(&s.profile),
        s.seed,
        s.lanes
    );
    let _ = writeln!(md, "```\n");

    // Faults.
    let mut listed: BTreeMap<u64, u64> = BTreeMap::new();
    for v in &s.violations {
        *listed.entry(v.cycle).or_default() += 1;
    }
    let known: BTreeSet<u64> = s.cycles.iter().map(|c| c.n).collect();
    let mut faults: BTreeMap<&str, FaultRow> = BTreeMap::new();
    let mut total = FaultRow::default();
    for c in &s.cycles {
        let v = cycle_violations(c, &listed);
        for row in [faults.entry(c.fault.as_str()).or_default(), &mut total] {
            row.cycles += 1;
            row.failed += u64::from(v > 0);
            row.violations += v;
            row.acked += c.acked;
            row.unsynced += c.unsynced;
            row.lost_unsynced += c.lost_unsynced;
        }
    }
    let orphans: Vec<&Violation> = s
        .violations
        .iter()
        .filter(|v| !known.contains(&v.cycle))
        .collect();
    let _ = writeln!(md, "## Faults\n");
    if s.cycles.is_empty() {
        let _ = writeln!(md, "No cycles ran.\n");
    } else {
        let _ = writeln!(
            md,
            "| Fault | Cycles | Failed cycles | Violations | Acked writes checked | Un-fsynced lost / issued |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        let row = |md: &mut String, name: &str, r: &FaultRow| {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} / {} |",
                name, r.cycles, r.failed, r.violations, r.acked, r.lost_unsynced, r.unsynced
            );
        };
        for (name, r) in &faults {
            row(&mut md, &cell(name), r);
        }
        row(&mut md, "**Total**", &total);
        let _ = writeln!(md);
    }
    if !orphans.is_empty() {
        let cycles: BTreeSet<u64> = orphans.iter().map(|v| v.cycle).collect();
        let _ = writeln!(
            md,
            "{} violation(s) name cycle(s) not in the cycle list ({}); they count as failed cycles.\n",
            orphans.len(),
            join(cycles.iter())
        );
    }

    // Distributions.
    let rpo: Vec<u64> = s.cycles.iter().filter_map(|c| c.rpo_ms).collect();
    let recovery: Vec<u64> = s.cycles.iter().map(|c| c.recovery_ms).collect();
    let _ = writeln!(md, "## Distributions\n");
    let _ = writeln!(md, "| Metric | Count | p50 | p90 | p99 | Max |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (name, values) in [
        ("RPO of un-fsynced writes (ms)", &rpo),
        ("Recovery, kill → ready (ms)", &recovery),
    ] {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            name,
            values.len(),
            opt(percentile(values, 50.0)),
            opt(percentile(values, 90.0)),
            opt(percentile(values, 99.0)),
            opt(values.iter().max().copied()),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "RPO counts only cycles that lost un-fsynced writes (allowed by the contract); \
         {} of {} cycles lost nothing.\n",
        s.cycles.len() - rpo.len(),
        s.cycles.len()
    );
    let _ = writeln!(md, "Histograms: `plot.png`.\n");

    // Proxy.
    let _ = writeln!(md, "## Fault proxy\n");
    if s.proxy.is_empty() {
        let _ = writeln!(md, "No counters.\n");
    } else {
        let _ = writeln!(md, "| Counter | Count |");
        let _ = writeln!(md, "|---|---:|");
        for (name, count) in &s.proxy {
            let _ = writeln!(md, "| {} | {} |", cell(name), count);
        }
        let _ = writeln!(md);
    }

    // Notes.
    let _ = writeln!(md, "## Notes\n");
    if s.notes.is_empty() {
        let _ = writeln!(md, "None.\n");
    } else {
        for note in &s.notes {
            let _ = writeln!(md, "- {}", one_line(note));
        }
        let _ = writeln!(md);
    }

    // Violations.
    let _ = writeln!(md, "## Violations\n");
    if s.violations.is_empty() {
        let _ = writeln!(md, "None.\n");
    } else {
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for v in &s.violations {
            *kinds.entry(v.kind.as_str()).or_default() += 1;
        }
        let by_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} × {n}")).collect();
        let _ = writeln!(
            md,
            "{} violation(s): {}.\n",
            s.violations.len(),
            by_kind.join(", ")
        );
        let mut sorted: Vec<&Violation> = s.violations.iter().collect();
        sorted.sort_by_key(|v| v.cycle); // stable: keeps discovery order within a cycle
        for v in sorted {
            let seed = if v.seed == s.seed {
                String::new()
            } else {
                format!(" (seed {})", v.seed)
            };
            if v.detail.contains('\n') {
                let _ = writeln!(
                    md,
                    "- cycle {}{}: **{}** {}:",
                    v.cycle,
                    seed,
                    one_line(&v.kind),
                    code_span(&v.path)
                );
                let fence = fence_for(&v.detail);
                let _ = writeln!(md, "\n  {fence}");
                for line in v.detail.lines() {
                    let _ = writeln!(md, "  {line}");
                }
                let _ = writeln!(md, "  {fence}");
            } else {
                let _ = writeln!(
                    md,
                    "- cycle {}{}: **{}** {}: {}",
                    v.cycle,
                    seed,
                    one_line(&v.kind),
                    code_span(&v.path),
                    v.detail
                );
            }
        }
        let _ = writeln!(md);
    }

    md.push_str(&closing_line(s));
    md.push('\n');
    md
}

fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return format!("{secs} s");
    }
    let whole = secs.round() as u64;
    let (h, m, sec) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{secs:.1} s ({h}h {m:02}m {sec:02}s)")
    } else if m > 0 {
        format!("{secs:.1} s ({m}m {sec:02}s)")
    } else {
        format!("{secs:.1} s")
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| v.to_string())
}

fn join<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Collapses line breaks so a value stays on one markdown line.
fn one_line(s: &str) -> String {
    s.replace("\r\n", " ⏎ ").replace(['\n', '\r'], " ⏎ ")
}

/// A value safe inside a markdown table cell.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

/// An inline code span that survives backticks in the content.
fn code_span(s: &str) -> String {
    let s = one_line(s);
    let ticks = "`".repeat(longest_run(&s, '`') + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') || s.is_empty() {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{s}{pad}{ticks}")
}

fn fence_for(s: &str) -> String {
    "`".repeat((longest_run(s, '`') + 1).max(3))
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut cur) = (0, 0);
    for ch in s.chars() {
        cur = if ch == c { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}

/// Quotes a profile name for the shell if it is not a plain word.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+/:=@".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------
// Plot
// ---------------------------------------------------------------------------------------

/// Registers a system TrueType font as "sans-serif" for plotters' ab_glyph backend, once.
fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = FONT_CANDIDATES
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                format!(
                    "no font for plot.png: none of {} exists; install fonts-dejavu-core \
                     (apt-get install fonts-dejavu-core)",
                    FONT_CANDIDATES.join(", ")
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading font {path}: {e}"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType/OpenType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

fn plot(path: &Path, s: &Summary) -> anyhow::Result<()> {
    ensure_font()?;
    let rpo: Vec<u64> = s.cycles.iter().filter_map(|c| c.rpo_ms).collect();
    let recovery: Vec<u64> = s.cycles.iter().map(|c| c.recovery_ms).collect();

    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(PLOT_SIZE.0 / 2);
    histogram(
        &left,
        "RPO of un-fsynced writes (ms)",
        "RPO (ms)",
        &rpo,
        &RGBColor(214, 96, 77),
    )?;
    histogram(
        &right,
        "Recovery time, kill → ready (ms)",
        "recovery (ms)",
        &recovery,
        &RGBColor(67, 147, 195),
    )?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Bin width and counts: `BINS` equal integer-width bins covering [0, max].
fn bins(values: &[u64]) -> (u64, Vec<u64>) {
    let max = values.iter().copied().max().unwrap_or(0);
    let width = (max / BINS + 1).max(1); // BINS * width > max, so every value has a bin
    let mut counts = vec![0u64; BINS as usize];
    for &v in values {
        let i = ((v / width) as usize).min(counts.len() - 1);
        counts[i] += 1;
    }
    (width, counts)
}

fn histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    values: &[u64],
    color: &RGBColor,
) -> anyhow::Result<()> {
    let (width, counts) = if values.is_empty() {
        (0, Vec::new())
    } else {
        bins(values)
    };
    // Stop the axis after the last bin that can hold data (matters when max < BINS).
    let x_max = match values.iter().max() {
        None => 1000.0, // arbitrary, just so the empty axis reads like milliseconds
        Some(&max) => ((max / width + 1) * width) as f64,
    };
    let top = counts.iter().copied().max().unwrap_or(0);
    let y_max = if values.is_empty() {
        2
    } else {
        top + top / 10 + 1
    };

    let x_desc = if values.is_empty() {
        x_desc.to_string()
    } else {
        format!(
            "{x_desc}   ·   n = {}, p50 = {}, p99 = {}, max = {}",
            values.len(),
            opt(percentile(values, 50.0)),
            opt(percentile(values, 99.0)),
            opt(values.iter().max().copied()),
        )
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0u64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x_desc)
        .y_desc("cycles")
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;

    if values.is_empty() {
        let style = ("sans-serif", 26)
            .into_font()
            .color(&RGBColor(110, 110, 110))
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .plotting_area()
            .draw(&Text::new("no data", (x_max / 2.0, y_max / 2), style))
            .map_err(plot_err)?;
        return Ok(());
    }

    let w = width as f64;
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x0 = i as f64 * w;
                    Rectangle::new([(x0, 0), (x0 + w, c)], color.mix(0.75).filled())
                }),
        )
        .map_err(plot_err)?;
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x0 = i as f64 * w;
                    Rectangle::new([(x0, 0), (x0 + w, c)], color.stroke_width(1))
                }),
        )
        .map_err(plot_err)?;

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(n: u64, fault: &str, rpo: Option<u64>, recovery: u64, violations: u64) -> Cycle {
        Cycle {
            n,
            lane: 0,
            fault: fault.to_string(),
            kill_after_ms: 1000 + n,
            acked: 10,
            unsynced: 4,
            lost_unsynced: u64::from(rpo.is_some()) * 2,
            rpo_ms: rpo,
            recovery_ms: recovery,
            violations,
        }
    }

    fn summary(cycles: Vec<Cycle>, violations: Vec<Violation>) -> Summary {
        Summary {
            profile: "ci".into(),
            seed: 42,
            lanes: 1,
            started: "2025-01-02 03:04:05 UTC".into(),
            duration_s: 3725.4,
            mode: "fuse".into(),
            store: "Garage at http://127.0.0.1:3900 through the fault proxy".into(),
            cycles,
            violations,
            proxy: vec![("dropped".into(), 3), ("5xx".into(), 7)],
            notes: vec!["cluster mode: no Kubernetes API reachable; skipped".into()],
        }
    }

    #[test]
    fn percentile_known_samples() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 100.0), Some(7));

        let ten = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5]; // unsorted on purpose
        assert_eq!(percentile(&ten, 0.0), Some(1));
        assert_eq!(percentile(&ten, 50.0), Some(5));
        assert_eq!(percentile(&ten, 90.0), Some(9));
        assert_eq!(percentile(&ten, 99.0), Some(10));
        assert_eq!(percentile(&ten, 100.0), Some(10));

        let hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50));
        assert_eq!(percentile(&hundred, 90.0), Some(90));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 100.0), Some(100));

        assert_eq!(percentile(&[3, 1, 2], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 250.0), Some(4)); // clamped
        assert_eq!(percentile(&[1, 2, 3, 4], -5.0), Some(1)); // clamped
    }

    #[test]
    fn closing_line_counts_cycles() {
        let s = summary(
            vec![
                cycle(1, "kill during workload", None, 100, 0),
                cycle(2, "kill during workload", Some(5), 120, 2),
                cycle(3, "stale writer", None, 90, 0),
            ],
            vec![],
        );
        assert_eq!(closing_line(&s), "2 passed, 1 failed");
        assert_eq!(closing_line(&summary(vec![], vec![])), "0 passed, 0 failed");

        // A listed violation fails its cycle even if the counter was not bumped,
        // and one naming an unknown cycle still counts as a failure.
        let v = |cycle| Violation {
            cycle,
            seed: 42,
            kind: "lost_ack".into(),
            path: "/a".into(),
            detail: "x".into(),
        };
        let s = summary(
            vec![
                cycle(1, "kill during workload", None, 100, 0),
                cycle(2, "kill during workload", None, 100, 0),
            ],
            vec![v(1), v(1), v(9)],
        );
        assert_eq!(closing_line(&s), "1 passed, 2 failed");
    }

    #[test]
    fn write_full_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let violation = Violation {
            cycle: 2,
            seed: 42,
            kind: "lost_ack".into(),
            path: "/workspace/data/file-17|x".into(),
            detail: "expected sha256 ab12 (4096 bytes), found missing file".into(),
        };
        let mut cycles: Vec<Cycle> = (1..=40)
            .map(|n| {
                let rpo = (n % 3 == 0).then_some(n * 37 % 900);
                cycle(n, "kill during workload", rpo, 800 + n * 13, 0)
            })
            .collect();
        cycles[1].violations = 1; // cycle 2
        cycles.push(cycle(41, "kill during hydration", None, 2400, 0));
        cycles.push(cycle(42, "store outage 20s", Some(1500), 21000, 0));
        let s = summary(cycles, vec![violation]);

        let md = write(dir.path(), &s).expect("write report");
        for f in ["report.md", "report.json", "plot.png"] {
            assert!(dir.path().join(f).is_file(), "{f} missing");
        }
        let on_disk = std::fs::read_to_string(dir.path().join("report.md")).expect("read md");
        assert_eq!(on_disk, md);
        assert_eq!(md.trim_end().lines().last(), Some("41 passed, 1 failed"));
        assert!(md.contains("cove-chaos run --profile ci --seed 42"));
        assert!(md.contains("## Violations"));
        assert!(md.contains("cycle 2: **lost_ack** `/workspace/data/file-17|x`"));
        assert!(md.contains("expected sha256 ab12 (4096 bytes), found missing file"));
        assert!(md.contains("| kill during hydration | 1 | 0 | 0 |"));
        assert!(md.contains("| kill during workload | 40 | 1 | 1 |"));
        assert!(md.contains("cluster mode: no Kubernetes API reachable; skipped"));
        assert!(md.contains("| 5xx | 7 |"));

        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("report.json")).expect("read json"),
        )
        .expect("valid json");
        assert_eq!(json["seed"], 42);
        assert_eq!(json["cycles"].as_array().map(Vec::len), Some(42));
        assert_eq!(json["violations"][0]["kind"], "lost_ack");
        assert_eq!(json["proxy"][1][0], "5xx");

        let png = std::fs::read(dir.path().join("plot.png")).expect("read png");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(png.len() > 10_000, "PNG suspiciously small: {}", png.len());
    }

    #[test]
    fn write_empty_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = summary(vec![], vec![]);
        s.proxy.clear();
        s.notes.clear();
        let md = write(&dir.path().join("nested"), &s).expect("write report");
        assert!(md.contains("## Violations\n\nNone."));
        assert_eq!(md.trim_end().lines().last(), Some("0 passed, 0 failed"));
        let png = std::fs::read(dir.path().join("nested/plot.png")).expect("read png");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.len() > 1_000);
    }

    #[test]
    fn bins_cover_the_range() {
        let (w, c) = bins(&[0, 0, 0]);
        assert_eq!((w, c[0], c.iter().sum::<u64>()), (1, 3, 3));
        let (w, c) = bins(&[0, 19, 20, 399, 400]);
        assert_eq!(w, 21);
        assert_eq!(c.iter().sum::<u64>(), 5);
        assert_eq!(c[19], 2);
    }

    #[test]
    fn markdown_escapes() {
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(cell("a|b\nc"), "a\\|b ⏎ c");
        assert_eq!(shell_word("ci"), "ci");
        assert_eq!(shell_word("my profile"), "'my profile'");
    }
}

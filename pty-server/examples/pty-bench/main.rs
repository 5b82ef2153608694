//! Benchmark of cove-pty: keystroke echo latency, output flood throughput
//! against the raw PTY rate, memory per terminal and 100 concurrent clients.
//!
//! It starts a real cove-sync (watch mode, directory store) and real cove-pty
//! processes from the same target directory (build them first, see
//! scripts/bench-pty.sh) and speaks the protocol of docs/protocol.md over
//! loopback through `cove_pty::client`, the way the browser does
//! (TCP_NODELAY, acks per §7 F2).
//!
//! - `procs`: the servers and what /proc says of them;
//! - `conn`: the bench's connection, at the client's message level;
//! - `measure`: echo latency, flood throughput, one concurrent client;
//! - `report`: the Markdown table and the raw numbers.
//!
//! Prints a Markdown table and the raw numbers. Environment:
//! - `BENCH_QUICK=1`: smaller flood, fewer latency samples.
//! - `BENCH_OUT=file`: also write the Markdown there.
//! - `BENCH_LOG=1`: each server's log on stderr when it stops (a start-up
//!   failure shows the log's tail anyway).
//!
//! Exits non-zero only when the harness itself fails; a missed goal is
//! printed as `MISSED`.

mod conn;
mod measure;
mod procs;
mod report;

use anyhow::{anyhow, bail, Context, Result};
use conn::Conn;
use measure::{echo_latency, flood, one_client, DirectPty};
use procs::{cpu_delta, cpu_secs, rss_kib, Pty, Sidecar};
use report::{latency_rows, mib, pct, sh_output, Report};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const ORIGIN: &str = "http://localhost:7070";
const PROJECT: &str = "bench";

async fn run(quick: bool) -> Result<Report> {
    let (warmup, samples) = if quick { (50, 500) } else { (100, 2000) };
    let flood_in: u64 = if quick { 50_000_000 } else { 200_000_000 };
    let n_terms = 20;
    let n_clients = 100;
    let mut r = Report::default();
    r.raw("mode", if quick { "quick" } else { "full" });
    r.raw("kernel", sh_output("uname -r"));
    r.raw("nproc", sh_output("nproc"));
    r.raw("loadavg_start", sh_output("cat /proc/loadavg"));
    r.raw(
        "cpu_pressure_start",
        sh_output("head -1 /proc/pressure/cpu 2>/dev/null"),
    );
    r.raw(
        "commit",
        sh_output("git rev-parse --short HEAD 2>/dev/null"),
    );

    eprintln!("bench: starting cove-sync and cove-pty");
    let sc = Sidecar::start()?;
    let mut pty = Pty::start(&sc, &[])?;

    // 3. Memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(pty.pid);
    let mut c = Conn::connect(&pty.ide).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let one_conn = rss_kib(pty.pid);
    eprintln!("bench: memory, {n_terms} shells");
    for _ in 0..n_terms {
        let t = c.create(json!({})).await?;
        c.wait_output(t, "$ ", 1, Duration::from_secs(30)).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_terms = rss_kib(pty.pid);
    let per_term = with_terms.saturating_sub(one_conn) as f64 / n_terms as f64;
    r.raw("rss_idle_kib", idle);
    r.raw("rss_one_connection_kib", one_conn);
    r.raw(&format!("rss_{n_terms}_terminals_kib"), with_terms);
    r.raw("rss_per_terminal_kib", format!("{per_term:.1}"));

    // 1. Echo latency.
    eprintln!("bench: echo latency, {samples} samples x 2");
    let kernel = c
        .create(json!({"command": ["sh", "-c", "stty -icanon && exec cat >/dev/null"]}))
        .await?;
    let process = c
        .create(json!({"command": ["sh", "-c", "stty raw -echo && exec cat"]}))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let direct = DirectPty::open()?;
    let (lat_kernel, lat_direct) =
        echo_latency(&mut c, kernel, Some(&direct), warmup, samples).await?;
    let (lat_process, _) = echo_latency(&mut c, process, None, warmup, samples).await?;
    drop(direct);

    // 2. Flood: raw PTY rate first, then through cove-pty.
    let cmd = format!("head -c {flood_in} /dev/zero | base64");
    let wc = sh_output(&format!("{cmd} | wc -lc"));
    let mut it = wc.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    let (lines, bytes) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    // The PTY's onlcr turns every \n into \r\n.
    let pty_bytes = bytes + lines;
    eprintln!("bench: raw PTY rate (script), {pty_bytes} bytes");
    let me0 = cpu_secs("self");
    let t0 = Instant::now();
    let st = Command::new("script")
        .args(["-q", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running script(1) (util-linux/bsdutils)")?;
    let raw_secs = t0.elapsed().as_secs_f64();
    let raw_cpu = cpu_delta(me0, cpu_secs("self"));
    if !st.success() {
        bail!("script -c {cmd:?} failed: {st}");
    }
    eprintln!("bench: flood through cove-pty");
    let f = flood(&pty.ide, pty.pid, &cmd).await?;
    let raw_mbs = pty_bytes as f64 / raw_secs / 1e6;
    let cove_mbs = f.bytes as f64 / f.secs / 1e6;
    let ratio = cove_mbs / raw_mbs;
    r.raw("flood_command", &cmd);
    r.raw("flood_pty_bytes_expected", pty_bytes);
    r.raw("flood_raw_secs", format!("{raw_secs:.3}"));
    r.raw(
        "flood_raw_cpu_secs",
        format!("script+children user+sys={:.2}", raw_cpu.2),
    );
    r.raw("flood_cove_bytes", f.bytes);
    r.raw("flood_cove_secs", format!("{:.3}", f.secs));
    r.raw("flood_cove_frames", f.frames);
    r.raw("flood_cove_acks", f.acks);
    r.raw("flood_cove_avg_frame_bytes", f.bytes / f.frames.max(1));
    r.raw(
        "flood_cove_pty_cpu_secs",
        format!(
            "user={:.2} sys={:.2} children(sh,head,base64)={:.2}",
            f.pty_cpu.0, f.pty_cpu.1, f.pty_cpu.2
        ),
    );
    r.raw(
        "flood_bench_client_cpu_secs",
        format!("user={:.2} sys={:.2}", f.client_cpu.0, f.client_cpu.1),
    );
    r.raw("flood_max_rss_kib", f.max_rss_kib);
    if f.bytes != pty_bytes {
        r.raw(
            "flood_note",
            format!("received {} bytes, expected {pty_bytes}", f.bytes),
        );
    }

    c.close().await;
    pty.stop();
    drop(pty);

    // 4. 100 clients.
    eprintln!("bench: {n_clients} concurrent clients");
    let pty = Pty::start(&sc, &["--max-connections", "200", "--max-terminals", "200"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_b = rss_kib(pty.pid);
    let t0 = Instant::now();
    let results = futures::future::join_all((0..n_clients).map(|n| {
        let ide = pty.ide.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(90), one_client(&ide, n))
                .await
                .map_err(|_| anyhow!("client {n} timed out"))?
        }
    }))
    .await;
    let wall = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_clients = rss_kib(pty.pid);
    let mut times = Vec::new();
    let mut errors = Vec::new();
    let mut clients = Vec::new();
    for res in results {
        match res {
            Ok((cl, d)) => {
                clients.push(cl);
                times.push(d.as_millis() as u64);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    times.sort_unstable();
    r.raw("clients", n_clients);
    r.raw("clients_errors", errors.len());
    if let Some(e) = errors.first() {
        r.raw("clients_first_error", e);
    }
    r.raw("clients_wall_secs", format!("{wall:.3}"));
    r.raw(
        "clients_time_to_echo_ms",
        format!(
            "p50={} p90={} max={}",
            pct(&times, 0.5),
            pct(&times, 0.9),
            pct(&times, 1.0)
        ),
    );
    r.raw("clients_rss_before_kib", idle_b);
    r.raw("clients_rss_after_kib", rss_clients);
    for cl in clients {
        cl.close().await;
    }
    drop(pty);
    drop(sc);
    r.raw("loadavg_end", sh_output("cat /proc/loadavg"));
    r.raw(
        "cpu_pressure_end",
        sh_output("head -1 /proc/pressure/cpu 2>/dev/null"),
    );

    // The table, in the brief's order.
    latency_rows(
        &mut r,
        "kernel echo (cat, -icanon)",
        "latency_kernel_echo",
        &lat_kernel,
    );
    let (b50, b99) = (pct(&lat_direct, 0.5), pct(&lat_direct, 0.99));
    r.row(
        "Baseline: bench's own PTY echo p50 / p99 / max (no cove-pty)",
        format!("{b50} / {b99} / {} µs", pct(&lat_direct, 1.0)),
        "",
        None,
    );
    r.raw(
        "latency_direct_pty_us",
        format!(
            "n={} min={} p50={b50} p90={} p99={b99} p999={} max={}",
            lat_direct.len(),
            pct(&lat_direct, 0.0),
            pct(&lat_direct, 0.9),
            pct(&lat_direct, 0.999),
            pct(&lat_direct, 1.0)
        ),
    );
    latency_rows(
        &mut r,
        "process echo (cat, raw -echo)",
        "latency_process_echo",
        &lat_process,
    );
    r.row(
        "Flood throughput through cove-pty",
        format!("{cove_mbs:.1} MB/s"),
        "",
        None,
    );
    r.row(
        "Flood throughput, raw PTY (script)",
        format!("{raw_mbs:.1} MB/s"),
        "",
        None,
    );
    r.row(
        "Flood ratio cove-pty / raw",
        format!("{ratio:.2}"),
        "≥ 0.80",
        Some(ratio >= 0.8),
    );
    r.row(
        "cove-pty max RSS during flood",
        mib(f.max_rss_kib),
        "",
        None,
    );
    r.row(
        "cove-pty idle RSS (no connection)",
        mib(idle),
        "≤ 10 MiB",
        Some(idle <= 10 * 1024),
    );
    r.row("cove-pty RSS, one connection", mib(one_conn), "", None);
    r.row(
        &format!("cove-pty RSS per terminal ({n_terms} bash)"),
        format!("{:.2} MiB", per_term / 1024.0),
        "≤ 2 MiB",
        Some(per_term <= 2048.0),
    );
    r.row(
        &format!("{n_clients} clients: errors"),
        errors.len().to_string(),
        "0",
        Some(errors.is_empty()),
    );
    r.row(
        &format!("{n_clients} clients: wall time"),
        format!("{wall:.2} s"),
        "",
        None,
    );
    r.row(
        &format!("{n_clients} clients: cove-pty RSS after"),
        mib(rss_clients),
        "",
        None,
    );
    Ok(r)
}

fn main() -> ExitCode {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: harness failure: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let report = match rt.block_on(run(quick)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: harness failure: {e:#}");
            return ExitCode::from(2);
        }
    };
    let title = format!(
        "## cove-pty benchmark ({}, {:.0} s)",
        if quick { "BENCH_QUICK" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    let md = report.markdown(&title);
    print!("{md}");
    if let Some(path) = std::env::var_os("BENCH_OUT") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("bench: writing {}: {e}", PathBuf::from(path).display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

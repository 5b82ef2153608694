//! One run of every scenario, and its Markdown report with the goals.

use super::scenarios::*;
use super::*;
use std::fmt::Write as _;

// ---------------------------------------------------------------------------
// Report

pub(super) fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(super) async fn bench(cfg: &Config) -> Result<String> {
    for b in ["cove-controller", "cove-sync", "cove-pty"] {
        bin(b)?;
    }
    let started = Instant::now();

    // Parts 1-3 on one controller.
    let dir = tempfile::Builder::new()
        .prefix("cove-ctl-bench.")
        .tempdir()?;
    let mut c = Controller::start(dir.path(), "parts1-3")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_idle_kib = c.rss_kib();

    tracing_note(&format!(
        "1. create → prompt, {} samples",
        cfg.prompt_samples
    ));
    let mut prompts = Vec::new();
    for i in 0..cfg.prompt_samples {
        let s = create_to_prompt(&c, i)
            .await
            .with_context(|| format!("create → prompt, sample {}\n{}", i + 1, c.log_tail()))?;
        tracing_note(&format!("  sample {}: {} ms", i + 1, ms(s.total)));
        prompts.push(s);
    }
    let after_part1_kib = c.rss_kib();

    tracing_note(&format!(
        "2. restart of a 20,000-file project, {} samples",
        cfg.restart_samples
    ));
    let restart = restart_big(&c, cfg)
        .await
        .with_context(|| format!("restart\n{}", c.log_tail()))?;
    let after_part2_kib = c.rss_kib();

    tracing_note(&format!(
        "3. preview overhead, {} requests each way",
        cfg.preview_requests
    ));
    let preview = preview_overhead(&c, cfg)
        .await
        .with_context(|| format!("preview overhead\n{}", c.log_tail()))?;
    let after_parts_kib = c.rss_kib();
    let (first_shutdown, first_how, first_left) = c.shutdown_and_check();
    let first_log = c.kept_log();
    drop(c);
    drop(dir);

    tracing_note(&format!(
        "4. fleet: {} projects, {} running",
        cfg.fleet_projects, cfg.fleet_running
    ));
    let f = fleet(cfg).await.context("fleet")?;

    // ----- the table
    let total = sorted(&prompts.iter().map(|s| s.total).collect::<Vec<_>>());
    let (p50, p99, max) = (pct(&total, 0.5), pct(&total, 0.99), pct(&total, 1.0));
    let rs = sorted(&restart.samples);
    let (r50, rmax) = (pct(&rs, 0.5), pct(&rs, 1.0));
    let d = sorted(&preview.direct);
    let g = sorted(&preview.gateway);
    let (d50, d99, g50, g99) = (pct(&d, 0.5), pct(&d, 0.99), pct(&g, 0.5), pct(&g, 0.99));
    let diff = g50 as i64 - d50 as i64;
    let errors = f.create_errors + f.start_errors.len() + f.stop_errors.len();

    let mut o = String::new();
    let _ = writeln!(o, "# cove-controller benchmark\n");
    let _ = writeln!(
        o,
        "{} · commit {} · {} CPUs · {}{}\n",
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cmd_out(
            "git",
            &[
                "-C",
                &repo_root().to_string_lossy(),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        ),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd_out("uname", &["-r"]),
        if cfg.quick { " · **BENCH_QUICK**" } else { "" }
    );
    let _ = writeln!(o, "| # | Measurement | Result | Goal | |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    let _ = writeln!(
        o,
        "| 1 | create (node) → shell prompt over the WebSocket, p50 (n={}) | {} ms | ≤ 500 ms | {} |",
        total.len(),
        ms(p50),
        status(p50 <= 500_000)
    );
    let _ = writeln!(
        o,
        "| 1 | create → prompt, p99 / max | {} / {} ms | p99 ≤ 1500 ms | {} |",
        ms(p99),
        ms(max),
        status(p99 <= 1_500_000)
    );
    let _ = writeln!(
        o,
        "| 2 | restart of a stopped {}-file project → ready, p50 / max (n={}) | {} / {} ms | ≤ 3000 ms | {} |",
        restart.files.0,
        rs.len(),
        ms(r50),
        ms(rmax),
        status(rmax <= 3_000_000)
    );
    let _ = writeln!(
        o,
        "| 3 | preview GET direct, p50 / p99 (n={}) | {} / {} ms | | |",
        d.len(),
        ms3(d50),
        ms3(d99)
    );
    let _ = writeln!(
        o,
        "| 3 | preview GET through the gateway, p50 / p99 | {} / {} ms | | |",
        ms3(g50),
        ms3(g99)
    );
    let _ = writeln!(
        o,
        "| 3 | gateway overhead (p50 difference) | {:.3} ms | ≤ 1 ms | {} |",
        diff as f64 / 1000.0,
        status(diff <= 1000)
    );
    let _ = writeln!(
        o,
        "| 4 | controller RSS idle, no workspace | {:.1} MiB | ≤ 30 MiB | {} |",
        mib(f.idle_kib),
        status(f.idle_kib <= 30 * 1024)
    );
    let _ = writeln!(
        o,
        "| 4 | errors with {} projects, {} running | {} | 0 | {} |",
        cfg.fleet_projects,
        cfg.fleet_running,
        errors,
        status(errors == 0)
    );
    let _ = writeln!(
        o,
        "| 4 | controller RSS, {} stopped + {} running | {:.1} MiB | | |",
        cfg.fleet_projects - cfg.fleet_running,
        cfg.fleet_running,
        mib(f.running_kib)
    );
    let _ = writeln!(
        o,
        "| 4 | {} concurrent starts → all ready | {} ms | | |",
        cfg.fleet_running,
        ms(f.all_ready)
    );

    // ----- raw numbers
    let col = |f: fn(&PromptSample) -> u64| -> String {
        let v = sorted(&prompts.iter().map(f).collect::<Vec<_>>());
        format!("p50 {} · max {}", ms(pct(&v, 0.5)), ms(pct(&v, 1.0)))
    };
    let _ = writeln!(o, "\n## Raw numbers\n");
    let _ = writeln!(o, "Times in ms; RSS is VmRSS (MiB = 1024 KiB).\n");
    let _ = writeln!(o, "**1. Create → prompt** (each sample: POST /api/projects, POST start, WebSocket upgrade + hello through the gateway, term.create attach, OUTPUT until `$` or `#`; then stop and delete)\n");
    let _ = writeln!(
        o,
        "- total, in order: {}",
        list_ms(&prompts.iter().map(|s| s.total).collect::<Vec<_>>())
    );
    let _ = writeln!(o, "- POST /api/projects: {}", col(|s| s.create));
    let _ = writeln!(o, "- POST …/workspace/start: {}", col(|s| s.start));
    let _ = writeln!(
        o,
        "- upgrade + hello (gateway holds it while starting): {}",
        col(|s| s.hello)
    );
    let _ = writeln!(
        o,
        "- upgrade attempts: {}",
        prompts
            .iter()
            .map(|s| s.upgrades.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(o, "- term.create → result: {}", col(|s| s.term));
    let _ = writeln!(o, "- result → prompt: {}", col(|s| s.prompt));
    let _ = writeln!(
        o,
        "- stop afterwards: {} · delete: {}",
        col(|s| s.stop),
        col(|s| s.delete)
    );
    let _ = writeln!(
        o,
        "\n**2. Restart** (reference tree {} files, {} symlinks, {} directories, from {})\n",
        restart.files.0,
        restart.files.1,
        restart.files.2,
        cache_dir().join("nm/node_modules").display()
    );
    let _ = writeln!(
        o,
        "- import: first start → ready {} · `cp -a` into the workspace {} · stop (final flush) {}",
        ms(restart.import_ready),
        ms(restart.copy),
        ms(restart.import_stop)
    );
    let _ = writeln!(
        o,
        "- restart → ready, in order: {} (status polled every 20 ms)",
        list_ms(&restart.samples)
    );
    let _ = writeln!(o, "- history after the import: {} commits after the initial state, {} paths changed in all (files_changed; at most 100 commits listed)",
        restart.commits, restart.committed_paths);
    let _ = writeln!(
        o,
        "- files under node_modules in the workspace after the first restart: {}",
        restart.files_after
    );
    let _ = writeln!(
        o,
        "- `hydration` in the status at ready: {}",
        restart
            .hydration
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        o,
        "- stop after each restart: {} · delete: {}",
        list_ms(&restart.stops),
        ms(restart.delete)
    );
    let _ = writeln!(o, "\n**3. Preview** ({} sequential keep-alive GETs each way, alternating, after {} warm-up each)\n",
        d.len(), cfg.preview_warmup);
    for (name, v) in [("direct", &d), ("gateway", &g)] {
        let _ = writeln!(
            o,
            "- {name}: min {} · p50 {} · p90 {} · p99 {} · max {}",
            ms3(pct(v, 0.0)),
            ms3(pct(v, 0.5)),
            ms3(pct(v, 0.9)),
            ms3(pct(v, 0.99)),
            ms3(pct(v, 1.0))
        );
    }
    let _ = writeln!(
        o,
        "- p99 difference: {:.3}",
        (g99 as i64 - d99 as i64) as f64 / 1000.0
    );
    let _ = writeln!(o, "\n**4. Fleet** (a fresh controller)\n");
    let _ = writeln!(o, "- RSS idle {:.1} MiB · after {} creates {:.1} MiB · with {} running {:.1} MiB · after stopping them {:.1} MiB",
        mib(f.idle_kib), cfg.fleet_projects, mib(f.stopped_kib), cfg.fleet_running, mib(f.running_kib), mib(f.after_stop_kib));
    let _ = writeln!(
        o,
        "- {} creates (sequential): {} · {} errors",
        cfg.fleet_projects,
        ms(f.create_time),
        f.create_errors
    );
    let re = sorted(&f.ready_each);
    let _ = writeln!(
        o,
        "- {} starts (concurrent) → ready: first {} · p50 {} · all {} · {} errors",
        cfg.fleet_running,
        ms(pct(&re, 0.0)),
        ms(pct(&re, 0.5)),
        ms(f.all_ready),
        f.start_errors.len()
    );
    for e in f.start_errors.iter().chain(&f.stop_errors) {
        let _ = writeln!(o, "  - {e}");
    }
    let _ = writeln!(o, "- workspace processes while running: {} (cove-sync + cove-pty), {:.1} MiB RSS in all, {:.1} MiB per workspace",
        f.children, mib(f.children_kib), mib(f.children_kib) / cfg.fleet_running.max(1) as f64);
    let _ = writeln!(
        o,
        "- stop all (concurrent requests): {} · {} errors · children left after: {}",
        ms(f.stop_time),
        f.stop_errors.len(),
        f.children_after_stop
    );
    let _ = writeln!(
        o,
        "- controller shutdown (SIGTERM): {} ms, {} · processes left behind: {}",
        f.shutdown.as_millis(),
        f.shutdown_how,
        f.left_behind.len()
    );
    let _ = writeln!(o, "\n**Controller of parts 1-3**: RSS idle {:.1} MiB · after part 1 {:.1} MiB · after part 2 {:.1} MiB · after part 3 {:.1} MiB; shutdown {} ms, {}; processes left behind: {}",
        mib(first_idle_kib), mib(after_part1_kib), mib(after_part2_kib), mib(after_parts_kib), first_shutdown.as_millis(), first_how, first_left.len());
    for l in first_left.iter().chain(&f.left_behind) {
        let _ = writeln!(o, "  - left behind (sent SIGTERM): {l}");
    }
    let _ = writeln!(
        o,
        "\nWhole run: {:.0} s. Logs of the controllers and their workspaces: {}, {}.",
        started.elapsed().as_secs_f64(),
        first_log.display(),
        f.log.display()
    );
    Ok(o)
}

//! The measured scenarios: create → prompt, restart of a big project,
//! preview overhead through the gateway, and a fleet of workspaces.

use super::*;

// ---------------------------------------------------------------------------
// 1. Create → prompt

#[derive(Default)]
pub(super) struct PromptSample {
    pub(super) total: u64,
    pub(super) create: u64,
    pub(super) start: u64,
    pub(super) hello: u64,
    pub(super) term: u64,
    pub(super) prompt: u64,
    pub(super) upgrades: u32,
    pub(super) stop: u64,
    pub(super) delete: u64,
}

pub(super) async fn create_to_prompt(c: &Controller, i: usize) -> Result<PromptSample> {
    let mut s = PromptSample::default();
    let t0 = Instant::now();
    let id = c.create(&format!("bench prompt {i}")).await?;
    s.create = us_since(t0);
    let t = Instant::now();
    let w = c.start_ws(&id).await?;
    s.start = us_since(t);
    let token = w["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in {w}"))?
        .to_string();

    // The gateway holds the upgrade while the workspace starts; retry in
    // case it still refuses one.
    let t = Instant::now();
    let mut ws = loop {
        s.upgrades += 1;
        match tokio::time::timeout(Duration::from_secs(30), ws_open(c.port, &id, &token)).await {
            Ok(Ok(ws)) => break ws,
            Ok(Err(e)) if t.elapsed() < Duration::from_secs(60) => {
                tracing_note(&format!("upgrade attempt {} for {id}: {e:#}", s.upgrades));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(e.context(format!("no hello through the gateway for {id}"))),
            Err(_) => bail!("upgrade + hello for {id} took over 30 s"),
        }
    };
    s.hello = us_since(t);

    let t = Instant::now();
    let term = loop {
        match ws.create_terminal(json!({"attach": true})).await {
            Ok(term) => break term,
            Err(e) if e.code() == Some("not_ready") && t.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("term.create")),
        }
    };
    s.term = us_since(t);
    let t = Instant::now();
    ws.wait_until("a prompt", Duration::from_secs(30), |c| {
        c.text(term).contains(['$', '#'])
    })
    .await
    .with_context(|| format!("waiting for a prompt; output so far {:?}", ws.text(term)))?;
    s.prompt = us_since(t);
    s.total = us_since(t0);
    ws.close().await;

    let t = Instant::now();
    c.stop_ws(&id).await?;
    s.stop = us_since(t);
    let t = Instant::now();
    c.delete(&id).await?;
    s.delete = us_since(t);
    Ok(s)
}

/// Progress and oddities go to stderr; the report goes to stdout.
pub(super) fn tracing_note(msg: &str) {
    eprintln!("bench: {msg}");
}

// ---------------------------------------------------------------------------
// 2. Restart of a 20,000-file project

pub(super) fn cache_dir() -> PathBuf {
    std::env::var_os("BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cove-bench-cache"))
}

/// (regular files, symlinks, directories) under `dir`.
pub(super) fn count_tree(dir: &Path) -> Result<(u64, u64, u64)> {
    let mut n = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                n.2 += 1;
                stack.push(e.path());
            } else if ft.is_symlink() {
                n.1 += 1;
            } else if ft.is_file() {
                n.0 += 1;
            }
        }
    }
    Ok(n)
}

pub(super) fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// The reference node_modules, built once with
/// ../shared/bench/make-node-modules.sh and kept in the cache.
pub(super) fn reference_tree() -> Result<PathBuf> {
    let nm_dir = cache_dir().join("nm");
    let nm = nm_dir.join("node_modules");
    if nm.join(".package-lock.json").exists() {
        return Ok(nm);
    }
    let tar = nm_dir.join("node-modules.tar");
    if tar.exists() {
        tracing_note(&format!("extracting {}", tar.display()));
        let _ = std::fs::remove_dir_all(&nm);
        run(Command::new("tar").arg("xf").arg(&tar).current_dir(&nm_dir))?;
        return Ok(nm);
    }
    let script = repo_root().join("../shared/bench/make-node-modules.sh");
    let tmp = cache_dir().join("nm.tmp");
    tracing_note(&format!(
        "building the reference tree with {} (npm ci)",
        script.display()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(cache_dir())?;
    run(Command::new("bash")
        .arg(&script)
        .arg(&tmp)
        .current_dir(repo_root()))?;
    let _ = std::fs::remove_dir_all(&nm_dir);
    std::fs::rename(&tmp, &nm_dir)?;
    Ok(nm)
}

pub(super) struct Restart {
    pub(super) files: (u64, u64, u64),
    pub(super) import_ready: u64,
    pub(super) copy: u64,
    pub(super) import_stop: u64,
    /// Commits after the initial state, and the paths they changed.
    pub(super) commits: usize,
    pub(super) committed_paths: u64,
    /// Regular files under node_modules in the workspace after a restart.
    pub(super) files_after: u64,
    pub(super) samples: Vec<u64>,
    pub(super) hydration: Vec<Value>,
    pub(super) stops: Vec<u64>,
    pub(super) delete: u64,
}

pub(super) async fn restart_big(c: &Controller, cfg: &Config) -> Result<Restart> {
    let tree = reference_tree()?;
    let files = count_tree(&tree)?;
    let id = c.create("bench restart 20k").await?;
    let t = Instant::now();
    c.start_ws(&id).await?;
    c.wait_ready(&id, Duration::from_millis(100), Duration::from_secs(120))
        .await?;
    let import_ready = us_since(t);
    let dst = c.workspace_dir(&id);
    if !dst.join("package.json").exists() {
        bail!("{} does not look like the workspace of {id}", dst.display());
    }
    tracing_note(&format!("copying {} files into {}", files.0, dst.display()));
    let t = Instant::now();
    run(Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(dst.join("node_modules")))?;
    let copy = us_since(t);
    let t = Instant::now();
    c.stop_ws(&id).await.context("stop after the import")?;
    let import_stop = us_since(t);
    tracing_note(&format!("import flushed in {} ms", ms(import_stop)));
    // What the store got: the history of the project.
    let h = c
        .expect("GET", &format!("/api/projects/{id}/history"), None, 200)
        .await?;
    let later: Vec<&Value> = h["commits"]
        .as_array()
        .map(|v| v.iter().filter(|c| c["seq"] != 0).collect())
        .unwrap_or_default();
    let commits = later.len();
    let committed_paths = later
        .iter()
        .map(|c| c["files_changed"].as_u64().unwrap_or(0))
        .sum();

    let mut samples = Vec::new();
    let mut hydration = Vec::new();
    let mut stops = Vec::new();
    let mut files_after = 0;
    for i in 0..cfg.restart_samples {
        let t = Instant::now();
        c.start_ws(&id).await?;
        let w = c
            .wait_ready(&id, Duration::from_millis(20), Duration::from_secs(600))
            .await?;
        samples.push(us_since(t));
        hydration.push(w["hydration"].clone());
        tracing_note(&format!(
            "restart {}: {} ms, hydration {}",
            i + 1,
            ms(*samples.last().unwrap_or(&0)),
            w["hydration"]
        ));
        if i == 0 {
            files_after = count_tree(&dst.join("node_modules"))?.0;
        }
        let t = Instant::now();
        c.stop_ws(&id).await?;
        stops.push(us_since(t));
    }
    let t = Instant::now();
    c.delete(&id).await?;
    Ok(Restart {
        files,
        import_ready,
        copy,
        import_stop,
        commits,
        committed_paths,
        files_after,
        samples,
        hydration,
        stops,
        delete: us_since(t),
    })
}

// ---------------------------------------------------------------------------
// 3. Gateway overhead on a preview request

pub(super) struct Preview {
    pub(super) direct: Vec<u64>,
    pub(super) gateway: Vec<u64>,
}

pub(super) async fn get_ok(client: &reqwest::Client, url: &str, host: Option<&str>) -> Result<u64> {
    let t0 = Instant::now();
    let mut rb = client.get(url);
    if let Some(h) = host {
        rb = rb.header("host", h);
    }
    let r = rb.send().await.with_context(|| format!("GET {url}"))?;
    let st = r.status();
    let body = r.bytes().await?;
    let us = us_since(t0);
    if st != 200 || &body[..] != b"ok" {
        bail!(
            "GET {url} (host {host:?}): {st} {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(us)
}

pub(super) async fn preview_overhead(c: &Controller, cfg: &Config) -> Result<Preview> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let app = axum::Router::new().fallback(|| async { "ok" });
        let _ = axum::serve(listener, app).await;
    });

    let id = c.create("bench preview").await?;
    c.start_ws(&id).await?;
    c.wait_ready(&id, Duration::from_millis(100), Duration::from_secs(120))
        .await?;

    let client = || {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .build()
    };
    let (direct_c, gw_c) = (client()?, client()?);
    let direct_url = format!("http://127.0.0.1:{app_port}/");
    let gw_url = format!("http://127.0.0.1:{}/", c.port);
    let gw_host = format!("{app_port}--{id}.app.localhost:{}", c.port);
    let mut p = Preview {
        direct: Vec::with_capacity(cfg.preview_requests),
        gateway: Vec::with_capacity(cfg.preview_requests),
    };
    // Alternating, so both see the same moments of a busy machine.
    for i in 0..cfg.preview_warmup + cfg.preview_requests {
        let d = get_ok(&direct_c, &direct_url, None).await?;
        let g = get_ok(&gw_c, &gw_url, Some(&gw_host)).await?;
        if i >= cfg.preview_warmup {
            p.direct.push(d);
            p.gateway.push(g);
        }
    }
    server.abort();
    c.stop_ws(&id).await?;
    c.delete(&id).await?;
    Ok(p)
}

// ---------------------------------------------------------------------------
// 4. RSS and a fleet of workspaces

pub(super) struct Fleet {
    pub(super) idle_kib: u64,
    pub(super) create_errors: usize,
    pub(super) create_time: u64,
    pub(super) stopped_kib: u64,
    pub(super) start_errors: Vec<String>,
    pub(super) all_ready: u64,
    pub(super) ready_each: Vec<u64>,
    pub(super) running_kib: u64,
    pub(super) children: usize,
    pub(super) children_kib: u64,
    pub(super) stop_time: u64,
    pub(super) stop_errors: Vec<String>,
    pub(super) after_stop_kib: u64,
    pub(super) children_after_stop: usize,
    pub(super) shutdown: Duration,
    pub(super) shutdown_how: String,
    pub(super) left_behind: Vec<String>,
    pub(super) log: PathBuf,
}

pub(super) async fn fleet(cfg: &Config) -> Result<Fleet> {
    let dir = tempfile::Builder::new()
        .prefix("cove-ctl-bench-fleet.")
        .tempdir()?;
    let mut c = Controller::start(dir.path(), "fleet")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = c.rss_kib();

    let t = Instant::now();
    let mut ids = Vec::new();
    let mut create_errors = 0;
    for i in 0..cfg.fleet_projects {
        match c.create(&format!("fleet {i}")).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                create_errors += 1;
                tracing_note(&format!("create {i}: {e:#}"));
            }
        }
    }
    let create_time = us_since(t);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_kib = c.rss_kib();

    let run: Vec<String> = ids.iter().take(cfg.fleet_running).cloned().collect();
    let t = Instant::now();
    let starts = futures::future::join_all(run.iter().map(|id| c.start_ws(id))).await;
    let mut start_errors = Vec::new();
    let mut waiting: Vec<&String> = Vec::new();
    for (id, r) in run.iter().zip(starts) {
        match r {
            Ok(_) => waiting.push(id),
            Err(e) => start_errors.push(format!("start {id}: {e:#}")),
        }
    }
    let mut ready_each = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for id in waiting {
            let w = c.workspace(id).await;
            match w.as_ref().map(|w| w["state"].as_str()) {
                Ok(Some("ready")) => ready_each.push(us_since(t)),
                Ok(Some("failed")) => start_errors.push(format!("{id} failed: {:?}", w.ok())),
                Err(e) => start_errors.push(format!("status of {id}: {e:#}")),
                _ if Instant::now() > deadline => {
                    start_errors.push(format!("{id} not ready after 300 s"));
                }
                _ => still.push(id),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all_ready = us_since(t);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running_kib = c.rss_kib();
    let kids = children_of(c.pid);
    let children_kib = kids.iter().map(|&p| rss_kib(p)).sum();

    let t = Instant::now();
    let stops = futures::future::join_all(run.iter().map(|id| c.stop_ws(id))).await;
    let stop_time = us_since(t);
    let stop_errors: Vec<String> = run
        .iter()
        .zip(stops)
        .filter_map(|(id, r)| r.err().map(|e| format!("stop {id}: {e:#}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_stop_kib = c.rss_kib();
    let children_after_stop = children_of(c.pid).len();
    let (shutdown, shutdown_how, left_behind) = c.shutdown_and_check();
    Ok(Fleet {
        idle_kib,
        create_errors,
        create_time,
        stopped_kib,
        start_errors,
        all_ready,
        ready_each,
        running_kib,
        children: kids.len(),
        children_kib,
        stop_time,
        stop_errors,
        after_stop_kib,
        children_after_stop,
        shutdown,
        shutdown_how,
        left_behind,
        log: c.kept_log(),
    })
}

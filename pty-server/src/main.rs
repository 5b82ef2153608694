//! The cove-pty binary: flags, listeners, shutdown.
//!
//! SIGTERM or SIGINT: new connections are refused (503), every open one is
//! closed with 4004, every terminal session is hung up and then killed,
//! and the process exits once the connections' handlers have ended (their
//! clients answered the close), 5 s after the close at most.

use anyhow::{bail, Context, Result};
use clap::Parser;
use cove_pty::protocol::Limits;
use cove_pty::server::{App, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How long after the close a stop waits for the connections' handlers to
/// end: as long as a connection's own closing handshake (conn.rs), and
/// with the terminals' shutdown well within the controller's 10 s before
/// SIGKILL.
const HANDLERS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "cove-pty",
    version,
    about = "Cove's per-workspace terminal, file and preview server"
)]
struct Args {
    /// Project id this workspace serves; tokens must name it.
    #[arg(long)]
    project: String,
    /// The workspace directory (the sidecar's mount or watched directory).
    #[arg(long, default_value = "/workspace")]
    root: PathBuf,
    /// Base URL of the sync sidecar's control API.
    #[arg(long, default_value = "http://127.0.0.1:7081")]
    sidecar: String,
    /// IDE socket listener (GET /ws).
    #[arg(long, default_value = "0.0.0.0:7080")]
    listen: SocketAddr,
    /// Preview proxy listener.
    #[arg(long, default_value = "0.0.0.0:7082")]
    preview_listen: SocketAddr,
    /// Health, readiness, activity and metrics listener.
    #[arg(long, default_value = "0.0.0.0:7083")]
    admin_listen: SocketAddr,
    /// Origins allowed to open the socket, e.g. http://localhost:7070 (repeatable).
    #[arg(long = "allowed-origin", required_unless_present = "issue_token")]
    allowed_origins: Vec<String>,
    /// Preview hosts are <id>.<domain> and <port>--<id>.<domain>.
    #[arg(long, default_value = "app.localhost")]
    preview_domain: String,
    /// Public preview URL announced in the welcome.
    #[arg(long)]
    preview_url: Option<String>,
    /// Public preview URL for other ports, with a {port} placeholder.
    #[arg(long)]
    preview_port_url: Option<String>,
    /// X-Forwarded-Proto for preview requests that do not carry one.
    #[arg(long, default_value = "http")]
    forwarded_proto: String,
    /// $PORT of the workspace's apps and the preview's default port.
    #[arg(long, default_value_t = 3000)]
    app_port: u16,
    /// Default terminal command, split on whitespace.
    #[arg(long, default_value = "/bin/bash -l")]
    shell: String,
    #[arg(long, default_value_t = 10 << 20)]
    max_file_bytes: u64,
    #[arg(long, default_value_t = 1000)]
    scrollback_lines: usize,
    #[arg(long, default_value_t = 1 << 20)]
    window_bytes: u64,
    #[arg(long, default_value_t = 32)]
    max_connections: usize,
    #[arg(long, default_value_t = 32)]
    max_terminals: usize,
    #[arg(long, default_value_t = 15_000)]
    ping_interval_ms: u64,
    #[arg(long, default_value_t = 45_000)]
    dead_after_ms: u64,
    /// Print a token for --project, signed with COVE_TOKEN_SECRET and valid
    /// for this many seconds, then exit (what the controller does per
    /// request; for operators and scripts).
    #[arg(long, value_name = "TTL_SECS")]
    issue_token: Option<u64>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cove_pty=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let secrets: Vec<Vec<u8>> = std::env::var("COVE_TOKEN_SECRET")
        .context("COVE_TOKEN_SECRET is not set (the token secret shared with the controller)")?
        .split(',')
        .map(|s| s.trim().as_bytes().to_vec())
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() || secrets.iter().any(|s| s.len() < 32) {
        bail!("COVE_TOKEN_SECRET must hold secrets of at least 32 bytes, comma-separated");
    }
    if let Some(ttl) = args.issue_token {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        println!(
            "{}",
            cove_pty::token::sign(&secrets[0], &args.project, now, ttl, None)
        );
        return Ok(());
    }
    // Before any thread exists: no child process may inherit the secret.
    std::env::remove_var("COVE_TOKEN_SECRET");
    if !args.root.is_dir() {
        bail!("workspace root {} is not a directory", args.root.display());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args, secrets))
}

async fn serve(args: Args, secrets: Vec<Vec<u8>>) -> Result<()> {
    // Handlers first: a SIGTERM during start-up must still stop cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let limits = Limits {
        max_file_bytes: args.max_file_bytes,
        scrollback_lines: args.scrollback_lines,
        window_bytes: args.window_bytes.max(64 << 10),
        max_connections: args.max_connections,
        max_terminals: args.max_terminals,
        ping_interval_ms: args.ping_interval_ms,
        dead_after_ms: args.dead_after_ms,
        ..Limits::default()
    };
    let metrics = Arc::new(cove_pty::metrics::Metrics::new());
    let activity = Arc::new(cove_pty::activity::Activity::new());
    let reaper = cove_pty::reaper::Reaper::start().context("starting the reaper")?;
    let files = cove_pty::files::Files::open(&args.root, &limits)
        .with_context(|| format!("opening {}", args.root.display()))?;
    let terms = cove_pty::terminal::Terminals::new(
        cove_pty::terminal::TermConfig {
            shell: args.shell.split_whitespace().map(str::to_string).collect(),
            project: args.project.clone(),
            app_port: args.app_port,
            limits: limits.clone(),
        },
        reaper,
        metrics.clone(),
        activity.clone(),
    );
    let feed = cove_pty::changes::Feed::new(
        std::time::Duration::from_millis(limits.coalesce_ms),
        limits.max_batch_events,
        metrics.clone(),
    );
    let sidecar = cove_pty::sidecar::Sidecar::new(&args.sidecar);
    let ide = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let preview = tokio::net::TcpListener::bind(args.preview_listen)
        .await
        .with_context(|| format!("binding {}", args.preview_listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    let (ide_addr, preview_addr, admin_addr) = (
        ide.local_addr()?,
        preview.local_addr()?,
        admin.local_addr()?,
    );
    let mut reserved = vec![ide_addr.port(), preview_addr.port(), admin_addr.port()];
    if let Some(p) = args
        .sidecar
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
    {
        reserved.push(p);
    }
    let app = Arc::new(App {
        cfg: Config {
            project: args.project.clone(),
            secrets,
            allowed_origins: args.allowed_origins.clone(),
            limits,
            preview_url: args.preview_url.clone(),
            preview_port_url: args.preview_port_url.clone(),
            app_port: args.app_port,
        },
        instance: format!("{:016x}", rand::random::<u64>()),
        files,
        terms: terms.clone(),
        feed: feed.clone(),
        sidecar: sidecar.clone(),
        metrics: metrics.clone(),
        activity: activity.clone(),
        status: parking_lot::Mutex::new(cove_pty::server::status_from(None)),
        ready: Default::default(),
        fenced: Default::default(),
        stopping: Default::default(),
        connections: Default::default(),
        next_conn: std::sync::atomic::AtomicU64::new(1),
        conns: Default::default(),
        handlers: Default::default(),
    });
    tokio::spawn(app.clone().poll_status());
    tokio::spawn(feed.follow(sidecar));
    let preview_cfg = Arc::new(cove_pty::preview::PreviewConfig {
        project: args.project.clone(),
        domain: args.preview_domain.clone(),
        default_port: args.app_port,
        reserved_ports: reserved,
        forwarded_proto: args.forwarded_proto.clone(),
    });
    let ide_app = cove_pty::server::ide_router(app.clone());
    let admin_app = cove_pty::server::admin_router(app.clone());
    let preview_app = cove_pty::preview::router(preview_cfg, activity, metrics);
    // Keystroke echoes are tiny writes: without TCP_NODELAY, Nagle holds
    // them back while earlier output is unacknowledged.
    use axum::serve::ListenerExt;
    let ide = ide.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(ide, ide_app).await });
    tokio::spawn(async move {
        axum::serve(
            preview,
            preview_app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    tokio::spawn(async move { axum::serve(admin, admin_app).await });
    tracing::info!(%ide_addr, %preview_addr, %admin_addr, project = %args.project, "cove-pty listening");
    println!("listening ide={ide_addr} preview={preview_addr} admin={admin_addr}");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: closing connections and ending every terminal session");
    app.stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    app.close_all(
        cove_pty::protocol::close::WORKSPACE_STOPPING,
        "the workspace is stopping",
    );
    let closed = std::time::Instant::now();
    let open = app.handlers.count();
    terms.shutdown().await;
    // Every handler ends once its client has answered the close (conn.rs):
    // the close frames are then delivered. Each client gets HANDLERS_GRACE
    // from the close, the terminals' shutdown included.
    let left = HANDLERS_GRACE.saturating_sub(closed.elapsed());
    if !app.handlers.wait(left).await {
        tracing::warn!(
            open,
            left = app.handlers.count(),
            "stopping without the closing handshake of every connection"
        );
    }
    Ok(())
}

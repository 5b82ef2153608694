//! `cove-controller`: Cove on one machine. Serves the API and the gateway on
//! one port, runs workspaces as local processes, stores projects in a
//! directory (or S3) store.

use anyhow::{Context, Result};
use clap::Parser;
use cove_controller::api::{self, Controller};
use cove_controller::gateway;
use cove_controller::projects::{self, Projects};
use cove_controller::runtime::{LocalConfig, LocalRuntime, Runtime};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "cove-controller",
    version,
    about = "Cove's controller, API and local gateway"
)]
struct Args {
    /// Port of the UI, API and gateway on localhost.
    #[arg(long, default_value_t = 7070)]
    port: u16,
    /// Address to bind (loopback by default: local mode has no auth).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Data directory: the directory store, workspace caches, the token secret.
    #[arg(long, default_value = ".cove-data")]
    data_dir: PathBuf,
    /// Store URL (file:///abs/path or s3://bucket/prefix); default: <data-dir>/store.
    #[arg(long)]
    store: Option<String>,
    /// Directory of templates to import at start.
    #[arg(long, default_value = "templates")]
    templates: PathBuf,
    /// The built browser UI (Vite's output), served on the controller's host.
    #[arg(long, default_value = "frontend/dist")]
    ui_dir: PathBuf,
    /// Where cove-sync and cove-pty are; default: next to this binary.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// How sidecars run: auto (FUSE when possible), fuse or watch.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Domain of workspace hosts: <id>.ide.<domain>, <id>.app.<domain>.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Stop a workspace after this many seconds without activity (0: never).
    #[arg(long, default_value_t = 1800)]
    idle_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cove_controller=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    std::fs::create_dir_all(&a.data_dir)?;
    let data = a.data_dir.canonicalize()?;
    let store_url = match &a.store {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(data.join("store"))?;
            format!("file://{}", data.join("store").display())
        }
    };
    let store = cove_sync::store::open_url(&store_url)
        .await
        .with_context(|| format!("opening the store {store_url}"))?;
    let templates = projects::import_templates(&store, &a.templates)
        .await
        .with_context(|| format!("importing templates from {}", a.templates.display()))?;
    anyhow::ensure!(
        !templates.is_empty(),
        "no templates in {}",
        a.templates.display()
    );
    let secret_file = data.join("token-secret");
    if !secret_file.exists() {
        let s: String = (0..48)
            .map(|_| format!("{:x}", rand::random_range(0..16u8)))
            .collect();
        // Only the controller's user may read the secret that signs tokens.
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_file)?
            .write_all(s.as_bytes())?;
    }
    let token_secret = std::fs::read_to_string(&secret_file)?.trim().to_string();
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("the binary has no directory")?
            .to_path_buf(),
    };
    let mode = match a.mode.as_str() {
        "auto" => if cove_sync::fuse_usable() {
            "fuse"
        } else {
            "watch"
        }
        .to_string(),
        m => m.to_string(),
    };
    let host = format!("localhost:{}", a.port);
    let metrics = Arc::new(cove_controller::metrics::Metrics::new());
    let runtime = LocalRuntime::new(
        LocalConfig {
            bin_dir,
            data_dir: data.clone(),
            store_url,
            mode,
            token_secret: token_secret.clone(),
            allowed_origin: format!("http://{host}"),
            preview_domain: format!("app.{}", a.domain),
            preview_url: format!("http://{{id}}.app.{}:{}/", a.domain, a.port),
            preview_port_url: format!("http://{{port}}--{{id}}.app.{}:{}/", a.domain, a.port),
        },
        metrics.clone(),
    );
    let c = Arc::new(Controller {
        projects: Projects::new(store),
        templates,
        runtime: Box::new(runtime.clone()),
        token_secret,
        host: host.clone(),
        domain: a.domain.clone(),
        proxy: cove_pty::proxy::Proxy::new("http"),
        metrics,
        idle_timeout: (a.idle_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(a.idle_timeout_secs)),
        turns: Default::default(),
        ui: cove_controller::ui::Ui::new(a.ui_dir),
    });
    c.ui.warn_if_missing().await;
    tokio::spawn(api::idle_loop(c.clone()));
    let app = gateway::app(c.clone());
    let listener = tokio::net::TcpListener::bind((a.bind.as_str(), a.port))
        .await
        .with_context(|| format!("binding {}:{}", a.bind, a.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "cove-controller listening");
    println!("listening http://{addr}; the IDE is at http://{host}/");
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    );
    tokio::select! {
        r = serve => r?,
        _ = shutdown_signal() => {}
    }
    tracing::info!("stopping every workspace");
    runtime.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut t), Ok(mut i)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = t.recv() => {}
        _ = i.recv() => {}
    }
}

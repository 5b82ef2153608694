//! `cove-chaos run`: the harness (docs/durability.md). `cove-chaos worker`:
//! the workload it starts inside each workspace's terminal.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Kills Cove workspaces mid-work and checks that no acknowledged write is lost"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run kill cycles and write the report.
    Run {
        /// `ci` (100 cycles, in the test command) or `release` (10,000).
        #[arg(long, default_value = "ci")]
        profile: String,
        /// Override the profile's number of cycles.
        #[arg(long)]
        cycles: Option<u64>,
        /// Seed of every random choice (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Where the report, plot, manifest and logs go.
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
        /// Where cove-sync and cove-pty are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Length of the long store outage, seconds.
        #[arg(long, default_value_t = 20)]
        outage_secs: u64,
        /// Workspaces killed at once (each its own project, proxy and
        /// manifest). Default: 2 for ci, 4 for release.
        #[arg(long)]
        lanes: Option<u64>,
        /// Go on with the stopped run in --out (its run.json decides the
        /// seed, cycles and lanes; the report covers the whole run).
        #[arg(long)]
        resume: bool,
        /// `processes`: workspaces the harness starts itself, on Garage
        /// behind its fault proxy. `controller`: workspaces through a
        /// controller's API, on whatever runtime it has (docs/durability.md).
        #[arg(long, default_value = "processes")]
        target: String,
        /// Controller mode: the controller's base URL.
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        controller: String,
        /// Controller mode: open IDE-socket connections to this address
        /// (default: the controller's, for `*.localhost` hosts).
        #[arg(long)]
        connect_to: Option<String>,
        /// Controller mode: the controller's store URL (the checks export
        /// its head; S3 credentials from COVE_S3_* and AWS_*).
        #[arg(long)]
        store: Option<String>,
        /// Controller mode: `processes` (the local runtime) or `pods`
        /// (delete the workspace's pods, grace period 0).
        #[arg(long, default_value = "processes")]
        kill: String,
        /// `--kill pods`: the namespace (default: the kubeconfig's).
        #[arg(long)]
        namespace: Option<String>,
        /// `--kill pods`: a workspace's pods; `{project}` is its id.
        #[arg(long, default_value = "cove.dev/project={project}")]
        pod_selector: String,
        /// Controller mode: the template of the lanes' projects.
        #[arg(long, default_value = "static")]
        template: String,
        /// Controller mode: the worker's command in the workspace
        /// (default: this binary; an image must have it on PATH).
        #[arg(long)]
        worker: Option<String>,
    },
    /// The workload inside a workspace (started by `run`).
    Worker {
        #[arg(long)]
        root: PathBuf,
        /// The manifest file, or `-`: records on the terminal, each
        /// `begin` acknowledged by the harness on stdin (controller mode).
        #[arg(long)]
        manifest: PathBuf,
        /// Where the run got to (a JSON file written by `run`): versions
        /// to continue from.
        #[arg(long, conflicts_with = "state_json")]
        state: Option<PathBuf>,
        /// The same, inline (controller mode: the harness's files are
        /// elsewhere).
        #[arg(long)]
        state_json: Option<String>,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        cycle: u64,
        #[arg(long)]
        tar: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        tar_files: u64,
        /// Append this worker's errors here (its terminal has no reader).
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cove-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker {
            root,
            manifest,
            state,
            state_json,
            seed,
            cycle,
            tar,
            tar_files,
            log,
        } => {
            if let Some(l) = log {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(l)?;
                // stderr becomes the log file: eprintln! lands there.
                nix::unistd::dup2_stderr(f)?;
            }
            let tar = match tar {
                Some(t) => Some((t, tar_files)),
                None if tar_files > 0 => {
                    Some((cove_chaos::worker::cached_tarball(tar_files)?, tar_files))
                }
                None => None,
            };
            let state = match (state, state_json) {
                (Some(p), _) => serde_json::from_slice(&std::fs::read(&p)?)
                    .with_context(|| format!("reading {}", p.display()))?,
                (None, Some(j)) => serde_json::from_str(&j).context("--state-json")?,
                (None, None) => Default::default(),
            };
            let sink = if manifest.as_os_str() == "-" {
                // Raw: no echo of the harness's acks, no \r added to
                // records, no signals from stray bytes.
                use nix::sys::termios;
                let stdin = std::io::stdin();
                let mut t = termios::tcgetattr(&stdin).context("stdin is not a terminal")?;
                termios::cfmakeraw(&mut t);
                termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &t)?;
                cove_chaos::manifest::Sink::Terminal
            } else {
                cove_chaos::manifest::Sink::File(cove_chaos::manifest::Writer::open(&manifest)?)
            };
            cove_chaos::worker::Worker::new(root, sink, state, seed, cycle, tar)?.run()
        }
        Cmd::Run {
            profile,
            cycles,
            seed,
            out,
            bin_dir,
            outage_secs,
            lanes,
            resume,
            target,
            controller,
            connect_to,
            store,
            kill,
            namespace,
            pod_selector,
            template,
            worker,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "cove_chaos=info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let (default_cycles, default_lanes) = match profile.as_str() {
                "ci" => (100, 2),
                "release" => (10_000, 4),
                p => bail!("unknown profile {p:?}: ci or release"),
            };
            let seed = seed.unwrap_or_else(cove_chaos::manifest::now_ms);
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            };
            for b in ["cove-sync", "cove-pty"] {
                if !bin_dir.join(b).exists() {
                    bail!(
                        "{} not found: build it or pass --bin-dir",
                        bin_dir.join(b).display()
                    );
                }
            }
            if !resume {
                eprintln!(
                    "cove-chaos: profile {profile}, seed {seed}, report in {}",
                    out.display()
                );
            }
            let remote = match target.as_str() {
                "processes" => None,
                "controller" => Some(cove_chaos::remote::RemoteConfig {
                    controller,
                    connect_to,
                    store: store.context(
                        "--target controller needs --store (the controller's store URL)",
                    )?,
                    kill,
                    namespace,
                    pod_selector,
                    template,
                    worker: match worker {
                        Some(w) => w,
                        None => std::env::current_exe()?.display().to_string(),
                    },
                }),
                t => bail!("--target {t:?}: processes or controller"),
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(cove_chaos::run::run(cove_chaos::run::Config {
                profile,
                cycles: cycles.unwrap_or(default_cycles),
                seed,
                out,
                bin_dir,
                outage: std::time::Duration::from_secs(outage_secs),
                tar_files: 2000,
                lanes: lanes.unwrap_or(default_lanes),
                resume,
                remote,
            }))
        }
    }
}

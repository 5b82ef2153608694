//! `cove-sync`: the sync sidecar binary. See `cove-sync --help`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cove_sync::format::{keys, CommitId};
use cove_sync::fsutil::Root;
use cove_sync::hydrate::{self, CleanStop, Owner, Progress};
use cove_sync::journal::Journal;
use cove_sync::snapshot;
use cove_sync::store::{self, DynStore};
use cove_sync::workspace::{self, SyncEngine};
use cove_sync::{api, fuse, watch};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "cove-sync",
    version,
    about = "Cove's workspace filesystem: a FUSE or watched directory journaled to an object store"
)]
struct Cli {
    /// Object store: file:///abs/dir or s3://bucket/prefix (S3 endpoint and
    /// credentials from COVE_S3_ENDPOINT, COVE_S3_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "COVE_STORE", global = true)]
    store: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    /// FUSE when /dev/fuse can be used, watch mode otherwise.
    Auto,
    Fuse,
    Watch,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hydrate a project and keep it in sync until SIGTERM.
    Serve {
        #[arg(long)]
        project: String,
        /// Where the workspace appears (the FUSE mount point, or the watched
        /// directory in watch mode). Emptied and hydrated at start.
        #[arg(long)]
        workspace: PathBuf,
        /// FUSE mode: the local cache directory behind the mount.
        #[arg(long)]
        cache: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        mode: Mode,
        /// Writer epoch (from the controller); default: one more than any claimed.
        #[arg(long)]
        epoch: Option<u64>,
        /// Control API address: host:port or unix:/path.
        #[arg(long, default_value = "127.0.0.1:7081")]
        api: String,
        /// Disable kernel passthrough of reads and writes (for measurements).
        #[arg(long)]
        no_passthrough: bool,
        /// Owner of hydrated files, UID:GID.
        #[arg(long)]
        owner: Option<String>,
        /// Create an empty project if it does not exist.
        #[arg(long)]
        create: bool,
        /// FUSE request threads.
        #[arg(long, default_value_t = 4)]
        fuse_threads: usize,
        /// Commit quiet period, milliseconds.
        #[arg(long, default_value_t = 200)]
        debounce_ms: u64,
        /// Where a clean stop records the state it left the cache in, so the
        /// next start on the same cache skips hydration when nothing changed
        /// (operations.md). Without it every start hydrates from the store.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Write a checkpoint after this many commits (tests and the chaos
        /// harness use small values to exercise checkpoints).
        #[arg(long, default_value_t = 256)]
        checkpoint_every: u64,
    },
    /// Create a project: empty, from a directory, a template or another project.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long, conflicts_with_all = ["template", "fork"])]
        from_dir: Option<PathBuf>,
        #[arg(long, conflicts_with = "fork")]
        template: Option<String>,
        #[arg(long)]
        fork: Option<String>,
    },
    /// Import a directory as a template (replacing an older import).
    ImportTemplate {
        #[arg(long)]
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// List a project's commits, newest first.
    History {
        #[arg(long)]
        project: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Write a project's files (at its head, or a commit EPOCH.SEQ) to a directory.
    Export {
        #[arg(long)]
        project: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        at: Option<String>,
    },
    /// Delete a project's history from the store.
    Delete {
        #[arg(long)]
        project: String,
    },
}

/// Project and template names: safe in host names, keys and paths.
fn check_id(kind: &str, id: &str) -> Result<()> {
    if !keys::valid_id(id) {
        bail!("invalid {kind} id {id:?}: use 1-63 lowercase letters, digits and '-', not at either end");
    }
    Ok(())
}

fn parse_commit(s: &str) -> Result<CommitId> {
    s.parse::<CommitId>()
        .map_err(|e| anyhow::anyhow!("{e}: {s:?}"))
}

async fn open_store(url: &Option<String>) -> Result<DynStore> {
    let url = url
        .as_deref()
        .context("--store (or COVE_STORE) is required")?;
    store::open_url(url)
        .await
        .with_context(|| format!("opening store {url}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fuser=error".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let store = open_store(&cli.store).await?;
    match cli.cmd {
        Cmd::Serve {
            project,
            workspace,
            cache,
            mode,
            epoch,
            api,
            no_passthrough,
            owner,
            create,
            fuse_threads,
            debounce_ms,
            state_file,
            checkpoint_every,
        } => {
            check_id("project", &project)?;
            let owner = owner.map(|o| parse_owner(&o)).transpose()?;
            let cfg = workspace::Config {
                debounce: std::time::Duration::from_millis(debounce_ms),
                checkpoint_every: checkpoint_every.max(1),
                ..Default::default()
            };
            let fcfg = fuse::FuseConfig {
                passthrough: !no_passthrough,
                threads: fuse_threads.max(1),
                ..Default::default()
            };
            serve(
                store,
                &project,
                &workspace,
                cache.as_deref(),
                mode,
                epoch,
                &api,
                fcfg,
                owner,
                create,
                cfg,
                state_file.as_deref(),
            )
            .await
        }
        Cmd::Create {
            project,
            from_dir,
            template,
            fork,
        } => {
            check_id("project", &project)?;
            let j = Journal::new(store.clone(), keys::project_root(&project));
            let t0 = Instant::now();
            let (template_name, fork_name) = (template.clone(), fork.clone());
            if let Some(dir) = from_dir {
                let tree = tree_of_dir(&store, &dir).await?;
                j.create_from_tree(&tree).await?;
            } else if let Some(t) = template {
                check_id("template", &t)?;
                j.create_from(&Journal::new(store.clone(), keys::template_root(&t)))
                    .await
                    .with_context(|| format!("unknown template {t:?}?"))?;
            } else if let Some(src) = fork {
                check_id("project", &src)?;
                j.create_from(&Journal::new(store.clone(), keys::project_root(&src)))
                    .await?;
            } else {
                j.create_from_tree(&cove_sync::tree::Tree::new(true))
                    .await?;
            }
            // Who and what the project came from; the controller extends this.
            let meta = serde_json::json!({
                "id": project,
                "template": template_name,
                "forked_from": fork_name,
                "created_ms": cove_sync::journal::now_ms(),
            });
            store
                .put(&keys::meta(j.root()), bytes::Bytes::from(meta.to_string()))
                .await?;
            println!(
                "created project {project} in {} ms",
                t0.elapsed().as_millis()
            );
            Ok(())
        }
        Cmd::ImportTemplate { name, dir } => {
            check_id("template", &name)?;
            let j = Journal::new(store.clone(), keys::template_root(&name));
            let tree = tree_of_dir(&store, &dir).await?;
            j.delete_all().await?;
            j.create_from_tree(&tree).await?;
            println!("imported template {name}: {} entries", tree.len());
            Ok(())
        }
        Cmd::History { project, limit } => {
            check_id("project", &project)?;
            let j = Journal::new(store, keys::project_root(&project));
            if !j.exists().await? {
                bail!("project {project} does not exist");
            }
            for c in j.history(limit).await? {
                println!("{}\t{}\t{}", c.id, c.time_ms, c.paths.join(" "));
            }
            Ok(())
        }
        Cmd::Export { project, out, at } => {
            check_id("project", &project)?;
            let j = Journal::new(store, keys::project_root(&project));
            let at = at.map(|a| parse_commit(&a)).transpose()?;
            if !j.exists().await? {
                bail!("project {project} does not exist");
            }
            // Export never deletes anything of the user's.
            if std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some()) {
                bail!(
                    "{} is not empty; export writes into a new or empty directory",
                    out.display()
                );
            }
            std::fs::create_dir_all(&out)?;
            let root = Arc::new(Root::open(&out)?);
            let mut chain = j.chain().await?;
            if let Some(at) = at {
                chain = chain
                    .cut(at)
                    .with_context(|| format!("commit {at} is not in the history of {project}"))?;
            }
            let (tree, head) =
                hydrate::hydrate(&j, &chain, root, None, Arc::new(Progress::default())).await?;
            println!(
                "exported {} entries at {head} to {}",
                tree.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Delete { project } => {
            check_id("project", &project)?;
            let n = Journal::new(store, keys::project_root(&project))
                .delete_all()
                .await?;
            println!("deleted {n} objects");
            Ok(())
        }
    }
}

fn parse_owner(s: &str) -> Result<Owner> {
    let (u, g) = s.split_once(':').context("--owner takes UID:GID")?;
    Ok(Owner {
        uid: u.parse().context("bad uid")?,
        gid: g.parse().context("bad gid")?,
    })
}

async fn tree_of_dir(store: &DynStore, dir: &Path) -> Result<cove_sync::tree::Tree> {
    snapshot::tree_of_dir(store, dir)
        .await
        .with_context(|| format!("reading {}", dir.display()))
}

/// A FUSE mount left at `path` by a killed sidecar: detach it. Looked up
/// in /proc/self/mountinfo, not by `stat`: the kernel answers `stat` of a
/// dead mount from its attribute cache for up to a second, so a restart
/// right after a crash would mount on top of it and fail with ENOTCONN.
fn clear_stale_mount(path: &Path) {
    let full = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            match std::fs::canonicalize(parent) {
                Ok(p) => p.join(name),
                Err(_) => return,
            }
        }
        _ => return,
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        // Field 5 is the mount point (octal escapes for space, tab, \n,
        // backslash); the filesystem type follows the " - " separator.
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(mp), Some(fstype)) = (f.get(4), f.get(sep + 1)) else {
            continue;
        };
        if fstype.starts_with("fuse") && Path::new(&unescape_mount(mp)) == full {
            tracing::warn!(path = %full.display(), "detaching a stale FUSE mount");
            let _ = nix::mount::umount2(&full, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    store: DynStore,
    project: &str,
    workspace_dir: &Path,
    cache: Option<&Path>,
    mode: Mode,
    epoch: Option<u64>,
    api_addr: &str,
    fcfg: fuse::FuseConfig,
    owner: Option<Owner>,
    create: bool,
    cfg: workspace::Config,
    state_file: Option<&Path>,
) -> Result<()> {
    // Install the handlers before anything else: a SIGTERM that arrives
    // while hydrating, or right after "ready", must still mean "flush and
    // exit", never the default disposition that kills without a flush.
    let stop = StopSignals::install()?;
    let journal = Journal::new(store.clone(), keys::project_root(project));
    if !journal.exists().await? {
        if create {
            journal
                .create_from_tree(&cove_sync::tree::Tree::new(true))
                .await?;
            tracing::info!(project, "created an empty project");
        } else {
            bail!("project {project} does not exist in {}", store.describe());
        }
    }
    let fuse_mode = match mode {
        Mode::Fuse => true,
        Mode::Watch => false,
        Mode::Auto => cove_sync::fuse_usable(),
    };
    clear_stale_mount(workspace_dir);
    std::fs::create_dir_all(workspace_dir)
        .with_context(|| format!("creating {}", workspace_dir.display()))?;
    let tree_dir = if fuse_mode {
        let c = cache.context("FUSE mode needs --cache DIR (the directory behind the mount)")?;
        std::fs::create_dir_all(c)?;
        c.to_path_buf()
    } else {
        workspace_dir.to_path_buf()
    };
    let root = Root::open(&tree_dir).with_context(|| format!("opening {}", tree_dir.display()))?;
    let tree_dir = std::fs::canonicalize(&tree_dir)?;
    // Taken (and removed) before anything can change the cache.
    let warm = state_file
        .and_then(CleanStop::take)
        .filter(|s| s.project == project && s.dir == tree_dir)
        .map(|s| (s.head, s.stopped_ns));
    let ws = SyncEngine::new(root, if fuse_mode { "fuse" } else { "watch" }, project, cfg);
    let target =
        cove_sync::restore::Target::new(journal.clone(), workspace_dir.to_path_buf(), owner);
    let api_task = api::serve(ws.clone(), Some(Arc::new(target)), api_addr)
        .await
        .with_context(|| format!("binding the control API on {api_addr}"))?;
    let committer = ws
        .start(journal, epoch, owner, warm)
        .await
        .context("starting the workspace")?;
    let rt = tokio::runtime::Handle::current();
    let mut session = None;
    let mut watcher = None;
    if fuse_mode {
        session = Some(
            fuse::mount(ws.clone(), workspace_dir, fcfg, rt.clone())
                .with_context(|| format!("mounting FUSE at {}", workspace_dir.display()))?,
        );
        tracing::info!(mount = %workspace_dir.display(), cache = %tree_dir.display(), "workspace mounted");
    } else {
        watcher = Some(watch::start(ws.clone(), rt.clone()).context("starting the watcher")?);
        ws.scan().await;
        tracing::info!(dir = %workspace_dir.display(), "workspace watched");
    }
    ws.set_ready();
    println!("ready");

    stop.wait().await;
    tracing::info!("shutting down: flushing everything to the store");
    // A last reconciliation catches what no event named (hard links).
    ws.scan().await;
    let first = ws.flush(None).await;
    if let Some(s) = session.take() {
        // Unmount (lazily if something still holds it) so nothing new lands.
        let _ = nix::mount::umount2(workspace_dir, nix::mount::MntFlags::MNT_DETACH);
        drop(s);
    }
    if watcher.take().is_some() {
        // Events still queued died with the watcher: look once more.
        ws.scan().await;
    }
    let last = ws.shutdown().await;
    let _ = committer.await;
    api_task.abort();
    match (first, last) {
        (_, Ok(c)) => {
            tracing::info!(commit = %c, "all changes are in the store");
            let damaged = !ws.progress.damaged.lock().is_empty();
            if let Some(f) = state_file.filter(|_| !damaged) {
                // Files hydrated with missing chunks are zeros where data
                // is missing; only a cold start fetches them again.
                let clean = CleanStop {
                    project: project.to_owned(),
                    head: c,
                    dir: tree_dir.clone(),
                    stopped_ns: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as i64)
                        .unwrap_or(i64::MAX),
                };
                if let Err(e) = clean.save(f) {
                    tracing::warn!(file = %f.display(), error = %e, "cannot record the clean stop; the next start hydrates in full");
                }
            }
            Ok(())
        }
        (_, Err(e)) => bail!("final flush failed: {e}"),
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed; a signal
/// that arrives before [`StopSignals::wait`] is kept, not lost.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

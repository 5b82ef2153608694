//! Watch mode: where /dev/fuse is not available, the workspace is a plain
//! directory and inotify (through `notify`) tells the sync engine what
//! changed.
//!
//! inotify can lose events (queue overflow) and cannot see changes made
//! while it was not yet watching, so the engine's reconciliation scan
//! backs it up: once right after the watcher starts, whenever notify reports
//! an overflow (`Flag::Rescan`), and periodically. Watch mode cannot hold a
//! `fsync(2)` until the store has the data — only FUSE sees fsync — so its
//! durability points are the flush API and the commit window.

use crate::fsutil::join;
use crate::workspace::{ChangeKind, SyncEngine};
use notify::event::{
    AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode,
};
use notify::{Event, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keeps the watcher alive; drop it to stop watching.
pub struct WatchFront {
    _watcher: notify::RecommendedWatcher,
}

fn rel(root: &Path, p: &Path) -> Option<String> {
    let r = p.strip_prefix(root).ok()?.to_str()?;
    crate::tree::valid(r).then(|| r.to_owned())
}

fn mark_tree(ws: &SyncEngine, path: &str) {
    ws.mark_dirty(path);
    if let Ok(names) = ws.root().list(path) {
        for n in names {
            mark_tree(ws, &join(path, &n));
        }
    }
}

fn handle(ws: &Arc<SyncEngine>, root: &Path, rt: &tokio::runtime::Handle, ev: Event) {
    if ev.need_rescan() {
        let w = ws.clone();
        rt.spawn(async move { w.scan().await });
        ws.emit("", ChangeKind::Overflow, None);
        return;
    }
    let paths: Vec<String> = ev.paths.iter().filter_map(|p| rel(root, p)).collect();
    match ev.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if paths.len() == 2 => {
            ws.rename(&paths[0], &paths[1]);
            ws.emit(&paths[1], ChangeKind::Rename, Some(&paths[0]));
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            for p in &paths {
                ws.mark_dirty(p);
                ws.emit(p, ChangeKind::Delete, None);
            }
        }
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Create(CreateKind::Folder) => {
            // A directory that appears whole (moved in) needs its subtree read.
            for p in &paths {
                mark_tree(ws, p);
                ws.emit(p, ChangeKind::Create, None);
            }
        }
        EventKind::Create(_) => {
            for p in &paths {
                ws.mark_dirty(p);
                ws.emit(p, ChangeKind::Create, None);
            }
        }
        EventKind::Remove(
            RemoveKind::Any | RemoveKind::File | RemoveKind::Folder | RemoveKind::Other,
        ) => {
            for p in &paths {
                ws.mark_dirty(p);
                ws.emit(p, ChangeKind::Delete, None);
            }
        }
        EventKind::Modify(_) | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            for p in &paths {
                ws.mark_dirty(p);
                ws.emit(p, ChangeKind::Modify, None);
            }
        }
        _ => {}
    }
}

/// Start watching the workspace's directory. Call after hydration; the
/// initial scan (run by the caller) covers anything written before this.
pub fn start(ws: Arc<SyncEngine>, rt: tokio::runtime::Handle) -> notify::Result<WatchFront> {
    let root: PathBuf = ws.root().path().to_path_buf();
    let r2 = root.clone();
    let w2 = ws.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(ev) => handle(&w2, &r2, &rt, ev),
        Err(e) => {
            tracing::warn!(error = %e, "watch error; rescanning");
            let ws = w2.clone();
            rt.spawn(async move { ws.scan().await });
        }
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    Ok(WatchFront { _watcher: watcher })
}

//! The workspace engine without a mount: group commit, flush semantics,
//! store outages, fencing, large sparse files, damaged stores and hostile
//! journals. The fronts only call `mark_dirty`/`rename`, as these tests do.

mod common;

use bytes::Bytes;
use cove_sync::format::{keys, Op};
use cove_sync::fsutil::Root;
use cove_sync::journal::{Journal, Writer};
use cove_sync::store::{DynStore, FaultStore};
use cove_sync::tree::{Content, Tree};
use cove_sync::workspace::{Config, FlushError, SyncEngine};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Ws {
    ws: Arc<SyncEngine>,
    dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl Ws {
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, body: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        self.ws.mark_dirty(rel);
    }
}

fn cfg() -> Config {
    Config {
        debounce: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        scan_interval: None,
        ..Config::default()
    }
}

async fn open(store: &DynStore, project: &str) -> Ws {
    let dir = tempfile::tempdir().unwrap();
    let ws = SyncEngine::new(Root::open(dir.path()).unwrap(), "test", project, cfg());
    let j = Journal::new(store.clone(), keys::project_root(project));
    let task = ws.start(j, None, None, None).await.unwrap();
    Ws {
        ws,
        dir,
        _task: task,
    }
}

async fn new_project(store: &DynStore) -> String {
    let id = common::unique("p");
    Journal::new(store.clone(), keys::project_root(&id))
        .create_from_tree(&Tree::new(true))
        .await
        .unwrap();
    id
}

async fn stored(store: &DynStore, project: &str) -> Tree {
    Journal::new(store.clone(), keys::project_root(project))
        .load_tree(true, None)
        .await
        .unwrap()
        .0
}

fn inline(t: &Tree, p: &str) -> Option<Vec<u8>> {
    match &t.get(p)?.content {
        Content::Inline { body, .. } => body.as_ref().map(|b| b.to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_commit_by_themselves_and_flush_waits_for_the_store() {
    for (name, store, _g) in common::all_stores().await {
        let id = new_project(&store).await;
        let w = open(&store, &id).await;
        w.write("src/main.rs", b"fn main() {}\n");
        // Without a flush, the commit window takes it to the store.
        let mut ok = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if inline(&stored(&store, &id).await, "src/main.rs").is_some() {
                ok = true;
                break;
            }
        }
        assert!(ok, "[{name}] not committed within 5 s");

        // flush(path) returns only once that content is durable.
        w.write("src/main.rs", b"fn main() { println!(\"hi\"); }\n");
        w.ws.flush(Some(&["src/main.rs".to_string()]))
            .await
            .unwrap();
        assert_eq!(
            inline(&stored(&store, &id).await, "src/main.rs").unwrap(),
            b"fn main() { println!(\"hi\"); }\n",
            "[{name}]"
        );

        // Renames of directories are journaled as renames.
        std::fs::rename(w.path("src"), w.path("lib")).unwrap();
        w.ws.rename("src", "lib");
        w.write("lib/new.rs", b"// new\n");
        std::fs::remove_file(w.path("lib/main.rs")).unwrap();
        w.ws.mark_dirty("lib/main.rs");
        let c = w.ws.flush(None).await.unwrap();
        let t = stored(&store, &id).await;
        assert!(
            t.get("src").is_none() && t.get("lib/main.rs").is_none(),
            "[{name}]"
        );
        assert_eq!(inline(&t, "lib/new.rs").unwrap(), b"// new\n");
        let st = w.ws.status();
        assert_eq!(st.last_commit, c);
        assert!(
            !st.pending && st.dirty == 0 && st.store.healthy,
            "[{name}] {st:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_keeps_changes_pending_and_recovers_by_itself() {
    let (_d, inner) = common::dir_store();
    let fault = FaultStore::new(inner.clone());
    let store: DynStore = Arc::new(fault.clone());
    let id = new_project(&store).await;
    let w = open(&store, &id).await;

    fault.set_down(true);
    w.write("notes.txt", b"written while the store is down");
    let flush = {
        let ws = w.ws.clone();
        tokio::spawn(async move { ws.flush(None).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !flush.is_finished(),
        "flush acknowledged a write the store does not have"
    );
    let st = w.ws.status();
    assert!(st.pending && !st.store.healthy, "{st:?}");
    assert!(
        st.store.error.as_deref().unwrap_or("").contains("injected"),
        "{st:?}"
    );
    // Local writes keep working meanwhile.
    w.write("more.txt", b"also kept");

    fault.set_down(false);
    let c = tokio::time::timeout(Duration::from_secs(20), flush)
        .await
        .expect("flush did not recover")
        .unwrap()
        .unwrap();
    w.ws.flush(None).await.unwrap();
    let t = stored(&inner, &id).await;
    assert_eq!(
        inline(&t, "notes.txt").unwrap(),
        b"written while the store is down"
    );
    assert_eq!(inline(&t, "more.txt").unwrap(), b"also kept");
    assert!(w.ws.status().store.healthy);
    assert!(c.seq >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_project_the_stale_one_never_acknowledges() {
    for (name, store, _g) in common::all_stores().await {
        let id = new_project(&store).await;
        let old = open(&store, &id).await;
        old.write("shared.txt", b"from the old writer");
        old.ws.flush(None).await.unwrap();

        // A new workspace starts on the same project (the old one was not
        // killed: a network partition, a stuck node).
        let new = open(&store, &id).await;
        assert_eq!(
            std::fs::read(new.path("shared.txt")).unwrap(),
            b"from the old writer"
        );

        old.write("shared.txt", b"stale write");
        let err = old.ws.flush(None).await.unwrap_err();
        assert!(matches!(err, FlushError::Fenced), "[{name}] {err:?}");
        assert!(old.ws.status().fenced);
        // Later flushes fail at once too.
        assert!(matches!(old.ws.flush(None).await, Err(FlushError::Fenced)));

        new.write("shared.txt", b"from the new writer");
        new.ws.flush(None).await.unwrap();
        let t = stored(&store, &id).await;
        assert_eq!(
            inline(&t, "shared.txt").unwrap(),
            b"from the new writer",
            "[{name}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_multi_gib_file_round_trips_cheaply() {
    let (_d, store) = common::dir_store();
    let id = new_project(&store).await;
    let w = open(&store, &id).await;
    let size: u64 = 3 << 30;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(w.path("disk.img")).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"tail marker", size - 11).unwrap();
        f.write_all_at(b"head", 0).unwrap();
    }
    w.ws.mark_dirty("disk.img");
    w.write("empty", b"");
    w.ws.flush(None).await.unwrap();
    // Holes cost one shared zero chunk: only a few blobs were stored.
    let blobs = store.list("blobs/", None).await.unwrap();
    assert!(blobs.len() <= 4, "{} blobs", blobs.len());

    drop(w);
    let w2 = open(&store, &id).await;
    let f = std::fs::File::open(w2.path("disk.img")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    let mut buf = [0u8; 11];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut buf, size - 11).unwrap();
    assert_eq!(&buf, b"tail marker");
    f.read_exact_at(&mut buf[..4], 0).unwrap();
    assert_eq!(&buf[..4], b"head");
    // And it stays sparse on disk.
    use std::os::unix::fs::MetadataExt;
    assert!(f.metadata().unwrap().blocks() * 512 < 64 << 20);
    assert_eq!(std::fs::metadata(w2.path("empty")).unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_damages_one_file_and_names_it() {
    let (_d, store) = common::dir_store();
    let id = new_project(&store).await;
    let w = open(&store, &id).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    w.write("big.bin", &big);
    w.write("ok.txt", b"fine");
    w.ws.flush(None).await.unwrap();
    drop(w);
    for k in store.list("blobs/", None).await.unwrap() {
        store.delete(&k).await.unwrap();
    }
    let w2 = open(&store, &id).await;
    let st = w2.ws.status();
    assert!(st.hydrated);
    assert_eq!(st.hydration.damaged.len(), 1, "{st:?}");
    assert!(
        st.hydration.damaged[0].contains("big.bin") && st.hydration.damaged[0].contains("blobs/")
    );
    assert_eq!(std::fs::read(w2.path("ok.txt")).unwrap(), b"fine");
    // The damaged file is not "fixed" by committing zeros over it.
    w2.ws.flush(None).await.unwrap();
    let t = stored(&store, &id).await;
    assert!(matches!(
        t.get("big.bin").unwrap().content,
        Content::Chunks(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_journal_cannot_write_outside_the_workspace() {
    let (_d, store) = common::dir_store();
    let outside = tempfile::tempdir().unwrap();
    let id = new_project(&store).await;
    let j = Journal::new(store.clone(), keys::project_root(&id));
    let (mut wr, _) = Writer::open(j.clone(), None).await.unwrap();
    wr.append(vec![
        Op::Symlink {
            path: "evil".into(),
            target: outside.path().to_str().unwrap().into(),
            mtime: 0,
        },
        Op::Write {
            path: "evil/pwned".into(),
            mode: 0o644,
            mtime: 0,
            size: 1,
            inline: Some(serde_bytes::ByteBuf::from(vec![b'x'])),
            chunks: vec![],
        },
    ])
    .await
    .unwrap();
    // A segment with a `..` path is refused outright.
    let bad = cove_sync::format::Segment {
        header: cove_sync::format::SegmentHeader {
            v: 1,
            epoch: wr.epoch(),
            seq: 2,
            time_ms: 0,
            ops: 1,
        },
        ops: vec![Op::Delete {
            path: "../../etc".into(),
        }],
    };
    let key = keys::segment(j.root(), wr.epoch(), 2);
    store
        .put(&key, cove_sync::format::encode_segment(&bad))
        .await
        .unwrap();
    let err = j.load_tree(false, None).await.unwrap_err();
    assert!(
        err.to_string().contains(&key) || err.to_string().contains("../../etc"),
        "{err}"
    );
    store.delete(&key).await.unwrap();
    drop(wr);

    let w = open(&store, &id).await;
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "wrote outside"
    );
    assert!(Path::new(&w.path("evil")).is_dir());
    assert_eq!(std::fs::read(w.path("evil/pwned")).unwrap(), b"x");
    // A symlink the user makes does not let a commit read outside either.
    std::fs::write(outside.path().join("secret"), b"do not upload").unwrap();
    std::fs::remove_dir_all(w.path("evil")).unwrap();
    std::os::unix::fs::symlink(outside.path(), w.path("evil")).unwrap();
    w.ws.mark_dirty("evil/pwned");
    w.ws.mark_dirty("evil");
    w.ws.mark_dirty("evil/secret");
    w.ws.flush(None).await.unwrap();
    let t = stored(&store, &id).await;
    assert!(t.get("evil/secret").is_none());
    assert!(matches!(
        t.get("evil").unwrap().content,
        Content::Symlink(_)
    ));
    let _ = Bytes::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_flush_paths_are_rejected() {
    let (_d, store) = common::dir_store();
    let id = new_project(&store).await;
    let w = open(&store, &id).await;
    for p in ["../x", "/etc/passwd", "a//b"] {
        assert!(
            matches!(
                w.ws.flush(Some(&[p.to_string()])).await,
                Err(FlushError::BadPath(_))
            ),
            "{p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_change_is_reported_not_silently_dropped() {
    use std::os::unix::ffi::OsStrExt;
    let (_d, store) = common::dir_store();
    let id = new_project(&store).await;
    let w = open(&store, &id).await;
    // A symlink whose target is not UTF-8 cannot be stored.
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"bad\xff"), w.path("link")).unwrap();
    w.ws.mark_dirty("link");
    w.write("fine.txt", b"ok");
    w.ws.flush(None).await.unwrap();
    let st = w.ws.status();
    assert_eq!(st.unreadable.len(), 1, "{st:?}");
    assert_eq!(st.unreadable[0].path, "link");
    assert!(st.unreadable[0].error.contains("UTF-8"), "{st:?}");
    assert!(inline(&stored(&store, &id).await, "fine.txt").is_some());
    // Fixing it clears the report.
    std::fs::remove_file(w.path("link")).unwrap();
    std::os::unix::fs::symlink("fine.txt", w.path("link")).unwrap();
    w.ws.mark_dirty("link");
    w.ws.flush(None).await.unwrap();
    assert!(w.ws.status().unreadable.is_empty());
}

//! The journal against real stores: history across epochs, fencing of a
//! stale writer, checkpoints, O(1) fork, and damage that is named, not fatal.

mod common;

use bytes::Bytes;
use cove_sync::format::{keys, ChunkRef, CommitId, Op};
use cove_sync::journal::{Journal, JournalError, Writer};
use cove_sync::store::{DynStore, FaultStore};
use cove_sync::tree::{Content, Tree};
use serde_bytes::ByteBuf;
use std::sync::Arc;

fn write(path: &str, body: &str) -> Op {
    Op::Write {
        path: path.into(),
        mode: 0o644,
        mtime: 1_000_000_000,
        size: body.len() as u64,
        inline: Some(ByteBuf::from(body.as_bytes().to_vec())),
        chunks: vec![],
    }
}

async fn new_project(store: &DynStore) -> Journal {
    let j = Journal::new(store.clone(), keys::project_root(&common::unique("p")));
    j.create_from_tree(&Tree::new(true)).await.unwrap();
    j
}

fn body(t: &Tree, path: &str) -> Option<String> {
    match &t.get(path)?.content {
        Content::Inline { body: Some(b), .. } => Some(String::from_utf8(b.to_vec()).unwrap()),
        _ => None,
    }
}

#[tokio::test]
async fn history_follows_epochs_and_fences_a_stale_writer() {
    for (name, store, _g) in common::all_stores().await {
        let j = new_project(&store).await;
        let (mut w1, _) = Writer::open(j.clone(), None).await.unwrap();
        w1.append(vec![write("a", "w1-1")]).await.unwrap();
        w1.append(vec![write("b", "w1-2")]).await.unwrap();

        // A second writer takes over while the first is still running.
        let (mut w2, chain) = Writer::open(j.clone(), None).await.unwrap();
        assert!(w2.epoch() > w1.epoch(), "[{name}]");
        assert_eq!(
            chain.head(),
            CommitId {
                epoch: w1.epoch(),
                seq: 2
            },
            "[{name}]"
        );

        // The stale writer's next commit is refused and never acknowledged...
        let err = w1.append(vec![write("a", "stale")]).await.unwrap_err();
        assert!(
            matches!(err, JournalError::Fenced { .. }),
            "[{name}] {err:?}"
        );
        // ...and even though its segment reached the store, it is not history.
        assert!(store
            .exists(&keys::segment(j.root(), w1.epoch(), 3))
            .await
            .unwrap());

        w2.append(vec![write("c", "w2-1")]).await.unwrap();
        let (tree, head) = j.load_tree(true, None).await.unwrap();
        assert_eq!(
            head,
            CommitId {
                epoch: w2.epoch(),
                seq: 3
            },
            "[{name}]"
        );
        assert_eq!(
            body(&tree, "a").as_deref(),
            Some("w1-1"),
            "[{name}] stale write leaked"
        );
        assert_eq!(body(&tree, "b").as_deref(), Some("w1-2"));
        assert_eq!(body(&tree, "c").as_deref(), Some("w2-1"));

        // History lists exactly the acknowledged commits, newest first.
        let h: Vec<CommitId> = j
            .history(10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            h,
            [
                CommitId {
                    epoch: w2.epoch(),
                    seq: 3
                },
                CommitId {
                    epoch: w1.epoch(),
                    seq: 2
                },
                CommitId {
                    epoch: w1.epoch(),
                    seq: 1
                }
            ],
            "[{name}]"
        );

        // A past state can be loaded.
        let (old, _) = j
            .load_tree(
                true,
                Some(CommitId {
                    epoch: w1.epoch(),
                    seq: 1,
                }),
            )
            .await
            .unwrap();
        assert!(old.get("b").is_none());
    }
}

#[tokio::test]
async fn an_explicit_older_epoch_is_refused_at_open() {
    let (_d, store) = common::dir_store();
    let j = new_project(&store).await;
    let (w, _) = Writer::open(j.clone(), Some(10)).await.unwrap();
    assert_eq!(w.epoch(), 10);
    let err = Writer::open(j.clone(), Some(7)).await.err().unwrap();
    assert!(
        matches!(err, JournalError::Fenced { ours: 7, newer: 10 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn checkpoints_shorten_replay_and_fork_is_constant_time() {
    for (name, store, _g) in common::all_stores().await {
        for files in [10usize, 1000] {
            let mut t = Tree::new(true);
            for i in 0..files {
                t.apply(&write(&format!("dir{}/f{i}", i % 7), &format!("body {i}")))
                    .unwrap();
            }
            let src = Journal::new(store.clone(), keys::template_root(&common::unique("tpl")));
            src.create_from_tree(&t).await.unwrap();

            // Fork through a counting store: the request count must not
            // depend on the number of files.
            let counting = FaultStore::new(store.clone());
            let cs: DynStore = Arc::new(counting.clone());
            let dst = Journal::new(cs.clone(), keys::project_root(&common::unique("fork")));
            dst.create_from(&Journal::new(cs.clone(), src.root()))
                .await
                .unwrap();
            assert!(
                counting.calls() <= 8,
                "[{name}] fork of {files} files took {} requests",
                counting.calls()
            );

            let (tree, _) = dst.load_tree(true, None).await.unwrap();
            assert_eq!(tree.len(), t.len(), "[{name}]");
            assert_eq!(body(&tree, "dir3/f3").as_deref(), Some("body 3"));
        }
    }
}

#[tokio::test]
async fn a_corrupt_segment_is_named_and_earlier_states_stay_readable() {
    let (_d, store) = common::dir_store();
    let j = new_project(&store).await;
    let (mut w, _) = Writer::open(j.clone(), None).await.unwrap();
    let c1 = w.append(vec![write("a", "1")]).await.unwrap();
    let c2 = w.append(vec![write("a", "2")]).await.unwrap();
    let key = keys::segment(j.root(), c2.epoch, c2.seq);
    store
        .put(&key, Bytes::from_static(b"CoveSeg1 garbage"))
        .await
        .unwrap();
    let err = j.load_tree(true, None).await.unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");
    let (t, _) = j.load_tree(true, Some(c1)).await.unwrap();
    assert_eq!(body(&t, "a").as_deref(), Some("1"));

    // A missing segment is named too.
    store.delete(&key).await.unwrap();
    let c3 = CommitId {
        epoch: c2.epoch,
        seq: 2,
    };
    let err = j.load_tree(true, Some(c3)).await.unwrap_err();
    assert!(
        matches!(err, JournalError::NoCommit(_)) || err.to_string().contains(&key),
        "{err}"
    );
}

#[tokio::test]
async fn a_chunk_is_checked_against_its_reference() {
    let (_d, store) = common::dir_store();
    let j = new_project(&store).await;
    let data = Bytes::from_static(b"some chunk of a large file");
    let good = ChunkRef {
        hash: cove_sync::snapshot::hash_hex(&data),
        len: data.len() as u64,
    };
    store
        .put(&keys::blob(&good.hash), data.clone())
        .await
        .unwrap();
    assert_eq!(j.chunk(&good).await.unwrap(), data);

    // A blob whose bytes do not match: same length, other content.
    store
        .put(
            &keys::blob(&good.hash),
            Bytes::from_static(b"SOME CHUNK OF A LARGE FILE"),
        )
        .await
        .unwrap();
    let err = j.chunk(&good).await.unwrap_err();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&keys::blob(&good.hash)), "{err}");
    // A length the reference does not record.
    let short = ChunkRef {
        len: good.len + 1,
        ..good.clone()
    };
    store.put(&keys::blob(&good.hash), data).await.unwrap();
    assert!(matches!(
        j.chunk(&short).await,
        Err(JournalError::Corrupt { .. })
    ));

    // Missing: named, except a zero chunk, which reads as zeros.
    store.delete(&keys::blob(&good.hash)).await.unwrap();
    assert!(matches!(
        j.chunk(&good).await,
        Err(JournalError::Missing { .. })
    ));
    let zeros = ChunkRef {
        hash: cove_sync::hydrate::zero_hash(1000),
        len: 1000,
    };
    assert_eq!(j.chunk(&zeros).await.unwrap(), Bytes::from(vec![0u8; 1000]));
}

#[tokio::test]
async fn unknown_project_and_template_are_clear_errors() {
    let (_d, store) = common::dir_store();
    let j = Journal::new(store.clone(), keys::project_root("nope"));
    assert!(matches!(
        j.load_tree(false, None).await,
        Err(JournalError::NoProject(_))
    ));
    let dst = Journal::new(store.clone(), keys::project_root("new"));
    let err = dst
        .create_from(&Journal::new(
            store.clone(),
            keys::template_root("no-such-template"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::NoProject(_)), "{err:?}");
    // Creating twice is refused, not a silent overwrite.
    let p = new_project(&store).await;
    assert!(matches!(
        p.create_from_tree(&Tree::new(true)).await,
        Err(JournalError::Exists(_))
    ));
}

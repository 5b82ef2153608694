//! One suite, every store: the directory store and S3 (Garage). Whatever the
//! journal assumes of a store is asserted here.

mod common;

use bytes::Bytes;
use cove_sync::store::{ObjectStore, S3Config, S3Store, StoreError};

async fn conformance(name: &str, s: &dyn ObjectStore) {
    let ctx = |what: &str| format!("[{name}] {what}");
    assert_eq!(
        s.get("a/missing").await.unwrap(),
        None,
        "{}",
        ctx("missing get")
    );
    assert!(!s.exists("a/missing").await.unwrap());

    s.put("a/b/1", Bytes::from_static(b"one")).await.unwrap();
    s.put("a/b/2", Bytes::from_static(b"two")).await.unwrap();
    s.put("a/c", Bytes::from_static(b"")).await.unwrap();
    s.put("ab/x", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(
        s.get("a/b/1").await.unwrap().as_deref(),
        Some(&b"one"[..]),
        "{}",
        ctx("get")
    );
    assert_eq!(
        s.get("a/c").await.unwrap().as_deref(),
        Some(&b""[..]),
        "{}",
        ctx("empty object")
    );
    assert!(s.exists("a/b/2").await.unwrap());

    // Overwrite is visible at once (read-after-write).
    s.put("a/b/1", Bytes::from_static(b"uno")).await.unwrap();
    assert_eq!(
        s.get("a/b/1").await.unwrap().as_deref(),
        Some(&b"uno"[..]),
        "{}",
        ctx("overwrite")
    );

    // Listing: by prefix (not only whole components), sorted, start_after.
    assert_eq!(
        s.list("a/", None).await.unwrap(),
        ["a/b/1", "a/b/2", "a/c"],
        "{}",
        ctx("list")
    );
    assert_eq!(
        s.list("a", None).await.unwrap(),
        ["a/b/1", "a/b/2", "a/c", "ab/x"],
        "{}",
        ctx("list partial")
    );
    assert_eq!(
        s.list("a/b/", Some("a/b/1")).await.unwrap(),
        ["a/b/2"],
        "{}",
        ctx("start_after")
    );
    assert!(s.list("zz/", None).await.unwrap().is_empty());

    // A big object round-trips byte for byte.
    let big: Vec<u8> = (0..(9u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    s.put("big", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(s.get("big").await.unwrap().unwrap().len(), big.len());
    assert!(s.get("big").await.unwrap().unwrap() == big);

    // Copy inside the store.
    s.copy("a/b/2", "copied/2").await.unwrap();
    assert_eq!(
        s.get("copied/2").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert!(matches!(
        s.copy("a/none", "x").await,
        Err(StoreError::NotFound { .. }) | Err(_)
    ));

    // Conditional create: first succeeds; a second either is refused (the
    // store honours If-None-Match) or overwrites (Garage 2.5). Never an error.
    assert!(s
        .put_if_absent("cond/k", Bytes::from_static(b"first"))
        .await
        .unwrap());
    let second = s
        .put_if_absent("cond/k", Bytes::from_static(b"second"))
        .await
        .unwrap();
    let now = s.get("cond/k").await.unwrap().unwrap();
    if second {
        assert_eq!(&now[..], b"second", "{}", ctx("unconditional overwrite"));
    } else {
        assert_eq!(&now[..], b"first", "{}", ctx("conditional refusal"));
    }

    // Delete, also of a missing key.
    s.delete("a/b/1").await.unwrap();
    s.delete("a/b/1").await.unwrap();
    assert_eq!(s.get("a/b/1").await.unwrap(), None);
    assert_eq!(s.list("a/b/", None).await.unwrap(), ["a/b/2"]);

    // Keys that could escape a directory store are refused everywhere.
    for bad in ["../x", "a/../../x", "/abs", "a//b", "", "a/./b", "a/"] {
        let r = s.put(bad, Bytes::from_static(b"x")).await;
        assert!(
            matches!(r, Err(StoreError::InvalidKey { .. })),
            "{}: {bad:?} -> {r:?}",
            ctx("bad key")
        );
    }
}

#[tokio::test]
async fn every_store_passes_the_conformance_suite() {
    for (name, store, _guard) in common::all_stores().await {
        conformance(name, store.as_ref()).await;
    }
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_error_at_connect() {
    let Some(mut cfg) = common::s3_config() else {
        return;
    };
    cfg.secret_key = Some("definitely-wrong".into());
    let err = S3Store::connect(cfg)
        .await
        .err()
        .expect("connect must fail");
    assert!(matches!(err, StoreError::AccessDenied(_)), "{err:?}");
    assert!(err.to_string().contains("credentials"), "{err}");
}

#[tokio::test]
async fn unreachable_store_is_transient_and_fails_fast() {
    // Nothing listens on port 1 of loopback.
    let cfg = S3Config {
        endpoint: Some("http://127.0.0.1:1".into()),
        region: "garage".into(),
        bucket: "b".into(),
        prefix: String::new(),
        path_style: true,
        access_key: Some("k".into()),
        secret_key: Some("s".into()),
    };
    let t0 = std::time::Instant::now();
    let err = S3Store::connect(cfg)
        .await
        .err()
        .expect("connect must fail");
    assert!(err.is_transient(), "{err:?}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn fault_store_injects_outages() {
    use cove_sync::store::FaultStore;
    let (_d, inner) = common::dir_store();
    let f = FaultStore::new(inner);
    f.put("k", Bytes::from_static(b"v")).await.unwrap();
    f.set_down(true);
    assert!(f.get("k").await.unwrap_err().is_transient());
    f.set_down(false);
    f.set_fail_puts(true);
    assert_eq!(f.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(f.put("k", Bytes::from_static(b"w")).await.is_err());
}

//! Shared test helpers: stores (a directory, and Garage when the test
//! command started one), random names, and a running `cove-sync` process.
#![allow(dead_code)]

pub mod sidecar;

use cove_sync::store::{DirStore, DynStore, S3Config, S3Store};
use cove_testkit::S3Env;
use std::sync::Arc;

pub use cove_testkit::unique;

/// S3 settings of the Garage that `scripts/test.sh` starts. Without them
/// (a plain `cargo test`) S3 cases are skipped, except under CI where that
/// would hide a broken setup.
pub fn s3_config() -> Option<S3Config> {
    let s3 = S3Env::from_env()?;
    Some(S3Config {
        endpoint: Some(s3.endpoint),
        region: s3.region,
        bucket: s3.bucket,
        prefix: unique("t"),
        path_style: true,
        access_key: Some(s3.access_key).filter(|k| !k.is_empty()),
        secret_key: Some(s3.secret_key).filter(|k| !k.is_empty()),
    })
}

/// Environment for a `cove-sync` process to reach the test Garage, and its
/// store URL.
pub fn s3_env(cfg: &S3Config) -> (String, Vec<(&'static str, String)>) {
    (
        format!("s3://{}/{}", cfg.bucket, cfg.prefix),
        vec![
            ("COVE_S3_ENDPOINT", cfg.endpoint.clone().unwrap_or_default()),
            ("COVE_S3_REGION", cfg.region.clone()),
            (
                "AWS_ACCESS_KEY_ID",
                cfg.access_key.clone().unwrap_or_default(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY",
                cfg.secret_key.clone().unwrap_or_default(),
            ),
        ],
    )
}

pub async fn s3_store() -> Option<DynStore> {
    let cfg = s3_config()?;
    Some(Arc::new(
        S3Store::connect(cfg)
            .await
            .expect("connecting to the test Garage"),
    ))
}

pub fn dir_store() -> (tempfile::TempDir, DynStore) {
    let d = tempfile::tempdir().unwrap();
    let s = DirStore::open(d.path().join("store")).unwrap();
    (d, Arc::new(s))
}

/// Every store the suite runs against: the directory store always, Garage
/// when available.
pub async fn all_stores() -> Vec<(&'static str, DynStore, Option<tempfile::TempDir>)> {
    let (d, s) = dir_store();
    let mut v = vec![("dir", s, Some(d))];
    if let Some(s3) = s3_store().await {
        v.push(("s3", s3, None));
    }
    v
}

//! Shared test helpers: stores (a directory, and Garage when the test
//! command started one), random names, and a running `cove-sync` process.
#![allow(dead_code)]

pub mod sidecar;

use cove_sync::store::{DirStore, DynStore, S3Config, S3Store};
use std::sync::Arc;

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// S3 settings of the Garage that `scripts/test.sh` starts. Without them
/// (a plain `cargo test`) S3 cases are skipped, except under CI where that
/// would hide a broken setup.
pub fn s3_config() -> Option<S3Config> {
    let endpoint = std::env::var("COVE_TEST_S3_ENDPOINT").ok();
    let Some(endpoint) = endpoint else {
        if std::env::var("CI").is_ok() {
            panic!(
                "COVE_TEST_S3_ENDPOINT is not set under CI: run the tests through scripts/test.sh"
            );
        }
        eprintln!("COVE_TEST_S3_ENDPOINT not set: skipping the S3 case (run scripts/test.sh)");
        return None;
    };
    Some(S3Config {
        endpoint: Some(endpoint),
        region: std::env::var("COVE_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        bucket: std::env::var("COVE_TEST_S3_BUCKET").unwrap_or_else(|_| "cove-test".into()),
        prefix: unique("t"),
        path_style: true,
        access_key: std::env::var("COVE_TEST_S3_ACCESS_KEY").ok(),
        secret_key: std::env::var("COVE_TEST_S3_SECRET_KEY").ok(),
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

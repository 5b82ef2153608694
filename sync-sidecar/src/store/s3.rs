//! S3-compatible object store through aws-sdk-s3.
//!
//! Path-style addressing and an explicit endpoint make it work with Garage,
//! MinIO and R2 as well as AWS. Timeouts are short on purpose: the journal
//! retries with its own backoff and reports "pending" honestly, so a hung
//! request must fail fast rather than stall every flush behind it.

use super::{check_key, ObjectStore, StoreError, StoreResult};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::time::Duration;

/// Where and how to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:3900`; `None` uses AWS's own endpoints.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing '/').
    pub prefix: String,
    pub path_style: bool,
    /// Explicit credentials; `None` uses the AWS default chain (env, profile,
    /// instance metadata).
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

impl S3Config {
    /// Read `COVE_S3_ENDPOINT`, `COVE_S3_REGION` (default `us-east-1`),
    /// `COVE_S3_PATH_STYLE` (default: on when an endpoint is set) and the
    /// standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub fn from_env(bucket: &str) -> Self {
        let endpoint = std::env::var("COVE_S3_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty());
        let path_style = match std::env::var("COVE_S3_PATH_STYLE") {
            Ok(v) => v != "0" && v != "false",
            Err(_) => endpoint.is_some(),
        };
        Self {
            region: std::env::var("COVE_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
            bucket: bucket.to_owned(),
            prefix: String::new(),
            path_style,
            access_key: std::env::var("AWS_ACCESS_KEY_ID").ok(),
            secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            endpoint,
        }
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Store {
    /// Build a client and check, with one request, that the bucket exists
    /// and the credentials work: a wrong key is a clear error at start, not a
    /// stream of failed commits later.
    pub async fn connect(cfg: S3Config) -> StoreResult<Self> {
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let mut b = match (&cfg.access_key, &cfg.secret_key) {
            (Some(ak), Some(sk)) => aws_sdk_s3::config::Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(ak, sk, None, None, "cove")),
            _ => {
                let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
                aws_sdk_s3::config::Builder::from(&shared)
            }
        };
        b = b
            .region(Region::new(cfg.region.clone()))
            .force_path_style(cfg.path_style)
            .timeout_config(timeouts)
            // Checksums only where the API demands them: older
            // S3-compatible servers reject the newer default trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        let client = Client::from_conf(b.build());
        let store = Self {
            client,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.trim_matches('/').to_owned(),
            endpoint: cfg.endpoint.clone().unwrap_or_else(|| "aws".into()),
        };
        store
            .client
            .head_bucket()
            .bucket(&store.bucket)
            .send()
            .await
            .map_err(|e| map_err(&format!("bucket {}", store.bucket), e))?;
        Ok(store)
    }

    fn full_key(&self, key: &str) -> StoreResult<String> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn strip<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .and_then(|s| s.strip_prefix('/'))
                .unwrap_or(full)
        }
    }
}

/// One place where S3 errors become store errors.
fn map_err<E>(what: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status_of(&err);
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            StoreError::Unavailable(format!("{what}: {}", err_chain(&err)))
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            match (code, status) {
                (
                    "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "Forbidden",
                    _,
                )
                | (_, Some(401 | 403)) => StoreError::AccessDenied(format!(
                    "{what}: HTTP {} {code} {msg}",
                    status.unwrap_or(0)
                )),
                ("NoSuchBucket", _) | (_, Some(404)) => {
                    StoreError::Other(format!("{what}: no such bucket or key (HTTP 404)"))
                }
                (_, Some(s)) if s >= 500 => {
                    StoreError::Unavailable(format!("{what}: HTTP {s} {code} {msg}"))
                }
                _ => {
                    StoreError::Other(format!("{what}: HTTP {} {code} {msg}", status.unwrap_or(0)))
                }
            }
        }
        _ => StoreError::Other(format!("{what}: {}", err_chain(&err))),
    }
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        SdkError::ResponseError(re) => Some(re.raw().status().as_u16()),
        _ => None,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let full = self.full_key(key)?;
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await;
        match resp {
            Ok(out) => {
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("reading {key}: {e}")))?;
                Ok(Some(body.into_bytes()))
            }
            Err(e) => {
                if let SdkError::ServiceError(se) = &e {
                    if se.err().is_no_such_key() {
                        return Ok(None);
                    }
                }
                if status_of(&e) == Some(404) {
                    return Ok(None);
                }
                Err(map_err(key, e))
            }
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        let full = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<bool> {
        let full = self.full_key(key)?;
        let resp = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .body(ByteStream::from(body))
            .send()
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(412) => Ok(false),
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn exists(&self, key: &str) -> StoreResult<bool> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<Vec<String>> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let mut out = Vec::new();
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix);
        if let Some(sa) = start_after {
            req = req.start_after(self.full_key(sa)?);
        }
        let mut pages = req.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err(prefix, e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    out.push(self.strip(k).to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_err(key, e)),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<()> {
        let src = self.full_key(from)?;
        let dst = self.full_key(to)?;
        // Keys are checked to be plain printable paths; only the characters
        // that are special in a URL need escaping in the copy source.
        let escaped: String = src
            .chars()
            .map(|c| match c {
                ' ' => "%20".to_owned(),
                '%' => "%25".to_owned(),
                '+' => "%2B".to_owned(),
                '?' => "%3F".to_owned(),
                '#' => "%23".to_owned(),
                c => c.to_string(),
            })
            .collect();
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(&dst)
            .copy_source(format!("{}/{escaped}", self.bucket))
            .send()
            .await
            .map_err(|e| map_err(from, e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }
}

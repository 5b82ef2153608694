//! Client of the sync sidecar's control API (docs/sync-api.md): flush for
//! durable acknowledgements, status and readiness, and the change feed.

use crate::protocol::CommitId;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("the sidecar is unreachable or unavailable: {0}")]
    Unavailable(String),
    #[error("fenced: a newer workspace owns this project")]
    Fenced,
    #[error("the sidecar refused the flush: {0}")]
    Refused(String),
}

#[derive(Clone)]
pub struct Sidecar {
    base: String,
    http: reqwest::Client,
    /// Long-lived client without a timeout, for the endless change feed.
    stream: reqwest::Client,
}

#[derive(Debug, Deserialize)]
pub struct ChangeEvent {
    pub path: String,
    pub kind: String,
    #[serde(default)]
    pub from: Option<String>,
}

impl Sidecar {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let stream = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Sidecar {
            base: base.trim_end_matches('/').to_string(),
            http,
            stream,
        }
    }

    /// Waits until `paths` are in the store (the sidecar's POST /flush).
    pub async fn flush(&self, paths: &[String]) -> Result<CommitId, FlushError> {
        let r = self
            .http
            .post(format!("{}/flush", self.base))
            .json(&serde_json::json!({ "paths": paths }))
            .send()
            .await
            .map_err(|e| FlushError::Unavailable(e.to_string()))?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status.as_u16() {
            200 => serde_json::from_value(body["commit"].clone())
                .map_err(|e| FlushError::Refused(format!("unexpected flush answer: {e}"))),
            409 => Err(FlushError::Fenced),
            503 => Err(FlushError::Unavailable(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("503")
                    .to_string(),
            )),
            _ => Err(FlushError::Refused(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string(),
            )),
        }
    }

    pub async fn status(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/status", self.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Opens the change feed; yields raw lines until the sidecar ends it.
    pub async fn changes(&self) -> Result<reqwest::Response, reqwest::Error> {
        self.stream
            .get(format!("{}/changes", self.base))
            .send()
            .await?
            .error_for_status()
    }
}

//! API errors: `{"error": {"code", "message", "details?"}}` (docs/api.md §2),
//! and the one mapping from the runtime's errors to them ([`Step`]).

use crate::runtime::RuntimeError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such project or route",
        )
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
            .with(json!({ "field": field }))
    }

    pub fn store(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "store error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store did not answer: {e}"),
        )
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

/// What the API asked of the runtime when it failed: a sidecar that does
/// not answer is a store problem to a fork's flush (`503`, retry) but a
/// failed step to a restore (`502`), as api.md §2 lists them.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Start or stop.
    Lifecycle,
    /// The flush of a running workspace before a fork (api.md §5.2), which
    /// may take `wait`.
    Flush { wait: std::time::Duration },
    /// The restore of a running workspace (api.md §5.5); its sidecar's
    /// error codes become the API's.
    Restore { commit: &'a str, path: &'a str },
}

impl ApiError {
    /// The status, code and details a runtime error answers with.
    pub fn runtime(step: Step<'_>, e: RuntimeError) -> Self {
        let failed = |m: String| ApiError::new(StatusCode::BAD_GATEWAY, "workspace_failed", m);
        match (step, e) {
            (_, e @ RuntimeError::Busy { state }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
                    .with(json!({ "state": state }))
            }
            (Step::Flush { .. }, RuntimeError::Sidecar { status, body, .. }) => {
                let reason = &body["error"]["message"];
                if status == 409 {
                    failed(format!("the workspace's flush was refused: {reason}"))
                        .with(json!({ "reason": reason }))
                } else {
                    ApiError::store(format!("the workspace's flush failed: {reason}"))
                }
            }
            (Step::Flush { wait }, e) => {
                ApiError::store(format!("the workspace did not flush within {wait:?}: {e}"))
            }
            (Step::Restore { commit, path }, RuntimeError::Sidecar { body, .. }) => {
                let code = body["error"]["code"].as_str().unwrap_or("");
                let msg = body["error"]["message"].as_str().unwrap_or("").to_string();
                match code {
                    "unknown_commit" => ApiError::new(StatusCode::NOT_FOUND, "unknown_commit", msg)
                        .with(json!({ "commit": commit })),
                    "path_not_found" => ApiError::new(StatusCode::NOT_FOUND, "path_not_found", msg)
                        .with(json!({ "path": path })),
                    "bad_path" => ApiError::new(StatusCode::BAD_REQUEST, "bad_path", msg)
                        .with(json!({ "path": path })),
                    "not_ready" => ApiError::new(StatusCode::CONFLICT, "conflict", msg)
                        .with(json!({"state": "starting"})),
                    "unavailable" => ApiError::store(msg),
                    _ => failed(format!("the workspace could not restore: {msg}"))
                        .with(json!({ "reason": msg })),
                }
            }
            (_, e) => failed(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            err["details"] = d;
        }
        let mut r = (self.status, axum::Json(json!({ "error": err }))).into_response();
        r.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::State;

    fn sidecar(path: &str, status: u16, code: &str) -> RuntimeError {
        RuntimeError::Sidecar {
            path: path.into(),
            status,
            body: json!({"error": {"code": code, "message": "m"}}),
        }
    }

    /// Every step's answer for each kind of runtime failure (api.md §2).
    #[test]
    fn runtime_errors_map_per_step() {
        let flush = Step::Flush {
            wait: std::time::Duration::from_secs(30),
        };
        let restore = Step::Restore {
            commit: "2.1",
            path: "a.txt",
        };
        let unreachable = || RuntimeError::Unreachable {
            path: "/x".into(),
            reason: "refused".into(),
        };
        let busy = || RuntimeError::Busy {
            state: State::Stopping,
        };
        let cases: Vec<(Step, RuntimeError, u16, &str, Option<Value>)> = vec![
            (
                Step::Lifecycle,
                busy(),
                409,
                "conflict",
                Some(json!({"state": "stopping"})),
            ),
            (
                Step::Lifecycle,
                RuntimeError::NoFreePort,
                502,
                "workspace_failed",
                None,
            ),
            (
                flush,
                busy(),
                409,
                "conflict",
                Some(json!({"state": "stopping"})),
            ),
            (
                flush,
                sidecar("/flush", 409, "fenced"),
                502,
                "workspace_failed",
                Some(json!({"reason": "m"})),
            ),
            (
                flush,
                sidecar("/flush", 503, "unavailable"),
                503,
                "store_unavailable",
                None,
            ),
            (flush, unreachable(), 503, "store_unavailable", None),
            (
                flush,
                RuntimeError::NotRunning {
                    state: State::Starting,
                },
                503,
                "store_unavailable",
                None,
            ),
            (
                restore,
                sidecar("/restore", 404, "unknown_commit"),
                404,
                "unknown_commit",
                Some(json!({"commit": "2.1"})),
            ),
            (
                restore,
                sidecar("/restore", 404, "path_not_found"),
                404,
                "path_not_found",
                Some(json!({"path": "a.txt"})),
            ),
            (
                restore,
                sidecar("/restore", 400, "bad_path"),
                400,
                "bad_path",
                Some(json!({"path": "a.txt"})),
            ),
            (
                restore,
                sidecar("/restore", 409, "not_ready"),
                409,
                "conflict",
                Some(json!({"state": "starting"})),
            ),
            (
                restore,
                sidecar("/restore", 503, "unavailable"),
                503,
                "store_unavailable",
                None,
            ),
            (
                restore,
                sidecar("/restore", 500, "io"),
                502,
                "workspace_failed",
                Some(json!({"reason": "m"})),
            ),
            (restore, unreachable(), 502, "workspace_failed", None),
        ];
        for (step, e, status, code, details) in cases {
            let what = format!("{step:?} {e:?}");
            let a = ApiError::runtime(step, e);
            assert_eq!((a.status.as_u16(), a.code), (status, code), "{what}");
            assert_eq!(a.details, details, "{what}");
        }
    }
}

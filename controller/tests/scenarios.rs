//! The API's scenarios in-process: the whole listener's router (gateway and
//! API) over a directory store in a temporary directory, with a scripted
//! [`FakeRuntime`] instead of processes. Each answer is checked against
//! docs/openapi.yaml. The user stories with real workspaces are
//! local_mode.rs.

mod openapi;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use cove_controller::api::{idle_loop, Controller, Shared};
use cove_controller::runtime::fake::{Call, FakeRuntime, Op};
use cove_controller::runtime::RuntimeError;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Only a guard against hanging; no test waits this long when it passes.
const GUARD: Duration = Duration::from_secs(5);

struct Env {
    app: Router,
    rt: FakeRuntime,
    c: Shared,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    env_with(None).await
}

async fn env_with(idle_timeout: Option<Duration>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates/blank");
    std::fs::create_dir_all(t.join("files")).unwrap();
    std::fs::write(
        t.join("template.json"),
        r#"{"description": "Nothing yet", "language": "text"}"#,
    )
    .unwrap();
    std::fs::write(t.join("files/README.md"), "# hello\n").unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = cove_sync::store::open_url(&format!("file://{}", store_dir.display()))
        .await
        .unwrap();
    let templates =
        cove_controller::projects::import_templates(&store, &dir.path().join("templates"))
            .await
            .unwrap();
    let rt = FakeRuntime::new();
    let c = Arc::new(Controller {
        projects: cove_controller::projects::Projects::new(store),
        templates,
        runtime: Box::new(rt.clone()),
        token_secret: "test-secret".into(),
        host: "localhost:7070".into(),
        domain: "localhost".into(),
        proxy: cove_pty::proxy::Proxy::new("http"),
        metrics: Arc::new(cove_controller::metrics::Metrics::new()),
        idle_timeout,
        turns: Default::default(),
        ui: cove_controller::ui::Ui::new(dir.path().join("ui")),
    });
    Env {
        app: cove_controller::gateway::app(c.clone()),
        rt,
        c,
        _dir: dir,
    }
}

/// One API request through the router; the answer must match openapi.yaml.
async fn call(app: &Router, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost:7070");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(GUARD, app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} did not answer"))
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    openapi::conforms(method, path, status, &v);
    (status, v)
}

async fn create(app: &Router, name: &str) -> String {
    let body = json!({"name": name, "template": "blank"}).to_string();
    let (s, v) = call(app, "POST", "/api/projects", Some(&body)).await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn state(app: &Router, id: &str) -> String {
    let (s, v) = call(app, "GET", &format!("/api/projects/{id}/workspace"), None).await;
    assert_eq!(s, 200, "{v}");
    v["state"].as_str().unwrap().to_string()
}

fn is_stop(id: &str) -> impl Fn(&Call) -> bool + '_ {
    move |c| matches!(c, Call::Stop { project, .. } if project == id)
}

#[tokio::test]
async fn stop_while_starting_ends_stopped() {
    let e = env().await;
    let id = create(&e.app, "Slow").await;
    let gate = e.rt.hold(Op::Start, &id);
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("starting")), "{v}");
    assert!(v["token"].is_string(), "a start answers a token: {v}");
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/stop"),
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("stopped")), "{v}");
    // The launch finishing late does not bring the workspace back.
    gate.open();
    tokio::task::yield_now().await;
    assert_eq!(state(&e.app, &id).await, "stopped");
    let calls = e.rt.calls_for(&id);
    assert!(
        matches!(
            &calls[..],
            [Call::Start { epoch: Some(_), .. }, Call::Stop { .. }]
        ),
        "{calls:?}"
    );
}

#[tokio::test]
async fn fork_of_a_running_workspace_flushes_first() {
    let e = env().await;
    let id = create(&e.app, "Src").await;
    // Stopped: nothing to flush.
    let (s, _) = call(&e.app, "POST", &format!("/api/projects/{id}/fork"), None).await;
    assert_eq!(s, 201);
    assert!(e.rt.calls_for(&id).is_empty());

    call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/fork"),
        Some(r#"{"name": "Copy"}"#),
    )
    .await;
    assert_eq!(
        (s, v["forked_from"].as_str()),
        (201, Some(id.as_str())),
        "{v}"
    );
    assert!(
        matches!(e.rt.calls_for(&id).last(), Some(Call::SidecarPost { path, .. }) if path == "/flush")
    );

    // A refused flush (a fenced sidecar) stops the fork before any copy.
    let (_, before) = call(&e.app, "GET", "/api/projects", None).await;
    e.rt.answer("/flush", |_, _| {
        Err(RuntimeError::Sidecar {
            path: "/flush".into(),
            status: 409,
            body: json!({"error": {"code": "fenced", "message": "fenced by epoch 9"}}),
        })
    });
    let (s, v) = call(&e.app, "POST", &format!("/api/projects/{id}/fork"), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("workspace_failed")),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["reason"], "fenced by epoch 9");
    // One that does not answer in time is the store's problem: retry.
    e.rt.answer("/flush", |_, _| {
        Err(RuntimeError::Unreachable {
            path: "/flush".into(),
            reason: "operation timed out".into(),
        })
    });
    let (s, v) = call(&e.app, "POST", &format!("/api/projects/{id}/fork"), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    let (_, after) = call(&e.app, "GET", "/api/projects", None).await;
    assert_eq!(before["projects"].as_array().unwrap().len(), 3);
    assert_eq!(after, before, "a failed flush forks nothing");
}

#[tokio::test]
async fn requests_on_one_project_wait_their_turn_and_others_do_not() {
    let e = env().await;
    let (a, b) = (create(&e.app, "A").await, create(&e.app, "B").await);
    for id in [&a, &b] {
        call(
            &e.app,
            "POST",
            &format!("/api/projects/{id}/workspace/start"),
            None,
        )
        .await;
    }
    let gate = e.rt.hold(Op::Stop, &a);
    let app = e.app.clone();
    let path = format!("/api/projects/{a}/workspace/stop");
    let stop_a = tokio::spawn(async move { call(&app, "POST", &path, None).await });
    e.rt.wait_for_call(GUARD, is_stop(&a)).await;
    let app = e.app.clone();
    let path = format!("/api/projects/{a}/workspace/start");
    let start_a = tokio::spawn(async move { call(&app, "POST", &path, None).await });

    // Another project's stop, and reads of this one, do not wait.
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{b}/workspace/stop"),
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("stopped")), "{v}");
    assert_eq!(state(&e.app, &a).await, "stopping");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !start_a.is_finished(),
        "the start ran before the stop ended"
    );
    assert_eq!(e.rt.calls_for(&a).len(), 2, "{:?}", e.rt.calls_for(&a));

    gate.open();
    let (s, v) = stop_a.await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("stopped")), "{v}");
    let (s, v) = start_a.await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("ready")), "{v}");
    let calls = e.rt.calls_for(&a);
    assert!(
        matches!(
            &calls[..],
            [Call::Start { .. }, Call::Stop { .. }, Call::Start { .. }]
        ),
        "{calls:?}"
    );
}

#[tokio::test]
async fn runtime_errors_answer_with_their_codes() {
    let e = env().await;
    let id = create(&e.app, "Err").await;
    let start = format!("/api/projects/{id}/workspace/start");
    let cases = [
        (
            RuntimeError::Spawn {
                program: "cove-sync",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            502,
            "workspace_failed",
        ),
        (RuntimeError::NoFreePort, 502, "workspace_failed"),
        (
            RuntimeError::Busy {
                state: cove_controller::runtime::State::Stopping,
            },
            409,
            "conflict",
        ),
    ];
    for (err, status, code) in cases {
        let msg = err.to_string();
        e.rt.fail_next(Op::Start, &id, err);
        let (s, v) = call(&e.app, "POST", &start, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{v}"
        );
        assert_eq!(v["error"]["message"], msg);
    }
    call(&e.app, "POST", &start, None).await;
    e.rt.fail_next(
        Op::Stop,
        &id,
        RuntimeError::NotReady("cove-pty did not start".into()),
    );
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/stop"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (502, Some("workspace_failed")),
        "{v}"
    );
}

#[tokio::test]
async fn a_missing_project_is_404_and_reaches_no_runtime() {
    let e = env().await;
    for (method, path) in [
        ("POST", "/api/projects/nope-abc123/workspace/start"),
        ("POST", "/api/projects/nope-abc123/workspace/stop"),
        ("GET", "/api/projects/nope-abc123/workspace"),
        ("DELETE", "/api/projects/nope-abc123"),
        ("POST", "/api/projects/nope-abc123/fork"),
    ] {
        let (s, v) = call(&e.app, method, path, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{v}"
        );
    }
    assert!(e.rt.calls().is_empty(), "{:?}", e.rt.calls());
}

#[tokio::test]
async fn delete_of_a_running_project_stops_it_first() {
    let e = env().await;
    let id = create(&e.app, "Doomed").await;
    call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    let gate = e.rt.hold(Op::Stop, &id);
    let app = e.app.clone();
    let path = format!("/api/projects/{id}");
    let delete = tokio::spawn(async move { call(&app, "DELETE", &path, None).await });
    let stop = e.rt.wait_for_call(GUARD, is_stop(&id)).await;
    assert_eq!(
        stop,
        Call::Stop {
            project: id.clone(),
            reason: Some("project deleted".into())
        }
    );
    // Still there while its final flush runs.
    let (s, _) = call(&e.app, "GET", &format!("/api/projects/{id}"), None).await;
    assert_eq!(s, 200);
    gate.open();
    assert_eq!(delete.await.unwrap().0, 204);
    let (s, _) = call(&e.app, "GET", &format!("/api/projects/{id}"), None).await;
    assert_eq!(s, 404);
}

/// The commit a fresh project's history starts at, as `E.S`.
async fn first_commit(app: &Router, id: &str) -> String {
    let (s, v) = call(app, "GET", &format!("/api/projects/{id}/history"), None).await;
    assert_eq!(s, 200, "{v}");
    let c = v["commits"].as_array().unwrap().last().unwrap().clone();
    format!("{}.{}", c["epoch"], c["seq"])
}

#[tokio::test]
async fn restore_goes_to_the_sidecar_only_when_running() {
    let e = env().await;
    let id = create(&e.app, "Hist").await;
    let at = first_commit(&e.app, &id).await;
    let restore = format!("/api/projects/{id}/history/{at}/restore");

    // Stopped: the controller commits it itself.
    let (s, v) = call(&e.app, "POST", &restore, Some("{}")).await;
    assert_eq!((s, v["durable"].as_bool()), (200, Some(true)), "{v}");
    assert!(e.rt.calls_for(&id).is_empty());

    // Running: the sidecar restores through the files.
    call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    e.rt.answer("/restore", |_, body| {
        assert_eq!(body["path"], "README.md");
        Ok(json!({"files_changed": 1, "durable": true, "commit": {"epoch": 2, "seq": 1}}))
    });
    let body = r#"{"path": "README.md"}"#;
    let (s, v) = call(&e.app, "POST", &restore, Some(body)).await;
    assert_eq!((s, v["files_changed"].as_u64()), (200, Some(1)), "{v}");
    let last = e.rt.calls_for(&id).pop();
    assert!(
        matches!(&last, Some(Call::SidecarPost { path, body, .. })
            if path == "/restore" && body["commit"] == at.as_str() && body["wait_ms"] == 30000),
        "{last:?}"
    );

    // The sidecar's error codes become the API's.
    e.rt.answer("/restore", |_, _| {
        Err(RuntimeError::Sidecar {
            path: "/restore".into(),
            status: 404,
            body: json!({"error": {"code": "path_not_found", "message": "no README.md"}}),
        })
    });
    let (s, v) = call(&e.app, "POST", &restore, Some(body)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("path_not_found")),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["path"], "README.md");

    // Neither ready nor stopped: refused.
    let other = create(&e.app, "Starting").await;
    let _gate = e.rt.hold(Op::Start, &other);
    call(
        &e.app,
        "POST",
        &format!("/api/projects/{other}/workspace/start"),
        None,
    )
    .await;
    let at = first_commit(&e.app, &other).await;
    let path = format!("/api/projects/{other}/history/{at}/restore");
    let (s, v) = call(&e.app, "POST", &path, Some("{}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["state"], "starting");
}

#[tokio::test]
async fn an_idle_workspace_is_stopped_by_the_idle_loop() {
    let e = env_with(Some(Duration::from_millis(50))).await;
    let (idle, busy) = (create(&e.app, "Idle").await, create(&e.app, "Busy").await);
    for id in [&idle, &busy] {
        call(
            &e.app,
            "POST",
            &format!("/api/projects/{id}/workspace/start"),
            None,
        )
        .await;
    }
    let quiet = json!({"connections": 0, "last_active_ms": 0, "last_output_ms": 0});
    e.rt.set_activity(&idle, quiet);
    e.rt.set_activity(&busy, json!({"connections": 1, "last_active_ms": 0}));
    let looping = tokio::spawn(idle_loop(e.c.clone()));
    let stop = e.rt.wait_for_call(GUARD, is_stop(&idle)).await;
    looping.abort();
    assert!(
        matches!(&stop, Call::Stop { reason: Some(r), .. } if r.starts_with("idle for")),
        "{stop:?}"
    );
    let (_, v) = call(
        &e.app,
        "GET",
        &format!("/api/projects/{idle}/workspace"),
        None,
    )
    .await;
    assert_eq!(v["state"], "stopped");
    assert!(v["reason"].as_str().unwrap().contains("idle"), "{v}");
    // An open connection keeps the other one running.
    assert!(e.rt.calls_for(&busy).contains(&Call::Activity {
        project: busy.clone()
    }));
    assert_eq!(state(&e.app, &busy).await, "ready");
}

#[tokio::test]
async fn unknown_and_wrong_fields_are_refused() {
    let e = env().await;
    let id = create(&e.app, "Strict").await;
    let at = first_commit(&e.app, &id).await;
    let cases = [
        (
            "POST",
            "/api/projects".to_string(),
            r#"{"name": "x", "template": "blank", "colour": 1}"#,
            "colour",
            "unknown field `colour`",
        ),
        (
            "POST",
            "/api/projects".to_string(),
            r#"{"name": 5, "template": "blank"}"#,
            "name",
            "`name` must be a string",
        ),
        (
            "POST",
            "/api/projects".to_string(),
            r#"{"name": "x"}"#,
            "template",
            "`template` must be a string",
        ),
        (
            "PATCH",
            format!("/api/projects/{id}"),
            r#"{"nmae": "y"}"#,
            "nmae",
            "unknown field `nmae`",
        ),
        (
            "PATCH",
            format!("/api/projects/{id}"),
            "{}",
            "name",
            "`name` must be a string",
        ),
        (
            "POST",
            format!("/api/projects/{id}/fork"),
            r#"{"name": null, "deep": true}"#,
            "deep",
            "unknown field `deep`",
        ),
        (
            "POST",
            format!("/api/projects/{id}/fork"),
            r#"{"name": []}"#,
            "name",
            "`name` must be a string",
        ),
        (
            "POST",
            format!("/api/projects/{id}/fork"),
            r#"{"a`b, c": 1}"#,
            "a`b, c",
            "unknown field `a`b, c`",
        ),
        (
            "POST",
            format!("/api/projects/{id}/history/{at}/restore"),
            r#"{"path": "", "force": true}"#,
            "force",
            "unknown field `force`",
        ),
        (
            "POST",
            format!("/api/projects/{id}/history/{at}/restore"),
            r#"{"path": 1}"#,
            "path",
            "`path` must be a string",
        ),
    ];
    for (method, path, body, field, message) in cases {
        let (s, v) = call(&e.app, method, &path, Some(body)).await;
        assert_eq!(s, 400, "{method} {path} {body}: {v}");
        assert_eq!(
            v["error"],
            json!({"code": "bad_request", "message": message, "details": {"field": field}}),
            "{method} {path} {body}"
        );
    }
    // Null fields mean absent; nothing was created or renamed above.
    let (s, _) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/fork"),
        Some(r#"{"name": null}"#),
    )
    .await;
    assert_eq!(s, 201);
    let (_, v) = call(&e.app, "GET", "/api/projects", None).await;
    assert_eq!(v["projects"].as_array().unwrap().len(), 2, "{v}");
}

#[tokio::test]
async fn the_gateway_starts_a_workspace_for_its_preview() {
    let e = env().await;
    let id = create(&e.app, "Prev").await;
    let gate = e.rt.hold(Op::Start, &id);
    let req = Request::builder()
        .uri("/")
        .header("host", format!("{id}.app.localhost:7070"))
        .body(Body::empty())
        .unwrap();
    let resp = e.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(matches!(&e.rt.calls_for(&id)[..], [Call::Start { .. }]));
    gate.open();
    let req = Request::builder()
        .uri("/")
        .header("host", "elsewhere.example:7070")
        .body(Body::empty())
        .unwrap();
    let resp = e.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 404, "an unknown host reaches nothing");
}

/// The answers' headers, for the checks on them.
async fn headers(app: &Router, method: &str, path: &str) -> axum::http::HeaderMap {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost:7070")
        .body(Body::empty())
        .unwrap();
    let resp = tokio::time::timeout(GUARD, app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} did not answer"))
        .unwrap();
    resp.headers().clone()
}

/// No other site may frame the controller's pages (clickjacking: two
/// clicks inside a hostile frame deleted a project), and an answer with a
/// token is never cached (api.md §1).
#[tokio::test]
async fn no_page_can_be_framed_and_tokens_are_not_cached() {
    let e = env().await;
    let id = create(&e.app, "Framed").await;
    for (method, path) in [
        ("GET", "/".to_string()),
        ("GET", "/api/projects".to_string()),
        ("POST", format!("/api/projects/{id}/workspace/start")),
        ("POST", format!("/api/projects/{id}/workspace/token")),
        ("GET", "/api/nope".to_string()),
    ] {
        let h = headers(&e.app, method, &path).await;
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(get("x-frame-options"), "DENY", "{method} {path}");
        assert!(
            get("content-security-policy").contains("frame-ancestors 'none'"),
            "{method} {path}: {h:?}"
        );
        assert_eq!(get("x-content-type-options"), "nosniff", "{method} {path}");
        if path.starts_with("/api/") {
            assert_eq!(get("cache-control"), "no-store", "{method} {path}");
        }
    }
}

/// Each project's turn lives only while someone holds or waits for it:
/// requests for ids that do not exist leave nothing behind in the
/// controller's memory.
#[tokio::test]
async fn turns_of_unknown_projects_leave_nothing_behind() {
    let e = env().await;
    for i in 0..50 {
        // A rename takes the turn before it looks the project up.
        let (s, _) = call(
            &e.app,
            "PATCH",
            &format!("/api/projects/nope-{i:04}"),
            Some(r#"{"name":"x"}"#),
        )
        .await;
        assert_eq!(s, 404);
    }
    let id = create(&e.app, "Kept").await;
    let (s, _) = call(
        &e.app,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(e.c.turns.lock().len(), 0, "every turn was given back");
}

//! End to end through the gateway: the real controller binary running real
//! cove-sync and cove-pty processes, a real WebSocket client, a real app.

mod openapi;

use cove_pty::client::{Client, Connect};
use cove_testkit::{free_port, Proc, S3Env};
use openapi::conforms;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a socket request or event may take.
const T: Duration = Duration::from_secs(30);

/// A controller process. Its log (and its children's, which inherit its
/// stderr) goes to a file, printed only when the test fails: four tests'
/// interleaved logs would otherwise bury the one panic message that says
/// what went wrong.
struct Controller {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        // SIGTERM: the controller stops its workspaces, which flush.
        self.proc.terminate(Duration::from_secs(120));
    }
}

fn start() -> Controller {
    start_with(&[])
}

/// The Garage bucket the test command starts, as a store URL with its
/// environment; `None` outside the test command (then the S3 case is
/// skipped, except under CI where it must run).
fn s3_store() -> Option<(String, Vec<(String, String)>)> {
    let s3 = S3Env::from_env()?;
    let mut env: Vec<(String, String)> = s3
        .process_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("COVE_S3_PATH_STYLE".into(), "true".into()));
    Some((s3.fresh_url("controller-test"), env))
}

fn start_with(extra: &[&str]) -> Controller {
    start_env(extra, &[])
}

fn start_env(extra: &[&str], env: &[(String, String)]) -> Controller {
    start_mode("watch", extra, env)
}

/// A controller whose workspaces run in `mode` (`watch` or `fuse`).
fn start_mode(mode: &str, extra: &[&str], env: &[(String, String)]) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    // A HOME of its own: the terminals' `bash -l` must not run this
    // machine's dotfiles. pyenv's, for one, takes a lock file in
    // `pyenv rehash` that a shell killed mid-start (every stop does that)
    // leaves behind, and every later login shell then hangs for a minute.
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cove-controller"));
    cmd.args(["--port", &port.to_string(), "--mode", mode, "--data-dir"])
        .arg(dir.path())
        .arg("--templates")
        .arg(&templates)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("NO_COLOR", "1")
        .env("HOME", &home);
    let mut proc = Proc::spawn_logging_to(
        "cove-controller",
        &mut cmd,
        &dir.path().join("controller.log"),
    );
    proc.wait_line("listening", Duration::from_secs(60));
    Controller { proc, port, dir }
}

async fn call(c: &Controller, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}{path}", c.port);
    let mut req = http
        .request(method.parse().unwrap(), url)
        .header("host", format!("localhost:{}", c.port));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let rid = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        rid.is_some_and(|v| !v.is_empty()),
        "{method} {path}: no X-Request-Id"
    );
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    conforms(method, path, status, &v);
    (status, v)
}

/// The IDE socket of workspace `id` through the gateway, with `token`.
async fn connect(c: &Controller, id: &str, token: &str) -> Client {
    let ws = Connect::url(
        &format!("ws://{id}.ide.localhost:{}/ws", c.port),
        token,
        &format!("http://localhost:{}", c.port),
    )
    .via(Some(&format!("127.0.0.1:{}", c.port)))
    .client("local_mode test")
    .connect()
    .await
    .expect("upgrade and hello through the gateway");
    assert_eq!(ws.welcome["project"], id);
    ws
}

/// Starts the workspace, waits for it and opens its socket through the
/// gateway with the token the start returned.
async fn start_and_connect(c: &Controller, id: &str) -> Client {
    let (_, w) = call(
        c,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    let token = w["token"].as_str().unwrap().to_string();
    wait_ready(c, id).await;
    connect(c, id, &token).await
}

async fn wait_ready(c: &Controller, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, w) = call(c, "GET", &format!("/api/projects/{id}/workspace"), None).await;
        if w["state"] == "ready" {
            return;
        }
        assert!(w["state"] != "failed", "{w}");
        assert!(Instant::now() < deadline, "never ready: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_edit_preview_stop_and_start_again() {
    round_trip(start(), "watch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_an_s3_store() {
    let Some((url, env)) = s3_store() else { return };
    round_trip(start_env(&["--store", &url], &env), "watch").await;
}

/// The same over real FUSE mounts (the default where Cove runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_over_fuse() {
    if !cove_testkit::require_fuse() {
        return;
    }
    round_trip(start_mode("fuse", &[], &[]), "fuse").await;
}

async fn round_trip(c: Controller, mode: &str) {
    let (s, t) = call(&c, "GET", "/api/templates", None).await;
    assert_eq!(s, 200);
    let names: Vec<_> = t["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node", "python", "rust", "static"]);

    // Bad input is refused clearly.
    for (body, status, code) in [
        (
            r#"{"name":"x","template":"cobol"}"#,
            400,
            "unknown_template",
        ),
        (r#"{"name":"  ","template":"python"}"#, 400, "invalid_name"),
        (
            r#"{"name":"a\u0007b","template":"python"}"#,
            400,
            "invalid_name",
        ),
        (r#"{"name":"x"}"#, 400, "bad_request"),
        (
            r#"{"name":"x","template":"python","extra":1}"#,
            400,
            "bad_request",
        ),
        ("{not json", 400, "bad_json"),
        ("[1]", 400, "bad_json"),
    ] {
        let (s, e) = call(&c, "POST", "/api/projects", Some(body)).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {e}"
        );
    }
    assert_eq!(call(&c, "GET", "/api/nope", None).await.0, 404);
    assert_eq!(
        call(&c, "GET", "/api/projects/NOT_AN_ID", None).await.0,
        404
    );
    assert_eq!(
        call(&c, "GET", "/api/projects/nope-123456", None).await.0,
        404
    );
    assert_eq!(call(&c, "PUT", "/api/projects", None).await.0, 405);
    // Other origins never reach the API (§7), preview origins included.
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/projects", c.port))
        .header("host", format!("localhost:{}", c.port))
        .header(
            "origin",
            format!("http://x-abc123.app.localhost:{}", c.port),
        )
        .header("content-type", "application/json")
        .body(r#"{"name":"x","template":"python"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/templates", c.port))
        .header("host", format!("localhost:{}", c.port))
        .header("origin", format!("http://localhost:{}", c.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "same origin");
    // A caller's request id carries through; a malformed one is replaced.
    for (sent, kept) in [("trace-42.a_b", true), ("bad id", false)] {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/templates", c.port))
            .header("host", format!("localhost:{}", c.port))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let got = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(got == sent, kept, "{sent:?} -> {got:?}");
    }

    let (s, p) = call(
        &c,
        "POST",
        "/api/projects",
        Some(r#"{"name":"My App","template":"python"}"#),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("my-app-"), "{id}");
    assert_eq!(p["workspace_state"], "stopped");
    let (_, l) = call(&c, "GET", "/api/projects", None).await;
    assert_eq!(l["projects"][0]["id"], id.as_str());
    let (s, r) = call(
        &c,
        "PATCH",
        &format!("/api/projects/{id}"),
        Some(r#"{"name":"Renamed"}"#),
    )
    .await;
    assert_eq!((s, r["name"].as_str()), (200, Some("Renamed")));

    // Start: a token and the URLs; idempotent.
    let (s, w) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert!(w["token"].is_string());
    assert_eq!(
        w["urls"]["ide_socket"],
        format!("ws://{id}.ide.localhost:{}/ws", c.port)
    );
    let (_, w2) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    assert!(matches!(w2["state"].as_str(), Some("starting" | "ready")));
    wait_ready(&c, &id).await;
    let (_, w) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/token"),
        None,
    )
    .await;
    assert_eq!(w["mode"], mode, "{w}");
    let token = w["token"].as_str().unwrap().to_string();

    // Through the gateway: a terminal runs the template's app, the preview
    // host reaches it, a file is saved.
    let mut ws = connect(&c, &id, &token).await;
    let r = ws
        .request(json!({"type":"fs.read","path":"app.py"}))
        .await
        .unwrap();
    assert!(r["content"].as_str().unwrap().contains("HTTPServer"), "{r}");
    let r = ws.request(json!({"type":"term.create","cols":80,"rows":24,"attach":false,"command":["python3","app.py"]})).await.unwrap();
    assert!(r["terminal"]["id"].is_u64(), "{r}");
    let app_port = w["app_port"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/", c.port))
            .header("host", format!("{id}.app.localhost:{}", c.port))
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        if text.contains("Hello from Python") {
            break text;
        }
        assert!(Instant::now() < deadline, "the app never answered: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.contains(&format!("port {app_port}")), "{body}");
    let r = ws.request(json!({"type":"fs.write","path":"notes.txt","content":"saved\n","encoding":"utf8","base_version":null})).await.unwrap();
    assert_eq!(r["durable"], true, "{r}");
    drop(ws);

    // Stop, then start again: the edit is there.
    let (s, w) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/stop"),
        None,
    )
    .await;
    assert_eq!((s, w["state"].as_str()), (200, Some("stopped")), "{w}");
    let (_, w) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/token"),
        None,
    )
    .await;
    assert_eq!(w["error"]["code"], "workspace_not_running");
    let mut ws = start_and_connect(&c, &id).await;
    let r = ws
        .request(json!({"type":"fs.read","path":"notes.txt"}))
        .await
        .unwrap();
    assert_eq!(r["content"], "saved\n", "{r}");
    let v1 = r["version"].clone();
    let r = ws.request(json!({"type":"fs.write","path":"notes.txt","content":"v2\n","encoding":"utf8","base_version":v1})).await.unwrap();
    assert_eq!(r["durable"], true, "{r}");

    // The oldest commit that wrote notes.txt has "saved". Restored into the
    // running workspace, by its sidecar through the files: the client's
    // change feed hears of it, and the answer means durable.
    let find_first = |h: &Value| {
        let first = h["commits"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|c| {
                c["paths"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p == "notes.txt")
            })
            .cloned()
            .unwrap_or_else(|| panic!("no commit wrote notes.txt: {h}"));
        format!("{}.{}", first["epoch"], first["seq"])
    };
    let (_, h) = call(&c, "GET", &format!("/api/projects/{id}/history"), None).await;
    let at = find_first(&h);
    let r = ws
        .request(json!({"type":"fs.subscribe","path":""}))
        .await
        .unwrap();
    assert!(r.is_object(), "{r}");
    let (s, r) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/history/{at}/restore"),
        Some(r#"{"path":"notes.txt"}"#),
    )
    .await;
    assert_eq!(
        (s, r["files_changed"].as_u64(), r["durable"].as_bool()),
        (200, Some(1), Some(true)),
        "{r}"
    );
    let ev = ws
        .wait_message("fs.changes of notes.txt", T, |v| {
            v["type"] == "fs.changes"
                && v["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["path"] == "notes.txt"))
        })
        .await
        .unwrap();
    assert!(
        !ev.to_string().contains(".cove-tmp-"),
        "temporary files stay hidden: {ev}"
    );
    let r = ws
        .request(json!({"type":"fs.read","path":"notes.txt"}))
        .await
        .unwrap();
    assert_eq!(r["content"], "saved\n", "restored while running: {r}");
    // A newer version again, for the restore of the stopped project below.
    let r = ws.request(json!({"type":"fs.write","path":"notes.txt","content":"v3\n","encoding":"utf8","base_version":r["version"]})).await.unwrap();
    assert_eq!(r["durable"], true, "{r}");
    drop(ws);
    let (s, _) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/stop"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (_, h) = call(&c, "GET", &format!("/api/projects/{id}/history"), None).await;
    assert_eq!(find_first(&h), at, "{h}");
    // Paging: one at a time down to the initial state, which ends the list.
    let all = h["commits"].as_array().unwrap().clone();
    assert_eq!(all.last().unwrap()["initial"], true, "{h}");
    let mut before: Option<u64> = None;
    let mut seen = Vec::new();
    loop {
        let q = match before {
            Some(b) => format!("?limit=1&before={b}"),
            None => "?limit=1".into(),
        };
        let (_, pg) = call(&c, "GET", &format!("/api/projects/{id}/history{q}"), None).await;
        seen.extend(pg["commits"].as_array().unwrap().iter().cloned());
        match pg["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, all, "pages of one add up to the list");
    let (_, only) = call(
        &c,
        "GET",
        &format!("/api/projects/{id}/history?path=notes.txt"),
        None,
    )
    .await;
    assert!(
        only["commits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["paths"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "notes.txt")),
        "{only}"
    );
    for q in ["?limit=0", "?limit=x", "?color=red"] {
        let (s, e) = call(&c, "GET", &format!("/api/projects/{id}/history{q}"), None).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{q}"
        );
    }
    let (s, fv) = call(
        &c,
        "GET",
        &format!("/api/projects/{id}/history/{at}/file?path=notes.txt"),
        None,
    )
    .await;
    assert_eq!((s, fv["content"].as_str()), (200, Some("saved\n")), "{fv}");
    assert_eq!(fv["version"], v1);
    for (path, status, code) in [
        ("/history/99.99/file?path=notes.txt", 404, "unknown_commit"),
        (
            "/history/nonsense/file?path=notes.txt",
            404,
            "unknown_commit",
        ),
        (
            &*format!("/history/{at}/file?path=nope.txt"),
            404,
            "path_not_found",
        ),
        (&*format!("/history/{at}/file?path=../x"), 400, "bad_path"),
    ] {
        let (s, e) = call(&c, "GET", &format!("/api/projects/{id}{path}"), None).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {e}"
        );
    }
    let (s, r) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/history/{at}/restore"),
        Some(r#"{"path":"notes.txt"}"#),
    )
    .await;
    assert_eq!((s, r["files_changed"].as_u64()), (200, Some(1)), "{r}");
    let (_, r2) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/history/{at}/restore"),
        Some(r#"{"path":"notes.txt"}"#),
    )
    .await;
    assert_eq!(
        r2["files_changed"], 0,
        "a second restore changes nothing: {r2}"
    );
    let mut ws = start_and_connect(&c, &id).await;
    let r = ws
        .request(json!({"type":"fs.read","path":"notes.txt"}))
        .await
        .unwrap();
    assert_eq!(r["content"], "saved\n", "restored: {r}");
    // A file a terminal just wrote, not flushed by anyone yet...
    let r = ws.request(json!({"type":"term.create","cols":80,"rows":24,"attach":false,"command":["sh","-c","echo fresh > fresh.txt"]})).await.unwrap();
    assert!(r["terminal"]["id"].is_u64(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // not_found until the terminal has written it.
        let r = ws
            .request(json!({"type":"fs.read","path":"fresh.txt"}))
            .await;
        if r.as_ref().is_ok_and(|r| r["content"] == "fresh\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);

    // History lists the commits; fork copies (a running source is flushed
    // first, so the fork has the terminal's file); delete removes.
    let (_, h) = call(&c, "GET", &format!("/api/projects/{id}/history"), None).await;
    assert!(!h["commits"].as_array().unwrap().is_empty(), "{h}");
    let (s, f) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/fork"),
        Some(r#"{"name":"Copy"}"#),
    )
    .await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["forked_from"], id.as_str());
    let fid = f["id"].as_str().unwrap();
    let (s, fv) = call(
        &c,
        "GET",
        &format!("/api/projects/{fid}/history/1.0/file?path=fresh.txt"),
        None,
    )
    .await;
    assert_eq!((s, fv["content"].as_str()), (200, Some("fresh\n")), "{fv}");
    assert_eq!(
        call(&c, "DELETE", &format!("/api/projects/{fid}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(&c, "GET", &format!("/api/projects/{fid}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&c, "DELETE", &format!("/api/projects/{id}"), None)
            .await
            .0,
        204
    );
    let (_, l) = call(&c, "GET", "/api/projects", None).await;
    assert_eq!(l["projects"].as_array().unwrap().len(), 0, "{l}");
}

/// A past version whose blob the store lost or damaged is named
/// (`store_damaged`, with the blob's key), never served as the file.
#[tokio::test]
async fn a_damaged_blob_is_named_not_served() {
    let c = start();
    let (s, p) = call(
        &c,
        "POST",
        "/api/projects",
        Some(r#"{"name":"big","template":"static"}"#),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let mut ws = start_and_connect(&c, &id).await;
    // Over the inline limit (64 KiB): stored as a chunk blob.
    let big: String = (0..100_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = ws.request(json!({"type":"fs.write","path":"big.txt","content":big,"encoding":"utf8","base_version":null})).await.unwrap();
    assert_eq!(r["durable"], true, "{r}");
    drop(ws);
    let (s, _) = call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/stop"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (_, h) = call(&c, "GET", &format!("/api/projects/{id}/history"), None).await;
    let head = &h["commits"][0];
    let at = format!("{}.{}", head["epoch"], head["seq"]);
    let file = format!("/api/projects/{id}/history/{at}/file?path=big.txt");
    let (s, fv) = call(&c, "GET", &file, None).await;
    assert_eq!((s, fv["content"].as_str()), (200, Some(big.as_str())));

    // The same length, other bytes: only the hash can tell.
    let blobs = c.dir.path().join("store/blobs");
    let mut damaged = 0;
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let len = e.metadata().unwrap().len() as usize;
        std::fs::write(e.path(), vec![b'x'; len]).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0, "no blob under {}", blobs.display());
    let (s, e) = call(&c, "GET", &file, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (500, Some("store_damaged")),
        "{e}"
    );
    assert!(
        e["error"]["details"]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("blobs/")),
        "{e}"
    );
}

fn pids_of(pattern: &str) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A workspace whose sidecar was killed until the controller gave up
/// starts again later, over the dead FUSE mount the last kill left. (When
/// the kernel has no attributes of the mount's root cached, a dead mount
/// answers ENOTCONN and every start failed with "File exists"; that case
/// depends on timing and is what the chaos harness's controller test hit,
/// killing a sidecar right after it mounted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fuse_workspace_starts_again_over_its_dead_mount() {
    if !cove_testkit::require_fuse() {
        return;
    }
    let c = start_mode("fuse", &[], &[]);
    let (_, p) = call(
        &c,
        "POST",
        "/api/projects",
        Some(r#"{"name":"dead mount","template":"static"}"#),
    )
    .await;
    let id = p["id"].as_str().unwrap().to_string();
    let ws = start_and_connect(&c, &id).await;
    drop(ws);
    let pattern = format!("cove-sync .*serve --project {id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = Vec::new();
    loop {
        let (_, w) = call(&c, "GET", &format!("/api/projects/{id}/workspace"), None).await;
        if w["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "never gave up: {w}");
        for pid in pids_of(&pattern) {
            if !killed.contains(&pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
                killed.push(pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the kernel's attribute cache: the mount point now answers
    // ENOTCONN.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ws = start_and_connect(&c, &id).await;
    let r = ws
        .request(json!({"type":"fs.read","path":"index.html"}))
        .await
        .unwrap();
    assert!(r["content"].is_string(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_children_are_restarted_idle_workspaces_stop_and_nothing_is_orphaned() {
    let mut c = start_with(&["--idle-timeout-secs", "3"]);
    let (_, p) = call(
        &c,
        "POST",
        "/api/projects",
        Some(r#"{"name":"crashy","template":"static"}"#),
    )
    .await;
    let id = p["id"].as_str().unwrap().to_string();
    // The first request to the preview host starts the stopped workspace
    // and gets a page that says so, not an error.
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/", c.port))
        .header("host", format!("{id}.app.localhost:{}", c.port))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("Starting the workspace"));
    wait_ready(&c, &id).await;

    // A killed cove-pty is restarted, with its sidecar, and becomes ready.
    let pattern = format!("cove-pty --project {id}");
    let old = pids_of(&pattern);
    assert_eq!(old.len(), 1, "{old:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old[0]),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, w) = call(&c, "GET", &format!("/api/projects/{id}/workspace"), None).await;
        let now = pids_of(&pattern);
        if w["state"] == "ready" && now.len() == 1 && now != old {
            break;
        }
        assert!(w["state"] != "failed", "{w}");
        assert!(Instant::now() < deadline, "not restarted: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nobody connected, no output: stopped for being idle, with the reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    let w = loop {
        let (_, w) = call(&c, "GET", &format!("/api/projects/{id}/workspace"), None).await;
        if w["state"] == "stopped" {
            break w;
        }
        assert!(Instant::now() < deadline, "never stopped: {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(w["reason"].as_str().unwrap_or("").contains("idle"), "{w}");
    let (_, m) = call(&c, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap_or("").to_string();
    assert!(m.contains("cove_controller_idle_stops_total 1"), "{m}");
    assert!(
        m.contains("cove_controller_workspace_start_seconds_count 2"),
        "{m}"
    );

    // Stopping the controller stops every workspace; nothing is orphaned.
    call(
        &c,
        "POST",
        &format!("/api/projects/{id}/workspace/start"),
        None,
    )
    .await;
    wait_ready(&c, &id).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.proc.pid()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(c.proc.child.wait().unwrap().success());
    assert!(pids_of(&id).is_empty(), "left behind: {:?}", pids_of(&id));
}

/// A GET on the controller's host with `host`, without following redirects:
/// status, headers, body.
async fn get_as(
    c: &Controller,
    host: &str,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}{path}", c.port))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

/// The browser UI (api.md §6): on the controller's host, files of the built
/// UI and index.html for client routes; the API and workspace hosts as
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_host_serves_the_ui() {
    let ui = tempfile::tempdir().unwrap();
    std::fs::create_dir(ui.path().join("assets")).unwrap();
    std::fs::write(
        ui.path().join("index.html"),
        "<!doctype html><title>Cove UI</title>",
    )
    .unwrap();
    std::fs::write(ui.path().join("assets/index-abc123.js"), "export {}").unwrap();
    let c = start_with(&["--ui-dir", ui.path().to_str().unwrap()]);
    let local = format!("localhost:{}", c.port);

    for path in ["/", "/p/my-app-123456", "/index.html"] {
        let (s, h, body) = get_as(&c, &local, path).await;
        assert_eq!(s, 200, "{path}: {body}");
        assert_eq!(h["content-type"], "text/html; charset=utf-8", "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(body, "<!doctype html><title>Cove UI</title>", "{path}");
    }
    let (s, h, body) = get_as(&c, &local, "/assets/index-abc123.js").await;
    assert_eq!((s, body.as_str()), (200, "export {}"));
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(get_as(&c, &local, "/assets/index-old.js").await.0, 404);
    // Sent as they are (an HTTP client library would normalize them).
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/assets/%2E%2E/%2e%2e/Cargo.toml",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 404 "), "{path}: {resp}");
    }

    // The API keeps its JSON 404s; other methods than GET and HEAD too.
    assert_eq!(call(&c, "GET", "/api/nope", None).await.0, 404);
    assert_eq!(call(&c, "GET", "/api", None).await.0, 404);
    let (s, e) = call(&c, "POST", "/p/my-app-123456", None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    assert_eq!(call(&c, "GET", "/healthz", None).await.0, 200);

    // 127.0.0.1 is sent to the one origin the UI has.
    let (s, h, _) = get_as(&c, &format!("127.0.0.1:{}", c.port), "/p/x?y=1").await;
    assert_eq!(s, 308);
    assert_eq!(
        h["location"],
        format!("http://localhost:{}/p/x?y=1", c.port)
    );

    // Workspace hosts and unknown hosts never get the UI.
    for host in [
        format!("nope-123456.ide.localhost:{}", c.port),
        format!("nope-123456.app.localhost:{}", c.port),
        format!("3000--nope-123456.app.localhost:{}", c.port),
        format!("evil.example:{}", c.port),
    ] {
        let (s, _, body) = get_as(&c, &host, "/").await;
        assert_eq!(s, 404, "{host}: {body}");
        assert!(!body.contains("Cove UI"), "{host}: {body}");
    }
    // A name pointed at the controller (DNS rebinding) reaches nothing, the API included.
    for path in ["/api/projects", "/healthz", "/"] {
        let (s, _, body) = get_as(&c, &format!("evil.example:{}", c.port), path).await;
        assert_eq!((s, body.as_str()), (404, "unknown host\n"), "{path}");
    }
    let (_, p) = call(
        &c,
        "POST",
        "/api/projects",
        Some(r#"{"name":"ui","template":"static"}"#),
    )
    .await;
    let id = p["id"].as_str().unwrap().to_string();
    let (s, _, body) = get_as(&c, &format!("{id}.app.localhost:{}", c.port), "/").await;
    assert!(!body.contains("Cove UI"), "{s}: {body}");
    drop(c);

    // Without a built UI: a 503 page that says how to build it.
    let c = start_with(&["--ui-dir", ui.path().join("missing").to_str().unwrap()]);
    let (s, h, body) = get_as(&c, &format!("localhost:{}", c.port), "/").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert!(body.contains("npm run build"), "{body}");
    let log = std::fs::read_to_string(c.dir.path().join("controller.log")).unwrap();
    assert_eq!(log.matches("does not exist").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_gives_a_working_project() {
    let c = start();
    let expect = [
        ("node", "index.js", "process.env.PORT"),
        ("python", "app.py", "PORT"),
        ("static", "index.html", "Hello from Cove"),
        ("rust", "src/main.rs", "fn main"),
    ];
    for (template, file, needle) in expect {
        let body = format!(r#"{{"name":"t {template}","template":"{template}"}}"#);
        let (s, p) = call(&c, "POST", "/api/projects", Some(&body)).await;
        assert_eq!(s, 201, "{p}");
        let id = p["id"].as_str().unwrap().to_string();
        assert_eq!(p["template"], template);
        let mut ws = start_and_connect(&c, &id).await;
        let r = ws
            .request(json!({"type":"fs.read","path":file}))
            .await
            .unwrap();
        let content = r["content"].as_str().unwrap_or_default();
        assert!(content.contains(needle), "{template}/{file}: {r}");
        // The template's own description of itself is not in the project.
        let e = ws
            .request(json!({"type":"fs.stat","path":"template.json"}))
            .await
            .unwrap_err();
        assert_eq!(e["code"], "not_found", "{template}: {e}");
        drop(ws);
        let (s, w) = call(
            &c,
            "POST",
            &format!("/api/projects/{id}/workspace/stop"),
            None,
        )
        .await;
        assert_eq!((s, w["state"].as_str()), (200, Some("stopped")), "{w}");
    }
}

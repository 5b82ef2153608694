//! File requests, the change feed, durability and the upgrade checks.

mod common;

use common::*;
use cove_pty::client::ClientError;
use cove_pty::protocol::{FsDelete, FsRead, FsStat, FsWrite, PathRef, Request, WriteEncoding};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_escape_the_workspace_are_refused() {
    let ws = Workspace::start(&[]);
    std::os::unix::fs::symlink("/etc", ws.root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("../..", ws.root.join("up")).unwrap();
    std::fs::create_dir(ws.root.join("src")).unwrap();
    write(&ws.root, "src/ok.txt", "ok");
    std::os::unix::fs::symlink("src", ws.root.join("inside")).unwrap();
    let mut c = ws.connect().await;
    let table: &[(&str, &str)] = &[
        ("/etc/passwd", "bad_path"),
        ("../etc/passwd", "bad_path"),
        ("src/../../etc/passwd", "bad_path"),
        ("./src/ok.txt", "bad_path"),
        ("src//ok.txt", "bad_path"),
        ("src/", "bad_path"),
        ("a\u{0}b", "bad_path"),
        ("etc-link/passwd", "outside_workspace"),
        ("up/etc/passwd", "outside_workspace"),
        ("etc-link", "outside_workspace"),
    ];
    for (path, code) in table {
        for ty in ["fs.read", "fs.stat"] {
            let mut req = json!({"type": ty, "path": path});
            if ty == "fs.stat" {
                req["follow"] = json!(true);
            }
            let e = c.request(req).await.unwrap_err();
            assert_eq!(e["code"], *code, "{ty} {path:?}: {e}");
        }
        let e = c
            .request(json!({"type": "fs.write", "path": path, "content": "x", "encoding": "utf8", "base_version": null}))
            .await
            .unwrap_err();
        assert_eq!(e["code"], *code, "write {path:?}: {e}");
    }
    let long = "a/".repeat(2100) + "x";
    let e = c
        .request(json!({"type": "fs.stat", "path": long}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "bad_path");
    // Inside links work; the escaping link itself can be listed and removed.
    let r = c.call(read("inside/ok.txt")).await.unwrap();
    assert_eq!(r["content"], "ok");
    let r = c
        .call(Request::FsStat(FsStat {
            path: "etc-link".into(),
            ..FsStat::default()
        }))
        .await
        .unwrap();
    assert_eq!(r["entry"]["kind"], "symlink");
    c.call(Request::FsDelete(FsDelete {
        path: "etc-link".into(),
        recursive: None,
    }))
    .await
    .unwrap();
    assert!(std::path::Path::new("/etc/passwd").exists());
    let e = c
        .request(json!({"type": "term.create", "cols": 80, "rows": 24, "cwd": "up"}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "outside_workspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_versioned_durable_and_conflicts_are_reported() {
    let ws = Workspace::start(&["--max-file-bytes", "1000000"]);
    let mut a = ws.connect().await;
    let mut b = ws.connect().await;
    let sub = a
        .call(Request::FsSubscribe(PathRef { path: "".into() }))
        .await
        .unwrap()["subscription"]
        .clone();

    let w = a
        .call(Request::FsWrite(FsWrite {
            parents: Some(true),
            ..utf8_write("notes/a.txt", "one\n", None)
        }))
        .await
        .unwrap();
    assert_eq!(w["durable"], true, "{w}");
    assert!(w["commit"]["seq"].is_u64(), "{w}");
    let v1 = w["version"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(ws.root.join("notes/a.txt")).unwrap(),
        "one\n"
    );
    let r = b.call(read("notes/a.txt")).await.unwrap();
    assert_eq!(
        (r["content"].as_str(), r["version"].as_str()),
        (Some("one\n"), Some(v1.as_str()))
    );

    // b saves first; a's save from the old version is a conflict.
    let w2 = b
        .call(Request::FsWrite(utf8_write(
            "notes/a.txt",
            "two\n",
            Some(&v1),
        )))
        .await
        .unwrap();
    let e = a
        .call(Request::FsWrite(utf8_write(
            "notes/a.txt",
            "three\n",
            Some(&v1),
        )))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "conflict");
    assert_eq!(e["details"]["current_version"], w2["version"]);
    assert_eq!(
        std::fs::read_to_string(ws.root.join("notes/a.txt")).unwrap(),
        "two\n"
    );
    // A change made in a terminal is a conflict too.
    let t = a.create_terminal(json!({})).await.unwrap();
    a.input(t, b"echo shell >> notes/a.txt\r").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(ws.root.join("notes/a.txt")).unwrap() != "two\nshell\n" {
        assert!(std::time::Instant::now() < deadline);
        if let Some(m) = a.next(Duration::from_millis(100)).await.unwrap() {
            a.events.push_back(m);
        }
    }
    let e = b
        .call(Request::FsWrite(utf8_write(
            "notes/a.txt",
            "mine\n",
            Some(w2["version"].as_str().unwrap()),
        )))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "conflict");

    // The change feed saw the changes, coalesced, from every source.
    let ev = a
        .wait_message("fs.changes", T, |e| {
            e["type"] == "fs.changes"
                && e["subscription"] == sub
                && e["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["path"] == "notes/a.txt")
        })
        .await
        .unwrap();
    assert!(
        !ev.to_string().contains("cove-tmp"),
        "temp files must be hidden: {ev}"
    );

    // Binary content round-trips as base64; limits are enforced.
    let bin = base64_encode(&[0u8, 159, 146, 150, 255]);
    let w = a
        .call(Request::FsWrite(FsWrite {
            content: bin.clone(),
            encoding: WriteEncoding::Base64,
            ..utf8_write("b.bin", "", None)
        }))
        .await
        .unwrap();
    assert_eq!(w["size"], 5);
    let r = a.call(read("b.bin")).await.unwrap();
    assert_eq!(
        (r["encoding"].as_str(), r["content"].as_str()),
        (Some("base64"), Some(bin.as_str()))
    );
    std::fs::write(ws.root.join("big"), vec![b'x'; 1_000_001]).unwrap();
    let e = a.call(read("big")).await.unwrap_err();
    assert_eq!(e["code"], "too_large");
    assert_eq!(e["details"]["limit"], 1_000_000);

    // Tree operations, each durable.
    for (req, code) in [
        (
            json!({"type": "fs.mkdir", "path": "d/e", "parents": true}),
            None,
        ),
        (json!({"type": "fs.create", "path": "d/e/f.txt"}), None),
        (
            json!({"type": "fs.create", "path": "d/e/f.txt"}),
            Some("already_exists"),
        ),
        (json!({"type": "fs.rename", "from": "d", "to": "d2"}), None),
        (
            json!({"type": "fs.delete", "path": "d2"}),
            Some("not_empty"),
        ),
        (
            json!({"type": "fs.delete", "path": "d2", "recursive": true}),
            None,
        ),
        (
            json!({"type": "fs.list", "path": "b.bin"}),
            Some("not_a_directory"),
        ),
        (
            json!({"type": "fs.read", "path": "notes"}),
            Some("not_a_file"),
        ),
        (
            json!({"type": "fs.stat", "path": "nope"}),
            Some("not_found"),
        ),
        (
            json!({"type": "fs.write", "path": "x", "encoding": "utf8", "base_version": null}),
            Some("bad_request"),
        ),
    ] {
        match (a.request(req.clone()).await, code) {
            (Ok(r), None) => {
                if req["type"] != "fs.list" {
                    assert_eq!(r["durable"], true, "{req}: {r}")
                }
            }
            (Err(e), Some(c)) => assert_eq!(e["code"], c, "{req}"),
            (r, c) => panic!("{req}: {r:?}, expected {c:?}"),
        }
    }
    let l = a
        .call(Request::FsList(PathRef { path: "".into() }))
        .await
        .unwrap();
    let names: Vec<_> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["b.bin", "big", "notes"]);

    // fs.create makes plain files: no setuid, setgid or sticky bit, which
    // a workspace user's process could otherwise run as the file's owner
    // wherever the files are not behind a nosuid mount (watch mode).
    let e = a
        .request(json!({"type": "fs.create", "path": "suid", "mode": 0o6755}))
        .await
        .unwrap();
    assert_eq!(e["entry"]["mode"], 0o755, "{e}");
    let m = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ws.root.join("suid"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(m & 0o7777, 0o755);
}

/// `fs.read` of `path`, as the editor opens a file.
fn read(path: &str) -> Request {
    Request::FsRead(FsRead {
        path: path.into(),
        encoding: None,
    })
}

/// `fs.write` of UTF-8 `content` over version `base` (`None`: the file
/// must not exist yet).
fn utf8_write(path: &str, content: &str, base: Option<&str>) -> FsWrite {
    FsWrite {
        path: path.into(),
        content: content.into(),
        encoding: WriteEncoding::Utf8,
        base_version: base.map(str::to_string),
        parents: None,
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_valid_credentials_are_refused_before_anything_runs() {
    let ws = Workspace::start(&[]);
    let good = ws.token();
    let p = |t: &str| format!("cove.v1, cove.token.{t}");
    let expired = cove_pty::token::sign(SECRET.as_bytes(), "demo", now() - 1000, 300, None);
    let other = cove_pty::token::sign(SECRET.as_bytes(), "other", now(), 300, None);
    let forged = cove_pty::token::sign(
        b"not-the-secret-not-the-secret-00000",
        "demo",
        now(),
        300,
        None,
    );
    let cases: Vec<(Option<String>, Option<&str>, u16, &str)> = vec![
        (Some(p(&good)), None, 403, "origin_forbidden"),
        (
            Some(p(&good)),
            Some("http://evil.example"),
            403,
            "origin_forbidden",
        ),
        (
            Some(p(&good)),
            Some("http://demo.app.localhost:7070"),
            403,
            "origin_forbidden",
        ),
        (
            Some(format!("cove.v9, cove.token.{good}")),
            Some(ORIGIN),
            400,
            "unsupported_version",
        ),
        (Some("cove.v1".into()), Some(ORIGIN), 401, "token_missing"),
        (Some(p(&expired)), Some(ORIGIN), 401, "token_expired"),
        (Some(p(&forged)), Some(ORIGIN), 401, "token_invalid"),
        (Some(p("garbage")), Some(ORIGIN), 401, "token_invalid"),
        (Some(p(&other)), Some(ORIGIN), 403, "wrong_project"),
    ];
    for (proto, origin, status, code) in cases {
        let e = upgrade_request(&ws.ide, proto.as_deref(), origin)
            .upgrade()
            .await
            .expect_err("must be refused");
        let ClientError::Refused { status: got, body } = e else {
            panic!("{proto:?} {origin:?}: not refused by the server: {e}")
        };
        assert_eq!(got, status, "{proto:?} {origin:?}: {body}");
        assert!(body.contains(code), "{code} not in {body}");
    }
    // Not an upgrade, wrong path.
    assert_eq!(http_get(&ws.ide, "/ws").0, 400);
    assert_eq!(http_get(&ws.ide, "/other").0, 404);
    let (_, m) = http_get(&ws.admin, "/metrics");
    assert!(
        m.contains("cove_pty_upgrades_total{result=\"token_expired\"} 1"),
        "{m}"
    );
    assert_eq!(http_get(&ws.admin, "/healthz").0, 200);
    let (code, act) = http_get(&ws.admin, "/activity");
    assert_eq!(code, 200);
    assert!(
        act.contains("last_active_ms") && act.contains("\"last_output_ms\":0"),
        "{act}"
    );

    // Protocol violations close the connection with the documented codes.
    let raw = ws.endpoint().upgrade().await.unwrap();
    let mut c = Client::from_socket(raw);
    c.send_text(json!({"type": "term.list", "id": 1}).to_string())
        .await
        .unwrap();
    assert_eq!(
        c.wait_close(Duration::from_secs(5)).await.unwrap(),
        4002,
        "hello first"
    );
    let raw = ws.endpoint().upgrade().await.unwrap();
    let mut c = Client::from_socket(raw);
    c.send_text(json!({"type": "hello", "id": 1, "protocol": 2}).to_string())
        .await
        .unwrap();
    assert_eq!(c.wait_close(Duration::from_secs(5)).await.unwrap(), 4003);
    let mut c = ws.connect().await;
    c.send_text("{not json".into()).await.unwrap();
    assert_eq!(c.wait_close(Duration::from_secs(5)).await.unwrap(), 4000);
    let mut c = ws.connect().await;
    c.send_binary(vec![1, 2, 3]).await.unwrap();
    assert_eq!(c.wait_close(Duration::from_secs(5)).await.unwrap(), 4000);
    let mut c = ws.connect().await;
    // The server may close the connection before all 17 MiB are sent: the
    // send's own result does not matter, the close does.
    let _ = c
        .send_text(format!(
            "{{\"type\":\"fs.write\",\"id\":5,\"content\":\"{}\"}}",
            "x".repeat(17 << 20)
        ))
        .await;
    let code = c.wait_close(Duration::from_secs(10)).await;
    assert!(
        matches!(code, Ok(1009) | Ok(1006)),
        "oversized message: {code:?}"
    );
    // The server is fine afterwards.
    let mut c = ws.connect().await;
    c.call(Request::TermList).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_reaches_the_app_on_its_port() {
    let ws = Workspace::start(&["--app-port", "0"]);
    // A real app server inside the workspace, on a port of its own.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = app.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let first = req.lines().next().unwrap_or("").to_string();
                let body = format!("app saw: {first}");
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    let host = format!("{port}--demo.app.localhost");
    let (code, body) = tokio::task::spawn_blocking({
        let addr = ws.preview.clone();
        move || http(&addr, "GET", "/hello?x=1", &[("Host", &host)], "")
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "app saw: GET /hello?x=1 HTTP/1.1");
    // Nothing on that port: a page that says so, not a bare 502.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("{free}--demo.app.localhost");
    let (code, body) = http(
        &ws.preview,
        "GET",
        "/",
        &[("Host", &host), ("Accept", "text/html")],
        "",
    );
    assert_eq!(code, 502);
    assert!(
        body.contains(&format!("Nothing is listening on port {free}")),
        "{body}"
    );
    // Another project's preview host is not served here.
    let (code, _) = http(
        &ws.preview,
        "GET",
        "/",
        &[("Host", "other.app.localhost")],
        "",
    );
    assert_eq!(code, 404);
    let (_, act) = http_get(&ws.admin, "/activity");
    let v: serde_json::Value = serde_json::from_str(&act).unwrap();
    assert!(v["last_preview_ms"].as_u64().unwrap() > 0, "{act}");
}

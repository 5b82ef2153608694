//! Terminals over a real WebSocket, against real PTYs and a real sidecar.

mod common;

use common::*;
use cove_pty::protocol::{Request, TermResize, TerminalRef};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_resize_interrupt_and_exit_status() {
    let ws = Workspace::start(&[]);
    let mut c = ws.connect().await;
    assert_eq!(c.welcome["protocol"], 1);
    assert_eq!(c.welcome["status"]["ready"], true);
    let t = c
        .create_terminal(json!({"env": {"GREETING": "hé llo"}}))
        .await
        .unwrap();
    c.input(t, b"echo \"$GREETING from $COVE_PROJECT on $PORT\"\r")
        .await
        .unwrap();
    c.wait_output(t, "hé llo from demo on 3000", T)
        .await
        .unwrap();
    let (_, act) = http_get(&ws.admin, "/activity");
    let act: serde_json::Value = serde_json::from_str(&act).unwrap();
    assert!(
        act["last_output_ms"].as_u64().unwrap() > 0,
        "terminal output is reported: {act}"
    );
    // The secret never reaches the shell.
    c.input(t, b"echo \"secret=[${COVE_TOKEN_SECRET:-none}]\"\r")
        .await
        .unwrap();
    c.wait_output(t, "secret=[none]", T).await.unwrap();

    // Resize is what `stty size` sees, and everyone is told.
    c.call(Request::TermResize(TermResize {
        terminal: t,
        cols: 100,
        rows: 30,
    }))
    .await
    .unwrap();
    c.wait_message("term.resized", T, |e| {
        e["type"] == "term.resized" && e["cols"] == 100
    })
    .await
    .unwrap();
    c.input(t, b"stty size\r").await.unwrap();
    c.wait_output(t, "30 100", T).await.unwrap();

    // Ctrl+C interrupts a foreground sleep; the shell goes on.
    c.input(t, b"sleep 100; echo SLEPT-$((40+2))\r")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.input(t, b"\x03").await.unwrap();
    c.input(t, b"echo after-interrupt\r").await.unwrap();
    let out = c.wait_output(t, "after-interrupt\r\n", T).await.unwrap();
    assert!(
        !out.contains("SLEPT-42"),
        "sleep was not interrupted: {out}"
    );

    // Exit status of a command that ends by itself, and of a signal.
    let e = c
        .create_terminal(json!({"command": ["sh", "-c", "echo bye; exit 3"]}))
        .await
        .unwrap();
    let ev = c
        .wait_message("term.exited", T, |v| {
            v["type"] == "term.exited" && v["terminal"] == e
        })
        .await
        .unwrap();
    assert_eq!(ev["exit"], json!({"code": 3, "signal": null}));
    c.wait_output(e, "bye", T).await.unwrap();
    let info = c.call(Request::TermList).await.unwrap();
    let st = info["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == e)
        .unwrap()
        .clone();
    assert_eq!(st["state"], "exited");
    let r = c
        .call(Request::TermClose(TerminalRef { terminal: e }))
        .await
        .unwrap();
    assert_eq!(r["exit"]["code"], 3);
    c.wait_message("term.closed", T, |v| {
        v["type"] == "term.closed" && v["terminal"] == e
    })
    .await
    .unwrap();

    // Closing a running terminal hangs up its whole session.
    // Durations no other process on the machine is likely to use: the
    // check below looks at every process.
    c.input(t, b"sleep 4242.17 & sleep 4242.18 &\r")
        .await
        .unwrap();
    c.input(t, b"echo started-bg\r").await.unwrap();
    c.wait_output(t, "started-bg\r\n", T).await.unwrap();
    let r = c
        .call(Request::TermClose(TerminalRef { terminal: t }))
        .await
        .unwrap();
    assert!(
        r["exit"]["signal"].is_string() || r["exit"]["code"].is_number(),
        "{r}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "sleep 4242\\.1[78]"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "session members survived: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    assert!(zombie_children(ws.pty_pid()).is_empty(), "zombies left");

    // Bad requests are refused clearly.
    let e = c
        .request(json!({"type": "term.create", "cols": 0, "rows": 24}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "bad_request");
    let e = c
        .request(
            json!({"type": "term.create", "cols": 80, "rows": 24, "command": ["/no/such/program"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], "spawn_failed", "{e}");
    let e = c
        .request(json!({"type": "term.create", "cols": 80, "rows": 24, "cwd": "../.."}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "bad_path");
    let e = c
        .call(Request::TermAttach(TerminalRef { terminal: 999 }))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "not_found");
    let e = c
        .request(json!({"type": "term.create", "cols": 80, "rows": 24, "env": {"A=B": "x"}}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], "bad_request");
    let e = c.request(json!({"type": "nope"})).await.unwrap_err();
    assert_eq!(e["code"], "unknown_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_restores_a_vim_screen_without_replaying_queries() {
    let ws = Workspace::start(&[]);
    let mut a = ws.connect().await;
    let t = a
        .create_terminal(json!({"cols": 80, "rows": 24}))
        .await
        .unwrap();
    a.input(t, b"echo before-vim\r").await.unwrap();
    a.wait_output(t, "before-vim\r\n", T).await.unwrap();
    a.input(t, b"vim -u NONE -N -n notes.txt\r").await.unwrap();
    a.wait_output(t, "notes.txt", T).await.unwrap();
    a.input(t, b"ihello from vim\x1b").await.unwrap();
    a.wait_output(t, "hello from vim", T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let instance = a.welcome["instance"].clone();
    a.close().await;

    // A new tab: same instance, the terminal is listed, attach gives a
    // snapshot that rebuilds vim on a fresh terminal.
    let mut b = ws.connect().await;
    assert_eq!(b.welcome["instance"], instance);
    assert!(b.welcome["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == t));
    let r = b
        .call(Request::TermAttach(TerminalRef { terminal: t }))
        .await
        .unwrap();
    assert_eq!(r["responder"], true, "the only client answers queries");
    let off = r["offset"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.end.get(&t) != Some(&off) {
        assert!(std::time::Instant::now() < deadline, "no snapshot");
        if let Some(m) = b.next(Duration::from_millis(200)).await.unwrap() {
            b.events.push_back(m);
        }
    }
    let snap = b.snapshots[&t].clone();
    let mut p = vt100::Parser::new(24.try_into().unwrap(), 80.try_into().unwrap(), 1000);
    p.process(&snap);
    assert!(
        p.screen().alternate_screen(),
        "vim's screen is the alternate screen"
    );
    let screen = p.screen().contents();
    assert!(screen.contains("hello from vim"), "{screen}");
    assert!(screen.contains('~'), "vim's empty-line markers: {screen}");
    let s = String::from_utf8_lossy(&snap);
    for q in ["\x1b[c", "\x1b[>c", "\x1b[6n", "\x1b]11;?"] {
        assert!(!s.contains(q), "snapshot contains the query {q:?}");
    }
    // Quitting vim shows the shell as it was before vim started.
    b.input(t, b":q!\r").await.unwrap();
    // vim flushes typeahead when it restores the terminal: wait for the
    // shell before typing.
    b.wait_output(t, "\x1b[?1049l", T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.input(t, b"echo after-vim\r").await.unwrap();
    b.wait_output(t, "after-vim\r\n", T).await.unwrap();
    p.process(&b.output[&t]);
    assert!(!p.screen().alternate_screen());
    assert!(
        p.screen().contents().contains("before-vim"),
        "{}",
        p.screen().contents()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_pauses_the_child_and_bounds_memory() {
    let ws = Workspace::start(&[]);
    let window = 1u64 << 20;
    let mut c = ws.connect().await;
    c.auto_ack = false;
    let t = c
        .create_terminal(json!({"command": ["sh", "-c", "head -c 200000000 /dev/zero | base64"]}))
        .await
        .unwrap();
    // Read what the server sends without acknowledging anything.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Some(m) = c.next(Duration::from_millis(100)).await.unwrap() {
            c.events.push_back(m);
        }
    }
    assert!(
        c.output_bytes <= window,
        "sent {} unacknowledged bytes",
        c.output_bytes
    );
    assert!(
        c.output_bytes >= window / 2,
        "only {} bytes arrived",
        c.output_bytes
    );
    // The child is paused: the stream's end does not move.
    let mut other = ws.connect().await;
    let end_of = |v: &serde_json::Value| {
        v["terminals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == t)
            .unwrap()["end_offset"]
            .as_u64()
            .unwrap()
    };
    let e1 = end_of(&other.call(Request::TermList).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e2 = end_of(&other.call(Request::TermList).await.unwrap());
    assert_eq!(
        e1, e2,
        "the server kept reading a terminal nobody acknowledged"
    );
    assert!(
        e2 < window + (256 << 10),
        "read {e2} bytes ahead of a stuck client"
    );
    let rss = rss_kib(ws.pty_pid());
    assert!(
        rss < 64 << 10,
        "cove-pty RSS {rss} KiB while a client is stuck"
    );
    let (_, m) = http_get(&ws.admin, "/metrics");
    assert!(m.contains("cove_pty_terminals_paused 1"), "{m}");
    // Acknowledging resumes the flow.
    c.auto_ack = true;
    let e = c.end[&t];
    c.ack(t, e).await.unwrap();
    let before = c.output_bytes;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.output_bytes < before + 4 * window {
        assert!(
            std::time::Instant::now() < deadline,
            "output did not resume"
        );
        if let Some(m) = c.next(Duration::from_millis(100)).await.unwrap() {
            c.events.push_back(m);
        }
    }
    // An ACK beyond what was sent is a protocol error.
    let bad = c.end[&t] + 10 * window;
    c.ack(t, bad).await.unwrap();
    assert_eq!(c.wait_close(Duration::from_secs(5)).await.unwrap(), 4000);
    // The terminal outlives the connection.
    let l = other.call(Request::TermList).await.unwrap();
    assert_eq!(l["terminals"][0]["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_a_terminal_and_dead_connections_are_dropped() {
    let ws = Workspace::start(&["--ping-interval-ms", "200", "--dead-after-ms", "800"]);
    let mut a = ws.connect().await;
    let t = a.create_terminal(json!({})).await.unwrap();
    let mut b = ws.connect().await;
    let r = b
        .call(Request::TermAttach(TerminalRef { terminal: t }))
        .await
        .unwrap();
    assert_eq!(
        r["responder"], false,
        "the creator answers queries until someone else types"
    );
    b.input(t, b"echo from-b\r").await.unwrap();
    b.wait_message("term.responder", T, |e| {
        e["type"] == "term.responder" && e["responder"] == true
    })
    .await
    .unwrap();
    a.wait_output(t, "from-b\r\n", T).await.unwrap();
    b.wait_output(t, "from-b\r\n", T).await.unwrap();
    // b stops reading (no pongs): the server drops it, the terminal stays.
    // a keeps reading (its library answers pings); b reads nothing.
    let mut b = b;
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        if let Some(m) = a.next(Duration::from_millis(100)).await.unwrap() {
            a.events.push_back(m);
        }
    }
    // The close frame may be lost in the reset of a socket nobody reads;
    // the metric says which close the server sent.
    let code = b.wait_close(Duration::from_secs(5)).await;
    assert!(matches!(code, Ok(4001) | Ok(1006)), "{code:?}");
    let (_, m) = http_get(&ws.admin, "/metrics");
    assert!(m.contains("cove_pty_close_total{code=\"4001\"} 1"), "{m}");
    let l = a.call(Request::TermList).await.unwrap();
    assert_eq!(l["terminals"][0]["state"], "running");
    assert_eq!(l["terminals"][0]["attached"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_ends_every_session_and_leaves_no_zombies() {
    let mut ws = Workspace::start(&[]);
    let mut c = ws.connect().await;
    let t = c.create_terminal(json!({})).await.unwrap();
    // An orphan: its parent exits at once, it is re-parented to cove-pty.
    c.input(t, b"(sleep 0.3 &) ; echo orphaned\r")
        .await
        .unwrap();
    c.wait_output(t, "orphaned\r\n", T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        zombie_children(ws.pty_pid()).is_empty(),
        "the orphan was not reaped"
    );
    c.input(t, b"trap '' HUP; sleep 4242.19\r").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = ws.pty_pid();
    let st = ws.stop_pty();
    assert!(st.success(), "{st:?}");
    assert_eq!(c.wait_close(Duration::from_secs(5)).await.unwrap(), 4004);
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "sleep 4242\\.19"])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "a session survived the stop");
    assert!(zombie_children(pid).is_empty());
}

/// A stop waits for its clients to answer the close, so the 4004 arrives
/// (not a reset), and no longer: with clients that answer, every handler
/// ends and cove-pty does not log that it gave up on any (it would after
/// its 5 s limit, were ended handlers still counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_closing_handshake_and_no_longer() {
    let mut ws = Workspace::start(&[]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = ws.connect().await;
        clients.push(tokio::spawn(async move {
            c.wait_close(Duration::from_secs(10)).await
        }));
    }
    let mut pty = ws.pty.take().unwrap();
    let (st, pty) =
        tokio::task::spawn_blocking(move || (pty.terminate(Duration::from_secs(60)), pty))
            .await
            .unwrap();
    assert!(st.is_some_and(|st| st.success()), "{st:?}");
    for c in clients {
        assert_eq!(c.await.unwrap().unwrap(), 4004);
    }
    let log = pty.log();
    assert!(
        !log.contains("without the closing handshake"),
        "the stop waited for handlers that had ended:\n{}",
        pty.tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_gets_a_snapshot_and_input_to_a_stuck_child_is_bounded() {
    let ws = Workspace::start(&[]);
    let window = 1u64 << 20;
    let mut fast = ws.connect().await;
    let t = fast
        .create_terminal(
            json!({"command": ["sh", "-c", "head -c 30000000 /dev/zero | base64; sleep 100"]}),
        )
        .await
        .unwrap();
    let mut slow = ws.connect().await;
    slow.auto_ack = false;
    slow.call(Request::TermAttach(TerminalRef { terminal: t }))
        .await
        .unwrap();
    // The fast client reads everything; the slow one gets one window.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fast.end.get(&t).copied().unwrap_or(0) < 30_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fast client was held up"
        );
        tokio::select! {
            m = fast.next(Duration::from_millis(50)) => { if let Some(m) = m.unwrap() { fast.events.push_back(m); } }
            m = slow.next(Duration::from_millis(50)) => { if let Some(m) = m.unwrap() { slow.events.push_back(m); } }
        }
    }
    assert!(
        slow.output_bytes <= window,
        "the slow client got {} bytes",
        slow.output_bytes
    );
    // Once it acknowledges what it has, it is resynchronised by a snapshot
    // at the current position instead of the bytes it missed.
    assert_eq!(slow.snapshot_count.get(&t), Some(&1), "the attach snapshot");
    let e = slow.end[&t];
    slow.ack(t, e).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.end[&t] < 30_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "no resync snapshot: end {}",
            slow.end[&t]
        );
        if let Some(m) = slow.next(Duration::from_millis(100)).await.unwrap() {
            slow.events.push_back(m);
        }
    }
    assert_eq!(slow.snapshot_count.get(&t), Some(&2), "a resync snapshot");

    // A child that does not read its input: the queue is bounded and the
    // overflow is reported, once per second at most.
    let s = fast
        .create_terminal(json!({"command": ["sleep", "100"]}))
        .await
        .unwrap();
    let chunk = "x".repeat(60_000);
    for _ in 0..40 {
        fast.input(s, chunk.as_bytes()).await.unwrap();
    }
    let e = fast
        .wait_message("input_dropped", T, |e| {
            e["type"] == "error" && e["error"]["code"] == "input_dropped"
        })
        .await
        .unwrap();
    assert_eq!(e["id"], serde_json::Value::Null);
    assert_eq!(e["error"]["details"]["terminal"], s);
}

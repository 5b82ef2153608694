//! The editor's side of the workload: saves through cove-pty's protocol,
//! as the browser IDE makes them (`fs.write` with the version it last
//! read), often several in a row to one file. A save is acknowledged when
//! its result says `durable: true`, or when `fs.durable` follows.

use crate::content;
use crate::manifest::{self, now_ms, Op, Phase, Rec};
use crate::workspace::ORIGIN;
use anyhow::{Context, Result};
use cove_pty::client::{Client, ClientError, Connect};
use cove_pty::protocol::{FsMkdir, FsRead, FsWrite, Request, WriteEncoding};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const FILES: u64 = 3;

/// A connection to a workspace's cove-pty.
pub type Ws = Client;

/// How long one request may take before the harness calls it lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to a cove-pty the harness started itself.
pub async fn connect(ide: &str, token: &str) -> Result<Ws> {
    Connect::new(ide, token, ORIGIN)
        .client("cove-chaos")
        .connect()
        .await
        .with_context(|| format!("connecting to {ide}"))
}

/// Connects to an IDE socket URL and says hello; returns the socket and
/// the welcome. `via`, when set, is the address to open the TCP
/// connection to (the local gateway, for `<id>.ide.localhost` names that
/// need no DNS); the URL's host still goes in the `Host` header.
pub async fn connect_url(
    url: &str,
    via: Option<&str>,
    origin: &str,
    token: &str,
) -> Result<(Ws, Value)> {
    let c = Connect::url(url, token, origin)
        .via(via)
        .client("cove-chaos")
        .connect()
        .await
        .with_context(|| format!("opening {url}"))?;
    let welcome = c.welcome.clone();
    Ok((c, welcome))
}

/// Starts the worker in a terminal (a process of the workspace, killed
/// with it).
pub async fn start_worker(ws: &mut Ws, command: Vec<String>) -> Result<()> {
    ws.create_terminal(json!({"attach": false, "command": command}))
        .await
        .context("term.create of the worker")?;
    Ok(())
}

/// Saves until the connection dies (the kill), recording each save in the
/// manifest `recs` (shared with the worker, which appends to the same
/// file). `next_version` persists across cycles so versions never repeat.
pub async fn save_loop(
    mut ws: Ws,
    seed: u64,
    cycle: u64,
    next_version: Arc<Mutex<HashMap<String, u64>>>,
    recs: Arc<Mutex<manifest::Writer>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut versions: HashMap<String, Value> = HashMap::new();
    // Saves waiting for `fs.durable`: request id -> (lineage, version).
    let mut pending: HashMap<u64, (String, u64)> = HashMap::new();
    let push = |r: Rec| {
        // A save the manifest does not know of is never checked: say so.
        if let Err(e) = recs
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))
            .and_then(|mut w| w.put(&r))
        {
            tracing::error!(error = %e, "the editor could not record a save in the manifest");
        }
    };
    let rec = |phase, lineage: &str, v: u64, sync: bool| Rec {
        t: now_ms(),
        op: Op::Save,
        phase,
        path: format!("ed/{lineage}"),
        lineage: lineage.into(),
        version: v,
        sync,
        count: 0,
        cycle,
    };
    // `fs.durable` of a save answered `durable: false` (§9.6): its Done.
    let settle = |ws: &mut Ws, pending: &mut HashMap<u64, (String, u64)>| {
        for ev in std::mem::take(&mut ws.events) {
            if ev["type"] == "fs.durable" {
                if let Some((l, pv)) = ev["request"].as_u64().and_then(|r| pending.remove(&r)) {
                    push(rec(Phase::Done, &l, pv, true));
                }
            }
        }
    };
    let mkdir = Request::FsMkdir(FsMkdir {
        path: "ed".into(),
        parents: None,
    });
    // `already_exists` after the first cycle; only a lost connection ends
    // the loop.
    if let Err(e) = ws.call(mkdir).await {
        if !matches!(e, ClientError::Server(_)) {
            return;
        }
    }
    let mut burst = 0;
    let mut k = 0;
    loop {
        if burst == 0 {
            k = rng.random_range(0..FILES);
            // Rapid saves of one file, as an editor with autosave makes.
            burst = rng.random_range(1..6);
        }
        burst -= 1;
        let lineage = format!("e{k}");
        let path = format!("ed/{lineage}");
        if !versions.contains_key(&lineage) {
            let read = Request::FsRead(FsRead {
                path: path.clone(),
                encoding: None,
            });
            let r = match ws.call(read).await {
                Ok(r) => r,
                // Not there yet (a save of a new file), or refused: the
                // write's conflict then says which version it has.
                Err(ClientError::Server(_)) => json!({ "version": null }),
                Err(_) => return,
            };
            versions.insert(lineage.clone(), r["version"].clone());
        }
        settle(&mut ws, &mut pending);
        let v = {
            let Ok(mut m) = next_version.lock() else {
                return;
            };
            let e = m.entry(lineage.clone()).or_insert(1);
            *e += 1;
            *e - 1
        };
        let text =
            String::from_utf8_lossy(&content::make(&lineage, v, rng.random_range(0..30_000)))
                .into_owned();
        push(rec(Phase::Begin, &lineage, v, false));
        let write = Request::FsWrite(FsWrite {
            path,
            content: text,
            encoding: WriteEncoding::Utf8,
            base_version: versions[&lineage].as_str().map(str::to_string),
            parents: None,
        });
        let id = match ws.send_request(write.to_message(0)).await {
            Ok(id) => id,
            Err(_) => return,
        };
        // The result; any fs.durable that arrives first waits in events.
        match ws.answer(id, "fs.write", REQUEST_TIMEOUT).await {
            Ok(r) => {
                versions.insert(lineage.clone(), r["version"].clone());
                let durable = r["durable"] == true;
                push(rec(Phase::Done, &lineage, v, durable));
                if !durable {
                    pending.insert(id, (lineage.clone(), v));
                }
            }
            // A conflict (or anything else): read the version again.
            Err(ClientError::Server(_)) => {
                versions.remove(&lineage);
            }
            Err(_) => return,
        }
        settle(&mut ws, &mut pending);
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..40))).await;
    }
}

//! The editor's side of the workload: saves through cove-pty's protocol,
//! as the browser IDE makes them (`fs.write` with the version it last
//! read), often several in a row to one file. A save is acknowledged when
//! its result says `durable: true`, or when `fs.durable` follows.

use crate::content;
use crate::manifest::{self, now_ms, Op, Phase, Rec};
use crate::workspace::ORIGIN;
use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const FILES: u64 = 3;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to a cove-pty the harness started itself.
pub async fn connect(ide: &str, token: &str) -> Result<Ws> {
    Ok(connect_url(&format!("ws://{ide}/ws"), None, ORIGIN, token)
        .await?
        .0)
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
    let mut req = url.into_client_request()?;
    let h = req.headers_mut();
    h.insert("origin", origin.parse()?);
    h.insert(
        "sec-websocket-protocol",
        format!("cove.v1, cove.token.{token}").parse()?,
    );
    let (mut ws, _) = match via {
        Some(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await
                .with_context(|| format!("opening {url} through {addr}"))?
        }
        None => tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("opening {url}"))?,
    };
    ws.send(Message::Text(
        json!({"type":"hello","id":1,"protocol":1})
            .to_string()
            .into(),
    ))
    .await?;
    let hello = next(&mut ws, |v| v["id"] == 1).await?;
    if !hello["result"].is_object() {
        bail!("hello refused: {hello}");
    }
    Ok((ws, hello["result"].clone()))
}

/// The next JSON message that `pred` accepts (others are skipped).
async fn next(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    loop {
        let Some(m) = ws.next().await else {
            bail!("connection closed");
        };
        if let Message::Text(t) = m? {
            let v: Value = serde_json::from_str(&t)?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

pub async fn request(ws: &mut Ws, id: u64, mut req: Value) -> Result<Value> {
    req["id"] = json!(id);
    ws.send(Message::Text(req.to_string().into())).await?;
    next(ws, |v| v["id"] == id).await
}

/// Starts the worker in a terminal (a process of the workspace, killed
/// with it).
pub async fn start_worker(ws: &mut Ws, command: Vec<String>) -> Result<()> {
    let r = request(
        ws,
        2,
        json!({"type":"term.create","cols":80,"rows":24,"attach":false,"command":command}),
    )
    .await?;
    if !r["result"]["terminal"]["id"].is_u64() {
        bail!("term.create refused: {r}");
    }
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
    if request(&mut ws, 3, json!({"type":"fs.mkdir","path":"ed"}))
        .await
        .is_err()
    {
        return;
    }
    let mut id = 10u64;
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
        id += 1;
        if !versions.contains_key(&lineage) {
            let Ok(r) = request(&mut ws, id, json!({"type":"fs.read","path":path})).await else {
                return;
            };
            versions.insert(lineage.clone(), r["result"]["version"].clone());
            id += 1;
        }
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
        let req = json!({"type":"fs.write","path":path,"content":text,"encoding":"utf8",
            "base_version": versions[&lineage]});
        if ws
            .send(Message::Text({
                let mut r = req;
                r["id"] = json!(id);
                r.to_string().into()
            }))
            .await
            .is_err()
        {
            return;
        }
        // The result, taking any fs.durable that arrives first.
        let r = loop {
            let Some(Ok(m)) = ws.next().await else { return };
            let Message::Text(t) = m else { continue };
            let Ok(val) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            if val["type"] == "fs.durable" {
                if let Some((l, pv)) = val["request"].as_u64().and_then(|r| pending.remove(&r)) {
                    push(rec(Phase::Done, &l, pv, true));
                }
                continue;
            }
            if val["id"] == id {
                break val;
            }
        };
        if r["result"].is_object() {
            versions.insert(lineage.clone(), r["result"]["version"].clone());
            let durable = r["result"]["durable"] == true;
            push(rec(Phase::Done, &lineage, v, durable));
            if !durable {
                pending.insert(id, (lineage.clone(), v));
            }
        } else {
            // A conflict (or anything else): read the version again.
            versions.remove(&lineage);
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..40))).await;
    }
}

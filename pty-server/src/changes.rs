//! The change feed (protocol.md §10): one stream from the sidecar, fanned
//! out to every subscription, coalesced per subscription so that a flood
//! (npm install) becomes at most one `overflow` per second per client
//! instead of a queue.

use crate::files::TMP_MARKER;
use crate::outbox::Outbox;
use crate::sidecar::{ChangeEvent, Sidecar};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

struct Sub {
    conn: u64,
    path: String,
    out: Outbox,
    pending: Vec<Event>,
    overflow: bool,
    not_before: Instant,
}

pub struct Feed {
    subs: Mutex<HashMap<u64, Sub>>,
    next: Mutex<u64>,
    coalesce: Duration,
    max_batch: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn is_tmp(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|n| n.contains(TMP_MARKER))
}

fn kind(k: &str) -> Option<&'static str> {
    Some(match k {
        "create" => "create",
        "modify" => "modify",
        "delete" => "delete",
        "rename" => "rename",
        "overflow" => "overflow",
        _ => return None,
    })
}

/// Adds `e` to a batch, merging it into an earlier event for the same path
/// when no rename involving that path lies between them.
pub fn merge(batch: &mut Vec<Event>, e: Event) {
    if e.kind != "rename" {
        let mut found = None;
        for (i, old) in batch.iter().enumerate().rev() {
            if old.kind == "rename" && (old.path == e.path || old.from.as_deref() == Some(&e.path))
            {
                break;
            }
            if old.path == e.path {
                found = Some(i);
                break;
            }
        }
        if let Some(i) = found {
            let merged = match (batch[i].kind, e.kind) {
                ("create", "modify") => Some(Some("create")),
                ("create", "delete") => Some(None),
                ("modify", "modify") => Some(Some("modify")),
                ("modify", "delete") => Some(Some("delete")),
                ("delete", "create") => Some(Some("modify")),
                ("create", "create") => Some(Some("create")),
                ("delete", "delete") => Some(Some("delete")),
                _ => None,
            };
            match merged {
                Some(Some(k)) => {
                    batch[i].kind = k;
                    return;
                }
                Some(None) => {
                    batch.remove(i);
                    return;
                }
                None => {}
            }
        }
    }
    batch.push(e);
}

impl Feed {
    pub fn new(
        coalesce: Duration,
        max_batch: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let f = Arc::new(Feed {
            subs: Mutex::new(HashMap::new()),
            next: Mutex::new(1),
            coalesce,
            max_batch,
            metrics,
        });
        let me = f.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.coalesce);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.flush_batches();
            }
        });
        f
    }

    pub fn subscribe(&self, out: &Outbox, path: &str) -> u64 {
        let mut n = self.next.lock();
        let id = *n;
        *n += 1;
        self.subs.lock().insert(
            id,
            Sub {
                conn: out.conn,
                path: path.to_string(),
                out: out.clone(),
                pending: Vec::new(),
                overflow: false,
                not_before: Instant::now(),
            },
        );
        id
    }

    pub fn count(&self, conn: u64) -> usize {
        self.subs.lock().values().filter(|s| s.conn == conn).count()
    }

    pub fn unsubscribe(&self, conn: u64, id: u64) -> bool {
        let mut subs = self.subs.lock();
        if subs.get(&id).is_some_and(|s| s.conn == conn) {
            subs.remove(&id);
            true
        } else {
            false
        }
    }

    pub fn leave(&self, conn: u64) {
        self.subs.lock().retain(|_, s| s.conn != conn);
    }

    /// One event from the sidecar.
    pub fn publish(&self, raw: ChangeEvent) {
        let Some(k) = kind(&raw.kind) else { return };
        if k == "overflow" {
            self.overflow_all();
            return;
        }
        let mut e = Event {
            kind: k,
            path: raw.path,
            from: raw.from,
        };
        // cove-pty's own temp files are invisible; renaming one into place
        // is a change of the destination.
        if is_tmp(&e.path) {
            return;
        }
        if k == "rename" && e.from.as_deref().is_some_and(is_tmp) {
            e = Event {
                kind: "modify",
                path: e.path,
                from: None,
            };
        }
        let mut subs = self.subs.lock();
        for s in subs.values_mut() {
            let hit =
                under(&e.path, &s.path) || e.from.as_deref().is_some_and(|f| under(f, &s.path));
            if hit && !s.overflow {
                merge(&mut s.pending, e.clone());
                if s.pending.len() > self.max_batch * 4 {
                    s.overflow = true;
                    s.pending.clear();
                }
            }
        }
    }

    /// The stream was lost, or the sidecar overflowed: every subscription
    /// must re-list.
    pub fn overflow_all(&self) {
        for s in self.subs.lock().values_mut() {
            s.overflow = true;
            s.pending.clear();
        }
    }

    fn flush_batches(&self) {
        let now = Instant::now();
        let mut subs = self.subs.lock();
        for (id, s) in subs.iter_mut() {
            if (s.pending.is_empty() && !s.overflow) || now < s.not_before {
                continue;
            }
            // A socket that cannot keep up gets an overflow, not a queue.
            if s.out.backlog() > 1 << 20 {
                s.overflow = true;
                s.pending.clear();
                continue;
            }
            let events = if s.overflow || s.pending.len() > self.max_batch {
                s.not_before = now + Duration::from_secs(1);
                s.pending.clear();
                vec![Event {
                    kind: "overflow",
                    path: s.path.clone(),
                    from: None,
                }]
            } else {
                std::mem::take(&mut s.pending)
            };
            s.overflow = false;
            for e in &events {
                self.metrics
                    .change_events
                    .get_or_create(&crate::metrics::KindLabel {
                        kind: e.kind.into(),
                    })
                    .inc();
            }
            s.out.text(
                serde_json::json!({"type": "fs.changes", "subscription": id, "events": events})
                    .to_string(),
            );
        }
    }

    /// Follows the sidecar's change feed for the life of the server,
    /// reconnecting (with an overflow for everyone) when it drops.
    pub async fn follow(self: Arc<Self>, sidecar: Sidecar) {
        use futures::StreamExt;
        let mut first = true;
        loop {
            match sidecar.changes().await {
                Ok(resp) => {
                    tracing::info!("following the sidecar's change feed");
                    if !first {
                        self.overflow_all();
                    }
                    first = false;
                    let mut buf: Vec<u8> = Vec::new();
                    let mut body = resp.bytes_stream();
                    while let Some(chunk) = body.next().await {
                        let Ok(chunk) = chunk else { break };
                        buf.extend_from_slice(&chunk);
                        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            match serde_json::from_slice::<ChangeEvent>(&line) {
                                Ok(ev) => {
                                    tracing::debug!(?ev, "change");
                                    self.publish(ev)
                                }
                                Err(e) => tracing::warn!(error = %e, "unreadable change event"),
                            }
                        }
                    }
                    tracing::info!("the sidecar's change feed ended; reconnecting");
                    self.overflow_all();
                }
                Err(e) => tracing::debug!(error = %e, "change feed not available yet"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &'static str, path: &str) -> Event {
        Event {
            kind,
            path: path.into(),
            from: None,
        }
    }

    #[test]
    fn merging_follows_the_table() {
        let mut b = Vec::new();
        merge(&mut b, ev("create", "a"));
        merge(&mut b, ev("modify", "a"));
        merge(&mut b, ev("modify", "b"));
        merge(&mut b, ev("modify", "b"));
        assert_eq!(b, [ev("create", "a"), ev("modify", "b")]);
        merge(&mut b, ev("delete", "a"));
        assert_eq!(b, [ev("modify", "b")]);
        merge(&mut b, ev("delete", "b"));
        merge(&mut b, ev("create", "b"));
        assert_eq!(b, [ev("modify", "b")]);
        // A rename in between keeps events apart.
        merge(
            &mut b,
            Event {
                kind: "rename",
                path: "c".into(),
                from: Some("b".into()),
            },
        );
        merge(&mut b, ev("create", "b"));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(under("src/a.rs", "src"));
        assert!(under("src", "src"));
        assert!(!under("srcx/a", "src"));
        assert!(under("anything", ""));
        assert!(is_tmp("dir/.a.txt.cove-tmp-0011223344556677"));
        assert!(!is_tmp("dir/a.txt"));
    }
}

//! What a connection sends: one queue per WebSocket, drained by its writer.
//!
//! The queue is unbounded, but everything that feeds it is bounded
//! elsewhere: terminal output by the flow-control window (§7), change events
//! by coalescing (§10), results by `max_in_flight` and the backlog check
//! below, which stops a connection from starting new requests while more than
//! [`BACKLOG_LIMIT`] bytes wait to be written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

pub const BACKLOG_LIMIT: usize = 16 << 20;

#[derive(Debug)]
pub enum Out {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Close(u16, String),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Text(s) => s.len(),
            Out::Binary(b) => b.len(),
            Out::Close(..) | Out::Ping => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outbox {
    pub conn: u64,
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<AtomicUsize>,
}

pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<AtomicUsize>,
}

pub fn channel(conn: u64) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            conn,
            tx,
            queued: queued.clone(),
        },
        Inbox { rx, queued },
    )
}

impl Outbox {
    /// Queues a message; false once the connection is gone.
    pub fn send(&self, o: Out) -> bool {
        self.queued.fetch_add(o.len(), Ordering::Relaxed);
        self.tx.send(o).is_ok()
    }

    pub fn text(&self, s: String) -> bool {
        self.send(Out::Text(s))
    }

    pub fn binary(&self, b: Vec<u8>) -> bool {
        self.send(Out::Binary(b))
    }

    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl Inbox {
    pub async fn recv(&mut self) -> Option<Out> {
        let o = self.rx.recv().await?;
        self.queued.fetch_sub(o.len(), Ordering::Relaxed);
        Some(o)
    }
}

//! When the workspace was last used, for the controller's idle shutdown.
//!
//! Only what a person does counts (requests, keystrokes, preview traffic,
//! connections opening or closing). Terminal output does not: a dev server
//! printing logs must not keep an abandoned workspace alive forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct Activity {
    last_active_ms: AtomicU64,
    last_preview_ms: AtomicU64,
    last_output_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            last_active_ms: AtomicU64::new(now_ms()),
            last_preview_ms: AtomicU64::new(0),
            last_output_ms: AtomicU64::new(0),
        }
    }

    /// Something a person did just now.
    pub fn touch(&self) {
        self.last_active_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    /// A preview request or a message on a proxied WebSocket.
    pub fn touch_preview(&self) {
        let now = now_ms();
        self.last_active_ms.fetch_max(now, Ordering::Relaxed);
        self.last_preview_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Terminal output: reported separately, so that the controller can
    /// decide whether a long job that prints keeps a workspace alive.
    pub fn touch_output(&self) {
        self.last_output_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_output_ms(&self) -> u64 {
        self.last_output_ms.load(Ordering::Relaxed)
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    pub fn last_preview_ms(&self) -> u64 {
        self.last_preview_ms.load(Ordering::Relaxed)
    }
}

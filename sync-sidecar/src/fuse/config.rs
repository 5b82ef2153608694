//! How the mount is served: kernel cache lifetimes, passthrough, threads.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FuseConfig {
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
    /// Use kernel passthrough for reads and writes when the kernel has it.
    pub passthrough: bool,
    /// ...for files at least this large when opened. Setting up a backing
    /// file costs two ioctls, more than a small file's one read through
    /// the daemon (measured: reading the 20k-file tree is 16% faster
    /// without passthrough), so small and new files go through the daemon.
    pub passthrough_min_size: u64,
    pub threads: usize,
}

impl Default for FuseConfig {
    fn default() -> Self {
        Self {
            // The sidecar is the only writer of the cache and the kernel
            // updates size and times itself on writes through the mount.
            entry_ttl: Duration::from_secs(60),
            attr_ttl: Duration::from_secs(60),
            passthrough: true,
            passthrough_min_size: 256 * 1024,
            threads: 4,
        }
    }
}

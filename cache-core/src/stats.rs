//! Per-cache counters: hits, misses, degraded calls, timeouts, corrupt entries evicted.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::backend::Unavailable;

/// What one cache has seen since its manager was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// The registry field of the cache.
    pub field: &'static str,
    /// The cache's namespace.
    pub namespace: &'static str,
    /// Keys read that were found (an `mget` counts each key).
    pub hits: u64,
    /// Keys read that were absent or expired (an `mget` counts each key).
    pub misses: u64,
    /// Calls that degraded (read as a miss, wrote nothing) because the backend was
    /// unavailable: not connected, breaker open, timed out or failed.
    pub degraded: u64,
    /// Of the degraded calls, those that hit the response timeout.
    pub timeouts: u64,
    /// Entries that did not decode and were deleted.
    pub corrupt_evicted: u64,
}

/// The live counters behind [`CacheStats`]; relaxed atomics, they are only statistics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    degraded: AtomicU64,
    timeouts: AtomicU64,
    corrupt: AtomicU64,
}

impl Counters {
    pub(crate) fn hits(&self, n: u64) {
        if n > 0 {
            self.hits.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn misses(&self, n: u64) {
        if n > 0 {
            self.misses.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn degraded(&self, why: Unavailable) {
        self.degraded.fetch_add(1, Ordering::Relaxed);
        if why == Unavailable::Timeout {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn corrupt(&self) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, field: &'static str, namespace: &'static str) -> CacheStats {
        CacheStats {
            field,
            namespace,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            degraded: self.degraded.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            corrupt_evicted: self.corrupt.load(Ordering::Relaxed),
        }
    }
}

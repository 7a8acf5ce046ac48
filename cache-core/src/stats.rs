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
///
/// With the `metrics` feature every count also goes to the `metrics` facade, labelled with
/// the namespace: `cache_hits_total`, `cache_misses_total`, `cache_degraded_total`,
/// `cache_timeouts_total`, `cache_corrupt_evicted_total`. The recorder is looked up at
/// each count, so one installed after the manager was created still sees everything.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    namespace: &'static str,
    hits: AtomicU64,
    misses: AtomicU64,
    degraded: AtomicU64,
    timeouts: AtomicU64,
    corrupt: AtomicU64,
}

impl Counters {
    pub(crate) fn new(namespace: &'static str) -> Self {
        Counters {
            namespace,
            ..Counters::default()
        }
    }

    pub(crate) fn hits(&self, n: u64) {
        if n > 0 {
            self.hits.fetch_add(n, Ordering::Relaxed);
            self.export("cache_hits_total", n);
        }
    }

    pub(crate) fn misses(&self, n: u64) {
        if n > 0 {
            self.misses.fetch_add(n, Ordering::Relaxed);
            self.export("cache_misses_total", n);
        }
    }

    pub(crate) fn degraded(&self, why: Unavailable) {
        self.degraded.fetch_add(1, Ordering::Relaxed);
        self.export("cache_degraded_total", 1);
        if why == Unavailable::Timeout {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            self.export("cache_timeouts_total", 1);
        }
    }

    pub(crate) fn corrupt(&self) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        self.export("cache_corrupt_evicted_total", 1);
    }

    #[cfg(feature = "metrics")]
    fn export(&self, name: &'static str, n: u64) {
        metrics::counter!(name, "namespace" => self.namespace).increment(n);
    }

    #[cfg(not(feature = "metrics"))]
    #[inline(always)]
    fn export(&self, _: &'static str, _: u64) {}

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

//! What the caches of one manager share: the current backend and the first levels.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::backend::Backend;
use crate::config::CacheConfig;
use crate::local::LocalLevels;

/// What the caches of one manager share.
pub(crate) struct Shared {
    backend: ArcSwap<Backend>,
    pub(crate) locals: Arc<LocalLevels>,
    /// The settings of the last `connect`: read-through takes its throttle, waits and
    /// background timeout from here.
    config: ArcSwap<CacheConfig>,
    /// The prefix every key of the manager is under (`prefix=` of the last `connect`).
    prefix: arc_swap::ArcSwapOption<String>,
    /// Counts the backends put in place: what a cache recorded in one store (its
    /// layout) must be recorded again in the next.
    epoch: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Not connected: every call degrades until a backend replaces it.
    pub(crate) fn new() -> Self {
        Shared {
            backend: ArcSwap::from_pointee(Backend::Disconnected),
            locals: Arc::new(LocalLevels::new()),
            config: ArcSwap::from_pointee(CacheConfig::default()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            prefix: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The prefix every key of the manager is under, if any: read on every call that
    /// builds a key, without touching a reference count.
    pub(crate) fn prefix(&self) -> arc_swap::Guard<Option<Arc<String>>> {
        self.prefix.load()
    }

    /// Which backend is in place: it moves whenever `connect` or `disconnect` replaces it.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The settings of the last `connect` (the defaults before one).
    pub(crate) fn config(&self) -> Arc<CacheConfig> {
        self.config.load_full()
    }

    /// The manager-wide value size limit, read on every write of a cache without its
    /// own: a load of the current settings, without touching a reference count.
    pub(crate) fn max_value_bytes(&self) -> Option<usize> {
        self.config.load().max_value_bytes
    }

    pub(crate) fn set_config(&self, config: CacheConfig) {
        self.prefix.store(config.key_prefix.clone().map(Arc::new));
        self.config.store(Arc::new(config));
    }

    /// The backend for one call. Holding the `Arc` keeps a backend that `connect`
    /// replaces alive until the calls already using it finish.
    pub(crate) fn backend(&self) -> Arc<Backend> {
        self.backend.load_full()
    }

    /// Puts `backend` in place for the calls that start from now on; the previous one.
    pub(crate) fn replace(&self, backend: Backend) -> Arc<Backend> {
        let previous = self.backend.swap(Arc::new(backend));
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        previous
    }
}

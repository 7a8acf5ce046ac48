//! The state every registry manager wraps: the current backend, shared by all its caches.

use std::fmt;
use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::cluster::ClusterBackend;
use crate::backend::memory::MemoryStore;
use crate::backend::redis::RedisBackend;
use crate::cache::Cache;
use crate::config::{self, CacheConfig, Target};
use crate::error::CacheError;
use crate::handle::TypedCache;
use crate::health::Health;
use crate::registry::{self, CacheInfo};
use crate::shared::Shared;
use crate::stats::{CacheStats, Counters};

/// The engine behind a `cache_registry!` manager. Not meant to be used directly.
#[doc(hidden)]
pub struct ManagerCore {
    pub(crate) shared: Arc<Shared>,
    caches: &'static [CacheInfo],
    counters: std::sync::Mutex<Vec<(&'static str, &'static str, Arc<Counters>)>>,
}

impl fmt::Debug for ManagerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &*self.shared.backend() {
            Backend::Disconnected => "none",
            Backend::Memory(_) => "memory",
            Backend::Redis(r) => r.kind(),
            Backend::Cluster(_) => "redis-cluster",
        };
        f.debug_struct("ManagerCore")
            .field("backend", &backend)
            .field("caches", &self.caches.len())
            .finish()
    }
}

impl ManagerCore {
    /// A manager that is not connected: every cache call degrades until `connect`.
    pub fn new(caches: &'static [CacheInfo]) -> Self {
        ManagerCore {
            shared: Arc::new(Shared::new()),
            caches,
            counters: std::sync::Mutex::default(),
        }
    }

    /// A handle on this manager's connection for cache `C`, registered as `field`.
    pub fn cache<C: Cache>(&self, field: &'static str) -> TypedCache<C> {
        let (handle, counters) = registry::handle_on::<C>(&self.shared, field);
        self.counted(field, C::NAMESPACE, counters);
        handle
    }

    fn counted(&self, field: &'static str, namespace: &'static str, counters: Arc<Counters>) {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((field, namespace, counters));
    }

    /// The handle of the registered cache `field`, typed as the registry's field declares
    /// it. Unlike [`cache`](Self::cache) this asks nothing of `C`: the registry's
    /// `CACHES` entry for the field is the one place that needs `C: Cache`, so a type
    /// that is not a cache fails there alone.
    ///
    /// # Panics
    ///
    /// When no cache `field` of type `C` was registered: only code that calls this
    /// directly, with another type than its registry's, can get there.
    pub fn registered<C: 'static>(&self, field: &'static str) -> TypedCache<C> {
        let info = self.caches.iter().find(|info| info.field == field);
        let built = info.and_then(|info| {
            let (handle, counters) = (info.build.0)(&self.shared, field);
            let handle = handle.downcast::<TypedCache<C>>().ok()?;
            self.counted(field, info.namespace, counters);
            Some(handle)
        });
        match built {
            Some(handle) => *handle,
            None => panic!(
                "no cache `{field}` of type `{}` is registered",
                std::any::type_name::<C>()
            ),
        }
    }

    /// Every cache's counters, in registration order.
    pub fn stats(&self) -> Vec<CacheStats> {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .iter()
            .map(|(field, ns, c)| c.snapshot(field, ns))
            .collect()
    }

    /// Connects to `url` with the default [`CacheConfig`], replacing any current backend.
    pub async fn connect(&self, url: &str) -> Result<(), CacheError> {
        self.connect_with(url, &CacheConfig::default()).await
    }

    /// Connects to `url` with `config`, replacing any current backend.
    pub async fn connect_with(&self, url: &str, config: &CacheConfig) -> Result<(), CacheError> {
        config.validate()?;
        let locals = &self.shared.locals;
        let backend = match config::parse(url, config)? {
            Target::Memory => {
                // One process, one store: nothing can change behind the first levels.
                locals.reset(true);
                tracing::info!(
                    backend = "memory",
                    caches = self.caches.len(),
                    "cache connected"
                );
                self.shared.set_config(config.clone());
                Backend::Memory(MemoryStore::default())
            }
            Target::Redis(settings) => {
                // The URL's options are part of the settings in force.
                self.shared.set_config(settings.config.clone());
                // Readable again once the new connection hears invalidations.
                Backend::Redis(RedisBackend::start(*settings, Arc::clone(locals)).await)
            }
            Target::Sentinel(settings) => {
                self.shared.set_config(settings.config.clone());
                Backend::Redis(RedisBackend::start_sentinel(*settings, Arc::clone(locals)).await)
            }
            Target::Cluster(settings) => {
                self.shared.set_config(settings.config.clone());
                // Unreadable until every master's listener hears: a cluster whose seeds
                // do not answer starts none, and what the levels hold came from the
                // previous backend.
                locals.reset(false);
                Backend::Cluster(ClusterBackend::start(*settings, Arc::clone(locals)).await)
            }
        };
        self.shared.replace(backend);
        Ok(())
    }

    /// Drops the connection; cache calls degrade until the next `connect`.
    pub async fn disconnect(&self) {
        let previous = self.shared.replace(Backend::Disconnected);
        self.shared.locals.reset(false);
        if !matches!(*previous, Backend::Disconnected) {
            tracing::info!("cache disconnected");
        }
    }

    /// Pings the backend and reports its state.
    pub async fn health(&self) -> Health {
        // Disconnected and `memory://` answer without waiting: a loop polling health must
        // still yield (see `observe`).
        tokio::task::consume_budget().await;
        let mut health = self.shared.backend().health().await;
        health.key_prefix = self.shared.prefix().as_ref().map(|p| p.to_string());
        health
    }

    /// The registered caches.
    pub fn caches(&self) -> &'static [CacheInfo] {
        self.caches
    }
}

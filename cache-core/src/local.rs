//! The optional in-process first level of a cache (`#[cache(..., local = N)]`).
//!
//! Entries are kept by their Redis key, so an invalidation message naming a Redis key
//! finds them. Several instances of an application stay coherent through Redis pub/sub:
//! every write or invalidation of a cache with a local level publishes the Redis key, and
//! every instance drops it from its own level. A level is only read while its manager
//! knows it hears those messages (subscribed, or the in-process `memory://` backend);
//! when that is lost it is emptied, since invalidations may have been missed.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The channel invalidations travel on.
pub(crate) const CHANNEL: &str = "cache-manager:invalidate";

/// What the manager can do to a cache's level without knowing its value type.
#[doc(hidden)]
pub trait Invalidate: Send + Sync + 'static {
    /// Drops the entry of a Redis key.
    fn remove(&self, key: &str);
    /// Drops every entry.
    fn clear(&self);
}

/// A cache's first level: none, or a bounded in-process map. Chosen by the derive.
#[doc(hidden)]
pub trait LocalLevel<V>: Invalidate {
    /// Whether this level stores anything.
    const ENABLED: bool;
    /// A level of at most `capacity` entries, each kept at most `ttl`.
    fn new(capacity: u64, ttl: Duration) -> Self;
    /// The entry of a Redis key.
    fn get(&self, key: &str) -> Option<V>;
    /// A counter that moves on every removal, read before fetching from Redis.
    fn generation(&self) -> u64;
    /// Stores a value fetched from Redis, unless an invalidation happened since
    /// `generation` was read: the value may be older than the invalidation.
    fn insert_if_current(&self, key: String, value: &V, generation: u64);
}

/// No first level: every read goes to the backend.
#[doc(hidden)]
#[derive(Debug)]
pub enum NoLocal {}

impl<V: 'static> LocalLevel<V> for NoLocal {
    const ENABLED: bool = false;
    fn new(_: u64, _: Duration) -> Self {
        unreachable!("a disabled level is never built")
    }
    fn get(&self, _: &str) -> Option<V> {
        match *self {}
    }
    fn generation(&self) -> u64 {
        match *self {}
    }
    fn insert_if_current(&self, _: String, _: &V, _: u64) {
        match *self {}
    }
}

impl Invalidate for NoLocal {
    fn remove(&self, _: &str) {
        match *self {}
    }
    fn clear(&self) {
        match *self {}
    }
}

/// A bounded in-process level on moka, with a TTL no longer than the cache's.
#[doc(hidden)]
pub struct Moka<V> {
    entries: moka::sync::Cache<String, V>,
    generation: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> LocalLevel<V> for Moka<V> {
    const ENABLED: bool = true;

    fn new(capacity: u64, ttl: Duration) -> Self {
        Moka {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        self.entries.get(key)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn insert_if_current(&self, key: String, value: &V, generation: u64) {
        if self.generation.load(Ordering::Acquire) == generation {
            self.entries.insert(key.clone(), value.clone());
            // An invalidation that raced the insert must still win.
            if self.generation.load(Ordering::Acquire) != generation {
                self.entries.invalidate(&key);
            }
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Invalidate for Moka<V> {
    fn remove(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key);
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }
}

/// Every local level of one manager, and whether they may be read.
#[derive(Default)]
pub(crate) struct LocalLevels {
    levels: Mutex<Vec<(&'static str, Arc<dyn Invalidate>)>>,
    coherent: AtomicBool,
    /// Identifies this manager's own messages, which it ignores.
    pub(crate) instance: String,
}

impl LocalLevels {
    pub(crate) fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let id = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        LocalLevels {
            instance: format!("{id:016x}"),
            ..LocalLevels::default()
        }
    }

    pub(crate) fn register(&self, namespace: &'static str, level: Arc<dyn Invalidate>) {
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((namespace, level));
    }

    pub(crate) fn any(&self) -> bool {
        !self
            .levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether levels may be read and filled.
    pub(crate) fn coherent(&self) -> bool {
        self.coherent.load(Ordering::Acquire)
    }

    /// Marks the levels readable (`true`: invalidations are heard) or not; either way
    /// they start empty, since what they held may be stale.
    pub(crate) fn set_coherent(&self, coherent: bool) {
        self.coherent.store(false, Ordering::Release);
        for (_, level) in self.levels.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            level.clear();
        }
        self.coherent.store(coherent, Ordering::Release);
    }

    /// Applies an invalidation message: `{instance}|{redis key}`. Own messages are
    /// ignored: the writer already updated its level.
    pub(crate) fn apply(&self, message: &str) {
        let Some((instance, key)) = message.split_once('|') else {
            return;
        };
        if instance == self.instance {
            return;
        }
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        // Namespaces of one registry are never `:`-prefixes of each other, so at most one
        // level owns the key.
        if let Some((ns, level)) = levels.iter().find(|(ns, _)| {
            key.len() > ns.len() && key.starts_with(ns) && key.as_bytes()[ns.len()] == b':'
        }) {
            // `{namespace}:*` is a clear of the whole namespace.
            if key.len() == ns.len() + 2 && key.ends_with(":*") {
                level.clear();
            } else {
                level.remove(key);
            }
        }
    }

    /// The message announcing a change to `key`.
    pub(crate) fn message(&self, key: &str) -> String {
        format!("{}|{key}", self.instance)
    }
}

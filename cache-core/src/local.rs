//! The optional in-process first level of a cache (`#[cache(..., local = N)]`).
//!
//! Entries are kept by their Redis key, so an invalidation message naming a Redis key
//! finds them. Several instances of an application stay coherent through Redis pub/sub:
//! every write or invalidation of a cache with a local level publishes the Redis key, and
//! every instance drops it from its own level. A level is only read while its manager
//! knows it hears those messages (subscribed, or the in-process `memory://` backend);
//! when that is lost it is emptied, since invalidations may have been missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The channel invalidations travel on, for managers without a key prefix.
const CHANNEL: &str = "cache-manager:invalidate";
/// The channel the ends of global single-flight loads travel on, likewise.
const LOADS: &str = "cache-manager:loads";

/// The pub/sub channels of the managers under one key prefix: invalidations and the
/// ends of loads, suffixed with the prefix, so managers of another environment or
/// tenant sharing the Redis do not even hear them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Channels {
    pub invalidate: String,
    pub loads: String,
}

impl Channels {
    pub(crate) fn for_prefix(prefix: Option<&str>) -> Self {
        match prefix {
            None => Channels {
                invalidate: CHANNEL.to_owned(),
                loads: LOADS.to_owned(),
            },
            Some(prefix) => Channels {
                invalidate: format!("{CHANNEL}:{prefix}"),
                loads: format!("{LOADS}:{prefix}"),
            },
        }
    }
}

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

/// Callers waiting for another instance's load of a key (global single flight), woken
/// by the messages the listener hears on [`LOADS`].
#[derive(Default)]
pub(crate) struct LoadWaiters {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

impl LoadWaiters {
    /// Starts waiting for the end of `redis_key`'s load. Register before asking for the
    /// lease, so an end announced in between is not missed.
    pub(crate) fn watch(self: &Arc<Self>, redis_key: &str) -> LoadWatch {
        let notify = Arc::clone(
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(redis_key.to_owned())
                .or_default(),
        );
        let notified = Box::pin(notify.clone().notified_owned());
        LoadWatch {
            waiters: Arc::clone(self),
            key: redis_key.to_owned(),
            notify,
            notified,
        }
    }

    /// A load of `redis_key` ended (stored, or given up): wakes its waiters.
    pub(crate) fn ended(&self, redis_key: &str) {
        if let Some(notify) = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(redis_key)
        {
            notify.notify_waiters();
        }
    }
}

/// One caller's wait for the end of a key's load; it stops counting when dropped.
pub(crate) struct LoadWatch {
    waiters: Arc<LoadWaiters>,
    key: String,
    notify: Arc<Notify>,
    notified: std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
}

impl LoadWatch {
    /// Waits until the load's end is announced.
    pub(crate) async fn ended(&mut self) {
        self.notified.as_mut().await;
    }
}

impl Drop for LoadWatch {
    fn drop(&mut self) {
        let mut waiting = self
            .waiters
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's copy and this one: nobody else waits for the key.
        if Arc::strong_count(&self.notify) <= 2 {
            waiting.remove(&self.key);
        }
    }
}

/// Every local level of one manager, and whether they may be read.
#[derive(Default)]
pub(crate) struct LocalLevels {
    levels: Mutex<Vec<(&'static str, Arc<dyn Invalidate>)>>,
    coherent: AtomicBool,
    /// The listener whose subscription decides coherence (0: none). A listener of a
    /// backend that was replaced, or of a cluster node that left, no longer counts.
    listener: AtomicU64,
    next_listener: AtomicU64,
    /// Identifies this manager's own messages, which it ignores.
    pub(crate) instance: String,
    /// Callers waiting for another instance's load: the listener wakes them too.
    pub(crate) loads: Arc<LoadWaiters>,
    /// Whether a cache of the manager runs global single flights, which need the
    /// listener even without a first level.
    global_flights: AtomicBool,
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

    /// Records that a cache runs global single flights.
    pub(crate) fn register_global_flights(&self) {
        self.global_flights.store(true, Ordering::Release);
    }

    /// Whether a backend must listen for messages: invalidations for first levels, or
    /// the ends of other instances' loads.
    pub(crate) fn listen_needed(&self) -> bool {
        self.any() || self.global_flights.load(Ordering::Acquire)
    }

    /// Whether levels may be read and filled.
    pub(crate) fn coherent(&self) -> bool {
        self.coherent.load(Ordering::Acquire)
    }

    /// Sets coherence for a backend without a listener (memory, disconnected), retiring
    /// any listener.
    pub(crate) fn reset(&self, coherent: bool) {
        self.listener.store(0, Ordering::Release);
        self.set_coherent(coherent);
    }

    /// Makes a new listener the one that counts; the levels are unreadable until it
    /// reports a subscription.
    pub(crate) fn claim(&self) -> u64 {
        let id = self.next_listener.fetch_add(1, Ordering::AcqRel) + 1;
        self.listener.store(id, Ordering::Release);
        self.set_coherent(false);
        id
    }

    /// A listener's subscription began (`true`) or ended; ignored unless it counts.
    pub(crate) fn heard(&self, listener: u64, subscribed: bool) {
        if self.listener.load(Ordering::Acquire) == listener {
            self.set_coherent(subscribed);
        }
    }

    /// A listener stopped for good: if it counted, the levels become unreadable.
    pub(crate) fn release(&self, listener: u64) {
        if self
            .listener
            .compare_exchange(listener, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.set_coherent(false);
        }
    }

    /// Marks the levels readable (`true`: invalidations are heard) or not; either way
    /// they start empty, since what they held may be stale.
    fn set_coherent(&self, coherent: bool) {
        self.coherent.store(false, Ordering::Release);
        for (_, level) in self.levels.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            level.clear();
        }
        self.coherent.store(coherent, Ordering::Release);
    }

    /// Applies an invalidation message: `{instance}|{redis key}`, the key under the
    /// manager's `prefix` (messages of another prefix are not heard, see [`Channels`]).
    /// Own messages are ignored: the writer already updated its level.
    pub(crate) fn apply(&self, message: &str, prefix: Option<&str>) {
        let Some((instance, full_key)) = message.split_once('|') else {
            return;
        };
        if instance == self.instance {
            return;
        }
        let key = match prefix {
            None => full_key,
            Some(prefix) => match full_key
                .strip_prefix(prefix)
                .and_then(|k| k.strip_prefix(':'))
            {
                Some(unprefixed) => unprefixed,
                None => return,
            },
        };
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        // The namespace, and what follows it: `{namespace}` for hash-tagged caches, else
        // `namespace`; then `:rest`, or `@{layout}:rest` for a cache keyed by layout, or
        // `:*` / `@*` for a clear. Namespaces of one registry are never `:`-prefixes of
        // each other and hold no `@`, so at most one level owns the key.
        let after_namespace = |ns: &str, key: &'_ str| -> Option<String> {
            let rest = key.strip_prefix(ns)?;
            match rest.as_bytes().first()? {
                b':' | b'@' => Some(rest.to_owned()),
                _ => None,
            }
        };
        let owner = match key.strip_prefix('{').and_then(|k| k.split_once('}')) {
            Some((ns, rest)) => levels
                .iter()
                .find(|(n, _)| *n == ns)
                .and_then(|(_, l)| after_namespace("", rest).map(|rest| (l, rest))),
            None => levels
                .iter()
                .find_map(|(ns, level)| after_namespace(ns, key).map(|rest| (level, rest))),
        };
        match owner {
            // `{namespace}:*` or `{namespace}@*` is a clear of the whole namespace.
            Some((level, rest)) if rest == ":*" || rest == "@*" => level.clear(),
            // Levels keep entries by their full Redis key, prefix included.
            Some((level, _)) => level.remove(full_key),
            None => {}
        }
    }

    /// The message announcing a change to `key`.
    pub(crate) fn message(&self, key: &str) -> String {
        format!("{}|{key}", self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(levels: &LocalLevels, namespace: &'static str) -> Arc<Moka<String>> {
        let level = Arc::new(<Moka<String> as LocalLevel<String>>::new(
            100,
            Duration::from_secs(60),
        ));
        levels.register(namespace, level.clone());
        level
    }

    fn fill(level: &Moka<String>, keys: &[&str]) {
        for key in keys {
            level.insert_if_current((*key).to_owned(), &"v".to_owned(), level.generation());
        }
    }

    #[test]
    fn messages_reach_the_level_that_owns_the_key() {
        let levels = LocalLevels::new();
        levels.reset(true);
        let user = level(&levels, "user");
        let users = level(&levels, "users");
        let tagged = level(&levels, "team:member");
        fill(&user, &["user:1", "user:2"]);
        fill(&users, &["users:1"]);
        fill(&tagged, &["{team:member}:1", "{team:member}:2"]);

        levels.apply("peer|user:1", None);
        assert!(user.get("user:1").is_none());
        assert!(user.get("user:2").is_some());
        assert!(
            users.get("users:1").is_some(),
            "a namespace sharing a prefix without `:` was hit"
        );

        levels.apply("peer|{team:member}:1", None);
        assert!(
            tagged.get("{team:member}:1").is_none(),
            "hash-tagged keys were not routed"
        );
        assert!(tagged.get("{team:member}:2").is_some());

        levels.apply(&levels.message("user:2"), None);
        assert!(
            user.get("user:2").is_some(),
            "an instance's own message was applied"
        );

        levels.apply("peer|{team:member}:*", None);
        assert!(
            tagged.get("{team:member}:2").is_none(),
            "a clear did not empty the level"
        );
        levels.apply("peer|users:*", None);
        assert!(users.get("users:1").is_none());
        let laid = level(&levels, "team:lead");
        fill(&laid, &["team:lead@0000abcd:1", "team:lead@0000abcd:2"]);
        levels.apply("peer|team:lead@0000abcd:1", None);
        assert!(
            laid.get("team:lead@0000abcd:1").is_none(),
            "a layout's key was not routed"
        );
        assert!(laid.get("team:lead@0000abcd:2").is_some());
        levels.apply("peer|team:lead@*", None);
        assert!(
            laid.get("team:lead@0000abcd:2").is_none(),
            "a clear of every layout"
        );
        levels.apply("peer|nobody:1", None);
        levels.apply("garbage without a separator", None);
    }

    #[test]
    fn only_the_listener_that_counts_sets_coherence() {
        let levels = LocalLevels::new();
        level(&levels, "user");
        let old = levels.claim();
        let new = levels.claim();
        levels.heard(old, true);
        assert!(
            !levels.coherent(),
            "a retired listener made the levels readable"
        );
        levels.heard(new, true);
        assert!(levels.coherent());
        levels.release(old);
        assert!(
            levels.coherent(),
            "releasing a retired listener affected the current one"
        );
        levels.release(new);
        assert!(!levels.coherent());
    }
}

//! The optional in-process first level of a cache (`#[cache(..., local = N)]`).
//!
//! Entries are kept by their Redis key, so an invalidation naming a Redis key finds them.
//! Redis itself says when a key held here changes: each connection's listener turns on
//! `CLIENT TRACKING ON BCAST` for the key prefixes of the caches with a level, and Redis
//! pushes the name of every key under them that any client writes or deletes, that
//! expires or is evicted, and a flush. A server without tracking falls back to pub/sub:
//! every write of a cache with a level publishes the Redis key, and every instance drops
//! it. A level is only read while every listener of its manager is connected (or on the
//! in-process `memory://` backend); when one is lost the levels are emptied, since
//! invalidations may have been missed. And a copy is never kept past the time its Redis
//! entry had left when it was read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
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

/// How the listeners hear of changes, as the server allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Not known yet: no listener connected.
    Unknown = 0,
    /// Redis pushes invalidations (`CLIENT TRACKING`): writes need not announce.
    Tracking = 1,
    /// The server has no tracking: writes publish their keys.
    PubSub = 2,
}

/// What the manager can do to a cache's level without knowing its value type.
#[doc(hidden)]
pub trait Invalidate: std::any::Any + Send + Sync {
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
    /// A counter that moves on every removal of `key` (and of the keys that share its
    /// stripe), read before fetching `key` from Redis.
    fn generation(&self, key: &str) -> u64;
    /// Stores a value fetched from Redis, unless an invalidation of `key` (or of a key
    /// that shares its stripe) happened since its `generation` was read: the value may be
    /// older than the invalidation. It is kept
    /// at most `fresh_for`, the time its Redis entry had left when it was read (unknown:
    /// the level's own TTL), so a copy never outlives its entry even when the entry's
    /// expiry is reported late.
    fn insert_if_current(
        &self,
        key: String,
        value: &V,
        generation: u64,
        fresh_for: Option<Duration>,
    );
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
    fn generation(&self, _: &str) -> u64 {
        match *self {}
    }
    fn insert_if_current(&self, _: String, _: &V, _: u64, _: Option<Duration>) {
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

/// A bounded in-process level on moka: each copy lives at most the level's TTL and at
/// most what its Redis entry had left when it was read.
#[doc(hidden)]
pub struct Moka<V> {
    entries: moka::sync::Cache<String, Held<V>>,
    /// Generations by stripe of keys: a removal refuses the reads in flight of its own
    /// stripe only. With one counter for the whole level, every write in the namespace
    /// (anyone's, heard through tracking) refused every read in flight, and under a
    /// steady flow of writes the level hardly ever filled.
    generations: [AtomicU64; STRIPES],
}

/// Stripes of a level's generations: a write refuses one read in flight in this many.
const STRIPES: usize = 64;

/// The stripe of a key: a fixed hash, the same for a key's reads and its removals.
fn stripe(key: &str) -> usize {
    use std::hash::BuildHasher as _;
    (foldhash::fast::FixedState::with_seed(0).hash_one(key) % STRIPES as u64) as usize
}

/// A copy and how long its Redis entry still lived when it was read.
#[derive(Clone)]
struct Held<V> {
    value: V,
    fresh_for: Option<Duration>,
}

/// Expires each copy when its Redis entry does (the level's TTL bounds it too).
struct UntilRedisExpiry;

impl<V> moka::Expiry<String, Held<V>> for UntilRedisExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        held: &Held<V>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        held.fresh_for
    }

    fn expire_after_update(
        &self,
        _: &String,
        held: &Held<V>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        held.fresh_for
    }
}

impl<V: Clone + Send + Sync + 'static> LocalLevel<V> for Moka<V> {
    const ENABLED: bool = true;

    fn new(capacity: u64, ttl: Duration) -> Self {
        Moka {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .expire_after(UntilRedisExpiry)
                .build(),
            generations: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        self.entries.get(key).map(|held| held.value)
    }

    fn generation(&self, key: &str) -> u64 {
        self.generations[stripe(key)].load(Ordering::Acquire)
    }

    fn insert_if_current(
        &self,
        key: String,
        value: &V,
        generation: u64,
        fresh_for: Option<Duration>,
    ) {
        if fresh_for.is_some_and(|f| f.is_zero()) {
            return;
        }
        let current = &self.generations[stripe(&key)];
        if current.load(Ordering::Acquire) == generation {
            let held = Held {
                value: value.clone(),
                fresh_for,
            };
            self.entries.insert(key.clone(), held);
            // An invalidation that raced the insert must still win.
            if current.load(Ordering::Acquire) != generation {
                self.entries.invalidate(&key);
            }
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Invalidate for Moka<V> {
    fn remove(&self, key: &str) {
        self.generations[stripe(key)].fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key);
    }

    fn clear(&self) {
        for generation in &self.generations {
            generation.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.invalidate_all();
    }
}

/// Callers waiting for another instance's load of a key (global single flight), woken
/// by the messages the listener hears on [`LOADS`].
#[derive(Default)]
pub(crate) struct LoadWaiters {
    /// Per key: what wakes its waiters, and how many watch it (the entry goes with the
    /// last, so keys waited on once do not pile up).
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

impl LoadWaiters {
    /// Starts waiting for the end of `redis_key`'s load. Register before asking for the
    /// lease, so an end announced in between is not missed.
    pub(crate) fn watch(self: &Arc<Self>, redis_key: &str) -> LoadWatch {
        let notify = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let (notify, watchers) = waiting.entry(redis_key.to_owned()).or_default();
            *watchers += 1;
            Arc::clone(notify)
        };
        LoadWatch {
            waiters: Arc::clone(self),
            key: redis_key.to_owned(),
            notified: Box::pin(notify.notified_owned()),
        }
    }

    /// A load of `redis_key` ended (stored, or given up): wakes its waiters.
    pub(crate) fn ended(&self, redis_key: &str) {
        if let Some((notify, _)) = self
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
        if let Some((_, watchers)) = waiting.get_mut(&self.key) {
            *watchers -= 1;
            if *watchers == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

/// A registered level: its cache's namespace, the start of its Redis keys without the
/// manager's prefix (`user:profile@00001a2b:`, `{team:member}:`), and the level.
struct Registered {
    namespace: &'static str,
    key_start: String,
    level: Arc<dyn Invalidate>,
}

/// Every local level of one manager, and whether they may be read.
#[derive(Default)]
pub(crate) struct LocalLevels {
    levels: Mutex<Vec<Registered>>,
    coherent: AtomicBool,
    /// The listeners whose connections decide coherence, and whether each is connected:
    /// one per Redis server, one per master of a cluster. Levels are readable only while
    /// there is at least one and all are connected. A listener of a backend that was
    /// replaced, or of a cluster node that left, no longer counts.
    listeners: Mutex<HashMap<u64, bool>>,
    next_listener: AtomicU64,
    /// How invalidations reach the listeners: [`Heard`] as a number.
    heard_by: AtomicU8,
    /// How many listeners last saw another instance's level hearing by pub/sub (their
    /// connection refused tracking, an ACL for one service and not another): while any
    /// did, writes announce even where Redis tells this instance's levels itself. Each
    /// listener looks when it connects and after every heartbeat.
    peers_by_pubsub: AtomicUsize,
    /// Names this manager in its messages (read by eye: every message is applied).
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

    /// Registers the level of the cache `namespace`, whose Redis keys start with
    /// `key_start` after the manager's prefix.
    pub(crate) fn register(
        &self,
        namespace: &'static str,
        key_start: String,
        level: Arc<dyn Invalidate>,
    ) {
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Registered {
                namespace,
                key_start,
                level,
            });
    }

    pub(crate) fn any(&self) -> bool {
        !self
            .levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The key prefixes Redis is asked to track for the levels (`CLIENT TRACKING ON
    /// BCAST PREFIX ...`): each level's keys under the manager's `prefix`. They never
    /// overlap: namespaces of one registry are not `:`-prefixes of each other, and each
    /// ends with the `:` or `@{layout}:` that follows it.
    pub(crate) fn tracked_prefixes(&self, prefix: Option<&str>) -> Vec<String> {
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        levels
            .iter()
            .map(|r| match prefix {
                Some(prefix) => format!("{prefix}:{}", r.key_start),
                None => r.key_start.clone(),
            })
            .collect()
    }

    /// Records that a cache runs global single flights.
    pub(crate) fn register_global_flights(&self) {
        self.global_flights.store(true, Ordering::Release);
    }

    /// Whether a cache runs global single flights, whose waiters hear the ends of other
    /// instances' loads.
    pub(crate) fn global_flights(&self) -> bool {
        self.global_flights.load(Ordering::Acquire)
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

    /// How invalidations are heard now.
    pub(crate) fn heard_by(&self) -> Heard {
        match self.heard_by.load(Ordering::Acquire) {
            1 => Heard::Tracking,
            2 => Heard::PubSub,
            _ => Heard::Unknown,
        }
    }

    /// Whether writes must publish their keys for other instances' levels: unless Redis
    /// is known to push invalidations itself, to this instance and to every other one.
    /// While a listener is away (the levels unreadable) nobody is looking for levels that
    /// hear by pub/sub, so writes announce.
    pub(crate) fn writes_announce(&self) -> bool {
        self.heard_by() != Heard::Tracking
            || self.peers_by_pubsub.load(Ordering::Acquire) > 0
            || !self.coherent()
    }

    /// A listener's look for levels that hear by pub/sub: what it saw before (`false` at
    /// first) and now (`false` when it stops).
    pub(crate) fn saw_pubsub_peers(&self, before: bool, now: bool) {
        match (before, now) {
            (false, true) => {
                self.peers_by_pubsub.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.peers_by_pubsub.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    /// A listener found out how the server lets it hear invalidations.
    pub(crate) fn set_heard_by(&self, heard: Heard) {
        self.heard_by.store(heard as u8, Ordering::Release);
    }

    /// Sets coherence for a backend without a listener (memory, disconnected), retiring
    /// every listener.
    pub(crate) fn reset(&self, coherent: bool) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.clear();
        self.heard_by.store(Heard::Unknown as u8, Ordering::Release);
        self.set_coherent(coherent);
    }

    /// Makes a new listener one that counts, replacing every listener when `alone` (a
    /// new standalone backend) or joining them (another master of a cluster); the
    /// levels are unreadable until every one reports its connection.
    pub(crate) fn claim(&self, alone: bool) -> u64 {
        let id = self.next_listener.fetch_add(1, Ordering::AcqRel) + 1;
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if alone {
            listeners.clear();
        }
        listeners.insert(id, false);
        self.set_coherent(false);
        id
    }

    /// A listener's connection began (`true`) or ended; ignored unless it counts.
    pub(crate) fn heard(&self, listener: u64, connected: bool) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = listeners.get_mut(&listener) else {
            return;
        };
        *state = connected;
        let all = listeners.values().all(|&c| c);
        self.set_coherent(all);
    }

    /// A listener stopped for good: it no longer counts, and the levels start over.
    pub(crate) fn release(&self, listener: u64) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if listeners.remove(&listener).is_some() {
            let all = !listeners.is_empty() && listeners.values().all(|&c| c);
            self.set_coherent(all);
        }
    }

    /// Empties every level, which stay readable: for a flush, or a slot map that changed
    /// (keys that moved may have changed on a master whose listener did not hold them).
    pub(crate) fn forget_all(&self) {
        for registered in self.levels.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            registered.level.clear();
        }
    }

    /// Marks the levels readable (`true`: invalidations are heard) or not; either way
    /// they start empty, since what they held may be stale.
    fn set_coherent(&self, coherent: bool) {
        self.coherent.store(false, Ordering::Release);
        self.forget_all();
        self.coherent.store(coherent, Ordering::Release);
    }

    /// Applies a pub/sub invalidation message: `{instance}|{redis key}`, the key under
    /// the manager's `prefix` (messages of another prefix are not heard, see
    /// [`Channels`]). This instance's own messages too: the writer dropped its copy
    /// around the write, but a write its caller dropped after sending it can land after
    /// that, behind a read of the old value; its message comes after it and drops that.
    pub(crate) fn apply(&self, message: &str, prefix: Option<&str>) {
        let Some((_instance, full_key)) = message.split_once('|') else {
            return;
        };
        self.invalidate(full_key, prefix);
    }

    /// Drops the copy of `full_key` (a Redis key under the manager's `prefix`) from the
    /// level that owns it; `{namespace}:*` or `{namespace}@*` empties that level.
    pub(crate) fn invalidate(&self, full_key: &str, prefix: Option<&str>) {
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
                .find(|r| r.namespace == ns)
                .and_then(|r| after_namespace("", rest).map(|rest| (&r.level, rest))),
            None => levels
                .iter()
                .find_map(|r| after_namespace(r.namespace, key).map(|rest| (&r.level, rest))),
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
        levels.register(namespace, format!("{namespace}:"), level.clone());
        level
    }

    fn fill(level: &Moka<String>, keys: &[&str]) {
        for key in keys {
            level.insert_if_current(
                (*key).to_owned(),
                &"v".to_owned(),
                level.generation(key),
                None,
            );
        }
    }

    #[test]
    fn what_a_manager_needs_a_listener_for() {
        let levels = LocalLevels::new();
        assert!(!levels.any() && !levels.global_flights() && !levels.listen_needed());
        levels.register_global_flights();
        assert!(levels.global_flights() && levels.listen_needed());
        assert!(!levels.any(), "no level yet");
        let levels = LocalLevels::new();
        level(&levels, "user");
        assert!(levels.any() && levels.listen_needed());
        assert!(!levels.global_flights());
    }

    #[test]
    fn writes_announce_unless_tracking_tells_every_level_and_the_listeners_are_up() {
        let levels = LocalLevels::new();
        let id = levels.claim(true);
        assert_ne!(id, 0, "0 means no listener");
        assert_ne!(levels.claim(false), id, "every listener its own id");
        levels.reset(false);
        let id = levels.claim(true);
        levels.heard(id, true);
        assert!(levels.coherent());
        assert_eq!(levels.heard_by(), Heard::Unknown);
        assert!(levels.writes_announce(), "not known yet");
        levels.set_heard_by(Heard::PubSub);
        assert_eq!(levels.heard_by(), Heard::PubSub);
        assert!(levels.writes_announce(), "levels hear by pub/sub");
        levels.set_heard_by(Heard::Tracking);
        assert_eq!(levels.heard_by(), Heard::Tracking);
        assert!(!levels.writes_announce(), "Redis tells every level");

        // Other instances' levels that hear by pub/sub, counted per listener.
        levels.saw_pubsub_peers(false, true);
        levels.saw_pubsub_peers(false, true);
        assert!(levels.writes_announce(), "two listeners see such peers");
        levels.saw_pubsub_peers(true, true);
        levels.saw_pubsub_peers(false, false);
        levels.saw_pubsub_peers(true, false);
        assert!(levels.writes_announce(), "one still does");
        levels.saw_pubsub_peers(true, false);
        assert!(!levels.writes_announce(), "none does any more");

        // A listener away: nobody looks for such peers meanwhile.
        levels.heard(id, false);
        assert!(!levels.coherent());
        assert!(levels.writes_announce(), "the listener is away");
    }

    #[tokio::test]
    async fn load_waiters_are_woken_by_the_end_and_forgotten_with_the_last_watch() {
        let waiters = Arc::new(LoadWaiters::default());
        let waiting = |w: &LoadWaiters| w.waiting.lock().unwrap().len();
        let mut first = waiters.watch("user:1");
        let second = waiters.watch("user:1");
        assert_eq!(waiting(&waiters), 1);
        waiters.ended("user:2");
        let quiet = tokio::time::timeout(Duration::from_millis(20), first.ended()).await;
        assert!(quiet.is_err(), "woken by another key's end");
        waiters.ended("user:1");
        tokio::time::timeout(Duration::from_secs(1), first.ended())
            .await
            .expect("woken by its key's end");
        drop(second);
        assert_eq!(waiting(&waiters), 1, "one still watches");
        drop(first);
        assert_eq!(waiting(&waiters), 0, "the last watch gone");
    }

    #[test]
    fn a_copy_rewritten_keeps_its_own_time_to_live() {
        let level = <Moka<String> as LocalLevel<String>>::new(100, Duration::from_secs(60));
        let key = "user:1";
        level.insert_if_current(key.to_owned(), &"a".to_owned(), level.generation(key), None);
        level.insert_if_current(
            key.to_owned(),
            &"b".to_owned(),
            level.generation(key),
            Some(Duration::from_secs(30)),
        );
        assert_eq!(
            level.get(key).as_deref(),
            Some("b"),
            "replaced, not expired"
        );
    }

    #[test]
    fn a_removal_refuses_the_reads_in_flight_of_its_own_stripe_only() {
        let level = <Moka<String> as LocalLevel<String>>::new(100, Duration::from_secs(60));
        let key = "user:1";
        let elsewhere = (0..)
            .map(|i| format!("user:other:{i}"))
            .find(|k| stripe(k) != stripe(key))
            .unwrap();
        let beside = (0..)
            .map(|i| format!("user:beside:{i}"))
            .find(|k| stripe(k) == stripe(key))
            .unwrap();
        let v = "v".to_owned();
        let read_while = |write: &dyn Fn()| {
            level.remove(key);
            let generation = level.generation(key);
            write();
            level.insert_if_current(key.to_owned(), &v, generation, None);
            level.get(key).is_some()
        };
        assert!(
            read_while(&|| level.remove(&elsewhere)),
            "a write of another key refused the read of {key}"
        );
        assert!(!read_while(&|| level.remove(key)), "its own removal");
        assert!(
            !read_while(&|| level.remove(&beside)),
            "a key of its stripe"
        );
        assert!(!read_while(&|| level.clear()), "the level emptied");

        // Under a steady flow of writes to other keys, reads still fill the level.
        let kept = (0..1000)
            .filter(|i| read_while(&|| level.remove(&format!("user:w:{i}"))))
            .count();
        assert!(
            kept > 900,
            "{kept} of 1000 reads kept under writes to other keys"
        );
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
        // This instance's own message too: a write dropped after it was sent may land
        // behind a read of the old value, and its message is what drops that copy.
        fill(&user, &["user:2"]);
        levels.apply(&levels.message("user:2"), None);
        assert!(user.get("user:2").is_none(), "its own message was ignored");

        levels.apply("peer|nobody:1", None);
        levels.apply("garbage without a separator", None);
    }

    #[test]
    fn only_the_listener_that_counts_sets_coherence() {
        let levels = LocalLevels::new();
        level(&levels, "user");
        let old = levels.claim(true);
        let new = levels.claim(true);
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

    #[test]
    fn every_master_must_be_heard_before_levels_are_read() {
        let levels = LocalLevels::new();
        let user = level(&levels, "user");
        let a = levels.claim(false);
        let b = levels.claim(false);
        levels.heard(a, true);
        assert!(!levels.coherent(), "readable while one master is not heard");
        levels.heard(b, true);
        assert!(levels.coherent());
        fill(&user, &["user:1"]);
        levels.heard(b, false);
        assert!(
            !levels.coherent(),
            "readable while a master's listener is down"
        );
        assert!(
            user.get("user:1").is_none(),
            "not emptied when a listener was lost"
        );
        levels.heard(b, true);
        assert!(levels.coherent());
        // A master that left the cluster no longer counts.
        levels.release(b);
        assert!(levels.coherent());
        // A new standalone backend replaces every listener.
        let alone = levels.claim(true);
        levels.heard(a, true);
        assert!(
            !levels.coherent(),
            "a replaced backend's listener still counted"
        );
        levels.heard(alone, true);
        assert!(levels.coherent());
    }

    #[test]
    fn tracked_prefixes_are_each_levels_keys_under_the_manager_prefix() {
        let levels = LocalLevels::new();
        levels.register(
            "user:profile",
            "user:profile@00001a2b:".to_owned(),
            Arc::new(<Moka<String> as LocalLevel<String>>::new(
                10,
                Duration::from_secs(1),
            )),
        );
        levels.register(
            "team:member",
            "{team:member}:".to_owned(),
            Arc::new(<Moka<String> as LocalLevel<String>>::new(
                10,
                Duration::from_secs(1),
            )),
        );
        assert_eq!(
            levels.tracked_prefixes(None),
            ["user:profile@00001a2b:", "{team:member}:"]
        );
        assert_eq!(
            levels.tracked_prefixes(Some("staging")),
            ["staging:user:profile@00001a2b:", "staging:{team:member}:"]
        );
    }

    #[test]
    fn a_copy_never_outlives_what_its_redis_entry_had_left() {
        let level = <Moka<String> as LocalLevel<String>>::new(10, Duration::from_secs(60));
        let v = "v".to_owned();
        level.insert_if_current("short".into(), &v, 0, Some(Duration::from_millis(50)));
        level.insert_if_current("long".into(), &v, 0, None);
        level.insert_if_current("gone".into(), &v, 0, Some(Duration::ZERO));
        assert!(level.get("short").is_some());
        assert!(
            level.get("gone").is_none(),
            "an entry with no time left was kept"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(
            level.get("short").is_none(),
            "kept past its Redis entry's expiry"
        );
        assert!(level.get("long").is_some());
        // Re-reading a key takes the new entry's time, not the old copy's.
        level.insert_if_current("long".into(), &v, 0, Some(Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(120));
        assert!(level.get("long").is_none(), "an update kept the old expiry");
    }
}

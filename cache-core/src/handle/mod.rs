//! `TypedCache<C>`: the typed handle a registry hands out for each cache.
//!
//! The plain calls live here; read-through (`get_or_load`) in [`load`], `clear()` in
//! [`clear`]. A write drops this instance's first-level copy before and after it goes
//! to the backend ([`TypedCache::forgetting`]); other instances drop theirs when the
//! write's announcement reaches them.

mod clear;
mod load;

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Timed, Unavailable, Write};
use crate::cache::{Cache, MAX_BATCH};
use crate::codec::{Codec, Stored, decode_stored, encode_entry};
use crate::error::{CacheError, CodecError};
use crate::flight::{BackgroundClaim, Flights};
use crate::key;
use crate::layouts::Layouts;
use crate::local::{Invalidate, LocalLevel as _};
use crate::observe::{OncePerKey, Op, observed};
use crate::shared::Shared;
use crate::stats::{CacheStats, Counters};
use cache_keyspace::CacheKeys;

/// The hasher of the sets and maps a batch call keeps for itself, to drop repeated keys:
/// a few instructions a key where std's SipHash takes some hundred and fifty. The maps
/// handed back to callers keep std's hasher.
type FastHash = foldhash::fast::RandomState;

/// Longest TTL a call may set: what fits Redis's millisecond expiry arithmetic.
const MAX_TTL: Duration = Duration::from_millis(i64::MAX as u64 / 2);

/// A typed cache: keys `C::Key`, values `C::Value`, in namespace `C::NAMESPACE`.
///
/// Handles come only from a `cache_registry!` manager and share its connection. No call
/// returns a connection error: while the backend is unavailable, reads return `None` and
/// writes `Ok(false)`.
///
/// Its calls exist for `C: Cache`. The type itself asks nothing of `C`, so that a registry
/// naming a type that is not a cache fails with one error at that name, not with one per
/// place the registry's expansion mentions the handle.
pub struct TypedCache<C> {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    field: &'static str,
    /// `C::NAMESPACE` and `C::TTL`, for `Debug`.
    namespace: &'static str,
    ttl: Duration,
    /// The loads in flight: a `Flights<C::Key, C::Value>`, see [`TypedCache::flights`].
    flights: Arc<dyn Any + Send + Sync>,
    /// The first level, a `C::Local`, see [`TypedCache::local`].
    local: Option<Arc<dyn Invalidate>>,
    /// Loaded values too large to cache: logged once per key per minute.
    oversized: Arc<OncePerKey>,
    /// For a cache keyed by layout: the other layouts in use, whose entries of a key a
    /// write must delete too.
    layouts: Option<Arc<Layouts>>,
    _cache: PhantomData<fn() -> C>,
}

/// What a read found, as read-through needs to know it.
pub(crate) enum Lookup<V> {
    /// A value within its TTL; `fresh_for` is how long it stays so, when known.
    Fresh {
        value: V,
        fresh_for: Option<Duration>,
    },
    /// A value past its TTL but within `fail_safe`: a miss, except as a fallback for a
    /// failing loader. `bytes` are what is stored, to extend it only if unchanged.
    Stale { value: V, bytes: Vec<u8> },
    /// The remembered absence of a value (`negative_ttl`).
    Absent,
    /// Nothing stored, or a corrupt entry (now deleted).
    Miss,
    /// The backend could not be asked.
    Down,
}

impl<V> Lookup<V> {
    /// The value a plain read returns: only a fresh one.
    fn fresh(self) -> Option<V> {
        match self {
            Lookup::Fresh { value, .. } => Some(value),
            _ => None,
        }
    }
}

impl<C> fmt::Debug for TypedCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCache")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<C: Cache> TypedCache<C> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        field: &'static str,
        counters: Arc<Counters>,
        local: Option<Arc<C::Local>>,
    ) -> Self {
        let flights: Arc<Flights<C::Key, C::Value>> = Arc::default();
        TypedCache {
            shared,
            counters,
            field,
            namespace: C::NAMESPACE,
            ttl: C::TTL,
            flights,
            local: local.map(|l| l as Arc<dyn Invalidate>),
            oversized: Arc::new(OncePerKey::new(Duration::from_secs(60))),
            layouts: Self::LAYOUT.map(|own| {
                let entries_live = C::TTL + C::TTL_JITTER + C::FAIL_SAFE;
                Arc::new(Layouts::new(own, entries_live))
            }),
            _cache: PhantomData,
        }
    }

    /// Another handle on the same cache, for a load that outlives its caller.
    fn share(&self) -> Self {
        TypedCache {
            shared: Arc::clone(&self.shared),
            counters: Arc::clone(&self.counters),
            field: self.field,
            namespace: self.namespace,
            ttl: self.ttl,
            flights: Arc::clone(&self.flights),
            local: self.local.clone(),
            oversized: Arc::clone(&self.oversized),
            layouts: self.layouts.clone(),
            _cache: PhantomData,
        }
    }

    /// Whether reads need each entry's remaining time: fail-safe tells stale from fresh
    /// by it, refresh ahead how old an entry is. Other caches read plain `GET`s.
    const TIMED: bool = !C::FAIL_SAFE.is_zero() || C::REFRESH_AHEAD > 0;

    /// The first level, when this cache has one and it may be read now.
    fn local(&self) -> Option<&C::Local> {
        let local: &dyn Any = self.local.as_deref()?;
        // `new` stored a `C::Local`: the cast cannot fail.
        let local = local.downcast_ref::<C::Local>()?;
        self.shared.locals.coherent().then_some(local)
    }

    /// The loads in flight, by key.
    fn flights(&self) -> &Flights<C::Key, C::Value> {
        match self.flights.downcast_ref() {
            Some(flights) => flights,
            None => unreachable!("`TypedCache::new` stores the flights of `C`"),
        }
    }

    /// Claims `key` for a load in the background; `None` while one already runs.
    fn claim_background(&self, key: &C::Key) -> Option<BackgroundClaim<C::Key, C::Value>> {
        match Arc::clone(&self.flights).downcast::<Flights<C::Key, C::Value>>() {
            Ok(flights) => flights.claim_background(key),
            Err(_) => unreachable!("`TypedCache::new` stores the flights of `C`"),
        }
    }

    /// Whether writes must tell other instances to drop their copies.
    fn announce(&self) -> bool {
        self.local.is_some()
    }

    /// This cache's counters: hits, misses, degraded calls, timeouts, corrupt entries.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// let names = manager.names();
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// names.get(&1).await; // a hit
    /// names.get(&2).await; // a miss
    /// let stats = names.stats();
    /// assert_eq!((stats.hits, stats.misses, stats.degraded), (1, 1, 0));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.counters.snapshot(self.field, C::NAMESPACE)
    }

    /// The declared namespace: every key of this cache is `"{namespace}:{key}"` (with
    /// `hash_tag = true`, the namespace in braces: `{user:profile}:42`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # let manager = CacheManager::new();
    /// assert_eq!(manager.names().namespace(), "user:name");
    /// ```
    pub fn namespace(&self) -> &'static str {
        C::NAMESPACE
    }

    /// The declared TTL, set by every write except `set_with_ttl`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # let manager = CacheManager::new();
    /// use std::time::Duration;
    ///
    /// // `ttl` was left out of the declaration: the default, 600 s.
    /// assert_eq!(manager.names().ttl(), Duration::from_secs(600));
    /// ```
    pub fn ttl(&self) -> Duration {
        C::TTL
    }

    /// The Redis key of `key`: `"{namespace}:{key}"`, as `session:token:abc` for a
    /// `string` or `json` cache, whose bytes (and keys) other services read. A `bincode`
    /// cache adds its entries' layout, the value type's fingerprint, after the namespace:
    /// `user:profile@1a2b3c4d:42`, so two versions of the value type (a rolling deploy)
    /// each keep their own entries. With `hash_tag = true` the namespace is in braces,
    /// `{user:profile}@1a2b3c4d:42`, which puts every key of the cache in the hash slot
    /// of its namespace on a Redis Cluster.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// #[derive(Cache)]
    /// #[cache(namespace = "user:name", key = i64, value = String, codec = "string")]
    /// struct UserNameCache;
    ///
    /// #[derive(Cache)]
    /// #[cache(namespace = "user:profile", key = i64, value = String, hash_tag = true)]
    /// struct UserProfileCache;
    ///
    /// cache_registry! {
    ///     struct CacheManager {
    ///         names: UserNameCache,
    ///         profiles: UserProfileCache,
    ///     }
    /// }
    ///
    /// let manager = CacheManager::new();
    /// assert_eq!(manager.names().redis_key(&42), "user:name:42");
    /// let fingerprint = CacheManager::CACHES[1].fingerprint;
    /// assert_eq!(
    ///     manager.profiles().redis_key(&42),
    ///     format!("{{user:profile}}@{fingerprint:08x}:42")
    /// );
    /// ```
    pub fn redis_key(&self, key: &C::Key) -> String {
        let prefix = self.shared.prefix();
        key::redis_key(&Self::keys(prefix.as_ref().map(|p| p.as_str())), key)
    }

    /// The layout this cache's entries are keyed by: a cache whose bytes are not
    /// self-describing (a framed codec: bincode) keys them by the value type's
    /// fingerprint, so during a rolling deploy each version of the service reads its
    /// own entries instead of refusing (and deleting) the other's.
    const LAYOUT: Option<u32> = if <C::Codec as Codec<C::Value>>::FRAMED {
        Some(C::FINGERPRINT)
    } else {
        None
    };

    /// How this cache's keys are spelled, under the manager's `prefix`.
    fn keys(prefix: Option<&str>) -> CacheKeys<'_> {
        CacheKeys {
            prefix,
            namespace: C::NAMESPACE,
            hash_tag: C::HASH_TAG,
            layout: Self::LAYOUT,
        }
    }

    /// The text every Redis key of this cache starts with, without the manager's prefix:
    /// what Redis is asked to track for its first level.
    pub(crate) fn key_start() -> String {
        Self::keys(None).prefix()
    }

    /// The key of the registry where this cache's layouts in use are recorded.
    fn layouts_registry(&self) -> String {
        let prefix = self.shared.prefix();
        let unlaid = CacheKeys {
            layout: None,
            ..Self::keys(prefix.as_ref().map(|p| p.as_str()))
        };
        cache_keyspace::aux_key("layouts", &unlaid.prefix())
    }

    /// The keys of the same entries in the other layouts in use (empty unless several
    /// versions of the value type share the Redis), read from the registry now: an
    /// invalidation deletes them, since the data behind every shape changed. A failed
    /// read is none: those entries expire with their TTL.
    async fn in_other_layouts<'k>(&self, redis_keys: impl Iterator<Item = &'k str>) -> Vec<String> {
        let Some(layouts) = &self.layouts else {
            return Vec::new();
        };
        let listed = self
            .shared
            .backend()
            .layouts_listed(&self.layouts_registry())
            .await
            .unwrap_or_default();
        let others = layouts.others(listed);
        if others.is_empty() {
            return Vec::new();
        }
        let prefix = self.shared.prefix();
        let keys = Self::keys(prefix.as_ref().map(|p| p.as_str()));
        let own = keys.prefix();
        let mut out = Vec::new();
        for redis_key in redis_keys {
            let Some(rest) = redis_key.strip_prefix(own.as_str()) else {
                continue;
            };
            for other in &others {
                let mut key = CacheKeys {
                    layout: Some(*other),
                    ..keys
                }
                .prefix();
                key.push_str(rest);
                out.push(key);
            }
        }
        out
    }

    /// Records this cache's layout (so other versions' invalidations reach its
    /// entries) and learns the others, when a refresh is due: the first time before the
    /// call goes on (one round trip, once per cache and process), later on a task of
    /// its own, so calls stay one round trip.
    async fn touch_layouts(&self) {
        let epoch = self.shared.epoch();
        if let Some(layouts) = &self.layouts
            && layouts.claim_refresh(epoch)
        {
            if layouts.recorded(epoch) {
                self.refresh_layouts_later();
            } else {
                // The backend the epoch names: one `connect` later, the next call
                // records the layout again.
                // Boxed: once per `connect`, and large; every call's future would
                // carry (and move) its size otherwise.
                Box::pin(layouts.refresh(&self.shared.backend(), epoch, &self.layouts_registry()))
                    .await;
            }
        }
    }

    /// The refresh a caller claimed, run on a task of its own.
    fn refresh_layouts_later(&self) {
        let (Some(layouts), Ok(runtime)) =
            (self.layouts.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let epoch = shared.epoch();
        let registry = self.layouts_registry();
        runtime.spawn(async move { layouts.refresh(&shared.backend(), epoch, &registry).await });
    }

    /// Reads the value of `key`.
    ///
    /// `None` on a miss, while the backend is unavailable, and for a corrupt entry (bytes
    /// that do not decode as `C::Value`), which is logged at error level and deleted.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// let names = manager.names();
    /// assert_eq!(names.get(&1).await, None); // a miss
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// assert_eq!(names.get(&1).await.as_deref(), Some("Ada"));
    ///
    /// manager.disconnect().await;
    /// assert_eq!(names.get(&1).await, None); // no backend: a miss, not an error
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: &C::Key) -> Option<C::Value> {
        observed(C::NAMESPACE, Op::Get, || self.get_unobserved(key)).await
    }

    async fn get_unobserved(&self, key: &C::Key) -> Option<C::Value> {
        self.lookup(key).await.fresh()
    }

    /// Reads `key` and says what it found; counts it as a plain read would.
    pub(crate) async fn lookup(&self, key: &C::Key) -> Lookup<C::Value> {
        self.touch_layouts().await;
        let redis_key = self.redis_key(key);
        let local = self.local();
        if let Some(value) = local.and_then(|l| l.get(&redis_key)) {
            self.counters.hits(1);
            return Lookup::Fresh {
                value,
                fresh_for: None,
            };
        }
        // The key's generation in the level and when Redis was asked: a copy lives at
        // most what the entry had left, counted from before the question.
        let generation = local.map(|l| (l.generation(&redis_key), std::time::Instant::now()));
        let backend = self.shared.backend();
        // A copy kept in the first level must not outlive its Redis entry: read how long
        // the entry has left in the same round trip.
        let fetched = if Self::TIMED || local.is_some() {
            backend.get_timed(&redis_key).await
        } else {
            let plain = backend.get(&redis_key).await;
            plain.map(|bytes| {
                bytes.map(|bytes| Timed {
                    bytes,
                    remaining: None,
                })
            })
        };
        let found = match fetched {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.counters.misses(1);
                return Lookup::Miss;
            }
            Err(why) => {
                self.counters.degraded(why);
                return Lookup::Down;
            }
        };
        match self.classify(found, &redis_key, generation) {
            Ok(lookup) => lookup,
            Err((bytes, error)) => {
                Box::pin(self.evict_corrupt(&backend, &redis_key, &bytes, &error)).await;
                Lookup::Miss
            }
        }
    }

    /// Decodes what a read found and counts it: a fresh value (also kept in the first
    /// level, unless an invalidation came since `generation`), a stale one, a remembered
    /// absence, or corrupt bytes, returned for eviction.
    fn classify(
        &self,
        found: Timed,
        redis_key: &str,
        generation: Option<(u64, std::time::Instant)>,
    ) -> Result<Lookup<C::Value>, (Vec<u8>, CodecError)> {
        match decode_stored::<C::Value, C::Codec>(&found.bytes, C::FINGERPRINT) {
            Ok(Stored::Absent) => {
                self.counters.misses(1);
                Ok(Lookup::Absent)
            }
            Ok(Stored::Value(value)) => {
                let fresh_for = found.remaining.map(|r| r.saturating_sub(C::FAIL_SAFE));
                if !C::FAIL_SAFE.is_zero() && fresh_for.is_some_and(|f| f.is_zero()) {
                    self.counters.misses(1);
                    return Ok(Lookup::Stale {
                        value,
                        bytes: found.bytes,
                    });
                }
                self.counters.hits(1);
                if let (Some(local), Some((generation, asked))) = (self.local(), generation) {
                    // PTTL counts whole milliseconds, rounded down from what the entry
                    // has left: a millisecond less keeps the copy inside it.
                    let keep_for = fresh_for
                        .map(|f| f.saturating_sub(asked.elapsed() + Duration::from_millis(1)));
                    local.insert_if_current(redis_key.to_owned(), &value, generation, keep_for);
                }
                Ok(Lookup::Fresh { value, fresh_for })
            }
            Err(error) => Err((found.bytes, error)),
        }
    }

    /// Stores `value` under `key` with the cache's TTL.
    ///
    /// `Ok(true)` when stored, `Ok(false)` when the backend is unavailable (logged), and
    /// `Err(CacheError::Serialization)` when the value cannot be encoded; nothing is
    /// written then.
    ///
    /// # Errors
    ///
    /// `CacheError::Serialization` when the cache's codec cannot encode `value` (a JSON map
    /// with keys that are not strings, say); nothing is written then. No other variant
    /// comes back. Backend failures never come back as errors: an unavailable backend, a
    /// timeout or a refused command makes the call return `Ok(false)` (logged, counted as
    /// degraded), and `CacheError::Config` only ever comes from `connect`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::collections::HashMap;
    /// # use cache_manager::{cache_registry, Cache, CacheError};
    /// #[derive(Cache)]
    /// #[cache(namespace = "user:name", key = i64, value = String)]
    /// struct UserNameCache;
    ///
    /// /// JSON maps need string keys: a tuple key cannot be encoded.
    /// #[derive(Cache)]
    /// #[cache(namespace = "grid:cell", key = i64, value = HashMap<(i32, i32), i64>, codec = "json")]
    /// struct GridCache;
    ///
    /// cache_registry! {
    ///     struct CacheManager {
    ///         names: UserNameCache,
    ///         grids: GridCache,
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), CacheError> {
    /// let manager = CacheManager::new();
    /// let ada = "Ada".to_owned();
    /// // Not connected yet: nothing is stored, and that is not an error.
    /// assert_eq!(manager.names().set(&1, &ada).await?, false);
    ///
    /// manager.connect("memory://").await?;
    /// assert_eq!(manager.names().set(&1, &ada).await?, true);
    ///
    /// let grid = HashMap::from([((0, 0), 7)]);
    /// let error = manager.grids().set(&1, &grid).await.unwrap_err();
    /// assert!(matches!(error, CacheError::Serialization { .. }));
    /// assert_eq!(manager.grids().get(&1).await, None); // nothing was written
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set(&self, key: &C::Key, value: &C::Value) -> Result<bool, CacheError> {
        observed(C::NAMESPACE, Op::Set, || {
            self.write(key, value, Self::expiry(C::TTL, true))
        })
        .await
    }

    /// Stores `value` under `key` with its own TTL, at millisecond precision.
    ///
    /// A TTL under one millisecond, or above 4 611 686 018 427 387 903 ms (what Redis's
    /// expiry arithmetic holds), is `Err(CacheError::Validation)` and nothing is written;
    /// otherwise as [`set`](Self::set).
    ///
    /// # Errors
    ///
    /// `CacheError::Validation` when `ttl` is under one millisecond or above the limit
    /// above, and `CacheError::Serialization` when the value cannot be encoded, as for
    /// [`set`](Self::set); nothing is written in either case. Backend failures never come
    /// back as errors: an unavailable backend, a timeout or a refused command makes the
    /// call return `Ok(false)` (logged, counted as degraded), and `CacheError::Config` only
    /// ever comes from `connect`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// use std::time::Duration;
    /// use cache_manager::CacheError;
    ///
    /// let names = manager.names();
    /// assert!(names.set_with_ttl(&1, &"Ada".to_owned(), Duration::from_secs(30)).await?);
    ///
    /// let error = names.set_with_ttl(&2, &"Bob".to_owned(), Duration::ZERO).await.unwrap_err();
    /// assert!(matches!(error, CacheError::Validation { .. }));
    /// assert_eq!(names.get(&2).await, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_with_ttl(
        &self,
        key: &C::Key,
        value: &C::Value,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        observed(C::NAMESPACE, Op::Set, || async {
            let ttl = per_call_ttl::<C>(ttl)?;
            self.write(key, value, Self::expiry(ttl, false)).await
        })
        .await
    }

    async fn write(
        &self,
        key: &C::Key,
        value: &C::Value,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let bytes = self.encode(value)?;
        Ok(self.store(&self.redis_key(key), &bytes, ttl).await)
    }

    /// Writes encoded bytes (a value or a remembered absence) with their expiry: `true`
    /// when stored.
    ///
    /// It writes this layout's entry only: a write may be a fill of what the database
    /// holds, and deleting the other version's entry of the key on every fill would have
    /// the two versions of a rolling deploy evict each other forever. Invalidations, which
    /// say the data changed, remove every layout's entry.
    async fn store(&self, redis_key: &str, bytes: &[u8], expiry: Duration) -> bool {
        self.touch_layouts().await;
        let backend = self.shared.backend();
        let stored = self
            .forgetting([redis_key], || {
                backend.set(redis_key, bytes, expiry, self.announce())
            })
            .await;
        self.written(stored)
    }

    /// Deletes other layouts' entries of keys just invalidated: best effort (a failure
    /// is already counted and logged by the backend; those entries expire with their
    /// TTL).
    async fn delete_quietly(&self, backend: &Backend, keys: &[String]) {
        if !keys.is_empty() {
            let _ = backend.del_many(keys, self.announce()).await;
        }
    }

    /// The expiry of a write with `ttl`: plus a random jitter of up to `ttl_jitter` for
    /// writes with the cache's own TTL, plus the `fail_safe` window, during which the
    /// entry is stale and kept only as a fallback.
    fn expiry(ttl: Duration, jitter: bool) -> Duration {
        let jitter = if jitter && !C::TTL_JITTER.is_zero() {
            Duration::from_millis(fastrand::u64(0..=C::TTL_JITTER.as_millis() as u64))
        } else {
            Duration::ZERO
        };
        ttl + jitter + C::FAIL_SAFE
    }

    /// Reads many keys in one round trip (on a Redis Cluster, one per master, concurrently).
    ///
    /// The map has one entry per distinct key: `Some` for a hit, `None` for a miss, a
    /// corrupt entry (logged and deleted) or an unavailable backend (on a cluster, the
    /// keys of an unreachable master only). More than [`MAX_BATCH`] distinct keys is
    /// `Err(CacheError::Validation)` and nothing is sent.
    ///
    /// # Errors
    ///
    /// `CacheError::Validation` when `keys` holds more than [`MAX_BATCH`] distinct keys;
    /// nothing is sent then. No other variant comes back: an entry that does not decode is
    /// a miss, and an unavailable backend (or, on a cluster, master) makes its keys `None`,
    /// never an error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// use cache_manager::{CacheError, MAX_BATCH};
    ///
    /// let names = manager.names();
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// let found = names.mget(&[1, 2, 1]).await?;
    /// assert_eq!(found.len(), 2); // one entry per distinct key
    /// assert_eq!(found[&1].as_deref(), Some("Ada"));
    /// assert_eq!(found[&2], None);
    ///
    /// let too_many: Vec<i64> = (0..=MAX_BATCH as i64).collect();
    /// let error = names.mget(&too_many).await.unwrap_err();
    /// assert!(matches!(error, CacheError::Validation { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn mget(
        &self,
        keys: &[C::Key],
    ) -> Result<HashMap<C::Key, Option<C::Value>>, CacheError> {
        observed(C::NAMESPACE, Op::Mget, || self.mget_unobserved(keys)).await
    }

    async fn mget_unobserved(
        &self,
        keys: &[C::Key],
    ) -> Result<HashMap<C::Key, Option<C::Value>>, CacheError> {
        // Perhaps within the limit once duplicates are gone; an error if not. The keys go
        // to Redis in the caller's order, not the order of a hash map: Redis finds keys
        // stored together (written in order) faster read in order, some 20 µs an `MGET`
        // of 100 sequential keys on this project's machine.
        let distinct = distinct_within_limit::<C>(keys, "mget")?;
        let found = self.lookup_many(&distinct).await;
        let mut answer = HashMap::with_capacity(distinct.len());
        answer.extend(
            distinct
                .into_iter()
                .zip(found)
                .map(|(key, lookup)| (key.clone(), lookup.fresh())),
        );
        Ok(answer)
    }

    /// Reads distinct `keys` (at most [`MAX_BATCH`]) in one round trip, the first level
    /// first, and says what each holds, in order; counts them as plain reads would.
    /// Corrupt entries are evicted, concurrently: one more round trip, not one per key.
    pub(crate) async fn lookup_many(&self, keys: &[&C::Key]) -> Vec<Lookup<C::Value>> {
        self.touch_layouts().await;
        let mut out: Vec<Lookup<C::Value>> = keys.iter().map(|_| Lookup::Miss).collect();
        let mut wanted: Vec<usize> = Vec::with_capacity(keys.len());
        let mut redis_keys: Vec<String> = Vec::with_capacity(keys.len());
        let local = self.local();
        let mut hits = 0;
        let batch_keys = self.batch_keys();
        for (i, key) in keys.iter().enumerate() {
            let redis_key = batch_keys.key(*key);
            match local.and_then(|l| l.get(&redis_key)) {
                Some(value) => {
                    hits += 1;
                    out[i] = Lookup::Fresh {
                        value,
                        fresh_for: None,
                    };
                }
                None => {
                    wanted.push(i);
                    redis_keys.push(redis_key);
                }
            }
        }
        self.counters.hits(hits);
        if redis_keys.is_empty() {
            return out;
        }
        // Each key's generation in the level and when Redis was asked: a copy lives at
        // most what the entry had left, counted from before the question.
        let asked = local.map(|_| std::time::Instant::now());
        let mut generations = local
            .map(|l| {
                redis_keys
                    .iter()
                    .map(|k| l.generation(k))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter();
        let backend = self.shared.backend();
        let fetched = if Self::TIMED || local.is_some() {
            backend.mget_timed(&redis_keys).await
        } else {
            backend.mget(&redis_keys).await.map(|values| {
                values
                    .into_iter()
                    .map(|v| {
                        v.map(|bytes| {
                            bytes.map(|bytes| Timed {
                                bytes,
                                remaining: None,
                            })
                        })
                    })
                    .collect()
            })
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(why) => {
                self.counters.degraded(why);
                wanted.iter().for_each(|&i| out[i] = Lookup::Down);
                return out;
            }
        };
        let (mut misses, mut degraded) = (0, None);
        let mut corrupt = Vec::new();
        for ((i, redis_key), fetched) in wanted.into_iter().zip(redis_keys).zip(fetched) {
            let generation = asked.and_then(|asked| Some((generations.next()?, asked)));
            out[i] = match fetched {
                Err(why) => {
                    degraded.get_or_insert(why);
                    Lookup::Down
                }
                Ok(None) => {
                    misses += 1;
                    Lookup::Miss
                }
                Ok(Some(found)) => match self.classify(found, &redis_key, generation) {
                    Ok(lookup) => lookup,
                    Err((bytes, error)) => {
                        corrupt.push((redis_key, bytes, error));
                        Lookup::Miss
                    }
                },
            };
        }
        futures_util::future::join_all(corrupt.iter().map(|(redis_key, bytes, error)| {
            self.evict_corrupt(&backend, redis_key, bytes, error)
        }))
        .await;
        self.counters.misses(misses);
        if let Some(why) = degraded {
            self.counters.degraded(why);
        }
        out
    }

    /// Stores many entries, each with the cache's TTL, in one round trip (on a Redis
    /// Cluster, one per master, concurrently).
    ///
    /// Takes `&HashMap<K, V>` (or any iterator of `(&K, &V)`). More than [`MAX_BATCH`]
    /// entries is `Err(CacheError::Validation)`; a value that fails to encode is
    /// `Err(CacheError::Serialization)`. In both cases nothing is written. Each entry is
    /// written atomically, the batch as a whole is not: a reader may see some entries
    /// before others, and `Ok(false)` means some entries may not have been stored (on a
    /// cluster, those of an unreachable master) while others were.
    ///
    /// # Errors
    ///
    /// `CacheError::Validation` when there are more than [`MAX_BATCH`] distinct keys, and
    /// `CacheError::Serialization` when any value cannot be encoded; in both cases nothing
    /// is written. Backend failures never come back as errors: an unavailable backend, a
    /// timeout or a refused command makes the call return `Ok(false)` (logged, counted as
    /// degraded), and `CacheError::Config` only ever comes from `connect`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// use std::collections::HashMap;
    ///
    /// let names = manager.names();
    /// let entries = HashMap::from([(1, "Ada".to_owned()), (2, "Bob".to_owned())]);
    /// assert!(names.mset(&entries).await?);
    /// assert_eq!(names.get(&2).await.as_deref(), Some("Bob"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn mset<'a, I>(&self, entries: I) -> Result<bool, CacheError>
    where
        I: IntoIterator<Item = (&'a C::Key, &'a C::Value)>,
    {
        observed(C::NAMESPACE, Op::Mset, || self.mset_unobserved(entries)).await
    }

    async fn mset_unobserved<'a, I>(&self, entries: I) -> Result<bool, CacheError>
    where
        I: IntoIterator<Item = (&'a C::Key, &'a C::Value)>,
    {
        let entries = entries.into_iter();
        let room = entries.size_hint().0.min(MAX_BATCH);
        let mut encoded: Vec<Write> = Vec::with_capacity(room);
        let mut index: HashMap<&'a C::Key, usize, FastHash> =
            HashMap::with_capacity_and_hasher(room, FastHash::default());
        let batch_keys = self.batch_keys();
        let limit = self.value_limit();
        for (key, value) in entries {
            let bytes = Self::encode_within(value, limit)?;
            match index.entry(key) {
                // A later value for the same key wins, as it would with sequential sets.
                Entry::Occupied(slot) => encoded[*slot.get()].bytes = bytes,
                Entry::Vacant(slot) => {
                    if encoded.len() == MAX_BATCH {
                        return Err(CacheError::validation(
                            C::NAMESPACE,
                            format!(
                                "mset of more than {MAX_BATCH} entries exceeds the batch limit; split the entries into chunks of at most {MAX_BATCH}"
                            ),
                        ));
                    }
                    slot.insert(encoded.len());
                    encoded.push(Write {
                        key: batch_keys.key(key),
                        bytes,
                        ttl: Self::expiry(C::TTL, true),
                    });
                }
            }
        }
        if encoded.is_empty() {
            return Ok(true);
        }
        Ok(self.store_many(&encoded).await)
    }

    /// Writes encoded entries, each with its expiry: `true` when all were stored.
    /// As [`store`](Self::store), this layout's entries only.
    async fn store_many(&self, entries: &[Write]) -> bool {
        self.touch_layouts().await;
        let backend = self.shared.backend();
        let stored = self
            .forgetting(entries.iter().map(|e| e.key.as_str()), || {
                backend.mset(entries, self.announce())
            })
            .await;
        self.written(stored)
    }

    /// Removes the entry of `key`; `true` when there was one.
    ///
    /// `false` also when the backend is unavailable (logged).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// let names = manager.names();
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// assert!(names.invalidate(&1).await);
    /// assert!(!names.invalidate(&1).await); // nothing left to remove
    /// assert_eq!(names.get(&1).await, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate(&self, key: &C::Key) -> bool {
        observed(C::NAMESPACE, Op::Invalidate, || {
            self.invalidate_unobserved(key)
        })
        .await
    }

    async fn invalidate_unobserved(&self, key: &C::Key) -> bool {
        let redis_key = self.redis_key(key);
        let backend = self.shared.backend();
        let removed = self
            .forgetting([redis_key.as_str()], || async {
                // The registry is read beside this layout's delete: one round trip
                // unless other versions share the Redis, whose entries go next.
                let (removed, others) = tokio::join!(
                    backend.del(&redis_key, self.announce()),
                    self.in_other_layouts([redis_key.as_str()].into_iter()),
                );
                self.delete_quietly(&backend, &others).await;
                removed
            })
            .await;
        match removed {
            Ok(removed) => removed,
            Err(why) => {
                self.counters.degraded(why);
                false
            }
        }
    }

    /// Runs the write of `keys` that `write` starts with this instance's first-level
    /// copies of them dropped before it starts and again after it ends (or is dropped): a
    /// concurrent read of this instance may have put the old value back meanwhile, and
    /// where Redis tracks keys its notice may come after the next read. Other instances
    /// drop theirs when Redis's notice or the write's announcement reaches them. (A function rather than a future, for the reason
    /// `observed` gives: a future argument is kept twice in this one's state.)
    async fn forgetting<'k, T, F: Future<Output = T>>(
        &self,
        keys: impl IntoIterator<Item = &'k str> + Clone,
        write: impl FnOnce() -> F,
    ) -> T {
        let Some(local) = &self.local else {
            return write().await;
        };
        keys.clone().into_iter().for_each(|k| local.remove(k));
        // Again when the write ends, or when its caller drops it unfinished (a timeout, a
        // request gone): the write may have landed all the same.
        let _again = OnDrop(move || keys.clone().into_iter().for_each(|k| local.remove(k)));
        write().await
    }

    /// Removes the entries of many keys in one round trip (on a Redis Cluster, one per
    /// master, concurrently); how many entries there were.
    ///
    /// More than [`MAX_BATCH`] distinct keys is `Err(CacheError::Validation)` and nothing
    /// is sent. Keys that could not be deleted because the backend is unavailable (on a
    /// cluster, those of an unreachable master) are not counted; the call is counted as
    /// degraded and logged by the backend.
    ///
    /// # Errors
    ///
    /// `CacheError::Validation` when `keys` holds more than [`MAX_BATCH`] distinct keys;
    /// nothing is sent then. No other variant comes back: keys an unavailable backend could
    /// not delete are left out of the count, never an error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// let names = manager.names();
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// names.set(&2, &"Bob".to_owned()).await?;
    /// assert_eq!(names.minvalidate(&[1, 2, 3]).await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn minvalidate(&self, keys: &[C::Key]) -> Result<u64, CacheError> {
        observed(C::NAMESPACE, Op::Minvalidate, || {
            self.minvalidate_unobserved(keys)
        })
        .await
    }

    /// The former name of [`minvalidate`](Self::minvalidate).
    ///
    /// # Errors
    ///
    /// As [`minvalidate`](Self::minvalidate).
    ///
    /// # Examples
    ///
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:name", key = i64, value = String)]
    /// # struct UserNameCache;
    /// # cache_registry! { struct CacheManager { names: UserNameCache } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_manager::CacheError> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// let names = manager.names();
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// #[allow(deprecated)]
    /// let removed = names.invalidate_many(&[1]).await?; // now: names.minvalidate(&[1])
    /// assert_eq!(removed, 1);
    /// # Ok(())
    /// # }
    /// ```
    #[deprecated(
        since = "0.1.0",
        note = "renamed `minvalidate`, like `mget` and `mset`"
    )]
    pub async fn invalidate_many(&self, keys: &[C::Key]) -> Result<u64, CacheError> {
        self.minvalidate(keys).await
    }

    async fn minvalidate_unobserved(&self, keys: &[C::Key]) -> Result<u64, CacheError> {
        let distinct = distinct_within_limit::<C>(keys, "minvalidate")?;
        if distinct.is_empty() {
            return Ok(0);
        }
        let redis_keys = self.redis_keys(&distinct);
        let backend = self.shared.backend();
        let (removed, degraded) = self
            .forgetting(redis_keys.iter().map(String::as_str), || async {
                // This layout's entries are counted; the other layouts' go too.
                let (removed, others) = tokio::join!(
                    backend.del_many(&redis_keys, self.announce()),
                    self.in_other_layouts(redis_keys.iter().map(String::as_str)),
                );
                self.delete_quietly(&backend, &others).await;
                removed
            })
            .await;
        if let Some(why) = degraded {
            self.counters.degraded(why);
        }
        Ok(removed)
    }

    fn redis_keys(&self, keys: &[&C::Key]) -> Vec<String> {
        let batch_keys = self.batch_keys();
        keys.iter().map(|k| batch_keys.key(*k)).collect()
    }

    /// The Redis keys of a batch, the start they share written once.
    fn batch_keys(&self) -> key::BatchKeys {
        let prefix = self.shared.prefix();
        key::BatchKeys::new(&Self::keys(prefix.as_ref().map(|p| p.as_str())))
    }

    fn written(&self, result: Result<(), Unavailable>) -> bool {
        match result {
            Ok(()) => true,
            Err(why) => {
                self.counters.degraded(why);
                false
            }
        }
    }

    /// Logs a corrupt entry and deletes it, unless another writer replaced it meanwhile.
    async fn evict_corrupt(
        &self,
        backend: &Backend,
        redis_key: &str,
        bytes: &[u8],
        error: &CodecError,
    ) {
        self.counters.corrupt();
        self.counters.misses(1);
        let deleted = backend.del_if_eq(redis_key, bytes).await;
        tracing::error!(
            namespace = C::NAMESPACE,
            key = redis_key,
            codec = <C::Codec as Codec<C::Value>>::NAME,
            len = bytes.len(),
            error = %error,
            deleted = deleted.unwrap_or(false),
            "corrupt cache entry: it does not decode as this cache's value type; deleted and read as a miss"
        );
    }

    /// The bytes a write stores: the encoded value, compressed with `compress = true`,
    /// within the size limit (`max_bytes`, or the manager's `max_value_bytes`).
    fn encode(&self, value: &C::Value) -> Result<Vec<u8>, CacheError> {
        Self::encode_within(value, self.value_limit())
    }

    /// The most bytes an encoded value may have, and whose limit that is: the cache's
    /// `max_bytes`, or the manager's `max_value_bytes`. Read once per batch.
    fn value_limit(&self) -> (Option<usize>, &'static str) {
        match C::MAX_BYTES {
            Some(limit) => (Some(limit), "the cache's `max_bytes`"),
            None => (
                self.shared.max_value_bytes(),
                "the manager's `max_value_bytes`",
            ),
        }
    }

    /// Encodes `value` as an entry, refused when it is over `limit`.
    fn encode_within(
        value: &C::Value,
        (limit, whose): (Option<usize>, &'static str),
    ) -> Result<Vec<u8>, CacheError> {
        let bytes = encode_entry::<C::Value, C::Codec>(value, C::FINGERPRINT, C::COMPRESS)
            .map_err(|source| CacheError::Serialization {
                namespace: C::NAMESPACE,
                source,
            })?;
        match limit {
            Some(limit) if bytes.len() > limit => Err(CacheError::validation(
                C::NAMESPACE,
                format!(
                    "the encoded value is {} bytes, over {whose} of {limit} bytes; nothing was written",
                    bytes.len()
                ),
            )),
            _ => Ok(bytes),
        }
    }
}

/// A TTL given to `set_with_ttl`, checked and cut to Redis's millisecond precision.
fn per_call_ttl<C: Cache>(ttl: Duration) -> Result<Duration, CacheError> {
    if ttl.as_millis() == 0 || ttl > MAX_TTL {
        // Both bounds in one unit, so either mistake shows what is allowed.
        return Err(CacheError::validation(
            C::NAMESPACE,
            format!(
                "a TTL must be from 1 ms to {} ms, got {ttl:?}",
                MAX_TTL.as_millis()
            ),
        ));
    }
    // Redis expiries have millisecond precision; drop the rest rather than round up.
    Ok(Duration::from_millis(ttl.as_millis() as u64))
}

/// Runs its function when dropped: at the end of the scope, or of a future dropped
/// unfinished.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The distinct keys of a batch call, in first-seen order; more than [`MAX_BATCH`] is
/// `Err(CacheError::Validation)` naming the call, before anything is sent.
fn distinct_within_limit<'k, C: Cache>(
    keys: &'k [C::Key],
    call: &str,
) -> Result<Vec<&'k C::Key>, CacheError> {
    let mut distinct: Vec<&C::Key> = Vec::with_capacity(keys.len().min(MAX_BATCH));
    let mut seen =
        HashSet::with_capacity_and_hasher(keys.len().min(MAX_BATCH), FastHash::default());
    for key in keys {
        if seen.insert(key) {
            distinct.push(key);
        }
    }
    if distinct.len() > MAX_BATCH {
        return Err(CacheError::validation(
            C::NAMESPACE,
            format!(
                "{call} of {} keys exceeds the batch limit of {MAX_BATCH}; split the keys into chunks of at most {MAX_BATCH}",
                distinct.len()
            ),
        ));
    }
    Ok(distinct)
}

#[cfg(test)]
mod readthrough_tests;
#[cfg(test)]
mod tests;

//! `TypedCache<C>`: the typed handle a registry hands out for each cache.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Unavailable};
use crate::cache::{Cache, MAX_BATCH};
use crate::codec::{decode_entry, encode_entry};
use crate::error::{CacheError, CodecError};
use crate::key::CacheKey;
use crate::load::Flights;
use crate::local::{Invalidate as _, LocalLevel as _};
use crate::manager::Shared;
use crate::observe::{Op, observed};
use crate::stats::{CacheStats, Counters};

/// Longest TTL a call may set: what fits Redis's millisecond expiry arithmetic.
const MAX_TTL: Duration = Duration::from_millis(i64::MAX as u64 / 2);

/// A typed cache: keys `C::Key`, values `C::Value`, in namespace `C::NAMESPACE`.
///
/// Handles come only from a `cache_registry!` manager and share its connection. No call
/// returns a connection error: while the backend is unavailable, reads return `None` and
/// writes `Ok(false)`.
pub struct TypedCache<C: Cache> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) counters: Arc<Counters>,
    field: &'static str,
    flights: Flights<C::Key, C::Value>,
    pub(crate) local: Option<Arc<C::Local>>,
    _cache: PhantomData<fn() -> C>,
}

impl<C: Cache> fmt::Debug for TypedCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCache")
            .field("namespace", &C::NAMESPACE)
            .field("ttl", &C::TTL)
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
        TypedCache {
            shared,
            counters,
            field,
            flights: Flights::default(),
            local,
            _cache: PhantomData,
        }
    }

    /// The first level, when this cache has one and it may be read now.
    fn local(&self) -> Option<&C::Local> {
        let local = self.local.as_deref()?;
        self.shared.locals.coherent().then_some(local)
    }

    /// Whether writes must tell other instances to drop their copies.
    fn announce(&self) -> bool {
        self.local.is_some()
    }

    pub(crate) fn flights(&self) -> &Flights<C::Key, C::Value> {
        &self.flights
    }

    /// This cache's counters: hits, misses, degraded calls, timeouts, corrupt entries.
    pub fn stats(&self) -> CacheStats {
        self.counters.snapshot(self.field, C::NAMESPACE)
    }

    /// The declared namespace: every key of this cache is `"{namespace}:{key}"` (with
    /// `hash_tag = true`, the namespace in braces: `{user:profile}:42`).
    pub fn namespace(&self) -> &'static str {
        C::NAMESPACE
    }

    /// The declared TTL, set by every write except `set_with_ttl`.
    pub fn ttl(&self) -> Duration {
        C::TTL
    }

    /// The Redis key of `key`: `"{namespace}:{key}"`, as `user:profile:42`; with
    /// `hash_tag = true` the namespace is in braces, `{user:profile}:42`, which puts every
    /// key of the cache in the hash slot of its namespace on a Redis Cluster.
    pub fn redis_key(&self, key: &C::Key) -> String {
        let mut out = String::with_capacity(C::NAMESPACE.len() + 42);
        if C::HASH_TAG {
            // Namespaces never contain braces, so the tag ends at the namespace's end and
            // a tagged key never equals an untagged one (those never start with `{`).
            out.push('{');
            out.push_str(C::NAMESPACE);
            out.push('}');
        } else {
            out.push_str(C::NAMESPACE);
        }
        out.push(':');
        key.write_key(&mut out);
        out
    }

    /// Reads the value of `key`.
    ///
    /// `None` on a miss, while the backend is unavailable, and for a corrupt entry (bytes
    /// that do not decode as `C::Value`), which is logged at error level and deleted.
    pub async fn get(&self, key: &C::Key) -> Option<C::Value> {
        observed(C::NAMESPACE, Op::Get, self.get_unobserved(key)).await
    }

    async fn get_unobserved(&self, key: &C::Key) -> Option<C::Value> {
        let redis_key = self.redis_key(key);
        let local = self.local();
        if let Some(value) = local.and_then(|l| l.get(&redis_key)) {
            self.counters.hits(1);
            return Some(value);
        }
        let generation = local.map(|l| l.generation());
        let backend = self.shared.backend();
        let bytes = match backend.get(&redis_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.counters.misses(1);
                return None;
            }
            Err(why) => {
                self.counters.degraded(why);
                return None;
            }
        };
        match decode_entry::<C::Value, C::Codec>(&bytes, C::FINGERPRINT) {
            Ok(value) => {
                self.counters.hits(1);
                if let (Some(local), Some(generation)) = (local, generation) {
                    local.insert_if_current(redis_key, &value, generation);
                }
                Some(value)
            }
            Err(error) => {
                self.evict_corrupt(&backend, &redis_key, &bytes, &error)
                    .await;
                None
            }
        }
    }

    /// Stores `value` under `key` with the cache's TTL.
    ///
    /// `Ok(true)` when stored, `Ok(false)` when the backend is unavailable (logged), and
    /// `Err(CacheError::Serialization)` when the value cannot be encoded; nothing is
    /// written then.
    pub async fn set(&self, key: &C::Key, value: &C::Value) -> Result<bool, CacheError> {
        observed(C::NAMESPACE, Op::Set, self.write(key, value, C::TTL)).await
    }

    /// Stores `value` under `key` with its own TTL, at millisecond precision.
    ///
    /// A TTL under one millisecond, or above 4 611 686 018 427 387 903 ms (what Redis's
    /// expiry arithmetic holds), is `Err(CacheError::Validation)` and nothing is written;
    /// otherwise as [`set`](Self::set).
    pub async fn set_with_ttl(
        &self,
        key: &C::Key,
        value: &C::Value,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        observed(C::NAMESPACE, Op::Set, async {
            let ttl = per_call_ttl::<C>(ttl)?;
            self.write(key, value, ttl).await
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
        let redis_key = self.redis_key(key);
        self.forget_locally(&redis_key);
        let backend = self.shared.backend();
        let stored = backend.set(&redis_key, &bytes, ttl, self.announce()).await;
        // Again after the write: a concurrent read of this instance may have put the
        // old value back meanwhile, and this instance ignores its own announcement.
        self.forget_locally(&redis_key);
        Ok(self.written(stored))
    }

    /// Reads many keys in one round trip (on a Redis Cluster, one per master, concurrently).
    ///
    /// The map has one entry per distinct key: `Some` for a hit, `None` for a miss, a
    /// corrupt entry (logged and deleted) or an unavailable backend (on a cluster, the
    /// keys of an unreachable master only). More than [`MAX_BATCH`] distinct keys is
    /// `Err(CacheError::Validation)` and nothing is sent.
    pub async fn mget(
        &self,
        keys: &[C::Key],
    ) -> Result<HashMap<C::Key, Option<C::Value>>, CacheError> {
        observed(C::NAMESPACE, Op::Mget, self.mget_unobserved(keys)).await
    }

    async fn mget_unobserved(
        &self,
        keys: &[C::Key],
    ) -> Result<HashMap<C::Key, Option<C::Value>>, CacheError> {
        let mut distinct = distinct_within_limit::<C>(keys, "mget")?;
        let mut out = HashMap::with_capacity(distinct.len());
        if distinct.is_empty() {
            return Ok(out);
        }
        let mut redis_keys = self.redis_keys(&distinct);
        let local = self.local();
        let mut hits = 0;
        if let Some(local) = local {
            // Serve what the first level holds; fetch the rest.
            let mut i = 0;
            while i < distinct.len() {
                if let Some(value) = local.get(&redis_keys[i]) {
                    out.insert(distinct.swap_remove(i).clone(), Some(value));
                    redis_keys.swap_remove(i);
                    hits += 1;
                } else {
                    i += 1;
                }
            }
            if distinct.is_empty() {
                self.counters.hits(hits);
                return Ok(out);
            }
        }
        let generation = local.map(|l| l.generation());
        let backend = self.shared.backend();
        let values = match backend.mget(&redis_keys).await {
            Ok(values) => values,
            Err(why) => {
                self.counters.degraded(why);
                self.counters.hits(hits);
                out.extend(distinct.into_iter().map(|k| (k.clone(), None)));
                return Ok(out);
            }
        };
        let (mut misses, mut degraded) = (0, None);
        let mut corrupt = Vec::new();
        for ((key, redis_key), fetched) in distinct.into_iter().zip(redis_keys).zip(values) {
            let value = match fetched {
                Err(why) => {
                    degraded.get_or_insert(why);
                    None
                }
                Ok(None) => {
                    misses += 1;
                    None
                }
                Ok(Some(bytes)) => match decode_entry::<C::Value, C::Codec>(&bytes, C::FINGERPRINT)
                {
                    Ok(value) => {
                        hits += 1;
                        if let (Some(local), Some(generation)) = (local, generation) {
                            local.insert_if_current(redis_key, &value, generation);
                        }
                        Some(value)
                    }
                    Err(error) => {
                        corrupt.push((redis_key, bytes, error));
                        None
                    }
                },
            };
            out.insert(key.clone(), value);
        }
        // Corrupt entries are evicted concurrently: one more round trip, not one per key.
        futures_util::future::join_all(corrupt.iter().map(|(redis_key, bytes, error)| {
            self.evict_corrupt(&backend, redis_key, bytes, error)
        }))
        .await;
        self.counters.hits(hits);
        self.counters.misses(misses);
        if let Some(why) = degraded {
            self.counters.degraded(why);
        }
        Ok(out)
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
    pub async fn mset<'a, I>(&self, entries: I) -> Result<bool, CacheError>
    where
        I: IntoIterator<Item = (&'a C::Key, &'a C::Value)>,
    {
        observed(C::NAMESPACE, Op::Mset, self.mset_unobserved(entries)).await
    }

    async fn mset_unobserved<'a, I>(&self, entries: I) -> Result<bool, CacheError>
    where
        I: IntoIterator<Item = (&'a C::Key, &'a C::Value)>,
    {
        let mut encoded: Vec<(String, Vec<u8>)> = Vec::new();
        let mut index: HashMap<&'a C::Key, usize> = HashMap::new();
        for (key, value) in entries {
            let bytes = self.encode(value)?;
            match index.entry(key) {
                // A later value for the same key wins, as it would with sequential sets.
                Entry::Occupied(slot) => encoded[*slot.get()].1 = bytes,
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
                    encoded.push((self.redis_key(key), bytes));
                }
            }
        }
        if encoded.is_empty() {
            return Ok(true);
        }
        for (redis_key, _) in &encoded {
            self.forget_locally(redis_key);
        }
        let backend = self.shared.backend();
        let stored = backend.mset(&encoded, C::TTL, self.announce()).await;
        for (redis_key, _) in &encoded {
            self.forget_locally(redis_key);
        }
        Ok(self.written(stored))
    }

    /// Removes the entry of `key`; `true` when there was one.
    ///
    /// `false` also when the backend is unavailable (logged).
    pub async fn invalidate(&self, key: &C::Key) -> bool {
        observed(
            C::NAMESPACE,
            Op::Invalidate,
            self.invalidate_unobserved(key),
        )
        .await
    }

    async fn invalidate_unobserved(&self, key: &C::Key) -> bool {
        let redis_key = self.redis_key(key);
        self.forget_locally(&redis_key);
        let backend = self.shared.backend();
        let removed = backend.del(&redis_key, self.announce()).await;
        self.forget_locally(&redis_key);
        match removed {
            Ok(removed) => removed,
            Err(why) => {
                self.counters.degraded(why);
                false
            }
        }
    }

    /// Drops this instance's first-level copy, before a write and again after it (a
    /// concurrent read may have put the old value back meanwhile, and an instance
    /// ignores its own announcements); other instances drop theirs when the write's
    /// announcement reaches them.
    fn forget_locally(&self, redis_key: &str) {
        if let Some(local) = &self.local {
            local.remove(redis_key);
        }
    }

    /// Removes the entries of many keys in one round trip (on a Redis Cluster, one per
    /// master, concurrently); how many entries there were.
    ///
    /// More than [`MAX_BATCH`] distinct keys is `Err(CacheError::Validation)` and nothing
    /// is sent. Keys that could not be deleted because the backend is unavailable (on a
    /// cluster, those of an unreachable master) are not counted; the call is counted as
    /// degraded and logged by the backend.
    pub async fn invalidate_many(&self, keys: &[C::Key]) -> Result<u64, CacheError> {
        observed(
            C::NAMESPACE,
            Op::InvalidateMany,
            self.invalidate_many_unobserved(keys),
        )
        .await
    }

    async fn invalidate_many_unobserved(&self, keys: &[C::Key]) -> Result<u64, CacheError> {
        let distinct = distinct_within_limit::<C>(keys, "invalidate_many")?;
        if distinct.is_empty() {
            return Ok(0);
        }
        let redis_keys = self.redis_keys(&distinct);
        for redis_key in &redis_keys {
            self.forget_locally(redis_key);
        }
        let backend = self.shared.backend();
        let (removed, degraded) = backend.del_many(&redis_keys, self.announce()).await;
        for redis_key in &redis_keys {
            self.forget_locally(redis_key);
        }
        if let Some(why) = degraded {
            self.counters.degraded(why);
        }
        Ok(removed)
    }

    fn redis_keys(&self, keys: &[&C::Key]) -> Vec<String> {
        keys.iter().map(|k| self.redis_key(k)).collect()
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
            codec = <C::Codec as crate::codec::Codec<C::Value>>::NAME,
            len = bytes.len(),
            error = %error,
            deleted = deleted.unwrap_or(false),
            "corrupt cache entry: it does not decode as this cache's value type; deleted and read as a miss"
        );
    }

    fn encode(&self, value: &C::Value) -> Result<Vec<u8>, CacheError> {
        encode_entry::<C::Value, C::Codec>(value, C::FINGERPRINT).map_err(|source| {
            CacheError::Serialization {
                namespace: C::NAMESPACE,
                source,
            }
        })
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

/// The distinct keys of a batch call, in first-seen order; more than [`MAX_BATCH`] is
/// `Err(CacheError::Validation)` naming the call, before anything is sent.
fn distinct_within_limit<'k, C: Cache>(
    keys: &'k [C::Key],
    call: &str,
) -> Result<Vec<&'k C::Key>, CacheError> {
    let mut distinct: Vec<&C::Key> = Vec::with_capacity(keys.len().min(MAX_BATCH));
    let mut seen = HashSet::with_capacity(keys.len().min(MAX_BATCH));
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
mod tests {
    use std::collections::HashMap;
    use std::future::Future;
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::cache::CacheInfo;
    use crate::codec::{self, FRAME_TAG};
    use crate::manager::ManagerCore;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Profile {
        name: String,
        tags: Vec<String>,
    }

    enum Profiles {}
    impl Cache for Profiles {
        type Key = i64;
        type Value = Profile;
        type Codec = codec::Bincode;
        type Local = crate::local::NoLocal;
        const NAMESPACE: &'static str = "user:profile";
        const TTL: Duration = Duration::from_secs(600);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0x1234_5678;
    }

    /// The same namespace and type as `Profiles`, declared with another version.
    enum ProfilesV2 {}
    impl Cache for ProfilesV2 {
        type Key = i64;
        type Value = Profile;
        type Codec = codec::Bincode;
        type Local = crate::local::NoLocal;
        const NAMESPACE: &'static str = "user:profile";
        const TTL: Duration = Duration::from_secs(600);
        const VERSION: u32 = 2;
        const FINGERPRINT: u32 = 0x8765_4321;
    }

    enum Sessions {}
    impl Cache for Sessions {
        type Key = String;
        type Value = i64;
        type Codec = codec::Text;
        type Local = crate::local::NoLocal;
        const NAMESPACE: &'static str = "session:token";
        const TTL: Duration = Duration::from_secs(300);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0;
    }

    /// A value serde_json cannot encode: map keys must be strings.
    enum Unencodable {}
    impl Cache for Unencodable {
        type Key = i64;
        type Value = HashMap<Vec<u8>, i64>;
        type Codec = codec::Json;
        type Local = crate::local::NoLocal;
        const NAMESPACE: &'static str = "bad";
        const TTL: Duration = Duration::from_secs(60);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0;
    }

    static CACHES: &[CacheInfo] = &[];

    async fn memory() -> ManagerCore {
        let core = ManagerCore::new(CACHES);
        core.connect("memory://").await.unwrap();
        core
    }

    fn store(core: &ManagerCore) -> Arc<Backend> {
        core.shared.backend()
    }

    fn with_store<R>(
        core: &ManagerCore,
        f: impl FnOnce(&crate::backend::memory::MemoryStore) -> R,
    ) -> R {
        match &*store(core) {
            Backend::Memory(m) => f(m),
            _ => panic!("not a memory backend"),
        }
    }

    fn ada() -> Profile {
        Profile {
            name: "Ada".into(),
            tags: vec!["math".into()],
        }
    }

    #[tokio::test]
    async fn calls_degrade_before_connect_and_after_disconnect() {
        let core = ManagerCore::new(CACHES);
        let cache = core.cache::<Profiles>("test");
        assert_eq!(cache.get(&1).await, None);
        assert!(!cache.set(&1, &ada()).await.unwrap());
        assert!(!cache.mset(&HashMap::from([(1, ada())])).await.unwrap());
        assert_eq!(
            cache.mget(&[1, 2]).await.unwrap(),
            HashMap::from([(1, None), (2, None)])
        );
        assert!(!cache.invalidate(&1).await);

        core.connect("memory://").await.unwrap();
        assert!(cache.set(&1, &ada()).await.unwrap());
        assert_eq!(cache.get(&1).await, Some(ada()));

        core.disconnect().await;
        assert_eq!(cache.get(&1).await, None);
        assert!(!cache.set(&1, &ada()).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_declared_ttl() {
        let core = memory().await;
        let cache = core.cache::<Sessions>("test");
        cache.set(&"tok".to_owned(), &7).await.unwrap();
        assert_eq!(
            with_store(&core, |m| m.ttl("session:token:tok")),
            Some(Duration::from_secs(300))
        );
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(cache.get(&"tok".to_owned()).await, Some(7));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(&"tok".to_owned()).await, None);
        assert!(
            !cache.invalidate(&"tok".to_owned()).await,
            "an expired entry is not removed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn set_with_ttl_uses_millisecond_precision() {
        let core = memory().await;
        let cache = core.cache::<Sessions>("test");
        let key = "t".to_owned();
        cache
            .set_with_ttl(&key, &1, Duration::from_micros(1_500_900))
            .await
            .unwrap();
        assert_eq!(
            with_store(&core, |m| m.ttl("session:token:t")),
            Some(Duration::from_millis(1500))
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(cache.get(&key).await, None);
    }

    #[tokio::test]
    async fn set_with_ttl_rejects_ttls_outside_the_range_and_names_it() {
        let core = memory().await;
        let cache = core.cache::<Sessions>("test");
        let key = "t".to_owned();
        for ttl in [
            Duration::ZERO,
            Duration::from_micros(999),
            MAX_TTL + Duration::from_millis(1),
            Duration::MAX,
        ] {
            let err = cache.set_with_ttl(&key, &1, ttl).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    CacheError::Validation {
                        namespace: "session:token",
                        ..
                    }
                ),
                "{err}"
            );
            let range = "from 1 ms to 4611686018427387903 ms";
            let given = format!("got {ttl:?}");
            let text = err.to_string();
            assert!(text.contains(range) && text.contains(&given), "{text}");
        }
        assert_eq!(with_store(&core, |m| m.len()), 0);
        for ttl in [Duration::from_millis(1), MAX_TTL] {
            assert!(cache.set_with_ttl(&key, &1, ttl).await.unwrap(), "{ttl:?}");
        }
    }

    #[tokio::test]
    async fn get_deletes_corrupt_entry() {
        let core = memory().await;
        let cache = core.cache::<Profiles>("test");
        for garbage in [
            &b"not bincode"[..],
            &[FRAME_TAG, 0x78, 0x56, 0x34, 0x12, 0xff][..],
            &[][..],
        ] {
            with_store(&core, |m| m.put_raw("user:profile:1", garbage));
            assert_eq!(cache.get(&1).await, None);
            assert_eq!(
                with_store(&core, |m| m.get("user:profile:1")),
                None,
                "{garbage:?} not deleted"
            );
        }
    }

    #[tokio::test]
    async fn entries_of_another_version_are_misses_and_deleted() {
        let core = memory().await;
        core.cache::<Profiles>("test")
            .set(&1, &ada())
            .await
            .unwrap();
        let v2 = core.cache::<ProfilesV2>("test");
        assert_eq!(v2.get(&1).await, None);
        assert_eq!(with_store(&core, |m| m.len()), 0);
        v2.set(&1, &ada()).await.unwrap();
        assert_eq!(v2.get(&1).await, Some(ada()));
    }

    #[tokio::test]
    async fn mget_returns_one_entry_per_distinct_key_and_evicts_corrupt_ones() {
        let core = memory().await;
        let cache = core.cache::<Profiles>("test");
        cache.set(&1, &ada()).await.unwrap();
        with_store(&core, |m| m.put_raw("user:profile:2", b"junk"));
        let got = cache.mget(&[1, 2, 3, 1, 2]).await.unwrap();
        assert_eq!(got, HashMap::from([(1, Some(ada())), (2, None), (3, None)]));
        assert_eq!(with_store(&core, |m| m.get("user:profile:2")), None);
        assert_eq!(cache.get(&1).await, Some(ada()), "good entries stay");
    }

    #[tokio::test]
    async fn batches_over_the_limit_are_rejected_and_send_nothing() {
        let core = memory().await;
        let cache = core.cache::<Sessions>("test");
        let keys: Vec<String> = (0..=MAX_BATCH).map(|i| i.to_string()).collect();
        let err = cache.mget(&keys).await.unwrap_err();
        assert!(matches!(
            err,
            CacheError::Validation {
                namespace: "session:token",
                ..
            }
        ));
        assert!(err.to_string().contains("101 keys"), "{err}");
        // Duplicates do not count against the limit.
        let mut dup = keys[..MAX_BATCH].to_vec();
        dup.push(keys[0].clone());
        assert_eq!(cache.mget(&dup).await.unwrap().len(), MAX_BATCH);

        let entries: HashMap<String, i64> = keys.iter().cloned().zip(0..).collect();
        let err = cache.mset(&entries).await.unwrap_err();
        assert!(matches!(err, CacheError::Validation { .. }), "{err}");
        assert_eq!(
            with_store(&core, |m| m.len()),
            0,
            "a rejected batch wrote something"
        );

        let entries: HashMap<String, i64> = keys[..MAX_BATCH].iter().cloned().zip(0..).collect();
        assert!(cache.mset(&entries).await.unwrap());
        assert_eq!(with_store(&core, |m| m.len()), MAX_BATCH);
    }

    #[tokio::test]
    async fn a_value_that_cannot_be_encoded_is_an_error_and_writes_nothing() {
        let core = memory().await;
        let cache = core.cache::<Unencodable>("test");
        let bad = HashMap::from([(vec![1u8], 1)]);
        let err = cache.set(&1, &bad).await.unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::Serialization {
                    namespace: "bad",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("cache `bad`"), "{err}");
        let good = HashMap::new();
        let err = cache.mset([(&1, &good), (&2, &bad)]).await.unwrap_err();
        assert!(matches!(err, CacheError::Serialization { .. }));
        assert_eq!(
            with_store(&core, |m| m.len()),
            0,
            "a batch with a bad value wrote something"
        );
    }

    #[tokio::test]
    async fn mset_writes_every_entry_with_the_ttl_and_the_last_duplicate_wins() {
        let core = memory().await;
        let cache = core.cache::<Sessions>("test");
        let (a, b) = ("a".to_owned(), "b".to_owned());
        assert!(cache.mset([(&a, &1), (&b, &2), (&a, &3)]).await.unwrap());
        assert_eq!(cache.get(&a).await, Some(3));
        assert_eq!(cache.get(&b).await, Some(2));
        let ttl = with_store(&core, |m| m.ttl("session:token:b")).unwrap();
        assert!(
            ttl > Duration::from_secs(299) && ttl <= Duration::from_secs(300),
            "{ttl:?}"
        );
    }

    #[tokio::test]
    async fn invalidate_reports_whether_an_entry_was_removed() {
        let core = memory().await;
        let cache = core.cache::<Profiles>("test");
        cache.set(&9, &ada()).await.unwrap();
        assert!(cache.invalidate(&9).await);
        assert!(!cache.invalidate(&9).await);
        assert_eq!(cache.get(&9).await, None);
    }

    #[tokio::test]
    async fn connect_replaces_the_backend() {
        let core = memory().await;
        let cache = core.cache::<Profiles>("test");
        cache.set(&1, &ada()).await.unwrap();
        core.connect("memory://").await.unwrap();
        assert_eq!(cache.get(&1).await, None, "a new memory:// starts empty");
    }

    #[tokio::test]
    async fn health_follows_the_connection() {
        let core = ManagerCore::new(CACHES);
        let h = core.health().await;
        assert_eq!(
            (h.status, h.healthy, h.backend),
            (crate::HealthStatus::Disconnected, false, "none")
        );
        core.connect("memory://").await.unwrap();
        let h = core.health().await;
        assert_eq!(
            (h.status, h.healthy, h.backend),
            (crate::HealthStatus::Connected, true, "memory")
        );
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["status"], "connected");
        assert_eq!(json["healthy"], true);
    }

    #[tokio::test]
    async fn counters_track_hits_misses_corrupt_entries_and_degraded_calls() {
        let core = ManagerCore::new(CACHES);
        let cache = core.cache::<Profiles>("profiles");
        cache.get(&1).await;
        cache.set(&1, &ada()).await.unwrap();
        let s = cache.stats();
        assert_eq!((s.degraded, s.hits, s.misses, s.timeouts), (2, 0, 0, 0));

        core.connect("memory://").await.unwrap();
        cache.set(&1, &ada()).await.unwrap();
        cache.get(&1).await;
        cache.get(&2).await;
        cache.mget(&[1, 2, 3]).await.unwrap();
        with_store(&core, |m| m.put_raw("user:profile:4", b"junk"));
        cache.get(&4).await;
        let s = cache.stats();
        assert_eq!((s.field, s.namespace), ("profiles", "user:profile"));
        assert_eq!(
            (s.hits, s.misses, s.corrupt_evicted, s.degraded),
            (2, 4, 1, 2)
        );
        assert_eq!(core.stats(), vec![s]);
    }

    #[tokio::test]
    async fn redis_keys_are_namespace_colon_key() {
        let core = memory().await;
        assert_eq!(
            core.cache::<Profiles>("test").redis_key(&-3),
            "user:profile:-3"
        );
        assert_eq!(
            core.cache::<Sessions>("test").redis_key(&"a:b".to_owned()),
            "session:token:a:b"
        );
    }

    /// `Profiles` with `hash_tag = true`.
    enum TaggedProfiles {}
    impl Cache for TaggedProfiles {
        type Key = i64;
        type Value = Profile;
        type Codec = codec::Bincode;
        type Local = crate::local::NoLocal;
        const NAMESPACE: &'static str = "user:profile";
        const TTL: Duration = Duration::from_secs(600);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0x1234_5678;
        const HASH_TAG: bool = true;
    }

    #[tokio::test]
    async fn hash_tagged_keys_put_the_namespace_in_braces() {
        let core = memory().await;
        let cache = core.cache::<TaggedProfiles>("test");
        assert_eq!(cache.redis_key(&-3), "{user:profile}:-3");
        assert_eq!(
            crate::backend::cluster::slot(cache.redis_key(&1).as_bytes()),
            crate::backend::cluster::slot(cache.redis_key(&2).as_bytes())
        );
        assert!(cache.set(&7, &ada()).await.unwrap());
        assert!(with_store(&core, |m| m.get("{user:profile}:7").is_some()));
        assert_eq!(
            core.cache::<Profiles>("test").get(&7).await,
            None,
            "the untagged cache of the same namespace has other keys"
        );
        assert_eq!(cache.get(&7).await, Some(ada()));
    }

    #[tokio::test]
    async fn invalidate_many_counts_removed_entries_and_limits_batches() {
        let core = memory().await;
        let cache = core.cache::<Profiles>("test");
        cache
            .mset(&HashMap::from([(1, ada()), (2, ada()), (3, ada())]))
            .await
            .unwrap();
        assert_eq!(cache.invalidate_many(&[1, 2, 2, 9]).await.unwrap(), 2);
        assert_eq!(
            cache.mget(&[1, 2, 3]).await.unwrap(),
            HashMap::from([(1, None), (2, None), (3, Some(ada()))])
        );
        assert_eq!(cache.invalidate_many(&[]).await.unwrap(), 0);
        let too_many: Vec<i64> = (0..=MAX_BATCH as i64).collect();
        assert!(matches!(
            cache.invalidate_many(&too_many).await,
            Err(CacheError::Validation { .. })
        ));
        assert_eq!(
            cache.get(&3).await,
            Some(ada()),
            "a rejected batch deletes nothing"
        );

        core.disconnect().await;
        assert_eq!(cache.invalidate_many(&[3]).await.unwrap(), 0);
        assert_eq!(cache.stats().degraded, 1);
    }

    /// `Profiles` with a first level.
    enum LocalProfiles {}
    impl Cache for LocalProfiles {
        type Key = i64;
        type Value = Profile;
        type Codec = codec::Bincode;
        type Local = crate::local::Moka<Profile>;
        const NAMESPACE: &'static str = "user:local";
        const TTL: Duration = Duration::from_secs(600);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 0x1234_5678;
        const LOCAL_CAPACITY: u64 = 10;
    }

    /// Runs `call` 1000 times in a row on a current-thread runtime beside a task that
    /// counts how often it ran: a call that completes without waiting must still yield
    /// to the runtime now and then (tokio's cooperative budget), or the other task never
    /// runs until the loop ends.
    async fn other_task_runs_during<F, Fut>(what: &str, mut call: F)
    where
        F: FnMut() -> Fut,
        Fut: Future,
    {
        let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let other = tokio::spawn({
            let ran = Arc::clone(&ran);
            async move {
                loop {
                    ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        for _ in 0..1000 {
            call().await;
        }
        let runs = ran.load(std::sync::atomic::Ordering::Relaxed);
        other.abort();
        assert!(
            runs >= 2,
            "{what}: 1000 calls in a row let another task run only {runs} times: the call never yields"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_call_that_completes_at_once_yields_to_the_runtime() {
        let core = memory().await;
        let cache = core.cache::<Profiles>("test");
        let local = core.cache::<LocalProfiles>("local");
        cache.set(&1, &ada()).await.unwrap();
        local.set(&1, &ada()).await.unwrap();
        assert_eq!(local.get(&1).await, Some(ada()));
        let too_many: Vec<i64> = (0..=MAX_BATCH as i64).collect();
        let (value, nothing) = (ada(), HashMap::new());
        other_task_runs_during("get on memory://", || cache.get(&1)).await;
        other_task_runs_during("first-level hit", || local.get(&1)).await;
        other_task_runs_during("set on memory://", || cache.set(&1, &value)).await;
        other_task_runs_during("set_with_ttl rejected", || {
            cache.set_with_ttl(&1, &value, Duration::ZERO)
        })
        .await;
        other_task_runs_during("empty mget", || cache.mget(&[])).await;
        other_task_runs_during("mget over the limit", || cache.mget(&too_many)).await;
        other_task_runs_during("mget of first-level hits", || local.mget(&[1])).await;
        other_task_runs_during("empty mset", || cache.mset(&nothing)).await;
        other_task_runs_during("invalidate", || cache.invalidate(&2)).await;
        other_task_runs_during("empty invalidate_many", || cache.invalidate_many(&[])).await;
        other_task_runs_during("clear", || cache.clear()).await;
        other_task_runs_during("health", || core.health()).await;
        other_task_runs_during("get_or_load hit", || {
            cache.get_or_load(&1, || async { Ok::<_, ()>(None) })
        })
        .await;
        other_task_runs_during("get_or_load of a key the loader has not", || {
            cache.get_or_load(&3, || async { Ok::<_, ()>(None) })
        })
        .await;
        other_task_runs_during("get_many_or_load hit", || {
            cache.get_many_or_load(&[1], |_| async { Ok::<_, ()>(HashMap::new()) })
        })
        .await;

        core.disconnect().await;
        other_task_runs_during("get, not connected", || cache.get(&1)).await;
        other_task_runs_during("set, not connected", || cache.set(&1, &value)).await;
        other_task_runs_during("mget, not connected", || cache.mget(&[1, 2])).await;
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::registry::namespaces_collide;

        enum Texts {}
        impl Cache for Texts {
            type Key = String;
            type Value = String;
            type Codec = codec::Text;
            type Local = crate::local::NoLocal;
            const NAMESPACE: &'static str = "t";
            const TTL: Duration = Duration::from_secs(1);
            const VERSION: u32 = 0;
            const FINGERPRINT: u32 = 0;
        }

        fn key_of<K: CacheKey>(namespace: &str, key: &K) -> String {
            let mut out = format!("{namespace}:");
            key.write_key(&mut out);
            out
        }

        /// Namespaces of the grammar `#[derive(Cache)]` accepts.
        fn namespace() -> impl Strategy<Value = String> {
            proptest::collection::vec("[a-z0-9_.-]{1,4}", 1..4)
                .prop_map(|segments| segments.join(":"))
        }

        /// Strings with the characters that break naive key schemes.
        fn nasty() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[:{}*\\n\\r\\t a-z\\x00é€😀]{0,12}").unwrap()
        }

        proptest! {
            #[test]
            fn distinct_string_keys_never_share_a_redis_key(a in nasty(), b in nasty()) {
                prop_assume!(a != b);
                prop_assert_ne!(key_of("t", &a), key_of("t", &b));
            }

            #[test]
            fn distinct_integer_and_uuid_keys_never_share_a_redis_key(a: i128, b: i128, u: u128, v: u128) {
                prop_assume!(a != b && u != v);
                prop_assert_ne!(key_of("t", &a), key_of("t", &b));
                prop_assert_ne!(key_of("t", &uuid::Uuid::from_u128(u)), key_of("t", &uuid::Uuid::from_u128(v)));
            }

            /// Two namespaces a registry accepts never produce the same Redis key, whatever
            /// the keys: the registry's prefix rule is what makes raw string keys safe.
            #[test]
            fn keys_of_namespaces_a_registry_accepts_never_collide(
                n1 in namespace(), n2 in namespace(), k1 in nasty(), k2 in nasty()
            ) {
                prop_assume!(!namespaces_collide(&n1, &n2));
                prop_assert_ne!(key_of(&n1, &k1), key_of(&n2, &k2));
            }

            /// Hash-tagged keys (`{namespace}:key`) never collide with each other across
            /// namespaces, nor with untagged keys, whatever the keys.
            #[test]
            fn hash_tagged_keys_never_collide(
                n1 in namespace(), n2 in namespace(), k1 in nasty(), k2 in nasty()
            ) {
                prop_assume!(n1 != n2 || k1 != k2);
                let tagged = |n: &str, k: &String| key_of(&format!("{{{n}}}"), k);
                prop_assert_ne!(tagged(&n1, &k1), tagged(&n2, &k2));
                prop_assert_ne!(tagged(&n1, &k1), key_of(&n2, &k2));
            }

            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let mut framed = vec![FRAME_TAG, 0x78, 0x56, 0x34, 0x12];
                framed.extend_from_slice(&bytes);
                for input in [&bytes, &framed] {
                    let _ = decode_entry::<Profile, codec::Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<Vec<String>, codec::Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<HashMap<String, u64>, codec::Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<i64, codec::Bincode>(input, 0x1234_5678);
                    let _ = decode_entry::<Profile, codec::Json>(input, 0);
                    let _ = decode_entry::<i64, codec::Text>(input, 0);
                    let _ = decode_entry::<uuid::Uuid, codec::Text>(input, 0);
                    let _ = decode_entry::<String, codec::Text>(input, 0);
                }
            }

            #[test]
            fn every_codec_round_trips_what_it_encodes(name in nasty(), tags in proptest::collection::vec(nasty(), 0..3), n: i64) {
                let p = Profile { name: name.clone(), tags };
                let bytes = encode_entry::<_, codec::Bincode>(&p, 7).unwrap();
                prop_assert_eq!(decode_entry::<Profile, codec::Bincode>(&bytes, 7).unwrap(), p.clone());
                let bytes = encode_entry::<_, codec::Json>(&p, 0).unwrap();
                prop_assert_eq!(decode_entry::<Profile, codec::Json>(&bytes, 0).unwrap(), p);
                let bytes = encode_entry::<_, codec::Text>(&n, 0).unwrap();
                prop_assert_eq!(decode_entry::<i64, codec::Text>(&bytes, 0).unwrap(), n);
                let bytes = encode_entry::<String, <Texts as Cache>::Codec>(&name, 0).unwrap();
                prop_assert_eq!(decode_entry::<String, codec::Text>(&bytes, 0).unwrap(), name);
            }
        }
    }
}

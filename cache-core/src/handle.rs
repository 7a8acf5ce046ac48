//! `TypedCache<C>`: the typed handle a registry hands out for each cache.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::cache::{Cache, MAX_BATCH};
use crate::codec::{decode_entry, encode_entry};
use crate::error::{CacheError, CodecError};
use crate::key::CacheKey;
use crate::manager::Shared;

/// Longest TTL a call may set: what fits Redis's millisecond expiry arithmetic.
const MAX_TTL: Duration = Duration::from_millis(i64::MAX as u64 / 2);

/// A typed cache: keys `C::Key`, values `C::Value`, in namespace `C::NAMESPACE`.
///
/// Handles come only from a `cache_registry!` manager and share its connection. No call
/// returns a connection error: while the backend is unavailable, reads return `None` and
/// writes `Ok(false)`.
pub struct TypedCache<C: Cache> {
    shared: Arc<Shared>,
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
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        TypedCache {
            shared,
            _cache: PhantomData,
        }
    }

    /// The declared namespace: every key of this cache is `"{namespace}:{key}"`.
    pub fn namespace(&self) -> &'static str {
        C::NAMESPACE
    }

    /// The declared TTL, set by every write except `set_with_ttl`.
    pub fn ttl(&self) -> Duration {
        C::TTL
    }

    /// The Redis key of `key`: `"{namespace}:{key}"`.
    pub fn redis_key(&self, key: &C::Key) -> String {
        let mut out = String::with_capacity(C::NAMESPACE.len() + 40);
        out.push_str(C::NAMESPACE);
        out.push(':');
        key.write_key(&mut out);
        out
    }

    /// Reads the value of `key`.
    ///
    /// `None` on a miss, while the backend is unavailable, and for a corrupt entry (bytes
    /// that do not decode as `C::Value`), which is logged at error level and deleted.
    pub async fn get(&self, key: &C::Key) -> Option<C::Value> {
        let backend = self.shared.backend();
        let redis_key = self.redis_key(key);
        let bytes = backend.get(&redis_key).await.ok()??;
        match decode_entry::<C::Value, C::Codec>(&bytes, C::FINGERPRINT) {
            Ok(value) => Some(value),
            Err(error) => {
                evict_corrupt::<C>(&backend, &redis_key, &bytes, &error).await;
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
        self.write(key, value, C::TTL).await
    }

    /// Stores `value` under `key` with its own TTL, at millisecond precision.
    ///
    /// A TTL under one millisecond is `Err(CacheError::Validation)`; otherwise as
    /// [`set`](Self::set).
    pub async fn set_with_ttl(&self, key: &C::Key, value: &C::Value, ttl: Duration) -> Result<bool, CacheError> {
        if ttl.as_millis() == 0 {
            return Err(CacheError::validation(
                C::NAMESPACE,
                format!("a TTL must be at least 1 ms, got {ttl:?}"),
            ));
        }
        if ttl > MAX_TTL {
            return Err(CacheError::validation(
                C::NAMESPACE,
                format!("a TTL must be at most {MAX_TTL:?}, got {ttl:?}"),
            ));
        }
        // Redis expiries have millisecond precision; drop the rest rather than round up.
        let ttl = Duration::from_millis(ttl.as_millis() as u64);
        self.write(key, value, ttl).await
    }

    async fn write(&self, key: &C::Key, value: &C::Value, ttl: Duration) -> Result<bool, CacheError> {
        let bytes = self.encode(value)?;
        let backend = self.shared.backend();
        Ok(backend.set(&self.redis_key(key), &bytes, ttl).await.is_ok())
    }

    /// Reads many keys in one round trip.
    ///
    /// The map has one entry per distinct key: `Some` for a hit, `None` for a miss, a
    /// corrupt entry (logged and deleted) or an unavailable backend. More than
    /// [`MAX_BATCH`] distinct keys is `Err(CacheError::Validation)` and nothing is sent.
    pub async fn mget(&self, keys: &[C::Key]) -> Result<HashMap<C::Key, Option<C::Value>>, CacheError> {
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
                    "mget of {} keys exceeds the batch limit of {MAX_BATCH}; split the keys into chunks of at most {MAX_BATCH}",
                    distinct.len()
                ),
            ));
        }
        let mut out = HashMap::with_capacity(distinct.len());
        if distinct.is_empty() {
            return Ok(out);
        }
        let redis_keys: Vec<String> = distinct.iter().map(|k| self.redis_key(k)).collect();
        let backend = self.shared.backend();
        let Ok(values) = backend.mget(&redis_keys).await else {
            out.extend(distinct.into_iter().map(|k| (k.clone(), None)));
            return Ok(out);
        };
        for ((key, redis_key), bytes) in distinct.into_iter().zip(&redis_keys).zip(values) {
            let value = match bytes {
                None => None,
                Some(bytes) => match decode_entry::<C::Value, C::Codec>(&bytes, C::FINGERPRINT) {
                    Ok(value) => Some(value),
                    Err(error) => {
                        evict_corrupt::<C>(&backend, redis_key, &bytes, &error).await;
                        None
                    }
                },
            };
            out.insert(key.clone(), value);
        }
        Ok(out)
    }

    /// Stores many entries, each with the cache's TTL, in one round trip.
    ///
    /// Takes `&HashMap<K, V>` (or any iterator of `(&K, &V)`). More than [`MAX_BATCH`]
    /// entries is `Err(CacheError::Validation)`; a value that fails to encode is
    /// `Err(CacheError::Serialization)`. In both cases nothing is written. Each entry is
    /// written atomically, the batch as a whole is not: a reader may see some entries
    /// before others.
    pub async fn mset<'a, I>(&self, entries: I) -> Result<bool, CacheError>
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
        let backend = self.shared.backend();
        Ok(backend.mset(&encoded, C::TTL).await.is_ok())
    }

    /// Removes the entry of `key`; `true` when there was one.
    ///
    /// `false` also when the backend is unavailable (logged).
    pub async fn invalidate(&self, key: &C::Key) -> bool {
        let backend = self.shared.backend();
        backend.del(&self.redis_key(key)).await.unwrap_or(false)
    }

    fn encode(&self, value: &C::Value) -> Result<Vec<u8>, CacheError> {
        encode_entry::<C::Value, C::Codec>(value, C::FINGERPRINT).map_err(|source| CacheError::Serialization {
            namespace: C::NAMESPACE,
            source,
        })
    }
}

/// Logs a corrupt entry and deletes it, unless another writer replaced it meanwhile.
async fn evict_corrupt<C: Cache>(backend: &Backend, redis_key: &str, bytes: &[u8], error: &CodecError) {
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

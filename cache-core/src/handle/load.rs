//! Read-through: `get_or_load` and its batch form `mget_or_load`, with what keeps an
//! application up when its database fails, each declared on the cache:
//!
//! - single flight: concurrent loads of a key run once in the process, or with
//!   `single_flight = "global"` once across every instance sharing the Redis (a lease
//!   in Redis, the others woken by a message when the value is stored);
//! - `fail_safe`: an entry past its TTL is kept as a fallback, returned when the loader
//!   fails (and then served as fresh for the fail-safe throttle, so a failing database
//!   is not asked on every call);
//! - `load_timeout_ms`: with a fallback at hand, a slow loader is not waited for; it
//!   goes on in the background and stores its result when it lands;
//! - `refresh_ahead`: a hit on an entry near the end of its TTL answers at once and
//!   reloads it in the background;
//! - `negative_ttl`: a loader's `Ok(None)` is remembered, so it is not asked again.
//!
//! A load that outlives its caller runs on a task of its own, at most one per key, and
//! for at most the background timeout, so an outage never piles up tasks.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Lookup, TypedCache};
use crate::backend::Write;
use crate::cache::{Cache, MAX_BATCH, SingleFlight};
use crate::codec::{Codec, encode_absent};
use crate::loads::{Runs, Started};
use crate::observe::{Op, observed};
use crate::shared::Shared;

/// A stale entry kept as a fallback: its value, and the bytes stored, to extend its life
/// only if no other writer replaced it.
struct Fallback<V> {
    value: V,
    bytes: Vec<u8>,
}

/// What storing a load's outcome takes.
enum Plan {
    /// Store the value's bytes with the cache's TTL.
    Store(Vec<u8>),
    /// Remember the absence for `negative_ttl`.
    Absent,
    /// Delete the stale fallback: the loader says the key no longer exists.
    DropStale,
    /// Extend the stale fallback (these bytes) by the fail-safe throttle.
    Throttle(Vec<u8>),
    /// Store nothing.
    Nothing,
}

/// The lease of a global single flight: while held, other instances wait for this one's
/// load. Released (deleted, and its end announced) when the load is settled; if its
/// holder is cancelled first, released from a task of its own, so the waiters retry at
/// once rather than at the end of their wait.
struct Lease {
    shared: Arc<Shared>,
    key: String,
    redis_key: String,
    token: Vec<u8>,
    released: bool,
}

impl Lease {
    async fn release(mut self) {
        self.released = true;
        release_lease(&self.shared, &self.key, &self.redis_key, &self.token).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (shared, key, redis_key, token) = (
                Arc::clone(&self.shared),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.redis_key),
                std::mem::take(&mut self.token),
            );
            runtime.spawn(async move { release_lease(&shared, &key, &redis_key, &token).await });
        }
    }
}

/// Deletes the lease if it is still this holder's, and announces that the load of
/// `redis_key` ended, to other instances and to this one's own waiters.
async fn release_lease(shared: &Shared, lease_key: &str, redis_key: &str, token: &[u8]) {
    let backend = shared.backend();
    let _ = backend.del_if_eq(lease_key, token).await;
    let _ = backend.announce_load(redis_key).await;
    shared.locals.loads.ended(redis_key);
}

/// What asking for the lease of a global single flight came to.
enum Leased<V> {
    /// This instance holds it: it loads.
    Ours(Lease),
    /// Another instance loaded: its answer, read from the cache.
    Theirs(Option<V>),
    /// Nobody answered within the wait (or the lease could not be asked for): load
    /// without a lease.
    Nobody,
}

/// How often a caller waiting for another instance's load looks at the cache, in case
/// the message announcing the load's end was lost (e.g. while the listener reconnected).
fn recheck_every(wait: Duration) -> Duration {
    (wait / 8).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

impl<C: Cache> TypedCache<C> {
    /// Reads `key`, or loads it on a miss and caches what the loader found.
    ///
    /// Concurrent calls for the same missing key in this process run `load` once; the
    /// others wait for its result (single flight). `load` returns `Ok(None)` for a key
    /// that does not exist (nothing is cached), and its error is returned to the caller
    /// that ran it, with nothing cached; callers that were waiting on a failed or
    /// cancelled load run their own.
    ///
    /// The cache stays a luxury: an unavailable backend is a miss, and a value that
    /// cannot be stored (backend down, or it fails to encode: logged) is still returned.
    ///
    /// What the cache's declaration adds: with `fail_safe`, a stale entry answers when
    /// the loader fails (and then reads as fresh for the fail-safe throttle); with
    /// `load_timeout_ms`, it answers when the loader is slower than that, and the load
    /// goes on in the background; with `refresh_ahead`, an old hit is returned at once
    /// and reloaded in the background; with `negative_ttl`, an `Ok(None)` is remembered;
    /// with `single_flight = "global"`, the loader runs once across every instance
    /// sharing the Redis. For a cache with `load_timeout_ms` or `refresh_ahead`, the
    /// loader's future and error must be `Send + 'static` (move an `Arc` of the pool
    /// into it). See the project's `docs/readthrough.md`.
    ///
    /// # Errors
    ///
    /// The loader's error `E`, returned to the caller whose `load` failed; nothing is
    /// cached then, and with `fail_safe` only when no stale entry could answer instead.
    /// No `CacheError` comes back: backend failures read as misses, and a loaded value
    /// that cannot be stored is logged and returned.
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
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// /// The database: user 1 is Ada, nobody else exists.
    /// async fn name_from_database(id: i64) -> Result<Option<String>, std::io::Error> {
    ///     Ok((id == 1).then(|| "Ada".to_owned()))
    /// }
    ///
    /// let names = manager.names();
    /// let ada = names.get_or_load(&1, || name_from_database(1)).await?;
    /// assert_eq!(ada.as_deref(), Some("Ada"));
    /// assert_eq!(names.get(&1).await.as_deref(), Some("Ada")); // cached by the load
    ///
    /// let nobody = names.get_or_load(&2, || name_from_database(2)).await?;
    /// assert_eq!(nobody, None);
    /// assert_eq!(names.get(&2).await, None); // not found: nothing cached
    ///
    /// let failed = names
    ///     .get_or_load(&3, || async { Err(std::io::Error::other("database down")) })
    ///     .await;
    /// assert!(failed.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_load<F, Fut, E>(&self, key: &C::Key, load: F) -> Result<Option<C::Value>, E>
    where
        C::Value: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<C::Value>, E>>,
        C::Loads: Runs<Fut>,
    {
        match observed(C::NAMESPACE, Op::Get, || self.lookup(key)).await {
            Lookup::Fresh { value, fresh_for } => {
                if Self::wants_refresh(fresh_for) && !self.refresh_backing_off(key) {
                    self.refresh_in_background(key, load);
                }
                Ok(Some(value))
            }
            Lookup::Absent => Ok(None),
            Lookup::Stale { value, bytes } => {
                let fallback = Fallback { value, bytes };
                // A load of this key goes on in the background after a soft timeout:
                // answer from the fallback rather than start another.
                if C::LOAD_TIMEOUT.is_some() && self.flights().in_background(key) {
                    return Ok(Some(fallback.value));
                }
                self.flights()
                    .single
                    .run(key, || self.lead(key, load, Some(fallback)))
                    .await
            }
            Lookup::Miss | Lookup::Down => {
                self.flights()
                    .single
                    .run(key, || self.lead(key, load, None))
                    .await
            }
        }
    }

    /// Whether a refresh ahead of `key` failed within the fail-safe throttle: then the
    /// entry is served as it is until the throttle passes, as a stale one would be.
    fn refresh_backing_off(&self, key: &C::Key) -> bool {
        self.flights()
            .refresh_failed_within(key, self.shared.config().fail_safe_throttle)
    }

    /// Whether a fresh entry with `fresh_for` left is old enough to refresh ahead.
    fn wants_refresh(fresh_for: Option<Duration>) -> bool {
        let percent = u128::from(C::REFRESH_AHEAD);
        percent > 0
            && fresh_for
                .is_some_and(|left| left.as_millis() * 100 < C::TTL.as_millis() * (100 - percent))
    }

    /// The load of one key by the caller that leads its single flight: with a global
    /// single flight, only once it holds the lease (or nobody answered in time).
    async fn lead<F, Fut, E>(
        &self,
        key: &C::Key,
        load: F,
        fallback: Option<Fallback<C::Value>>,
    ) -> Result<Option<C::Value>, E>
    where
        C::Value: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<C::Value>, E>>,
        C::Loads: Runs<Fut>,
    {
        let redis_key = self.redis_key(key);
        let lease = if C::SINGLE_FLIGHT == SingleFlight::Global {
            match self.take_lease(key, &redis_key, fallback.as_ref()).await {
                Leased::Ours(lease) => Some(lease),
                Leased::Theirs(answer) => return Ok(answer),
                Leased::Nobody => None,
            }
        } else {
            None
        };
        let config = self.shared.config();
        let soft_timeout = C::LOAD_TIMEOUT.filter(|_| fallback.is_some());
        match (C::Loads::start(load()), soft_timeout, fallback) {
            (Started::Movable(loading), Some(soft_timeout), Some(fallback)) => {
                let Some(claim) = self.claim_background(key) else {
                    return Ok(Some(fallback.value));
                };
                let Fallback {
                    value: stale,
                    bytes,
                } = fallback;
                let cache = self.share();
                let mut task = tokio::spawn(async move {
                    let _claim = claim;
                    let limit = config.background_timeout;
                    let Ok(carried) = tokio::time::timeout(limit, loading).await else {
                        cache.background_timed_out(&redis_key, limit);
                        return None;
                    };
                    // The loader's error may not be `Send`: it stays inside this block,
                    // packed again before the next await.
                    let (plan, answer) = {
                        let loaded = C::Loads::unpack(carried);
                        let plan = cache.plan(&redis_key, &loaded, Some(&bytes));
                        (plan, C::Loads::pack(loaded))
                    };
                    cache.apply(&redis_key, plan, lease).await;
                    Some(answer)
                });
                match tokio::time::timeout(soft_timeout, &mut task).await {
                    Ok(Ok(Some(carried))) => match C::Loads::unpack(carried) {
                        Err(_) => Ok(Some(stale)),
                        answer => answer,
                    },
                    Ok(Ok(None)) => Ok(Some(stale)),
                    Ok(Err(failed)) => std::panic::resume_unwind(failed.into_panic()),
                    // The soft timeout: answer from the fallback; the load goes on.
                    Err(_) => Ok(Some(stale)),
                }
            }
            (Started::Movable(loading), _, fallback) => {
                let loaded = C::Loads::unpack(loading.await);
                self.settle(&redis_key, loaded, fallback, lease).await
            }
            (Started::Here(loading), _, fallback) => {
                let loaded = loading.await;
                self.settle(&redis_key, loaded, fallback, lease).await
            }
        }
    }

    /// Stores what a load of one key came to, releases its lease, and says what the
    /// caller gets: the value; a remembered or plain absence; the loader's error, or
    /// the fallback in its place (then extended by the fail-safe throttle).
    async fn settle<E>(
        &self,
        redis_key: &str,
        loaded: Result<Option<C::Value>, E>,
        fallback: Option<Fallback<C::Value>>,
        lease: Option<Lease>,
    ) -> Result<Option<C::Value>, E> {
        let plan = self.plan(redis_key, &loaded, fallback.as_ref().map(|f| &f.bytes[..]));
        self.apply(redis_key, plan, lease).await;
        match (loaded, fallback) {
            (Err(_), Some(fallback)) => Ok(Some(fallback.value)),
            (loaded, _) => loaded,
        }
    }

    /// What storing a load's outcome takes, decided (and the value encoded) before any
    /// await, so a load on a task of its own carries no loader error across one.
    fn plan<E>(
        &self,
        redis_key: &str,
        loaded: &Result<Option<C::Value>, E>,
        stale: Option<&[u8]>,
    ) -> Plan {
        match loaded {
            Ok(Some(value)) => self.plan_value(redis_key, value),
            Ok(None) if Self::REMEMBERS_ABSENCE => Plan::Absent,
            Ok(None) if stale.is_some() => Plan::DropStale,
            Ok(None) => Plan::Nothing,
            Err(_) => match stale {
                Some(stale) => Plan::Throttle(stale.to_vec()),
                None => Plan::Nothing,
            },
        }
    }

    /// Storing a loaded value: its bytes, or nothing (logged) when it does not encode
    /// or is over the size limit (logged once per key per minute: it will be loaded
    /// again, and again refused).
    fn plan_value(&self, redis_key: &str, value: &C::Value) -> Plan {
        match self.encode(value) {
            Ok(bytes) => Plan::Store(bytes),
            Err(error @ crate::CacheError::Validation { .. }) => {
                if self.oversized.now(redis_key) {
                    tracing::warn!(
                        namespace = C::NAMESPACE,
                        key = redis_key,
                        error = %error,
                        "a loaded value is too large to cache; it is returned uncached (logged once a minute per key)"
                    );
                }
                Plan::Nothing
            }
            Err(error) => {
                tracing::error!(
                    namespace = C::NAMESPACE,
                    key = redis_key,
                    error = %error,
                    "a loaded value could not be cached; it is returned uncached"
                );
                Plan::Nothing
            }
        }
    }

    /// Carries out a [`Plan`] for `redis_key`, then releases the load's lease.
    async fn apply(&self, redis_key: &str, plan: Plan, lease: Option<Lease>) {
        match plan {
            Plan::Store(bytes) => {
                observed(C::NAMESPACE, Op::Set, || {
                    self.store(redis_key, &bytes, Self::expiry(C::TTL, true))
                })
                .await;
            }
            Plan::Absent => {
                let marker = encode_absent(C::FINGERPRINT);
                self.store(redis_key, &marker, C::NEGATIVE_TTL).await;
            }
            Plan::DropStale => {
                let backend = self.shared.backend();
                let _ = self
                    .forgetting([redis_key], || backend.del(redis_key, self.announce()))
                    .await;
            }
            Plan::Throttle(stale) => self.throttle(redis_key, &stale).await,
            Plan::Nothing => {}
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
    }

    /// Whether a loader's `Ok(None)` is remembered: `negative_ttl`, on a framed codec
    /// (the derive allows nothing else).
    const REMEMBERS_ABSENCE: bool =
        !C::NEGATIVE_TTL.is_zero() && <C::Codec as Codec<C::Value>>::FRAMED;

    /// The loader failed and the fallback answers: it reads as fresh for the fail-safe
    /// throttle, so the failing database is not asked again on every call; unless
    /// another writer replaced it meanwhile.
    async fn throttle(&self, redis_key: &str, stale: &[u8]) {
        let throttle = self.shared.config().fail_safe_throttle;
        let backend = self.shared.backend();
        let extended = backend
            .expire_if_eq(redis_key, stale, C::FAIL_SAFE + throttle)
            .await;
        tracing::warn!(
            namespace = C::NAMESPACE,
            key = redis_key,
            throttle_ms = throttle.as_millis() as u64,
            extended = extended.unwrap_or(false),
            "the loader failed; answering with the stale entry (fail_safe)"
        );
    }

    fn background_timed_out(&self, redis_key: &str, limit: Duration) {
        tracing::warn!(
            namespace = C::NAMESPACE,
            key = redis_key,
            limit_ms = limit.as_millis() as u64,
            "a background load took longer than the background timeout and was dropped"
        );
    }

    /// Reloads a fresh entry near the end of its TTL on a task of its own, unless a load
    /// of the key already runs there.
    fn refresh_in_background<F, Fut, E>(&self, key: &C::Key, load: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<C::Value>, E>>,
        C::Loads: Runs<Fut>,
    {
        let Some(claim) = self.claim_background(key) else {
            return;
        };
        // Only a cache declared with `refresh_ahead` gets here, and its loads are movable.
        let Started::Movable(loading) = C::Loads::start(load()) else {
            return;
        };
        let cache = self.share();
        let redis_key = self.redis_key(key);
        let key = key.clone();
        let limit = self.shared.config().background_timeout;
        tokio::spawn(async move {
            let _claim = claim;
            let Ok(carried) = tokio::time::timeout(limit, loading).await else {
                cache.background_timed_out(&redis_key, limit);
                return;
            };
            let plan = {
                let loaded = C::Loads::unpack(carried);
                if loaded.is_err() {
                    cache.flights().refresh_failed(&key);
                    tracing::debug!(
                        namespace = C::NAMESPACE,
                        key = redis_key,
                        "a refresh ahead failed; the entry stays until its TTL, and is not refreshed again within the fail-safe throttle"
                    );
                }
                cache.plan(&redis_key, &loaded, None)
            };
            cache.apply(&redis_key, plan, None).await;
        });
    }

    /// Asks for the lease of `redis_key`'s load. When another instance holds it, waits
    /// (woken by the message announcing the load's end, looking at the cache now and
    /// then in case that message was lost) for its value, at most the single-flight
    /// wait, and with a fallback and a soft timeout at most that.
    async fn take_lease(
        &self,
        key: &C::Key,
        redis_key: &str,
        fallback: Option<&Fallback<C::Value>>,
    ) -> Leased<C::Value>
    where
        C::Value: Clone,
    {
        let wait = self.shared.config().single_flight_wait;
        let started = Instant::now();
        let give_up = started + wait;
        let answer_by = fallback.and(C::LOAD_TIMEOUT).map(|t| started + t);
        let lease_key = cache_keyspace::aux_key("lease", redis_key);
        let token = format!("{:016x}", fastrand::u64(..)).into_bytes();
        loop {
            let mut watch = self.shared.locals.loads.watch(redis_key);
            let backend = self.shared.backend();
            match backend.set_nx(&lease_key, &token, wait).await {
                Ok(true) => {
                    return Leased::Ours(Lease {
                        shared: Arc::clone(&self.shared),
                        key: lease_key,
                        redis_key: redis_key.to_owned(),
                        token,
                        released: false,
                    });
                }
                Ok(false) => {}
                Err(_) => return Leased::Nobody,
            }
            let until = answer_by.map_or(give_up, |by| by.min(give_up));
            let next_look = (Instant::now() + recheck_every(wait)).min(until);
            let _ = tokio::time::timeout_at(next_look, watch.ended()).await;
            match self.lookup(key).await {
                Lookup::Fresh { value, .. } => return Leased::Theirs(Some(value)),
                Lookup::Absent => return Leased::Theirs(None),
                _ if Instant::now() < until => {}
                _ => {
                    return match (fallback, answer_by) {
                        (Some(fallback), Some(by)) if Instant::now() >= by => {
                            Leased::Theirs(Some(fallback.value.clone()))
                        }
                        _ => Leased::Nobody,
                    };
                }
            }
        }
    }

    /// Reads many keys, loading every miss with one call to `load`.
    ///
    /// Reads go out in `mget`s of at most [`MAX_BATCH`] keys; the misses (distinct keys)
    /// are passed to `load` once, and what it returns is stored with `mset`s of at most
    /// [`MAX_BATCH`] entries. The map holds the keys that were found, in the cache or by
    /// the loader. A loader error is returned and nothing it produced is cached. There
    /// is no single flight across batch calls.
    ///
    /// # Errors
    ///
    /// The loader's error `E`; nothing it produced is cached then. No `CacheError` comes
    /// back: the keys are read and stored in chunks within [`MAX_BATCH`], whatever their
    /// number, backend failures read as misses, and loaded values that cannot be stored are
    /// logged and returned.
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
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// use std::collections::HashMap;
    ///
    /// /// The database: users 1 and 2 exist.
    /// async fn names_from_database(ids: Vec<i64>) -> Result<HashMap<i64, String>, std::io::Error> {
    ///     Ok(ids.into_iter().filter(|id| *id <= 2).map(|id| (id, format!("user {id}"))).collect())
    /// }
    ///
    /// let names = manager.names();
    /// names.set(&1, &"Ada".to_owned()).await?;
    /// // 1 is cached; 2 and 3 are passed to one call of the loader, which finds 2.
    /// let found = names.mget_or_load(&[1, 2, 3], names_from_database).await?;
    /// assert_eq!(found.len(), 2);
    /// assert_eq!(found[&1], "Ada");
    /// assert_eq!(names.get(&2).await.as_deref(), Some("user 2")); // cached by the load
    /// # Ok(())
    /// # }
    /// ```
    pub async fn mget_or_load<F, Fut, E>(
        &self,
        keys: &[C::Key],
        load: F,
    ) -> Result<HashMap<C::Key, C::Value>, E>
    where
        F: FnOnce(Vec<C::Key>) -> Fut,
        Fut: Future<Output = Result<HashMap<C::Key, C::Value>, E>>,
        C::Loads: Runs<Fut>,
    {
        if keys.is_empty() {
            // Nothing to read, but a call all the same: a loop of them must yield too.
            tokio::task::consume_budget().await;
            return Ok(HashMap::new());
        }
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        let mut refresh = Vec::new();
        let mut stale_values: HashMap<C::Key, C::Value> = HashMap::new();
        let mut stale_bytes: HashMap<C::Key, Vec<u8>> = HashMap::new();
        let mut seen = HashSet::with_hasher(super::FastHash::default());
        for chunk in keys.chunks(MAX_BATCH) {
            let distinct: Vec<&C::Key> = chunk.iter().filter(|k| seen.insert(*k)).collect();
            if distinct.is_empty() {
                continue;
            }
            let lookups = observed(C::NAMESPACE, Op::Mget, || self.lookup_many(&distinct)).await;
            for (key, lookup) in distinct.into_iter().zip(lookups) {
                match lookup {
                    Lookup::Fresh { value, fresh_for } => {
                        if Self::wants_refresh(fresh_for) {
                            refresh.push(key.clone());
                        }
                        found.insert(key.clone(), value);
                    }
                    Lookup::Absent => {}
                    Lookup::Stale { value, bytes } => {
                        stale_values.insert(key.clone(), value);
                        stale_bytes.insert(key.clone(), bytes);
                        missing.push(key.clone());
                    }
                    Lookup::Miss | Lookup::Down => missing.push(key.clone()),
                }
            }
        }
        let mut leases = Vec::new();
        if C::SINGLE_FLIGHT == SingleFlight::Global && !missing.is_empty() {
            let settled;
            (missing, leases, settled) = self.take_leases(missing).await;
            // Keys another instance loaded meanwhile, or found absent: their fallbacks
            // are older than what it stored, and are no answer (nor extended by the
            // throttle of a failed load).
            for (key, value) in settled {
                stale_values.remove(&key);
                stale_bytes.remove(&key);
                if let Some(value) = value {
                    found.insert(key, value);
                }
            }
        }
        // Refreshes already run in the background for some keys: not twice.
        refresh.retain(|k| !self.flights().in_background(k) && !self.refresh_backing_off(k));
        if missing.is_empty() && refresh.is_empty() {
            return Ok(found);
        }
        // A refresh ahead rides along with the misses: one loader call.
        let wanted: Vec<C::Key> = missing.iter().chain(&refresh).cloned().collect();
        let fallback_for_all = missing.iter().all(|k| stale_values.contains_key(k));
        let config = self.shared.config();
        match C::Loads::start(load(wanted.clone())) {
            Started::Movable(loading)
                if missing.is_empty() || (C::LOAD_TIMEOUT.is_some() && fallback_for_all) =>
            {
                // A load that may outlive this call: refreshes only, or misses that all
                // have a fallback to answer with after the soft timeout.
                let claims: Vec<_> = wanted
                    .iter()
                    .filter_map(|k| self.claim_background(k))
                    .collect();
                let cache = self.share();
                let limit = config.background_timeout;
                let refresh_only = missing.is_empty();
                let mut task = tokio::spawn(async move {
                    let _claims = claims;
                    let Ok(carried) = tokio::time::timeout(limit, loading).await else {
                        cache.background_timed_out("(a batch load)", limit);
                        return None;
                    };
                    let (plan, answer) = {
                        let loaded = C::Loads::unpack(carried);
                        if refresh_only && loaded.is_err() {
                            wanted
                                .iter()
                                .for_each(|k| cache.flights().refresh_failed(k));
                        }
                        let plan = cache.plan_many(&wanted, &loaded, &stale_bytes);
                        (plan, C::Loads::pack(loaded))
                    };
                    cache.apply_many(plan, leases).await;
                    Some(answer)
                });
                if missing.is_empty() {
                    return Ok(found);
                }
                let soft_timeout = C::LOAD_TIMEOUT.unwrap_or(limit);
                match tokio::time::timeout(soft_timeout, &mut task).await {
                    Ok(Ok(Some(carried))) => {
                        if let Ok(loaded) = C::Loads::unpack(carried) {
                            found.extend(loaded);
                            return Ok(found);
                        }
                    }
                    Ok(Err(failed)) => std::panic::resume_unwind(failed.into_panic()),
                    // The soft timeout, or a load that timed out: the fallbacks answer.
                    Ok(Ok(None)) | Err(_) => {}
                }
                found.extend(stale_values);
                Ok(found)
            }
            Started::Movable(loading) => {
                let loaded = C::Loads::unpack(loading.await);
                let plan = self.plan_many(&wanted, &loaded, &stale_bytes);
                self.apply_many(plan, leases).await;
                self.answer_many(found, loaded, &missing, stale_values)
            }
            Started::Here(loading) => {
                let loaded = loading.await;
                let plan = self.plan_many(&wanted, &loaded, &stale_bytes);
                self.apply_many(plan, leases).await;
                self.answer_many(found, loaded, &missing, stale_values)
            }
        }
    }

    /// The answer of a batch load: what was found and what the loader returned; or,
    /// when it failed, the fallbacks if every miss has one, else its error.
    fn answer_many<E>(
        &self,
        mut found: HashMap<C::Key, C::Value>,
        loaded: Result<HashMap<C::Key, C::Value>, E>,
        missing: &[C::Key],
        stale_values: HashMap<C::Key, C::Value>,
    ) -> Result<HashMap<C::Key, C::Value>, E> {
        match loaded {
            Ok(loaded) => found.extend(loaded),
            Err(error) => {
                if !missing.iter().all(|k| stale_values.contains_key(k)) {
                    return Err(error);
                }
                found.extend(stale_values);
            }
        }
        Ok(found)
    }

    /// What storing a batch load's outcome takes (values encoded now, before any await):
    /// what it found; for the keys it was asked for and did not return, remembered
    /// absences (`negative_ttl`) or dropped fallbacks; when it failed, the fallbacks
    /// extended by the fail-safe throttle.
    fn plan_many<E>(
        &self,
        wanted: &[C::Key],
        loaded: &Result<HashMap<C::Key, C::Value>, E>,
        stale: &HashMap<C::Key, Vec<u8>>,
    ) -> Vec<(String, Plan)> {
        match loaded {
            Ok(loaded) => {
                let mut plans: Vec<(String, Plan)> = loaded
                    .iter()
                    .map(|(key, value)| {
                        let redis_key = self.redis_key(key);
                        let plan = self.plan_value(&redis_key, value);
                        (redis_key, plan)
                    })
                    .collect();
                for key in wanted.iter().filter(|k| !loaded.contains_key(k)) {
                    let redis_key = self.redis_key(key);
                    let plan = self.plan(
                        &redis_key,
                        &Ok::<Option<C::Value>, ()>(None),
                        stale.get(key).map(Vec::as_slice),
                    );
                    plans.push((redis_key, plan));
                }
                plans
            }
            Err(_) => stale
                .iter()
                .map(|(key, bytes)| (self.redis_key(key), Plan::Throttle(bytes.clone())))
                .collect(),
        }
    }

    /// Carries out the plans of a batch load, in few round trips: values and remembered
    /// absences in `mset`s of at most [`MAX_BATCH`] entries, dropped fallbacks in one
    /// delete, throttled fallbacks concurrently; then releases the loads' leases.
    async fn apply_many(&self, plans: Vec<(String, Plan)>, leases: Vec<Lease>) {
        let mut writes = Vec::new();
        let mut dropped = Vec::new();
        let mut throttled = Vec::new();
        for (redis_key, plan) in plans {
            match plan {
                Plan::Store(bytes) => writes.push(Write {
                    key: redis_key,
                    bytes,
                    ttl: Self::expiry(C::TTL, true),
                }),
                Plan::Absent => writes.push(Write {
                    key: redis_key,
                    bytes: encode_absent(C::FINGERPRINT),
                    ttl: C::NEGATIVE_TTL,
                }),
                Plan::DropStale => dropped.push(redis_key),
                Plan::Throttle(bytes) => throttled.push((redis_key, bytes)),
                Plan::Nothing => {}
            }
        }
        for chunk in writes.chunks(MAX_BATCH) {
            observed(C::NAMESPACE, Op::Mset, || self.store_many(chunk)).await;
        }
        if !dropped.is_empty() {
            let backend = self.shared.backend();
            let _ = self
                .forgetting(dropped.iter().map(String::as_str), || {
                    backend.del_many(&dropped, self.announce())
                })
                .await;
        }
        futures_util::future::join_all(
            throttled
                .iter()
                .map(|(redis_key, bytes)| self.throttle(redis_key, bytes)),
        )
        .await;
        futures_util::future::join_all(leases.into_iter().map(Lease::release)).await;
    }

    /// Leases for the loads of many keys: the keys this instance loads, with their
    /// leases, and what other instances settled meanwhile (a value, or `None` for an
    /// absence they remembered).
    ///
    /// All or nothing, in the keys' order: a caller that meets a key another instance
    /// is loading gives back the leases it took, waits for that load to end, reads what
    /// it brought, and tries again for the keys still missing. So no caller waits while
    /// holding a lease another waits on (two batches sharing keys cannot wait on each
    /// other), and the loader runs once per call. Past the single-flight wait, the keys
    /// still missing are loaded here without leases.
    async fn take_leases(
        &self,
        mut keys: Vec<C::Key>,
    ) -> (Vec<C::Key>, Vec<Lease>, HashMap<C::Key, Option<C::Value>>) {
        let wait = self.shared.config().single_flight_wait;
        let give_up = Instant::now() + wait;
        let token = format!("{:016x}", fastrand::u64(..)).into_bytes();
        let mut settled = HashMap::new();
        keys.sort_by_cached_key(|k| self.redis_key(k));
        loop {
            let backend = self.shared.backend();
            let mut leases = Vec::with_capacity(keys.len());
            let mut contended = None;
            for key in &keys {
                let redis_key = self.redis_key(key);
                let lease_key = cache_keyspace::aux_key("lease", &redis_key);
                let watch = self.shared.locals.loads.watch(&redis_key);
                match backend.set_nx(&lease_key, &token, wait).await {
                    Ok(true) => leases.push(Lease {
                        shared: Arc::clone(&self.shared),
                        key: lease_key,
                        redis_key,
                        token: token.clone(),
                        released: false,
                    }),
                    Ok(false) => {
                        contended = Some(watch);
                        break;
                    }
                    // Leases cannot be asked for: load without them.
                    Err(_) => return (keys, Vec::new(), settled),
                }
            }
            let Some(mut watch) = contended else {
                return (keys, leases, settled);
            };
            futures_util::future::join_all(leases.into_iter().map(Lease::release)).await;
            let next_look = (Instant::now() + recheck_every(wait)).min(give_up);
            let _ = tokio::time::timeout_at(next_look, watch.ended()).await;
            let pending: Vec<&C::Key> = keys.iter().collect();
            let mut lookups = Vec::with_capacity(keys.len());
            for chunk in pending.chunks(MAX_BATCH) {
                lookups.extend(self.lookup_many(chunk).await);
            }
            let mut still = Vec::with_capacity(keys.len());
            for (key, lookup) in keys.iter().zip(lookups) {
                match lookup {
                    Lookup::Fresh { value, .. } => {
                        settled.insert(key.clone(), Some(value));
                    }
                    Lookup::Absent => {
                        settled.insert(key.clone(), None);
                    }
                    _ => still.push(key.clone()),
                }
            }
            keys = still;
            if keys.is_empty() || Instant::now() >= give_up {
                return (keys, Vec::new(), settled);
            }
        }
    }

    /// The former name of [`mget_or_load`](Self::mget_or_load).
    ///
    /// # Errors
    ///
    /// As [`mget_or_load`](Self::mget_or_load).
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
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = CacheManager::new();
    /// # manager.connect("memory://").await?;
    /// use std::collections::HashMap;
    ///
    /// let names = manager.names();
    /// #[allow(deprecated)] // now: names.mget_or_load(...)
    /// let found = names
    ///     .get_many_or_load(&[1], |ids| async move {
    ///         Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, "Ada".to_owned())).collect::<HashMap<_, _>>())
    ///     })
    ///     .await?;
    /// assert_eq!(found[&1], "Ada");
    /// # Ok(())
    /// # }
    /// ```
    #[deprecated(
        since = "0.1.0",
        note = "renamed `mget_or_load`, like `mget` and `mset`"
    )]
    pub async fn get_many_or_load<F, Fut, E>(
        &self,
        keys: &[C::Key],
        load: F,
    ) -> Result<HashMap<C::Key, C::Value>, E>
    where
        F: FnOnce(Vec<C::Key>) -> Fut,
        Fut: Future<Output = Result<HashMap<C::Key, C::Value>, E>>,
        C::Loads: Runs<Fut>,
    {
        self.mget_or_load(keys, load).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::cache::{Cache, MAX_BATCH};
    use crate::codec;
    use crate::handle::TypedCache;
    use crate::manager::ManagerCore;
    use crate::registry::CacheInfo;

    enum Names {}
    impl crate::__private::Declared for Names {}
    impl Cache for Names {
        type Key = u32;
        type Value = String;
        type Codec = codec::Bincode;
        type Local = crate::local::NoLocal;
        type Loads = crate::loads::Inline;
        const NAMESPACE: &'static str = "names";
        const TTL: Duration = Duration::from_secs(60);
        const VERSION: u32 = 0;
        const FINGERPRINT: u32 = 1;
    }

    static CACHES: &[CacheInfo] = &[];

    async fn memory() -> Arc<ManagerCore> {
        let core = ManagerCore::new(CACHES);
        core.connect("memory://").await.unwrap();
        Arc::new(core)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_run_the_loader_once() {
        let core = memory().await;
        let cache = Arc::new(core.cache::<Names>("names"));
        let loads = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (cache, loads, barrier) = (cache.clone(), loads.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache
                        .get_or_load(&7, || async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, std::convert::Infallible>(Some("seven".to_owned()))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), Some("seven".to_owned()));
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "the loader ran more than once"
        );
        assert_eq!(
            cache.get(&7).await,
            Some("seven".to_owned()),
            "the loaded value is cached"
        );
        assert_eq!(
            cache.flights().single.in_progress(),
            0,
            "the flight was not removed"
        );
    }

    #[tokio::test]
    async fn a_loader_error_is_returned_and_nothing_is_cached() {
        let core = memory().await;
        let cache = core.cache::<Names>("names");
        let err = cache
            .get_or_load(&1, || async { Err::<Option<String>, _>("database down") })
            .await;
        assert_eq!(err, Err("database down"));
        assert_eq!(cache.get(&1).await, None);
        let found = cache.get_or_load(&1, || async { Ok::<_, ()>(None) }).await;
        assert_eq!(found, Ok(None));
        assert_eq!(
            cache.get(&1).await,
            None,
            "a key the loader did not find is not cached"
        );
    }

    /// Waits until `n` callers wait for the load of `key` in progress: joining a
    /// flight is observable, so a test knows the follower joined before the leader ends.
    async fn until_waiting(cache: &TypedCache<Names>, key: u32, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.flights().single.waiters(&key) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} callers never joined the load of {key} (waiting: {})",
                cache.flights().single.waiters(&key)
            );
            tokio::task::yield_now().await;
        }
    }

    /// Once a leader loads `key`, starts a follower whose own loader would give `value`;
    /// the follower's task, and how many times its loader ran.
    async fn follow_a_leader<E: Send + 'static>(
        cache: &Arc<TypedCache<Names>>,
        key: u32,
        value: &'static str,
    ) -> (
        tokio::task::JoinHandle<Result<Option<String>, E>>,
        Arc<AtomicUsize>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.flights().single.in_progress() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the leader never started"
            );
            tokio::task::yield_now().await;
        }
        let loads = Arc::new(AtomicUsize::new(0));
        let follower = {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, E>(Some(value.to_owned()))
                    })
                    .await
            })
        };
        (follower, loads)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_on_a_failed_load_run_their_own() {
        let core = memory().await;
        let cache = Arc::new(core.cache::<Names>("names"));
        let release = Arc::new(tokio::sync::Notify::new());
        let leader = {
            let (cache, release) = (cache.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&3, || async move {
                        release.notified().await;
                        Err::<Option<String>, _>("leader failed")
                    })
                    .await
            })
        };
        let (follower, follower_loads) = follow_a_leader::<&str>(&cache, 3, "three").await;
        // The follower waits on the leader's load rather than running its own...
        until_waiting(&cache, 3, 1).await;
        assert_eq!(follower_loads.load(Ordering::SeqCst), 0);
        // ...and runs its own once the leader failed, getting its own result.
        release.notify_one();
        assert_eq!(leader.await.unwrap(), Err("leader failed"));
        assert_eq!(follower.await.unwrap(), Ok(Some("three".to_owned())));
        assert_eq!(follower_loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&3).await, Some("three".to_owned()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_leader_does_not_strand_its_waiters() {
        let core = memory().await;
        let cache = Arc::new(core.cache::<Names>("names"));
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(&4, std::future::pending::<Result<Option<String>, ()>>)
                    .await
            })
        };
        let (follower, follower_loads) = follow_a_leader::<()>(&cache, 4, "four").await;
        until_waiting(&cache, 4, 1).await;
        assert_eq!(
            follower_loads.load(Ordering::SeqCst),
            0,
            "the follower loaded before the leader was cancelled"
        );
        leader.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the waiter was stranded");
        assert_eq!(got.unwrap(), Ok(Some("four".to_owned())));
        assert_eq!(
            follower_loads.load(Ordering::SeqCst),
            1,
            "the follower took over"
        );
        assert_eq!(cache.flights().single.in_progress(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn followers_of_a_failed_load_run_their_own_side_by_side() {
        let core = memory().await;
        let cache = Arc::new(core.cache::<Names>("names"));
        let release = Arc::new(tokio::sync::Notify::new());
        let leader = {
            let (cache, release) = (cache.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&8, || async move {
                        release.notified().await;
                        Err::<Option<String>, _>("leader failed")
                    })
                    .await
            })
        };
        while cache.flights().single.in_progress() == 0 {
            tokio::task::yield_now().await;
        }
        let loads = Arc::new(AtomicUsize::new(0));
        let followers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(&8, || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Err::<Option<String>, _>("still failing")
                        })
                        .await
                })
            })
            .collect();
        until_waiting(&cache, 8, 8).await;
        let started = tokio::time::Instant::now();
        release.notify_one();
        assert_eq!(leader.await.unwrap(), Err("leader failed"));
        for follower in followers {
            assert_eq!(follower.await.unwrap(), Err("still failing"));
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            8,
            "each follower ran its own load"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "side by side, not one after another"
        );
    }

    #[tokio::test]
    async fn loading_works_without_a_backend() {
        let core = ManagerCore::new(CACHES); // never connected
        let cache = core.cache::<Names>("names");
        let loads = AtomicUsize::new(0);
        for _ in 0..2 {
            let got = cache
                .get_or_load(&5, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Some("five".to_owned()))
                })
                .await;
            assert_eq!(got, Ok(Some("five".to_owned())));
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "with no cache, every call loads"
        );
    }

    #[tokio::test]
    async fn the_batch_form_loads_every_miss_with_one_call() {
        let core = memory().await;
        let cache = core.cache::<Names>("names");
        let warm: HashMap<u32, String> = (0..50).map(|k| (k, format!("n{k}"))).collect();
        cache.mset(&warm).await.unwrap();
        let keys: Vec<u32> = (0..250).chain(0..10).collect(); // duplicates on purpose
        let calls = AtomicUsize::new(0);
        let got = cache
            .mget_or_load(&keys, |missing| {
                calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(missing.len(), 200, "each missing key once");
                assert!(missing.iter().all(|k| *k >= 50));
                // The database knows only even keys.
                let found = missing
                    .into_iter()
                    .filter(|k| k % 2 == 0)
                    .map(|k| (k, format!("n{k}")))
                    .collect();
                async move { Ok::<_, ()>(found) }
            })
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(got.len(), 50 + 100);
        assert_eq!(got[&200], "n200");
        assert!(!got.contains_key(&201));
        // Loaded values were stored in chunks within the batch limit.
        let again = cache.mget(&(150..250).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(again.values().filter(|v| v.is_some()).count(), 50);
        const { assert!(MAX_BATCH < 200, "the test must exceed one batch") };
    }

    #[tokio::test]
    async fn the_batch_form_returns_a_loader_error_and_caches_nothing() {
        let core = memory().await;
        let cache = core.cache::<Names>("names");
        let got = cache
            .mget_or_load(&[1, 2], |_| async {
                Err::<HashMap<u32, String>, _>("boom")
            })
            .await;
        assert_eq!(got, Err("boom"));
        assert_eq!(
            cache.mget(&[1, 2]).await.unwrap(),
            HashMap::from([(1, None), (2, None)])
        );
    }
}

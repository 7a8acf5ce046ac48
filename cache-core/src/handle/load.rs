//! Read-through: `get_or_load` with per-key single flight, and its batch form.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use super::TypedCache;
use crate::cache::{Cache, MAX_BATCH};

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
    /// # Errors
    ///
    /// The loader's error `E`, returned to the caller whose `load` failed; nothing is
    /// cached then. No `CacheError` comes back: backend failures read as misses, and a
    /// loaded value that cannot be stored is logged and returned.
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
    {
        if let Some(value) = self.get(key).await {
            return Ok(Some(value));
        }
        self.flights
            .run(key, || async {
                let loaded = load().await?;
                if let Some(value) = &loaded {
                    self.store_loaded(key, value).await;
                }
                Ok(loaded)
            })
            .await
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
    {
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        for chunk in keys.chunks(MAX_BATCH) {
            // A chunk is within the batch limit, so mget cannot reject it; were it to,
            // its keys would simply be loaded.
            let values = match self.mget(chunk).await {
                Ok(values) => values,
                Err(_) => chunk.iter().map(|k| (k.clone(), None)).collect(),
            };
            for (key, value) in values {
                match value {
                    Some(value) => {
                        found.insert(key, value);
                    }
                    None => {
                        if seen.insert(key.clone()) {
                            missing.push(key);
                        }
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = load(missing).await?;
        let entries: Vec<(&C::Key, &C::Value)> = loaded.iter().collect();
        for chunk in entries.chunks(MAX_BATCH) {
            if let Err(error) = self.mset(chunk.iter().copied()).await {
                tracing::error!(
                    namespace = C::NAMESPACE,
                    error = %error,
                    "loaded values could not be cached; they are returned uncached"
                );
            }
        }
        found.extend(loaded);
        Ok(found)
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
        since = "0.2.0",
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
    {
        self.mget_or_load(keys, load).await
    }

    async fn store_loaded(&self, key: &C::Key, value: &C::Value) {
        if let Err(error) = self.set(key, value).await {
            tracing::error!(
                namespace = C::NAMESPACE,
                error = %error,
                "a loaded value could not be cached; it is returned uncached"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::cache::{Cache, CacheInfo, MAX_BATCH};
    use crate::codec;
    use crate::handle::TypedCache;
    use crate::manager::ManagerCore;

    enum Names {}
    impl crate::__private::Declared for Names {}
    impl Cache for Names {
        type Key = u32;
        type Value = String;
        type Codec = codec::Bincode;
        type Local = crate::local::NoLocal;
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
        assert_eq!(cache.flights.in_progress(), 0, "the flight was not removed");
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
        while cache.flights.waiters(&key) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} callers never joined the load of {key} (waiting: {})",
                cache.flights.waiters(&key)
            );
            tokio::task::yield_now().await;
        }
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.flights.in_progress() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the leader never started"
            );
            tokio::task::yield_now().await;
        }
        let follower_loads = Arc::new(AtomicUsize::new(0));
        let follower = {
            let (cache, loads) = (cache.clone(), follower_loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&3, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, &str>(Some("three".to_owned()))
                    })
                    .await
            })
        };
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.flights.in_progress() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the leader never started"
            );
            tokio::task::yield_now().await;
        }
        let follower_loads = Arc::new(AtomicUsize::new(0));
        let follower = {
            let (cache, loads) = (cache.clone(), follower_loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&4, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, ()>(Some("four".to_owned()))
                    })
                    .await
            })
        };
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
        assert_eq!(cache.flights.in_progress(), 0);
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

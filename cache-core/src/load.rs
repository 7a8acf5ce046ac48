//! Read-through: `get_or_load` with per-key single flight, and its batch form.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::cache::{Cache, MAX_BATCH};
use crate::handle::TypedCache;

/// A load in progress for one key: `None` while loading, `Some(result)` once done. A
/// leader that fails or is cancelled drops its sender, and its followers try again.
pub(crate) type Flight<V> = watch::Receiver<Option<Option<V>>>;

/// The loads in progress of one cache, by key.
pub(crate) type Flights<K, V> = Mutex<HashMap<K, Flight<V>>>;

enum Role<V> {
    Lead(watch::Sender<Option<Option<V>>>, Flight<V>),
    Follow(Flight<V>),
}

/// Removes the leader's flight when it finishes, fails or is cancelled.
struct Landing<'a, K: std::hash::Hash + Eq, V> {
    flights: &'a Flights<K, V>,
    key: &'a K,
    flight: Flight<V>,
}

impl<K: std::hash::Hash + Eq, V> Drop for Landing<'_, K, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(self.key).is_some_and(|f| f.same_channel(&self.flight)) {
            flights.remove(self.key);
        }
    }
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
    /// ```
    /// # use cache_manager::{cache_registry, Cache};
    /// # #[derive(Cache)]
    /// # #[cache(namespace = "user:uuid_to_id", key = uuid::Uuid, value = i64)]
    /// # struct UserUuidToIdCache;
    /// # cache_registry! { struct Caches { uuid_to_id: UserUuidToIdCache } }
    /// # async fn from_database(_: uuid::Uuid) -> Result<Option<i64>, std::io::Error> { Ok(Some(7)) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), std::io::Error> {
    /// # let caches = Caches::new();
    /// # caches.connect("memory://").await.unwrap();
    /// let uuid = uuid::Uuid::new_v4();
    /// let id = caches.uuid_to_id().get_or_load(&uuid, || from_database(uuid)).await?;
    /// assert_eq!(id, Some(7));
    /// assert_eq!(caches.uuid_to_id().get(&uuid).await, Some(7));
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
        let mut load = Some(load);
        loop {
            let role = {
                let mut flights = self.flights().lock().unwrap_or_else(|p| p.into_inner());
                match flights.get(key) {
                    // A closed channel is a leader that already failed: take over.
                    Some(flight) if flight.has_changed().is_ok() => Role::Follow(flight.clone()),
                    _ => {
                        let (sender, flight) = watch::channel(None);
                        flights.insert(key.clone(), flight.clone());
                        Role::Lead(sender, flight)
                    }
                }
            };
            match role {
                Role::Follow(mut flight) => {
                    if let Ok(done) = flight.wait_for(Option::is_some).await {
                        return Ok(done.clone().flatten());
                    }
                    // The leader failed or was cancelled: try again, perhaps as leader.
                }
                Role::Lead(sender, flight) => {
                    let _landing = Landing {
                        flights: self.flights(),
                        key,
                        flight,
                    };
                    let load = load.take().expect("a caller leads at most once: leading returns");
                    let loaded = load().await?;
                    if let Some(value) = &loaded {
                        self.store_loaded(key, value).await;
                    }
                    sender.send_replace(Some(loaded.clone()));
                    return Ok(loaded);
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
    pub async fn get_many_or_load<F, Fut, E>(&self, keys: &[C::Key], load: F) -> Result<HashMap<C::Key, C::Value>, E>
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

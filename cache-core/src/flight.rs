//! Single flight: concurrent loads of one key run once, the other callers wait for the
//! result (as moka's `ValueInitializer` does for its own `get_with`).
//!
//! The first caller of a key leads: it runs the load. Callers that come while it runs
//! follow: they wait for its result. When the leader's load fails, its followers run
//! their own loads, at once and side by side (an error need not be `Clone`, and none
//! queues behind the others' failures). When the leader is cancelled (its future
//! dropped) its followers try again, one of them leading: a cancelled caller never
//! strands the others.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// How a leader's load ended.
#[derive(Clone)]
enum Outcome<V> {
    /// What it found, shared with its followers.
    Loaded(Option<V>),
    /// It failed: each follower loads for itself.
    Failed,
}

/// One load in progress: `None` while loading, `Some(outcome)` once done.
struct Flight<V> {
    done: watch::Receiver<Option<Outcome<V>>>,
    /// Callers waiting for this load, not counting its leader.
    waiters: Arc<AtomicUsize>,
}

impl<V> Clone for Flight<V> {
    fn clone(&self) -> Self {
        Flight {
            done: self.done.clone(),
            waiters: Arc::clone(&self.waiters),
        }
    }
}

/// The loads in progress of one cache: those callers wait for, and those running in
/// the background (after a soft timeout, or a refresh ahead), at most one per key; and
/// the keys whose last refresh ahead failed, and when.
pub(crate) struct Flights<K, V> {
    pub(crate) single: SingleFlight<K, V>,
    background: Mutex<HashSet<K>>,
    refresh_failed: Mutex<HashMap<K, tokio::time::Instant>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            single: SingleFlight::default(),
            background: Mutex::new(HashSet::new()),
            refresh_failed: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Flights<K, V> {
    /// Claims `key` for a load in the background; `None` while one already runs, so a
    /// key never has two.
    pub(crate) fn claim_background(self: &Arc<Self>, key: &K) -> Option<BackgroundClaim<K, V>> {
        let mut running = self.background.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(key.clone()).then(|| BackgroundClaim {
            flights: Arc::clone(self),
            key: key.clone(),
        })
    }

    /// Records that a refresh ahead of `key` failed: no other starts for a while, so a
    /// failing database is not asked on every hit of a key near the end of its TTL.
    pub(crate) fn refresh_failed(&self, key: &K) {
        /// Failed refreshes remembered at most; past it, the oldest are forgotten.
        const KEYS: usize = 4096;
        let now = tokio::time::Instant::now();
        let mut failed = self
            .refresh_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failed.len() >= KEYS
            && let Some(oldest) = failed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            failed.remove(&oldest);
        }
        failed.insert(key.clone(), now);
    }

    /// Whether a refresh ahead of `key` failed within `window`.
    pub(crate) fn refresh_failed_within(&self, key: &K, window: std::time::Duration) -> bool {
        let mut failed = self
            .refresh_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failed.get(key) {
            Some(at) if at.elapsed() < window => true,
            Some(_) => {
                failed.remove(key);
                false
            }
            None => false,
        }
    }

    /// Whether a load of `key` runs in the background.
    pub(crate) fn in_background(&self, key: &K) -> bool {
        self.background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }
}

/// A key's background load; the key is free again when it is dropped, whichever way
/// the load ended.
pub(crate) struct BackgroundClaim<K: Hash + Eq, V> {
    flights: Arc<Flights<K, V>>,
    key: K,
}

impl<K: Hash + Eq, V> Drop for BackgroundClaim<K, V> {
    fn drop(&mut self) {
        self.flights
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// The loads in progress of one cache, by key.
pub(crate) struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Flight<V>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

enum Role<V> {
    Lead(watch::Sender<Option<Outcome<V>>>, Flight<V>),
    Follow(Flight<V>),
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<V>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `load` for `key` unless a load of `key` is in progress, in which case it
    /// waits for that one's result instead. `load`'s error goes to this caller only;
    /// when the load it waited for failed, it runs `load` itself; when it was
    /// cancelled, it tries again, perhaps as leader.
    pub(crate) async fn run<F, Fut, E>(&self, key: &K, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let mut load = Some(load);
        loop {
            let role = {
                let mut flights = self.flights();
                match flights.get(key) {
                    // A closed channel is a leader that already failed: take over.
                    Some(flight) if flight.done.has_changed().is_ok() => {
                        Role::Follow(flight.clone())
                    }
                    _ => {
                        let (sender, done) = watch::channel(None);
                        let flight = Flight {
                            done,
                            waiters: Arc::new(AtomicUsize::new(0)),
                        };
                        flights.insert(key.clone(), flight.clone());
                        Role::Lead(sender, flight)
                    }
                }
            };
            match role {
                Role::Follow(mut flight) => {
                    let waiting = Waiting::join(&flight.waiters);
                    let outcome = match flight.done.wait_for(Option::is_some).await {
                        Ok(done) => done.clone(),
                        // The leader was cancelled: try again, perhaps as leader.
                        Err(_) => continue,
                    };
                    drop(waiting);
                    match outcome {
                        Some(Outcome::Loaded(found)) => return Ok(found),
                        // The leader's load failed: this caller's own, now.
                        _ => {
                            let load = load
                                .take()
                                .expect("a caller loads at most once: loading returns");
                            return load().await;
                        }
                    }
                }
                Role::Lead(sender, flight) => {
                    let _landing = Landing {
                        flights: self,
                        key,
                        flight,
                    };
                    let load = load
                        .take()
                        .expect("a caller leads at most once: leading returns");
                    return match load().await {
                        Ok(loaded) => {
                            sender.send_replace(Some(Outcome::Loaded(loaded.clone())));
                            Ok(loaded)
                        }
                        Err(error) => {
                            sender.send_replace(Some(Outcome::Failed));
                            Err(error)
                        }
                    };
                }
            }
        }
    }

    /// How many callers wait for the load of `key` in progress (0 when there is none).
    #[cfg(test)]
    pub(crate) fn waiters(&self, key: &K) -> usize {
        self.flights()
            .get(key)
            .map_or(0, |f| f.waiters.load(Ordering::Acquire))
    }

    /// How many loads are in progress.
    #[cfg(test)]
    pub(crate) fn in_progress(&self) -> usize {
        self.flights().len()
    }
}

/// Counts a follower as waiting until it stops, whichever way.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::AcqRel);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Removes the leader's flight when it finishes, fails or is cancelled.
struct Landing<'a, K: Hash + Eq + Clone, V: Clone> {
    flights: &'a SingleFlight<K, V>,
    key: &'a K,
    flight: Flight<V>,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Landing<'_, K, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.flights();
        if flights
            .get(self.key)
            .is_some_and(|f| f.done.same_channel(&self.flight.done))
        {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    /// Yields to the other tasks until `done` holds; a bounded number of times, so a
    /// broken flight fails the test instead of spinning forever.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("waited in vain for {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_holds_back_others_for_its_window_only() {
        let flights = Flights::<u64, ()>::default();
        assert!(
            !flights.refresh_failed_within(&1, WINDOW),
            "nothing failed yet"
        );
        flights.refresh_failed(&1);
        assert!(flights.refresh_failed_within(&1, WINDOW));
        assert!(!flights.refresh_failed_within(&2, WINDOW), "another key");
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert!(
            flights.refresh_failed_within(&1, WINDOW),
            "just inside the window"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !flights.refresh_failed_within(&1, WINDOW),
            "the window has passed"
        );
        // Once passed, the failure is forgotten, whatever window is asked next.
        assert!(!flights.refresh_failed_within(&1, WINDOW * 100));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_follower_that_stops_waiting_is_no_longer_counted() {
        let flights = Arc::new(SingleFlight::<u64, u64>::default());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let leader = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move {
                flights
                    .run(&1, || async {
                        let _ = released.await;
                        Ok::<_, ()>(Some(7))
                    })
                    .await
            }
        });
        until("the leader to start", || flights.in_progress() == 1).await;
        let follower = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move { flights.run(&1, || async { Ok::<_, ()>(Some(8)) }).await }
        });
        until("the follower to join", || flights.waiters(&1) == 1).await;
        assert_eq!(flights.waiters(&1), 1);
        follower.abort();
        let _ = follower.await;
        // The leader still loads; the follower that gave up is not waiting any more.
        assert_eq!(flights.in_progress(), 1);
        assert_eq!(flights.waiters(&1), 0);
        release.send(()).unwrap();
        assert_eq!(leader.await.unwrap(), Ok(Some(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_the_oldest_failed_refresh_is_forgotten_first() {
        let flights = Flights::<u64, ()>::default();
        for key in 0..4096 {
            flights.refresh_failed(&key);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        // Below the bound nothing was forgotten.
        assert!(flights.refresh_failed_within(&0, WINDOW));
        assert!(flights.refresh_failed_within(&4095, WINDOW));
        flights.refresh_failed(&4096);
        assert!(
            !flights.refresh_failed_within(&0, WINDOW),
            "the oldest is forgotten"
        );
        assert!(
            flights.refresh_failed_within(&1, WINDOW),
            "the next oldest is kept"
        );
        assert!(
            flights.refresh_failed_within(&4096, WINDOW),
            "the newest is kept"
        );
        assert_eq!(
            flights
                .refresh_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            4096
        );
    }
}

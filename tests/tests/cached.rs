//! `#[cached]` and `#[invalidates]` at run time, each behaviour on `memory://` and on a
//! real `redis-server` the harness starts: the body is `get_or_load`'s loader (single
//! flight, hits, errors not cached, negative caching, fail-safe, the soft timeout), and
//! the invalidation follows a successful body only.
//!
//! The functions take the manager as an argument, as an axum handler takes its state;
//! one test uses `CacheManager::global()`, as the contract's example does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry, cached, invalidates};
use serde::{Deserialize, Serialize};

/// What the caches hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    name: String,
}

/// No read-through settings.
#[derive(Cache)]
#[cache(namespace = "cached:plain", key = i64, value = Profile)]
pub struct PlainCache;

/// Remembers "not found" for 2 s.
#[derive(Cache)]
#[cache(namespace = "cached:negative", key = i64, value = Profile, negative_ttl = 2)]
pub struct NegativeCache;

/// Fresh for 1 s, kept 60 s more as a fallback.
#[derive(Cache)]
#[cache(namespace = "cached:safe", ttl = 1, key = i64, value = Profile, fail_safe = 60)]
pub struct SafeCache;

/// As `SafeCache`, and a load slower than 100 ms goes on in the background.
#[derive(Cache)]
#[cache(namespace = "cached:soft", ttl = 1, key = i64, value = Profile, fail_safe = 60, load_timeout_ms = 100)]
pub struct SoftCache;

cache_registry! {
    /// The caches under test.
    pub struct Caches {
        plain: PlainCache,
        negative: NegativeCache,
        safe: SafeCache,
        soft: SoftCache,
    }
}

/// The database's error.
#[derive(Debug, PartialEq)]
pub struct DbError;

/// A user, as the update functions take it.
pub struct User {
    id: i64,
    name: String,
}

/// A database that counts its reads and can be made slow or failing.
#[derive(Default)]
pub struct Db {
    reads: AtomicUsize,
    rows: Mutex<HashMap<i64, String>>,
    failing: AtomicBool,
    delay_ms: AtomicU64,
}

impl Db {
    fn with(rows: &[(i64, &str)]) -> Arc<Self> {
        let db = Db::default();
        for (id, name) in rows {
            db.put(*id, name);
        }
        Arc::new(db)
    }

    fn put(&self, id: i64, name: &str) {
        self.rows.lock().unwrap().insert(id, name.to_owned());
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn slow(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    async fn profile(&self, id: i64) -> Result<Option<Profile>, DbError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(DbError);
        }
        let name = self.rows.lock().unwrap().get(&id).cloned();
        Ok(name.map(|name| Profile { name }))
    }

    async fn update(&self, user: &User) -> Result<(), DbError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(DbError);
        }
        self.put(user.id, &user.name);
        Ok(())
    }
}

/// Users with these ids.
fn users(ids: &[i64]) -> Vec<User> {
    ids.iter()
        .map(|id| User {
            id: *id,
            name: format!("user {id}"),
        })
        .collect()
}

fn profile(name: &str) -> Profile {
    Profile {
        name: name.to_owned(),
    }
}

#[cached(cache = caches.plain(), key = id)]
async fn load_profile(caches: &Caches, db: &Db, id: i64) -> Result<Option<Profile>, DbError> {
    db.profile(id).await
}

#[cached(cache = caches.negative(), key = id)]
async fn load_remembered(caches: &Caches, db: &Db, id: i64) -> Result<Option<Profile>, DbError> {
    db.profile(id).await
}

#[cached(cache = caches.negative(), key = id)]
async fn find_remembered(caches: &Caches, db: &Db, id: i64) -> Option<Profile> {
    db.profile(id).await.ok().flatten()
}

/// A profile that must exist: "not found" is an error, and errors are not cached.
#[cached(cache = caches.negative(), key = id)]
async fn require_profile(caches: &Caches, db: &Db, id: i64) -> Result<Profile, DbError> {
    db.profile(id).await?.ok_or(DbError)
}

#[cached(cache = caches.safe(), key = id)]
async fn load_safe(caches: &Caches, db: &Db, id: i64) -> Result<Profile, DbError> {
    db.profile(id).await?.ok_or(DbError)
}

/// On a cache whose loads may run in the background: owned arguments only.
#[cached(cache = caches.soft(), key = id)]
async fn load_soft(caches: Arc<Caches>, db: Arc<Db>, id: i64) -> Result<Option<Profile>, DbError> {
    db.profile(id).await
}

#[invalidates(cache = caches.plain(), key = user.id)]
async fn update_profile(caches: &Caches, db: &Db, user: &User) -> Result<(), DbError> {
    db.update(user).await
}

#[invalidates(cache = caches.plain(), keys = users.iter().map(|user| user.id))]
async fn update_profiles(caches: &Caches, db: &Db, users: Vec<User>) -> Result<usize, DbError> {
    for user in &users {
        db.update(user).await?;
    }
    Ok(users.len())
}

#[invalidates(cache = caches.plain(), keys = &ids)]
async fn forget_profiles(caches: &Caches, ids: Vec<i64>) {
    let _ = ids;
}

/// Runs `call`, failing the test past `limit`: nothing here may hang.
async fn within<F: Future>(limit: Duration, what: &str, call: F) -> F::Output {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {limit:?}"))
}

const SECOND: Duration = Duration::from_secs(1);

async fn the_body_runs_once_for_concurrent_callers(caches: Caches) {
    let caches = Arc::new(caches);
    let db = Db::with(&[(1, "Ada")]);
    db.slow(Duration::from_millis(200));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (caches, db) = (Arc::clone(&caches), Arc::clone(&db));
            tokio::spawn(async move { load_profile(&caches, &db, 1).await })
        })
        .collect();
    for caller in callers {
        let got = within(5 * SECOND, "a concurrent caller", caller).await;
        assert_eq!(got.unwrap(), Ok(Some(profile("Ada"))));
    }
    assert_eq!(db.reads(), 1, "one load for 16 concurrent callers");
}

async fn a_second_call_is_a_hit(caches: Caches) {
    let db = Db::with(&[(1, "Ada")]);
    let first = within(SECOND, "first call", load_profile(&caches, &db, 1)).await;
    assert_eq!(first, Ok(Some(profile("Ada"))));
    assert_eq!(
        caches.plain().get(&1).await,
        Some(profile("Ada")),
        "stored by the call"
    );
    db.put(1, "changed in the database");
    let second = within(SECOND, "second call", load_profile(&caches, &db, 1)).await;
    assert_eq!(second, Ok(Some(profile("Ada"))), "answered by the cache");
    assert_eq!(db.reads(), 1);
}

async fn an_error_is_returned_and_not_cached(caches: Caches) {
    let db = Db::with(&[(1, "Ada")]);
    db.fail(true);
    let failed = within(SECOND, "failing call", load_profile(&caches, &db, 1)).await;
    assert_eq!(failed, Err(DbError));
    assert_eq!(caches.plain().get(&1).await, None, "nothing cached");
    db.fail(false);
    let next = within(SECOND, "next call", load_profile(&caches, &db, 1)).await;
    assert_eq!(next, Ok(Some(profile("Ada"))), "the body ran again");
    assert_eq!(db.reads(), 2);

    // The same for a body returning `Result<V, E>`, whose "not found" is an error.
    let missing = within(SECOND, "missing row", require_profile(&caches, &db, 2)).await;
    assert_eq!(missing, Err(DbError));
    db.put(2, "Bob");
    let found = within(SECOND, "row added", require_profile(&caches, &db, 2)).await;
    assert_eq!(found, Ok(profile("Bob")));
    assert_eq!(caches.negative().get(&2).await, Some(profile("Bob")));
}

async fn not_found_is_remembered_for_negative_ttl(caches: Caches) {
    let db = Db::with(&[]);
    let first = within(SECOND, "first call", load_remembered(&caches, &db, 7)).await;
    assert_eq!(first, Ok(None));
    db.put(7, "added later");
    let second = within(SECOND, "second call", load_remembered(&caches, &db, 7)).await;
    assert_eq!(second, Ok(None), "the absence is remembered");
    assert_eq!(db.reads(), 1);

    // A body returning `Option<V>`: `None` is an absence too.
    let none = within(SECOND, "option body", find_remembered(&caches, &db, 8)).await;
    assert_eq!(none, None);
    db.put(8, "added later");
    assert_eq!(find_remembered(&caches, &db, 8).await, None, "remembered");
    assert_eq!(db.reads(), 2);

    // A body returning `Result<V, E>` cannot answer "absent": it runs, uncached.
    let owed = within(SECOND, "result body", require_profile(&caches, &db, 7)).await;
    assert_eq!(owed, Ok(profile("added later")));
    assert_eq!(db.reads(), 3);

    tokio::time::sleep(2 * SECOND + Duration::from_millis(200)).await;
    let later = within(
        SECOND,
        "after negative_ttl",
        load_remembered(&caches, &db, 7),
    )
    .await;
    assert_eq!(
        later,
        Ok(Some(profile("added later"))),
        "forgotten after 2 s"
    );
}

async fn a_failing_body_is_answered_from_the_stale_entry(caches: Caches) {
    let db = Db::with(&[(1, "Ada")]);
    assert_eq!(load_safe(&caches, &db, 1).await, Ok(profile("Ada")));
    tokio::time::sleep(SECOND + Duration::from_millis(200)).await;
    assert_eq!(caches.safe().get(&1).await, None, "stale: a miss for get");
    db.fail(true);
    let got = within(SECOND, "failing call", load_safe(&caches, &db, 1)).await;
    assert_eq!(
        got,
        Ok(profile("Ada")),
        "the stale value instead of the error"
    );
    assert_eq!(db.reads(), 2, "the body ran, and failed");
}

async fn a_slow_body_is_answered_from_the_stale_entry_and_stores_later(caches: Caches) {
    let caches = Arc::new(caches);
    let db = Db::with(&[(1, "old")]);
    let first = load_soft(Arc::clone(&caches), Arc::clone(&db), 1).await;
    assert_eq!(first, Ok(Some(profile("old"))));
    tokio::time::sleep(SECOND + Duration::from_millis(200)).await;
    db.put(1, "new");
    db.slow(Duration::from_millis(600));
    let started = Instant::now();
    let got = within(
        SECOND,
        "soft timeout",
        load_soft(Arc::clone(&caches), Arc::clone(&db), 1),
    )
    .await;
    assert_eq!(got, Ok(Some(profile("old"))), "the stale value");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "answered at the soft timeout, not after the body: {:?}",
        started.elapsed()
    );
    within(3 * SECOND, "the background load", async {
        while caches.soft().get(&1).await != Some(profile("new")) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(db.reads(), 2);
}

async fn invalidates_after_ok_and_not_after_err(caches: Caches) {
    let db = Db::with(&[(1, "Ada")]);
    let cache = caches.plain();
    assert!(cache.set(&1, &profile("Ada")).await.unwrap());
    let ada = User {
        id: 1,
        name: "Ada Lovelace".into(),
    };

    db.fail(true);
    let failed = within(SECOND, "failing update", update_profile(&caches, &db, &ada)).await;
    assert_eq!(failed, Err(DbError));
    assert_eq!(cache.get(&1).await, Some(profile("Ada")), "kept after Err");

    db.fail(false);
    let updated = within(SECOND, "update", update_profile(&caches, &db, &ada)).await;
    assert_eq!(updated, Ok(()));
    assert_eq!(cache.get(&1).await, None, "removed after Ok");
    let reread = within(SECOND, "reread", load_profile(&caches, &db, 1)).await;
    assert_eq!(reread, Ok(Some(profile("Ada Lovelace"))));
}

async fn invalidates_every_key_of_an_iterator(caches: Caches) {
    let db = Db::with(&[]);
    let cache = caches.plain();
    for id in 1..=3 {
        assert!(cache.set(&id, &profile("x")).await.unwrap());
    }

    db.fail(true);
    let failed = within(
        SECOND,
        "failing update",
        update_profiles(&caches, &db, users(&[1, 2])),
    )
    .await;
    assert_eq!(failed, Err(DbError));
    assert_eq!(cache.get(&1).await, Some(profile("x")), "kept after Err");

    db.fail(false);
    let updated = within(
        SECOND,
        "update",
        update_profiles(&caches, &db, users(&[1, 2])),
    )
    .await;
    assert_eq!(updated, Ok(2));
    assert_eq!(cache.get(&1).await, None);
    assert_eq!(cache.get(&2).await, None);
    assert_eq!(
        cache.get(&3).await,
        Some(profile("x")),
        "not in the iterator"
    );

    // More keys than one batch holds: every one goes.
    let ids: Vec<i64> = (1000..1250).collect();
    for batch in ids.chunks(cache_manager::MAX_BATCH) {
        let entries: HashMap<i64, Profile> = batch.iter().map(|id| (*id, profile("y"))).collect();
        assert!(cache.mset(&entries).await.unwrap());
    }
    within(
        SECOND,
        "forget 250 keys",
        forget_profiles(&caches, ids.clone()),
    )
    .await;
    let left = cache.mget(&ids[..100]).await.unwrap();
    assert!(left.values().all(Option::is_none), "first batch removed");
    assert_eq!(cache.get(&1249).await, None, "last batch removed");
}

/// Each behaviour once on `memory://` and once on its own `redis-server`, within a
/// deadline.
macro_rules! on_memory_and_redis {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let caches = super::Caches::new();
                    caches.connect("memory://").await.expect("connect");
                    super::within(super::SECOND * 20, stringify!($test), super::$test(caches)).await;
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let server = cache_tests::RedisServer::new();
                    let caches = super::Caches::new();
                    caches.connect(&server.url()).await.expect("connect");
                    super::within(super::SECOND * 20, stringify!($test), super::$test(caches)).await;
                }
            )*
        }
    };
}

on_memory_and_redis!(
    the_body_runs_once_for_concurrent_callers,
    a_second_call_is_a_hit,
    an_error_is_returned_and_not_cached,
    not_found_is_remembered_for_negative_ttl,
    a_failing_body_is_answered_from_the_stale_entry,
    a_slow_body_is_answered_from_the_stale_entry_and_stores_later,
    invalidates_after_ok_and_not_after_err,
    invalidates_every_key_of_an_iterator,
);

/// The contract's example, verbatim but for the types: the global manager.
mod global {
    use super::*;

    /// Form B, as in the contract.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
    #[cache(namespace = "user:profile", ttl = 600, key = i64)]
    pub struct UserProfile {
        name: String,
    }

    cache_registry! {
        /// The application's caches.
        pub struct CacheManager {
            profiles: UserProfileCache,
        }
    }

    impl Db {
        async fn user_profile(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
            Ok(self
                .profile(id)
                .await?
                .map(|p| UserProfile { name: p.name }))
        }
    }

    #[cached(cache = CacheManager::global().profiles(), key = user_id)]
    async fn load_profile(db: &Db, user_id: i64) -> Result<Option<UserProfile>, DbError> {
        db.user_profile(user_id).await
    }

    #[invalidates(cache = CacheManager::global().profiles(), key = user.id)]
    async fn update_profile(db: &Db, user: &User) -> Result<(), DbError> {
        db.update(user).await
    }

    #[tokio::test]
    async fn the_contract_example_reads_through_and_invalidates() {
        within(5 * SECOND, "the example", async {
            CacheManager::global().connect("memory://").await.unwrap();
            let db = Db::with(&[(1, "Ada")]);
            let ada = UserProfile { name: "Ada".into() };
            assert_eq!(load_profile(&db, 1).await, Ok(Some(ada.clone())));
            assert_eq!(load_profile(&db, 1).await, Ok(Some(ada)));
            assert_eq!(db.reads(), 1, "the second call hit");

            let user = User {
                id: 1,
                name: "Ada Lovelace".into(),
            };
            assert_eq!(update_profile(&db, &user).await, Ok(()));
            let reloaded = load_profile(&db, 1).await.unwrap().unwrap();
            assert_eq!(reloaded.name, "Ada Lovelace");
            assert_eq!(db.reads(), 2, "invalidated by the update");
        })
        .await;
    }
}

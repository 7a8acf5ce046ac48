//! Read-through that keeps the application up when its database fails, against a real
//! `redis-server`: fail-safe, soft timeouts, refresh ahead, negative caching, jitter,
//! and the single flight across instances (`single_flight = "global"`), with the batch
//! forms, and the same on a Redis Cluster where a feature touches several keys.
//!
//! Timings use real seconds (Redis expires keys by its own clock): TTLs of 1-2 s and
//! bounds with room for a loaded 2-core machine.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::cluster::RedisCluster;
use cache_tests::{RedisServer, RoundTripProxy, wire};

/// Fail-safe with a soft timeout: the entry is fresh for 1 s, kept 60 s more.
#[derive(Cache)]
#[cache(namespace = "rt:soft", ttl = 1, key = u32, value = String, fail_safe = 60, load_timeout_ms = 100)]
pub struct SoftCache;

/// Fail-safe alone: loads run in the caller.
#[derive(Cache)]
#[cache(namespace = "rt:safe", ttl = 1, key = u32, value = String, fail_safe = 60)]
pub struct SafeCache;

/// Refreshed in the background once half its 2 s TTL has passed.
#[derive(Cache)]
#[cache(namespace = "rt:ahead", ttl = 2, key = u32, value = String, refresh_ahead = 50)]
pub struct AheadCache;

/// Remembers a loader's `Ok(None)` for 2 s.
#[derive(Cache)]
#[cache(namespace = "rt:neg", ttl = 60, key = u32, value = String, negative_ttl = 2)]
pub struct NegativeCache;

/// Every write expires after 100 s plus up to 50 s.
#[derive(Cache)]
#[cache(namespace = "rt:jitter", ttl = 100, key = u32, value = String, ttl_jitter = 50)]
pub struct JitterCache;

/// One load per key across every instance.
#[derive(Cache)]
#[cache(namespace = "rt:global", ttl = 60, key = u32, value = String, single_flight = "global")]
pub struct GlobalCache;

/// Fail-safe and remembered absences, with one load per key across every instance.
#[derive(Cache)]
#[cache(namespace = "rt:safe_once", ttl = 1, key = u32, value = String, fail_safe = 60, negative_ttl = 1, single_flight = "global")]
pub struct SafeOnceCache;

cache_registry! {
    /// The caches under test.
    pub struct ReadThrough {
        soft: SoftCache,
        safe: SafeCache,
        ahead: AheadCache,
        negative: NegativeCache,
        jitter: JitterCache,
        once: GlobalCache,
        safe_once: SafeOnceCache,
    }
}

/// Runs `call`, failing the test past `limit`: nothing here may hang.
async fn within<F: Future>(limit: Duration, what: &str, call: F) -> F::Output {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {limit:?}"))
}

async fn connected(url: &str) -> ReadThrough {
    let manager = ReadThrough::new();
    manager.connect(url).await.expect("connect");
    manager
}

/// The key of the lease an instance holds while it loads the entry at `redis_key`.
fn lease_key(redis_key: &str) -> String {
    format!("!lease!{redis_key}")
}

/// A loader error.
#[derive(Debug, PartialEq)]
struct DbDown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_loader_is_answered_from_the_stale_entry_and_not_asked_again() {
    let server = RedisServer::new();
    let manager = connected(&format!("{}?fail_safe_throttle_ms=1500", server.url())).await;
    let raw = server.raw().await;
    let cache = manager.safe();
    let key = cache.redis_key(&1);
    assert!(cache.set(&1, &"old".to_owned()).await.unwrap());
    let pttl = wire::pttl(&raw, &key).await;
    assert!(
        (60_000..=61_000).contains(&pttl),
        "ttl + fail_safe: {pttl} ms"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cache.get(&1).await, None, "stale: a miss for get");

    let calls = AtomicUsize::new(0);
    let failing = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<Option<String>, _>(DbDown)
    };
    let got = within(
        Duration::from_secs(2),
        "get_or_load",
        cache.get_or_load(&1, failing),
    )
    .await;
    assert_eq!(
        got,
        Ok(Some("old".to_owned())),
        "the stale value instead of the error"
    );
    // Fresh again for the throttle: the failing database is not asked on every call.
    let pttl = wire::pttl(&raw, &key).await;
    assert!(
        (60_500..=61_500).contains(&pttl),
        "fail_safe + throttle: {pttl} ms"
    );
    for _ in 0..10 {
        assert_eq!(
            cache.get_or_load(&1, failing).await,
            Ok(Some("old".to_owned()))
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        cache.get_or_load(&1, failing).await,
        Ok(Some("old".to_owned()))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "asked again after the throttle"
    );

    // No fallback: the error.
    assert_eq!(cache.get_or_load(&2, failing).await, Err(DbDown));
    // The bytes at the key are the value's, as a plain entry's.
    assert!(wire::get(&raw, &key).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_is_not_waited_for_and_its_result_is_stored_when_it_lands() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let cache = manager.soft();
    cache.set(&1, &"old".to_owned()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let got = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            Ok::<_, DbDown>(Some("new".to_owned()))
        })
        .await;
    let waited = started.elapsed();
    assert_eq!(got, Ok(Some("old".to_owned())));
    println!("soft timeout 100 ms: the caller waited {waited:?} for an 800 ms loader");
    assert!(waited < Duration::from_millis(400), "waited {waited:?}");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        cache.get(&1).await.as_deref(),
        Some("new"),
        "the background load stored its value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_entry_is_answered_at_once_and_refreshed_with_a_new_ttl() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let raw = server.raw().await;
    let cache = manager.ahead();
    let key = cache.redis_key(&1);
    cache.set(&1, &"v1".to_owned()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = wire::pttl(&raw, &key).await;
    assert!(before < 1000, "past half its TTL: {before} ms left");

    let loads = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for _ in 0..5 {
        let loads = Arc::clone(&loads);
        let got = cache
            .get_or_load(&1, move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, DbDown>(Some("v2".to_owned()))
            })
            .await;
        assert_eq!(got, Ok(Some("v1".to_owned())));
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "nobody waited for the refresh"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one refresh for five hits");
    assert_eq!(cache.get(&1).await.as_deref(), Some("v2"));
    let after = wire::pttl(&raw, &key).await;
    assert!(
        after > 1500,
        "the refreshed entry got a new TTL: {after} ms left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absence_is_remembered_for_its_ttl_and_replaced_by_a_write() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let raw = server.raw().await;
    let cache = manager.negative();
    let key = cache.redis_key(&1);
    let calls = AtomicUsize::new(0);
    let nothing = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<Option<String>, DbDown>(None)
    };
    for _ in 0..10 {
        assert_eq!(cache.get_or_load(&1, nothing).await, Ok(None));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one loader call for ten reads"
    );
    assert_eq!(cache.get(&1).await, None);
    let pttl = wire::pttl(&raw, &key).await;
    assert!(
        (1..=2000).contains(&pttl),
        "the absence's own TTL: {pttl} ms"
    );
    // Not a value to a raw reader's eye either: a 5-byte marker, not bincode of a string.
    let marker = wire::get(&raw, &key).await.unwrap();
    assert_eq!((marker.len(), marker[0]), (5, 0xCA));

    assert!(cache.set(&1, &"now".to_owned()).await.unwrap());
    assert_eq!(
        cache.get_or_load(&1, nothing).await,
        Ok(Some("now".to_owned()))
    );
    assert!(wire::pttl(&raw, &key).await > 50_000, "the value's TTL");
    assert!(cache.invalidate(&1).await);

    assert_eq!(cache.get_or_load(&2, nothing).await, Ok(None));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(cache.get_or_load(&2, nothing).await, Ok(None));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "asked again once the absence expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_expiries_within_the_declared_bound() {
    let server = RedisServer::new();
    let manager = connected(&server.url()).await;
    let raw = server.raw().await;
    let entries: HashMap<u32, String> = (0..100).map(|k| (k, k.to_string())).collect();
    assert!(manager.jitter().mset(&entries).await.unwrap());
    let mut ttls = Vec::new();
    for k in 0..100 {
        ttls.push(wire::pttl(&raw, &manager.jitter().redis_key(&k)).await);
    }
    let (min, max) = (*ttls.iter().min().unwrap(), *ttls.iter().max().unwrap());
    println!("100 entries written together expire in {min}..{max} ms");
    assert!(min > 99_000 && max <= 150_000, "{min}..{max}");
    assert!(
        max - min > 25_000,
        "spread over more than half the jitter: {min}..{max}"
    );
}

/// `managers` managers on `url`, each running `tasks` concurrent `get_or_load`s of key 7
/// with a 300 ms loader that counts its calls; every caller must get the value.
async fn loads_of_one_key(url: &str, managers: usize, tasks: usize) -> usize {
    let loads = Arc::new(AtomicUsize::new(0));
    let mut all = Vec::new();
    for _ in 0..managers {
        let manager = Arc::new(connected(url).await);
        all.push(manager);
    }
    // Let each manager's listener subscribe before the race.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(managers * tasks));
    let mut handles = Vec::new();
    for manager in &all {
        for _ in 0..tasks {
            let (manager, loads, barrier) = (manager.clone(), loads.clone(), barrier.clone());
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                manager
                    .once()
                    .get_or_load(&7, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, DbDown>(Some("seven".to_owned()))
                    })
                    .await
            }));
        }
    }
    for handle in handles {
        let got = within(Duration::from_secs(10), "a global load", handle).await;
        assert_eq!(got.unwrap(), Ok(Some("seven".to_owned())));
    }
    loads.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_of_sixteen_tasks_run_the_loader_once() {
    let server = RedisServer::new();
    let loads = loads_of_one_key(&server.url(), 4, 16).await;
    assert_eq!(
        loads, 1,
        "the loader ran {loads} times for 64 callers on 4 instances"
    );
    let raw = server.raw().await;
    let lease = lease_key(&ReadThrough::new().once().redis_key(&7));
    assert!(!wire::exists(&raw, &lease).await, "the lease was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lease_holder_lets_another_instance_load_at_once() {
    let server = RedisServer::new();
    let url = format!("{}?single_flight_wait_ms=3000", server.url());
    let (a, b) = (Arc::new(connected(&url).await), connected(&url).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let holder = {
        let (a, started) = (a.clone(), started.clone());
        tokio::spawn(async move {
            a.once()
                .get_or_load(&1, || async move {
                    started.notify_one();
                    std::future::pending::<Result<Option<String>, DbDown>>().await
                })
                .await
        })
    };
    started.notified().await;
    let raw = server.raw().await;
    assert!(
        wire::exists(&raw, &lease_key(&a.once().redis_key(&1))).await,
        "a holds the lease"
    );
    let waiting = Instant::now();
    let b_load = tokio::spawn(async move {
        b.once()
            .get_or_load(&1, || async { Ok::<_, DbDown>(Some("from b".to_owned())) })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.abort();
    let got = within(Duration::from_secs(5), "b's load", b_load)
        .await
        .unwrap();
    let took = waiting.elapsed();
    println!("lease holder cancelled: the other instance answered after {took:?}");
    assert_eq!(got, Ok(Some("from b".to_owned())));
    assert!(
        took < Duration::from_millis(1500),
        "well within the 3 s wait: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_whose_connection_dies_lets_another_load_after_the_wait() {
    let server = RedisServer::new();
    // The holder reaches Redis through a proxy, so its connections can be cut alone.
    let proxy = RoundTripProxy::start(server.port()).await;
    let wait = Duration::from_millis(1000);
    let options = format!("?single_flight_wait_ms={}", wait.as_millis());
    let a = Arc::new(connected(&format!("{}{options}", server.url_on_port(proxy.port()))).await);
    let b = connected(&format!("{}{options}", server.url())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let holder = {
        let (a, started) = (a.clone(), started.clone());
        tokio::spawn(async move {
            a.once()
                .get_or_load(&2, || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, DbDown>(Some("from a".to_owned()))
                })
                .await
        })
    };
    started.notified().await;
    drop(proxy);
    let waiting = Instant::now();
    let got = within(
        Duration::from_secs(5),
        "b's load",
        b.once()
            .get_or_load(&2, || async { Ok::<_, DbDown>(Some("from b".to_owned())) }),
    )
    .await;
    let took = waiting.elapsed();
    println!("lease holder cut off: the other instance answered after {took:?} (wait {wait:?})");
    assert_eq!(got, Ok(Some("from b".to_owned())));
    assert!(took <= wait + Duration::from_millis(700), "{took:?}");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_form_loads_each_key_once_across_instances() {
    let server = RedisServer::new();
    let (a, b) = (
        connected(&server.url()).await,
        connected(&server.url()).await,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let load = |asked: Arc<std::sync::Mutex<Vec<u32>>>| {
        move |keys: Vec<u32>| async move {
            asked.lock().unwrap().extend(&keys);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, k.to_string())).collect())
        }
    };
    let keys: Vec<u32> = (0..20).collect();
    let (got_a, got_b) = tokio::join!(
        a.once().mget_or_load(&keys, load(asked.clone())),
        b.once().mget_or_load(&keys, load(asked.clone())),
    );
    let expected: HashMap<u32, String> = keys.iter().map(|k| (*k, k.to_string())).collect();
    assert_eq!(got_a.unwrap(), expected);
    assert_eq!(got_b.unwrap(), expected);
    let mut asked = asked.lock().unwrap().clone();
    asked.sort_unstable();
    assert_eq!(
        asked, keys,
        "each key loaded once, by one instance or the other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_waits_for_another_instance_reads_again_in_batches_of_100() {
    let server = RedisServer::new();
    let a = connected(&server.url()).await;
    let raw = server.raw().await;
    // Another instance is loading key 0 (its lease, taken by hand, lapses in 2 s):
    // a's batch of 300 waits, then reads every key again before taking its leases.
    let lease = lease_key(&a.once().redis_key(&0));
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("another instance")
        .arg("PX")
        .arg(2_000)
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    wire::log_commands(&raw).await;
    let keys: Vec<u32> = (0..300).collect();
    let got = within(
        Duration::from_secs(10),
        "mget_or_load",
        a.once().mget_or_load(&keys, |keys| async move {
            Ok::<_, DbDown>(keys.into_iter().map(|k| (k, k.to_string())).collect())
        }),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 300);

    let sizes: Vec<usize> = wire::logged_commands(&raw, "MGET")
        .await
        .iter()
        .map(|args| wire::argument_count(args))
        .collect();
    assert!(
        sizes.len() >= 6,
        "the first read and the read after the wait, 3 MGETs each: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&keys| keys <= 100),
        "an MGET of more than 100 keys: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_another_instance_found_gone_is_not_answered_from_its_old_fallback() {
    let server = RedisServer::new();
    let (a, b) = (
        connected(&server.url()).await,
        connected(&server.url()).await,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw = server.raw().await;
    let lease = lease_key(&a.safe_once().redis_key(&1));
    let old = HashMap::from([(1, "old one".to_owned()), (2, "old two".to_owned())]);
    assert!(a.safe_once().mset(&old).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // b loads key 1 and finds it gone (slowly); meanwhile a asks for keys 1 and 2, waits
    // for b's load of key 1, and its own load of key 2 fails: key 2's fallback answers.
    let (b_got, a_got) = within(Duration::from_secs(10), "both loads", async {
        tokio::join!(
            b.safe_once().get_or_load(&1, || async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<Option<String>, DbDown>(None)
            }),
            async {
                // Once b holds the lease of key 1 (it loads it).
                while !wire::exists(&raw, &lease).await {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                a.safe_once()
                    .mget_or_load(&[1, 2], |_| async {
                        Err::<HashMap<u32, String>, _>(DbDown)
                    })
                    .await
            },
        )
    })
    .await;
    assert_eq!(b_got, Ok(None));
    assert_eq!(
        a_got,
        Ok(HashMap::from([(2, "old two".to_owned())])),
        "key 1 is gone (another instance found it so): its old value is no answer"
    );
    // The absence b remembered stands: a's failed load touched nothing of key 1.
    assert_eq!(a.safe_once().get(&1).await, None);
    assert_eq!(b.safe_once().get(&1).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_stale_keys_of_every_master_answer_a_failed_batch_load() {
    let cluster = RedisCluster::new();
    let manager = connected(&cluster.url()).await;
    let cache = manager.safe();
    let entries: HashMap<u32, String> = (0..30).map(|k| (k, format!("v{k}"))).collect();
    assert!(cache.mset(&entries).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let keys: Vec<u32> = (0..30).collect();
    assert_eq!(
        cache
            .mget(&keys)
            .await
            .unwrap()
            .values()
            .filter(|v| v.is_some())
            .count(),
        0,
        "every entry is stale"
    );
    let got = cache
        .mget_or_load(&keys, |_| async { Err::<HashMap<u32, String>, _>(DbDown) })
        .await;
    assert_eq!(got, Ok(entries), "stale keys on every master answer");

    // And the global single flight holds across the masters' slots.
    let loads = loads_of_one_key(&cluster.url(), 3, 8).await;
    assert_eq!(
        loads, 1,
        "one load for 24 callers on 3 instances of a cluster"
    );
}

//! Coalescing of concurrent `get`s into `MGET`s, and of concurrent `set`s into the same
//! pipelines, against a real `redis-server`: it happens under load, a lone call is a plain
//! `GET`, and no call's semantics change (its own key's value, its own write's outcome,
//! corrupt-entry eviction, deadlines).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_manager::{Breaker, Cache, CacheConfig, cache_registry};
use cache_tests::{DelayedAddress, RedisServer, wire};

/// Values spell out their key, so a value delivered to the wrong caller shows.
#[derive(Cache)]
#[cache(namespace = "coalesce:item", key = u64, value = String)]
struct Items;

/// A fail-safe cache: its reads need the time each entry has left (stale or fresh), so
/// a coalesced read carries a `PTTL` per key in the `MGET`'s round trip.
#[derive(Cache)]
#[cache(namespace = "coalesce:timed", key = u64, value = String, ttl = 600, fail_safe = 600)]
struct TimedItems;

/// A cache whose keys the restricted user of the refusal test may not write.
#[derive(Cache)]
#[cache(namespace = "denied:item", key = u64, value = String)]
struct DeniedItems;

cache_registry! {
    struct Caches {
        items: Items,
        timed: TimedItems,
        denied: DeniedItems,
    }
}

fn value_of(key: u64) -> String {
    format!("value-of-{key}")
}

async fn connected(server: &RedisServer) -> Arc<Caches> {
    let caches = Caches::new();
    caches.connect(&server.url()).await.expect("connect");
    Arc::new(caches)
}

/// `tasks` tasks each reading `rounds` keys at once; returns how many reads hit.
async fn concurrent_reads(caches: &Arc<Caches>, tasks: u64, rounds: u64, keys: u64) -> u64 {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let caches = Arc::clone(caches);
            tokio::spawn(async move {
                let mut hits = 0;
                for r in 0..rounds {
                    let key = (t * 7919 + r * 31) % keys;
                    if let Some(value) = caches.items().get(&key).await {
                        assert_eq!(value, value_of(key), "task {t} got another key's value");
                        hits += 1;
                    }
                }
                hits
            })
        })
        .collect();
    let mut hits = 0;
    for handle in handles {
        hits += handle.await.expect("a reader task panicked");
    }
    hits
}

async fn populate(caches: &Caches, keys: u64) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(100) {
        let entries: Vec<(u64, String)> = chunk.iter().map(|k| (*k, value_of(*k))).collect();
        assert!(
            caches
                .items()
                .mset(entries.iter().map(|(k, v)| (k, v)))
                .await
                .unwrap()
        );
    }
}

/// Keys `0..keys` of the fail-safe cache, each holding its value, fresh.
async fn populate_timed(caches: &Caches, keys: u64) {
    let entries: Vec<(u64, String)> = (0..keys).map(|k| (k, value_of(k))).collect();
    assert!(
        caches
            .timed()
            .mset(entries.iter().map(|(k, v)| (k, v)))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_are_coalesced_into_mgets_and_each_gets_its_own_value() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = connected(&server).await;
    populate(&caches, 1000).await;
    wire::reset_stats(&raw).await;

    let hits = concurrent_reads(&caches, 64, 200, 1000).await;
    assert_eq!(hits, 64 * 200, "every key was populated");

    let calls = wire::command_calls(&raw).await;
    let gets = calls.get("get").copied().unwrap_or(0);
    let mgets = calls.get("mget").copied().unwrap_or(0);
    assert!(mgets > 0, "no MGET under 64 concurrent readers: {calls:?}");
    assert!(
        gets + mgets < 64 * 200,
        "nothing was coalesced: {gets} GETs + {mgets} MGETs"
    );
    assert_eq!(caches.items().stats().hits, 64 * 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_need_the_remaining_ttl_are_coalesced_and_each_gets_its_own() {
    let server = RedisServer::new();
    let caches = connected(&server).await;
    let raw = server.raw().await;
    populate_timed(&caches, 64).await;
    // Odd keys have less left than their fail-safe window: stale, so a plain read misses;
    // even keys are fresh. A remaining time read for the wrong key would swap the two.
    for k in (1..64).step_by(2) {
        let key = caches.timed().redis_key(&k);
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(300_000)
            .query_async(&mut raw.clone())
            .await
            .unwrap();
    }
    wire::reset_stats(&raw).await;
    for round in 0..20u64 {
        let handles: Vec<_> = (0..64u64)
            .map(|t| {
                let caches = Arc::clone(&caches);
                tokio::spawn(async move {
                    let k = (t + round * 7) % 64;
                    (k, caches.timed().get(&k).await)
                })
            })
            .collect();
        for handle in handles {
            let (k, got) = handle.await.expect("a reader task panicked");
            let expected = (k % 2 == 0).then(|| value_of(k));
            assert_eq!(got, expected, "round {round}, key {k} (odd keys are stale)");
        }
    }
    let calls = wire::command_calls(&raw).await;
    let mgets = calls.get("mget").copied().unwrap_or(0);
    assert!(
        mgets > 0 && calls.get("pttl").copied().unwrap_or(0) > 0,
        "the timed reads were not coalesced: {calls:?}"
    );
    assert!(
        calls.get("get").copied().unwrap_or(0) < 64 * 20,
        "every read went alone: {calls:?}"
    );
    println!("1280 timed reads: {calls:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_lone_get_is_a_plain_get() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = connected(&server).await;
    populate(&caches, 10).await;
    wire::reset_stats(&raw).await;
    for key in 0..10 {
        assert_eq!(caches.items().get(&key).await, Some(value_of(key)));
    }
    let calls = wire::command_calls(&raw).await;
    assert_eq!(calls.get("get"), Some(&10), "{calls:?}");
    assert_eq!(
        calls.get("mget"),
        None,
        "a lone call waited for a batch: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_read_through_a_coalesced_mget_are_evicted() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = connected(&server).await;
    populate(&caches, 200).await;
    // Every tenth key holds garbage.
    for key in (0..200u64).step_by(10) {
        wire::set(&raw, &caches.items().redis_key(&key), b"\x00garbage").await;
    }
    wire::reset_stats(&raw).await;
    let handles: Vec<_> = (0..64u64)
        .map(|t| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move {
                for r in 0..50u64 {
                    let key = (t * 13 + r * 7) % 200;
                    let got = caches.items().get(&key).await;
                    if key % 10 == 0 {
                        assert_eq!(got, None, "a corrupt entry decoded");
                    } else {
                        assert_eq!(got, Some(value_of(key)));
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a reader task panicked");
    }
    assert!(
        wire::command_calls(&raw).await.contains_key("mget"),
        "the reads were not coalesced"
    );
    for key in (0..200u64).step_by(10) {
        assert!(
            !wire::exists(&raw, &caches.items().redis_key(&key)).await,
            "corrupt key {key} survived"
        );
    }
    assert!(caches.items().stats().corrupt_evicted >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_gets_keep_their_deadline_against_a_paused_server() {
    let server = RedisServer::new();
    let caches = Caches::new();
    let config = CacheConfig::new().with_response_timeout(Duration::from_millis(100));
    caches.connect_with(&server.url(), &config).await.unwrap();
    let caches = Arc::new(caches);
    populate(&caches, 100).await;
    let raw = server.raw().await;
    wire::reset_stats(&raw).await;
    let before = caches.items().stats();
    server.pause();
    let mut slowest = Duration::ZERO;
    for (got, took) in joined(spawn_gets(&caches, 0, 64)).await {
        assert_eq!(got, None);
        // Each call waited for its own 100 ms deadline, not for the paused server; the
        // upper bound leaves room for a loaded machine's scheduling.
        assert!(
            took >= Duration::from_millis(95) && took < Duration::from_millis(400),
            "a coalesced get took {took:?} against a 100 ms deadline"
        );
        slowest = slowest.max(took);
    }
    println!("the slowest of 64 gets against a paused server: {slowest:?}");
    let stats = caches.items().stats();
    assert_eq!(
        stats.degraded - before.degraded,
        64,
        "every get degraded: {stats:?}"
    );
    assert!(
        stats.timeouts > before.timeouts,
        "the gets did not time out: {stats:?}"
    );
    server.resume();
    // What the paused server received, it runs after the resume: the 64 gets went out as
    // MGETs, not as 64 GETs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls = loop {
        let calls = wire::command_calls(&raw).await;
        if calls.contains_key("mget") || Instant::now() > deadline {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        calls.contains_key("mget") && calls.get("get").copied().unwrap_or(0) < 64,
        "the gets were not coalesced: {calls:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while caches.items().get(&1).await != Some(value_of(1)) {
        assert!(Instant::now() < deadline, "no recovery after resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `tasks` gets of keys `first..first + tasks` spawned at once; each reports what it got
/// and how long it took.
fn spawn_gets(
    caches: &Arc<Caches>,
    first: u64,
    tasks: u64,
) -> Vec<tokio::task::JoinHandle<(Option<String>, Duration)>> {
    (first..first + tasks)
        .map(|k| {
            let caches = Arc::clone(caches);
            tokio::spawn(async move {
                let started = Instant::now();
                let got = caches.items().get(&k).await;
                (got, started.elapsed())
            })
        })
        .collect()
}

/// What each of `gets` got and how long it took, in order; each one within 10 s.
async fn joined(
    gets: Vec<tokio::task::JoinHandle<(Option<String>, Duration)>>,
) -> Vec<(Option<String>, Duration)> {
    joined_within(gets, Duration::from_secs(10), "a get").await
}

/// What each of `tasks` returned, in order; each one within `limit`, or the test fails
/// naming `what` hung.
async fn joined_within<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    limit: Duration,
    what: &str,
) -> Vec<T> {
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        let got = tokio::time::timeout(limit, task)
            .await
            .unwrap_or_else(|_| panic!("{what} hung"))
            .unwrap_or_else(|e| panic!("{what}'s task panicked: {e}"));
        done.push(got);
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_queued_behind_a_stuck_mget_keeps_its_own_deadline() {
    // The dispatcher, not a timer per caller, answers each waiter by its deadline. Gets
    // made while an MGET is stuck wait in the queue; when that MGET times out, theirs
    // goes out with the connection's full response timeout, but each caller must still
    // be answered at its own deadline, not at the later MGET's.
    const TIMEOUT: Duration = Duration::from_millis(400);
    let server = RedisServer::new();
    let caches = Caches::new();
    // The first batch's timeouts must not open the breaker: the second batch would then
    // fail at once instead of waiting.
    let config = CacheConfig::new()
        .with_response_timeout(TIMEOUT)
        .with_failure_threshold(1_000);
    caches.connect_with(&server.url(), &config).await.unwrap();
    let caches = Arc::new(caches);
    populate(&caches, 100).await;
    server.pause();
    // 32 gets in progress: 16 plain GETs and an MGET of the rest, held by the paused
    // server; then 16 more, a second MGET in flight, so both batch slots are taken.
    let mut stuck = spawn_gets(&caches, 0, 32);
    tokio::time::sleep(TIMEOUT / 20).await;
    stuck.extend(spawn_gets(&caches, 32, 16));
    tokio::time::sleep(TIMEOUT * 5 / 8 - TIMEOUT / 20).await;
    // These queue behind them: their deadline (at 1.625 x TIMEOUT from the first batch)
    // falls before their own MGET's timeout (at 2 x TIMEOUT).
    let queued = spawn_gets(&caches, 48, 32);
    for (got, _) in joined(stuck).await {
        assert_eq!(got, None);
    }
    let mut slowest = Duration::ZERO;
    for (got, took) in joined(queued).await {
        assert_eq!(got, None);
        slowest = slowest.max(took);
        // Answered at its deadline, give or take scheduling; answered with its MGET's
        // timeout it would have taken 3/8 of TIMEOUT (150 ms) more.
        assert!(
            took >= TIMEOUT - Duration::from_millis(5)
                && took < TIMEOUT + Duration::from_millis(100),
            "a get queued behind a stuck MGET took {took:?} against its {TIMEOUT:?} deadline"
        );
    }
    println!("the slowest of the gets queued behind a stuck MGET: {slowest:?}");
    server.resume();
}

#[tokio::test(flavor = "current_thread")]
async fn a_stuck_batch_counts_each_of_its_calls_toward_the_breaker() {
    // 64 gets at once against a paused server: 16 go alone as plain GETs, 48 in one
    // MGET (on one thread, all 64 tasks run before the dispatcher drains its queue).
    // Sent alone, the 64 timeouts in a row would open a breaker whose threshold is 20;
    // the MGET's timeout must count for its 48 calls, not once (17 in a row would leave
    // the breaker closed, and every call after waiting for its timeout too).
    let watchdog = cache_tests::Watchdog::start("the stuck batch test", Duration::from_secs(60));
    let server = RedisServer::new();
    let caches = Caches::new();
    let config = CacheConfig::new()
        .with_response_timeout(Duration::from_millis(200))
        .with_failure_threshold(20);
    caches.connect_with(&server.url(), &config).await.unwrap();
    let caches = Arc::new(caches);
    populate(&caches, 100).await;
    let before = caches.health().await.degraded_calls;
    server.pause();
    for (got, _) in joined(spawn_gets(&caches, 0, 64)).await {
        assert_eq!(got, None);
    }
    let health = tokio::time::timeout(Duration::from_secs(10), caches.health())
        .await
        .expect("health hung");
    server.resume();
    drop(watchdog);
    assert_eq!(
        health.breaker,
        Breaker::Open,
        "64 calls timed out, yet the breaker is closed: {health:?}"
    );
    // (Health's own PING counts too when it goes out before the MGET's timeout, a
    // moment after the callers' deadlines, has closed the connection.)
    assert!(
        health.degraded_calls - before >= 64,
        "every call that timed out counts as degraded: {health:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_pass_their_deadline_waiting_to_be_sent_do_not_open_the_breaker() {
    // Every round trip takes 300 ms (a proxy holds each command that long), within the
    // 450 ms response timeout. 17 gets: 16 go alone, the 17th in an MGET; an 18th, made
    // once that MGET is on its way, in a second one, so both batch slots are taken; 47
    // more, made once that one is on its way too, wait for a reply and then for their
    // own, some 600 ms, past their deadline. They degrade, but the server answered every
    // round trip in time and a lone call would have had its reply: they must not count
    // toward the breaker (three would open it).
    let server = RedisServer::new();
    let slow = DelayedAddress::start(server.port(), Duration::from_millis(300)).await;
    let caches = Caches::new();
    let config = CacheConfig::new()
        .with_response_timeout(Duration::from_millis(450))
        .with_connect_timeout(Duration::from_secs(5))
        .with_failure_threshold(3);
    caches
        .connect_with(&server.url_on_port(slow.port()), &config)
        .await
        .unwrap();
    let caches = Arc::new(caches);
    // The cache's first call also records its layout for the deploy: one round trip
    // more, which would hold one of the 17 back.
    assert_eq!(caches.items().get(&100).await, None);
    let before = caches.items().stats();
    let mut gets = spawn_gets(&caches, 0, 17);
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.mgets() == 0 {
        assert!(Instant::now() < deadline, "the 17th get was not coalesced");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gets.extend(spawn_gets(&caches, 17, 1));
    while slow.mgets() < 2 {
        assert!(
            Instant::now() < deadline,
            "the 18th get did not go in a second MGET"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gets.extend(spawn_gets(&caches, 18, 47));
    for (got, _) in joined(gets).await {
        assert_eq!(got, None);
    }
    let health = tokio::time::timeout(Duration::from_secs(10), caches.health())
        .await
        .expect("health hung");
    let stats = caches.items().stats();
    // Otherwise the test proves nothing.
    assert!(
        stats.timeouts > before.timeouts,
        "no call passed its deadline waiting behind a batch: {stats:?}"
    );
    assert_eq!(
        health.breaker,
        Breaker::Closed,
        "{} calls passed their deadline waiting to be sent, and opened the breaker of a \
         server that answered every round trip in time: {health:?}",
        stats.timeouts - before.timeouts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_can_be_turned_off() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = Caches::new();
    let config = CacheConfig::new().with_coalescing(false);
    caches.connect_with(&server.url(), &config).await.unwrap();
    let caches = Arc::new(caches);
    populate(&caches, 1000).await;
    wire::reset_stats(&raw).await;
    assert_eq!(concurrent_reads(&caches, 64, 50, 1000).await, 64 * 50);
    let calls = wire::command_calls(&raw).await;
    assert_eq!(
        calls.get("mget"),
        None,
        "coalesced although turned off: {calls:?}"
    );
    assert_eq!(calls.get("get"), Some(&(64 * 50)));
}

/// `n` gets in progress at once (the server paused until all are sent), then what the
/// server received: how many `GET`s and `MGET`s.
async fn at_once(n: u64) -> (u64, u64) {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = Caches::new();
    let config = CacheConfig::new().with_response_timeout(Duration::from_secs(5));
    caches.connect_with(&server.url(), &config).await.unwrap();
    let caches = Arc::new(caches);
    populate(&caches, n).await;
    wire::reset_stats(&raw).await;
    server.pause();
    let handles: Vec<_> = (0..n)
        .map(|key| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move { caches.items().get(&key).await })
        })
        .collect();
    // Every get is sent (or queued) and waiting for the paused server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    for (key, handle) in (0..n).zip(handles) {
        let got = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("a get hung")
            .expect("a reader task panicked");
        assert_eq!(got, Some(value_of(key)));
    }
    let calls = wire::command_calls(&raw).await;
    let count = |name: &str| calls.get(name).copied().unwrap_or(0);
    (count("get"), count("mget"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_gets_in_progress_go_alone_and_the_seventeenth_is_coalesced() {
    assert_eq!(
        at_once(16).await,
        (16, 0),
        "16 gets in progress: all plain GETs"
    );
    let (gets, mgets) = at_once(17).await;
    assert_eq!(
        (gets, mgets),
        (16, 1),
        "17 gets in progress: 16 plain GETs, the 17th in an MGET"
    );
}

/// `tasks` tasks each writing `rounds` keys of their own at once, `items` for even tasks
/// and `denied` for odd ones when `split`; returns each write's key, cache and outcome.
async fn concurrent_writes(
    caches: &Arc<Caches>,
    tasks: u64,
    rounds: u64,
    split: bool,
) -> Vec<(u64, bool, bool)> {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let caches = Arc::clone(caches);
            tokio::spawn(async move {
                let denied = split && t % 2 == 1;
                let mut outcomes = Vec::new();
                for r in 0..rounds {
                    let key = t * rounds + r;
                    let written = if denied {
                        caches.denied().set(&key, &value_of(key)).await
                    } else {
                        caches.items().set(&key, &value_of(key)).await
                    };
                    outcomes.push((key, denied, written.expect("a valid value")));
                }
                outcomes
            })
        })
        .collect();
    joined_within(handles, Duration::from_secs(30), "a writer")
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_each_land_with_their_own_value_and_ttl() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = connected(&server).await;
    let outcomes = concurrent_writes(&caches, 64, 20, false).await;
    assert!(
        outcomes.iter().all(|(_, _, written)| *written),
        "a write under load reported false"
    );
    for (key, _, _) in outcomes {
        assert_eq!(
            caches.items().get(&key).await,
            Some(value_of(key)),
            "key {key} holds another write's value"
        );
        let ttl = wire::ttl(&raw, &caches.items().redis_key(&key)).await;
        assert!(ttl > 0, "key {key} was written without its TTL ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_among_coalesced_ones_fails_alone() {
    // A user who may write `coalesce:*` but not `denied:*`: under load the two caches'
    // writes share pipelines, and each refusal must fail only its own call.
    let server = RedisServer::new();
    let raw = server.raw().await;
    wire::add_user_for_keys(&raw, "app", "app-secret", "coalesce:*").await;
    let caches = Caches::new();
    let url = server
        .url()
        .replacen("redis://", "redis://app:app-secret@", 1);
    caches
        .connect(&url)
        .await
        .expect("connect as the restricted user");
    let caches = Arc::new(caches);
    let outcomes = concurrent_writes(&caches, 64, 20, true).await;
    for (key, denied, written) in &outcomes {
        assert_eq!(
            *written, !denied,
            "write of key {key} (denied: {denied}) reported {written}"
        );
    }
    for (key, _, _) in outcomes.iter().filter(|(_, denied, _)| !denied) {
        assert_eq!(
            caches.items().get(key).await,
            Some(value_of(*key)),
            "an allowed write was lost"
        );
    }
    assert!(
        caches.health().await.healthy,
        "refused writes opened the breaker"
    );
    assert_eq!(
        wire::dbsize(&raw).await,
        32 * 20,
        "only the allowed writes landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_sets_keep_their_deadline_against_a_paused_server() {
    let server = RedisServer::new();
    let caches = Caches::new();
    let config = CacheConfig::new()
        .with_response_timeout(Duration::from_millis(100))
        .with_failure_threshold(1_000);
    caches.connect_with(&server.url(), &config).await.unwrap();
    let caches = Arc::new(caches);
    server.pause();
    let handles: Vec<_> = (0..64u64)
        .map(|k| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move {
                let started = Instant::now();
                let written = caches.items().set(&k, &value_of(k)).await;
                (written, started.elapsed())
            })
        })
        .collect();
    for handle in handles {
        let (written, took) = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("a set against a paused server hung")
            .expect("a writer task panicked");
        assert!(
            !written.expect("a valid value"),
            "a write to a paused server succeeded"
        );
        assert!(
            took >= Duration::from_millis(95) && took < Duration::from_millis(400),
            "a set took {took:?} against a 100 ms deadline"
        );
    }
    server.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_reads_and_writes_share_batches_and_each_gets_its_own_reply() {
    // Reads of the fail-safe cache carry a PTTL each and writes follow them in the same
    // pipeline: a reply mapped one place off would give a read another key's value, or
    // fail the batch.
    let server = RedisServer::new();
    let raw = server.raw().await;
    let caches = connected(&server).await;
    populate_timed(&caches, 64).await;
    wire::reset_stats(&raw).await;
    let handles: Vec<_> = (0..64u64)
        .map(|t| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move {
                for r in 0..20u64 {
                    if (t + r) % 2 == 0 {
                        let k = (t + r * 7) % 64;
                        assert_eq!(
                            caches.timed().get(&k).await,
                            Some(value_of(k)),
                            "task {t} round {r}: a timed read got another reply"
                        );
                    } else {
                        let k = 1_000 + t * 20 + r;
                        assert!(
                            caches.items().set(&k, &value_of(k)).await.unwrap(),
                            "task {t} round {r}: a write beside timed reads failed"
                        );
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("the tasks hung")
            .expect("a task panicked");
    }
    let calls = wire::command_calls(&raw).await;
    assert!(
        calls.get("mget").copied().unwrap_or(0) > 0 && calls.get("pttl").copied().unwrap_or(0) > 0,
        "the timed reads were not coalesced: {calls:?}"
    );
    for t in 0..64u64 {
        for r in (0..20u64).filter(|r| (t + r) % 2 == 1) {
            let k = 1_000 + t * 20 + r;
            assert_eq!(caches.items().get(&k).await, Some(value_of(k)));
        }
    }
}

//! Bad and extreme input against a real `redis-server`: empty and huge values, odd and
//! huge keys, out-of-range TTLs, batches of duplicates, 10 000 concurrent callers of one
//! key, and `connect` URLs that are empty, huge or carry control characters.
//!
//! Each input gets the right behaviour or a `CacheError` that names what was wrong and
//! what is allowed, and loses nothing: a rejected call writes and sends nothing, nothing
//! panics, and no message shows a password or a huge input.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_manager::{Cache, CacheError, CacheKey, cache_registry};
use cache_tests::{RedisServer, free_port, wire};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use redis::aio::MultiplexedConnection;

/// Empty strings through bincode.
#[derive(Cache)]
#[cache(namespace = "empty:bincode:text", ttl = 60, key = i64, value = String)]
pub struct EmptyBincodeTextCache;

/// Empty lists through bincode.
#[derive(Cache)]
#[cache(namespace = "empty:bincode:list", ttl = 60, key = i64, value = Vec<u8>)]
pub struct EmptyBincodeListCache;

/// Empty strings through json.
#[derive(Cache)]
#[cache(namespace = "empty:json:text", ttl = 60, key = i64, value = String, codec = "json")]
pub struct EmptyJsonTextCache;

/// Empty lists through json.
#[derive(Cache)]
#[cache(namespace = "empty:json:list", ttl = 60, key = i64, value = Vec<u8>, codec = "json")]
pub struct EmptyJsonListCache;

/// Empty strings through the string codec (a list has no `Display`).
#[derive(Cache)]
#[cache(namespace = "empty:string:text", ttl = 60, key = i64, value = String, codec = "string")]
pub struct EmptyStringTextCache;

/// Large values stored as their raw bytes, so the stored entry can be compared directly.
#[derive(Cache)]
#[cache(namespace = "big:string", ttl = 60, key = i64, value = String, codec = "string")]
pub struct BigStringCache;

/// Large values through bincode.
#[derive(Cache)]
#[cache(namespace = "big:bincode", ttl = 60, key = i64, value = String)]
pub struct BigBincodeCache;

/// Keys with spaces, newlines, NUL bytes and non-ASCII text.
#[derive(Cache)]
#[cache(namespace = "odd:key", ttl = 60, key = String, value = String)]
pub struct OddKeyCache;

/// A key whose text is one megabyte: `fill` repeated, then `tail` in decimal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MegabyteKey {
    /// The character repeated for (almost) a megabyte; never a digit.
    pub fill: char,
    /// What tells keys of the same fill apart.
    pub tail: u32,
}

impl CacheKey for MegabyteKey {
    // Injective: the fill is not a digit, so the text splits back into fill and tail.
    fn write_key(&self, out: &mut String) {
        out.extend(std::iter::repeat_n(self.fill, MEGABYTE));
        self.tail.write_key(out);
    }
}

/// Megabyte keys.
#[derive(Cache)]
#[cache(namespace = "huge:key", ttl = 60, key = MegabyteKey, value = i64)]
pub struct HugeKeyCache;

/// Per-call TTLs.
#[derive(Cache)]
#[cache(namespace = "ttl:probe", ttl = 60, key = i64, value = i64)]
pub struct TtlProbeCache;

/// Batches of duplicate keys.
#[derive(Cache)]
#[cache(namespace = "batch:dup", ttl = 60, key = i64, value = i64)]
pub struct BatchCache;

/// The key 10 000 tasks share, and its neighbours.
#[derive(Cache)]
#[cache(namespace = "hot:key", ttl = 60, key = String, value = String)]
pub struct HotKeyCache;

/// Read-through under a stampede.
#[derive(Cache)]
#[cache(namespace = "loaded", ttl = 60, key = i64, value = String)]
pub struct LoadedCache;

cache_registry! {
    /// Every cache of this suite.
    pub struct Caches {
        empty_bincode_text: EmptyBincodeTextCache,
        empty_bincode_list: EmptyBincodeListCache,
        empty_json_text: EmptyJsonTextCache,
        empty_json_list: EmptyJsonListCache,
        empty_string_text: EmptyStringTextCache,
        big_string: BigStringCache,
        big_bincode: BigBincodeCache,
        odd_key: OddKeyCache,
        huge_key: HugeKeyCache,
        ttl_probe: TtlProbeCache,
        batch: BatchCache,
        hot: HotKeyCache,
        loaded: LoadedCache,
    }
}

const MEGABYTE: usize = 1 << 20;

/// The fingerprint of the suite's cache of `namespace`: the layout a bincode cache keys
/// its entries by, `{namespace}@{fingerprint:08x}:{key}`.
fn fingerprint(namespace: &str) -> u32 {
    Caches::CACHES
        .iter()
        .find(|c| c.namespace == namespace)
        .unwrap_or_else(|| panic!("no cache of namespace `{namespace}`"))
        .fingerprint
}

/// The registry a bincode cache of `namespace` keeps of the layouts of its entries in
/// use (the fingerprints of the value type's versions), next to its entries.
fn layouts_registry(namespace: &str) -> String {
    format!("!layouts!{namespace}:")
}

/// The password of the servers the `connect` tests use; no error may contain it.
const PASSWORD: &str = "Kn0wn-Pw-7f3a9c";

/// The longest error message any bad URL may produce: a fixed text and a few short
/// excerpts, never the input.
const MAX_MESSAGE: usize = 1024;

/// A server, a manager connected to `url_of(server)`, and a raw connection to inspect it.
async fn setup_with(
    url_of: impl FnOnce(&RedisServer) -> String,
) -> (RedisServer, Arc<Caches>, MultiplexedConnection) {
    let server = RedisServer::new();
    let caches = Arc::new(Caches::new());
    caches.connect(&url_of(&server)).await.expect("connect");
    assert!(caches.health().await.healthy, "fresh server not healthy");
    let raw = server.raw().await;
    (server, caches, raw)
}

async fn setup() -> (RedisServer, Arc<Caches>, MultiplexedConnection) {
    setup_with(RedisServer::url).await
}

/// `call`, which must finish within `limit`: a hang is a failure, not a stuck suite.
async fn within<T>(limit: Duration, what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// `len` bytes of printable ASCII whose every 16-byte block carries its own offset, so a
/// shifted, cut or repeated block shows.
fn payload(len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    let mut block = 0usize;
    while out.len() < len {
        out.push_str(&format!("{block:015x}|"));
        block += 1;
    }
    out.truncate(len);
    out
}

fn config_reason(result: Result<(), CacheError>, what: &str) -> String {
    match result {
        Err(CacheError::Config { reason }) => reason,
        Err(other) => panic!("{what}: not a Config error: {other:?}"),
        Ok(()) => panic!("{what}: accepted"),
    }
}

// ---------------------------------------------------------------------------------------
// Empty values
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_values_round_trip_with_every_codec() {
    let (_server, caches, raw) = setup().await;
    let (empty_text, empty_list) = (String::new(), Vec::<u8>::new());

    assert!(
        caches
            .empty_bincode_text()
            .set(&1, &empty_text)
            .await
            .unwrap()
    );
    assert!(
        caches
            .empty_bincode_list()
            .set(&1, &empty_list)
            .await
            .unwrap()
    );
    assert!(caches.empty_json_text().set(&1, &empty_text).await.unwrap());
    assert!(caches.empty_json_list().set(&1, &empty_list).await.unwrap());
    assert!(
        caches
            .empty_string_text()
            .set(&1, &empty_text)
            .await
            .unwrap()
    );

    assert_eq!(
        caches.empty_bincode_text().get(&1).await,
        Some(String::new())
    );
    assert_eq!(caches.empty_bincode_list().get(&1).await, Some(Vec::new()));
    assert_eq!(caches.empty_json_text().get(&1).await, Some(String::new()));
    assert_eq!(caches.empty_json_list().get(&1).await, Some(Vec::new()));
    assert_eq!(
        caches.empty_string_text().get(&1).await,
        Some(String::new())
    );

    // bincode: the 5-byte header, then a zero length.
    for key in [
        caches.empty_bincode_text().redis_key(&1),
        caches.empty_bincode_list().redis_key(&1),
    ] {
        let bytes = wire::get(&raw, &key).await.expect("entry written");
        assert_eq!(
            (bytes.len(), bytes[0], bytes[5]),
            (6, 0xCB, 0),
            "{key}: {bytes:?}"
        );
    }
    assert_eq!(
        wire::get(&raw, "empty:json:text:1").await.as_deref(),
        Some(&b"\"\""[..])
    );
    assert_eq!(
        wire::get(&raw, "empty:json:list:1").await.as_deref(),
        Some(&b"[]"[..])
    );
    // What another service reads with `GET`: an empty string, present, not a missing key.
    assert_eq!(
        wire::get(&raw, "empty:string:text:1").await.as_deref(),
        Some(&b""[..])
    );
    assert!(wire::exists(&raw, "empty:string:text:1").await);
    // And an empty string another service wrote reads as the empty value, not a miss.
    wire::set(&raw, "empty:string:text:2", b"").await;
    assert_eq!(
        caches.empty_string_text().get(&2).await,
        Some(String::new())
    );
    assert_eq!(caches.empty_string_text().stats().corrupt_evicted, 0);
}

// ---------------------------------------------------------------------------------------
// Huge values
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_1_mb_and_64_mb_round_trip_byte_exact() {
    // The response deadline guards against a hung server, not a 64 MB transfer, which
    // can take longer than the default 250 ms on a loaded machine: give it room here.
    let (server, caches, _) =
        setup_with(|s| format!("{}?response_timeout_ms=30000", s.url())).await;
    let limit = Duration::from_secs(60);
    // The harness's raw connection has redis-rs's default deadline, also too short.
    let raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(Some(limit)),
        )
        .await
        .unwrap();
    for (key, len) in [(1, MEGABYTE), (64, 64 * MEGABYTE)] {
        let value = payload(len);
        let set = caches.big_string().set(&key, &value);
        assert!(within(limit, "a big string set", set).await.unwrap());
        let stored = within(
            limit,
            "a raw GET",
            wire::get(&raw, &format!("big:string:{key}")),
        )
        .await
        .expect("entry written");
        assert!(
            stored == value.as_bytes(),
            "{len} bytes stored as {} bytes",
            stored.len()
        );
        let read = within(limit, "a big string get", caches.big_string().get(&key)).await;
        assert!(
            read.as_ref() == Some(&value),
            "{len} bytes read back changed"
        );

        let set = caches.big_bincode().set(&key, &value);
        assert!(within(limit, "a big bincode set", set).await.unwrap());
        let read = within(limit, "a big bincode get", caches.big_bincode().get(&key)).await;
        assert!(
            read.as_ref() == Some(&value),
            "{len} bytes through bincode changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mb_value_under_the_default_deadline_is_bounded_and_never_truncated() {
    let (_server, caches, _raw) = setup().await;
    let value = payload(64 * MEGABYTE);
    // Encoding 64 MB in a debug build takes a moment; the deadline covers the wire.
    let bound = Duration::from_secs(10);
    for key in 0..3 {
        let started = Instant::now();
        let stored = within(bound, "a 64 MB set", caches.big_string().set(&key, &value)).await;
        assert!(
            matches!(stored, Ok(true) | Ok(false)),
            "a 64 MB set returned {stored:?}"
        );
        let read = within(bound, "a 64 MB get", caches.big_string().get(&key)).await;
        let read_len = read.as_ref().map(String::len);
        if let Some(read) = read {
            assert!(
                read == value,
                "a truncated value: {} of {} bytes",
                read.len(),
                value.len()
            );
        }
        eprintln!(
            "64 MB set {stored:?}, get of {read_len:?} bytes, in {:?} with the default deadline",
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Odd and huge keys
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_round_trip_and_never_share_a_redis_key() {
    let (_server, caches, raw) = setup().await;
    let keys: Vec<String> = [
        "",
        " ",
        "a b",
        "a  b",
        "a b ",
        "a\nb",
        "a\r\nb",
        "a\tb",
        "\0",
        "a\0b",
        "a\0",
        "\u{7f}",
        "é",
        "e\u{301}",
        "日本語",
        "😀",
        "a:b",
        "a:",
        ":a",
        "*",
        "{x}",
        "%41",
        "A",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    let cache = caches.odd_key();
    for (i, key) in keys.iter().enumerate() {
        assert!(
            cache.set(key, &format!("value {i}")).await.unwrap(),
            "{key:?}"
        );
    }
    let mut expected: Vec<String> = keys.iter().map(|k| cache.redis_key(k)).collect();
    expected.push(layouts_registry("odd:key"));
    expected.sort();
    assert_eq!(wire::keys(&raw).await, expected, "one Redis key per key");
    let layout = fingerprint("odd:key");
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cache.redis_key(key), format!("odd:key@{layout:08x}:{key}"));
        assert_eq!(cache.get(key).await, Some(format!("value {i}")), "{key:?}");
        assert!(
            wire::get(&raw, &cache.redis_key(key)).await.is_some(),
            "{key:?} is not stored under its redis_key()"
        );
    }
    let read = cache.mget(&keys).await.unwrap();
    assert_eq!(read.len(), keys.len());
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(read[key], Some(format!("value {i}")), "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_keys_round_trip_and_never_share_a_redis_key() {
    let (_server, caches, raw) = setup().await;
    let cache = caches.huge_key();
    let keys = [
        MegabyteKey { fill: 'k', tail: 1 },
        MegabyteKey { fill: 'k', tail: 2 },
        MegabyteKey {
            fill: 'k',
            tail: 12,
        },
        MegabyteKey {
            fill: 'é', tail: 1
        },
    ];
    for (i, key) in (0..).zip(&keys) {
        assert!(cache.set(key, &i).await.unwrap());
    }
    let stored = wire::keys(&raw).await;
    // One Redis key per key, and the cache's registry of layouts.
    assert_eq!(
        stored.len(),
        keys.len() + 1,
        "distinct keys shared a Redis key"
    );
    assert!(stored.contains(&layouts_registry("huge:key")));
    let prefix = format!("huge:key@{:08x}:", fingerprint("huge:key"));
    for (i, key) in (0..).zip(&keys) {
        let redis_key = cache.redis_key(key);
        assert!(redis_key.len() > MEGABYTE && redis_key.starts_with(&prefix));
        assert!(
            stored.contains(&redis_key),
            "tail {} not stored as redis_key()",
            key.tail
        );
        assert_eq!(cache.get(key).await, Some(i));
    }
    let read = cache.mget(&keys).await.unwrap();
    assert_eq!(
        read,
        (0..)
            .zip(&keys)
            .map(|(i, k)| (k.clone(), Some(i)))
            .collect()
    );
}

// ---------------------------------------------------------------------------------------
// TTLs out of range
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_with_ttl_out_of_range_is_rejected_naming_the_value_and_range() {
    let (_server, caches, raw) = setup().await;
    let cache = caches.ttl_probe();
    for (ttl, given) in [
        (Duration::MAX, "got 18446744073709551615.999999999s"),
        (Duration::from_micros(999), "got 999µs"),
    ] {
        let err = cache.set_with_ttl(&1, &1, ttl).await.unwrap_err();
        let CacheError::Validation { namespace, reason } = &err else {
            panic!("{ttl:?}: not a Validation error: {err:?}");
        };
        assert_eq!(*namespace, "ttl:probe");
        assert_eq!(
            reason,
            &format!("a TTL must be from 1 ms to 4611686018427387903 ms, {given}")
        );
        assert!(err.to_string().starts_with("cache `ttl:probe`: "), "{err}");
        assert_eq!(
            wire::dbsize(&raw).await,
            0,
            "{ttl:?}: something was written"
        );
    }
    // The bounds themselves are accepted, by the library and by Redis.
    let longest = Duration::from_millis(4_611_686_018_427_387_903);
    assert!(cache.set_with_ttl(&2, &2, longest).await.unwrap());
    assert!(wire::pttl(&raw, &cache.redis_key(&2)).await > 4_611_686_000_000_000_000);
    assert!(
        cache
            .set_with_ttl(&3, &3, Duration::from_millis(1))
            .await
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Batches of duplicates
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_count_once_against_the_batch_limit() {
    let (_server, caches, raw) = setup().await;
    let cache = caches.batch();
    assert!(cache.set(&7, &70).await.unwrap());
    for copies in [100, 101, 10_000] {
        let read = cache.mget(&vec![7; copies]).await.unwrap();
        assert_eq!(read, HashMap::from([(7, Some(70))]), "{copies} copies");
    }
    // 100 distinct keys, each three times: within the limit.
    let hundred: Vec<i64> = (0..100).flat_map(|k| [k, k, k]).collect();
    let read = cache.mget(&hundred).await.unwrap();
    assert_eq!(read.len(), 100);
    assert_eq!(read[&7], Some(70));

    // One more distinct key is over it, however it is spread: nothing is sent.
    wire::reset_stats(&raw).await;
    let mut over: Vec<i64> = (0..101).collect();
    over.extend(0..101);
    let err = cache.mget(&over).await.unwrap_err();
    let CacheError::Validation { namespace, reason } = &err else {
        panic!("not a Validation error: {err:?}");
    };
    assert_eq!(*namespace, "batch:dup");
    assert_eq!(
        reason,
        "mget of 101 keys exceeds the batch limit of 100; split the keys into chunks of at most 100"
    );
    let calls = wire::command_calls(&raw).await;
    assert_eq!(
        calls.get("mget"),
        None,
        "a rejected batch was sent: {calls:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 10 000 concurrent callers of one key
// ---------------------------------------------------------------------------------------

const TASKS: usize = 10_000;

/// The URL of the get and set stampedes. The default 250 ms deadline is what a burst
/// of 10 000 calls in a debug build on a shared 2-core machine may overrun, turning a
/// varying share of them into misses and `Ok(false)` (by design); these tests are about
/// what each caller gets, so they give the burst room.
fn stampede_url(server: &RedisServer) -> String {
    format!("{}?response_timeout_ms=5000", server.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_gets_of_one_key_return_its_value_or_none() {
    let (_server, caches, _raw) = setup_with(stampede_url).await;
    let hot = "hot".to_owned();
    assert!(
        caches
            .hot()
            .set(&hot, &"hot value".to_owned())
            .await
            .unwrap()
    );
    // Neighbours read at the same time share the coalesced MGETs: a reply mapped to the
    // wrong caller would hand one of them the hot value, or the hot key theirs.
    for n in 0..10 {
        let key = format!("neighbour {n}");
        assert!(
            caches
                .hot()
                .set(&key, &format!("value of {key}"))
                .await
                .unwrap()
        );
    }
    let tasks: Vec<_> = (0..TASKS + 1000)
        .map(|i| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move {
                let (key, value) = if i < TASKS {
                    ("hot".to_owned(), "hot value".to_owned())
                } else {
                    let key = format!("neighbour {}", i % 10);
                    let value = format!("value of {key}");
                    (key, value)
                };
                match caches.hot().get(&key).await {
                    Some(got) if got == value => Ok(true),
                    Some(got) => Err(format!("{key:?} read {got:?}")),
                    None => Ok(false),
                }
            })
        })
        .collect();
    let (mut hits, mut crossed) = (0, Vec::new());
    for task in within(Duration::from_secs(60), "10 000 gets", join_in_order(tasks)).await {
        match task.expect("a reader panicked") {
            Ok(hit) => hits += usize::from(hit),
            Err(wrong) => crossed.push(wrong),
        }
    }
    assert!(
        crossed.is_empty(),
        "{} reads got another key's value, e.g. {:?}",
        crossed.len(),
        &crossed[..crossed.len().min(3)]
    );
    eprintln!("{hits} of {} concurrent gets hit", TASKS + 1000);
    assert!(hits > (TASKS + 1000) / 2, "only {hits} gets hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_sets_of_one_key_all_return_ok() {
    let (_server, caches, raw) = setup_with(stampede_url).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move { caches.hot().set(&"hot".to_owned(), &format!("v{i}")).await })
        })
        .collect();
    let mut stored = 0;
    for result in within(Duration::from_secs(60), "10 000 sets", join_in_order(tasks)).await {
        match result.expect("a writer panicked") {
            Ok(true) => stored += 1,
            Ok(false) => {}
            Err(e) => panic!("a set of a valid value failed: {e}"),
        }
    }
    let stats = caches.hot().stats();
    eprintln!(
        "{stored} of {TASKS} concurrent sets stored; {} degraded, {} timed out",
        stats.degraded, stats.timeouts
    );
    assert!(stored > TASKS / 2, "only {stored} sets stored");
    // One of the written values, whole, is what remains.
    let last = caches
        .hot()
        .get(&"hot".to_owned())
        .await
        .expect("a value remains");
    let i: usize = last
        .strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .expect(&last);
    assert!(i < TASKS, "{last}");
    assert_eq!(
        wire::keys(&raw).await,
        [
            layouts_registry("hot:key"),
            caches.hot().redis_key(&"hot".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_get_or_loads_of_a_missing_key_load_it_once() {
    let (_server, caches, raw) = setup().await;
    let started = Arc::new(AtomicUsize::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (caches, started, loads) = (
                Arc::clone(&caches),
                Arc::clone(&started),
                Arc::clone(&loads),
            );
            tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                caches
                    .loaded()
                    .get_or_load(&1, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        // Every caller has begun, and each one's cache read has ended
                        // (hit, miss or its 250 ms deadline) before the load does: all
                        // of them join this flight, so exactly one load is right.
                        while started.load(Ordering::SeqCst) < TASKS {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok::<_, std::convert::Infallible>(Some("loaded once".to_owned()))
                    })
                    .await
            })
        })
        .collect();
    for result in within(
        Duration::from_secs(60),
        "10 000 get_or_loads",
        join_in_order(tasks),
    )
    .await
    {
        let value = result.expect("a caller panicked").unwrap();
        assert_eq!(value.as_deref(), Some("loaded once"));
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the loader ran more than once"
    );
    assert_eq!(
        wire::keys(&raw).await,
        [layouts_registry("loaded"), caches.loaded().redis_key(&1)]
    );
    assert_eq!(
        caches.loaded().get(&1).await.as_deref(),
        Some("loaded once")
    );
}

/// Awaits every task, in order.
async fn join_in_order<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Bad connect URLs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_an_empty_url_says_it_is_empty() {
    let caches = Caches::new();
    for url in ["", "   "] {
        let reason = config_reason(caches.connect(url).await, url);
        assert_eq!(
            reason,
            "the cache URL is empty; expected e.g. `redis://:password@127.0.0.1:6379/0` or `memory://`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_100_kb_url_is_refused_without_echoing_it() {
    let caches = Caches::new();
    let big = 100 * 1024;
    for (what, url) in [
        ("long host", format!("redis://{}:6379/0", "h".repeat(big))),
        (
            "long password",
            format!("redis://:{PASSWORD}{}@127.0.0.1/0", "p".repeat(big)),
        ),
        (
            "long option value",
            format!(
                "redis://:{PASSWORD}@127.0.0.1/0?response_timeout_ms={}",
                "9".repeat(big)
            ),
        ),
    ] {
        let reason = config_reason(caches.connect(&url).await, what);
        assert_eq!(
            reason,
            format!(
                "the cache URL is {} bytes long; at most 16384 bytes are allowed",
                url.len()
            ),
            "{what}"
        );
        assert!(reason.len() < 100 && !reason.contains(PASSWORD), "{what}");
    }
    // Under the limit, a long option value is shown as a short prefix.
    let url = format!(
        "redis://:{PASSWORD}@127.0.0.1/0?response_timeout_ms={}",
        "9".repeat(10_000)
    );
    let reason = config_reason(caches.connect(&url).await, "a 10 kB option value");
    assert!(
        reason.len() < 200 && reason.contains("not `9999"),
        "{reason}"
    );
    assert!(!reason.contains(PASSWORD), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_control_character_anywhere_is_refused() {
    // A real server behind every URL: were a character stripped instead of refused,
    // `connect` would succeed against it.
    let server = RedisServer::with_password(PASSWORD);
    let port = server.port();
    let caches = Caches::new();
    for control in ['\n', '\r', '\t', '\0', '\u{7f}'] {
        let code = format!("U+{:04X}", u32::from(control));
        for (part, url) in [
            (
                "host",
                format!("redis://:{PASSWORD}@127.0.0{control}.1:{port}/0"),
            ),
            (
                "path",
                format!("redis://:{PASSWORD}@127.0.0.1:{port}/{control}0"),
            ),
            (
                "password",
                format!("redis://:{PASSWORD}{control}@127.0.0.1:{port}/0"),
            ),
            (
                "query",
                format!("redis://:{PASSWORD}@127.0.0.1:{port}/0?coalesce=true{control}"),
            ),
        ] {
            let at = url.find(control).unwrap();
            let reason =
                config_reason(caches.connect(&url).await, &format!("{code} in the {part}"));
            assert_eq!(
                reason,
                format!(
                    "the cache URL contains a control character ({code}) at byte {at}; percent-encode it or remove it"
                ),
                "{part}"
            );
        }
    }
    // The same URL without the character connects.
    caches.connect(&server.url()).await.unwrap();
    assert!(caches.health().await.healthy);
}

/// Connects a fresh manager to `url` and checks the outcome: `Ok`, or a `Config` error
/// that never shows the password and stays short.
fn check_connect(runtime: &tokio::runtime::Runtime, url: &str) -> Result<(), TestCaseError> {
    let caches = Caches::new();
    let result = runtime.block_on(async {
        let result = within(Duration::from_secs(10), "connect", caches.connect(url)).await;
        caches.disconnect().await;
        result
    });
    match result {
        Ok(()) => Ok(()),
        Err(CacheError::Config { reason }) => {
            prop_assert!(!reason.contains(PASSWORD), "the password in: {reason}");
            prop_assert!(
                reason.len() <= MAX_MESSAGE,
                "{} bytes: {reason}",
                reason.len()
            );
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not a Config error: {other:?}"
        ))),
    }
}

/// Whether connecting to `url` could reach anything but one of `ports` on 127.0.0.1:
/// the suite sends nothing elsewhere, nor to services it did not start, so such
/// generated URLs are not connected.
fn reaches_beyond(url: &str, ports: &[u16]) -> bool {
    let lower = url.to_ascii_lowercase();
    if !lower.contains("redis") {
        return false; // `memory://` or an unknown scheme: nothing is connected.
    }
    if lower.contains("cluster") {
        return true; // Cluster URLs name their nodes in a syntax of their own.
    }
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => {
            parsed.host_str() != Some("127.0.0.1")
                || !parsed.port().is_some_and(|port| ports.contains(&port))
        }
        _ => false,
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn connect_never_panics_on_arbitrary_text() {
    let runtime = runtime();
    // Any text at all, and text made of what URLs are made of, with and without
    // control characters (which are refused before anything else is looked at).
    let text = prop_oneof![
        any::<String>(),
        "[a-z0-9:/@?#%&=+.,\\[\\] é-]{0,48}",
        "[a-z0-9:/@?#%&=+.,\\[\\] \\t\\n\\r\\x00\\x7f\\u{85}é-]{0,48}",
        "(redis|rediss|memory|REDIS|redis\\+cluster)://[a-z0-9:/@?#%&=+.,\\[\\] é-]{0,48}",
    ];
    runner(1024)
        .run(&text, |input| {
            if reaches_beyond(&input, &[]) {
                return Ok(());
            }
            check_connect(&runtime, &input)
        })
        .unwrap();
}

#[test]
fn connect_never_panics_or_shows_the_password_on_urls_of_arbitrary_parts() {
    let server = RedisServer::with_password(PASSWORD);
    let (open, closed) = (server.port(), free_port());
    let runtime = runtime();
    let junk = "[a-zA-Z0-9:/@?#%&=+.,\\[\\] é-]{0,8}";
    let scheme = prop_oneof![
        6 => Just("redis".to_owned()),
        1 => Just("rediss".to_owned()),
        1 => Just("memory".to_owned()),
        1 => Just("REDIS".to_owned()),
        1 => "[a-z+]{0,8}",
    ];
    // A user name that is a loopback host: when an unencoded `/` or `?` in the password
    // ends the userinfo early, the URL still points at 127.0.0.1, and is connected.
    let user = prop_oneof![
        Just(String::new()),
        Just("default".to_owned()),
        Just("127.0.0.1".to_owned()),
        junk.prop_map(|s| s),
    ];
    // The password as written: the known one, alone or inside other characters, which
    // may end the userinfo early (an unencoded `/`, `?`, `#` or `@`).
    // With the user name `127.0.0.1`, a password starting `{port}/` reads as that port
    // on loopback, and the rest of it as the path.
    let early_end = (prop::sample::select(vec![open, closed]), "[/?#]")
        .prop_map(|(port, end)| format!("{port}{end}"));
    let before = prop_oneof![junk.prop_map(|s| s), early_end];
    let password = (before, prop::bool::ANY, junk).prop_map(|(before, encoded, after)| {
        let known = if encoded {
            PASSWORD.replace('-', "%2D")
        } else {
            PASSWORD.to_owned()
        };
        format!("{before}{known}{after}")
    });
    let host = prop_oneof![4 => Just("127.0.0.1".to_owned()), 1 => junk.prop_map(|s| s)];
    let port = prop_oneof![
        Just(String::new()),
        Just(format!(":{open}")),
        Just(format!(":{closed}")),
        "[1-9][0-9]{5,7}".prop_map(|p| format!(":{p}")),
        junk.prop_map(|p| format!(":{p}")),
    ];
    let path = prop_oneof![
        Just(String::new()),
        Just("/0".to_owned()),
        "/[0-9]{1,6}",
        junk.prop_map(|p| format!("/{p}")),
    ];
    let option = prop_oneof![
        Just("response_timeout_ms"),
        Just("connect_timeout_ms"),
        Just("failure_threshold"),
        Just("coalesce"),
        Just("ca_file"),
        Just("backoff_max_ms"),
        Just("nonsense"),
    ];
    let value = prop_oneof![
        "[0-9]{1,6}",
        Just("true".to_owned()),
        Just("%0A".to_owned()),
        junk.prop_map(|v| v),
    ];
    let query = prop::collection::vec((option, value), 0..3).prop_map(|pairs| {
        if pairs.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("?{}", pairs.join("&"))
    });
    let url = (scheme, user, password, host, port, path, query).prop_map(
        |(scheme, user, password, host, port, path, query)| {
            format!("{scheme}://{user}:{password}@{host}{port}{path}{query}")
        },
    );
    // One URL in five with a control character somewhere.
    let controls = prop::sample::select(vec!['\n', '\r', '\t', '\0', '\u{7f}', '\u{85}']);
    let url = (
        url,
        prop::bool::weighted(0.2),
        any::<prop::sample::Index>(),
        controls,
    )
        .prop_map(|(mut url, insert, at, control)| {
            if insert {
                let at = url
                    .char_indices()
                    .nth(at.index(url.chars().count()))
                    .unwrap()
                    .0;
                url.insert(at, control);
            }
            url
        });
    runner(256)
        .run(&url, |url| {
            if reaches_beyond(&url, &[open, closed]) {
                return Ok(());
            }
            check_connect(&runtime, &url)
        })
        .unwrap();
}

//! `redis+sentinel://` against a real deployment on loopback (`tests/src/sentinel.rs`: a
//! master, a replica, three sentinels): the manager connects to the master the sentinels
//! name, follows a failover by itself under load (no wrong read, writes back within a
//! bounded delay of the promotion, the restarted old master never used), degrades when
//! no sentinel answers or the master name is wrong, keeps its first level coherent across
//! the switch, and never shows either password.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_manager::{Cache, CacheConfig, CacheError, HealthStatus, cache_registry};
use cache_tests::sentinel::{DOWN_AFTER, MASTER_NAME, SentinelGroup};
use cache_tests::{Watchdog, wire};
use redis::aio::MultiplexedConnection;

/// Text values, so what reached a server can be read back raw.
#[derive(Cache)]
#[cache(namespace = "sentinel:item", ttl = 600, key = u64, value = String, codec = "string")]
struct Items;

/// The same with a first level kept coherent by Redis's tracking.
#[derive(Cache)]
#[cache(namespace = "sentinel:local", ttl = 600, key = u64, value = String, codec = "string", local = 1000, local_ttl = 600)]
struct Locals;

cache_registry! {
    struct Caches {
        items: Items,
        locals: Locals,
    }
}

const DATA_PASSWORD: &str = "data-Pa55/word";
const SENTINEL_PASSWORD: &str = "sentinel+Pa55";

/// Runs one cache call, failing the test if it takes 2 s or more.
async fn quick<F: Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than 2 s"))
}

/// Polls `check` until it holds, for up to `limit`.
async fn within<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut check: F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(url: &str) -> Caches {
    let caches = Caches::new();
    caches.connect(url).await.expect("connect");
    caches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_through_the_sentinels_and_health_names_master_and_sentinels() {
    let _watchdog = Watchdog::start("the sentinel connect test", Duration::from_secs(60));
    let group = SentinelGroup::builder()
        .password(DATA_PASSWORD)
        .sentinel_password(SENTINEL_PASSWORD)
        .start();
    let caches = connected(&group.url()).await;
    let items = caches.items();
    assert!(
        quick("set", items.set(&1, &"one".to_owned()))
            .await
            .unwrap()
    );
    assert_eq!(quick("get", items.get(&1)).await.as_deref(), Some("one"));
    let found = quick("mget", items.mget(&[1, 2])).await.unwrap();
    assert_eq!(
        found,
        HashMap::from([(1, Some("one".to_owned())), (2, None)])
    );

    // Written to the master, not to the replica's own dataset.
    let master = group.master.raw().await;
    assert_eq!(
        wire::get(&master, "sentinel:item:1").await.as_deref(),
        Some(&b"one"[..])
    );

    let health = caches.health().await;
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.backend, "redis-sentinel");
    let sentinel = health.sentinel.clone().expect("a sentinel section");
    assert_eq!(sentinel.master_name, MASTER_NAME);
    assert_eq!(
        sentinel.master.as_deref(),
        Some(format!("127.0.0.1:{}", group.master.port()).as_str())
    );
    let mut answered = sentinel.answered.clone();
    answered.sort();
    let mut expected: Vec<String> = group
        .sentinel_ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    expected.sort();
    assert_eq!(answered, expected);
    assert!(sentinel.unreachable.is_empty(), "{sentinel:?}");
    assert_eq!(sentinel.last_switch_unix_ms, None);
    assert_eq!(sentinel.switches, 0);

    // Neither password anywhere a person or a log could see.
    let url = health.url.clone().unwrap();
    assert!(url.starts_with("redis+sentinel://:***@127.0.0.1:"), "{url}");
    let shown = [
        format!("{health:?}"),
        serde_json::to_string(&health).unwrap(),
        format!("{caches:?}"),
    ];
    for text in shown {
        for secret in ["Pa55", "data-Pa55", "sentinel+Pa55", "sentinel Pa55"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_and_coalescing_work_through_the_sentinels() {
    let _watchdog = Watchdog::start("the sentinel clear test", Duration::from_secs(60));
    let group = SentinelGroup::builder().start();
    let caches = Arc::new(connected(&group.url()).await);
    let items = caches.items();
    let master = group.master.raw().await;
    let keys: Vec<u64> = (0..200).collect();
    let entries: HashMap<u64, String> = keys.iter().map(|k| (*k, format!("item-{k}"))).collect();
    for chunk in keys.chunks(100) {
        let batch: HashMap<u64, String> = chunk.iter().map(|k| (*k, entries[k].clone())).collect();
        quick("mset", items.mset(&batch)).await.unwrap();
    }
    // Another namespace's key on the same master, which clear must leave.
    wire::set(&master, "sentinel:other:1", b"kept").await;

    // 200 concurrent gets: over the threshold, they go out as MGETs to the master.
    wire::reset_stats(&master).await;
    let gets: Vec<_> = keys
        .iter()
        .map(|&k| {
            let caches = Arc::clone(&caches);
            tokio::spawn(async move { (k, caches.items().get(&k).await) })
        })
        .collect();
    for get in gets {
        let (k, got) = quick("a concurrent get", get).await.expect("no panic");
        assert_eq!(got.as_deref(), Some(format!("item-{k}").as_str()));
    }
    let calls = wire::command_calls(&master).await;
    assert!(
        calls.contains_key("mget"),
        "no get was coalesced: {calls:?}"
    );

    let removed = quick("clear", items.clear()).await;
    assert_eq!(removed, 200);
    for k in [0, 99, 199] {
        assert!(!wire::exists(&master, &items.redis_key(&k)).await);
        assert_eq!(quick("get", items.get(&k)).await, None);
    }
    assert!(wire::exists(&master, "sentinel:other:1").await);
}

/// Waits, at most `limit`, until a client holds a subscription on `sentinel`.
async fn until_subscribed(sentinel: &MultiplexedConnection, what: &str, limit: Duration) {
    within(what, limit, async || {
        !wire::client_ids(sentinel, |flags| flags.contains('P'))
            .await
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_that_cuts_off_every_subscription_is_not_resubscribed_to_at_once() {
    // The manager subscribes to `+switch-master` on every sentinel. One whose clients are
    // killed as soon as they subscribe (a script, a proxy) must see new subscriptions
    // back off, as a server that refuses them does.
    let _watchdog = Watchdog::start("the sentinel resubscription test", Duration::from_secs(60));
    let group = SentinelGroup::builder().start();
    let caches = connected(&group.url()).await;
    let port = group.sentinel_ports()[0];
    let sentinel = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    until_subscribed(
        &sentinel,
        "the manager to subscribe",
        Duration::from_secs(5),
    )
    .await;
    let before = wire::connections_received(&sentinel).await;
    let kills = wire::kill_clients_for(
        &sentinel,
        |flags| flags.contains('P'),
        Duration::from_secs(3),
    )
    .await;
    let connections = wire::connections_received(&sentinel).await - before;
    println!(
        "{connections} connections to the sentinel in 3 s, each subscription killed at once ({kills} kills)"
    );
    // Backing off from 50 ms: at most 8 subscriptions, each followed by an ask for the
    // master (a subscription may have missed a switch), and the periodic ask. Without
    // the backoff: over a hundred.
    assert!(
        connections <= 24,
        "{connections} connections in 3 s to a sentinel that kills every subscription: no backoff"
    );
    // Left alone, the manager subscribes again, and its calls never stopped working.
    until_subscribed(
        &sentinel,
        "the manager to subscribe again",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        quick("set", caches.items().set(&1, &"one".to_owned()))
            .await
            .unwrap()
    );
}

/// What the loaders of the failover test saw.
#[derive(Default)]
struct Observed {
    wrong_reads: AtomicU64,
    writes: AtomicU64,
    failed_writes: AtomicU64,
    /// When the master was killed.
    killed_at: OnceLock<Instant>,
    /// When the first write started after the kill completed successfully.
    first_write_after_kill: Mutex<Option<Instant>>,
}

/// Loops writing values that spell their key, and checks every read is either nothing
/// or the value of its own key.
async fn load(caches: Arc<Caches>, task: u64, stop: Arc<AtomicBool>, observed: Arc<Observed>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = task * 1000 + n % 16;
        let started = Instant::now();
        let value = format!("key={key};n={n}");
        match caches.items().set(&key, &value).await {
            Ok(true) => {
                observed.writes.fetch_add(1, Ordering::Relaxed);
                if observed.killed_at.get().is_some_and(|k| started > *k) {
                    let mut first = observed.first_write_after_kill.lock().unwrap();
                    first.get_or_insert_with(Instant::now);
                }
            }
            _ => {
                observed.failed_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        let own = |key: u64, value: &Option<String>| {
            value
                .as_deref()
                .is_none_or(|v| v.starts_with(&format!("key={key};")))
        };
        if !own(key, &caches.items().get(&key).await) {
            observed.wrong_reads.fetch_add(1, Ordering::Relaxed);
        }
        let other = task * 1000 + (n + 7) % 16;
        if let Ok(found) = caches.items().mget(&[key, other]).await
            && !found.iter().all(|(k, v)| own(*k, v))
        {
            observed.wrong_reads.fetch_add(1, Ordering::Relaxed);
        }
        // A short pause keeps the load steady without flooding the logs while down.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `command` (an `INFO` or `CLIENT LIST`) on the old master, on a new connection for each
/// try: when the sentinels demote it they close every normal client
/// (`CLIENT KILL TYPE normal`), this test's own connection too.
async fn on_old_master(server: &cache_tests::RedisServer, command: &redis::Cmd) -> String {
    for _ in 0..5 {
        let mut conn = server.raw().await;
        if let Ok(text) = command.query_async::<String>(&mut conn).await {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the old master did not answer five tries");
}

/// Commands of this library that must never reach the restarted old master: the clients
/// on it that are not its replication link or a sentinel, with their last command.
async fn foreign_commands(old_master: &cache_tests::RedisServer) -> Vec<String> {
    const OURS: [&str; 9] = [
        "set",
        "get",
        "mget",
        "del",
        "publish",
        "eval",
        "pttl",
        "hello",
        "client|tracking",
    ];
    on_old_master(old_master, redis::cmd("CLIENT").arg("LIST"))
        .await
        .lines()
        .map(str::to_owned)
        .filter(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            !field("flags=").contains('M')
                && !field("name=").starts_with("sentinel-")
                && OURS.contains(&field("cmd=").as_str())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_under_load_without_wrong_reads() {
    let _watchdog = Watchdog::start("the sentinel failover test", Duration::from_secs(120));
    let mut group = SentinelGroup::start();
    let caches = Arc::new(connected(&group.url()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Observed::default());
    let loaders: Vec<_> = (1..=4)
        .map(|task| {
            tokio::spawn(load(
                Arc::clone(&caches),
                task,
                Arc::clone(&stop),
                Arc::clone(&observed),
            ))
        })
        .collect();
    within("the first writes", Duration::from_secs(5), async || {
        observed.writes.load(Ordering::Relaxed) > 100
    })
    .await;

    let replica_port = group.replica.port();
    tokio::task::block_in_place(|| group.master.kill());
    let killed_at = Instant::now();
    observed.killed_at.set(killed_at).unwrap();
    // When the sentinels name the replica, polled beside the load.
    let promoted_at = tokio::task::block_in_place(|| {
        group.wait_for_master(replica_port, Duration::from_secs(30));
        Instant::now()
    });
    within(
        "a write on the promoted replica",
        Duration::from_secs(10),
        async || observed.first_write_after_kill.lock().unwrap().is_some(),
    )
    .await;
    let resumed_at = observed.first_write_after_kill.lock().unwrap().unwrap();
    let failover = promoted_at - killed_at;
    let resumed = resumed_at - killed_at;
    println!(
        "sentinel failover: sentinels named the replica {} ms after the master was killed; first successful write {} ms after the kill ({} ms after the promotion was visible; down-after-milliseconds {})",
        failover.as_millis(),
        resumed.as_millis(),
        resumed.saturating_sub(failover).as_millis(),
        DOWN_AFTER.as_millis(),
    );
    // The announcement wakes the manager at once; a poll of the sentinels every 50 ms
    // sees the promotion up to 50 ms late, so the write may even come first.
    assert!(
        resumed <= failover + Duration::from_secs(1),
        "writes resumed {resumed:?} after the kill, the promotion was seen after {failover:?}"
    );

    // The old master comes back, empty and believing it is a master until the
    // sentinels demote it: nothing of this library may reach it.
    tokio::task::block_in_place(|| group.master.restart());
    let until = Instant::now() + Duration::from_secs(4);
    let writes_before = observed.writes.load(Ordering::Relaxed);
    while Instant::now() < until {
        let foreign = foreign_commands(&group.master).await;
        assert!(foreign.is_empty(), "the old master was used: {foreign:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = on_old_master(&group.master, redis::cmd("INFO").arg("commandstats")).await;
    for command in ["get", "mget", "pttl", "hello", "eval"] {
        assert!(
            !stats.contains(&format!("cmdstat_{command}:")),
            "the old master served {command}: {stats}"
        );
    }
    assert!(
        observed.writes.load(Ordering::Relaxed) > writes_before + 100,
        "writes stopped while the old master came back"
    );

    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        quick("a loader's end", loader).await.unwrap();
    }
    assert_eq!(observed.wrong_reads.load(Ordering::Relaxed), 0);

    let health = caches.health().await;
    assert!(health.healthy, "{health:?}");
    let sentinel = health.sentinel.expect("a sentinel section");
    assert_eq!(
        sentinel.master.as_deref(),
        Some(format!("127.0.0.1:{replica_port}").as_str())
    );
    assert_eq!(sentinel.switches, 1, "{sentinel:?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let switched = sentinel
        .last_switch_unix_ms
        .expect("the time of the switch");
    assert!(now_ms - switched < 60_000, "{switched} vs {now_ms}");
    // And the data is on the promoted replica.
    let promoted = group.replica.raw().await;
    assert!(wire::dbsize(&promoted).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_announcement_ends_the_reconnection_wait() {
    let _watchdog = Watchdog::start("the announcement test", Duration::from_secs(90));
    let mut group = SentinelGroup::start();
    // A reconnection backoff far longer than the failover: only the sentinels'
    // `+switch-master` can bring the connection back in time.
    let backoff = Duration::from_secs(20);
    let config = CacheConfig::new().with_backoff(backoff, backoff);
    let caches = Caches::new();
    caches.connect_with(&group.url(), &config).await.unwrap();
    assert!(caches.items().set(&1, &"one".to_owned()).await.unwrap());

    let replica_port = group.replica.port();
    tokio::task::block_in_place(|| group.master.kill());
    let killed_at = Instant::now();
    // The first call after the kill opens the breaker; the attempt that follows finds
    // the old master gone and waits.
    let _ = caches.items().set(&1, &"lost".to_owned()).await;
    let promoted_at = tokio::task::block_in_place(|| {
        group.wait_for_master(replica_port, Duration::from_secs(30));
        Instant::now()
    });
    within(
        "a write on the promoted replica",
        Duration::from_secs(5),
        async || caches.items().set(&1, &"two".to_owned()).await.unwrap(),
    )
    .await;
    let resumed = killed_at.elapsed();
    assert!(
        resumed < (promoted_at - killed_at) + Duration::from_secs(1),
        "writes resumed {resumed:?} after the kill, the promotion was seen after {:?}",
        promoted_at - killed_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_server_that_is_not_a_master_is_never_used() {
    let _watchdog = Watchdog::start("the ROLE test", Duration::from_secs(60));
    let group = SentinelGroup::start();
    let master = group.master.raw().await;
    wire::set(&master, "sentinel:item:1", b"one").await;
    let replica = group.replica.raw().await;
    within("replication of key 1", Duration::from_secs(5), async || {
        wire::get(&replica, "sentinel:item:1").await.is_some()
    })
    .await;
    // The sentinels now name the replica: out of date, as after a failover not yet seen.
    tokio::task::block_in_place(|| group.monitor(group.replica.port()));
    wire::reset_stats(&replica).await;

    let caches = connected(&group.url()).await;
    assert_eq!(quick("get", caches.items().get(&1)).await, None);
    assert!(
        !quick("set", caches.items().set(&2, &"x".to_owned()))
            .await
            .unwrap()
    );
    let health = quick("health", caches.health()).await;
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    let error = health.error.unwrap_or_default();
    assert!(error.contains("not a master"), "{error}");
    let calls = wire::command_calls(&replica).await;
    assert!(
        !calls.contains_key("get"),
        "the replica served a get: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_sentinel_answering_calls_degrade_and_health_says_why() {
    let _watchdog = Watchdog::start("the sentinels-down test", Duration::from_secs(60));
    let mut group = SentinelGroup::start();
    // Connected first: the master in use stays while the sentinels are gone.
    let before = connected(&group.url()).await;
    group.kill_sentinels();
    assert!(
        quick("set", before.items().set(&1, &"one".to_owned()))
            .await
            .unwrap()
    );
    let health = quick("health", before.health()).await;
    assert!(health.healthy, "{health:?}");
    let sentinel = health.sentinel.unwrap();
    assert!(sentinel.answered.is_empty(), "{sentinel:?}");
    assert_eq!(sentinel.unreachable.len(), 3, "{sentinel:?}");

    // A manager connecting now finds no master: degraded, not an error, never a hang.
    let config = CacheConfig::new().with_connect_timeout(Duration::from_millis(300));
    let after = Caches::new();
    quick("connect", after.connect_with(&group.url(), &config))
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(quick("get", after.items().get(&1)).await, None);
        assert!(
            !quick("set", after.items().set(&1, &"x".to_owned()))
                .await
                .unwrap()
        );
        assert_eq!(quick("local get", after.locals().get(&1)).await, None);
    }
    let health = quick("health", after.health()).await;
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    assert!(!health.healthy);
    let error = health.error.unwrap_or_default();
    assert!(error.contains("no sentinel answered"), "{error}");
    assert!(after.stats().iter().any(|s| s.degraded > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_name_degrades_with_a_clear_health_error() {
    let _watchdog = Watchdog::start("the wrong master name test", Duration::from_secs(60));
    let group = SentinelGroup::start();
    let url = group
        .url()
        .replace(&format!("/{MASTER_NAME}/"), "/nosuchmaster/");
    let caches = connected(&url).await;
    assert_eq!(quick("get", caches.items().get(&1)).await, None);
    assert!(
        !quick("set", caches.items().set(&1, &"x".to_owned()))
            .await
            .unwrap()
    );
    let health = quick("health", caches.health()).await;
    assert_eq!(health.status, HealthStatus::Degraded);
    let error = health.error.unwrap_or_default();
    assert!(
        error.contains("no sentinel knows a master named `nosuchmaster`"),
        "{error}"
    );
    assert_eq!(health.sentinel.unwrap().answered.len(), 3);
    assert_eq!(wire::dbsize(&group.master.raw().await).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sentinel_urls_are_config_errors_that_hide_both_passwords() {
    let manager = Caches::new();
    for (url, expected) in [
        (
            "redis+sentinel://:s3cret@127.0.0.1:26379",
            "names no master",
        ),
        (
            "redis+sentinel://:s3cret@127.0.0.1:26379/",
            "names no master",
        ),
        ("redis+sentinel:///mymaster", "names an empty sentinel"),
        (
            "redis+sentinel://:s3cret@h:1,,h:2/mymaster",
            "names an empty sentinel",
        ),
        (
            "redis+sentinel://:s3cret@h:99999/mymaster",
            "sentinel `h:99999` is not a host:port",
        ),
        (
            "redis+sentinel://:s3cret@h:1/mymaster/x",
            "`/MASTER_NAME/db`",
        ),
        (
            "redis+sentinel://:s3cret@h:1/my*master/0",
            "may hold only ASCII letters",
        ),
        (
            "redis+sentinel://:s3cret@h:1/mymaster?sentinel_password=t0ps3cret&tiemout=1",
            "unknown option `tiemout`",
        ),
        ("redis+sentinel://:s3cret@h:1/mymaster#insecure", "fragment"),
        (
            "redis://:s3cret@h:1/0?sentinel_password=t0ps3cret",
            "applies to `redis+sentinel://`",
        ),
        (
            "redis+sentinel://:s3cret@h:1/mymaster?ca_file=/tmp/ca.pem",
            "applies to TLS only",
        ),
    ] {
        match manager.connect(url).await {
            Err(CacheError::Config { reason }) => {
                assert!(reason.contains(expected), "{url}: {reason}");
                assert!(
                    !reason.contains("s3cret") && !reason.contains("t0ps3cret"),
                    "{url}: {reason}"
                );
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    // Nothing was connected by the refused URLs.
    assert_eq!(manager.health().await.status, HealthStatus::Disconnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_level_is_emptied_on_a_switch_and_stays_coherent() {
    let _watchdog = Watchdog::start("the first level failover test", Duration::from_secs(90));
    let mut group = SentinelGroup::start();
    let url = group.url();
    let (a, b) = (connected(&url).await, connected(&url).await);
    let master = group.master.raw().await;
    within(
        "both listeners' tracking",
        Duration::from_secs(5),
        async || wire::tracking_clients(&master).await == 2,
    )
    .await;

    // a holds the master's value in its level; the replica is made to hold another
    // (written to it directly, which replication never sees).
    assert!(a.locals().set(&7, &"from-master".to_owned()).await.unwrap());
    within("replication of key 7", Duration::from_secs(5), async || {
        wire::get(&group.replica.raw().await, "sentinel:local:7")
            .await
            .is_some()
    })
    .await;
    hold(&a, &master, 7, "from-master").await;
    let replica = group.replica.raw().await;
    wire::config_set(&replica, "replica-read-only", "no").await;
    wire::set(&replica, "sentinel:local:7", b"from-replica").await;
    wire::config_set(&replica, "replica-read-only", "yes").await;

    tokio::task::block_in_place(|| group.master.kill());
    within(
        "a write after the failover",
        Duration::from_secs(30),
        async || a.items().set(&1, &"x".to_owned()).await.unwrap(),
    )
    .await;
    // The level let go of the old master's value at the switch.
    assert_eq!(
        a.locals().get(&7).await.as_deref(),
        Some("from-replica"),
        "the first level kept a value of the old master"
    );

    // It serves hits again, kept coherent by tracking on the new master.
    let promoted = group.replica.raw().await;
    within(
        "both listeners on the new master",
        Duration::from_secs(5),
        async || wire::tracking_clients(&promoted).await == 2,
    )
    .await;
    hold(&a, &promoted, 7, "from-replica").await;
    assert!(b.locals().set(&7, &"from-b".to_owned()).await.unwrap());
    within(
        "b's write to reach a's level",
        Duration::from_millis(500),
        async || a.locals().get(&7).await.as_deref() == Some("from-b"),
    )
    .await;
    let health = a.health().await;
    assert_eq!(health.sentinel.unwrap().switches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_sentinel_connects_and_follows_a_failover_over_tls() {
    let _watchdog = Watchdog::start("the TLS sentinel test", Duration::from_secs(90));
    let mut group = SentinelGroup::builder()
        .tls()
        .password(DATA_PASSWORD)
        .start();
    let url = group.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let caches = connected(&url).await;
    assert!(
        quick("set", caches.items().set(&1, &"one".to_owned()))
            .await
            .unwrap()
    );
    assert_eq!(
        quick("get", caches.items().get(&1)).await.as_deref(),
        Some("one")
    );
    let health = caches.health().await;
    assert!(health.healthy, "{health:?}");
    let master = format!("127.0.0.1:{}", group.master_named_port());
    assert_eq!(
        health.sentinel.unwrap().master.as_deref(),
        Some(master.as_str())
    );
    // The cache's connections (its data connection and its first level's listener; not
    // the sentinels', which are named, nor the replica's link) came in on the TLS port.
    let raw = group.master.raw().await;
    let clients = wire::clients(&raw).await;
    let ours = clients
        .iter()
        .filter(|c| {
            c.contains(&format!("laddr={master} "))
                && c.contains(" name= ")
                && !c.contains(" flags=S ")
        })
        .count();
    assert_eq!(ours, 2, "{clients:?}");

    // Without the CA, the sentinels' certificates are refused: degraded, and health
    // says why.
    let untrusting =
        connected(&url[..url.find("&ca_file").or(url.find("?ca_file")).unwrap()]).await;
    assert!(
        !quick("set", untrusting.items().set(&2, &"x".to_owned()))
            .await
            .unwrap()
    );
    let error = untrusting.health().await.error.unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");

    let promoted = group.replica_named_port();
    tokio::task::block_in_place(|| group.master.kill());
    tokio::task::block_in_place(|| group.wait_for_master(promoted, Duration::from_secs(30)));
    within(
        "a write over TLS on the promoted replica",
        Duration::from_secs(5),
        async || caches.items().set(&3, &"three".to_owned()).await.unwrap(),
    )
    .await;
    let health = caches.health().await;
    assert_eq!(
        health.sentinel.unwrap().master.as_deref(),
        Some(format!("127.0.0.1:{promoted}").as_str())
    );
}

/// Reads `key` into `caches`' level and checks it is held there (see
/// [`wire::assert_held`]).
async fn hold(caches: &Caches, raw: &MultiplexedConnection, key: u64, expected: &str) {
    wire::assert_held(raw, &key.to_string(), expected, async || {
        caches.locals().get(&key).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_still_loading_its_data_is_not_reconnected_to_in_a_loop() {
    // A master that restarted with a large dataset answers `ROLE` (master) while it
    // loads, and `-LOADING` to everything else, `PING` included; the sentinels keep
    // naming it. Taken on `ROLE` alone, every call reopened the breaker and the
    // supervisor reconnected at once, without backoff, for as long as the load lasted.
    let _watchdog = Watchdog::start("the loading master test", Duration::from_secs(90));
    let group = SentinelGroup::builder().debug_commands().start();
    let caches = connected(&group.url()).await;
    assert!(
        quick("set", caches.items().set(&1, &"one".to_owned()))
            .await
            .unwrap()
    );
    let raw = group.master.raw().await;
    // About 2 s of loading, answering other clients every KB.
    wire::config_set(&raw, "key-load-delay", "100").await;
    wire::config_set(&raw, "loading-process-events-interval-bytes", "1024").await;
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(20_000)
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let before = wire::connections_received(&raw).await;
    // On a connection of its own that waits as long as the reload takes.
    let mut reloading = redis::Client::open(format!("redis://127.0.0.1:{}", group.master.port()))
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let reload = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("RELOAD")
            .query_async::<()>(&mut reloading)
            .await
    });
    let started = Instant::now();
    let (mut loading_seen, mut probes) = (false, 0u64);
    while !reload.is_finished() && started.elapsed() < Duration::from_secs(30) {
        probes += 1;
        quick("get", caches.items().get(&1)).await;
        let mut probe = redis::Client::open(format!("redis://127.0.0.1:{}", group.master.port()))
            .unwrap()
            .get_multiplexed_async_connection()
            .await;
        if let Ok(conn) = &mut probe {
            loading_seen |= redis::cmd("PING")
                .query_async::<()>(conn)
                .await
                .is_err_and(|e| e.code() == Some("LOADING"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let loading_for = started.elapsed();
    reload.await.unwrap().expect("DEBUG RELOAD");
    assert!(
        loading_seen,
        "the master never answered LOADING: the test proved nothing"
    );
    // The test's own probes are one connection each, and one more did the reload; the
    // manager's are the rest.
    let after = wire::connections_received(&raw).await;
    let by_manager = after.saturating_sub(before + probes + 1);
    println!(
        "connections while the master loaded for {loading_for:?}: {by_manager} by the manager, {probes} probes ({before} -> {after})"
    );
    // Backoff doubling from 50 ms for the calls, a heartbeat a second for the listener:
    // some 10-20 in a few seconds. Without the backoff: one per couple of calls (103).
    assert!(
        by_manager <= 30,
        "the manager reconnected {by_manager} times in {loading_for:?} to a master that was loading"
    );
    within(
        "the calls served again",
        Duration::from_secs(10),
        async || caches.items().get(&1).await.as_deref() == Some("one"),
    )
    .await;
}

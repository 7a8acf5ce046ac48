//! The first level kept coherent by Redis itself (`CLIENT TRACKING ON BCAST`), against a
//! real `redis-server`: changes made by a plain `redis` client (not this library) reach
//! the level (`SET`, `DEL`, `FLUSHDB`, an expiry, an eviction), a copy never outlives its
//! Redis entry even when nothing tells the level, local hits still send nothing, a
//! randomized model of writers on two managers and a raw client (on one server and on a
//! cluster) where a manager always reads its own completed writes and never a value
//! replaced longer than the propagation bound ago, TLS, and servers that refuse tracking
//! or RESP3 falling back to pub/sub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_manager::{Cache, CacheConfig, cache_registry};
use cache_tests::{MovableAddress, RedisServer, wire};
use redis::aio::MultiplexedConnection;

/// Text values, so a raw client writes what the cache reads; a first level that would
/// keep copies for 10 minutes if nothing told it otherwise.
#[derive(Cache)]
#[cache(namespace = "tracked:item", ttl = 600, key = u64, value = String, codec = "string", local = 1000, local_ttl = 600)]
struct Items;

cache_registry! {
    struct Caches {
        items: Items,
    }
}

/// How long a change made elsewhere may take to reach the level.
const WITHIN: Duration = Duration::from_millis(200);

async fn instance(url: &str) -> Caches {
    instance_with(url, &CacheConfig::new()).await
}

async fn instance_with(url: &str, config: &CacheConfig) -> Caches {
    let caches = Caches::new();
    caches.connect_with(url, config).await.expect("connect");
    caches
}

/// Polls `check` until it holds, for up to `limit`; how long it took.
async fn within<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut check: F) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?} (the level kept serving a copy Redis no longer holds)"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, check: F) {
    within(what, Duration::from_secs(5), check).await;
}

/// Reads `key` into `caches`' level and checks that it is held there (see
/// [`wire::assert_held`]).
async fn hold(caches: &Caches, raw: &MultiplexedConnection, key: u64, expected: &str) {
    wire::assert_held(raw, &key.to_string(), expected, async || {
        caches.items().get(&key).await
    })
    .await;
}

async fn set_raw(raw: &MultiplexedConnection, key: &str, value: &str) {
    wire::set(raw, key, value.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_set_del_and_flush_reach_the_level() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let a = instance(&server.url()).await;
    eventually("the listener's tracking", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    let key = a.items().redis_key(&1);

    set_raw(&raw, &key, "v1").await;
    hold(&a, &raw, 1, "v1").await;
    set_raw(&raw, &key, "v2").await;
    let set = within("a raw SET", WITHIN, async || {
        a.items().get(&1).await.as_deref() == Some("v2")
    })
    .await;

    hold(&a, &raw, 1, "v2").await;
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let del = within("a raw DEL", WITHIN, async || {
        a.items().get(&1).await.is_none()
    })
    .await;

    set_raw(&raw, &key, "v3").await;
    hold(&a, &raw, 1, "v3").await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let flush = within("FLUSHDB", WITHIN, async || {
        a.items().get(&1).await.is_none()
    })
    .await;
    println!("dropped after: SET {set:?}, DEL {del:?}, FLUSHDB {flush:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_reach_the_level() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let (a, b) = (instance(&server.url()).await, instance(&server.url()).await);
    eventually("the listeners' tracking", async || {
        wire::tracking_clients(&raw).await == 2
    })
    .await;

    // Written by another client with a 300 ms expiry.
    let key = a.items().redis_key(&1);
    let _: () = redis::cmd("PSETEX")
        .arg(&key)
        .arg(300)
        .arg("short")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let written = Instant::now();
    hold(&a, &raw, 1, "short").await;
    within(
        "a PSETEX of 300 ms",
        Duration::from_millis(300) + WITHIN,
        async || a.items().get(&1).await.is_none(),
    )
    .await;
    println!(
        "PSETEX 300 ms: gone from the level {:?} after the write",
        written.elapsed()
    );

    // Written by the library with a 300 ms TTL, held by both instances.
    a.items()
        .set_with_ttl(&2, &"brief".to_owned(), Duration::from_millis(300))
        .await
        .unwrap();
    let written = Instant::now();
    hold(&a, &raw, 2, "brief").await;
    hold(&b, &raw, 2, "brief").await;
    within(
        "set_with_ttl of 300 ms",
        Duration::from_millis(300) + WITHIN,
        async || a.items().get(&2).await.is_none() && b.items().get(&2).await.is_none(),
    )
    .await;
    println!(
        "set_with_ttl 300 ms: gone from both levels {:?} after the write",
        written.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_never_outlives_its_entry_even_when_nothing_says_it_expired() {
    // A server that refuses tracking: nothing tells the level of an expiry.
    let server = RedisServer::new();
    let raw = server.raw().await;
    wire::refuse_tracking(&raw).await;
    let a = instance(&server.url()).await;
    eventually("the pub/sub listener", async || {
        wire::clients(&raw)
            .await
            .iter()
            .any(|l| l.contains("flags=P"))
    })
    .await;
    // The level is read once the listener has been subscribed long enough for other
    // instances to announce their writes: wait for that on another key.
    set_raw(&raw, &a.items().redis_key(&2), "long").await;
    hold(&a, &raw, 2, "long").await;
    let key = a.items().redis_key(&1);
    let _: () = redis::cmd("PSETEX")
        .arg(&key)
        .arg(300)
        .arg("short")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let written = Instant::now();
    hold(&a, &raw, 1, "short").await;
    // Served from the level until the entry's time is up, never after.
    loop {
        // A read that begins after the entry expired must miss.
        let age = written.elapsed();
        match a.items().get(&1).await {
            Some(_) => assert!(
                age <= Duration::from_millis(300),
                "served {age:?} after a write that expired after 300 ms"
            ),
            None => break,
        }
        assert!(age < Duration::from_secs(2), "still served after {age:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_reaches_the_level() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    wire::config_set(&raw, "maxmemory-policy", "allkeys-lru").await;
    let a = instance(&server.url()).await;
    eventually("the listener's tracking", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    let key = a.items().redis_key(&1);
    set_raw(&raw, &key, "evict me").await;
    hold(&a, &raw, 1, "evict me").await;

    // Fill Redis past a small limit with keys read more recently than ours, until ours
    // is evicted.
    let used: u64 = wire::info_field(&raw, "used_memory").await.parse().unwrap();
    wire::config_set(&raw, "maxmemory", &(used + 2 * 1024 * 1024).to_string()).await;
    let filler = vec![b'x'; 16 * 1024];
    let mut evicted_at = None;
    for i in 0..2000 {
        wire::set(&raw, &format!("filler:{i}"), &filler).await;
        if !wire::exists(&raw, &key).await {
            evicted_at = Some(Instant::now());
            break;
        }
    }
    let evicted_at = evicted_at.expect("the key was never evicted");
    within("an eviction", WITHIN, async || {
        a.items().get(&1).await.is_none()
    })
    .await;
    println!(
        "eviction: dropped {:?} after it was seen",
        evicted_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_local_hits_send_nothing_and_writes_publish_nothing() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let (a, b) = (instance(&server.url()).await, instance(&server.url()).await);
    eventually("the listeners' tracking", async || {
        wire::tracking_clients(&raw).await == 2
    })
    .await;
    a.items().set(&1, &"one".to_owned()).await.unwrap();
    hold(&a, &raw, 1, "one").await;
    wire::reset_stats(&raw).await;
    for _ in 0..1000 {
        assert_eq!(a.items().get(&1).await.as_deref(), Some("one"));
    }
    let calls = wire::command_calls(&raw).await;
    assert_eq!(
        calls
            .keys()
            .filter(|c| !c.starts_with("config") && *c != "ping")
            .count(),
        0,
        "local hits sent commands: {calls:?}"
    );

    // Redis tells b of a's write: a sends no PUBLISH of its own.
    assert_eq!(b.items().get(&1).await.as_deref(), Some("one"));
    wire::reset_stats(&raw).await;
    a.items().set(&1, &"two".to_owned()).await.unwrap();
    assert!(a.items().invalidate(&1).await);
    let calls = wire::command_calls(&raw).await;
    assert!(!calls.contains_key("publish"), "{calls:?}");
    eventually("b to hear a's write", async || {
        b.items().get(&1).await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracking_or_resp3_writes_publish_and_levels_stay_coherent() {
    // A server whose ACL refuses tracking, and one without RESP3 (as before Redis 6).
    let no_tracking = RedisServer::new();
    wire::refuse_tracking(&no_tracking.raw().await).await;
    let no_resp3 = RedisServer::builder()
        .arg("--rename-command")
        .arg("HELLO")
        .arg("")
        .start();
    for (server, what, resp) in [
        (&no_tracking, "no tracking", "resp=3"),
        (&no_resp3, "no RESP3", "resp=2"),
    ] {
        let raw = server.raw().await;
        let (a, b) = (instance(&server.url()).await, instance(&server.url()).await);
        eventually("two pub/sub listeners", async || {
            let list = wire::clients(&raw).await;
            list.iter()
                .filter(|l| l.contains(" flags=P ") && l.contains(resp))
                .count()
                == 2
        })
        .await;
        assert_eq!(wire::tracking_clients(&raw).await, 0, "{what}");
        a.items().set(&1, &"one".to_owned()).await.unwrap();
        hold(&b, &raw, 1, "one").await;
        wire::reset_stats(&raw).await;
        a.items().set(&1, &"two".to_owned()).await.unwrap();
        assert_eq!(
            wire::command_calls(&raw).await.get("publish").copied(),
            Some(1),
            "{what}: the write was not announced"
        );
        within("b to hear a's write", WITHIN, async || {
            b.items().get(&1).await.as_deref() == Some("two")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listener_is_caught_and_its_level_emptied_with_or_without_resp3() {
    // A paused server keeps every socket open and answers nothing: only a heartbeat
    // tells the listener that no notice can reach it. Until it does, the level serves
    // copies of entries that may be changing where it cannot hear.
    let resp3 = RedisServer::new();
    let resp2 = RedisServer::builder()
        .arg("--rename-command")
        .arg("HELLO")
        .arg("")
        .start();
    for (server, what) in [(&resp3, "tracking over RESP3"), (&resp2, "RESP2 pub/sub")] {
        let raw = server.raw().await;
        let a = instance(&server.url()).await;
        eventually("the listener", async || {
            let pubsub = wire::clients(&raw)
                .await
                .iter()
                .filter(|l| l.contains(" flags=P ") && l.contains("resp=2"))
                .count();
            wire::tracking_clients(&raw).await + pubsub == 1
        })
        .await;
        set_raw(&raw, &a.items().redis_key(&1), "one").await;
        hold(&a, &raw, 1, "one").await;

        server.pause();
        let paused = Instant::now();
        let mut served = 0u32;
        let caught = loop {
            if a.items().get(&1).await.is_none() {
                break Some(paused.elapsed());
            }
            served += 1;
            if paused.elapsed() > Duration::from_secs(8) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        server.resume();
        let caught = caught.unwrap_or_else(|| {
            panic!("{what}: the level served its copy for 8 s ({served} reads) while the server answered nothing")
        });
        println!("{what}: the level bypassed {caught:?} after the server went silent");
        // A heartbeat a second, a second for its answer, then the get that finds the
        // level bypassed waits out its own response timeout (250 ms): 2.25 s at most,
        // with room for a slow machine's scheduling.
        assert!(
            caught < Duration::from_secs(5),
            "{what}: a silent listener was caught after {caught:?}, not within about 2.25 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_cut_off_as_soon_as_it_connects_backs_off() {
    // A server that closes the listener's connection right after accepting it (an
    // operator's script killing clients, an output buffer limit hit by every burst of
    // invalidations, a proxy) must not be answered by a reconnection each time: the
    // listener waits, and longer each time, as for a server that refuses it.
    let server = RedisServer::new();
    let raw = server.raw().await;
    let a = instance(&server.url()).await;
    eventually("the listener", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    let before = wire::connections_received(&raw).await;
    let kills =
        wire::kill_clients_for(&raw, |flags| flags.contains('t'), Duration::from_secs(3)).await;
    let connections = wire::connections_received(&raw).await - before;
    println!(
        "the listener reconnected {connections} times in 3 s while each connection was killed at once ({kills} kills)"
    );
    // Backing off from 50 ms and doubling: 6 to 9 attempts in 3 s. Reconnecting at once
    // after each kill: one every 10 ms or so, hundreds.
    assert!(
        connections <= 20,
        "the listener reconnected {connections} times in 3 s, each connection killed at once: it does not back off"
    );
    // Left alone, it connects again (within the 5 s the backoff is capped at) and the
    // level serves again.
    eventually("the listener back", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    set_raw(&raw, &a.items().redis_key(&1), "one").await;
    hold(&a, &raw, 1, "one").await;
}

/// Closes the connections of every client of the server behind `raw` but `raw`'s own
/// and the tracking listener's: what a demoted primary's callers see.
async fn drop_calls_connections(raw: &MultiplexedConnection) {
    let own: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    for id in wire::client_ids(raw, |flags| !flags.contains('t')).await {
        if id != own {
            // One gone meanwhile is as good as killed.
            let _ = wire::kill_client(raw, id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_address_leads_to_another_server_the_level_follows_it() {
    // A failover behind a DNS name or a virtual IP: the calls reconnect to the new
    // primary while the listener's connection still reaches the old server, which hears
    // nothing of the new primary's writes.
    let (old, new) = (RedisServer::new(), RedisServer::new());
    let (old_raw, new_raw) = (old.raw().await, new.raw().await);
    let address = MovableAddress::start(old.port()).await;
    let a = instance(&format!("redis://127.0.0.1:{}", address.port())).await;
    eventually("the listener on the old server", async || {
        wire::tracking_clients(&old_raw).await == 1
    })
    .await;
    let key = a.items().redis_key(&1);
    set_raw(&old_raw, &key, "old").await;
    hold(&a, &old_raw, 1, "old").await;
    set_raw(&new_raw, &key, "new").await;

    address.move_to(new.port());
    drop_calls_connections(&old_raw).await;
    // A call that misses the level finds the connection gone and reconnects: to the
    // new server now.
    eventually("the calls on the new server", async || {
        a.items().get(&2).await;
        wire::clients(&new_raw).await.len() >= 2
    })
    .await;
    let followed = within(
        "the level to serve the new server's value",
        Duration::from_secs(3),
        async || a.items().get(&1).await.as_deref() == Some("new"),
    )
    .await;
    println!("the level served the new server's value {followed:?} after the calls reconnected");
    // Held in the level again, and kept coherent by the server the calls go to.
    hold(&a, &new_raw, 1, "new").await;
    set_raw(&new_raw, &key, "newer").await;
    within("a write on the new server", WITHIN, async || {
        a.items().get(&1).await.as_deref() == Some("newer")
    })
    .await;
    assert_eq!(wire::tracking_clients(&new_raw).await, 1);
    assert_eq!(wire::tracking_clients(&old_raw).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_refused_while_a_script_runs_is_asked_again_not_given_up() {
    // While a script runs past `busy-reply-threshold`, `HELLO 3` is answered but
    // `CLIENT TRACKING` is refused with `BUSY` (and so is the fallback's `SUBSCRIBE`): a
    // passing state, not a server without tracking. Given up for pub/sub, the level
    // would miss every write that is not published (a plain client's, a tracking
    // instance's).
    let server = RedisServer::new();
    let raw = server.raw().await;
    wire::config_set(&raw, "busy-reply-threshold", "50").await;
    let busy = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let script = tokio::spawn(async move {
        // Runs until killed (or for some seconds at most on a fast machine).
        redis::cmd("EVAL")
            .arg("local i = 0 while i < 20000000000 do i = i + 1 end return 1")
            .arg(0)
            .query_async::<redis::Value>(&mut busy.clone())
            .await
    });
    eventually("the server to be busy", async || {
        let other = redis::Client::open(server.url()).unwrap();
        match other.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("PING")
                .query_async::<()>(&mut conn)
                .await
                .is_err_and(|e| e.code() == Some("BUSY")),
            Err(e) => e.code() == Some("BUSY"),
        }
    })
    .await;
    let a = instance(&server.url()).await;
    // The listener meets the script: give it time to ask for tracking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("KILL")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let _ = within("the script to end", Duration::from_secs(5), async || {
        script.is_finished()
    })
    .await;

    let key = a.items().redis_key(&1);
    set_raw(&raw, &key, "v1").await;
    // The calls' connection met the script too, and comes back after its backoff.
    eventually("the calls to be served", async || {
        a.items().get(&1).await.as_deref() == Some("v1")
    })
    .await;
    eventually("the listener to track", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    hold(&a, &raw, 1, "v1").await;
    set_raw(&raw, &key, "v2").await;
    within("a plain client's write", WITHIN, async || {
        a.items().get(&1).await.as_deref() == Some("v2")
    })
    .await;
}

/// An instance connected as a user whose ACL refuses `CLIENT TRACKING` (another
/// service's): its level hears by pub/sub.
async fn refused_tracking(server: &RedisServer, raw: &MultiplexedConnection) -> Caches {
    wire::add_user_without_tracking(raw, "reports", "reports-pw").await;
    instance(&format!(
        "redis://reports:reports-pw@127.0.0.1:{}",
        server.port()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refused_tracking_still_hears_the_writes_of_instances_that_track() {
    // One service's ACL allows CLIENT TRACKING, another's does not: `a` is told of
    // changes by Redis and `b` only by messages, so `a`'s writes must be announced.
    let server = RedisServer::new();
    let raw = server.raw().await;
    let b = refused_tracking(&server, &raw).await;
    set_raw(&raw, &b.items().redis_key(&1), "one").await;
    hold(&b, &raw, 1, "one").await;
    // a starts while b's level is already read: its first write must be announced, not
    // only those after its first heartbeat.
    let a = instance(&server.url()).await;
    eventually("a tracking", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    a.items().set(&1, &"two".to_owned()).await.unwrap();
    within("b to hear a's write", WITHIN, async || {
        b.items().get(&1).await.as_deref() == Some("two")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_instance_whose_listener_is_away_still_announces() {
    // While its listener is away nobody looks for levels that hear by pub/sub: its
    // writes must not count on that look's last answer.
    let server = RedisServer::new();
    let raw = server.raw().await;
    let b = refused_tracking(&server, &raw).await;
    let a = instance(&server.url()).await;
    eventually("a tracking", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    set_raw(&raw, &b.items().redis_key(&1), "one").await;
    hold(&b, &raw, 1, "one").await;

    // a's listener is cut, and no new connection is let in: it stays away.
    // Room for the connections there are, less the one cut.
    let clients = wire::clients(&raw).await.len();
    wire::config_set(&raw, "maxclients", &(clients - 1).to_string()).await;
    let tracker = *wire::client_ids(&raw, |flags| flags.contains('t'))
        .await
        .first()
        .expect("a's listener");
    wire::kill_client(&raw, tracker).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        wire::tracking_clients(&raw).await,
        0,
        "a's listener came back"
    );

    a.items().set(&1, &"two".to_owned()).await.unwrap();
    let heard = Instant::now();
    let mut served = None;
    while heard.elapsed() < WITHIN {
        served = b.items().get(&1).await;
        if served.as_deref() == Some("two") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wire::config_set(&raw, "maxclients", "10000").await;
    assert_eq!(
        served.as_deref(),
        Some("two"),
        "b kept a's old value: a's write went unannounced while its listener was away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_write_reaches_the_level_over_tls() {
    let server = cache_tests::tls::TlsRedisServer::start();
    let raw = server.server.raw().await;
    let config = CacheConfig::new().with_tls_ca_file(server.pki().ca_file());
    let a = instance_with(&server.url(), &config).await;
    eventually("the listener's tracking", async || {
        wire::tracking_clients(&raw).await == 1
    })
    .await;
    let key = a.items().redis_key(&1);
    set_raw(&raw, &key, "v1").await;
    hold(&a, &raw, 1, "v1").await;
    set_raw(&raw, &key, "v2").await;
    within("a raw SET over TLS", WITHIN, async || {
        a.items().get(&1).await.as_deref() == Some("v2")
    })
    .await;
}

/// Who wrote a version of a key in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    A,
    B,
    Raw,
}

/// A write of the model: the version it stored, who wrote it, when it completed.
#[derive(Debug, Clone, Copy)]
struct Written {
    version: u64,
    writer: Writer,
    completed: Instant,
}

/// A read of the model.
#[derive(Debug, Clone, Copy)]
struct Read {
    key: u64,
    reader: Writer,
    started: Instant,
    version: u64,
}

/// Writers on two managers and a raw client, readers on both managers, over a few keys.
/// Writes of one key are serialized (each stores the next version), so "older" is well
/// defined; reads run concurrently with them. What it checks of every read:
/// - never older than a write of its own manager that completed before it began (a
///   manager reads its own writes);
/// - never older than any write that completed [`WITHIN`] before it began: another
///   instance's or client's change reaches the level within that delay. In between, a
///   local hit may still return the previous value: nothing tells a process of a change
///   before Redis's message arrives, and waiting for one on every hit would make the
///   level as slow as Redis.
///
/// Returns the longest time a read returned a value that had been replaced.
async fn model(
    a: Arc<Caches>,
    b: Arc<Caches>,
    raw_for: impl Fn(&str) -> MultiplexedConnection + Send + Sync + 'static,
    seed: u64,
) -> Duration {
    // About 4 s of traffic: each key is written every 120 ms or so, by a given manager
    // every 360 ms, so a change that never reached a level would be read long after
    // `WITHIN`.
    const KEYS: u64 = 6;
    const WRITES: usize = 200;
    const WRITE_GAP_MS: u64 = 40;
    const READERS: usize = 8;
    const READS: usize = 800;
    const READ_GAP_MS: u64 = 10;
    let raw_for = Arc::new(raw_for);
    // Per key, the writes in version order; the lock orders the writes of a key.
    let history: Arc<Vec<tokio::sync::Mutex<Vec<Written>>>> = Arc::new(
        (0..KEYS)
            .map(|_| tokio::sync::Mutex::new(Vec::new()))
            .collect(),
    );
    for k in 0..KEYS {
        assert!(a.items().set(&k, &"0".to_owned()).await.unwrap());
        history[k as usize].lock().await.push(Written {
            version: 0,
            writer: Writer::A,
            completed: Instant::now(),
        });
    }
    let writers = {
        let (a, b, raw_for, history) = (
            Arc::clone(&a),
            Arc::clone(&b),
            Arc::clone(&raw_for),
            Arc::clone(&history),
        );
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..WRITES {
                let k = rng.u64(0..KEYS);
                let writer = [Writer::A, Writer::B, Writer::Raw][rng.usize(0..3)];
                let mut writes = history[k as usize].lock().await;
                let version = writes.len() as u64;
                let value = version.to_string();
                match writer {
                    Writer::A => assert!(a.items().set(&k, &value).await.unwrap()),
                    Writer::B => assert!(b.items().set(&k, &value).await.unwrap()),
                    Writer::Raw => {
                        let key = a.items().redis_key(&k);
                        set_raw(&raw_for(&key), &key, &value).await;
                    }
                }
                writes.push(Written {
                    version,
                    writer,
                    completed: Instant::now(),
                });
                drop(writes);
                tokio::time::sleep(Duration::from_millis(rng.u64(0..WRITE_GAP_MS))).await;
            }
        })
    };
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ (r as u64 + 1));
                let mut reads = Vec::with_capacity(READS);
                for _ in 0..READS {
                    let key = rng.u64(0..KEYS);
                    let (reader, caches) = if rng.bool() {
                        (Writer::A, &a)
                    } else {
                        (Writer::B, &b)
                    };
                    let started = Instant::now();
                    let got = caches.items().get(&key).await;
                    let version: u64 = got
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("key {key}: read {got:?}"));
                    reads.push(Read {
                        key,
                        reader,
                        started,
                        version,
                    });
                    if rng.u8(0..4) == 0 {
                        tokio::time::sleep(Duration::from_millis(rng.u64(0..READ_GAP_MS))).await;
                    }
                }
                reads
            })
        })
        .collect();
    writers.await.expect("writers");
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.expect("reader"));
    }
    let mut violations = Vec::new();
    let mut longest_stale = Duration::ZERO;
    for read in &reads {
        let writes = history[read.key as usize].lock().await;
        // The writes newer than what the read returned that had completed when it began.
        let newer = writes
            .iter()
            .filter(|w| w.version > read.version && w.completed <= read.started);
        for w in newer {
            let stale_for = read.started - w.completed;
            longest_stale = longest_stale.max(stale_for);
            if w.writer == read.reader || stale_for > WITHIN {
                violations.push((read.key, read.reader, read.version, *w, stale_for));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: reads older than a completed write (key, reader, read, write, after): {violations:?}"
    );
    let hits: u64 = [&a, &b].iter().map(|c| c.items().stats().hits).sum();
    assert!(
        hits > 0,
        "no read was a hit: the model did not exercise the levels"
    );
    longest_stale
}

fn seed() -> u64 {
    std::env::var("TRACKING_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_the_last_completed_write() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let (a, b) = (instance(&server.url()).await, instance(&server.url()).await);
    eventually("the listeners' tracking", async || {
        wire::tracking_clients(&raw).await == 2
    })
    .await;
    let stale = model(Arc::new(a), Arc::new(b), move |_| raw.clone(), seed()).await;
    println!("longest a replaced value was still read: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_the_last_completed_write_on_a_cluster() {
    use cache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::new();
    let (a, b) = (
        instance(&cluster.url()).await,
        instance(&cluster.url()).await,
    );
    let mut raws = Vec::new();
    for i in 0..cluster.nodes().len() {
        raws.push(cluster.raw(i).await);
    }
    // Every master tracks its own keys: one listener per master and manager.
    for raw in &raws {
        eventually("every master's tracking", async || {
            wire::tracking_clients(raw).await == 2
        })
        .await;
    }
    // The raw client writes each key on the master that owns it.
    let mut owners = HashMap::new();
    for k in 0..6u64 {
        let key = a.items().redis_key(&k);
        owners.insert(key.clone(), cluster.owner_of(&key).await);
    }
    let spread: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        spread.len() > 1,
        "the keys all live on one master: {owners:?}"
    );
    let stale = model(
        Arc::new(a),
        Arc::new(b),
        move |key| raws[owners[key]].clone(),
        seed(),
    )
    .await;
    println!("longest a replaced value was still read: {stale:?}");
}

//! The in-process first level (`local = N`) with two managers on one `redis-server`:
//! hits are served in process, a write or invalidation on one instance reaches the other,
//! and no stale value is served once invalidations may have been missed.

use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::{RedisServer, free_port, wire};
use redis::aio::MultiplexedConnection;

#[derive(Cache)]
#[cache(namespace = "local:item", ttl = 60, key = u64, value = String, local = 1000, local_ttl = 30)]
struct Items;

/// The same data without a first level, for comparison.
#[derive(Cache)]
#[cache(namespace = "plain:item", ttl = 60, key = u64, value = String)]
struct PlainItems;

cache_registry! {
    struct Caches {
        items: Items,
        plain: PlainItems,
    }
}

async fn instance(server: &RedisServer) -> Caches {
    let caches = Caches::new();
    caches.connect(&server.url()).await.expect("connect");
    caches
}

/// Polls `check` for up to 5 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The listeners connected: connections tracking keys for first levels (`t`) or
/// subscribed to channels (`P`), and their ids.
async fn listener_ids(raw: &MultiplexedConnection) -> Vec<u64> {
    wire::client_ids(raw, |flags| flags.contains('t') || flags.contains('P')).await
}

async fn subscribers(raw: &MultiplexedConnection) -> usize {
    listener_ids(raw).await.len()
}

async fn reads_sent(raw: &MultiplexedConnection) -> u64 {
    let calls = wire::command_calls(raw).await;
    calls.get("get").copied().unwrap_or(0) + calls.get("mget").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hits_are_served_without_redis() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let a = instance(&server).await;
    eventually("the subscription", async || subscribers(&raw).await == 1).await;
    a.items().set(&1, &"one".to_owned()).await.unwrap();
    // Read from Redis and kept locally, once the write's own invalidation has landed.
    wire::assert_held(&raw, "1", "one", async || a.items().get(&1).await).await;
    wire::reset_stats(&raw).await;
    for _ in 0..100 {
        assert_eq!(a.items().get(&1).await.as_deref(), Some("one"));
    }
    let got = a.items().mget(&[1]).await.unwrap();
    assert_eq!(got[&1].as_deref(), Some("one"));
    assert_eq!(reads_sent(&raw).await, 0, "local hits went to Redis");

    // A cache without a first level reads Redis every time.
    a.plain().set(&1, &"one".to_owned()).await.unwrap();
    wire::reset_stats(&raw).await;
    for _ in 0..10 {
        a.plain().get(&1).await;
    }
    assert_eq!(reads_sent(&raw).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_the_other_instance_s_local_level() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let (a, b) = (instance(&server).await, instance(&server).await);
    eventually("both subscriptions", async || subscribers(&raw).await == 2).await;
    a.items().set(&7, &"v1".to_owned()).await.unwrap();
    assert_eq!(a.items().get(&7).await.as_deref(), Some("v1"));
    assert_eq!(b.items().get(&7).await.as_deref(), Some("v1"));

    a.items().set(&7, &"v2".to_owned()).await.unwrap();
    assert_eq!(
        a.items().get(&7).await.as_deref(),
        Some("v2"),
        "the writer read its old copy"
    );
    eventually("b to drop its copy after a set", async || {
        b.items().get(&7).await.as_deref() == Some("v2")
    })
    .await;

    let mut batch = std::collections::HashMap::new();
    batch.insert(7u64, "v3".to_owned());
    a.items().mset(&batch).await.unwrap();
    eventually("b to drop its copy after an mset", async || {
        b.items().get(&7).await.as_deref() == Some("v3")
    })
    .await;

    assert!(b.items().invalidate(&7).await);
    eventually("a to drop its copy after an invalidate", async || {
        a.items().get(&7).await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_empties_the_local_level_so_missed_invalidations_cannot_serve_stale_values()
 {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let (a, b) = (instance(&server).await, instance(&server).await);
    eventually("both listeners", async || {
        wire::tracking_clients(&raw).await == 2
    })
    .await;
    // What `a` writes for "new", to be written behind every instance's back (same value
    // type and codec, so the same bytes).
    a.plain().set(&999, &"new".to_owned()).await.unwrap();
    let new_bytes = wire::get(&raw, &a.plain().redis_key(&999)).await.unwrap();
    a.items().set(&3, &"old".to_owned()).await.unwrap();
    eventually("b to hold the old copy", async || {
        b.items().get(&3).await.as_deref() == Some("old") && {
            let before = reads_sent(&raw).await;
            b.items().get(&3).await;
            reads_sent(&raw).await == before
        }
    })
    .await;

    // Cut every listener and keep them out (new connections must authenticate, which
    // they cannot; connections already open stay), so no notice of the write below can
    // ever arrive: only emptying the level on the loss keeps b from serving "old".
    let listeners = listener_ids(&raw).await;
    assert_eq!(listeners.len(), 2, "one listener per manager");
    wire::config_set(&raw, "requirepass", "listeners-kept-out").await;
    for id in listeners {
        wire::kill_client(&raw, id).await.unwrap();
    }
    wire::set(&raw, &a.items().redis_key(&3), &new_bytes).await;
    let written = Instant::now();

    // A read may still hit the level until b's listener has seen its socket close (a few
    // microseconds); from then on every read must be the new value.
    let (mut stale, mut reads, mut first_new) = (0u32, 0u32, None);
    while written.elapsed() < Duration::from_millis(500) {
        let got = b.items().get(&3).await;
        reads += 1;
        match got.as_deref() {
            Some("new") => {
                first_new.get_or_insert(written.elapsed());
            }
            Some("old") => {
                assert!(
                    first_new.is_none(),
                    "b served the stale copy again after serving the new value ({reads} reads)"
                );
                stale += 1;
            }
            other => panic!("b read {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first_new = first_new.expect("b served the stale copy for 500 ms");
    println!(
        "stale reads after the listeners were cut: {stale} of {reads}, the last {first_new:?} after the write"
    );
    assert!(
        first_new < Duration::from_millis(100),
        "b served the stale copy for {first_new:?} after its listener was cut"
    );
    assert_eq!(
        wire::tracking_clients(&raw).await,
        0,
        "a listener came back: the test proved nothing"
    );

    // Listeners come back, tracking again (a refused handshake is not a server without
    // RESP3 or tracking), and invalidations flow.
    wire::config_set(&raw, "requirepass", "").await;
    eventually("the listeners to track again", async || {
        wire::tracking_clients(&raw).await == 2
    })
    .await;
    assert_eq!(b.items().get(&3).await.as_deref(), Some("new"));
    a.items().set(&3, &"newer".to_owned()).await.unwrap();
    eventually("invalidations to flow again", async || {
        b.items().get(&3).await.as_deref() == Some("newer")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_redis_restarts_empty() {
    let mut server = RedisServer::new();
    let raw = server.raw().await;
    let b = instance(&server).await;
    eventually("the subscription", async || subscribers(&raw).await == 1).await;
    b.items().set(&5, &"before".to_owned()).await.unwrap();
    assert_eq!(b.items().get(&5).await.as_deref(), Some("before"));
    server.kill();
    server.restart();
    let raw = server.raw().await;
    eventually("the caches to work again", async || {
        b.items().set(&6, &"x".to_owned()).await.unwrap()
    })
    .await;
    eventually("the subscription to come back", async || {
        subscribers(&raw).await == 1
    })
    .await;
    assert_eq!(
        b.items().get(&5).await,
        None,
        "a value the restarted Redis lost was served from process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_never_keeps_a_stale_copy_under_concurrent_reads() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let a = std::sync::Arc::new(instance(&server).await);
    eventually("the subscription", async || subscribers(&raw).await == 1).await;
    for round in 0..200u64 {
        let old = format!("v{round}");
        let new = format!("v{round}-new");
        a.items().set(&1, &old).await.unwrap();
        let reader = {
            let a = std::sync::Arc::clone(&a);
            tokio::spawn(async move {
                for _ in 0..20 {
                    a.items().get(&1).await;
                }
            })
        };
        a.items().set(&1, &new).await.unwrap();
        reader.await.unwrap();
        assert_eq!(
            a.items().get(&1).await,
            Some(new),
            "round {round}: the writer served its old value"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_that_cannot_be_reached_serves_nothing_the_old_one_left_in_the_level() {
    for url in [
        format!("redis+cluster://127.0.0.1:{}", free_port()),
        format!("redis://127.0.0.1:{}", free_port()),
        format!("redis+sentinel://127.0.0.1:{}/mymaster", free_port()),
    ] {
        let caches = Caches::new();
        caches.connect("memory://").await.expect("connect");
        caches
            .items()
            .set(&1, &"from memory".to_owned())
            .await
            .unwrap();
        assert_eq!(caches.items().get(&1).await.as_deref(), Some("from memory"));
        // Nothing answers there: calls degrade, and the level holds what memory:// had.
        tokio::time::timeout(Duration::from_secs(10), caches.connect(&url))
            .await
            .expect("connect returned")
            .expect("connect");
        assert_eq!(
            caches.items().get(&1).await,
            None,
            "{url}: a first-level copy from the previous backend was served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_by_timeouts_keeps_the_listener_and_the_level() {
    // A spell of timeouts opens the breaker; the calls reconnect to the same server
    // (same run_id): nothing was missed, so the level keeps what it holds.
    let server = RedisServer::new();
    let raw = server.raw().await;
    let a = Caches::new();
    a.connect(&format!(
        "{}?response_timeout_ms=100&failure_threshold=2",
        server.url()
    ))
    .await
    .expect("connect");
    eventually("the listener", async || listener_ids(&raw).await.len() == 1).await;
    let listener = listener_ids(&raw).await;
    a.items().set(&1, &"one".to_owned()).await.unwrap();
    a.plain().set(&9, &"nine".to_owned()).await.unwrap();
    eventually("the copy held", async || {
        a.items().get(&1).await;
        let before = reads_sent(&raw).await;
        a.items().get(&1).await.as_deref() == Some("one") && reads_sent(&raw).await == before
    })
    .await;

    let connected_before = wire::connections_received(&raw).await;
    server.pause();
    let mut degraded = 0;
    for _ in 0..3 {
        if a.plain().get(&9).await.is_none() {
            degraded += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.resume();
    assert_eq!(
        degraded, 3,
        "the calls did not time out while the server was paused"
    );
    eventually("the calls back", async || {
        a.plain().get(&9).await.as_deref() == Some("nine")
    })
    .await;
    // The breaker opened and the calls reconnected (the raw probes' connections are
    // kept): a new connection, so a reconnection to the same server was tested.
    assert!(
        wire::connections_received(&raw).await > connected_before,
        "the calls never reconnected: the breaker did not open"
    );

    assert_eq!(
        listener_ids(&raw).await,
        listener,
        "the listener was replaced"
    );
    let before = reads_sent(&raw).await;
    assert_eq!(a.items().get(&1).await.as_deref(), Some("one"));
    assert_eq!(
        reads_sent(&raw).await,
        before,
        "the level was emptied by a reconnection to the same server"
    );
}

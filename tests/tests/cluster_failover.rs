//! A Redis Cluster with a replica per master: when a master dies, its replica takes over
//! and the manager follows by itself (its slot map refreshed while a master is down),
//! with no read of another key's value across the switch.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use cache_manager::{Cache, CacheConfig, cache_registry};
use cache_tests::cluster::RedisCluster;
use cache_tests::wire;

/// Values spell out their key and the write that stored them.
#[derive(Cache)]
#[cache(namespace = "failover:item", ttl = 600, key = i64, value = String, codec = "string")]
pub struct ItemCache;

cache_registry! {
    /// The caches of these tests.
    pub struct CacheManager {
        items: ItemCache,
    }
}

/// How long the replicas wait before counting a silent master as failed.
const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);

fn value(key: i64, write: u64) -> String {
    format!("item-{key}-write-{write}")
}

/// Bounds one cache call: none may hang while a master is down.
async fn quick<F: Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// A manager on `cluster` with short deadlines and backoff, so the test sees the
/// switch soon after it happens.
async fn connected(cluster: &RedisCluster) -> CacheManager {
    let manager = CacheManager::new();
    let config = CacheConfig::new()
        .with_response_timeout(Duration::from_millis(200))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    manager.connect_with(&cluster.url(), &config).await.unwrap();
    manager
}

/// Which master serves each of the keys 0..100.
async fn owners(cluster: &RedisCluster, manager: &CacheManager) -> BTreeMap<i64, usize> {
    let mut owners = BTreeMap::new();
    for key in 0..100 {
        let redis_key = manager.items().redis_key(&key);
        owners.insert(key, cluster.owner_of(&redis_key).await);
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_a_killed_master_and_writes_resume_without_wrong_reads() {
    let mut cluster = RedisCluster::builder()
        .replicas()
        .node_timeout(NODE_TIMEOUT)
        .start();
    let manager = connected(&cluster).await;
    let items = manager.items();
    let owners = owners(&cluster, &manager).await;
    let killed = 0;
    let there: Vec<i64> = owners
        .iter()
        .filter(|(_, o)| **o == killed)
        .map(|(k, _)| *k)
        .collect();
    let here = *owners.iter().find(|(_, o)| **o != killed).unwrap().0;
    for key in 0..100 {
        assert!(items.set(&key, &value(key, 0)).await.unwrap());
    }

    cluster.node_mut(killed).kill();
    let killed_at = Instant::now();
    let deadline = killed_at + NODE_TIMEOUT + Duration::from_secs(20);
    let mut write = 0;
    let mut wrong_reads = 0;
    let mut elsewhere_failed = 0;
    let resumed = loop {
        write += 1;
        let key = there[write as usize % there.len()];
        // A read never returns another key's value, whatever the state of the switch.
        if let Some(found) = quick("get", items.get(&key)).await
            && !found.starts_with(&format!("item-{key}-"))
        {
            wrong_reads += 1;
        }
        // The other masters serve throughout.
        if !quick("set", items.set(&here, &value(here, write)))
            .await
            .unwrap()
        {
            elsewhere_failed += 1;
        }
        if quick("set", items.set(&key, &value(key, write)))
            .await
            .unwrap()
        {
            assert_eq!(
                quick("get", items.get(&key)).await,
                Some(value(key, write)),
                "a write to the promoted replica is read back"
            );
            break killed_at.elapsed();
        }
        if Instant::now() >= deadline {
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut cluster.replica(killed).raw().await)
                .await
                .unwrap_or_default();
            let slots: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut cluster.raw(1).await)
                .await
                .unwrap_or(redis::Value::Nil);
            panic!(
                "no write to the killed master's keys succeeded within {:?} (node timeout \
                 {NODE_TIMEOUT:?}); the replica's role: {role:?}; CLUSTER SLOTS: {slots:?}; health: {:#?}",
                deadline - killed_at,
                manager.health().await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "writes to the killed master's keys resumed {resumed:?} after the kill \
         (node timeout {NODE_TIMEOUT:?}); {elsewhere_failed} writes elsewhere failed meanwhile"
    );
    assert_eq!(wrong_reads, 0, "reads returned another key's value");
    assert_eq!(elsewhere_failed, 0, "the other masters stopped serving");
    // Every key of the failed master is served by its replica now, with what it held
    // (replication is asynchronous: a write in the last instant may be lost; these were
    // written long before the kill).
    let promoted = cluster.replica(killed).port();
    let health = quick("health", manager.health()).await;
    assert!(
        health
            .nodes
            .iter()
            .any(|n| n.address.ends_with(&format!(":{promoted}")) && n.healthy),
        "health does not list the promoted replica as a healthy master: {health:?}"
    );
    for key in &there {
        let found = quick("get", items.get(key)).await;
        assert!(
            found
                .as_deref()
                .is_some_and(|v| v.starts_with(&format!("item-{key}-"))),
            "key {key} after the takeover: {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_refuses_every_key_degrades_every_call_and_recovers() {
    // No replicas, and full coverage required: once a master is marked failed, the other
    // masters refuse every key with CLUSTERDOWN.
    let mut cluster = RedisCluster::builder().node_timeout(NODE_TIMEOUT).start();
    for index in 0..3 {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("yes")
            .query_async(&mut cluster.raw(index).await)
            .await
            .unwrap();
    }
    let manager = connected(&cluster).await;
    let items = manager.items();
    let owners = owners(&cluster, &manager).await;
    let killed = 0;
    let (here, survivor) = owners
        .iter()
        .find(|(_, o)| **o != killed)
        .map(|(k, o)| (*k, *o))
        .unwrap();
    assert!(items.set(&here, &value(here, 0)).await.unwrap());

    cluster.node_mut(killed).kill();
    let survivor_conn = cluster.raw(survivor).await;
    let redis_key = items.redis_key(&here);
    let deadline = Instant::now() + NODE_TIMEOUT + Duration::from_secs(20);
    loop {
        let reply: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut survivor_conn.clone())
            .await;
        if reply
            .as_ref()
            .is_err_and(|e| e.code() == Some("CLUSTERDOWN"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the surviving masters never refused keys: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every call degrades, on every master, bounded: a miss, a refused write, all counted.
    let degraded = items.stats().degraded;
    assert_eq!(quick("get", items.get(&here)).await, None);
    assert!(
        !quick("set", items.set(&here, &value(here, 1)))
            .await
            .unwrap()
    );
    let keys: Vec<i64> = (0..100).collect();
    let found = quick("mget", items.mget(&keys)).await.unwrap();
    assert!(found.values().all(Option::is_none), "{found:?}");
    assert!(
        items.stats().degraded >= degraded + 3,
        "{:?}",
        items.stats()
    );
    assert!(!quick("health", manager.health()).await.healthy);

    // Every call answered CLUSTERDOWN asks for a refresh of the slot map, which finds it
    // unchanged: under calls for 3 s, a few `CLUSTER SLOTS`, not one per 50 ms backoff.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    let mut conns = Vec::new();
    for &index in &survivors {
        let conn = cluster.raw(index).await;
        wire::reset_stats(&conn).await;
        conns.push(conn);
    }
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < Duration::from_secs(3) {
        quick("get", items.get(&here)).await;
        calls += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refreshes = wire::slot_map_requests(&conns).await;
    println!("{calls} gets answered CLUSTERDOWN in 3 s: {refreshes} CLUSTER SLOTS");
    assert!(
        refreshes <= 10,
        "{refreshes} CLUSTER SLOTS in 3 s of calls answered CLUSTERDOWN: a refresh per hint"
    );

    // The master comes back (with its slots, from its nodes.conf): the cluster serves
    // again and so does the manager, without a connect call.
    cluster.node_mut(killed).restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while quick("get", items.get(&here)).await != Some(value(here, 0)) {
        assert!(
            Instant::now() < deadline,
            "no recovery after the master came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(items.set(&here, &value(here, 2)).await.unwrap());
    assert_eq!(items.get(&here).await, Some(value(here, 2)));
}

//! The same typed caches on a three-master Redis Cluster the harness starts on loopback:
//! keys spread over every master, batches split by slot and node, corrupt entries
//! evicted on the node that holds them, a paused or killed master degrading only its own
//! keys and coming back by itself, hash-tagged caches on one slot, health per node.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use cache_manager::{Breaker, Cache, CacheConfig, HealthStatus, cache_registry};
use cache_tests::cluster::RedisCluster;
use cache_tests::{LogCapture, free_port, wire};
use serde::{Deserialize, Serialize};

/// Form B, spread over the cluster (the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", ttl = 600, key = i64)]
pub struct UserProfile {
    /// Display name.
    pub name: String,
}

/// The same shape, but every key on the slot of its namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "team:member", ttl = 600, key = i64, hash_tag = true)]
pub struct TeamMember {
    /// Display name.
    pub name: String,
}

/// Strings, to read what the string codec wrote.
#[derive(Cache)]
#[cache(namespace = "counter:visits", ttl = 60, key = i64, value = i64, codec = "string")]
pub struct VisitCountCache;

/// With an in-process first level, kept coherent through the cluster's pub/sub.
#[derive(Cache)]
#[cache(namespace = "user:name", ttl = 60, key = i64, value = String, local = 1000)]
pub struct UserNameCache;

cache_registry! {
    /// The caches of these tests.
    pub struct CacheManager {
        profiles: UserProfileCache,
        members: TeamMemberCache,
        visits: VisitCountCache,
        names: UserNameCache,
    }
}

const PASSWORD: &str = "clu$ter-Pa55";

/// The fingerprint of the cache of `namespace`: the layout a bincode cache keys its
/// entries by, `{namespace}@{fingerprint:08x}:{key}`.
fn fingerprint(namespace: &str) -> u32 {
    CacheManager::CACHES
        .iter()
        .find(|c| c.namespace == namespace)
        .unwrap_or_else(|| panic!("no cache of namespace `{namespace}`"))
        .fingerprint
}

/// The registry a bincode cache keeps of the layouts of its entries in use (the
/// fingerprints of the value type's versions), next to its entries: `prefix` is the
/// text its keys start with before any layout, `user:profile:` or `{team:member}:`.
fn layouts_registry(prefix: &str) -> String {
    format!("!layouts!{prefix}")
}

fn profile(id: i64) -> UserProfile {
    UserProfile {
        name: format!("user {id}"),
    }
}

/// Runs one cache call, failing the test if it takes 2 s or more: a call to a degraded
/// node must return within its response timeout, never hang.
async fn quick<F: Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than 2 s"))
}

/// Polls `check` until it holds, for at most 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 20 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(cluster: &RedisCluster) -> CacheManager {
    let manager = CacheManager::new();
    manager.connect(&cluster.url()).await.unwrap();
    manager
}

/// The ids `0..100`, and each one's master.
async fn owners(cluster: &RedisCluster, manager: &CacheManager) -> BTreeMap<i64, usize> {
    let mut owners = BTreeMap::new();
    for id in 0..100 {
        let key = manager.profiles().redis_key(&id);
        owners.insert(id, cluster.owner_of(&key).await);
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_keys_spread_over_every_master_round_trip_through_mset_and_mget() {
    let cluster = RedisCluster::new();
    let manager = connected(&cluster).await;
    let profiles = manager.profiles();
    let entries: HashMap<i64, UserProfile> = (0..100).map(|id| (id, profile(id))).collect();
    assert!(profiles.mset(&entries).await.unwrap());

    let ids: Vec<i64> = (0..100).collect();
    let found = profiles.mget(&ids).await.unwrap();
    assert_eq!(found.len(), 100);
    for (id, value) in &found {
        assert_eq!(value.as_ref(), Some(&profile(*id)), "id {id}");
    }

    // Every master holds some of the keys, exactly the ones whose slot it serves, each
    // with the cache's TTL; the master of the registry of layouts holds that too.
    let owners = owners(&cluster, &manager).await;
    let registry = layouts_registry("user:profile:");
    let registry_owner = cluster.owner_of(&registry).await;
    let mut total = 0;
    for (index, _) in cluster.nodes().iter().enumerate() {
        let conn = cluster.raw(index).await;
        let mut expected: Vec<String> = owners
            .iter()
            .filter(|(_, owner)| **owner == index)
            .map(|(id, _)| profiles.redis_key(id))
            .collect();
        assert!(
            !expected.is_empty(),
            "master {index} serves none of 100 keys"
        );
        let ttl = wire::ttl(&conn, &expected[0]).await;
        assert!((590..=600).contains(&ttl), "ttl {ttl}");
        if index == registry_owner {
            expected.push(registry.clone());
        }
        expected.sort();
        assert_eq!(wire::keys(&conn).await, expected, "keys of master {index}");
        total += wire::dbsize(&conn).await;
    }
    assert_eq!(total, 100 + 1, "100 entries and the registry of layouts");

    // A batch is one `MGET` per slot, sent only to the master of that slot: no
    // cross-slot error, no redirection.
    for (index, _) in cluster.nodes().iter().enumerate() {
        wire::reset_stats(&cluster.raw(index).await).await;
    }
    assert_eq!(profiles.mget(&ids).await.unwrap().len(), 100);
    for (index, _) in cluster.nodes().iter().enumerate() {
        let calls = wire::command_calls(&cluster.raw(index).await).await;
        let mut slots: Vec<u16> = Vec::new();
        for (id, _) in owners.iter().filter(|(_, owner)| **owner == index) {
            let slot = key_slot(&cluster, &profiles.redis_key(id)).await;
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        assert_eq!(
            calls.get("mget").copied().unwrap_or(0),
            slots.len() as u64,
            "MGETs on master {index}: {calls:?}"
        );
        assert_eq!(calls.get("get"), None, "master {index}: {calls:?}");
    }
}

async fn key_slot(cluster: &RedisCluster, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut cluster.raw(0).await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_keeps_its_contract_on_a_cluster() {
    let cluster = RedisCluster::builder().password(PASSWORD).start();
    let manager = connected(&cluster).await;
    let visits = manager.visits();

    for id in 0..20 {
        assert!(visits.set(&id, &(id * 10)).await.unwrap());
    }
    for id in 0..20 {
        assert_eq!(visits.get(&id).await, Some(id * 10));
    }
    // What the string codec wrote, on the master of the key.
    let key = visits.redis_key(&7);
    let owner = cluster.owner_of(&key).await;
    let conn = cluster.raw(owner).await;
    assert_eq!(wire::get(&conn, &key).await.as_deref(), Some(&b"70"[..]));

    assert!(
        visits
            .set_with_ttl(&7, &71, Duration::from_millis(1500))
            .await
            .unwrap()
    );
    let pttl = wire::pttl(&conn, &key).await;
    assert!((1..=1500).contains(&pttl), "pttl {pttl}");

    assert!(visits.invalidate(&7).await);
    assert!(!visits.invalidate(&7).await);
    assert!(!wire::exists(&conn, &key).await);

    // Multi-key invalidation across slots and masters.
    let ids: Vec<i64> = (0..20).collect();
    assert_eq!(visits.minvalidate(&ids).await.unwrap(), 19);
    for (index, _) in cluster.nodes().iter().enumerate() {
        assert_eq!(wire::dbsize(&cluster.raw(index).await).await, 0);
    }

    // The batch limit applies to the whole call, before anything is sent.
    let too_many: Vec<i64> = (0..101).collect();
    assert!(visits.mget(&too_many).await.is_err());
    assert!(visits.minvalidate(&too_many).await.is_err());
    let entries: HashMap<i64, i64> = too_many.iter().map(|&id| (id, id)).collect();
    assert!(visits.mset(&entries).await.is_err());
    for (index, _) in cluster.nodes().iter().enumerate() {
        assert_eq!(wire::dbsize(&cluster.raw(index).await).await, 0);
    }

    // The password reaches neither health nor the logs.
    let health = manager.health().await;
    let json = serde_json::to_string(&health).unwrap();
    assert!(health.healthy, "{json}");
    assert!(!json.contains(PASSWORD) && json.contains(":***@"), "{json}");
    assert!(!format!("{manager:?}").contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_are_evicted_on_the_master_that_holds_them() {
    let cluster = RedisCluster::new();
    let manager = connected(&cluster).await;
    let profiles = manager.profiles();
    let owners = owners(&cluster, &manager).await;
    // One id per master, planted as garbage on its master.
    let mut planted = Vec::new();
    for index in 0..cluster.nodes().len() {
        let (&id, _) = owners.iter().find(|(_, o)| **o == index).unwrap();
        let conn = cluster.raw(index).await;
        wire::set(&conn, &profiles.redis_key(&id), b"\x00garbage").await;
        planted.push((id, index));
    }
    let good = owners
        .keys()
        .copied()
        .find(|id| !planted.iter().any(|(p, _)| p == id));
    let good = good.unwrap();
    assert!(profiles.set(&good, &profile(good)).await.unwrap());

    let ids: Vec<i64> = planted.iter().map(|(id, _)| *id).chain([good]).collect();
    let found = profiles.mget(&ids).await.unwrap();
    for (id, _) in &planted {
        assert_eq!(found[id], None, "corrupt id {id}");
    }
    assert_eq!(found[&good], Some(profile(good)));
    for (id, index) in &planted {
        let conn = cluster.raw(*index).await;
        assert!(
            !wire::exists(&conn, &profiles.redis_key(id)).await,
            "the corrupt entry of id {id} is still on master {index}"
        );
    }
    assert_eq!(profiles.stats().corrupt_evicted, 3);

    // `get` evicts too.
    let (id, index) = planted[0];
    wire::set(&cluster.raw(index).await, &profiles.redis_key(&id), b"junk").await;
    assert_eq!(profiles.get(&id).await, None);
    assert!(!wire::exists(&cluster.raw(index).await, &profiles.redis_key(&id)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_one_master_degrades_only_its_keys_and_recovers_after_it_resumes() {
    let cluster = RedisCluster::new();
    let manager = CacheManager::new();
    let config = CacheConfig::new()
        .with_response_timeout(Duration::from_millis(200))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    manager.connect_with(&cluster.url(), &config).await.unwrap();
    let profiles = manager.profiles();
    let entries: HashMap<i64, UserProfile> = (0..100).map(|id| (id, profile(id))).collect();
    assert!(profiles.mset(&entries).await.unwrap());
    let owners = owners(&cluster, &manager).await;
    let paused = 1;
    let on_paused: Vec<i64> = owners
        .iter()
        .filter(|(_, o)| **o == paused)
        .map(|(id, _)| *id)
        .collect();
    let elsewhere: Vec<i64> = owners
        .iter()
        .filter(|(_, o)| **o != paused)
        .map(|(id, _)| *id)
        .collect();
    let ids: Vec<i64> = (0..100).collect();

    cluster.nodes()[paused].pause();
    // Repeated, so the paused master's breaker opens; each call stays bounded.
    for round in 0..5 {
        let found = quick("mget", profiles.mget(&ids)).await.unwrap();
        for id in &on_paused {
            assert_eq!(
                found[id], None,
                "round {round}: id {id} of the paused master"
            );
        }
        for id in &elsewhere {
            assert_eq!(found[id], Some(profile(*id)), "round {round}: id {id}");
        }
    }
    let (&there, &here) = (&on_paused[0], &elsewhere[0]);
    assert_eq!(quick("get", profiles.get(&there)).await, None);
    assert_eq!(quick("get", profiles.get(&here)).await, Some(profile(here)));
    assert!(
        !quick("set", profiles.set(&there, &profile(0)))
            .await
            .unwrap()
    );
    assert!(
        quick("set", profiles.set(&here, &profile(here)))
            .await
            .unwrap()
    );
    // A batch with keys on the paused master reports that not everything was stored,
    // and still stores the rest.
    let batch = HashMap::from([(there, profile(there)), (here, profile(1000))]);
    assert!(!quick("mset", profiles.mset(&batch)).await.unwrap());
    assert_eq!(profiles.get(&here).await, Some(profile(1000)));

    let health = quick("health", manager.health()).await;
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(!health.healthy);
    assert_eq!(health.nodes.len(), 3);
    let port = cluster.nodes()[paused].port();
    for node in &health.nodes {
        let is_paused = node.address.ends_with(&format!(":{port}"));
        assert_eq!(node.healthy, !is_paused, "{node:?}");
        if is_paused {
            assert_eq!(node.breaker, Breaker::Open, "{node:?}");
            assert!(node.error.is_some(), "{node:?}");
        }
    }
    assert!(health.error.unwrap().contains(&format!(":{port}")));

    // An invalidation of every key removes (and counts) those of the reachable masters,
    // leaves the paused master's, and counts the call as degraded.
    let degraded = profiles.stats().degraded;
    let removed = quick("minvalidate", profiles.minvalidate(&ids))
        .await
        .unwrap();
    assert_eq!(
        removed,
        elsewhere.len() as u64,
        "removed on the reachable masters"
    );
    assert!(
        profiles.stats().degraded > degraded,
        "{:?}",
        profiles.stats()
    );
    let found = quick("mget", profiles.mget(&elsewhere)).await.unwrap();
    assert!(found.values().all(Option::is_none), "{found:?}");

    cluster.nodes()[paused].resume();
    eventually("the paused master's keys, still there", || async {
        let found = profiles.mget(&on_paused).await.unwrap();
        on_paused.iter().all(|id| found[id] == Some(profile(*id)))
    })
    .await;
    eventually("every key written again", || async {
        profiles.mset(&entries).await.unwrap()
    })
    .await;
    eventually("every key readable again", || async {
        let found = profiles.mget(&ids).await.unwrap();
        found.values().filter(|v| v.is_some()).count() == 100
    })
    .await;
    eventually("a healthy cluster", || async {
        manager.health().await.healthy
    })
    .await;
    assert!(profiles.set(&there, &profile(there)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_degrades_its_keys_and_serves_again_once_restarted() {
    let mut cluster = RedisCluster::new();
    let manager = CacheManager::new();
    let config =
        CacheConfig::new().with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    manager.connect_with(&cluster.url(), &config).await.unwrap();
    let profiles = manager.profiles();
    let owners = owners(&cluster, &manager).await;
    let killed = 2;
    let there = *owners.iter().find(|(_, o)| **o == killed).unwrap().0;
    let here = *owners.iter().find(|(_, o)| **o != killed).unwrap().0;
    assert!(profiles.set(&there, &profile(there)).await.unwrap());

    cluster.node_mut(killed).kill();
    assert_eq!(quick("get", profiles.get(&there)).await, None);
    assert!(
        !quick("set", profiles.set(&there, &profile(there)))
            .await
            .unwrap()
    );
    assert!(
        quick("set", profiles.set(&here, &profile(here)))
            .await
            .unwrap()
    );
    assert_eq!(quick("get", profiles.get(&here)).await, Some(profile(here)));

    // It comes back empty, with the same identity and slots (its nodes.conf is kept).
    cluster.node_mut(killed).restart();
    eventually("writes to the restarted master", || async {
        profiles.set(&there, &profile(there)).await.unwrap()
    })
    .await;
    assert_eq!(profiles.get(&there).await, Some(profile(there)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tagged_cache_keeps_every_key_on_one_slot() {
    let cluster = RedisCluster::new();
    let manager = connected(&cluster).await;
    let members = manager.members();
    assert_eq!(
        members.redis_key(&5),
        format!("{{team:member}}@{:08x}:5", fingerprint("team:member"))
    );
    let entries: HashMap<i64, TeamMember> = (0..100)
        .map(|id| {
            (
                id,
                TeamMember {
                    name: format!("m{id}"),
                },
            )
        })
        .collect();
    let owner = cluster.owner_of("team:member").await;
    wire::reset_stats(&cluster.raw(owner).await).await;

    assert!(members.mset(&entries).await.unwrap());
    let ids: Vec<i64> = (0..100).collect();
    let found = members.mget(&ids).await.unwrap();
    assert!(found.values().all(Option::is_some));

    let slot = key_slot(&cluster, "team:member").await;
    for (index, _) in cluster.nodes().iter().enumerate() {
        let conn = cluster.raw(index).await;
        // The 100 entries, and the registry of layouts, on the namespace's slot too.
        let expected = if index == owner { 100 + 1 } else { 0 };
        assert_eq!(wire::dbsize(&conn).await, expected, "master {index}");
    }
    for id in [0, 42, 99] {
        assert_eq!(key_slot(&cluster, &members.redis_key(&id)).await, slot);
    }
    let registry = layouts_registry("{team:member}:");
    assert!(wire::exists(&cluster.raw(owner).await, &registry).await);
    assert_eq!(key_slot(&cluster, &registry).await, slot);
    // One slot: the whole `mget` is a single `MGET` on a single master.
    let calls = wire::command_calls(&cluster.raw(owner).await).await;
    assert_eq!(calls.get("mget"), Some(&1), "{calls:?}");
    assert_eq!(members.minvalidate(&ids).await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_lists_every_master_with_its_slots() {
    let cluster = RedisCluster::new();
    let manager = connected(&cluster).await;
    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Connected);
    assert!(health.healthy && health.breaker == Breaker::Closed);
    assert_eq!(health.backend, "redis-cluster");
    assert_eq!(health.nodes.len(), 3);
    assert_eq!(health.nodes.iter().map(|n| n.slots).sum::<u32>(), 16384);
    let mut ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    ports.sort();
    let mut reported: Vec<u16> = health
        .nodes
        .iter()
        .map(|n| n.address.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    reported.sort();
    assert_eq!(reported, ports);
    assert!(
        health
            .nodes
            .iter()
            .all(|n| n.healthy && n.latency_ms.is_some())
    );
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(json["nodes"][0]["healthy"], true);
}

// On the current thread, so the log capture sees the background tasks' lines too.
#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_cluster_is_not_a_connect_error_and_every_call_degrades() {
    let url = format!(
        "redis+cluster://:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let capture = LogCapture::start();
    let manager = CacheManager::new();
    manager.connect(&url).await.unwrap();
    assert_eq!(quick("get", manager.profiles().get(&1)).await, None);
    assert!(
        !quick("set", manager.profiles().set(&1, &profile(1)))
            .await
            .unwrap()
    );
    let found = quick("mget", manager.profiles().mget(&[1, 2]))
        .await
        .unwrap();
    assert_eq!(found, HashMap::from([(1, None), (2, None)]));
    let batch = HashMap::from([(1, profile(1))]);
    assert!(
        !quick("mset", manager.profiles().mset(&batch))
            .await
            .unwrap()
    );
    assert_eq!(
        quick("minvalidate", manager.profiles().minvalidate(&[1]))
            .await
            .unwrap(),
        0
    );

    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(!health.healthy && health.nodes.is_empty());
    let error = health.error.unwrap();
    assert!(error.contains("CLUSTER SLOTS"), "{error}");
    assert!(!error.contains(PASSWORD));
    let logs = capture.text();
    assert!(!logs.contains(PASSWORD), "{logs}");
    assert_eq!(
        capture.lines_at("ERROR").len(),
        1,
        "one error line per outage: {logs}"
    );
}

async fn run<T: redis::FromRedisValue>(
    conn: &redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> T {
    cmd.query_async(&mut conn.clone())
        .await
        .unwrap_or_else(|e| panic!("raw command failed: {e}"))
}

/// A slot moved by hand from one master to the next, the way `redis-cli --cluster
/// reshard` does: [`start`](Self::start) marks it importing and migrating,
/// [`migrate`](Self::migrate) moves keys, [`finish`](Self::finish) gives it to the target.
struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    to: usize,
    source: redis::aio::MultiplexedConnection,
    target: redis::aio::MultiplexedConnection,
    source_id: String,
    target_id: String,
}

impl<'a> SlotMove<'a> {
    /// The move of `key`'s slot from its master to the next one.
    async fn of(cluster: &'a RedisCluster, key: &str) -> Self {
        let slot = key_slot(cluster, key).await;
        let from = cluster.owner_of(key).await;
        let to = (from + 1) % 3;
        let (source, target) = (cluster.raw(from).await, cluster.raw(to).await);
        let source_id = run(&source, redis::cmd("CLUSTER").arg("MYID")).await;
        let target_id = run(&target, redis::cmd("CLUSTER").arg("MYID")).await;
        SlotMove {
            cluster,
            slot,
            to,
            source,
            target,
            source_id,
            target_id,
        }
    }

    fn setslot(&self, state: &str, id: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(self.slot).arg(state).arg(id);
        cmd
    }

    async fn start(&self) {
        run::<()>(&self.target, &self.setslot("IMPORTING", &self.source_id)).await;
        run::<()>(&self.source, &self.setslot("MIGRATING", &self.target_id)).await;
    }

    async fn migrate(&self, key: &str) {
        let mut cmd = redis::cmd("MIGRATE");
        cmd.arg("127.0.0.1")
            .arg(self.cluster.nodes()[self.to].port())
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(key);
        run::<()>(&self.source, &cmd).await;
    }

    async fn finish(&self) {
        for index in 0..3 {
            let conn = self.cluster.raw(index).await;
            run::<()>(&conn, &self.setslot("NODE", &self.target_id)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_is_followed_after_one_redirection() {
    let cluster = RedisCluster::new();
    let manager = CacheManager::new();
    let config =
        CacheConfig::new().with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    manager.connect_with(&cluster.url(), &config).await.unwrap();
    let profiles = manager.profiles();
    assert!(profiles.set(&7, &profile(7)).await.unwrap());
    let key = profiles.redis_key(&7);
    let slot_move = SlotMove::of(&cluster, &key).await;
    let target = &slot_move.target;
    let target_port = format!(":{}", cluster.nodes()[slot_move.to].port());
    let slots_of_target = |health: &cache_manager::Health| {
        let node = health
            .nodes
            .iter()
            .find(|n| n.address.ends_with(&target_port));
        node.unwrap().slots
    };
    let before = slots_of_target(&manager.health().await);
    // A copy in the first level, of a key on any master.
    let names = manager.names();
    assert!(names.set(&5, &"five".to_owned()).await.unwrap());
    let name_key = names.redis_key(&5);
    let name_node = cluster.raw(cluster.owner_of(&name_key).await).await;
    wire::assert_held(&name_node, &name_key, "five", async || names.get(&5).await).await;

    slot_move.start().await;
    slot_move.migrate(&key).await;
    slot_move.finish().await;
    // The target owns the slot now; the source answers `MOVED` for it.
    assert!(wire::exists(target, &key).await);

    // The first call may meet `MOVED` and degrade; the slot map is then refreshed and
    // the key is served by its new master: at most one call degrades.
    let degraded = profiles.stats().degraded;
    let moved = Instant::now();
    let mut calls = 0;
    while profiles.get(&7).await != Some(profile(7)) {
        calls += 1;
        assert!(
            moved.elapsed() < Duration::from_secs(2),
            "the moved key was not followed within 2 s ({calls} calls)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = profiles.stats();
    assert!(
        stats.degraded - degraded <= 1,
        "{} calls degraded after the move (one redirection expected): {stats:?}",
        stats.degraded - degraded
    );
    println!(
        "moved slot followed after {calls} degraded call(s), {:?}",
        moved.elapsed()
    );
    // Keys whose slot moved may have changed where the levels did not hear: a new slot
    // map empties them, so the copy is read from Redis again.
    wire::reset_stats(&name_node).await;
    assert_eq!(names.get(&5).await.as_deref(), Some("five"));
    let calls = wire::command_calls(&name_node).await;
    assert!(
        calls.contains_key("get") || calls.contains_key("mget"),
        "the first level kept its copy across a new slot map: {calls:?}"
    );
    assert!(profiles.set(&7, &profile(8)).await.unwrap());
    assert!(wire::get(target, &key).await.is_some());
    let health = manager.health().await;
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.nodes.iter().map(|n| n.slots).sum::<u32>(), 16384);
    assert_eq!(slots_of_target(&health), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_moved_during_a_migration_degrade_on_ask_and_are_served_after_it() {
    // A hash-tagged cache: every key in one slot, so one key can move while the others
    // of the slot stay on the source.
    let cluster = RedisCluster::new();
    let manager = CacheManager::new();
    let config =
        CacheConfig::new().with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    manager.connect_with(&cluster.url(), &config).await.unwrap();
    let members = manager.members();
    let member = |id: i64| TeamMember {
        name: format!("member-{id}"),
    };
    for id in [1, 2] {
        assert!(members.set(&id, &member(id)).await.unwrap());
    }
    let (moved_key, staying_key) = (members.redis_key(&1), members.redis_key(&2));
    let slot_move = SlotMove::of(&cluster, &moved_key).await;
    assert_eq!(slot_move.slot, key_slot(&cluster, &staying_key).await);
    let (source, target) = (&slot_move.source, &slot_move.target);
    slot_move.start().await;
    slot_move.migrate(&moved_key).await;

    // Mid-migration: the source still serves the key it holds; the moved key answers
    // `ASK`, and its calls degrade: a miss, a refused write, never a stale or wrong value.
    let degraded = members.stats().degraded;
    assert_eq!(quick("get", members.get(&2)).await, Some(member(2)));
    assert_eq!(quick("get", members.get(&1)).await, None);
    assert!(!quick("set", members.set(&1, &member(10))).await.unwrap());
    assert!(
        members.stats().degraded >= degraded + 2,
        "the ASKed calls were not counted as degraded: {:?}",
        members.stats()
    );
    // The source still answers ASK for it (it would serve it if the write had
    // recreated it there), and the target holds the migrated value.
    let on_source: redis::RedisResult<bool> = redis::cmd("EXISTS")
        .arg(&moved_key)
        .query_async(&mut source.clone())
        .await;
    assert!(
        on_source.as_ref().is_err_and(|e| e.code() == Some("ASK")),
        "a write during the migration recreated the moved key on the source: {on_source:?}"
    );
    let (on_target,): (Option<Vec<u8>>,) = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("GET")
        .arg(&moved_key)
        .query_async(&mut target.clone())
        .await
        .expect("ASKING + GET on the importing master");
    assert!(on_target.is_some(), "the migrated key is not on the target");

    // An `ASK` says nothing `CLUSTER SLOTS` would: the slot still belongs to the source
    // until the migration ends. Reads of the moved key ask for no new slot map.
    let mut raws = Vec::new();
    for node in cluster.nodes() {
        let raw = node.raw().await;
        wire::reset_stats(&raw).await;
        raws.push(raw);
    }
    for _ in 0..20 {
        assert_eq!(quick("get", members.get(&1)).await, None);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refreshes = wire::slot_map_requests(&raws).await;
    assert!(
        refreshes <= 1,
        "{refreshes} slot-map refreshes for 20 reads answered ASK in 400 ms"
    );

    // The migration ends: the target owns the slot, and both keys are served from it
    // after at most a redirection.
    // Every key left in the slot: the staying member, and the cache's layout registry
    // (in the same slot: it carries the hash tag too).
    let left: Vec<String> = run(
        source,
        redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot_move.slot)
            .arg(100),
    )
    .await;
    assert!(left.contains(&staying_key), "{left:?}");
    for key in &left {
        slot_move.migrate(key).await;
    }
    slot_move.finish().await;
    eventually("both keys served from the new master", || async {
        members.get(&1).await == Some(member(1)) && members.get(&2).await == Some(member(2))
    })
    .await;
    assert!(members.set(&1, &member(11)).await.unwrap());
    assert_eq!(members.get(&1).await, Some(member(11)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_levels_stay_coherent_across_instances_on_a_cluster() {
    let cluster = RedisCluster::new();
    let (a, b) = (connected(&cluster).await, connected(&cluster).await);
    let ids: Vec<i64> = (0..30).collect();
    // Keys spread over every master, so invalidations published on each reach b.
    let mut masters = std::collections::BTreeSet::new();
    for id in &ids {
        masters.insert(cluster.owner_of(&a.names().redis_key(id)).await);
    }
    assert_eq!(masters.len(), 3, "the keys do not cover every master");

    for id in &ids {
        assert!(a.names().set(id, &format!("old-{id}")).await.unwrap());
    }
    // b reads every key, keeping copies once its level is readable.
    eventually("b to serve every key from its first level", || async {
        for id in &ids {
            assert_eq!(b.names().get(id).await, Some(format!("old-{id}")));
        }
        let before = b.names().stats().hits;
        for id in &ids {
            b.names().get(id).await;
        }
        b.names().stats().hits == before + ids.len() as u64
    })
    .await;

    for id in &ids {
        assert!(a.names().set(id, &format!("new-{id}")).await.unwrap());
    }
    eventually("every write to reach b's first level", || async {
        let mut fresh = 0;
        for id in &ids {
            if b.names().get(id).await == Some(format!("new-{id}")) {
                fresh += 1;
            }
        }
        fresh == ids.len()
    })
    .await;
    assert_eq!(a.names().minvalidate(&ids).await.unwrap(), ids.len() as u64);
    eventually("minvalidate to reach b", || async {
        for id in &ids {
            if b.names().get(id).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_a_namespace_from_every_master() {
    let cluster = RedisCluster::new();
    let manager = connected(&cluster).await;
    let all: HashMap<i64, UserProfile> = (0..100).map(|id| (id, profile(id))).collect();
    assert!(manager.profiles().mset(&all).await.unwrap());
    let members: HashMap<i64, TeamMember> = (0..20)
        .map(|id| {
            (
                id,
                TeamMember {
                    name: format!("m{id}"),
                },
            )
        })
        .collect();
    assert!(manager.members().mset(&members).await.unwrap());
    assert!(manager.visits().set(&1, &5).await.unwrap());

    assert_eq!(manager.profiles().clear().await, 100);
    assert_eq!(
        manager.members().clear().await,
        20,
        "hash-tagged keys were missed"
    );
    for node in 0..3 {
        let raw = cluster.raw(node).await;
        let keys = wire::keys(&raw).await;
        // In any layout, or none.
        let cleared = [
            "user:profile:",
            "user:profile@",
            "{team:member}:",
            "{team:member}@",
        ];
        assert!(
            keys.iter()
                .all(|k| !cleared.iter().any(|prefix| k.starts_with(prefix))),
            "master {node} still holds {keys:?}"
        );
    }
    assert_eq!(
        manager.visits().get(&1).await,
        Some(5),
        "another namespace was cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_on_a_cluster_all_hit() {
    // Enough concurrent gets per master to trigger coalescing on a standalone server;
    // one MGET over keys of many slots would be refused with CROSSSLOT.
    let cluster = RedisCluster::new();
    let manager = std::sync::Arc::new(connected(&cluster).await);
    let all: HashMap<i64, UserProfile> = (0..100).map(|id| (id, profile(id))).collect();
    assert!(manager.profiles().mset(&all).await.unwrap());
    let tasks: Vec<_> = (0..64i64)
        .map(|t| {
            let manager = std::sync::Arc::clone(&manager);
            tokio::spawn(async move {
                let mut hits = 0;
                for r in 0..50i64 {
                    let id = (t * 7 + r) % 100;
                    if manager.profiles().get(&id).await == Some(profile(id)) {
                        hits += 1;
                    }
                }
                hits
            })
        })
        .collect();
    let mut hits = 0;
    for task in tasks {
        hits += task.await.unwrap();
    }
    assert_eq!(hits, 64 * 50, "concurrent gets on a cluster missed");
    assert_eq!(manager.profiles().stats().degraded, 0);
}

/// A cache whose loads are single-flighted across instances: one node of the cluster
/// must listen for the ends of other instances' loads.
#[derive(Cache)]
#[cache(namespace = "scale:global", ttl = 60, key = u32, value = String, single_flight = "global")]
pub struct GlobalLoadCache;

cache_registry! {
    /// A manager whose only listener is the one for the ends of loads.
    pub struct LoadsManager {
        loads: GlobalLoadCache,
    }
}

/// How many connections of the node behind `conn` are subscribed to the loads channel.
async fn loads_subscribers(conn: &redis::aio::MultiplexedConnection) -> i64 {
    let counts: Vec<(String, i64)> = run(
        conn,
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("cache-manager:loads"),
    )
    .await;
    counts.iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loads_listener_moves_when_its_master_leaves_the_cluster() {
    // A scale-in: every slot of the master whose connection listens for the ends of
    // loads goes to another master, and the slot map no longer names it. Another master
    // must listen from then on, or every instance's waiters would only poll.
    let cluster = RedisCluster::new();
    let manager = LoadsManager::new();
    let config =
        CacheConfig::new().with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    manager.connect_with(&cluster.url(), &config).await.unwrap();
    let mut conns = Vec::new();
    for index in 0..3 {
        conns.push(cluster.raw(index).await);
    }
    let started = Instant::now();
    let listening = loop {
        let (mut found, mut total) = (None, 0);
        for (index, conn) in conns.iter().enumerate() {
            let subscribers = loads_subscribers(conn).await;
            if subscribers > 0 {
                found = Some(index);
                total += subscribers;
            }
        }
        // One listener for the whole cluster: messages reach every node.
        assert!(
            total <= 1,
            "{total} connections listen for the ends of loads"
        );
        if let Some(index) = found {
            break index;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no master listens for the ends of loads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let to = (listening + 1) % 3;

    // Its slots: unassigned everywhere, then claimed by the target, which makes its claim
    // win with a new epoch.
    let slots: Vec<redis::Value> = run(&conns[listening], redis::cmd("CLUSTER").arg("SLOTS")).await;
    let port = i64::from(cluster.nodes()[listening].port());
    let mut ranges = Vec::new();
    for range in slots {
        let redis::Value::Array(fields) = range else {
            continue;
        };
        let (
            Some(redis::Value::Int(first)),
            Some(redis::Value::Int(last)),
            Some(redis::Value::Array(master)),
        ) = (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        if master.get(1) == Some(&redis::Value::Int(port)) {
            ranges.push((*first, *last));
        }
    }
    assert!(!ranges.is_empty(), "the listening master serves no slot");
    for conn in &conns {
        let mut del = redis::cmd("CLUSTER");
        del.arg("DELSLOTSRANGE");
        for (first, last) in &ranges {
            del.arg(*first).arg(*last);
        }
        run::<()>(conn, &del).await;
    }
    let mut add = redis::cmd("CLUSTER");
    add.arg("ADDSLOTSRANGE");
    for (first, last) in &ranges {
        add.arg(*first).arg(*last);
    }
    run::<()>(&conns[to], &add).await;
    let _: redis::Value = run(&conns[to], redis::cmd("CLUSTER").arg("BUMPEPOCH")).await;

    // Calls to the moved slots meet a redirection (or a refusal until the news spreads),
    // and the slot map is refreshed: it no longer names the master that listened.
    let moved = Instant::now();
    loop {
        for key in 0..50u32 {
            quick("get", manager.loads().get(&key)).await;
        }
        let health = manager.health().await;
        let gone = !health
            .nodes
            .iter()
            .any(|n| n.address.ends_with(&format!(":{port}")));
        if gone && health.nodes.len() == 2 {
            break;
        }
        assert!(
            moved.elapsed() < Duration::from_secs(10),
            "the slot map still names the emptied master: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    loop {
        let mut subscribed = 0;
        for (index, conn) in conns.iter().enumerate() {
            if index != listening {
                subscribed += loads_subscribers(conn).await;
            }
        }
        if subscribed == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{subscribed} connections of the remaining masters listen for the ends of loads, 5 s after the scale-in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the loads listener moved {:?} after the scale-in was seen",
        started.elapsed()
    );
}

cache_registry! {
    /// Profiles alone: no first level and no global flight, so no listener sends
    /// anything to the masters while a batch is counted.
    pub struct BatchManager {
        profiles: UserProfileCache,
    }
}

/// `total_reads_processed` of the node behind `conn`: how many times it read from a
/// client socket (its own `INFO` included). A pipeline written at once is one read; a
/// command sent after the answer to the one before is one read each.
async fn reads(conn: &redis::aio::MultiplexedConnection) -> u64 {
    wire::info_field(conn, "total_reads_processed")
        .await
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_one_round_trip_per_master() {
    let cluster = RedisCluster::new();
    let manager = BatchManager::new();
    manager.connect(&cluster.url()).await.unwrap();
    let profiles = manager.profiles();
    let ids: Vec<i64> = (0..100).collect();
    let mut conns = Vec::new();
    for index in 0..3 {
        conns.push(cluster.raw(index).await);
    }
    let entries: HashMap<i64, UserProfile> = ids.iter().map(|id| (*id, profile(*id))).collect();

    for (what, call) in ["mset", "mget", "minvalidate"].into_iter().enumerate() {
        let mut before = Vec::new();
        for conn in &conns {
            wire::reset_stats(conn).await;
            before.push(reads(conn).await);
        }
        match what {
            0 => assert!(quick("mset", profiles.mset(&entries)).await.unwrap()),
            1 => {
                let found = quick("mget", profiles.mget(&ids)).await.unwrap();
                assert!(found.values().all(Option::is_some), "{found:?}");
            }
            _ => assert_eq!(
                quick("minvalidate", profiles.minvalidate(&ids))
                    .await
                    .unwrap(),
                100
            ),
        }
        for (index, conn) in conns.iter().enumerate() {
            let turns = reads(conn).await - before[index];
            let calls = wire::command_calls(conn).await;
            let commands: u64 = calls
                .iter()
                .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
                .map(|(_, n)| n)
                .sum();
            println!(
                "{call}: master {index} got {commands} commands in {turns} reads, its INFO included"
            );
            // The keys of 100 ids hash to some 30 slots per master: one command per slot
            // (per entry for mset), sent one after another that would be as many reads.
            assert!(
                commands >= 10,
                "{call}: master {index} got only {commands} commands: the check says nothing"
            );
            // Its own INFO, the batch, and room for one more (a layouts record).
            assert!(
                turns <= 5,
                "{call}: master {index} read {turns} times for {commands} commands: not one round trip"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_is_not_asked_for_its_slot_map_every_second() {
    // The slot map is refreshed every second only while a master is unreachable (a
    // replica may take over); with every master up, every 30 s.
    let cluster = RedisCluster::new();
    let manager = BatchManager::new();
    manager.connect(&cluster.url()).await.unwrap();
    let mut conns = Vec::new();
    for index in 0..3 {
        let conn = cluster.raw(index).await;
        wire::reset_stats(&conn).await;
        conns.push(conn);
    }
    assert!(manager.profiles().set(&1, &profile(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let refreshes = wire::slot_map_requests(&conns).await;
    assert!(
        refreshes <= 1,
        "{refreshes} CLUSTER SLOTS in 3.5 s with every master up: refreshed as if one were down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_asked_again_with_growing_backoff() {
    // The only node named accepts connections and closes them at once (no Redis behind
    // it): every refresh of the slot map fails, and the refreshes must back off, not
    // come as fast as the connections fail.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acceptor = tokio::spawn({
        let accepted = std::sync::Arc::clone(&accepted);
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(socket);
            }
        }
    });
    let manager = BatchManager::new();
    let config =
        CacheConfig::new().with_backoff(Duration::from_millis(20), Duration::from_millis(640));
    manager
        .connect_with(&format!("redis+cluster://127.0.0.1:{port}"), &config)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = accepted.load(std::sync::atomic::Ordering::Relaxed);
    acceptor.abort();
    println!("{attempts} attempts in 3 s on a cluster whose only node closes every connection");
    // 20 ms doubling to 640 ms (jittered down to half): some 8-12 attempts in 3 s; without
    // the backoff, hundreds.
    assert!(
        attempts >= 2,
        "{attempts} attempts: the cluster was not asked again"
    );
    assert!(
        attempts <= 25,
        "{attempts} attempts in 3 s: the refreshes of an unreachable cluster do not back off"
    );
}

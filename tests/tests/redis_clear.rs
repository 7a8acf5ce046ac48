//! `clear()` against a real `redis-server`: it removes exactly one namespace's keys with
//! `SCAN` + `UNLINK` in bounded batches (never `KEYS`), empties other instances' first
//! levels, and degrades like every other call when Redis is down.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::{RedisServer, wire};

#[derive(Cache)]
#[cache(namespace = "user:profile", key = u64, value = String)]
struct Profiles;

/// A namespace that starts with the other's text, but is not inside it.
#[derive(Cache)]
#[cache(namespace = "user:profile_old", key = u64, value = String)]
struct OldProfiles;

#[derive(Cache)]
#[cache(namespace = "near:item", ttl = 60, key = u64, value = String, local = 100)]
struct NearItems;

cache_registry! {
    struct Caches {
        profiles: Profiles,
        old_profiles: OldProfiles,
        near: NearItems,
    }
}

/// The registry a bincode cache of `namespace` keeps of the layouts of its entries in
/// use (the fingerprints of the value type's versions), next to its entries: not an
/// entry, so a clear leaves it.
fn layouts_registry(namespace: &str) -> String {
    format!("!layouts!{namespace}:")
}

async fn fill(caches: &Caches, n: u64) {
    let entries: Vec<(u64, String)> = (0..n).map(|i| (i, format!("v{i}"))).collect();
    for chunk in entries.chunks(100) {
        let map: HashMap<u64, String> = chunk.iter().cloned().collect();
        assert!(caches.profiles().mset(&map).await.unwrap());
        assert!(caches.old_profiles().mset(&map).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_only_its_namespace_with_scan_and_unlink_batches() {
    let server = RedisServer::new();
    let caches = Caches::new();
    caches.connect(&server.url()).await.unwrap();
    fill(&caches, 1200).await;
    let raw = server.raw().await;
    // The entries, and each cache's registry of layouts.
    let registries = [
        layouts_registry("user:profile"),
        layouts_registry("user:profile_old"),
    ];
    assert_eq!(wire::dbsize(&raw).await, 2400 + 2);
    wire::reset_stats(&raw).await;

    assert_eq!(caches.profiles().clear().await, 1200);

    assert_eq!(
        wire::dbsize(&raw).await,
        1200 + 2,
        "only user:profile's entries removed"
    );
    for registry in &registries {
        assert!(wire::exists(&raw, registry).await, "{registry} removed");
    }
    assert_eq!(caches.profiles().get(&7).await, None);
    assert_eq!(
        caches.old_profiles().get(&7).await.as_deref(),
        Some("v7"),
        "user:profile_old is another namespace"
    );
    let calls = wire::command_calls(&raw).await;
    assert!(
        !calls.contains_key("keys"),
        "KEYS must never be sent: {calls:?}"
    );
    assert!(calls.get("scan").copied().unwrap_or(0) > 1, "{calls:?}");
    // 1200 keys in batches of at most a few hundred: several UNLINKs, never one giant one.
    assert!(calls.get("unlink").copied().unwrap_or(0) >= 3, "{calls:?}");
    assert!(
        !calls.contains_key("del") && !calls.contains_key("flushdb"),
        "{calls:?}"
    );

    // Nothing left: a second clear removes nothing.
    assert_eq!(caches.profiles().clear().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_degrades_when_redis_is_down() {
    let mut server = RedisServer::new();
    let caches = Caches::new();
    caches.connect(&server.url()).await.unwrap();
    assert!(caches.profiles().set(&1, &"a".to_owned()).await.unwrap());
    server.kill();
    // The first call may be the one that finds the connection dead; both degrade.
    for _ in 0..2 {
        assert_eq!(caches.profiles().clear().await, 0);
    }
    assert!(caches.profiles().stats().degraded >= 2);
    let disconnected = Caches::new();
    assert_eq!(disconnected.profiles().clear().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_the_first_level_of_other_instances() {
    let server = RedisServer::new();
    let (a, b) = (Caches::new(), Caches::new());
    a.connect(&server.url()).await.unwrap();
    b.connect(&server.url()).await.unwrap();
    // Wait until both instances hear invalidations (their levels are readable).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(a.near().set(&1, &"one".to_owned()).await.unwrap());
        let raw = server.raw().await;
        // b reads from Redis once, then serves from its level: after a direct Redis
        // delete (which announces nothing) only a local copy can still answer.
        if b.near().get(&1).await.is_some() {
            redis::cmd("DEL")
                .arg(a.near().redis_key(&1))
                .query_async::<()>(&mut raw.clone())
                .await
                .unwrap();
            if b.near().get(&1).await.is_some() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "b's first level never became readable"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // b holds key 1 locally while Redis has no entry of it; a's clear must reach it.
    a.near().clear().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.near().get(&1).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "b still serves its local copy after a clear"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

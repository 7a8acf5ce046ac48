//! A manager-wide key prefix (`?prefix=` or `CacheConfig::with_key_prefix`) against a
//! real `redis-server`: two environments sharing one Redis never read, invalidate or
//! clear each other's entries, their first levels hear only their own environment's
//! changes (Redis tracks each environment's key prefixes; without tracking, pub/sub on
//! per-prefix channels), a
//! hash-tagged cache keeps its keys in one slot of a cluster under the prefix, and a
//! prefix the key grammar cannot carry is refused before anything is sent.

use std::time::{Duration, Instant};

use cache_manager::{Cache, CacheConfig, CacheError, cache_registry};
use cache_tests::{RedisServer, wire};
use redis::aio::MultiplexedConnection;

#[derive(Cache)]
#[cache(namespace = "user:name", ttl = 60, key = u64, value = String)]
struct Names;

#[derive(Cache)]
#[cache(namespace = "team:member", ttl = 60, key = u64, value = String, hash_tag = true)]
struct Members;

#[derive(Cache)]
#[cache(namespace = "local:item", ttl = 60, key = u64, value = String, local = 100, local_ttl = 30)]
struct Items;

cache_registry! {
    struct Caches {
        names: Names,
        members: Members,
        items: Items,
    }
}

async fn with_prefix(url: &str, prefix: Option<&str>) -> Caches {
    let caches = Caches::new();
    let mut config = CacheConfig::new();
    if let Some(prefix) = prefix {
        config = config.with_key_prefix(prefix);
    }
    caches.connect_with(url, &config).await.expect("connect");
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

/// A field of `INFO stats`.
async fn tracking_stat(raw: &MultiplexedConnection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    info.lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

async fn channels(raw: &MultiplexedConnection) -> Vec<String> {
    let mut list: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_environments_on_one_redis_keep_their_entries_apart() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let staging = with_prefix(&server.url(), Some("staging")).await;
    // The URL option does the same as the config.
    let prod = Caches::new();
    prod.connect(&format!("{}?prefix=prod", server.url()))
        .await
        .expect("connect with ?prefix=");
    let bare = with_prefix(&server.url(), None).await;

    for (caches, who) in [(&staging, "staging"), (&prod, "prod"), (&bare, "bare")] {
        for id in 0..50u64 {
            assert!(
                caches
                    .names()
                    .set(&id, &format!("{who}-{id}"))
                    .await
                    .unwrap()
            );
            assert!(
                caches
                    .members()
                    .set(&id, &format!("{who}-{id}"))
                    .await
                    .unwrap()
            );
        }
    }
    assert!(
        staging
            .names()
            .redis_key(&7)
            .starts_with("staging:user:name")
    );
    assert!(
        staging
            .members()
            .redis_key(&7)
            .starts_with("staging:{team:member}")
    );
    assert!(prod.names().redis_key(&7).starts_with("prod:user:name"));
    assert!(bare.names().redis_key(&7).starts_with("user:name"));
    let keys = wire::keys(&raw).await;
    for who in ["staging:", "prod:"] {
        let n = keys.iter().filter(|k| k.starts_with(who)).count();
        assert_eq!(n, 100, "{who}: {keys:?}");
    }

    // Each reads its own value of the same key.
    for (caches, who) in [(&staging, "staging"), (&prod, "prod"), (&bare, "bare")] {
        assert_eq!(caches.names().get(&7).await, Some(format!("{who}-7")));
        let got = caches.members().mget(&[1, 2]).await.unwrap();
        assert_eq!(got[&1], Some(format!("{who}-1")));
        assert_eq!(got[&2], Some(format!("{who}-2")));
    }

    // An invalidation in staging leaves prod's entry of that key.
    assert!(staging.names().invalidate(&7).await);
    assert_eq!(staging.names().get(&7).await, None);
    assert_eq!(prod.names().get(&7).await, Some("prod-7".to_owned()));
    assert_eq!(bare.names().get(&7).await, Some("bare-7".to_owned()));

    // Clearing staging's cache removes its 49 entries and nothing of the others.
    assert_eq!(staging.names().clear().await, 49);
    assert_eq!(prod.names().get(&8).await, Some("prod-8".to_owned()));
    assert_eq!(bare.names().get(&8).await, Some("bare-8".to_owned()));
    assert_eq!(
        staging.members().get(&8).await,
        Some("staging-8".to_owned())
    );
    // And clearing the unprefixed manager's cache does not reach into the prefixed ones.
    assert_eq!(bare.names().clear().await, 50);
    assert_eq!(prod.names().get(&8).await, Some("prod-8".to_owned()));
    assert_eq!(bare.members().clear().await, 50);
    assert_eq!(prod.members().get(&8).await, Some("prod-8".to_owned()));
    assert_eq!(
        staging.members().get(&8).await,
        Some("staging-8".to_owned())
    );

    // Health says which prefix a manager works under.
    assert_eq!(
        staging.health().await.key_prefix.as_deref(),
        Some("staging")
    );
    assert_eq!(bare.health().await.key_prefix, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_levels_hear_only_their_own_environment() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let staging_a = with_prefix(&server.url(), Some("staging")).await;
    let staging_b = with_prefix(&server.url(), Some("staging")).await;
    let prod = with_prefix(&server.url(), Some("prod")).await;
    // Redis tracks one key prefix per environment for the level: `{prefix}:local:item:`.
    eventually("the listeners' tracking", async || {
        tracking_stat(&raw, "tracking_total_prefixes").await == 2
            && wire::tracking_clients(&raw).await == 3
    })
    .await;

    // Staging B and prod each hold key 1 in their first level.
    assert!(
        staging_a
            .items()
            .set(&1, &"staging".to_owned())
            .await
            .unwrap()
    );
    assert!(prod.items().set(&1, &"prod".to_owned()).await.unwrap());
    // Held once the writes' own notices have landed (they drop copies read before).
    wire::assert_held(&raw, "1", "staging", async || {
        staging_b.items().get(&1).await
    })
    .await;
    wire::assert_held(&raw, "1", "prod", async || prod.items().get(&1).await).await;

    // A write in staging reaches staging B's first level...
    assert!(
        staging_a
            .items()
            .set(&1, &"staging-2".to_owned())
            .await
            .unwrap()
    );
    eventually("staging B sees the new value", async || {
        staging_b.items().get(&1).await.as_deref() == Some("staging-2")
    })
    .await;
    wire::assert_held(&raw, "1", "staging-2", async || {
        staging_b.items().get(&1).await
    })
    .await;
    // ...and prod, which heard nothing, still serves its own value from its first level:
    // no Redis read is sent for it.
    wire::reset_stats(&raw).await;
    assert_eq!(prod.items().get(&1).await.as_deref(), Some("prod"));
    let calls = wire::command_calls(&raw).await;
    assert_eq!(calls.get("get").copied().unwrap_or(0), 0, "{calls:?}");

    // An invalidation in prod does not evict staging's first-level entry either.
    assert!(prod.items().invalidate(&1).await);
    assert_eq!(prod.items().get(&1).await, None);
    wire::reset_stats(&raw).await;
    assert_eq!(
        staging_b.items().get(&1).await.as_deref(),
        Some("staging-2")
    );
    let calls = wire::command_calls(&raw).await;
    assert_eq!(calls.get("get").copied().unwrap_or(0), 0, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracking_first_levels_hear_their_own_environment_by_pub_sub() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    // A server that refuses tracking: invalidations travel by pub/sub.
    wire::refuse_tracking(&raw).await;
    let staging_a = with_prefix(&server.url(), Some("staging")).await;
    let staging_b = with_prefix(&server.url(), Some("staging")).await;
    let prod = with_prefix(&server.url(), Some("prod")).await;
    eventually("per-prefix channels", async || {
        let list = channels(&raw).await;
        list.contains(&"cache-manager:invalidate:staging".to_owned())
            && list.contains(&"cache-manager:invalidate:prod".to_owned())
    })
    .await;
    assert!(
        !channels(&raw)
            .await
            .contains(&"cache-manager:invalidate".to_owned()),
        "no prefixed manager listens on the unprefixed channel"
    );

    // Staging B and prod each hold key 1 in their first level.
    assert!(
        staging_a
            .items()
            .set(&1, &"staging".to_owned())
            .await
            .unwrap()
    );
    assert!(prod.items().set(&1, &"prod".to_owned()).await.unwrap());
    // Held once the writes' own notices have landed (they drop copies read before).
    wire::assert_held(&raw, "1", "staging", async || {
        staging_b.items().get(&1).await
    })
    .await;
    wire::assert_held(&raw, "1", "prod", async || prod.items().get(&1).await).await;

    // A write in staging reaches staging B's first level...
    assert!(
        staging_a
            .items()
            .set(&1, &"staging-2".to_owned())
            .await
            .unwrap()
    );
    eventually("staging B sees the new value", async || {
        staging_b.items().get(&1).await.as_deref() == Some("staging-2")
    })
    .await;
    wire::assert_held(&raw, "1", "staging-2", async || {
        staging_b.items().get(&1).await
    })
    .await;
    // ...and prod, which heard nothing, still serves its own value from its first level:
    // no Redis read is sent for it.
    wire::reset_stats(&raw).await;
    assert_eq!(prod.items().get(&1).await.as_deref(), Some("prod"));
    let calls = wire::command_calls(&raw).await;
    assert_eq!(calls.get("get").copied().unwrap_or(0), 0, "{calls:?}");

    // An invalidation in prod does not evict staging's first-level entry either.
    assert!(prod.items().invalidate(&1).await);
    assert_eq!(prod.items().get(&1).await, None);
    wire::reset_stats(&raw).await;
    assert_eq!(
        staging_b.items().get(&1).await.as_deref(),
        Some("staging-2")
    );
    let calls = wire::command_calls(&raw).await;
    assert_eq!(calls.get("get").copied().unwrap_or(0), 0, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_the_key_grammar_cannot_carry_is_refused_before_connecting() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    wire::reset_stats(&raw).await;
    for bad in ["env*", "a b", "{tag}", "trailing:", ""] {
        let caches = Caches::new();
        let err = caches
            .connect_with(&server.url(), &CacheConfig::new().with_key_prefix(bad))
            .await
            .expect_err(bad);
        assert!(matches!(err, CacheError::Config { .. }), "{bad}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("prefix"), "{bad}: {text}");
        assert!(text.contains("only ASCII letters"), "{bad}: {text}");
        assert_eq!(
            caches.names().set(&1, &"x".to_owned()).await.ok(),
            Some(false)
        );
    }
    let url = format!("{}?prefix=env%2A", server.url());
    assert!(matches!(
        Caches::new().connect(&url).await,
        Err(CacheError::Config { .. })
    ));
    assert_eq!(wire::dbsize(&raw).await, 0, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_tagged_cache_stays_in_one_slot_of_a_cluster_under_a_prefix() {
    use cache_tests::cluster::RedisCluster;

    let cluster = RedisCluster::new();
    let staging = with_prefix(&cluster.url(), Some("staging")).await;
    let prod = with_prefix(&cluster.url(), Some("prod")).await;
    let ids: Vec<u64> = (0..40).collect();
    let entries: Vec<(u64, String)> = ids.iter().map(|id| (*id, format!("s-{id}"))).collect();
    assert!(
        staging
            .members()
            .mset(entries.iter().map(|(k, v)| (k, v)))
            .await
            .unwrap()
    );
    // One slot for every key of the tagged cache: one node holds them all.
    let owners: std::collections::HashSet<usize> = {
        let mut owners = std::collections::HashSet::new();
        for id in &ids {
            owners.insert(cluster.owner_of(&staging.members().redis_key(id)).await);
        }
        owners
    };
    assert_eq!(owners.len(), 1, "{owners:?}");
    let got = staging.members().mget(&ids).await.unwrap();
    assert!(got.values().all(Option::is_some), "{got:?}");
    let theirs = prod.members().mget(&ids).await.unwrap();
    assert!(theirs.values().all(Option::is_none), "{theirs:?}");
    assert_eq!(prod.members().clear().await, 0);
    assert_eq!(staging.members().clear().await, 40);
}

//! A rolling deploy against a real `redis-server`: instances with the old and the new
//! shape of a value type share one Redis. Each side keeps hitting its own entries (one
//! key per layout, the value type's fingerprint), neither deletes what the other reads,
//! an invalidation on one side still removes the other side's entry of that key (the
//! data changed), and bytes corrupt for every layout are still deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cache_tests::{RedisServer, wire};

/// The service before the deploy.
mod old {
    use cache_manager::{Cache, cache_registry};
    use serde::{Deserialize, Serialize};

    /// A profile as the old version stores it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
    #[cache(namespace = "user:profile", ttl = 600, key = i64)]
    pub struct UserProfile {
        /// The user's name.
        pub name: String,
        /// The age, as the old version typed it.
        pub age: u8,
    }

    cache_registry! {
        /// The old version's caches.
        pub struct Caches {
            profiles: UserProfileCache,
        }
    }
}

/// The service after the deploy: a field added, one retyped.
mod new {
    use cache_manager::{Cache, cache_registry};
    use serde::{Deserialize, Serialize};

    /// A profile as the new version stores it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
    #[cache(namespace = "user:profile", ttl = 600, key = i64)]
    pub struct UserProfile {
        /// The user's name.
        pub name: String,
        /// The age, retyped.
        pub age: u32,
        /// A field the old version does not have.
        pub email: String,
    }

    cache_registry! {
        /// The new version's caches.
        pub struct Caches {
            profiles: UserProfileCache,
        }
    }
}

/// The database both versions load from.
fn name_of(id: i64) -> String {
    format!("user-{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_versions_keep_hitting_their_own_entries_during_a_rolling_deploy() {
    let server = RedisServer::new();
    let (old, new) = (old::Caches::new(), new::Caches::new());
    old.connect(&server.url()).await.unwrap();
    new.connect(&server.url()).await.unwrap();
    let (old_loads, new_loads) = (AtomicUsize::new(0), AtomicUsize::new(0));

    // Interleaved traffic over 100 keys: 5 rounds, each key read by both versions.
    let mut misses_after_warm_up = (0, 0);
    for round in 0..5 {
        for id in 0..100i64 {
            let got = old
                .profiles()
                .get_or_load(&id, || async {
                    old_loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Some(old::UserProfile {
                        name: name_of(id),
                        age: 36,
                    }))
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.name, name_of(id));
            let got = new
                .profiles()
                .get_or_load(&id, || async {
                    new_loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Some(new::UserProfile {
                        name: name_of(id),
                        age: 36,
                        email: format!("{id}@example.com"),
                    }))
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.email, format!("{id}@example.com"));
        }
        if round == 0 {
            misses_after_warm_up = (
                old_loads.load(Ordering::SeqCst),
                new_loads.load(Ordering::SeqCst),
            );
        }
    }
    let reads_after_warm_up = 4 * 100;
    let old_ratio = (old_loads.load(Ordering::SeqCst) - misses_after_warm_up.0) as f64
        / reads_after_warm_up as f64;
    let new_ratio = (new_loads.load(Ordering::SeqCst) - misses_after_warm_up.1) as f64
        / reads_after_warm_up as f64;
    println!(
        "after warm-up, over {reads_after_warm_up} interleaved reads each: old version missed {:.1}%, new version {:.1}%",
        old_ratio * 100.0,
        new_ratio * 100.0
    );
    assert!(
        old_ratio <= 0.03 && new_ratio <= 0.03,
        "{old_ratio} {new_ratio}"
    );

    // Redis holds both layouts side by side, each with its TTL; neither side deleted the
    // other's entries.
    let raw = server.raw().await;
    let keys: HashSet<String> = wire::keys(&raw).await.into_iter().collect();
    for id in 0..100i64 {
        let (old_key, new_key) = (old.profiles().redis_key(&id), new.profiles().redis_key(&id));
        assert_ne!(old_key, new_key);
        assert!(keys.contains(&old_key) && keys.contains(&new_key), "{id}");
        assert!(wire::ttl(&raw, &old_key).await > 590);
    }
    assert_eq!(old.profiles().stats().corrupt_evicted, 0);
    assert_eq!(new.profiles().stats().corrupt_evicted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_version_removes_every_versions_entry_of_that_key() {
    let server = RedisServer::new();
    let (old, new) = (old::Caches::new(), new::Caches::new());
    old.connect(&server.url()).await.unwrap();
    new.connect(&server.url()).await.unwrap();
    let raw = server.raw().await;
    let ada = old::UserProfile {
        name: "Ada".into(),
        age: 36,
    };
    let ada2 = new::UserProfile {
        name: "Ada".into(),
        age: 36,
        email: "ada@example.com".into(),
    };
    for id in [1, 2] {
        assert!(old.profiles().set(&id, &ada).await.unwrap());
        assert!(new.profiles().set(&id, &ada2).await.unwrap());
    }
    // A write is one version's fill: the other version's entry stays.
    assert!(wire::exists(&raw, &old.profiles().redis_key(&1)).await);
    // The data changed (an update, then an invalidation): gone in every layout.
    assert!(old.profiles().invalidate(&1).await);
    assert!(!wire::exists(&raw, &old.profiles().redis_key(&1)).await);
    assert!(
        !wire::exists(&raw, &new.profiles().redis_key(&1)).await,
        "the new version's entry of an invalidated key would be stale"
    );
    assert_eq!(new.profiles().get(&2).await, Some(ada2), "other keys stay");
    // The batch form too, from the other side.
    assert_eq!(new.profiles().minvalidate(&[2]).await.unwrap(), 1);
    assert!(!wire::exists(&raw, &old.profiles().redis_key(&2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_corrupt_for_every_layout_are_still_deleted() {
    let server = RedisServer::new();
    let new = Arc::new(new::Caches::new());
    new.connect(&server.url()).await.unwrap();
    let raw = server.raw().await;
    let key = new.profiles().redis_key(&7);
    wire::set(&raw, &key, b"\xCB garbage").await;
    assert_eq!(new.profiles().get(&7).await, None);
    assert!(!wire::exists(&raw, &key).await, "deleted as corrupt");
    assert_eq!(new.profiles().stats().corrupt_evicted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_on_one_version_removes_every_versions_entries() {
    let server = RedisServer::new();
    let (old, new) = (old::Caches::new(), new::Caches::new());
    old.connect(&server.url()).await.unwrap();
    new.connect(&server.url()).await.unwrap();
    let raw = server.raw().await;
    let ada = old::UserProfile {
        name: "Ada".into(),
        age: 36,
    };
    let ada2 = new::UserProfile {
        name: "Ada".into(),
        age: 36,
        email: "ada@example.com".into(),
    };
    for id in 0..30 {
        assert!(old.profiles().set(&id, &ada).await.unwrap());
        assert!(new.profiles().set(&id, &ada2).await.unwrap());
    }
    // Keys of a third layout the new version has never recorded, as a version rolled
    // back long ago would have left them.
    let stray = "user:profile@0badf00d:99";
    assert_ne!(new.profiles().redis_key(&99), stray);
    wire::set(&raw, stray, b"left behind").await;

    assert_eq!(
        new.profiles().clear().await,
        61,
        "both layouts and the stray key"
    );
    assert!(!wire::exists(&raw, &old.profiles().redis_key(&3)).await);
    assert!(!wire::exists(&raw, stray).await);
    assert_eq!(old.profiles().get(&3).await, None);
}

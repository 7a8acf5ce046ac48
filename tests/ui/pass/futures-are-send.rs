// Every future the API returns is `Send`, and the manager is `Send + Sync + 'static`, so
// it can live in statics, `Arc`s and axum state and be used from spawned tasks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};

#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String)]
pub struct UserNameCache;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = String, codec = "json")]
pub struct UserProfile {
    pub name: String,
}

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
        profiles: UserProfileCache,
    }
}

fn send<F: Future + Send>(future: F) -> F {
    future
}

fn send_sync_static<T: Send + Sync + 'static>() {}

#[allow(dead_code)]
fn every_future_is_send(manager: &CacheManager, profile: &UserProfile) {
    let key = "ada".to_owned();
    let entries = HashMap::from([(key.clone(), profile.clone())]);
    let keys = vec![key.clone()];

    let _ = send(manager.connect("memory://"));
    let _ = send(manager.disconnect());
    let _ = send(manager.health());
    let cache = manager.profiles();
    let _ = send(cache.get(&key));
    let _ = send(cache.set(&key, profile));
    let _ = send(cache.set_with_ttl(&key, profile, Duration::from_secs(1)));
    let _ = send(cache.mget(&keys));
    let _ = send(cache.mget(&[key.clone()]));
    let _ = send(cache.mset(&entries));
    let _ = send(cache.invalidate(&key));
    let _ = send(cache.minvalidate(&keys));
    let _ = send(cache.clear());
    let loaded = profile.clone();
    let _ = send(cache.get_or_load(&key, move || async move {
        Ok::<_, std::io::Error>(Some(loaded))
    }));
    let _ = send(cache.mget_or_load(&keys, |missing: Vec<String>| async move {
        Ok::<_, std::io::Error>(HashMap::<String, UserProfile>::with_capacity(missing.len()))
    }));
    let _ = send(manager.connect_with("memory://", &cache_manager::CacheConfig::new()));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    send_sync_static::<CacheManager>();
    send_sync_static::<&'static CacheManager>();
    send_sync_static::<cache_manager::TypedCache<UserNameCache>>();

    let manager: &'static CacheManager = CacheManager::global();
    manager.connect("memory://").await.unwrap();

    // Spawned tasks demand `Send + 'static` futures: through the global manager...
    let task = tokio::spawn(async move {
        manager.names().set(&1, &"ada".to_owned()).await.unwrap();
        manager.names().get(&1).await
    });
    assert_eq!(task.await.unwrap(), Some("ada".to_owned()));

    // ...and through an `Arc`-shared one.
    let shared = Arc::new(CacheManager::new());
    let task = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            shared.connect("memory://").await.unwrap();
            let profile = UserProfile { name: "Ada".into() };
            shared
                .profiles()
                .set(&"ada".to_owned(), &profile)
                .await
                .unwrap();
            shared
                .profiles()
                .mget(&["ada".to_owned()])
                .await
                .unwrap()
                .len()
        }
    });
    assert_eq!(task.await.unwrap(), 1);
    assert!(shared.health().await.healthy);
    shared.disconnect().await;
}

use cache_manager::{cache_registry, Cache};
use serde::{Deserialize, Serialize};

#[derive(Cache)]
#[cache(namespace = "user:name", ttl = 60, key = i64, value = String, local = 10_000)]
pub struct UserNameCache;

#[derive(Clone, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", ttl = 600, key = i64, local = 500, local_ttl = 30)]
pub struct UserProfile {
    pub name: String,
}

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
        profiles: UserProfileCache,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let manager = CacheManager::new();
    manager.connect("memory://").await.unwrap();
    manager.names().set(&1, &"ada".to_owned()).await.unwrap();
    assert_eq!(manager.names().get(&1).await.as_deref(), Some("ada"));
}

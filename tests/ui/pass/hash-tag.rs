// `hash_tag = true` writes the namespace in braces, so a Redis Cluster keeps every key of
// the cache in one slot; `hash_tag = false` is the default, keys spread.

use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user:profile", key = i64, value = String, hash_tag = true)]
pub struct ProfileCache;

#[derive(Cache)]
#[cache(namespace = "user:session", key = i64, value = String, hash_tag = false)]
pub struct SessionCache;

#[derive(Cache)]
#[cache(namespace = "user:id", key = i64, value = String)]
pub struct IdCache;

cache_registry! {
    pub struct CacheManager {
        profiles: ProfileCache,
        sessions: SessionCache,
        ids: IdCache,
    }
}

fn main() {
    let manager = CacheManager::new();
    assert_eq!(manager.profiles().redis_key(&7), "{user:profile}:7");
    assert_eq!(manager.sessions().redis_key(&7), "user:session:7");
    assert_eq!(manager.ids().redis_key(&7), "user:id:7");
    let tags: Vec<_> = CacheManager::CACHES.iter().map(|c| c.hash_tag).collect();
    assert_eq!(tags, [true, false, false]);
}

// `hash_tag = true` writes the namespace in braces, so a Redis Cluster keeps every key of
// the cache in one slot; `hash_tag = false` is the default, keys spread. (Bincode entries
// carry their layout, the value type's fingerprint, after the namespace.)

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
    let layout = |i: usize| format!("@{:08x}", CacheManager::CACHES[i].fingerprint);
    assert_eq!(manager.profiles().redis_key(&7), format!("{{user:profile}}{}:7", layout(0)));
    assert_eq!(manager.sessions().redis_key(&7), format!("user:session{}:7", layout(1)));
    assert_eq!(manager.ids().redis_key(&7), format!("user:id{}:7", layout(2)));
    let tags: Vec<_> = CacheManager::CACHES.iter().map(|c| c.hash_tag).collect();
    assert_eq!(tags, [true, false, false]);
}

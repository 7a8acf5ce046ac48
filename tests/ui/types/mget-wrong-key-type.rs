use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

async fn lookup(manager: &CacheManager) {
    let keys: Vec<u64> = vec![1, 2, 3];
    let _ = manager.names().mget(&keys).await;
}

fn main() {
    let _ = lookup;
}

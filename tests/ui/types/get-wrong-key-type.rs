use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

async fn lookup(manager: &CacheManager) -> Option<String> {
    manager.names().get(&"42").await
}

fn main() {
    let _ = lookup;
}

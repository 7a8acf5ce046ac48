use cache_manager::{Cache, CacheError, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

async fn store(manager: &CacheManager) -> Result<bool, CacheError> {
    manager.names().set(&42, &42).await
}

fn main() {
    let _ = store;
}

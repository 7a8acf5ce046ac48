use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String)]
pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
        display_names: UserNameCache,
    }
}

fn main() {}

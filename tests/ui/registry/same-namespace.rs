use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String)]
pub struct UserNameCache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = u32)]
pub struct UserAgeCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
        ages: UserAgeCache,
    }
}

fn main() {}

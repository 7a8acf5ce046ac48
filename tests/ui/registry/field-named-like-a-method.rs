use cache_manager::{Cache, cache_registry};

#[derive(Cache)]
#[cache(namespace = "app:global", key = String, value = String)]
pub struct GlobalSettingsCache;

cache_registry! {
    pub struct CacheManager {
        global: GlobalSettingsCache,
    }
}

fn main() {}

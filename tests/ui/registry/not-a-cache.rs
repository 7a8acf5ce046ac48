use cache_manager::cache_registry;

pub struct UserNameCache;

cache_registry! {
    pub struct CacheManager {
        names: UserNameCache,
    }
}

fn main() {}

use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String)]
pub struct UserCache;

#[derive(Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64)]
pub struct UserProfile {
    pub name: String,
}

cache_registry! {
    pub struct CacheManager {
        profiles: UserProfileCache,
        users: UserCache,
    }
}

fn main() {}

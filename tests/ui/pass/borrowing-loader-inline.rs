//! A cache without `load_timeout_ms` or `refresh_ahead` runs loads in the caller, so its
//! loader may borrow from the caller, even with the other read-through keys.
use cache_manager::{cache_registry, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64, fail_safe = 3600, negative_ttl = 30,
        ttl_jitter = 60, single_flight = "global")]
pub struct UserProfile {
    pub name: String,
}

cache_registry! {
    pub struct CacheManager {
        profiles: UserProfileCache,
    }
}

pub struct Db;

impl Db {
    async fn profile(&self, _id: i64) -> Result<Option<UserProfile>, std::io::Error> {
        Ok(None)
    }
}

async fn read(manager: &CacheManager, db: &Db) -> Option<UserProfile> {
    manager.profiles().get_or_load(&1, || db.profile(1)).await.ok().flatten()
}

fn main() {
    let _ = read;
}

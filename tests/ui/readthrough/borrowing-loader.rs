//! A cache whose loads may outlive their caller (`load_timeout_ms`) cannot take a loader
//! that borrows from the caller.
use cache_manager::{cache_registry, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64, fail_safe = 3600, load_timeout_ms = 150)]
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

async fn read(manager: &CacheManager, db: &Db) {
    let _ = manager.profiles().get_or_load(&1, || db.profile(1)).await;
}

fn main() {
    let _ = read;
}

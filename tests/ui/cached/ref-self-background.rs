//! A `&self` method borrows `self`: it cannot read through a cache whose loads may
//! outlive the call.
use cache_manager::{cache_registry, cached, Cache};
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

#[derive(Debug)]
pub struct DbError;

impl Db {
    async fn profile(&self, _id: i64) -> Result<Option<UserProfile>, DbError> {
        Ok(None)
    }
}

pub struct Service {
    db: Db,
}

impl Service {
    #[cached(cache = CacheManager::global().profiles(), key = id)]
    async fn profile(&self, id: i64) -> Result<Option<UserProfile>, DbError> {
        self.db.profile(id).await
    }
}

fn main() {}

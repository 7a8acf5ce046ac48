//! `#[cached]` reads one key; `keys` belongs to `#[invalidates]`.
use cache_manager::{cache_registry, cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64)]
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

#[cached(cache = CacheManager::global().profiles(), keys = [user_id])]
async fn load_profile(db: &Db, user_id: i64) -> Result<Option<UserProfile>, DbError> {
    db.profile(user_id).await
}

fn main() {}

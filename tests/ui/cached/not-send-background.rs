//! A body holding an `Rc` across an await is not `Send`, which a load running on a task
//! of its own must be.
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

use std::rc::Rc;

#[cached(cache = CacheManager::global().profiles(), key = user_id)]
async fn load_profile(user_id: i64) -> Result<Option<UserProfile>, DbError> {
    let db = Rc::new(Db);
    db.profile(user_id).await
}

fn main() {}

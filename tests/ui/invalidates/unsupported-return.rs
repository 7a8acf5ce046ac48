//! A `bool` does not say whether the body succeeded.
use cache_manager::{cache_registry, invalidates, Cache};
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

pub struct User {
    pub id: i64,
    pub email: String,
}

impl Db {
    async fn update(&self, _user: &User) -> Result<(), DbError> {
        Ok(())
    }
}

#[invalidates(cache = CacheManager::global().profiles(), key = user.id)]
async fn update_profile(db: &Db, user: &User) -> bool {
    db.update(user).await.is_ok()
}

fn main() {}

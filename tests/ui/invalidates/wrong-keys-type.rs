//! The keys must be of the cache's key type (`i64`).
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

#[invalidates(cache = CacheManager::global().profiles(), keys = users.iter().map(|user| user.email.clone()))]
async fn update_profiles(db: &Db, users: &[User]) -> Result<(), DbError> {
    for user in users {
        db.update(user).await?;
    }
    Ok(())
}

fn main() {}

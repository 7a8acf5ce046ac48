//! Caches declared as an application declares them, in a crate that denies the strict
//! lints an application may turn on: `cargo clippy --workspace --all-targets -- -D
//! warnings` then checks the code `#[derive(Cache)]`, `cache_registry!`, `#[cached]` and
//! `#[invalidates]` generate, which a trybuild pass case cannot (trybuild does not run
//! clippy).
//!
//! What fails here is what a user's build would report: rustc's lints (a generated
//! public item without docs fails `missing_docs` here, checked by removing the derive's
//! doc comment), and those clippy lints that look inside macro output. Most clippy lints
//! skip code expanded from another crate's macros, in this crate as in a user's.
#![deny(unused_qualifications, missing_docs, unsafe_code, rust_2018_idioms)]
#![deny(clippy::all, clippy::pedantic)]

use cache_manager::{Cache, cache_registry, cached, invalidates};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user's id by UUID.
#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
pub struct UserUuidToIdCache;

/// A session's user, stored as text.
#[derive(Cache)]
#[cache(namespace = "session:token", key = String, value = Uuid, codec = "string")]
pub struct SessionTokenCache;

/// A user's profile, cached by id, with a first level and the read-through keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Cache)]
#[cache(
    namespace = "user:profile",
    key = i64,
    local = 1000,
    fail_safe = 60,
    load_timeout_ms = 100,
    negative_ttl = 30,
    ttl_jitter = 5
)]
pub struct UserProfile {
    /// Display name.
    pub name: String,
}

/// A user's role, cached by id as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:role", key = i64, codec = "json", version = 2)]
pub enum Role {
    /// Full access.
    Admin,
    /// Ordinary access.
    Member,
}

cache_registry! {
    /// Every cache of this application.
    pub struct CacheManager {
        /// UUID to id.
        uuid_to_id: UserUuidToIdCache,
        /// Session token to user.
        session: SessionTokenCache,
        /// Profiles.
        profiles: UserProfileCache,
        /// Roles.
        roles: RoleCache,
    }
}

/// What the database says when it fails.
#[derive(Debug)]
pub struct DbError;

/// The application's database.
pub struct Db;

impl Db {
    async fn role(&self, id: i64) -> Result<Option<Role>, DbError> {
        let _ = self;
        std::future::ready(Ok((id == 1).then_some(Role::Admin))).await
    }

    async fn rename(&self, id: i64, name: &str) -> Result<(), DbError> {
        let _ = (self, id, name);
        std::future::ready(Ok(())).await
    }
}

/// A user's role, read through the cache.
///
/// # Errors
///
/// When the database fails and nothing is cached.
#[cached(cache = CacheManager::global().roles(), key = id)]
pub async fn role(db: &Db, id: i64) -> Result<Option<Role>, DbError> {
    db.role(id).await
}

/// Renames a user, then forgets the cached profile.
///
/// # Errors
///
/// When the database fails; the cached profile is kept then.
#[invalidates(cache = CacheManager::global().profiles(), key = id)]
pub async fn rename(db: &Db, id: i64, name: &str) -> Result<(), DbError> {
    db.rename(id, name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn the_caches_work_as_declared() {
        let manager = CacheManager::default();
        assert_eq!(manager.caches().len(), 4);
        manager
            .connect("memory://")
            .await
            .expect("memory:// connects");
        assert!(manager.roles().set(&2, &Role::Member).await.expect("set"));
        assert_eq!(manager.roles().get(&2).await, Some(Role::Member));
        assert_eq!(manager.profiles().namespace(), "user:profile");
        assert!(format!("{manager:?}").contains("CacheManager"));
    }
}

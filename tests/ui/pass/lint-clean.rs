//! Generated code is lint-clean in a crate that denies the strict lints on public caches.
#![deny(unused_qualifications, missing_docs, unsafe_code)]
// Clippy does not run under trybuild: `tests/lint-clean` is the crate clippy checks.

/// The caches, declared in a module so generated paths are resolved away from the root.
pub mod caches {
    use cache_manager::{Cache, cache_registry};
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

    /// A user's profile, cached by id.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
    #[cache(namespace = "user:profile", key = i64, codec = "json", version = 2)]
    pub struct UserProfile {
        /// Display name.
        pub name: String,
    }

    /// A user's role, cached by id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Cache)]
    #[cache(namespace = "user:role", key = i64)]
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
}

fn main() {
    let manager = caches::CacheManager::default();
    assert_eq!(manager.caches().len(), 4);
    assert_eq!(manager.uuid_to_id().namespace(), "user:uuid_to_id");
    assert_eq!(manager.session().namespace(), "session:token");
    assert_eq!(manager.profiles().namespace(), "user:profile");
    assert_eq!(manager.roles().namespace(), "user:role");
    let _ = format!("{manager:?}");
}

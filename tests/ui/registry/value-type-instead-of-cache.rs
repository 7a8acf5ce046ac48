use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", key = i64)]
pub struct UserProfile {
    pub name: String,
}

// The derive on `UserProfile` generates `UserProfileCache`; that is what registers.
cache_registry! {
    pub struct CacheManager {
        profiles: UserProfile,
    }
}

fn main() {}

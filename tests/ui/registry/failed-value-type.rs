use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};

// A form B declaration with a bad TTL: the generated `UserProfileCache` still exists, so
// the registry and the calls below add no follow-on errors.
#[derive(Debug, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", ttl = 0, key = i64)]
pub struct UserProfile {
    pub name: String,
}

cache_registry! {
    pub struct CacheManager {
        profiles: UserProfileCache,
    }
}

async fn use_it(manager: &CacheManager) {
    let _: Option<UserProfile> = manager.profiles().get(&1).await;
}

fn main() {
    let _ = use_it;
}

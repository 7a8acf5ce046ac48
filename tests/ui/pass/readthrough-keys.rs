// The read-through keys: each sets its const of `Cache`, the others keep the trait's
// defaults (all off), and a soft timeout or a refresh ahead makes loads run in the
// background.

use std::any::TypeId;
use std::convert::Infallible;
use std::time::Duration;

use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};
// The load modes and `SingleFlight` are named here only to check what the derive chose.
use cache_manager::__private::{Background, Inline, SingleFlight};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", ttl = 600, key = i64,
        fail_safe = 3600, load_timeout_ms = 150, refresh_ahead = 80,
        negative_ttl = 30, ttl_jitter = 60, single_flight = "global")]
pub struct UserProfile { pub name: String }

/// A refresh ahead alone runs loads in the background too; it needs no fail-safe.
#[derive(Cache)]
#[cache(namespace = "user:score", key = i64, value = u64, refresh_ahead = 50, single_flight = "local")]
pub struct ScoreCache;

/// Fail-safe without a timeout: loads stay in the caller.
#[derive(Cache)]
#[cache(namespace = "user:name", key = i64, value = String, fail_safe = 60)]
pub struct NameCache;

cache_registry! {
    pub struct CacheManager {
        profiles: UserProfileCache,
        scores: ScoreCache,
        names: NameCache,
    }
}

// The consts are usable in const context.
const _: () = assert!(<UserProfileCache as Cache>::REFRESH_AHEAD == 80);
const _: () = assert!(<UserProfileCache as Cache>::FAIL_SAFE.as_secs() == 3600);

fn loads<C: Cache>() -> TypeId {
    TypeId::of::<C::Loads>()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    type Profiles = UserProfileCache;
    assert_eq!(<Profiles as Cache>::FAIL_SAFE, Duration::from_secs(3600));
    assert_eq!(<Profiles as Cache>::LOAD_TIMEOUT, Some(Duration::from_millis(150)));
    assert_eq!(<Profiles as Cache>::REFRESH_AHEAD, 80);
    assert_eq!(<Profiles as Cache>::NEGATIVE_TTL, Duration::from_secs(30));
    assert_eq!(<Profiles as Cache>::TTL_JITTER, Duration::from_secs(60));
    assert_eq!(<Profiles as Cache>::SINGLE_FLIGHT, SingleFlight::Global);
    assert_eq!(<Profiles as Cache>::TTL, Duration::from_secs(600));
    assert!(!<Profiles as Cache>::COMPRESS);
    assert_eq!(<Profiles as Cache>::MAX_BYTES, None);
    assert_eq!(loads::<Profiles>(), TypeId::of::<Background>());

    assert_eq!(<ScoreCache as Cache>::REFRESH_AHEAD, 50);
    assert_eq!(<ScoreCache as Cache>::SINGLE_FLIGHT, SingleFlight::Local);
    assert_eq!(<ScoreCache as Cache>::FAIL_SAFE, Duration::ZERO);
    assert_eq!(<ScoreCache as Cache>::LOAD_TIMEOUT, None);
    assert_eq!(loads::<ScoreCache>(), TypeId::of::<Background>());

    assert_eq!(<NameCache as Cache>::FAIL_SAFE, Duration::from_secs(60));
    assert_eq!(<NameCache as Cache>::REFRESH_AHEAD, 0);
    assert_eq!(<NameCache as Cache>::NEGATIVE_TTL, Duration::ZERO);
    assert_eq!(<NameCache as Cache>::TTL_JITTER, Duration::ZERO);
    assert_eq!(loads::<NameCache>(), TypeId::of::<Inline>());

    // A loader that owns what it needs suits a cache whose loads may outlive the caller.
    let manager = CacheManager::new();
    manager.connect("memory://").await.unwrap();
    let ada = UserProfile { name: "Ada".into() };
    let found = ada.clone();
    let loaded = manager
        .profiles()
        .get_or_load(&1, move || async move { Ok::<_, Infallible>(Some(found)) })
        .await;
    assert_eq!(loaded, Ok(Some(ada.clone())));
    assert_eq!(manager.profiles().get(&1).await, Some(ada));
}

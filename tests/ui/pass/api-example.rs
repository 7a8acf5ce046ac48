// The declaration block of API.md, verbatim, exercised on the in-process backend.

use cache_manager::{cache_registry, Cache};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// Form A: a mapping between existing types, declared on a unit struct.
#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
pub struct UserUuidToIdCache;

#[derive(Cache)]
#[cache(namespace = "user:id_to_uuid", key = i64, value = Uuid)] // ttl defaults to 600 s
pub struct UserIdToUuidCache;

#[derive(Cache)]
#[cache(namespace = "session:token", ttl = 300, key = String, value = Uuid, codec = "string")]
pub struct SessionTokenCache;

/// Form B: annotate the value type; the derive generates `UserProfileCache`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", ttl = 600, key = i64)]
pub struct UserProfile {
    pub name: String,
    pub email: String,
    pub preferences: HashMap<String, String>,
}

cache_registry! {
    /// Every cache of this application.
    pub struct CacheManager {
        uuid_to_id: UserUuidToIdCache,
        id_to_uuid: UserIdToUuidCache,
        session: SessionTokenCache,
        profiles: UserProfileCache,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), cache_manager::CacheError> {
    use std::time::Duration;

    let manager: &'static CacheManager = CacheManager::global();
    let local = CacheManager::new();
    let id = Uuid::new_v4();

    // Not connected yet: reads miss, writes report `Ok(false)`.
    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert!(!manager.uuid_to_id().set(&id, &1).await?);
    assert!(!manager.health().await.healthy);

    manager.connect("memory://").await?;
    let health = serde_json::to_value(manager.health().await).unwrap();
    assert_eq!(health["status"], "connected");
    assert_eq!(health["healthy"], true);

    // The declared settings.
    assert_eq!(manager.uuid_to_id().namespace(), "user:uuid_to_id");
    assert_eq!(manager.id_to_uuid().ttl(), Duration::from_secs(600));
    assert_eq!(manager.session().ttl(), Duration::from_secs(300));
    assert_eq!(manager.profiles().namespace(), "user:profile");

    // get / set / invalidate on every form and codec.
    assert!(manager.uuid_to_id().set(&id, &42).await?);
    assert_eq!(manager.uuid_to_id().get(&id).await, Some(42));
    assert!(manager.id_to_uuid().set(&42, &id).await?);
    assert_eq!(manager.id_to_uuid().get(&42).await, Some(id));
    let token = String::from("tok-1");
    assert!(manager.session().set(&token, &id).await?);
    assert_eq!(manager.session().get(&token).await, Some(id));
    assert!(manager.session().invalidate(&token).await);
    assert!(!manager.session().invalidate(&token).await);
    assert_eq!(manager.session().get(&token).await, None);

    let ada = UserProfile {
        name: "Ada".into(),
        email: "ada@example.com".into(),
        preferences: HashMap::from([("theme".into(), "dark".into())]),
    };
    assert!(
        manager
            .profiles()
            .set_with_ttl(&1, &ada, Duration::from_millis(1500))
            .await?
    );
    assert_eq!(manager.profiles().get(&1).await, Some(ada.clone()));

    // Batches: `&Vec<K>` and `&[k1, k2]` both work for `mget`.
    let entries = HashMap::from([(2, ada.clone()), (3, ada.clone())]);
    assert!(manager.profiles().mset(&entries).await?);
    let found = manager.profiles().mget(&vec![1, 2, 3, 4]).await?;
    assert_eq!(found.len(), 4);
    assert_eq!(found[&2].as_ref(), Some(&ada));
    assert_eq!(found[&4], None);
    let found = manager.profiles().mget(&[2, 2]).await?;
    assert_eq!(found.len(), 1);

    // A second manager is independent of the global one.
    assert_eq!(local.uuid_to_id().get(&id).await, None);

    manager.disconnect().await;
    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert!(!manager.uuid_to_id().set(&id, &42).await?);
    Ok(())
}

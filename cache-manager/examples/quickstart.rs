//! The main job: declare caches, register them, connect, read and write, check health.
//!
//! ```text
//! cargo run -p cache-manager --example quickstart                      # memory://
//! REDIS_URL=redis://127.0.0.1:6379/0 cargo run -p cache-manager --example quickstart
//! ```

use std::collections::HashMap;

use cache_manager::{Cache, CacheError, MAX_BATCH, cache_registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// UUID to database id.
#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
pub struct UserUuidToIdCache;

/// Database id to UUID.
#[derive(Cache)]
#[cache(namespace = "user:id_to_uuid", key = i64, value = Uuid)]
pub struct UserIdToUuidCache;

/// Session token to user UUID, stored as text so a Python service can read it.
#[derive(Cache)]
#[cache(namespace = "session:token", ttl = 300, key = String, value = Uuid, codec = "string")]
pub struct SessionTokenCache;

/// A user's profile, cached as itself; the derive generates `UserProfileCache`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "user:profile", ttl = 600, key = i64)]
pub struct UserProfile {
    /// Display name.
    pub name: String,
    /// Contact address.
    pub email: String,
    /// Free-form settings.
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

#[tokio::main]
async fn main() -> Result<(), CacheError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "memory://".to_owned());
    let manager = CacheManager::global();
    manager.connect(&url).await?;

    // Registered caches, as an operator would list them.
    for info in manager.caches() {
        println!(
            "registered {:<10} namespace={:<16} ttl={:>3}s codec={}",
            info.field,
            info.namespace,
            info.ttl.as_secs(),
            info.codec
        );
    }

    // The data-access-layer pattern: try the cache, load on a miss, populate both directions.
    let user_uuid = Uuid::new_v4();
    let user_id = match manager.uuid_to_id().get(&user_uuid).await {
        Some(id) => id,
        None => {
            let id = 42; // loaded from the database
            manager.uuid_to_id().set(&user_uuid, &id).await?;
            manager.id_to_uuid().set(&id, &user_uuid).await?;
            id
        }
    };
    println!(
        "uuid {user_uuid} -> id {user_id}; cached back: {:?}",
        manager.id_to_uuid().get(&user_id).await
    );

    let profile = UserProfile {
        name: "Ada".into(),
        email: "ada@example.com".into(),
        preferences: HashMap::from([("theme".into(), "dark".into())]),
    };
    let stored = manager.profiles().set(&user_id, &profile).await?;
    println!(
        "profile stored: {stored}; read back: {:?}",
        manager.profiles().get(&user_id).await
    );

    manager
        .session()
        .set(&"token-abc123".to_owned(), &user_uuid)
        .await?;
    println!(
        "session token-abc123 -> {:?}",
        manager.session().get(&"token-abc123".to_owned()).await
    );

    // Batch loading, chunked to the batch limit.
    let uuids: Vec<Uuid> = (0..250).map(|_| Uuid::new_v4()).collect();
    let mut found = 0;
    for chunk in uuids.chunks(MAX_BATCH) {
        let ids: HashMap<Uuid, i64> = chunk.iter().zip(1000..).map(|(u, i)| (*u, i)).collect();
        manager.uuid_to_id().mset(&ids).await?;
        found += manager
            .uuid_to_id()
            .mget(chunk)
            .await?
            .values()
            .filter(|v| v.is_some())
            .count();
    }
    println!("batch: {found} of {} uuids cached", uuids.len());

    // An update invalidates both directions.
    let removed = manager.uuid_to_id().invalidate(&user_uuid).await
        & manager.id_to_uuid().invalidate(&user_id).await;
    println!("invalidated both directions: {removed}");

    let health = manager.health().await;
    println!(
        "health: {}",
        serde_json::to_string(&health).expect("health serializes")
    );

    manager.disconnect().await;
    Ok(())
}

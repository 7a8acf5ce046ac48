//! The Python CacheManager guide's scenarios, written as `docs/scenarios.md` shows them,
//! run on `memory://`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use cache_manager::{Cache, CacheError, CacheKey, Codec, CodecError, MAX_BATCH, cache_registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
struct UserUuidToIdCache;

#[derive(Cache)]
#[cache(namespace = "user:id_to_uuid", key = i64, value = Uuid)]
struct UserIdToUuidCache;

/// Short TTL: sessions change often.
#[derive(Cache)]
#[cache(namespace = "session:token", ttl = 300, key = String, value = Uuid, codec = "string")]
struct SessionTokenCache;

/// Long TTL: reference data rarely changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "app:settings", ttl = 900, key = String, codec = "json")]
struct AppSettings {
    feature_flags: Vec<String>,
}

/// A custom key type: `{tenant}/{sku}` is injective because tenant ids are numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TenantSku {
    tenant: u32,
    sku: String,
}

impl CacheKey for TenantSku {
    fn write_key(&self, out: &mut String) {
        self.tenant.write_key(out);
        out.push('/');
        out.push_str(&self.sku);
    }
}

/// A price in cents, stored as `"12.34"` for a reporting tool that reads Redis directly.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Price(pub u64);

/// A custom codec: decimal text with two places.
enum DecimalText {}

impl Codec<Price> for DecimalText {
    const NAME: &'static str = "decimal-text";

    fn encode(value: &Price, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(format!("{}.{:02}", value.0 / 100, value.0 % 100).as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Price, CodecError> {
        let text = std::str::from_utf8(bytes).map_err(CodecError::new)?;
        let (units, cents) = text
            .split_once('.')
            .ok_or_else(|| CodecError::msg("expected `units.cents`"))?;
        if cents.len() != 2 {
            return Err(CodecError::msg("expected two decimal places"));
        }
        let units = u64::from_str(units).map_err(CodecError::new)?;
        let cents = u64::from_str(cents).map_err(CodecError::new)?;
        Ok(Price(units * 100 + cents))
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[derive(Cache)]
#[cache(namespace = "catalog:price", ttl = 900, key = TenantSku, value = Price, codec = DecimalText)]
struct PriceCache;

cache_registry! {
    /// The scenarios' caches.
    struct CacheManager {
        uuid_to_id: UserUuidToIdCache,
        id_to_uuid: UserIdToUuidCache,
        session: SessionTokenCache,
        settings: AppSettingsCache,
        prices: PriceCache,
    }
}

/// A row of the users table.
#[derive(Debug, Clone, PartialEq)]
struct User {
    id: i64,
    uuid: Uuid,
}

/// A stand-in database that counts its queries.
#[derive(Default)]
struct Database {
    users: Vec<User>,
    queries: std::sync::atomic::AtomicUsize,
}

impl Database {
    fn with_users(n: i64) -> Self {
        Database {
            users: (1..=n)
                .map(|id| User {
                    id,
                    uuid: Uuid::new_v4(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn by_uuids(&self, uuids: &[Uuid]) -> Vec<User> {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.users
            .iter()
            .filter(|u| uuids.contains(&u.uuid))
            .cloned()
            .collect()
    }

    fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Scenario: the data-access layer. Try the cache, load on a miss, populate both ways.
async fn user_id_by_uuid(caches: &CacheManager, db: &Database, uuid: Uuid) -> Option<i64> {
    if let Some(id) = caches.uuid_to_id().get(&uuid).await {
        return Some(id);
    }
    let user = db.by_uuids(&[uuid]).pop()?;
    // A failed cache write is not the caller's problem: the cache is a luxury.
    let _ = caches.uuid_to_id().set(&uuid, &user.id).await;
    let _ = caches.id_to_uuid().set(&user.id, &uuid).await;
    Some(user.id)
}

/// Scenario: batch loading with chunking to the batch limit.
async fn user_ids_by_uuids(
    caches: &CacheManager,
    db: &Database,
    uuids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, CacheError> {
    let mut found = HashMap::with_capacity(uuids.len());
    let mut misses = Vec::new();
    for chunk in uuids.chunks(MAX_BATCH) {
        for (uuid, id) in caches.uuid_to_id().mget(chunk).await? {
            match id {
                Some(id) => {
                    found.insert(uuid, id);
                }
                None => misses.push(uuid),
            }
        }
    }
    for chunk in misses.chunks(MAX_BATCH) {
        let loaded: HashMap<Uuid, i64> = db
            .by_uuids(chunk)
            .into_iter()
            .map(|u| (u.uuid, u.id))
            .collect();
        caches.uuid_to_id().mset(&loaded).await?;
        found.extend(loaded);
    }
    Ok(found)
}

/// Scenario: an update invalidates both directions. Returns what each `invalidate` said
/// (the guide's version ignores it; the test checks it).
async fn on_user_updated(caches: &CacheManager, user: &User) -> (bool, bool) {
    let by_id = caches.id_to_uuid().invalidate(&user.id).await;
    let by_uuid = caches.uuid_to_id().invalidate(&user.uuid).await;
    (by_id, by_uuid)
}

async fn connected() -> CacheManager {
    let caches = CacheManager::new();
    caches.connect("memory://").await.unwrap();
    caches
}

#[tokio::test]
async fn data_access_layer_loads_once_then_serves_from_cache_both_ways() {
    let caches = connected().await;
    let db = Database::with_users(3);
    let ada = db.users[1].clone();
    assert_eq!(user_id_by_uuid(&caches, &db, ada.uuid).await, Some(ada.id));
    assert_eq!(user_id_by_uuid(&caches, &db, ada.uuid).await, Some(ada.id));
    assert_eq!(db.queries(), 1, "the second read came from the cache");
    assert_eq!(
        caches.id_to_uuid().get(&ada.id).await,
        Some(ada.uuid),
        "populated in both directions"
    );
    assert_eq!(user_id_by_uuid(&caches, &db, Uuid::new_v4()).await, None);
}

#[tokio::test]
async fn data_access_layer_still_answers_without_a_cache() {
    let caches = CacheManager::new(); // never connected
    let db = Database::with_users(1);
    let user = db.users[0].clone();
    assert_eq!(
        user_id_by_uuid(&caches, &db, user.uuid).await,
        Some(user.id)
    );
    assert_eq!(
        user_id_by_uuid(&caches, &db, user.uuid).await,
        Some(user.id)
    );
    assert_eq!(db.queries(), 2);
}

#[tokio::test]
async fn batch_loading_chunks_to_the_limit_and_fills_misses() {
    let caches = connected().await;
    let db = Database::with_users(250);
    let uuids: Vec<Uuid> = db.users.iter().map(|u| u.uuid).collect();
    let first = user_ids_by_uuids(&caches, &db, &uuids).await.unwrap();
    assert_eq!(first.len(), 250);
    assert_eq!(
        db.queries(),
        3,
        "misses loaded in chunks of at most {MAX_BATCH}"
    );
    let second = user_ids_by_uuids(&caches, &db, &uuids).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(db.queries(), 3, "everything came from the cache");
    let unchunked = caches.uuid_to_id().mget(&uuids).await.unwrap_err();
    assert!(matches!(unchunked, CacheError::Validation { .. }));
}

#[tokio::test]
async fn updates_invalidate_both_directions() {
    let caches = connected().await;
    let db = Database::with_users(1);
    let user = db.users[0].clone();
    assert_eq!(
        user_id_by_uuid(&caches, &db, user.uuid).await,
        Some(user.id)
    );
    // Both directions were cached by the load...
    assert_eq!(caches.uuid_to_id().get(&user.uuid).await, Some(user.id));
    assert_eq!(caches.id_to_uuid().get(&user.id).await, Some(user.uuid));
    assert_eq!(db.queries(), 1);
    // ...and both are removed by the update, each `invalidate` saying it removed one.
    assert_eq!(on_user_updated(&caches, &user).await, (true, true));
    assert_eq!(caches.uuid_to_id().get(&user.uuid).await, None);
    assert_eq!(caches.id_to_uuid().get(&user.id).await, None);
    // The next read loads from the database again; a second update finds nothing left.
    assert_eq!(
        user_id_by_uuid(&caches, &db, user.uuid).await,
        Some(user.id)
    );
    assert_eq!(db.queries(), 2, "the update did not force a reload");
    on_user_updated(&caches, &user).await;
    assert_eq!(on_user_updated(&caches, &user).await, (false, false));
}

#[tokio::test]
async fn ttls_follow_the_declarations() {
    let caches = connected().await;
    assert_eq!(caches.session().ttl().as_secs(), 300);
    assert_eq!(caches.uuid_to_id().ttl().as_secs(), 600);
    assert_eq!(caches.id_to_uuid().ttl().as_secs(), 600, "the default");
    assert_eq!(caches.settings().ttl().as_secs(), 900);
    let listed: Vec<(&str, u64)> = caches
        .caches()
        .iter()
        .map(|c| (c.namespace, c.ttl.as_secs()))
        .collect();
    assert!(listed.contains(&("session:token", 300)) && listed.contains(&("app:settings", 900)));
}

#[tokio::test]
async fn custom_key_and_codec_round_trip() {
    let caches = connected().await;
    let key = TenantSku {
        tenant: 7,
        sku: "A-1".into(),
    };
    assert_eq!(caches.prices().redis_key(&key), "catalog:price:7/A-1");
    assert!(caches.prices().set(&key, &Price(1234)).await.unwrap());
    assert_eq!(caches.prices().get(&key).await, Some(Price(1234)));
    assert_eq!(
        CacheManager::CACHES
            .iter()
            .find(|c| c.field == "prices")
            .unwrap()
            .codec,
        "decimal-text"
    );
    let settings = AppSettings {
        feature_flags: vec!["beta".into()],
    };
    caches
        .settings()
        .set(&"global".to_owned(), &settings)
        .await
        .unwrap();
    assert_eq!(
        caches.settings().get(&"global".to_owned()).await,
        Some(settings)
    );
}

#[tokio::test]
async fn health_endpoint_reports_status_as_json() {
    let caches = CacheManager::new();
    let (code, body) = health_endpoint(&caches).await;
    assert_eq!(
        (code, body["status"].as_str(), body["healthy"].as_bool()),
        (503, Some("disconnected"), Some(false))
    );
    caches.connect("memory://").await.unwrap();
    let (code, body) = health_endpoint(&caches).await;
    assert_eq!(
        (code, body["status"].as_str(), body["healthy"].as_bool()),
        (200, Some("connected"), Some(true))
    );
}

/// Scenario: a health endpoint, framework-neutral: the status code and the JSON body.
async fn health_endpoint(caches: &CacheManager) -> (u16, serde_json::Value) {
    let health = caches.health().await;
    let code = if health.healthy { 200 } else { 503 };
    (
        code,
        serde_json::to_value(&health).expect("health serializes"),
    )
}

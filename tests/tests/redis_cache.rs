//! What the typed caches write to and read from a real `redis-server`: key names, codec
//! bytes, expiries, batch round trips, and the handling of corrupt entries.

use std::collections::HashMap;
use std::time::Duration;

use cache_manager::{Cache, CacheError, cache_registry};
use cache_tests::{LogCapture, RedisServer, RoundTripProxy, wire};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Form A: a mapping between existing types, declared on a unit struct.
#[derive(Cache)]
#[cache(namespace = "user:uuid_to_id", ttl = 600, key = Uuid, value = i64)]
pub struct UserUuidToIdCache;

/// Form A with the default TTL.
#[derive(Cache)]
#[cache(namespace = "user:id_to_uuid", key = i64, value = Uuid)] // ttl defaults to 600 s
pub struct UserIdToUuidCache;

/// Form A with the string codec, byte-compatible with a service that stores `str(uuid)`.
#[derive(Cache)]
#[cache(namespace = "session:token", ttl = 300, key = String, value = Uuid, codec = "string")]
pub struct SessionTokenCache;

/// Form B: annotate the value type; the derive generates `UserProfileCache`.
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

/// Form B with the json codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "doc:settings", ttl = 120, key = String, codec = "json")]
pub struct Settings {
    /// Colour scheme.
    pub theme: String,
    /// Text size in points.
    pub font_size: u32,
    /// Enabled feature flags.
    pub flags: Vec<String>,
}

/// Integers through the string codec: `str(int)`.
#[derive(Cache)]
#[cache(namespace = "counter:visits", ttl = 60, key = i64, value = i64, codec = "string")]
pub struct VisitCountCache;

/// A json cache whose non-empty values cannot encode: JSON map keys must be strings.
#[derive(Cache)]
#[cache(namespace = "blob:index", ttl = 60, key = i64, value = HashMap<Vec<u8>, i64>, codec = "json")]
pub struct ByteKeyedIndexCache;

/// A value whose `Serialize` refuses when `ok` is false; stored as a bare `bool`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragile {
    /// Whether serialization succeeds.
    pub ok: bool,
}

impl Serialize for Fragile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.ok {
            serializer.serialize_bool(true)
        } else {
            Err(serde::ser::Error::custom(
                "this value refuses to be serialized",
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Fragile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bool::deserialize(deserializer).map(|ok| Fragile { ok })
    }
}

/// A bincode cache of [`Fragile`] values.
#[derive(Cache)]
#[cache(namespace = "fragile", ttl = 60, key = i64, value = Fragile)]
pub struct FragileCache;

/// An item cache as first deployed.
#[derive(Cache)]
#[cache(namespace = "catalog:item", ttl = 60, key = i64, value = String)]
pub struct ItemCache;

/// The same cache after a change its fingerprint cannot see: `version = 2`.
#[derive(Cache)]
#[cache(namespace = "catalog:item", ttl = 60, key = i64, value = String, version = 2)]
pub struct ItemV2Cache;

cache_registry! {
    /// Every cache of this application.
    pub struct CacheManager {
        uuid_to_id: UserUuidToIdCache,
        id_to_uuid: UserIdToUuidCache,
        session: SessionTokenCache,
        profiles: UserProfileCache,
        settings: SettingsCache,
        visits: VisitCountCache,
        byte_index: ByteKeyedIndexCache,
        fragile: FragileCache,
        items: ItemCache,
    }
}

cache_registry! {
    /// The next deployment, whose item cache was bumped to `version = 2`.
    pub struct NextManager {
        items: ItemV2Cache,
    }
}

const SAMPLE_UUID: &str = "550e8400-e29b-41d4-a716-446655440001";

fn sample_uuid() -> Uuid {
    Uuid::parse_str(SAMPLE_UUID).unwrap()
}

fn profile(name: &str) -> UserProfile {
    UserProfile {
        name: name.to_owned(),
        email: format!("{}@example.com", name.to_lowercase()),
        preferences: HashMap::from([("lang".to_owned(), "en".to_owned())]),
    }
}

/// A server, a manager connected to it, and a raw connection to inspect it.
async fn setup() -> (RedisServer, CacheManager, MultiplexedConnection) {
    let server = RedisServer::new();
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.expect("connect");
    assert!(manager.health().await.healthy, "fresh server not healthy");
    let raw = server.raw().await;
    (server, manager, raw)
}

/// As [`setup`], with the manager connected through a [`RoundTripProxy`].
async fn setup_proxied() -> (
    RedisServer,
    RoundTripProxy,
    CacheManager,
    MultiplexedConnection,
) {
    let server = RedisServer::new();
    let proxy = RoundTripProxy::start(server.port()).await;
    let manager = CacheManager::new();
    manager
        .connect(&server.url_on_port(proxy.port()))
        .await
        .expect("connect");
    assert!(manager.health().await.healthy, "fresh server not healthy");
    let raw = server.raw().await;
    (server, proxy, manager, raw)
}

fn fingerprint_of(field: &str) -> u32 {
    CacheManager::CACHES
        .iter()
        .find(|c| c.field == field)
        .unwrap_or_else(|| panic!("no cache `{field}`"))
        .fingerprint
}

/// The registry a bincode cache of `namespace` keeps of the layouts of its entries in
/// use (the fingerprints of the value type's versions), next to its entries.
fn layouts_registry(namespace: &str) -> String {
    format!("!layouts!{namespace}:")
}

fn framed_header(fingerprint: u32) -> Vec<u8> {
    let mut header = vec![0xCB];
    header.extend_from_slice(&fingerprint.to_le_bytes());
    header
}

// ---------------------------------------------------------------------------------------
// Key names and codec bytes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_namespace_colon_key() {
    let (_server, manager, raw) = setup().await;
    let upper = Uuid::parse_str(&SAMPLE_UUID.to_uppercase()).unwrap();

    assert!(manager.uuid_to_id().set(&upper, &42).await.unwrap());
    assert!(manager.id_to_uuid().set(&42, &sample_uuid()).await.unwrap());
    assert!(
        manager
            .session()
            .set(&"tok-AbC_1".to_owned(), &sample_uuid())
            .await
            .unwrap()
    );
    assert!(manager.profiles().set(&-7, &profile("Ada")).await.unwrap());

    // Text codecs: `{namespace}:{key}`, what other services read. bincode:
    // `{namespace}@{fingerprint:08x}:{key}`, one key per layout of the value type, and
    // the registry of the layouts in use.
    let (id_to_uuid, profiles, uuid_to_id) = (
        fingerprint_of("id_to_uuid"),
        fingerprint_of("profiles"),
        fingerprint_of("uuid_to_id"),
    );
    assert_eq!(
        wire::keys(&raw).await,
        [
            layouts_registry("user:id_to_uuid"),
            layouts_registry("user:profile"),
            layouts_registry("user:uuid_to_id"),
            "session:token:tok-AbC_1".to_owned(),
            format!("user:id_to_uuid@{id_to_uuid:08x}:42"),
            format!("user:profile@{profiles:08x}:-7"),
            format!("user:uuid_to_id@{uuid_to_id:08x}:{SAMPLE_UUID}"),
        ]
    );
    assert_eq!(
        manager.uuid_to_id().redis_key(&upper),
        format!("user:uuid_to_id@{uuid_to_id:08x}:{SAMPLE_UUID}")
    );
    assert_eq!(
        manager.session().redis_key(&"tok-AbC_1".to_owned()),
        "session:token:tok-AbC_1"
    );
    assert_eq!(
        manager.settings().redis_key(&"ada".to_owned()),
        "doc:settings:ada"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bincode_entries_start_with_tag_and_fingerprint() {
    let (_server, manager, raw) = setup().await;
    manager.uuid_to_id().set(&sample_uuid(), &42).await.unwrap();
    manager.profiles().set(&1, &profile("Ada")).await.unwrap();

    let id_bytes = wire::get(&raw, &manager.uuid_to_id().redis_key(&sample_uuid()))
        .await
        .expect("entry written");
    assert_eq!(id_bytes[..5], framed_header(fingerprint_of("uuid_to_id")));
    // bincode is compact: a small i64 is one varint byte after the header.
    assert_eq!(id_bytes.len(), 6, "{id_bytes:?}");

    let profile_bytes = wire::get(&raw, &manager.profiles().redis_key(&1))
        .await
        .unwrap();
    assert_eq!(profile_bytes[0], 0xCB);
    assert_eq!(
        profile_bytes[..5],
        framed_header(fingerprint_of("profiles"))
    );
    assert_ne!(fingerprint_of("uuid_to_id"), fingerprint_of("profiles"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_codec_reads_what_a_python_service_stores() {
    let (_server, manager, raw) = setup().await;
    // What `r.set(f"session:token:{t}", str(user_uuid))` and `str(count)` store.
    wire::set(&raw, "session:token:abc", SAMPLE_UUID.as_bytes()).await;
    wire::set(&raw, "counter:visits:9", b"-17").await;

    assert_eq!(
        manager.session().get(&"abc".to_owned()).await,
        Some(sample_uuid())
    );
    assert_eq!(manager.visits().get(&9).await, Some(-17));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_codec_writes_display_text() {
    let (_server, manager, raw) = setup().await;
    let upper = Uuid::parse_str(&SAMPLE_UUID.to_uppercase()).unwrap();
    assert!(
        manager
            .session()
            .set(&"abc".to_owned(), &upper)
            .await
            .unwrap()
    );
    assert!(manager.visits().set(&9, &1234567890123).await.unwrap());

    assert_eq!(
        wire::get(&raw, "session:token:abc").await.as_deref(),
        Some(SAMPLE_UUID.as_bytes())
    );
    assert_eq!(
        wire::get(&raw, "counter:visits:9").await.as_deref(),
        Some(&b"1234567890123"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_codec_stores_plain_serde_json() {
    let (_server, manager, raw) = setup().await;
    let settings = Settings {
        theme: "dark".into(),
        font_size: 14,
        flags: vec!["beta".into(), "wide".into()],
    };
    assert!(
        manager
            .settings()
            .set(&"ada".to_owned(), &settings)
            .await
            .unwrap()
    );
    assert_eq!(
        wire::get(&raw, "doc:settings:ada").await.unwrap(),
        serde_json::to_vec(&settings).unwrap()
    );

    // JSON written by another service: other field order, whitespace.
    wire::set(
        &raw,
        "doc:settings:bob",
        br#"{ "flags": [], "font_size": 11, "theme": "light" }"#,
    )
    .await;
    assert_eq!(
        manager.settings().get(&"bob".to_owned()).await,
        Some(Settings {
            theme: "light".into(),
            font_size: 11,
            flags: vec![],
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_b_values_round_trip() {
    let (_server, manager, _raw) = setup().await;
    let ada = profile("Ada");
    assert!(manager.profiles().set(&1, &ada).await.unwrap());
    assert_eq!(manager.profiles().get(&1).await, Some(ada));
    assert_eq!(manager.profiles().get(&2).await, None);
    assert_eq!(manager.profiles().namespace(), "user:profile");
    assert_eq!(manager.profiles().ttl(), Duration::from_secs(600));
}

// ---------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------

async fn assert_ttl_near(raw: &MultiplexedConnection, key: &str, ttl: i64) {
    let actual = wire::ttl(raw, key).await;
    assert!(
        (ttl - 2..=ttl).contains(&actual),
        "TTL of {key} is {actual}, expected {ttl} s (give or take 2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_applies_the_declared_ttl() {
    let (_server, manager, raw) = setup().await;
    manager.uuid_to_id().set(&sample_uuid(), &1).await.unwrap();
    manager.id_to_uuid().set(&1, &sample_uuid()).await.unwrap();
    manager
        .session()
        .set(&"t".to_owned(), &sample_uuid())
        .await
        .unwrap();
    manager.profiles().set(&1, &profile("Ada")).await.unwrap();
    manager.visits().set(&1, &5).await.unwrap();

    let uuid_to_id = manager.uuid_to_id().redis_key(&sample_uuid());
    assert_ttl_near(&raw, &uuid_to_id, 600).await;
    assert_ttl_near(&raw, &manager.id_to_uuid().redis_key(&1), 600).await;
    assert_ttl_near(&raw, "session:token:t", 300).await;
    assert_ttl_near(&raw, &manager.profiles().redis_key(&1), 600).await;
    assert_ttl_near(&raw, "counter:visits:1", 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_with_ttl_sets_millisecond_expiry() {
    let (_server, manager, raw) = setup().await;
    let cache = manager.visits();
    assert!(
        cache
            .set_with_ttl(&1, &10, Duration::from_millis(12_900))
            .await
            .unwrap()
    );
    assert!(
        cache
            .set_with_ttl(&2, &20, Duration::from_secs(3))
            .await
            .unwrap()
    );

    // Above 12 000 ms: not truncated to whole seconds; at most 12 900: not rounded up.
    let pttl = wire::pttl(&raw, "counter:visits:1").await;
    assert!((12_001..=12_900).contains(&pttl), "PTTL {pttl}");
    let pttl = wire::pttl(&raw, "counter:visits:2").await;
    assert!((2_001..=3_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(cache.get(&1).await, Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_with_zero_ttl_is_rejected_and_writes_nothing() {
    let (_server, manager, raw) = setup().await;
    let err = manager
        .visits()
        .set_with_ttl(&1, &10, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::Validation {
                namespace: "counter:visits",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("counter:visits"), "{err}");
    assert_eq!(wire::dbsize(&raw).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let (_server, manager, raw) = setup().await;
    let cache = manager.visits();
    assert!(
        cache
            .set_with_ttl(&1, &10, Duration::from_millis(150))
            .await
            .unwrap()
    );
    assert_eq!(cache.get(&1).await, Some(10));
    eventually("the entry to expire", || async {
        cache.get(&1).await.is_none()
    })
    .await;
    assert!(!wire::exists(&raw, "counter:visits:1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_sets_the_declared_ttl_on_every_entry() {
    let (_server, manager, raw) = setup().await;
    let entries: HashMap<String, Uuid> = (0..5)
        .map(|i| (format!("tok{i}"), Uuid::new_v4()))
        .collect();
    assert!(manager.session().mset(&entries).await.unwrap());

    for (token, id) in &entries {
        let key = format!("session:token:{token}");
        assert_ttl_near(&raw, &key, 300).await;
        assert_eq!(
            wire::get(&raw, &key).await.unwrap(),
            id.to_string().into_bytes()
        );
    }
    assert_eq!(wire::dbsize(&raw).await, 5);
}

// ---------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_is_one_mget_command_in_one_round_trip() {
    let (_server, proxy, manager, raw) = setup_proxied().await;
    let cache = manager.id_to_uuid();
    let stored: HashMap<i64, Uuid> = (1..=3).map(|i| (i, Uuid::new_v4())).collect();
    assert!(cache.mset(&stored).await.unwrap());

    wire::reset_stats(&raw).await;
    proxy.reset();
    let found = cache.mget(&[1, 2, 3, 4, 5]).await.unwrap();
    assert_eq!(proxy.round_trips(), 1);
    let calls = wire::command_calls(&raw).await;

    assert_eq!(found.len(), 5);
    for i in 1..=3 {
        assert_eq!(found[&i], Some(stored[&i]));
    }
    assert_eq!(found[&4], None);
    assert_eq!(found[&5], None);
    assert_eq!(calls.get("mget"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("get"), None, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_returns_one_entry_per_distinct_key() {
    let (_server, manager, raw) = setup().await;
    let cache = manager.visits();
    cache.set(&1, &100).await.unwrap();

    wire::reset_stats(&raw).await;
    let keys = vec![1, 2, 1, 1, 2];
    let found = cache.mget(&keys).await.unwrap();

    assert_eq!(found, HashMap::from([(1, Some(100)), (2, None)]));
    assert_eq!(wire::command_calls(&raw).await.get("mget"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_sends_the_keys_in_the_callers_order() {
    // Redis finds keys written together faster when asked in that order; a hash map's
    // order would scatter them. Twenty keys in no sorted order, with repeats.
    let (_server, manager, raw) = setup().await;
    let keys: Vec<i64> = vec![
        17, 3, 41, 3, 8, 29, 1, 36, 12, 50, 17, 7, 44, 21, 2, 33, 9, 48, 15, 26, 5, 38,
    ];
    let mut first_seen: Vec<i64> = Vec::new();
    for key in &keys {
        if !first_seen.contains(key) {
            first_seen.push(*key);
        }
    }
    assert_eq!(first_seen.len(), 20);

    wire::log_commands(&raw).await;
    let found = manager.visits().mget(&keys).await.unwrap();
    let mgets = wire::logged_commands(&raw, "MGET").await;

    assert_eq!(found.len(), 20);
    let sent: Vec<String> = first_seen
        .iter()
        .map(|key| format!("counter:visits:{key}"))
        .collect();
    assert_eq!(
        mgets,
        vec![sent],
        "one MGET, each key once, in the caller's order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_is_one_pipelined_round_trip() {
    let (_server, proxy, manager, raw) = setup_proxied().await;
    let entries: HashMap<i64, i64> = (0..10).map(|i| (i, i * 10)).collect();

    // The proxy does see separate round trips: two sets are two.
    proxy.reset();
    manager.visits().set(&100, &1).await.unwrap();
    manager.visits().set(&101, &1).await.unwrap();
    assert_eq!(proxy.round_trips(), 2);

    wire::reset_stats(&raw).await;
    proxy.reset();
    assert!(manager.visits().mset(&entries).await.unwrap());
    assert_eq!(proxy.round_trips(), 1);
    let calls = wire::command_calls(&raw).await;

    // Ten SETs carrying their own expiry, and nothing else from the cache: no separate
    // EXPIRE, no MULTI/EXEC, no GET.
    assert_eq!(calls.get("set"), Some(&10), "{calls:?}");
    for other in ["expire", "pexpire", "multi", "exec", "mset", "get", "setex"] {
        assert_eq!(calls.get(other), None, "{other} in {calls:?}");
    }
    for (key, value) in &entries {
        assert_eq!(
            wire::get(&raw, &format!("counter:visits:{key}"))
                .await
                .unwrap(),
            value.to_string().into_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_of_more_than_100_keys_is_rejected_before_sending() {
    let (_server, manager, raw) = setup().await;
    let keys: Vec<i64> = (0..101).collect();

    wire::reset_stats(&raw).await;
    let err = manager.id_to_uuid().mget(&keys).await.unwrap_err();
    let calls = wire::command_calls(&raw).await;

    assert!(
        matches!(
            err,
            CacheError::Validation {
                namespace: "user:id_to_uuid",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("user:id_to_uuid"), "{err}");
    assert_eq!(calls.get("mget"), None, "{calls:?}");

    // The limit itself is accepted.
    let found = manager.id_to_uuid().mget(&keys[..100]).await.unwrap();
    assert_eq!(found.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_of_more_than_100_entries_writes_nothing() {
    let (_server, manager, raw) = setup().await;
    let entries: HashMap<i64, i64> = (0..101).map(|i| (i, i)).collect();

    wire::reset_stats(&raw).await;
    let err = manager.visits().mset(&entries).await.unwrap_err();

    assert!(
        matches!(
            err,
            CacheError::Validation {
                namespace: "counter:visits",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("counter:visits"), "{err}");
    assert_eq!(wire::dbsize(&raw).await, 0);
    assert_eq!(wire::command_calls(&raw).await.get("set"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_with_a_value_json_cannot_encode_writes_nothing() {
    let (_server, manager, raw) = setup().await;
    let entries: HashMap<i64, HashMap<Vec<u8>, i64>> = (0..10)
        .map(|i| (i, HashMap::new()))
        .chain([(10, HashMap::from([(vec![1u8, 2], 3)]))])
        .collect();

    let err = manager.byte_index().mset(&entries).await.unwrap_err();

    assert!(
        matches!(
            err,
            CacheError::Serialization {
                namespace: "blob:index",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("blob:index"), "{err}");
    assert_eq!(wire::dbsize(&raw).await, 0);
    // The encodable values alone are fine.
    let encodable: HashMap<i64, HashMap<Vec<u8>, i64>> =
        entries.into_iter().filter(|(k, _)| *k != 10).collect();
    assert!(manager.byte_index().mset(&encodable).await.unwrap());
    assert_eq!(wire::dbsize(&raw).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_with_a_failing_serialize_impl_writes_nothing() {
    let (_server, manager, raw) = setup().await;
    let good = Fragile { ok: true };
    let bad = Fragile { ok: false };
    let entries: HashMap<i64, Fragile> = (0..5)
        .map(|i| (i, good.clone()))
        .chain([(5, bad)])
        .collect();

    let err = manager.fragile().mset(&entries).await.unwrap_err();

    assert!(
        matches!(
            err,
            CacheError::Serialization {
                namespace: "fragile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("refuses"), "{err}");
    assert_eq!(wire::dbsize(&raw).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_of_a_value_that_fails_to_encode_keeps_the_old_entry() {
    let (_server, manager, raw) = setup().await;
    let cache = manager.fragile();
    let good = Fragile { ok: true };
    assert!(cache.set(&1, &good).await.unwrap());
    let key = cache.redis_key(&1);
    let before = wire::get(&raw, &key).await.unwrap();

    let err = cache.set(&1, &Fragile { ok: false }).await.unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::Serialization {
                namespace: "fragile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("fragile"), "{err}");
    assert_eq!(wire::get(&raw, &key).await, Some(before));
    assert_eq!(cache.get(&1).await, Some(good));

    let err = manager
        .byte_index()
        .set(&2, &HashMap::from([(vec![0u8], 1)]))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Serialization { .. }), "{err:?}");
    assert!(!wire::exists(&raw, "blob:index:2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_reports_whether_an_entry_was_removed() {
    let (_server, manager, raw) = setup().await;
    let cache = manager.uuid_to_id();
    let id = Uuid::new_v4();
    cache.set(&id, &7).await.unwrap();

    assert!(cache.invalidate(&id).await);
    assert!(!wire::exists(&raw, &cache.redis_key(&id)).await);
    assert!(!cache.invalidate(&id).await);
    assert_eq!(cache.get(&id).await, None);
}

// ---------------------------------------------------------------------------------------
// Corrupt entries
// ---------------------------------------------------------------------------------------

/// Plants `bytes` under the uuid_to_id key of a fresh UUID; returns that UUID and key.
async fn plant_id_entry(
    manager: &CacheManager,
    raw: &MultiplexedConnection,
    bytes: &[u8],
) -> (Uuid, String) {
    let id = Uuid::new_v4();
    let key = manager.uuid_to_id().redis_key(&id);
    wire::set(raw, &key, bytes).await;
    (id, key)
}

/// The bytes the uuid_to_id cache writes for `value`.
async fn valid_id_bytes(
    manager: &CacheManager,
    raw: &MultiplexedConnection,
    value: i64,
) -> Vec<u8> {
    let id = Uuid::new_v4();
    manager.uuid_to_id().set(&id, &value).await.unwrap();
    let key = manager.uuid_to_id().redis_key(&id);
    let bytes = wire::get(raw, &key).await.unwrap();
    assert!(manager.uuid_to_id().invalidate(&id).await);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_deletes_corrupt_entry() {
    let (_server, manager, raw) = setup().await;
    let (id, key) = plant_id_entry(&manager, &raw, b"\x00\xffnot bincode at all").await;

    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert!(!wire::exists(&raw, &key).await, "corrupt entry not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_a_corrupt_entry_never_deletes_a_value_written_meanwhile() {
    // The race: a get reads corrupt bytes, another writer stores a good value, then the
    // get's eviction reaches the server. A plain DEL would delete the good value; the
    // compare-and-delete must leave it.
    let (_server, proxy, manager, raw) = setup_proxied().await;
    let manager = std::sync::Arc::new(manager);
    let token = "race-token".to_owned();
    let key = manager.session().redis_key(&token);
    wire::set(&raw, &key, b"not a uuid").await;
    let good = sample_uuid();

    proxy.hold_after_next_reply();
    let reader = tokio::spawn({
        let manager = std::sync::Arc::clone(&manager);
        let token = token.clone();
        async move { manager.session().get(&token).await }
    });
    // The GET went through and its reply came back; the eviction it triggers is held.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while proxy.held() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the get sent nothing after reading the corrupt entry"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Meanwhile another writer stores a good value, straight to the server.
    wire::set(&raw, &key, good.to_string().as_bytes()).await;
    proxy.release();

    assert_eq!(
        reader.await.expect("the reader panicked"),
        None,
        "the get must have read the corrupt bytes (a miss)"
    );
    assert_eq!(
        wire::get(&raw, &key).await.as_deref(),
        Some(good.to_string().as_bytes()),
        "the eviction of the corrupt bytes deleted the value written meanwhile"
    );
    assert_eq!(manager.session().get(&token).await, Some(good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_treats_bytes_of_another_type_as_corrupt() {
    let (_server, manager, raw) = setup().await;
    // A Uuid entry, planted where an i64 is expected.
    manager.id_to_uuid().set(&1, &sample_uuid()).await.unwrap();
    let uuid_bytes = wire::get(&raw, &manager.id_to_uuid().redis_key(&1))
        .await
        .unwrap();
    let (id, key) = plant_id_entry(&manager, &raw, &uuid_bytes).await;
    // A profile entry, planted where a Uuid is expected.
    manager.profiles().set(&1, &profile("Ada")).await.unwrap();
    let profile_bytes = wire::get(&raw, &manager.profiles().redis_key(&1))
        .await
        .unwrap();
    let planted = manager.id_to_uuid().redis_key(&2);
    wire::set(&raw, &planted, &profile_bytes).await;

    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert_eq!(manager.id_to_uuid().get(&2).await, None);
    assert!(!wire::exists(&raw, &key).await);
    assert!(!wire::exists(&raw, &planted).await);
    // The entries of the right type are untouched.
    assert_eq!(manager.id_to_uuid().get(&1).await, Some(sample_uuid()));
    assert_eq!(manager.profiles().get(&1).await, Some(profile("Ada")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_treats_a_wrong_fingerprint_as_corrupt() {
    let (_server, manager, raw) = setup().await;
    let mut bytes = valid_id_bytes(&manager, &raw, 42).await;
    let (good_id, _) = plant_id_entry(&manager, &raw, &bytes).await;
    bytes[1] ^= 0xFF;
    let (bad_id, bad_key) = plant_id_entry(&manager, &raw, &bytes).await;

    assert_eq!(manager.uuid_to_id().get(&good_id).await, Some(42));
    assert_eq!(manager.uuid_to_id().get(&bad_id).await, None);
    assert!(!wire::exists(&raw, &bad_key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_treats_trailing_bytes_as_corrupt() {
    let (_server, manager, raw) = setup().await;
    let mut bytes = valid_id_bytes(&manager, &raw, 42).await;
    bytes.push(0);
    let (id, key) = plant_id_entry(&manager, &raw, &bytes).await;

    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert!(!wire::exists(&raw, &key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_deletes_entries_the_text_codecs_cannot_parse() {
    let (_server, manager, raw) = setup().await;
    wire::set(&raw, "session:token:t", b"not-a-uuid").await;
    wire::set(&raw, "counter:visits:1", b"12x").await;
    wire::set(&raw, "counter:visits:2", b"\xff\xfe").await;
    wire::set(&raw, "doc:settings:s", b"{\"theme\": ").await;

    assert_eq!(manager.session().get(&"t".to_owned()).await, None);
    assert_eq!(manager.visits().get(&1).await, None);
    assert_eq!(manager.visits().get(&2).await, None);
    assert_eq!(manager.settings().get(&"s".to_owned()).await, None);
    assert_eq!(wire::dbsize(&raw).await, 0, "{:?}", wire::keys(&raw).await);
}

/// Entries of another version of the value type are neither read nor deleted: each
/// version has its own key (a rolling deploy, see tests/tests/deploy.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_another_version_are_misses_and_stay() {
    let (server, manager, raw) = setup().await;
    let next = NextManager::new();
    next.connect(&server.url()).await.unwrap();
    assert_ne!(
        CacheManager::CACHES
            .iter()
            .find(|c| c.field == "items")
            .unwrap()
            .fingerprint,
        NextManager::CACHES[0].fingerprint
    );
    assert_ne!(manager.items().redis_key(&1), next.items().redis_key(&1));

    assert!(
        manager
            .items()
            .set(&1, &"v1 shape".to_owned())
            .await
            .unwrap()
    );
    assert_eq!(next.items().get(&1).await, None);
    assert!(
        wire::exists(&raw, &manager.items().redis_key(&1)).await,
        "the other version's entry stays"
    );

    assert!(next.items().set(&2, &"v2 shape".to_owned()).await.unwrap());
    let found = manager.items().mget(&[2]).await.unwrap();
    assert_eq!(found[&2], None);
    assert!(wire::exists(&raw, &next.items().redis_key(&2)).await);

    assert!(next.items().set(&1, &"v2 shape".to_owned()).await.unwrap());
    assert_eq!(next.items().get(&1).await.as_deref(), Some("v2 shape"));
    assert_eq!(
        manager.items().get(&1).await.as_deref(),
        Some("v1 shape"),
        "each version reads its own"
    );
    assert_eq!(manager.items().stats().corrupt_evicted, 0);
    assert_eq!(next.items().stats().corrupt_evicted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_deletes_corrupt_entries_and_returns_the_others() {
    let (_server, manager, raw) = setup().await;
    let cache = manager.uuid_to_id();
    let (good_a, good_b, missing) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    cache.set(&good_a, &1).await.unwrap();
    cache.set(&good_b, &2).await.unwrap();
    let mut wrong_fp = valid_id_bytes(&manager, &raw, 3).await;
    wrong_fp[2] ^= 0x01;
    let (garbage, garbage_key) = plant_id_entry(&manager, &raw, b"garbage").await;
    let (stale, stale_key) = plant_id_entry(&manager, &raw, &wrong_fp).await;
    let (long, long_key) = plant_id_entry(&manager, &raw, &{
        let mut b = valid_id_bytes(&manager, &raw, 4).await;
        b.extend_from_slice(b"tail");
        b
    })
    .await;

    wire::reset_stats(&raw).await;
    let found = cache
        .mget(&[good_a, garbage, stale, missing, long, good_b])
        .await
        .unwrap();

    assert_eq!(
        found,
        HashMap::from([
            (good_a, Some(1)),
            (garbage, None),
            (stale, None),
            (missing, None),
            (long, None),
            (good_b, Some(2)),
        ])
    );
    assert_eq!(wire::command_calls(&raw).await.get("mget"), Some(&1));
    for key in [&garbage_key, &stale_key, &long_key] {
        assert!(!wire::exists(&raw, key).await, "{key} not deleted");
    }
    assert!(wire::exists(&raw, &cache.redis_key(&good_a)).await);
    assert!(wire::exists(&raw, &cache.redis_key(&good_b)).await);
}

#[tokio::test(flavor = "current_thread")]
async fn corrupt_entry_is_logged_at_error_level_with_its_namespace() {
    let logs = LogCapture::start();
    let (_server, manager, raw) = setup().await;
    let (id, _) = plant_id_entry(&manager, &raw, b"garbage").await;
    wire::set(&raw, "counter:visits:5", b"five").await;

    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert_eq!(manager.visits().mget(&[5]).await.unwrap()[&5], None);

    let errors = logs.lines_at("ERROR");
    assert_eq!(errors.len(), 2, "{}", logs.text());
    assert!(
        errors[0].contains("namespace=\"user:uuid_to_id\"")
            || errors[0].contains("namespace=user:uuid_to_id"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("namespace=\"counter:visits\"")
            || errors[1].contains("namespace=counter:visits"),
        "{}",
        errors[1]
    );
    // The line names the Redis key, so an operator can inspect or delete it...
    let key = manager.uuid_to_id().redis_key(&id);
    assert!(
        errors[0].contains(&format!("key=\"{key}\"")),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("key=\"counter:visits:5\""),
        "{}",
        errors[1]
    );
    // ...and is logged inside the call's `cache` span, with the cache and the operation.
    assert!(
        errors[0].contains("cache{namespace=\"user:uuid_to_id\" operation=\"get\"}"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("cache{namespace=\"counter:visits\" operation=\"mget\"}"),
        "{}",
        errors[1]
    );
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 10 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

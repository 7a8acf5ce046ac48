//! How a manager connects to a real `redis-server`, degrades while it is unreachable,
//! recovers by itself, reports its health, and keeps the password out of everything.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_manager::{Cache, CacheError, HealthStatus, cache_registry};
use cache_tests::{LogCapture, RedisServer, free_port, wire};
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

/// Form A with the string codec.
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

cache_registry! {
    /// Every cache of this application.
    pub struct CacheManager {
        uuid_to_id: UserUuidToIdCache,
        id_to_uuid: UserIdToUuidCache,
        session: SessionTokenCache,
        profiles: UserProfileCache,
    }
}

const PASSWORD: &str = "s3cret-Pa55word";

/// The registry a bincode cache of `namespace` keeps of the layouts of its entries in
/// use (the fingerprints of the value type's versions), next to its entries.
fn layouts_registry(namespace: &str) -> String {
    format!("!layouts!{namespace}:")
}

fn profile(name: &str) -> UserProfile {
    UserProfile {
        name: name.to_owned(),
        email: format!("{}@example.com", name.to_lowercase()),
        preferences: HashMap::new(),
    }
}

/// Runs one cache call, failing the test if it takes a second or more: a degraded
/// backend must answer at once or within its response timeout, never hang.
async fn quick<F: Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than 1 s"))
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

/// Every kind of call, on every cache, degrades: misses, `Ok(false)`, `false`; each fast.
async fn assert_every_call_degrades(manager: &CacheManager) {
    let id = Uuid::new_v4();
    assert_eq!(quick("get", manager.uuid_to_id().get(&id)).await, None);
    let set = quick("set", manager.uuid_to_id().set(&id, &1)).await;
    assert!(matches!(set, Ok(false)), "set: {set:?}");
    let ttl = Duration::from_millis(1500);
    let set = quick(
        "set_with_ttl",
        manager.id_to_uuid().set_with_ttl(&1, &id, ttl),
    )
    .await;
    assert!(matches!(set, Ok(false)), "set_with_ttl: {set:?}");
    let found = quick("mget", manager.id_to_uuid().mget(&[1, 2, 2])).await;
    assert_eq!(found.unwrap(), HashMap::from([(1, None), (2, None)]));
    let entries = HashMap::from([("t".to_owned(), id)]);
    let mset = quick("mset", manager.session().mset(&entries)).await;
    assert!(matches!(mset, Ok(false)), "mset: {mset:?}");
    assert!(!quick("invalidate", manager.profiles().invalidate(&1)).await);
    assert_eq!(quick("get", manager.profiles().get(&1)).await, None);
}

/// Whether a write through the manager reaches Redis again.
async fn works(manager: &CacheManager) -> bool {
    quick("set", manager.id_to_uuid().set(&0, &Uuid::nil()))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_a_password_url() {
    let server = RedisServer::with_password(PASSWORD);
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.expect("connect");
    let raw = server.raw().await;

    let id = Uuid::new_v4();
    assert!(manager.uuid_to_id().set(&id, &7).await.unwrap());
    assert_eq!(manager.uuid_to_id().get(&id).await, Some(7));
    assert!(manager.profiles().set(&1, &profile("Ada")).await.unwrap());
    assert_eq!(manager.profiles().get(&1).await, Some(profile("Ada")));
    assert!(wire::exists(&raw, &manager.uuid_to_id().redis_key(&id)).await);
    assert!(manager.health().await.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_password_is_decoded() {
    let password = "p@ss:w/rd?#%&=+ x";
    let server = RedisServer::with_password(password);
    let url = server.url();
    assert!(!url.contains(password), "the harness must encode it: {url}");
    let manager = CacheManager::new();
    manager.connect(&url).await.expect("connect");

    assert!(works(&manager).await, "{:?}", manager.health().await);
    let health = serde_json::to_string(&manager.health().await).unwrap();
    assert!(
        !health.contains("p@ss") && !health.contains("p%40ss"),
        "{health}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_starts_degraded_without_error() {
    let logs = LogCapture::start();
    let server = RedisServer::with_password(PASSWORD);
    let wrong = "Wr0ng-Guess-pw";
    let url = format!("redis://:{wrong}@127.0.0.1:{}/0", server.port());
    let manager = CacheManager::new();
    let raw = server.raw().await;
    let planted = manager.profiles().redis_key(&1);
    wire::set(&raw, &planted, b"planted").await;

    quick("connect", manager.connect(&url))
        .await
        .expect("a wrong password is not a connect error");

    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(!health.healthy);
    assert_every_call_degrades(&manager).await;
    // Nothing reached Redis: the planted entry was neither read, deleted nor replaced.
    assert_eq!(
        wire::get(&raw, &planted).await.as_deref(),
        Some(&b"planted"[..])
    );
    assert_eq!(wire::dbsize(&raw).await, 1);

    let shown = [
        serde_json::to_string(&health).unwrap(),
        format!("{health:?}"),
        format!("{manager:?}"),
        logs.text(),
    ];
    for text in shown {
        assert!(!text.contains(wrong), "password leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_at_connect_degrades_without_error() {
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", free_port());
    let manager = CacheManager::new();
    quick("connect", manager.connect(&url))
        .await
        .expect("an unreachable server is not a connect error");

    let health = quick("health", manager.health()).await;
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(!health.healthy);
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["healthy"], false);
    assert!(!json.to_string().contains(PASSWORD), "{json}");
    assert_every_call_degrades(&manager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_started_degraded_recovers_when_redis_comes_up() {
    let mut server = RedisServer::new();
    server.kill();
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();
    assert!(!manager.health().await.healthy);
    assert!(!works(&manager).await);

    server.restart();
    eventually("the manager to reconnect", || works(&manager)).await;

    let raw = server.raw().await;
    assert!(wire::exists(&raw, &manager.id_to_uuid().redis_key(&0)).await);
    assert_eq!(manager.health().await.status, HealthStatus::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rejects_bad_urls_without_leaking_the_password() {
    let manager = CacheManager::new();
    let cases = [
        ("http://:hunter2@127.0.0.1:6379/0", "scheme"),
        ("redis://:hunter2@127.0.0.1:6379/cache", "database"),
        ("redis://:hunter2@127.0.0.1:6379/0?tiemout=5", "tiemout"),
        (
            "redis://:hunter2@127.0.0.1:6379/0?response_timeout_ms=soon",
            "response_timeout_ms",
        ),
        ("redis://:hunter2@127.0.0.1:99999/0", ""),
        ("not a url hunter2", ""),
    ];
    for (url, names) in cases {
        let err = manager.connect(url).await.unwrap_err();
        assert!(matches!(err, CacheError::Config { .. }), "{url}: {err:?}");
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains(names),
            "{url}: `{err}` does not name `{names}`"
        );
        assert!(
            !shown.contains("hunter2"),
            "{url}: password leaked: {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connect_keeps_the_current_connection() {
    let server = RedisServer::new();
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();

    let err = manager.connect("redis://127.0.0.1:1/0?bogus=1").await;
    assert!(matches!(err, Err(CacheError::Config { .. })), "{err:?}");

    assert!(works(&manager).await);
    assert!(manager.health().await.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_on_a_connected_manager_replaces_the_connection() {
    let (first, second) = (RedisServer::new(), RedisServer::new());
    let manager = CacheManager::new();
    manager.connect(&first.url()).await.unwrap();
    assert!(manager.id_to_uuid().set(&1, &Uuid::nil()).await.unwrap());

    manager.connect(&second.url()).await.unwrap();
    assert_eq!(manager.id_to_uuid().get(&1).await, None);
    assert!(manager.id_to_uuid().set(&2, &Uuid::nil()).await.unwrap());

    let (raw_first, raw_second) = (first.raw().await, second.raw().await);
    let registry = layouts_registry("user:id_to_uuid");
    assert_eq!(
        wire::keys(&raw_first).await,
        [registry.clone(), manager.id_to_uuid().redis_key(&1)]
    );
    // The first write on the new connection records the cache's layout there too.
    assert_eq!(
        wire::keys(&raw_second).await,
        [registry, manager.id_to_uuid().redis_key(&2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_caches_of_a_manager_share_one_connection() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();
    let received = wire::info_field(&raw, "total_connections_received").await;

    let id = Uuid::new_v4();
    manager.uuid_to_id().set(&id, &1).await.unwrap();
    manager.id_to_uuid().set(&1, &id).await.unwrap();
    manager.session().set(&"t".to_owned(), &id).await.unwrap();
    manager.profiles().set(&1, &profile("Ada")).await.unwrap();
    manager.profiles().mget(&[1, 2]).await.unwrap();
    manager.health().await;

    // The raw connection and the manager's one.
    assert_eq!(wire::clients(&raw).await.len(), 2);
    assert_eq!(
        wire::info_field(&raw, "total_connections_received").await,
        received
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_one_manager() {
    let server = RedisServer::new();
    let manager = Arc::new(CacheManager::new());
    manager.connect(&server.url()).await.unwrap();

    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move {
                let id = Uuid::new_v4();
                assert!(manager.uuid_to_id().set(&id, &i).await.unwrap());
                assert!(manager.id_to_uuid().set(&i, &id).await.unwrap());
                assert_eq!(manager.uuid_to_id().get(&id).await, Some(i));
                assert_eq!(manager.id_to_uuid().get(&i).await, Some(id));
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task panicked");
    }
    // 64 entries, and the registry of layouts of each of the two caches.
    let raw = server.raw().await;
    assert_eq!(wire::dbsize(&raw).await, 64 + 2);
    for namespace in ["user:uuid_to_id", "user:id_to_uuid"] {
        assert!(wire::exists(&raw, &layouts_registry(namespace)).await);
    }
}

// ---------------------------------------------------------------------------------------
// Outages
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_degrades_calls_and_recovers_without_reconnect() {
    let mut server = RedisServer::with_password(PASSWORD);
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();
    let id = Uuid::new_v4();
    assert!(manager.uuid_to_id().set(&id, &1).await.unwrap());

    server.kill();
    assert_every_call_degrades(&manager).await;
    assert_every_call_degrades(&manager).await;
    let health = quick("health", manager.health()).await;
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(health.degraded_calls > 0, "{health:?}");

    server.restart();
    eventually("the manager to reconnect", || works(&manager)).await;
    // The restarted server is empty: the old entry is gone, new ones stick.
    assert_eq!(manager.uuid_to_id().get(&id).await, None);
    assert!(manager.uuid_to_id().set(&id, &2).await.unwrap());
    assert_eq!(manager.uuid_to_id().get(&id).await, Some(2));
    assert!(manager.health().await.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_calls_time_out_and_recover_after_resume() {
    let server = RedisServer::new();
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();
    assert!(works(&manager).await);

    server.pause();
    assert_every_call_degrades(&manager).await;
    let health = tokio::time::timeout(Duration::from_secs(3), manager.health())
        .await
        .expect("health hung on a frozen server");
    assert!(!health.healthy, "{health:?}");

    server.resume();
    eventually("the manager to recover", || works(&manager)).await;
    assert_eq!(manager.id_to_uuid().get(&0).await, Some(Uuid::nil()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_write_keeps_the_connection() {
    let server = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("noeviction")
        .start();
    let raw = server.raw().await;
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();
    assert!(manager.profiles().set(&1, &profile("Ada")).await.unwrap());
    let received = wire::info_field(&raw, "total_connections_received").await;

    // Any memory use is now over the limit: writes get `-OOM`, reads still work.
    wire::config_set(&raw, "maxmemory", "1").await;
    assert!(!manager.profiles().set(&2, &profile("Bob")).await.unwrap());
    assert_eq!(manager.profiles().get(&1).await, Some(profile("Ada")));
    assert!(manager.health().await.healthy);
    assert_eq!(
        wire::info_field(&raw, "total_connections_received").await,
        received,
        "an OOM refusal must not rebuild the connection"
    );

    wire::config_set(&raw, "maxmemory", "0").await;
    assert!(manager.profiles().set(&2, &profile("Bob")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_degrade_before_connect_and_after_disconnect() {
    let server = RedisServer::new();
    let manager = CacheManager::new();
    assert_eq!(manager.health().await.status, HealthStatus::Disconnected);
    assert_every_call_degrades(&manager).await;

    manager.connect(&server.url()).await.unwrap();
    assert!(works(&manager).await);
    manager.disconnect().await;
    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Disconnected);
    assert!(!health.healthy);
    assert_every_call_degrades(&manager).await;

    // The entry is still in Redis for the next connection.
    manager.connect(&server.url()).await.unwrap();
    assert_eq!(manager.id_to_uuid().get(&0).await, Some(Uuid::nil()));
}

// ---------------------------------------------------------------------------------------
// Health, Debug and logs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_connected_without_the_password() {
    let server = RedisServer::with_password(PASSWORD);
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();

    let health = manager.health().await;
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["status"], "connected", "{json}");
    assert_eq!(json["healthy"], true, "{json}");
    assert!(health.healthy);
    for shown in [
        json.to_string(),
        format!("{health:?}"),
        format!("{manager:?}"),
    ] {
        assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn dead_redis_logs_the_outage_once_not_per_call() {
    let logs = LogCapture::start();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", free_port());
    let manager = CacheManager::new();
    manager.connect(&url).await.unwrap();

    for i in 0..200 {
        let id = Uuid::new_v4();
        assert_eq!(quick("get", manager.uuid_to_id().get(&id)).await, None);
        assert!(
            !quick("set", manager.id_to_uuid().set(&i, &id))
                .await
                .unwrap()
        );
    }

    let errors = logs.lines_at("ERROR");
    assert!(
        !errors.is_empty(),
        "the outage was not logged: {}",
        logs.text()
    );
    assert_eq!(
        errors.len(),
        1,
        "one outage, one error line, for 400 calls:\n{}",
        logs.text()
    );
    // The operator's line says why, in its `error` field, and where (redacted).
    let line = &errors[0];
    assert!(
        line.contains("error=") && line.to_lowercase().contains("refused"),
        "the outage line does not say why: {line}"
    );
    assert!(
        logs.text().lines().count() <= 10,
        "too many log lines:\n{}",
        logs.text()
    );
    assert!(!logs.text().contains(PASSWORD), "{}", logs.text());
}

#[tokio::test(flavor = "current_thread")]
async fn killed_redis_logs_the_outage_once_and_no_password() {
    let logs = LogCapture::start();
    let mut server = RedisServer::with_password(PASSWORD);
    let manager = CacheManager::new();
    manager.connect(&server.url()).await.unwrap();
    assert!(works(&manager).await);

    server.kill();
    for i in 0..200 {
        assert_eq!(quick("get", manager.id_to_uuid().get(&i)).await, None);
    }
    let errors = logs.lines_at("ERROR");
    assert!(
        !errors.is_empty(),
        "the outage was not logged: {}",
        logs.text()
    );
    assert_eq!(
        errors.len(),
        1,
        "one outage, one error line, for 200 calls:\n{}",
        logs.text()
    );
    assert!(
        errors[0].contains("error="),
        "the outage line does not say why: {}",
        errors[0]
    );

    server.restart();
    eventually("the manager to reconnect", || works(&manager)).await;
    assert_eq!(
        logs.lines_at("ERROR").len(),
        1,
        "reconnecting logged more errors:\n{}",
        logs.text()
    );
    assert!(!logs.text().contains(PASSWORD), "{}", logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnection_attempts_back_off_exponentially_up_to_the_cap() {
    use std::net::TcpListener;
    use std::time::Instant;

    // Something that accepts connections and closes them at once: every attempt fails
    // fast, so the gaps between attempts are the backoff alone.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let seen = Arc::clone(&attempts);
    let watching = Instant::now();
    let acceptor = std::thread::spawn(move || {
        while watching.elapsed() < Duration::from_millis(2_500) {
            match listener.accept() {
                Ok((socket, _)) => {
                    seen.lock().unwrap().push(Instant::now());
                    drop(socket);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });

    let (min, max) = (Duration::from_millis(20), Duration::from_millis(160));
    let manager = CacheManager::new();
    let config = cache_manager::CacheConfig::new().with_backoff(min, max);
    manager
        .connect_with(&format!("redis://127.0.0.1:{port}/0"), &config)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || acceptor.join().unwrap())
        .await
        .unwrap();
    manager.disconnect().await;

    let attempts = attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    println!("{} attempts in 2.5 s, gaps: {gaps:?}", attempts.len());
    // Growth: with waits of 20, 40, 80, 160, 160... ms (each jittered to between half
    // and all of it), 2.5 s hold about 17 attempts; without backoff there would be
    // hundreds, without the cap a handful.
    assert!(
        (8..=30).contains(&attempts.len()),
        "{} attempts in 2.5 s",
        attempts.len()
    );
    // The cap: no wait is longer than the maximum backoff (plus scheduling slack).
    assert!(
        gaps.iter().all(|g| *g < max + Duration::from_millis(60)),
        "a wait beyond the 160 ms cap: {gaps:?}"
    );
    // Growth: the first wait is around the minimum, the last ones at least half the cap.
    assert!(gaps[0] < Duration::from_millis(60), "{gaps:?}");
    let late = &gaps[gaps.len() - 4..];
    assert!(
        late.iter().all(|g| *g >= max / 2),
        "the waits did not grow to the cap: {gaps:?}"
    );
}

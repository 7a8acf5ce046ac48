//! The service over real HTTP on loopback, against a real `redis-server` and each
//! database: a temporary SQLite file, and a throwaway PostgreSQL server
//! (`support/postgres.rs`). Every behaviour test runs on both (`sqlite::…`,
//! `postgres::…`): the data-access layer's misses and hits, invalidation on update, the
//! batch route, every error status, and Redis killed with every request still answered.
//! PostgreSQL alone: the start-up migration run twice at once, passwords kept out of
//! errors and `Debug`, and a paused server answered from stale entries within the soft
//! timeout.

#[path = "support/postgres.rs"]
mod postgres_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum_service::{
    AppState, Caches, Db, PostgresOptions, User, UserCache, UserUuidToIdCache, serve,
};
use cache_manager::Cache;
use cache_tests::{RedisServer, wire};
use postgres_server::PostgresServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const SEEDED: i64 = 300;

/// An SQLite file in the temp directory, removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "axum-service-test-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        TempDb(std::env::temp_dir().join(name))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The service on a free loopback port.
struct Service {
    base: String,
    state: AppState,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    database: Backing,
}

/// The database a test runs on.
#[derive(Debug, Clone, Copy)]
enum Database {
    Sqlite,
    Postgres,
}

/// What keeps a test's database alive: removed (SQLite) or stopped (PostgreSQL) on drop.
enum Backing {
    Sqlite(#[allow(dead_code)] TempDb),
    Postgres(PostgresServer),
}

/// How long one PostgreSQL call may take in these tests: short, so a paused server
/// fails a request without a miss in seconds, yet well past the soft timeout (100 ms).
const PG_TIMEOUT: Duration = Duration::from_secs(3);

impl Database {
    /// A fresh database with `SEEDED` users.
    async fn open(self) -> (Db, Backing) {
        match self {
            Database::Sqlite => {
                let file = TempDb::new();
                let db = Db::open(&file.0, SEEDED as u32).expect("open the database");
                (db, Backing::Sqlite(file))
            }
            Database::Postgres => {
                let server = tokio::task::spawn_blocking(PostgresServer::start)
                    .await
                    .unwrap();
                let options = PostgresOptions::default()
                    .seed_users(SEEDED as u32)
                    .timeout(PG_TIMEOUT);
                let db = Db::connect_postgres(&server.url(), options)
                    .await
                    .expect("connect to postgres");
                (db, Backing::Postgres(server))
            }
        }
    }
}

impl Service {
    async fn start(cache_url: &str, database: Database) -> Self {
        let (db, backing) = database.open().await;
        assert_eq!(
            db.backend(),
            match database {
                Database::Sqlite => "sqlite",
                Database::Postgres => "postgres",
            }
        );
        let caches = Arc::new(Caches::new());
        caches.connect(cache_url).await.expect("connect");
        let state = AppState::new(caches, db);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Service {
            base,
            state,
            http,
            stop: Some(stop),
            task: Some(task),
            database: backing,
        }
    }

    /// The PostgreSQL server under a `Database::Postgres` service.
    fn postgres(&mut self) -> &mut PostgresServer {
        match &mut self.database {
            Backing::Postgres(server) => server,
            Backing::Sqlite(_) => panic!("not a PostgreSQL service"),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: String) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, body.to_string())
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, body.to_string())
            .await
    }

    async fn user(&self, id: i64) -> User {
        self.state.db.by_id(id).await.unwrap().expect("seeded user")
    }

    fn queries(&self) -> u64 {
        self.state.db.queries()
    }

    /// `hits` and `misses` of the cache registered as `field`.
    fn counts(&self, field: &str) -> (u64, u64) {
        let stats = self.state.caches.stats();
        let s = stats.iter().find(|s| s.field == field).unwrap();
        (s.hits, s.misses)
    }

    /// Stops accepting, finishes what is in flight and returns.
    async fn shut_down(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("graceful shutdown hung")
            .unwrap()
            .unwrap();
        self.state.caches.disconnect().await;
    }
}

/// One `#[tokio::test]` per behaviour and database: `sqlite::name` and `postgres::name`
/// both run `name(Database::…)`.
macro_rules! on_each_database {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Database::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Database::Postgres).await;
                }
            )*
        }
    };
}

on_each_database!(
    a_miss_reads_the_database_and_populates_both_directions_then_hits_do_not,
    an_update_changes_the_row_and_invalidates_both_directions,
    the_batch_route_resolves_in_chunks_of_the_batch_limit,
    bad_input_gets_the_right_status_and_a_json_error,
    health_metrics_and_manifest_routes,
    with_redis_killed_every_request_is_answered_from_the_database,
    runs_on_the_in_process_backend_without_redis,
);

fn user_json(user: &User) -> Value {
    serde_json::to_value(user).unwrap()
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a JSON error body: {body}"
    );
}

async fn a_miss_reads_the_database_and_populates_both_directions_then_hits_do_not(
    database: Database,
) {
    let server = RedisServer::new();
    let service = Service::start(&server.url(), database).await;
    let user = service.user(2).await;
    let raw = server.raw().await;
    let before = service.queries();

    let (status, body) = service.get(&format!("/users/{}", user.uuid)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, user_json(&user));
    assert_eq!(
        service.queries(),
        before + 1,
        "a miss loads from the database once"
    );
    assert_eq!(service.counts("uuid_to_id"), (0, 1));
    // Populated in every direction, on the wire.
    let caches = &service.state.caches;
    assert!(wire::exists(&raw, &caches.uuid_to_id().redis_key(&user.uuid)).await);
    assert!(wire::exists(&raw, &caches.id_to_uuid().redis_key(&2)).await);
    assert!(wire::exists(&raw, &caches.users().redis_key(&2)).await);

    let (status, again) = service.get(&format!("/users/{}", user.uuid)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, body);
    let (status, by_id) = service.get("/users/by-id/2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id, body);
    assert_eq!(
        service.queries(),
        before + 1,
        "hits do not touch the database"
    );
    assert_eq!(service.counts("uuid_to_id"), (1, 1));
    assert_eq!(service.counts("users"), (2, 0));

    // By id first: a miss that populates the UUID direction as well.
    let other = service.user(3).await;
    let before = service.queries();
    assert_eq!(service.get("/users/by-id/3").await.1, user_json(&other));
    assert_eq!(service.queries(), before + 1);
    assert_eq!(
        service.get(&format!("/users/{}", other.uuid)).await.1,
        user_json(&other)
    );
    assert_eq!(service.queries(), before + 1);
    service.shut_down().await;
}

async fn an_update_changes_the_row_and_invalidates_both_directions(database: Database) {
    let server = RedisServer::new();
    let service = Service::start(&server.url(), database).await;
    let user = service.user(5).await;
    let raw = server.raw().await;
    assert_eq!(
        service.get(&format!("/users/{}", user.uuid)).await.0,
        StatusCode::OK
    );
    let caches = &service.state.caches;
    assert!(wire::exists(&raw, &caches.users().redis_key(&5)).await);

    let (status, body) = service
        .put("/users/5", json!({ "name": "Grace Hopper" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Grace Hopper");
    assert_eq!(
        body["email"],
        user.email.as_str(),
        "fields not sent are kept"
    );
    assert!(!wire::exists(&raw, &caches.users().redis_key(&5)).await);
    assert!(!wire::exists(&raw, &caches.id_to_uuid().redis_key(&5)).await);
    assert!(!wire::exists(&raw, &caches.uuid_to_id().redis_key(&user.uuid)).await);

    let before = service.queries();
    let (status, fresh) = service.get(&format!("/users/{}", user.uuid)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fresh["name"], "Grace Hopper",
        "no stale read after the update"
    );
    assert_eq!(service.queries(), before + 1);
    assert_eq!(
        service.get("/users/by-id/5").await.1["name"],
        "Grace Hopper"
    );
    service.shut_down().await;
}

async fn the_batch_route_resolves_in_chunks_of_the_batch_limit(database: Database) {
    let server = RedisServer::new();
    let service = Service::start(&server.url(), database).await;
    let known: Vec<User> = service.state.db.by_ids((1..=250).collect()).await.unwrap();
    assert_eq!(known.len(), 250);
    let unknown: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut uuids: Vec<String> = known.iter().map(|u| u.uuid.to_string()).collect();
    uuids.extend(unknown.iter().map(Uuid::to_string));
    uuids.push(known[0].uuid.to_string()); // a duplicate is answered once

    let (status, body) = service
        .post("/users/batch", json!({ "uuids": uuids }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let users: Vec<User> = serde_json::from_value(body["users"].clone()).unwrap();
    assert_eq!(users, known, "every known user, in request order");
    let missing: Vec<Uuid> = serde_json::from_value(body["not_found"].clone()).unwrap();
    assert_eq!(missing, unknown);

    // The known users are cached now: the same batch again reads 255 + 250 keys in MGETs
    // of at most 100, and only the 5 unknown UUIDs (absence is not cached) go to the
    // database, in one query.
    let raw = server.raw().await;
    wire::reset_stats(&raw).await;
    let before = service.queries();
    let (status, again) = service
        .post("/users/batch", json!({ "uuids": uuids }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, body);
    assert_eq!(
        service.queries(),
        before + 1,
        "one query, for the unknown UUIDs"
    );
    let calls = wire::command_calls(&raw).await;
    assert_eq!(calls.get("mget").copied(), Some(3 + 3), "{calls:?}");

    // The request limit itself: 1000 is fine, 1001 is not.
    let thousand: Vec<String> = (0..1000).map(|_| Uuid::new_v4().to_string()).collect();
    let (status, body) = service
        .post("/users/batch", json!({ "uuids": thousand }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["not_found"].as_array().unwrap().len(), 1000);
    service.shut_down().await;
}

async fn bad_input_gets_the_right_status_and_a_json_error(database: Database) {
    let server = RedisServer::new();
    let service = Service::start(&server.url(), database).await;

    let (s, b) = service.get("/users/not-a-uuid").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let (s, b) = service.get(&format!("/users/{}", Uuid::new_v4())).await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = service.get("/users/by-id/twelve").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let (s, b) = service.get("/users/by-id/999999").await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = service.put("/users/999999", json!({ "name": "x" })).await;
    assert_error(s, &b, StatusCode::NOT_FOUND);
    let (s, b) = service.put("/users/1", json!({ "nmae": "typo" })).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let (s, b) = service.put("/users/abc", json!({ "name": "x" })).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);

    let too_many: Vec<String> = (0..1001).map(|_| Uuid::new_v4().to_string()).collect();
    let (s, b) = service
        .post("/users/batch", json!({ "uuids": too_many }))
        .await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, b) = service
        .post(
            "/users/batch",
            json!({ "uuids": [Uuid::new_v4().to_string(), "nope"] }),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    let (s, b) = service
        .send(reqwest::Method::POST, "/users/batch", "{not json".into())
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST);
    // A rejected update changed nothing.
    assert_eq!(service.user(1).await.name, "User 1");
    service.shut_down().await;
}

async fn health_metrics_and_manifest_routes(database: Database) {
    let server = RedisServer::new();
    let service = Service::start(&server.url(), database).await;
    let (status, health) = service.get("/cache/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["healthy"], true);
    assert_eq!(health["status"], "connected");

    let user = service.user(9).await;
    let counters = |stats: &Value, field: &str, name: &str| {
        stats["caches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["field"] == field)
            .unwrap_or_else(|| panic!("no cache {field} in {stats}"))[name]
            .as_u64()
            .unwrap()
    };
    service.get(&format!("/users/{}", user.uuid)).await;
    let (status, first) = service.get("/cache/stats").await;
    assert_eq!(status, StatusCode::OK);
    service.get(&format!("/users/{}", user.uuid)).await;
    let (_, second) = service.get("/cache/stats").await;
    // The second request was answered from the cache: one more hit, no query.
    assert_eq!(
        counters(&second, "uuid_to_id", "hits"),
        counters(&first, "uuid_to_id", "hits") + 1,
        "{first}\n{second}"
    );
    assert!(counters(&first, "uuid_to_id", "misses") >= 1, "{first}");
    assert!(first["database_queries"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(
        second["database_queries"], first["database_queries"],
        "a cached request queried the database"
    );
    let text = service
        .http
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Other tests of this process share the recorder, so only presence is asserted.
    for needle in [
        "cache_misses_total{namespace=\"user:uuid_to_id\"}",
        "cache_hits_total{namespace=\"user:record\"}",
        "cache_operation_duration_seconds",
        "operation=\"get\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    let (status, manifest) = service.get("/cache/manifest").await;
    assert_eq!(status, StatusCode::OK);
    let caches = manifest["caches"].as_array().unwrap();
    assert_eq!(caches.len(), 3);
    let record = caches.iter().find(|c| c["field"] == "users").unwrap();
    assert_eq!(record["namespace"], "user:record");
    assert_eq!(record["ttl_secs"], 300);
    assert_eq!(record["codec"], "bincode");
    assert_eq!(record["fingerprint"].as_str().unwrap().len(), 8);
    service.shut_down().await;
}

async fn with_redis_killed_every_request_is_answered_from_the_database(database: Database) {
    let mut server = RedisServer::new();
    let service = Service::start(&server.url(), database).await;
    let warm = service.user(7).await;
    assert_eq!(
        service.get(&format!("/users/{}", warm.uuid)).await.0,
        StatusCode::OK
    );

    server.kill();
    let cold = service.user(8).await;
    for user in [&warm, &cold] {
        let (status, body) = service.get(&format!("/users/{}", user.uuid)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, user_json(user));
        let (status, body) = service.get(&format!("/users/by-id/{}", user.id)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, user_json(user));
    }
    let (status, body) = service
        .put("/users/7", json!({ "email": "ada@example.org" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        service.get(&format!("/users/{}", warm.uuid)).await.1["email"],
        "ada@example.org"
    );
    let (status, body) = service
        .post(
            "/users/batch",
            json!({ "uuids": [warm.uuid.to_string(), cold.uuid.to_string()] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["users"].as_array().unwrap().len(), 2);
    let (s, b) = service.get(&format!("/users/{}", Uuid::new_v4())).await;
    assert_error(s, &b, StatusCode::NOT_FOUND);

    let (status, health) = service.get("/cache/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["healthy"], false);
    assert_eq!(health["status"], "degraded");
    let degraded: u64 = service
        .state
        .caches
        .stats()
        .iter()
        .map(|s| s.degraded)
        .sum();
    assert!(degraded > 0);

    // Back without a restart of the service: health says so within the backoff.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.get("/cache/health").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "health never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.shut_down().await;
}

async fn runs_on_the_in_process_backend_without_redis(database: Database) {
    let service = Service::start("memory://", database).await;
    let user = service.user(1).await;
    let before = service.queries();
    for _ in 0..2 {
        let (status, body) = service.get(&format!("/users/{}", user.uuid)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, user_json(&user));
    }
    assert_eq!(service.queries(), before + 1);
    let (status, health) = service.get("/cache/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["backend"], "memory");
    service.shut_down().await;
}

/// Makes the cached entries of `user` stale: past their TTL, within their fail-safe
/// window, as they would be `ttl` seconds after they were written.
async fn make_stale(raw: &mut redis::aio::MultiplexedConnection, caches: &Caches, user: &User) {
    let keys = [
        (
            caches.uuid_to_id().redis_key(&user.uuid),
            UserUuidToIdCache::FAIL_SAFE,
        ),
        (caches.users().redis_key(&user.id), UserCache::FAIL_SAFE),
    ];
    for (key, fail_safe) in keys {
        assert!(
            !fail_safe.is_zero(),
            "the service's caches keep stale entries"
        );
        let left = fail_safe.as_millis() as i64 - 60_000;
        let set: i64 = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(left)
            .query_async(raw)
            .await
            .unwrap();
        assert_eq!(set, 1, "{key} is cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_paused_is_answered_from_stale_entries_within_the_soft_timeout() {
    let server = RedisServer::new();
    let mut service = Service::start(&server.url(), Database::Postgres).await;
    let mut warm = Vec::new();
    for id in 1..=5 {
        let user = service.user(id).await;
        let (status, body) = service.get(&format!("/users/{}", user.uuid)).await;
        assert_eq!((status, body), (StatusCode::OK, user_json(&user)));
        warm.push(user);
    }
    let cold = service.user(6).await;
    let mut raw = server.raw().await;
    for user in &warm {
        make_stale(&mut raw, &service.state.caches, user).await;
    }

    service.postgres().pause();
    // Each request waits at most the soft timeout of its two stale reads (uuid to id,
    // then the record), not the database's deadline (PG_TIMEOUT).
    let bound = Duration::from_millis(1500);
    for user in &warm {
        for path in [
            format!("/users/{}", user.uuid),
            format!("/users/by-id/{}", user.id),
        ] {
            let started = Instant::now();
            let (status, body) = service.get(&path).await;
            let took = started.elapsed();
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!(body, user_json(user), "{path}: the stale value");
            assert!(
                took < bound,
                "{path} took {took:?} with the database paused"
            );
        }
    }
    // Nothing stale to answer with: an error once the database's deadline passes,
    // never a hang.
    let started = Instant::now();
    let (status, body) = service.get(&format!("/users/{}", cold.uuid)).await;
    let took = started.elapsed();
    assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        took >= PG_TIMEOUT - Duration::from_millis(100) && took < PG_TIMEOUT * 2,
        "a request without a stale entry took {took:?}"
    );

    // Back: writes go through and invalidate; reads see them.
    service.postgres().resume();
    let (status, body) = service
        .put("/users/1", json!({ "name": "After the pause" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = service.get(&format!("/users/{}", warm[0].uuid)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "After the pause");
    let (status, body) = service.get(&format!("/users/{}", cold.uuid)).await;
    assert_eq!((status, body), (StatusCode::OK, user_json(&cold)));
    service.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_at_start_is_idempotent_and_seeds_once() {
    let server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let options = || {
        PostgresOptions::default()
            .seed_users(40)
            .timeout(PG_TIMEOUT)
    };
    // Two instances starting together, then a third on the migrated database.
    let url = server.url();
    let (a, b) = tokio::join!(
        Db::connect_postgres(&url, options()),
        Db::connect_postgres(&url, options())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let c = Db::connect_postgres(&url, options().seed_users(80))
        .await
        .unwrap();
    for db in [&a, &b, &c] {
        let users = db.by_ids((1..=100).collect()).await.unwrap();
        assert_eq!(users.len(), 40, "seeded once, by the first instance");
    }
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let migrations: i64 = client
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(migrations, 1);
    let uuid_type: String = client
        .query_one(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'users' AND column_name = 'uuid'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(uuid_type, "uuid");
    drop(client);
    connection.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_password_never_shows_in_errors_debug_or_descriptions() {
    let server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let db = Db::connect_postgres(&server.url(), PostgresOptions::default())
        .await
        .unwrap();
    let password = server.password();
    assert!(!format!("{db:?}").contains(password), "{db:?}");
    let described = db.describe();
    assert!(!described.contains(password), "{described}");
    assert!(
        described.starts_with("postgres://service@127.0.0.1:"),
        "{described}"
    );

    let wrong = "not-the-password-x7";
    let url = server.url().replace(password, wrong);
    let error = Db::connect_postgres(&url, PostgresOptions::default().timeout(PG_TIMEOUT))
        .await
        .expect_err("a wrong password is refused");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(wrong), "{text}");
        assert!(text.contains("password authentication failed"), "{text}");
    }
    let error = Db::connect_postgres(
        &format!(
            "postgres://service:{wrong}@127.0.0.1:{}/db?bogus=1",
            cache_tests::free_port()
        ),
        PostgresOptions::default(),
    )
    .await
    .expect_err("an unknown option is refused");
    assert!(!error.to_string().contains(wrong), "{error}");
}

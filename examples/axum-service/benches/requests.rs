//! Requests per second and latency of `GET /users/{uuid}`, on SQLite and on PostgreSQL,
//! each behind a real `redis-server`: a warm cache, a cold cache (every request a user
//! never read before), the database paused (SIGSTOP) with every entry stale and fail-safe
//! answering, and Redis killed (every request answered by the database).
//!
//! `cargo bench -p axum-service --bench requests` (release). Server and load generator
//! share the machine and one runtime, on loopback; each timed phase is bounded by
//! `BENCH_SECS` (default 5) and at most 5 000 000 requests. PostgreSQL is a throwaway
//! server the bench starts (`tests/support/postgres.rs`), never the machine's own.

#[path = "../tests/support/postgres.rs"]
mod postgres_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum_service::{
    AppState, Caches, Db, PostgresOptions, User, UserCache, UserUuidToIdCache, serve,
};
use cache_manager::Cache;
use cache_tests::RedisServer;
use postgres_server::PostgresServer;
use uuid::Uuid;

/// Users read again and again: the warm, paused and Redis-down phases.
const HOT_USERS: u32 = 1000;
/// Users each read once, after the hot ones: the cold phase.
const COLD_USERS: u32 = 100_000;
const CONNECTIONS: usize = 32;
const MAX_REQUESTS: u64 = 5_000_000;
/// The PostgreSQL pool: the service's default.
const POOL: usize = 8;

/// What one phase measured.
#[derive(Debug, Clone, Copy)]
struct Phase {
    requests: u64,
    errors: u64,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    queries: u64,
}

impl Phase {
    fn cell(&self) -> String {
        let errors = if self.errors > 0 {
            format!(", {} errors", self.errors)
        } else {
            String::new()
        };
        format!(
            "{} /s, p50 {}, p99 {}{errors}",
            thousands(self.per_sec),
            millis(self.p50),
            millis(self.p99)
        )
    }
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    if n >= 1000 {
        format!("{} {:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `CONNECTIONS` keep-alive clients asking for `targets` in turn for at most `secs`:
/// cycling through them, or (`once`) each once and then stopping.
async fn load(state: &AppState, base: &str, targets: &[Uuid], once: bool, secs: u64) -> Phase {
    let targets: Arc<[Uuid]> = targets.into();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let queries = state.db.queries();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (http, targets, next, errors, base) = (
            http.clone(),
            Arc::clone(&targets),
            Arc::clone(&next),
            Arc::clone(&errors),
            base.to_owned(),
        );
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= MAX_REQUESTS || (once && i >= targets.len() as u64) {
                    break;
                }
                let uuid = targets[i as usize % targets.len()];
                let sent = Instant::now();
                let response = http
                    .get(format!("{base}/users/{uuid}"))
                    .send()
                    .await
                    .expect("request");
                let ok = response.status() == 200;
                response.bytes().await.expect("body");
                latencies.push(sent.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Phase {
        requests: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        queries: state.db.queries() - queries,
    }
}

/// The figures of one database.
struct Column {
    warm: Phase,
    cold: Phase,
    /// The database paused, every hot entry stale: each key's first request, then the
    /// requests after it. `None` for SQLite, an embedded file with no server to pause.
    paused: Option<(Phase, Phase)>,
    redis_down: Phase,
}

/// Pushes every cached entry of `users` past its TTL, within its fail-safe window.
async fn make_stale(redis: &RedisServer, caches: &Caches, users: &[User]) {
    let mut raw = redis.raw().await;
    let mut pipe = redis::pipe();
    for user in users {
        let left = UserUuidToIdCache::FAIL_SAFE.as_millis() as i64 - 60_000;
        pipe.cmd("PEXPIRE")
            .arg(caches.uuid_to_id().redis_key(&user.uuid))
            .arg(left)
            .ignore();
        let left = UserCache::FAIL_SAFE.as_millis() as i64 - 60_000;
        pipe.cmd("PEXPIRE")
            .arg(caches.users().redis_key(&user.id))
            .arg(left)
            .ignore();
    }
    let () = pipe.query_async(&mut raw).await.unwrap();
}

async fn measure(db: Db, postgres: Option<&mut PostgresServer>, secs: u64) -> Column {
    let mut redis = RedisServer::new();
    let hot = db
        .by_ids((1..=i64::from(HOT_USERS)).collect())
        .await
        .unwrap();
    let cold: Vec<Uuid> = {
        let mut users = Vec::new();
        let ids: Vec<i64> = (1..=i64::from(COLD_USERS))
            .map(|i| i + i64::from(HOT_USERS))
            .collect();
        for chunk in ids.chunks(10_000) {
            users.extend(
                db.by_ids(chunk.to_vec())
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|u| u.uuid),
            );
        }
        users
    };
    assert_eq!(cold.len(), COLD_USERS as usize);
    let hot_uuids: Vec<Uuid> = hot.iter().map(|u| u.uuid).collect();
    let caches = Arc::new(Caches::new());
    caches.connect(&redis.url()).await.unwrap();
    let state = AppState::new(Arc::clone(&caches), db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));

    for user in &hot {
        state.user_by_uuid(user.uuid).await.unwrap().unwrap();
    }
    let warm = load(&state, &base, &hot_uuids, false, secs).await;
    let cold = load(&state, &base, &cold, true, secs).await;

    let paused = match postgres {
        Some(server) => {
            make_stale(&redis, &caches, &hot).await;
            server.pause();
            let first = load(&state, &base, &hot_uuids, true, secs.max(30)).await;
            let after = load(&state, &base, &hot_uuids, false, secs).await;
            server.resume();
            Some((first, after))
        }
        None => None,
    };

    redis.kill();
    // Let the breaker open, so the figure is the steady state of an outage.
    while caches.health().await.healthy {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let redis_down = load(&state, &base, &hot_uuids, false, secs).await;

    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    caches.disconnect().await;
    Column {
        warm,
        cold,
        paused,
        redis_down,
    }
}

/// The first field of `/proc/loadavg`: runnable processes over the last minute.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed = HOT_USERS + COLD_USERS;
    // Other work on the machine moves these figures a lot: say how busy it was.
    let load_before = load_average();

    let path = std::env::temp_dir().join(format!("axum-service-bench-{}.db", std::process::id()));
    let sqlite = measure(Db::open(&path, seed).unwrap(), None, secs).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }

    let mut server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let db = Db::connect_postgres(
        &server.url(),
        PostgresOptions::default().seed_users(seed).pool_size(POOL),
    )
    .await
    .unwrap();
    let postgres = measure(db, Some(&mut server), secs).await;
    drop(server);

    println!(
        "command: cargo bench -p axum-service --bench requests ({CONNECTIONS} keep-alive connections, {secs} s per phase, {HOT_USERS} hot users, loopback, server and load generator on one machine; PostgreSQL pool of {POOL} connections)"
    );
    println!(
        "load average (1 min) of the machine: {load_before} at the start, {} at the end",
        load_average()
    );
    println!();
    println!("| `GET /users/{{uuid}}` | SQLite | PostgreSQL |");
    println!("| --- | --- | --- |");
    let row = |name: &str, s: &Phase, p: &Phase| {
        println!("| {name} | {} | {} |", s.cell(), p.cell());
    };
    row("warm cache (redis-server)", &sqlite.warm, &postgres.warm);
    row(
        "cold cache (each user read once)",
        &sqlite.cold,
        &postgres.cold,
    );
    let (first, after) = postgres.paused.expect("postgres was paused");
    println!(
        "| database paused, entries stale, fail-safe: each key's first request | n/a | {} |",
        first.cell()
    );
    println!(
        "| database paused, entries stale, fail-safe: later requests | n/a | {} |",
        after.cell()
    );
    row(
        "Redis killed (database only)",
        &sqlite.redis_down,
        &postgres.redis_down,
    );
    println!();
    println!("| database queries (requests) | SQLite | PostgreSQL |");
    println!("| --- | --- | --- |");
    let counts = |name: &str, s: Option<&Phase>, p: &Phase| {
        let s = s.map_or("n/a".to_owned(), |s| {
            format!("{} ({})", s.queries, s.requests)
        });
        println!("| {name} | {s} | {} ({}) |", p.queries, p.requests);
    };
    counts("warm cache", Some(&sqlite.warm), &postgres.warm);
    counts("cold cache", Some(&sqlite.cold), &postgres.cold);
    counts("paused, first requests", None, &first);
    counts("paused, later requests", None, &after);
    counts(
        "Redis killed",
        Some(&sqlite.redis_down),
        &postgres.redis_down,
    );
}

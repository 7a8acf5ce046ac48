//! Requests per second of `GET /users/{uuid}`: warm cache on a real `redis-server`, then
//! the same load with Redis killed (every request answered by SQLite).
//!
//! `cargo bench -p axum-service --bench requests` (release). Server and load generator
//! share the machine and one runtime, on loopback; each phase is bounded by
//! `BENCH_SECS` (default 5) and at most 5 000 000 requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum_service::{AppState, Caches, Db, User, serve};
use cache_tests::RedisServer;

const USERS: u32 = 1000;
const CONNECTIONS: usize = 32;
const MAX_REQUESTS: u64 = 5_000_000;

/// Runs `CONNECTIONS` keep-alive clients against `base` for `secs`; returns requests/s.
async fn load(base: &str, users: &Arc<Vec<User>>, secs: u64) -> f64 {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let (http, users, done, base) = (
            http.clone(),
            Arc::clone(users),
            Arc::clone(&done),
            base.to_owned(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = c * 31;
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                let user = &users[i % users.len()];
                i += 1;
                let response = http
                    .get(format!("{base}/users/{}", user.uuid))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200);
                response.bytes().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut server = RedisServer::new();
    let path = std::env::temp_dir().join(format!("axum-service-bench-{}.db", std::process::id()));
    let db = Db::open(&path, USERS).unwrap();
    let users = Arc::new(db.by_ids((1..=i64::from(USERS)).collect()).await.unwrap());
    let caches = Arc::new(Caches::new());
    caches.connect(&server.url()).await.unwrap();
    let state = AppState::new(Arc::clone(&caches), db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));

    // Warm every user into the cache, then measure.
    for user in users.iter() {
        state.user_by_uuid(user.uuid).await.unwrap().unwrap();
    }
    let queries = state.db.queries();
    let warm = load(&base, &users, secs).await;
    let warm_queries = state.db.queries() - queries;

    server.kill();
    // Let the breaker open, so the figure is the steady state of an outage.
    while caches.health().await.healthy {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queries = state.db.queries();
    let down = load(&base, &users, secs).await;
    let down_queries = state.db.queries() - queries;

    println!(
        "command: cargo bench -p axum-service --bench requests ({CONNECTIONS} keep-alive connections, {secs} s per phase, loopback, 2-core machine shared by server and load generator)"
    );
    println!(
        "GET /users/{{uuid}}, warm cache (redis-server): {warm:.0} requests/s ({warm_queries} database queries)"
    );
    println!(
        "GET /users/{{uuid}}, Redis killed (SQLite only): {down:.0} requests/s ({down_queries} database queries)"
    );

    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    caches.disconnect().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

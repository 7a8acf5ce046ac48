//! The in-process first level against a real `redis-server` on loopback: the latency of
//! a local hit next to a Redis hit, and how long an invalidation on one manager takes to
//! reach another manager's local level.
//!
//! Run: `cargo bench -p cache-tests --bench local`

use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "bench:profile", ttl = 600, key = u64, local = 100_000)]
struct Profile {
    name: String,
    email: String,
    age: u32,
}

#[derive(Cache)]
#[cache(namespace = "bench:plain", ttl = 600, key = u64, value = Profile)]
struct PlainProfiles;

cache_registry! {
    struct Caches {
        profiles: ProfileCache,
        plain: PlainProfiles,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

async fn wait_until<F: AsyncFnMut() -> bool>(mut ready: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = RedisServer::new();
    let (a, b) = (Caches::new(), Caches::new());
    a.connect(&server.url()).await.unwrap();
    b.connect(&server.url()).await.unwrap();
    let profile = |n: u64| Profile {
        name: format!("user {n}"),
        email: format!("user{n}@example.com"),
        age: 30,
    };
    for k in 0..1000 {
        a.profiles().set(&k, &profile(k)).await.unwrap();
        a.plain().set(&k, &profile(k)).await.unwrap();
    }
    // Wait until the local level is readable (subscribed) and warm.
    wait_until(async || {
        a.profiles().get(&0).await;
        a.profiles().stats().hits > 1 && {
            let before = a.profiles().stats().hits;
            a.profiles().get(&0).await;
            a.profiles().stats().hits > before
        }
    })
    .await;
    for k in 0..1000 {
        a.profiles().get(&k).await;
    }

    let mut local = Vec::with_capacity(100_000);
    let mut remote = Vec::with_capacity(20_000);
    for i in 0..100_000u64 {
        let started = Instant::now();
        let got = a.profiles().get(&(i % 1000)).await;
        local.push(started.elapsed());
        assert!(got.is_some());
    }
    for i in 0..20_000u64 {
        let started = Instant::now();
        let got = a.plain().get(&(i % 1000)).await;
        remote.push(started.elapsed());
        assert!(got.is_some());
    }
    local.sort();
    remote.sort();
    println!(
        "command: cargo bench -p cache-tests --bench local (release, redis-server on loopback, current-thread runtime)"
    );
    println!(
        "get, local hit (local = 100_000): p50 {}, p99 {} | same value from Redis: p50 {}, p99 {}",
        micros(percentile(&local, 0.5)),
        micros(percentile(&local, 0.99)),
        micros(percentile(&remote, 0.5)),
        micros(percentile(&remote, 0.99)),
    );

    // Invalidation latency: b holds key k locally; a writes it; time until b reads the
    // new value (b polls its own level, which only changes when the message lands).
    let mut reach = Vec::new();
    for k in 0..50u64 {
        b.profiles().get(&k).await;
        b.profiles().get(&k).await;
        let mut newer = profile(k);
        newer.age += 1;
        let started = Instant::now();
        a.profiles().set(&k, &newer).await.unwrap();
        loop {
            if b.profiles().get(&k).await.as_ref() == Some(&newer) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the invalidation never arrived"
            );
            tokio::task::yield_now().await;
        }
        reach.push(started.elapsed());
    }
    reach.sort();
    println!(
        "invalidation from manager a to manager b's local level (write acknowledged + message + re-read), 50 keys: p50 {}, max {}",
        micros(percentile(&reach, 0.5)),
        micros(*reach.last().unwrap()),
    );
}

//! Figures for the resilience promises, against a real `redis-server` on loopback:
//!
//! - recovery: time from a restarted server answering `PING` to the first successful
//!   cache write, without any call to `connect`;
//! - a degraded call with the breaker open (Redis killed);
//! - calls against a paused (SIGSTOP) server: the ones that hit the deadline before the
//!   breaker opens, and the ones after.
//!
//! Run: `cargo bench -p cache-tests --bench resilience`

use std::time::{Duration, Instant};

use cache_manager::{Breaker, Cache, CacheConfig, cache_registry};
use cache_tests::RedisServer;

#[derive(Cache)]
#[cache(namespace = "bench:resilience", key = u64, value = String)]
struct Values;

cache_registry! {
    struct Caches {
        values: Values,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn show(d: Duration) -> String {
    if d < Duration::from_micros(10) {
        format!("{} ns", d.as_nanos())
    } else if d < Duration::from_millis(10) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main]
async fn main() {
    let config = CacheConfig::default();
    println!(
        "config: response timeout {:?}, failure threshold {}, backoff {:?}..{:?}",
        config.response_timeout, config.failure_threshold, config.backoff_min, config.backoff_max
    );
    let mut server = RedisServer::new();
    let caches = Caches::new();
    caches.connect_with(&server.url(), &config).await.unwrap();
    let value = "v".repeat(32);

    // Recovery after a restart.
    let mut recoveries = Vec::new();
    for round in 0..5u64 {
        assert!(caches.values().set(&round, &value).await.unwrap());
        server.kill();
        // Let the breaker open and the backoff grow a little, as in a real outage.
        wait_for("the breaker to open", async || {
            caches.values().get(&round).await;
            caches.health().await.breaker == Breaker::Open
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.restart(); // returns once the server answers PING
        let up = Instant::now();
        wait_for("recovery", async || {
            caches.values().set(&round, &value).await.unwrap()
        })
        .await;
        recoveries.push(up.elapsed());
    }
    recoveries.sort();
    println!(
        "recovery after restart (server up -> first successful write, 500 ms outage, 5 rounds): median {}, max {}",
        show(percentile(&recoveries, 0.5)),
        show(*recoveries.last().unwrap())
    );

    // A degraded call with the breaker open.
    server.kill();
    wait_for("the breaker to open", async || {
        caches.values().get(&0).await;
        caches.health().await.breaker == Breaker::Open
    })
    .await;
    let mut degraded = Vec::with_capacity(100_000);
    for k in 0..100_000u64 {
        let started = Instant::now();
        let got = caches.values().get(&k).await;
        degraded.push(started.elapsed());
        assert!(got.is_none());
    }
    degraded.sort();
    println!(
        "get with the breaker open (Redis killed), 100000 calls: p50 {}, p99 {}, max {}",
        show(percentile(&degraded, 0.5)),
        show(percentile(&degraded, 0.99)),
        show(*degraded.last().unwrap())
    );

    // Calls against a paused server.
    server.restart();
    wait_for("recovery", async || {
        caches.values().set(&0, &value).await.unwrap()
    })
    .await;
    server.pause();
    // Calls that waited for the deadline are those before the breaker opened.
    let mut waited = Vec::new();
    let mut after_open = Vec::new();
    for k in 0..10_000u64 {
        let started = Instant::now();
        let got = caches.values().get(&k).await;
        let took = started.elapsed();
        assert!(got.is_none());
        if took >= config.response_timeout * 9 / 10 {
            waited.push(took);
        } else {
            after_open.push(took);
        }
    }
    let breaker = caches.health().await.breaker;
    server.resume();
    waited.sort();
    after_open.sort();
    println!(
        "get against a paused server (10000 calls): {} hit the deadline ({} .. {}) before the breaker opened \
         ({breaker:?} now); the other {}: p50 {}, p99 {}",
        waited.len(),
        show(waited[0]),
        show(*waited.last().unwrap()),
        after_open.len(),
        show(percentile(&after_open, 0.5)),
        show(percentile(&after_open, 0.99)),
    );
    let stats = &caches.stats()[0];
    println!(
        "counters: {} degraded calls, of which {} timeouts",
        stats.degraded, stats.timeouts
    );
}

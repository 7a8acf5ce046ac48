//! A steady load for profiling the library's get path: 64 tasks reading through one
//! manager (coalescing on unless `COALESCE=false`) on a current-thread runtime, against a
//! `redis-server` the harness starts, for `SECONDS` (default 5). Prints ops/s.
//!
//! ```text
//! cargo build --release -p cache-tests --example profile_gets
//! perf record -e cpu-clock -F 2000 -g -- target/release/examples/profile_gets
//! perf report --no-children --sort dso,symbol
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_manager::{Cache, CacheConfig, cache_registry};
use cache_tests::RedisServer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Cache)]
#[cache(namespace = "profile:item", ttl = 600, key = u64)]
struct Item {
    name: String,
    score: u32,
}

cache_registry! {
    struct Caches {
        items: ItemCache,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let coalesce = std::env::var("COALESCE")
        .map(|v| v != "false")
        .unwrap_or(true);
    let server = RedisServer::new();
    let caches = Arc::new(Caches::new());
    let config = CacheConfig::new().with_coalescing(coalesce);
    caches.connect_with(&server.url(), &config).await.unwrap();
    for k in 0..10_000u64 {
        let item = Item {
            name: format!("item-{k:05}"),
            score: 7,
        };
        caches.items().set(&k, &item).await.unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let (caches, done) = (Arc::clone(&caches), Arc::clone(&done));
            tokio::spawn(async move {
                let mut k = t * 151;
                while Instant::now() < until {
                    k = (k + 7919) % 10_000;
                    assert!(caches.items().get(&k).await.is_some());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let ops = done.load(Ordering::Relaxed);
    println!(
        "coalescing {coalesce}: {ops} gets in {seconds} s = {:.0} k/s",
        ops as f64 / seconds as f64 / 1e3
    );
}

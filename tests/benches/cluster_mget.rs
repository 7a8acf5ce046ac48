//! `mget` of 100 keys on a three-master Redis Cluster against the same on one server,
//! both started on loopback by the harness, default config.
//!
//! Two figures per target: one caller in a loop (latency p50/p99 and calls/s), and 16
//! concurrent callers (calls/s). Keys spread over the cluster (the default); a hash-tagged
//! cache on the cluster, all keys on one slot, is shown as a third target.
//!
//! Run: `cargo bench -p cache-tests --bench cluster_mget`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::RedisServer;
use cache_tests::cluster::RedisCluster;

#[derive(Cache)]
#[cache(namespace = "bench:spread", key = u64, value = String)]
struct Spread;

#[derive(Cache)]
#[cache(namespace = "bench:tagged", key = u64, value = String, hash_tag = true)]
struct Tagged;

cache_registry! {
    struct Caches {
        spread: Spread,
        tagged: Tagged,
    }
}

const SEQUENTIAL_CALLS: usize = 3_000;
const TASKS: usize = 16;
const CALLS_PER_TASK: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn measure(label: &str, caches: Arc<Caches>, tagged: bool) {
    let value = "v".repeat(32);
    let keys: Vec<u64> = (0..100).collect();
    let entries: HashMap<u64, String> = keys.iter().map(|&k| (k, value.clone())).collect();
    let mget = {
        let caches = Arc::clone(&caches);
        let keys = keys.clone();
        move || {
            let caches = Arc::clone(&caches);
            let keys = keys.clone();
            async move {
                let found = if tagged {
                    caches.tagged().mget(&keys).await.unwrap()
                } else {
                    caches.spread().mget(&keys).await.unwrap()
                };
                assert!(
                    found.values().all(Option::is_some),
                    "a miss: not measuring hits"
                );
            }
        }
    };
    if tagged {
        assert!(caches.tagged().mset(&entries).await.unwrap());
    } else {
        assert!(caches.spread().mset(&entries).await.unwrap());
    }
    for _ in 0..200 {
        mget().await;
    }

    let mut took = Vec::with_capacity(SEQUENTIAL_CALLS);
    let started = Instant::now();
    for _ in 0..SEQUENTIAL_CALLS {
        let t = Instant::now();
        mget().await;
        took.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    took.sort();

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mget = mget.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS_PER_TASK {
                    mget().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let concurrent = started.elapsed();

    println!(
        "{label:<34} 1 caller: p50 {:>7}, p99 {:>7}, {:>6.0} mget/s | {TASKS} callers: {:>6.0} mget/s",
        micros(percentile(&took, 0.5)),
        micros(percentile(&took, 0.99)),
        SEQUENTIAL_CALLS as f64 / elapsed.as_secs_f64(),
        (TASKS * CALLS_PER_TASK) as f64 / concurrent.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    println!(
        "mget of 100 keys (32-byte values, bincode), release build, loopback, default config; \
         {SEQUENTIAL_CALLS} sequential calls, then {TASKS} tasks x {CALLS_PER_TASK} calls"
    );
    let server = RedisServer::new();
    let one = Arc::new(Caches::new());
    one.connect(&server.url()).await.unwrap();
    measure("one server", Arc::clone(&one), false).await;
    drop(one);
    drop(server);

    let cluster = RedisCluster::new();
    let spread = Arc::new(Caches::new());
    spread.connect(&cluster.url()).await.unwrap();
    measure(
        "cluster, 3 masters, keys spread",
        Arc::clone(&spread),
        false,
    )
    .await;
    measure("cluster, 3 masters, hash-tagged", spread, true).await;
}

//! The in-process first level against a real `redis-server` on loopback: the latency of
//! a local hit next to a Redis hit; what the read behind a level miss costs (`GET` and
//! `PTTL` in one round trip, so a copy never outlives its entry) against a plain `GET`;
//! how long a write by another manager, and by a plain `redis` client, takes to reach a
//! manager's level (Redis's `CLIENT TRACKING` notices).
//!
//! Run: `cargo bench -p cache-tests --bench local`

use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::{RedisServer, wire};
use redis::aio::MultiplexedConnection;
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

/// Plain text another service writes with its own client.
#[derive(Cache)]
#[cache(namespace = "bench:name", ttl = 600, key = u64, value = String, codec = "string", local = 100_000)]
struct Names;

/// A level of one entry: nearly every read misses it and goes to Redis.
#[derive(Cache)]
#[cache(namespace = "bench:tiny", ttl = 600, key = u64, value = Profile, local = 1)]
struct TinyLevel;

cache_registry! {
    struct Caches {
        profiles: ProfileCache,
        plain: PlainProfiles,
        names: Names,
        tiny: TinyLevel,
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
        a.tiny().set(&k, &profile(k)).await.unwrap();
        a.names().set(&k, &format!("user {k}")).await.unwrap();
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
    let mut tiny = Vec::with_capacity(20_000);
    for i in 0..20_000u64 {
        let started = Instant::now();
        let got = a.tiny().get(&(i % 1000)).await;
        tiny.push(started.elapsed());
        assert!(got.is_some());
    }
    // The same two reads on the wire, with a plain client: what the added PTTL costs.
    let raw = server.raw().await;
    let raw_key = a.plain().redis_key(&7);
    let (mut raw_get, mut raw_get_pttl) = (Vec::with_capacity(20_000), Vec::with_capacity(20_000));
    for _ in 0..20_000 {
        let mut conn = raw.clone();
        let started = Instant::now();
        let _: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&raw_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        raw_get.push(started.elapsed());
        let started = Instant::now();
        let _: (Option<Vec<u8>>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&raw_key)
            .cmd("PTTL")
            .arg(&raw_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        raw_get_pttl.push(started.elapsed());
    }
    for samples in [
        &mut local,
        &mut remote,
        &mut tiny,
        &mut raw_get,
        &mut raw_get_pttl,
    ] {
        samples.sort();
    }
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
    println!(
        "get missing the level (GET + PTTL, then the copy stored): p50 {}, p99 {} | no level (GET): p50 {}, p99 {} | ratio of p50s {:.2}",
        micros(percentile(&tiny, 0.5)),
        micros(percentile(&tiny, 0.99)),
        micros(percentile(&remote, 0.5)),
        micros(percentile(&remote, 0.99)),
        percentile(&tiny, 0.5).as_secs_f64() / percentile(&remote, 0.5).as_secs_f64(),
    );
    println!(
        "raw redis on the same server: GET p50 {}, p99 {} | GET + PTTL pipelined p50 {}, p99 {} | ratio of p50s {:.2}",
        micros(percentile(&raw_get, 0.5)),
        micros(percentile(&raw_get, 0.99)),
        micros(percentile(&raw_get_pttl, 0.5)),
        micros(percentile(&raw_get_pttl, 0.99)),
        percentile(&raw_get_pttl, 0.5).as_secs_f64() / percentile(&raw_get, 0.5).as_secs_f64(),
    );

    // Invalidation latency: b holds key k locally; a writes it; time until b reads the
    // new value (b polls its own level, which only changes when the notice lands).
    let mut reach = Vec::new();
    for k in 0..200u64 {
        hold(&raw, async || {
            b.profiles().get(&k).await;
        })
        .await;
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
        "a write by manager a reaching manager b's level (write acknowledged + notice + re-read), 200 keys: p50 {}, p99 {}, max {}",
        micros(percentile(&reach, 0.5)),
        micros(percentile(&reach, 0.99)),
        micros(*reach.last().unwrap()),
    );

    // A plain client (another service, redis-cli) overwrites a key b holds: time from the
    // raw SET's reply until b serves the new text.
    let mut raw_reach = Vec::new();
    for k in 0..200u64 {
        let key = b.names().redis_key(&k);
        hold(&raw, async || {
            b.names().get(&k).await;
        })
        .await;
        let newer = format!("renamed {k}");
        let mut conn = raw.clone();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&newer)
            .query_async(&mut conn)
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            if b.names().get(&k).await.as_deref() == Some(newer.as_str()) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "Redis's notice never arrived"
            );
            tokio::task::yield_now().await;
        }
        raw_reach.push(started.elapsed());
    }
    raw_reach.sort();
    println!(
        "a plain client's SET reaching manager b's level (from its reply to b serving the new value), 200 keys: p50 {}, p99 {}, max {}",
        micros(percentile(&raw_reach, 0.5)),
        micros(percentile(&raw_reach, 0.99)),
        micros(*raw_reach.last().unwrap()),
    );

    // Filling the level while other keys of its namespace are written: every write is a
    // notice to b's level. A read that went to Redis keeps its value unless a removal
    // it could be older than came meanwhile; the hot keys change once (so b holds none
    // of them), then are read five times each.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (raw, stop) = (raw.clone(), std::sync::Arc::clone(&stop));
        let keys: Vec<String> = (0..10_000u64)
            .map(|k| b.names().redis_key(&(100_000 + k)))
            .collect();
        async move {
            let started = Instant::now();
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut conn = raw.clone();
                let _: () = redis::cmd("SET")
                    .arg(&keys[(written % 10_000) as usize])
                    .arg("elsewhere")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                written += 1;
            }
            written as f64 / started.elapsed().as_secs_f64()
        }
    });
    for k in 0..1000u64 {
        wire::set(
            &raw,
            &b.names().redis_key(&k),
            format!("changed {k}").as_bytes(),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    wire::reset_stats(&raw).await;
    let started = Instant::now();
    for _ in 0..5 {
        for k in 0..1000u64 {
            b.names().get(&k).await;
        }
    }
    let reading = started.elapsed();
    let calls = wire::command_calls(&raw).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes_per_s = writer.await.unwrap();
    let to_redis = calls.get("get").copied().unwrap_or(0) + calls.get("mget").copied().unwrap_or(0);
    println!(
        "filling the level under {:.0} writes/s to other keys of its namespace: 5000 reads of 1000 keys in {:.0} ms, {to_redis} of them went to Redis (1000 if every first read's value was kept)",
        writes_per_s,
        reading.as_secs_f64() * 1e3,
    );
}

/// Reads until a read is a local hit: `read` twice, the second sending nothing to Redis (a
/// notice of an earlier write may still be on its way and drop the first copy).
async fn hold<F: AsyncFnMut()>(raw: &MultiplexedConnection, mut read: F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        read().await;
        wire::reset_stats(raw).await;
        read().await;
        let calls = wire::command_calls(raw).await;
        if !calls.contains_key("get") && !calls.contains_key("mget") {
            return;
        }
        assert!(Instant::now() < deadline, "the level never held the key");
        tokio::task::yield_now().await;
    }
}

//! Instructions per `get`, counted by `valgrind --tool=callgrind`: a figure that,
//! unlike time on a shared VM, repeats to within a fraction of a percent from run to run.
//!
//! Three sequential targets, each a loop on a tokio current-thread runtime, reading a
//! bincode value of 47 bytes (the throughput bench's `Profile`) that is always there:
//! - `raw`: hand-written `redis` 1.x, `GET` on one multiplexed connection, with the
//!   library's response timeout, then the same header check and bincode decode; like
//!   every raw target it formats its key (`format!("{start}{key}")`) on each call, as an
//!   application and the throughput bench's raw side do;
//! - `redis`: the library's `get` against the same `redis-server`;
//! - `memory`: the library's `get` on `memory://` (no I/O: the library's own cost).
//!
//! And two with 64 tasks on the same runtime, each reading its own key, where the
//! library coalesces the gets into `MGET`s and redis-rs pipelines the raw `GET`s:
//! - `raw-64`: hand-written `GET`s on clones of one multiplexed connection;
//! - `redis-64`: the library's `get`.
//!
//! And the same with 16 tasks (`raw-16`, `redis-16`), where the library does not coalesce
//! yet (fewer than 16 calls in progress go alone): its own cost over raw's pipelined
//! `GET`s.
//!
//! And two sequential `set`s of the same value, where the library's cost over raw shows
//! without a decode: `raw-set` (`SET key bytes EX ttl`, with the value encoded as the
//! library encodes it) and `redis-set`.
//!
//! And the batches of [`BATCH`] keys, sequential, as the throughput bench runs them:
//! `raw-mget` (one `MGET`, each value checked and decoded, into a `Vec`) beside
//! `redis-mget` (the library's `mget`, into a `HashMap` by key), and `raw-mset` (a
//! pipeline of `SET key bytes EX ttl`) beside `redis-mset`. A batch call counts as one call;
//! they run N / 10 and 2N / 10 times.
//!
//! Under valgrind the client runs some 50 times slower while the server does not, so
//! batches are larger than in a timed run: the figure is the client's instructions per
//! get once coalescing has formed its batches, not a throughput.
//!
//! Each target runs twice under callgrind, with N and 2N calls after the same warm-up;
//! (instructions at 2N - instructions at N) / N is the cost of one call, with process
//! start, connect and warm-up cancelled out. Only the bench process is counted (valgrind
//! does not follow the `redis-server` the harness starts).
//!
//! Run: `cargo bench -p cache-tests --bench instructions` (about a minute; needs
//! `valgrind`). `INSTRUCTIONS_N` sets N (default 2000).

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use cache_manager::{Cache, CacheConfig, cache_registry};
use cache_tests::RedisServer;
use cache_tests::bench_data::Profile;
use redis::AsyncConnectionConfig;

mod common;

use common::{decode_bincode, encode_bincode};

#[derive(Cache)]
#[cache(namespace = "instr:bincode", key = u64, value = Profile)]
struct Profiles;

cache_registry! {
    struct Caches {
        profiles: Profiles,
    }
}

const KEY: u64 = 42;
const WARM_UP: u64 = 500;
const TARGETS: [&str; 13] = [
    "raw",
    "redis",
    "memory",
    "raw-64",
    "redis-64",
    "raw-16",
    "redis-16",
    "raw-set",
    "redis-set",
    "raw-mget",
    "redis-mget",
    "raw-mset",
    "redis-mset",
];
/// Keys of a batch target's calls: the library's limit.
const BATCH: u64 = 100;
/// Tasks of the concurrent targets: 64, where the library coalesces, and 16, where it
/// does not yet (fewer than 16 calls in progress go alone).
const TASKS: [u64; 2] = [64, 16];

fn main() {
    // The child: `instructions <target> <calls> <url>` under valgrind.
    let args: Vec<String> = std::env::args().collect();
    if let [_, target, calls, url] = args.as_slice()
        && TARGETS.contains(&target.as_str())
    {
        let calls: u64 = calls.parse().expect("a number of calls");
        child(target, calls, url);
        return;
    }
    parent();
}

fn parent() {
    let started = Instant::now();
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind not found: nothing measured (apt-get install valgrind)");
        return;
    }
    let n: u64 = std::env::var("INSTRUCTIONS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let server = RedisServer::new();
    let url = server.url();
    let exe = std::env::current_exe().expect("the bench's own path");
    println!(
        "valgrind --tool=callgrind, tokio current-thread, get of a 47-byte bincode value, \
         sequential and from {} and {} tasks",
        TASKS[0], TASKS[1]
    );
    println!("N = {n}; per call = (Ir at 2N - Ir at N) / N, warm-up {WARM_UP} calls in both runs");
    println!();
    println!("| target | Ir, N calls | Ir, 2N calls | instructions per call |");
    println!("| --- | ---: | ---: | ---: |");
    let mut per_call = Vec::new();
    for target in TARGETS {
        let url = if target == "memory" {
            "memory://".to_owned()
        } else {
            url.clone()
        };
        let n = if target.ends_with("-mget") || target.ends_with("-mset") {
            n / 10
        } else {
            n
        };
        let once = callgrind(&exe, target, n, &url);
        let twice = callgrind(&exe, target, 2 * n, &url);
        let each = twice.saturating_sub(once) as f64 / n as f64;
        per_call.push(each);
        println!("| {target} | {once} | {twice} | {each:.0} |");
    }
    println!();
    println!(
        "library on redis / raw: {:.2}; library on memory:// / raw: {:.2}; \
         64 tasks, library / raw: {:.2}; 16 tasks, library / raw: {:.2}; \
         set, library / raw: {:.2}; mget of {BATCH}, library / raw: {:.2}; \
         mset of {BATCH}, library / raw: {:.2}",
        per_call[1] / per_call[0],
        per_call[2] / per_call[0],
        per_call[4] / per_call[3],
        per_call[6] / per_call[5],
        per_call[8] / per_call[7],
        per_call[10] / per_call[9],
        per_call[12] / per_call[11]
    );
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
}

/// Runs the child under callgrind and returns its total instruction count (`Ir`).
fn callgrind(exe: &std::path::Path, target: &str, calls: u64, url: &str) -> u64 {
    let out_file = std::env::temp_dir().join(format!(
        "instructions-{}-{target}-{calls}.callgrind",
        std::process::id()
    ));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(exe)
        .args([target, &calls.to_string(), url])
        .output()
        .expect("run valgrind");
    let _ = std::fs::remove_file(&out_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{target} with {calls} calls under callgrind failed: {stderr}"
    );
    // `==pid== Collected : 123456789`
    stderr
        .lines()
        .find_map(|l| l.split_once("Collected :")?.1.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `Collected :` line from callgrind: {stderr}"))
}

fn child(target: &str, calls: u64, url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let caches = Arc::new(Caches::new());
        caches.connect(url).await.expect("connect");
        assert!(
            caches
                .profiles()
                .set(&KEY, &Profile::of(KEY))
                .await
                .expect("set")
        );
        for tasks in TASKS {
            if let Some(side) = target.strip_suffix(&format!("-{tasks}")) {
                concurrent(&caches, side == "raw", tasks, calls, url).await;
                return;
            }
        }
        if let Some(side) = target.strip_suffix("-set") {
            sets(caches, side == "raw", calls, url).await;
            return;
        }
        if let Some(side) = target.strip_suffix("-mget") {
            mgets(caches, side == "raw", calls, url).await;
            return;
        }
        if let Some(side) = target.strip_suffix("-mset") {
            msets(caches, side == "raw", calls, url).await;
            return;
        }
        if target == "raw" {
            let RawSide {
                start,
                fingerprint,
                mut conn,
                ..
            } = raw_side(caches, url).await;
            for _ in 0..WARM_UP + calls {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(format!("{start}{KEY}"))
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                std::hint::black_box(decode(&bytes, fingerprint));
            }
        } else {
            for _ in 0..WARM_UP + calls {
                let value = caches.profiles().get(&KEY).await.expect("a hit");
                std::hint::black_box(value);
            }
        }
    });
}

/// `calls` gets (after the warm-up) spread over `tasks` tasks, each reading its own key.
async fn concurrent(caches: &Arc<Caches>, raw: bool, tasks: u64, calls: u64, url: &str) {
    for task in 0..tasks {
        assert!(
            caches
                .profiles()
                .set(&task, &Profile::of(task))
                .await
                .expect("set")
        );
    }
    let fingerprint = Caches::CACHES[0].fingerprint;
    let conn = raw_connection(url).await;
    let per_task = (WARM_UP + calls) / tasks;
    let readers: Vec<_> = (0..tasks)
        .map(|task| {
            let caches = Arc::clone(caches);
            let mut conn = conn.clone();
            let start = key_start(&caches);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    if raw {
                        let bytes: Vec<u8> = redis::cmd("GET")
                            .arg(format!("{start}{task}"))
                            .query_async(&mut conn)
                            .await
                            .expect("GET");
                        std::hint::black_box(decode(&bytes, fingerprint));
                    } else {
                        let value = caches.profiles().get(&task).await.expect("a hit");
                        std::hint::black_box(value);
                    }
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.expect("a reading task panicked");
    }
}

/// The raw side's check of the library's frame and decode of the value.
fn decode(bytes: &[u8], fingerprint: u32) -> Profile {
    decode_bincode(bytes, fingerprint).expect("a framed entry of this layout")
}

/// `calls` sequential sets (after the warm-up) of key [`KEY`].
async fn sets(caches: Arc<Caches>, raw: bool, calls: u64, url: &str) {
    let value = Profile::of(KEY);
    if !raw {
        for _ in 0..WARM_UP + calls {
            assert!(caches.profiles().set(&KEY, &value).await.expect("set"));
        }
        return;
    }
    let RawSide {
        start,
        fingerprint,
        ttl,
        mut conn,
    } = raw_side(caches, url).await;
    for _ in 0..WARM_UP + calls {
        redis::cmd("SET")
            .arg(format!("{start}{KEY}"))
            .arg(encode_bincode(&value, fingerprint))
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut conn)
            .await
            .expect("SET");
    }
}

/// `calls` sequential `mget`s (after a tenth of the warm-up) of keys 0..[`BATCH`].
async fn mgets(caches: Arc<Caches>, raw: bool, calls: u64, url: &str) {
    let keys: Vec<u64> = (0..BATCH).collect();
    let values: Vec<Profile> = keys.iter().map(|&k| Profile::of(k)).collect();
    assert!(
        caches
            .profiles()
            .mset(keys.iter().zip(&values))
            .await
            .expect("mset")
    );
    if !raw {
        for _ in 0..WARM_UP / 10 + calls {
            let found = caches.profiles().mget(&keys).await.expect("mget");
            assert_eq!(std::hint::black_box(found).len(), BATCH as usize);
        }
        return;
    }
    let RawSide {
        start,
        fingerprint,
        mut conn,
        ..
    } = raw_side(caches, url).await;
    for _ in 0..WARM_UP / 10 + calls {
        // Keys formatted on every call, as an application (and the throughput bench) does.
        let redis_keys: Vec<String> = keys.iter().map(|k| format!("{start}{k}")).collect();
        let found: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&redis_keys)
            .query_async(&mut conn)
            .await
            .expect("MGET");
        let decoded: Vec<Option<Profile>> = found
            .iter()
            .map(|v| v.as_deref().map(|b| decode(b, fingerprint)))
            .collect();
        assert_eq!(std::hint::black_box(decoded).len(), BATCH as usize);
    }
}

/// `calls` sequential `mset`s (after a tenth of the warm-up) of keys 0..[`BATCH`].
async fn msets(caches: Arc<Caches>, raw: bool, calls: u64, url: &str) {
    let keys: Vec<u64> = (0..BATCH).collect();
    let values: Vec<Profile> = keys.iter().map(|&k| Profile::of(k)).collect();
    if !raw {
        for _ in 0..WARM_UP / 10 + calls {
            let stored = caches.profiles().mset(keys.iter().zip(&values)).await;
            assert!(stored.expect("mset"));
        }
        return;
    }
    let RawSide {
        start,
        fingerprint,
        ttl,
        mut conn,
    } = raw_side(caches, url).await;
    for _ in 0..WARM_UP / 10 + calls {
        let mut pipe = redis::pipe();
        for (k, value) in keys.iter().zip(&values) {
            pipe.cmd("SET")
                .arg(format!("{start}{k}"))
                .arg(encode_bincode(value, fingerprint))
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.expect("pipeline");
    }
}

/// What the cache's Redis keys start with (namespace, layout, `:`): the raw sides
/// format `{start}{key}` on every call, as an application and the throughput bench do.
fn key_start(caches: &Caches) -> String {
    let key = caches.profiles().redis_key(&0);
    let start = key.strip_suffix('0').expect("the key's text comes last");
    start.to_owned()
}

/// What a raw side takes from the library's declaration (the keys' start, the value's
/// fingerprint, the TTL in seconds) and its connection, opened once the manager is
/// dropped: the library's background tasks must not count on the raw side.
struct RawSide {
    start: String,
    fingerprint: u32,
    ttl: u64,
    conn: redis::aio::MultiplexedConnection,
}

async fn raw_side(caches: Arc<Caches>, url: &str) -> RawSide {
    let info = &Caches::CACHES[0];
    let (start, fingerprint, ttl) = (key_start(&caches), info.fingerprint, info.ttl.as_secs());
    drop(caches);
    RawSide {
        start,
        fingerprint,
        ttl,
        conn: raw_connection(url).await,
    }
}

/// The raw side's connection: one multiplexed connection with the library's response
/// timeout, as a user would write it by hand.
async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(CacheConfig::default().response_timeout));
    redis::Client::open(url)
        .expect("the harness URL parses")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("raw connection")
}

//! Throughput and latency of the library against hand-written `redis` calls, side by side
//! in one run, on one `redis-server` the bench starts itself.
//!
//! Both sides read and write the same keys and the same value bytes, and do the same work
//! a caller needs: format the key, encode or decode the value with the cache's codec. The
//! raw side is what a user would write by hand with `redis` 1.x: one multiplexed
//! connection (a clone per task), with the library's default response timeout, so the
//! timeout's cost is on both sides; a raw connection without a timeout is measured as a
//! reference. Each scenario runs raw and library in 5 alternating rounds (raw first, then
//! library first, ...) after a warm-up; the table shows the medians of the rounds. The
//! machine may be shared: the output says how much CPU other processes took meanwhile.
//!
//! Beside ops/s and latency, each side reports the bench process's CPU time (user +
//! system, all threads) per call: on a shared 2-core VM throughput moves with the
//! neighbours, CPU per call much less. `get` is swept over 1, 4, 16, 64, 256 and 1024
//! concurrent tasks on both runtime flavours, with a table of library/raw ratios per
//! flavour and placement, and SVG charts of the sweep (throughput, p50/p99 latency, CPU
//! per call) written to `docs/charts/` (`target/charts-quick/` for quick or filtered runs;
//! `BENCH_CHARTS=dir` elsewhere).
//!
//! Run: `cargo bench -p cache-tests --bench throughput` (about 5 minutes).
//! `BENCH_QUICK=1` runs a tenth of the operations (a smoke run of about 30 s).
//! `BENCH_FILTER=text` runs only the scenarios whose name contains `text` (e.g. `tasks`
//! for the concurrent ones), besides the degraded get.
//!
//! Placement: when `taskset` works and there are at least 2 CPUs, every scenario runs
//! twice: pinned (redis-server on CPU 0, the bench on CPU 1: the client's CPU cost is
//! isolated, but every sequential call pays a cross-CPU wake-up, which on a VM is slow and
//! noisy) and unpinned (the scheduler may co-locate them). `BENCH_PIN=1` runs only pinned,
//! `BENCH_PIN=0` only unpinned.

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_manager::{Breaker, Cache, CacheConfig, cache_registry};
use cache_tests::RedisServer;
use cache_tests::bench_data::Profile;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

mod common;

use common::{decode_bincode, encode_bincode};

/// Keys of every cache, all populated before the first measurement.
const KEYS: u64 = 10_000;
/// Keys per `mget` / entries per `mset`: the library's batch limit.
const BATCH: u64 = 100;
/// Rounds of each raw/library pair.
const ROUNDS: usize = 5;
/// Where the read-through scenario's never-read keys start.
const FRESH_KEYS: u64 = 1 << 40;
/// One call in this many of the mixed load is a `set`: 80% get, 20% set.
const MIXED_SET_EVERY: u64 = 5;
/// One call in this many of the read-through load misses and loads: 5%.
const LOAD_MISS_EVERY: u64 = 20;

/// Concurrent tasks of the `get` sweep.
const SWEEP: [usize; 6] = [1, 4, 16, 64, 256, 1024];

#[derive(Cache)]
#[cache(namespace = "bench:bincode", key = u64, value = Profile)]
struct BincodeProfiles;

#[derive(Cache)]
#[cache(namespace = "bench:json", key = u64, value = Profile, codec = "json")]
struct JsonProfiles;

/// The read-through scenario's cache: its own, so its misses (by design) stay apart.
#[derive(Cache)]
#[cache(namespace = "bench:loaded", key = u64, value = Profile)]
struct LoadedProfiles;

/// Session-token style: a UUID's 36-byte text.
#[derive(Cache)]
#[cache(namespace = "bench:string", key = u64, value = Uuid, codec = "string")]
struct StringTokens;

cache_registry! {
    struct Caches {
        bincode: BincodeProfiles,
        json: JsonProfiles,
        string: StringTokens,
        loaded: LoadedProfiles,
    }
}

fn token(k: u64) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | u128::from(k))
}

/// What both sides read and write.
struct Data {
    keys: Vec<u64>,
    profiles: Vec<Profile>,
    tokens: Vec<Uuid>,
    fingerprint: u32,
    /// A bincode cache's keys carry the value layout: `bench:bincode@{fingerprint}`.
    bincode_ns: String,
    /// The read-through cache's: `bench:loaded@{fingerprint}`.
    loaded_ns: String,
    /// The next key never read before, for the read-through scenario's misses: both
    /// sides draw from it, so a miss is a miss in every round.
    fresh: std::sync::atomic::AtomicU64,
    ttl_secs: u64,
}

impl Data {
    fn new() -> Self {
        let info = Caches::CACHES
            .iter()
            .find(|c| c.field == "bincode")
            .expect("the bincode cache is registered");
        Data {
            keys: (0..KEYS).collect(),
            profiles: (0..KEYS).map(Profile::of).collect(),
            tokens: (0..KEYS).map(token).collect(),
            fingerprint: info.fingerprint,
            bincode_ns: format!("bench:bincode@{:08x}", info.fingerprint),
            loaded_ns: format!("bench:loaded@{:08x}", info.fingerprint),
            fresh: std::sync::atomic::AtomicU64::new(FRESH_KEYS),
            ttl_secs: info.ttl.as_secs(),
        }
    }
}

// The raw side's codec: exactly the bytes the library's codecs write, checked against
// what the library stored before anything is measured.

fn encode_json(value: &Profile) -> Vec<u8> {
    serde_json::to_vec(value).expect("a Profile encodes")
}

fn decode_json(bytes: &[u8]) -> Option<Profile> {
    serde_json::from_slice(bytes).ok()
}

fn decode_text(bytes: &[u8]) -> Option<Uuid> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Bincode,
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get(Codec),
    Set,
    MGet,
    MSet,
    /// 80% `get`, 20% `set` of the bincode cache.
    Mixed,
    /// `get_or_load` where 5% of the calls miss and load (a value computed in process,
    /// so the figure is the cache's cost, not a database's); raw: `GET`, and on a miss
    /// compute and `SET`, as users write it by hand.
    GetOrLoad,
}

/// Who makes the calls: hand-written `redis` code, or the library.
#[derive(Clone)]
enum Side {
    Raw(MultiplexedConnection),
    Lib(Arc<Caches>),
}

/// One call; `true` when it did what was asked (a hit for reads, stored for writes).
/// `n` picks the key (or the batch of 100 keys).
async fn call(side: &mut Side, data: &Data, op: Op, n: u64) -> bool {
    let k = n % KEYS;
    let op = match op {
        Op::Mixed if n.is_multiple_of(MIXED_SET_EVERY) => Op::Set,
        Op::Mixed => Op::Get(Codec::Bincode),
        op => op,
    };
    let batch =
        ((n % (KEYS / BATCH)) * BATCH) as usize..((n % (KEYS / BATCH) + 1) * BATCH) as usize;
    match (side, op) {
        (Side::Raw(conn), Op::Get(codec)) => {
            let key = match codec {
                Codec::Bincode => format!("{}:{k}", data.bincode_ns),
                Codec::Json => format!("bench:json:{k}"),
                Codec::Text => format!("bench:string:{k}"),
            };
            let bytes: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(conn).await {
                Ok(bytes) => bytes,
                Err(_) => return false,
            };
            let Some(bytes) = bytes else { return false };
            match codec {
                Codec::Bincode => black_box(decode_bincode(&bytes, data.fingerprint)).is_some(),
                Codec::Json => black_box(decode_json(&bytes)).is_some(),
                Codec::Text => black_box(decode_text(&bytes)).is_some(),
            }
        }
        (Side::Lib(caches), Op::Get(codec)) => match codec {
            Codec::Bincode => black_box(caches.bincode().get(&k).await).is_some(),
            Codec::Json => black_box(caches.json().get(&k).await).is_some(),
            Codec::Text => black_box(caches.string().get(&k).await).is_some(),
        },
        (Side::Raw(conn), Op::Set) => {
            let bytes = encode_bincode(&data.profiles[k as usize], data.fingerprint);
            redis::cmd("SET")
                .arg(format!("{}:{k}", data.bincode_ns))
                .arg(&bytes)
                .arg("EX")
                .arg(data.ttl_secs)
                .query_async::<()>(conn)
                .await
                .is_ok()
        }
        (Side::Lib(caches), Op::Set) => matches!(
            caches.bincode().set(&k, &data.profiles[k as usize]).await,
            Ok(true)
        ),
        (Side::Raw(conn), Op::MGet) => {
            let keys: Vec<String> = data.keys[batch]
                .iter()
                .map(|k| format!("{}:{k}", data.bincode_ns))
                .collect();
            let values: Vec<Option<Vec<u8>>> =
                match redis::cmd("MGET").arg(&keys).query_async(conn).await {
                    Ok(values) => values,
                    Err(_) => return false,
                };
            let decoded: Vec<Option<Profile>> = values
                .iter()
                .map(|v| {
                    v.as_deref()
                        .and_then(|b| decode_bincode(b, data.fingerprint))
                })
                .collect();
            black_box(&decoded).len() == BATCH as usize && decoded.iter().all(Option::is_some)
        }
        (Side::Lib(caches), Op::MGet) => match caches.bincode().mget(&data.keys[batch]).await {
            Ok(found) => {
                black_box(&found).len() == BATCH as usize && found.values().all(Option::is_some)
            }
            Err(_) => false,
        },
        (Side::Raw(conn), Op::MSet) => {
            let mut pipe = redis::pipe();
            for (k, value) in data.keys[batch.clone()].iter().zip(&data.profiles[batch]) {
                pipe.cmd("SET")
                    .arg(format!("{}:{k}", data.bincode_ns))
                    .arg(encode_bincode(value, data.fingerprint))
                    .arg("EX")
                    .arg(data.ttl_secs)
                    .ignore();
            }
            pipe.query_async::<()>(conn).await.is_ok()
        }
        (Side::Lib(caches), Op::MSet) => matches!(
            caches
                .bincode()
                .mset(data.keys[batch.clone()].iter().zip(&data.profiles[batch]))
                .await,
            Ok(true)
        ),
        (side, Op::GetOrLoad) => {
            let k = if n.is_multiple_of(LOAD_MISS_EVERY) {
                data.fresh
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            } else {
                k
            };
            get_or_load(side, data, k).await
        }
        (_, Op::Mixed) => unreachable!("a mixed call is a get or a set"),
    }
}

/// One read-through call of key `k`; `true` when it returned the key's value.
async fn get_or_load(side: &mut Side, data: &Data, k: u64) -> bool {
    let load = || black_box(Profile::of(k));
    let value = match side {
        Side::Raw(conn) => {
            let key = format!("{}:{k}", data.loaded_ns);
            let bytes: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(conn).await {
                Ok(bytes) => bytes,
                Err(_) => return false,
            };
            match bytes.and_then(|b| decode_bincode(&b, data.fingerprint)) {
                Some(value) => value,
                None => {
                    let value = load();
                    let stored = redis::cmd("SET")
                        .arg(&key)
                        .arg(encode_bincode(&value, data.fingerprint))
                        .arg("EX")
                        .arg(data.ttl_secs)
                        .query_async::<()>(conn)
                        .await;
                    if stored.is_err() {
                        return false;
                    }
                    value
                }
            }
        }
        Side::Lib(caches) => {
            let loaded = caches
                .loaded()
                .get_or_load(&k, || async {
                    Ok::<_, std::convert::Infallible>(Some(load()))
                })
                .await;
            match loaded {
                Ok(Some(value)) => value,
                _ => return false,
            }
        }
    };
    value.id == Profile::of(k).id
}

/// CPU time this process has used so far, all threads, user + system: what
/// `getrusage(RUSAGE_SELF)` sums, in nanoseconds (`CLOCK_PROCESS_CPUTIME_ID`, through
/// rustix as the workspace forbids `unsafe`).
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One side's run of one scenario.
struct Sample {
    ops_per_s: f64,
    /// The bench process's CPU time per completed call (client work only: the server is
    /// another process).
    cpu_per_op: Duration,
    p50: Duration,
    p99: Duration,
    failed: u64,
    capped: bool,
}

/// Runs `ops` calls spread over `tasks` spawned tasks, stopping early at `cap`.
async fn run_side(
    side: &Side,
    data: &Arc<Data>,
    op: Op,
    tasks: usize,
    ops: u64,
    cap: Duration,
) -> Sample {
    let per_task = (ops / tasks as u64).max(1);
    let cpu_at_start = process_cpu();
    let started = Instant::now();
    let deadline = started + cap;
    let handles: Vec<_> = (0..tasks as u64)
        .map(|task| {
            let mut side = side.clone();
            let data = Arc::clone(data);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task as usize);
                let mut failed = 0u64;
                for j in 0..per_task {
                    // A fixed walk over every key (4729 is prime to 10 000), offset per task.
                    let n = task * 7_919 + j * 4_729;
                    let t0 = Instant::now();
                    if !call(&mut side, &data, op, n).await {
                        failed += 1;
                    }
                    let t1 = Instant::now();
                    latencies.push(t1 - t0);
                    if t1 > deadline {
                        break;
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity((per_task * tasks as u64) as usize);
    let mut failed = 0;
    for handle in handles {
        let (l, f) = handle.await.expect("a bench task panicked");
        latencies.extend(l);
        failed += f;
    }
    let wall = started.elapsed();
    let cpu = process_cpu() - cpu_at_start;
    let done = latencies.len();
    latencies.sort_unstable();
    Sample {
        ops_per_s: done as f64 / wall.as_secs_f64(),
        cpu_per_op: cpu / done.max(1) as u32,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        failed,
        capped: (done as u64) < per_task * tasks as u64,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The medians of a side's rounds.
struct Summary {
    ops_per_s: f64,
    cpu_per_op: Duration,
    p50: Duration,
    p99: Duration,
    failed: u64,
    capped: bool,
    rounds: Vec<f64>,
}

fn summarize(samples: &[Sample]) -> Summary {
    fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v[v.len() / 2]
    }
    Summary {
        ops_per_s: median(samples.iter().map(|s| s.ops_per_s).collect()),
        cpu_per_op: median(samples.iter().map(|s| s.cpu_per_op).collect()),
        p50: median(samples.iter().map(|s| s.p50).collect()),
        p99: median(samples.iter().map(|s| s.p99).collect()),
        failed: samples.iter().map(|s| s.failed).sum(),
        capped: samples.iter().any(|s| s.capped),
        rounds: samples.iter().map(|s| s.ops_per_s).collect(),
    }
}

struct Row {
    name: String,
    /// Concurrent callers, and whether the row belongs to the `get` concurrency sweep.
    tasks: usize,
    sweep: bool,
    /// `ct` or `mt`.
    runtime: &'static str,
    /// `pinned` or `unpinned`.
    placement: &'static str,
    raw: Summary,
    lib: Summary,
    /// Raw without a response timeout, when measured.
    untimed: Option<Summary>,
    /// Failures are what this scenario measures (Redis down).
    expect_failures: bool,
    /// CPU used by other processes while the rounds ran, in CPUs (1.0 = one busy core).
    foreign_cpu: Option<f64>,
}

struct Scenario {
    name: String,
    op: Op,
    tasks: usize,
    ops: u64,
    untimed_reference: bool,
    sweep: bool,
}

struct Sides {
    raw: Side,
    untimed: Side,
    lib: Side,
    server_pid: u32,
}

/// Clock ticks of CPU time: the whole machine's busy time, and the bench's and the
/// server's, to tell how much other processes took while a scenario ran.
struct CpuTicks {
    at: Instant,
    busy: u64,
    ours: u64,
}

impl CpuTicks {
    fn now(server_pid: u32) -> Self {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?;
                let fields: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                Some(fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?)
            })
            .unwrap_or(0);
        CpuTicks {
            at: Instant::now(),
            busy,
            ours: process_ticks("self") + process_ticks(&server_pid.to_string()),
        }
    }

    /// CPUs other processes kept busy since `start`, on average; `None` when too short
    /// an interval to tell with 10 ms ticks.
    fn foreign_since(&self, start: &CpuTicks) -> Option<f64> {
        let elapsed = (self.at - start.at).as_secs_f64();
        if elapsed < 1.0 {
            return None;
        }
        // USER_HZ is 100 on Linux.
        let ticks = (self.busy.saturating_sub(start.busy))
            .saturating_sub(self.ours.saturating_sub(start.ours));
        Some(ticks as f64 / 100.0 / elapsed)
    }
}

/// utime + stime of a process, all threads, in clock ticks.
fn process_ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces: state is the first,
            // utime the 12th, stime the 13th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Runs a scenario's sides in alternating order, after a warm-up of each.
async fn run_scenario(
    sides: &Sides,
    data: &Arc<Data>,
    s: &Scenario,
    (runtime, placement): (&'static str, &'static str),
    cap: Duration,
) -> Row {
    let name = format!("{} [{runtime}, {placement}]", s.name);
    eprintln!("running {name} ...");
    let mut order: Vec<(usize, &Side)> = vec![(0, &sides.raw), (1, &sides.lib)];
    if s.untimed_reference {
        order.push((2, &sides.untimed));
    }
    let warm_up = (s.ops / 10).max(100);
    for (_, side) in &order {
        run_side(side, data, s.op, s.tasks, warm_up, cap).await;
    }
    let mut samples: [Vec<Sample>; 3] = Default::default();
    let cpu_start = CpuTicks::now(sides.server_pid);
    for round in 0..ROUNDS {
        // Each side goes first in turn, so drift and warm-up effects fall on both.
        let mut this_round = order.clone();
        this_round.rotate_left(round % order.len());
        for (which, side) in this_round {
            samples[which].push(run_side(side, data, s.op, s.tasks, s.ops, cap).await);
        }
    }
    let foreign_cpu = CpuTicks::now(sides.server_pid).foreign_since(&cpu_start);
    let [raw, lib, untimed] = samples;
    Row {
        name,
        tasks: s.tasks,
        sweep: s.sweep,
        runtime,
        placement,
        raw: summarize(&raw),
        lib: summarize(&lib),
        untimed: (!untimed.is_empty()).then(|| summarize(&untimed)),
        expect_failures: false,
        foreign_cpu,
    }
}

async fn raw_connection(url: &str, response_timeout: Option<Duration>) -> MultiplexedConnection {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CacheConfig::default().connect_timeout))
        .set_response_timeout(response_timeout);
    redis::Client::open(url)
        .expect("the harness URL parses")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("raw connection")
}

async fn sides(url: &str, server_pid: u32) -> Sides {
    let caches = Arc::new(Caches::new());
    // `connect` uses the defaults: the library's own response timeout.
    caches.connect(url).await.expect("connect");
    assert!(
        caches.health().await.healthy,
        "the library is not connected"
    );
    Sides {
        raw: Side::Raw(raw_connection(url, Some(CacheConfig::default().response_timeout)).await),
        untimed: Side::Raw(raw_connection(url, None).await),
        lib: Side::Lib(caches),
        server_pid,
    }
}

fn lib_of(sides: &Sides) -> &Caches {
    match &sides.lib {
        Side::Lib(caches) => caches,
        Side::Raw(_) => unreachable!(),
    }
}

/// Writes every key of every cache through the library, then checks the raw side's
/// encoders produce exactly the stored bytes.
async fn populate(sides: &Sides, data: &Data, url: &str) {
    let caches = lib_of(sides);
    for chunk in (0..KEYS as usize).step_by(BATCH as usize) {
        let range = chunk..chunk + BATCH as usize;
        let keys = &data.keys[range.clone()];
        assert!(
            caches
                .bincode()
                .mset(keys.iter().zip(&data.profiles[range.clone()]))
                .await
                .unwrap()
        );
        assert!(
            caches
                .json()
                .mset(keys.iter().zip(&data.profiles[range.clone()]))
                .await
                .unwrap()
        );
        assert!(
            caches
                .loaded()
                .mset(keys.iter().zip(&data.profiles[range.clone()]))
                .await
                .unwrap()
        );
        assert!(
            caches
                .string()
                .mset(keys.iter().zip(&data.tokens[range]))
                .await
                .unwrap()
        );
    }
    let mut conn = raw_connection(url, None).await;
    for k in [0, 4_242, KEYS - 1] {
        let stored = |key: String| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Vec<u8>>(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("GET {key}: {e}"))
            }
        };
        let profile = &data.profiles[k as usize];
        let expected = [
            (
                format!("{}:{k}", data.bincode_ns),
                encode_bincode(profile, data.fingerprint),
            ),
            (format!("bench:json:{k}"), encode_json(profile)),
            (
                format!("bench:string:{k}"),
                data.tokens[k as usize].to_string().into_bytes(),
            ),
        ];
        for (key, bytes) in expected {
            assert_eq!(
                stored(key.clone()).await,
                bytes,
                "the library stored other bytes under {key} than the bench's raw encoder \
                 writes: its wire format changed; update the raw side of this bench"
            );
        }
    }
    // Besides the entries, the bincode cache records its layout in one more key.
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(
        size >= 4 * KEYS,
        "{size} keys stored, expected {}",
        4 * KEYS
    );
}

/// Kills the server, waits for the library's breaker to open, and measures a `get` on
/// both sides: the library degrades to `None`, the raw connection returns an error.
async fn degraded(
    sides: &Sides,
    data: &Arc<Data>,
    server: &mut RedisServer,
    ops: u64,
    flavour: (&'static str, &'static str),
) -> Row {
    server.kill();
    let caches = lib_of(sides);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        caches.bincode().get(&0).await;
        if caches.health().await.breaker == Breaker::Open {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker did not open");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let scenario = Scenario {
        name: "degraded get, Redis killed (breaker open)".to_owned(),
        op: Op::Get(Codec::Bincode),
        tasks: 1,
        ops,
        untimed_reference: false,
        sweep: false,
    };
    let mut row = run_scenario(sides, data, &scenario, flavour, Duration::from_secs(3)).await;
    row.expect_failures = true;
    row
}

struct Plan {
    quick: bool,
    cap: Duration,
    /// Only scenarios whose name contains this (`BENCH_FILTER`), for focused runs.
    filter: Option<String>,
}

impl Plan {
    fn wants(&self, s: &Scenario) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| s.name.contains(f.as_str()))
    }

    /// `full` operations, a tenth in quick mode.
    fn ops(&self, full: u64) -> u64 {
        if self.quick { full / 10 } else { full }
    }

    /// Unpinned, a sequential call is several times faster (no cross-CPU wake-up per
    /// call), so it runs more of them for a comparable duration. The sequential bincode
    /// `get` is the sweep's first point.
    fn sequential(&self, pinned: bool) -> Vec<Scenario> {
        let more = if pinned { 1 } else { 4 };
        let seq = |name: &str, op, ops| Scenario {
            name: name.to_owned(),
            op,
            tasks: 1,
            ops: self.ops(ops),
            untimed_reference: false,
            sweep: false,
        };
        vec![
            seq("get, sequential, json", Op::Get(Codec::Json), 5_000 * more),
            seq(
                "get, sequential, string",
                Op::Get(Codec::Text),
                5_000 * more,
            ),
            seq("set, sequential, bincode", Op::Set, 5_000 * more),
            seq("mget 100 keys, sequential (calls)", Op::MGet, 1_500 * more),
            seq(
                "mset 100 entries, sequential (calls)",
                Op::MSet,
                1_000 * more.min(2),
            ),
        ]
    }

    /// `get` of a bincode value from 1 to 1024 concurrent tasks, each point sized to run
    /// for a few tenths of a second per round.
    fn sweep(&self, pinned: bool) -> Vec<Scenario> {
        let more = if pinned { 1 } else { 4 };
        SWEEP
            .iter()
            .map(|&tasks| Scenario {
                name: if tasks == 1 {
                    "get, sequential, bincode".to_owned()
                } else {
                    format!("get, {tasks} tasks")
                },
                op: Op::Get(Codec::Bincode),
                tasks,
                ops: self.ops(match tasks {
                    1 => 5_000 * more,
                    4 => 20_000,
                    16 => 60_000,
                    _ => 120_000,
                }),
                // Where the timeout's cost shows most: alone, and under moderate load.
                untimed_reference: tasks == 1 || tasks == 64,
                sweep: true,
            })
            .collect()
    }

    /// `set`, and the loads users have, from 64 tasks.
    fn concurrent(&self) -> Vec<Scenario> {
        let at_64 = |name: &str, op| Scenario {
            name: name.to_owned(),
            op,
            tasks: 64,
            ops: self.ops(120_000),
            untimed_reference: false,
            sweep: false,
        };
        vec![
            at_64("set, 64 tasks", Op::Set),
            at_64("mixed 80% get / 20% set, 64 tasks", Op::Mixed),
            at_64("get_or_load 5% misses, 64 tasks", Op::GetOrLoad),
        ]
    }
}

/// How the bench can place the server and itself on CPUs.
enum Placement {
    /// Only unpinned runs, for this reason.
    Unpinned(String),
    /// `taskset` works: the server's pid and each process's CPUs at start.
    Pinnable {
        server_pid: u32,
        server_cpus: String,
        bench_cpus: String,
    },
}

impl Placement {
    fn detect(want: Option<bool>, cores: usize, server_pid: u32) -> Self {
        if want == Some(false) {
            return Placement::Unpinned("BENCH_PIN=0".to_owned());
        }
        if cores < 2 {
            return Placement::Unpinned(format!("{cores} CPU"));
        }
        match (affinity(server_pid), affinity(std::process::id())) {
            (Some(server_cpus), Some(bench_cpus)) => Placement::Pinnable {
                server_pid,
                server_cpus,
                bench_cpus,
            },
            _ => Placement::Unpinned("taskset not found or not working".to_owned()),
        }
    }

    /// Pins the server to CPU 0 and the bench to CPU 1, or gives both back their CPUs.
    fn apply(&self, pinned: bool) {
        if let Placement::Pinnable {
            server_pid,
            server_cpus,
            bench_cpus,
        } = self
        {
            let (server, bench) = if pinned {
                ("0", "1")
            } else {
                (server_cpus.as_str(), bench_cpus.as_str())
            };
            // Threads the bench starts later inherit the main thread's CPUs.
            for (pid, cpus) in [(*server_pid, server), (std::process::id(), bench)] {
                let out = Command::new("taskset")
                    .args(["-a", "-p", "-c", cpus, &pid.to_string()])
                    .output()
                    .expect("run taskset");
                assert!(
                    out.status.success(),
                    "taskset -a -p -c {cpus} {pid}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}

/// The CPU list a process may run on (`taskset -c -p`), e.g. `0,1`.
fn affinity(pid: u32) -> Option<String> {
    let out = command_output("taskset", &["-c", "-p", &pid.to_string()])?;
    Some(out.rsplit_once(": ")?.1.trim().to_owned())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The version of a dependency as the workspace's `Cargo.lock` pins it.
fn locked_version(krate: &str) -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let header = format!("name = \"{krate}\"\nversion = \"");
    lock.find(&header)
        .and_then(|at| lock[at + header.len()..].split('"').next())
        .unwrap_or("?")
        .to_owned()
}

fn info_field(info: &str, field: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("?")
        .trim()
        .to_owned()
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

fn rate(ops_per_s: f64) -> String {
    if ops_per_s >= 1e6 {
        format!("{:.2} M", ops_per_s / 1e6)
    } else if ops_per_s >= 1e3 {
        format!("{:.1} k", ops_per_s / 1e3)
    } else {
        format!("{ops_per_s:.0}")
    }
}

fn runtime(flavour: &str) -> tokio::runtime::Runtime {
    match flavour {
        "ct" => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    }
    .enable_all()
    .build()
    .expect("tokio runtime")
}

fn main() {
    let started = Instant::now();
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let plan = Plan {
        quick,
        cap: Duration::from_secs(if quick { 5 } else { 20 }),
        filter: std::env::var("BENCH_FILTER").ok().filter(|f| !f.is_empty()),
    };
    let want_pin = match std::env::var("BENCH_PIN").as_deref() {
        Ok("0") => Some(false),
        Ok("1") => Some(true),
        _ => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_owned(),
                )
            })
        })
        .unwrap_or_else(|| "?".to_owned());

    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned())
    };
    let load_at_start = loadavg();
    let mut server = RedisServer::new();
    let url = server.url();
    let data = Arc::new(Data::new());

    // Server facts, and its pid for pinning, from the server itself.
    let info = runtime("ct").block_on(async {
        let mut conn = raw_connection(&url, None).await;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
            .expect("INFO server")
    });
    let server_pid = info_field(&info, "process_id").parse().unwrap_or(0);
    let placement = Placement::detect(want_pin, cores, server_pid);
    let modes: Vec<bool> = match (&placement, want_pin) {
        (Placement::Unpinned(_), _) => vec![false],
        (Placement::Pinnable { .. }, Some(true)) => vec![true],
        (Placement::Pinnable { .. }, _) => vec![true, false],
    };

    let config = CacheConfig::default();
    let concurrent = plan.concurrent();
    let mut rows = Vec::new();
    let mut lib_stats = Vec::new();
    let mut populated = false;
    for &pinned in &modes {
        placement.apply(pinned);
        let mode = if pinned { "pinned" } else { "unpinned" };
        // Current-thread runtime: every scenario.
        runtime("ct").block_on(async {
            let sides = sides(&url, server_pid).await;
            if !populated {
                populate(&sides, &data, &url).await;
                populated = true;
            }
            let mut scenarios = plan.sweep(pinned);
            scenarios.extend(plan.sequential(pinned));
            scenarios.extend(plan.concurrent());
            for s in scenarios.iter().filter(|s| plan.wants(s)) {
                rows.push(run_scenario(&sides, &data, s, ("ct", mode), plan.cap).await);
            }
            lib_stats.push((format!("ct, {mode}"), lib_of(&sides).stats()));
        });
        // Multi-thread runtime, 2 workers: the sweep and the concurrent scenarios.
        runtime("mt").block_on(async {
            let sides = sides(&url, server_pid).await;
            let scenarios = plan.sweep(pinned);
            let scenarios = scenarios
                .iter()
                .chain(&concurrent)
                .filter(|s| plan.wants(s));
            for s in scenarios {
                rows.push(run_scenario(&sides, &data, s, ("mt", mode), plan.cap).await);
            }
            lib_stats.push((format!("mt, {mode}"), lib_of(&sides).stats()));
        });
    }
    // Last, as it kills the server.
    let last_mode = if modes.last() == Some(&true) {
        "pinned"
    } else {
        "unpinned"
    };
    runtime("ct").block_on(async {
        let sides = sides(&url, server_pid).await;
        let flavour = ("ct", last_mode);
        rows.push(degraded(&sides, &data, &mut server, plan.ops(30_000), flavour).await);
    });

    let bincode_len = encode_bincode(&data.profiles[0], data.fingerprint).len();
    let json_len = encode_json(&data.profiles[0]).len();
    println!();
    println!(
        "command: {}cargo bench -p cache-tests --bench throughput{}",
        if plan.quick { "BENCH_QUICK=1 " } else { "" },
        if plan.quick {
            "   (quick: a tenth of the operations)"
        } else {
            ""
        }
    );
    let placement_text = match &placement {
        Placement::Unpinned(why) => format!("unpinned only ({why})"),
        Placement::Pinnable {
            server_cpus,
            bench_cpus,
            ..
        } => format!(
            "{}; pinned = redis-server (all threads) on CPU 0, bench (all threads) on CPU 1; \
             unpinned = redis-server on CPUs {server_cpus}, bench on CPUs {bench_cpus}",
            if modes.len() == 2 {
                "both modes"
            } else {
                "pinned only (BENCH_PIN=1)"
            }
        ),
    };
    println!(
        "machine: {cores} CPUs ({cpu_model}), 1-min load average {load_at_start} at start and {} at end; \
         placement: {placement_text}",
        loadavg()
    );
    println!(
        "redis-server {} on loopback (persistence off); redis crate {}, tokio {}, {}",
        info_field(&info, "redis_version"),
        locked_version("redis"),
        locked_version("tokio"),
        command_output("rustc", &["--version"]).unwrap_or_else(|| "rustc ?".to_owned()),
    );
    println!(
        "runtimes: [ct] tokio current_thread; [mt] tokio multi_thread with 2 workers. \
         Every call runs in a spawned task (one per concurrent caller)."
    );
    println!(
        "raw = hand-written redis calls: one MultiplexedConnection (a clone per task), response timeout {:?} \
         like the library's default, key formatted and value encoded/decoded with the same codec per call",
        config.response_timeout
    );
    println!(
        "data: {KEYS} keys per cache, all hits; values: bincode {bincode_len} B, json {json_len} B, \
         string 36 B (UUID text); {ROUNDS} alternating rounds after a warm-up, medians shown"
    );
    println!();
    println!(
        "CPU/op = the bench process's CPU time (user + system, all threads) per completed call, \
         median of the rounds; the server's CPU is not in it"
    );
    println!();
    println!("| scenario | {COLUMNS} |");
    println!("| --- |{}", " ---: |".repeat(10));
    for row in &rows {
        let mark = if row.raw.capped || row.lib.capped {
            " (time-capped)"
        } else {
            ""
        };
        println!("| {}{mark} | {} |", row.name, cells(row));
    }
    print_sweeps(&rows);
    println!();
    println!("reference, raw without any response timeout (same rounds):");
    for row in &rows {
        if let Some(untimed) = &row.untimed {
            println!(
                "  {}: {} ops/s, p50 {}, p99 {}; raw with {:?} timeout / without: {:.2}; lib / raw without: {:.2}",
                row.name,
                rate(untimed.ops_per_s),
                show(untimed.p50),
                show(untimed.p99),
                config.response_timeout,
                row.raw.ops_per_s / untimed.ops_per_s,
                row.lib.ops_per_s / untimed.ops_per_s,
            );
        }
    }
    println!();
    println!("ops/s of each round (raw | lib), and the CPU other processes used meanwhile:");
    for row in &rows {
        let list = |s: &Summary| {
            s.rounds
                .iter()
                .map(|r| rate(*r))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let others = row
            .foreign_cpu
            .map_or("? (too short to tell)".to_owned(), |cpu| {
                format!("{:.0}% of a CPU", cpu * 100.0)
            });
        println!(
            "  {}: {} | {}; others {others}",
            row.name,
            list(&row.raw),
            list(&row.lib),
        );
    }
    println!();
    for row in &rows {
        if row.expect_failures {
            println!(
                "{}: every call fails on both sides, by design: raw got {} errors (no reconnect), lib {} misses (None)",
                row.name, row.raw.failed, row.lib.failed
            );
        } else if row.raw.failed + row.lib.failed > 0 {
            println!(
                "WARNING {}: {} raw and {} library calls failed (miss, error or timeout): their figures are not comparable",
                row.name, row.raw.failed, row.lib.failed
            );
        }
    }
    let noisy: Vec<&str> = rows
        .iter()
        .filter(|r| r.foreign_cpu.is_some_and(|cpu| cpu > 0.15))
        .map(|r| r.name.as_str())
        .collect();
    if !noisy.is_empty() {
        println!(
            "WARNING other processes used over 15% of a CPU during: {}; their figures are noisier",
            noisy.join("; ")
        );
    }
    for (flavour, stats) in &lib_stats {
        for s in stats {
            // The read-through cache misses by design (5% of its calls).
            if s.degraded > 0 || (s.misses > 0 && s.field != "loaded") {
                println!(
                    "WARNING [{flavour}] library cache `{}`: {} misses, {} degraded calls of which {} timeouts",
                    s.field, s.misses, s.degraded, s.timeouts
                );
            }
        }
    }
    let chart_dir = std::env::var("BENCH_CHARTS").unwrap_or_else(|_| {
        // A quick or filtered run's charts must not replace the docs' ones.
        if plan.quick || plan.filter.is_some() {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/charts-quick").to_owned()
        } else {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/charts").to_owned()
        }
    });
    let machine = format!(
        "{cores} CPUs, redis-server {} on loopback",
        info_field(&info, "redis_version")
    );
    match charts::write(std::path::Path::new(&chart_dir), &rows, &machine) {
        Ok(files) => println!("charts: {}", files.join(", ")),
        Err(e) => println!("WARNING charts not written to {chart_dir}: {e}"),
    }
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
}

/// The columns of a row after its name, as [`cells`] prints them.
const COLUMNS: &str = "raw ops/s | lib ops/s | ops/s lib/raw | raw CPU/op | lib CPU/op | \
                       CPU/op lib/raw | raw p50 | lib p50 | raw p99 | lib p99";

/// A row's figures, as table cells.
fn cells(row: &Row) -> String {
    format!(
        "{} | {} | {:.2} | {} | {} | {:.2} | {} | {} | {} | {}",
        rate(row.raw.ops_per_s),
        rate(row.lib.ops_per_s),
        row.lib.ops_per_s / row.raw.ops_per_s,
        show(row.raw.cpu_per_op),
        show(row.lib.cpu_per_op),
        row.lib.cpu_per_op.as_secs_f64() / row.raw.cpu_per_op.as_secs_f64(),
        show(row.raw.p50),
        show(row.lib.p50),
        show(row.raw.p99),
        show(row.lib.p99),
    )
}

/// The `get` sweep of each runtime and placement: throughput and client CPU per call
/// against raw redis, by concurrency.
fn print_sweeps(rows: &[Row]) {
    let mut groups: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.sweep)
        .map(|r| (r.runtime, r.placement))
        .collect();
    groups.dedup();
    for (runtime, placement) in groups {
        println!();
        println!("get sweep [{runtime}, {placement}]:");
        println!();
        println!("| tasks | {COLUMNS} |");
        println!("| ---: |{}", " ---: |".repeat(10));
        for row in rows
            .iter()
            .filter(|r| r.sweep && r.runtime == runtime && r.placement == placement)
        {
            println!("| {} | {} |", row.tasks, cells(row));
        }
    }
}

/// SVG charts of the `get` sweep, one file per placement and figure, each with a panel per
/// runtime: what the tables say, for the docs.
mod charts {
    use std::error::Error;
    use std::path::Path;
    use std::time::Duration;

    use plotters::prelude::*;

    use super::{Row, SWEEP, Summary};

    const RAW: RGBColor = RGBColor(90, 90, 90);
    const LIB: RGBColor = RGBColor(200, 40, 40);
    const RUNTIMES: [(&str, &str); 2] = [
        ("ct", "tokio current-thread"),
        ("mt", "tokio multi-thread, 2 workers"),
    ];

    /// A figure: its file name's stem, title, y axis, whether log-scaled, and the lines
    /// (label, colour, dashed, value of a side).
    struct Figure {
        stem: &'static str,
        title: &'static str,
        y_desc: &'static str,
        log_y: bool,
        lines: Vec<Line>,
    }

    struct Line {
        label: &'static str,
        colour: RGBColor,
        dashed: bool,
        value: fn(&Row) -> f64,
    }

    fn micros(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }

    fn line(label: &'static str, colour: RGBColor, dashed: bool, value: fn(&Row) -> f64) -> Line {
        Line {
            label,
            colour,
            dashed,
            value,
        }
    }

    fn figures() -> Vec<Figure> {
        fn side(row: &Row, lib: bool) -> &Summary {
            if lib { &row.lib } else { &row.raw }
        }
        vec![
            Figure {
                stem: "get-throughput",
                title: "get: calls per second by concurrent tasks",
                y_desc: "thousand gets / s",
                log_y: false,
                lines: vec![
                    line("raw redis", RAW, false, |r| side(r, false).ops_per_s / 1e3),
                    line("library", LIB, false, |r| side(r, true).ops_per_s / 1e3),
                ],
            },
            Figure {
                stem: "get-latency",
                title: "get: latency by concurrent tasks (p50 solid, p99 dashed)",
                y_desc: "µs",
                log_y: true,
                lines: vec![
                    line("raw p50", RAW, false, |r| micros(side(r, false).p50)),
                    line("library p50", LIB, false, |r| micros(side(r, true).p50)),
                    line("raw p99", RAW, true, |r| micros(side(r, false).p99)),
                    line("library p99", LIB, true, |r| micros(side(r, true).p99)),
                ],
            },
            Figure {
                stem: "get-cpu",
                title: "get: client CPU time (user + system) per call",
                y_desc: "µs of CPU per get",
                log_y: false,
                lines: vec![
                    line("raw redis", RAW, false, |r| {
                        micros(side(r, false).cpu_per_op)
                    }),
                    line("library", LIB, false, |r| micros(side(r, true).cpu_per_op)),
                ],
            },
        ]
    }

    /// Writes every figure for every placement the rows cover; returns the files written.
    pub(super) fn write(
        dir: &Path,
        rows: &[Row],
        machine: &str,
    ) -> Result<Vec<String>, Box<dyn Error>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for placement in ["unpinned", "pinned"] {
            let sweep: Vec<&Row> = rows
                .iter()
                .filter(|r| r.sweep && r.placement == placement)
                .collect();
            if sweep.is_empty() {
                continue;
            }
            for figure in figures() {
                let path = dir.join(format!("{}-{placement}.svg", figure.stem));
                draw(&path, &figure, &sweep, &format!("{machine}, {placement}"))?;
                written.push(path.display().to_string());
            }
        }
        Ok(written)
    }

    fn draw(
        path: &Path,
        figure: &Figure,
        rows: &[&Row],
        subtitle: &str,
    ) -> Result<(), Box<dyn Error>> {
        let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("{} ({subtitle})", figure.title),
            ("sans-serif", 18),
        )?;
        let x_max = *SWEEP.last().expect("a sweep") as f64;
        let values = || {
            rows.iter()
                .flat_map(|r| figure.lines.iter().map(move |l| (l.value)(r)))
        };
        let y_max = values().fold(0.0, f64::max) * 1.15;
        let y_min = values().fold(f64::INFINITY, f64::min).max(1e-3) / 1.5;
        for (panel, (runtime, runtime_name)) in root.split_evenly((1, 2)).iter().zip(RUNTIMES) {
            let points: Vec<&&Row> = rows.iter().filter(|r| r.runtime == runtime).collect();
            let mut builder = ChartBuilder::on(panel);
            builder
                .caption(runtime_name, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60);
            let x = (1.0..x_max * 1.3).log_scale();
            // The two y scales are different types: one macro draws on either.
            macro_rules! plot {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc("concurrent tasks (log scale)")
                        .y_desc(figure.y_desc)
                        .x_label_formatter(&|v| format!("{v:.0}"))
                        .y_label_formatter(&|v| format!("{v:.0}"))
                        .draw()?;
                    for l in &figure.lines {
                        let series: Vec<(f64, f64)> = points
                            .iter()
                            .map(|r| (r.tasks as f64, (l.value)(r)))
                            .collect();
                        let style = ShapeStyle::from(l.colour).stroke_width(2);
                        let colour = l.colour;
                        if l.dashed {
                            chart
                                .draw_series(DashedLineSeries::new(series.clone(), 6, 4, style))?
                                .label(l.label)
                                .legend(move |(x, y)| {
                                    PathElement::new(vec![(x, y), (x + 20, y)], colour)
                                });
                        } else {
                            chart
                                .draw_series(LineSeries::new(series.clone(), style))?
                                .label(l.label)
                                .legend(move |(x, y)| {
                                    PathElement::new(
                                        vec![(x, y), (x + 20, y)],
                                        ShapeStyle::from(colour).stroke_width(2),
                                    )
                                });
                        }
                        chart.draw_series(
                            series.iter().map(|&p| Circle::new(p, 3, colour.filled())),
                        )?;
                    }
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperLeft)
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .draw()?;
                }};
            }
            if figure.log_y {
                plot!(builder.build_cartesian_2d(x, (y_min..y_max).log_scale())?);
            } else {
                plot!(builder.build_cartesian_2d(x, 0.0..y_max)?);
            }
        }
        root.present()?;
        Ok(())
    }
}

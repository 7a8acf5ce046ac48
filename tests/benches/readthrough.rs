//! What read-through resilience buys a service when its database fails or slows down,
//! against a real `redis-server` on loopback that the bench starts itself.
//!
//! Two caches of the same keys and values run side by side, at the same time, in one
//! process: **plain** (`get_or_load` with no read-through keys) and **resilient**
//! (`fail_safe`, `load_timeout_ms`, `refresh_ahead`, `negative_ttl`, `ttl_jitter`). Each
//! has a manager (so a connection) of its own, 32 tasks of its own and a counter of its
//! loader's calls; both load from one simulated database whose mode the bench switches.
//! Each task is a closed loop: `get_or_load` of a Zipf-distributed key (s = 1 over 1000
//! keys, key 0 the hottest), then a 1 ms pause, as a request handler would.
//!
//! Every key of both caches is loaded first; then the phases run: warm-up (database
//! healthy, 1 ms per load), failing (every load fails after 1 ms), slow (every load
//! takes 200 ms, then succeeds), recovered (healthy again). Entries live 2 s (the
//! resilient cache's up to 4 s, with jitter), and the fail-safe throttle is cut from
//! 30 s to 1 s, so entries go stale again and again within every phase. Per phase and
//! cache the table shows calls, answers (`Ok(Some)`), errors, latency of `get_or_load`,
//! loader calls, and the age of the values answered (how stale a fallback was); below
//! it, the CPU the bench process and `redis-server` spent in each phase.
//!
//! Run: `cargo bench -p cache-tests --bench readthrough` (about 30 s). A watchdog aborts
//! the process if the run takes more than 3 minutes.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use cache_tests::RedisServer;
use tokio::task::JoinHandle;

/// Tasks calling `get_or_load` on each cache.
const TASKS: usize = 32;
/// Keys of each cache, all loaded before the first phase.
const KEYS: u32 = 1000;
/// The Zipf exponent of the key picked by each call.
const ZIPF_S: f64 = 1.0;
/// A task's pause between two calls: a request handler is not a tight loop.
const THINK: Duration = Duration::from_millis(1);
/// How long a healthy or failing database takes to answer a load.
const DB_LATENCY: Duration = Duration::from_millis(1);
/// How long a slow database takes to answer a load.
const DB_SLOW: Duration = Duration::from_millis(200);
/// How long a fallback is served as fresh after a failed load (default 30 s): shorter
/// than a phase, so throttled entries go stale again within it.
const FAIL_SAFE_THROTTLE_MS: u64 = 1000;
/// Any single call slower than this counts as stuck (and as an error).
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// The whole run must end within this, or the watchdog aborts the process.
const WATCHDOG: Duration = Duration::from_secs(180);

/// `get_or_load` with no read-through keys.
#[derive(Cache)]
#[cache(namespace = "bench:readthrough:plain", ttl = 2, key = u32, value = String)]
struct Plain;

/// The same data with every read-through key that keeps a service up.
#[derive(Cache)]
#[cache(
    namespace = "bench:readthrough:resilient",
    ttl = 2,
    key = u32,
    value = String,
    fail_safe = 600,
    load_timeout_ms = 50,
    refresh_ahead = 80,
    // At most the ttl (the derive refuses more). Inert here: every key exists.
    negative_ttl = 2,
    ttl_jitter = 2
)]
struct Resilient;

cache_registry! {
    /// Both caches; each side of the bench uses one, on a manager of its own.
    struct Caches {
        plain: Plain,
        resilient: Resilient,
    }
}

/// Which cache a task calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Plain,
    Resilient,
}

impl Which {
    /// Both sides, in the order of the table.
    const BOTH: [Which; 2] = [Which::Plain, Which::Resilient];

    /// The cache's name in the table, and its registry field.
    fn name(self) -> &'static str {
        match self {
            Which::Plain => "plain",
            Which::Resilient => "resilient",
        }
    }
}

/// How the simulated database answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Healthy,
    Failing,
    Slow,
}

/// The error of a failing database.
#[derive(Debug)]
struct DbDown;

/// The simulated database: every key exists; its value carries the time it was read,
/// so a caller can tell how old the value it got is.
struct Db {
    mode: AtomicU8,
    epoch: Instant,
}

impl Db {
    /// Switches how every load from now on answers.
    fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// How loads answer now.
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Healthy,
            1 => Mode::Failing,
            _ => Mode::Slow,
        }
    }

    /// One load of `key`, counted in `calls`. Owns its arguments: the resilient cache's
    /// loads may outlive their caller, on a task of their own.
    async fn load(
        self: Arc<Self>,
        key: u32,
        calls: Arc<AtomicU64>,
    ) -> Result<Option<String>, DbDown> {
        calls.fetch_add(1, Ordering::Relaxed);
        match self.mode() {
            Mode::Healthy => tokio::time::sleep(DB_LATENCY).await,
            Mode::Failing => {
                tokio::time::sleep(DB_LATENCY).await;
                return Err(DbDown);
            }
            Mode::Slow => tokio::time::sleep(DB_SLOW).await,
        }
        let read_at = self.epoch.elapsed().as_millis();
        // About the size of a small row: 100 bytes.
        Ok(Some(format!("{key}:{read_at}:{:-<80}", "")))
    }

    /// How old a value this database returned is.
    fn age(&self, value: &str) -> Option<Duration> {
        let read_at: u64 = value.split(':').nth(1)?.parse().ok()?;
        Some(
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(read_at)),
        )
    }
}

/// One phase of the run: how long, and how the database answers meanwhile.
struct Phase {
    name: &'static str,
    mode: Mode,
    length: Duration,
}

/// The run, in order.
const PHASES: [Phase; 4] = [
    Phase {
        name: "warm-up (healthy)",
        mode: Mode::Healthy,
        length: Duration::from_secs(3),
    },
    Phase {
        name: "failing",
        mode: Mode::Failing,
        length: Duration::from_secs(10),
    },
    Phase {
        name: "slow (200 ms)",
        mode: Mode::Slow,
        length: Duration::from_secs(10),
    },
    Phase {
        name: "recovered (healthy)",
        mode: Mode::Healthy,
        length: Duration::from_secs(3),
    },
];

/// What one task saw in one phase.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ages: Vec<Duration>,
    answered: u64,
    errors: u64,
    absent: u64,
    stuck: u64,
}

impl Tally {
    /// Adds another task's tally of the same phase.
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.ages.extend(other.ages);
        self.answered += other.answered;
        self.errors += other.errors;
        self.absent += other.absent;
        self.stuck += other.stuck;
    }
}

/// One side of the bench: a cache on a manager of its own, and its loader's calls.
struct Side {
    which: Which,
    manager: Caches,
    loads: Arc<AtomicU64>,
}

impl Side {
    /// `get_or_load` of `key` on this side's cache, loading from `db`.
    async fn get_or_load(&self, db: &Arc<Db>, key: u32) -> Result<Option<String>, DbDown> {
        let load = {
            let (db, calls) = (Arc::clone(db), Arc::clone(&self.loads));
            move || db.load(key, calls)
        };
        match self.which {
            Which::Plain => self.manager.plain().get_or_load(&key, load).await,
            Which::Resilient => self.manager.resilient().get_or_load(&key, load).await,
        }
    }
}

/// The state every task shares: which phase runs, and whether to stop.
struct Clock {
    phase: AtomicUsize,
    stop: AtomicBool,
}

/// Picks keys with probability proportional to `1 / (k + 1)^s`: a few hot keys, a long
/// tail, as in most services.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The cumulative distribution over `keys` keys with exponent `s`.
    fn new(keys: u32, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..keys)
            .map(|k| {
                total += 1.0 / f64::from(k + 1).powf(s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// One key, by inverse transform sampling.
    fn pick(&self, rng: &mut SplitMix) -> u32 {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u32
    }
}

/// A small deterministic generator, one per task: no dependency, no shared state.
struct SplitMix(u64);

impl SplitMix {
    /// The next 64 random bits (SplitMix64).
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One task's loop until told to stop: what it saw, per phase.
async fn run_task(
    side: Arc<Side>,
    db: Arc<Db>,
    clock: Arc<Clock>,
    zipf: Arc<Zipf>,
    seed: u64,
) -> Vec<Tally> {
    let mut tallies: Vec<Tally> = PHASES.iter().map(|_| Tally::default()).collect();
    let mut rng = SplitMix(seed);
    while !clock.stop.load(Ordering::Relaxed) {
        // A call counts in the phase it started in.
        let tally = &mut tallies[clock.phase.load(Ordering::Relaxed)];
        let key = zipf.pick(&mut rng);
        let started = Instant::now();
        let got = tokio::time::timeout(CALL_DEADLINE, side.get_or_load(&db, key)).await;
        tally.latencies.push(started.elapsed());
        match got {
            Ok(Ok(Some(value))) => {
                tally.answered += 1;
                tally.ages.extend(db.age(&value));
            }
            Ok(Ok(None)) => tally.absent += 1,
            Ok(Err(DbDown)) => tally.errors += 1,
            Err(_) => {
                tally.errors += 1;
                tally.stuck += 1;
            }
        }
        tokio::time::sleep(THINK).await;
    }
    tallies
}

/// Loads every key of `side`'s cache with the database healthy, from `TASKS` tasks.
async fn preload(side: &Arc<Side>, db: &Arc<Db>) {
    let tasks: Vec<JoinHandle<()>> = (0..TASKS as u32)
        .map(|first| {
            let (side, db) = (Arc::clone(side), Arc::clone(db));
            tokio::spawn(async move {
                for key in (first..KEYS).step_by(TASKS) {
                    let got = side.get_or_load(&db, key).await;
                    assert!(
                        matches!(got, Ok(Some(_))),
                        "{}: preloading key {key} failed",
                        side.which.name()
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap_or_else(|_| panic!("{}: the preload took more than 30 s", side.which.name()))
            .expect("a preload task panicked");
    }
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`;
/// `None` where there is no such file.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // `/proc` counts in USER_HZ, which is 100 on every Linux architecture.
    Some(Duration::from_millis(ticks * 10))
}

/// The `field:value` of an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// `INFO section` of the server, within 5 s.
async fn info(raw: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    let mut command = redis::cmd("INFO");
    command.arg(section);
    tokio::time::timeout(Duration::from_secs(5), command.query_async::<String>(raw))
        .await
        .expect("INFO took more than 5 s")
        .expect("INFO failed")
}

/// CPU time `redis-server` has used so far (user + system), from `INFO cpu`.
async fn server_cpu(raw: &mut redis::aio::MultiplexedConnection) -> Option<Duration> {
    let info = info(raw, "cpu").await;
    let seconds = |field| info_field(&info, field)?.parse::<f64>().ok();
    Some(Duration::from_secs_f64(
        seconds("used_cpu_user")? + seconds("used_cpu_sys")?,
    ))
}

/// What the counters say at a phase boundary.
struct Snapshot {
    at: Instant,
    process_cpu: Option<Duration>,
    server_cpu: Option<Duration>,
    loads: [u64; 2],
    degraded: [u64; 2],
}

/// The counters now: CPU of both processes, loader calls and degraded calls per side.
async fn snapshot(sides: &[Arc<Side>; 2], raw: &mut redis::aio::MultiplexedConnection) -> Snapshot {
    let degraded = |side: &Side| {
        let stats = side.manager.stats();
        stats
            .iter()
            .find(|s| s.field == side.which.name())
            .map_or(0, |s| s.degraded)
    };
    Snapshot {
        at: Instant::now(),
        process_cpu: process_cpu(),
        server_cpu: server_cpu(raw).await,
        loads: [
            sides[0].loads.load(Ordering::Relaxed),
            sides[1].loads.load(Ordering::Relaxed),
        ],
        degraded: [degraded(&sides[0]), degraded(&sides[1])],
    }
}

/// The `p` quantile of sorted samples, nearest rank.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A duration in the unit that keeps 3 or 4 significant digits.
fn show(d: Duration) -> String {
    if d < Duration::from_micros(10) {
        format!("{} ns", d.as_nanos())
    } else if d < Duration::from_millis(10) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else if d < Duration::from_secs(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// `p` of `values` (sorted here), or a dash when there are none.
fn show_percentile(values: &mut [Duration], p: f64) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    values.sort_unstable();
    show(percentile(values, p))
}

/// A CPU time spent over `wall`, as seconds and a share of the machine's cores.
fn show_cpu(cpu: Option<Duration>, wall: Duration, cores: usize) -> String {
    match cpu {
        Some(cpu) => format!(
            "{:.2} s ({:.0}% of {cores} cores)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / wall.as_secs_f64() / cores as f64 * 100.0
        ),
        None => "n/a".to_owned(),
    }
}

/// Aborts the process after `limit` with a message: a hung bench must not hang CI.
/// `abort` runs no destructors, so it first asks the bench's `redis-server` (on `port`)
/// to shut down, lest it outlive the bench.
fn start_watchdog(port: u16, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("readthrough bench: still running after {limit:?}; something hangs, aborting");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(b"SHUTDOWN NOSAVE\r\n");
        }
        std::process::abort();
    });
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = RedisServer::new();
    start_watchdog(server.port(), WATCHDOG);
    let mut raw = server.raw().await;
    let version = info(&mut raw, "server").await;
    let version = info_field(&version, "redis_version").unwrap_or("unknown");
    let url = format!(
        "{}?fail_safe_throttle_ms={FAIL_SAFE_THROTTLE_MS}",
        server.url()
    );

    let mut sides = Vec::new();
    for which in Which::BOTH {
        let manager = Caches::new();
        manager.connect(&url).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !manager.health().await.healthy {
            assert!(
                Instant::now() < deadline,
                "{}: not connected after 10 s",
                which.name()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sides.push(Arc::new(Side {
            which,
            manager,
            loads: Arc::new(AtomicU64::new(0)),
        }));
    }
    let sides: [Arc<Side>; 2] = sides.try_into().unwrap_or_else(|_| unreachable!());
    let db = Arc::new(Db {
        mode: AtomicU8::new(Mode::Healthy as u8),
        epoch: Instant::now(),
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);

    println!(
        "readthrough: redis-server {version} on loopback; {cores} cores; tokio multi-thread, 2 workers; \
         {TASKS} tasks per cache, both caches at once, each call then a {THINK:?} pause; \
         {KEYS} keys, Zipf s = {ZIPF_S}; ttl 2 s (resilient: + jitter up to 2 s, fail_safe 600 s, \
         load_timeout 50 ms, refresh_ahead 80%, negative_ttl 2 s); fail-safe throttle \
         {FAIL_SAFE_THROTTLE_MS} ms; database {DB_LATENCY:?} per load, {DB_SLOW:?} when slow; phases: {}",
        PHASES
            .iter()
            .map(|p| format!("{} {} s", p.name, p.length.as_secs()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let preload_started = Instant::now();
    for side in &sides {
        preload(side, &db).await;
    }
    println!(
        "preload: {KEYS} keys per cache in {}",
        show(preload_started.elapsed())
    );

    let clock = Arc::new(Clock {
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let zipf = Arc::new(Zipf::new(KEYS, ZIPF_S));
    let mut tasks: Vec<(Which, JoinHandle<Vec<Tally>>)> = Vec::new();
    for side in &sides {
        for t in 0..TASKS as u64 {
            let task = run_task(
                Arc::clone(side),
                Arc::clone(&db),
                Arc::clone(&clock),
                Arc::clone(&zipf),
                // The same key sequences on both sides.
                t + 1,
            );
            tasks.push((side.which, tokio::spawn(task)));
        }
    }

    let mut snapshots = vec![snapshot(&sides, &mut raw).await];
    for (index, phase) in PHASES.iter().enumerate() {
        db.set_mode(phase.mode);
        clock.phase.store(index, Ordering::Relaxed);
        if index > 0 {
            snapshots.push(snapshot(&sides, &mut raw).await);
        }
        tokio::time::sleep(phase.length).await;
    }
    clock.stop.store(true, Ordering::Relaxed);
    snapshots.push(snapshot(&sides, &mut raw).await);

    let mut tallies: [Vec<Tally>; 2] = [
        PHASES.iter().map(|_| Tally::default()).collect(),
        PHASES.iter().map(|_| Tally::default()).collect(),
    ];
    for (which, task) in tasks {
        let seen = tokio::time::timeout(CALL_DEADLINE * 2, task)
            .await
            .expect("a task did not stop within 10 s")
            .expect("a task panicked");
        let side = Which::BOTH.iter().position(|w| *w == which).unwrap_or(0);
        for (total, tally) in tallies[side].iter_mut().zip(seen) {
            total.merge(tally);
        }
    }

    println!();
    println!(
        "| phase | cache | calls | answered | errors | answered % | p50 | p99 | max | loader calls | age of answers p99 |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut notes = Vec::new();
    for (index, phase) in PHASES.iter().enumerate() {
        let (start, end) = (&snapshots[index], &snapshots[index + 1]);
        for (side, which) in Which::BOTH.iter().enumerate() {
            let tally = &mut tallies[side][index];
            let calls = tally.latencies.len() as u64;
            let max = tally.latencies.iter().max().copied();
            println!(
                "| {} | {} | {calls} | {} | {} | {:.1}% | {} | {} | {} | {} | {} |",
                phase.name,
                which.name(),
                tally.answered,
                tally.errors,
                tally.answered as f64 / calls.max(1) as f64 * 100.0,
                show_percentile(&mut tally.latencies, 0.50),
                show_percentile(&mut tally.latencies, 0.99),
                max.map_or_else(|| "-".to_owned(), show),
                end.loads[side] - start.loads[side],
                show_percentile(&mut tally.ages, 0.99),
            );
            let degraded = end.degraded[side] - start.degraded[side];
            if tally.stuck + tally.absent + degraded > 0 {
                notes.push(format!(
                    "{} / {}: {} calls stuck past {CALL_DEADLINE:?}, {} answered Ok(None), \
                     {degraded} Redis calls degraded (timeout or breaker)",
                    phase.name,
                    which.name(),
                    tally.stuck,
                    tally.absent
                ));
            }
        }
    }
    println!();
    for (index, phase) in PHASES.iter().enumerate() {
        let (start, end) = (&snapshots[index], &snapshots[index + 1]);
        let wall = end.at - start.at;
        let calls: usize = (0..2)
            .map(|side| tallies[side][index].latencies.len())
            .sum();
        let client = start
            .process_cpu
            .zip(end.process_cpu)
            .map(|(a, b)| b.saturating_sub(a));
        let server = start
            .server_cpu
            .zip(end.server_cpu)
            .map(|(a, b)| b.saturating_sub(a));
        println!(
            "CPU in {} ({:.1} s): bench process {}, {} per call (both caches); redis-server {}",
            phase.name,
            wall.as_secs_f64(),
            show_cpu(client, wall, cores),
            client.map_or_else(
                || "n/a".to_owned(),
                |cpu| show(cpu / u32::try_from(calls.max(1)).unwrap_or(u32::MAX))
            ),
            show_cpu(server, wall, cores),
        );
    }
    for note in notes {
        println!("note: {note}");
    }
}

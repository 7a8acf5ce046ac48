//! The engine of the chaos soaks (`chaos.rs` on one `redis-server`, `chaos_cluster.rs` on
//! a three-master cluster): a mixed workload of 32 tasks on a two-worker runtime, faults
//! injected from a std thread on a seeded schedule, and the checks the library promises
//! to keep whatever Redis does.
//!
//! What is checked, and how:
//! - **No value of another key.** Every stored value is a [`Stamp`] naming its cache, key
//!   and version; a read that returns a stamp of another cache or key is counted.
//! - **No stale value.** Each key of the checked caches has exactly one writer task, so
//!   its writes are sequential and its versions increase. When a `set`/`mset` returns
//!   `Ok(true)` for version `v`, the key's floor becomes `v`; when an `invalidate` returns
//!   `true` after the writer's latest version `v`, it becomes `v + 1`. A read that begins
//!   after the floor was raised must return `None` (a kill or `FLUSHALL` empties Redis:
//!   allowed) or a version at least the floor. It applies to the cache with a first
//!   level, where a copy kept too long would show, and to the plain cache.
//! - **Bounded calls.** Every call is timed; each must return within the response
//!   timeout plus scheduling slack (see [`Bounds`]), and none may hang.
//! - **Recovery without `connect`.** After each fault ends, a probe task writes and reads
//!   a probe key through the manager until it works, within a bound.
//! - **No starvation.** A timer task on the same runtime sleeps 10 ms in a loop; its
//!   worst lateness is bounded.
//! - **No leak.** Resident memory after the warm-up and after the run (from
//!   `/proc/self/statm`; hence one soak per test binary, alone in its process).
//! - **Short logs.** A global `tracing` subscriber counts WARN and ERROR lines: a bounded
//!   number per fault, while the calls number in the hundreds of thousands.
//! - **No panic.** Every task is joined; a `JoinError` fails the soak.
//!
//! The test thread is a watchdog: the runtime runs on a std thread of its own, and the
//! test thread waits for its report with `recv_timeout`. Every wait inside has a deadline,
//! so a hang shows as a failure that says where, not as a stuck `cargo test`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::time::{Duration, Instant};

use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

// ---------------------------------------------------------------------------------------
// The caches
// ---------------------------------------------------------------------------------------

/// What every cache of the soak stores: which cache and key it was written for, and the
/// writer's version of it. A read that returns a stamp of another cache or key is a
/// cross-key read, whatever the codec or coalescing did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The cache it was written to: one of the `*_CACHE` tags.
    pub cache: u8,
    /// The key it was written under.
    pub key: i64,
    /// The writer's version: increasing per key.
    pub version: u64,
}

/// Tag of [`PlainCache`] in a [`Stamp`].
const PLAIN_CACHE: u8 = 1;
/// Tag of [`LocalCache`] in a [`Stamp`].
const LOCAL_CACHE: u8 = 2;
/// Tag of [`HotCache`] in a [`Stamp`].
const HOT_CACHE: u8 = 3;
/// Tag of [`ProbeCache`] in a [`Stamp`].
const PROBE_CACHE: u8 = 4;

/// Every call goes to Redis.
#[derive(Cache)]
#[cache(namespace = "chaos:plain", ttl = 600, key = i64, value = Stamp)]
pub struct PlainCache;

/// With an in-process first level smaller than its key space (256 keys), so copies are
/// evicted and refilled all along.
#[derive(Cache)]
#[cache(namespace = "chaos:local", ttl = 600, key = i64, value = Stamp, local = 128)]
pub struct LocalCache;

/// The hot keys of `get_or_load`, with a first level too.
#[derive(Cache)]
#[cache(namespace = "chaos:hot", ttl = 600, key = i64, value = Stamp, local = 16)]
pub struct HotCache;

/// The recovery probe's keys, written by the probe task only.
#[derive(Cache)]
#[cache(namespace = "chaos:probe", ttl = 600, key = i64, value = Stamp)]
pub struct ProbeCache;

cache_registry! {
    /// The caches under chaos.
    pub struct ChaosManager {
        plain: PlainCache,
        local: LocalCache,
        hot: HotCache,
        probe: ProbeCache,
    }
}

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// The response timeout the soaks connect with (`?response_timeout_ms=200`): a little
/// under the 250 ms default, so a paused server costs each caller less before the breaker
/// opens and more calls run per fault, yet thousands of times a loopback round trip, so a
/// busy 2-core VM does not time calls out when no fault is injected.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(200);

/// The URL options of the soaks, and why:
/// - `response_timeout_ms=200`: see [`RESPONSE_TIMEOUT`];
/// - `connect_timeout_ms=300`, `backoff_min_ms=20`, `backoff_max_ms=200`: reconnect in
///   tens of milliseconds (as `fast_recovery()` in `redis_faults.rs`), since the soak
///   injects a fault every few seconds and the default backoff (up to 5 s) would spend
///   the soak waiting and make the recovery bound a statement about the backoff;
/// - `summary_interval_ms=1000`: outages of up to 2 s then log their periodic summary
///   too, so the log bound covers that path, not only the first and last line.
pub const URL_OPTIONS: &str = "response_timeout_ms=200&connect_timeout_ms=300&backoff_min_ms=20&backoff_max_ms=200&summary_interval_ms=1000";

/// Scheduling slack a call may take beyond its deadline: 32 tasks, redis-server and the
/// fault injector share two cores (and other builds), and a debug build is slow; a call
/// that does not honour its deadline waits far longer than this.
const SLACK: Duration = Duration::from_millis(500);
/// How long the loader of `get_or_load` sleeps: the database's round trip.
const LOADER_SLEEP: Duration = Duration::from_millis(20);
/// A call still pending after this is a hang: reported, and the task goes on.
const HANG_LIMIT: Duration = Duration::from_secs(5);
/// The period of the probe timer.
const TIMER_PERIOD: Duration = Duration::from_millis(10);
/// How late the probe timer may fire, beyond what the machine alone inflicts (the worst
/// lateness of the same timer on a std thread during the same run, see
/// [`control_timer`]). A runtime whose tasks yield fires it within a few milliseconds;
/// the kernel may still keep a worker off its core for some tens of milliseconds more
/// than it kept the control thread (two workers, redis-server, the injector and other
/// builds share two cores). A runtime held by a task that never yields (what the
/// library's `consume_budget` prevents) fires it late by a whole outage: seconds.
const MAX_LATENESS: Duration = Duration::from_millis(150);
/// How much resident memory may grow from the end of the warm-up to the end of the run:
/// allocator noise and buffers grown by one more burst, not a leak, which at hundreds of
/// thousands of calls would show as tens of megabytes.
const RSS_GROWTH_LIMIT: u64 = 8 << 20;
/// WARN and ERROR lines allowed per fault, from its start to the next fault's: the
/// outage's error line, one summary per second of outage (at most two), a refusal
/// warning, and room for one more transition (a spurious timeout streak on a busy VM).
const LOG_LINES_PER_FAULT: u64 = 6;
/// WARN and ERROR lines allowed in all besides those of the faults: the warm-up's.
const LOG_LINES_CONSTANT: u64 = 10;

/// The workload's shape.
const OWNERS: usize = 16;
/// Keys each owner writes, in each checked cache.
const KEYS_PER_OWNER: usize = 16;
/// Tasks that only read the checked caches.
const READERS: usize = 6;
/// Tasks calling `get_or_load` on the hot keys.
const HOT_CALLERS: usize = 8;
/// The hot keys; each has `HOT_CALLERS / HOT_KEYS` concurrent callers and one
/// invalidator task.
const HOT_KEYS: usize = 2;
/// Workload tasks in all: 16 owners + 6 readers + 8 hot callers + 2 hot invalidators.
const TASKS: usize = OWNERS + READERS + HOT_CALLERS + HOT_KEYS;
const _: () = assert!(TASKS == 32, "the issue asks for 32 workload tasks");

/// The key `slot` of owner `owner`.
fn owned_key(owner: usize, slot: usize) -> i64 {
    (owner * 1000 + slot) as i64
}

/// The index of an owned key in the floor tables.
fn key_index(key: i64) -> usize {
    let key = key as usize;
    (key / 1000) * KEYS_PER_OWNER + key % 1000
}

/// A key in the local cache no task writes: the final check of the first level uses it.
const LEVEL_CHECK_KEY: i64 = -1;

// ---------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------

/// The seed: `CHAOS_SEED` (decimal or `0x` hex) when set, else a fixed default, so a run
/// can be replayed. The schedule of faults follows from it; the interleaving of the
/// tasks does not (it is a real runtime on real threads).
pub fn chaos_seed() -> u64 {
    /// Any fixed value would do; this one is the seed the reported runs used.
    const DEFAULT: u64 = 0x00C4_A05E_ED00_2025;
    match std::env::var("CHAOS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("CHAOS_SEED={text:?} is not a u64: {e}"))
        }
        Err(_) => DEFAULT,
    }
}

/// SplitMix64: small, seedable, good enough to pick operations and durations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`, decorrelated from others by `stream`.
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A duration between `low` and `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next_u64() % (high - low + 1))
    }

    /// Shuffles `items` (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Counting log lines
// ---------------------------------------------------------------------------------------

/// One WARN or ERROR line the library logged.
#[derive(Debug, Clone)]
struct LogLine {
    /// When it was logged.
    at: Instant,
    /// WARN or ERROR.
    level: Level,
    /// Its message and fields.
    text: String,
}

/// What the global subscriber saw.
#[derive(Default)]
struct LogBook {
    /// WARN lines.
    warn: u64,
    /// ERROR lines.
    error: u64,
    /// INFO lines: counted, not bounded (one per recovery and connection).
    info: u64,
    /// The first WARN and ERROR lines, to show and to attribute to faults.
    lines: Vec<LogLine>,
}

/// At most this many lines are kept: the count goes on.
const KEPT_LINES: usize = 1000;

/// What the global subscriber saw, for the whole process.
static LOG_BOOK: Mutex<LogBook> = Mutex::new(LogBook {
    warn: 0,
    error: 0,
    info: 0,
    lines: Vec::new(),
});

/// The log book, locked. Take it once per statement: the lock is not reentrant.
fn log_book() -> std::sync::MutexGuard<'static, LogBook> {
    LOG_BOOK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `tracing` layer that counts events by level and keeps the WARN and ERROR lines.
///
/// Global, not a thread's default like `LogCapture`: the library logs from whichever
/// worker thread its supervisor or the failing call runs on.
struct CountingLayer;

impl<S: Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        let mut book = log_book();
        // More verbose levels compare greater: ERROR < WARN < INFO.
        if level == Level::INFO {
            book.info += 1;
            return;
        }
        if level > Level::WARN {
            return;
        }
        if level == Level::ERROR {
            book.error += 1;
        } else {
            book.warn += 1;
        }
        if book.lines.len() < KEPT_LINES {
            let mut text = Fields(String::new());
            event.record(&mut text);
            book.lines.push(LogLine {
                at: Instant::now(),
                level,
                text: text.0,
            });
        }
    }
}

/// Renders an event's fields as `message field=value ...`.
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?} ");
        } else {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }
}

/// Installs the counting subscriber for the whole process, at INFO: the library's debug
/// spans stay disabled, as in production.
fn count_logs() {
    /// One global subscriber per process, whatever calls this.
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(CountingLayer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

/// What a soak injects faults into: a server or a cluster, driven from the injector's
/// std thread with blocking calls only (processes, signals, a raw synchronous
/// connection), so the library's runtime cannot slow the faults down.
pub trait Injector: Send + 'static {
    /// The kinds of fault it knows.
    type Kind: Copy + Send + fmt::Display + 'static;

    /// Starts a fault; returns what was done, for the report.
    fn begin(&mut self, kind: Self::Kind) -> String;

    /// Ends a fault begun by [`begin`](Self::begin) (nothing for instant faults).
    fn end(&mut self, kind: Self::Kind);

    /// The process ids of the `redis-server`s it runs, so the watchdog can kill them
    /// should the soak hang (the harness kills them on drop, which a hung thread never
    /// reaches).
    fn pids(&mut self) -> Vec<u32>;

    /// How many reads (`GET`, `MGET` commands) every node has served so far
    /// (`INFO commandstats`), ignoring nodes that do not answer.
    fn reads(&mut self) -> u64;
}

/// The `GET` and `MGET` calls counted in an `INFO commandstats` reply.
pub fn reads_in(commandstats: &str) -> u64 {
    commandstats
        .lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("cmdstat_get:")
                .or_else(|| line.strip_prefix("cmdstat_mget:"))?;
            rest.strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Planned<K> {
    /// What to inject.
    pub kind: K,
    /// Calm before it, counted from the previous fault's recovery.
    pub gap: Duration,
    /// How long it lasts before it is ended (zero for instant faults).
    pub hold: Duration,
}

/// A soak to run.
pub struct Soak<I: Injector> {
    /// `standalone` or `cluster`, for the report.
    pub name: &'static str,
    /// The URL the manager connects to, [`URL_OPTIONS`] included.
    pub url: String,
    /// The seed the schedule came from.
    pub seed: u64,
    /// The faults, in order.
    pub schedule: Vec<Planned<I::Kind>>,
    /// The fault injector.
    pub injector: I,
    /// Load before the first fault; resident memory is read at its end.
    pub warmup: Duration,
    /// Load after the last fault's recovery.
    pub tail: Duration,
    /// How soon after a fault ends the probe must work again.
    pub recovery_limit: Duration,
    /// The probe keys: one is enough on one server; on a cluster one per master, so the
    /// probe proves every master is back.
    pub probe_keys: Vec<i64>,
    /// How many faults of each kind the schedule must hold at least.
    pub min_per_kind: usize,
}

/// One fault as it happened.
#[derive(Debug)]
struct FaultRecord {
    /// The fault's kind, as displayed.
    kind: String,
    /// What the injector did, e.g. which connections it killed.
    details: String,
    /// When the injector began it.
    began: Instant,
    /// From its beginning to its end (the end of a restart included).
    held: Duration,
    /// Time from the fault's end to the probe's success, or why it failed.
    recovery: Result<Duration, String>,
}

/// A request to the probe task: prove the caches work again, counting from `since`.
struct ProbeRequest {
    /// When the fault ended: recovery is timed from then.
    since: Instant,
    /// Where the time to recovery, or why there was none, goes.
    reply: mpsc::Sender<Result<Duration, String>>,
}

/// What the watchdog (the test thread) shares with the soak.
#[derive(Default)]
struct Watch {
    /// Set when the soak must end early: the injector stops at its next step.
    abort: AtomicBool,
    /// The `redis-server` process ids, for the watchdog to kill should the soak hang.
    pids: Mutex<Vec<u32>>,
    /// Where the soak is, for the watchdog's message.
    step: Mutex<String>,
}

impl Watch {
    /// Whether the soak must end early.
    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    /// Records where the soak is now.
    fn set_step(&self, step: impl Into<String>) {
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = step.into();
    }

    /// Where the soak was last.
    fn step(&self) -> String {
        self.step.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the servers' current process ids (a restart changes them).
    fn set_pids(&self, pids: Vec<u32>) {
        *self.pids.lock().unwrap_or_else(|p| p.into_inner()) = pids;
    }

    /// The servers' process ids, as last recorded.
    fn pids(&self) -> Vec<u32> {
        self.pids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Sleeps `time` in small steps, returning early when the soak is aborted.
fn nap(time: Duration, watch: &Watch) {
    let until = Instant::now() + time;
    while !watch.aborted() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// What the injector thread hands back.
struct Injected<I> {
    /// The injector, back for the final check of the first level (and dropped with its
    /// servers at the end).
    injector: I,
    /// Each fault as it happened.
    faults: Vec<FaultRecord>,
    /// What went wrong on the injector's side.
    problems: Vec<String>,
}

/// The injector thread: for each planned fault, calm, begin, hold, end, then ask the
/// probe task to prove recovery and wait for its answer (with a deadline).
fn inject<I: Injector>(
    mut injector: I,
    schedule: Vec<Planned<I::Kind>>,
    probes: tokio::sync::mpsc::UnboundedSender<ProbeRequest>,
    watch: Arc<Watch>,
    recovery_limit: Duration,
    tail: Duration,
) -> Injected<I> {
    let mut faults = Vec::new();
    let mut problems = Vec::new();
    for (i, planned) in schedule.into_iter().enumerate() {
        let fault = format!("fault {} ({})", i + 1, planned.kind);
        watch.set_step(format!("in the calm before {fault}"));
        nap(planned.gap, &watch);
        if watch.aborted() {
            problems.push("the soak was aborted before every fault was injected".to_owned());
            break;
        }
        let began = Instant::now();
        watch.set_step(format!("injecting {fault}"));
        let step = catch_unwind(AssertUnwindSafe(|| {
            let details = injector.begin(planned.kind);
            std::thread::sleep(planned.hold);
            injector.end(planned.kind);
            watch.set_pids(injector.pids());
            details
        }));
        let ended = Instant::now();
        let details = match step {
            Ok(details) => details,
            Err(panic) => {
                problems.push(format!(
                    "injecting {} panicked: {}",
                    planned.kind,
                    panic_text(&*panic)
                ));
                break;
            }
        };
        watch.set_step(format!("waiting for the caches to recover from {fault}"));
        let (reply, answer) = mpsc::channel();
        let recovery = if probes
            .send(ProbeRequest {
                since: ended,
                reply,
            })
            .is_err()
        {
            Err("the probe task is gone".to_owned())
        } else {
            // The probe task gives up at the limit by itself; the margin is for a runtime
            // too busy to answer, which is a failure too.
            match answer.recv_timeout(recovery_limit + Duration::from_secs(5)) {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "the probe task did not answer within {:?}: is the runtime stuck?",
                    recovery_limit + Duration::from_secs(5)
                )),
            }
        };
        let recovered = recovery.is_ok();
        faults.push(FaultRecord {
            kind: planned.kind.to_string(),
            details,
            began,
            held: ended - began,
            recovery,
        });
        if !recovered {
            // The library is broken, and each further fault would wait for the probe
            // again: stop here, so the soak fails in seconds rather than minutes.
            problems.push(format!(
                "the injector stopped after {fault}, from which the caches did not recover"
            ));
            break;
        }
    }
    watch.set_step("in the calm after the last fault");
    nap(tail, &watch);
    Injected {
        injector,
        faults,
        problems,
    }
}

/// The message of a panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a non-text panic)".to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------

/// The operations timed and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// `get`.
    Get,
    /// `set`.
    Set,
    /// `mget`.
    Mget,
    /// `mset`.
    Mset,
    /// `invalidate`.
    Invalidate,
    /// `get_or_load`.
    GetOrLoad,
}

impl Op {
    /// Every operation, in the order of the report.
    const ALL: [Op; 6] = [
        Op::Get,
        Op::Set,
        Op::Mget,
        Op::Mset,
        Op::Invalidate,
        Op::GetOrLoad,
    ];

    /// The method's name.
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Mget => "mget",
            Op::Mset => "mset",
            Op::Invalidate => "invalidate",
            Op::GetOrLoad => "get_or_load",
        }
    }
}

/// The latency bounds of the soak's calls.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Any single call: its deadline (the response timeout, sending included; an `mget`
    /// or `mset` on a cluster runs its masters' pipelines concurrently under the same
    /// deadline) plus [`SLACK`].
    call: Duration,
    /// `get_or_load`, the caller's own loader time excluded: its `get`, then a `set` (its
    /// own after loading, or the leader's it waits for, behind the leader's loader
    /// sleep), so two deadlines, one [`LOADER_SLEEP`] and [`SLACK`].
    get_or_load: Duration,
}

impl Bounds {
    /// The bounds that follow from [`RESPONSE_TIMEOUT`], [`LOADER_SLEEP`] and [`SLACK`].
    const fn new() -> Self {
        Bounds {
            call: RESPONSE_TIMEOUT.saturating_add(SLACK),
            get_or_load: RESPONSE_TIMEOUT
                .saturating_add(RESPONSE_TIMEOUT)
                .saturating_add(LOADER_SLEEP)
                .saturating_add(SLACK),
        }
    }

    /// The bound of one call of `op`.
    fn of(self, op: Op) -> Duration {
        match op {
            Op::GetOrLoad => self.get_or_load,
            _ => self.call,
        }
    }
}

/// The floor of one key: the least version a read that begins now may return.
#[derive(Debug, Clone, Copy)]
struct Floor {
    /// The least version a read may return (`None` is always allowed).
    min: u64,
    /// The write that raised it, for the report.
    op: &'static str,
    /// The version the raising write wrote, or the latest before an invalidation.
    version: u64,
    /// When the raising write returned.
    at: Option<Instant>,
}

/// The floors of every owned key, in both checked caches.
struct Floors {
    /// Of [`PlainCache`], by [`key_index`].
    plain: Vec<Mutex<Floor>>,
    /// Of [`LocalCache`], by [`key_index`].
    local: Vec<Mutex<Floor>>,
}

impl Floors {
    /// Every floor at zero: nothing written yet.
    fn new() -> Self {
        let table = || {
            (0..OWNERS * KEYS_PER_OWNER)
                .map(|_| {
                    Mutex::new(Floor {
                        min: 0,
                        op: "nothing",
                        version: 0,
                        at: None,
                    })
                })
                .collect()
        };
        Floors {
            plain: table(),
            local: table(),
        }
    }

    /// The floors of one cache.
    fn table(&self, cache: Checked) -> &[Mutex<Floor>] {
        match cache {
            Checked::Plain => &self.plain,
            Checked::Local => &self.local,
        }
    }

    /// The floor of `key` now.
    fn read(&self, cache: Checked, key: i64) -> Floor {
        *self.table(cache)[key_index(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Raises the floor of `key` to `min` (it never goes down).
    fn raise(&self, cache: Checked, key: i64, min: u64, op: &'static str, version: u64) {
        let mut floor = self.table(cache)[key_index(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if min > floor.min {
            *floor = Floor {
                min,
                op,
                version,
                at: Some(Instant::now()),
            };
        }
    }
}

/// The two caches the staleness oracle checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    Plain,
    Local,
}

impl Checked {
    /// Its tag in a [`Stamp`].
    fn tag(self) -> u8 {
        match self {
            Checked::Plain => PLAIN_CACHE,
            Checked::Local => LOCAL_CACHE,
        }
    }

    /// Its name in the report.
    fn name(self) -> &'static str {
        match self {
            Checked::Plain => "plain",
            Checked::Local => "local (first level)",
        }
    }
}

/// What every task shares.
struct Ctx {
    /// The manager under chaos.
    manager: Arc<ChaosManager>,
    /// The staleness oracle.
    floors: Floors,
    /// Set when the load must stop.
    stop: AtomicBool,
    /// The latency bounds.
    bounds: Bounds,
    /// When the soak began: messages give times from it.
    t0: Instant,
    /// Loader runs of `get_or_load`, and the version counter of the hot keys.
    loads: AtomicU64,
}

impl Ctx {
    /// `instant` as a time from the start of the soak, `+12.345s`.
    fn at(&self, instant: Instant) -> String {
        format!(
            "+{:.3}s",
            instant.saturating_duration_since(self.t0).as_secs_f64()
        )
    }
}

/// At most this many examples of each kind of problem are kept per task.
const EXAMPLES: usize = 5;

/// A count and its first examples.
#[derive(Debug, Default)]
struct Tally {
    /// How many.
    count: u64,
    /// The first ones, described.
    examples: Vec<String>,
}

impl Tally {
    /// Counts one, describing it only when it is kept.
    fn add(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }

    /// Adds another task's tally.
    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        for example in other.examples {
            if self.examples.len() < 3 * EXAMPLES {
                self.examples.push(example);
            }
        }
    }
}

/// What one task, or all of them, saw.
#[derive(Debug, Default)]
struct Seen {
    /// Calls made, by operation.
    calls: BTreeMap<Op, u64>,
    /// The slowest call, by operation.
    max_latency: BTreeMap<Op, Duration>,
    /// Calls over their latency bound.
    slow: Tally,
    /// Calls that did not return within [`HANG_LIMIT`].
    hung: Tally,
    /// Reads that returned a value of another cache or key.
    cross_key: Tally,
    /// Reads older than their floor.
    stale: Tally,
    /// Calls that broke the contract otherwise: an `Err` where only `Ok` may come, an
    /// `mget` without an entry per key, a `get_or_load` without a value.
    broken: Tally,
    /// Values read and checked against the oracle.
    reads_checked: u64,
    /// Of those, values found (not `None`).
    reads_found: u64,
    /// Writes that returned `Ok(true)`.
    writes_stored: u64,
}

impl Seen {
    /// Adds another task's findings.
    fn merge(&mut self, other: Seen) {
        for (op, n) in other.calls {
            *self.calls.entry(op).or_default() += n;
        }
        for (op, latency) in other.max_latency {
            let max = self.max_latency.entry(op).or_default();
            *max = (*max).max(latency);
        }
        self.slow.merge(other.slow);
        self.hung.merge(other.hung);
        self.cross_key.merge(other.cross_key);
        self.stale.merge(other.stale);
        self.broken.merge(other.broken);
        self.reads_checked += other.reads_checked;
        self.reads_found += other.reads_found;
        self.writes_stored += other.writes_stored;
    }
}

/// One task's view: its report and the shared context.
struct Worker {
    /// What every task shares.
    ctx: Arc<Ctx>,
    /// What this task saw.
    seen: Seen,
    /// This task's choices.
    rng: Rng,
}

impl Worker {
    /// Runs `call`, timing it against the bound of `op`; `None` when it hung.
    async fn timed<F: Future>(
        &mut self,
        op: Op,
        what: impl Fn() -> String,
        call: F,
    ) -> Option<F::Output> {
        let began = Instant::now();
        let outcome = tokio::time::timeout(HANG_LIMIT, call).await;
        let took = began.elapsed();
        self.record(op, began, took, &what, outcome.is_err());
        outcome.ok()
    }

    /// Counts a call of `op` that began at `began` and took `took` (or `hung`).
    fn record(
        &mut self,
        op: Op,
        began: Instant,
        took: Duration,
        what: &dyn Fn() -> String,
        hung: bool,
    ) {
        *self.seen.calls.entry(op).or_default() += 1;
        let max = self.seen.max_latency.entry(op).or_default();
        *max = (*max).max(took);
        // Described only when kept: this runs for every call.
        let ctx = &self.ctx;
        if hung {
            self.seen.hung.add(|| {
                format!(
                    "{} {} began at {} and had not returned after {HANG_LIMIT:?}",
                    op.name(),
                    what(),
                    ctx.at(began)
                )
            });
        } else if took > ctx.bounds.of(op) {
            self.seen.slow.add(|| {
                format!(
                    "{} {} began at {} and took {took:?} (bound {:?})",
                    op.name(),
                    what(),
                    ctx.at(began),
                    ctx.bounds.of(op)
                )
            });
        }
    }

    /// Checks a value read from `cache` for `key` by a read that began at `began`, when
    /// the key's floor was `floor`.
    fn check(
        &mut self,
        cache: Checked,
        op: Op,
        key: i64,
        floor: Floor,
        began: Instant,
        got: Option<&Stamp>,
    ) {
        self.seen.reads_checked += 1;
        let Some(stamp) = got else {
            return;
        };
        self.seen.reads_found += 1;
        if stamp.cache != cache.tag() || stamp.key != key {
            let at = self.ctx.at(began);
            self.seen.cross_key.add(|| {
                format!(
                    "{} of key {key} in the {} cache, begun at {at}, returned {stamp:?}",
                    op.name(),
                    cache.name()
                )
            });
            return;
        }
        if stamp.version < floor.min {
            let (at, raised) = (
                self.ctx.at(began),
                floor.at.map(|t| self.ctx.at(t)).unwrap_or_default(),
            );
            self.seen.stale.add(|| {
                format!(
                    "{} of key {key} in the {} cache, begun at {at}, returned version {} although {} of version {} had completed at {raised} (floor {})",
                    op.name(),
                    cache.name(),
                    stamp.version,
                    floor.op,
                    floor.version,
                    floor.min
                )
            });
        }
    }

    /// The first-level cache `local_percent` times in a hundred, else the plain one.
    fn pick_cache(&mut self, local_percent: usize) -> Checked {
        if self.rng.below(100) < local_percent {
            Checked::Local
        } else {
            Checked::Plain
        }
    }

    /// Any owner's key.
    fn random_owned_key(&mut self) -> i64 {
        owned_key(self.rng.below(OWNERS), self.rng.below(KEYS_PER_OWNER))
    }

    /// `get` of `key` in `cache`, checked.
    async fn get(&mut self, cache: Checked, key: i64) {
        let floor = self.ctx.floors.read(cache, key);
        let began = Instant::now();
        let manager = Arc::clone(&self.ctx.manager);
        let got = match cache {
            Checked::Plain => {
                self.timed(
                    Op::Get,
                    || format!("plain {key}"),
                    manager.plain().get(&key),
                )
                .await
            }
            Checked::Local => {
                self.timed(
                    Op::Get,
                    || format!("local {key}"),
                    manager.local().get(&key),
                )
                .await
            }
        };
        if let Some(got) = got {
            self.check(cache, Op::Get, key, floor, began, got.as_ref());
        }
    }

    /// `mget` of `count` random owned keys (duplicates allowed) in `cache`, checked.
    async fn mget(&mut self, cache: Checked, count: usize) {
        let keys: Vec<i64> = (0..count).map(|_| self.random_owned_key()).collect();
        let floors: Vec<Floor> = keys
            .iter()
            .map(|k| self.ctx.floors.read(cache, *k))
            .collect();
        let began = Instant::now();
        let manager = Arc::clone(&self.ctx.manager);
        let what = || format!("{} {keys:?}", cache.name());
        let got = match cache {
            Checked::Plain => {
                self.timed(Op::Mget, what, manager.plain().mget(&keys))
                    .await
            }
            Checked::Local => {
                self.timed(Op::Mget, what, manager.local().mget(&keys))
                    .await
            }
        };
        let found = match got {
            None => return,
            Some(Err(error)) => {
                self.seen
                    .broken
                    .add(|| format!("mget {keys:?} returned Err({error:?})"));
                return;
            }
            Some(Ok(found)) => found,
        };
        let distinct: HashSet<i64> = keys.iter().copied().collect();
        if found.len() != distinct.len() || !distinct.iter().all(|k| found.contains_key(k)) {
            let mut answered: Vec<i64> = found.keys().copied().collect();
            answered.sort_unstable();
            self.seen
                .broken
                .add(|| format!("mget {keys:?} answered for {answered:?}"));
        }
        for (key, floor) in keys.iter().zip(floors) {
            if let Some(value) = found.get(key) {
                self.check(cache, Op::Mget, *key, floor, began, value.as_ref());
            }
        }
    }
}

/// An owner: the only writer of its keys in both checked caches, and a reader of
/// everyone's.
async fn owner(ctx: Arc<Ctx>, owner: usize, rng: Rng) -> Seen {
    let mut w = Worker {
        ctx,
        seen: Seen::default(),
        rng,
    };
    // The latest version written (or tried) per slot, per cache.
    let mut plain_versions = [0u64; KEYS_PER_OWNER];
    let mut local_versions = [0u64; KEYS_PER_OWNER];
    let mut round: u64 = 0;
    while !w.ctx.stop.load(Ordering::Relaxed) {
        round += 1;
        let cache = w.pick_cache(50);
        let versions = match cache {
            Checked::Plain => &mut plain_versions,
            Checked::Local => &mut local_versions,
        };
        let dice = w.rng.below(100);
        if dice < 15 {
            // set one own key
            let slot = w.rng.below(KEYS_PER_OWNER);
            let key = owned_key(owner, slot);
            versions[slot] += 1;
            let stamp = Stamp {
                cache: cache.tag(),
                key,
                version: versions[slot],
            };
            let manager = Arc::clone(&w.ctx.manager);
            let what = || format!("{} {key} v{}", cache.name(), stamp.version);
            let stored = match cache {
                Checked::Plain => {
                    w.timed(Op::Set, what, manager.plain().set(&key, &stamp))
                        .await
                }
                Checked::Local => {
                    w.timed(Op::Set, what, manager.local().set(&key, &stamp))
                        .await
                }
            };
            match stored {
                Some(Ok(true)) => {
                    w.seen.writes_stored += 1;
                    w.ctx
                        .floors
                        .raise(cache, key, stamp.version, "set", stamp.version);
                }
                Some(Ok(false)) | None => {}
                Some(Err(error)) => w
                    .seen
                    .broken
                    .add(|| format!("set {key} returned Err({error:?})")),
            }
        } else if dice < 25 {
            // mset 2 to 6 own keys
            let mut slots: Vec<usize> = (0..KEYS_PER_OWNER).collect();
            w.rng.shuffle(&mut slots);
            slots.truncate(2 + w.rng.below(5));
            let entries: HashMap<i64, Stamp> = slots
                .iter()
                .map(|&slot| {
                    versions[slot] += 1;
                    let key = owned_key(owner, slot);
                    (
                        key,
                        Stamp {
                            cache: cache.tag(),
                            key,
                            version: versions[slot],
                        },
                    )
                })
                .collect();
            let manager = Arc::clone(&w.ctx.manager);
            let what = || format!("{} {:?}", cache.name(), entries.keys().collect::<Vec<_>>());
            let stored = match cache {
                Checked::Plain => {
                    w.timed(Op::Mset, what, manager.plain().mset(&entries))
                        .await
                }
                Checked::Local => {
                    w.timed(Op::Mset, what, manager.local().mset(&entries))
                        .await
                }
            };
            match stored {
                Some(Ok(true)) => {
                    w.seen.writes_stored += 1;
                    for (key, stamp) in &entries {
                        w.ctx
                            .floors
                            .raise(cache, *key, stamp.version, "mset", stamp.version);
                    }
                }
                Some(Ok(false)) | None => {}
                Some(Err(error)) => w
                    .seen
                    .broken
                    .add(|| format!("mset returned Err({error:?})")),
            }
        } else if dice < 33 {
            // invalidate one own key
            let slot = w.rng.below(KEYS_PER_OWNER);
            let key = owned_key(owner, slot);
            let latest = versions[slot];
            let manager = Arc::clone(&w.ctx.manager);
            let what = || format!("{} {key}", cache.name());
            let removed = match cache {
                Checked::Plain => {
                    w.timed(Op::Invalidate, what, manager.plain().invalidate(&key))
                        .await
                }
                Checked::Local => {
                    w.timed(Op::Invalidate, what, manager.local().invalidate(&key))
                        .await
                }
            };
            if removed == Some(true) {
                w.ctx
                    .floors
                    .raise(cache, key, latest + 1, "invalidate", latest);
            }
        } else if dice < 75 {
            let key = w.random_owned_key();
            w.get(cache, key).await;
        } else {
            let count = 2 + w.rng.below(11);
            w.mget(cache, count).await;
        }
        pace(round).await;
    }
    w.seen
}

/// A reader of everyone's keys, mostly through the first level, without think time:
/// like a handler looping over cached values. First-level hits, and every call while the
/// breaker is open, complete without waiting; only the library's cooperative budget
/// keeps such a loop from holding its worker, and the probe timer would show it.
async fn reader(ctx: Arc<Ctx>, rng: Rng) -> Seen {
    let mut w = Worker {
        ctx,
        seen: Seen::default(),
        rng,
    };
    while !w.ctx.stop.load(Ordering::Relaxed) {
        let cache = w.pick_cache(80);
        if w.rng.below(100) < 70 {
            let key = w.random_owned_key();
            w.get(cache, key).await;
        } else {
            let count = 2 + w.rng.below(15);
            w.mget(cache, count).await;
        }
    }
    w.seen
}

/// A caller of `get_or_load` on one hot key, beside others on the same key: single
/// flight under faults. The loader sleeps like a database and always finds a value, so
/// every call must return one, of its own key.
async fn hot_caller(ctx: Arc<Ctx>, key: i64, rng: Rng) -> Seen {
    let mut w = Worker {
        ctx,
        seen: Seen::default(),
        rng,
    };
    while !w.ctx.stop.load(Ordering::Relaxed) {
        let own_load = AtomicU64::new(0);
        let ctx = Arc::clone(&w.ctx);
        let loader = || async {
            let started = Instant::now();
            tokio::time::sleep(LOADER_SLEEP).await;
            let version = ctx.loads.fetch_add(1, Ordering::Relaxed) + 1;
            own_load.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            Ok::<_, Infallible>(Some(Stamp {
                cache: HOT_CACHE,
                key,
                version,
            }))
        };
        let began = Instant::now();
        let outcome =
            tokio::time::timeout(HANG_LIMIT, w.ctx.manager.hot().get_or_load(&key, loader)).await;
        // The caller's own loader time is the database's, not the cache's.
        let took = began
            .elapsed()
            .saturating_sub(Duration::from_nanos(own_load.load(Ordering::Relaxed)));
        w.record(
            Op::GetOrLoad,
            began,
            took,
            &|| format!("hot {key}"),
            outcome.is_err(),
        );
        match outcome {
            Err(_) => {}
            Ok(Ok(Some(stamp))) if stamp.cache == HOT_CACHE && stamp.key == key => {}
            Ok(Ok(Some(stamp))) => {
                let at = w.ctx.at(began);
                w.seen.cross_key.add(|| {
                    format!("get_or_load of hot key {key}, begun at {at}, returned {stamp:?}")
                });
            }
            Ok(Ok(None)) => {
                let at = w.ctx.at(began);
                w.seen.broken.add(|| {
                    format!("get_or_load of hot key {key}, begun at {at}, returned None though the loader always finds a value")
                });
            }
        }
        // One call in four pauses a millisecond after: a hot key's traffic, not a spin on
        // its first level (the readers spin).
        if w.rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    w.seen
}

/// Invalidates a hot key every few tens of milliseconds, so `get_or_load` keeps loading.
async fn hot_invalidator(ctx: Arc<Ctx>, key: i64, rng: Rng) -> Seen {
    let mut w = Worker {
        ctx,
        seen: Seen::default(),
        rng,
    };
    while !w.ctx.stop.load(Ordering::Relaxed) {
        let wait = w.rng.millis(20, 60);
        tokio::time::sleep(wait).await;
        let manager = Arc::clone(&w.ctx.manager);
        w.timed(
            Op::Invalidate,
            || format!("hot {key}"),
            manager.hot().invalidate(&key),
        )
        .await;
    }
    w.seen
}

/// Think time of the owners: one round in eight sleeps a millisecond, so while calls
/// complete at once (breaker open) they behave like request handlers; the readers do
/// not pause.
async fn pace(round: u64) {
    if round.is_multiple_of(8) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What the probe timer saw.
#[derive(Debug, Default)]
struct TimerSeen {
    /// How many times it fired.
    fired: u64,
    /// The five latest firings, latest first, with when they were due.
    worst: Vec<(Duration, Instant)>,
    /// Firings more than 20 ms late.
    over_20ms: u64,
}

impl TimerSeen {
    /// Records a firing `late` after it was `due`.
    fn note(&mut self, late: Duration, due: Instant) {
        self.fired += 1;
        self.over_20ms += u64::from(late > Duration::from_millis(20));
        if self.worst.len() < 5 || late > self.worst[4].0 {
            self.worst.push((late, due));
            self.worst.sort_by_key(|w| std::cmp::Reverse(w.0));
            self.worst.truncate(5);
        }
    }

    /// The worst lateness.
    fn max(&self) -> Duration {
        self.worst.first().map_or(Duration::ZERO, |w| w.0)
    }
}

/// The probe timer: sleeps [`TIMER_PERIOD`] in a loop on the library's runtime and
/// records how late it fires.
async fn probe_timer(ctx: Arc<Ctx>) -> TimerSeen {
    let mut seen = TimerSeen::default();
    while !ctx.stop.load(Ordering::Relaxed) {
        let started = tokio::time::Instant::now();
        tokio::time::sleep(TIMER_PERIOD).await;
        seen.note(
            started.elapsed().saturating_sub(TIMER_PERIOD),
            started.into_std() + TIMER_PERIOD,
        );
    }
    seen
}

/// The control of the probe timer: the same loop on a plain std thread, off the runtime.
/// Its lateness is the machine's (other processes, redis-server, the kernel), which the
/// runtime's timer suffers too; what the runtime's timer shows beyond it is the runtime's.
fn control_timer(ctx: Arc<Ctx>) -> TimerSeen {
    let mut seen = TimerSeen::default();
    while !ctx.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        std::thread::sleep(TIMER_PERIOD);
        seen.note(
            started.elapsed().saturating_sub(TIMER_PERIOD),
            started + TIMER_PERIOD,
        );
    }
    seen
}

/// The recovery probe: for each request, writes and reads the probe keys through the
/// manager every 10 ms until all work, or `limit` after the fault ended.
async fn recovery_prober(
    ctx: Arc<Ctx>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ProbeRequest>,
    keys: Vec<i64>,
    limit: Duration,
) {
    let mut version = 0;
    while let Some(request) = requests.recv().await {
        let deadline = request.since + limit;
        let outcome = loop {
            version += 1;
            let mut failed = None;
            for &key in &keys {
                let stamp = Stamp {
                    cache: PROBE_CACHE,
                    key,
                    version,
                };
                let probe = ctx.manager.probe();
                let stored = tokio::time::timeout(HANG_LIMIT, probe.set(&key, &stamp)).await;
                let read = match stored {
                    Ok(Ok(true)) => tokio::time::timeout(HANG_LIMIT, probe.get(&key)).await,
                    other => {
                        failed = Some(format!("set of probe key {key}: {other:?}"));
                        break;
                    }
                };
                if read.as_ref().ok().and_then(Option::as_ref) != Some(&stamp) {
                    failed = Some(format!("get of probe key {key}: {read:?}"));
                    break;
                }
            }
            match failed {
                None => break Ok(request.since.elapsed()),
                Some(why) if Instant::now() >= deadline => {
                    break Err(format!(
                        "not recovered {limit:?} after the fault ended; last try: {why}"
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let _ = request.reply.send(outcome);
    }
}

/// Whether the first level serves values again: a key written through the manager is
/// read twice, and the second read reaches no Redis node (their read counters do not
/// move), so it came from the level. Tried until `limit`. (A copy deleted behind the
/// manager's back is no proof any more: Redis tells the level, which drops it.)
async fn first_level_serves<I: Injector>(
    ctx: &Ctx,
    injector: &mut I,
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let local = ctx.manager.local();
    let mut version = 0;
    let mut stored = None;
    loop {
        if stored.is_none() {
            version += 1;
            let stamp = Stamp {
                cache: LOCAL_CACHE,
                key: LEVEL_CHECK_KEY,
                version,
            };
            let written =
                tokio::time::timeout(HANG_LIMIT, local.set(&LEVEL_CHECK_KEY, &stamp)).await;
            if matches!(written, Ok(Ok(true))) {
                stored = Some(stamp);
            }
        }
        let read = tokio::time::timeout(HANG_LIMIT, local.get(&LEVEL_CHECK_KEY)).await;
        if let Some(stamp) = &stored {
            if read.as_ref().ok().and_then(Option::as_ref) == Some(stamp) {
                // Blocking calls on a worker, with the load stopped: the counters.
                let before = injector.reads();
                let again = tokio::time::timeout(HANG_LIMIT, local.get(&LEVEL_CHECK_KEY)).await;
                let after = injector.reads();
                if again.as_ref().ok().and_then(Option::as_ref) == Some(stamp) && after == before {
                    return Ok(started.elapsed());
                }
            } else {
                // Absent (expired, flushed) or unreadable: write it again.
                stored = None;
            }
        }
        if started.elapsed() >= limit {
            return Err(format!(
                "the first level served nothing {limit:?} after the load stopped (last read {read:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of this process, from `/proc/self/statm` (resident pages times the
/// page size).
fn rss_bytes(page_size: u64) -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field: resident pages");
    pages * page_size
}

/// The page size from `getconf PAGESIZE`; 4096 (x86-64 and most aarch64 kernels) when
/// `getconf` is missing.
fn page_size() -> u64 {
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(4096)
}

// ---------------------------------------------------------------------------------------
// Running a soak
// ---------------------------------------------------------------------------------------

/// What the soak thread reports to the watchdog.
struct Outcome {
    /// The soak's name.
    name: &'static str,
    /// Its seed.
    seed: u64,
    /// When the load began.
    t0: Instant,
    /// When the last check ended.
    finished: Instant,
    /// What the tasks saw.
    seen: Seen,
    /// Each fault as it happened.
    faults: Vec<FaultRecord>,
    /// Failures found outside the tasks: injector, joins, probes.
    problems: Vec<String>,
    /// `manager.stats()` per cache: field, degraded calls, timeouts among them.
    degraded: Vec<(String, u64, u64)>,
    /// The probe timer on the runtime.
    timer: TimerSeen,
    /// The control timer on a std thread.
    control: TimerSeen,
    /// Loader runs of `get_or_load`.
    loads: u64,
    /// Resident memory at the end of the warm-up.
    rss_warm: u64,
    /// Resident memory once the tasks were joined.
    rss_after: u64,
    /// Whether, and how soon, the first level served again after the run.
    level_back: Result<Duration, String>,
    /// The least number of faults per kind.
    min_per_kind: usize,
    /// The recovery bound.
    recovery_limit: Duration,
}

/// Runs `soak` and asserts everything the module's documentation lists; prints the
/// summary first, so a failing soak still shows its figures.
pub fn run<I: Injector>(mut soak: Soak<I>) {
    count_logs();
    let planned: Duration = soak.warmup
        + soak.tail
        + soak
            .schedule
            .iter()
            .map(|p| p.gap + p.hold + soak.recovery_limit)
            .sum::<Duration>();
    // Generous: the schedule with every recovery at its limit, plus a minute for
    // start-up, joins and a slow machine.
    let watchdog = planned + Duration::from_secs(60);
    println!(
        "chaos soak `{}`: seed {} (CHAOS_SEED={} replays this schedule), {} faults, at most {:.0} s planned, watchdog {:.0} s",
        soak.name,
        soak.seed,
        soak.seed,
        soak.schedule.len(),
        planned.as_secs_f64(),
        watchdog.as_secs_f64()
    );
    let watch = Arc::new(Watch::default());
    watch.set_pids(soak.injector.pids());
    watch.set_step("starting");
    let (report, reported) = mpsc::channel();
    let thread_watch = Arc::clone(&watch);
    std::thread::Builder::new()
        .name("chaos-soak".to_owned())
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("build the soak's runtime");
                runtime.block_on(drive(soak, thread_watch))
            }));
            let _ = report.send(outcome.map_err(|p| panic_text(&*p)));
        })
        .expect("spawn the soak thread");
    let outcome = match reported.recv_timeout(watchdog) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => panic!("the soak thread panicked: {panic}"),
        Err(_) => {
            watch.abort.store(true, Ordering::SeqCst);
            let pids = watch.pids();
            // The hung thread never drops the harness's servers: kill them by pid.
            for pid in &pids {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            // One lock at a time: a second `log_book()` in the same statement would wait
            // for the first guard, forever.
            let (warn, error) = {
                let book = log_book();
                (book.warn, book.error)
            };
            panic!(
                "the chaos soak did not finish within {watchdog:?} (planned at most {planned:?}): \
                 something hangs (a call, a join, the runtime); it was {}. redis-server pids \
                 {pids:?} killed. Log lines so far: {warn} WARN, {error} ERROR",
                watch.step()
            );
        }
    };
    let failures = summarize(&outcome);
    assert!(
        failures.is_empty(),
        "the chaos soak `{}` (seed {}) failed {} check(s):\n- {}",
        outcome.name,
        outcome.seed,
        failures.len(),
        failures.join("\n- ")
    );
}

/// The soak itself, on the library's runtime.
async fn drive<I: Injector>(soak: Soak<I>, watch: Arc<Watch>) -> Outcome {
    // Stops the injector should this future panic or return early.
    struct AbortOnDrop(Arc<Watch>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort.store(true, Ordering::SeqCst);
        }
    }
    let _abort_guard = AbortOnDrop(Arc::clone(&watch));
    let (name, seed, min_per_kind) = (soak.name, soak.seed, soak.min_per_kind);
    let page = page_size();
    let mut problems = Vec::new();
    let manager = Arc::new(ChaosManager::new());
    manager
        .connect(&soak.url)
        .await
        .expect("a well-formed URL connects");
    let t0 = Instant::now();
    let ctx = Arc::new(Ctx {
        manager: Arc::clone(&manager),
        floors: Floors::new(),
        stop: AtomicBool::new(false),
        bounds: Bounds::new(),
        t0,
        loads: AtomicU64::new(0),
    });

    let timer = tokio::spawn(probe_timer(Arc::clone(&ctx)));
    let control = {
        let ctx = Arc::clone(&ctx);
        std::thread::Builder::new()
            .name("chaos-control-timer".to_owned())
            .spawn(move || control_timer(ctx))
            .expect("spawn the control timer")
    };
    let (probe_tx, probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let prober = tokio::spawn(recovery_prober(
        Arc::clone(&ctx),
        probe_rx,
        soak.probe_keys.clone(),
        soak.recovery_limit,
    ));
    // Before any load: the caches work (the same probe as after each fault).
    watch.set_step("probing the caches before any load");
    let (reply, answer) = mpsc::channel();
    let _ = probe_tx.send(ProbeRequest {
        since: Instant::now(),
        reply,
    });
    let first = tokio::task::spawn_blocking(move || answer.recv_timeout(Duration::from_secs(15)))
        .await
        .expect("the waiting thread does not panic");
    if !matches!(first, Ok(Ok(_))) {
        problems.push(format!(
            "the caches did not work before any fault: {first:?}"
        ));
    }

    let mut tasks = Vec::new();
    let mut stream = 0;
    let mut rng = || {
        stream += 1;
        Rng::new(soak.seed, stream)
    };
    for o in 0..OWNERS {
        tasks.push((
            format!("owner {o}"),
            tokio::spawn(owner(Arc::clone(&ctx), o, rng())),
        ));
    }
    for r in 0..READERS {
        tasks.push((
            format!("reader {r}"),
            tokio::spawn(reader(Arc::clone(&ctx), rng())),
        ));
    }
    for h in 0..HOT_CALLERS {
        let key = (h % HOT_KEYS) as i64;
        tasks.push((
            format!("hot caller {h}"),
            tokio::spawn(hot_caller(Arc::clone(&ctx), key, rng())),
        ));
    }
    for key in 0..HOT_KEYS as i64 {
        tasks.push((
            format!("hot invalidator {key}"),
            tokio::spawn(hot_invalidator(Arc::clone(&ctx), key, rng())),
        ));
    }
    assert_eq!(tasks.len(), TASKS);

    watch.set_step("warming up");
    tokio::time::sleep(soak.warmup).await;
    let rss_warm = rss_bytes(page);

    let Soak {
        schedule,
        injector,
        tail,
        recovery_limit,
        ..
    } = soak;
    let injector_budget = tail
        + schedule
            .iter()
            .map(|p| p.gap + p.hold + recovery_limit + Duration::from_secs(10))
            .sum::<Duration>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_watch = Arc::clone(&watch);
    std::thread::Builder::new()
        .name("chaos-injector".to_owned())
        .spawn(move || {
            let injected = inject(
                injector,
                schedule,
                probe_tx,
                thread_watch,
                recovery_limit,
                tail,
            );
            let _ = done_tx.send(injected);
        })
        .expect("spawn the injector thread");
    let injected = match tokio::time::timeout(injector_budget, done_rx).await {
        Ok(Ok(injected)) => injected,
        Ok(Err(_)) => panic!("the injector thread died without a report"),
        Err(_) => panic!("the injector did not finish within {injector_budget:?}"),
    };
    let Injected {
        mut injector,
        faults,
        problems: injector_problems,
    } = injected;
    problems.extend(injector_problems);

    watch.set_step("stopping and joining the tasks");
    ctx.stop.store(true, Ordering::SeqCst);
    let mut seen = Seen::default();
    for (name, task) in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Err(_) => problems.push(format!("{name} did not stop within 10 s of being told to")),
            Ok(Err(join)) => problems.push(format!("{name} failed: {join}")),
            Ok(Ok(task_seen)) => seen.merge(task_seen),
        }
    }
    let timer = match tokio::time::timeout(Duration::from_secs(5), timer).await {
        Ok(Ok(timer)) => timer,
        other => {
            problems.push(format!("the probe timer task: {other:?}"));
            TimerSeen::default()
        }
    };
    // It stopped with the tasks: within one period.
    let control = control.join().unwrap_or_else(|panic| {
        problems.push(format!(
            "the control timer panicked: {}",
            panic_text(&*panic)
        ));
        TimerSeen::default()
    });
    let rss_after = rss_bytes(page);
    // The probe task ends when the injector's sender is dropped, which it was.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), prober).await {
        problems.push(format!("the recovery probe task did not end: {e}"));
    }
    watch.set_step("checking that the first level serves again");
    let level_back = first_level_serves(&ctx, &mut injector, recovery_limit).await;
    let degraded = manager
        .stats()
        .iter()
        .map(|s| (s.field.to_owned(), s.degraded, s.timeouts))
        .collect();
    let finished = Instant::now();
    Outcome {
        name,
        seed,
        t0,
        finished,
        seen,
        faults,
        problems,
        degraded,
        timer,
        control,
        loads: ctx.loads.load(Ordering::Relaxed),
        rss_warm,
        rss_after,
        level_back,
        min_per_kind,
        recovery_limit,
    }
}

/// `12.3 ms`.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `12.3 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Prints the soak's figures as markdown tables and returns the checks that failed.
fn summarize(o: &Outcome) -> Vec<String> {
    let mut failures: Vec<String> = o.problems.clone();
    let seen = &o.seen;
    let book = log_book();
    let bounds = Bounds::new();

    // Faults, by kind in order of first appearance.
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for fault in &o.faults {
        match kinds.iter_mut().find(|(k, _)| *k == fault.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((fault.kind.clone(), 1)),
        }
    }
    for (kind, n) in &kinds {
        if *n < o.min_per_kind {
            failures.push(format!(
                "only {n} fault(s) of kind `{kind}`, at least {} wanted",
                o.min_per_kind
            ));
        }
    }

    // Log lines per fault: those logged from its start to the next one's.
    let starts: Vec<Instant> = o.faults.iter().map(|f| f.began).collect();
    let lines_in = |from: Instant, to: Option<Instant>| {
        book.lines
            .iter()
            .filter(|l| l.at >= from && to.is_none_or(|to| l.at < to))
            .count()
    };
    let before_faults = starts.first().map_or(book.lines.len(), |first| {
        book.lines.iter().filter(|l| l.at < *first).count()
    });

    println!();
    println!("#### Faults of the `{}` soak (seed {})", o.name, o.seed);
    println!();
    println!(
        "| # | fault | at | held | recovered after | WARN+ERROR lines until the next fault | details |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | --- |");
    let mut recoveries = Vec::new();
    for (i, fault) in o.faults.iter().enumerate() {
        let recovery = match &fault.recovery {
            Ok(took) => {
                recoveries.push(*took);
                if *took > o.recovery_limit {
                    failures.push(format!(
                        "{} (fault {}) recovered after {took:?}, over {:?}",
                        fault.kind,
                        i + 1,
                        o.recovery_limit
                    ));
                }
                ms(*took)
            }
            Err(why) => {
                failures.push(format!("{} (fault {}): {why}", fault.kind, i + 1));
                "**no**".to_owned()
            }
        };
        let lines = lines_in(fault.began, starts.get(i + 1).copied()) as u64;
        if lines > LOG_LINES_PER_FAULT {
            failures.push(format!(
                "{lines} WARN+ERROR lines from the start of {} (fault {}) to the next fault (bound {LOG_LINES_PER_FAULT})",
                fault.kind,
                i + 1
            ));
        }
        println!(
            "| {} | {} | +{:.1} s | {} | {} | {lines} | {} |",
            i + 1,
            fault.kind,
            fault.began.saturating_duration_since(o.t0).as_secs_f64(),
            ms(fault.held),
            recovery,
            fault.details
        );
    }

    if book.lines.len() == KEPT_LINES {
        println!();
        println!(
            "(lines per fault counted among the first {KEPT_LINES} kept; the totals below count all)"
        );
    }

    let total_calls: u64 = seen.calls.values().sum();
    let calls = Op::ALL
        .iter()
        .map(|op| format!("{} {}", op.name(), seen.calls.get(op).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    let latencies = Op::ALL
        .iter()
        .map(|op| {
            format!(
                "{} {}",
                op.name(),
                ms(seen.max_latency.get(op).copied().unwrap_or_default())
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let total_degraded: u64 = o.degraded.iter().map(|(_, d, _)| d).sum();
    let degraded = o
        .degraded
        .iter()
        .map(|(field, d, t)| format!("{field} {d} ({t} timeouts)"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sorted = recoveries.clone();
    sorted.sort();
    let recovery = match (sorted.first(), sorted.last()) {
        (Some(min), Some(max)) => format!(
            "min {}, median {}, max {} (bound {:?})",
            ms(*min),
            ms(sorted[sorted.len() / 2]),
            ms(*max),
            o.recovery_limit
        ),
        _ => "none measured".to_owned(),
    };
    let growth = o.rss_after.saturating_sub(o.rss_warm);
    let lateness_bound = MAX_LATENESS + o.control.max();
    let log_lines = book.warn + book.error;
    let log_bound = LOG_LINES_PER_FAULT * o.faults.len() as u64 + LOG_LINES_CONSTANT;
    let faults = kinds
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");

    println!();
    println!("#### Summary of the `{}` soak (seed {})", o.name, o.seed);
    println!();
    println!("| what | figure |");
    println!("| --- | --- |");
    println!(
        "| duration | {:.1} s of load on 32 tasks, 2 workers |",
        o.finished.saturating_duration_since(o.t0).as_secs_f64()
    );
    println!("| faults injected | {} in all: {faults} |", o.faults.len());
    println!("| calls | {total_calls}: {calls} |");
    println!("| degraded calls (`manager.stats()`) | {total_degraded}: {degraded} |");
    println!(
        "| max call latency | {latencies} (bounds: {} per call, {} for get_or_load without its own loader) |",
        ms(bounds.call),
        ms(bounds.get_or_load)
    );
    println!(
        "| max timer lateness | {} over {} firings of a {} timer, {} over 20 ms (bound {} + the control's worst = {}); worst at {} |",
        ms(o.timer.max()),
        o.timer.fired,
        ms(TIMER_PERIOD),
        o.timer.over_20ms,
        ms(MAX_LATENESS),
        ms(lateness_bound),
        o.timer
            .worst
            .iter()
            .map(|(late, at)| format!(
                "+{:.2}s ({})",
                at.saturating_duration_since(o.t0).as_secs_f64(),
                ms(*late)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| control: the same timer on a std thread | {} max, {} over 20 ms; worst at {} |",
        ms(o.control.max()),
        o.control.over_20ms,
        o.control
            .worst
            .iter()
            .map(|(late, at)| format!(
                "+{:.2}s ({})",
                at.saturating_duration_since(o.t0).as_secs_f64(),
                ms(*late)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| recovery after a fault | {recovery} |");
    println!(
        "| resident memory | after warm-up {}, after the run {}, growth {} (bound {}) |",
        mib(o.rss_warm),
        mib(o.rss_after),
        mib(growth),
        mib(RSS_GROWTH_LIMIT)
    );
    println!(
        "| log lines | {log_lines} WARN+ERROR ({} WARN, {} ERROR; {before_faults} before the first fault; bound {LOG_LINES_PER_FAULT} per fault + {LOG_LINES_CONSTANT} = {log_bound}), {} INFO |",
        book.warn, book.error, book.info
    );
    println!(
        "| reads checked by the oracle | {} ({} found a value): {} cross-key, {} stale |",
        seen.reads_checked, seen.reads_found, seen.cross_key.count, seen.stale.count
    );
    println!(
        "| writes stored | {} `set`/`mset` calls returned `Ok(true)` |",
        seen.writes_stored
    );
    println!(
        "| get_or_load | {} calls, {} loader runs (single flight over {} callers of {} hot keys) |",
        seen.calls.get(&Op::GetOrLoad).copied().unwrap_or(0),
        o.loads,
        HOT_CALLERS,
        HOT_KEYS
    );
    println!(
        "| first level serving again after the run | {} |",
        match &o.level_back {
            Ok(took) => format!("yes, after {}", ms(*took)),
            Err(why) => format!("**no**: {why}"),
        }
    );
    println!();
    if !book.lines.is_empty() {
        println!("WARN and ERROR lines (time from the start of the load):");
        for line in book.lines.iter().take(80) {
            println!(
                "  +{:.3}s {} {}",
                line.at.saturating_duration_since(o.t0).as_secs_f64(),
                line.level,
                line.text
            );
        }
        if book.lines.len() > 80 {
            println!("  ... {} more", book.lines.len() - 80);
        }
        println!();
    }

    let mut tally = |what: &str, tally: &Tally| {
        if tally.count > 0 {
            failures.push(format!(
                "{} {what}; first ones:\n    {}",
                tally.count,
                tally.examples.join("\n    ")
            ));
        }
    };
    tally(
        "reads returned a value of another cache or key",
        &seen.cross_key,
    );
    tally(
        "reads returned a value older than a write or invalidation that completed before they began",
        &seen.stale,
    );
    tally("calls broke their contract", &seen.broken);
    tally("calls took longer than their bound", &seen.slow);
    tally("calls hung", &seen.hung);
    if o.timer.max() > lateness_bound || o.timer.fired == 0 {
        failures.push(format!(
            "the probe timer fired {} late (bound {} + the control's {}): the runtime was starved",
            ms(o.timer.max()),
            ms(MAX_LATENESS),
            ms(o.control.max())
        ));
    }
    if growth > RSS_GROWTH_LIMIT {
        failures.push(format!(
            "resident memory grew by {} from the warm-up to the end (bound {})",
            mib(growth),
            mib(RSS_GROWTH_LIMIT)
        ));
    }
    if log_lines > log_bound {
        failures.push(format!(
            "{log_lines} WARN+ERROR lines for {} faults (bound {log_bound})",
            o.faults.len()
        ));
    }
    if let Err(why) = &o.level_back {
        failures.push(why.clone());
    }
    if total_degraded == 0 {
        failures.push(
            "no call degraded: the faults went unnoticed, so the soak proved nothing".to_owned(),
        );
    }
    if seen.writes_stored == 0 || seen.reads_found == 0 {
        failures.push("no write was stored or no value read: the soak proved nothing".to_owned());
    }
    failures
}

//! A loop of cache calls never starves the runtime it runs on.
//!
//! A call that completes without waiting (the breaker is open, the manager is not
//! connected, `memory://`) must still take part in tokio's cooperative budget, or a task
//! looping on such calls keeps its worker forever: timers on that worker stop firing and
//! the other tasks stop running. Each test runs tasks looping on `set` + `get` beside a
//! probe timer due in 50 ms, on its own runtime, and measures how late the timer fired.
//!
//! The runtime runs on a thread of its own; the test's thread is the watchdog. The loops
//! stop by themselves after a few seconds of wall time, so a starved runtime finishes
//! eventually, but the watchdog fails the test first with a message that says what
//! happened, instead of waiting for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cache_manager::{Breaker, Cache, cache_registry};
use cache_tests::RedisServer;

/// A plain cache: every call goes to the backend.
#[derive(Cache)]
#[cache(namespace = "starve:item", ttl = 600, key = i64, value = String)]
pub struct ItemCache;

/// A cache with a first level, whose hits also complete without waiting.
#[derive(Cache)]
#[cache(namespace = "starve:local", ttl = 600, key = i64, value = String, local = 1000)]
pub struct LocalCache;

cache_registry! {
    /// The caches the loops call.
    pub struct LoopManager {
        items: ItemCache,
        local: LocalCache,
    }
}

/// When the probe timer is due.
const TIMER: Duration = Duration::from_millis(50);
/// How late the probe timer may fire: tens of milliseconds of scheduling noise on a shared
/// 2-core VM, far below the seconds a starved runtime takes.
const MAX_LATENESS: Duration = Duration::from_millis(100);
/// The loops stop by themselves after this much wall time.
const LOOP_LIMIT: Duration = Duration::from_secs(4);
/// How long the watchdog waits for the runtime to report.
const WATCHDOG: Duration = Duration::from_secs(3);

/// One starvation scenario at a time: three busy runtimes at once on two cores would
/// measure the machine's scheduler, not the library.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a loop runs until told to stop.
#[derive(Clone, Copy)]
enum Calls {
    /// `set` then `get` of the plain cache.
    SetGet,
    /// `get` of a key held by the first level, then `set` + `get` of the plain cache.
    LocalHitSetGet,
}

/// Runs `tasks` loops of `calls` on `manager` beside a probe timer, on `runtime`, and
/// returns how late the timer fired. Fails the test, without waiting for the runtime,
/// when it does not report within the watchdog's limit.
fn timer_lateness_beside_loops(
    scenario: &str,
    runtime: tokio::runtime::Runtime,
    manager: Arc<LoopManager>,
    tasks: usize,
    calls: Calls,
) -> Duration {
    let (report, reported) = mpsc::channel();
    let calls_made = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls_made);
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let give_up = Instant::now() + LOOP_LIMIT;
            let loops: Vec<_> = (0..tasks as i64)
                .map(|task| {
                    let (manager, stop, counter) = (
                        Arc::clone(&manager),
                        Arc::clone(&stop),
                        Arc::clone(&counter),
                    );
                    tokio::spawn(async move {
                        let value = format!("value-{task}");
                        while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                            if let Calls::LocalHitSetGet = calls {
                                let _ = manager.local().get(&0).await;
                            }
                            let _ = manager.items().set(&task, &value).await;
                            let _ = manager.items().get(&task).await;
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            // The probe runs as a task too, so on a multi-thread runtime it needs a worker.
            let probe = tokio::spawn(async {
                let started = tokio::time::Instant::now();
                tokio::time::sleep(TIMER).await;
                started.elapsed().saturating_sub(TIMER)
            });
            let lateness = probe.await.expect("the probe task panicked");
            let _ = report.send(lateness);
            stop.store(true, Ordering::Relaxed);
            for task in loops {
                task.await.expect("a loop task panicked");
            }
        });
    });
    let lateness = reported.recv_timeout(WATCHDOG).unwrap_or_else(|_| {
        panic!(
            "{scenario}: a timer due in {TIMER:?} had not fired after {WATCHDOG:?} while {tasks} tasks \
             looped on cache calls ({} calls so far): the calls never yield to the runtime, \
             so the loops starve every other task and timer",
            calls_made.load(Ordering::Relaxed)
        )
    });
    println!(
        "{scenario}: probe timer fired {:.1} ms late beside {tasks} looping tasks",
        lateness.as_secs_f64() * 1000.0
    );
    lateness
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a runtime")
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime")
}

#[test]
fn calls_with_the_breaker_open_do_not_starve_a_two_worker_runtime() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut server = RedisServer::new();
    let runtime = multi_thread();
    let manager = Arc::new(LoopManager::new());
    runtime.block_on(async {
        let url = format!("{}?backoff_min_ms=1000&backoff_max_ms=1000", server.url());
        manager.connect(&url).await.expect("connect");
        assert!(manager.items().set(&1, &"one".to_owned()).await.unwrap());
    });
    server.kill();
    runtime.block_on(async {
        // The first call after the kill meets the dropped socket and opens the breaker.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while manager.health().await.breaker != Breaker::Open {
            let _ = manager.items().get(&1).await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "the breaker did not open after the server was killed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let lateness = timer_lateness_beside_loops(
        "redis killed, breaker open, 2 workers",
        runtime,
        Arc::clone(&manager),
        16,
        Calls::SetGet,
    );
    assert!(
        lateness < MAX_LATENESS,
        "the probe timer fired {lateness:?} late (allowed: {MAX_LATENESS:?})"
    );
}

#[test]
fn memory_calls_do_not_starve_a_current_thread_runtime() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = current_thread();
    let manager = Arc::new(LoopManager::new());
    runtime.block_on(async {
        manager.connect("memory://").await.expect("connect");
        assert!(manager.local().set(&0, &"zero".to_owned()).await.unwrap());
        assert_eq!(manager.local().get(&0).await.as_deref(), Some("zero"));
    });
    let lateness = timer_lateness_beside_loops(
        "memory://, current thread",
        runtime,
        manager,
        4,
        Calls::LocalHitSetGet,
    );
    assert!(
        lateness < MAX_LATENESS,
        "the probe timer fired {lateness:?} late (allowed: {MAX_LATENESS:?})"
    );
}

#[test]
fn calls_before_connect_do_not_starve_a_current_thread_runtime() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let lateness = timer_lateness_beside_loops(
        "never connected, current thread",
        current_thread(),
        Arc::new(LoopManager::new()),
        4,
        Calls::SetGet,
    );
    assert!(
        lateness < MAX_LATENESS,
        "the probe timer fired {lateness:?} late (allowed: {MAX_LATENESS:?})"
    );
}

#[test]
fn calls_before_connect_do_not_starve_a_two_worker_runtime() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let lateness = timer_lateness_beside_loops(
        "never connected, 2 workers",
        multi_thread(),
        Arc::new(LoopManager::new()),
        16,
        Calls::SetGet,
    );
    assert!(
        lateness < MAX_LATENESS,
        "the probe timer fired {lateness:?} late (allowed: {MAX_LATENESS:?})"
    );
}

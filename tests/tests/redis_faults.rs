//! Faults injected into a real `redis-server` while the caches are in use: kill -9 under
//! load, SIGSTOP, `CLIENT KILL`, a password set under the library's feet, `maxmemory`
//! refusals, `disconnect` during calls. Whatever Redis does, no call panics, hangs or
//! returns a connection error, no read returns another key's value, the logs stay short
//! and secret-free, and the caches recover without a new `connect`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cache_manager::{Breaker, Cache, CacheConfig, CacheError, HealthStatus, cache_registry};
use cache_tests::{LogCapture, RedisServer, wire};
use redis::aio::MultiplexedConnection;

/// Items whose value spells out their key, so a read that returns another key's value
/// is caught.
#[derive(Cache)]
#[cache(namespace = "fault:item", ttl = 600, key = i64, value = String)]
pub struct ItemCache;

/// The same idea through the string codec and string keys.
#[derive(Cache)]
#[cache(namespace = "fault:label", ttl = 600, key = String, value = String, codec = "string")]
pub struct LabelCache;

cache_registry! {
    /// The caches the faults are injected under.
    pub struct FaultManager {
        items: ItemCache,
        labels: LabelCache,
    }
}

const PASSWORD: &str = "Fau1t-Inj3ction-pw";

/// The only value ever stored under item `key`.
fn item_value(key: i64) -> String {
    format!("value-of-{key}")
}

/// The only value ever stored under label `key`.
fn label_value(key: &str) -> String {
    format!("label-of-{key}")
}

/// Runs one call, failing the test if it takes a second or more: a call against a dead,
/// frozen or refusing server answers within its deadline or at once, never hangs.
async fn quick<F: Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than 1 s"))
}

/// Polls `check` until it holds, for at most 10 s: the stated recovery bound.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 10 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a write and a read of `key` go through Redis again.
async fn works(manager: &FaultManager, key: i64) -> bool {
    let stored = quick("set", manager.items().set(&key, &item_value(key)))
        .await
        .expect("a set never returns a connection error");
    stored && quick("get", manager.items().get(&key)).await == Some(item_value(key))
}

/// A config that reconnects quickly, so recovery in these tests takes milliseconds.
fn fast_recovery() -> CacheConfig {
    CacheConfig::new()
        .with_connect_timeout(Duration::from_millis(300))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// `CLIENT ID` of a raw connection.
async fn client_id(raw: &MultiplexedConnection) -> u64 {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut raw.clone())
        .await
        .expect("CLIENT ID")
}

/// Kills every client connection except `raw`'s own: the library's connection. Returns
/// how many were killed.
async fn kill_other_clients(raw: &MultiplexedConnection) -> usize {
    let own = client_id(raw).await;
    let others: Vec<u64> = wire::clients(raw)
        .await
        .iter()
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != own)
        .collect();
    for id in &others {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(*id)
            .query_async(&mut raw.clone())
            .await
            .expect("CLIENT KILL ID");
    }
    others.len()
}

/// The numbers after each `field=` in `lines`.
fn field_values(lines: &[String], field: &str) -> Vec<u64> {
    let marker = format!("{field}=");
    lines
        .iter()
        .filter_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Load while the server dies
// ---------------------------------------------------------------------------------------

/// What one load task saw.
#[derive(Default)]
struct LoadReport {
    /// Contract violations: errors, wrong values, hangs.
    problems: Vec<String>,
    /// Writes stored after the main task said the server was back.
    stored_after_recovery: u64,
    /// Writes stored that started after `disconnect` returned.
    stored_after_disconnect: u64,
    /// Writes that started after `disconnect` returned, stored or not.
    sets_after_disconnect: u64,
}

/// Shared switches between the main task and the load tasks.
#[derive(Default)]
struct Phase {
    stop: AtomicBool,
    recovered: AtomicBool,
    disconnected: AtomicBool,
}

/// At most this many rounds per load task, whatever the timing: the loop is bounded.
const MAX_ROUNDS: u64 = 5_000;

/// One task's load: set, get and mget on its own keys, plus a label, in a bounded loop,
/// recording every departure from the contract instead of panicking mid-way.
async fn load(manager: Arc<FaultManager>, task: i64, phase: Arc<Phase>) -> LoadReport {
    let mut report = LoadReport::default();
    let deadline = Duration::from_secs(1);
    for round in 0..MAX_ROUNDS {
        if phase.stop.load(Ordering::SeqCst) {
            break;
        }
        let recovered = phase.recovered.load(Ordering::SeqCst);
        let disconnected = phase.disconnected.load(Ordering::SeqCst);
        let base = task * 1_000_000 + (round % 20) as i64 * 3;
        let keys = [base, base + 1, base + 2];

        match tokio::time::timeout(deadline, manager.items().set(&base, &item_value(base))).await {
            Err(_) => report.problems.push(format!("set {base} hung")),
            Ok(Err(e)) => report.problems.push(format!("set {base}: Err({e:?})")),
            Ok(Ok(stored)) => {
                report.stored_after_recovery += u64::from(stored && recovered);
                report.stored_after_disconnect += u64::from(stored && disconnected);
                report.sets_after_disconnect += u64::from(disconnected);
            }
        }
        match tokio::time::timeout(deadline, manager.items().get(&base)).await {
            Err(_) => report.problems.push(format!("get {base} hung")),
            Ok(Some(v)) if v != item_value(base) => {
                report.problems.push(format!("get {base} returned {v:?}"));
            }
            Ok(_) => {}
        }
        match tokio::time::timeout(deadline, manager.items().mget(&keys)).await {
            Err(_) => report.problems.push(format!("mget {keys:?} hung")),
            Ok(Err(e)) => report.problems.push(format!("mget {keys:?}: Err({e:?})")),
            Ok(Ok(found)) => {
                let mut got: Vec<i64> = found.keys().copied().collect();
                got.sort_unstable();
                if got != keys {
                    report
                        .problems
                        .push(format!("mget {keys:?} answered {got:?}"));
                }
                for (k, v) in found {
                    if v.as_ref().is_some_and(|v| *v != item_value(k)) {
                        report.problems.push(format!("mget key {k} returned {v:?}"));
                    }
                }
            }
        }
        let label = format!("t{task}-{}", round % 7);
        match tokio::time::timeout(deadline, manager.labels().set(&label, &label_value(&label)))
            .await
        {
            Err(_) => report.problems.push(format!("set label {label} hung")),
            Ok(Err(e)) => report
                .problems
                .push(format!("set label {label}: Err({e:?})")),
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout(deadline, manager.labels().get(&label)).await {
            Err(_) => report.problems.push(format!("get label {label} hung")),
            Ok(Some(v)) if v != label_value(&label) => {
                report
                    .problems
                    .push(format!("get label {label} returned {v:?}"));
            }
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report
}

/// Spawns `n` load tasks on `manager`.
fn spawn_load(
    manager: &Arc<FaultManager>,
    phase: &Arc<Phase>,
    n: i64,
) -> Vec<tokio::task::JoinHandle<LoadReport>> {
    (0..n)
        .map(|task| tokio::spawn(load(Arc::clone(manager), task, Arc::clone(phase))))
        .collect()
}

/// Stops the load and joins it: a panicking task fails the test, as does any problem.
async fn finish_load(
    phase: &Phase,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
) -> Vec<LoadReport> {
    phase.stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let report = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("load task {i} did not stop within 10 s"))
            .unwrap_or_else(|e| panic!("load task {i} panicked: {e}"));
        assert!(
            report.problems.is_empty(),
            "load task {i} saw {} contract violations, first ones: {:#?}",
            report.problems.len(),
            &report.problems[..report.problems.len().min(10)]
        );
        reports.push(report);
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_under_concurrent_load_never_errors_or_mixes_values_and_recovers() {
    let mut server = RedisServer::new();
    let manager = Arc::new(FaultManager::new());
    manager.connect(&server.url()).await.expect("connect");
    let before_kill = -1;
    assert!(works(&manager, before_kill).await);

    let phase = Arc::new(Phase::default());
    let tasks = spawn_load(&manager, &phase, 48);
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    // Recovery bound: 10 s after the restart, with no `connect` from the application.
    eventually("the caches to work after the restart", || {
        works(&manager, -2)
    })
    .await;
    phase.recovered.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let reports = finish_load(&phase, tasks).await;
    for (i, report) in reports.iter().enumerate() {
        assert!(
            report.stored_after_recovery > 0,
            "load task {i} stored nothing after the restart"
        );
    }
    // The restarted server is empty: the entry written before the kill is a clean miss.
    let misses = manager.items().stats().misses;
    assert_eq!(quick("get", manager.items().get(&before_kill)).await, None);
    let stats = manager.items().stats();
    assert_eq!(stats.misses, misses + 1, "{stats:?}");
    assert_eq!(stats.corrupt_evicted, 0, "{stats:?}");
    assert!(stats.degraded > 0, "the outage went unnoticed: {stats:?}");
    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Connected, "{health:?}");
    assert_eq!(health.breaker, Breaker::Closed, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_during_load_never_errors_and_later_calls_degrade() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let manager = Arc::new(FaultManager::new());
    manager.connect(&server.url()).await.expect("connect");

    let phase = Arc::new(Phase::default());
    let tasks = spawn_load(&manager, &phase, 32);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let disconnecting = Arc::clone(&manager);
    quick("disconnect", async {
        tokio::spawn(async move { disconnecting.disconnect().await })
            .await
            .expect("disconnect panicked")
    })
    .await;
    phase.disconnected.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let reports = finish_load(&phase, tasks).await;
    for (i, report) in reports.iter().enumerate() {
        assert!(
            report.sets_after_disconnect > 0,
            "load task {i} made no write after disconnect returned: nothing was checked"
        );
        assert_eq!(
            report.stored_after_disconnect, 0,
            "load task {i} stored entries after disconnect returned ({} writes made)",
            report.sets_after_disconnect
        );
    }
    let key = -5;
    assert!(
        !quick("set", manager.items().set(&key, &item_value(key)))
            .await
            .unwrap()
    );
    assert_eq!(quick("get", manager.items().get(&key)).await, None);
    assert!(!wire::exists(&raw, &manager.items().redis_key(&key)).await);
    assert_eq!(
        manager.health().await.status,
        HealthStatus::Disconnected,
        "after disconnect"
    );
    // The dropped backend closes its socket: only the raw connection is left.
    eventually("the library's connection to close", || async {
        wire::clients(&raw).await.len() == 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// A frozen server
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_opens_the_breaker_after_the_threshold_and_recovers_after_resume() {
    let server = RedisServer::new();
    let manager = FaultManager::new();
    let threshold = 3;
    let config = fast_recovery()
        .with_response_timeout(Duration::from_millis(100))
        .with_failure_threshold(threshold);
    manager
        .connect_with(&server.url(), &config)
        .await
        .expect("connect");
    assert!(works(&manager, 1).await);
    let before = manager.items().stats();

    server.pause();
    let mut calls = 0;
    for round in 0..4 {
        let key = 100 + round;
        let set = quick("set", manager.items().set(&key, &item_value(key))).await;
        assert!(matches!(set, Ok(false)), "set during the pause: {set:?}");
        assert_eq!(quick("get", manager.items().get(&key)).await, None);
        let found = quick("mget", manager.items().mget(&[key, key + 1])).await;
        assert_eq!(
            found.unwrap(),
            HashMap::from([(key, None), (key + 1, None)])
        );
        calls += 3;
    }
    // The first `threshold` calls timed out; the breaker then opened and later calls
    // degraded without waiting for the frozen server.
    let health = quick("health", manager.health()).await;
    assert_eq!(health.breaker, Breaker::Open, "{health:?}");
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    assert!(!health.healthy);
    let stats = manager.items().stats();
    assert_eq!(
        stats.timeouts - before.timeouts,
        u64::from(threshold),
        "only the calls before the breaker opened may time out: {stats:?}"
    );
    assert_eq!(stats.degraded - before.degraded, calls, "{stats:?}");
    // A paused server still completes TCP handshakes (the kernel does), so reconnection
    // attempts connect; the breaker closes only once a `PING` is answered, so for as long
    // as the pause lasts every call still degrades at once, none waits for a timeout.
    let paused = std::time::Instant::now();
    let mut more = 0;
    while paused.elapsed() < Duration::from_millis(1500) {
        let started = std::time::Instant::now();
        assert_eq!(quick("get", manager.items().get(&7)).await, None);
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "a get waited {:?} on the paused server: the breaker closed without an answer",
            started.elapsed()
        );
        more += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = manager.items().stats();
    assert_eq!(
        stats.timeouts - before.timeouts,
        u64::from(threshold),
        "calls timed out after the breaker opened: {stats:?}"
    );
    assert_eq!(stats.degraded - before.degraded, calls + more, "{stats:?}");
    assert_eq!(
        quick("health", manager.health()).await.breaker,
        Breaker::Open
    );
    let all = manager.stats();
    let items = all
        .iter()
        .find(|s| s.field == "items")
        .expect("items stats");
    assert_eq!(*items, stats, "manager.stats() and cache.stats() disagree");

    server.resume();
    eventually("the caches to work after SIGCONT", || works(&manager, 2)).await;
    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Connected, "{health:?}");
    assert_eq!(health.breaker, Breaker::Closed, "{health:?}");
    assert!(health.healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_options_override_the_config_and_one_timeout_opens_the_breaker() {
    let server = RedisServer::new();
    let manager = FaultManager::new();
    // Were the URL options ignored, the first call would wait 5 s and the breaker would
    // need ten timeouts.
    let config = fast_recovery()
        .with_response_timeout(Duration::from_secs(5))
        .with_failure_threshold(10);
    let url = format!(
        "{}?response_timeout_ms=50&failure_threshold=1",
        server.url()
    );
    manager.connect_with(&url, &config).await.expect("connect");
    assert!(works(&manager, 1).await);

    server.pause();
    assert_eq!(quick("get", manager.items().get(&1)).await, None);
    let health = quick("health", manager.health()).await;
    server.resume();
    assert_eq!(health.breaker, Breaker::Open, "{health:?}");
    assert_eq!(manager.items().stats().timeouts, 1);

    eventually("the caches to work after SIGCONT", || works(&manager, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_a_config_error_naming_the_option() {
    let server = RedisServer::new();
    let manager = FaultManager::new();
    let cases = [
        (
            CacheConfig::new().with_response_timeout(Duration::ZERO),
            "response_timeout_ms",
        ),
        (
            CacheConfig::new().with_connect_timeout(Duration::ZERO),
            "connect_timeout_ms",
        ),
        (
            CacheConfig::new().with_failure_threshold(0),
            "failure_threshold",
        ),
        (
            CacheConfig::new().with_backoff(Duration::from_millis(500), Duration::from_millis(100)),
            "backoff",
        ),
        (
            CacheConfig::new().with_summary_interval(Duration::ZERO),
            "summary_interval_ms",
        ),
    ];
    for (config, option) in cases {
        let err = manager.connect_with(&server.url(), &config).await;
        match err {
            Err(CacheError::Config { reason }) => {
                assert!(reason.contains(option), "`{reason}` does not name {option}");
            }
            other => panic!("{config:?} accepted or wrong error: {other:?}"),
        }
    }
    let url = format!("{}?backoff_min_ms=500&backoff_max_ms=100", server.url());
    let err = manager.connect_with(&url, &CacheConfig::new()).await;
    assert!(
        matches!(&err, Err(CacheError::Config { reason }) if reason.contains("backoff")),
        "{err:?}"
    );
    // None of them connected anything.
    assert_eq!(manager.health().await.status, HealthStatus::Disconnected);
}

// ---------------------------------------------------------------------------------------
// The library's connection killed or locked out
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_the_library_connection_degrades_then_reconnects() {
    let server = RedisServer::new();
    let raw = server.raw().await;
    let manager = FaultManager::new();
    manager
        .connect_with(&server.url(), &fast_recovery())
        .await
        .expect("connect");
    assert!(works(&manager, 1).await);
    let received: u64 = wire::info_field(&raw, "total_connections_received")
        .await
        .parse()
        .unwrap();

    let degraded = manager.items().stats().degraded;
    assert_eq!(kill_other_clients(&raw).await, 1, "one library connection");
    let mut refused = 0;
    for key in 0..20 {
        let set = quick("set", manager.items().set(&key, &item_value(key))).await;
        // A write either degrades (`Ok(false)`, nothing stored) or was really stored.
        match set {
            Ok(false) => refused += 1,
            Ok(true) => assert!(
                wire::get(&raw, &manager.items().redis_key(&key))
                    .await
                    .is_some(),
                "set {key} reported stored after CLIENT KILL but Redis does not hold it"
            ),
            Err(e) => panic!("set after CLIENT KILL: {e:?}"),
        }
        let got = quick("get", manager.items().get(&key)).await;
        assert!(
            got.as_ref().is_none_or(|v| *v == item_value(key)),
            "get {key}: {got:?}"
        );
        let found = quick("mget", manager.items().mget(&[key, 1])).await;
        for (k, v) in found.expect("mget after CLIENT KILL") {
            assert!(
                v.as_ref().is_none_or(|v| *v == item_value(k)),
                "mget {k}: {v:?}"
            );
        }
    }

    assert!(
        refused > 0 && manager.items().stats().degraded > degraded,
        "no call noticed the killed connection: {refused} writes refused, {:?}",
        manager.items().stats()
    );
    eventually("the caches to work after CLIENT KILL", || {
        works(&manager, 3)
    })
    .await;
    let now: u64 = wire::info_field(&raw, "total_connections_received")
        .await
        .parse()
        .unwrap();
    assert!(now > received, "recovered without a new connection?");
    let health = manager.health().await;
    assert_eq!(health.status, HealthStatus::Connected, "{health:?}");
    assert_eq!(health.breaker, Breaker::Closed, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_off_as_soon_as_they_are_made_are_not_reopened_at_once() {
    // A server that closes every connection right after accepting it (an operator's
    // script killing clients, a proxy) is not answered by a reconnection per failed
    // call: the reconnections back off as they do from a server that refuses them.
    let server = RedisServer::new();
    let raw = server.raw().await;
    let manager = Arc::new(FaultManager::new());
    manager.connect(&server.url()).await.expect("connect");
    assert!(works(&manager, 1).await);
    let stop = Arc::new(AtomicBool::new(false));
    let calls = tokio::spawn({
        let (manager, stop) = (Arc::clone(&manager), Arc::clone(&stop));
        async move {
            let mut made = 0u32;
            while !stop.load(Ordering::Relaxed) {
                quick("get", manager.items().get(&1)).await;
                made += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            made
        }
    });
    let before = wire::connections_received(&raw).await;
    let started = std::time::Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(3) {
        kills += kill_other_clients(&raw).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connections = wire::connections_received(&raw).await - before;
    stop.store(true, Ordering::Relaxed);
    let made = quick("the calls to end", calls).await.expect("no panic");
    println!(
        "{made} gets in 3 s while every connection was killed at once: {connections} connections, {kills} killed"
    );
    // Backing off from 50 ms and doubling: 6 to 9 attempts in 3 s. Reconnecting as soon
    // as a call finds the connection gone: one every 10 ms or so, hundreds.
    assert!(
        connections <= 20,
        "{connections} connections in 3 s, each killed at once: the reconnections do not back off"
    );
    // Left alone, the caches work again (the backoff is capped at 5 s).
    eventually("the caches to work again", || works(&manager, 2)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn server_that_starts_requiring_a_password_degrades_logs_why_and_recovers() {
    let logs = LogCapture::start();
    let server = RedisServer::new();
    let raw = server.raw().await;
    let manager = FaultManager::new();
    manager
        .connect_with(&server.url(), &fast_recovery())
        .await
        .expect("connect");
    assert!(works(&manager, 1).await);

    // What a restart with `--requirepass` does to the library: its connection drops and
    // every new one is refused with NOAUTH. The raw connection stays authenticated.
    wire::config_set(&raw, "requirepass", PASSWORD).await;
    assert_eq!(kill_other_clients(&raw).await, 1, "one library connection");
    for key in 0..20 {
        let set = quick("set", manager.items().set(&key, &item_value(key))).await;
        assert!(matches!(set, Ok(false)), "set while locked out: {set:?}");
        assert_eq!(quick("get", manager.items().get(&key)).await, None);
    }
    // Give the supervisor time to try, and fail, to log in.
    eventually(
        "the reconnection to be refused for authentication",
        || async {
            let health = quick("health", manager.health()).await;
            health
                .error
                .is_some_and(|e| e.contains("NOAUTH") || e.to_lowercase().contains("auth"))
        },
    )
    .await;
    // Item 1, and the registry of the item cache's layouts, written before.
    assert_eq!(
        wire::dbsize(&raw).await,
        1 + 1,
        "nothing written while locked out"
    );
    assert_eq!(
        wire::keys(&raw).await,
        [
            "!layouts!fault:item:".to_owned(),
            manager.items().redis_key(&1)
        ],
        "nothing written while locked out"
    );

    let errors = logs.lines_at("ERROR");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("NOAUTH") || l.to_lowercase().contains("authentication")),
        "no ERROR line says the server now requires a password:\n{}",
        logs.text()
    );

    wire::config_set(&raw, "requirepass", "").await;
    eventually("the caches to work once the password is lifted", || {
        works(&manager, 2)
    })
    .await;
    assert!(!logs.text().contains(PASSWORD), "{}", logs.text());
    assert!(!format!("{manager:?}").contains(PASSWORD));
}

// ---------------------------------------------------------------------------------------
// Refused writes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn refused_writes_under_noeviction_are_logged_rate_limited_and_recover() {
    let logs = LogCapture::start();
    let server = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("noeviction")
        .start();
    let raw = server.raw().await;
    let manager = FaultManager::new();
    manager.connect(&server.url()).await.expect("connect");
    assert!(works(&manager, 1).await);
    let before = manager.items().stats();

    wire::config_set(&raw, "maxmemory", "1").await;
    let refused = 100;
    for key in 0..refused {
        let set = quick("set", manager.items().set(&key, &item_value(key))).await;
        assert!(matches!(set, Ok(false)), "set over maxmemory: {set:?}");
        let entries = HashMap::from([(key + 1000, item_value(key + 1000))]);
        let mset = quick("mset", manager.items().mset(&entries)).await;
        assert!(matches!(mset, Ok(false)), "mset over maxmemory: {mset:?}");
        assert_eq!(
            quick("get", manager.items().get(&1)).await,
            Some(item_value(1)),
            "reads still work"
        );
    }
    let health = manager.health().await;
    assert!(health.healthy, "a refusal is not an outage: {health:?}");
    assert_eq!(health.breaker, Breaker::Closed, "{health:?}");
    let stats = manager.items().stats();
    assert_eq!(
        stats.degraded - before.degraded,
        2 * refused as u64,
        "{stats:?}"
    );
    assert_eq!(stats.timeouts, before.timeouts, "{stats:?}");

    let warnings = logs.lines_at("WARN");
    assert!(
        (1..=3).contains(&warnings.len()),
        "{} WARN lines for {} refused writes:\n{}",
        warnings.len(),
        2 * refused,
        logs.text()
    );
    assert!(
        warnings.iter().any(|l| l.contains("OOM")),
        "the warning does not say why:\n{}",
        logs.text()
    );
    assert!(
        logs.lines_at("ERROR").is_empty(),
        "the connection was fine, yet:\n{}",
        logs.text()
    );

    wire::config_set(&raw, "maxmemory", "0").await;
    assert!(
        works(&manager, 2).await,
        "writes after maxmemory was raised"
    );
}

// ---------------------------------------------------------------------------------------
// What an operator sees
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn outage_logs_one_error_periodic_summaries_one_restore_and_no_password() {
    let logs = LogCapture::start();
    let mut server = RedisServer::with_password(PASSWORD);
    let redacted = format!("redis://:***@127.0.0.1:{}/0", server.port());
    let manager = FaultManager::new();
    let url = format!(
        "{}?summary_interval_ms=200&backoff_min_ms=20&backoff_max_ms=100",
        server.url()
    );
    manager.connect(&url).await.expect("connect");
    assert!(works(&manager, 1).await);

    server.kill();
    let mut shown = Vec::new();
    let outage = tokio::time::Instant::now() + Duration::from_millis(1000);
    let mut key = 0;
    while tokio::time::Instant::now() < outage {
        key += 1;
        assert_eq!(quick("get", manager.items().get(&key)).await, None);
        let set = quick("set", manager.items().set(&key, &item_value(key))).await;
        assert!(matches!(set, Ok(false)), "{set:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let down = manager.health().await;
    shown.push(serde_json::to_string(&down).unwrap());
    shown.push(format!("{down:?}"));
    shown.push(format!("{manager:?}"));

    server.restart();
    eventually("the caches to work after the restart", || {
        works(&manager, 2)
    })
    .await;
    let up = manager.health().await;
    shown.push(serde_json::to_string(&up).unwrap());
    shown.push(format!("{manager:?}"));
    let text = logs.text();
    shown.push(text.clone());
    for shown in &shown {
        assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
    }

    let errors = logs.lines_at("ERROR");
    assert_eq!(errors.len(), 1, "one ERROR line per outage:\n{text}");
    let summaries: Vec<String> = logs
        .lines_at("WARN")
        .into_iter()
        .filter(|l| l.contains("still unavailable"))
        .collect();
    assert!(!summaries.is_empty(), "no summary while down:\n{text}");
    assert!(
        summaries.len() <= 10,
        "{} summaries in about a second at a 200 ms interval:\n{text}",
        summaries.len()
    );
    assert!(
        field_values(&summaries, "degraded_calls")
            .iter()
            .any(|n| *n > 0),
        "no summary counts the degraded calls:\n{text}"
    );
    let restored: Vec<String> = logs
        .lines_at("INFO")
        .into_iter()
        .filter(|l| l.contains("restored"))
        .collect();
    assert_eq!(restored.len(), 1, "one INFO line when back:\n{text}");
    for line in errors.iter().chain(&summaries).chain(&restored) {
        assert!(line.contains("backend="), "no backend field: {line}");
        assert!(line.contains(&redacted), "no redacted url field: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_json_reports_the_outage_and_the_recovery() {
    let mut server = RedisServer::with_password(PASSWORD);
    let manager = FaultManager::new();
    manager
        .connect_with(&server.url(), &fast_recovery())
        .await
        .expect("connect");

    let up = serde_json::to_value(manager.health().await).unwrap();
    assert_eq!(up["status"], "connected", "{up}");
    assert_eq!(up["healthy"], true, "{up}");
    assert_eq!(up["breaker"], "closed", "{up}");
    assert_eq!(up["backend"], "redis", "{up}");
    assert!(up["latency_ms"].is_number(), "{up}");
    assert!(
        up.get("error").is_none() && up.get("down_for_ms").is_none(),
        "{up}"
    );

    server.kill();
    assert_eq!(quick("get", manager.items().get(&1)).await, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let down = loop {
        let health = serde_json::to_value(quick("health", manager.health()).await).unwrap();
        if health["breaker"] == "open" {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker still closed 10 s after the kill: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(down["status"], "degraded", "{down}");
    assert_eq!(down["healthy"], false, "{down}");
    assert!(
        down["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    assert!(down["down_for_ms"].is_u64(), "{down}");
    assert!(down["degraded_calls"].as_u64() > Some(0), "{down}");
    assert!(down.get("latency_ms").is_none(), "{down}");
    let url = format!("redis://:***@127.0.0.1:{}/0", server.port());
    assert_eq!(down["url"], url.as_str(), "{down}");
    assert!(!down.to_string().contains(PASSWORD), "{down}");

    server.restart();
    eventually("health to report connected", || async {
        manager.health().await.healthy
    })
    .await;
    let up = serde_json::to_value(manager.health().await).unwrap();
    assert_eq!(up["status"], "connected", "{up}");
    assert_eq!(up["breaker"], "closed", "{up}");
    assert!(up["latency_ms"].is_number(), "{up}");
    assert!(
        up.get("error").is_none(),
        "a stale error after recovery: {up}"
    );
    assert!(!up.to_string().contains(PASSWORD), "{up}");
}

// ---------------------------------------------------------------------------------------
// A master demoted to a replica
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_reply_opens_the_breaker_and_nothing_is_written_until_it_is_a_master_again() {
    let server = RedisServer::new();
    let other = RedisServer::new();
    let raw = server.raw().await;
    let manager = FaultManager::new();
    // A long backoff keeps the breaker open long enough to be seen.
    let config = CacheConfig::new().with_backoff(Duration::from_secs(2), Duration::from_secs(4));
    manager.connect_with(&server.url(), &config).await.unwrap();
    assert!(works(&manager, 1).await);

    // The server becomes a replica (as a demoted master does after a failover): it
    // answers writes with `READONLY`.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other.port())
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    eventually("the server to refuse writes", || async {
        redis::cmd("SET")
            .arg("probe")
            .arg("1")
            .query_async::<()>(&mut raw.clone())
            .await
            .is_err_and(|e| e.code() == Some("READONLY"))
    })
    .await;
    let degraded = manager.items().stats().degraded;
    let set = quick("set", manager.items().set(&2, &item_value(2))).await;
    assert!(
        matches!(set, Ok(false)),
        "a write refused with READONLY: {set:?}"
    );
    let health = manager.health().await;
    assert_eq!(
        health.breaker,
        Breaker::Open,
        "READONLY did not open the breaker: {health:?}"
    );
    // While it is open, calls degrade at once without reaching the replica.
    wire::reset_stats(&raw).await;
    for key in 3..20 {
        let set = quick("set", manager.items().set(&key, &item_value(key))).await;
        assert!(matches!(set, Ok(false)), "{set:?}");
    }
    let calls = wire::command_calls(&raw).await;
    assert!(
        !calls.contains_key("set"),
        "writes reached the replica: {calls:?}"
    );
    assert!(manager.items().stats().degraded >= degraded + 18);
    assert!(!wire::exists(&raw, &manager.items().redis_key(&2)).await);

    // Promoted back, it takes writes again without a new `connect`.
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    eventually("writes to work on the master again", || works(&manager, 5)).await;
    assert_eq!(manager.health().await.breaker, Breaker::Closed);
}

// ---------------------------------------------------------------------------------------
// A server loading its dataset
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_reply_opens_the_breaker_until_the_dataset_is_loaded() {
    // `key-load-delay` slows loading to about 100 µs per key, so the 10 000 keys below
    // keep the server answering `LOADING` for about a second.
    let server = RedisServer::builder()
        .arg("--enable-debug-command")
        .arg("yes")
        .arg("--key-load-delay")
        .arg("100")
        .arg("--loading-process-events-interval-bytes")
        .arg("1024")
        .start();
    let raw = server.raw().await;
    let manager = FaultManager::new();
    manager
        .connect_with(&server.url(), &fast_recovery())
        .await
        .unwrap();
    assert!(works(&manager, 1).await);
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(10_000)
        .arg("filler")
        .arg(10)
        .query_async(&mut raw.clone())
        .await
        .unwrap();

    // `DEBUG RELOAD` saves and loads the dataset again, answering others `LOADING`.
    let reloading = {
        let mut conn = server.raw().await;
        tokio::spawn(async move {
            redis::cmd("DEBUG")
                .arg("RELOAD")
                .query_async::<()>(&mut conn)
                .await
        })
    };
    eventually("the server to answer LOADING", || async {
        redis::cmd("PING")
            .query_async::<()>(&mut raw.clone())
            .await
            .is_err_and(|e| e.code() == Some("LOADING"))
    })
    .await;
    let got = quick("get", manager.items().get(&1)).await;
    assert_eq!(got, None, "a get while loading");
    let set = quick("set", manager.items().set(&2, &item_value(2))).await;
    assert!(matches!(set, Ok(false)), "a set while loading: {set:?}");
    let health = manager.health().await;
    let still_loading = redis::cmd("PING")
        .query_async::<()>(&mut raw.clone())
        .await
        .is_err();
    assert!(
        still_loading,
        "the load ended before the checks: slow it down"
    );
    assert_eq!(
        health.breaker,
        Breaker::Open,
        "LOADING did not open the breaker: {health:?}"
    );
    // Until the load ends, reconnections are made (the server accepts them and answers
    // `ROLE`) but the breaker closes only once a `PING` is answered, so no call reaches
    // the server to be refused again: calls go on degrading at once.
    let mut calls = 0;
    while redis::cmd("PING")
        .query_async::<()>(&mut raw.clone())
        .await
        .is_err()
    {
        assert_eq!(quick("get", manager.items().get(&1)).await, None);
        calls += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw.clone())
        .await
        .unwrap();
    let refused_gets: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_get:"))
        .and_then(|line| {
            line.split(',')
                .find_map(|f| f.strip_prefix("rejected_calls="))
        })
        .map_or(0, |n| n.parse().expect("a count"));
    println!("{calls} gets while loading; {refused_gets} reached the server and were refused");
    assert!(calls > 20, "the load ended too soon to tell ({calls} gets)");
    assert!(
        refused_gets <= 2,
        "{refused_gets} gets reached the loading server: the breaker closed before a PING was answered"
    );

    // The harness's connection gives up waiting for `DEBUG RELOAD`'s reply after its
    // response timeout; the server goes on loading, and is waited for below.
    let _ = reloading.await.expect("the reload task panicked");
    eventually("the load to end", || async {
        redis::cmd("PING")
            .query_async::<()>(&mut raw.clone())
            .await
            .is_ok()
    })
    .await;
    eventually("the caches to work after loading", || works(&manager, 3)).await;
    assert_eq!(
        quick("get", manager.items().get(&1)).await,
        Some(item_value(1)),
        "the entry written before the reload"
    );
    assert_eq!(manager.health().await.breaker, Breaker::Closed);
}

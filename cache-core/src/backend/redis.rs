//! `redis://`: one multiplexed connection shared by every cache of a manager, kept alive
//! by a supervisor task.
//!
//! redis-rs's `ConnectionManager` makes callers wait on its reconnect future, unbounded by
//! the response timeout, and fails its constructor when Redis is down. Here calls never
//! wait for a connection: while there is none they degrade at once (no network), and a
//! single background task reconnects with capped exponential backoff.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Unavailable;
use crate::config::{RedisSettings, Secret};
use crate::health::Health;

/// Timeouts in a row after which the connection is considered hung and rebuilt.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;
/// How often a still-down backend logs a summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// At most one warning per this interval for refused commands (e.g. OOM).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct RedisBackend {
    inner: Arc<Inner>,
    supervisor: tokio::task::JoinHandle<()>,
}

struct Inner {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    backoff: (Duration, Duration),
    url: String,
    secret: Option<Secret>,
    conn: ArcSwapOption<MultiplexedConnection>,
    wake: Notify,
    timeouts_in_a_row: AtomicU32,
    outage: Outage,
}

/// Keeps logging to one line per transition: down, a summary every 30 s while down, back.
struct Outage {
    down: AtomicBool,
    degraded_total: AtomicU64,
    degraded_at_down: AtomicU64,
    state: Mutex<OutageState>,
}

struct OutageState {
    since: Option<Instant>,
    last_error: Option<String>,
    last_summary: Option<Instant>,
    last_refusal_log: Option<Instant>,
    refusals_unlogged: u64,
}

impl Outage {
    fn new() -> Self {
        Outage {
            down: AtomicBool::new(false),
            degraded_total: AtomicU64::new(0),
            degraded_at_down: AtomicU64::new(0),
            state: Mutex::new(OutageState {
                since: None,
                last_error: None,
                last_summary: None,
                last_refusal_log: None,
                refusals_unlogged: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OutageState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_degraded(&self) {
        self.degraded_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that Redis cannot be reached; logs only on the transition to down.
    fn went_down(&self, url: &str, error: String) {
        let mut state = self.state();
        state.last_error = Some(error.clone());
        if !self.down.swap(true, Ordering::AcqRel) {
            let now = Instant::now();
            state.since = Some(now);
            state.last_summary = Some(now);
            self.degraded_at_down.store(
                self.degraded_total.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            tracing::error!(
                backend = "redis",
                url,
                error = %error,
                "redis unavailable: cache reads miss and writes return false until it is back"
            );
        }
    }

    /// Logs the periodic summary while down.
    fn still_down(&self, url: &str) {
        let mut state = self.state();
        let now = Instant::now();
        if state.last_summary.is_some_and(|t| now - t < SUMMARY_EVERY) {
            return;
        }
        state.last_summary = Some(now);
        let down_for = state.since.map(|s| now - s).unwrap_or_default();
        tracing::warn!(
            backend = "redis",
            url,
            down_for_s = down_for.as_secs(),
            degraded_calls = self.degraded_since_down(),
            error = state.last_error.as_deref().unwrap_or(""),
            "redis still unavailable"
        );
    }

    fn came_back(&self, url: &str) {
        if self.down.swap(false, Ordering::AcqRel) {
            let mut state = self.state();
            let down_for = state
                .since
                .take()
                .map(|s| Instant::now() - s)
                .unwrap_or_default();
            state.last_error = None;
            tracing::info!(
                backend = "redis",
                url,
                down_for_ms = down_for.as_millis() as u64,
                degraded_calls = self.degraded_since_down(),
                "redis connection restored"
            );
        }
    }

    fn degraded_since_down(&self) -> u64 {
        self.degraded_total.load(Ordering::Relaxed) - self.degraded_at_down.load(Ordering::Relaxed)
    }

    /// A command the server refused while the connection is fine (OOM, NOPERM, ...).
    fn refused(&self, url: &str, error: String) {
        let mut state = self.state();
        let now = Instant::now();
        if state
            .last_refusal_log
            .is_some_and(|t| now - t < REFUSAL_LOG_EVERY)
        {
            state.refusals_unlogged += 1;
            return;
        }
        state.last_refusal_log = Some(now);
        let suppressed = std::mem::take(&mut state.refusals_unlogged);
        tracing::warn!(
            backend = "redis",
            url,
            error = %error,
            suppressed,
            "redis refused a cache command; the call degraded"
        );
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl RedisBackend {
    /// Connects, or starts degraded when Redis cannot be reached; either way a
    /// supervisor keeps the connection up from now on.
    pub(crate) async fn start(settings: RedisSettings) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout));
        let inner = Arc::new(Inner {
            client: settings.client,
            config,
            connect_timeout: settings.connect_timeout,
            backoff: settings.backoff,
            url: settings.redacted,
            secret: settings.secret,
            conn: ArcSwapOption::empty(),
            wake: Notify::new(),
            timeouts_in_a_row: AtomicU32::new(0),
            outage: Outage::new(),
        });
        match inner.open().await {
            Ok(conn) => {
                inner.conn.store(Some(Arc::new(conn)));
                tracing::info!(backend = "redis", url = %inner.url, "cache connected");
            }
            // Not an error for `connect`: the outage is logged once and the supervisor
            // below keeps trying.
            Err(error) => inner.outage.went_down(&inner.url, error),
        }
        let supervisor = tokio::spawn(supervise(Arc::clone(&inner)));
        RedisBackend { inner, supervisor }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Unavailable> {
        let Some(conn) = self.inner.conn.load_full() else {
            self.inner.outage.count_degraded();
            return Err(Unavailable);
        };
        let result = cmd.query_async::<T>(&mut (*conn).clone()).await;
        self.inner.settle(&conn, result)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Unavailable> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub(crate) async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        self.query(redis::cmd("MGET").arg(keys)).await
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        expiry_args(&mut cmd, ttl);
        self.query::<()>(&cmd).await
    }

    pub(crate) async fn mset(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let Some(conn) = self.inner.conn.load_full() else {
            self.inner.outage.count_degraded();
            return Err(Unavailable);
        };
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value);
            expiry_args(&mut cmd, ttl);
            pipe.add_command(cmd).ignore();
        }
        let result = pipe.query_async::<()>(&mut (*conn).clone()).await;
        self.inner.settle(&conn, result)
    }

    pub(crate) async fn del(&self, key: &str) -> Result<bool, Unavailable> {
        self.query::<u64>(redis::cmd("DEL").arg(key))
            .await
            .map(|n| n > 0)
    }

    pub(crate) async fn del_if_eq(&self, key: &str, expected: &[u8]) -> Result<bool, Unavailable> {
        // EVAL rather than EVALSHA: corrupt entries are rare, and EVAL needs no script cache.
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        self.query::<u64>(redis::cmd("EVAL").arg(SCRIPT).arg(1).arg(key).arg(expected))
            .await
            .map(|n| n > 0)
    }

    pub(crate) async fn health(&self) -> Health {
        let ping = match self.inner.conn.load_full() {
            None => Err(self
                .inner
                .outage
                .state()
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected; reconnecting".to_owned())),
            Some(conn) => {
                let started = Instant::now();
                let result = redis::cmd("PING")
                    .query_async::<()>(&mut (*conn).clone())
                    .await;
                let rtt = started.elapsed();
                let error = result.as_ref().err().map(|e| self.inner.describe(e));
                match self.inner.settle(&conn, result) {
                    Ok(()) => Ok(rtt),
                    Err(Unavailable) => Err(error.unwrap_or_default()),
                }
            }
        };
        let degraded = self.inner.outage.degraded_total.load(Ordering::Relaxed);
        Health::redis(&self.inner.url, ping, degraded)
    }
}

fn expiry_args(cmd: &mut redis::Cmd, ttl: Duration) {
    if ttl.subsec_millis() == 0 {
        cmd.arg("EX").arg(ttl.as_secs());
    } else {
        cmd.arg("PX").arg(ttl.as_millis() as u64);
    }
}

impl Inner {
    async fn open(&self) -> Result<MultiplexedConnection, String> {
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config);
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.describe(&e)),
            Err(_) => Err(format!(
                "connection attempt timed out after {:?}",
                self.connect_timeout
            )),
        }
    }

    /// The error's text with the password scrubbed, in case a server echoes it.
    fn describe(&self, error: &RedisError) -> String {
        let text = error.to_string();
        match &self.secret {
            Some(secret) => secret.scrub(text),
            None => text,
        }
    }

    /// Turns a command result into the call's outcome, recording failures and deciding
    /// whether the connection must be rebuilt.
    fn settle<T>(
        &self,
        conn: &Arc<MultiplexedConnection>,
        result: Result<T, RedisError>,
    ) -> Result<T, Unavailable> {
        match result {
            Ok(value) => {
                if self.timeouts_in_a_row.load(Ordering::Relaxed) != 0 {
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                }
                if self.outage.down.load(Ordering::Relaxed) {
                    self.outage.came_back(&self.url);
                }
                Ok(value)
            }
            Err(error) => {
                self.outage.count_degraded();
                let text = self.describe(&error);
                if error.is_timeout() {
                    let in_a_row = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                    if in_a_row >= TIMEOUTS_BEFORE_RECONNECT {
                        self.drop_connection(conn, format!("{in_a_row} timeouts in a row: {text}"));
                    }
                } else if must_reconnect(&error) {
                    self.drop_connection(conn, text);
                } else {
                    self.outage.refused(&self.url, text);
                }
                Err(Unavailable)
            }
        }
    }

    /// Forgets `conn` (unless it was already replaced) and wakes the supervisor.
    fn drop_connection(&self, conn: &Arc<MultiplexedConnection>, reason: String) {
        let previous = self.conn.compare_and_swap(conn, None);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, conn)) {
            self.timeouts_in_a_row.store(0, Ordering::Relaxed);
            self.outage.went_down(&self.url, reason);
            self.wake.notify_one();
        }
    }
}

/// Errors after which the connection cannot be trusted: I/O, a dropped socket, or a
/// server that is loading its data or no longer a primary.
fn must_reconnect(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::BusyLoading)
        )
}

/// Keeps a connection up: sleeps while there is one, reconnects with capped exponential
/// backoff while there is none.
async fn supervise(inner: Arc<Inner>) {
    let (first, longest) = inner.backoff;
    let mut backoff = first;
    loop {
        if inner.conn.load().is_some() {
            inner.wake.notified().await;
            continue;
        }
        match inner.open().await {
            Ok(conn) => {
                inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                inner.conn.store(Some(Arc::new(conn)));
                inner.outage.came_back(&inner.url);
                backoff = first;
            }
            Err(error) => {
                inner.outage.went_down(&inner.url, error);
                inner.outage.still_down(&inner.url);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(longest);
            }
        }
    }
}

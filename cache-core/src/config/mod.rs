//! How a manager connects: its settings ([`CacheConfig`]), the parsing of `connect` URLs
//! ([`parse`](mod@parse)), passwords kept out of every message ([`secret`]) and TLS
//! trust ([`tls`]).

mod parse;
mod secret;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::CacheError;

pub(crate) use parse::{
    ClusterSettings, NodeAddr, NodeTemplate, RedisSettings, SentinelSettings, Target, parse,
};
pub(crate) use secret::Secret;

/// How a manager talks to Redis: deadlines, the circuit breaker, reconnection backoff.
///
/// Pass it to `connect_with`; `connect` uses the defaults. Options in the URL's query
/// string (`?response_timeout_ms=100`) override what the config says.
///
/// | setting | default | URL option | why |
/// | --- | --- | --- | --- |
/// | response timeout | 250 ms | `response_timeout_ms` | the deadline of every call, sending included; a cache answer slower than the database is worth nothing |
/// | connect timeout | 1 s | `connect_timeout_ms` | bounds each (re)connection attempt and its `PING` probe, so a black-holed host cannot stall recovery |
/// | failure threshold | 3 | `failure_threshold` | calls in a row that got no reply in time, which open the breaker; one slow reply is noise, three is a hung server (concurrent calls stuck in the same round trip each count) |
/// | backoff | 50 ms to 5 s | `backoff_min_ms`, `backoff_max_ms` | reconnect quickly after a blip, without hammering a server that is down |
/// | summary interval | 30 s | `summary_interval_ms` | how often a still-down backend logs how many calls degraded |
/// | fail-safe throttle | 30 s | `fail_safe_throttle_ms` | after a loader failed, how long `get_or_load` serves the stale fallback (`fail_safe`) as if fresh, so a failing database is not asked again on every call |
/// | single-flight wait | 3 s | `single_flight_wait_ms` | with `single_flight = "global"`: how long an instance waits for another's load (and how long that load's lease lasts) before it loads itself |
/// | background timeout | 30 s | `background_timeout_ms` | the longest a load that outlived its caller (after a soft timeout, a refresh ahead) may run; at most one per key |
/// | key prefix | none | `prefix` | puts every key of the manager under `{prefix}:`, for environments or tenants sharing one Redis; it follows the namespace grammar |
/// | value size limit | none | `max_value_bytes` | the largest encoded value any cache of the manager writes; a cache's own `max_bytes` wins |
/// | coalescing | on | `coalesce` (`true`/`false`) | under load, concurrent gets share `MGET`s and concurrent sets their pipelines, where the manager measures that it pays; `false` sends every get and set alone |
/// | TLS trust | the system's roots | `ca_file` | a PEM file of the CA(s) that signed the servers' certificates, for `rediss://` to a private CA; it replaces the system's roots |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Deadline of every cache call, including sending it and waiting for the reply.
    pub response_timeout: Duration,
    /// Deadline of each connection attempt, handshake and probe included.
    pub connect_timeout: Duration,
    /// Consecutive timeouts after which the breaker opens and the connection is rebuilt.
    pub failure_threshold: u32,
    /// First wait between reconnection attempts; doubled after each failure.
    pub backoff_min: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// Interval of the summary logged while the backend stays down.
    pub summary_interval: Duration,
    /// Whether concurrent gets are coalesced into `MGET`s, and concurrent sets into their
    /// pipelines, under load.
    pub coalesce: bool,
    /// After a loader failed, how long the stale fallback is served as if fresh.
    pub fail_safe_throttle: Duration,
    /// How long an instance waits for another's load of a key (`single_flight =
    /// "global"`), which is also how long that load's lease lasts.
    pub single_flight_wait: Duration,
    /// The longest a load that outlived its caller may run.
    pub background_timeout: Duration,
    /// The largest encoded value a cache without its own `max_bytes` writes; `None`
    /// leaves only Redis's own limit.
    pub max_value_bytes: Option<usize>,
    /// Puts every key of the manager under `{prefix}:` (an environment or a tenant
    /// sharing the Redis): `staging:user:profile:42`.
    pub key_prefix: Option<String>,
    /// PEM file of the certificate authorities a `rediss://` server's certificate must
    /// chain to; `None` trusts the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            response_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            failure_threshold: 3,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            summary_interval: Duration::from_secs(30),
            coalesce: true,
            fail_safe_throttle: Duration::from_secs(30),
            single_flight_wait: Duration::from_secs(3),
            background_timeout: Duration::from_secs(30),
            max_value_bytes: None,
            key_prefix: None,
            tls_ca_file: None,
        }
    }
}

impl CacheConfig {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline of every cache call.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets the deadline of each connection attempt.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how many timeouts in a row open the breaker.
    pub fn with_failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// Sets the first and the longest wait between reconnection attempts.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Turns the coalescing of concurrent gets into `MGET`s (and of concurrent sets into
    /// their pipelines) on or off.
    pub fn with_coalescing(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Sets how long, after a loader failed, `get_or_load` serves the stale fallback as
    /// if fresh (`fail_safe`).
    pub fn with_fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// Sets how long an instance waits for another's load of a key with
    /// `single_flight = "global"`, and how long that load's lease lasts.
    pub fn with_single_flight_wait(mut self, wait: Duration) -> Self {
        self.single_flight_wait = wait;
        self
    }

    /// Sets the longest a load that outlived its caller may run.
    pub fn with_background_timeout(mut self, timeout: Duration) -> Self {
        self.background_timeout = timeout;
        self
    }

    /// Sets the largest encoded value a cache without its own `max_bytes` writes: a
    /// larger one is refused (`set` with `CacheError::Validation`, `mset` writing
    /// nothing, `get_or_load` returning it uncached).
    pub fn with_max_value_bytes(mut self, limit: usize) -> Self {
        self.max_value_bytes = Some(limit);
        self
    }

    /// Puts every key of the manager under `{prefix}:`, so environments or tenants
    /// sharing one Redis never see, overwrite or clear each other's entries:
    /// `staging:user:profile:42` (with a hash tag, `staging:{user:profile}:42`). The
    /// prefix follows the namespace grammar; `connect` checks it.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Sets how often a still-down backend logs a summary.
    pub fn with_summary_interval(mut self, interval: Duration) -> Self {
        self.summary_interval = interval;
        self
    }

    /// Trusts the CA certificate(s) in the PEM file at `path` for `rediss://` connections,
    /// instead of the system's roots: for servers with certificates of a private CA.
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Checks the settings make sense together.
    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        let positive = [
            (
                "response timeout (`response_timeout_ms`)",
                self.response_timeout,
            ),
            (
                "connect timeout (`connect_timeout_ms`)",
                self.connect_timeout,
            ),
            ("minimum backoff (`backoff_min_ms`)", self.backoff_min),
            (
                "summary interval (`summary_interval_ms`)",
                self.summary_interval,
            ),
            (
                "fail-safe throttle (`fail_safe_throttle_ms`)",
                self.fail_safe_throttle,
            ),
            (
                "single-flight wait (`single_flight_wait_ms`)",
                self.single_flight_wait,
            ),
            (
                "background timeout (`background_timeout_ms`)",
                self.background_timeout,
            ),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(CacheError::config(format!("the {name} must be above 0")));
            }
        }
        if self.failure_threshold == 0 {
            return Err(CacheError::config(
                "the failure threshold (`failure_threshold`) must be at least 1",
            ));
        }
        // Bounded so deadlines and backoff arithmetic can never overflow an `Instant`.
        let bounded = [
            (
                "response timeout (`response_timeout_ms`)",
                self.response_timeout,
            ),
            (
                "connect timeout (`connect_timeout_ms`)",
                self.connect_timeout,
            ),
            ("minimum backoff (`backoff_min_ms`)", self.backoff_min),
            ("maximum backoff (`backoff_max_ms`)", self.backoff_max),
            (
                "summary interval (`summary_interval_ms`)",
                self.summary_interval,
            ),
            (
                "fail-safe throttle (`fail_safe_throttle_ms`)",
                self.fail_safe_throttle,
            ),
            (
                "single-flight wait (`single_flight_wait_ms`)",
                self.single_flight_wait,
            ),
            (
                "background timeout (`background_timeout_ms`)",
                self.background_timeout,
            ),
        ];
        for (name, value) in bounded {
            if value > MAX_SETTING {
                return Err(CacheError::config(format!(
                    "the {name} must be at most one hour, not {value:?}"
                )));
            }
        }
        if let Some(limit) = self.max_value_bytes
            && !(1..=MAX_VALUE_BYTES).contains(&limit)
        {
            return Err(CacheError::config(format!(
                "the value size limit (`max_value_bytes`) must be from 1 to {MAX_VALUE_BYTES} (512 MiB, Redis's largest value), not {limit}"
            )));
        }
        if let Some(prefix) = &self.key_prefix
            && cache_keyspace::check_namespace(prefix).is_err()
        {
            return Err(CacheError::config(format!(
                "the key prefix (`prefix`) `{}` is not usable: like a namespace it may hold only ASCII letters, digits and `: _ - .`, without an empty, leading, trailing or doubled `:`",
                secret::shown(prefix)
            )));
        }
        if self.backoff_max < self.backoff_min {
            return Err(CacheError::config(format!(
                "the maximum backoff ({:?}) is below the minimum ({:?})",
                self.backoff_max, self.backoff_min
            )));
        }
        Ok(())
    }
}

/// Redis's largest value: 512 MiB.
const MAX_VALUE_BYTES: usize = 512 << 20;

/// The longest any timeout, backoff or interval may be.
const MAX_SETTING: Duration = Duration::from_secs(3600);

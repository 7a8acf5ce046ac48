//! Parsing of `connect` URLs into backend settings, and their redacted display.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::error::CacheError;

/// What a URL asks to connect to.
pub(crate) enum Target {
    Memory,
    Redis(Box<RedisSettings>),
}

/// Settings of a standalone Redis connection.
pub(crate) struct RedisSettings {
    /// What redis-rs connects with (the URL without our own query options).
    pub client: redis::Client,
    /// The URL with its password replaced, for logs and health.
    pub redacted: String,
    /// The password, kept only to scrub it from error text.
    pub secret: Option<Secret>,
    /// Timeouts, breaker and backoff.
    pub config: CacheConfig,
}

/// How a manager talks to Redis: deadlines, the circuit breaker, reconnection backoff.
///
/// Pass it to `connect_with`; `connect` uses the defaults. Options in the URL's query
/// string (`?response_timeout_ms=100`) override what the config says.
///
/// | setting | default | URL option | why |
/// | --- | --- | --- | --- |
/// | response timeout | 250 ms | `response_timeout_ms` | the deadline of every call, sending included; a cache answer slower than the database is worth nothing |
/// | connect timeout | 1 s | `connect_timeout_ms` | bounds each (re)connection attempt and its `PING` probe, so a black-holed host cannot stall recovery |
/// | failure threshold | 3 | `failure_threshold` | timeouts in a row that open the breaker; one slow reply is noise, three is a hung server |
/// | backoff | 50 ms to 5 s | `backoff_min_ms`, `backoff_max_ms` | reconnect quickly after a blip, without hammering a server that is down |
/// | summary interval | 30 s | `summary_interval_ms` | how often a still-down backend logs how many calls degraded |
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

    /// Sets how often a still-down backend logs a summary.
    pub fn with_summary_interval(mut self, interval: Duration) -> Self {
        self.summary_interval = interval;
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
        if self.backoff_max < self.backoff_min {
            return Err(CacheError::config(format!(
                "the maximum backoff ({:?}) is below the minimum ({:?})",
                self.backoff_max, self.backoff_min
            )));
        }
        Ok(())
    }
}

/// A password; `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Replaces every occurrence of the secret in `text`.
    pub fn scrub(&self, text: String) -> String {
        if self.0.is_empty() || !text.contains(&self.0) {
            text
        } else {
            text.replace(&self.0, "***")
        }
    }
}

const QUERY_OPTIONS: &str = "`response_timeout_ms`, `connect_timeout_ms`, `failure_threshold`, `backoff_min_ms`, `backoff_max_ms`, `summary_interval_ms`";

/// Parses a `connect` URL. Errors name the faulty part and never echo the password.
pub(crate) fn parse(input: &str, config: &CacheConfig) -> Result<Target, CacheError> {
    let url = Url::parse(input).map_err(|e| {
        CacheError::config(format!(
            "the cache URL does not parse ({e}); expected e.g. `redis://:password@127.0.0.1:6379/0` or `memory://`"
        ))
    })?;
    match url.scheme() {
        "memory" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) || !matches!(url.path(), "" | "/") {
                return Err(CacheError::config("`memory://` takes no host or path"));
            }
            if let Some((name, _)) = url.query_pairs().next() {
                return Err(CacheError::config(format!(
                    "unknown option `{name}` in the URL query; `memory://` takes no options"
                )));
            }
            Ok(Target::Memory)
        }
        "redis" => parse_redis(url, config.clone()).map(|s| Target::Redis(Box::new(s))),
        "rediss" => Err(CacheError::config(
            "TLS (`rediss://`) is not supported by this build yet; use `redis://` on a trusted network",
        )),
        "redis+cluster" | "rediss+cluster" => Err(CacheError::config(
            "Redis Cluster (`redis+cluster://`) is not supported by this build yet; use `redis://`",
        )),
        other => Err(CacheError::config(format!(
            "unknown URL scheme `{other}`; expected `redis://`, `rediss://`, `redis+cluster://` or `memory://`"
        ))),
    }
}

fn parse_redis(mut url: Url, mut config: CacheConfig) -> Result<RedisSettings, CacheError> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CacheError::config(
            "the Redis URL has no host; expected `redis://host[:port][/db]`",
        ));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(CacheError::config(format!(
            "the Redis URL path must be a database number like `/0`, not `/{db}`"
        )));
    }

    for (name, value) in url.query_pairs() {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                CacheError::config(format!(
                    "option `{name}` must be a whole number, not `{value}`"
                ))
            })
        };
        match &*name {
            "response_timeout_ms" => config.response_timeout = Duration::from_millis(number()?),
            "connect_timeout_ms" => config.connect_timeout = Duration::from_millis(number()?),
            "backoff_min_ms" => config.backoff_min = Duration::from_millis(number()?),
            "backoff_max_ms" => config.backoff_max = Duration::from_millis(number()?),
            "summary_interval_ms" => config.summary_interval = Duration::from_millis(number()?),
            "failure_threshold" => {
                config.failure_threshold = u32::try_from(number()?).map_err(|_| {
                    CacheError::config(format!(
                        "option `failure_threshold` is too large: `{value}`"
                    ))
                })?;
            }
            other => {
                return Err(CacheError::config(format!(
                    "unknown option `{other}` in the Redis URL query; expected one of {QUERY_OPTIONS}"
                )));
            }
        }
    }
    config.validate()?;
    url.set_query(None);

    let secret = url.password().map(|p| {
        let decoded = percent_decode(p);
        Secret(decoded)
    });
    let client = redis::Client::open(url.as_str()).map_err(|e| {
        let reason = format!("the Redis URL is not usable: {e}");
        CacheError::config(match &secret {
            Some(secret) => secret.scrub(reason),
            None => reason,
        })
    })?;
    Ok(RedisSettings {
        client,
        redacted: redact(&url),
        secret,
        config,
    })
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match parse(url, &CacheConfig::default()) {
            Err(CacheError::Config { reason }) => reason,
            Err(other) => panic!("{url}: not a config error: {other}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }

    #[test]
    fn accepts_the_contract_urls() {
        let defaults = CacheConfig::default();
        assert!(matches!(parse("memory://", &defaults), Ok(Target::Memory)));
        let url = "redis://:hunter2@127.0.0.1:6379/0?response_timeout_ms=80&failure_threshold=5";
        let Ok(Target::Redis(s)) = parse(url, &defaults) else {
            panic!("redis URL rejected");
        };
        assert_eq!(s.redacted, "redis://:***@127.0.0.1:6379/0");
        assert_eq!(s.config.response_timeout, Duration::from_millis(80));
        assert_eq!(s.config.failure_threshold, 5);
        assert_eq!(s.config.connect_timeout, defaults.connect_timeout);
        assert!(!format!("{:?}", s.secret).contains("hunter2"));
    }

    #[test]
    fn errors_name_the_faulty_part_without_the_password() {
        assert!(config_error("http://x").contains("unknown URL scheme `http`"));
        assert!(config_error("not a url").contains("does not parse"));
        assert!(config_error("redis://:pw@127.0.0.1/x").contains("database number"));
        let unknown = config_error("redis://:s3cret@127.0.0.1/0?tiemout=5");
        assert!(unknown.contains("`tiemout`") && unknown.contains("response_timeout_ms"));
        assert!(config_error("redis://:s3cret@h/0?connect_timeout_ms=0").contains("above 0"));
        assert!(config_error("redis://h/0?failure_threshold=0").contains("at least 1"));
        assert!(
            config_error("redis://h/0?backoff_min_ms=500&backoff_max_ms=100")
                .contains("below the minimum")
        );
        assert!(
            config_error("redis://h/0?response_timeout_ms=fast")
                .contains("whole number, not `fast`")
        );
        assert!(config_error("memory://?x=1").contains("unknown option `x`"));
        for url in [
            "redis://:s3cret@127.0.0.1/x",
            "redis://:s3cret@h:99999/0",
            "redis://u:s3cret@/0",
        ] {
            let msg = match parse(url, &CacheConfig::default()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} accepted"),
            };
            assert!(!msg.contains("s3cret"), "{msg}");
        }
    }

    #[test]
    fn scrub_hides_the_password() {
        let s = Secret("p@ss".into());
        assert_eq!(s.scrub("auth p@ss failed".into()), "auth *** failed");
        assert_eq!(percent_decode("p%40ss"), "p@ss");
    }
}
